//! Names for stack frames: native code through blazesym (ELF symbols, DWARF, demangling). A frame that
//! cannot be named is written `module+0xOFFSET` (file offset), which can be symbolized offline later.

pub mod jit;
pub mod jit_frames;
pub mod modules;

use std::{collections::HashMap, path::Path, sync::Arc};

use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze, source::Elf, source::Source};

use jit_frames::{JIT_FRAME, JitFrames};
use modules::{ModuleMap, is_runtime_module};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameName {
    pub name: Arc<str>,
    /// The frame is in the C runtime (libc, the dynamic loader): allocation and syscall plumbing rather
    /// than the code that asked for memory.
    pub in_runtime: bool,
    /// JIT-compiled JavaScript.
    pub javascript: bool,
}

impl FrameName {
    fn native(name: String, in_runtime: bool) -> Self {
        Self { name: name.into(), in_runtime, javascript: false }
    }
}

pub struct Symbolizer {
    blaze: Blaze,
    /// By lookup address (a return address minus one; see [`lookup_address`]).
    names: HashMap<u64, FrameName>,
    pub jit: JitFrames,
    /// Files whose symbols come from another (`--symbols-from`: an unstripped build of a stripped file).
    symbols_from: HashMap<String, String>,
}

/// Frame 0 is where the thread was; every other frame is a return address, which points after its call
/// instruction, possibly into the next function. One byte back lands inside the call.
pub fn lookup_address(ip: u64, frame_index: usize) -> u64 {
    if frame_index == 0 { ip } else { ip.saturating_sub(1) }
}

impl Symbolizer {
    pub fn for_process(pid: u32, modules: &ModuleMap) -> Self {
        Self {
            blaze: Blaze::new(),
            names: HashMap::new(),
            jit: JitFrames::for_process(pid, modules),
            symbols_from: HashMap::new(),
        }
    }

    /// Empties the cache of native frame names (they are looked up again when needed).
    pub fn forget_names(&mut self) {
        self.names = HashMap::new();
    }

    /// Names `stripped`'s frames with the symbols of `unstripped` (same build: same layout).
    pub fn use_symbols_from(&mut self, stripped: &Path, unstripped: &Path) {
        self.symbols_from.insert(stripped.to_string_lossy().into_owned(), unstripped.to_string_lossy().into_owned());
    }

    /// Names every frame of a stack (innermost first); JIT frames were named when the stack was taken.
    pub fn name_stack(&mut self, ips: &[u64], modules: &mut ModuleMap) -> Vec<FrameName> {
        let lookups: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| if ip & JIT_FRAME != 0 { *ip } else { lookup_address(*ip, i) })
            .collect();
        self.resolve(&lookups, modules);
        lookups
            .iter()
            .map(|addr| {
                if addr & JIT_FRAME != 0 {
                    self.jit.name(*addr).cloned().unwrap_or_else(|| FrameName::native("[JIT]".into(), false))
                } else {
                    self.names[addr].clone()
                }
            })
            .collect()
    }

    /// Names every address not named yet, one blazesym call per file.
    fn resolve(&mut self, addrs: &[u64], modules: &mut ModuleMap) {
        let mut by_file: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
        for &addr in addrs {
            if addr & JIT_FRAME != 0 || self.names.contains_key(&addr) {
                continue;
            }
            match modules.lookup(addr) {
                Some(mapping) if mapping.is_file() => {
                    by_file
                        .entry(mapping.file_path().to_string())
                        .or_default()
                        .push((addr, mapping.file_offset_of(addr)));
                }
                Some(mapping) if !mapping.pathname.is_empty() => {
                    let name = format!("{}+{:#x}", mapping.pathname, addr - mapping.start);
                    self.names.insert(addr, FrameName::native(name, false));
                }
                Some(mapping) if mapping.executable => {
                    self.names.insert(addr, FrameName::native(format!("[JIT] {addr:#x}"), false));
                }
                Some(_) => {
                    self.names.insert(addr, FrameName::native(format!("[anon] {addr:#x}"), false));
                }
                None => {
                    self.names.insert(addr, FrameName::native(format!("[unknown] {addr:#x}"), false));
                }
            }
        }
        for (path, entries) in by_file {
            let module = Path::new(&path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(path.clone());
            let in_runtime = is_runtime_module(&module);
            let offsets: Vec<u64> = entries.iter().map(|(_, offset)| *offset).collect();
            let symbols = self.symbols_from.get(&path).unwrap_or(&path);
            let symbolized = self
                .blaze
                .symbolize(&Source::Elf(Elf::new(symbols)), Input::FileOffset(&offsets))
                .unwrap_or_else(|_| Vec::new());
            for (i, (addr, offset)) in entries.iter().enumerate() {
                let name = match symbolized.get(i) {
                    Some(Symbolized::Sym(sym)) => sym.name.to_string(),
                    _ => format!("{module}+{offset:#x}"),
                };
                self.names.insert(*addr, FrameName::native(name, in_runtime));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_addresses_are_looked_up_one_byte_back() {
        assert_eq!(lookup_address(0x1000, 0), 0x1000);
        assert_eq!(lookup_address(0x1000, 1), 0xfff);
    }
}

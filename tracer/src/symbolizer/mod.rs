//! Names for stack frames: native code through blazesym (ELF symbols, DWARF, demangling). A frame that
//! cannot be named is written `module+0xOFFSET` (file offset), which can be symbolized offline later.
//!
//! blazesym opens files by path, blocking, and looks for more next to them (`FILE.dwp`, debug links in
//! the file's directory). The paths come from the target's maps, which the target writes: it could map a
//! library and put a FIFO in its place. So blazesym is never given such a path: the file is opened here
//! as the target's file (a regular file, no link; see `procfs::untrusted`) and blazesym reads that very
//! inode through `/proc/self/fd/N`. Debug information (DWARF, debug links, `.dwp`) is read only for a file
//! that root owns and nobody else may write, in directories likewise, since those lookups open other
//! paths near it; any other file is named from its ELF symbols alone.

pub mod jit;
pub mod jit_frames;
pub mod js_source;
pub mod modules;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze, source::Elf, source::Source};

use jit_frames::{JIT_FRAME, JitFrames};
use modules::{ModuleMap, is_runtime_module};

use crate::procfs::untrusted::{self, Origin};

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
    /// Files whose frames could not be named, already told.
    told: HashSet<String>,
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
            told: HashSet::new(),
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
            let symbolized = match self.open_symbols(&path) {
                Ok(file) => {
                    let mut elf = Elf::new(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())));
                    elf.debug_syms = is_root_only(&file);
                    self.blaze.symbolize(&Source::Elf(elf), Input::FileOffset(&offsets)).unwrap_or_default()
                }
                Err(error) => {
                    if !error.is_not_found() && self.told.insert(path.clone()) {
                        eprintln!("dispatch-leaktrace: warning: frames in {path} are not named: {error}");
                    }
                    Vec::new()
                }
            };
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

impl Symbolizer {
    /// The file to name `path`'s frames from: `--symbols-from`'s build (the operator's path), or the
    /// target's file itself.
    fn open_symbols(&self, path: &str) -> Result<File, untrusted::FileError> {
        match self.symbols_from.get(path) {
            Some(unstripped) => untrusted::open(Path::new(unstripped), Origin::Operator),
            None => untrusted::open(Path::new(path), Origin::Target),
        }
    }
}

/// Root owns the file and every directory above it, and nobody else may write any of them: what blazesym
/// finds near it (debug links, `.dwp`) was put there by root.
fn is_root_only(file: &File) -> bool {
    let root_only = |metadata: &std::fs::Metadata| metadata.uid() == 0 && metadata.mode() & 0o022 == 0;
    let Ok(metadata) = file.metadata() else { return false };
    let Ok(real_path) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else { return false };
    root_only(&metadata)
        && real_path.is_absolute()
        && real_path.ancestors().skip(1).all(|dir| std::fs::symlink_metadata(dir).is_ok_and(|m| root_only(&m)))
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

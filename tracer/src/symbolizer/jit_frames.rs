//! JIT frames inside stacks. A frame in JIT code is named when its stack is taken, with the event's time,
//! because JavaScriptCore reuses code addresses: the same address may be `buildMessage [JS:DFG]` now and
//! an OSR exit stub a second later. The stack then keeps the name, not the address: the frame becomes
//! [`JIT_FRAME`] plus the index of its name, so stacks through different copies of one function's code
//! are one stack to a reader.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    FrameName,
    jit::{JITDUMP_ENABLE_HINT, JitEnv, JitFrame, JitSymbols},
    lookup_address,
    modules::ModuleMap,
};

/// Tag of a frame that holds a JIT name index instead of an address. User addresses never have the top
/// bit set.
pub const JIT_FRAME: u64 = 1 << 63;

/// A code load not in the index yet may be in the part of the file written since the last read.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(20);

pub struct JitFrames {
    pid: u32,
    env: JitEnv,
    symbols: JitSymbols,
    names: Vec<FrameName>,
    ids: HashMap<Arc<str>, u64>,
    /// Address -> tagged frame, valid until the index gains records.
    cache: HashMap<u64, u64>,
    indexed: usize,
    last_refresh: Option<Instant>,
    warned: bool,
    /// By JavaScript frame name, the tiers it ran in.
    tiers: BTreeMap<Arc<str>, BTreeSet<&'static str>>,
}

impl JitFrames {
    pub fn for_process(pid: u32, modules: &ModuleMap) -> Self {
        // Only the jitdump settings are taken from the environment; nothing else is read or kept.
        let env = JitEnv::read(pid).unwrap_or_default();
        let mut frames = Self {
            pid,
            symbols: JitSymbols::for_process(pid, modules.snapshot(), &env),
            env,
            names: Vec::new(),
            ids: HashMap::new(),
            cache: HashMap::new(),
            indexed: 0,
            last_refresh: None,
            warned: false,
            tiers: BTreeMap::new(),
        };
        frames.refresh(modules);
        frames
    }

    /// Replaces every frame of `ips` (innermost first) that lies in JIT code and has a name at `time_ns`
    /// by its tagged name.
    pub fn tag(&mut self, ips: &mut [u64], time_ns: u64, modules: &mut ModuleMap) {
        for (index, ip) in ips.iter_mut().enumerate() {
            if *ip & JIT_FRAME != 0 || modules.lookup(*ip).is_some_and(|m| m.is_file()) {
                continue;
            }
            let address = lookup_address(*ip, index);
            if let Some(tagged) = self.cache.get(&address) {
                *ip = *tagged;
                continue;
            }
            let mut frame = self.symbols.lookup(address, time_ns);
            if frame.is_none() && self.may_refresh() {
                self.refresh(modules);
                frame = self.symbols.lookup(address, time_ns);
            }
            match frame {
                Some(frame) => {
                    let (name, javascript) = frame_name(&frame);
                    let tagged = JIT_FRAME | self.intern(&name, javascript);
                    if let Some(tier) = frame.tier.label().filter(|_| javascript) {
                        self.tiers.entry(name).or_default().insert(tier);
                    }
                    self.cache.insert(address, tagged);
                    *ip = tagged;
                }
                None => self.warn_once_if_no_jitdump(modules, *ip),
            }
        }
    }

    /// Changes whenever the jitdumps gained code: names missing before may exist now.
    pub fn generation(&self) -> usize {
        self.indexed
    }

    /// The name of a tagged frame.
    pub fn name(&self, tagged: u64) -> Option<&FrameName> {
        self.names.get((tagged & !JIT_FRAME) as usize)
    }

    /// The tiers each JavaScript function ran in, by its frame name: detail, not part of a frame's identity.
    pub fn tiers(&self) -> &BTreeMap<Arc<str>, BTreeSet<&'static str>> {
        &self.tiers
    }

    fn intern(&mut self, name: &Arc<str>, javascript: bool) -> u64 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u64;
        self.names.push(FrameName { name: name.clone(), in_runtime: false, javascript });
        self.ids.insert(name.clone(), id);
        id
    }

    fn may_refresh(&self) -> bool {
        self.last_refresh.is_none_or(|t| t.elapsed() >= MIN_REFRESH_INTERVAL)
    }

    /// Reads what the jitdumps gained, and looks for jitdumps the target created since.
    pub fn refresh(&mut self, modules: &ModuleMap) {
        self.last_refresh = Some(Instant::now());
        self.symbols.discover(self.pid, modules.snapshot(), &self.env);
        let _ = self.symbols.refresh();
        for warning in self.symbols.take_warnings() {
            eprintln!("dispatch-leaktrace: warning: {warning}");
        }
        if self.symbols.index().len() != self.indexed {
            self.indexed = self.symbols.index().len();
            self.cache.clear();
        }
    }

    /// Code in executable anonymous memory with nothing to name it: say once how to get JIT names.
    fn warn_once_if_no_jitdump(&mut self, modules: &mut ModuleMap, ip: u64) {
        if self.warned || !self.symbols.index().is_empty() {
            return;
        }
        // The kernel's own code pages in the process (uretprobe trampoline, vDSO) are not JIT code.
        let kernel_pages = ["[uprobes]", "[vdso]", "[vsyscall]"];
        if modules
            .lookup(ip)
            .is_some_and(|m| m.executable && !m.is_file() && !kernel_pages.contains(&m.pathname.as_str()))
        {
            self.warned = true;
            eprintln!(
                "dispatch-leaktrace: the target runs JIT code but writes no jitdump, so JavaScript frames stay unnamed: \
                 start it with BUN_JSC_useJITDump=1 ({JITDUMP_ENABLE_HINT}); going on with native frames"
            );
        }
    }
}
/// The name a frame of JIT code gets in stacks: one per JavaScript function whatever tier compiled it
/// (`buildMessage [JS:DFG]` and `buildMessage [JS:FTL]` are both `buildMessage [JS]`), stubs as named.
fn frame_name(frame: &JitFrame) -> (Arc<str>, bool) {
    if !frame.tier.is_javascript() {
        return (frame.name.clone(), false);
    }
    let function = frame.name.rsplit_once(" [").map_or(&*frame.name, |(function, _)| function);
    (Arc::from(format!("{function} [JS]")), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolizer::jit::display_name;

    fn frame(raw: &str) -> JitFrame {
        let (name, tier) = display_name(raw);
        JitFrame { name: name.into(), raw: raw.into(), tier, start: 0x1000, size: 16 }
    }

    #[test]
    fn a_javascript_function_is_one_frame_whatever_its_tier() {
        let names: Vec<(Arc<str>, bool)> =
            ["JSC-Baseline: buildMessage#BrhwuA", "JSC-DFG: buildMessage#BrhwuA", "JSC-FTL: buildMessage#BrhwuA"]
                .iter()
                .map(|raw| frame_name(&frame(raw)))
                .collect();
        assert!(names.iter().all(|name| *name == (Arc::from("buildMessage [JS]"), true)), "{names:?}");
        assert_eq!(frame_name(&frame("JSC-DFG: #ASrMsw")), (Arc::from("(anonymous) [JS]"), true));
        assert_eq!(frame_name(&frame("JSC-Thunk: DefaultCall")), (Arc::from("[JSC thunk] DefaultCall"), false));
    }
}

//! JIT frames inside stacks. A frame in JIT code is named when its stack is taken, with the event's time,
//! because JavaScriptCore reuses code addresses: the same address may be `buildMessage [JS:DFG]` now and
//! an OSR exit stub a second later. The stack then keeps the name, not the address: the frame becomes
//! [`JIT_FRAME`] plus the index of its name, so stacks through different copies of one function's code
//! are one stack to a reader.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    FrameName,
    jit::{JITDUMP_ENABLE_HINT, JitEnv, JitFrame, JitSymbols},
    js_source::{JsOrigin, JsSourceIndex, bun_script_argument},
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
    /// Address -> tagged frame of the newest code loaded there, and when it was loaded; valid until the index
    /// gains records, and only for events at or after that time (JIT code is freed and its addresses reused:
    /// an older event ran what was there before).
    cache: HashMap<u64, (u64, u64)>,
    indexed: usize,
    last_refresh: Option<Instant>,
    warned: bool,
    /// By JavaScript frame name, the tiers it ran in.
    tiers: BTreeMap<Arc<str>, BTreeSet<&'static str>>,
    /// The JavaScript the target runs, read when its first JIT frame is named (`None` inside: none found).
    sources: Option<Option<JsSourceIndex>>,
    /// Frame names by raw jitdump name, and how many JavaScript functions got a place in the sources.
    located: HashMap<Arc<str>, (Arc<str>, bool)>,
    coverage: JsCoverage,
}

/// How many distinct JavaScript functions seen on stacks got a source location.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct JsCoverage {
    /// The application's functions, with a file and line.
    pub located: u64,
    /// Bun's and JavaScriptCore's own functions (builtins): no place in the application's sources.
    pub runtime: u64,
    /// Functions found nowhere: no sources could be read, or they were partial (`bun file.ts`).
    pub unlocated: u64,
    /// Where the sources came from: `compiled bundle`, `script files`, or none; and how many texts.
    pub sources: Option<&'static str>,
    pub source_files: usize,
    /// JIT code symbols read from the target's jitdumps and perf maps: 0 when it wrote none.
    pub jit_symbols: usize,
    /// Stacks left with a frame in JIT code that no jitdump record named (code from before the jitdump
    /// was opened, or whose record never came).
    pub unnamed_jit_stacks: u64,
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
            sources: None,
            located: HashMap::new(),
            coverage: JsCoverage::default(),
        };
        frames.refresh(modules);
        frames
    }

    /// Replaces every frame of `ips` (innermost first) that lies in JIT code and has a name at `time_ns`
    /// by its tagged name. Whether a frame in JIT code (executable memory backed by no file, not the
    /// kernel's own pages) was left without one.
    pub fn tag(&mut self, ips: &mut [u64], time_ns: u64, modules: &mut ModuleMap) -> bool {
        let mut unnamed = false;
        for (index, ip) in ips.iter_mut().enumerate() {
            if *ip & JIT_FRAME != 0 || modules.lookup(*ip).is_some_and(|m| m.is_file()) {
                continue;
            }
            let address = lookup_address(*ip, index);
            let cached = self.cache.get(&address).copied();
            if let Some((tagged, _)) = cached.filter(|&(_, loaded_ns)| time_ns >= loaded_ns) {
                *ip = tagged;
                continue;
            }
            let mut frame = self.symbols.lookup(address, time_ns);
            if frame.is_none() && self.may_refresh() {
                self.refresh(modules);
                frame = self.symbols.lookup(address, time_ns);
            }
            match frame {
                Some(frame) => {
                    let (name, javascript) = self.frame_name(&frame);
                    let tagged = JIT_FRAME | self.intern(&name, javascript);
                    if let Some(tier) = frame.tier.label().filter(|_| javascript) {
                        self.tiers.entry(name).or_default().insert(tier);
                    }
                    // Kept only if it is the newest code there: an older event's lookup found older code.
                    if cached.is_none_or(|(_, newest_ns)| frame.loaded_ns >= newest_ns) {
                        self.cache.insert(address, (tagged, frame.loaded_ns));
                    }
                    *ip = tagged;
                }
                None if is_jit_code(*ip, modules) => {
                    unnamed = true;
                    self.warn_once_if_no_jitdump();
                }
                None => {}
            }
        }
        unnamed
    }

    /// Changes whenever the jitdumps gained code: names missing before may exist now.
    pub fn generation(&self) -> usize {
        self.indexed
    }

    /// The name of a tagged frame.
    pub fn name(&self, tagged: u64) -> Option<&FrameName> {
        self.names.get((tagged & !JIT_FRAME) as usize)
    }

    /// How many JavaScript functions got a source location.
    pub fn coverage(&self) -> JsCoverage {
        JsCoverage { jit_symbols: self.indexed, ..self.coverage }
    }

    /// The name a frame of JIT code gets in stacks: one per JavaScript function whatever tier compiled it,
    /// with its place in the application's sources when they can be read (`appendToHistory (server.ts:28)`),
    /// marked as the runtime's own when it is a builtin (`#pull [JS runtime]`), else `name [JS]`. Stubs keep
    /// their names.
    fn frame_name(&mut self, frame: &JitFrame) -> (Arc<str>, bool) {
        if !frame.tier.is_javascript() {
            return (frame.name.clone(), false);
        }
        if let Some(named) = self.located.get(&frame.raw) {
            return named.clone();
        }
        if self.sources.is_none() {
            let found = source_index(self.pid);
            self.coverage.sources = found.as_ref().map(|(_, origin)| *origin);
            self.coverage.source_files = found.as_ref().map_or(0, |(index, _)| index.module_count());
            self.sources = Some(found.map(|(index, _)| index));
        }
        let location = self.sources.as_ref().and_then(Option::as_ref).and_then(|index| index.locate(&frame.raw));
        let (name, kind) = match location {
            Some(location) => {
                let kind = match location.origin {
                    JsOrigin::User(_) => Some(true),
                    JsOrigin::Runtime => Some(false),
                    JsOrigin::Unknown => None,
                };
                (location.frame_name(), kind)
            }
            None => (format!("{} [JS]", bare_function(&frame.name)), None),
        };
        let named: (Arc<str>, bool) = (Arc::from(name), true);
        if !self.ids.contains_key(&named.0) {
            match kind {
                Some(true) => self.coverage.located += 1,
                Some(false) => self.coverage.runtime += 1,
                None => self.coverage.unlocated += 1,
            }
        }
        self.located.insert(frame.raw.clone(), named.clone());
        named
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
    fn warn_once_if_no_jitdump(&mut self) {
        if self.warned || !self.symbols.index().is_empty() {
            return;
        }
        self.warned = true;
        eprintln!(
            "dispatch-leaktrace: the target runs JIT code but writes no jitdump, so JavaScript frames stay unnamed: \
             start it with BUN_JSC_useJITDump=1 ({JITDUMP_ENABLE_HINT}); going on with native frames"
        );
    }
}

/// Whether `ip` is in executable memory backed by no file: JIT code. The kernel's own code pages in the
/// process (uretprobe trampoline, vDSO) are not.
fn is_jit_code(ip: u64, modules: &mut ModuleMap) -> bool {
    let kernel_pages = ["[uprobes]", "[vdso]", "[vsyscall]"];
    modules.lookup(ip).is_some_and(|m| m.executable && !m.is_file() && !kernel_pages.contains(&m.pathname.as_str()))
}

/// A JavaScript frame's function without its tier: `buildMessage [JS:DFG]` -> `buildMessage`.
fn bare_function(name: &str) -> &str {
    name.rsplit_once(" [").map_or(name, |(function, _)| function)
}

/// The JavaScript the target runs: the bundle embedded in a `bun build --compile` executable, else, for
/// `bun file.ts`, the script and the files it imports. A failure is one warning: frames keep their names.
fn source_index(pid: u32) -> Option<(JsSourceIndex, &'static str)> {
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    match JsSourceIndex::from_executable(&exe) {
        Ok(Some(index)) => return Some((index, "compiled bundle")),
        Ok(None) => {}
        Err(error) => {
            eprintln!("dispatch-leaktrace: warning: cannot read the JavaScript bundled in the target: {error:#}");
            return None;
        }
    }
    let info = crate::procfs::ProcessInfo::read(pid).ok()?;
    if !info.exe.file_name().is_some_and(|name| name.to_string_lossy().starts_with("bun")) {
        return None;
    }
    let argv: Vec<&str> = info.cmdline.iter().map(String::as_str).collect();
    let script = bun_script_argument(&argv)?;
    // The script as the target sees it: relative to its working directory, inside its root.
    let path = if script.starts_with('/') {
        PathBuf::from(format!("/proc/{pid}/root{script}"))
    } else {
        PathBuf::from(format!("/proc/{pid}/cwd")).join(script)
    };
    match JsSourceIndex::from_script(&path) {
        Ok(index) => Some((index, "script files")),
        Err(error) => {
            eprintln!("dispatch-leaktrace: warning: cannot read the target's script {script}: {error:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolizer::jit::display_name;

    fn frame(raw: &str) -> JitFrame {
        let (name, tier) = display_name(raw);
        JitFrame { name: name.into(), raw: raw.into(), tier, start: 0x1000, size: 16, loaded_ns: 0 }
    }

    /// JIT code is freed and its addresses reused: a frame is named by the code there at the event's time,
    /// whichever event came first to the cache of names.
    #[test]
    fn a_reused_address_is_named_at_each_event_s_time_through_the_cache() {
        let pid = std::process::id();
        let mut modules = ModuleMap::new(pid);
        let mut frames = JitFrames::for_process(pid, &modules);
        // Addresses no mapping of this process holds, as JIT code is named only outside files.
        let start = 0x10_0000_0000;
        frames.symbols.index_mut().insert(start, 0x100, 100, "JSC-DFG: older#AAAAAA");
        frames.symbols.index_mut().insert(start, 0x100, 200, "JSC-DFG: newer#BBBBBB");
        let mut name_at = |time_ns: u64| {
            let mut ips = [start + 0x10];
            frames.tag(&mut ips, time_ns, &mut modules);
            (ips[0] & JIT_FRAME != 0).then(|| frames.names[(ips[0] & !JIT_FRAME) as usize].name.to_string())
        };
        assert_eq!(name_at(250).as_deref(), Some("newer [JS]"));
        assert_eq!(name_at(150).as_deref(), Some("older [JS]"), "an older event, after the newer one was cached");
        assert_eq!(name_at(300).as_deref(), Some("newer [JS]"), "the older one did not take the newer's place");
        assert_eq!(name_at(50), None, "before any code there");
    }

    #[test]
    fn a_javascript_function_is_one_frame_whatever_its_tier() {
        // A process with no sources to read (this test itself): bare names, without their tier.
        let mut frames = JitFrames::for_process(std::process::id(), &ModuleMap::new(std::process::id()));
        let names: Vec<(Arc<str>, bool)> =
            ["JSC-Baseline: buildMessage#BrhwuA", "JSC-DFG: buildMessage#BrhwuA", "JSC-FTL: buildMessage#BrhwuA"]
                .iter()
                .map(|raw| frames.frame_name(&frame(raw)))
                .collect();
        assert!(names.iter().all(|name| *name == (Arc::from("buildMessage [JS]"), true)), "{names:?}");
        assert_eq!(frames.frame_name(&frame("JSC-DFG: #ASrMsw")), (Arc::from("(anonymous) [JS]"), true));
        assert_eq!(frames.frame_name(&frame("JSC-Thunk: DefaultCall")), (Arc::from("[JSC thunk] DefaultCall"), false));
    }
}

//! The floor at the tracer's placement: count-only tracefs uprobe events where the tracer places its own
//! probes on glibc's malloc and free (no BPF program), made for one run and removed on every way out.

use std::ffi::CStr;

use nix::{
    errno::Errno,
    fcntl::{OFlag, open},
    sys::{stat::Mode, time::TimeSpec},
    time::{ClockId, ClockNanosleepFlags, clock_nanosleep},
    unistd::write,
};

use super::*;

pub(super) const TRACEFS: &str = "/sys/kernel/tracing";
/// The tracefs group of the floor's uprobe events. Each event's name holds the xtask's pid, so that a
/// leftover of a killed run is recognised (and removed) by the next one.
pub(super) const FLOOR_GROUP: &str = "leaktrace_bench";

/// A count-only probe of the floor, and the tracer's probe it copies.
pub(super) struct FloorEvent {
    pub(super) name: &'static str,
    /// As report.json's `probes` name it: "uprobe" or "uretprobe".
    pub(super) kind: &'static str,
    pub(super) symbol: &'static str,
}

pub(super) const FLOOR_EVENTS: [FloorEvent; 3] = [
    FloorEvent { name: "malloc_entry", kind: "uprobe", symbol: "malloc" },
    FloorEvent { name: "malloc_return", kind: "uretprobe", symbol: "malloc" },
    FloorEvent { name: "free_entry", kind: "uprobe", symbol: "free" },
];

/// `leaktrace_PID_EVENT`: the tracefs event name of this xtask's floor event.
pub(super) fn floor_event_name(event: &str) -> String {
    format!("leaktrace_{}_{event}", std::process::id())
}

/// Where the tracer probes glibc's malloc and free, read from its own report.json.
#[derive(Clone, Debug)]
pub(super) struct Placements {
    /// The C library probed.
    pub(super) object: PathBuf,
    /// In the order of FLOOR_EVENTS.
    pub(super) probes: Vec<PlacedProbe>,
}

#[derive(Clone, Debug)]
pub(super) struct PlacedProbe {
    /// The probe's offset in the object file.
    pub(super) file_offset: u64,
    /// Bytes past the function's entry, the instruction there, and why the tracer put it there.
    pub(super) offset: u64,
    pub(super) instruction: String,
    pub(super) reason: String,
}

/// Runs the tracer once on a short malloc_bench and takes its glibc probes from report.json's `probes`:
/// the floor then copies whatever the tracer does on this machine's C library.
pub(super) fn find_placements(tracer: &Path, malloc_bench: &Path, work: &Path) -> Result<Placements> {
    let dir = work.join("placement");
    fs::create_dir_all(&dir)?;
    let mut command = Command::new(tracer);
    command
        .args(["--no-faults", "--quiet", "--output"])
        .arg(dir.join("report"))
        .arg("--")
        .arg(malloc_bench)
        .arg("1000")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log_file(&dir, "stdout")?)
        .stderr(log_file(&dir, "stderr")?);
    let mut process = Process::spawn("dispatch-leaktrace (for its probe placement)", &mut command)?;
    let (status, _) = process.wait(Duration::from_secs(120))?;
    if !status.success() {
        return Err(failure(&format!("the tracer failed on malloc_bench ({status})"), &dir.join("stderr")));
    }
    let path = dir.join("report/report.json");
    let report = ReportJson::read(&path)?;
    let mut object: Option<&str> = None;
    let mut placed = Vec::new();
    for event in &FLOOR_EVENTS {
        let probe = report
            .probes
            .iter()
            .find(|probe| {
                probe.kind.as_deref() == Some(event.kind)
                    && probe.symbol.as_deref() == Some(event.symbol)
                    && probe.family.as_deref() == Some("glibc")
            })
            .ok_or_else(|| anyhow!("{} has no {} on glibc's {}", path.display(), event.kind, event.symbol))?;
        let file = probe.object.as_deref().ok_or_else(|| anyhow!("a probe without its object"))?;
        if *object.get_or_insert(file) != file {
            bail!("glibc's malloc and free were probed in two objects");
        }
        let placement = probe.placement.as_ref();
        placed.push(PlacedProbe {
            file_offset: probe.file_offset.ok_or_else(|| anyhow!("a probe without its offset"))?,
            offset: placement.and_then(|p| p.offset).unwrap_or(0),
            instruction: placement.and_then(|p| p.instruction.clone()).unwrap_or_default(),
            reason: placement.and_then(|p| p.reason.clone()).unwrap_or_default(),
        });
    }
    let object = PathBuf::from(object.expect("three probes found"));
    Ok(Placements { object, probes: placed })
}

/// The floor's uprobe events, made for one run and removed after it: on drop, and by the signal handler
/// if the xtask is stopped meanwhile (the kernel keeps tracefs events until they are removed).
pub(super) struct FloorEvents {
    pub(super) armed: bool,
}

impl FloorEvents {
    pub(super) fn create(placements: &Placements) -> Result<Self> {
        // Armed first: whatever the lines below create is removed, even if a later one fails.
        FLOOR_ARMED.store(true, Ordering::SeqCst);
        let events = Self { armed: true };
        for (event, probe) in FLOOR_EVENTS.iter().zip(&placements.probes) {
            let kind = if event.kind == "uretprobe" { 'r' } else { 'p' };
            let line = format!(
                "{kind}:{FLOOR_GROUP}/{} {}:{:#x}\n",
                floor_event_name(event.name),
                placements.object.display(),
                probe.file_offset
            );
            append_tracefs("uprobe_events", &line)
                .with_context(|| format!("cannot create the uprobe event `{}`", line.trim()))?;
        }
        Ok(events)
    }

    /// Enables the events in ftrace, for every process, with the trace ring buffer on or off.
    pub(super) fn enable_in_ftrace(&mut self, tracing_on: bool) -> Result<()> {
        let path = Path::new(TRACEFS).join("tracing_on");
        let was = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        TRACING_ON_SAVED.store(i32::from(was.trim() == "1"), Ordering::SeqCst);
        append_tracefs("tracing_on", if tracing_on { "1" } else { "0" })?;
        for event in &FLOOR_EVENTS {
            append_tracefs(&format!("events/{FLOOR_GROUP}/{}/enable", floor_event_name(event.name)), "1")?;
        }
        Ok(())
    }

    /// The events' hits so far, from uprobe_profile (counted whether or not anything is recorded).
    pub(super) fn profile_hits(&self) -> Option<ProbeHits> {
        let text = fs::read_to_string(Path::new(TRACEFS).join("uprobe_profile")).ok()?;
        let count = |event: &str| {
            let name = floor_event_name(event);
            text.lines().find_map(|line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                [_, event, hits] if *event == name => hits.parse().ok(),
                _ => None,
            })
        };
        Some(ProbeHits {
            malloc_entry: count("malloc_entry")?,
            malloc_return: count("malloc_return")?,
            free_entry: count("free_entry")?,
        })
    }

    pub(super) fn remove(mut self) -> Result<()> {
        self.armed = false;
        if !undo_floor_events() {
            bail!("cannot remove the uprobe events {FLOOR_GROUP}/{}", floor_event_name("*"));
        }
        Ok(())
    }
}

impl Drop for FloorEvents {
    fn drop(&mut self) {
        if self.armed && !undo_floor_events() {
            eprintln!("xtask bench: cannot remove the uprobe events {FLOOR_GROUP}/{}", floor_event_name("*"));
        }
    }
}

/// Appends to a tracefs file (never truncating: a truncated uprobe_events loses every uprobe event).
pub(super) fn append_tracefs(file: &str, text: &str) -> Result<()> {
    use std::io::Write as _;
    let path = Path::new(TRACEFS).join(file);
    let mut handle =
        fs::OpenOptions::new().append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    handle.write_all(text.as_bytes()).with_context(|| format!("cannot write {text:?} to {}", path.display()))
}

/// Removes floor events left by an xtask that is gone (killed with SIGKILL, which no handler sees).
pub(super) fn remove_stale_floor_events() {
    let Ok(text) = fs::read_to_string(Path::new(TRACEFS).join("uprobe_events")) else { return };
    for line in text.lines() {
        let Some(name) = line.get(2..).and_then(|rest| rest.strip_prefix(FLOOR_GROUP)?.strip_prefix('/')) else {
            continue;
        };
        let name = name.split_whitespace().next().unwrap_or_default();
        let pid = name.strip_prefix("leaktrace_").and_then(|rest| rest.split('_').next());
        let gone = pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists());
        if gone {
            let _ = append_tracefs(&format!("events/{FLOOR_GROUP}/{name}/enable"), "0");
            match append_tracefs("uprobe_events", &format!("-:{FLOOR_GROUP}/{name}\n")) {
                Ok(()) => eprintln!("xtask bench: removed the stale uprobe event {FLOOR_GROUP}/{name}"),
                Err(error) => eprintln!("xtask bench: cannot remove the stale uprobe event: {error:#}"),
            }
        }
    }
}

/// Whether this xtask may have floor events in tracefs now.
pub(super) static FLOOR_ARMED: AtomicBool = AtomicBool::new(false);
/// tracing_on as it was before an ftrace configuration changed it (-1: unchanged).
pub(super) static TRACING_ON_SAVED: AtomicI32 = AtomicI32::new(-1);

/// Disables this xtask's floor events, restores tracing_on, and removes the events (retrying for up to
/// two seconds while a just-killed perf still holds them). Returns whether none is left. The signal
/// handler runs it too, so it allocates nothing and makes only async-signal-safe calls.
pub(super) fn undo_floor_events() -> bool {
    if !FLOOR_ARMED.load(Ordering::SeqCst) {
        return true;
    }
    let pid = std::process::id();
    for event in &FLOOR_EVENTS {
        let mut path = CText::new();
        path.push(TRACEFS.as_bytes()).push(b"/events/").push(FLOOR_GROUP.as_bytes()).push(b"/leaktrace_");
        path.push_number(pid).push(b"_").push(event.name.as_bytes()).push(b"/enable");
        let _ = write_raw(&path, b"0"); // not enabled, or already gone: nothing to do
    }
    let saved = TRACING_ON_SAVED.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        let mut path = CText::new();
        path.push(TRACEFS.as_bytes()).push(b"/tracing_on");
        let _ = write_raw(&path, if saved == 1 { b"1" } else { b"0" });
    }
    let mut uprobe_events = CText::new();
    uprobe_events.push(TRACEFS.as_bytes()).push(b"/uprobe_events");
    for _ in 0..100 {
        let mut left = false;
        for event in &FLOOR_EVENTS {
            let mut line = CText::new();
            line.push(b"-:").push(FLOOR_GROUP.as_bytes()).push(b"/leaktrace_").push_number(pid).push(b"_");
            line.push(event.name.as_bytes()).push(b"\n");
            match write_raw(&uprobe_events, line.text()) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(_) => left = true, // EBUSY: still open in a process that is exiting
            }
        }
        if !left {
            FLOOR_ARMED.store(false, Ordering::SeqCst);
            return true;
        }
        // clock_nanosleep(2) is async-signal-safe (thread::sleep is not promised to be).
        let pause = TimeSpec::new(0, 20_000_000);
        let _ = clock_nanosleep(ClockId::CLOCK_MONOTONIC, ClockNanosleepFlags::empty(), &pause);
    }
    false
}

/// A short NUL-terminated string built on the stack, for the signal handler (which may not allocate).
pub(super) struct CText {
    pub(super) bytes: [u8; 256],
    pub(super) len: usize,
}

impl CText {
    pub(super) fn new() -> Self {
        Self { bytes: [0; 256], len: 0 }
    }

    /// Appends, dropping what does not fit (one byte stays for the NUL).
    pub(super) fn push(&mut self, text: &[u8]) -> &mut Self {
        let room = self.bytes.len() - 1 - self.len;
        let n = text.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
        self
    }

    pub(super) fn push_number(&mut self, mut n: u32) -> &mut Self {
        let mut digits = [0u8; 10];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..])
    }

    pub(super) fn text(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The text as a C string: the byte after it is always 0 (and a path has no NUL inside).
    pub(super) fn c_str(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.bytes).unwrap_or_default()
    }
}

/// open(2), write(2), close(2): appends `data` to the file at `path`. Async-signal-safe: a C string is
/// passed through as it is, and nothing is allocated.
pub(super) fn write_raw(path: &CText, data: &[u8]) -> std::result::Result<(), Errno> {
    let fd = open(path.c_str(), OFlag::O_WRONLY | OFlag::O_APPEND, Mode::empty())?;
    write(&fd, data).map(drop)
}

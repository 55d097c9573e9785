//! The stack walk: the kernel's BPF run time of the tracer's allocator entry program per malloc and of its
//! page-fault program per page fault, with the tracer's own walk of the stack and with the kernel's
//! (`bpf_get_stackid`, `LEAKTRACE_KERNEL_WALK=1`), on `bench/deep_stack.c` at several depths: the same
//! host, the same run, alternating.

use nix::sys::signal::Signal;

use super::*;

/// Frames of `descend` above the allocating function: with main, allocate, malloc and the C runtime's start,
/// the stack is 5 frames deeper.
const DEPTHS: [u32; 4] = [2, 16, 60, 120];
const COUNT: u64 = 200_000;
const COUNT_QUICK: u64 = 50_000;

/// What each run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    Malloc,
    PageFault,
}

impl Event {
    const ALL: [Self; 2] = [Self::Malloc, Self::PageFault];

    fn program(self) -> &'static str {
        match self {
            Self::Malloc => "alloc_entry",
            Self::PageFault => "page_fault_user_btf",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::PageFault => "page fault",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Walk {
    Kernel,
    Ours,
}

impl Walk {
    const ALL: [Self; 2] = [Self::Kernel, Self::Ours];

    fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel's walk (bpf_get_stackid)",
            Self::Ours => "our walk",
        }
    }
}

pub(super) struct WalkSeries {
    /// (event, depth, walk) -> ns of the event's program per event, one per repetition.
    pub(super) ns_per_event: Vec<(Event, u32, Walk, Vec<f64>)>,
    pub(super) failure: Option<String>,
}

impl WalkSeries {
    pub(super) fn measure(bench: &Bench) -> Self {
        let mut series = Self { ns_per_event: Vec::new(), failure: None };
        for event in Event::ALL {
            for depth in DEPTHS {
                for walk in Walk::ALL {
                    series.ns_per_event.push((event, depth, walk, Vec::new()));
                }
            }
        }
        let runs = bench.options.runs;
        'runs: for rep in 0..runs {
            for (event, depth) in Event::ALL.into_iter().flat_map(|e| DEPTHS.map(|d| (e, d))) {
                for walk in rotated(&Walk::ALL, rep) {
                    let (what, how) = (event.name(), walk.name());
                    eprintln!("xtask bench: [{}/{runs}] stack walk, {what}, depth {depth}, {how}", rep + 1);
                    match ns_per_event(bench, event, depth, walk, rep) {
                        Ok(ns) => {
                            let row = series.ns_per_event.iter_mut().find(|r| (r.0, r.1, r.2) == (event, depth, walk));
                            row.expect("every row made above").3.push(ns);
                        }
                        Err(error) => {
                            eprintln!("xtask bench: stack walk failed: {error:#}");
                            series.failure = Some(format!("{error:#}"));
                            break 'runs;
                        }
                    }
                }
            }
        }
        series
    }

    pub(super) fn render(&self, md: &mut String) {
        let _ = writeln!(md, "## Stack walk: BPF time per malloc and per page fault\n");
        let _ = writeln!(
            md,
            "`bench/deep_stack.c N` recurses N + 1 frames, then mallocs {} blocks of 64 bytes and keeps them (so \
             every run of the allocator entry program is a malloc, with its stack), or with `touch` touches as \
             many fresh pages once each (a page fault each). The tracer is attached by pid (`--overhead off`), \
             with its own walk of the stack (the default) or the kernel's (`LEAKTRACE_KERNEL_WALK=1`: \
             `bpf_get_stackid`), alternating, at each depth. The figure is the run time of `alloc_entry` per \
             malloc, or of `page_fault_user_btf` per page touched, during the loop, from the kernel's BPF \
             statistics (`kernel.bpf_stats_enabled`; the page-fault program also runs, and returns at once, \
             for other processes' faults, which the figure includes), the median of the repetitions (min-max \
             in brackets). The return program (block recorded) is not in it. *Frames*: the stack's depth as \
             the tracer reports it.\n",
            thousands(COUNT)
        );
        if let Some(failure) = &self.failure {
            let _ = writeln!(md, "Stopped: {}\n", first_line(failure));
        }
        let _ = writeln!(md, "| event | N | frames | kernel's walk, ns | our walk, ns | ratio |");
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
        for event in Event::ALL {
            for depth in DEPTHS {
                let stats = |walk: Walk| {
                    let row = self.ns_per_event.iter().find(|r| (r.0, r.1, r.2) == (event, depth, walk));
                    row.and_then(|r| Stats::of(r.3.clone()))
                };
                let cell = |stats: &Option<Stats>| {
                    stats.as_ref().map_or("?".into(), |s| format!("{:.0} [{:.0}-{:.0}]", s.median, s.min, s.max))
                };
                let (kernel, ours) = (stats(Walk::Kernel), stats(Walk::Ours));
                let ratio = match (&kernel, &ours) {
                    (Some(k), Some(o)) if o.median > 0.0 => format!("{:.2}x", k.median / o.median),
                    _ => "?".into(),
                };
                // A fault is taken in `allocate` itself: no malloc frame.
                let frames = if event == Event::Malloc { depth + 5 } else { depth + 4 };
                let _ = writeln!(
                    md,
                    "| {} | {depth} | {frames} | {} | {} | {ratio} |",
                    event.name(),
                    cell(&kernel),
                    cell(&ours)
                );
            }
        }
        let _ = writeln!(md);
    }
}

/// One run: the event's program's BPF time per event at `depth` with `walk`.
fn ns_per_event(bench: &Bench, event: Event, depth: u32, walk: Walk, rep: usize) -> Result<f64> {
    const SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let count = if bench.options.quick { COUNT_QUICK } else { COUNT };
    let kind = if walk == Walk::Kernel { "kernel" } else { "ours" };
    let touch = if event == Event::PageFault { "touch" } else { "malloc" };
    let dir = bench.work.join(format!("walk-{touch}-{depth}-{kind}-{rep}"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut command = Command::new(&bench.deep_stack);
    command
        .args([depth.to_string(), count.to_string(), touch.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(&dir, "target.stderr")?);
    let mut target = Process::spawn("deep_stack", &mut command)?;
    let target_lines = target.lines_of_stdout(&dir.join("target.stdout"))?;
    wait_for_line(&target_lines, "ready", Duration::from_secs(10))?;
    let mut command = Command::new(&bench.tracer);
    command
        .args(["--quiet", "--overhead", "off", "--pid"])
        .arg(target.pid.to_string())
        .arg("--output")
        .arg(dir.join("report"))
        .stdin(Stdio::null())
        .stdout(log_file(&dir, "tracer.stdout")?)
        .stderr(Stdio::piped());
    if walk == Walk::Kernel {
        command.env("LEAKTRACE_KERNEL_WALK", "1");
    }
    let mut tracer = Process::spawn("dispatch-leaktrace", &mut command)?;
    let tracer_lines = tracer.lines_of_stderr(&dir.join("tracer.stderr"))?;
    wait_for_line(&tracer_lines, "tracing pid", Duration::from_secs(120))
        .map_err(|error| failure(&format!("the tracer did not attach ({error:#})"), &dir.join("tracer.stderr")))?;
    fs::write(SWITCH, "1").context("cannot turn on the kernel's BPF statistics")?;
    let before = program_stats(tracer.pid, event.program());
    target.signal(Signal::SIGUSR1)?;
    let done = wait_for_line(&target_lines, "done", Duration::from_secs(300));
    let after = program_stats(tracer.pid, event.program());
    let _ = fs::write(SWITCH, "0");
    done?;
    tracer.signal(Signal::SIGINT)?;
    let (status, _) = tracer.wait(Duration::from_secs(180))?;
    if !status.success() {
        return Err(failure(&format!("the tracer failed ({status})"), &dir.join("tracer.stderr")));
    }
    let ((runs_before, ns_before), (runs_after, ns_after)) = (before?, after?);
    let runs = runs_after.saturating_sub(runs_before);
    // Every malloc and every page touched runs the program once; fewer means the probes missed some.
    if runs < count {
        bail!("{} ran {runs} times for {count} {}s", event.program(), event.name());
    }
    Ok(ns_after.saturating_sub(ns_before) as f64 / count as f64)
}

/// (run count, run time in ns) of the BPF program named `name` that process `pid` holds, from its
/// descriptors' fdinfo and bpftool for the name.
fn program_stats(pid: u32, name: &str) -> Result<(u64, u64)> {
    let entries = fs::read_dir(format!("/proc/{pid}/fdinfo")).context("cannot read the tracer's fdinfo")?;
    for entry in entries.filter_map(Result::ok) {
        let Ok(text) = fs::read_to_string(entry.path()) else { continue };
        let field = |key: &str| {
            text.lines().find_map(|line| line.strip_prefix(key)).and_then(|rest| rest.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(count), Some(time)) = (field("prog_id:"), field("run_cnt:"), field("run_time_ns:")) else {
            continue;
        };
        let shown = Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output();
        let shown = shown.context("cannot run bpftool (cargo xtask setup installs it)")?;
        if String::from_utf8_lossy(&shown.stdout).split_whitespace().any(|word| word == name) {
            return Ok((count, time));
        }
    }
    bail!("the tracer holds no BPF program {name}")
}

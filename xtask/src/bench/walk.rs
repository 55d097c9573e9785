//! The stack walk: the kernel's BPF run time of the tracer's allocator entry program per malloc and of its
//! page-fault program per page fault, with the tracer's own walk of the stack and with the kernel's
//! (`bpf_get_stackid`, `LEAKTRACE_KERNEL_WALK=1`), on `bench/deep_stack.c` at several depths: the same
//! host, the same run, alternating. With `--baseline PATH`, another build of the tracer is measured with
//! its own walk in the same rotation: two commits compared on the same host in the same hour. On the Bun
//! demo, the page-fault program is also measured stopped at each stage (`LEAKTRACE_STOP_AT`): where its
//! time goes, which perf cannot see (the program runs with interrupts off).

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
    /// A page fault in libc's memset: in the C runtime, whose code keeps no frame pointer.
    PageFaultInMemset,
}

impl Event {
    const ALL: [Self; 3] = [Self::Malloc, Self::PageFault, Self::PageFaultInMemset];

    fn program(self) -> &'static str {
        match self {
            Self::Malloc => "alloc_entry",
            Self::PageFault | Self::PageFaultInMemset => "page_fault_user_btf",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::PageFault => "page fault",
            Self::PageFaultInMemset => "page fault in memset",
        }
    }

    /// `bench/deep_stack.c`'s mode.
    fn mode(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::PageFault => "touch",
            Self::PageFaultInMemset => "memset",
        }
    }

    /// The stack's depth as the tracer reports it, `descend` recursing `depth` times: main, allocate and the
    /// C runtime's start around it, and malloc or memset on top (a plain fault is taken in `allocate`).
    fn frames(self, depth: u32) -> u32 {
        match self {
            Self::Malloc | Self::PageFaultInMemset => depth + 5,
            Self::PageFault => depth + 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Walk {
    Kernel,
    Ours,
    /// Our walk in the `--baseline` build.
    Baseline,
}

impl Walk {
    /// The walks this run measures.
    fn all(bench: &Bench) -> Vec<Self> {
        let mut walks = vec![Self::Kernel, Self::Ours];
        if bench.options.baseline.is_some() {
            walks.push(Self::Baseline);
        }
        walks
    }

    fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel's walk (bpf_get_stackid)",
            Self::Ours => "our walk",
            Self::Baseline => "the baseline's walk (--baseline)",
        }
    }

    /// Its part of a run folder's name.
    fn slug(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Ours => "ours",
            Self::Baseline => "baseline",
        }
    }

    /// The environment that chooses this walk in the tracer.
    fn env(self) -> Vec<(&'static str, &'static str)> {
        if self == Self::Kernel { vec![("LEAKTRACE_KERNEL_WALK", "1")] } else { Vec::new() }
    }

    /// The tracer binary that runs this walk.
    fn tracer(self, bench: &Bench) -> &Path {
        match self {
            Self::Baseline => bench.options.baseline.as_deref().expect("measured only with --baseline"),
            Self::Kernel | Self::Ours => &bench.tracer,
        }
    }
}

/// Where the page-fault program may be stopped (`LEAKTRACE_STOP_AT`, tracer-common's `stop_at::NAMES`),
/// in the order of the program, with what runs up to there.
const STAGES: [(&str, &str); 4] = [
    ("target", "entry, sampling test, target lookup, registers"),
    ("keep", "then the clock, the fault's slot, and the walk"),
    ("send", "then the stack kept (its hash looked up, its frames compared)"),
    ("far-frames", "all but the frames beyond the copied stack"),
];

/// One configuration of the runs on the Bun demo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BunRun {
    Walk(Walk),
    /// Our walk, the program stopped at the stage of this index in [`STAGES`].
    Stopped(usize),
}

impl BunRun {
    fn all(bench: &Bench) -> Vec<Self> {
        let walks = Walk::all(bench).into_iter().map(Self::Walk);
        walks.chain((0..STAGES.len()).map(Self::Stopped)).collect()
    }

    fn name(self) -> String {
        match self {
            Self::Walk(walk) => walk.name().to_string(),
            Self::Stopped(stage) => format!("our walk stopped at {}", STAGES[stage].0),
        }
    }

    fn slug(self) -> String {
        match self {
            Self::Walk(walk) => walk.slug().to_string(),
            Self::Stopped(stage) => format!("stop-{}", STAGES[stage].0),
        }
    }

    fn tracer(self, bench: &Bench) -> &Path {
        match self {
            Self::Walk(walk) => walk.tracer(bench),
            Self::Stopped(_) => &bench.tracer,
        }
    }

    fn env(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Self::Walk(walk) => walk.env(),
            Self::Stopped(stage) => vec![("LEAKTRACE_STOP_AT", STAGES[stage].0)],
        }
    }
}

pub(super) struct WalkSeries {
    /// (event, depth, walk) -> ns of the event's program per event, one per repetition.
    pub(super) ns_per_event: Vec<(Event, u32, Walk, Vec<f64>)>,
    /// (depth, walk) -> ns of the allocator's return program (the block recorded) per malloc, with our walk
    /// and the baseline's, one per repetition.
    pub(super) return_ns_per_malloc: Vec<(u32, Walk, Vec<f64>)>,
    /// configuration -> BPF ns of the page-fault program per page fault of the Bun demo server, one per
    /// repetition.
    pub(super) bun_ns_per_fault: Vec<(BunRun, Vec<f64>)>,
    pub(super) failure: Option<String>,
}

impl WalkSeries {
    pub(super) fn measure(bench: &Bench) -> Self {
        let walks = Walk::all(bench);
        let mut series = Self {
            ns_per_event: Vec::new(),
            return_ns_per_malloc: Vec::new(),
            bun_ns_per_fault: BunRun::all(bench).into_iter().map(|run| (run, Vec::new())).collect(),
            failure: None,
        };
        for event in Event::ALL {
            for depth in DEPTHS {
                for &walk in &walks {
                    if event == Event::Malloc && walk != Walk::Kernel {
                        series.return_ns_per_malloc.push((depth, walk, Vec::new()));
                    }
                    series.ns_per_event.push((event, depth, walk, Vec::new()));
                }
            }
        }
        let runs = bench.options.runs;
        'runs: for rep in 0..runs {
            for (event, depth) in Event::ALL.into_iter().flat_map(|e| DEPTHS.map(|d| (e, d))) {
                for walk in rotated(&walks, rep) {
                    let (what, how) = (event.name(), walk.name());
                    eprintln!("xtask bench: [{}/{runs}] stack walk, {what}, depth {depth}, {how}", rep + 1);
                    match ns_per_event(bench, event, depth, walk, rep) {
                        Ok((ns, return_ns)) => {
                            let row = series.ns_per_event.iter_mut().find(|r| (r.0, r.1, r.2) == (event, depth, walk));
                            row.expect("every row made above").3.push(ns);
                            if let Some(return_ns) = return_ns {
                                let row = series.return_ns_per_malloc.iter_mut().find(|r| (r.0, r.1) == (depth, walk));
                                if let Some(row) = row {
                                    row.2.push(return_ns);
                                }
                            }
                        }
                        Err(error) => {
                            eprintln!("xtask bench: stack walk failed: {error:#}");
                            series.failure = Some(format!("{error:#}"));
                            break 'runs;
                        }
                    }
                }
            }
            for run in rotated(&BunRun::all(bench), rep) {
                eprintln!("xtask bench: [{}/{runs}] stack walk, Bun demo page faults, {}", rep + 1, run.name());
                match bun_ns_per_fault(bench, run, rep) {
                    Ok(ns) => series.bun_ns_per_fault.iter_mut().find(|r| r.0 == run).expect("every run").1.push(ns),
                    Err(error) => {
                        eprintln!("xtask bench: stack walk on the Bun demo failed: {error:#}");
                        series.failure = Some(format!("{error:#}"));
                        break 'runs;
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
             many fresh pages once each (a page fault each), or with `memset` touches them through libc's \
             `memset` (the fault in the C runtime, whose code keeps no frame pointer: a stack the collector \
             completes from a copy of the stack's top until the kernel has the instruction's rule). The tracer is attached by pid (`--overhead off`), \
             with its own walk of the stack (the default) or the kernel's (`LEAKTRACE_KERNEL_WALK=1`: \
             `bpf_get_stackid`), alternating, at each depth. The figure is the run time of `alloc_entry` per \
             malloc, or of `page_fault_user_btf` per page touched, during the loop, from the kernel's BPF \
             statistics (`kernel.bpf_stats_enabled`; the page-fault program also runs, and returns at once, \
             for other processes' faults, which the figure includes), the median of the repetitions (min-max \
             in brackets). The return program (block recorded) is not in it: it follows. *Frames*: the stack's depth as \
             the tracer reports it.\n",
            thousands(COUNT)
        );
        let baseline = self.ns_per_event.iter().any(|r| r.2 == Walk::Baseline);
        if baseline {
            let _ = writeln!(
                md,
                "*Baseline*: another build of the tracer (`--baseline`), with its own walk, measured in the same \
                 rotation; *vs baseline*: ours less the baseline's, medians.\n"
            );
        }
        if let Some(failure) = &self.failure {
            let _ = writeln!(md, "Stopped: {}\n", first_line(failure));
        }
        let extra_head = if baseline { " baseline, ns | vs baseline |" } else { "" };
        let extra_rule = if baseline { " --- | --- |" } else { "" };
        let _ = writeln!(md, "| event | N | frames | kernel's walk, ns | our walk, ns | ratio |{extra_head}");
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |{extra_rule}");
        for event in Event::ALL {
            for depth in DEPTHS {
                let stats = |walk: Walk| {
                    let row = self.ns_per_event.iter().find(|r| (r.0, r.1, r.2) == (event, depth, walk));
                    row.and_then(|r| Stats::of(r.3.clone()))
                };
                let (kernel, ours) = (stats(Walk::Kernel), stats(Walk::Ours));
                let ratio = match (&kernel, &ours) {
                    (Some(k), Some(o)) if o.median > 0.0 => format!("{:.2}x", k.median / o.median),
                    _ => "?".into(),
                };
                let frames = event.frames(depth);
                let _ = writeln!(
                    md,
                    "| {} | {depth} | {frames} | {} | {} | {ratio} |{}",
                    event.name(),
                    cell(&kernel),
                    cell(&ours),
                    if baseline { baseline_cells(&ours, &stats(Walk::Baseline)) } else { String::new() }
                );
            }
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "The allocator's return program (`alloc_return`: the block put in the kernel's table of live blocks, \
             its site's figures updated) per malloc in the same runs, with our walk (it takes no stack): the \
             {} blocks fit the table's preallocated part.\n",
            thousands(COUNT)
        );
        let _ = writeln!(md, "| N | return program per malloc, ns |{extra_head}");
        let _ = writeln!(md, "| --- | --- |{extra_rule}");
        for depth in DEPTHS {
            let stats = |walk: Walk| {
                let row = self.return_ns_per_malloc.iter().find(|r| (r.0, r.1) == (depth, walk));
                row.and_then(|r| Stats::of(r.2.clone()))
            };
            let ours = stats(Walk::Ours);
            let extra = if baseline { baseline_cells(&ours, &stats(Walk::Baseline)) } else { String::new() };
            let _ = writeln!(md, "| {depth} | {} |{extra}", cell(&ours));
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "The Bun demo server (`demo/bun/server.ts`, JIT dump on) after a warm-up round, the tracer attached \
             by pid in page-fault mode (`--no-alloc --overhead off`), one round of the driver's turns: the run \
             time of `page_fault_user_btf` over the round divided by the server's page faults in it (minflt + \
             majflt from /proc/PID/stat). The program's early returns for other processes' faults (the driver \
             is another Bun) count in the time, so the figure is an upper bound.\n"
        );
        let _ = writeln!(md, "| event | kernel's walk, ns | our walk, ns | ratio |{extra_head}");
        let _ = writeln!(md, "| --- | --- | --- | --- |{extra_rule}");
        let stats = |run: BunRun| {
            let row = self.bun_ns_per_fault.iter().find(|r| r.0 == run);
            row.and_then(|r| Stats::of(r.1.clone()))
        };
        let (kernel, ours) = (stats(BunRun::Walk(Walk::Kernel)), stats(BunRun::Walk(Walk::Ours)));
        let ratio = match (&kernel, &ours) {
            (Some(k), Some(o)) if o.median > 0.0 => format!("{:.2}x", k.median / o.median),
            _ => "?".into(),
        };
        let extra = if baseline { baseline_cells(&ours, &stats(BunRun::Walk(Walk::Baseline))) } else { String::new() };
        let _ = writeln!(md, "| Bun demo page fault | {} | {} | {ratio} |{extra}\n", cell(&kernel), cell(&ours));
        self.render_bun_stages(md, &ours, &stats);
    }

    /// Where the time of a Bun page fault goes: the program stopped at each stage, in the same rotation.
    fn render_bun_stages(&self, md: &mut String, whole: &Option<Stats>, stats: &dyn Fn(BunRun) -> Option<Stats>) {
        let _ = writeln!(
            md,
            "Where that time goes, with our walk: the same runs with the program stopped at a stage \
             (`LEAKTRACE_STOP_AT`, the events not sent), in the same rotation. perf cannot split the program: it \
             runs with interrupts off, where perf's timer samples do not land. A part's cost is the difference \
             of two medians, so it is rough (the runs' spread is in brackets).\n"
        );
        let _ = writeln!(md, "| stopped at | what runs | ns per fault |");
        let _ = writeln!(md, "| --- | --- | --- |");
        for (index, (name, what)) in STAGES.iter().enumerate() {
            let _ = writeln!(md, "| {name} | {what} | {} |", cell(&stats(BunRun::Stopped(index))));
        }
        let _ = writeln!(md, "| (nowhere) | the whole program: the event sent | {} |\n", cell(whole));
        let median = |index: usize| stats(BunRun::Stopped(index)).map(|s| s.median);
        let whole = whole.as_ref().map(|s| s.median);
        let part = |to: Option<f64>, from: Option<f64>| match (to, from) {
            (Some(to), Some(from)) => format!("{:.0}", to - from),
            _ => "?".into(),
        };
        let _ = writeln!(
            md,
            "Parts, ns per fault: entry to registers {}; the walk and what precedes it {}; keeping the stack {}; \
             sending the event {}; of the whole, the frames beyond the copied stack (their reads, steps, hashing \
             and comparing) {}.\n",
            median(0).map_or("?".into(), |ns| format!("{ns:.0}")),
            part(median(1), median(0)),
            part(median(2), median(1)),
            part(whole, median(2)),
            part(whole, median(3)),
        );
    }
}

/// A median with its range, or `?`.
fn cell(stats: &Option<Stats>) -> String {
    stats.as_ref().map_or("?".into(), |s| format!("{:.0} [{:.0}-{:.0}]", s.median, s.min, s.max))
}

/// The baseline's cell and ours less it, for a row of a table with `--baseline`.
fn baseline_cells(ours: &Option<Stats>, baseline: &Option<Stats>) -> String {
    let difference = match (ours, baseline) {
        (Some(o), Some(b)) => format!("{:+.0}", o.median - b.median),
        _ => "?".into(),
    };
    format!(" {} | {difference} |", cell(baseline))
}

/// One run on the Bun demo: the page-fault program's BPF time per page fault of the server, as `run` has it.
fn bun_ns_per_fault(bench: &Bench, run: BunRun, rep: usize) -> Result<f64> {
    const SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let kind = run.slug();
    let dir = bench.work.join(format!("walk-bun-{kind}-{rep}"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let server = BunServer::start(bench, &dir)?;
    drive(bench, &server, &dir, "warmup")?;
    let args = ["--quiet", "--no-alloc", "--overhead", "off"];
    let tracer = attach_tracer_with(run.tracer(bench), &server, &args, &run.env(), &dir)?
        .ok_or_else(|| anyhow!("the tracer rejected {args:?}: see {}", dir.join("tracer.stderr").display()))?;
    let faults = || {
        let fields = proc_stat_fields(&server.process.pid.to_string());
        // minflt and majflt: the 10th and 12th fields of /proc/PID/stat, counted from the state (3rd).
        fields.get(7).copied().unwrap_or(0.0) + fields.get(9).copied().unwrap_or(0.0)
    };
    fs::write(SWITCH, "1").context("cannot turn on the kernel's BPF statistics")?;
    let (before, faults_before) = (bpf_stats::program_named(tracer.pid, Event::PageFault.program()), faults());
    let round = drive(bench, &server, &dir, "measured");
    let (after, faults_after) = (bpf_stats::program_named(tracer.pid, Event::PageFault.program()), faults());
    let _ = fs::write(SWITCH, "0");
    round?;
    stop_tracer(tracer, &dir)?;
    let (before, after) = (before?, after?);
    let faults = faults_after - faults_before;
    let runs = after.runs.saturating_sub(before.runs);
    eprintln!(
        "xtask bench: Bun demo, {}: {runs} runs of the page-fault program, {faults} server page faults",
        run.name()
    );
    if faults < 1000.0 {
        bail!("the Bun demo server took only {faults} page faults in a round");
    }
    Ok(after.ns.saturating_sub(before.ns) as f64 / faults)
}

/// One run: the event's program's BPF time per event at `depth` with `walk`, and for mallocs the return
/// program's.
fn ns_per_event(bench: &Bench, event: Event, depth: u32, walk: Walk, rep: usize) -> Result<(f64, Option<f64>)> {
    const SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let count = if bench.options.quick { COUNT_QUICK } else { COUNT };
    let kind = walk.slug();
    let mode = event.mode();
    let dir = bench.work.join(format!("walk-{mode}-{depth}-{kind}-{rep}"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut command = Command::new(&bench.deep_stack);
    command
        .args([depth.to_string(), count.to_string(), mode.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(&dir, "target.stderr")?);
    let mut target = Process::spawn("deep_stack", &mut command)?;
    let target_lines = target.lines_of_stdout(&dir.join("target.stdout"))?;
    wait_for_line(&target_lines, "ready", Duration::from_secs(10))?;
    let mut command = Command::new(walk.tracer(bench));
    command
        .args(["--quiet", "--overhead", "off", "--pid"])
        .arg(target.pid.to_string())
        .arg("--output")
        .arg(dir.join("report"))
        .stdin(Stdio::null())
        .stdout(log_file(&dir, "tracer.stdout")?)
        .stderr(Stdio::piped());
    command.envs(walk.env());
    let mut tracer = Process::spawn("dispatch-leaktrace", &mut command)?;
    let tracer_lines = tracer.lines_of_stderr(&dir.join("tracer.stderr"))?;
    wait_for_line(&tracer_lines, "tracing pid", Duration::from_secs(120))
        .map_err(|error| failure(&format!("the tracer did not attach ({error:#})"), &dir.join("tracer.stderr")))?;
    fs::write(SWITCH, "1").context("cannot turn on the kernel's BPF statistics")?;
    let returns = || (event == Event::Malloc).then(|| bpf_stats::program_named(tracer.pid, "alloc_return"));
    let (before, returns_before) = (bpf_stats::program_named(tracer.pid, event.program()), returns());
    target.signal(Signal::SIGUSR1)?;
    let done = wait_for_line(&target_lines, "done", Duration::from_secs(300));
    let (after, returns_after) = (bpf_stats::program_named(tracer.pid, event.program()), returns());
    let _ = fs::write(SWITCH, "0");
    done?;
    tracer.signal(Signal::SIGINT)?;
    let (status, _) = tracer.wait(Duration::from_secs(180))?;
    if !status.success() {
        return Err(failure(&format!("the tracer failed ({status})"), &dir.join("tracer.stderr")));
    }
    let (before, after) = (before?, after?);
    let runs = after.runs.saturating_sub(before.runs);
    // Every malloc and every page touched runs the program once; fewer means the probes missed some.
    if runs < count {
        bail!("{} ran {runs} times for {count} {}s", event.program(), event.name());
    }
    let return_ns = match (returns_before, returns_after) {
        (Some(before), Some(after)) => {
            let (before, after) = (before?, after?);
            Some(after.ns.saturating_sub(before.ns) as f64 / count as f64)
        }
        _ => None,
    };
    Ok((after.ns.saturating_sub(before.ns) as f64 / count as f64, return_ns))
}

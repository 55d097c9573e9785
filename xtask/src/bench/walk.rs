//! The stack walk: the kernel's BPF run time of the tracer's allocator entry program per malloc, with the
//! tracer's own walk of the stack and with the kernel's (`bpf_get_stackid`, `LEAKTRACE_KERNEL_WALK=1`), on
//! `bench/deep_stack.c` at several depths: the same host, the same run, alternating.

use nix::sys::signal::Signal;

use super::*;

/// Frames of `descend` above the allocating function: with main, allocate, malloc and the C runtime's start,
/// the stack is 5 frames deeper.
const DEPTHS: [u32; 4] = [2, 16, 60, 120];
const BLOCKS: u64 = 200_000;
const BLOCKS_QUICK: u64 = 50_000;
const ENTRY_PROGRAM: &str = "alloc_entry";

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
    /// (depth, walk) -> ns of the entry program per malloc, one per repetition.
    pub(super) ns_per_malloc: Vec<(u32, Walk, Vec<f64>)>,
    pub(super) failure: Option<String>,
}

impl WalkSeries {
    pub(super) fn measure(bench: &Bench) -> Self {
        let mut series = Self { ns_per_malloc: Vec::new(), failure: None };
        for depth in DEPTHS {
            for walk in Walk::ALL {
                series.ns_per_malloc.push((depth, walk, Vec::new()));
            }
        }
        let runs = bench.options.runs;
        'runs: for rep in 0..runs {
            for depth in DEPTHS {
                for walk in rotated(&Walk::ALL, rep) {
                    eprintln!("xtask bench: [{}/{runs}] stack walk, depth {depth}, {}", rep + 1, walk.name());
                    match entry_ns_per_malloc(bench, depth, walk, rep) {
                        Ok(ns) => {
                            let row = series.ns_per_malloc.iter_mut().find(|(d, w, _)| *d == depth && *w == walk);
                            row.expect("every row made above").2.push(ns);
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
        let _ = writeln!(md, "## Stack walk: BPF time per malloc\n");
        let _ = writeln!(
            md,
            "`bench/deep_stack.c N` recurses N + 1 frames, then mallocs {} blocks of 64 bytes and keeps them (so every \
             run of the allocator entry program is a malloc, with its stack). The tracer is attached by pid \
             (`--overhead off`), with its own walk of the stack (the default) or the kernel's \
             (`LEAKTRACE_KERNEL_WALK=1`: `bpf_get_stackid`), alternating, at each depth; the figure is the \
             run time of `{ENTRY_PROGRAM}` over its runs during the mallocs, from the kernel's BPF statistics \
             (`kernel.bpf_stats_enabled`), the median of the repetitions (min-max in brackets). The return \
             program (block recorded) is not in it. *Frames*: the stack's depth as the tracer reports it.\n",
            thousands(BLOCKS)
        );
        if let Some(failure) = &self.failure {
            let _ = writeln!(md, "Stopped: {}\n", first_line(failure));
        }
        let _ = writeln!(md, "| N | frames | kernel's walk, ns/malloc | our walk, ns/malloc | ratio |");
        let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
        for depth in DEPTHS {
            let stats = |walk: Walk| {
                let row = self.ns_per_malloc.iter().find(|(d, w, _)| *d == depth && *w == walk);
                row.and_then(|(_, _, values)| Stats::of(values.clone()))
            };
            let cell = |stats: &Option<Stats>| {
                stats.as_ref().map_or("?".into(), |s| format!("{:.0} [{:.0}-{:.0}]", s.median, s.min, s.max))
            };
            let (kernel, ours) = (stats(Walk::Kernel), stats(Walk::Ours));
            let ratio = match (&kernel, &ours) {
                (Some(k), Some(o)) if o.median > 0.0 => format!("{:.2}x", k.median / o.median),
                _ => "?".into(),
            };
            let _ = writeln!(md, "| {depth} | {} | {} | {} | {ratio} |", depth + 5, cell(&kernel), cell(&ours));
        }
        let _ = writeln!(md);
    }
}

/// One run: the entry program's BPF time per malloc at `depth` with `walk`.
fn entry_ns_per_malloc(bench: &Bench, depth: u32, walk: Walk, rep: usize) -> Result<f64> {
    const SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let blocks = if bench.options.quick { BLOCKS_QUICK } else { BLOCKS };
    let kind = if walk == Walk::Kernel { "kernel" } else { "ours" };
    let dir = bench.work.join(format!("walk-{depth}-{kind}-{rep}"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut command = Command::new(&bench.deep_stack);
    command
        .args([depth.to_string(), blocks.to_string()])
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
    let before = program_stats(tracer.pid, ENTRY_PROGRAM);
    target.signal(Signal::SIGUSR1)?;
    let done = wait_for_line(&target_lines, "done", Duration::from_secs(300));
    let after = program_stats(tracer.pid, ENTRY_PROGRAM);
    let _ = fs::write(SWITCH, "0");
    done?;
    tracer.signal(Signal::SIGINT)?;
    let (status, _) = tracer.wait(Duration::from_secs(180))?;
    if !status.success() {
        return Err(failure(&format!("the tracer failed ({status})"), &dir.join("tracer.stderr")));
    }
    let ((runs_before, ns_before), (runs_after, ns_after)) = (before?, after?);
    let runs = runs_after.saturating_sub(runs_before);
    // Every malloc runs the entry program once; fewer means the probes missed calls.
    if runs < blocks {
        bail!("{ENTRY_PROGRAM} ran {runs} times for {blocks} mallocs");
    }
    Ok(ns_after.saturating_sub(ns_before) as f64 / runs as f64)
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

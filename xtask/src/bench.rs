//! `cargo xtask bench`: what tracing costs, measured in one run and written to BENCHMARKS.md.
//!
//! - `bench/malloc_bench.c` (millions of small malloc/free pairs) untraced, under dispatch-leaktrace in each
//!   of its modes, under count-only uprobes on the same functions (the kernel's floor for those probes:
//!   bpftrace's at the functions' entry, and tracefs uprobe events where the tracer places its own), under
//!   a bpftrace memleak-style script (`bench/memleak.bt`) and under heaptrack.
//! - The Bun demo's turns per second, untraced and with dispatch-leaktrace attached by pid.
//! - The tracer's own memory over a long run: `bench/long_run.c` replays hours of a server's page faults
//!   from tens of thousands of stacks in a couple of minutes, under the default budget and a small one
//!   (one run each, after the repetitions).
//!
//! Each figure is a median over repeated runs. The configurations run interleaved (one run of each, then
//! the next round, each round in a rotated order) so that a burst of load from elsewhere spreads over all
//! of them instead of skewing one. Every process started here gets a process group of its own, killed on
//! every way out: errors, timeouts, and Ctrl-C or SIGTERM to the xtask itself, which also removes the
//! tracefs events it made and restores `tracing_on`.

use std::{
    fmt::Write as _,
    fs::{self, File},
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{root, setup};

const USAGE: &str = "usage: cargo xtask bench [--runs N] [--quick] [--pairs N] [--long-turns N] [--long-run-only]

  --runs N          repetitions of every configuration (default 5); figures are medians
  --quick           one run of each with a smaller workload, to try the harness out
  --pairs N         malloc/free pairs per malloc_bench run (default 1000000; 200000 with --quick)
  --long-turns N    turns of the long-run memory benchmark under the default budget (default 7200, two hours
                    of production at a turn a second; 720 with --quick); the small budget gets half
  --long-run-only   only the long-run memory benchmark: printed and written to target/bench/long-run.md,
                    BENCHMARKS.md is left alone

Run as root. Rewrites BENCHMARKS.md at the repository root.";

/// The sampling period passed to the sampled allocator mode.
const SAMPLE_BYTES: &str = "524288";
/// Turns the Bun driver keeps in flight at once, as in the demo.
const BUN_CONCURRENCY: &str = "2";

// ------------------------------------------------------------------------------------------------------
// Options
// ------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Options {
    runs: usize,
    quick: bool,
    /// malloc/free pairs per malloc_bench run.
    pairs: u64,
    /// Turns in each Bun driver round (the warm-up round and every measured round).
    turns: u32,
    /// Measured rounds per Bun server session (after one warm-up round).
    rounds: usize,
    /// Turns of bench/long_run under the default memory budget (the small budget gets half).
    long_turns: u64,
    /// Only the long-run memory benchmark.
    long_run_only: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut runs = None;
        let mut pairs = None;
        let mut long_turns = None;
        let mut quick = false;
        let mut long_run_only = false;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> Result<u64> {
                let text = args.next().ok_or_else(|| anyhow!("{name} needs a value\n\n{USAGE}"))?;
                text.parse().ok().filter(|n| *n > 0).ok_or_else(|| anyhow!("{name} {text}: not a positive integer"))
            };
            match arg.as_str() {
                "--runs" => runs = Some(value("--runs")? as usize),
                "--pairs" => pairs = Some(value("--pairs")?),
                "--long-turns" => long_turns = Some(value("--long-turns")?),
                "--quick" => quick = true,
                "--long-run-only" => long_run_only = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}\n\n{USAGE}"),
            }
        }
        let (default_runs, default_pairs, default_long_turns) = Self::defaults(quick);
        Ok(Self {
            runs: runs.unwrap_or(default_runs),
            quick,
            pairs: pairs.unwrap_or(default_pairs),
            turns: if quick { 40 } else { 100 },
            rounds: if quick { 1 } else { 2 },
            long_turns: long_turns.unwrap_or(default_long_turns),
            long_run_only,
        })
    }

    /// (runs, pairs, long-run turns) unless told otherwise.
    fn defaults(quick: bool) -> (usize, u64, u64) {
        if quick { (1, 200_000, 720) } else { (5, 1_000_000, 7_200) }
    }

    /// The command line that reproduces this run.
    fn command_line(&self) -> String {
        let mut line = String::from("sudo cargo xtask bench");
        if self.quick {
            line.push_str(" --quick");
        }
        let (default_runs, default_pairs, default_long_turns) = Self::defaults(self.quick);
        if self.runs != default_runs {
            let _ = write!(line, " --runs {}", self.runs);
        }
        if self.pairs != default_pairs {
            let _ = write!(line, " --pairs {}", self.pairs);
        }
        if self.long_turns != default_long_turns {
            let _ = write!(line, " --long-turns {}", self.long_turns);
        }
        if self.long_run_only {
            line.push_str(" --long-run-only");
        }
        line
    }
}

// ------------------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------------------

/// Paths and tools every measurement needs.
struct Bench {
    options: Options,
    tracer: PathBuf,
    malloc_bench: PathBuf,
    long_run: PathBuf,
    /// None with --long-run-only (not needed, so not installed).
    bun: Option<PathBuf>,
    bpftrace: Option<PathBuf>,
    heaptrack: Option<PathBuf>,
    perf: Option<PathBuf>,
    /// Where the tracer probes glibc's malloc and free, for the floor at the same placement; or why that
    /// is not known.
    placements: Result<Placements, String>,
    /// target/bench: each run's output, logs and reports, in a folder of its own.
    work: PathBuf,
}

pub fn run(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    if !crate::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root (sudo -E cargo xtask bench)");
    }
    install_signal_handlers();
    crate::build()?;
    let bench = prepare(options)?;
    let started = Instant::now();
    let mut load = vec![load_average()];
    let mut cpu = vec![CpuSample::now()];
    let machine = Machine::describe();

    let mut malloc = MallocSeries::new(&bench);
    let mut bun = BunSeries::new();
    let runs = if bench.options.long_run_only { 0 } else { bench.options.runs };
    for rep in 0..runs {
        for config in rotated(&MallocConfig::ALL, rep) {
            eprintln!("xtask bench: [{}/{runs}] malloc_bench, {}", rep + 1, config.name());
            malloc.run(config, &bench, rep)?;
        }
        for config in rotated(&BunConfig::ALL, rep) {
            eprintln!("xtask bench: [{}/{runs}] Bun demo, {}", rep + 1, config.name());
            bun.run(config, &bench, rep)?;
        }
        load.push(load_average());
        cpu.push(CpuSample::now());
    }
    let long_run = LongRunSeries::measure(&bench);

    let report = Report {
        options: &bench.options,
        machine,
        load,
        cpu,
        elapsed: started.elapsed(),
        malloc,
        bun,
        long_run,
        placements: &bench.placements,
    };
    let path = if bench.options.long_run_only { bench.work.join("long-run.md") } else { root().join("BENCHMARKS.md") };
    let markdown = report.render();
    fs::write(&path, &markdown).with_context(|| format!("cannot write {}", path.display()))?;
    if bench.options.long_run_only {
        print!("{markdown}");
    }
    eprintln!("xtask bench: done in {:.0} s; wrote {}", started.elapsed().as_secs_f64(), path.display());
    print!("{}", report.goals_text());
    let failed = report.failures();
    if !failed.is_empty() {
        bail!("some configurations failed (see BENCHMARKS.md and target/bench/): {}", failed.join(", "));
    }
    Ok(())
}

/// Compiles the workloads, finds the tools, mounts tracefs (bpftrace and the floor need it), clears
/// target/bench, and finds where the tracer places its probes on glibc's malloc and free.
fn prepare(options: Options) -> Result<Bench> {
    let work = root().join("target/bench");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    let malloc_bench = compile(&work, "malloc_bench")?;
    let long_run = compile(&work, "long_run")?;
    let tracer = root().join("target/release/dispatch-leaktrace");
    let long_run_only = options.long_run_only;
    if !long_run_only {
        // Without them the comparison rows say "not available"; the rest is still measured.
        if let Err(error) = setup::bench_tools() {
            eprintln!("xtask bench: warning: cannot install bpftrace and perf: {error:#}");
        }
    }
    let (bpftrace, perf) = if long_run_only { (None, None) } else { (on_path("bpftrace"), on_path("perf")) };
    let tracefs = if long_run_only { Ok(()) } else { ensure_tracefs() };
    let placements = match (&tracefs, long_run_only) {
        (_, true) => Err("not measured with --long-run-only".to_string()),
        (Err(error), _) => Err(format!("no tracefs: {error:#}")),
        (Ok(()), false) => {
            remove_stale_floor_events();
            find_placements(&tracer, &malloc_bench, &work).map_err(|error| format!("{error:#}"))
        }
    };
    if let Err(why) = &placements {
        eprintln!("xtask bench: no floor at the tracer's placement: {why}");
    }
    Ok(Bench {
        options,
        tracer,
        malloc_bench,
        long_run,
        bun: if long_run_only { None } else { Some(setup::bun()?) },
        bpftrace: bpftrace.filter(|_| tracefs.is_ok()),
        heaptrack: on_path("heaptrack"),
        perf,
        placements,
        work,
    })
}

impl Bench {
    fn bun(&self) -> &Path {
        self.bun.as_deref().expect("installed unless --long-run-only, which runs no Bun demo")
    }
}

/// Builds bench/NAME.c into target/bench/NAME, as the tracers need it: frame pointers, symbols.
fn compile(work: &Path, name: &str) -> Result<PathBuf> {
    let binary = work.join(name);
    crate::setup::compile_c(&root().join("bench").join(format!("{name}.c")), &binary, &["-O2", "-Wall"])?;
    Ok(binary)
}

/// bpftrace and the floor's uprobe events need tracefs; it may not be mounted on a fresh machine.
fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("uprobe_events").exists() {
        return Ok(());
    }
    crate::run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS])).context("cannot mount tracefs")
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// The configurations in the order of this repetition: each starts one place later than in the last.
fn rotated<T: Copy>(all: &[T], rep: usize) -> Vec<T> {
    let shift = rep % all.len();
    all[shift..].iter().chain(&all[..shift]).copied().collect()
}

/// A folder of its own for one run of one configuration; a retry gets another, so both keep their logs.
fn run_dir(bench: &Bench, family: &str, slug: &str, rep: usize, attempt: usize) -> Result<PathBuf> {
    let retry = if attempt > 0 { "-retry" } else { "" };
    let dir = bench.work.join(family).join(format!("{slug}-{}{retry}", rep + 1));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

// ------------------------------------------------------------------------------------------------------
// What each figure is for, and whether it can be measured here
// ------------------------------------------------------------------------------------------------------

/// The figures of one configuration, and what stopped it if something did.
struct Series<S> {
    samples: Vec<S>,
    /// Why there are no (more) samples: not available here, or failed.
    stopped: Option<Stopped>,
    /// The first lines of the errors of runs that failed once and were retried.
    retried: Vec<String>,
}

enum Stopped {
    /// Cannot run on this machine or with this tracer build: a note, not an error.
    Unavailable(String),
    Failed(String),
}

/// Why a tracer mode has no figures when the build does not know its option.
const SAMPLING_UNAVAILABLE: &str = "the tracer rejects --sample-bytes (exit code 2): not in this build";

impl<S> Series<S> {
    fn new() -> Self {
        Self { samples: Vec::new(), stopped: None, retried: Vec::new() }
    }

    fn unavailable(reason: &str) -> Self {
        Self { stopped: Some(Stopped::Unavailable(reason.to_string())), ..Self::new() }
    }

    /// One measurement: `run(attempt)` gives a sample, or `None` when the tracer rejects the mode's option.
    /// A failed run is retried once, and noted: a tool or target failing now and then should not cost a
    /// configuration all its figures. A second failure stops the configuration (the others go on); its
    /// error is returned for the caller to judge.
    fn measure(&mut self, name: &str, mut run: impl FnMut(usize) -> Result<Option<S>>) -> Option<String> {
        if !self.active() {
            return None;
        }
        let mut outcome = run(0);
        if let Err(error) = &outcome {
            eprintln!("xtask bench: {name} failed, trying once more: {error:#}");
            self.retried.push(first_line(&format!("{error:#}")).to_string());
            outcome = run(1);
        }
        match outcome {
            Ok(Some(sample)) => self.samples.push(sample),
            Ok(None) => self.stopped = Some(Stopped::Unavailable(SAMPLING_UNAVAILABLE.to_string())),
            Err(error) => {
                eprintln!("xtask bench: {name} failed again: {error:#}");
                let text = format!("{error:#}");
                self.stopped = Some(Stopped::Failed(text.clone()));
                return Some(text);
            }
        }
        None
    }

    fn active(&self) -> bool {
        self.stopped.is_none()
    }

    fn stats(&self, value: impl Fn(&S) -> f64) -> Option<Stats> {
        Stats::of(self.samples.iter().map(value).collect())
    }

    /// [`Self::stats`] of a figure some samples lack.
    fn stats_of_some(&self, value: impl Fn(&S) -> Option<f64>) -> Option<Stats> {
        Stats::of(self.samples.iter().filter_map(value).collect())
    }
}

// ------------------------------------------------------------------------------------------------------
// malloc_bench
// ------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MallocConfig {
    Untraced,
    Full,
    Sampled,
    Faults,
    /// bpftrace's count-only uprobes at the functions' entry.
    CountOnly,
    /// Count-only tracefs uprobe events where the tracer places its probes, counted by perf stat in
    /// malloc_bench alone: the floor of the goal.
    PlacedFloor,
    /// The same events enabled in ftrace (every process) with tracing_on 0: they fire, nothing is recorded.
    FtraceQuiet,
    /// The same with tracing_on 1: every hit is also written into the trace ring buffer.
    FtraceRecording,
    Memleak,
    Heaptrack,
}

impl MallocConfig {
    const ALL: [Self; 10] = [
        Self::Untraced,
        Self::Full,
        Self::Sampled,
        Self::Faults,
        Self::CountOnly,
        Self::PlacedFloor,
        Self::FtraceQuiet,
        Self::FtraceRecording,
        Self::Memleak,
        Self::Heaptrack,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Full => "dispatch-leaktrace, full allocator mode",
            Self::Sampled => "dispatch-leaktrace, sampled allocator mode",
            Self::Faults => "dispatch-leaktrace, page-fault mode",
            Self::CountOnly => "count-only uprobes at the functions' entry (bpftrace): entry floor",
            Self::PlacedFloor => "count-only uprobes at the tracer's placement (tracefs + perf stat): the floor",
            Self::FtraceQuiet => "the same uprobes enabled in ftrace, tracing_on 0 (nothing recorded)",
            Self::FtraceRecording => "the same uprobes enabled in ftrace, tracing_on 1 (each hit recorded)",
            Self::Memleak => "bpftrace memleak-style script",
            Self::Heaptrack => "heaptrack",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Full => "full",
            Self::Sampled => "sampled",
            Self::Faults => "faults",
            Self::CountOnly => "count-only",
            Self::PlacedFloor => "placed-floor",
            Self::FtraceQuiet => "ftrace-quiet",
            Self::FtraceRecording => "ftrace-recording",
            Self::Memleak => "memleak",
            Self::Heaptrack => "heaptrack",
        }
    }

    /// How the run is launched, as written in BENCHMARKS.md.
    fn command_text(self) -> String {
        let tail = "-- ./malloc_bench";
        let names = "leaktrace_PID_{malloc_entry,malloc_return,free_entry}";
        let events = format!("{FLOOR_GROUP}:{names}");
        let enable = format!("echo 1 > events/{FLOOR_GROUP}/{names}/enable");
        match self {
            Self::Untraced => "./malloc_bench".into(),
            Self::Full => format!("dispatch-leaktrace --no-faults {tail}"),
            Self::Sampled => format!("dispatch-leaktrace --no-faults --sample-bytes {SAMPLE_BYTES} {tail}"),
            Self::Faults => format!("dispatch-leaktrace --no-alloc {tail}"),
            Self::CountOnly => "bpftrace -c ./malloc_bench bench/count_only.bt".into(),
            Self::PlacedFloor => format!("perf stat -e {events} {tail}"),
            Self::FtraceQuiet => format!("{enable}; echo 0 > tracing_on; ./malloc_bench"),
            Self::FtraceRecording => format!("{enable}; echo 1 > tracing_on; ./malloc_bench"),
            Self::Memleak => "bpftrace -c ./malloc_bench bench/memleak.bt".into(),
            Self::Heaptrack => "heaptrack ./malloc_bench".into(),
        }
    }

    /// Whether its probes are the tracefs events at the tracer's placement.
    fn uses_floor_events(self) -> bool {
        matches!(self, Self::PlacedFloor | Self::FtraceQuiet | Self::FtraceRecording)
    }

    fn tracer_args(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Full => Some(&["--no-faults"]),
            Self::Sampled => Some(&["--no-faults", "--sample-bytes", SAMPLE_BYTES]),
            Self::Faults => Some(&["--no-alloc"]),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct MallocSample {
    /// The benchmark's own time for its loop: what the probes cost while it runs.
    loop_seconds: f64,
    /// The whole command, from launch to exit: adds the tool's start, attach, detach and its reports.
    wall_seconds: f64,
    /// What malloc_bench kept from its loop, and what the tracer's report says is outstanding.
    retained: Outstanding,
    /// The bytes malloc_bench allocated in its loop, kept or freed: the ground truth of the allocator's
    /// `allocated_bytes` (what sampling estimates).
    allocated: Option<u64>,
    reported: Option<Reported>,
    /// How often the count-only probes fired.
    hits: Option<ProbeHits>,
}

/// Hits of count-only probes: malloc's entry and return, free's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProbeHits {
    malloc_entry: u64,
    malloc_return: u64,
    free_entry: u64,
}

/// Blocks and bytes still allocated at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outstanding {
    blocks: u64,
    bytes: u64,
}

/// From the tracer's report.json: the allocator's outstanding memory, and events the tracer lost.
#[derive(Clone, Copy, Debug)]
struct Reported {
    malloc: Option<Outstanding>,
    /// The allocator's allocated bytes, all sites.
    malloc_allocated: Option<u64>,
    lost_events: Option<u64>,
}

struct MallocSeries {
    series: Vec<(MallocConfig, Series<MallocSample>)>,
}

impl MallocSeries {
    fn new(bench: &Bench) -> Self {
        let series = MallocConfig::ALL
            .iter()
            .map(|&config| {
                let missing = match config {
                    MallocConfig::CountOnly | MallocConfig::Memleak if bench.bpftrace.is_none() => {
                        Some("bpftrace is not on PATH".to_string())
                    }
                    MallocConfig::Heaptrack if bench.heaptrack.is_none() => Some("heaptrack is not on PATH".into()),
                    MallocConfig::PlacedFloor if bench.perf.is_none() => Some("perf is not on PATH".into()),
                    _ if config.uses_floor_events() => bench.placements.as_ref().err().cloned(),
                    _ => None,
                };
                (config, missing.map_or_else(Series::new, |why| Series::unavailable(&why)))
            })
            .collect();
        Self { series }
    }

    fn get(&self, config: MallocConfig) -> &Series<MallocSample> {
        &self.series.iter().find(|(c, _)| *c == config).expect("every configuration has a series").1
    }

    fn run(&mut self, config: MallocConfig, bench: &Bench, rep: usize) -> Result<()> {
        let series = &mut self.series.iter_mut().find(|(c, _)| *c == config).expect("has a series").1;
        let failed = series.measure(config.name(), |attempt| run_malloc_bench(config, bench, rep, attempt));
        match failed {
            // Without the untraced baseline no figure means anything: stop at once.
            Some(error) if config == MallocConfig::Untraced => bail!("the untraced malloc_bench run failed: {error}"),
            _ => Ok(()),
        }
    }
}

/// One run of malloc_bench in one configuration. `Ok(None)`: the tracer does not know the mode's option.
fn run_malloc_bench(config: MallocConfig, bench: &Bench, rep: usize, attempt: usize) -> Result<Option<MallocSample>> {
    let dir = run_dir(bench, "malloc", config.slug(), rep, attempt)?;
    let argv = [bench.malloc_bench.display().to_string(), bench.options.pairs.to_string()];
    // Declared before the process, so dropped after it: the events are removed once nothing uses them.
    let mut floor = match (config.uses_floor_events(), &bench.placements) {
        (true, Ok(placements)) => Some(FloorEvents::create(placements)?),
        (true, Err(why)) => bail!("no placements: {why}"),
        (false, _) => None,
    };
    if let Some(floor) = &mut floor {
        match config {
            MallocConfig::FtraceQuiet => floor.enable_in_ftrace(false)?,
            MallocConfig::FtraceRecording => floor.enable_in_ftrace(true)?,
            _ => {}
        }
    }
    let hits_before = floor.as_ref().map(FloorEvents::profile_hits);
    let mut command = malloc_command(config, bench, &dir, &argv);
    command.current_dir(&dir).stdin(Stdio::null()).stdout(log_file(&dir, "stdout")?).stderr(log_file(&dir, "stderr")?);

    let started = Instant::now();
    let mut process = Process::spawn(config.name(), &mut command)?;
    let (status, ended) = process.wait(malloc_timeout(bench.options.pairs))?;
    let wall_seconds = ended.duration_since(started).as_secs_f64();
    let hits_after = floor.as_ref().map(FloorEvents::profile_hits);
    if let Some(floor) = floor.take() {
        floor.remove()?;
    }
    if config == MallocConfig::Sampled && status.code() == Some(2) {
        return Ok(None);
    }
    if !status.success() {
        return Err(failure(&format!("{} ({status})", config.command_text()), &dir.join("stderr")));
    }
    let stdout = fs::read_to_string(dir.join("stdout"))?;
    let (loop_seconds, retained) = parse_malloc_bench(&stdout)
        .with_context(|| format!("no timing line from malloc_bench in {}", dir.join("stdout").display()))?;
    if config == MallocConfig::Heaptrack {
        remove_heaptrack_data(&dir); // tens of MB per run, and only the time matters here
    }
    let reported = config.tracer_args().and_then(|_| read_report(&dir.join("report/report.json")));
    let hits = match config {
        MallocConfig::CountOnly => parse_bpftrace_counts(&stdout),
        MallocConfig::PlacedFloor => {
            parse_perf_stat(&fs::read_to_string(dir.join("perf-stat.csv")).unwrap_or_default())
        }
        // The events' own counters (uprobe_profile): in ftrace they fire in every process, so these
        // include other processes' calls.
        MallocConfig::FtraceQuiet | MallocConfig::FtraceRecording => {
            hits_before.flatten().zip(hits_after.flatten()).map(|(before, after)| ProbeHits {
                malloc_entry: after.malloc_entry.saturating_sub(before.malloc_entry),
                malloc_return: after.malloc_return.saturating_sub(before.malloc_return),
                free_entry: after.free_entry.saturating_sub(before.free_entry),
            })
        }
        _ => None,
    };
    let allocated = parse_allocated(&stdout);
    Ok(Some(MallocSample { loop_seconds, wall_seconds, retained, allocated, reported, hits }))
}

/// `@malloc_entry: N` and the like, printed by bench/count_only.bt at its end.
fn parse_bpftrace_counts(stdout: &str) -> Option<ProbeHits> {
    let count = |name: &str| {
        let prefix = format!("@{name}: ");
        stdout.lines().find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
    };
    Some(ProbeHits {
        malloc_entry: count("malloc_entry")?,
        malloc_return: count("malloc_return")?,
        free_entry: count("free_entry")?,
    })
}

/// `perf stat -x ,` output: `COUNT,UNIT,EVENT,...` a line per event (`GROUP:EVENT`).
fn parse_perf_stat(csv: &str) -> Option<ProbeHits> {
    let count = |name: &str| {
        csv.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let event = fields.get(2)?;
            event.rsplit_once(':').filter(|(_, event)| event.ends_with(name))?;
            fields.first()?.parse().ok()
        })
    };
    Some(ProbeHits {
        malloc_entry: count("malloc_entry")?,
        malloc_return: count("malloc_return")?,
        free_entry: count("free_entry")?,
    })
}

/// The figures the accuracy check needs from report.json.
fn read_report(path: &Path) -> Option<Reported> {
    let text = fs::read_to_string(path).ok()?;
    let report = Json::parse_keys(&text, &["totals", "counters"]).ok()?;
    let number = |path: &[&str]| report.at(path).and_then(Json::as_u64);
    let malloc = match (
        number(&["totals", "by_source", "malloc", "outstanding_allocs"]),
        number(&["totals", "by_source", "malloc", "outstanding_bytes"]),
    ) {
        (Some(blocks), Some(bytes)) => Some(Outstanding { blocks, bytes }),
        _ => None,
    };
    Some(Reported {
        malloc,
        malloc_allocated: number(&["totals", "by_source", "malloc", "allocated_bytes"]),
        lost_events: number(&["counters", "lost_events"]),
    })
}

fn malloc_command(config: MallocConfig, bench: &Bench, dir: &Path, argv: &[String]) -> Command {
    if let Some(args) = config.tracer_args() {
        let mut command = Command::new(&bench.tracer);
        command.args(args).arg("--output").arg(dir.join("report")).arg("--").args(argv);
        return command;
    }
    match config {
        // The ftrace configurations: the events were enabled before the launch.
        MallocConfig::Untraced | MallocConfig::FtraceQuiet | MallocConfig::FtraceRecording => {
            let mut command = Command::new(&argv[0]);
            command.args(&argv[1..]);
            command
        }
        MallocConfig::PlacedFloor => {
            // perf stat opens each event as a counter on malloc_bench alone (enabled at its exec): the
            // kernel installs the breakpoints in its memory only, as for the tracer's and bpftrace's
            // uprobes, and counts hits without recording anything.
            let mut command = Command::new(bench.perf.as_ref().expect("checked before the first run"));
            command.args(["stat", "-x", ",", "-o"]).arg(dir.join("perf-stat.csv"));
            for event in FLOOR_EVENTS {
                command.arg("-e").arg(format!("{FLOOR_GROUP}:{}", floor_event_name(event.name)));
            }
            command.arg("--").args(argv);
            command
        }
        MallocConfig::CountOnly | MallocConfig::Memleak => {
            let script = if config == MallocConfig::CountOnly { "count_only.bt" } else { "memleak.bt" };
            let mut command = Command::new(bench.bpftrace.as_ref().expect("checked before the first run"));
            // `-c` starts the command once every probe is attached, and scopes the uprobes to it. Its
            // maps hold at most the retained blocks, well under this.
            command.env("BPFTRACE_MAP_KEYS_MAX", "65536").arg("-c").arg(argv.join(" "));
            command.arg(root().join("bench").join(script));
            command
        }
        MallocConfig::Heaptrack => {
            let mut command = Command::new(bench.heaptrack.as_ref().expect("checked before the first run"));
            command.args(argv);
            command
        }
        MallocConfig::Full | MallocConfig::Sampled | MallocConfig::Faults => unreachable!("tracer configurations"),
    }
}

/// Generous: about 12 µs a pair was measured under the slowest probes here, so this allows ten times that.
fn malloc_timeout(pairs: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_micros(pairs * 120)
}

/// `malloc_bench pairs N retained K retained_bytes B seconds S` -> (S, K blocks of B bytes in all).
fn parse_malloc_bench(stdout: &str) -> Option<(f64, Outstanding)> {
    let line = stdout.lines().find(|line| line.starts_with("malloc_bench pairs "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| words.iter().position(|w| *w == key).and_then(|at| words.get(at + 1));
    let retained =
        Outstanding { blocks: value("retained")?.parse().ok()?, bytes: value("retained_bytes")?.parse().ok()? };
    Some((value("seconds")?.parse().ok()?, retained))
}

/// `... allocated_bytes A` from malloc_bench's line.
fn parse_allocated(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|line| line.starts_with("malloc_bench pairs "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    words.iter().position(|w| *w == "allocated_bytes").and_then(|at| words.get(at + 1))?.parse().ok()
}

fn remove_heaptrack_data(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("heaptrack.") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

// ------------------------------------------------------------------------------------------------------
// The floor at the tracer's placement: tracefs uprobe events, no BPF program
// ------------------------------------------------------------------------------------------------------

const TRACEFS: &str = "/sys/kernel/tracing";
/// The tracefs group of the floor's uprobe events. Each event's name holds the xtask's pid, so that a
/// leftover of a killed run is recognised (and removed) by the next one.
const FLOOR_GROUP: &str = "leaktrace_bench";

/// A count-only probe of the floor, and the tracer's probe it copies.
struct FloorEvent {
    name: &'static str,
    /// As report.json's `probes` name it: "uprobe" or "uretprobe".
    kind: &'static str,
    symbol: &'static str,
}

const FLOOR_EVENTS: [FloorEvent; 3] = [
    FloorEvent { name: "malloc_entry", kind: "uprobe", symbol: "malloc" },
    FloorEvent { name: "malloc_return", kind: "uretprobe", symbol: "malloc" },
    FloorEvent { name: "free_entry", kind: "uprobe", symbol: "free" },
];

/// `leaktrace_PID_EVENT`: the tracefs event name of this xtask's floor event.
fn floor_event_name(event: &str) -> String {
    format!("leaktrace_{}_{event}", std::process::id())
}

/// Where the tracer probes glibc's malloc and free, read from its own report.json.
#[derive(Clone, Debug)]
struct Placements {
    /// The C library probed.
    object: PathBuf,
    /// In the order of FLOOR_EVENTS.
    probes: Vec<PlacedProbe>,
}

#[derive(Clone, Debug)]
struct PlacedProbe {
    /// The probe's offset in the object file.
    file_offset: u64,
    /// Bytes past the function's entry, the instruction there, and why the tracer put it there.
    offset: u64,
    instruction: String,
    reason: String,
}

/// Runs the tracer once on a short malloc_bench and takes its glibc probes from report.json's `probes`:
/// the floor then copies whatever the tracer does on this machine's C library.
fn find_placements(tracer: &Path, malloc_bench: &Path, work: &Path) -> Result<Placements> {
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
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let report = Json::parse_keys(&text, &["probes"]).with_context(|| format!("{}", path.display()))?;
    let probes = report.get("probes").map(Json::items).unwrap_or_default();
    let field = |probe: &Json, key: &str| probe.get(key).and_then(Json::as_str).map(str::to_string);
    let mut object: Option<String> = None;
    let mut placed = Vec::new();
    for event in &FLOOR_EVENTS {
        let probe = probes
            .iter()
            .find(|probe| {
                field(probe, "kind").as_deref() == Some(event.kind)
                    && field(probe, "symbol").as_deref() == Some(event.symbol)
                    && field(probe, "family").as_deref() == Some("glibc")
            })
            .ok_or_else(|| anyhow!("{} has no {} on glibc's {}", path.display(), event.kind, event.symbol))?;
        let file = field(probe, "object").ok_or_else(|| anyhow!("a probe without its object"))?;
        if *object.get_or_insert_with(|| file.clone()) != file {
            bail!("glibc's malloc and free were probed in two objects");
        }
        let placement = probe.get("placement");
        let number = |value: Option<&Json>| value.and_then(Json::as_u64);
        placed.push(PlacedProbe {
            file_offset: number(probe.get("file_offset")).ok_or_else(|| anyhow!("a probe without its offset"))?,
            offset: number(placement.and_then(|p| p.get("offset"))).unwrap_or(0),
            instruction: placement.and_then(|p| field(p, "instruction")).unwrap_or_default(),
            reason: placement.and_then(|p| field(p, "reason")).unwrap_or_default(),
        });
    }
    let object = PathBuf::from(object.expect("three probes found"));
    Ok(Placements { object, probes: placed })
}

/// The floor's uprobe events, made for one run and removed after it: on drop, and by the signal handler
/// if the xtask is stopped meanwhile (the kernel keeps tracefs events until they are removed).
struct FloorEvents {
    armed: bool,
}

impl FloorEvents {
    fn create(placements: &Placements) -> Result<Self> {
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
    fn enable_in_ftrace(&mut self, tracing_on: bool) -> Result<()> {
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
    fn profile_hits(&self) -> Option<ProbeHits> {
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

    fn remove(mut self) -> Result<()> {
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
fn append_tracefs(file: &str, text: &str) -> Result<()> {
    use std::io::Write as _;
    let path = Path::new(TRACEFS).join(file);
    let mut handle =
        fs::OpenOptions::new().append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    handle.write_all(text.as_bytes()).with_context(|| format!("cannot write {text:?} to {}", path.display()))
}

/// Removes floor events left by an xtask that is gone (killed with SIGKILL, which no handler sees).
fn remove_stale_floor_events() {
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
static FLOOR_ARMED: AtomicBool = AtomicBool::new(false);
/// tracing_on as it was before an ftrace configuration changed it (-1: unchanged).
static TRACING_ON_SAVED: AtomicI32 = AtomicI32::new(-1);

/// Disables this xtask's floor events, restores tracing_on, and removes the events (retrying for up to
/// two seconds while a just-killed perf still holds them). Returns whether none is left. The signal
/// handler runs it too, so it allocates nothing and makes only async-signal-safe calls.
fn undo_floor_events() -> bool {
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
                Ok(()) | Err(ENOENT) => {}
                Err(_) => left = true, // EBUSY: still open in a process that is exiting
            }
        }
        if !left {
            FLOOR_ARMED.store(false, Ordering::SeqCst);
            return true;
        }
        let pause = Timespec { seconds: 0, nanoseconds: 20_000_000 };
        // SAFETY: nanosleep(2) with a valid request and no remainder wanted; async-signal-safe.
        unsafe { nanosleep(&pause, std::ptr::null_mut()) };
    }
    false
}

/// A short NUL-terminated string built on the stack, for the signal handler (which may not allocate).
struct CText {
    bytes: [u8; 256],
    len: usize,
}

impl CText {
    fn new() -> Self {
        Self { bytes: [0; 256], len: 0 }
    }

    /// Appends, dropping what does not fit (one byte stays for the NUL).
    fn push(&mut self, text: &[u8]) -> &mut Self {
        let room = self.bytes.len() - 1 - self.len;
        let n = text.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
        self
    }

    fn push_number(&mut self, mut n: u32) -> &mut Self {
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

    fn text(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The text as a C string: the byte after it is always 0.
    fn c_str(&self) -> *const u8 {
        self.bytes.as_ptr()
    }
}

const O_WRONLY: i32 = 1;
const O_APPEND: i32 = 0o2000;
const ENOENT: i32 = 2;

#[repr(C)]
struct Timespec {
    seconds: i64,
    nanoseconds: i64,
}

/// open(2), write(2), close(2): appends `data` to the file at `path`; the error is errno.
fn write_raw(path: &CText, data: &[u8]) -> std::result::Result<(), i32> {
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: a NUL-terminated path; plain system calls, all async-signal-safe.
    let fd = unsafe { open(path.c_str(), O_WRONLY | O_APPEND) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `data` is valid for its length; fd is ours until closed below.
    let written = unsafe { write(fd, data.as_ptr(), data.len()) };
    let outcome = if written < 0 { Err(errno()) } else { Ok(()) };
    // SAFETY: closing the descriptor opened above.
    unsafe { close(fd) };
    outcome
}

// ------------------------------------------------------------------------------------------------------
// report.json: a small JSON reader (xtask has no JSON crate)
// ------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses a whole document.
    #[cfg(test)]
    fn parse(text: &str) -> Result<Self> {
        let mut reader = JsonReader { bytes: text.as_bytes(), at: 0 };
        let value = reader.value()?;
        reader.end()?;
        Ok(value)
    }

    /// Of a top-level object, only the members named in `keys`; the others are skipped without being
    /// built (a long run's report.json holds tens of megabytes of stacks).
    fn parse_keys(text: &str, keys: &[&str]) -> Result<Self> {
        let mut reader = JsonReader { bytes: text.as_bytes(), at: 0 };
        let mut members = Vec::new();
        reader.expect(b'{')?;
        if !reader.eat(b'}') {
            loop {
                let key = reader.string()?;
                reader.expect(b':')?;
                if keys.contains(&key.as_str()) {
                    members.push((key, reader.value()?));
                } else {
                    reader.skip_value()?;
                }
                if reader.eat(b'}') {
                    break;
                }
                reader.expect(b',')?;
            }
        }
        reader.end()?;
        Ok(Self::Object(members))
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Self::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at a path of keys.
    fn at(&self, path: &[&str]) -> Option<&Json> {
        path.iter().try_fold(self, |value, key| value.get(key))
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Number(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 9.0e15 => Some(*n as u64),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(text) => Some(text),
            _ => None,
        }
    }

    fn items(&self) -> &[Json] {
        match self {
            Self::Array(items) => items,
            _ => &[],
        }
    }
}

struct JsonReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonReader<'_> {
    fn skip_space(&mut self) {
        while self.bytes.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Result<u8> {
        self.skip_space();
        self.bytes.get(self.at).copied().ok_or_else(|| anyhow!("JSON ends early"))
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek().ok() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Result<()> {
        if !self.eat(byte) {
            bail!("JSON: expected `{}` at byte {}", byte as char, self.at);
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        self.skip_space();
        if self.at != self.bytes.len() {
            bail!("JSON: unexpected text at byte {}", self.at);
        }
        Ok(())
    }

    fn value(&mut self) -> Result<Json> {
        match self.peek()? {
            b'{' => {
                self.at += 1;
                let mut members = Vec::new();
                if !self.eat(b'}') {
                    loop {
                        let key = self.string()?;
                        self.expect(b':')?;
                        members.push((key, self.value()?));
                        if self.eat(b'}') {
                            break;
                        }
                        self.expect(b',')?;
                    }
                }
                Ok(Json::Object(members))
            }
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                if !self.eat(b']') {
                    loop {
                        items.push(self.value()?);
                        if self.eat(b']') {
                            break;
                        }
                        self.expect(b',')?;
                    }
                }
                Ok(Json::Array(items))
            }
            b'"' => Ok(Json::String(self.string()?)),
            _ => {
                let word = self.scalar()?;
                match word {
                    "null" => Ok(Json::Null),
                    "true" => Ok(Json::Bool(true)),
                    "false" => Ok(Json::Bool(false)),
                    number => Ok(Json::Number(number.parse().map_err(|_| anyhow!("JSON: not a value: {number:?}"))?)),
                }
            }
        }
    }

    /// A number or a literal: the text up to the next delimiter.
    fn scalar(&mut self) -> Result<&str> {
        self.skip_space();
        let start = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b':') && !b.is_ascii_whitespace())
        {
            self.at += 1;
        }
        if self.at == start {
            bail!("JSON: expected a value at byte {start}");
        }
        std::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| anyhow!("JSON: not UTF-8 at byte {start}"))
    }

    fn string(&mut self) -> Result<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let byte = *self.bytes.get(self.at).ok_or_else(|| anyhow!("JSON: unterminated string"))?;
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let escaped = *self.bytes.get(self.at).ok_or_else(|| anyhow!("JSON: unterminated string"))?;
                    self.at += 1;
                    let simple = match escaped {
                        b'"' => Some('"'),
                        b'\\' => Some('\\'),
                        b'/' => Some('/'),
                        b'b' => Some('\u{8}'),
                        b'f' => Some('\u{c}'),
                        b'n' => Some('\n'),
                        b'r' => Some('\r'),
                        b't' => Some('\t'),
                        b'u' => None,
                        other => bail!("JSON: bad escape \\{}", other as char),
                    };
                    let c = match simple {
                        Some(c) => c,
                        None => {
                            let mut code = self.hex4()?;
                            if (0xd800..0xdc00).contains(&code) && self.bytes[self.at..].starts_with(b"\\u") {
                                self.at += 2;
                                let low = self.hex4()?;
                                code = 0x10000 + ((code - 0xd800) << 10) + (low.wrapping_sub(0xdc00) & 0x3ff);
                            }
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                    };
                    let mut buffer = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| anyhow!("JSON: a string is not UTF-8"))
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self.bytes.get(self.at..self.at + 4).ok_or_else(|| anyhow!("JSON: short \\u escape"))?;
        self.at += 4;
        let text = std::str::from_utf8(digits).map_err(|_| anyhow!("JSON: bad \\u escape"))?;
        u32::from_str_radix(text, 16).map_err(|_| anyhow!("JSON: bad \\u escape {text}"))
    }

    /// Passes over one value without building it.
    fn skip_value(&mut self) -> Result<()> {
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    loop {
                        match self.bytes.get(self.at) {
                            None => bail!("JSON: unterminated string"),
                            Some(b'\\') => self.at += 2,
                            Some(b'"') => {
                                self.at += 1;
                                break;
                            }
                            Some(_) => self.at += 1,
                        }
                    }
                }
                b'{' | b'[' => {
                    self.at += 1;
                    depth += 1;
                    continue;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1).ok_or_else(|| anyhow!("JSON: unbalanced at byte {}", self.at))?;
                    self.at += 1;
                }
                b',' | b':' if depth > 0 => {
                    self.at += 1;
                    continue;
                }
                _ => {
                    self.scalar()?;
                }
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------
// The Bun demo
// ------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BunConfig {
    Untraced,
    Faults,
    /// Page-fault mode tracing one page in 16 (`--sample-pages 16`).
    SampledPages,
    Allocator,
    Sampled,
    /// Sampled allocator mode that also samples pages: `--sample-bytes` and `--sample-pages 16`.
    SampledBoth,
}

impl BunConfig {
    const ALL: [Self; 6] =
        [Self::Untraced, Self::Faults, Self::SampledPages, Self::Allocator, Self::Sampled, Self::SampledBoth];

    fn name(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Faults => "page-fault mode",
            Self::SampledPages => "page-fault mode, one page in 16",
            Self::Allocator => "allocator mode",
            Self::Sampled => "sampled allocator mode",
            Self::SampledBoth => "sampled allocator mode, one page in 16",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Faults => "faults",
            Self::SampledPages => "faults-sampled",
            Self::Allocator => "allocator",
            Self::Sampled => "sampled",
            Self::SampledBoth => "sampled-both",
        }
    }

    /// The tracer's options; `None`: not traced.
    fn tracer_args(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Untraced => None,
            Self::Faults => Some(&["--no-alloc"]),
            Self::SampledPages => Some(&["--no-alloc", "--sample-pages", "16"]),
            Self::Allocator => Some(&[]),
            Self::Sampled => Some(&["--sample-bytes", SAMPLE_BYTES]),
            Self::SampledBoth => Some(&["--sample-bytes", SAMPLE_BYTES, "--sample-pages", "16"]),
        }
    }

    fn command_text(self) -> String {
        match self.tracer_args() {
            None => "(not traced)".into(),
            Some(args) => format!("dispatch-leaktrace --pid PID {}", args.join(" ")).trim_end().to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct BunSample {
    turns_per_second: f64,
    /// The run time of the tracer's BPF programs per turn (kernel.bpf_stats_enabled), in a round of its
    /// own after the timed ones; all their runs, on the whole machine.
    bpf_ms: Option<f64>,
    /// CPU time per measured turn, in milliseconds: the server's in user space and in the kernel (where
    /// the probes run, in its context), and the tracer's (its collector).
    server_user_ms: f64,
    server_kernel_ms: f64,
    tracer_ms: Option<f64>,
    /// The tracer's voluntary context switches per measured turn: how often its collector is woken.
    tracer_wakeups: Option<f64>,
}

impl BunSample {
    /// The CPU per turn, server and tracer.
    fn cpu_ms(&self) -> f64 {
        self.server_user_ms + self.server_kernel_ms + self.tracer_ms.unwrap_or(0.0)
    }
}

struct BunSeries {
    series: Vec<(BunConfig, Series<BunSample>)>,
}

impl BunSeries {
    fn new() -> Self {
        Self { series: BunConfig::ALL.iter().map(|&config| (config, Series::new())).collect() }
    }

    fn get(&self, config: BunConfig) -> &Series<BunSample> {
        &self.series.iter().find(|(c, _)| *c == config).expect("every configuration has a series").1
    }

    fn run(&mut self, config: BunConfig, bench: &Bench, rep: usize) -> Result<()> {
        let series = &mut self.series.iter_mut().find(|(c, _)| *c == config).expect("has a series").1;
        let name = format!("Bun demo, {}", config.name());
        match series.measure(&name, |attempt| bun_session(config, bench, rep, attempt)) {
            Some(error) if config == BunConfig::Untraced => bail!("the untraced Bun demo run failed: {error}"),
            _ => Ok(()),
        }
    }
}

/// One server from start to stop: a warm-up round, the tracer attached by pid (as in production), the
/// measured rounds, the tracer stopped with SIGINT (as Ctrl-C would). `Ok(None)`: the tracer does not
/// know the mode's option.
fn bun_session(config: BunConfig, bench: &Bench, rep: usize, attempt: usize) -> Result<Option<BunSample>> {
    let dir = run_dir(bench, "bun", config.slug(), rep, attempt)?;
    let server = BunServer::start(bench, &dir)?;
    drive(bench, &server, &dir, "warmup")?;

    let mut tracer = None;
    if let Some(args) = config.tracer_args() {
        match attach_tracer(bench, &server, args, &dir)? {
            Some(process) => tracer = Some(process),
            None if config == BunConfig::Sampled => return Ok(None),
            None => bail!("the tracer rejected its options: see {}", dir.join("tracer.stderr").display()),
        }
    }
    let cpu_of = |process: &Process| ProcessCpu::of(process.pid);
    let (server_before, tracer_before) = (cpu_of(&server.process), tracer.as_ref().map(cpu_of));
    let (mut turns, mut seconds) = (0u64, 0.0f64);
    for round in 0..bench.options.rounds {
        let (round_turns, round_seconds) = drive(bench, &server, &dir, &format!("round{}", round + 1))?;
        turns += round_turns;
        seconds += round_seconds;
    }
    let (server_after, tracer_after) = (cpu_of(&server.process), tracer.as_ref().map(cpu_of));
    // One more round, untimed, with the kernel's BPF run-time statistics on: what our programs cost per
    // turn, free of the machine's noise. (The statistics cost time themselves: not in the timed rounds.)
    let bpf_ms = match &tracer {
        Some(tracer) => bpf_ms_per_turn(bench, &server, &dir, tracer.pid)?,
        None => None,
    };
    if let Some(tracer) = tracer {
        stop_tracer(tracer, &dir)?;
    }
    drop(server);

    let per_turn_ms = |seconds: f64| seconds * 1000.0 / turns as f64;
    Ok(Some(BunSample {
        bpf_ms,
        turns_per_second: turns as f64 / seconds,
        server_user_ms: per_turn_ms(server_after.user - server_before.user),
        server_kernel_ms: per_turn_ms(server_after.kernel - server_before.kernel),
        tracer_ms: tracer_before.zip(tracer_after).map(|(before, after)| per_turn_ms(after.total() - before.total())),
        tracer_wakeups: tracer_before
            .zip(tracer_after)
            .map(|(before, after)| (after.wakeups - before.wakeups) / turns as f64),
    }))
}

/// The demo server, JIT dump on as in production; killed (with its process group) when dropped.
struct BunServer {
    process: Process,
    port: u16,
}

impl BunServer {
    fn start(bench: &Bench, dir: &Path) -> Result<Self> {
        let jitdump = dir.join("jitdump");
        fs::create_dir_all(&jitdump)?;
        let mut command = Command::new(bench.bun());
        command
            .arg(root().join("demo/bun/server.ts"))
            .env("PORT", "0")
            .env("BUN_JSC_useJITDump", "1")
            .env("BUN_JSC_jitDumpDirectory", &jitdump)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(dir, "server.stderr")?);
        let mut process = Process::spawn("the Bun demo server", &mut command)?;
        let lines = process.lines_of_stdout(&dir.join("server.stdout"))?;
        let line = wait_for_line(&lines, "listening ", Duration::from_secs(30))
            .with_context(|| format!("the demo server did not start; see {}", dir.join("server.stderr").display()))?;
        let port = line.trim_start_matches("listening ").trim().parse().context("unreadable port")?;
        Ok(Self { process, port })
    }
}

/// One round of turns with the demo's driver: (turns, seconds) as it measured them.
fn drive(bench: &Bench, server: &BunServer, dir: &Path, label: &str) -> Result<(u64, f64)> {
    let turns = bench.options.turns.to_string();
    let out = dir.join(format!("driver-{label}.stdout"));
    let mut command = Command::new(bench.bun());
    command
        .arg(root().join("demo/bun/driver.ts"))
        .args(["--url", &format!("http://127.0.0.1:{}", server.port)])
        .args(["--turns", &turns, "--concurrency", BUN_CONCURRENCY])
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(log_file(dir, &format!("driver-{label}.stderr"))?);
    let mut process = Process::spawn("the Bun demo driver", &mut command)?;
    // Turns run at 25 to 100 a second here; a second a turn is far more than a slow machine needs.
    let timeout = Duration::from_secs(60 + u64::from(bench.options.turns));
    let (status, _) = process.wait(timeout)?;
    if !status.success() {
        let what = format!("the driver failed in round {label} ({status})");
        return Err(failure(&what, &dir.join(format!("driver-{label}.stderr"))));
    }
    let text = fs::read_to_string(&out)?;
    let (done, seconds) =
        parse_driver(&text).with_context(|| format!("no stats line from the driver in {}", out.display()))?;
    if done != u64::from(bench.options.turns) {
        bail!("the driver completed {done} of {turns} turns in round {label}");
    }
    Ok((done, seconds))
}

/// Drives one round with BPF statistics on and returns the run time of the tracer's programs per turn.
/// `None` when the statistics cannot be switched on.
fn bpf_ms_per_turn(bench: &Bench, server: &BunServer, dir: &Path, tracer: u32) -> Result<Option<f64>> {
    const SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    if fs::write(SWITCH, "1").is_err() {
        return Ok(None);
    }
    let before = bpf_run_time_ns(tracer);
    let round = drive(bench, server, dir, "bpf-stats");
    let after = bpf_run_time_ns(tracer);
    let _ = fs::write(SWITCH, "0");
    let (turns, _) = round?;
    Ok(Some(after.saturating_sub(before) as f64 / 1e6 / turns as f64))
}

/// The summed run time of the BPF programs process `pid` holds, each counted once (by program id), from
/// its descriptors' fdinfo.
fn bpf_run_time_ns(pid: u32) -> u64 {
    let mut programs = std::collections::BTreeMap::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return 0 };
    for entry in entries.filter_map(Result::ok) {
        let Ok(text) = fs::read_to_string(entry.path()) else { continue };
        let field = |name: &str| {
            text.lines().find_map(|line| line.strip_prefix(name)).and_then(|rest| rest.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(run_time)) = (field("prog_id:"), field("run_time_ns:")) {
            programs.insert(id, run_time);
        }
    }
    programs.values().sum()
}

/// `turns N seconds S turns_per_second X` -> (N, S).
fn parse_driver(stdout: &str) -> Option<(u64, f64)> {
    let line = stdout.lines().rev().find(|line| line.starts_with("turns "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["turns", turns, "seconds", seconds, "turns_per_second", _] => {
            Some((turns.parse().ok()?, seconds.parse().ok()?))
        }
        _ => None,
    }
}

/// Starts the tracer on the server's pid and waits until it says the probes are attached. `Ok(None)`: it
/// exited with code 2, the code for options it does not know.
fn attach_tracer(bench: &Bench, server: &BunServer, args: &[&str], dir: &Path) -> Result<Option<Process>> {
    let mut command = Command::new(&bench.tracer);
    command
        .arg("--pid")
        .arg(server.process.pid.to_string())
        .arg("--output")
        .arg(dir.join("report"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file(dir, "tracer.stdout")?)
        .stderr(Stdio::piped());
    let mut tracer = Process::spawn("dispatch-leaktrace", &mut command)?;
    let lines = tracer.lines_of_stderr(&dir.join("tracer.stderr"))?;
    let stderr_log = dir.join("tracer.stderr");
    match wait_for_line(&lines, "tracing pid", Duration::from_secs(120)) {
        Ok(_) => {}
        Err(error) => {
            // Its stderr closed or stayed silent: it exited (how?), or hangs (killed on drop).
            let status = tracer.wait(Duration::from_secs(10)).map(|(status, _)| status);
            if status.as_ref().is_ok_and(|s| s.code() == Some(2)) {
                return Ok(None);
            }
            return Err(failure(&format!("the tracer did not attach ({error:#}; {status:?})"), &stderr_log));
        }
    }
    // What the tracer does once at start (reading the JIT dump so far, the first snapshot of the maps)
    // is not the steady cost this measures.
    thread::sleep(Duration::from_secs(1));
    Ok(Some(tracer))
}

/// SIGINT, as Ctrl-C: the tracer writes its reports, detaches, and must exit with success.
fn stop_tracer(mut tracer: Process, dir: &Path) -> Result<()> {
    if let Some(status) = tracer.exited() {
        return Err(failure(&format!("the tracer ended before it was stopped ({status})"), &dir.join("tracer.stderr")));
    }
    tracer.signal(SIGINT)?;
    let (status, _) = tracer.wait(Duration::from_secs(180))?;
    if !status.success() {
        return Err(failure(&format!("the tracer failed ({status})"), &dir.join("tracer.stderr")));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------------
// The long run: the tracer's own memory
// ------------------------------------------------------------------------------------------------------

/// The tracer's --interval in the long run. Replayed at high speed, hours pass in about a minute: at the
/// default 10 s the tracer would take a handful of timeline points and per-stack snapshots where hours of
/// production give hundreds, past the cap of 64 snapshots (each holds every stack with outstanding
/// memory). At 250 ms a run of a minute takes about 240, so the snapshots weigh what they would in
/// production.
const LONG_RUN_INTERVAL: &str = "250ms";
/// How often dispatch-server is assumed to run an orchestrator turn in production.
const PRODUCTION_TURNS_PER_SECOND: f64 = 1.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LongRunConfig {
    /// --max-memory at its default.
    DefaultBudget,
    /// A budget smaller than what the run must hold: eviction at work, and what happens past it.
    SmallBudget,
}

impl LongRunConfig {
    const ALL: [Self; 2] = [Self::DefaultBudget, Self::SmallBudget];

    fn budget(self) -> &'static str {
        match self {
            Self::DefaultBudget => "512M",
            Self::SmallBudget => "64M",
        }
    }

    fn budget_bytes(self) -> u64 {
        match self {
            Self::DefaultBudget => 512 << 20,
            Self::SmallBudget => 64 << 20,
        }
    }

    /// The small budget replays half as many turns: it runs slower (it evicts over and over), and the
    /// whole section should take two or three minutes.
    fn turns(self, options: &Options) -> u64 {
        match self {
            Self::DefaultBudget => options.long_turns,
            Self::SmallBudget => (options.long_turns / 2).max(1),
        }
    }

    fn name(self) -> String {
        match self {
            Self::DefaultBudget => format!("--max-memory {} (the default)", self.budget()),
            Self::SmallBudget => format!("--max-memory {}", self.budget()),
        }
    }

    fn command_text(self, turns: u64) -> String {
        format!(
            "dispatch-leaktrace --no-alloc --max-memory {} --interval {LONG_RUN_INTERVAL} -- ./long_run {turns}",
            self.budget()
        )
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct LongRunSample {
    turns: u64,
    /// What long_run printed: the page faults it made, and its own time for its loop.
    faults: u64,
    loop_seconds: f64,
    /// From the tracer's launch to its exit, reports written.
    wall_seconds: f64,
    /// Polled from /proc/PID/status every 100 ms: the tracer's anonymous RSS until the target finished
    /// (while tracing), the same over the whole run (with writing the reports after the target's exit),
    /// and VmHWM, the peak of all its resident memory (also the file pages of its binary).
    peak_anon_tracing: u64,
    peak_anon: u64,
    peak_hwm: u64,
    /// From report.json: its `tracer` object, `events` and `counters.lost_events`.
    reported: TracerMemory,
    /// Other processes' share of the machine's CPU time during the run.
    others: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct TracerMemory {
    budget_bytes: Option<u64>,
    peak_anonymous_rss_bytes: Option<u64>,
    stacks_held: Option<u64>,
    evicted_stacks: Option<u64>,
    evicted_allocated_bytes: Option<u64>,
    events: Option<u64>,
    lost_events: Option<u64>,
}

impl TracerMemory {
    fn read(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let report = Json::parse_keys(&text, &["tracer", "events", "counters"])
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let number = |path: &[&str]| report.at(path).and_then(Json::as_u64);
        Ok(Self {
            budget_bytes: number(&["tracer", "budget_bytes"]),
            peak_anonymous_rss_bytes: number(&["tracer", "peak_anonymous_rss_bytes"]),
            stacks_held: number(&["tracer", "stacks_held"]),
            evicted_stacks: number(&["tracer", "evicted_stacks"]),
            evicted_allocated_bytes: number(&["tracer", "evicted_allocated_bytes"]),
            events: number(&["events"]),
            lost_events: number(&["counters", "lost_events"]),
        })
    }
}

struct LongRunSeries {
    series: Vec<(LongRunConfig, Series<LongRunSample>)>,
}

impl LongRunSeries {
    fn measure(bench: &Bench) -> Self {
        let mut series: Vec<_> = LongRunConfig::ALL.iter().map(|&config| (config, Series::new())).collect();
        for (config, series) in &mut series {
            let turns = config.turns(&bench.options);
            eprintln!("xtask bench: long run, {} turns, {}", thousands(turns), config.name());
            series.measure(&config.name(), |attempt| long_run(*config, bench, attempt).map(Some));
        }
        Self { series }
    }

    fn get(&self, config: LongRunConfig) -> &Series<LongRunSample> {
        &self.series.iter().find(|(c, _)| *c == config).expect("every configuration has a series").1
    }
}

/// One long run: the tracer launches long_run in page-fault mode, its memory polled until it exits.
fn long_run(config: LongRunConfig, bench: &Bench, attempt: usize) -> Result<LongRunSample> {
    let retry = if attempt > 0 { "-retry" } else { "" };
    let dir = bench.work.join("long-run").join(format!("budget-{}{retry}", config.budget()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let turns = config.turns(&bench.options);
    let mut command = Command::new(&bench.tracer);
    command
        .args(["--no-alloc", "--quiet", "--max-memory", config.budget(), "--interval", LONG_RUN_INTERVAL])
        .arg("--output")
        .arg(dir.join("report"))
        .arg("--")
        .arg(&bench.long_run)
        .arg(turns.to_string())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log_file(&dir, "stdout")?)
        .stderr(log_file(&dir, "stderr")?);

    let cpu_before = CpuSample::now();
    let started = Instant::now();
    let mut process = Process::spawn("dispatch-leaktrace (long run)", &mut command)?;
    // Traced, a turn takes about 10 ms here, 16 ms under a budget it cannot keep: ten times that and more.
    let timeout = Duration::from_secs(120) + Duration::from_millis(turns * 150);
    let status_file = format!("/proc/{}/status", process.pid);
    let stdout_file = dir.join("stdout");
    let mut sample = LongRunSample { turns, ..LongRunSample::default() };
    let mut target_done = false;
    let (status, ended) = loop {
        if process.exited().is_some() {
            break process.wait(Duration::ZERO)?;
        }
        if started.elapsed() > timeout {
            process.kill();
            bail!("the tracer did not finish the long run within {} s: killed", timeout.as_secs());
        }
        if let Some((anonymous, high_water)) = tracer_memory(&status_file) {
            sample.peak_anon = sample.peak_anon.max(anonymous);
            sample.peak_hwm = sample.peak_hwm.max(high_water);
            if !target_done {
                sample.peak_anon_tracing = sample.peak_anon;
            }
        }
        // long_run prints its line when its loop is done, then exits: the tracer is writing its reports.
        target_done = target_done || fs::read_to_string(&stdout_file).is_ok_and(|text| text.contains("long_run turns"));
        thread::sleep(Duration::from_millis(100));
    };
    sample.wall_seconds = ended.duration_since(started).as_secs_f64();
    sample.others =
        cpu_before.others_between(&CpuSample::now(), thread::available_parallelism().map_or(1, |n| n.get())).0;
    if !status.success() {
        return Err(failure(&format!("the tracer failed in the long run ({status})"), &dir.join("stderr")));
    }
    let stdout = fs::read_to_string(&stdout_file)?;
    let (faults, loop_seconds) = parse_long_run(&stdout)
        .with_context(|| format!("no summary line from long_run in {}", stdout_file.display()))?;
    sample.faults = faults;
    sample.loop_seconds = loop_seconds;
    sample.reported = TracerMemory::read(&dir.join("report/report.json"))?;
    Ok(sample)
}

/// (RssAnon, VmHWM) in bytes, from /proc/PID/status.
fn tracer_memory(status_file: &str) -> Option<(u64, u64)> {
    let text = fs::read_to_string(status_file).ok()?;
    let kib = |key: &str| {
        text.lines().find_map(|line| line.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((kib("RssAnon:")? * 1024, kib("VmHWM:")? * 1024))
}

/// `long_run turns T faults F mmaps M munmaps U kept_bytes K seconds S` -> (F, S).
fn parse_long_run(stdout: &str) -> Option<(u64, f64)> {
    let line = stdout.lines().find(|line| line.starts_with("long_run turns "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| words.iter().position(|w| *w == key).and_then(|at| words.get(at + 1));
    Some((value("faults")?.parse().ok()?, value("seconds")?.parse().ok()?))
}

// ------------------------------------------------------------------------------------------------------
// Processes: every one in a group of its own, killed on every way out
// ------------------------------------------------------------------------------------------------------

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

// The C library's own functions (std links it anyway); xtask has no libc crate.
unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
    fn open(path: *const u8, flags: i32, ...) -> i32;
    fn write(fd: i32, buffer: *const u8, count: usize) -> isize;
    fn close(fd: i32) -> i32;
    fn nanosleep(request: *const Timespec, remaining: *mut Timespec) -> i32;
}

/// Process groups alive right now (0: a free slot). Read by the signal handler, so plain atomics.
static LIVE_GROUPS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];

/// Ctrl-C reaches only the terminal's foreground group, and our children are in groups of their own: on
/// SIGINT, SIGTERM or SIGHUP kill those groups, remove the floor's uprobe events (and restore tracing_on),
/// then exit. Only async-signal-safe calls in here.
extern "C" fn on_fatal_signal(signal_number: i32) {
    for slot in &LIVE_GROUPS {
        let group = slot.load(Ordering::SeqCst);
        if group > 0 {
            // SAFETY: kill(2) is async-signal-safe; a negative pid names the whole group.
            unsafe { kill(-group, SIGKILL) };
        }
    }
    undo_floor_events();
    // SAFETY: _exit is async-signal-safe; nothing else may run in a handler.
    unsafe { _exit(128 + signal_number) }
}

fn install_signal_handlers() {
    for signal_number in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { signal(signal_number, on_fatal_signal) };
    }
}

/// A child process in its own process group. Dropping it kills the group if the child has not been seen to
/// exit: whatever it started (the target a tracer launched, bpftrace's `-c` command) goes too.
struct Process {
    name: String,
    pid: u32,
    /// From the thread that waits for the child: how and when it ended.
    ended: mpsc::Receiver<std::io::Result<(ExitStatus, Instant)>>,
    status: Option<(ExitStatus, Instant)>,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
}

impl Process {
    fn spawn(name: &str, command: &mut Command) -> Result<Self> {
        command.process_group(0);
        let mut child = command.spawn().with_context(|| format!("cannot start {name} ({command:?})"))?;
        let pid = child.id();
        register_group(pid);
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        // A thread of its own waits, so that the exit time is exact and waits can time out.
        let (sender, ended) = mpsc::channel();
        thread::spawn(move || {
            let _ = sender.send(child.wait().map(|status| (status, Instant::now())));
        });
        Ok(Self { name: name.to_string(), pid, ended, status: None, stdout, stderr })
    }

    /// Waits for the exit; on timeout, kills the group and fails.
    fn wait(&mut self, timeout: Duration) -> Result<(ExitStatus, Instant)> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        match self.ended.recv_timeout(timeout) {
            Ok(Ok(status)) => Ok(self.reaped(status)),
            Ok(Err(error)) => Err(anyhow!("cannot wait for {}: {error}", self.name)),
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                bail!("{} (pid {}) did not finish within {} s: killed", self.name, self.pid, timeout.as_secs())
            }
            Err(RecvTimeoutError::Disconnected) => bail!("lost track of {}", self.name),
        }
    }

    /// The exit status if it has exited, without waiting.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Ok(status)) = self.ended.try_recv() {
                self.reaped(status);
            }
        }
        self.status.map(|(status, _)| status)
    }

    fn reaped(&mut self, status: (ExitStatus, Instant)) -> (ExitStatus, Instant) {
        self.status = Some(status);
        unregister_group(self.pid);
        status
    }

    /// A signal to the process itself (not its group).
    fn signal(&self, signal_number: i32) -> Result<()> {
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped yet (so not reused).
        if unsafe { kill(self.pid as i32, signal_number) } != 0 {
            bail!("cannot signal {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn kill(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: the group we created for our unreaped child.
        unsafe { kill(-(self.pid as i32), SIGKILL) };
        if let Ok(Ok(status)) = self.ended.recv_timeout(Duration::from_secs(10)) {
            self.reaped(status);
        }
    }

    fn lines_of_stdout(&mut self, log: &Path) -> Result<mpsc::Receiver<String>> {
        let stream = self.stdout.take().ok_or_else(|| anyhow!("{}: stdout not piped", self.name))?;
        tee_lines(stream, log)
    }

    fn lines_of_stderr(&mut self, log: &Path) -> Result<mpsc::Receiver<String>> {
        let stream = self.stderr.take().ok_or_else(|| anyhow!("{}: stderr not piped", self.name))?;
        tee_lines(stream, log)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn register_group(pid: u32) {
    let free = LIVE_GROUPS
        .iter()
        .find(|slot| slot.compare_exchange(0, pid as i32, Ordering::SeqCst, Ordering::SeqCst).is_ok());
    // The harness has at most a handful alive at once; more would be a bug here, not a reason to fail.
    debug_assert!(free.is_some(), "more live process groups than slots");
}

fn unregister_group(pid: u32) {
    for slot in &LIVE_GROUPS {
        let _ = slot.compare_exchange(pid as i32, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Lines of a child's output, read on a thread (which keeps draining it, so the child never blocks on a
/// full pipe), each also appended to a log file.
fn tee_lines(stream: impl Read + Send + 'static, log: &Path) -> Result<mpsc::Receiver<String>> {
    use std::io::Write as _;
    let mut file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            let _ = sender.send(line);
        }
    });
    Ok(receiver)
}

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Ok(line),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!("no line with {needle:?} within {} s", timeout.as_secs()),
            Err(RecvTimeoutError::Disconnected) => bail!("the output ended without a line with {needle:?}"),
        }
    }
}

fn log_file(dir: &Path, name: &str) -> Result<File> {
    let path = dir.join(name);
    File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

/// An error for a child that failed: what happened and the last line of its log on the first line (the
/// line BENCHMARKS.md shows), then the log's last lines.
fn failure(what: &str, log: &Path) -> anyhow::Error {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    match lines.last() {
        None => anyhow!("{what}; nothing in {}", log.display()),
        Some(last) => {
            let tail = lines[lines.len().saturating_sub(8)..].join("\n");
            anyhow!("{what}: {last}\n(the end of {}:)\n{tail}", log.display())
        }
    }
}

// ------------------------------------------------------------------------------------------------------
// The machine and its load
// ------------------------------------------------------------------------------------------------------

struct Machine {
    cpu: String,
    cpus: usize,
    kernel: String,
    memory: String,
    date: String,
    commit: String,
}

impl Machine {
    fn describe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| "unknown".into());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or_else(|| "unknown".into(), |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0));
        Self {
            cpu,
            cpus: thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: command_output(Command::new("uname").arg("-r")),
            memory,
            date: command_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            commit: command_output(Command::new("git").args(["describe", "--always", "--dirty"]).current_dir(root())),
        }
    }
}

fn command_output(command: &mut Command) -> String {
    command
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average.
fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn voluntary_switches(pid: u32) -> f64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let status_of = |task: fs::DirEntry| fs::read_to_string(task.path().join("status")).ok();
    tasks
        .flatten()
        .filter_map(status_of)
        .filter_map(|status| {
            status.lines().find_map(|line| line.strip_prefix("voluntary_ctxt_switches:")?.trim().parse::<f64>().ok())
        })
        .sum()
}

/// CPU time so far: the whole machine's (busy and stolen) and ours (this process and every child it has
/// reaped, which includes what they reaped: the tracer's target, bpftrace's command). The difference
/// between two samples is what other processes used in between: the noise in our figures.
#[derive(Clone, Copy, Debug)]
struct CpuSample {
    at: Instant,
    machine_busy: f64,
    steal: f64,
    ours: f64,
}

/// /proc/stat and /proc/PID/stat count in USER_HZ ticks, 100 a second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of /proc/PID/stat after the command name (which may hold spaces): index 0 is field 3, the
/// state; utime, stime, cutime and cstime (fields 14 to 17) are at 11 to 14.
fn proc_stat_fields(pid: &str) -> Vec<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    text.rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect())
        .unwrap_or_default()
}

/// CPU seconds a process (all its threads) has used so far, and how often its threads went to sleep.
#[derive(Clone, Copy, Debug, Default)]
struct ProcessCpu {
    user: f64,
    kernel: f64,
    /// Voluntary context switches, summed over its threads: each is a sleep, and then a wake-up.
    wakeups: f64,
}

impl ProcessCpu {
    fn of(pid: u32) -> Self {
        let fields = proc_stat_fields(&pid.to_string());
        let field = |i: usize| fields.get(i).copied().unwrap_or(0.0) / TICKS_PER_SECOND;
        Self { user: field(11), kernel: field(12), wakeups: voluntary_switches(pid) }
    }

    fn total(self) -> f64 {
        self.user + self.kernel
    }
}

impl CpuSample {
    fn now() -> Self {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        // cpu  user nice system idle iowait irq softirq steal guest guest_nice
        let cpu: Vec<f64> =
            stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let field = |i: usize| cpu.get(i).copied().unwrap_or(0.0) / TICKS_PER_SECOND;
        let machine_busy = field(0) + field(1) + field(2) + field(5) + field(6);
        // Ours, and our reaped children's: utime, stime, cutime, cstime.
        let fields = proc_stat_fields("self");
        let ours = (11..=14).map(|i| fields.get(i).copied().unwrap_or(0.0)).sum::<f64>() / TICKS_PER_SECOND;
        Self { at: Instant::now(), machine_busy, steal: field(7), ours }
    }

    /// The share of the machine's CPU time that other processes used between two samples, and the share
    /// the hypervisor stole.
    fn others_between(&self, later: &Self, cpus: usize) -> (f64, f64) {
        let capacity = later.at.duration_since(self.at).as_secs_f64() * cpus as f64;
        if capacity <= 0.0 {
            return (0.0, 0.0);
        }
        let others = (later.machine_busy - self.machine_busy) - (later.ours - self.ours);
        (others.max(0.0) / capacity, (later.steal - self.steal).max(0.0) / capacity)
    }
}

// ------------------------------------------------------------------------------------------------------
// Statistics
// ------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    count: usize,
}

impl Stats {
    fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Some(Self { median, min: values[0], max: values[n - 1], count: n })
    }
}

// ------------------------------------------------------------------------------------------------------
// BENCHMARKS.md
// ------------------------------------------------------------------------------------------------------

struct Report<'a> {
    options: &'a Options,
    machine: Machine,
    /// The 1-minute load average before the first repetition and after each.
    load: Vec<f64>,
    /// CPU time before the first repetition and after each.
    cpu: Vec<CpuSample>,
    elapsed: Duration,
    malloc: MallocSeries,
    bun: BunSeries,
    long_run: LongRunSeries,
    placements: &'a Result<Placements, String>,
}

/// One goal, its measured figure, and the verdict.
struct Goal {
    goal: &'static str,
    measured: String,
    verdict: &'static str,
}

impl Report<'_> {
    fn render(&self) -> String {
        let mut md = String::new();
        self.render_header(&mut md);
        self.render_goals(&mut md);
        if !self.options.long_run_only {
            self.render_malloc(&mut md);
            self.render_bun(&mut md);
        }
        self.render_long_run(&mut md);
        self.render_method(&mut md);
        md
    }

    /// The share of the CPU time other processes used over the whole run, and in each repetition.
    fn others(&self) -> (f64, Vec<f64>) {
        let cpus = self.machine.cpus;
        let (Some(first), Some(last)) = (self.cpu.first(), self.cpu.last()) else { return (0.0, Vec::new()) };
        let each = self.cpu.windows(2).map(|pair| pair[0].others_between(&pair[1], cpus).0).collect();
        (first.others_between(last, cpus).0, each)
    }

    fn stolen(&self) -> f64 {
        match (self.cpu.first(), self.cpu.last()) {
            (Some(first), Some(last)) => first.others_between(last, self.machine.cpus).1,
            _ => 0.0,
        }
    }

    /// Other work took more than a tenth of the machine: enough to move the figures.
    fn busy(&self) -> bool {
        self.others().0 > 0.10 || self.stolen() > 0.10
    }

    fn render_header(&self, md: &mut String) {
        let m = &self.machine;
        let loads: Vec<String> = self.load.iter().map(|l| format!("{l:.2}")).collect();
        let _ = writeln!(md, "# Benchmarks\n");
        if self.options.long_run_only {
            let _ = writeln!(md, "The long-run memory benchmark alone, from `cargo xtask bench --long-run-only`.\n");
        } else {
            let _ = writeln!(
                md,
                "Generated by `cargo xtask bench` (xtask/src/bench.rs); the whole file is rewritten on each run.\n"
            );
        }
        let _ = writeln!(md, "Reproduce with: `{}`\n", self.options.command_line());
        let _ = writeln!(md, "| | |\n| --- | --- |");
        let _ = writeln!(md, "| date | {} |", m.date);
        let _ = writeln!(md, "| commit | {} |", m.commit);
        let _ = writeln!(md, "| CPU | {}, {} CPUs (nproc) |", m.cpu, m.cpus);
        let _ = writeln!(md, "| memory | {} |", m.memory);
        let _ = writeln!(md, "| kernel | {} |", m.kernel);
        if self.options.long_run_only {
            let _ = writeln!(md, "| run time | {:.0} s |\n", self.elapsed.as_secs_f64());
            return;
        }
        let _ = writeln!(
            md,
            "| repetitions | {} of each configuration, interleaved; figures are medians (min-max) |",
            self.options.runs
        );
        let _ = writeln!(md, "| run time | {:.0} s |", self.elapsed.as_secs_f64());
        let (others, each) = self.others();
        let each: Vec<String> = each.iter().map(|&share| pct(share)).collect();
        let _ = writeln!(
            md,
            "| CPU used by other processes | {} of the machine's CPU time (per repetition: {}); stolen by the \
             hypervisor: {} |",
            pct(others),
            each.join(", "),
            pct(self.stolen())
        );
        let _ = writeln!(
            md,
            "| 1-min load average | {} (before the first repetition, then after each; includes our own runs) |",
            loads.join(", ")
        );
        let long_others: Vec<String> = LongRunConfig::ALL
            .iter()
            .filter_map(|&c| self.long_run.get(c).samples.first().map(|s| format!("{}: {}", c.budget(), pct(s.others))))
            .collect();
        if !long_others.is_empty() {
            let _ = writeln!(md, "| CPU used by other processes during the long runs | {} |", long_others.join(", "));
        }
        let _ = writeln!(md);
        if self.busy() {
            let _ = writeln!(
                md,
                "**The machine was busy during this run**: other processes used {} of its CPU time. They \
                 competed with the runs, so the figures are noisy, the times longer and the Bun throughput lower \
                 than on an idle machine. Ratios between configurations are more trustworthy than absolute \
                 figures, since the configurations ran interleaved.\n",
                pct(others)
            );
        }
        if self.options.quick {
            let _ = writeln!(
                md,
                "**Quick mode**: one run of each with a smaller workload; for trying the harness, not for figures.\n"
            );
        }
    }

    fn goals(&self) -> Vec<Goal> {
        let loop_median = |c| self.malloc.get(c).stats(|s: &MallocSample| s.loop_seconds).map(|s| s.median);
        let wall_median = |c| self.malloc.get(c).stats(|s: &MallocSample| s.wall_seconds).map(|s| s.median);
        let tps_median = |c| self.bun.get(c).stats(|s: &BunSample| s.turns_per_second).map(|s| s.median);
        // The CPU per turn, server and tracer, against the untraced runs': the same cost, less noisy.
        let cpu_median = |c| self.bun.get(c).stats(BunSample::cpu_ms).map(|s| s.median);
        let bpf_median = |c| {
            let series: &Series<BunSample> = self.bun.get(c);
            series.stats_of_some(|s| s.bpf_ms).map(|s| s.median)
        };
        let cpu_note = |c| {
            let mut note = String::new();
            if let (Some(traced), Some(untraced)) = (cpu_median(c), cpu_median(BunConfig::Untraced)) {
                note.push_str(&format!("; CPU per turn {} more", pct(traced / untraced - 1.0)));
                if let Some(bpf) = bpf_median(c) {
                    note.push_str(&format!(
                        "; its BPF programs {:.2} ms a turn, {} of an untraced turn's CPU",
                        bpf,
                        pct(bpf / untraced)
                    ));
                }
            }
            note
        };
        if self.options.long_run_only {
            return vec![self.memory_goal()];
        }
        let mut goals = Vec::new();

        const FLOOR_GOAL: &str = "full allocator tracing within 10% of the count-only probe floor on the same \
                                  functions (malloc_bench loop time; the floor: count-only uprobes where the tracer \
                                  places its own, see below)";
        goals.push(match (loop_median(MallocConfig::Full), loop_median(MallocConfig::PlacedFloor)) {
            (Some(full), Some(floor)) => {
                let entry = loop_median(MallocConfig::CountOnly).map_or(String::new(), |entry| {
                    format!(
                        "; against the bpftrace floor at the functions' entry, {:.2}x ({})",
                        full / entry,
                        secs(entry)
                    )
                });
                Goal {
                    goal: FLOOR_GOAL,
                    measured: format!(
                        "full mode {:.2}x the floor at the same placement ({} vs {}){entry}",
                        full / floor,
                        secs(full),
                        secs(floor)
                    ),
                    verdict: verdict(full / floor <= 1.10),
                }
            }
            _ => not_measured(FLOOR_GOAL),
        });
        goals.push(match (wall_median(MallocConfig::Full), wall_median(MallocConfig::Memleak)) {
            (Some(full), Some(memleak)) => Goal {
                goal: "full allocator mode at least 5x faster than the bpftrace memleak-style script (wall time)",
                measured: format!(
                    "bpftrace {:.2}x full mode's time ({} vs {})",
                    memleak / full,
                    secs(memleak),
                    secs(full)
                ),
                verdict: verdict(memleak / full >= 5.0),
            },
            _ => not_measured("full allocator mode at least 5x faster than the bpftrace memleak-style script"),
        });
        // A Bun configuration's goal: at most `max_loss` fewer turns per second than untraced.
        let bun_goal = |config: BunConfig, goal: &'static str, max_loss: f64| match (
            tps_median(config),
            tps_median(BunConfig::Untraced),
        ) {
            (Some(traced), Some(untraced)) => Goal {
                goal,
                measured: format!(
                    "{} fewer ({:.1} vs {:.1} turns/s){}",
                    pct(1.0 - traced / untraced),
                    traced,
                    untraced,
                    cpu_note(config)
                ),
                verdict: verdict(1.0 - traced / untraced <= max_loss),
            },
            _ => match &self.bun.get(config).stopped {
                Some(Stopped::Unavailable(why) | Stopped::Failed(why)) => {
                    Goal { goal, measured: first_line(why).to_string(), verdict: "not measured" }
                }
                None => not_measured(goal),
            },
        };
        goals.push(bun_goal(BunConfig::Faults, "page-fault mode on the Bun demo: at most 3% fewer turns/s", 0.03));
        goals.push(bun_goal(
            BunConfig::SampledPages,
            "(ours) page-fault mode sampling one page in 16 on the Bun demo: at most 3% fewer turns/s",
            0.03,
        ));
        goals.push(bun_goal(
            BunConfig::Sampled,
            "sampled allocator mode on the Bun demo: at most 10% fewer turns/s",
            0.10,
        ));
        goals.push(bun_goal(
            BunConfig::SampledBoth,
            "(ours) sampled allocator mode sampling one page in 16 too, on the Bun demo: at most 10% fewer turns/s",
            0.10,
        ));
        goals.push(self.memory_goal());
        goals
    }

    /// The tracer's own memory in the long run under the default budget.
    fn memory_goal(&self) -> Goal {
        const GOAL: &str = "the tracer's own memory stays under --max-memory (default 512M) however long it runs \
                            (peak anonymous RSS over hours of a server's page faults, replayed)";
        let config = LongRunConfig::DefaultBudget;
        let series = self.long_run.get(config);
        let Some(sample) = series.samples.first() else {
            let why = match &series.stopped {
                Some(Stopped::Unavailable(why) | Stopped::Failed(why)) => first_line(why).to_string(),
                None => "no figures".into(),
            };
            return Goal { goal: GOAL, measured: why, verdict: "not measured" };
        };
        Goal {
            goal: GOAL,
            measured: format!(
                "peak anonymous RSS {} of {}, one run ({} turns, {} of production at a turn a second; {} events, \
                 {} lost)",
                mib(sample.peak_anon),
                mib(config.budget_bytes()),
                thousands(sample.turns),
                hours(sample.turns),
                sample.reported.events.map_or("?".into(), thousands),
                sample.reported.lost_events.map_or("?".into(), thousands),
            ),
            verdict: verdict(sample.peak_anon <= config.budget_bytes()),
        }
    }

    fn render_goals(&self, md: &mut String) {
        let _ = writeln!(md, "## Goals\n");
        let _ = writeln!(md, "| goal | measured (medians) | |\n| --- | --- | --- |");
        for goal in self.goals() {
            let _ = writeln!(md, "| {} | {} | **{}** |", goal.goal, goal.measured, goal.verdict);
        }
        let _ = writeln!(md);
    }

    /// The goals as plain text, for the terminal.
    fn goals_text(&self) -> String {
        let mut text = String::new();
        for goal in self.goals() {
            let _ = writeln!(text, "{}: {} -> {}", goal.goal, goal.measured, goal.verdict);
        }
        text
    }

    fn render_malloc(&self, md: &mut String) {
        let _ = writeln!(md, "## malloc_bench\n");
        let _ = writeln!(
            md,
            "`bench/malloc_bench.c`: {} malloc/free pairs of 16-512 bytes, every 1000th block kept; `-O2 \
             -fno-omit-frame-pointer`. *Loop* is the benchmark's own time for its loop (the probes' cost while \
             it runs); *command* is the whole command from launch to exit (adds the tool's start, attach, detach \
             and reports). Launched under each tool, so the probes are in place from its first instruction.\n",
            thousands(self.options.pairs)
        );
        let untraced_loop = self.malloc.get(MallocConfig::Untraced).stats(|s| s.loop_seconds);
        let untraced_wall = self.malloc.get(MallocConfig::Untraced).stats(|s| s.wall_seconds);
        let _ = writeln!(
            md,
            "| configuration | command | loop | loop vs untraced | command wall time | wall vs untraced |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
        for (config, series) in &self.malloc.series {
            let name = config.name();
            let command = format!("`{}`", config.command_text());
            match (series.stats(|s| s.loop_seconds), series.stats(|s| s.wall_seconds)) {
                (Some(lp), Some(wall)) => {
                    let _ = writeln!(
                        md,
                        "| {name}{} | {command} | {} | {} | {} | {} |",
                        stopped_mark(&series.stopped),
                        spread(lp, secs),
                        ratio(lp, untraced_loop),
                        spread(wall, secs),
                        ratio(wall, untraced_wall),
                    );
                }
                _ => {
                    let _ = writeln!(md, "| {name} | {command} | {} | | | |", stopped_text(&series.stopped));
                }
            }
        }
        let _ = writeln!(md);
        render_retried(md, self.malloc.series.iter().map(|(c, s)| (c.name(), &s.retried)));
        self.render_malloc_comparisons(md);
        self.render_floor(md);
        self.render_accuracy(md);
    }

    /// Where the floor's probes went, how often each count-only configuration's probes fired, and what
    /// ftrace's recording costs.
    fn render_floor(&self, md: &mut String) {
        let Ok(placements) = &self.placements else { return };
        let _ = writeln!(
            md,
            "The floor's probes are tracefs uprobe events (no BPF program) at the file offsets the tracer's own \
             report.json gives for its probes on `{}` (a short traced run of malloc_bench before the first \
             repetition):\n",
            placements.object.display()
        );
        let _ = writeln!(md, "| event | function + offset | file offset | instruction | the tracer's reason |");
        let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
        for (event, probe) in FLOOR_EVENTS.iter().zip(&placements.probes) {
            let kind = if event.kind == "uretprobe" { "return probe" } else { "entry probe" };
            let _ = writeln!(
                md,
                "| `{}` ({kind}) | {}+{} | {:#x} | `{}` | {} |",
                event.name,
                event.symbol,
                probe.offset,
                probe.file_offset,
                probe.instruction,
                collapse_spaces(&probe.reason).replace('|', "\\|")
            );
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "Probe hits in the last run of each count-only configuration (malloc_bench makes {} malloc calls \
             and {} frees of non-NULL blocks, plus a few of its own and the C library's). bpftrace and perf \
             count in malloc_bench alone; the ftrace counts are the events' own (`uprobe_profile`), from every \
             process that called malloc or free meanwhile.\n",
            thousands(self.options.pairs),
            thousands(self.options.pairs - self.options.pairs / 1000),
        );
        let _ =
            writeln!(md, "| configuration | malloc entry | malloc return | free entry |\n| --- | --- | --- | --- |");
        for config in [
            MallocConfig::CountOnly,
            MallocConfig::PlacedFloor,
            MallocConfig::FtraceQuiet,
            MallocConfig::FtraceRecording,
        ] {
            let Some(hits) = self.malloc.get(config).samples.last().and_then(|s| s.hits) else { continue };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                config.name(),
                thousands(hits.malloc_entry),
                thousands(hits.malloc_return),
                thousands(hits.free_entry)
            );
        }
        let _ = writeln!(md);
        let loop_of = |c| self.malloc.get(c).stats(|s: &MallocSample| s.loop_seconds).map(|s| s.median);
        let per_pair = |seconds: f64| seconds * 1e6 / self.options.pairs as f64;
        if let (Some(quiet), Some(recording), Some(perf)) = (
            loop_of(MallocConfig::FtraceQuiet),
            loop_of(MallocConfig::FtraceRecording),
            loop_of(MallocConfig::PlacedFloor),
        ) {
            let _ = writeln!(
                md,
                "With the events enabled in ftrace and `tracing_on` 0 the probes still fire (the hits above) and \
                 cost {:.2} µs a malloc/free pair; with `tracing_on` 1, which writes every hit into the trace ring \
                 buffer, {:.2} µs ({:+.2} µs). Counted by perf stat, which records nothing, {:.2} µs. The goal's \
                 floor is the perf stat one: scoped to malloc_bench like the tracer's and bpftrace's uprobes, and \
                 writing nothing per hit.\n",
                per_pair(quiet),
                per_pair(recording),
                per_pair(recording) - per_pair(quiet),
                per_pair(perf),
            );
        }
    }

    /// What the tracer found, next to what malloc_bench kept: a trace that dropped events is fast for a
    /// bad reason.
    fn render_accuracy(&self, md: &mut String) {
        let last = |config| self.malloc.get(config).samples.last().copied();
        let Some(retained) = last(MallocConfig::Untraced).map(|s| s.retained) else { return };
        let _ = writeln!(
            md,
            "The tracer's report.json at the end of its last run in each allocator mode. malloc_bench keeps {} \
             blocks ({} bytes) from its loop; besides those, its array of the kept pointers and stdio's output \
             buffer are outstanding.\n",
            thousands(retained.blocks),
            thousands(retained.bytes)
        );
        let _ = writeln!(md, "| mode | malloc blocks outstanding | malloc bytes outstanding | lost events |");
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        for config in [MallocConfig::Full, MallocConfig::Sampled] {
            let Some(reported) = last(config).and_then(|s| s.reported) else { continue };
            let (blocks, bytes) =
                reported.malloc.map_or(("none".into(), "none".into()), |m| (thousands(m.blocks), thousands(m.bytes)));
            let lost = reported.lost_events.map_or("?".into(), thousands);
            let _ = writeln!(md, "| {} | {blocks} | {bytes} | {lost} |", config.name());
        }
        let _ = writeln!(md);
        self.render_sampling_error(md);
    }

    /// Sampling's error against the ground truth at the default interval: the allocator's allocated bytes
    /// (every block malloc_bench made, kept or freed) as estimated in each sampled run.
    fn render_sampling_error(&self, md: &mut String) {
        let errors: Vec<(u64, u64, f64)> = self
            .malloc
            .get(MallocConfig::Sampled)
            .samples
            .iter()
            .filter_map(|s| {
                let truth = s.allocated?;
                let estimate = s.reported?.malloc_allocated?;
                Some((truth, estimate, estimate as f64 / truth as f64 - 1.0))
            })
            .collect();
        if errors.is_empty() {
            return;
        }
        let full = self
            .malloc
            .get(MallocConfig::Full)
            .samples
            .iter()
            .filter_map(|s| Some((s.allocated?, s.reported?.malloc_allocated?)));
        let exact = full.clone().count() > 0 && full.clone().all(|(truth, reported)| reported >= truth);
        let mean_abs = errors.iter().map(|(.., e)| e.abs()).sum::<f64>() / errors.len() as f64;
        let _ = writeln!(
            md,
            "Sampling's error at the default interval ({SAMPLE_BYTES} bytes), against the ground truth: the bytes \
             malloc_bench allocated in its loop ({} over its {} blocks), as the allocator's `allocated_bytes` \
             estimates them, run by run: {}. Mean absolute error {:.1}% (about {} samples a run, so about \
             {:.1}% expected). Full mode counts them exactly{}.\n",
            thousands(errors[0].0),
            thousands(self.options.pairs),
            errors.iter().map(|(.., e)| format!("{:+.1}%", e * 100.0)).collect::<Vec<_>>().join(", "),
            mean_abs * 100.0,
            thousands(errors[0].0 / SAMPLE_BYTES.parse::<u64>().unwrap_or(1)),
            100.0 / ((errors[0].0 / SAMPLE_BYTES.parse::<u64>().unwrap_or(1)).max(1) as f64).sqrt(),
            if exact { " (its figure also counts the program's few allocations outside the loop)" } else { "" }
        );
    }

    fn render_malloc_comparisons(&self, md: &mut String) {
        let loop_of = |c| self.malloc.get(c).stats(|s: &MallocSample| s.loop_seconds);
        let wall_of = |c| self.malloc.get(c).stats(|s: &MallocSample| s.wall_seconds);
        use MallocConfig::{CountOnly, Full, Heaptrack, Memleak, PlacedFloor, Sampled};
        let rows = [
            ("full allocator mode / count-only floor at the tracer's placement (the goal's floor)", Full, PlacedFloor),
            ("full allocator mode / count-only floor at the functions' entry (bpftrace)", Full, CountOnly),
            ("count-only at the functions' entry / at the tracer's placement", CountOnly, PlacedFloor),
            ("bpftrace memleak-style / full allocator mode", Memleak, Full),
            ("heaptrack / full allocator mode", Heaptrack, Full),
            ("sampled / full allocator mode", Sampled, Full),
        ];
        let _ = writeln!(md, "| ratio of medians | loop | command wall time |\n| --- | --- | --- |");
        for (name, a, b) in rows {
            let _ = writeln!(
                md,
                "| {name} | {} | {} |",
                ratio_opt(loop_of(a), loop_of(b)),
                ratio_opt(wall_of(a), wall_of(b))
            );
        }
        let _ = writeln!(md);
    }

    fn render_bun(&self, md: &mut String) {
        let o = self.options;
        let _ = writeln!(md, "## Bun demo\n");
        let _ = writeln!(
            md,
            "`demo/bun/server.ts` (JIT dump on), driven by `demo/bun/driver.ts` with {} turns a round, concurrency \
             {BUN_CONCURRENCY}. Per run: a fresh server, one warm-up round, the tracer attached by pid (it has \
             printed `tracing pid`, plus 1 s), {} measured round{}, the tracer stopped with SIGINT. A run's figure \
             is its measured turns over their seconds. CPU times are per measured turn, from /proc: the probes \
             run in the server's context and show in its kernel time; the tracer's is its collector's. Its \
             wake-ups are its voluntary context switches. *BPF ms/turn*: the run time of the tracer's kernel \
             programs (all their runs, on the whole machine) per turn, from the kernel's BPF statistics \
             (`kernel.bpf_stats_enabled`, run_time_ns in the fdinfo of the tracer's program descriptors), in one \
             more round after the timed ones, so that the statistics' own cost stays out of them: a figure the \
             machine's noise barely moves. In allocator mode the tracer sees only glibc's malloc: \
             Bun's own allocator, mimalloc, is linked in statically and stripped, so its calls are not traced.\n",
            o.turns,
            o.rounds,
            if o.rounds == 1 { "" } else { "s" }
        );
        let untraced = self.bun.get(BunConfig::Untraced).stats(|s| s.turns_per_second);
        let _ = writeln!(
            md,
            "| configuration | command | turns/s | vs untraced | server user ms/turn | server kernel ms/turn | \
             tracer CPU ms/turn | CPU ms/turn, server and tracer | CPU vs untraced | BPF ms/turn | BPF share of an \
             untraced turn's CPU | tracer wake-ups/turn |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        // Turns per second move with whatever else the machine does; the CPU spent per turn much less.
        let total_cpu = |series: &Series<BunSample>| series.stats(BunSample::cpu_ms);
        let untraced_cpu = total_cpu(self.bun.get(BunConfig::Untraced));
        for (config, series) in &self.bun.series {
            let command = format!("`{}`", config.command_text());
            match series.stats(|s| s.turns_per_second) {
                Some(tps) => {
                    let change = match untraced {
                        Some(base) if *config != BunConfig::Untraced => {
                            format!("{} fewer", pct(1.0 - tps.median / base.median))
                        }
                        _ => String::new(),
                    };
                    let ms = |stats: Option<Stats>| stats.map_or("-".into(), |s| format!("{:.1}", s.median));
                    let cpu = total_cpu(series);
                    let bpf = series.stats_of_some(|s| s.bpf_ms);
                    let cpu_change = match (cpu, untraced_cpu) {
                        (Some(cpu), Some(base)) if *config != BunConfig::Untraced => {
                            format!("{} more", pct(cpu.median / base.median - 1.0))
                        }
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        md,
                        "| {}{} | {command} | {} | {change} | {} | {} | {} | {} | {cpu_change} | {} | {} | {} |",
                        config.name(),
                        stopped_mark(&series.stopped),
                        spread(tps, |v| format!("{v:.1}")),
                        ms(series.stats(|s| s.server_user_ms)),
                        ms(series.stats(|s| s.server_kernel_ms)),
                        ms(series.stats_of_some(|s| s.tracer_ms)),
                        ms(cpu),
                        ms(bpf),
                        match (bpf, untraced_cpu) {
                            (Some(bpf), Some(base)) => pct(bpf.median / base.median),
                            _ => "-".into(),
                        },
                        series.stats_of_some(|s| s.tracer_wakeups).map_or("-".into(), |s| format!("{:.0}", s.median)),
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | {command} | {} | | | | | | | |",
                        config.name(),
                        stopped_text(&series.stopped)
                    );
                }
            }
        }
        let _ = writeln!(md);
        render_retried(md, self.bun.series.iter().map(|(c, s)| (c.name(), &s.retried)));
    }

    fn render_method(&self, md: &mut String) {
        let _ = writeln!(md, "## How it is measured\n");
        let mut notes: Vec<String> = Vec::new();
        if !self.options.long_run_only {
            let per_pair: Vec<f64> = [
                MallocConfig::Full,
                MallocConfig::Sampled,
                MallocConfig::CountOnly,
                MallocConfig::PlacedFloor,
                MallocConfig::FtraceQuiet,
                MallocConfig::FtraceRecording,
                MallocConfig::Memleak,
            ]
            .iter()
            .filter_map(|&c| self.malloc.get(c).stats(|s| s.loop_seconds))
            .map(|stats| stats.median * 1e6 / self.options.pairs as f64)
            .collect();
            let cost = match (per_pair.iter().copied().reduce(f64::min), per_pair.iter().copied().reduce(f64::max)) {
                (Some(low), Some(high)) => format!(
                    "the uprobe-based configurations cost {low:.1} to {high:.1} µs a pair in this run, so five \
                     repetitions of 2,000,000 pairs would take {:.0} to {:.0} s per configuration",
                    low * 10.0,
                    high * 10.0
                ),
                _ => "no uprobe-based configuration has figures in this run".into(),
            };
            notes.extend([
                "Every configuration runs once per repetition, in an order rotated by one each repetition, so that \
                 load from elsewhere spreads over all of them. Figures are medians, with the minimum and maximum."
                    .to_string(),
                "Two count-only floors, both only counting hits of uprobes on the glibc functions an allocator \
                 tracer needs (malloc entry and return, free entry): what the kernel's uprobes cost before any \
                 tracer does any work. *At the functions' entry* (`bench/count_only.bt`, bpftrace): bpftrace 0.17 \
                 cannot probe inside a function, so free is probed at its first instruction, `test %rdi,%rdi`, \
                 which the kernel cannot emulate and single-steps out of line (a second trap). *At the tracer's \
                 placement* (the goal's floor): tracefs uprobe events at the very offsets the tracer probes, \
                 found in its report.json (free past its null test, at a `push` the kernel emulates), created \
                 before each run and removed after it (also on errors and Ctrl-C), counted by `perf stat -e` on \
                 malloc_bench alone, with no BPF program: perf opens each event as a counter on that one process, \
                 so the kernel installs the breakpoints in it only and records nothing per hit. The same events \
                 enabled in ftrace instead (the `enable` file) fire in every process on the machine, with \
                 `tracing_on` 0 or 1; those two runs show what recording each hit in the trace ring buffer costs."
                    .to_string(),
                "bpftrace runs with `-c`, which starts the command once its probes are attached and scopes the \
                 uprobes to it; the scripts also filter on `cpid`, so other processes are not slowed nor counted. \
                 `bench/memleak.bt` keeps each block's size and user stack keyed by address and deletes them on \
                 free; at the end it only clears its maps (printing them would add bpftrace's symbolizing to its \
                 time)."
                    .to_string(),
                format!(
                    "malloc_bench's default workload is 1,000,000 pairs: {cost}. The cost per call does not depend \
                     on the count; `--pairs 2000000` runs the larger workload."
                ),
                "heaptrack (LD_PRELOAD, in-process) is the user-space reference: it records every call into a file \
                 analysed later; its command time includes its own end-of-run summary."
                    .to_string(),
            ]);
        }
        notes.push(format!(
            "The long run: `bench/long_run.c` (its header says what it stands for) under the tracer in page-fault \
             mode, once per budget, after the repetitions. The tracer's `--interval {LONG_RUN_INTERVAL}` stands in \
             for the default 10 s at the replay's speed: otherwise a run of a minute or two would take a handful of \
             timeline points and per-stack snapshots, where hours of production take hundreds, past the cap of 64 \
             snapshots that each hold every stack with outstanding memory. Its memory is polled from \
             /proc/PID/status every 100 ms: RssAnon (what --max-memory limits) while the target runs and then \
             while the reports are written, and VmHWM (all resident memory, the file pages of its binary too). \
             report.json's `tracer` object is the tracer's own account: it samples its RSS about once a second."
        ));
        notes.push(
            "A configuration whose tool is missing is marked not available; a tracer mode the build rejects \
             (exit code 2, unknown option) likewise. A run that fails is tried once more and listed under its \
             table; a configuration that fails twice stops there and the error is shown, while the others go \
             on. Logs and reports of every run are in `target/bench/`."
                .to_string(),
        );
        for note in notes {
            let _ = writeln!(md, "- {note}");
        }
    }

    fn render_long_run(&self, md: &mut String) {
        let _ = writeln!(md, "## Long run: the tracer's own memory\n");
        let _ = writeln!(
            md,
            "`bench/long_run.c` replays hours of dispatch-server (a Bun backend that grew 2.5 GB an hour) at high \
             speed: each turn makes 1,400 page faults (as one orchestrator turn of the Bun demo does, traced in \
             page-fault mode) and 17 mmaps, at the ends of call paths drawn at random among 65,536 (up to \
             196,608 distinct stacks in all), unmaps most of what it touched and keeps 16 KiB (the leak), and \
             mallocs and frees a little. \
             At an assumed turn a second, a turn stands for a second of production. The tracer launches it in \
             page-fault mode (`--no-alloc`), with the default budget and with a small one; it must hold every \
             stack that has outstanding memory and may forget the others.\n"
        );
        let _ = writeln!(
            md,
            "| budget | command | turns | production time | page faults | events | lost events | long_run's loop \
             | events/s | wall time | CPU used by other processes |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        let number = |value: Option<u64>| value.map_or("?".into(), thousands);
        for (config, series) in &self.long_run.series {
            let turns = config.turns(self.options);
            let command = format!("`{}`", config.command_text(turns));
            let Some(s) = series.samples.first() else {
                let _ = writeln!(
                    md,
                    "| {} | {command} | {} | | | | | | | | |",
                    config.budget(),
                    stopped_text(&series.stopped)
                );
                continue;
            };
            let rate =
                s.reported.events.map_or("?".into(), |events| thousands((events as f64 / s.loop_seconds) as u64));
            let _ = writeln!(
                md,
                "| {} | {command} | {} | {} | {} | {} | {} | {} | {rate} | {} | {} |",
                config.budget(),
                thousands(s.turns),
                hours(s.turns),
                thousands(s.faults),
                number(s.reported.events),
                number(s.reported.lost_events),
                secs(s.loop_seconds),
                secs(s.wall_seconds),
                pct(s.others),
            );
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "| budget | peak anonymous RSS while tracing | peak anonymous RSS, reports written | peak RSS (VmHWM) \
             | report.json: budget_bytes | peak_anonymous_rss_bytes | stacks_held | evicted_stacks | \
             evicted_allocated_bytes | peak under the budget? |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for (config, series) in &self.long_run.series {
            let Some(s) = series.samples.first() else { continue };
            let r = &s.reported;
            let under = if s.peak_anon <= config.budget_bytes() { "**yes**" } else { "**no**" };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {under} |",
                config.budget(),
                mib(s.peak_anon_tracing),
                mib(s.peak_anon),
                mib(s.peak_hwm),
                r.budget_bytes.map_or("?".into(), mib),
                r.peak_anonymous_rss_bytes.map_or("?".into(), mib),
                number(r.stacks_held),
                number(r.evicted_stacks),
                r.evicted_allocated_bytes.map_or("?".into(), gib),
            );
        }
        let _ = writeln!(md);
        render_retried(md, self.long_run.series.iter().map(|(c, s)| (c.budget(), &s.retried)));
        for (config, series) in &self.long_run.series {
            let Some(s) = series.samples.first() else { continue };
            let budget = config.budget_bytes();
            let mut text = if s.peak_anon <= budget {
                format!(
                    "**With --max-memory {}, the tracer's anonymous RSS stayed under the budget**: it peaked at {} \
                     ({} of the budget) over {} of replayed production.",
                    config.budget(),
                    mib(s.peak_anon),
                    pct(s.peak_anon as f64 / budget as f64),
                    hours(s.turns)
                )
            } else {
                format!(
                    "**With --max-memory {}, the tracer's anonymous RSS went over the budget**: it peaked at {} \
                     ({}), {} while tracing.",
                    config.budget(),
                    mib(s.peak_anon),
                    pct(s.peak_anon as f64 / budget as f64),
                    if s.peak_anon_tracing > budget {
                        format!("already {} (over the budget)", mib(s.peak_anon_tracing))
                    } else {
                        format!(
                            "{} (under the budget) while tracing, the rest while writing its reports",
                            mib(s.peak_anon_tracing)
                        )
                    }
                )
            };
            if let Some(evicted) = s.reported.evicted_stacks.filter(|&n| n > 0) {
                let _ = write!(
                    text,
                    " It forgot {} idle stacks on the way ({} allocated from them is no longer attributed) and \
                     ended holding {}.",
                    thousands(evicted),
                    s.reported.evicted_allocated_bytes.map_or("?".into(), gib),
                    s.reported.stacks_held.map_or("?".into(), thousands)
                );
            }
            if let Some(reported) = s.reported.peak_anonymous_rss_bytes.filter(|&r| r < s.peak_anon / 10 * 9) {
                let _ = write!(
                    text,
                    " Its own report.json says {} at its peak: lower than polled, because the tracer samples its \
                     RSS about once a second while tracing and not while it writes its reports, when it used {}.",
                    mib(reported),
                    mib(s.peak_anon)
                );
            }
            let _ = writeln!(md, "{text}\n");
        }
        if let Some(s) =
            self.long_run.series.iter().find_map(|(_, series)| series.samples.first()).filter(|s| s.others > 0.10)
        {
            let _ = writeln!(
                md,
                "**Other processes used {} of the CPU during the long run**: its times and rates are lower than on \
                 an idle machine; the memory figures depend on what the run holds, not on its speed.\n",
                pct(s.others)
            );
        }
    }

    /// Configurations that failed, by name.
    fn failures(&self) -> Vec<String> {
        let failed = |stopped: &Option<Stopped>| matches!(stopped, Some(Stopped::Failed(_)));
        let malloc = self.malloc.series.iter().filter(|(_, s)| failed(&s.stopped));
        let bun = self.bun.series.iter().filter(|(_, s)| failed(&s.stopped));
        let long = self.long_run.series.iter().filter(|(_, s)| failed(&s.stopped));
        malloc
            .map(|(c, _)| format!("malloc_bench {}", c.name()))
            .chain(bun.map(|(c, _)| format!("Bun demo {}", c.name())))
            .chain(long.map(|(c, _)| format!("long run {}", c.name())))
            .collect()
    }
}

/// Runs that failed once and succeeded when tried again: said, not hidden.
fn render_retried<'a>(md: &mut String, series: impl Iterator<Item = (&'a str, &'a Vec<String>)>) {
    for (name, errors) in series {
        for error in errors {
            let _ = writeln!(md, "- {name}: a run failed and was tried again: {}", error.replace('|', "\\|"));
        }
    }
    if !md.ends_with("\n\n") {
        let _ = writeln!(md);
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

fn not_measured(goal: &'static str) -> Goal {
    Goal { goal, measured: "a configuration it needs has no figures (see below)".into(), verdict: "not measured" }
}

fn stopped_text(stopped: &Option<Stopped>) -> String {
    match stopped {
        Some(Stopped::Unavailable(why)) => format!("not available: {}", first_line(why)),
        Some(Stopped::Failed(why)) => format!("**failed**: {}", first_line(why).replace('|', "\\|")),
        None => "no figures".into(),
    }
}

/// A configuration that has figures but failed in a later repetition is marked so.
fn stopped_mark(stopped: &Option<Stopped>) -> String {
    match stopped {
        Some(Stopped::Failed(why)) => format!(" (**failed later**: {})", first_line(why).replace('|', "\\|")),
        _ => String::new(),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn spread(stats: Stats, format: impl Fn(f64) -> String) -> String {
    if stats.count == 1 {
        return format(stats.median);
    }
    format!("{} ({}-{})", format(stats.median), format(stats.min), format(stats.max))
}

fn ratio(stats: Stats, base: Option<Stats>) -> String {
    ratio_opt(Some(stats), base)
}

fn ratio_opt(a: Option<Stats>, b: Option<Stats>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => {
            let r = a.median / b.median;
            if r >= 100.0 { format!("{r:.0}x") } else { format!("{r:.2}x") }
        }
        _ => "-".into(),
    }
}

/// Seconds, three significant digits.
fn secs(value: f64) -> String {
    match value {
        v if v >= 100.0 => format!("{v:.0} s"),
        v if v >= 10.0 => format!("{v:.1} s"),
        v if v >= 1.0 => format!("{v:.2} s"),
        v => format!("{:.1} ms", v * 1000.0),
    }
}

fn pct(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// GiB from 1 GiB up, MiB below.
fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 { format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64) } else { mib(bytes) }
}

/// The production time `turns` stand for, at the assumed turn rate.
fn hours(turns: u64) -> String {
    format!("{:.1} h", turns as f64 / PRODUCTION_TURNS_PER_SECOND / 3600.0)
}

/// Runs of spaces as one (the tracer's placement reasons may hold a run from a wrapped line).
fn collapse_spaces(text: &str) -> String {
    text.split(' ').filter(|word| !word.is_empty()).collect::<Vec<_>>().join(" ")
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        let odd = Stats::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of(vec![4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Stats::of(Vec::new()).is_none());
    }

    #[test]
    fn output_lines_parse() {
        let bench = "noise\nmalloc_bench pairs 2000000 retained 2000 retained_bytes 527101 seconds 0.014767\n";
        assert_eq!(parse_malloc_bench(bench), Some((0.014767, Outstanding { blocks: 2000, bytes: 527101 })));
        assert_eq!(parse_driver("turns 100 seconds 1.25 turns_per_second 80.0\n"), Some((100, 1.25)));
        assert_eq!(parse_driver("turns 100\n"), None);
        let long =
            "long_run turns 7200 faults 10080000 mmaps 122400 munmaps 122400 kept_bytes 119808000 seconds 69.4\n";
        assert_eq!(parse_long_run(long), Some((10_080_000, 69.4)));
    }

    #[test]
    fn report_numbers_are_found_by_their_path() {
        let json = concat!(
            "{\"stacks\": [{\"source\": \"malloc\", \"outstanding_bytes\": 7, \"x\": [[], {}, \"a]\\\"\"]}],\n",
            "\"totals\": {\"by_source\": {\"brk\": {\"outstanding_bytes\": 1}, ",
            "\"malloc\": {\"outstanding_bytes\": 50827}}}, \"end\": null}"
        );
        let report = Json::parse_keys(json, &["totals"]).unwrap();
        assert_eq!(report.at(&["totals", "by_source", "malloc", "outstanding_bytes"]).unwrap().as_u64(), Some(50827));
        assert_eq!(report.at(&["totals", "by_source", "mmap", "outstanding_bytes"]), None);
        assert!(report.get("stacks").is_none(), "skipped");
        let whole = Json::parse(json).unwrap();
        assert_eq!(whole.at(&["stacks"]).unwrap().items()[0].get("x").unwrap().items()[2].as_str(), Some("a]\""));
        assert_eq!(Json::parse(r#"["\u00e9\ud83d\ude00", -1.5e3, true]"#).unwrap().items()[0].as_str(), Some("é😀"));
        assert!(Json::parse("{\"a\": 1").is_err());
    }

    #[test]
    fn probe_counts_parse() {
        let hits = ProbeHits { malloc_entry: 200001, malloc_return: 200001, free_entry: 199800 };
        let bpftrace = "Attaching 3 probes...\n\n@free_entry: 199800\n@malloc_entry: 200001\n@malloc_return: 200001\n";
        assert_eq!(parse_bpftrace_counts(bpftrace), Some(hits));
        let perf = "# started on\n\n199800,,g:leaktrace_1_free_entry,457659229,100.00,,\n\
                    200001,,g:leaktrace_1_malloc_entry,457659229,100.00,,\n\
                    200001,,g:leaktrace_1_malloc_return,457659229,100.00,,\n";
        assert_eq!(parse_perf_stat(perf), Some(hits));
        assert_eq!(parse_perf_stat("<not counted>,,g:leaktrace_1_free_entry,0,100.00,,\n"), None);
    }

    #[test]
    fn signal_safe_text() {
        let mut text = CText::new();
        text.push(b"-:g/leaktrace_").push_number(4096).push(b"_free_entry\n");
        assert_eq!(text.text(), b"-:g/leaktrace_4096_free_entry\n");
        let mut zero = CText::new();
        assert_eq!(zero.push_number(0).text(), b"0");
    }

    #[test]
    fn rotation_moves_the_start() {
        assert_eq!(rotated(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(rotated(&[1, 2, 3], 1), vec![2, 3, 1]);
        assert_eq!(rotated(&[1, 2, 3], 4), vec![2, 3, 1]);
    }

    #[test]
    fn a_timed_out_process_is_killed_with_everything_it_started() {
        // The shell's background sleep is in its group: it must go too.
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 30 & sleep 30"]);
        let mut process = Process::spawn("sleep", &mut command).unwrap();
        let group = process.pid as i32;
        assert!(process.wait(Duration::from_millis(200)).is_err());
        // The orphaned sleep is killed at once but reaped by init a little later (a zombie still counts).
        // SAFETY: signal 0 only checks whether any process of the group is left.
        let gone = (0..50).any(|_| {
            thread::sleep(Duration::from_millis(50));
            (unsafe { kill(-group, 0) }) == -1
        });
        assert!(gone, "the group is gone");
        assert!(!LIVE_GROUPS.iter().any(|slot| slot.load(Ordering::SeqCst) == group));
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(secs(0.0147), "14.7 ms");
        assert_eq!(secs(23.45), "23.4 s");
        assert_eq!(thousands(2_000_000), "2,000,000");
        assert_eq!(thousands(999), "999");
    }
}

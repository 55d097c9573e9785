//! `cargo xtask bench`: what tracing costs, measured in one run and written to BENCHMARKS.md.
//!
//! - `bench/malloc_bench.c` (millions of small malloc/free pairs) untraced, under dispatch-leaktrace in each
//!   of its modes, under count-only uprobes on the same functions (the kernel's floor for those probes),
//!   under a bpftrace memleak-style script (`bench/memleak.bt`) and under heaptrack.
//! - The Bun demo's turns per second, untraced and with dispatch-leaktrace attached by pid.
//!
//! Each figure is a median over repeated runs. The configurations run interleaved (one run of each, then
//! the next round, each round in a rotated order) so that a burst of load from elsewhere spreads over all
//! of them instead of skewing one. Every process started here gets a process group of its own, killed on
//! every way out: errors, timeouts, and Ctrl-C or SIGTERM to the xtask itself.

use std::{
    fmt::Write as _,
    fs::{self, File},
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicI32, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{root, setup};

const USAGE: &str = "usage: cargo xtask bench [--runs N] [--quick] [--pairs N]

  --runs N    repetitions of every configuration (default 5); figures are medians
  --quick     one run of each with a smaller workload, to try the harness out
  --pairs N   malloc/free pairs per malloc_bench run (default 1000000; 200000 with --quick)

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
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut runs = None;
        let mut pairs = None;
        let mut quick = false;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> Result<u64> {
                let text = args.next().ok_or_else(|| anyhow!("{name} needs a value\n\n{USAGE}"))?;
                text.parse().ok().filter(|n| *n > 0).ok_or_else(|| anyhow!("{name} {text}: not a positive integer"))
            };
            match arg.as_str() {
                "--runs" => runs = Some(value("--runs")? as usize),
                "--pairs" => pairs = Some(value("--pairs")?),
                "--quick" => quick = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}\n\n{USAGE}"),
            }
        }
        let (default_runs, default_pairs) = Self::defaults(quick);
        Ok(Self {
            runs: runs.unwrap_or(default_runs),
            quick,
            pairs: pairs.unwrap_or(default_pairs),
            turns: if quick { 40 } else { 100 },
            rounds: if quick { 1 } else { 2 },
        })
    }

    /// (runs, pairs) unless told otherwise.
    fn defaults(quick: bool) -> (usize, u64) {
        if quick { (1, 200_000) } else { (5, 1_000_000) }
    }

    /// The command line that reproduces this run.
    fn command_line(&self) -> String {
        let mut line = String::from("sudo cargo xtask bench");
        if self.quick {
            line.push_str(" --quick");
        }
        let (default_runs, default_pairs) = Self::defaults(self.quick);
        if self.runs != default_runs {
            let _ = write!(line, " --runs {}", self.runs);
        }
        if self.pairs != default_pairs {
            let _ = write!(line, " --pairs {}", self.pairs);
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
    bun: PathBuf,
    bpftrace: Option<PathBuf>,
    heaptrack: Option<PathBuf>,
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
    let runs = bench.options.runs;
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

    let report = Report { options: &bench.options, machine, load, cpu, elapsed: started.elapsed(), malloc, bun };
    let markdown = report.render();
    let path = root().join("BENCHMARKS.md");
    fs::write(&path, &markdown).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("xtask bench: done in {:.0} s; wrote {}", started.elapsed().as_secs_f64(), path.display());
    print!("{}", report.goals_text());
    let failed = report.failures();
    if !failed.is_empty() {
        bail!("some configurations failed (see BENCHMARKS.md and target/bench/): {}", failed.join(", "));
    }
    Ok(())
}

/// Compiles malloc_bench, finds the tools, mounts tracefs for bpftrace, clears target/bench.
fn prepare(options: Options) -> Result<Bench> {
    let work = root().join("target/bench");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    let malloc_bench = compile_malloc_bench(&work)?;
    let bpftrace = on_path("bpftrace");
    if bpftrace.is_some() {
        ensure_tracefs()?;
    }
    Ok(Bench {
        options,
        tracer: root().join("target/release/dispatch-leaktrace"),
        malloc_bench,
        bun: setup::bun()?,
        bpftrace,
        heaptrack: on_path("heaptrack"),
        work,
    })
}

fn compile_malloc_bench(work: &Path) -> Result<PathBuf> {
    let source = root().join("bench/malloc_bench.c");
    let binary = work.join("malloc_bench");
    let status = Command::new("cc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .context("cannot run cc: install gcc")?;
    if !status.success() {
        bail!("cannot compile {}", source.display());
    }
    Ok(binary)
}

/// bpftrace needs tracefs for uprobes; it may not be mounted on a fresh machine.
fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    crate::run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
        .context("cannot mount tracefs for bpftrace")
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
    CountOnly,
    Memleak,
    Heaptrack,
}

impl MallocConfig {
    const ALL: [Self; 7] =
        [Self::Untraced, Self::Full, Self::Sampled, Self::Faults, Self::CountOnly, Self::Memleak, Self::Heaptrack];

    fn name(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Full => "dispatch-leaktrace, full allocator mode",
            Self::Sampled => "dispatch-leaktrace, sampled allocator mode",
            Self::Faults => "dispatch-leaktrace, page-fault mode",
            Self::CountOnly => "count-only uprobes (bpftrace): the floor",
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
            Self::Memleak => "memleak",
            Self::Heaptrack => "heaptrack",
        }
    }

    /// How the run is launched, as written in BENCHMARKS.md.
    fn command_text(self) -> String {
        let tail = "-- ./malloc_bench";
        match self {
            Self::Untraced => "./malloc_bench".into(),
            Self::Full => format!("dispatch-leaktrace --no-faults {tail}"),
            Self::Sampled => format!("dispatch-leaktrace --no-faults --sample-bytes {SAMPLE_BYTES} {tail}"),
            Self::Faults => format!("dispatch-leaktrace --no-alloc {tail}"),
            Self::CountOnly => "bpftrace -c ./malloc_bench bench/count_only.bt".into(),
            Self::Memleak => "bpftrace -c ./malloc_bench bench/memleak.bt".into(),
            Self::Heaptrack => "heaptrack ./malloc_bench".into(),
        }
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
    reported: Option<Reported>,
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
                        Some("bpftrace is not on PATH")
                    }
                    MallocConfig::Heaptrack if bench.heaptrack.is_none() => Some("heaptrack is not on PATH"),
                    _ => None,
                };
                (config, missing.map_or_else(Series::new, Series::unavailable))
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
    let mut command = malloc_command(config, bench, &dir, &argv);
    command.current_dir(&dir).stdin(Stdio::null()).stdout(log_file(&dir, "stdout")?).stderr(log_file(&dir, "stderr")?);

    let started = Instant::now();
    let mut process = Process::spawn(config.name(), &mut command)?;
    let (status, ended) = process.wait(malloc_timeout(bench.options.pairs))?;
    let wall_seconds = ended.duration_since(started).as_secs_f64();
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
    Ok(Some(MallocSample { loop_seconds, wall_seconds, retained, reported }))
}

/// The figures the accuracy check needs from report.json.
fn read_report(path: &Path) -> Option<Reported> {
    let text = fs::read_to_string(path).ok()?;
    let number = |path: &[&str]| json_number(&text, path);
    let malloc = match (
        number(&["by_source", "malloc", "outstanding_allocs"]),
        number(&["by_source", "malloc", "outstanding_bytes"]),
    ) {
        (Some(blocks), Some(bytes)) => Some(Outstanding { blocks, bytes }),
        _ => None,
    };
    Some(Reported { malloc, lost_events: number(&["counters", "lost_events"]) })
}

/// The number of the key `path`'s last element, found after each earlier key in turn. Enough for the
/// tracer's report.json (its fields are only ever added, never renamed) without a JSON parser in xtask.
fn json_number(text: &str, path: &[&str]) -> Option<u64> {
    let mut rest = text;
    for key in path {
        let pattern = format!("\"{key}\":");
        rest = &rest[rest.find(&pattern)? + pattern.len()..];
    }
    let value = rest.trim_start();
    let end = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    value[..end].parse().ok()
}

fn malloc_command(config: MallocConfig, bench: &Bench, dir: &Path, argv: &[String]) -> Command {
    if let Some(args) = config.tracer_args() {
        let mut command = Command::new(&bench.tracer);
        command.args(args).arg("--output").arg(dir.join("report")).arg("--").args(argv);
        return command;
    }
    match config {
        MallocConfig::Untraced => {
            let mut command = Command::new(&argv[0]);
            command.args(&argv[1..]);
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

fn remove_heaptrack_data(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("heaptrack.") {
            let _ = fs::remove_file(entry.path());
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
    Allocator,
    Sampled,
}

impl BunConfig {
    const ALL: [Self; 4] = [Self::Untraced, Self::Faults, Self::Allocator, Self::Sampled];

    fn name(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Faults => "page-fault mode",
            Self::Allocator => "allocator mode",
            Self::Sampled => "sampled allocator mode",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Faults => "faults",
            Self::Allocator => "allocator",
            Self::Sampled => "sampled",
        }
    }

    /// The tracer's options; `None`: not traced.
    fn tracer_args(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Untraced => None,
            Self::Faults => Some(&["--no-alloc"]),
            Self::Allocator => Some(&[]),
            Self::Sampled => Some(&["--sample-bytes", SAMPLE_BYTES]),
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
    /// CPU time per measured turn, in milliseconds: the server's in user space and in the kernel (where
    /// the probes run, in its context), and the tracer's (its collector).
    server_user_ms: f64,
    server_kernel_ms: f64,
    tracer_ms: Option<f64>,
    /// The tracer's voluntary context switches per measured turn: how often its collector is woken.
    tracer_wakeups: Option<f64>,
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
    if let Some(tracer) = tracer {
        stop_tracer(tracer, &dir)?;
    }
    drop(server);

    let per_turn_ms = |seconds: f64| seconds * 1000.0 / turns as f64;
    Ok(Some(BunSample {
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
        let mut command = Command::new(&bench.bun);
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
    let mut command = Command::new(&bench.bun);
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
}

/// Process groups alive right now (0: a free slot). Read by the signal handler, so plain atomics.
static LIVE_GROUPS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];

/// Ctrl-C reaches only the terminal's foreground group, and our children are in groups of their own: on
/// SIGINT, SIGTERM or SIGHUP kill those groups, then exit. Only async-signal-safe calls in here.
extern "C" fn on_fatal_signal(signal_number: i32) {
    for slot in &LIVE_GROUPS {
        let group = slot.load(Ordering::SeqCst);
        if group > 0 {
            // SAFETY: kill(2) is async-signal-safe; a negative pid names the whole group.
            unsafe { kill(-group, SIGKILL) };
        }
    }
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
        self.render_malloc(&mut md);
        self.render_bun(&mut md);
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
        let _ = writeln!(
            md,
            "Generated by `cargo xtask bench` (xtask/src/bench.rs); the whole file is rewritten on each run.\n"
        );
        let _ = writeln!(md, "Reproduce with: `{}`\n", self.options.command_line());
        let _ = writeln!(md, "| | |\n| --- | --- |");
        let _ = writeln!(md, "| date | {} |", m.date);
        let _ = writeln!(md, "| commit | {} |", m.commit);
        let _ = writeln!(md, "| CPU | {}, {} CPUs (nproc) |", m.cpu, m.cpus);
        let _ = writeln!(md, "| memory | {} |", m.memory);
        let _ = writeln!(md, "| kernel | {} |", m.kernel);
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
        let mut goals = Vec::new();

        goals.push(match (loop_median(MallocConfig::Full), loop_median(MallocConfig::CountOnly)) {
            (Some(full), Some(floor)) => Goal {
                goal: "full allocator tracing within 10% of the count-only uprobe floor (malloc_bench loop time)",
                measured: format!("full mode {:.2}x the floor ({} vs {})", full / floor, secs(full), secs(floor)),
                verdict: verdict(full / floor <= 1.10),
            },
            _ => not_measured("full allocator tracing within 10% of the count-only uprobe floor"),
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
        goals.push(match (tps_median(BunConfig::Faults), tps_median(BunConfig::Untraced)) {
            (Some(traced), Some(untraced)) => Goal {
                goal: "page-fault mode on the Bun demo: at most 3% fewer turns/s",
                measured: format!("{} fewer ({:.1} vs {:.1} turns/s)", pct(1.0 - traced / untraced), traced, untraced),
                verdict: verdict(1.0 - traced / untraced <= 0.03),
            },
            _ => not_measured("page-fault mode on the Bun demo: at most 3% fewer turns/s"),
        });
        goals.push(match (tps_median(BunConfig::Sampled), tps_median(BunConfig::Untraced)) {
            (Some(traced), Some(untraced)) => Goal {
                goal: "sampled allocator mode on the Bun demo: at most 10% fewer turns/s",
                measured: format!("{} fewer ({:.1} vs {:.1} turns/s)", pct(1.0 - traced / untraced), traced, untraced),
                verdict: verdict(1.0 - traced / untraced <= 0.10),
            },
            _ => Goal {
                goal: "sampled allocator mode on the Bun demo: at most 10% fewer turns/s",
                measured: match &self.bun.get(BunConfig::Sampled).stopped {
                    Some(Stopped::Unavailable(why) | Stopped::Failed(why)) => first_line(why).to_string(),
                    None => "no figures".into(),
                },
                verdict: "not measured",
            },
        });
        goals
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
        self.render_accuracy(md);
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
    }

    fn render_malloc_comparisons(&self, md: &mut String) {
        let loop_of = |c| self.malloc.get(c).stats(|s: &MallocSample| s.loop_seconds);
        let wall_of = |c| self.malloc.get(c).stats(|s: &MallocSample| s.wall_seconds);
        use MallocConfig::{CountOnly, Full, Heaptrack, Memleak, Sampled};
        let rows = [
            ("full allocator mode / count-only floor", Full, CountOnly),
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
             wake-ups are its voluntary context switches. In allocator mode the tracer sees only glibc's malloc: \
             Bun's own allocator, mimalloc, is linked in statically and stripped, so its calls are not traced.\n",
            o.turns,
            o.rounds,
            if o.rounds == 1 { "" } else { "s" }
        );
        let untraced = self.bun.get(BunConfig::Untraced).stats(|s| s.turns_per_second);
        let _ = writeln!(
            md,
            "| configuration | command | turns/s | vs untraced | server user ms/turn | server kernel ms/turn | \
             tracer CPU ms/turn | tracer wake-ups/turn |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
        );
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
                    let _ = writeln!(
                        md,
                        "| {}{} | {command} | {} | {change} | {} | {} | {} | {} |",
                        config.name(),
                        stopped_mark(&series.stopped),
                        spread(tps, |v| format!("{v:.1}")),
                        ms(series.stats(|s| s.server_user_ms)),
                        ms(series.stats(|s| s.server_kernel_ms)),
                        ms(Stats::of(series.samples.iter().filter_map(|s| s.tracer_ms).collect())),
                        Stats::of(series.samples.iter().filter_map(|s| s.tracer_wakeups).collect())
                            .map_or("-".into(), |s| format!("{:.0}", s.median)),
                    );
                }
                None => {
                    let _ =
                        writeln!(md, "| {} | {command} | {} | | | | | |", config.name(), stopped_text(&series.stopped));
                }
            }
        }
        let _ = writeln!(md);
        render_retried(md, self.bun.series.iter().map(|(c, s)| (c.name(), &s.retried)));
    }

    fn render_method(&self, md: &mut String) {
        let _ = writeln!(md, "## How it is measured\n");
        let notes = [
            "Every configuration runs once per repetition, in an order rotated by one each repetition, so that \
             load from elsewhere spreads over all of them. Figures are medians, with the minimum and maximum.",
            "The count-only floor (`bench/count_only.bt`) puts uprobes on the same glibc functions an allocator \
             tracer needs (malloc entry and return, free entry) and only counts: what the kernel's uprobes cost \
             before any tracer does any work. The probe on free's first instruction (`test %rdi,%rdi`) cannot be \
             emulated by the kernel and is single-stepped out of line, which dominates this floor on this kernel.",
            "bpftrace runs with `-c`, which starts the command once its probes are attached and scopes the uprobes \
             to it; the scripts also filter on `cpid`, so other processes are not slowed nor counted. \
             `bench/memleak.bt` keeps each block's size and user stack keyed by address and deletes them on free; \
             at the end it only clears its maps (printing them would add bpftrace's symbolizing to its time).",
            "malloc_bench's default workload is 1,000,000 pairs: each uprobe-based configuration costs 11 to 15 µs \
             a pair here, so 2,000,000 pairs five times over would take 6 to 9 minutes for malloc_bench alone. \
             The cost per call does not depend on the count; `--pairs 2000000` runs the larger workload.",
            "heaptrack (LD_PRELOAD, in-process) is the user-space reference: it records every call into a file \
             analysed later; its command time includes its own end-of-run summary.",
            "A configuration whose tool is missing is marked not available; a tracer mode the build rejects \
             (exit code 2, unknown option) likewise. A run that fails is tried once more and listed under its \
             table; a configuration that fails twice stops there and the error is shown, while the others go \
             on. Logs and reports of every run are in `target/bench/`.",
        ];
        for note in notes {
            let _ = writeln!(md, "- {note}");
        }
    }

    /// Configurations that failed, by name.
    fn failures(&self) -> Vec<String> {
        let malloc = self.malloc.series.iter().filter(|(_, s)| matches!(s.stopped, Some(Stopped::Failed(_))));
        let bun = self.bun.series.iter().filter(|(_, s)| matches!(s.stopped, Some(Stopped::Failed(_))));
        malloc
            .map(|(c, _)| format!("malloc_bench {}", c.name()))
            .chain(bun.map(|(c, _)| format!("Bun demo {}", c.name())))
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
    }

    #[test]
    fn report_numbers_are_found_by_their_path() {
        let json = concat!(
            "{\"stacks\": [{\"source\": \"malloc\", \"outstanding_bytes\": 7}],\n",
            "\"totals\": {\"by_source\": {\"brk\": {\"outstanding_bytes\": 1}, ",
            "\"malloc\": {\"outstanding_bytes\": 50827}}}}"
        );
        assert_eq!(json_number(json, &["by_source", "malloc", "outstanding_bytes"]), Some(50827));
        assert_eq!(json_number(json, &["by_source", "mmap", "outstanding_bytes"]), None);
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

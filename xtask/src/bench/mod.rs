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
//! - The stack walk: BPF time of the allocator entry program per malloc at several stack depths, with the
//!   tracer's own walk and with the kernel's (`bench/deep_stack.c`).
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
        Arc,
        atomic::{AtomicBool, AtomicI32, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{root, setup};

mod bpf_stats;
mod bun;
mod floor;
mod long_run;
mod machine;
mod malloc;
mod report;
mod report_json;
mod runner;
mod soak;
mod stacks;
mod walk;

use self::{
    bun::*,
    floor::*,
    long_run::*,
    machine::*,
    malloc::*,
    report::*,
    report_json::{ReportJson, counters_text, nonzero_counters},
    runner::*,
    soak::*,
    stacks::*,
    walk::*,
};

const USAGE: &str = "usage: cargo xtask bench [--runs N] [--quick] [--pairs N] [--long-turns N] [--soak-seconds N]
                         [--only WORKLOADS] [--long-run-only] [--baseline PATH]

  --runs N          repetitions of every configuration (default 5); figures are medians
  --quick           one run of each with a smaller workload, to try the harness out
  --pairs N         malloc/free pairs per malloc_bench run (default 1000000; 200000 with --quick)
  --long-turns N    turns of the long-run memory benchmark under the default budget (default 7200, two hours
                    of production at a turn a second; 720 with --quick); the small budget gets half
  --soak-seconds N  wall time of the soak (default 600: 100 minutes of trace, time compressed 10x; 120 with
                    --quick); it runs about a minute longer (the snapshots at its end, the final reports)
  --only WORKLOADS  only these, comma-separated among malloc, bun, long-run, soak, stacks, walk: printed
                    written to target/bench/<WORKLOADS>.md, BENCHMARKS.md is left alone
  --long-run-only   the same as --only long-run
  --baseline PATH   walk: measure this dispatch-leaktrace too (a build of another commit), with its own walk,
                    alternating with ours in the same run: the way to compare two commits on a noisy host

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
    /// Wall seconds of the soak.
    soak_seconds: u64,
    /// The workloads to run (--only); empty: all of them.
    only: Vec<Workload>,
    /// Another build of the tracer, measured beside ours by the walk workload.
    baseline: Option<PathBuf>,
}

/// The parts of the benchmark that --only can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Malloc,
    Bun,
    LongRun,
    Soak,
    Stacks,
    Walk,
}

impl Workload {
    const ALL: [Self; 6] = [Self::Malloc, Self::Bun, Self::LongRun, Self::Soak, Self::Stacks, Self::Walk];

    fn name(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::Bun => "bun",
            Self::LongRun => "long-run",
            Self::Soak => "soak",
            Self::Stacks => "stacks",
            Self::Walk => "walk",
        }
    }

    fn parse_list(text: &str) -> Result<Vec<Self>> {
        let mut list = Vec::new();
        for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            let workload = Self::ALL.into_iter().find(|w| w.name() == name).ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|w| w.name()).collect();
                anyhow!("--only {name}: not a workload (one of {})", names.join(", "))
            })?;
            if !list.contains(&workload) {
                list.push(workload);
            }
        }
        if list.is_empty() {
            bail!("--only needs at least one workload");
        }
        Ok(list)
    }
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut runs = None;
        let mut pairs = None;
        let mut long_turns = None;
        let mut soak_seconds = None;
        let mut quick = false;
        let mut only = Vec::new();
        let mut baseline = None;
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
                "--soak-seconds" => soak_seconds = Some(value("--soak-seconds")?),
                "--only" => {
                    let text = args.next().ok_or_else(|| anyhow!("--only needs a value\n\n{USAGE}"))?;
                    for workload in Workload::parse_list(text)? {
                        if !only.contains(&workload) {
                            only.push(workload);
                        }
                    }
                }
                "--baseline" => {
                    let text = args.next().ok_or_else(|| anyhow!("--baseline needs a value\n\n{USAGE}"))?;
                    let path =
                        Path::new(text).canonicalize().ok().filter(|path| path.is_file()).ok_or_else(|| {
                            anyhow!("--baseline {text}: no such file; give a dispatch-leaktrace binary")
                        })?;
                    baseline = Some(path);
                }
                "--long-run-only" => {
                    if !only.contains(&Workload::LongRun) {
                        only.push(Workload::LongRun);
                    }
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}\n\n{USAGE}"),
            }
        }
        let (default_runs, default_pairs, default_long_turns) = Self::defaults(quick);
        let default_soak_seconds = Self::default_soak_seconds(quick);
        Ok(Self {
            runs: runs.unwrap_or(default_runs),
            quick,
            pairs: pairs.unwrap_or(default_pairs),
            turns: if quick { 40 } else { 100 },
            rounds: if quick { 1 } else { 2 },
            long_turns: long_turns.unwrap_or(default_long_turns),
            soak_seconds: soak_seconds.unwrap_or(default_soak_seconds),
            only,
            baseline,
        })
    }

    fn default_soak_seconds(quick: bool) -> u64 {
        if quick { 120 } else { 600 }
    }

    /// Whether this run measures `workload`.
    fn runs(&self, workload: Workload) -> bool {
        self.only.is_empty() || self.only.contains(&workload)
    }

    /// Only some workloads (--only): BENCHMARKS.md is left alone.
    fn partial(&self) -> bool {
        !self.only.is_empty()
    }

    /// `long-run`, `soak-stacks`: the name of a partial run's Markdown file.
    fn only_names(&self, separator: &str) -> String {
        self.only.iter().map(|w| w.name()).collect::<Vec<_>>().join(separator)
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
        if self.soak_seconds != Self::default_soak_seconds(self.quick) {
            let _ = write!(line, " --soak-seconds {}", self.soak_seconds);
        }
        if self.partial() {
            let _ = write!(line, " --only {}", self.only_names(","));
        }
        if let Some(baseline) = &self.baseline {
            let _ = write!(line, " --baseline {}", baseline.display());
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
    soak: PathBuf,
    stacks: PathBuf,
    deep_stack: PathBuf,
    /// None when the Bun demo is not measured (not needed, so not installed).
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
    let (with_malloc, with_bun) = (bench.options.runs(Workload::Malloc), bench.options.runs(Workload::Bun));
    let runs = if with_malloc || with_bun { bench.options.runs } else { 0 };
    for rep in 0..runs {
        for config in rotated(&MallocConfig::ALL, rep).into_iter().filter(|_| with_malloc) {
            eprintln!("xtask bench: [{}/{runs}] malloc_bench, {}", rep + 1, config.name());
            malloc.run(config, &bench, rep)?;
        }
        for config in rotated(&BunConfig::ALL, rep).into_iter().filter(|_| with_bun) {
            eprintln!("xtask bench: [{}/{runs}] Bun demo, {}", rep + 1, config.name());
            bun.run(config, &bench, rep)?;
        }
        load.push(load_average());
        cpu.push(CpuSample::now());
    }
    let options = &bench.options;
    let long_run = options.runs(Workload::LongRun).then(|| LongRunSeries::measure(&bench));
    let soak = options.runs(Workload::Soak).then(|| SoakSeries::measure(&bench));
    let stacks = options.runs(Workload::Stacks).then(|| StacksSeries::measure(&bench));
    let walk = options.runs(Workload::Walk).then(|| WalkSeries::measure(&bench));

    let report = Report {
        options: &bench.options,
        machine,
        load,
        cpu,
        elapsed: started.elapsed(),
        malloc,
        bun,
        long_run,
        soak,
        stacks,
        walk,
        placements: &bench.placements,
    };
    let path = if bench.options.partial() {
        bench.work.join(format!("{}.md", bench.options.only_names("-")))
    } else {
        root().join("BENCHMARKS.md")
    };
    let markdown = report.render();
    fs::write(&path, &markdown).with_context(|| format!("cannot write {}", path.display()))?;
    if bench.options.partial() {
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
    let soak = compile(&work, "soak")?;
    let stacks = compile(&work, "stacks")?;
    let deep_stack = compile(&work, "deep_stack")?;
    let tracer = root().join("target/release/dispatch-leaktrace");
    // bpftrace, perf, heaptrack, tracefs and the floor are for malloc_bench alone.
    let without_malloc = !options.runs(Workload::Malloc);
    if !without_malloc {
        // Without them the comparison rows say "not available"; the rest is still measured.
        if let Err(error) = setup::bench_tools() {
            eprintln!("xtask bench: warning: cannot install bpftrace and perf: {error:#}");
        }
    }
    let (bpftrace, perf) = if without_malloc { (None, None) } else { (on_path("bpftrace"), on_path("perf")) };
    let tracefs = if without_malloc { Ok(()) } else { ensure_tracefs() };
    let placements = match (&tracefs, without_malloc) {
        (_, true) => Err("malloc_bench not measured in this run".to_string()),
        (Err(error), _) => Err(format!("no tracefs: {error:#}")),
        (Ok(()), false) => {
            remove_stale_floor_events();
            find_placements(&tracer, &malloc_bench, &work).map_err(|error| format!("{error:#}"))
        }
    };
    if let (Err(why), false) = (&placements, without_malloc) {
        eprintln!("xtask bench: no floor at the tracer's placement: {why}");
    }
    if options.runs(Workload::Walk) {
        setup::bpftool()?;
    }
    let bun = if options.runs(Workload::Bun) || options.runs(Workload::Walk) { Some(setup::bun()?) } else { None };
    Ok(Bench {
        options,
        tracer,
        malloc_bench,
        long_run,
        soak,
        stacks,
        deep_stack,
        bun,
        bpftrace: bpftrace.filter(|_| tracefs.is_ok()),
        heaptrack: on_path("heaptrack"),
        perf,
        placements,
        work,
    })
}

impl Bench {
    fn bun(&self) -> &Path {
        self.bun.as_deref().expect("installed when the Bun demo is measured")
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
    fn report_json_figures_are_read_and_the_rest_skipped() {
        let json = concat!(
            "{\"stacks\": [{\"source\": \"malloc\", \"outstanding_bytes\": 7, \"x\": [[], {}, \"a]\\\"\"]}, {}],\n",
            "\"totals\": {\"by_source\": {\"brk\": {\"outstanding_bytes\": 1}, ",
            "\"malloc\": {\"outstanding_bytes\": 50827, \"outstanding_allocs\": 3}}}, \"end\": null, ",
            "\"counters\": {\"lost_events\": 0}, \"tracer\": {\"over_budget\": false, \"stacks_held\": 2}}"
        );
        let path = std::env::temp_dir().join(format!("xtask-report-{}.json", std::process::id()));
        fs::write(&path, json).unwrap();
        let report = ReportJson::read(&path);
        let _ = fs::remove_file(&path);
        let report = report.unwrap();
        let malloc = report.source("malloc").unwrap();
        assert_eq!(
            (malloc.outstanding_bytes, malloc.outstanding_allocs, malloc.allocated_bytes),
            (Some(50827), Some(3), None)
        );
        assert!(report.source("mmap").is_none());
        assert_eq!((report.counter("lost_events"), report.counter("map_full")), (Some(0), None));
        assert_eq!((report.stacks.len(), report.tracer.unwrap().stacks_held, report.events), (2, Some(2), None));
        let broken = std::env::temp_dir().join(format!("xtask-broken-{}.json", std::process::id()));
        fs::write(&broken, "{\"totals\": 1").unwrap();
        assert!(ReportJson::read(&broken).is_err());
        let _ = fs::remove_file(&broken);
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
    fn only_chooses_workloads_and_the_command_line_says_so() {
        let args = |text: &str| text.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let all = Options::parse(&[]).unwrap();
        assert!(!all.partial() && Workload::ALL.iter().all(|&w| all.runs(w)));
        assert_eq!((all.soak_seconds, all.command_line().as_str()), (600, "sudo cargo xtask bench"));
        let some = Options::parse(&args("--only soak,stacks,soak --soak-seconds 90")).unwrap();
        assert_eq!(some.only, vec![Workload::Soak, Workload::Stacks]);
        assert!(some.partial() && some.runs(Workload::Stacks) && !some.runs(Workload::Malloc));
        assert_eq!(some.command_line(), "sudo cargo xtask bench --soak-seconds 90 --only soak,stacks");
        assert_eq!(some.only_names("-"), "soak-stacks");
        let long = Options::parse(&args("--quick --long-run-only")).unwrap();
        assert_eq!((long.only.as_slice(), long.soak_seconds), ([Workload::LongRun].as_slice(), 120));
        assert_eq!(long.command_line(), "sudo cargo xtask bench --quick --only long-run");
        let baseline = Options::parse(&args("--only walk --baseline /bin/true")).unwrap();
        assert!(baseline.baseline.as_ref().is_some_and(|path| path.is_absolute() && path.is_file()));
        assert!(baseline.command_line().contains(" --baseline /"), "{}", baseline.command_line());
        let missing = Options::parse(&args("--baseline /nonexistent/tracer")).unwrap_err().to_string();
        assert!(missing.contains("no such file"), "{missing}");
        let unknown = Options::parse(&args("--only soak,bogus")).unwrap_err().to_string();
        assert!(
            unknown.contains("bogus: not a workload (one of malloc, bun, long-run, soak, stacks, walk)"),
            "{unknown}"
        );
        assert!(Options::parse(&args("--only ,")).is_err());
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
        // No signal: only whether any process of the group is left.
        let gone = (0..50).any(|_| {
            thread::sleep(Duration::from_millis(50));
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), None).is_err()
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

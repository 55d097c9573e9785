//! malloc_bench: millions of small malloc/free pairs, untraced, under each tracer mode, under count-only
//! probes (the floor) and under the other tools.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MallocConfig {
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
    pub(super) const ALL: [Self; 10] = [
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

    pub(super) fn name(self) -> &'static str {
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

    pub(super) fn slug(self) -> &'static str {
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
    pub(super) fn command_text(self) -> String {
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
    pub(super) fn uses_floor_events(self) -> bool {
        matches!(self, Self::PlacedFloor | Self::FtraceQuiet | Self::FtraceRecording)
    }

    pub(super) fn tracer_args(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Full => Some(&["--no-faults"]),
            Self::Sampled => Some(&["--no-faults", "--sample-bytes", SAMPLE_BYTES]),
            Self::Faults => Some(&["--no-alloc"]),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct MallocSample {
    /// The benchmark's own time for its loop: what the probes cost while it runs.
    pub(super) loop_seconds: f64,
    /// The whole command, from launch to exit: adds the tool's start, attach, detach and its reports.
    pub(super) wall_seconds: f64,
    /// What malloc_bench kept from its loop, and what the tracer's report says is outstanding.
    pub(super) retained: Outstanding,
    /// The bytes malloc_bench allocated in its loop, kept or freed: the ground truth of the allocator's
    /// `allocated_bytes` (what sampling estimates).
    pub(super) allocated: Option<u64>,
    pub(super) reported: Option<Reported>,
    /// How often the count-only probes fired.
    pub(super) hits: Option<ProbeHits>,
}

/// Hits of count-only probes: malloc's entry and return, free's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProbeHits {
    pub(super) malloc_entry: u64,
    pub(super) malloc_return: u64,
    pub(super) free_entry: u64,
}

/// Blocks and bytes still allocated at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Outstanding {
    pub(super) blocks: u64,
    pub(super) bytes: u64,
}

/// From the tracer's report.json: the allocator's outstanding memory, and events the tracer lost.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reported {
    pub(super) malloc: Option<Outstanding>,
    /// The allocator's allocated bytes, all sites.
    pub(super) malloc_allocated: Option<u64>,
    pub(super) lost_events: Option<u64>,
}

pub(super) struct MallocSeries {
    pub(super) series: Vec<(MallocConfig, Series<MallocSample>)>,
}

impl MallocSeries {
    pub(super) fn new(bench: &Bench) -> Self {
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

    pub(super) fn get(&self, config: MallocConfig) -> &Series<MallocSample> {
        &self.series.iter().find(|(c, _)| *c == config).expect("every configuration has a series").1
    }

    pub(super) fn run(&mut self, config: MallocConfig, bench: &Bench, rep: usize) -> Result<()> {
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
pub(super) fn run_malloc_bench(
    config: MallocConfig,
    bench: &Bench,
    rep: usize,
    attempt: usize,
) -> Result<Option<MallocSample>> {
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
pub(super) fn parse_bpftrace_counts(stdout: &str) -> Option<ProbeHits> {
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
pub(super) fn parse_perf_stat(csv: &str) -> Option<ProbeHits> {
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
pub(super) fn read_report(path: &Path) -> Option<Reported> {
    let report = ReportJson::read(path).ok()?;
    let malloc = report.source("malloc").unwrap_or_default();
    let outstanding = match (malloc.outstanding_allocs, malloc.outstanding_bytes) {
        (Some(blocks), Some(bytes)) => Some(Outstanding { blocks, bytes }),
        _ => None,
    };
    Some(Reported {
        malloc: outstanding,
        malloc_allocated: malloc.allocated_bytes,
        lost_events: report.counter("lost_events"),
    })
}

pub(super) fn malloc_command(config: MallocConfig, bench: &Bench, dir: &Path, argv: &[String]) -> Command {
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
pub(super) fn malloc_timeout(pairs: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_micros(pairs * 120)
}

/// `malloc_bench pairs N retained K retained_bytes B seconds S` -> (S, K blocks of B bytes in all).
pub(super) fn parse_malloc_bench(stdout: &str) -> Option<(f64, Outstanding)> {
    let line = stdout.lines().find(|line| line.starts_with("malloc_bench pairs "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| words.iter().position(|w| *w == key).and_then(|at| words.get(at + 1));
    let retained =
        Outstanding { blocks: value("retained")?.parse().ok()?, bytes: value("retained_bytes")?.parse().ok()? };
    Some((value("seconds")?.parse().ok()?, retained))
}

/// `... allocated_bytes A` from malloc_bench's line.
pub(super) fn parse_allocated(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|line| line.starts_with("malloc_bench pairs "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    words.iter().position(|w| *w == "allocated_bytes").and_then(|at| words.get(at + 1))?.parse().ok()
}

pub(super) fn remove_heaptrack_data(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("heaptrack.") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

//! The long run: the tracer's own memory over hours of a server's page faults, replayed.

use super::*;

/// The tracer's --interval in the long run. Replayed at high speed, hours pass in about a minute: at the
/// default 10 s the tracer would take a handful of timeline points and per-stack snapshots where hours of
/// production give hundreds, past the cap of 64 snapshots (each holds every stack with outstanding
/// memory). At 250 ms a run of a minute takes about 240, so the snapshots weigh what they would in
/// production.
pub(super) const LONG_RUN_INTERVAL: &str = "250ms";
/// How often dispatch-server is assumed to run an orchestrator turn in production.
pub(super) const PRODUCTION_TURNS_PER_SECOND: f64 = 1.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LongRunConfig {
    /// --max-memory at its default.
    DefaultBudget,
    /// A budget smaller than what the run must hold: eviction at work, and what happens past it.
    SmallBudget,
}

impl LongRunConfig {
    pub(super) const ALL: [Self; 2] = [Self::DefaultBudget, Self::SmallBudget];

    pub(super) fn budget(self) -> &'static str {
        match self {
            Self::DefaultBudget => "512M",
            Self::SmallBudget => "64M",
        }
    }

    pub(super) fn budget_bytes(self) -> u64 {
        match self {
            Self::DefaultBudget => 512 << 20,
            Self::SmallBudget => 64 << 20,
        }
    }

    /// The small budget replays half as many turns: it runs slower (it evicts over and over), and the
    /// whole section should take two or three minutes.
    pub(super) fn turns(self, options: &Options) -> u64 {
        match self {
            Self::DefaultBudget => options.long_turns,
            Self::SmallBudget => (options.long_turns / 2).max(1),
        }
    }

    pub(super) fn name(self) -> String {
        match self {
            Self::DefaultBudget => format!("--max-memory {} (the default)", self.budget()),
            Self::SmallBudget => format!("--max-memory {}", self.budget()),
        }
    }

    pub(super) fn command_text(self, turns: u64) -> String {
        format!(
            "dispatch-leaktrace --no-alloc --max-memory {} --interval {LONG_RUN_INTERVAL} -- ./long_run {turns}",
            self.budget()
        )
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct LongRunSample {
    pub(super) turns: u64,
    /// What long_run printed: the page faults it made, and its own time for its loop.
    pub(super) faults: u64,
    pub(super) loop_seconds: f64,
    /// From the tracer's launch to its exit, reports written.
    pub(super) wall_seconds: f64,
    /// Polled from /proc/PID/status every 100 ms: the tracer's anonymous RSS until the target finished
    /// (while tracing), the same over the whole run (with writing the reports after the target's exit),
    /// and VmHWM, the peak of all its resident memory (also the file pages of its binary).
    pub(super) peak_anon_tracing: u64,
    pub(super) peak_anon: u64,
    pub(super) peak_hwm: u64,
    /// From report.json: its `tracer` object, `events` and `counters.lost_events`.
    pub(super) reported: TracerMemory,
    /// Other processes' share of the machine's CPU time during the run.
    pub(super) others: f64,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TracerMemory {
    pub(super) budget_bytes: Option<u64>,
    pub(super) peak_anonymous_rss_bytes: Option<u64>,
    pub(super) stacks_held: Option<u64>,
    pub(super) evicted_stacks: Option<u64>,
    pub(super) evicted_allocated_bytes: Option<u64>,
    pub(super) events: Option<u64>,
    pub(super) lost_events: Option<u64>,
}

impl TracerMemory {
    pub(super) fn read(path: &Path) -> Result<Self> {
        let report = ReportJson::read(path)?;
        let tracer = report.tracer.unwrap_or_default();
        Ok(Self {
            budget_bytes: tracer.budget_bytes,
            peak_anonymous_rss_bytes: tracer.peak_anonymous_rss_bytes,
            stacks_held: tracer.stacks_held,
            evicted_stacks: tracer.evicted_stacks,
            evicted_allocated_bytes: tracer.evicted_allocated_bytes,
            events: report.events,
            lost_events: report.counter("lost_events"),
        })
    }
}

pub(super) struct LongRunSeries {
    pub(super) series: Vec<(LongRunConfig, Series<LongRunSample>)>,
}

impl LongRunSeries {
    pub(super) fn measure(bench: &Bench) -> Self {
        let mut series: Vec<_> = LongRunConfig::ALL.iter().map(|&config| (config, Series::new())).collect();
        for (config, series) in &mut series {
            let turns = config.turns(&bench.options);
            eprintln!("xtask bench: long run, {} turns, {}", thousands(turns), config.name());
            series.measure(&config.name(), |attempt| long_run(*config, bench, attempt).map(Some));
        }
        Self { series }
    }

    pub(super) fn get(&self, config: LongRunConfig) -> &Series<LongRunSample> {
        &self.series.iter().find(|(c, _)| *c == config).expect("every configuration has a series").1
    }
}

/// One long run: the tracer launches long_run in page-fault mode, its memory polled until it exits.
pub(super) fn long_run(config: LongRunConfig, bench: &Bench, attempt: usize) -> Result<LongRunSample> {
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
pub(super) fn tracer_memory(status_file: &str) -> Option<(u64, u64)> {
    let text = fs::read_to_string(status_file).ok()?;
    let kib = |key: &str| {
        text.lines().find_map(|line| line.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((kib("RssAnon:")? * 1024, kib("VmHWM:")? * 1024))
}

/// `long_run turns T faults F mmaps M munmaps U kept_bytes K seconds S` -> (F, S).
pub(super) fn parse_long_run(stdout: &str) -> Option<(u64, f64)> {
    let line = stdout.lines().find(|line| line.starts_with("long_run turns "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| words.iter().position(|w| *w == key).and_then(|at| words.get(at + 1));
    Some((value("faults")?.parse().ok()?, value("seconds")?.parse().ok()?))
}

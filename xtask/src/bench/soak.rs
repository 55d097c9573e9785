//! The soak: whether the tracer's periodic work grows with the trace's age. `bench/soak.c` leaks steadily
//! from many stacks for minutes, the tracer taking a point every 100 ms and a checkpoint every 6 s; at
//! minute 5 of the compressed trace and at its end it is asked for snapshots (SIGUSR1, timed until it says
//! it wrote one), and its CPU and memory are read from /proc.

use nix::sys::signal::Signal;

use super::*;

/// The tracer's --interval: 100 times the default 10 s, so that the points and per-stack snapshots pile up
/// as in a run 100 times as long.
const SOAK_INTERVAL: &str = "100ms";
/// The tracer's --checkpoint: a full report set every minute of compressed trace.
const SOAK_CHECKPOINT: &str = "6s";
/// The tracer's budget (the default): RSS must stay within it all along.
const SOAK_BUDGET: &str = "512M";
const SOAK_BUDGET_BYTES: u64 = 512 << 20;
/// Time in the soak runs this many times faster than in the trace it stands for: a minute of trace is
/// 6 s. The leaker's 4,100 events a second are twice the Bun streaming server's of issue 16, and
/// the tracer takes points 100 times as often as by default, so at this rate every wall second holds at
/// least the events and the periodic work of 10 s of that server's trace (the points, ten times more).
pub(super) const SOAK_COMPRESSION: f64 = 10.0;
/// The early measurement: minute 5 of the trace, as in issue 16.
const EARLY_MINUTE: f64 = 5.0;
/// Snapshots asked for at each measurement; the figure is their median.
const SNAPSHOTS: usize = 3;

/// What was measured at one moment of the soak.
#[derive(Clone, Debug, Default)]
pub(super) struct SoakPoint {
    /// The minute of (compressed) trace.
    pub(super) trace_minute: f64,
    /// The tracer's CPU over the minute of trace before the moment (one checkpoint in it), as a share of
    /// one core.
    pub(super) cpu_share: f64,
    pub(super) memory: ProcessMemory,
    /// From SIGUSR1 to the tracer's "snapshot written to" line, each.
    pub(super) snapshot_seconds: Vec<f64>,
}

impl SoakPoint {
    pub(super) fn snapshot_median(&self) -> f64 {
        Stats::of(self.snapshot_seconds.clone()).map_or(0.0, |s| s.median)
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct SoakSample {
    pub(super) seconds: u64,
    pub(super) early: SoakPoint,
    pub(super) end: SoakPoint,
    /// Polled every 100 ms from the start of the trace until the tracer exited.
    pub(super) peak: ProcessMemory,
    /// From SIGINT to the tracer's exit: the final reports.
    pub(super) final_reports_seconds: f64,
    /// report.json's malloc totals: what the leaker allocated, all of it, and what it still holds.
    pub(super) malloc: report_json::SourceTotals,
    /// Stacks the tracer held at the end, and those report.json lists (it merges stacks whose frames
    /// have the same names).
    pub(super) stacks_held: Option<u64>,
    pub(super) stacks_in_report: usize,
    /// report.json's counters that are not zero.
    pub(super) nonzero_counters: Vec<(String, u64)>,
    pub(super) checkpoints: usize,
    /// Other processes' share of the machine's CPU time during the run. The tracer, reaped by then, and the
    /// leaker, reaped by the tracer, count as ours.
    pub(super) others: f64,
}

pub(super) struct SoakSeries {
    pub(super) series: Series<SoakSample>,
}

impl SoakSeries {
    pub(super) fn measure(bench: &Bench) -> Self {
        let mut series = Series::new();
        eprintln!("xtask bench: soak, {} s", bench.options.soak_seconds);
        series.measure("soak", |attempt| soak(bench, attempt).map(Some));
        Self { series }
    }

    pub(super) fn command_text(seconds: u64) -> String {
        format!(
            "dispatch-leaktrace --quiet -i {SOAK_INTERVAL} --checkpoint {SOAK_CHECKPOINT} --max-memory {SOAK_BUDGET} \
             -- ./soak {}",
            seconds + SOAK_SLACK_SECONDS
        )
    }
}

/// The leaker is told to run this much longer than the soak: the xtask stops the trace itself (SIGINT).
const SOAK_SLACK_SECONDS: u64 = 300;

fn soak(bench: &Bench, attempt: usize) -> Result<SoakSample> {
    let retry = if attempt > 0 { "-retry" } else { "" };
    // target/bench/soak is the leaker's binary.
    let dir = bench.work.join(format!("soak-run{retry}"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let seconds = bench.options.soak_seconds;
    let mut command = Command::new(&bench.tracer);
    command
        .args(["--quiet", "-i", SOAK_INTERVAL, "--checkpoint", SOAK_CHECKPOINT, "--max-memory", SOAK_BUDGET])
        .arg("--output")
        .arg(dir.join("report"))
        .arg("--")
        .arg(&bench.soak)
        .arg((seconds + SOAK_SLACK_SECONDS).to_string())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log_file(&dir, "stdout")?)
        .stderr(Stdio::piped());
    let cpu_before = CpuSample::now();
    let mut process = Process::spawn("dispatch-leaktrace (soak)", &mut command)?;
    let lines = process.lines_of_stderr(&dir.join("stderr"))?;
    wait_for_line(&lines, "tracing pid", Duration::from_secs(60))
        .map_err(|error| failure(&format!("the tracer did not start: {error:#}"), &dir.join("stderr")))?;
    let started = Instant::now();
    let watch = MemoryWatch::start(process.pid, Duration::from_millis(100));
    // Its line also says the leaker started.
    target_pid(&dir.join("stdout"), Duration::from_secs(10))?;

    let early_at = EARLY_MINUTE * 60.0 / SOAK_COMPRESSION;
    let early = measure_point(&mut process, &lines, started, early_at, &dir)?;
    let end = measure_point(&mut process, &lines, started, seconds as f64, &dir)?;

    process.signal(Signal::SIGINT)?;
    let stopped = Instant::now();
    let (status, ended) = process.wait(Duration::from_secs(600))?;
    let peak = watch.stop();
    if !status.success() {
        return Err(failure(&format!("the tracer failed in the soak ({status})"), &dir.join("stderr")));
    }
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let (others, _) = cpu_before.others_between(&CpuSample::now(), cpus);
    let report = ReportJson::read(&dir.join("report/report.json"))?;
    let checkpoints = fs::read_dir(dir.join("report/checkpoints")).map_or(0, |entries| entries.count());
    Ok(SoakSample {
        seconds,
        early,
        end,
        peak,
        final_reports_seconds: ended.duration_since(stopped).as_secs_f64(),
        malloc: report.source("malloc").unwrap_or_default(),
        stacks_held: report.tracer.and_then(|t| t.stacks_held),
        stacks_in_report: report.stacks.len(),
        nonzero_counters: nonzero_counters(&report),
        checkpoints,
        others,
    })
}

/// The leaker's pid, from its first line.
fn target_pid(stdout: &Path, timeout: Duration) -> Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(stdout).unwrap_or_default();
        if let Some(pid) = text.lines().find_map(|line| line.strip_prefix("soak pid ")?.trim().parse().ok()) {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("no `soak pid` line in {} within {} s", stdout.display(), timeout.as_secs());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// At `at` seconds into the trace: the tracer's CPU over the minute of trace before, its memory, then
/// SNAPSHOTS snapshots one after the other.
fn measure_point(
    process: &mut Process,
    lines: &mpsc::Receiver<String>,
    started: Instant,
    at: f64,
    dir: &Path,
) -> Result<SoakPoint> {
    let window = 60.0 / SOAK_COMPRESSION;
    sleep_until(process, started + Duration::from_secs_f64((at - window).max(0.0)), dir)?;
    let cpu_before = ProcessCpu::of(process.pid).total();
    let window_start = Instant::now();
    sleep_until(process, started + Duration::from_secs_f64(at), dir)?;
    let cpu_share = (ProcessCpu::of(process.pid).total() - cpu_before) / window_start.elapsed().as_secs_f64();
    let memory = ProcessMemory::of(process.pid).unwrap_or_default();
    let mut snapshot_seconds = Vec::new();
    for _ in 0..SNAPSHOTS {
        while lines.try_recv().is_ok() {} // lines from before this request
        process.signal(Signal::SIGUSR1)?;
        let asked = Instant::now();
        wait_for_line(lines, "snapshot written to", Duration::from_secs(300))
            .map_err(|error| failure(&format!("no snapshot: {error:#}"), &dir.join("stderr")))?;
        snapshot_seconds.push(asked.elapsed().as_secs_f64());
        thread::sleep(Duration::from_millis(500));
    }
    Ok(SoakPoint { trace_minute: at * SOAK_COMPRESSION / 60.0, cpu_share, memory, snapshot_seconds })
}

/// Sleeps until `when`, failing as soon as the tracer exits.
fn sleep_until(process: &mut Process, when: Instant, dir: &Path) -> Result<()> {
    loop {
        if let Some(status) = process.exited() {
            return Err(failure(&format!("the tracer ended before the soak did ({status})"), &dir.join("stderr")));
        }
        let left = when.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(200)));
    }
}

impl SoakSeries {
    /// The two goals: the periodic work at the end within 1.5x of minute 5, and RSS within the
    /// budget all along.
    pub(super) fn goals(&self) -> Vec<Goal> {
        const WORK_GOAL: &str = "soak: snapshot time and tracer CPU at the end of the trace within 1.5x of minute 5 \
                                 (the tracer's work per interval does not grow with the trace's age)";
        const MEMORY_GOAL: &str = "soak: the tracer's RSS within --max-memory (512M) all along";
        let Some(s) = self.series.samples.first() else {
            let why = stopped_text(&self.series.stopped);
            return vec![
                Goal { goal: WORK_GOAL, measured: why.clone(), verdict: "not measured" },
                Goal { goal: MEMORY_GOAL, measured: why, verdict: "not measured" },
            ];
        };
        let (snapshot_early, snapshot_end) = (s.early.snapshot_median(), s.end.snapshot_median());
        let snapshot_ratio = snapshot_end / snapshot_early;
        let cpu_ratio = s.end.cpu_share / s.early.cpu_share;
        vec![
            Goal {
                goal: WORK_GOAL,
                measured: format!(
                    "snapshot {} at minute {:.0}, {} at minute {:.0} ({snapshot_ratio:.1}x); CPU {} of a core, then \
                     {} ({cpu_ratio:.1}x)",
                    secs(snapshot_early),
                    s.early.trace_minute,
                    secs(snapshot_end),
                    s.end.trace_minute,
                    pct(s.early.cpu_share),
                    pct(s.end.cpu_share),
                ),
                verdict: verdict(snapshot_ratio <= 1.5 && cpu_ratio <= 1.5),
            },
            Goal {
                goal: MEMORY_GOAL,
                measured: format!(
                    "peak RSS {} (anonymous {}) of {}",
                    mib(s.peak.rss),
                    mib(s.peak.anonymous),
                    mib(SOAK_BUDGET_BYTES)
                ),
                verdict: verdict(s.peak.rss <= SOAK_BUDGET_BYTES),
            },
        ]
    }

    pub(super) fn render(&self, md: &mut String) {
        let _ = writeln!(md, "## Soak: work per interval as the trace ages\n");
        let _ = writeln!(
            md,
            "`bench/soak.c` mallocs and frees 2,000 blocks a second and keeps 100 (25.6 KB a second), each at the \
             end of a call path drawn at random among 16,384 (up to 32,768 distinct allocator stacks): about \
             4,100 events a second. The tracer launches it with a point every {SOAK_INTERVAL} and a checkpoint \
             every {SOAK_CHECKPOINT}. Time is compressed {SOAK_COMPRESSION:.0}x: a minute of trace is {:.0} s \
             here. That is conservative for an hour of a real trace: the Bun streaming server of issue 16 made \
             1.9k events a second, and at the default `-i 10s` an hour takes 360 points where a {:.0}-minute \
             soak takes {}. At minute {EARLY_MINUTE:.0} and at the end the tracer's CPU is read over the minute of \
             trace before (one checkpoint in it) and {SNAPSHOTS} snapshots are asked for with SIGUSR1, each timed \
             until its `snapshot written to` line; the snapshot figure is their median. RSS is polled every \
             100 ms from the start to the exit.\n",
            60.0 / SOAK_COMPRESSION,
            self.series.samples.first().map_or(0.0, |s| s.seconds as f64 / 60.0),
            self.series.samples.first().map_or("?".into(), |s| thousands(s.seconds * 10)),
        );
        let Some(s) = self.series.samples.first() else {
            let _ = writeln!(md, "{}\n", stopped_text(&self.series.stopped));
            return;
        };
        let _ = writeln!(md, "Command: `{}`\n", Self::command_text(s.seconds));
        let _ = writeln!(
            md,
            "| moment | wall time | snapshot time (median) | snapshots | tracer CPU (share of a core) | VmRSS | \
             RssAnon | VmHWM |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |");
        for (name, point) in [("minute 5", &s.early), ("end", &s.end)] {
            let each: Vec<String> = point.snapshot_seconds.iter().map(|&t| secs(t)).collect();
            let _ = writeln!(
                md,
                "| {name} (trace minute {:.0}) | {} | {} | {} | {} | {} | {} | {} |",
                point.trace_minute,
                secs(point.trace_minute * 60.0 / SOAK_COMPRESSION),
                secs(point.snapshot_median()),
                each.join(", "),
                pct(point.cpu_share),
                mib(point.memory.rss),
                mib(point.memory.anonymous),
                mib(point.memory.high_water),
            );
        }
        let _ = writeln!(md);
        let number = |value: Option<u64>| value.map_or("?".into(), thousands);
        let _ = writeln!(
            md,
            "Over the whole run: peak VmRSS {}, peak RssAnon {} (budget {}); malloc: {} allocated, {} in {} \
             blocks outstanding at the end; {} stacks held by the tracer, {} listed in report.json (stacks whose \
             frames have the same names are merged); counters not zero: {}; {} checkpoints kept; the final \
             reports took {} after SIGINT. Other processes used {} of the machine's CPU meanwhile.\n",
            mib(s.peak.rss),
            mib(s.peak.anonymous),
            mib(SOAK_BUDGET_BYTES),
            s.malloc.allocated_bytes.map_or("?".into(), gib),
            s.malloc.outstanding_bytes.map_or("?".into(), mib),
            number(s.malloc.outstanding_allocs),
            number(s.stacks_held),
            thousands(s.stacks_in_report as u64),
            counters_text(&s.nonzero_counters),
            s.checkpoints,
            secs(s.final_reports_seconds),
            pct(s.others),
        );
        render_retried(md, std::iter::once(("soak", &self.series.retried)));
    }
}

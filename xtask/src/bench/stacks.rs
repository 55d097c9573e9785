//! 262,144 stacks: `bench/stacks.c` keeps one block from each of 262,144 distinct call stacks; the tracer,
//! under `--max-memory 128M`, must stay within it throughout and write its reports in seconds once the
//! target exits, its totals still exact.

use super::*;

const STACKS_BUDGET: &str = "128M";
const STACKS_BUDGET_BYTES: u64 = 128 << 20;
/// What bench/stacks.c keeps: one 64-byte block from each of 2^18 stacks.
const STACKS: u64 = 1 << 18;
const BLOCK_BYTES: u64 = 64;
/// The goal for the reports' time after the target's exit.
const REPORTS_GOAL_SECONDS: f64 = 10.0;

#[derive(Clone, Debug, Default)]
pub(super) struct StacksSample {
    /// Polled every 50 ms from the tracer's start to its exit.
    pub(super) peak: ProcessMemory,
    /// From the target's exit (seen gone from /proc) to the tracer's.
    pub(super) reports_seconds: f64,
    pub(super) wall_seconds: f64,
    /// report.json's malloc totals.
    pub(super) malloc_blocks: Option<u64>,
    pub(super) malloc_bytes: Option<u64>,
    /// Stacks listed in report.json, and those of them from the allocator.
    pub(super) stacks_in_report: usize,
    pub(super) malloc_stacks_in_report: usize,
    pub(super) report_json_bytes: u64,
    pub(super) tracer: report_json::Tracer,
    /// report.json's counters that are not zero: what was not recorded, and why.
    pub(super) nonzero_counters: Vec<(String, u64)>,
}

pub(super) struct StacksSeries {
    pub(super) series: Series<StacksSample>,
}

impl StacksSeries {
    pub(super) fn measure(bench: &Bench) -> Self {
        let mut series = Series::new();
        eprintln!("xtask bench: {} stacks under --max-memory {STACKS_BUDGET}", thousands(STACKS));
        series.measure("stacks", |attempt| stacks(bench, attempt).map(Some));
        Self { series }
    }

    pub(super) fn command_text() -> String {
        format!("dispatch-leaktrace --quiet --max-memory {STACKS_BUDGET} -- ./stacks")
    }
}

fn stacks(bench: &Bench, attempt: usize) -> Result<StacksSample> {
    let retry = if attempt > 0 { "-retry" } else { "" };
    // target/bench/stacks is the fixture's binary.
    let dir = bench.work.join(format!("stacks-run{retry}"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut command = Command::new(&bench.tracer);
    command
        .args(["--quiet", "--max-memory", STACKS_BUDGET])
        .arg("--output")
        .arg(dir.join("report"))
        .arg("--")
        .arg(&bench.stacks)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log_file(&dir, "stdout")?)
        .stderr(log_file(&dir, "stderr")?);
    let started = Instant::now();
    let mut process = Process::spawn("dispatch-leaktrace (262,144 stacks)", &mut command)?;
    let watch = MemoryWatch::start(process.pid, Duration::from_millis(50));
    let stdout_file = dir.join("stdout");
    let timeout = Duration::from_secs(900);
    let mut target: Option<u32> = None;
    let mut target_gone: Option<Instant> = None;
    let (status, ended) = loop {
        if process.exited().is_some() {
            break process.wait(Duration::ZERO)?;
        }
        if started.elapsed() > timeout {
            process.kill();
            bail!("the tracer did not finish within {} s: killed", timeout.as_secs());
        }
        // stacks prints its pid once its blocks are all kept, then lingers a second and exits.
        if target.is_none() {
            let text = fs::read_to_string(&stdout_file).unwrap_or_default();
            target = text.lines().find_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                words.iter().position(|w| *w == "pid").and_then(|at| words.get(at + 1)?.parse().ok())
            });
        }
        if let (Some(pid), None) = (target, target_gone) {
            if !alive(pid) {
                target_gone = Some(Instant::now());
            }
        }
        thread::sleep(Duration::from_millis(50));
    };
    let peak = watch.stop();
    if !status.success() {
        return Err(failure(&format!("the tracer failed on 262,144 stacks ({status})"), &dir.join("stderr")));
    }
    let target_gone = target_gone.with_context(|| format!("no pid line from stacks in {}", stdout_file.display()))?;
    let path = dir.join("report/report.json");
    let report = ReportJson::read(&path)?;
    let malloc = report.source("malloc").unwrap_or_default();
    Ok(StacksSample {
        peak,
        reports_seconds: ended.duration_since(target_gone).as_secs_f64(),
        wall_seconds: ended.duration_since(started).as_secs_f64(),
        malloc_blocks: malloc.outstanding_allocs,
        malloc_bytes: malloc.outstanding_bytes,
        stacks_in_report: report.stacks.len(),
        malloc_stacks_in_report: report.stacks.iter().filter(|s| s.source.as_deref() == Some("malloc")).count(),
        report_json_bytes: fs::metadata(&path).map_or(0, |m| m.len()),
        tracer: report.tracer.unwrap_or_default(),
        nonzero_counters: nonzero_counters(&report),
    })
}

/// Whether a process still runs (a zombie, exited but not reaped yet, does not).
fn alive(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

impl StacksSeries {
    pub(super) fn goal(&self) -> Goal {
        const GOAL: &str = "262,144 stacks under --max-memory 128M: the tracer's RSS at most 128 MiB throughout, \
                            reports written in under 10 s after the target exits, totals exact";
        let Some(s) = self.series.samples.first() else {
            return Goal { goal: GOAL, measured: stopped_text(&self.series.stopped), verdict: "not measured" };
        };
        let exact =
            s.malloc_blocks.is_some_and(|b| b >= STACKS) && s.malloc_bytes.is_some_and(|b| b >= STACKS * BLOCK_BYTES);
        Goal {
            goal: GOAL,
            measured: format!(
                "peak RSS {} (anonymous {}), reports {} after the exit; malloc totals {} blocks, {}; the tracer \
                 held {} stacks",
                mib(s.peak.rss),
                mib(s.peak.anonymous),
                secs(s.reports_seconds),
                s.malloc_blocks.map_or("?".into(), thousands),
                s.malloc_bytes.map_or("?".into(), mib),
                s.tracer.stacks_held.map_or("?".into(), thousands),
            ),
            verdict: verdict(s.peak.rss <= STACKS_BUDGET_BYTES && s.reports_seconds < REPORTS_GOAL_SECONDS && exact),
        }
    }

    pub(super) fn render(&self, md: &mut String) {
        let _ = writeln!(md, "## 262,144 stacks under --max-memory 128M\n");
        let _ = writeln!(
            md,
            "`bench/stacks.c` keeps one 64-byte block from each of 262,144 distinct call stacks (18 levels of \
             left/right calls), 16 MiB in all, then exits a second later. Every stack holds outstanding memory, \
             so none may be forgotten. The tracer launches it in its default mode under `--max-memory \
             {STACKS_BUDGET}`; its memory is polled every 50 ms from its start to its exit, and the reports' time \
             runs from the target's exit (seen gone from /proc) to the tracer's.\n"
        );
        let _ = writeln!(md, "Command: `{}`\n", Self::command_text());
        let Some(s) = self.series.samples.first() else {
            let _ = writeln!(md, "{}\n", stopped_text(&self.series.stopped));
            return;
        };
        let number = |value: Option<u64>| value.map_or("?".into(), thousands);
        let _ = writeln!(
            md,
            "| peak VmRSS | peak RssAnon | peak VmHWM | reports after the exit | wall time | malloc outstanding \
             (report.json) | stacks in report.json (malloc) | report.json | tracer: peak_anonymous_rss_bytes | \
             over_budget | stacks_held | evicted_stacks |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} blocks, {} | {} ({}) | {} | {} | {} | {} | {} |",
            mib(s.peak.rss),
            mib(s.peak.anonymous),
            mib(s.peak.high_water),
            secs(s.reports_seconds),
            secs(s.wall_seconds),
            number(s.malloc_blocks),
            s.malloc_bytes.map_or("?".into(), mib),
            thousands(s.stacks_in_report as u64),
            thousands(s.malloc_stacks_in_report as u64),
            kib(s.report_json_bytes),
            s.tracer.peak_anonymous_rss_bytes.map_or("?".into(), mib),
            s.tracer.over_budget.map_or("?".into(), |b| b.to_string()),
            number(s.tracer.stacks_held),
            number(s.tracer.evicted_stacks),
        );
        let _ = writeln!(
            md,
            "\nThe fixture keeps {} blocks ({}); the malloc totals also hold what the C library keeps for \
             itself (stdout's buffer). Counters of report.json that are not zero: {} (`map_full`: inserts into \
             a kernel map that failed, the map being full; such a block's bytes are still counted, under \
             `[stack unavailable]` when its stack could not be kept).\n",
            thousands(STACKS),
            mib(STACKS * BLOCK_BYTES),
            counters_text(&s.nonzero_counters),
        );
        render_retried(md, std::iter::once(("stacks", &self.series.retried)));
    }
}

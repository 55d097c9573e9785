//! The Bun demo: its turns per second, untraced and with dispatch-leaktrace attached by pid.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BunConfig {
    Untraced,
    /// No option but the pid: the overhead budget (`--overhead 2`) chooses the sampling rates.
    Default,
    /// Every page and every glibc block (`--overhead off`).
    Full,
    Faults,
    /// Page-fault mode tracing one page in 16 (`--sample-pages 16`).
    SampledPages,
    Sampled,
    /// Sampled allocator mode that also samples pages: `--sample-bytes` and `--sample-pages 16`.
    SampledBoth,
}

impl BunConfig {
    pub(super) const ALL: [Self; 7] =
        [Self::Untraced, Self::Default, Self::Full, Self::Faults, Self::SampledPages, Self::Sampled, Self::SampledBoth];

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Default => "default mode (overhead budget 2%)",
            Self::Full => "allocator mode, every page",
            Self::Faults => "page-fault mode",
            Self::SampledPages => "page-fault mode, one page in 16",
            Self::Sampled => "sampled allocator mode",
            Self::SampledBoth => "sampled allocator mode, one page in 16",
        }
    }

    pub(super) fn slug(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Default => "default",
            Self::Full => "full",
            Self::Faults => "faults",
            Self::SampledPages => "faults-sampled",
            Self::Sampled => "sampled",
            Self::SampledBoth => "sampled-both",
        }
    }

    /// The tracer's options; `None`: not traced. The modes that fix a rate say `--overhead off` where the
    /// budget would otherwise choose the other source's rate.
    pub(super) fn tracer_args(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Untraced => None,
            Self::Default => Some(&[]),
            Self::Full => Some(&["--overhead", "off"]),
            Self::Faults => Some(&["--no-alloc", "--overhead", "off"]),
            Self::SampledPages => Some(&["--no-alloc", "--sample-pages", "16"]),
            Self::Sampled => Some(&["--sample-bytes", SAMPLE_BYTES, "--overhead", "off"]),
            Self::SampledBoth => Some(&["--sample-bytes", SAMPLE_BYTES, "--sample-pages", "16"]),
        }
    }

    pub(super) fn command_text(self) -> String {
        match self.tracer_args() {
            None => "(not traced)".into(),
            Some(args) => format!("dispatch-leaktrace --pid PID {}", args.join(" ")).trim_end().to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct BunSample {
    pub(super) turns_per_second: f64,
    /// The run time of the tracer's BPF programs per turn (kernel.bpf_stats_enabled), in a round of its
    /// own after the timed ones; all their runs, on the whole machine.
    pub(super) bpf_ms: Option<f64>,
    /// CPU time per measured turn, in milliseconds: the server's in user space and in the kernel (where
    /// the probes run, in its context), and the tracer's (its collector).
    pub(super) server_user_ms: f64,
    pub(super) server_kernel_ms: f64,
    pub(super) tracer_ms: Option<f64>,
    /// The tracer's voluntary context switches per measured turn: how often its collector is woken.
    pub(super) tracer_wakeups: Option<f64>,
    /// What the tracer's report.json says of its overhead budget (`--overhead`), when it kept one.
    pub(super) budget: Option<BudgetFigures>,
    /// Its top suspects, `site: verdict`: what sampling may change in the findings.
    pub(super) suspects: Vec<String>,
}

/// From report.json's `overhead`: the share of the server's CPU the tracer measured for its programs over
/// the whole trace, and the rates in force at the end.
#[derive(Clone, Copy, Debug)]
pub(super) struct BudgetFigures {
    pub(super) measured_pct: Option<f64>,
    pub(super) page_rate: Option<u64>,
    pub(super) byte_rate: Option<u64>,
    /// The same share as `measured_pct` (BPF run time over the server's CPU time), over the timed rounds
    /// alone: the budget's steady state, without the seconds it took to settle.
    pub(super) timed_share_pct: Option<f64>,
}

impl BunSample {
    /// The CPU per turn, server and tracer.
    pub(super) fn cpu_ms(&self) -> f64 {
        self.server_user_ms + self.server_kernel_ms + self.tracer_ms.unwrap_or(0.0)
    }
}

pub(super) struct BunSeries {
    pub(super) series: Vec<(BunConfig, Series<BunSample>)>,
}

impl BunSeries {
    pub(super) fn new() -> Self {
        Self { series: BunConfig::ALL.iter().map(|&config| (config, Series::new())).collect() }
    }

    pub(super) fn get(&self, config: BunConfig) -> &Series<BunSample> {
        &self.series.iter().find(|(c, _)| *c == config).expect("every configuration has a series").1
    }

    pub(super) fn run(&mut self, config: BunConfig, bench: &Bench, rep: usize) -> Result<()> {
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
pub(super) fn bun_session(config: BunConfig, bench: &Bench, rep: usize, attempt: usize) -> Result<Option<BunSample>> {
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
    if config == BunConfig::Default {
        // The budget starts at every page and takes a few seconds to find its rates: one untimed round for
        // that, so that the timed ones measure what hours of production would see.
        drive(bench, &server, &dir, "settle")?;
    }
    let cpu_of = |process: &Process| ProcessCpu::of(process.pid);
    let (server_before, tracer_before) = (cpu_of(&server.process), tracer.as_ref().map(cpu_of));
    // The budget keeps the BPF statistics on: its programs' run time over the timed rounds is readable.
    let budget_bpf_before =
        tracer.as_ref().filter(|_| config == BunConfig::Default).map(|t| bpf_stats::run_time_ns(t.pid));
    let (mut turns, mut seconds) = (0u64, 0.0f64);
    for round in 0..bench.options.rounds {
        let (round_turns, round_seconds) = drive(bench, &server, &dir, &format!("round{}", round + 1))?;
        turns += round_turns;
        seconds += round_seconds;
    }
    let (server_after, tracer_after) = (cpu_of(&server.process), tracer.as_ref().map(cpu_of));
    let budget_bpf_ns =
        budget_bpf_before.zip(tracer.as_ref()).map(|(before, t)| bpf_stats::run_time_ns(t.pid) - before);
    // One more round, untimed, with the kernel's BPF run-time statistics on: what our programs cost per
    // turn, free of the machine's noise. (The statistics cost time themselves: not in the timed rounds.)
    let bpf_ms = match &tracer {
        Some(tracer) => bpf_ms_per_turn(bench, &server, &dir, tracer.pid)?,
        None => None,
    };
    let (mut budget, mut suspects) = (None, Vec::new());
    if let Some(tracer) = tracer {
        stop_tracer(tracer, &dir)?;
        let report = ReportJson::read(&dir.join("report/report.json"))?;
        budget = report.overhead.map(|overhead| BudgetFigures {
            measured_pct: overhead.overall_overhead_pct,
            page_rate: overhead.sample_pages,
            byte_rate: overhead.sample_bytes,
            timed_share_pct: None,
        });
        suspects = top_suspects(&report);
    }
    drop(server);

    let server_cpu = (server_after.user - server_before.user) + (server_after.kernel - server_before.kernel);
    if let (Some(budget), Some(ns)) = (budget.as_mut(), budget_bpf_ns) {
        budget.timed_share_pct = Some(ns as f64 / 1e9 / server_cpu * 100.0);
    }
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
        budget,
        suspects,
    }))
}

/// How many suspects of a run the benchmark shows.
const SUSPECTS_SHOWN: usize = 5;

/// The top suspects of a report, `site: verdict`.
fn top_suspects(report: &ReportJson) -> Vec<String> {
    let name = |text: &Option<String>| text.clone().unwrap_or_else(|| "?".into());
    report.suspects.iter().take(SUSPECTS_SHOWN).map(|s| format!("{}: {}", name(&s.site), name(&s.verdict))).collect()
}

/// The demo server, JIT dump on as in production; killed (with its process group) when dropped.
pub(super) struct BunServer {
    pub(super) process: Process,
    pub(super) port: u16,
}

impl BunServer {
    pub(super) fn start(bench: &Bench, dir: &Path) -> Result<Self> {
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
pub(super) fn drive(bench: &Bench, server: &BunServer, dir: &Path, label: &str) -> Result<(u64, f64)> {
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
pub(super) fn bpf_ms_per_turn(bench: &Bench, server: &BunServer, dir: &Path, tracer: u32) -> Result<Option<f64>> {
    const SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    if fs::write(SWITCH, "1").is_err() {
        return Ok(None);
    }
    let before = bpf_stats::run_time_ns(tracer);
    let round = drive(bench, server, dir, "bpf-stats");
    let after = bpf_stats::run_time_ns(tracer);
    let _ = fs::write(SWITCH, "0");
    let (turns, _) = round?;
    Ok(Some(after.saturating_sub(before) as f64 / 1e6 / turns as f64))
}

/// `turns N seconds S turns_per_second X` -> (N, S).
pub(super) fn parse_driver(stdout: &str) -> Option<(u64, f64)> {
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
pub(super) fn attach_tracer(bench: &Bench, server: &BunServer, args: &[&str], dir: &Path) -> Result<Option<Process>> {
    attach_tracer_with(&bench.tracer, server, args, &[], dir)
}

/// [`attach_tracer`] for the tracer at `tracer` (the walk workload's `--baseline` too), with variables added
/// to its environment.
pub(super) fn attach_tracer_with(
    tracer: &Path,
    server: &BunServer,
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> Result<Option<Process>> {
    let mut command = Command::new(tracer);
    command
        .envs(env.iter().copied())
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
pub(super) fn stop_tracer(mut tracer: Process, dir: &Path) -> Result<()> {
    if let Some(status) = tracer.exited() {
        return Err(failure(&format!("the tracer ended before it was stopped ({status})"), &dir.join("tracer.stderr")));
    }
    tracer.signal(nix::sys::signal::Signal::SIGINT)?;
    let (status, _) = tracer.wait(Duration::from_secs(180))?;
    if !status.success() {
        return Err(failure(&format!("the tracer failed ({status})"), &dir.join("tracer.stderr")));
    }
    Ok(())
}

//! The machine and its load: what it is, and how much of its CPU other processes used.

use super::*;

pub(super) struct Machine {
    pub(super) cpu: String,
    pub(super) cpus: usize,
    pub(super) kernel: String,
    pub(super) memory: String,
    pub(super) date: String,
    pub(super) commit: String,
}

impl Machine {
    pub(super) fn describe() -> Self {
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

pub(super) fn command_output(command: &mut Command) -> String {
    command
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average.
pub(super) fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub(super) fn voluntary_switches(pid: u32) -> f64 {
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
pub(super) struct CpuSample {
    pub(super) at: Instant,
    pub(super) machine_busy: f64,
    pub(super) steal: f64,
    pub(super) ours: f64,
}

/// /proc/stat and /proc/PID/stat count in USER_HZ ticks, 100 a second on Linux.
pub(super) const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of /proc/PID/stat after the command name (which may hold spaces): index 0 is field 3, the
/// state; utime, stime, cutime and cstime (fields 14 to 17) are at 11 to 14.
pub(super) fn proc_stat_fields(pid: &str) -> Vec<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    text.rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect())
        .unwrap_or_default()
}

/// CPU seconds a process (all its threads) has used so far, and how often its threads went to sleep.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ProcessCpu {
    pub(super) user: f64,
    pub(super) kernel: f64,
    /// Voluntary context switches, summed over its threads: each is a sleep, and then a wake-up.
    pub(super) wakeups: f64,
}

impl ProcessCpu {
    pub(super) fn of(pid: u32) -> Self {
        let fields = proc_stat_fields(&pid.to_string());
        let field = |i: usize| fields.get(i).copied().unwrap_or(0.0) / TICKS_PER_SECOND;
        Self { user: field(11), kernel: field(12), wakeups: voluntary_switches(pid) }
    }

    pub(super) fn total(self) -> f64 {
        self.user + self.kernel
    }
}

impl CpuSample {
    pub(super) fn now() -> Self {
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
    pub(super) fn others_between(&self, later: &Self, cpus: usize) -> (f64, f64) {
        let capacity = later.at.duration_since(self.at).as_secs_f64() * cpus as f64;
        if capacity <= 0.0 {
            return (0.0, 0.0);
        }
        let others = (later.machine_busy - self.machine_busy) - (later.ours - self.ours);
        (others.max(0.0) / capacity, (later.steal - self.steal).max(0.0) / capacity)
    }
}

/// A process's memory from /proc/PID/status, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ProcessMemory {
    /// VmRSS: all its resident memory, file pages of its binary included.
    pub(super) rss: u64,
    /// RssAnon: what --max-memory budgets.
    pub(super) anonymous: u64,
    /// VmHWM: the kernel's own record of the highest VmRSS.
    pub(super) high_water: u64,
}

impl ProcessMemory {
    pub(super) fn of(pid: u32) -> Option<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        Some(Self { rss: kib("VmRSS:")? * 1024, anonymous: kib("RssAnon:")? * 1024, high_water: kib("VmHWM:")? * 1024 })
    }

    fn max(self, other: Self) -> Self {
        Self {
            rss: self.rss.max(other.rss),
            anonymous: self.anonymous.max(other.anonymous),
            high_water: self.high_water.max(other.high_water),
        }
    }
}

/// Polls a process's memory on a thread of its own, so that the peaks are seen while the caller waits on
/// something else (a snapshot, the process's exit).
pub(super) struct MemoryWatch {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<ProcessMemory>,
}

impl MemoryWatch {
    pub(super) fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = ProcessMemory::default();
            while !stopped.load(Ordering::SeqCst) {
                match ProcessMemory::of(pid) {
                    Some(now) => peak = peak.max(now),
                    None => break, // gone
                }
                thread::sleep(every);
            }
            peak
        });
        Self { stop, thread }
    }

    /// The peaks seen until now.
    pub(super) fn stop(self) -> ProcessMemory {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

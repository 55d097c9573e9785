//! What is printed at the end: the figures that matter and where the files are.

use std::fmt::Write;

use super::Written;
use tracer_common::counters::Counter;

use crate::collector::Trace;

const TOP: usize = 5;

pub fn render(trace: &Trace, written: &Written) -> String {
    let mut out = String::new();
    let seconds = trace.ended_at.duration_since(trace.started_at).unwrap_or_default().as_secs_f64();
    let ending = trace.ending.map_or("nothing yet (snapshot)", |ending| ending.reason.name());
    let _ = writeln!(out, "traced pid {} for {seconds:.1} s, ended by {ending}", trace.target.pid);
    // Per source: the same pages are mapped and resident, so a sum would count them twice.
    let sources: Vec<String> = trace
        .ledger
        .by_source()
        .iter()
        .map(|(source, stats)| format!("{} {}", source.describe(), human_bytes(stats.outstanding_bytes)))
        .collect();
    let _ = writeln!(
        out,
        "outstanding: {}; target RSS {}",
        if sources.is_empty() { "nothing".to_string() } else { sources.join(", ") },
        human_bytes(trace.rss_bytes)
    );
    for exec in trace.execs {
        let _ = writeln!(
            out,
            "the target called exec at {}: {} -> {}; what the old image held was released then",
            super::json::rfc3339(exec.at),
            exec.from.display(),
            exec.to.display()
        );
    }
    let peak_rss = crate::procfs::own_memory().map_or(0, |memory| memory.peak);
    if trace.over_budget || super::json::went_over(trace.memory_budget, peak_rss) {
        let _ = writeln!(out, "warning: the tracer went over --max-memory: see tracer in report.json");
    }
    if let Some(first) = written.suspects.first() {
        let _ = writeln!(out, "top suspects ({}):", first.source.describe());
        for suspect in written.suspects.iter().take(TOP) {
            let _ = writeln!(out, "  {:<24} {:<10} {}", suspect.site, suspect.verdict.name(), suspect.evidence);
        }
        if written.suspects.iter().any(|suspect| suspect.verdict == super::suspects::Verdict::TooShort) {
            let _ = writeln!(
                out,
                "warning: the growth window holds too few points to judge growth ({} needed): trace longer (-d) or \
                 take points more often (-i, now every {})",
                super::suspects::MIN_POINTS,
                humantime::format_duration(trace.interval)
            );
        }
    }
    let lost: u64 = Counter::ALL
        .iter()
        .zip(&trace.kernel_counters)
        .filter(|(counter, _)| counter.is_loss())
        .map(|(_, value)| value)
        .sum();
    if lost > 0 {
        let _ = writeln!(out, "warning: {lost} events or stacks were not recorded: see counters in report.json");
    }
    let left_out_bytes = trace.kernel_counters[Counter::BlockTableFullBytes as usize];
    if left_out_bytes > 0 {
        let _ = writeln!(
            out,
            "warning: the kernel's table of live allocator blocks was full: {} allocator blocks ({}) are missing \
             from the figures; a larger --max-memory makes room",
            trace.kernel_counters[Counter::BlockTableFull as usize],
            human_bytes(left_out_bytes)
        );
    }
    if trace.skipped_program_runs > 0 {
        let _ = writeln!(
            out,
            "warning: the kernel skipped {} runs of our probes (another BPF program was running on the CPU); \
             some of the target's events may be missing: see skipped_program_runs in report.json",
            trace.skipped_program_runs
        );
    }
    let _ = writeln!(out, "report:     {}", written.report.display());
    let _ = writeln!(out, "page:       {}", written.html.display());
    for flamegraph in &written.flamegraphs {
        let _ = writeln!(out, "flamegraph: {}", flamegraph.display());
    }
    let _ = writeln!(out, "growth:     {}", written.growth.display());
    let _ = writeln!(out, "timeline:   {}", written.timeline.display());
    let _ = writeln!(out, "folded:     {}", written.folded.display());
    let _ = writeln!(out, "pprof:      {}", written.pprof.display());
    out
}

/// `3G`, `512M`, `1536K`: for file names.
pub fn short_bytes(bytes: u64) -> String {
    for (unit, scale) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sizes_for_file_names() {
        assert_eq!(short_bytes(3 << 30), "3G");
        assert_eq!(short_bytes(1536 << 10), "1536K");
        assert_eq!(short_bytes(1000), "1000");
    }

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}

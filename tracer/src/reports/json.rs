//! report.json. Fields are only ever added, never renamed: scripts read this file.

use std::{collections::BTreeMap, time::SystemTime};

use anyhow::Result;
use serde::Serialize;
use tracer_common::counters::Counter;

use super::{
    ReportError, TRIMMED_STACKS, TRIMMED_TURNS,
    growth::Growth,
    redact::redact_cmdline,
    segments::Segment,
    stacks::{Frame, ReportStack},
    suspects::{MAX_SUSPECTS, Suspect},
    turns::TurnView,
};
use crate::{
    collector::{Trace, death::Death},
    ledger::Source,
    probes::ProbeInfo,
    target::ExitStatus,
};

/// 2: JIT tiers merged into one frame per function (`name [JS:DFG]` -> `name [JS]`, or `name (file:line)`),
/// suspects from the call tree with `fit_r2` and `retained_fraction` (were `fit`, `retention`), verdict
/// `churns` gone and `too-short` added; a turn's `top_stacks` point into `stacks` by index (`stack`) instead of
/// repeating their frames.
/// 3: `stacks` lists the stacks holding memory and the freed stacks that allocated most; the other freed
/// stacks are summed in `freed_stacks_summarized`.
pub const VERSION: u32 = 3;

#[derive(Serialize)]
struct Report<'a> {
    version: u32,
    tool: Tool,
    target: Target,
    started_at: String,
    ended_at: String,
    /// The choices that shaped the figures: how often a point was taken, the growth window's warm-up, the
    /// turn patterns. (The sampling rates and the memory budget are beside what they qualify.)
    options: OptionsJson<'a>,
    /// Why the trace ended; null in a snapshot of a trace still running.
    end_reason: Option<&'static str>,
    /// How the target exited, when it exited during the trace and its exit status could be learnt (always
    /// for a launched target; for one attached with --pid once its parent has reaped it).
    target_exit: Option<TargetExit>,
    totals: Totals,
    stacks: Vec<Stack<'a>>,
    /// The stacks left out of `stacks`: nothing outstanding, and not among the [`LISTED_FREED_STACKS`]
    /// that allocated most.
    freed_stacks_summarized: FreedSummary,
    counters: BTreeMap<&'static str, u64>,
    /// What the page-fault model saw besides first touches. Not losses.
    page_faults: PageFaults,
    /// The tracer's own memory, and what it forgot to stay within its budget.
    tracer: TracerMemory,
    probes: &'a [crate::probes::ProbeRecord],
    /// The allocator entry points found per object, and warnings (null: allocator tracing was off).
    allocators: Option<&'a crate::probes::allocators::AllocatorSummary>,
    /// With --sample-bytes N: the allocator's figures are unbiased estimates from blocks recorded with
    /// probability min(1, size / N).
    allocator_sample_bytes: Option<u64>,
    /// When the kernel's table of live blocks filled up and the collector turned byte sampling on (the
    /// interval is then `allocator_sample_bytes`): the allocator's figures are exact before, estimates
    /// after. Null: it did not.
    allocator_sampled_since: Option<String>,
    /// With --sample-pages N: the page-fault figures come from one page in N (by address), each counted N
    /// times: unbiased estimates.
    resident_sample_pages: Option<u64>,
    /// `--overhead PCT`: the budget, the programs' share last measured, the rates in force at the end and
    /// every rate it set (null: `--overhead off`).
    overhead: Option<OverheadView<'a>>,
    events: u64,
    /// The target's RSS and the outstanding bytes per source over the run.
    timeline: Vec<TimelinePoint>,
    /// Resident bytes (page-fault source) by the kind of mapping they lie in, largest first.
    regions: Vec<Region<'a>>,
    /// What grew between two moments (growth.svg): by default the end of a warm-up and the end.
    growth: GrowthView<'a>,
    /// Allocation sites of the primary source, most suspicious first (see reports/suspects.rs).
    suspects: Vec<SuspectView<'a>>,
    /// Turns in the order they started; figures of the primary source, all sources in `by_source`.
    turns: Vec<TurnJson<'a>>,
    /// Labels sent with `dispatch-leaktrace mark` or --markers-from that name no turn.
    markers: Vec<MarkerJson<'a>>,
    /// How many distinct JavaScript functions on stacks got a file and line (`located`), are the runtime's
    /// own (`runtime`: builtins), or were found nowhere (`unlocated`); where the sources came from.
    #[serde(skip_serializing_if = "javascript_is_absent")]
    javascript: crate::symbolizer::jit_frames::JsCoverage,
    /// By JavaScript frame name (`buildMessage [JS]`, `appendToHistory (server.ts:28)`), the JIT tiers its
    /// code ran in: a detail, not part of the frame.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    jit_tiers: BTreeMap<&'a str, Vec<&'static str>>,
    /// Each exec of the target: the old image's memory was released then (`released_bytes` by source),
    /// and `target.exe` is the image it ran last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    execs: Vec<ExecJson>,
    /// With --follow: every process traced so far, this one last (the rest of this report is its).
    #[serde(skip_serializing_if = "<[Segment]>::is_empty")]
    segments: &'a [Segment],
    /// The other report files that could not be written (a full disk), each with why.
    report_errors: &'a [ReportError],
    /// This report had to be cut to be written at all; `trimmed_reason` says why and what was cut.
    trimmed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    trimmed_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct OptionsJson<'a> {
    interval_ms: u128,
    /// `--warmup`; null: the default, a fifth of the run (`growth.from` says when the window began).
    warmup_ms: Option<u128>,
    /// `--compare` was given (`growth.from` and `growth.to` are its moments).
    compare: bool,
    turn_start: Option<&'a str>,
    turn_end: Option<&'a str>,
}

#[derive(Serialize)]
struct TurnJson<'a> {
    id: &'a str,
    start: String,
    end: Option<String>,
    allocated_bytes: u64,
    freed_bytes: u64,
    outstanding_at_end_bytes: Option<u64>,
    retained_bytes: u64,
    by_source: BTreeMap<&'static str, TurnSourceJson>,
    top_stacks: Vec<TurnStackJson<'a>>,
}

#[derive(Serialize)]
struct TurnSourceJson {
    allocated_bytes: u64,
    freed_bytes: u64,
    outstanding_at_end_bytes: Option<u64>,
    retained_bytes: u64,
}

/// A stack a turn retains: its index in `stacks` (every stack holding memory is listed there), or, in a
/// trimmed report whose `stacks` are cut, its source and frames.
#[derive(Serialize)]
struct TurnStackJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames: Option<&'a [Frame]>,
    retained_bytes: u64,
}

fn javascript_is_absent(coverage: &crate::symbolizer::jit_frames::JsCoverage) -> bool {
    coverage.located + coverage.runtime + coverage.unlocated == 0 && coverage.jit_symbols == 0
}

#[derive(Serialize)]
struct ExecJson {
    at: String,
    from: String,
    to: String,
    released_bytes: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct MarkerJson<'a> {
    at: String,
    label: &'a str,
}

#[derive(Serialize)]
struct SuspectView<'a> {
    site: &'a str,
    source: &'static str,
    frames: &'a [Frame],
    verdict: &'static str,
    evidence: &'a str,
    /// The runtime code that allocated below the user frame, and whether no user frame was on the stack.
    allocated_by: Option<&'a str>,
    runtime_job: bool,
    growth_bytes: i64,
    kept_growth_bytes: i64,
    /// outstanding / allocated, 0..=1.
    retained_fraction: f64,
    bytes_per_second: f64,
    fit_r2: f64,
    /// The slope over the later half of the window: bytes per turn with turns, else per second.
    sustained_growth_per_turn: Option<f64>,
    sustained_growth_per_second: Option<f64>,
    /// What each ended turn left behind, on average; for a growing site of resident memory, with its share
    /// of what churning sites carry for the growing ones (`own_bytes_per_turn` without it).
    bytes_per_turn: Option<f64>,
    own_bytes_per_turn: Option<f64>,
    turns_retaining: Option<f64>,
    outstanding_bytes: u64,
    allocated_bytes: u64,
    stacks: usize,
}

/// Stacks kept in the growth view of report.json (growth.svg has them all).
const GROWTH_STACKS: usize = 100;

#[derive(Serialize)]
struct GrowthView<'a> {
    from: String,
    to: String,
    /// The stacks that grew most, largest growth first.
    stacks: Vec<GrowthStack<'a>>,
    /// What of --compare or --warmup the trace could not honour (a moment after its end, a turn it did not
    /// see) and what was used instead; empty when the window is as asked.
    warnings: &'a [String],
}

#[derive(Serialize)]
struct GrowthStack<'a> {
    source: &'static str,
    frames: &'a [Frame],
    from_bytes: u64,
    to_bytes: u64,
    growth_bytes: i64,
}

#[derive(Serialize)]
struct Region<'a> {
    kind: &'a str,
    resident_bytes: u64,
}

#[derive(Serialize)]
struct TimelinePoint {
    at: String,
    rss_bytes: u64,
    outstanding_bytes: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct Tool {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Target {
    pid: u32,
    exe: String,
    cmdline: Vec<String>,
}

/// How the target ended: its exit code (when we launched it), or the signal that killed it, when, whether
/// its own handler ran first (a crash handler), and whether the OOM killer chose it.
#[derive(Serialize, Default)]
struct TargetExit {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handled_by_target: Option<bool>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    oom_killed: bool,
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => return None,
    })
}

#[derive(Serialize)]
struct Totals {
    /// The source the headline figures are of (see `reports::stacks::primary_source`): mapped, resident
    /// and allocator bytes measure different things and do not add up; `by_source` has each.
    primary_source: Option<&'static str>,
    outstanding_bytes: u64,
    outstanding_allocs: u64,
    rss_bytes: u64,
    by_source: BTreeMap<&'static str, SourceTotals>,
}

#[derive(Serialize, Default, Clone, Copy)]
struct SourceTotals {
    outstanding_bytes: u64,
    outstanding_allocs: u64,
    allocated_bytes: u64,
    freed_bytes: u64,
}

#[derive(Serialize)]
struct TracerMemory {
    budget_bytes: u64,
    /// Live allocator blocks the kernel's tables hold (half the budget, an eighth of it preallocated); past
    /// it, `map_full` counts the blocks left out.
    block_table_entries: u32,
    /// Allocation sites the kernel's table holds (a sixteenth of the budget); past it, `site_table_full`
    /// counts the blocks charged to the one site that stands for the rest.
    site_table_entries: u32,
    /// The kernel's event ring buffer (a sixteenth of the budget, 4 to 32 MiB); a burst past it is
    /// `lost_events`.
    ring_buffer_bytes: u32,
    /// The most anonymous memory the tracer held, writing the other reports included (report.json is
    /// written last).
    peak_anonymous_rss_bytes: u64,
    /// The most resident memory the tracer had, all of it (VmHWM): its own data, its code, and the kernel's
    /// event ring buffer mapped into it. What `--max-memory` limits.
    peak_rss_bytes: u64,
    /// It went past the budget: with nothing left to evict (every stack held outstanding memory), or its
    /// peak RSS did (writing the reports, which need room of their own).
    over_budget: bool,
    stacks_held: usize,
    /// Stacks with nothing outstanding, forgotten; the bytes they had allocated are in no stack's figures.
    evicted_stacks: u64,
    evicted_allocated_bytes: u64,
}

/// How many stacks with nothing outstanding are listed in full: the ones that allocated most, which show
/// where memory churns. The rest grew nothing and hold nothing, so their frames would only take room (a
/// quarter of the demo's report); their figures are summed here, so that totals still add up.
const LISTED_FREED_STACKS: usize = 100;

#[derive(Serialize, Default, Debug, PartialEq, Eq)]
struct FreedSummary {
    stacks: u64,
    /// By source: what they allocated (and freed, all of it).
    by_source: BTreeMap<&'static str, FreedSourceSummary>,
}

#[derive(Serialize, Default, Debug, PartialEq, Eq, Clone, Copy)]
struct FreedSourceSummary {
    allocated_bytes: u64,
    allocated_allocs: u64,
}

/// The stacks report.json lists, in their order: every stack holding memory, and the freed stacks that
/// allocated most; the other freed stacks summed.
fn listed_stacks(stacks: &[ReportStack], at_most: usize) -> (Vec<&ReportStack>, FreedSummary) {
    let mut freed: Vec<usize> = (0..stacks.len()).filter(|&i| stacks[i].stats.outstanding_bytes == 0).collect();
    freed.sort_by_key(|&i| std::cmp::Reverse(stacks[i].stats.allocated_bytes));
    let summarized: std::collections::HashSet<usize> = freed.into_iter().skip(LISTED_FREED_STACKS).collect();
    let mut summary = FreedSummary::default();
    let mut listed = Vec::new();
    for (index, stack) in stacks.iter().enumerate() {
        if summarized.contains(&index) {
            summary.stacks += 1;
            let source = summary.by_source.entry(stack.source.name()).or_default();
            source.allocated_bytes += stack.stats.allocated_bytes;
            source.allocated_allocs += stack.stats.allocated_allocs;
        } else if listed.len() < at_most {
            listed.push(stack);
        }
    }
    (listed, summary)
}

#[derive(Serialize)]
struct OverheadView<'a> {
    budget_pct: f64,
    /// The programs' run time as a percentage of the target's CPU time over the last second measured.
    last_overhead_pct: Option<f64>,
    /// The same over the whole trace.
    overall_overhead_pct: Option<f64>,
    /// The rates in force at the end; null for a source the budget left alone (fixed on the command line).
    sample_pages: Option<u64>,
    sample_bytes: Option<u64>,
    changes: &'a [crate::collector::overhead::RateRecord],
    /// The measured share over time, in stretches of ten seconds or more (bounded in number).
    measured: Vec<crate::collector::overhead::MeasuredInterval>,
}

#[derive(Serialize)]
struct PageFaults {
    /// Faults on pages already resident: copy-on-write, a write after a zero-page read.
    on_resident_pages: u64,
    /// Reads of never-written anonymous memory, which map the zero page and add nothing resident.
    zero_page_reads: u64,
    /// Faults that brought in a huge page (or a multi-size THP block) at once.
    huge_pages: u64,
    /// Faults on the page the kernel maps for our uprobes: the tracer's, not counted as resident.
    uprobe_page: u64,
}

#[derive(Serialize)]
struct Stack<'a> {
    source: &'static str,
    frames: &'a [Frame],
    runtime_frames: &'a [Frame],
    outstanding_bytes: u64,
    outstanding_allocs: u64,
    allocated_bytes: u64,
    allocated_allocs: u64,
    freed_bytes: u64,
    /// Change of outstanding bytes over the run: the trace starts with nothing outstanding.
    growth_bytes: i64,
    /// The names of the threads that ran it (not for the allocator's stacks, summed in the kernel).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    threads: Vec<&'a str>,
}

/// The views of the trace that report.json shows besides the trace itself.
#[derive(Clone, Copy)]
pub struct Views<'a> {
    pub stacks: &'a [ReportStack],
    pub growth: &'a Growth,
    pub suspects: &'a [Suspect],
    pub turns: &'a [TurnView],
    pub primary: Option<Source>,
    pub segments: &'a [Segment],
    /// The tracer's anonymous memory at its highest while the other reports were written.
    pub peak_memory: u64,
    /// All of its resident memory at its highest (VmHWM), so far.
    pub peak_rss: u64,
    pub report_errors: &'a [ReportError],
    /// Why the report is cut (to the first stacks and turns), when it must be.
    pub trimmed: Option<&'a str>,
    pub options: &'a super::ReportOptions,
}

/// Writes report.json to `out` as it is serialized: a long run's report is never held whole in memory.
pub fn write(out: &mut impl std::io::Write, trace: &Trace, views: Views, probes: &ProbeInfo) -> Result<()> {
    let Views { stacks, growth, suspects, turns, primary, segments, report_errors, trimmed, .. } = views;
    let (shown_stacks, shown_turns) =
        if trimmed.is_some() { (TRIMMED_STACKS, TRIMMED_TURNS) } else { (usize::MAX, usize::MAX) };
    let mut by_source: BTreeMap<&'static str, SourceTotals> = BTreeMap::new();
    for stack in stacks {
        let totals = by_source.entry(stack.source.name()).or_default();
        totals.outstanding_bytes += stack.stats.outstanding_bytes;
        totals.outstanding_allocs += stack.stats.outstanding_allocs;
        totals.allocated_bytes += stack.stats.allocated_bytes;
        totals.freed_bytes += stack.stats.freed_bytes;
    }
    let headline = primary.and_then(|p| by_source.get(p.name())).copied().unwrap_or_default();
    let (listed, freed_stacks_summarized) = listed_stacks(stacks, shown_stacks);
    // A turn's stacks point into `stacks` rather than repeating their frames.
    let index_of: std::collections::HashMap<(Source, &[Frame]), usize> =
        listed.iter().enumerate().map(|(index, stack)| ((stack.source, stack.frames.as_slice()), index)).collect();
    let mut counters: BTreeMap<&'static str, u64> =
        Counter::ALL.iter().zip(&trace.kernel_counters).map(|(counter, value)| (counter.name(), *value)).collect();
    let ledger_counters = trace.ledger.counters();
    // Allocator frees of blocks never seen (kernel) and munmaps of memory never seen (ledger).
    *counters.entry("unmatched_frees").or_default() += ledger_counters.unmatched_frees;
    counters.insert("preexisting_released_bytes", ledger_counters.preexisting_released_bytes);
    counters.insert("unmatched_turn_ends", trace.unmatched_turn_ends);
    counters.insert("negative_figures", trace.negative_figures);
    counters.insert("skipped_program_runs", trace.skipped_program_runs);
    counters.insert("cut_marker_lines", crate::inputs::cut_lines());
    counters.insert("stacks_cut_at_non_code", trace.stack_ips.cut_at_non_code());
    counters.insert("caller_rules_full", trace.caller_rules_full);

    let report = Report {
        version: VERSION,
        tool: Tool { name: "dispatch-leaktrace", version: env!("CARGO_PKG_VERSION") },
        target: Target {
            pid: trace.target.pid,
            exe: trace.target.exe.display().to_string(),
            cmdline: redact_cmdline(&trace.target.cmdline),
        },
        started_at: rfc3339(trace.started_at),
        ended_at: rfc3339(trace.ended_at),
        options: OptionsJson {
            interval_ms: trace.interval.as_millis(),
            warmup_ms: views.options.warmup.map(|warmup| warmup.as_millis()),
            compare: views.options.compare.is_some(),
            turn_start: views.options.turn_patterns.as_ref().map(|(start, _)| start.as_str()),
            turn_end: views.options.turn_patterns.as_ref().map(|(_, end)| end.as_str()),
        },
        end_reason: trace.ending.map(|ending| ending.reason.name()),
        target_exit: trace.ending.and_then(|ending| ending.death).and_then(|death| match death {
            Death::Exit(Some(ExitStatus::Code(code))) => Some(TargetExit { code: Some(code), ..TargetExit::default() }),
            Death::Exit(Some(ExitStatus::Signal(signal))) => {
                Some(TargetExit { signal: Some(signal), signal_name: signal_name(signal), ..TargetExit::default() })
            }
            // An attached target's exit status is its parent's to know, not ours.
            Death::Exit(None) => None,
            Death::Crash { signal, at, handled } => Some(TargetExit {
                signal: Some(signal),
                signal_name: signal_name(signal),
                at: Some(rfc3339(at)),
                handled_by_target: Some(handled),
                ..TargetExit::default()
            }),
            Death::Oom { at } => Some(TargetExit {
                signal: Some(libc::SIGKILL),
                signal_name: signal_name(libc::SIGKILL),
                at: Some(rfc3339(at)),
                oom_killed: true,
                ..TargetExit::default()
            }),
        }),
        totals: Totals {
            primary_source: primary.map(Source::name),
            outstanding_bytes: headline.outstanding_bytes,
            outstanding_allocs: headline.outstanding_allocs,
            rss_bytes: trace.rss_bytes,
            by_source,
        },
        stacks: listed
            .iter()
            .map(|stack| Stack {
                source: stack.source.name(),
                frames: &stack.frames,
                runtime_frames: &stack.runtime_frames,
                outstanding_bytes: stack.stats.outstanding_bytes,
                outstanding_allocs: stack.stats.outstanding_allocs,
                allocated_bytes: stack.stats.allocated_bytes,
                allocated_allocs: stack.stats.allocated_allocs,
                freed_bytes: stack.stats.freed_bytes,
                growth_bytes: stack.stats.outstanding_bytes as i64,
                threads: trace.threads.names(stack.threads),
            })
            .collect(),
        freed_stacks_summarized,
        counters,
        tracer: TracerMemory {
            budget_bytes: trace.memory_budget,
            block_table_entries: crate::probes::block_table_entries(trace.memory_budget),
            site_table_entries: crate::probes::site_table_entries(trace.memory_budget),
            ring_buffer_bytes: crate::probes::ring_buffer_bytes(trace.memory_budget),
            peak_anonymous_rss_bytes: trace.peak_memory.max(views.peak_memory),
            peak_rss_bytes: views.peak_rss,
            over_budget: trace.over_budget || went_over(trace.memory_budget, views.peak_rss),
            stacks_held: trace.live_stacks,
            evicted_stacks: ledger_counters.evicted_stacks,
            evicted_allocated_bytes: ledger_counters.evicted_allocated_bytes,
        },
        page_faults: PageFaults {
            on_resident_pages: ledger_counters.faults_on_resident_pages,
            zero_page_reads: ledger_counters.zero_page_reads,
            huge_pages: ledger_counters.huge_page_faults,
            uprobe_page: ledger_counters.uprobe_page_faults,
        },
        probes: &probes.records,
        allocators: probes.allocators.as_ref(),
        allocator_sample_bytes: probes.sample_bytes.or(trace.blocks_sampled_since.map(|(bytes, _)| bytes)),
        allocator_sampled_since: trace.blocks_sampled_since.map(|(_, since)| rfc3339(since)),
        resident_sample_pages: probes.sample_pages,
        overhead: trace.overhead.map(|budget| OverheadView {
            budget_pct: budget.budget_pct,
            last_overhead_pct: budget.last_overhead_pct(),
            sample_pages: budget.page_rate(),
            sample_bytes: budget.byte_rate(),
            changes: &budget.changes,
            overall_overhead_pct: budget.measured.overall_pct(),
            measured: budget.measured.intervals(),
        }),
        events: trace.events,
        timeline: trace
            .timeline
            .points()
            .iter()
            .map(|point| TimelinePoint {
                at: rfc3339(point.at),
                rss_bytes: point.rss_bytes,
                outstanding_bytes: point.outstanding.iter().map(|(source, bytes)| (source.name(), *bytes)).collect(),
            })
            .collect(),
        growth: GrowthView {
            from: rfc3339(growth.from),
            to: rfc3339(growth.to),
            stacks: growth
                .stacks
                .iter()
                .filter(|(_, from, to)| to > from)
                .take(GROWTH_STACKS)
                .map(|(stack, from, to)| GrowthStack {
                    source: stack.source.name(),
                    frames: &stack.frames,
                    from_bytes: *from,
                    to_bytes: *to,
                    growth_bytes: *to as i64 - *from as i64,
                })
                .collect(),
            warnings: &growth.warnings,
        },
        suspects: suspects
            .iter()
            .take(MAX_SUSPECTS)
            .map(|s| SuspectView {
                site: &s.site,
                source: s.source.name(),
                frames: &s.frames,
                verdict: s.verdict.name(),
                evidence: &s.evidence,
                allocated_by: s.allocated_by.as_deref(),
                runtime_job: s.runtime_job,
                growth_bytes: s.growth_bytes,
                kept_growth_bytes: s.kept_growth_bytes,
                retained_fraction: (s.retained_fraction * 1000.0).round() / 1000.0,
                bytes_per_second: s.bytes_per_second.round(),
                fit_r2: (s.fit_r2 * 1000.0).round() / 1000.0,
                sustained_growth_per_turn: s.bytes_per_turn.map(|_| s.sustained_growth.round()),
                sustained_growth_per_second: s.bytes_per_turn.is_none().then(|| s.sustained_growth.round()),
                bytes_per_turn: s.bytes_per_turn.map(f64::round),
                own_bytes_per_turn: s.own_bytes_per_turn.map(f64::round),
                turns_retaining: s.turns_retaining.map(|r| (r * 1000.0).round() / 1000.0),
                outstanding_bytes: s.outstanding_bytes,
                allocated_bytes: s.allocated_bytes,
                stacks: s.stacks,
            })
            .collect(),
        turns: turns
            .iter()
            .take(shown_turns)
            .map(|turn| {
                let of = |map: &BTreeMap<Source, u64>| primary.and_then(|p| map.get(&p).copied()).unwrap_or(0);
                let sources: std::collections::BTreeSet<Source> =
                    turn.allocated.keys().chain(turn.retained.keys()).copied().collect();
                TurnJson {
                    id: &turn.id,
                    start: rfc3339(turn.start),
                    end: turn.end.map(rfc3339),
                    allocated_bytes: of(&turn.allocated),
                    freed_bytes: of(&turn.freed),
                    outstanding_at_end_bytes: turn.outstanding_at_end.as_ref().map(of),
                    retained_bytes: of(&turn.retained),
                    by_source: sources
                        .into_iter()
                        .map(|source| {
                            let get = |map: &BTreeMap<Source, u64>| map.get(&source).copied().unwrap_or(0);
                            (
                                source.name(),
                                TurnSourceJson {
                                    allocated_bytes: get(&turn.allocated),
                                    freed_bytes: get(&turn.freed),
                                    outstanding_at_end_bytes: turn.outstanding_at_end.as_ref().map(get),
                                    retained_bytes: get(&turn.retained),
                                },
                            )
                        })
                        .collect(),
                    top_stacks: turn
                        .top_stacks
                        .iter()
                        .map(|(source, frames, bytes)| match index_of.get(&(*source, frames.as_slice())) {
                            Some(index) => TurnStackJson {
                                stack: Some(*index),
                                source: None,
                                frames: None,
                                retained_bytes: *bytes,
                            },
                            None => TurnStackJson {
                                stack: None,
                                source: Some(source.name()),
                                frames: Some(frames),
                                retained_bytes: *bytes,
                            },
                        })
                        .collect(),
                }
            })
            .collect(),
        markers: trace.markers.iter().map(|m| MarkerJson { at: rfc3339(m.at), label: &m.label }).collect(),
        javascript: trace.javascript,
        jit_tiers: trace.jit_tiers.iter().map(|(name, tiers)| (&**name, tiers.iter().copied().collect())).collect(),
        execs: trace
            .execs
            .iter()
            .map(|exec| ExecJson {
                at: rfc3339(exec.at),
                from: exec.from.display().to_string(),
                to: exec.to.display().to_string(),
                released_bytes: exec.released.iter().map(|(source, bytes)| (source.name(), *bytes)).collect(),
            })
            .collect(),
        segments,
        report_errors,
        trimmed: trimmed.is_some(),
        trimmed_reason: trimmed,
        regions: {
            let mut regions: Vec<Region> =
                trace.regions.iter().map(|(kind, bytes)| Region { kind, resident_bytes: *bytes }).collect();
            regions.sort_by(|a, b| b.resident_bytes.cmp(&a.resident_bytes).then(a.kind.cmp(b.kind)));
            regions
        },
    };
    super::json_lines::to_writer(&mut *out, &report)?;
    out.write_all(b"\n")?;
    Ok(())
}

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Whether a peak RSS went past `--max-memory` (a budget of 0: none given, in tests).
pub fn went_over(budget: u64, peak_rss: u64) -> bool {
    budget > 0 && peak_rss > budget
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::StackStats;

    fn stack(name: &str, outstanding_bytes: u64, allocated_bytes: u64) -> ReportStack {
        ReportStack {
            source: Source::Mmap,
            frames: vec![Frame::from(name)],
            runtime_frames: Vec::new(),
            stats: StackStats { outstanding_bytes, allocated_bytes, allocated_allocs: 1, ..StackStats::default() },
            threads: 0,
        }
    }

    #[test]
    fn a_peak_rss_past_the_budget_is_over_it() {
        const MIB: u64 = 1 << 20;
        // The 262,144-stack bench under 128M: 132.5 MiB at its peak, writing the reports.
        assert!(went_over(128 * MIB, 132 * MIB + MIB / 2));
        assert!(!went_over(128 * MIB, 128 * MIB), "at the budget is within it");
        assert!(!went_over(0, 500 * MIB), "no budget given");
    }

    #[test]
    fn freed_stacks_beyond_the_churniest_are_summed_not_listed() {
        // Holding stacks first (as report_stacks sorts them), then freed ones in no particular order.
        let mut stacks = vec![stack("holds", 10, 10)];
        stacks.extend((0..LISTED_FREED_STACKS as u64 + 3).map(|i| stack(&format!("freed{i}"), 0, 1000 + i)));
        let (listed, summary) = listed_stacks(&stacks, usize::MAX);
        assert_eq!(listed.len(), 1 + LISTED_FREED_STACKS);
        assert_eq!(listed[0].frames, stacks[0].frames, "the order of `stacks` is kept");
        // The three that allocated least (freed0..freed2) are the summarized ones.
        assert_eq!(summary.stacks, 3);
        assert_eq!(summary.by_source["mmap"], FreedSourceSummary { allocated_bytes: 3003, allocated_allocs: 3 });
        assert!(listed.iter().all(|s| !["freed0", "freed1", "freed2"].contains(&&*s.frames[0])));
    }

    #[test]
    fn a_trimmed_report_lists_at_most_its_share() {
        let stacks: Vec<ReportStack> = (0..5).map(|i| stack(&format!("s{i}"), 5 - i, 1)).collect();
        let (listed, summary) = listed_stacks(&stacks, 2);
        assert_eq!(listed.len(), 2);
        assert_eq!(summary, FreedSummary::default());
    }
}

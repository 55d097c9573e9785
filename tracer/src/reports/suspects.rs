//! Leak suspects: where outstanding memory keeps growing, named after the application's code, with a
//! verdict from the shape of the growth.
//!
//! One leak can show under many leaves: JIT tiers and inlining move an allocation from one innermost
//! frame to another as a server warms up, and one function may allocate through several runtime paths.
//! So suspects are not leaves. Each stack is reduced to its path of user frames (the application's
//! JavaScript, one frame per function whatever tier ran it; in a native program, its named functions), and
//! a suspect is every stack whose deepest user frame is one function: the runtime code below it (tiers,
//! inlined builtins, several allocation paths) does not split it, and the same function reached through
//! several callers is one suspect. A caller never absorbs its callees: they are other functions of the
//! application, and a caller that owned its callees' growth would merge a churner with the leak beside it.
//! Growth is measured as it is sustained: the slope over the later half of the window, against completed
//! turns when the trace has turns (memory per turn is what a server's owner can reason about), else
//! against time. Stacks with no user frame at all (memory allocated in a runtime job, such as the chunks a
//! fetch() body stream reads) are grouped by the runtime job they ran in and said to be so.
//!
//! Verdicts come from the shape: `grows` while it keeps growing into the later half of the window
//! (however much it also churns: how much of what it allocated it keeps is reported beside, not instead);
//! `levels-off` when growth stopped (a bounded cache, a warm-up), ranked after every `grows`; `shrinks`;
//! `flat`; `too-short` when the window holds too few points to tell.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use super::{
    frames::{FrameClass, classify, site_name},
    growth::Growth,
    stacks::{Frame, ReportStack},
    summary::human_bytes,
};
use crate::{
    collector::Trace,
    ledger::{Source, StackKey, turns::TurnIx},
};

/// Sites listed in report.json.
pub const MAX_SUSPECTS: usize = 50;
/// Ended turns needed before growth is measured against turns.
pub const MIN_TURNS: usize = 4;
/// Points (snapshots) the window needs before a verdict is given.
pub const MIN_POINTS: usize = 4;
/// Less change than this over the window is flat: four pages.
const FLAT_BYTES: f64 = 16384.0;
/// Later-half growth under this share of the earlier half's: it levels off.
const LEVELS_OFF_RATIO: f64 = 0.25;
/// A trend that explains less of the series than this (R²) is no steady growth: temporaries come and go.
const STEADY_FIT: f64 = 0.5;
/// Resident pages are charged to the code that touched them first; in a heap that grows, pages freed by
/// one site hold another's data, and a site that allocates steadily keeps touching fresh pages for the
/// growth of others. Growth under this share of the whole source's is within what that reuse moves
/// between sites (page faults only: the allocator's and mmap's figures are exact per site).
const SHARED_HEAP_SHARE: f64 = 0.01;
/// A site that grows while it keeps less than this share of all it made resident is a churner whose
/// freed pages hold other sites' data: its growth is theirs (page faults only). A leak with temporaries at
/// the same place keeps far more (the history leak of the streaming demo keeps about 40%).
const CHURNER_RETAINED: f64 = 0.2;

#[derive(Clone, Debug, PartialEq)]
pub struct Suspect {
    /// The name a reader sees: the deepest user frame carrying its growth (`appendToHistory
    /// (server.ts:28)`, tier left out), or the runtime job it was allocated in.
    pub site: String,
    pub source: Source,
    /// The runtime code that allocated the memory, below the user frame (`ReadableStream #pull`), when
    /// the stack names any.
    pub allocated_by: Option<String>,
    /// No user frame was on the stack: the memory was allocated in a runtime job.
    pub runtime_job: bool,
    /// The suspect's largest stack, root first.
    pub frames: Vec<Frame>,
    pub stacks: usize,
    pub outstanding_bytes: u64,
    pub allocated_bytes: u64,
    /// What its outstanding bytes gained over the growth window.
    pub growth_bytes: i64,
    /// outstanding / allocated, 0..=1: how much of what it allocated it keeps.
    pub retained_fraction: f64,
    /// growth × retained fraction (kept for report.json readers).
    pub kept_growth_bytes: i64,
    /// Least-squares slope of its outstanding bytes over the window against time, and the fit's R².
    pub bytes_per_second: f64,
    pub fit_r2: f64,
    /// The slope over the later half of the window: per turn with turns, else per second.
    pub sustained_growth: f64,
    pub verdict: Verdict,
    pub evidence: String,
    /// With turns: the mean of what each ended turn left behind (its share of what it allocated, still
    /// held at the end), and the share of turns that left anything. For resident memory of a site that
    /// grows, `bytes_per_turn` adds its share of what churning sites carry for the growing ones
    /// (`own_bytes_per_turn` is without it).
    pub bytes_per_turn: Option<f64>,
    pub own_bytes_per_turn: Option<f64>,
    pub turns_retaining: Option<f64>,
    /// Outstanding bytes at each snapshot of the whole run, and at the end (for the timeline).
    pub series: Vec<(SystemTime, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Kept growing into the later half of the window: a leak.
    Grows,
    /// Grew, then stopped: a cache filling up, a warm-up.
    LevelsOff,
    Shrinks,
    Flat,
    /// Too few points in the window to tell.
    TooShort,
}

impl Verdict {
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Grows => "grows",
            Verdict::LevelsOff => "levels-off",
            Verdict::Shrinks => "shrinks",
            Verdict::Flat => "flat",
            Verdict::TooShort => "too-short",
        }
    }
}

/// The x axis of growth: completed turns when there are enough, else seconds since the window began.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Axis {
    Turns,
    Seconds,
}

impl Axis {
    fn per(self) -> &'static str {
        match self {
            Axis::Turns => "turn",
            Axis::Seconds => "s",
        }
    }
}

/// The shape of one series of outstanding bytes (x ascending).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub verdict: Verdict,
    /// Slope over the whole series and over its later half (bytes per x), and the whole fit's R².
    pub slope: f64,
    pub late_slope: f64,
    pub fit_r2: f64,
    /// Change over the series: the fitted trend, or the difference of its ends when that is larger.
    pub change: f64,
    /// Judged from what each turn left behind, not from a series of snapshots.
    pub by_turns: bool,
}

/// Judges a series of outstanding bytes. Growth is read from least-squares slopes, not single points: a
/// garbage collection or a purge can take a bite out of any one sample.
pub fn judge(series: &[(f64, u64)]) -> Shape {
    let (slope, fit_r2) = least_squares(series);
    let too_short =
        Shape { verdict: Verdict::TooShort, slope, late_slope: slope, fit_r2, change: 0.0, by_turns: false };
    let (Some(&(first_x, first)), Some(&(last_x, last))) = (series.first(), series.last()) else { return too_short };
    if series.len() < MIN_POINTS || last_x <= first_x {
        return Shape { change: last as f64 - first as f64, ..too_short };
    }
    let trend = slope * (last_x - first_x);
    let ends = last as f64 - first as f64;
    let change = if trend.abs() > ends.abs() { trend } else { ends };
    let (early_half, late_half) = series.split_at(series.len() / 2);
    // The halves share their middle point, so that each has a slope.
    let early_half = &series[..early_half.len() + 1];
    let (early_slope, _) = least_squares(early_half);
    let (late_slope, _) = least_squares(late_half);
    let late_change = late_slope * (last_x - late_half[0].0);
    let verdict = if change.abs() < FLAT_BYTES || fit_r2 < STEADY_FIT {
        Verdict::Flat
    } else if slope < 0.0 && late_slope <= 0.0 {
        Verdict::Shrinks
    } else if late_slope > 0.0 && late_slope >= early_slope * LEVELS_OFF_RATIO && late_change >= FLAT_BYTES / 2.0 {
        Verdict::Grows
    } else {
        Verdict::LevelsOff
    };
    Shape { verdict, slope, late_slope, fit_r2, change, by_turns: false }
}

/// Judges a site by what each ended turn left behind (still held at the end), in turn order, when the window
/// has too few snapshots for a series. A leak leaves memory behind in early and late turns alike; a
/// bounded structure holds only what recent turns put in (an LRU cache), or only what the first turns did
/// (a warm-up).
pub fn judge_turns(retained_per_turn: &[u64]) -> Shape {
    let mean = |values: &[u64]| values.iter().sum::<u64>() as f64 / values.len().max(1) as f64;
    let total = retained_per_turn.iter().sum::<u64>() as f64;
    let retaining =
        retained_per_turn.iter().filter(|bytes| **bytes > 0).count() as f64 / retained_per_turn.len().max(1) as f64;
    let (early, late) = retained_per_turn.split_at(retained_per_turn.len() / 2);
    let (early, late) = (mean(early), mean(late));
    let verdict = if retained_per_turn.len() < MIN_TURNS {
        Verdict::TooShort
    } else if total < FLAT_BYTES {
        Verdict::Flat
    } else if early > 0.0 && late > 0.0 && early.min(late) >= early.max(late) / 2.0 && retaining >= 0.5 {
        Verdict::Grows
    } else {
        Verdict::LevelsOff
    };
    Shape { verdict, slope: mean(retained_per_turn), late_slope: late, fit_r2: f64::NAN, change: total, by_turns: true }
}

/// Slope and R² of y over x.
fn least_squares(series: &[(f64, u64)]) -> (f64, f64) {
    let n = series.len() as f64;
    if series.len() < 2 {
        return (0.0, 0.0);
    }
    let mean_x = series.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = series.iter().map(|(_, y)| *y as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in series {
        let (dx, dy) = (x - mean_x, *y as f64 - mean_y);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 {
        return (0.0, 0.0);
    }
    let slope = sxy / sxx;
    let fit = if syy == 0.0 { 1.0 } else { (sxy * sxy) / (sxx * syy) };
    (slope, fit)
}

/// A stack reduced to what suspects are made of: its user frames root first, or, with none, the runtime
/// job it ran in (`None` path: `job` names it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum UserPath {
    User(Vec<Frame>),
    RuntimeJob(String),
}

/// The path of user frames of a stack, root first. In a process that runs JavaScript, its native code is
/// the runtime's; in a native program, its named functions are the application's.
fn user_path(frames: &[Frame], javascript_process: bool) -> UserPath {
    let user: Vec<Frame> = frames
        .iter()
        .filter(|frame| match classify(frame) {
            FrameClass::UserJs => true,
            FrameClass::Native => !javascript_process,
            _ => false,
        })
        .cloned()
        .collect();
    if !user.is_empty() {
        return UserPath::User(user);
    }
    // The job: the outermost named runtime function, which stays the same whichever tier or inlining
    // decides the frames below it; with none, native code of the runtime, by its innermost named frame.
    let job = frames.iter().find(|frame| classify(frame) == FrameClass::RuntimeJs && !frame.starts_with("(anonymous)"));
    UserPath::RuntimeJob(match job {
        Some(job) => format!("job {}", site_name(job)),
        None => {
            let native =
                frames.iter().rev().find(|frame| classify(frame) == FrameClass::Native).or_else(|| frames.last());
            format!("native code {}", native.map_or("[unknown]", |frame| frame))
        }
    })
}

/// The site name of the frame that stands for a suspect in a flamegraph (as [`site_name`] names frames):
/// its own for a user site; the job's function for `runtime job pullAlgorithm`, the native frame for
/// `runtime native code start_thread`.
pub fn frame_site(site: &str) -> &str {
    site.strip_prefix("runtime job ").or_else(|| site.strip_prefix("runtime native code ")).unwrap_or(site)
}

/// The innermost named runtime code below the last user frame of a stack: what allocated for it.
fn allocated_by(frames: &[Frame], javascript_process: bool) -> Option<String> {
    let below_user = match frames.iter().rposition(|frame| match classify(frame) {
        FrameClass::UserJs => true,
        FrameClass::Native => !javascript_process,
        _ => false,
    }) {
        Some(last_user) => &frames[last_user + 1..],
        None => frames,
    };
    let runtime_js = below_user
        .iter()
        .rev()
        .find(|frame| classify(frame) == FrameClass::RuntimeJs && !frame.starts_with("(anonymous)"));
    let native = || below_user.iter().rev().find(|frame| classify(frame) == FrameClass::Native);
    runtime_js.or_else(native).map(|frame| site_name(frame))
}

/// The user paths of the stacks, as a tree: one node per (caller's node, function), so that a function
/// reached through two paths is two nodes, merged by name afterwards.
#[derive(Default)]
struct Tree {
    labels: Vec<String>,
    index: HashMap<(usize, String), usize>,
}

impl Tree {
    /// The node of `labels` (root first), made as needed; node 0 is the root.
    fn insert(&mut self, labels: &[String]) -> usize {
        if self.labels.is_empty() {
            self.labels.push(String::new());
        }
        let mut node = 0;
        for label in labels {
            node = match self.index.get(&(node, label.clone())) {
                Some(&child) => child,
                None => {
                    self.labels.push(label.clone());
                    self.index.insert((node, label.clone()), self.labels.len() - 1);
                    self.labels.len() - 1
                }
            };
        }
        node
    }
}

pub fn suspects(trace: &Trace<'_>, stacks: &[ReportStack], growth: &Growth, source: Source) -> Vec<Suspect> {
    let stacks: Vec<&ReportStack> = stacks.iter().filter(|s| s.source == source).collect();
    let by_frames: HashMap<&[Frame], usize> =
        stacks.iter().enumerate().map(|(i, s)| (s.frames.as_slice(), i)).collect();
    // Ledger keys of the source to report stacks (several keys may share one stack's names).
    // By stack index, not hashed: it is looked up for every stack of every snapshot.
    let mut stack_of_ix: Vec<Option<usize>> = Vec::new();
    for (key, _) in trace.ledger.stats().filter(|(key, _)| key.source == source) {
        let names = super::stacks::names_of(trace, key.stack);
        if let Some(&index) = by_frames.get(names) {
            let ix = key.stack as usize;
            if stack_of_ix.len() <= ix {
                stack_of_ix.resize(ix + 1, None);
            }
            stack_of_ix[ix] = Some(index);
        }
    }
    let stack_of_key = |key: &StackKey| -> Option<usize> {
        (key.source == source).then(|| stack_of_ix.get(key.stack as usize).copied().flatten()).flatten()
    };

    // Every point of the run, each stack's outstanding bytes at it; the last point is the end.
    let snapshots = trace.timeline.snapshots();
    let mut times: Vec<SystemTime> = snapshots.iter().map(|s| s.at).filter(|at| *at < growth.to).collect();
    times.push(growth.to);
    let mut per_stack: Vec<Vec<u64>> = vec![vec![0; times.len()]; stacks.len()];
    for (point, snapshot) in snapshots.iter().take(times.len() - 1).enumerate() {
        for (key, bytes) in &snapshot.outstanding {
            if let Some(stack) = stack_of_key(key) {
                per_stack[stack][point] += bytes;
            }
        }
    }
    for (stack, series) in stacks.iter().zip(&mut per_stack) {
        // cannot fail: `times` always ends with the end of the window
        *series.last_mut().expect("one point at least") = stack.stats.outstanding_bytes;
    }

    // The window, and its axis.
    let window: Vec<usize> = (0..times.len()).filter(|i| times[*i] >= growth.from).collect();
    let ended: Vec<&crate::collector::turns::TurnRecord> = trace.turns.iter().filter(|t| t.end.is_some()).collect();
    let axis = if ended.len() >= MIN_TURNS { Axis::Turns } else { Axis::Seconds };
    let x_of = |at: SystemTime| match axis {
        Axis::Turns => ended.iter().filter(|t| t.end.is_some_and(|end| end <= at)).count() as f64,
        Axis::Seconds => at.duration_since(growth.from).unwrap_or_default().as_secs_f64(),
    };
    let xs: Vec<f64> = window.iter().map(|i| x_of(times[*i])).collect();
    let seconds: Vec<f64> =
        window.iter().map(|i| times[*i].duration_since(growth.from).unwrap_or_default().as_secs_f64()).collect();
    let windowed = |series: &[u64], x: &[f64]| -> Vec<(f64, u64)> {
        window.iter().zip(x).map(|(i, x)| (*x, series[*i])).collect()
    };

    // The tree of user paths.
    let javascript_process = stacks.iter().any(|s| s.frames.iter().any(|f| classify(f).is_javascript()));
    let mut tree = Tree::default();
    let mut node_of_stack: Vec<usize> = Vec::with_capacity(stacks.len());
    let mut is_job: Vec<bool> = Vec::with_capacity(stacks.len());
    for stack in &stacks {
        let (labels, job) = match user_path(&stack.frames, javascript_process) {
            // One node per function, whatever tier ran it.
            UserPath::User(frames) => (frames.iter().map(|f| site_name(f)).collect::<Vec<_>>(), false),
            UserPath::RuntimeJob(job) => (vec![format!("runtime {job}")], true),
        };
        node_of_stack.push(tree.insert(&labels));
        is_job.push(job);
    }
    let span = xs.last().copied().unwrap_or(0.0) - xs.first().copied().unwrap_or(0.0);
    let mut whole = vec![0u64; times.len()];
    for series in &per_stack {
        for (sum, value) in whole.iter_mut().zip(series) {
            *sum += value;
        }
    }
    let whole_source_growth = judge(&windowed(&whole, &xs)).late_slope.max(0.0);

    // Each stack to its deepest user frame: whatever tier, inlined runtime code or runtime path lies below
    // it, one function is one suspect. A child is another function of the application, never absorbed:
    // a caller that owned its callees' growth would merge a churner with the leak beside it.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (stack, node) in node_of_stack.iter().enumerate() {
        groups.entry(*node).or_default().push(stack);
    }

    // One suspect per name: the same function reached through two callers' paths is one site to a reader.
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    let mut merged: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (node, members) in groups {
        let first = *by_name.entry(site_name(&tree.labels[node])).or_insert(node);
        merged.entry(first).or_default().extend(members);
    }
    let groups = merged;

    // Per-turn retention, by report stack.
    let retained = super::turns::retained_by_turn_and_stack(trace);
    // Every ended turn: with fewer than MIN_TURNS of them, no per-turn figure is given.
    let ended_turns: Vec<TurnIx> = ended.iter().map(|t| t.index).collect();

    let judged: Vec<(Suspect, Shape, Option<Collateral>)> = groups
        .into_iter()
        .map(|(node, members)| {
            let mut series = vec![0u64; times.len()];
            let (mut outstanding, mut allocated, mut growth_bytes) = (0u64, 0u64, 0i64);
            for &stack in &members {
                for (sum, value) in series.iter_mut().zip(&per_stack[stack]) {
                    *sum += value;
                }
                outstanding += stacks[stack].stats.outstanding_bytes;
                allocated += stacks[stack].stats.allocated_bytes;
            }
            for (stack, from, to) in growth.stacks.iter().filter(|(s, _, _)| s.source == source) {
                if by_frames.get(stack.frames.as_slice()).is_some_and(|index| members.contains(index)) {
                    growth_bytes += *to as i64 - *from as i64;
                }
            }
            let largest = members
                .iter()
                .copied()
                .max_by_key(|s| (stacks[*s].stats.outstanding_bytes, stacks[*s].stats.allocated_bytes))
                // cannot fail: a group is made by pushing a stack into it
                .expect("a suspect has stacks");
            let runtime_job = members.iter().all(|s| is_job[*s]);
            let label = &tree.labels[node];
            let site = site_name(label);
            let member_keys = |key: &StackKey| stack_of_key(key).is_some_and(|s| members.contains(&s));
            let per_turn: Vec<u64> = ended_turns
                .iter()
                .map(|turn| {
                    retained
                        .get(turn)
                        .map_or(0, |held| held.iter().filter(|(k, _)| member_keys(k)).map(|(_, b)| *b).sum())
                })
                .collect();
            let (bytes_per_turn, turns_retaining) = if per_turn.len() >= MIN_TURNS {
                let mean = per_turn.iter().sum::<u64>() as f64 / per_turn.len() as f64;
                let retaining = per_turn.iter().filter(|b| **b > 0).count() as f64 / per_turn.len() as f64;
                (Some(mean), Some(retaining))
            } else {
                (None, None)
            };
            // Too few snapshots in the window, but turns enough: what each turn left behind, in turn order.
            let mut shape = match judge(&windowed(&series, &xs)) {
                shape if shape.verdict == Verdict::TooShort && per_turn.len() >= MIN_TURNS => judge_turns(&per_turn),
                shape => shape,
            };
            let by_time = judge(&windowed(&series, &seconds));
            let retained_fraction = if allocated == 0 { 0.0 } else { (outstanding as f64 / allocated as f64).min(1.0) };
            let collateral = match (source, shape.verdict) {
                (Source::PageFault, Verdict::Grows) if retained_fraction < CHURNER_RETAINED => {
                    Some(Collateral::Churner)
                }
                (Source::PageFault, Verdict::Grows) if shape.late_slope < whole_source_growth * SHARED_HEAP_SHARE => {
                    Some(Collateral::Small)
                }
                _ => None,
            };
            if collateral.is_some() {
                shape.verdict = Verdict::Flat;
            }
            let suspect = Suspect {
                site,
                source,
                allocated_by: allocated_by(&stacks[largest].frames, javascript_process),
                runtime_job,
                frames: stacks[largest].frames.clone(),
                stacks: members.len(),
                outstanding_bytes: outstanding,
                allocated_bytes: allocated,
                growth_bytes,
                retained_fraction,
                kept_growth_bytes: (growth_bytes as f64 * retained_fraction) as i64,
                bytes_per_second: by_time.slope,
                fit_r2: by_time.fit_r2,
                sustained_growth: shape.late_slope,
                verdict: shape.verdict,
                evidence: String::new(),
                bytes_per_turn,
                own_bytes_per_turn: bytes_per_turn,
                turns_retaining,
                series: times.iter().copied().zip(series).collect(),
            };
            (suspect, shape, collateral)
        })
        .collect();
    let mut suspects = share_collateral(judged, axis, xs.len(), span, whole_source_growth);
    // Every grows first, by how fast it grows now; then the rest, by growth over the window.
    suspects.sort_by(|a, b| {
        let rank = |s: &Suspect| match s.verdict {
            Verdict::Grows => 0,
            Verdict::TooShort => 1,
            Verdict::LevelsOff => 2,
            _ => 3,
        };
        rank(a)
            .cmp(&rank(b))
            .then_with(|| match a.verdict {
                Verdict::Grows => b.sustained_growth.total_cmp(&a.sustained_growth),
                _ => b.growth_bytes.cmp(&a.growth_bytes),
            })
            .then_with(|| b.outstanding_bytes.cmp(&a.outstanding_bytes))
            .then_with(|| a.site.cmp(&b.site))
    });
    suspects
}

/// The suspects a chart of growth over time draws, at most `count`: those that grow or level off, in rank
/// order; the others only when none does. A churner's curve goes up and down with its temporaries and, the
/// tallest, would draw the eye from the leak.
pub fn charted(suspects: &[Suspect], count: usize) -> Vec<&Suspect> {
    let growing = |s: &&Suspect| matches!(s.verdict, Verdict::Grows | Verdict::LevelsOff);
    let drawn = |s: &&Suspect| !s.series.is_empty();
    let charted: Vec<&Suspect> = suspects.iter().filter(growing).filter(drawn).take(count).collect();
    if charted.is_empty() { suspects.iter().filter(drawn).take(count).collect() } else { charted }
}

/// Why a site that grows is judged to grow for others (see [`SHARED_HEAP_SHARE`], [`CHURNER_RETAINED`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Collateral {
    Small,
    Churner,
}

/// Gives the growing sites the growth that churning sites only carry: what each turn left in the pages
/// a churner touched first is the growing sites' data, shared among them in proportion to what each left
/// of its own. Then writes every evidence.
fn share_collateral(
    judged: Vec<(Suspect, Shape, Option<Collateral>)>,
    axis: Axis,
    points: usize,
    span: f64,
    whole_source_growth: f64,
) -> Vec<Suspect> {
    // What churners hold is others' data, whatever the shape of their own series (a churner whose pages
    // stopped growing still holds the growing sites' data in the pages it touched first).
    let carried: f64 = judged
        .iter()
        .filter(|(suspect, _, collateral)| {
            *collateral == Some(Collateral::Churner)
                || (suspect.source == Source::PageFault
                    && suspect.verdict != Verdict::Grows
                    && suspect.retained_fraction < CHURNER_RETAINED)
        })
        .filter_map(|(suspect, _, _)| suspect.own_bytes_per_turn)
        .sum();
    let own_of_growing: f64 = judged
        .iter()
        .filter(|(suspect, _, _)| suspect.verdict == Verdict::Grows)
        .filter_map(|(suspect, _, _)| suspect.own_bytes_per_turn)
        .sum();
    judged
        .into_iter()
        .map(|(mut suspect, shape, collateral)| {
            if let (Verdict::Grows, Some(own)) = (suspect.verdict, suspect.own_bytes_per_turn) {
                if carried > 0.0 && own_of_growing > 0.0 {
                    suspect.bytes_per_turn = Some(own + carried * own / own_of_growing);
                }
            }
            suspect.evidence = evidence(&suspect, &shape, axis, points, span);
            match collateral {
                Some(Collateral::Small) => {
                    suspect.evidence = format!(
                        "no growth of its own to speak of: {} per {}, under {:.0}% of the {} per {} all resident memory \
                         grew, which page reuse in a shared heap spreads among sites; {}",
                        signed(shape.late_slope),
                        axis.per(),
                        SHARED_HEAP_SHARE * 100.0,
                        signed(whole_source_growth),
                        axis.per(),
                        suspect.evidence.split_once("; ").map_or("", |(_, rest)| rest)
                    );
                }
                Some(Collateral::Churner) => {
                    suspect.evidence = format!(
                        "no growth of its own: its resident pages grew {} per {}, but it keeps only {:.0}% of the {} it \
                         made resident; the pages it freed hold the data of sites that grow, counted with them; {}",
                        signed(shape.late_slope),
                        axis.per(),
                        suspect.retained_fraction * 100.0,
                        human_bytes(suspect.allocated_bytes),
                        suspect.evidence.split_once("; ").map_or("", |(_, rest)| rest)
                    );
                }
                None => {}
            }
            suspect
        })
        .collect()
}

/// The evidence for a verdict, in a reader's units; it never says more than the verdict does.
fn evidence(suspect: &Suspect, shape: &Shape, axis: Axis, points: usize, span: f64) -> String {
    let per = axis.per();
    let rate = |bytes_per_x: f64| match axis {
        Axis::Turns => format!("{}/turn", signed(bytes_per_x)),
        Axis::Seconds => format!("{}/s", signed(bytes_per_x)),
    };
    let over = match axis {
        Axis::Turns => format!("{span:.0} turns"),
        Axis::Seconds => format!("{span:.0} s"),
    };
    let mut text = match suspect.verdict {
        Verdict::Grows if shape.by_turns => {
            format!("keeps growing: early and late turns alike left memory behind ({} in all)", signed(shape.change))
        }
        Verdict::LevelsOff if shape.by_turns => format!(
            "levels off: only the first or the last turns left memory behind ({} in all), as a bounded cache or a \
             warm-up does",
            signed(shape.change)
        ),
        Verdict::TooShort => format!(
            "too short to judge: {points} points in the window (needs {MIN_POINTS}); trace longer (-d) or take points more often (-i)"
        ),
        Verdict::Grows => format!(
            "keeps growing: {} over {over}, {} in the later half (R² {:.2})",
            signed(shape.change),
            rate(shape.late_slope),
            shape.fit_r2
        ),
        Verdict::LevelsOff => format!(
            "grew {} over {over}, then leveled off: {} in the later half",
            signed(shape.change),
            rate(shape.late_slope.max(0.0))
        ),
        Verdict::Shrinks => format!("shrank {} over {over}", signed(shape.change)),
        Verdict::Flat if shape.change.abs() >= FLAT_BYTES => format!(
            "no steady growth: it moved {} over {over}, up and down (R² {:.2})",
            signed(shape.change),
            shape.fit_r2
        ),
        Verdict::Flat => format!("no growth to speak of: {} over {over}", signed(shape.change)),
    };
    let _ = per;
    if let (Some(per_turn), Some(own), Some(retaining)) =
        (suspect.bytes_per_turn, suspect.own_bytes_per_turn, suspect.turns_retaining)
    {
        text.push_str(&format!(
            "; each turn left {} behind on average ({:.0}% of turns left some)",
            human_bytes(own as u64),
            retaining * 100.0
        ));
        if per_turn > own {
            text.push_str(&format!(
                ", {} with its share of pages that churning sites touched first",
                human_bytes(per_turn as u64)
            ));
        }
    }
    text.push_str(&format!(
        "; holds {:.0}% of the {} it allocated",
        suspect.retained_fraction * 100.0,
        human_bytes(suspect.allocated_bytes)
    ));
    if suspect.runtime_job {
        text.push_str(if suspect.site.starts_with("runtime job") {
            "; no user frame on the stack: allocated in a job of the runtime"
        } else {
            "; no user frame on the stack: allocated by the runtime's own native code"
        });
    }
    if let Some(by) = &suspect.allocated_by {
        text.push_str(&format!("; allocated by {by}"));
    }
    text
}

/// `+1.5 MiB`, `-200 KiB`.
fn signed(bytes: f64) -> String {
    let sign = if bytes < 0.0 { "-" } else { "+" };
    format!("{sign}{}", human_bytes(bytes.abs().round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[u64]) -> Vec<(f64, u64)> {
        values.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect()
    }

    fn frames(names: &[&str]) -> Vec<Frame> {
        names.iter().map(|s| (*s).into()).collect()
    }

    #[test]
    fn steady_growth_is_a_leak_however_much_it_churns() {
        let shape = judge(&series(&[0, 100_000, 200_000, 300_000, 400_000]));
        assert_eq!(shape.verdict, Verdict::Grows);
        assert!((shape.slope - 100_000.0).abs() < 1.0 && shape.fit_r2 > 0.99);
    }

    #[test]
    fn a_cache_that_fills_then_stays_levels_off() {
        assert_eq!(
            judge(&series(&[0, 200_000, 400_000, 400_000, 400_000, 400_000, 400_000])).verdict,
            Verdict::LevelsOff
        );
    }

    #[test]
    fn one_dip_does_not_stop_a_leak() {
        assert_eq!(
            judge(&series(&[0, 100_000, 200_000, 300_000, 400_000, 500_000, 420_000, 520_000])).verdict,
            Verdict::Grows
        );
    }

    #[test]
    fn a_leak_that_starts_late_grows() {
        assert_eq!(judge(&series(&[0, 0, 0, 0, 100_000, 200_000, 300_000, 400_000])).verdict, Verdict::Grows);
    }

    #[test]
    fn shrinking_flat_and_short_series() {
        assert_eq!(judge(&series(&[400_000, 300_000, 200_000, 100_000])).verdict, Verdict::Shrinks);
        assert_eq!(judge(&series(&[4096, 4096, 8192, 4096])).verdict, Verdict::Flat);
        // Temporaries: big swings, no trend.
        assert_eq!(
            judge(&series(&[0, 900_000, 100_000, 1_000_000, 50_000, 950_000, 200_000, 600_000])).verdict,
            Verdict::Flat
        );
        assert_eq!(judge(&series(&[0, 37 << 20])).verdict, Verdict::TooShort);
        assert_eq!(judge(&series(&[])).verdict, Verdict::TooShort);
    }

    #[test]
    fn turns_that_all_leave_memory_behind_grow_and_bounded_ones_level_off() {
        assert_eq!(judge_turns(&[8192; 10]).verdict, Verdict::Grows);
        assert_eq!(judge_turns(&[16384, 8192, 16384, 8192, 16384, 8192]).verdict, Verdict::Grows);
        // An LRU cache of 3 entries after 10 turns: only the last 3 turns' entries remain.
        assert_eq!(judge_turns(&[0, 0, 0, 0, 0, 0, 0, 8192, 8192, 8192]).verdict, Verdict::LevelsOff);
        // A table filled in the first turns, then left alone.
        assert_eq!(judge_turns(&[8192, 8192, 8192, 0, 0, 0, 0, 0, 0, 0]).verdict, Verdict::LevelsOff);
        assert_eq!(judge_turns(&[0, 0, 0, 0]).verdict, Verdict::Flat);
        assert_eq!(judge_turns(&[8192, 8192]).verdict, Verdict::TooShort);
    }

    #[test]
    fn a_stack_reduces_to_its_user_frames_or_its_runtime_job() {
        let user =
            frames(&["bun+0x1", "runTurn [JS:Baseline]", "[JSC thunk] x", "appendToHistory [JS:DFG]", "bun+0x2"]);
        assert_eq!(
            user_path(&user, true),
            UserPath::User(frames(&["runTurn [JS:Baseline]", "appendToHistory [JS:DFG]"]))
        );
        assert_eq!(allocated_by(&user, true), None);
        let job = frames(&[
            "bun+0x1",
            "(anonymous) [JS:DFG]",
            "pullAlgorithm [JS:DFG]",
            "#pull [JS:Baseline]",
            "#getInternalBuffer [JS:DFG]",
            "bun+0x2",
        ]);
        assert_eq!(user_path(&job, true), UserPath::RuntimeJob("job pullAlgorithm".to_string()));
        assert_eq!(frame_site("runtime job pullAlgorithm"), site_name("pullAlgorithm [JS runtime]"));
        assert_eq!(frame_site("runtime native code start_thread"), "start_thread");
        assert_eq!(frame_site("retainStreamChunk (server.ts:143)"), "retainStreamChunk (server.ts:143)");
        let threads = frames(&["start_thread", "bun+0x1", "bun+0x2"]);
        assert_eq!(user_path(&threads, true), UserPath::RuntimeJob("native code start_thread".to_string()));
        assert_eq!(allocated_by(&job, true), Some("#getInternalBuffer".to_string()));
        let native = frames(&["main", "serve", "leak", "operator new(unsigned long)"]);
        assert_eq!(user_path(&native, false), UserPath::User(native.clone()));
    }
}

//! The per-turn view: what each turn allocated, freed, still held at its end, and still holds at the end
//! of the run (retained), with the stacks that hold it.

use std::collections::{BTreeMap, HashMap};

use super::stacks::{Frame, merge_by_names};
use crate::{
    collector::Trace,
    ledger::{Source, StackKey, turns::TurnIx},
};

/// Retained bytes per (turn, stack) at the end of the run, from every live allocation's birth turns, in
/// the shares the turns were charged (see ledger/turns.rs).
pub fn retained_by_turn_and_stack(trace: &Trace<'_>) -> HashMap<TurnIx, HashMap<StackKey, u64>> {
    let mut retained: HashMap<TurnIx, HashMap<StackKey, u64>> = HashMap::new();
    for (key, born, bytes, _) in trace.ledger.live_by_birth() {
        for (turn, share) in trace.ledger.turns.shares(born, bytes) {
            *retained.entry(turn).or_default().entry(key).or_default() += share;
        }
    }
    retained
}

pub struct TurnView {
    pub id: String,
    pub start: std::time::SystemTime,
    pub end: Option<std::time::SystemTime>,
    pub allocated: BTreeMap<Source, u64>,
    pub freed: BTreeMap<Source, u64>,
    pub outstanding_at_end: Option<BTreeMap<Source, u64>>,
    pub retained: BTreeMap<Source, u64>,
    /// (source, frames root first, retained bytes), largest first.
    pub top_stacks: Vec<(Source, Vec<Frame>, u64)>,
}

/// Stacks listed per turn.
const TOP_STACKS: usize = 5;

pub fn turn_views(trace: &Trace<'_>, primary: Option<Source>) -> Vec<TurnView> {
    let retained = retained_by_turn_and_stack(trace);
    let figures = trace.ledger.turns.figures();
    trace
        .turns
        .iter()
        .map(|record| {
            let turn_figures = &figures[record.index as usize];
            let held = retained.get(&record.index).cloned().unwrap_or_default();
            let mut top: Vec<(Source, Vec<Frame>, u64)> =
                merge_by_names(trace, held.into_iter().filter(|(key, _)| primary.is_none_or(|p| key.source == p)))
                    .into_iter()
                    .map(|(_, (stack, bytes))| (stack.source, stack.frames, bytes))
                    .filter(|(_, _, bytes)| *bytes > 0)
                    .collect();
            top.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
            top.truncate(TOP_STACKS);
            TurnView {
                id: record.id.clone(),
                start: record.start,
                end: record.end,
                allocated: turn_figures.allocated.clone(),
                freed: turn_figures.freed.clone(),
                outstanding_at_end: turn_figures.outstanding_at_end.clone(),
                retained: turn_figures.live.clone(),
                top_stacks: top,
            }
        })
        .collect()
}

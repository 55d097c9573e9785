//! Turns (an orchestrator's units of work) and what each allocated, freed, and left behind.
//!
//! Turns may overlap. Memory allocated while several turns are under way is split evenly among them: each
//! of k open turns is charged a k-th of it (in whole bytes: the shares add up to the bytes exactly), and
//! memory released while turns are under way counts as freed by each in the same shares. So what all
//! turns allocated never adds up to more than was allocated, and the mean a turn leaves behind times the
//! turns per hour is the growth per hour that turns account for. Every allocation remembers the set of
//! turns it was born in, so that its release lowers what those turns still hold by the same shares,
//! whenever it comes (a release in parts may round each share by a byte).

use std::collections::{BTreeMap, HashMap};

use super::Source;

pub type TurnIx = u32;
/// An interned set of turns; [`NO_TURNS`] is the empty set.
pub type TurnSetId = u32;
pub const NO_TURNS: TurnSetId = 0;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnFigures {
    pub allocated: BTreeMap<Source, u64>,
    pub freed: BTreeMap<Source, u64>,
    /// Allocated during the turn and not released yet.
    pub live: BTreeMap<Source, u64>,
    /// `live` when the turn ended.
    pub outstanding_at_end: Option<BTreeMap<Source, u64>>,
}

#[derive(Debug)]
pub struct TurnLedger {
    sets: Vec<Vec<TurnIx>>,
    set_ids: HashMap<Vec<TurnIx>, TurnSetId>,
    active: Vec<TurnIx>,
    active_set: TurnSetId,
    figures: Vec<TurnFigures>,
}

impl Default for TurnLedger {
    fn default() -> Self {
        Self {
            sets: vec![Vec::new()],
            set_ids: HashMap::from([(Vec::new(), NO_TURNS)]),
            active: Vec::new(),
            active_set: NO_TURNS,
            figures: Vec::new(),
        }
    }
}

impl TurnLedger {
    /// A turn begins; returns its index.
    pub fn begin(&mut self) -> TurnIx {
        let turn = self.figures.len() as TurnIx;
        self.figures.push(TurnFigures::default());
        self.active.push(turn);
        self.active_set = self.intern_active();
        turn
    }

    /// A turn ends: what it still holds now is its outstanding-at-end.
    pub fn end(&mut self, turn: TurnIx) {
        let Some(position) = self.active.iter().position(|t| *t == turn) else { return };
        self.active.remove(position);
        self.active_set = self.intern_active();
        let figures = &mut self.figures[turn as usize];
        figures.outstanding_at_end = Some(figures.live.clone());
    }

    /// Bytes allocated now; returns the birth set to remember with them.
    pub fn allocated(&mut self, source: Source, bytes: u64) -> TurnSetId {
        for (turn, share) in split(&self.sets[self.active_set as usize], bytes) {
            let figures = &mut self.figures[turn as usize];
            *figures.allocated.entry(source).or_default() += share;
            *figures.live.entry(source).or_default() += share;
        }
        self.active_set
    }

    /// Bytes born in `born` released now.
    pub fn released(&mut self, source: Source, bytes: u64, born: TurnSetId) {
        for (turn, share) in split(&self.sets[born as usize], bytes) {
            if let Some(live) = self.figures[turn as usize].live.get_mut(&source) {
                *live = live.saturating_sub(share);
            }
        }
        for (turn, share) in split(&self.sets[self.active_set as usize], bytes) {
            *self.figures[turn as usize].freed.entry(source).or_default() += share;
        }
    }

    pub fn turns_of(&self, set: TurnSetId) -> &[TurnIx] {
        &self.sets[set as usize]
    }

    /// Each turn of `set` with its share of `bytes` born in it.
    pub fn shares(&self, set: TurnSetId, bytes: u64) -> impl Iterator<Item = (TurnIx, u64)> + '_ {
        split(&self.sets[set as usize], bytes)
    }

    pub fn figures(&self) -> &[TurnFigures] {
        &self.figures
    }

    fn intern_active(&mut self) -> TurnSetId {
        if let Some(&id) = self.set_ids.get(&self.active) {
            return id;
        }
        let id = self.sets.len() as TurnSetId;
        self.sets.push(self.active.clone());
        self.set_ids.insert(self.active.clone(), id);
        id
    }
}

/// `bytes` split evenly among `turns` in whole bytes that add up to it: turn i of k gets
/// floor(bytes (i+1) / k) - floor(bytes i / k).
fn split(turns: &[TurnIx], bytes: u64) -> impl Iterator<Item = (TurnIx, u64)> + '_ {
    let k = turns.len() as u128;
    let cut = move |i: u128| (bytes as u128 * i / k.max(1)) as u64;
    turns.iter().enumerate().map(move |(i, turn)| (*turn, cut(i as u128 + 1) - cut(i as u128)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Source = Source::Mmap;

    fn bytes(map: &BTreeMap<Source, u64>) -> u64 {
        map.get(&M).copied().unwrap_or(0)
    }

    #[test]
    fn a_turn_counts_what_it_allocated_freed_and_left() {
        let mut turns = TurnLedger::default();
        let before = turns.allocated(M, 50); // before any turn: nobody's
        let t0 = turns.begin();
        let kept = turns.allocated(M, 100);
        let dropped = turns.allocated(M, 30);
        turns.released(M, 30, dropped);
        turns.released(M, 50, before); // freed during t0, allocated before it
        turns.end(t0);
        let figures = &turns.figures()[t0 as usize];
        assert_eq!((bytes(&figures.allocated), bytes(&figures.freed), bytes(&figures.live)), (130, 80, 100));
        assert_eq!(bytes(figures.outstanding_at_end.as_ref().unwrap()), 100);
        // Released after the turn ended: what it retains at the end of the run drops, its freed does not.
        turns.released(M, 100, kept);
        let figures = &turns.figures()[t0 as usize];
        assert_eq!((bytes(&figures.freed), bytes(&figures.live)), (80, 0));
        assert_eq!(bytes(figures.outstanding_at_end.as_ref().unwrap()), 100);
    }

    #[test]
    fn overlapping_turns_share_what_was_allocated_while_both_ran() {
        let mut turns = TurnLedger::default();
        let a = turns.begin();
        turns.allocated(M, 10);
        let b = turns.begin();
        let shared = turns.allocated(M, 20);
        turns.end(a);
        turns.allocated(M, 40);
        turns.end(b);
        assert_eq!(turns.turns_of(shared), &[a, b]);
        assert_eq!(bytes(&turns.figures()[a as usize].allocated), 20);
        assert_eq!(bytes(&turns.figures()[b as usize].allocated), 50);
        turns.released(M, 20, shared);
        assert_eq!(bytes(&turns.figures()[a as usize].live), 10);
        assert_eq!(bytes(&turns.figures()[b as usize].live), 40);
        assert!(turns.active.is_empty());
    }

    #[test]
    fn shares_add_up_to_the_bytes_and_turns_never_sum_past_what_was_allocated() {
        for k in 1..=7u32 {
            let set: Vec<TurnIx> = (0..k).collect();
            for bytes in [0u64, 1, 2, 6, 7, 4096, 1_000_003] {
                let shares: Vec<u64> = split(&set, bytes).map(|(_, share)| share).collect();
                assert_eq!(shares.iter().sum::<u64>(), bytes, "{k} turns, {bytes} bytes");
                assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
            }
        }
        // Turns starting and ending in a staggered pattern, 3 open at a time at most.
        let mut turns = TurnLedger::default();
        let mut open = std::collections::VecDeque::new();
        let mut allocated = 0;
        for step in 0..60u64 {
            open.push_back(turns.begin());
            turns.allocated(M, 1000 + step * 7);
            allocated += 1000 + step * 7;
            if open.len() == 3 {
                turns.end(open.pop_front().unwrap());
            }
        }
        let total: u64 = turns.figures().iter().map(|f| bytes(&f.allocated)).sum();
        assert_eq!(total, allocated);
    }
}

//! The target called exec: the process goes on under the same pid, but its whole address space was
//! replaced. Nothing of the old image will ever be unmapped or freed by a call we see, so its accounting
//! ends here: every mapping, resident page, break and allocator block it held is released at the exec,
//! the stacks seen from now on are the new image's (the same addresses name other code), and the maps,
//! symbols and allocator probes are taken afresh from the new image.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::SystemTime,
};

use tracer_common::{
    alloc::{AllocSite, Block, BlockKey},
    events::MemEvent,
};

use super::Collector;
use crate::{
    ledger::{Source, StackStats},
    procfs::{ProcessInfo, maps::MemoryMap},
    symbolizer::Symbolizer,
};

/// One exec of the target, for the reports.
#[derive(Clone, Debug)]
pub struct ExecRecord {
    pub at: SystemTime,
    /// The executable before and after.
    pub from: PathBuf,
    pub to: PathBuf,
    /// What the old image still held at the exec, by source: released by it.
    pub released: BTreeMap<Source, u64>,
}

/// Allocator blocks of an old image, taken out of the kernel's table at an exec: their sites' figures
/// are corrected by these from then on (the kernel's figures are cumulative and its to change, not ours).
#[derive(Debug, Default)]
pub struct ReleasedBlocks {
    by_site: HashMap<AllocSite, (u64, u64)>,
}

impl ReleasedBlocks {
    /// Counts `blocks` as freed at their sites.
    pub fn add<'a>(&mut self, blocks: impl IntoIterator<Item = &'a Block>) -> u64 {
        let mut bytes = 0;
        for block in blocks {
            let entry = self.by_site.entry(block.site).or_default();
            entry.0 += block.charged_bytes;
            entry.1 += block.charged_blocks;
            bytes += block.charged_bytes;
        }
        bytes
    }

    /// A site's figures as the kernel keeps them, less the blocks an exec released.
    pub fn correct(&self, site: &AllocSite, stats: &mut StackStats) {
        if let Some((bytes, blocks)) = self.by_site.get(site) {
            let bytes = (*bytes).min(stats.outstanding_bytes);
            stats.outstanding_bytes -= bytes;
            stats.outstanding_allocs = stats.outstanding_allocs.saturating_sub(*blocks);
            stats.freed_bytes += bytes;
        }
    }
}

/// Whose exec an exec event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ExecOf {
    /// The target's own: an image of its ends.
    Target,
    /// Our forked child's, of the command we launch: the target begins (no record of it in the reports).
    Launch,
}

impl Collector {
    /// Ends the old image's accounting at an exec and takes up the new image.
    /// `path`: the file exec ran, as the kernel gave it with the event.
    pub(super) fn on_exec(&mut self, event: &MemEvent, of: ExecOf, path: Option<PathBuf>) {
        let pid = self.target.pid();
        if event.tgid != pid {
            return;
        }
        // Name the old image's stacks while the maps we hold are still its own.
        self.name_new_stacks();
        let mut released = self.ledger.release_image(pid);

        let old_blocks: Vec<(BlockKey, Block)> = self
            .maps
            .live_blocks()
            .filter(|(key, block)| key.tgid == pid && block.timestamp_ns <= event.timestamp_ns)
            .collect();
        for (key, _) in &old_blocks {
            self.maps.remove_block(key);
        }
        let freed = self.released_blocks.add(old_blocks.iter().map(|(_, block)| block));
        if freed > 0 {
            *released.entry(Source::Malloc).or_default() += freed;
        }
        // The kernel dropped the old image's runtime ranges at the exec itself (exits.rs `process_exec`): until
        // the new image's C library is mapped, it copies the stack top of every event.

        // The new image: what it mapped before its first instruction (executable, loader, stack) is there
        // before any event of ours, like a process we attach to. Its break is not taken from here: this
        // runs after the event, when the process may have exec'd again (a script's `env`, already bash), and
        // another image's break made the first brk look like a heap grown across gigabytes. A new image's
        // break starts empty at its start, and its first brk (the C runtime's query) says where.
        self.modules.refresh();
        if let Ok(map) = MemoryMap::read(pid) {
            self.ledger.seed_preexisting(pid, map.iter().map(|m| (m.start, m.end)), None);
        }
        self.stacks.new_image();
        self.maps.forget_code_rules();
        self.callers_judged.clear();
        self.frames_judged.clear();
        self.modules_learned.clear();
        self.walking_by_rules = false;
        self.last_fault.clear();
        self.symbolizer = Symbolizer::for_process(pid, &self.modules);
        // Named by the event, not by /proc: read now, /proc may show a later image (a script's `env` has
        // already run bash) or none (the process is gone).
        match ProcessInfo::read(pid) {
            Ok(info) => self.target.info = info,
            // Gone already (a command that exec'd a short one): the file exec ran is the name left of it.
            Err(_) => {
                if let Some(path) = path.as_ref().filter(|path| path.is_absolute()) {
                    self.target.info.exe = path.clone();
                }
            }
        }
        let to = path.unwrap_or_else(|| self.target.info.exe.clone());
        let from = std::mem::replace(&mut self.image, to.clone());
        self.update_runtime_text();
        self.update_log_descriptors();
        // Its executable and libraries are new code: look for allocators in them.
        self.code_mapped = true;
        if of == ExecOf::Launch {
            return;
        }
        self.execs.push(ExecRecord { at: self.clock.wall(event.timestamp_ns), from, to, released });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(stack_id: u32, bytes: u64) -> Block {
        Block {
            size: bytes,
            timestamp_ns: 1,
            site: AllocSite { stack_id, pad: 0, caller: 0x1000 },
            charged_bytes: bytes,
            charged_blocks: 1,
        }
    }

    #[test]
    fn blocks_released_by_an_exec_are_freed_at_their_sites() {
        let mut released = ReleasedBlocks::default();
        assert_eq!(released.add(&[block(1, 100), block(1, 50), block(2, 8)]), 158);
        let mut stats =
            StackStats { outstanding_bytes: 400, outstanding_allocs: 5, allocated_bytes: 900, ..Default::default() };
        released.correct(&AllocSite { stack_id: 1, pad: 0, caller: 0x1000 }, &mut stats);
        assert_eq!((stats.outstanding_bytes, stats.outstanding_allocs, stats.freed_bytes), (250, 3, 150));
        assert_eq!(stats.allocated_bytes, 900, "what was allocated stays allocated");
        let mut other = StackStats { outstanding_bytes: 10, outstanding_allocs: 1, ..Default::default() };
        released.correct(&AllocSite { stack_id: 3, pad: 0, caller: 0x1000 }, &mut other);
        assert_eq!(other.outstanding_bytes, 10, "another site is left alone");
    }
}

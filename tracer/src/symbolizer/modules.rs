//! The target's mappings as last seen, re-read from /proc when an address falls outside them. Kept after
//! the target exits, so frames can still be named from files on disk.

use std::time::{Duration, Instant};

use crate::procfs::maps::{Mapping, MemoryMap};

/// Re-reading /proc/PID/maps costs a few hundred microseconds on a large process; misses in a burst share
/// one re-read.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(5);

pub struct ModuleMap {
    pid: u32,
    map: MemoryMap,
    alive: bool,
    last_refresh: Option<Instant>,
    /// Where the last lookup found its address (see [`MemoryMap::find_near`]).
    hint: usize,
    /// The `[uprobes]` page as last read: checked for every frame of every stack.
    uprobes_page: Option<std::ops::Range<u64>>,
}

impl ModuleMap {
    pub fn new(pid: u32) -> Self {
        let mut modules =
            Self { pid, map: MemoryMap::default(), alive: true, last_refresh: None, hint: 0, uprobes_page: None };
        modules.refresh();
        modules
    }

    /// The process is gone: keep the last snapshot and stop reading /proc.
    pub fn mark_exited(&mut self) {
        self.alive = false;
    }

    pub fn refresh(&mut self) {
        if !self.alive {
            return;
        }
        self.last_refresh = Some(Instant::now());
        match MemoryMap::read(self.pid) {
            // A zombie's maps are empty; keep what we had.
            Ok(map) if !map.is_empty() => {
                self.uprobes_page = map.uprobes_page();
                self.map = map;
            }
            Ok(_) | Err(_) => {}
        }
    }

    /// The mappings as last read.
    pub fn snapshot(&self) -> &MemoryMap {
        &self.map
    }

    /// The mapping holding `addr`, re-reading the process's maps once if none does.
    pub fn lookup(&mut self, addr: u64) -> Option<&Mapping> {
        if self.map.find_near(addr, &mut self.hint).is_none()
            && self.alive
            && self.last_refresh.is_none_or(|t| t.elapsed() >= MIN_REFRESH_INTERVAL)
        {
            self.refresh();
        }
        self.map.find_near(addr, &mut self.hint)
    }

    /// Whether `addr` lies in the `[uprobes]` page as last read (no re-read: see
    /// `collector::stacks::TRAMPOLINE_PAGE` for where it is before it shows in the maps).
    pub fn in_uprobes_page(&self, addr: u64) -> bool {
        self.uprobes_page.as_ref().is_some_and(|page| page.contains(&addr))
    }
}

/// The C and C++ runtimes (libc and the dynamic loader, glibc's and musl's; libstdc++, libc++, libgcc):
/// code built without frame pointers, and the allocation and syscall plumbing a reader looks past
/// (operator new, malloc, mmap64).
pub fn is_runtime_module(path: &str) -> bool {
    let basename = path.rsplit('/').next().unwrap_or(path);
    [
        "libc.so",
        "libc-",
        "ld-linux",
        "ld-musl",
        "libpthread.so",
        "libc.musl",
        "libstdc++.so",
        "libc++.so",
        "libc++abi.so",
        "libgcc_s.so",
    ]
    .iter()
    .any(|prefix| basename.starts_with(prefix))
}

/// The C library itself (not the loader).
pub fn is_c_library(path: &str) -> bool {
    let basename = path.rsplit('/').next().unwrap_or(path);
    ["libc.so", "libc-", "ld-musl", "libc.musl"].iter().any(|prefix| basename.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_modules_are_libc_and_the_loader() {
        assert!(is_runtime_module("/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_runtime_module("ld-linux-x86-64.so.2"));
        assert!(is_runtime_module("/lib/libc-2.31.so"));
        assert!(!is_runtime_module("/usr/lib/libcrypto.so.3"));
        assert!(is_runtime_module("/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"));
        assert!(!is_runtime_module("/usr/bin/dispatch-server"));
    }
}

//! `/proc/PID/maps`: the target's mappings, for naming frames and classifying memory.

use std::{fs, io};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    pub shared: bool,
    /// Offset in the mapped file.
    pub offset: u64,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[anon:name]`, ...) or empty for plain anonymous memory.
    pub pathname: String,
}

impl Mapping {
    /// A mapping backed by a file on disk (not a pseudo-name, not anonymous).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.pathname.starts_with('/')
    }

    /// The file's path without the " (deleted)" suffix the kernel adds once the file is gone.
    pub fn file_path(&self) -> &str {
        self.pathname.strip_suffix(" (deleted)").unwrap_or(&self.pathname)
    }

    pub fn file_offset_of(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// A snapshot of a process's mappings, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct MemoryMap {
    mappings: Vec<Mapping>,
}

impl MemoryMap {
    pub fn read(pid: u32) -> io::Result<Self> {
        Ok(Self::parse(&fs::read_to_string(format!("/proc/{pid}/maps"))?))
    }

    pub fn parse(text: &str) -> Self {
        let mut mappings: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        mappings.sort_by_key(|m| m.start);
        Self { mappings }
    }

    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        self.find_index(addr).map(|index| &self.mappings[index])
    }

    /// The position of the mapping holding `addr`, for [`MemoryMap::find_near`].
    pub fn find_index(&self, addr: u64) -> Option<usize> {
        let index = self.mappings.partition_point(|m| m.start <= addr).checked_sub(1)?;
        (addr < self.mappings[index].end).then_some(index)
    }

    /// [`MemoryMap::find`], trying the mapping at `hint` first (the last one found: a stack's frames
    /// mostly fall in one or two mappings); the position of the mapping found goes back into `hint`.
    pub fn find_near(&self, addr: u64, hint: &mut usize) -> Option<&Mapping> {
        if let Some(mapping) = self.mappings.get(*hint).filter(|m| m.start <= addr && addr < m.end) {
            return Some(mapping);
        }
        let index = self.find_index(addr)?;
        *hint = index;
        Some(&self.mappings[index])
    }

    /// The range of the kernel's uprobe page (`[uprobes]`: the return probes' trampoline), if mapped.
    pub fn uprobes_page(&self) -> Option<std::ops::Range<u64>> {
        self.mappings.iter().find(|m| m.pathname == "[uprobes]").map(|m| m.start..m.end)
    }

    /// A copy with only the mappings for which `keep` holds.
    pub fn filtered(&self, mut keep: impl FnMut(&Mapping) -> bool) -> Self {
        Self { mappings: self.mappings.iter().filter(|m| keep(m)).cloned().collect() }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }
}

/// One line: `start-end perms offset dev inode pathname`. The pathname may contain spaces.
fn parse_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut next = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (field, tail) = trimmed.split_at(end);
        rest = tail;
        field
    };
    let (start, end) = next().split_once('-')?;
    let perms = next().as_bytes();
    let offset = next();
    let _dev = next();
    let inode = next();
    let pathname = rest.trim_start().to_string();
    if perms.len() < 4 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        readable: perms[0] == b'r',
        writable: perms[1] == b'w',
        executable: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        pathname,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus daemon
00651000-00652000 rw-p 00051000 08:02 173521      /usr/bin/dbus daemon
00e03000-00e24000 rw-p 00000000 00:00 0           [heap]
7f2d0000-7f2d1000 rw-p 00000000 00:00 0           [anon:mimalloc]
7f2d1000-7f2d2000 rw-p 00000000 00:00 0
7f2e0000-7f2e8000 r-xp 00002000 fd:00 42          /tmp/lib.so (deleted)
7fff5000-7fff6000 r-xs 00000000 00:05 7           /memfd:jit (deleted)
";

    #[test]
    fn parses_every_field_and_keeps_spaces_in_paths() {
        let map = MemoryMap::parse(SAMPLE);
        let text = map.find(0x400123).unwrap();
        assert_eq!((text.start, text.end, text.offset, text.inode), (0x400000, 0x452000, 0, 173521));
        assert!(text.readable && !text.writable && text.executable && !text.shared);
        assert_eq!(text.pathname, "/usr/bin/dbus daemon");
        assert!(text.is_file());
        assert_eq!(map.find(0x651010).unwrap().file_offset_of(0x651010), 0x51010);
    }

    #[test]
    fn pseudo_names_and_anonymous_memory_are_not_files() {
        let map = MemoryMap::parse(SAMPLE);
        assert_eq!(map.find(0xe03000).unwrap().pathname, "[heap]");
        assert!(!map.find(0xe03000).unwrap().is_file());
        assert_eq!(map.find(0x7f2d0000).unwrap().pathname, "[anon:mimalloc]");
        assert_eq!(map.find(0x7f2d1000).unwrap().pathname, "");
        assert!(map.find(0x7fff5000).unwrap().shared);
    }

    #[test]
    fn deleted_files_keep_their_path() {
        let map = MemoryMap::parse(SAMPLE);
        assert_eq!(map.find(0x7f2e0000).unwrap().file_path(), "/tmp/lib.so");
    }

    #[test]
    fn addresses_outside_every_mapping_find_nothing() {
        let map = MemoryMap::parse(SAMPLE);
        assert!(map.find(0x3fffff).is_none());
        assert!(map.find(0x452000).is_none());
        assert!(map.find(0xffff_ffff_ffff).is_none());
    }

    #[test]
    fn a_search_near_the_last_mapping_finds_what_a_full_search_finds() {
        let map = MemoryMap::parse(SAMPLE);
        let mut hint = 0;
        for addr in [0x400123, 0x400fff, 0xe03000, 0x452000, 0x7f2e7fff, 0x7f2e8000, 0x400000, 0x3fffff, 0x7fff5000] {
            assert_eq!(map.find_near(addr, &mut hint), map.find(addr), "{addr:#x}");
            if let Some(found) = map.find(addr) {
                assert_eq!(map.find_index(addr), Some(hint));
                assert_eq!(found.start, map.iter().nth(hint).unwrap().start);
            }
        }
        let mut stale = 99;
        assert_eq!(map.find_near(0xe03000, &mut stale).unwrap().pathname, "[heap]");
    }

    #[test]
    fn the_uprobes_page_is_found_by_name() {
        assert_eq!(MemoryMap::parse(SAMPLE).uprobes_page(), None);
        let with = format!("{SAMPLE}7fffffffe000-7ffffffff000 r-xp 00000000 00:00 0           [uprobes]\n");
        assert_eq!(MemoryMap::parse(&with).uprobes_page(), Some(0x7fff_ffff_e000..0x7fff_ffff_f000));
    }
}

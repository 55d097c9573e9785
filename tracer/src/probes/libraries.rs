//! The shared libraries an executable will load, found before it runs: a launched target is held until
//! its allocator probes are attached, and by then the dynamic loader has not mapped anything yet. Uprobes
//! attach to files, so probing the libraries it will load catches its first allocation.
//!
//! Resolution follows the loader's order for the common cases: DT_RPATH (when there is no DT_RUNPATH),
//! LD_LIBRARY_PATH, DT_RUNPATH, then the system directories. Libraries loaded with dlopen are not known
//! in advance: the session probes them once they are mapped (`session::LateLibraries`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use object::{
    Endianness,
    read::elf::{Dyn, ElfFile64, FileHeader},
};

use crate::procfs::{
    maps::MemoryMap,
    untrusted::{self, Cap, Origin},
};

const SYSTEM_DIRECTORIES: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// The DT_NEEDED names and search paths of an ELF file.
fn dynamic_entries(path: &Path) -> Option<(Vec<String>, Vec<String>, Vec<String>)> {
    // Found by name in directories the target's owner may control ($ORIGIN): only a regular file is read.
    let data = untrusted::read(path, Origin::Target, Cap::ELF).ok()?;
    let elf = ElfFile64::<Endianness>::parse(&*data).ok()?;
    let endian = elf.endian();
    let header = elf.elf_header();
    let sections = header.sections(endian, &*data).ok()?;
    let (dynamic, index) = sections.dynamic(endian, &*data).ok()??;
    let strings = sections.strings(endian, &*data, index).ok()?;
    let (mut needed, mut rpath, mut runpath) = (Vec::new(), Vec::new(), Vec::new());
    for entry in dynamic {
        let tag = entry.d_tag(endian);
        let text = || entry.string(endian, strings).ok().map(|s| String::from_utf8_lossy(s).into_owned());
        match tag {
            t if t == object::elf::DT_NEEDED => needed.extend(text()),
            t if t == object::elf::DT_RPATH => rpath.extend(text()),
            t if t == object::elf::DT_RUNPATH => runpath.extend(text()),
            _ => {}
        }
    }
    Some((needed, rpath, runpath))
}

/// Every library `executable` needs, directly or through other libraries, resolved to a path.
pub fn needed_libraries(executable: &Path) -> Vec<PathBuf> {
    let library_path: Vec<String> = std::env::var("LD_LIBRARY_PATH")
        .map(|p| p.split(':').filter(|d| !d.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    let mut found: Vec<PathBuf> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue = vec![executable.to_path_buf()];
    while let Some(object) = queue.pop() {
        let Some((needed, rpath, runpath)) = dynamic_entries(&object) else { continue };
        let origin = object.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let expand = |dirs: &[String]| -> Vec<String> {
            dirs.iter()
                .flat_map(|d| d.split(':'))
                .map(|d| d.replace("$ORIGIN", &origin).replace("${ORIGIN}", &origin))
                .collect()
        };
        let mut search: Vec<String> = Vec::new();
        if runpath.is_empty() {
            search.extend(expand(&rpath));
        }
        search.extend(library_path.iter().cloned());
        search.extend(expand(&runpath));
        search.extend(SYSTEM_DIRECTORIES.iter().map(|d| d.to_string()));
        for name in needed {
            if !seen.insert(name.clone()) {
                continue;
            }
            let candidate = if name.contains('/') {
                Some(PathBuf::from(&name))
            } else {
                search.iter().map(|dir| Path::new(dir).join(&name)).find(|p| p.is_file())
            };
            if let Some(path) = candidate.and_then(|p| p.canonicalize().ok()) {
                found.push(path.clone());
                queue.push(path);
            }
        }
    }
    found
}

/// A map that shows `files` as executable mappings, for discovery before the process has mapped them.
pub fn planned_map(files: &[PathBuf]) -> MemoryMap {
    let text: String = files
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let start = 0x1000_0000u64 * (i as u64 + 1);
            format!("{start:x}-{:x} r-xp 00000000 00:00 {} {}\n", start + 0x1000, i + 1, path.display())
        })
        .collect();
    MemoryMap::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_needs_the_c_library() {
        let libraries = needed_libraries(Path::new("/bin/ls"));
        assert!(
            libraries.iter().any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))),
            "{libraries:?}"
        );
        assert!(libraries.iter().all(|p| p.is_absolute() && p.is_file()));
    }

    #[test]
    fn the_planned_map_lists_each_file_as_code() {
        let map = planned_map(&[PathBuf::from("/bin/ls"), PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")]);
        let paths: Vec<&str> = map.iter().map(|m| m.file_path()).collect();
        assert_eq!(paths, ["/bin/ls", "/lib/x86_64-linux-gnu/libc.so.6"]);
        assert!(map.iter().all(|m| m.executable && m.is_file()));
    }
}

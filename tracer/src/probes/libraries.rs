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

/// How many interpreters the kernel follows when a script's interpreter is a script too
/// (fs/binfmt_script.c, through `bprm->interp` recursion in exec).
const MAX_INTERPRETER_DEPTH: usize = 4;

/// The kernel reads at most this much of a file to find its `#!` line (BINPRM_BUF_SIZE).
const SHEBANG_BYTES: u64 = 256;

/// The programs that run before a script's own interpreter gets to its code, found as exec will find
/// them: the `#!` interpreter (and its interpreter, if it is a script too), and when that is `env`, the
/// program `env` looks up on PATH. Empty when `program` is not a script. A launched `./run.sh` or a
/// pyenv shim (`#!/usr/bin/env bash`) allocates through these programs' libraries from its first
/// instruction, so their allocators must be probed before it runs, like an executable's own.
pub fn script_interpreters(program: &Path) -> Vec<PathBuf> {
    let mut chain = Vec::new();
    let mut current = program.to_path_buf();
    for _ in 0..MAX_INTERPRETER_DEPTH {
        let Some((interpreter, argument)) = shebang(&current) else { break };
        let Ok(interpreter) = interpreter.canonicalize() else { break };
        let next = match interpreter.file_name().and_then(|name| name.to_str()) {
            Some("env") => argument
                .as_deref()
                .and_then(program_env_runs)
                .and_then(|name| crate::target::executable_path(&name).ok())
                .and_then(|path| path.canonicalize().ok()),
            _ => None,
        };
        chain.push(interpreter.clone());
        current = match next {
            Some(program) => {
                chain.push(program.clone());
                program
            }
            None => interpreter,
        };
    }
    chain
}

/// A script's `#!` line: the interpreter, and the single argument the kernel passes it (the rest of the
/// line, trimmed). Only a regular file is read, and only its first bytes.
fn shebang(path: &Path) -> Option<(PathBuf, Option<String>)> {
    let file = untrusted::open(path, Origin::Target).ok()?;
    let mut head = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, SHEBANG_BYTES), &mut head).ok()?;
    let line = head.strip_prefix(b"#!")?;
    // A short script may end its line at the end of the file, as the kernel allows.
    let line = &line[..line.iter().position(|&b| b == b'\n' || b == 0).unwrap_or(line.len())];
    let line = std::str::from_utf8(line).ok()?.trim_matches([' ', '\t']);
    let (interpreter, argument) = match line.split_once([' ', '\t']) {
        Some((interpreter, rest)) => (interpreter, Some(rest.trim_matches([' ', '\t']).to_string())),
        None => (line, None),
    };
    (!interpreter.is_empty()).then(|| (PathBuf::from(interpreter), argument.filter(|a| !a.is_empty())))
}

/// The program `env` runs given its `#!` argument: the first word that is neither an option nor a
/// NAME=VALUE assignment. `-S` splits the argument into words, which this does anyway; `-u NAME` and
/// `-C DIR` take the next word.
fn program_env_runs(argument: &str) -> Option<String> {
    let mut words = argument.split_ascii_whitespace();
    while let Some(word) = words.next() {
        match word {
            "-u" | "--unset" | "-C" | "--chdir" => {
                words.next();
            }
            "--" => return words.next().map(String::from),
            _ if word.starts_with('-') || word.contains('=') => {}
            _ => return Some(word.to_string()),
        }
    }
    None
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

    /// A scratch folder with `scripts` (name, text) written as executable files.
    fn scripts(test: &str, scripts: &[(&str, &str)]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("leaktrace-libraries-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in scripts {
            let path = dir.join(name);
            std::fs::write(&path, text.replace("DIR", &dir.to_string_lossy())).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    fn canonical(path: &str) -> PathBuf {
        Path::new(path).canonicalize().unwrap()
    }

    #[test]
    fn a_script_run_through_env_names_env_and_the_program_env_finds() {
        let dir = scripts(
            "env",
            &[
                ("plain", "#!/usr/bin/env sh\necho\n"),
                ("options", "#!/usr/bin/env  -S -u HOME LC_ALL=C sh -e  \necho\n"),
                ("absolute", "#!/usr/bin/env /bin/sh\n"),
            ],
        );
        let expected = vec![canonical("/usr/bin/env"), canonical("/bin/sh")];
        for name in ["plain", "options", "absolute"] {
            assert_eq!(script_interpreters(&dir.join(name)), expected, "{name}");
        }
    }

    #[test]
    fn a_script_whose_interpreter_is_a_script_names_both_as_the_kernel_follows_them() {
        let dir = scripts("nested", &[("inner", "#!/bin/sh\n"), ("outer", "#! DIR/inner -x\n")]);
        assert_eq!(script_interpreters(&dir.join("outer")), vec![dir.join("inner"), canonical("/bin/sh")]);
    }

    #[test]
    fn a_script_that_names_itself_stops_at_the_kernel_s_depth() {
        let dir = scripts("itself", &[("loop", "#!DIR/loop\n")]);
        assert_eq!(script_interpreters(&dir.join("loop")).len(), MAX_INTERPRETER_DEPTH);
    }

    #[test]
    fn no_interpreter_for_an_executable_text_or_a_missing_interpreter() {
        let dir = scripts(
            "none",
            &[
                ("no_newline", "#!/bin/sh"),
                ("missing", "#!/nonexistent/sh\n"),
                ("text", "echo hello\n"),
                ("empty", "#!\n"),
            ],
        );
        assert!(script_interpreters(Path::new("/bin/ls")).is_empty());
        assert_eq!(
            script_interpreters(&dir.join("no_newline")),
            vec![canonical("/bin/sh")],
            "ends at the end of the file"
        );
        for name in ["missing", "text", "empty"] {
            assert!(script_interpreters(&dir.join(name)).is_empty(), "{name}");
        }
    }

    #[test]
    fn the_program_env_runs_is_its_first_word_not_an_option_or_assignment() {
        assert_eq!(program_env_runs("bash").as_deref(), Some("bash"));
        assert_eq!(program_env_runs("-S python3 -u").as_deref(), Some("python3"));
        assert_eq!(program_env_runs("-i -u NAME -C /tmp A=1 node --flag").as_deref(), Some("node"));
        assert_eq!(program_env_runs("-- -weird").as_deref(), Some("-weird"));
        assert_eq!(program_env_runs("-i A=1"), None);
    }

    #[test]
    fn the_planned_map_lists_each_file_as_code() {
        let map = planned_map(&[PathBuf::from("/bin/ls"), PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")]);
        let paths: Vec<&str> = map.iter().map(|m| m.file_path()).collect();
        assert_eq!(paths, ["/bin/ls", "/lib/x86_64-linux-gnu/libc.so.6"]);
        assert!(map.iter().all(|m| m.executable && m.is_file()));
    }
}

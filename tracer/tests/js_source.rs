//! Source locations of JIT frames on real Bun output (src/symbolizer/js_source.rs): a small TypeScript
//! program in several files (tests/fixtures/js_source/app) is compiled with `bun build --compile`, run with
//! JSC's jitdump on until its functions reach DFG/FTL, and every JavaScript code block the jitdump names is
//! located from the executable alone.

// The module is pure (it depends on no other part of the tracer), so the test compiles it in directly;
// its own unit tests run here too.
#[path = "../src/symbolizer"]
#[allow(dead_code)]
mod symbolizer {
    pub mod js_source;
}

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use symbolizer::js_source::{JsLocation, JsOrigin, JsSourceIndex, LineSource, MatchedBy};

fn bun() -> PathBuf {
    let bun = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bun/node_modules/@oven/bun-linux-x64/bin/bun");
    assert!(bun.exists(), "Bun is not installed at {}: run `cargo xtask setup` (cargo xtask test does)", bun.display());
    bun
}

fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/js_source/app")
}

/// A fresh directory for one test, removed when it ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("leaktrace-js-source-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `command` with JSC's jitdump written into `dir`, and returns the names of its JavaScript code
/// blocks (`JSC-Baseline:`, `JSC-DFG:`, `JSC-FTL:` records), each once. JSC writes the records from a
/// queue that a loaded machine can leave behind when the program exits (the fixture waits a second for
/// it): a run whose jitdump lacks the fixture's busiest function is run once more.
fn run_with_jitdump(mut command: Command, dir: &Path) -> BTreeSet<String> {
    let names = run_once_with_jitdump(&mut command, &dir.join("jitdump"));
    if names.iter().any(|name| name.starts_with("JSC-DFG: runTurn#") || name.starts_with("JSC-FTL: runTurn#")) {
        return names;
    }
    eprintln!("the jitdump holds no optimized runTurn ({} code blocks): running again", names.len());
    run_once_with_jitdump(&mut command, &dir.join("jitdump-again"))
}

fn run_once_with_jitdump(command: &mut Command, jitdump_dir: &Path) -> BTreeSet<String> {
    fs::create_dir_all(jitdump_dir).unwrap();
    let output = command.env("BUN_JSC_useJITDump", "1").env("BUN_JSC_jitDumpDirectory", jitdump_dir).output().unwrap();
    assert!(output.status.success(), "the program failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(jitdump_dir).unwrap() {
        names.extend(jitdump_names(&fs::read(entry.unwrap().path()).unwrap()));
    }
    names.retain(|name| ["JSC-Baseline: ", "JSC-DFG: ", "JSC-FTL: "].iter().any(|tier| name.starts_with(tier)));
    names
}

/// The names of a perf jitdump's JIT_CODE_LOAD records (version 1, little endian).
fn jitdump_names(bytes: &[u8]) -> Vec<String> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(&bytes[..4], b"DTiJ");
    let mut names = Vec::new();
    let mut offset = u32_at(8) as usize;
    while offset + 16 <= bytes.len() {
        let (id, size) = (u32_at(offset), u32_at(offset + 4) as usize);
        if size < 16 || offset + size > bytes.len() {
            break;
        }
        if id == 0 {
            // Record header (16), pid, tid (8), vma, code_addr, code_size, code_index (32), then the name.
            let name = &bytes[offset + 56..offset + size];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            names.push(String::from_utf8_lossy(&name[..end]).into_owned());
        }
        offset += size;
    }
    names
}

/// The code block's function name and hash, from `JSC-DFG: name#HASH`.
fn name_of(raw: &str) -> &str {
    raw.split_once(": ").unwrap().1.rsplit_once('#').unwrap().0
}

/// Every function the fixture's sources declare with a name (JSC names code blocks after it; a
/// constructor's after its class).
const USER_FUNCTIONS: [&str; 15] = [
    "runTurn",
    "summarize",
    "main",
    "History",
    "record",
    "messageCount",
    "appendToHistory",
    "LruCache",
    "lookup",
    "store",
    "evictOldest",
    "providerStream",
    "consumeStream",
    "replayChunks",
    "pull",
];

fn is_user_function(name: &str) -> bool {
    USER_FUNCTIONS.contains(&name)
}

fn source_line(file: &str, line: u32) -> String {
    let text = fs::read_to_string(app_dir().join(file)).unwrap_or_else(|_| panic!("no fixture file {file}"));
    text.lines().nth(line as usize - 1).unwrap_or_else(|| panic!("{file} has no line {line}")).to_string()
}

/// How many of the fixture's lines mark an anonymous function.
fn anonymous_markers() -> usize {
    fs::read_dir(app_dir())
        .unwrap()
        .map(|entry| {
            fs::read_to_string(entry.unwrap().path()).unwrap().lines().filter(|line| is_anonymous_marker(line)).count()
        })
        .sum()
}

fn is_anonymous_marker(line: &str) -> bool {
    line.ends_with("// anonymous")
}

struct Coverage {
    /// Code blocks of named user functions, and how many of them got the right file and line.
    named: usize,
    named_located: usize,
    /// Anonymous functions (`// anonymous` lines) found at their line.
    anonymous_lines_found: BTreeSet<(String, u32)>,
}

/// Checks every location against the fixture's sources and counts what was located.
fn check_locations(index: &JsSourceIndex, names: &BTreeSet<String>, line_source: LineSource) -> Coverage {
    let mut coverage = Coverage { named: 0, named_located: 0, anonymous_lines_found: BTreeSet::new() };
    for raw in names {
        let name = name_of(raw);
        let location: JsLocation =
            index.locate(raw).unwrap_or_else(|| panic!("{raw}: a JavaScript code block must get an answer"));
        if let JsOrigin::User(position) = &location.origin {
            if location.function == "(top level)" {
                continue;
            }
            assert_eq!(position.matched_by, MatchedBy::Hash, "{raw}");
            assert_eq!(position.line_source, line_source, "{raw}");
        }
        if is_user_function(name) {
            coverage.named += 1;
            let JsOrigin::User(position) = &location.origin else {
                eprintln!("not located: {raw} ({:?})", location.origin);
                continue;
            };
            let line = source_line(&position.file, position.line);
            // A constructor's code block is named after its class.
            assert!(line.contains(name) || line.contains("constructor("), "{raw} at {position:?}: {line:?}");
            coverage.named_located += 1;
        } else if name.is_empty() {
            // An anonymous code block is either the runtime's or one of the marked functions.
            if let JsOrigin::User(position) = &location.origin {
                let line = source_line(&position.file, position.line);
                assert!(is_anonymous_marker(&line), "{raw} at {position:?}: {line:?}");
                coverage.anonymous_lines_found.insert((position.file.clone(), position.line));
            }
        } else {
            // No user function has this name: the runtime's own (`map`, `next`, `pullAlgorithm`, ...).
            assert_eq!(location.origin, JsOrigin::Runtime, "{raw} is not the application's");
        }
    }
    coverage
}

/// Compiles a copy of the fixture, built from its own directory as a project is (the bundle and the
/// sourcemap then name the files `main.ts`, `history.ts`, ...).
fn compile(scratch: &Scratch, outfile: &str, extra: &[&str]) -> PathBuf {
    let project = scratch.0.join("project");
    fs::create_dir_all(&project).unwrap();
    for entry in fs::read_dir(app_dir()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), project.join(entry.file_name())).unwrap();
    }
    let output = Command::new(bun())
        .args(["build", "--compile"])
        .args(extra)
        .args(["main.ts", "--outfile"])
        .arg(scratch.0.join(outfile))
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(output.status.success(), "bun build failed: {}", String::from_utf8_lossy(&output.stderr));
    // `--sourcemap` also writes main.js.map into the working directory: only the embedded map is to be used.
    let _ = fs::remove_file(project.join("main.js.map"));
    scratch.0.join(outfile)
}

/// Compiles the fixture with `extra` options, runs it, and checks every code block's location.
fn check_compiled_with_sourcemap(name: &str, extra: &[&str]) {
    let scratch = Scratch::new(name);
    let executable = compile(&scratch, "app", extra);
    let names = run_with_jitdump(Command::new(&executable), &scratch.0);

    let index = JsSourceIndex::from_executable(&executable).unwrap().expect("a Bun standalone executable");
    assert_eq!(index.module_urls().collect::<Vec<_>>(), ["/$bunfs/root/app"]);
    let coverage = check_locations(&index, &names, LineSource::SourceMap);
    let anonymous = anonymous_markers();
    let user = coverage.named + anonymous;
    let located = coverage.named_located + coverage.anonymous_lines_found.len();
    eprintln!(
        "{extra:?}: located {located} of {user} user code blocks ({} named of {}, {} anonymous lines of {anonymous})",
        coverage.named_located,
        coverage.named,
        coverage.anonymous_lines_found.len()
    );
    assert!(coverage.named >= 15, "only {} named user code blocks reached the JIT: {names:?}", coverage.named);
    assert!(located * 10 >= user * 9, "located {located} of {user}");

    // The leak-like function carries the line of its declaration.
    let appended = names.iter().find(|name| name_of(name) == "appendToHistory").expect("appendToHistory was compiled");
    assert_eq!(index.locate(appended).unwrap().frame_name(), "appendToHistory (history.ts:25)");
    // The ReadableStream's machinery is the runtime's, never the user's `pull`.
    let runtime_pulls: Vec<&String> =
        names.iter().filter(|name| name_of(name) == "pullAlgorithm" || name_of(name).starts_with('#')).collect();
    for raw in runtime_pulls {
        assert_eq!(index.locate(raw).unwrap().origin, JsOrigin::Runtime, "{raw}");
    }
}

#[test]
fn compiled_executable_with_sourcemap_locates_user_functions_to_their_typescript_lines() {
    check_compiled_with_sourcemap("sourcemap", &["--sourcemap"]);
}

#[test]
fn compiled_commonjs_bytecode_executable_locates_user_functions_too() {
    // `--bytecode` makes a CommonJS bundle, wrapped in a function, with JSC's bytecode cache beside it.
    check_compiled_with_sourcemap("bytecode", &["--bytecode", "--sourcemap"]);
}

#[test]
fn compiled_executable_without_sourcemap_names_the_original_file() {
    let scratch = Scratch::new("bundle");
    let executable = compile(&scratch, "app", &[]);
    let names = run_with_jitdump(Command::new(&executable), &scratch.0);
    let index = JsSourceIndex::from_executable(&executable).unwrap().expect("a Bun standalone executable");
    let mut located = 0;
    let mut exact_lines = 0;
    for raw in &names {
        if let Some(JsLocation { origin: JsOrigin::User(position), function }) = index.locate(raw) {
            if function == "(top level)" {
                continue;
            }
            assert_eq!(position.line_source, LineSource::Bundle, "{raw}");
            // The file is right; the line is counted in Bun's reprint of it, near the original one.
            let text = fs::read_to_string(app_dir().join(&position.file)).unwrap();
            assert!(text.lines().count() as u32 >= position.line / 2, "{raw}: {position:?}");
            located += 1;
            let name = name_of(raw);
            if !name.is_empty() && source_line(&position.file, position.line).contains(name) {
                exact_lines += 1;
            }
        }
    }
    eprintln!("without a sourcemap: {located} user code blocks located, {exact_lines} at their exact line");
    assert!(located >= 15, "{located}");
}

#[test]
fn a_file_that_is_not_a_compiled_executable_has_no_index() {
    assert!(JsSourceIndex::from_executable(&bun()).unwrap().is_none(), "bun itself embeds no module graph");
    let scratch = Scratch::new("not-elf");
    let text_file = scratch.0.join("notes.txt");
    fs::write(&text_file, "// @bun\n").unwrap();
    assert!(JsSourceIndex::from_executable(&text_file).unwrap().is_none());
    // A FIFO is refused at once, not waited on.
    let fifo = scratch.0.join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let error = JsSourceIndex::from_executable(&fifo).err().expect("a FIFO is not an executable");
    assert!(format!("{error:#}").contains("not a regular file"), "{error:#}");
}

#[test]
fn script_run_by_bun_is_located_where_its_text_survives_or_its_name_is_unique() {
    let scratch = Scratch::new("script");
    let mut command = Command::new(bun());
    command.arg(app_dir().join("main.ts"));
    let names = run_with_jitdump(command, &scratch.0);
    let index = JsSourceIndex::from_script(&app_dir().join("main.ts")).unwrap();
    assert_eq!(index.module_count(), 4, "main.ts and the three files it imports");
    let (mut user, mut by_hash, mut by_name) = (0, 0, 0);
    for raw in &names {
        let name = name_of(raw);
        let location = index.locate(raw).unwrap();
        match &location.origin {
            JsOrigin::User(position) if location.function != "(top level)" => {
                let line = source_line(&position.file, position.line);
                assert!(
                    line.contains(name)
                        || line.contains("constructor(")
                        || (name.is_empty() && is_anonymous_marker(&line)),
                    "{raw} at {position:?}: {line:?}"
                );
                match position.matched_by {
                    MatchedBy::Hash => by_hash += 1,
                    MatchedBy::Name => by_name += 1,
                }
            }
            JsOrigin::User(_) => {}
            _ => assert!(name.is_empty() || is_user_function(name) || location.origin == JsOrigin::Runtime, "{raw}"),
        }
        if is_user_function(name) {
            user += 1;
        }
    }
    eprintln!("bun main.ts: {user} named user code blocks, {by_hash} located by hash, {by_name} by name");
    assert!(by_hash + by_name >= user * 9 / 10, "{by_hash} + {by_name} of {user}");
}

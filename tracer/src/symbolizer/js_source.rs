//! Source locations for JavaScript JIT frames: JSC's jitdump names a code block `name#HASH`, where HASH is
//! the SHA-1 of the function's source text ([`CodeBlockHash`]). Hashing every function of the JavaScript
//! the target runs gives back, for each name, the function's place in that text, and from there its file
//! and line (through the bundle's `// <file>` comments, or a sourcemap).
//!
//! Where the text comes from:
//! - a `bun build --compile` executable embeds the exact bundle JSC parses, and with `--sourcemap` its
//!   sourcemap ([`JsSourceIndex::from_executable`]). Every function of the application is then indexed: a
//!   hash that is in none of them is Bun's or JSC's own code (builtins such as ReadableStream's `#pull`).
//! - a `bun file.ts` (or `.js`) target runs Bun's transpiled text, which only Bun can produce, and running
//!   Bun on a user's file can run the user's code (macros). [`JsSourceIndex::from_script`] hashes the files
//!   as they are on disk: functions whose text Bun's printer leaves unchanged match by hash, and the others,
//!   when their name is unique among the files' functions, by name ([`MatchedBy::Name`]).
//!
//! The index is pure data: build it once per executable or script, then [`JsSourceIndex::locate`] raw
//! jitdump names (`JSC-DFG: retainChunkForReplay#A70GFT`).

mod bun_sourcemap;
mod code_block_hash;
mod functions;
mod standalone;

use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Component, Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use oxc_span::SourceType;
use sourcemap::SourceMap;

pub use code_block_hash::{CodeBlockHash, Specialization};
use functions::{ImplicitConstructor, Site, SiteKind, find_sites};

/// A sourcemap file beside an executable, or a script file, is read up to this size.
const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;
/// At most this many `*.map` files beside an executable are read to find its bundle's.
const MAX_SOURCEMAP_CANDIDATES: usize = 32;
/// A script's relative imports are followed to at most this many files.
const MAX_SCRIPT_FILES: usize = 256;
/// The text JSC compiles for a class without a constructor of its own (`BuiltinExecutables.cpp`).
const DEFAULT_BASE_CONSTRUCTOR: &str = "() { }";
const DEFAULT_DERIVED_CONSTRUCTOR: &str = "(...args) { super(...args); }";

/// Where a JIT frame's code came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsLocation {
    /// The function's name as JSC gave it, `(anonymous)` when it has none, `(top level)` for the code of a
    /// module or script outside any function.
    pub function: String,
    pub origin: JsOrigin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsOrigin {
    /// The application's code, at this place.
    User(SourcePosition),
    /// Bun's or JSC's own JavaScript (builtins): no place in the application's sources.
    Runtime,
    /// Not found in the sources read, which are known to be partial (a script run by `bun file.ts`).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePosition {
    /// The original file, as the bundle or sourcemap names it (`server.ts`, `src/lib/util.ts`), or the
    /// script's path.
    pub file: String,
    /// 1-based, where the function is declared (its `function` keyword, method name, or arrow's first
    /// parameter).
    pub line: u32,
    /// 1-based, in UTF-16 units like JavaScript's own columns.
    pub column: u32,
    pub line_source: LineSource,
    pub matched_by: MatchedBy,
    /// How many other places have the very same text and name (the first in the text is reported).
    pub alternatives: u32,
}

/// How `line` was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineSource {
    /// The original file's line, through the sourcemap.
    SourceMap,
    /// The text JSC ran is the file itself: its line.
    Exact,
    /// A bundle without a sourcemap: the line counted from the `// <file>` comment that opens the file's
    /// part of the bundle. Bun reprints each file (types dropped, formatting normalized), so this is near
    /// the original line, not exactly it.
    Bundle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    /// The code block's hash is the hash of this function's text: certain.
    Hash,
    /// Only the name matched, and only this one function has it (a script whose transpiled text differs
    /// from the file): very likely, not certain.
    Name,
}

impl JsLocation {
    /// The frame name to show: `appendToHistory (server.ts:28)`, `(anonymous) (server.ts:131)`,
    /// `#pull [JS runtime]`; a function not found is `name [JS]`.
    pub fn frame_name(&self) -> String {
        match &self.origin {
            JsOrigin::User(position) => format!("{} ({}:{})", self.function, position.file, position.line),
            JsOrigin::Runtime => format!("{} [JS runtime]", self.function),
            JsOrigin::Unknown => format!("{} [JS]", self.function),
        }
    }
}

/// A raw jitdump name split into what `locate` needs.
struct JitName<'a> {
    name: &'a str,
    hash: CodeBlockHash,
}

/// `JSC-<tier>: <name>#<hash>` for a JavaScript tier; None for stubs, thunks and names without a hash.
fn parse_jit_name(raw: &str) -> Option<JitName<'_>> {
    let (profile, what) = raw.strip_prefix("JSC-")?.split_once(": ")?;
    if !matches!(profile, "LLInt" | "Baseline" | "DFG" | "FTL") {
        return None;
    }
    let (name, hash) = what.rsplit_once('#')?;
    Some(JitName { name, hash: CodeBlockHash::parse(hash)? })
}

/// A bundle's `// <file>` comment: from `offset` on, the text is that file's, its first line `line + 1`.
#[derive(Debug)]
struct FileMarker {
    offset: u32,
    line: u32,
    file: String,
}

/// One JavaScript text JSC runs.
struct Module {
    /// JSC's name for it (its source URL): `/$bunfs/root/app`, a script's path.
    #[allow(dead_code)] // read by module_urls
    url: String,
    /// The file name shown for its top level: `app`, `server.ts`.
    display: String,
    text: String,
    line_starts: Vec<u32>,
    sites: Vec<Site>,
    implicit_constructors: Vec<ImplicitConstructor>,
    markers: Vec<FileMarker>,
    sourcemap: Option<SourceMap>,
}

impl Module {
    fn new(url: String, display: String, text: String, source_type: SourceType, sourcemap: Option<SourceMap>) -> Self {
        let found = find_sites(&text, source_type);
        let line_starts =
            std::iter::once(0).chain(text.match_indices('\n').map(|(at, _)| at as u32 + 1)).collect::<Vec<_>>();
        let markers = file_markers(&text, &line_starts);
        Self {
            url,
            display,
            line_starts,
            sites: found.sites,
            implicit_constructors: found.implicit_constructors,
            markers,
            sourcemap,
            text,
        }
    }

    /// 0-based line and UTF-16 column of a byte offset.
    fn line_column(&self, offset: u32) -> (u32, u32) {
        let line = self.line_starts.partition_point(|&start| start <= offset).saturating_sub(1);
        let start = self.line_starts[line] as usize;
        let column = self.text.get(start..offset as usize).map_or(0, |prefix| prefix.encode_utf16().count());
        (line as u32, column as u32)
    }

    fn position(&self, offset: u32, matched_by: MatchedBy, alternatives: u32) -> SourcePosition {
        let (line, column) = self.line_column(offset);
        let position = |file: &str, line: u32, column: u32, line_source| SourcePosition {
            file: file.to_string(),
            line: line + 1,
            column: column + 1,
            line_source,
            matched_by,
            alternatives,
        };
        if let Some(map) = &self.sourcemap {
            if let Some(token) = map.lookup_token(line, column).filter(|token| token.get_dst_line() == line) {
                if let Some(file) = token.get_source() {
                    return position(file, token.get_src_line(), token.get_src_col(), LineSource::SourceMap);
                }
            }
        }
        match self.markers.iter().rev().find(|marker| marker.offset <= offset) {
            Some(marker) => position(&marker.file, line - marker.line - 1, column, LineSource::Bundle),
            None if self.markers.is_empty() => position(&self.display, line, column, LineSource::Exact),
            // Before the first file of a bundle: Bun's own preamble (helpers such as `__export`).
            None => position(&self.display, line, column, LineSource::Bundle),
        }
    }
}

/// What a CommonJS bundle (`--format=cjs`, `--bytecode`) puts before its first file's comment.
const CJS_WRAPPER: &str = "(function(exports, require, module, __filename, __dirname) {";

/// The `// <file>` lines with which Bun's bundler opens each original file: after the `// @bun` line (and
/// a CommonJS wrapper) or after an empty line, a path with no spaces.
fn file_markers(text: &str, line_starts: &[u32]) -> Vec<FileMarker> {
    if !text.starts_with("// @bun") {
        return Vec::new();
    }
    let mut markers = Vec::new();
    let mut previous = "";
    for (index, line) in text.split('\n').enumerate() {
        if index > 0 && (previous.is_empty() || previous.starts_with("// @bun")) {
            let line = if index == 1 { line.strip_prefix(CJS_WRAPPER).unwrap_or(line) } else { line };
            if let Some(file) = line.strip_prefix("// ") {
                let looks_like_path = !file.is_empty()
                    && !file.starts_with('@')
                    && !file.contains(char::is_whitespace)
                    && (file.contains('.') || file.contains('/'));
                if looks_like_path {
                    let offset = line_starts.get(index + 1).copied().unwrap_or(text.len() as u32);
                    markers.push(FileMarker { offset, line: index as u32, file: file.to_string() });
                }
            }
        }
        previous = line;
    }
    markers
}

#[derive(Clone, Copy)]
struct SiteRef {
    module: u32,
    site: u32,
}

/// Code block hashes of the target's JavaScript, and where each function is.
pub struct JsSourceIndex {
    modules: Vec<Module>,
    by_hash: HashMap<CodeBlockHash, Vec<SiteRef>>,
    /// Every JavaScript text of the application is indexed (a compiled executable's bundle, or a text
    /// given as the one JSC runs): a hash found nowhere is the runtime's own code.
    complete: bool,
    /// The hashes of JSC's default constructors, base and derived.
    default_constructors: [CodeBlockHash; 2],
}

impl JsSourceIndex {
    fn new(modules: Vec<Module>, complete: bool) -> Self {
        let mut by_hash: HashMap<CodeBlockHash, Vec<SiteRef>> = HashMap::new();
        for (module_index, module) in modules.iter().enumerate() {
            for (site_index, site) in module.sites.iter().enumerate() {
                let text = &module.text[site.hashed.start as usize..site.hashed.end as usize];
                let site_ref = SiteRef { module: module_index as u32, site: site_index as u32 };
                for &specialization in site.specializations {
                    by_hash.entry(CodeBlockHash::of(text, specialization)).or_default().push(site_ref);
                }
            }
        }
        let default_constructors = [DEFAULT_BASE_CONSTRUCTOR, DEFAULT_DERIVED_CONSTRUCTOR]
            .map(|text| CodeBlockHash::of(text, Specialization::Construct));
        Self { modules, by_hash, complete, default_constructors }
    }

    /// The JavaScript of a `bun build --compile` executable (`/proc/PID/exe` works): None when it is not
    /// one. The file is opened without blocking, must be a regular file, and only its module graph is read
    /// (at most 512 MiB). A sourcemap embedded with `--sourcemap` is used, else one beside the executable
    /// (`<path>.map`, or the `*.map` file with the bundle's debug id).
    pub fn from_executable(path: &Path) -> Result<Option<Self>> {
        let file = open_regular(path, false)?;
        let Some(embedded) = standalone::read_modules(&file).with_context(|| format!("reading {}", path.display()))?
        else {
            return Ok(None);
        };
        if embedded.is_empty() {
            return Ok(None);
        }
        let mut modules = Vec::new();
        for module in embedded {
            let sourcemap = match &module.sourcemap {
                Some(serialized) => match &serialized.mappings {
                    standalone::Mappings::Internal(blob) => {
                        bun_sourcemap::decode_internal(blob, &serialized.sources).ok()
                    }
                    standalone::Mappings::Vlq(mappings) => {
                        bun_sourcemap::decode_vlq(mappings, &serialized.sources).ok()
                    }
                },
                None => None,
            }
            .or_else(|| read_sourcemap_beside(path, &module.text));
            let display = module.name.rsplit('/').next().unwrap_or(&module.name).to_string();
            let source_type = if module.text.contains("@bun-cjs") { SourceType::cjs() } else { SourceType::mjs() };
            modules.push(Module::new(module.name, display, module.text, source_type, sourcemap));
        }
        Ok(Some(Self::new(modules, true)))
    }

    /// `text` is exactly what JSC runs under the source URL `url` (a `// @bun` file, or a bundle): every
    /// function of it is indexed, and a hash not in it is the runtime's.
    #[cfg_attr(not(test), allow(dead_code))] // the unit tests and tests/js_source.rs build from text
    pub fn from_source(text: &str, url: &str) -> Self {
        let display = url.rsplit('/').next().unwrap_or(url).to_string();
        let source_type = SourceType::from_path(url).unwrap_or_else(|_| SourceType::mjs());
        Self::new(vec![Module::new(url.to_string(), display, text.to_string(), source_type, None)], true)
    }

    /// A script run as `bun file.ts` or `bun file.js`, and the files it imports by relative path (static
    /// `import`/`export ... from`, up to 256 files under the script's directory). Nothing is executed; each
    /// file is opened without following a final symlink or blocking, must be regular, and is read up to 64
    /// MiB. Functions match by hash where Bun's transpiler left their text as written (always for a file
    /// that starts with `// @bun`, which Bun runs as it is), else by a name unique among the files.
    pub fn from_script(path: &Path) -> Result<Self> {
        let root = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut queue = vec![path.to_path_buf()];
        let mut seen = HashSet::new();
        let mut modules = Vec::new();
        while let Some(file_path) = queue.pop() {
            if modules.len() >= MAX_SCRIPT_FILES || !seen.insert(file_path.clone()) {
                continue;
            }
            let text = match read_text_file(&file_path) {
                Ok(text) => text,
                // The script itself must be readable; an import that is not is only left out.
                Err(error) if modules.is_empty() => return Err(error),
                Err(_) => continue,
            };
            let source_type = SourceType::from_path(&file_path).unwrap_or_else(|_| SourceType::ts());
            for specifier in relative_imports(&text, source_type) {
                if let Some(resolved) = resolve_relative(&file_path, &specifier, &root) {
                    queue.push(resolved);
                }
            }
            let url = file_path.to_string_lossy().into_owned();
            let display = file_path.strip_prefix(&root).unwrap_or(&file_path).to_string_lossy().into_owned();
            modules.push(Module::new(url, display, text, source_type, None));
        }
        Ok(Self::new(modules, false))
    }

    /// Where the code of a raw jitdump name comes from; None when the name is not a JavaScript function's
    /// (thunks, inline caches, regexps: `JSC-Thunk: DefaultCall`) or carries no hash.
    pub fn locate(&self, raw_jit_name: &str) -> Option<JsLocation> {
        let JitName { name, hash } = parse_jit_name(raw_jit_name)?;
        let shown = if name.is_empty() { "(anonymous)".to_string() } else { name.to_string() };
        let located = |function: String, origin| Some(JsLocation { function, origin });

        if let Some(candidates) = self.by_hash.get(&hash) {
            let named: Vec<SiteRef> = candidates.iter().copied().filter(|c| self.site(*c).name == name).collect();
            let chosen = if named.is_empty() { candidates.clone() } else { named };
            let first = chosen[0];
            let (module, site) = (&self.modules[first.module as usize], self.site(first));
            let alternatives = (chosen.len() - 1) as u32;
            let function = if site.kind == SiteKind::TopLevel { "(top level)".to_string() } else { shown };
            let position = if site.kind == SiteKind::TopLevel {
                SourcePosition {
                    file: module.display.clone(),
                    line: 1,
                    column: 1,
                    line_source: LineSource::Exact,
                    matched_by: MatchedBy::Hash,
                    alternatives,
                }
            } else {
                module.position(site.declared_at, MatchedBy::Hash, alternatives)
            };
            return located(function, JsOrigin::User(position));
        }

        let default_constructor = self.default_constructors.iter().position(|&constructor| constructor == hash);
        if let Some(derived) = default_constructor.map(|index| index == 1) {
            let classes: Vec<(&Module, &ImplicitConstructor)> = self
                .modules
                .iter()
                .flat_map(|module| module.implicit_constructors.iter().map(move |class| (module, class)))
                .filter(|(_, class)| !name.is_empty() && class.class_name == name && class.derived == derived)
                .collect();
            return match classes.first() {
                Some((module, class)) => located(
                    shown,
                    JsOrigin::User(module.position(class.declared_at, MatchedBy::Hash, classes.len() as u32 - 1)),
                ),
                None if self.complete => located(shown, JsOrigin::Runtime),
                None => located(shown, JsOrigin::Unknown),
            };
        }

        if self.complete {
            return located(shown, JsOrigin::Runtime);
        }
        // A partial index (a script): the name, when exactly one function of the files bears it.
        if name.is_empty() {
            return located(shown, JsOrigin::Unknown);
        }
        let mut places: Vec<(usize, u32)> = Vec::new();
        for (module_index, module) in self.modules.iter().enumerate() {
            for site in &module.sites {
                if site.kind != SiteKind::TopLevel
                    && site.name == name
                    && !places.contains(&(module_index, site.declared_at))
                {
                    places.push((module_index, site.declared_at));
                }
            }
        }
        match places.as_slice() {
            [] => located(shown, JsOrigin::Runtime),
            [(module, offset)] => {
                located(shown, JsOrigin::User(self.modules[*module].position(*offset, MatchedBy::Name, 0)))
            }
            _ => located(shown, JsOrigin::Unknown),
        }
    }

    fn site(&self, site_ref: SiteRef) -> &Site {
        &self.modules[site_ref.module as usize].sites[site_ref.site as usize]
    }

    /// How many texts are indexed (embedded modules, or a script and its imports).
    pub fn module_count(&self) -> usize {
        self.modules.len()
    }

    /// The source URLs of the indexed texts, as JSC names their top level.
    #[allow(dead_code)] // tests/js_source.rs checks what was indexed
    pub fn module_urls(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(|module| module.url.as_str())
    }
}

/// The script a `bun` command line runs (`bun server.ts`, `bun run --smol ./src/main.js`), as written (the
/// caller resolves it against the process's working directory): the first argument with a JavaScript or
/// TypeScript extension that is not the value of an option. None for `bun -e ...`, a package.json script
/// name, or a compiled executable's own arguments.
pub fn bun_script_argument<'a>(argv: &[&'a str]) -> Option<&'a str> {
    /// Bun's options that take a separate value (`--preload x`).
    const WITH_VALUE: [&str; 14] = [
        "-r",
        "--preload",
        "--require",
        "--import",
        "--cwd",
        "-c",
        "--config",
        "--env-file",
        "--define",
        "-d",
        "--loader",
        "-l",
        "--conditions",
        "--main-fields",
    ];
    const EXTENSIONS: [&str; 8] = [".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts"];
    let mut arguments = argv.iter().skip(1);
    while let Some(&argument) = arguments.next() {
        if argument == "-e" || argument == "--eval" || argument == "-p" || argument == "--print" {
            return None;
        }
        if WITH_VALUE.contains(&argument) {
            arguments.next();
            continue;
        }
        if argument.starts_with('-') || argument == "run" {
            continue;
        }
        return EXTENSIONS.iter().any(|extension| argument.ends_with(extension)).then_some(argument);
    }
    None
}

/// Opens a file of the target's without blocking (a FIFO would hang a plain open), checks it is regular.
fn open_regular(path: &Path, no_follow: bool) -> Result<File> {
    let flags = libc::O_NONBLOCK | libc::O_NOCTTY | if no_follow { libc::O_NOFOLLOW } else { 0 };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() || file_type.is_fifo() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(file)
}

fn read_capped(file: File, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_TEXT_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_TEXT_FILE_BYTES {
        bail!("{} is larger than {MAX_TEXT_FILE_BYTES} bytes", path.display());
    }
    Ok(bytes)
}

fn read_text_file(path: &Path) -> Result<String> {
    let bytes = read_capped(open_regular(path, true)?, path)?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// A sourcemap file beside the executable for a bundle: `<executable>.map`, else a `*.map` file of the same
/// directory whose `debugId` is the bundle's (`//# debugId=...` at its end; `bun build --compile
/// --sourcemap` writes `<entry>.js.map` beside the executable).
fn read_sourcemap_beside(executable: &Path, bundle: &str) -> Option<SourceMap> {
    let mut own = executable.as_os_str().to_owned();
    own.push(".map");
    if let Some(map) = read_capped_file(Path::new(&own)).and_then(|bytes| SourceMap::from_slice(&bytes).ok()) {
        return Some(map);
    }
    let debug_id = bundle.trim_end().rsplit_once("//# debugId=")?.1.trim();
    let directory = executable.parent()?;
    let candidates = std::fs::read_dir(directory).ok()?.filter_map(|entry| entry.ok()).filter(|entry| {
        entry.file_name().to_string_lossy().ends_with(".map") && entry.file_type().is_ok_and(|kind| kind.is_file())
    });
    for entry in candidates.take(MAX_SOURCEMAP_CANDIDATES) {
        let Some(bytes) = read_capped_file(&entry.path()) else { continue };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        if json.get("debugId").and_then(|id| id.as_str()).is_some_and(|id| id.eq_ignore_ascii_case(debug_id)) {
            return SourceMap::from_slice(&bytes).ok();
        }
    }
    None
}

fn read_capped_file(path: &Path) -> Option<Vec<u8>> {
    read_capped(open_regular(path, true).ok()?, path).ok()
}

/// The specifiers of static imports and re-exports that are relative paths (`./x`, `../y`).
fn relative_imports(text: &str, source_type: SourceType) -> Vec<String> {
    let allocator = oxc_allocator::Allocator::default();
    let parsed = oxc_parser::Parser::new(&allocator, text, source_type).parse();
    parsed
        .module_record
        .requested_modules
        .keys()
        .map(|specifier| specifier.to_string())
        .filter(|specifier| specifier.starts_with("./") || specifier.starts_with("../"))
        .collect()
}

/// A relative specifier as Bun resolves it for a local file (exact, then with an extension, then an
/// `index` file), kept only if it stays under `root`.
fn resolve_relative(from: &Path, specifier: &str, root: &Path) -> Option<PathBuf> {
    let mut base = from.parent()?.to_path_buf();
    for component in Path::new(specifier).components() {
        match component {
            Component::ParentDir => {
                base.pop();
            }
            Component::Normal(part) => base.push(part),
            _ => {}
        }
    }
    if !base.starts_with(root) {
        return None;
    }
    const EXTENSIONS: [&str; 6] = ["ts", "tsx", "js", "jsx", "mts", "mjs"];
    let with_extension = |path: &Path, extension: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(".");
        name.push(extension);
        PathBuf::from(name)
    };
    let mut candidates = vec![base.clone()];
    candidates.extend(EXTENSIONS.iter().map(|extension| with_extension(&base, extension)));
    // `./x.js` written for a `./x.ts` file, as TypeScript allows.
    if let Some(stem) = base.extension().filter(|extension| *extension == "js").and(base.file_stem()) {
        candidates.push(base.with_file_name(stem).with_extension("ts"));
    }
    candidates.extend(EXTENSIONS.iter().map(|extension| base.join(format!("index.{extension}"))));
    candidates.into_iter().find(|candidate| std::fs::symlink_metadata(candidate).is_ok_and(|meta| meta.is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundle of tests/fixtures/js_source/kinds.js as `bun build --compile` (Bun 1.3.13) embedded it.
    const KINDS_BUNDLE: &str = include_str!("../../tests/fixtures/js_source/kinds.bundle.js");
    /// `name#hash` of every JavaScript code block in the jitdump of that executable's run.
    const KINDS_JITDUMP_NAMES: &str = include_str!("../../tests/fixtures/js_source/kinds.jitdump-names.txt");

    fn user_line(location: &JsLocation) -> Option<(String, u32)> {
        match &location.origin {
            JsOrigin::User(position) => Some((position.file.clone(), position.line)),
            _ => None,
        }
    }

    #[test]
    fn every_user_function_of_the_bundle_is_found_and_builtins_are_runtime() {
        let index = JsSourceIndex::from_source(KINDS_BUNDLE, "/$bunfs/root/kinds");
        let builtins = ["next", "generatorResume", "asyncGeneratorResumeNext"];
        let mut located = 0;
        for name in KINDS_JITDUMP_NAMES.lines().filter(|line| !line.is_empty()) {
            let location = index.locate(&format!("JSC-DFG: {name}")).unwrap();
            let function = name.rsplit_once('#').unwrap().0;
            if builtins.contains(&function) {
                assert_eq!(location.origin, JsOrigin::Runtime, "{name}");
                continue;
            }
            let (file, line) = user_line(&location).unwrap_or_else(|| panic!("{name}: {location:?}"));
            located += 1;
            if location.function == "(top level)" {
                assert_eq!(file, "kinds", "{name}");
                continue;
            }
            assert_eq!(file, "kinds.js", "{name}");
            // The bundle line (counted from `// kinds.js`) holds the function's name (a constructor's is its
            // class's), unless it has none.
            if !function.is_empty() {
                let bundle_line = KINDS_BUNDLE.lines().nth(line as usize + 1).unwrap();
                let bare = function.trim_start_matches('#');
                assert!(
                    bundle_line.contains(bare) || bundle_line.contains("constructor("),
                    "{name} at bundle line {line}: {bundle_line:?}"
                );
            }
        }
        assert!(located >= 40, "{located} located");
    }

    #[test]
    fn tells_functions_with_the_same_text_apart_by_name() {
        // `gen` and `asyncGen` have the same text, hence the same hash.
        let index = JsSourceIndex::from_source(KINDS_BUNDLE, "/$bunfs/root/kinds");
        let gen = user_line(&index.locate("JSC-FTL: gen#EBJPzf").unwrap()).unwrap();
        let async_gen = user_line(&index.locate("JSC-FTL: asyncGen#EBJPzf").unwrap()).unwrap();
        assert_ne!(gen, async_gen);
    }

    #[test]
    fn only_javascript_tiers_with_a_hash_are_located() {
        let index = JsSourceIndex::from_source("// @bun\nfunction f(a) { return a; }\n", "/t/x.js");
        assert_eq!(index.locate("JSC-Thunk: DefaultCall"), None);
        assert_eq!(index.locate("JSC-InlineCache: GetById Load handler"), None);
        assert_eq!(index.locate("JSC-DFG: f"), None);
        assert_eq!(index.locate("JSC-DFG: f#<no-hash>"), None);
        let hash = CodeBlockHash::of("(a) { return a; }", Specialization::Call);
        let location = index.locate(&format!("JSC-Baseline: f#{hash}")).unwrap();
        assert_eq!(location.frame_name(), "f (x.js:2)");
        let pull = index.locate("JSC-DFG: #pull#BxZ2aa").unwrap();
        assert_eq!(pull.frame_name(), "#pull [JS runtime]");
    }

    #[test]
    fn a_sourcemap_beside_the_executable_is_found_by_the_bundles_debug_id() {
        let dir = std::env::temp_dir().join(format!("leaktrace-js-source-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let map = include_bytes!("../../tests/fixtures/js_source/main.js.map");
        std::fs::write(dir.join("main.js.map"), map).unwrap();
        let other = String::from_utf8_lossy(map)
            .replace("FF372DF5108017CA64756E2164756E21", "0123456789ABCDEF0123456789ABCDEF");
        std::fs::write(dir.join("aaa.js.map"), other).unwrap();
        let executable = dir.join("app");
        let bundle = "// @bun\n// util.ts\nfunction add(a, b) {\n  return a + b;\n}\n\n//# debugId=FF372DF5108017CA64756E2164756E21\n";
        let found = read_sourcemap_beside(&executable, bundle).expect("main.js.map has the bundle's debug id");
        let token = found.lookup_token(2, 9).unwrap();
        assert_eq!((token.get_source(), token.get_src_line()), (Some("util.ts"), 0));
        assert!(
            read_sourcemap_beside(&executable, "// @bun\n//# debugId=00000000000000000000000000000000\n").is_none()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_the_script_of_a_bun_command_line() {
        assert_eq!(bun_script_argument(&["bun", "server.ts"]), Some("server.ts"));
        assert_eq!(
            bun_script_argument(&["/usr/bin/bun", "run", "--smol", "./src/main.js", "--port", "80"]),
            Some("./src/main.js")
        );
        assert_eq!(bun_script_argument(&["bun", "--preload", "./setup.ts", "app.mts"]), Some("app.mts"));
        assert_eq!(bun_script_argument(&["bun", "-e", "console.log(1)"]), None);
        assert_eq!(bun_script_argument(&["bun", "run", "start"]), None, "a package.json script");
        assert_eq!(bun_script_argument(&["dispatch-server", "--port", "80"]), None);
    }

    #[test]
    fn the_top_level_is_the_whole_text() {
        let text = "// @bun\nlet x = 1;\n";
        let index = JsSourceIndex::from_source(text, "/t/main.js");
        let hash = CodeBlockHash::of(text, Specialization::Call);
        let location = index.locate(&format!("JSC-Baseline: /t/main.js#{hash}")).unwrap();
        assert_eq!(location.frame_name(), "(top level) (main.js:1)");
    }
}

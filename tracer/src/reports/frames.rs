//! What kind of code a reported frame is, read from its name: the application's JavaScript, the
//! runtime's (Bun's and JavaScriptCore's builtins, JIT stubs), or native code. Suspects are named after the
//! application's code, and say which runtime code allocated on its behalf.

/// JavaScript functions of Bun and JavaScriptCore themselves, seen on allocation stacks, that a reader
/// cannot act on. Private builtins carry a `#` (`#pull`); these are the public-looking ones.
const RUNTIME_FUNCTIONS: &[&str] = &[
    "pullAlgorithm",
    "newPromiseCapability",
    "Dequeue",
    "Enqueue",
    "promiseReactionJob",
    "promiseReactionJobWithoutPromise",
    "promiseResolveThenableJob",
    "resolveWithoutPromise",
    "fulfillPromise",
    "asyncFunctionResume",
    "asyncGeneratorResume",
    "processTicksAndRejections",
    "readableStreamDefaultReaderRead",
    "readableStreamPipeTo",
    "readDirectStream",
    "createFIFO",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameClass {
    /// JavaScript of the application: a named function, or one located in its sources.
    UserJs,
    /// JavaScript of the runtime: builtins, and anonymous JIT code that no source location names.
    RuntimeJs,
    /// JavaScriptCore's own JIT code: thunks, inline caches, OSR entries and exits.
    JitStub,
    /// Native code with a symbol.
    Native,
    /// Native code without one (`module+0xOFFSET`, `[unknown]`).
    Unnamed,
}

impl FrameClass {
    pub fn is_javascript(self) -> bool {
        matches!(self, FrameClass::UserJs | FrameClass::RuntimeJs)
    }
}

pub fn classify(frame: &str) -> FrameClass {
    if frame.starts_with("[JSC ") {
        return FrameClass::JitStub;
    }
    if let Some(function) = javascript_function(frame) {
        let located = source_location(frame).is_some();
        let runtime = function.starts_with('#')
            || function.starts_with('@')
            || frame.ends_with(" [JS runtime]")
            || RUNTIME_FUNCTIONS.contains(&function)
            || (!located && function == "(anonymous)");
        return if runtime { FrameClass::RuntimeJs } else { FrameClass::UserJs };
    }
    if frame.starts_with("[unknown]") || is_module_offset(frame) { FrameClass::Unnamed } else { FrameClass::Native }
}

/// The function of a JavaScript frame, without its tier or location: `buildMessage [JS:DFG]`,
/// `buildMessage [JS]` and `buildMessage (server.ts:28)` are all `buildMessage`. `None` for other frames.
pub fn javascript_function(frame: &str) -> Option<&str> {
    if let Some((function, tier)) = frame.rsplit_once(" [JS") {
        if tier.ends_with(']') {
            return Some(function);
        }
    }
    source_location(frame).map(|(function, _)| function)
}

/// `name (file:line)` or `name (file:line:column)`: the function and its location.
pub fn source_location(frame: &str) -> Option<(&str, &str)> {
    let inner = frame.strip_suffix(')')?;
    let (function, location) = inner.rsplit_once(" (")?;
    let (file, line) = location.rsplit_once(':')?;
    let (file, line) = match file.rsplit_once(':') {
        Some((file, first)) if first.bytes().all(|b| b.is_ascii_digit()) && !first.is_empty() => (file, first),
        _ => (file, line),
    };
    (!file.is_empty() && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())).then_some((function, location))
}

/// The file and line of a located JavaScript frame (`name (file:line)` or `name (file:line:column)`).
pub fn file_and_line(frame: &str) -> Option<(&str, u32)> {
    let (_, location) = source_location(frame)?;
    let (rest, last) = location.rsplit_once(':')?;
    match rest.rsplit_once(':') {
        Some((file, line)) if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) => {
            Some((file, line.parse().ok()?))
        }
        _ => Some((rest, last.parse().ok()?)),
    }
}

/// A frame as a site is named: JavaScript without its JIT tier (`buildMessage [JS:FTL]` -> `buildMessage`;
/// a location is kept), anything else as it is.
pub fn site_name(frame: &str) -> String {
    match frame.rsplit_once(" [JS") {
        Some((function, tier)) if tier.ends_with(']') => function.to_string(),
        _ => frame.to_string(),
    }
}

fn is_module_offset(frame: &str) -> bool {
    frame.rsplit_once("+0x").is_some_and(|(module, offset)| {
        !module.is_empty() && !module.contains(' ') && offset.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_told_apart_by_their_names() {
        for (frame, class) in [
            ("buildMessage [JS:DFG]", FrameClass::UserJs),
            ("appendToHistory (server.ts:28)", FrameClass::UserJs),
            ("(anonymous) (server.ts:131:7)", FrameClass::UserJs),
            ("appendToHistory [JS]", FrameClass::UserJs),
            ("#pull [JS:Baseline]", FrameClass::RuntimeJs),
            ("pullAlgorithm [JS:DFG]", FrameClass::RuntimeJs),
            ("(anonymous) [JS:DFG]", FrameClass::RuntimeJs),
            ("readMany [JS runtime]", FrameClass::RuntimeJs),
            ("[JSC thunk] DefaultCall", FrameClass::JitStub),
            ("dispatch-server+0x542bd15", FrameClass::Unnamed),
            ("[unknown] 0x7f001234", FrameClass::Unnamed),
            ("operator new(unsigned long)", FrameClass::Native),
            ("main", FrameClass::Native),
            ("std::vector<int>::push_back(int const&)", FrameClass::Native),
        ] {
            assert_eq!(classify(frame), class, "{frame}");
        }
    }

    #[test]
    fn sites_lose_the_tier_and_keep_the_location() {
        assert_eq!(site_name("buildMessage [JS:FTL]"), "buildMessage");
        assert_eq!(site_name("appendToHistory (server.ts:28)"), "appendToHistory (server.ts:28)");
        assert_eq!(site_name("leak"), "leak");
        assert_eq!(javascript_function("appendToHistory (server.ts:28:3)"), Some("appendToHistory"));
        assert_eq!(javascript_function("main"), None);
        assert_eq!(javascript_function("foo(int)"), None);
        assert_eq!(file_and_line("appendToHistory (server.ts:28)"), Some(("server.ts", 28)));
        assert_eq!(file_and_line("(anonymous) (src/a:b.ts:131:7)"), Some(("src/a:b.ts", 131)));
        assert_eq!(file_and_line("main"), None);
    }
}

//! tracefs: where tracepoints are described. Mounted when it is not, and read to check that the kernel's
//! record layouts are the ones our kernel programs were written for.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use tracer_common::tracepoints::{EXPECTED_FIELDS, ExpectedField};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Environment variable naming another tracefs root. Only the layout check reads it; tests use it to
/// stand in for kernels they cannot boot.
pub const TRACEFS_OVERRIDE: &str = "LEAKTRACE_TRACEFS";

/// The tracefs root, mounting tracefs at /sys/kernel/tracing first when it is not mounted anywhere.
pub fn ensure_mounted() -> Result<PathBuf> {
    if let Some(root) = std::env::var_os(TRACEFS_OVERRIDE) {
        return Ok(PathBuf::from(root));
    }
    for root in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(root).join("events").is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    mount_tracefs().with_context(|| {
        format!("tracefs is not mounted and mounting it on {TRACEFS} failed: mount it (mount -t tracefs tracefs {TRACEFS}) and try again")
    })?;
    eprintln!("dispatch-leaktrace: mounted tracefs on {TRACEFS}");
    Ok(PathBuf::from(TRACEFS))
}

fn mount_tracefs() -> io::Result<()> {
    // cannot fail: constants without a NUL byte
    let source = CString::new("tracefs").expect("no NUL");
    let target = CString::new(TRACEFS).expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), source.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Checks every field the kernel programs read against the running kernel's format files.
pub fn check_layouts(root: &Path) -> Result<()> {
    let mut checked: Option<(&str, &str, Vec<FormatField>)> = None;
    for expected in EXPECTED_FIELDS {
        let fields = match &checked {
            Some((category, event, fields)) if *category == expected.category && *event == expected.event => fields,
            _ => {
                let path = root.join("events").join(expected.category).join(expected.event).join("format");
                let text = fs::read_to_string(&path).map_err(|error| match error.kind() {
                    io::ErrorKind::NotFound => anyhow::anyhow!(
                        "this kernel has no tracepoint {}/{} ({} missing): it needs CONFIG_FTRACE_SYSCALLS and tracepoints enabled",
                        expected.category,
                        expected.event,
                        path.display()
                    ),
                    _ => anyhow::anyhow!("cannot read {}: {error}", path.display()),
                })?;
                &checked.insert((expected.category, expected.event, parse_format(&text))).2
            }
        };
        check_field(expected, fields)?;
    }
    Ok(())
}

fn check_field(expected: &ExpectedField, fields: &[FormatField]) -> Result<()> {
    let Some(found) = fields.iter().find(|f| f.name == expected.field) else {
        bail!(
            "tracepoint {}/{} has no field `{}` on this kernel: this version of dispatch-leaktrace cannot trace it",
            expected.category,
            expected.event,
            expected.field
        );
    };
    if found.offset != expected.offset || found.size != expected.size {
        bail!(
            "tracepoint {}/{} field `{}` is at offset {} size {} on this kernel, not offset {} size {}: this version of dispatch-leaktrace cannot trace it",
            expected.category,
            expected.event,
            expected.field,
            found.offset,
            found.size,
            expected.offset,
            expected.size
        );
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// Parses the `field:` lines of a tracepoint `format` file, e.g.
/// `field:unsigned long addr;<TAB>offset:16;<TAB>size:8;<TAB>signed:0;`.
pub fn parse_format(text: &str) -> Vec<FormatField> {
    text.lines().filter_map(parse_field_line).collect()
}

fn parse_field_line(line: &str) -> Option<FormatField> {
    let mut declaration = None;
    let mut offset = None;
    let mut size = None;
    for part in line.trim().split(';') {
        let (key, value) = part.trim().split_once(':')?;
        match key {
            "field" => declaration = Some(value),
            "offset" => offset = value.parse().ok(),
            "size" => size = value.parse().ok(),
            _ => {}
        }
        if declaration.is_some() && offset.is_some() && size.is_some() {
            break;
        }
    }
    // The name is the declaration's last word, without an array suffix: `char comm[16]` -> `comm`.
    let name = declaration?.split_whitespace().last()?;
    let name = name.split('[').next()?.trim_start_matches('*');
    Some(FormatField { name: name.to_string(), offset: offset?, size: size? })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MMAP_FORMAT: &str = "name: sys_enter_mmap
ID: 112
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned long addr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:char comm[16];\toffset:24;\tsize:16;\tsigned:0;
\tfield:const char * buf;\toffset:40;\tsize:8;\tsigned:0;

print fmt: \"addr: 0x%08lx\", ((unsigned long)(REC->addr))
";

    #[test]
    fn parses_names_offsets_and_sizes() {
        let fields = parse_format(MMAP_FORMAT);
        let names: Vec<_> = fields.iter().map(|f| (f.name.as_str(), f.offset, f.size)).collect();
        assert_eq!(
            names,
            vec![("common_type", 0, 2), ("__syscall_nr", 8, 4), ("addr", 16, 8), ("comm", 24, 16), ("buf", 40, 8)]
        );
    }

    #[test]
    fn a_moved_field_is_refused_with_both_layouts_named() {
        let expected =
            ExpectedField { category: "syscalls", event: "sys_enter_mmap", field: "addr", offset: 24, size: 8 };
        let error = check_field(&expected, &parse_format(MMAP_FORMAT)).unwrap_err().to_string();
        assert!(error.contains("offset 16 size 8") && error.contains("not offset 24 size 8"), "{error}");
    }

    #[test]
    fn a_missing_field_is_refused() {
        let expected =
            ExpectedField { category: "syscalls", event: "sys_enter_mmap", field: "len", offset: 24, size: 8 };
        assert!(check_field(&expected, &parse_format(MMAP_FORMAT)).is_err());
    }
}

//! The JavaScript inside a `bun build --compile` executable: Bun's "standalone module graph".
//!
//! # Where it is (checked on Bun 1.3.13, linux x64)
//! - An ELF section `.bun` (PROGBITS, alloc, in a PT_LOAD of its own, near the end of the file) holds a
//!   little-endian u64 length, then that many bytes of graph. Older Bun appended the graph to the end of
//!   the file instead, followed by the u64 total size of the file: both are read, the section first. The
//!   section header table says where the section is, so nothing is scanned.
//! - The graph ends with `Offsets` (32 bytes: `byte_count` u64, `modules` StringPointer, `entry_point_id`
//!   u32, `compile_exec_argv` StringPointer, 4 more bytes in 1.3.13) and the trailer `"\n---- Bun! ----\n"`.
//!   A StringPointer is (offset u32, length u32) into the graph.
//! - `modules` is an array of records, one per embedded file: StringPointers to its name
//!   (`/$bunfs/root/<outfile>`), contents, serialized sourcemap and bytecode, then more StringPointers in
//!   newer versions (6 in 1.3.13), then 4 bytes: encoding (0 binary, 1 latin1, 2 utf8), loader (0 jsx, 1 js,
//!   2 ts, 3 tsx, ...), module format, side. The record size is not stored: it is the known size whose
//!   records all point inside the graph at NUL-terminated names and contents.
//! - A JavaScript file's contents are the bundle exactly as JSC parses it: `// @bun`, then each original
//!   file introduced by a `// <path>` comment. Bun hands JSC contents marked latin1 as Latin-1 text (one
//!   character per byte); its bundler writes them in ASCII.
//! - With `--sourcemap`, the sourcemap is serialized: u32 count of source files, u32 length of the map,
//!   `count` StringPointers to file names and `count` to zstd-compressed contents (relative to the
//!   serialized map), then the map: Bun's InternalSourceMap blob in 1.3.13 (see [`super::bun_sourcemap`]),
//!   a VLQ `mappings` string in older versions.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
};

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection, ReadCache};

const TRAILER: &[u8] = b"\n---- Bun! ----\n";
const OFFSETS_SIZE: usize = 32;
const STRING_POINTER_SIZE: usize = 8;
/// Module record sizes of known Bun versions, the newest first: 1.3.13 has 6 StringPointers and 4 bytes
/// of flags; older versions had 4 StringPointers.
const RECORD_SIZES: [usize; 4] = [52, 44, 36, 60];
/// More than any program's JavaScript; bounds what a file another user controls can make us read.
pub const MAX_GRAPH_BYTES: u64 = 512 << 20;

/// Loaders whose contents JSC runs as JavaScript (Bun's `options.Loader`: jsx, js, ts, tsx).
const JAVASCRIPT_LOADERS: u8 = 3;
const ENCODING_LATIN1: u8 = 1;

/// One embedded JavaScript file.
#[derive(Debug)]
pub struct EmbeddedModule {
    /// Bun's name for it, the source URL JSC knows it by: `/$bunfs/root/app`.
    pub name: String,
    /// The text as JSC sees it.
    pub text: String,
    pub sourcemap: Option<SerializedSourceMap>,
}

/// A module's sourcemap as Bun embeds it: the original files' names and the mappings.
#[derive(Debug)]
pub struct SerializedSourceMap {
    pub sources: Vec<String>,
    pub mappings: Mappings,
}

#[derive(Debug)]
pub enum Mappings {
    /// Bun's InternalSourceMap blob (1.3.13).
    Internal(Vec<u8>),
    /// A standard VLQ `mappings` string (older versions).
    Vlq(String),
}

/// The JavaScript modules embedded in `file`, an opened executable; None when it has no module graph.
pub fn read_modules(file: &File) -> Result<Option<Vec<EmbeddedModule>>> {
    let Some(graph) = read_graph(file)? else { return Ok(None) };
    parse_graph(&graph).map(Some)
}

/// The graph's bytes, from the `.bun` section or else from the end of the file.
fn read_graph(file: &File) -> Result<Option<Vec<u8>>> {
    let cache = ReadCache::new(file);
    if let Ok(elf) = object::File::parse(&cache) {
        if let Some(section) = elf.section_by_name(".bun") {
            if section.size() > MAX_GRAPH_BYTES + 8 {
                bail!("its .bun section is {} bytes, more than the {MAX_GRAPH_BYTES} read", section.size());
            }
            let data = section.data().context("reading its .bun section")?;
            let Some(length) = data.get(..8) else { bail!("its .bun section is shorter than its length field") };
            let length = u64::from_le_bytes(length.try_into().expect("eight bytes"));
            if length == 0 {
                // Bun itself has an empty `.bun` section, for `bun build --compile` to fill.
                return Ok(None);
            }
            let Some(graph) = usize::try_from(length).ok().and_then(|length| data.get(8..8 + length)) else {
                bail!("its .bun section says it holds {length} bytes but has {}", data.len() - 8);
            };
            return Ok(Some(graph.to_vec()));
        }
    }
    read_appended_graph(file)
}

/// Older Bun: graph, then the file's total size as u64, at the end of the executable.
fn read_appended_graph(mut file: &File) -> Result<Option<Vec<u8>>> {
    let file_size = file.metadata()?.len();
    let tail_size = (TRAILER.len() + 8) as u64;
    if file_size < tail_size + OFFSETS_SIZE as u64 {
        return Ok(None);
    }
    let mut tail = vec![0u8; TRAILER.len() + 8];
    file.seek(SeekFrom::Start(file_size - tail_size))?;
    file.read_exact(&mut tail)?;
    if &tail[..TRAILER.len()] != TRAILER {
        return Ok(None);
    }
    let mut offsets = [0u8; OFFSETS_SIZE];
    file.seek(SeekFrom::Start(file_size - tail_size - OFFSETS_SIZE as u64))?;
    file.read_exact(&mut offsets)?;
    let byte_count = u64::from_le_bytes(offsets[..8].try_into().expect("eight bytes"));
    let graph_size = byte_count + (OFFSETS_SIZE + TRAILER.len()) as u64;
    if byte_count > MAX_GRAPH_BYTES || graph_size + 8 > file_size {
        bail!("its appended module graph claims {byte_count} bytes, which the file cannot hold");
    }
    let mut graph = vec![0u8; graph_size as usize];
    file.seek(SeekFrom::Start(file_size - 8 - graph_size))?;
    file.read_exact(&mut graph)?;
    Ok(Some(graph))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The bytes a StringPointer at `at` in `table` designates in `base`.
fn pointed<'a>(base: &'a [u8], table: &[u8], at: usize) -> Option<&'a [u8]> {
    let offset = u32_at(table, at)? as usize;
    let length = u32_at(table, at + 4)? as usize;
    base.get(offset..offset.checked_add(length)?)
}

/// Like [`pointed`], for strings Bun writes with a NUL after them (names and contents).
fn pointed_nul_terminated<'a>(base: &'a [u8], table: &[u8], at: usize) -> Option<&'a [u8]> {
    let offset = u32_at(table, at)? as usize;
    let length = u32_at(table, at + 4)? as usize;
    if length == 0 {
        return Some(&[]);
    }
    (base.get(offset.checked_add(length)?) == Some(&0)).then(|| &base[offset..offset + length])
}

fn parse_graph(graph: &[u8]) -> Result<Vec<EmbeddedModule>> {
    if !graph.ends_with(TRAILER) || graph.len() < TRAILER.len() + OFFSETS_SIZE {
        bail!("its module graph does not end with Bun's trailer");
    }
    let offsets = &graph[graph.len() - TRAILER.len() - OFFSETS_SIZE..graph.len() - TRAILER.len()];
    let Some(records) = pointed(graph, offsets, 8) else { bail!("its module list points outside the graph") };
    let Some(record_size) = RECORD_SIZES.into_iter().find(|&size| records_fit(graph, records, size)) else {
        bail!("its module list ({} bytes) matches no known layout of Bun's module records", records.len());
    };
    let mut modules = Vec::new();
    for record in records.chunks_exact(record_size) {
        let name = pointed_nul_terminated(graph, record, 0).expect("checked by records_fit");
        let contents = pointed_nul_terminated(graph, record, STRING_POINTER_SIZE).expect("checked by records_fit");
        let flags = &record[record_size - 4..];
        let (encoding, loader) = (flags[0], flags[1]);
        if loader > JAVASCRIPT_LOADERS && !contents.starts_with(b"// @bun") {
            continue;
        }
        let text = if encoding == ENCODING_LATIN1 {
            contents.iter().map(|&byte| byte as char).collect()
        } else {
            String::from_utf8_lossy(contents).into_owned()
        };
        let sourcemap = pointed(graph, record, 2 * STRING_POINTER_SIZE)
            .filter(|bytes| !bytes.is_empty())
            .and_then(parse_serialized_sourcemap);
        modules.push(EmbeddedModule { name: String::from_utf8_lossy(name).into_owned(), text, sourcemap });
    }
    Ok(modules)
}

fn records_fit(graph: &[u8], records: &[u8], size: usize) -> bool {
    !records.is_empty()
        && records.len().is_multiple_of(size)
        && records.chunks_exact(size).all(|record| {
            pointed_nul_terminated(graph, record, 0)
                .is_some_and(|name| name.starts_with(b"/$bunfs/") || name.starts_with(b"B:/~BUN/"))
                && pointed_nul_terminated(graph, record, STRING_POINTER_SIZE).is_some()
                && pointed(graph, record, 2 * STRING_POINTER_SIZE).is_some()
        })
}

fn parse_serialized_sourcemap(bytes: &[u8]) -> Option<SerializedSourceMap> {
    let count = u32_at(bytes, 0)? as usize;
    let map_length = u32_at(bytes, 4)? as usize;
    let names_at = 8;
    let map_at = names_at + count.checked_mul(2 * STRING_POINTER_SIZE)?;
    let map = bytes.get(map_at..map_at.checked_add(map_length)?)?;
    let sources = (0..count)
        .map(|index| {
            pointed(bytes, bytes, names_at + index * STRING_POINTER_SIZE)
                .map(|name| String::from_utf8_lossy(name).into_owned())
        })
        .collect::<Option<Vec<_>>>()?;
    let internal = map.len() >= 8 && u64::from_le_bytes(map[..8].try_into().ok()?) == map.len() as u64;
    let mappings = if internal {
        Mappings::Internal(map.to_vec())
    } else {
        Mappings::Vlq(String::from_utf8_lossy(map).into_owned())
    };
    Some(SerializedSourceMap { sources, mappings })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph laid out like Bun 1.3.13's, with one module.
    fn graph(contents: &[u8], loader: u8) -> Vec<u8> {
        let mut graph = Vec::new();
        let name = b"/$bunfs/root/app";
        graph.extend_from_slice(name);
        graph.push(0);
        let contents_at = graph.len();
        graph.extend_from_slice(contents);
        graph.push(0);
        let records_at = graph.len();
        for (offset, length) in [(0, name.len()), (contents_at, contents.len()), (0, 0), (0, 0), (0, 0), (0, 0)] {
            graph.extend_from_slice(&(offset as u32).to_le_bytes());
            graph.extend_from_slice(&(length as u32).to_le_bytes());
        }
        graph.extend_from_slice(&[1, loader, 1, 0]);
        let byte_count = graph.len();
        graph.extend_from_slice(&(byte_count as u64).to_le_bytes());
        graph.extend_from_slice(&(records_at as u32).to_le_bytes());
        graph.extend_from_slice(&52u32.to_le_bytes());
        graph.extend_from_slice(&[0; 16]);
        graph.extend_from_slice(TRAILER);
        graph
    }

    #[test]
    fn reads_the_modules_of_a_graph_and_decodes_latin1() {
        let modules = parse_graph(&graph(b"// @bun\nvar s = \"caf\xe9\";\n", 1)).unwrap();
        assert_eq!(modules.len(), 1);
        assert_eq!(modules[0].name, "/$bunfs/root/app");
        assert_eq!(modules[0].text, "// @bun\nvar s = \"caf\u{e9}\";\n");
        assert!(modules[0].sourcemap.is_none());
        // A file that is not JavaScript (loader 5, `file`) is left out.
        assert!(parse_graph(&graph(b"{}", 5)).unwrap().is_empty());
    }

    #[test]
    fn rejects_corrupt_graphs_with_an_error_not_a_panic() {
        let good = graph(b"// @bun\n", 1);
        assert!(parse_graph(&good[..good.len() - 1]).is_err());
        let mut pointing_outside = good.clone();
        let records_at = pointing_outside.len() - TRAILER.len() - OFFSETS_SIZE + 8;
        pointing_outside[records_at..records_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_graph(&pointing_outside).is_err());
        for cut in 0..good.len() {
            let _ = parse_graph(&good[cut..]);
        }
    }
}

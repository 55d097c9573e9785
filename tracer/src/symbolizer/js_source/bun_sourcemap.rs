//! Bun's InternalSourceMap: the mappings `bun build --compile --sourcemap` embeds (Bun 1.3.13), turned
//! into a standard [`sourcemap::SourceMap`].
//!
//! Layout (Bun's `src/sourcemap/InternalSourceMap`), little endian, lines and columns 0-based:
//! - header: total length u64, mapping count u64, input line count u64, window count u32, stream offset
//!   u32;
//! - one sync entry per window (24 bytes): the window's first mapping in full (generated line, generated
//!   column i32, the window's byte offset in the stream u32, original line, original column, source index
//!   i32);
//! - the stream of windows. A window's 32-byte header: mapping count u8, flags u8 (bit 2: generated-line
//!   exceptions, bit 3: source-index changes), the byte lengths of its three varint lanes (u16 each), and
//!   three 64-bit masks over its deltas: generated line advances by one; original line delta equals the
//!   generated one; original column delta equals the generated one. Then the lanes of zig-zag LEB128
//!   varints: generated column deltas (one per delta), original line deltas where the mask bit is 0,
//!   original column deltas where the mask bit is 0; then, if flagged, (delta index u8, generated line
//!   delta) pairs ended by 0xFF, and a 64-bit mask with a source-index delta per 0 bit. The generated
//!   column delta counts from 0 when the generated line changed.

use anyhow::{Context, Result, bail};
use sourcemap::{SourceMap, SourceMapBuilder};

const HEADER_SIZE: usize = 32;
const SYNC_ENTRY_SIZE: usize = 24;
const WINDOW_HEADER_SIZE: usize = 32;
const MAX_WINDOW_MAPPINGS: u8 = 64;
const FLAG_GENERATED_LINE_EXCEPTIONS: u8 = 1 << 2;
const FLAG_SOURCE_INDEX: u8 = 1 << 3;
/// At most 5 bytes hold a zig-zag i32.
const MAX_VARINT_BYTES: usize = 5;

#[derive(Clone, Copy, Default)]
struct State {
    line: i64,
    column: i64,
    source: i64,
    original_line: i64,
    original_column: i64,
}

/// A forward reader of one lane of varints.
struct Lane<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Lane<'_> {
    fn varint(&mut self) -> Result<i64> {
        let mut value: u32 = 0;
        for index in 0..MAX_VARINT_BYTES {
            let byte = *self.bytes.get(self.position).context("Bun's embedded sourcemap ends inside a number")?;
            self.position += 1;
            value |= u32::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                break;
            }
        }
        Ok(i64::from(((value >> 1) as i32) ^ -((value & 1) as i32)))
    }

    fn byte(&mut self) -> Result<u8> {
        let byte = *self.bytes.get(self.position).context("Bun's embedded sourcemap ends inside a window")?;
        self.position += 1;
        Ok(byte)
    }
}

fn bit(mask: &[u8], index: u8) -> bool {
    mask[usize::from(index >> 3)] >> (index & 7) & 1 == 1
}

fn i32_at(bytes: &[u8], at: usize) -> i64 {
    i64::from(i32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes")))
}

/// The blob's mappings as a sourcemap over `sources`.
pub fn decode_internal(blob: &[u8], sources: &[String]) -> Result<SourceMap> {
    if blob.len() < HEADER_SIZE {
        bail!("Bun's embedded sourcemap is shorter than its header");
    }
    let total = u64::from_le_bytes(blob[..8].try_into().expect("eight bytes"));
    let windows = u32::from_le_bytes(blob[24..28].try_into().expect("four bytes")) as usize;
    let stream_offset = u32::from_le_bytes(blob[28..32].try_into().expect("four bytes")) as usize;
    let sync_end = windows.checked_mul(SYNC_ENTRY_SIZE).and_then(|size| size.checked_add(HEADER_SIZE));
    if total != blob.len() as u64 || sync_end.is_none_or(|end| end > stream_offset) || stream_offset > blob.len() {
        bail!("Bun's embedded sourcemap has an inconsistent header");
    }
    let stream = &blob[stream_offset..];
    let mut builder = builder(sources);
    let mut add = |state: &State| -> Result<()> {
        let fields = [state.line, state.column, state.source, state.original_line, state.original_column];
        if fields.iter().any(|&field| !(0..=i64::from(u32::MAX)).contains(&field))
            || state.source as usize >= sources.len()
        {
            bail!("Bun's embedded sourcemap has a mapping out of range");
        }
        let (line, column) = (state.line as u32, state.column as u32);
        let (original_line, original_column) = (state.original_line as u32, state.original_column as u32);
        builder.add_raw(line, column, original_line, original_column, Some(state.source as u32), None, false);
        Ok(())
    };
    for window in 0..windows {
        let entry = &blob[HEADER_SIZE + window * SYNC_ENTRY_SIZE..][..SYNC_ENTRY_SIZE];
        let mut state = State {
            line: i32_at(entry, 0),
            column: i32_at(entry, 4),
            original_line: i32_at(entry, 12),
            original_column: i32_at(entry, 16),
            source: i32_at(entry, 20),
        };
        add(&state)?;
        let start = u32::from_le_bytes(entry[8..12].try_into().expect("four bytes")) as usize;
        let Some(header) = stream.get(start..start.saturating_add(WINDOW_HEADER_SIZE)) else {
            bail!("Bun's embedded sourcemap has a window outside its stream");
        };
        decode_window(stream, start, header, &mut state, &mut add)?;
    }
    Ok(builder.into_sourcemap())
}

fn decode_window(
    stream: &[u8],
    start: usize,
    header: &[u8],
    state: &mut State,
    add: &mut impl FnMut(&State) -> Result<()>,
) -> Result<()> {
    let (count, flags) = (header[0], header[1]);
    if count > MAX_WINDOW_MAPPINGS {
        bail!("Bun's embedded sourcemap has a window of {count} mappings");
    }
    let lane_length = |at: usize| usize::from(u16::from_le_bytes([header[at], header[at + 1]]));
    let (line_mask, original_line_mask, original_column_mask) = (&header[8..16], &header[16..24], &header[24..32]);
    let mut columns = Lane { bytes: stream, position: start + WINDOW_HEADER_SIZE };
    let mut original_lines = Lane { bytes: stream, position: columns.position + lane_length(2) };
    let mut original_columns = Lane { bytes: stream, position: original_lines.position + lane_length(4) };
    let mut rare = Lane { bytes: stream, position: original_columns.position + lane_length(6) };
    // Generated-line deltas other than 0 and 1: (delta index u8, varint) pairs, then 0xFF.
    let mut line_exceptions = Lane { bytes: stream, position: 0 };
    let mut next_exception = 0xFF;
    if flags & FLAG_GENERATED_LINE_EXCEPTIONS != 0 {
        next_exception = rare.byte()?;
        line_exceptions.position = rare.position;
        let mut index = next_exception;
        while index != 0xFF {
            rare.varint()?;
            index = rare.byte()?;
        }
    }
    // Source-index changes: a mask (bit 1: no change) and a varint per 0 bit.
    let mut same_source = [0xFF; 8];
    let mut source_changes = Lane { bytes: stream, position: 0 };
    if flags & FLAG_SOURCE_INDEX != 0 {
        let mask = stream.get(rare.position..rare.position + 8).context("Bun's embedded sourcemap ends in a window")?;
        same_source.copy_from_slice(mask);
        source_changes.position = rare.position + 8;
    }
    for delta in 0..count.saturating_sub(1) {
        let mut line_delta = i64::from(bit(line_mask, delta));
        let column_delta = columns.varint()?;
        let mut original_line_delta =
            if bit(original_line_mask, delta) { line_delta } else { original_lines.varint()? };
        let original_column_delta =
            if bit(original_column_mask, delta) { column_delta } else { original_columns.varint()? };
        if next_exception == delta {
            line_delta = line_exceptions.varint()?;
            if bit(original_line_mask, delta) {
                original_line_delta = line_delta;
            }
            next_exception = line_exceptions.byte()?;
        }
        if !bit(&same_source, delta) {
            state.source += source_changes.varint()?;
        }
        if line_delta != 0 {
            state.line += line_delta;
            state.column = column_delta;
        } else {
            state.column += column_delta;
        }
        state.original_line += original_line_delta;
        state.original_column += original_column_delta;
        add(state)?;
    }
    Ok(())
}

/// A standard VLQ `mappings` string over `sources` (the embedded format of older Bun).
pub fn decode_vlq(mappings: &str, sources: &[String]) -> Result<SourceMap> {
    let json = serde_json::json!({ "version": 3, "sources": sources, "names": [], "mappings": mappings });
    Ok(SourceMap::from_slice(json.to_string().as_bytes())?)
}

fn builder(sources: &[String]) -> SourceMapBuilder {
    let mut builder = SourceMapBuilder::new(None);
    for source in sources {
        builder.add_source(source);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_varint(out: &mut Vec<u8>, value: i64) {
        let value = value as i32;
        let mut zigzag = ((value << 1) ^ (value >> 31)) as u32;
        loop {
            let byte = (zigzag & 0x7f) as u8;
            zigzag >>= 7;
            out.push(if zigzag != 0 { byte | 0x80 } else { byte });
            if zigzag == 0 {
                break;
            }
        }
    }

    /// Encodes absolute mappings `[line, column, source, original line, original column]` the way Bun
    /// 1.3.13 does, in windows of `window` mappings.
    fn blob(mappings: &[[i64; 5]], window: usize) -> Vec<u8> {
        let mut entries = Vec::new();
        let mut stream = Vec::new();
        for chunk in mappings.chunks(window) {
            let first = chunk[0];
            for (at, field) in [0, 1, 3, 4, 2].into_iter().enumerate() {
                if at == 2 {
                    entries.extend_from_slice(&(stream.len() as u32).to_le_bytes());
                }
                entries.extend_from_slice(&(first[field] as i32).to_le_bytes());
            }
            let (mut line_mask, mut original_line_mask, mut original_column_mask, mut same_source) =
                (0u64, 0u64, 0u64, !0u64);
            let (mut columns, mut original_lines, mut original_columns, mut exceptions, mut sources) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (delta, pair) in chunk.windows(2).enumerate() {
                let (previous, next) = (pair[0], pair[1]);
                let line_delta = next[0] - previous[0];
                let column_delta = if line_delta != 0 { next[1] } else { next[1] - previous[1] };
                if line_delta == 1 {
                    line_mask |= 1 << delta;
                } else if line_delta > 1 {
                    exceptions.push(delta as u8);
                    write_varint(&mut exceptions, line_delta);
                }
                write_varint(&mut columns, column_delta);
                if next[3] - previous[3] == line_delta {
                    original_line_mask |= 1 << delta;
                } else {
                    write_varint(&mut original_lines, next[3] - previous[3]);
                }
                if next[4] - previous[4] == column_delta {
                    original_column_mask |= 1 << delta;
                } else {
                    write_varint(&mut original_columns, next[4] - previous[4]);
                }
                if next[2] != previous[2] {
                    same_source &= !(1 << delta);
                    write_varint(&mut sources, next[2] - previous[2]);
                }
            }
            let flags = if exceptions.is_empty() { 0 } else { FLAG_GENERATED_LINE_EXCEPTIONS }
                | if sources.is_empty() { 0 } else { FLAG_SOURCE_INDEX };
            stream.extend_from_slice(&[chunk.len() as u8, flags]);
            for lane in [&columns, &original_lines, &original_columns] {
                stream.extend_from_slice(&(lane.len() as u16).to_le_bytes());
            }
            for mask in [line_mask, original_line_mask, original_column_mask] {
                stream.extend_from_slice(&mask.to_le_bytes());
            }
            stream.extend_from_slice(&columns);
            stream.extend_from_slice(&original_lines);
            stream.extend_from_slice(&original_columns);
            if !exceptions.is_empty() {
                stream.extend_from_slice(&exceptions);
                stream.push(0xFF);
            }
            if !sources.is_empty() {
                stream.extend_from_slice(&same_source.to_le_bytes());
                stream.extend_from_slice(&sources);
            }
        }
        stream.push(0); // Bun's read-past pad
        let stream_offset = HEADER_SIZE + entries.len();
        let mut blob = Vec::new();
        blob.extend_from_slice(&((stream_offset + stream.len()) as u64).to_le_bytes());
        blob.extend_from_slice(&(mappings.len() as u64).to_le_bytes());
        blob.extend_from_slice(&0u64.to_le_bytes());
        blob.extend_from_slice(&(mappings.len().div_ceil(window) as u32).to_le_bytes());
        blob.extend_from_slice(&(stream_offset as u32).to_le_bytes());
        blob.extend_from_slice(&entries);
        blob.extend_from_slice(&stream);
        blob
    }

    fn lookup(map: &SourceMap, line: u32, column: u32) -> (Option<&str>, u32, u32) {
        let token = map.lookup_token(line, column).unwrap();
        (token.get_source(), token.get_src_line(), token.get_src_col())
    }

    #[test]
    fn decodes_windows_with_every_kind_of_delta() {
        let sources = vec!["util.ts".to_string(), "main.ts".to_string()];
        let mappings = [
            [2, 0, 0, 0, 7],
            [2, 9, 0, 0, 16],  // same line, columns move together
            [3, 2, 0, 1, 2],   // next line, original follows
            [7, 4, 0, 9, 300], // generated line jumps by 4 (an exception), original differs
            [7, 8, 1, 2, 3],   // another file
            [8, 0, 1, 2, 10],  // next line, original line stays
            [9, 1, 0, 40, 1],  // back to the first file
        ];
        for window in [64, 3, 1] {
            let map = decode_internal(&blob(&mappings, window), &sources).unwrap();
            for mapping in mappings {
                let expected = (Some(sources[mapping[2] as usize].as_str()), mapping[3] as u32, mapping[4] as u32);
                assert_eq!(lookup(&map, mapping[0] as u32, mapping[1] as u32), expected, "window {window}");
            }
            assert_eq!(lookup(&map, 2, 12), (Some("util.ts"), 0, 16), "between mappings: the one before");
        }
    }

    #[test]
    fn rejects_bad_blobs() {
        let sources = vec!["a.ts".to_string()];
        assert!(decode_internal(&[0; 8], &sources).is_err());
        assert!(decode_internal(&blob(&[[0, 0, 0, 0, 0], [0, 1, 1, 0, 0]], 64), &sources).is_err(), "source 1 of 1");
        assert!(decode_internal(&blob(&[[0, 5, 0, 0, 0], [0, 1, 0, 0, -3]], 64), &sources).is_err(), "negative column");
        let good = blob(&[[0, 0, 0, 0, 0], [1, 4, 0, 1, 4]], 64);
        let mut wrong_length = good.clone();
        wrong_length[0] += 1;
        assert!(decode_internal(&wrong_length, &sources).is_err());
        for cut in HEADER_SIZE..good.len() {
            let mut truncated = good[..cut].to_vec();
            truncated[..8].copy_from_slice(&(cut as u64).to_le_bytes());
            let _ = decode_internal(&truncated, &sources);
        }
    }

    #[test]
    fn decodes_a_vlq_mappings_string() {
        let map = decode_vlq(";;AAAO,SAAS", &["util.ts".to_string()]).unwrap();
        assert_eq!(lookup(&map, 2, 9), (Some("util.ts"), 0, 16));
    }
}

//! Bun's InternalSourceMap: the mappings `bun build --compile --sourcemap` embeds (Bun 1.3.13), turned
//! into a standard [`sourcemap::SourceMap`].
//!
//! Layout (Bun's `src/sourcemap/InternalSourceMap.zig`), little endian: total length u64, mapping count
//! u64, input line count u64, sync point count u32, stream offset u32, sync points (24 bytes each, an
//! index for random access, not needed to decode from the start), then from the stream offset to the total
//! length a stream of mappings. Each mapping is five zig-zag LEB128 varints: deltas of generated line,
//! generated column, source index, original line, original column. The generated column delta is from 0
//! when the generated line changed. Lines and columns are 0-based.

use anyhow::{Result, bail};
use sourcemap::{SourceMap, SourceMapBuilder};

const HEADER_SIZE: usize = 32;
/// At most 5 bytes hold a zig-zag i32.
const MAX_VARINT_BYTES: usize = 5;

/// The blob's mappings as a sourcemap over `sources`.
pub fn decode_internal(blob: &[u8], sources: &[String]) -> Result<SourceMap> {
    if blob.len() < HEADER_SIZE {
        bail!("Bun's embedded sourcemap is shorter than its header");
    }
    let total = u64::from_le_bytes(blob[..8].try_into().expect("eight bytes"));
    let stream_offset = u32::from_le_bytes(blob[28..32].try_into().expect("four bytes")) as usize;
    if total != blob.len() as u64 || stream_offset < HEADER_SIZE || stream_offset > blob.len() {
        bail!("Bun's embedded sourcemap has an inconsistent header");
    }
    let mut builder = builder(sources);
    let stream = &blob[stream_offset..];
    let mut position = 0;
    let (mut line, mut column, mut source, mut original_line, mut original_column) = (0i64, 0i64, 0i64, 0i64, 0i64);
    while position < stream.len() {
        let mut next = || read_varint(stream, &mut position);
        let (line_delta, column_delta) = (next(), next());
        let (source_delta, original_line_delta, original_column_delta) = (next(), next(), next());
        if line_delta != 0 {
            line += line_delta;
            column = column_delta;
        } else {
            column += column_delta;
        }
        source += source_delta;
        original_line += original_line_delta;
        original_column += original_column_delta;
        let fields = [line, column, source, original_line, original_column];
        if fields.iter().any(|&field| !(0..=u32::MAX as i64).contains(&field)) || source as usize >= sources.len() {
            bail!("Bun's embedded sourcemap has a mapping out of range");
        }
        builder.add_raw(
            line as u32,
            column as u32,
            original_line as u32,
            original_column as u32,
            Some(source as u32),
            None,
            false,
        );
    }
    Ok(builder.into_sourcemap())
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

/// One zig-zag LEB128 varint; a truncated or overlong one yields what was read (Bun does the same), and
/// reading stops at the end of the stream.
fn read_varint(bytes: &[u8], position: &mut usize) -> i64 {
    let mut value: u32 = 0;
    for index in 0..MAX_VARINT_BYTES {
        let Some(&byte) = bytes.get(*position) else { break };
        *position += 1;
        value |= u32::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            break;
        }
    }
    i64::from(((value >> 1) as i32) ^ -((value & 1) as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_varint(out: &mut Vec<u8>, value: i32) {
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

    fn blob(mappings: &[[i32; 5]]) -> Vec<u8> {
        let mut stream = Vec::new();
        for mapping in mappings {
            for &field in mapping {
                write_varint(&mut stream, field);
            }
        }
        let mut blob = Vec::new();
        blob.extend_from_slice(&((HEADER_SIZE + stream.len()) as u64).to_le_bytes());
        blob.extend_from_slice(&(mappings.len() as u64).to_le_bytes());
        blob.extend_from_slice(&0u64.to_le_bytes());
        blob.extend_from_slice(&0u32.to_le_bytes());
        blob.extend_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        blob.extend_from_slice(&stream);
        blob
    }

    #[test]
    fn decodes_deltas_with_column_reset_on_new_lines() {
        let sources = vec!["util.ts".to_string(), "main.ts".to_string()];
        // (2,0)->util.ts(0,7); (2,9)->util.ts(0,16); (9,4)->main.ts(2,300); a negative delta back.
        let map = decode_internal(
            &blob(&[[2, 0, 0, 0, 7], [0, 9, 0, 0, 9], [7, 4, 1, 2, 284], [1, 2, -1, -1, -300]]),
            &sources,
        )
        .unwrap();
        let token = map.lookup_token(2, 12).unwrap();
        assert_eq!((token.get_source(), token.get_src_line(), token.get_src_col()), (Some("util.ts"), 0, 16));
        let token = map.lookup_token(9, 4).unwrap();
        assert_eq!((token.get_source(), token.get_src_line(), token.get_src_col()), (Some("main.ts"), 2, 300));
        let token = map.lookup_token(10, 2).unwrap();
        assert_eq!((token.get_source(), token.get_src_line(), token.get_src_col()), (Some("util.ts"), 1, 0));
    }

    #[test]
    fn rejects_bad_blobs() {
        let sources = vec!["a.ts".to_string()];
        assert!(decode_internal(&[0; 8], &sources).is_err());
        assert!(decode_internal(&blob(&[[0, 0, 1, 0, 0]]), &sources).is_err(), "source index 1 of 1");
        assert!(decode_internal(&blob(&[[0, -1, 0, 0, 0]]), &sources).is_err(), "negative column");
        let mut wrong_length = blob(&[[0, 0, 0, 0, 0]]);
        wrong_length[0] += 1;
        assert!(decode_internal(&wrong_length, &sources).is_err());
    }

    #[test]
    fn decodes_a_vlq_mappings_string() {
        let map = decode_vlq(";;AAAO,SAAS", &["util.ts".to_string()]).unwrap();
        let token = map.lookup_token(2, 9).unwrap();
        assert_eq!((token.get_source(), token.get_src_line(), token.get_src_col()), (Some("util.ts"), 0, 16));
    }
}

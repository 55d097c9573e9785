//! The layout of report.json: a line per top-level field and per item of a top-level list (a stack, a
//! turn, a suspect), each item whole on its line. Fully indented, a stack's frames took a line each and the
//! file was 40% indentation; this keeps it readable, greppable by line, and about a third smaller.

use std::io::{self, Write};

use serde_json::ser::Formatter;

/// Containers nested this deep or less break their items onto lines; deeper ones are written compact.
const LINE_DEPTH: usize = 2;

#[derive(Default)]
pub struct ItemPerLine {
    depth: usize,
    has_value: bool,
}

impl ItemPerLine {
    fn breaks(&self) -> bool {
        self.depth <= LINE_DEPTH
    }

    fn open<W: ?Sized + Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        let broke = self.breaks();
        self.depth -= 1;
        if broke && self.has_value {
            writer.write_all(b"\n")?;
            self.indent(writer)?;
        }
        writer.write_all(bracket)
    }

    fn item<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if !first {
            writer.write_all(b",")?;
        }
        if self.breaks() {
            writer.write_all(b"\n")?;
            self.indent(writer)?;
        }
        Ok(())
    }

    fn indent<W: ?Sized + Write>(&self, writer: &mut W) -> io::Result<()> {
        for _ in 0..self.depth {
            writer.write_all(b"  ")?;
        }
        Ok(())
    }
}

impl Formatter for ItemPerLine {
    fn begin_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.item(writer, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.item(writer, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(if self.breaks() { b": " } else { b":" })
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// Writes `value` as report.json is laid out.
pub fn to_writer<W: Write, T: ?Sized + serde::Serialize>(writer: W, value: &T) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(writer, ItemPerLine::default());
    value.serialize(&mut serializer)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn written(value: &Value) -> String {
        let mut out = Vec::new();
        to_writer(&mut out, value).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_field_and_each_item_of_a_list_is_a_line() {
        let value = json!({
            "version": 3,
            "stacks": [
                {"frames": ["main", "leak"], "bytes": 4096},
                {"frames": [], "bytes": 0},
            ],
            "totals": {"by_source": {"mmap": {"bytes": 1}}},
            "empty": [],
            "none": {},
        });
        // Keys come sorted (serde_json's map); report.json's come in its structs' order.
        let expected = r#"{
  "empty": [],
  "none": {},
  "stacks": [
    {"bytes":4096,"frames":["main","leak"]},
    {"bytes":0,"frames":[]}
  ],
  "totals": {
    "by_source": {"mmap":{"bytes":1}}
  },
  "version": 3
}"#;
        assert_eq!(written(&value), expected);
    }

    #[test]
    fn what_it_writes_reads_back_as_the_same_value() {
        let value = json!({
            "a": [[1, [2, {"b": "c\"\n"}]], {"d": null}],
            "e": {"f": [true, false, 1.5, -3]},
            "g": "é\u{1}",
        });
        let text = written(&value);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }

    #[test]
    fn a_scalar_alone_is_written_as_is() {
        assert_eq!(written(&json!(7)), "7");
        assert_eq!(written(&json!([])), "[]");
    }
}

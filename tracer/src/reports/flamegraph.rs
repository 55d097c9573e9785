//! flamegraph.svg of outstanding bytes, drawn by inferno from the folded stacks.

use anyhow::{Context, Result};
use inferno::flamegraph::{self, Options};

use crate::collector::Trace;

pub fn render(folded: &str, trace: &Trace) -> Result<Vec<u8>> {
    let mut options = Options::default();
    options.title = format!("Outstanding memory of {} (pid {})", trace.target.exe.display(), trace.target.pid);
    options.subtitle = Some("by allocating stack, at the end of the trace".to_string());
    options.count_name = "bytes".to_string();
    options.name_type = "Function:".to_string();
    let mut svg = Vec::new();
    match flamegraph::from_lines(&mut options, folded.lines(), &mut svg) {
        Ok(()) => Ok(svg),
        // Nothing outstanding: inferno still wrote a valid SVG that says so.
        Err(_) if folded.trim().is_empty() => Ok(svg),
        Err(error) => Err(error).context("cannot draw the flamegraph"),
    }
}

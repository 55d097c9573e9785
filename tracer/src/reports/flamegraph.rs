//! Flamegraphs drawn by inferno from folded stacks: outstanding bytes, and the differential growth view.

use anyhow::{Context, Result};
use inferno::{
    differential,
    flamegraph::{self, Options},
};

/// A flamegraph of folded `stack bytes` lines.
pub fn render(folded: &str, title: &str, subtitle: &str) -> Result<Vec<u8>> {
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = Some(subtitle.to_string());
    options.count_name = "bytes".to_string();
    options.name_type = "Function:".to_string();
    draw(folded, &mut options)
}

/// A differential flamegraph: widths are the bytes at TO, red where a stack grew since FROM, blue where
/// it shrank.
pub fn render_growth(before: &str, after: &str, title: &str, subtitle: &str) -> Result<Vec<u8>> {
    let mut differential_lines = Vec::new();
    differential::from_readers(
        differential::Options::default(),
        before.as_bytes(),
        after.as_bytes(),
        &mut differential_lines,
    )
    .context("cannot compare the two moments")?;
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = Some(subtitle.to_string());
    options.count_name = "bytes".to_string();
    options.name_type = "Function:".to_string();
    draw(&String::from_utf8_lossy(&differential_lines), &mut options)
}

fn draw(folded: &str, options: &mut Options) -> Result<Vec<u8>> {
    let mut svg = Vec::new();
    match flamegraph::from_lines(options, folded.lines(), &mut svg) {
        Ok(()) => Ok(svg),
        // Nothing to draw: inferno still wrote a valid SVG that says so.
        Err(_) if folded.trim().is_empty() => Ok(svg),
        Err(error) => Err(error).context("cannot draw the flamegraph"),
    }
}

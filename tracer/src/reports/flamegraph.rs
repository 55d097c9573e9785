//! Flamegraphs drawn by inferno from folded stacks: outstanding bytes, and the differential growth view.
//! With nothing to draw, a small picture that says so: inferno refuses (`No stack counts found`) or draws
//! an error message of its own.

use anyhow::{Context, Result};
use inferno::{
    differential,
    flamegraph::{self, Options},
};

/// A flamegraph of folded `stack bytes` lines; `nothing`: what the picture says when no stack has bytes.
pub fn render(folded: &str, title: &str, subtitle: &str, nothing: &str) -> Result<Vec<u8>> {
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = Some(subtitle.to_string());
    options.count_name = "bytes".to_string();
    options.name_type = "Function:".to_string();
    draw(folded, &mut options, nothing)
}

/// A differential flamegraph: widths are the bytes at TO, red where a stack grew since FROM, blue where
/// it shrank. `nothing`: what the picture says when nothing is outstanding at TO.
pub fn render_growth(before: &str, after: &str, title: &str, subtitle: &str, nothing: &str) -> Result<Vec<u8>> {
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
    draw(&String::from_utf8_lossy(&differential_lines), &mut options, nothing)
}

fn draw(folded: &str, options: &mut Options, nothing: &str) -> Result<Vec<u8>> {
    if !has_bytes(folded) {
        return Ok(empty(&options.title, nothing));
    }
    let mut svg = Vec::new();
    flamegraph::from_lines(options, folded.lines(), &mut svg).context("cannot draw the flamegraph")?;
    Ok(svg)
}

/// Whether any line counts bytes: the last field of a folded line (of a differential line, the count at
/// TO, which sets the widths) is above zero.
fn has_bytes(folded: &str) -> bool {
    folded.lines().any(|line| {
        line.rsplit(' ').next().and_then(|count| count.trim().parse::<f64>().ok()).is_some_and(|count| count > 0.0)
    })
}

/// A picture with the title and a line saying there is nothing to draw.
fn empty(title: &str, nothing: &str) -> Vec<u8> {
    format!(
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="110" viewBox="0 0 1200 110" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="1200" height="110" fill="#eeeeee"/>
<text x="600" y="34" text-anchor="middle" font-family="Verdana, sans-serif" font-size="17">{}</text>
<text x="600" y="74" text-anchor="middle" font-family="Verdana, sans-serif" font-size="14" fill="#444444">{}</text>
</svg>
"##,
        escape(title),
        escape(nothing)
    )
    .into_bytes()
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => escaped.push('?'),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_outstanding_draws_a_labelled_picture() {
        for folded in ["", "\n", "[malloc];main;f 0\n"] {
            let svg =
                String::from_utf8(render(folded, "Outstanding <x> & y", "sub", "nothing outstanding in z").unwrap())
                    .unwrap();
            assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"), "{svg}");
            assert!(svg.contains("Outstanding &lt;x&gt; &amp; y") && svg.contains("nothing outstanding in z"), "{svg}");
        }
    }

    #[test]
    fn growth_of_stacks_all_freed_by_the_end_draws_a_labelled_picture() {
        let svg = render_growth("[malloc];main;f 4096000\n", "", "Growth", "sub", "nothing outstanding at TO").unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("nothing outstanding at TO"));
    }

    #[test]
    fn stacks_with_bytes_are_drawn_by_inferno() {
        let svg = String::from_utf8(render("[malloc];main;f 4096\n", "t", "s", "nothing").unwrap()).unwrap();
        assert!(svg.contains("main") && !svg.contains("nothing"), "{svg}");
        let growth = render_growth("[malloc];main;f 10\n", "[malloc];main;f 4096\n", "t", "s", "nothing").unwrap();
        assert!(String::from_utf8(growth).unwrap().contains("main"));
    }
}

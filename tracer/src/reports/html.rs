//! report.html: one self-contained page (no server, no network, works from `file://`) that points at the
//! leak first: what was traced and how well, the suspects with the top one first and prominent, each
//! suspect's growth over time with the turns marked, what each turn left behind, and the flamegraphs
//! already written (one source at a time: mapped, resident and allocator bytes never add up).
//!
//! The flamegraphs are inferno's own SVGs, with their own script, ids and search: each is shown in an
//! iframe of its own so that nothing collides, loaded from a Blob made by the page's script (same origin as
//! the page, so inferno's search prompt works there too). Every string from the trace (frame names come
//! from the target) is escaped.

use std::{fmt::Write as _, time::SystemTime};

use anyhow::Result;

use super::{
    json::rfc3339,
    output::OutputDir,
    stacks::ReportStack,
    summary::human_bytes,
    suspects::{Suspect, Verdict},
    turns::TurnView,
};
use crate::{collector::Trace, ledger::Source, symbolizer::jit_frames::JsCoverage};

/// Suspects drawn in the growth chart (all are in the table).
const CHARTED: usize = 5;
/// Suspects listed in the table (report.json has the rest).
const LISTED: usize = 10;
const CHART_COLOURS: [&str; CHARTED] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"];

/// How well the trace saw the target: what report.json's `javascript`, `counters` and `tracer` say.
#[derive(Default)]
pub struct Coverage {
    pub javascript: JsCoverage,
    pub events: u64,
    pub lost_events: u64,
    pub map_full: u64,
    /// Stacks that could not be taken: their bytes are counted under an unknown stack.
    pub stack_errors: u64,
    pub evicted_stacks: u64,
    pub stacks_cut_at_non_code: u64,
}

/// A turn: when it started (seconds since the trace began) and what it retains at the end.
pub struct TurnBar {
    pub id: String,
    pub start: f64,
    pub retained_bytes: u64,
}

/// Everything the page shows, apart from the trace: rendered by [`render`], a pure function.
pub struct Page<'a> {
    pub target: String,
    pub command: String,
    pub started_at: String,
    pub seconds: f64,
    pub end_reason: Option<&'static str>,
    /// Outstanding bytes at the end, per source seen; the primary source is the suspects'.
    pub sources: Vec<(Source, u64)>,
    pub primary: Option<Source>,
    pub coverage: Coverage,
    pub suspects: &'a [Suspect],
    /// Seconds since the trace began, for the suspects' series.
    pub trace_start: SystemTime,
    pub turns: Vec<TurnBar>,
    /// (source, SVG text): one per source, the primary first; never added together. No source: of all
    /// memory, when the trace saw none.
    pub flamegraphs: Vec<(Option<Source>, String)>,
    pub growth: Option<String>,
}

/// Builds the page from the trace and the files already written in `out`, and writes report.html.
pub fn write(
    trace: &Trace,
    stacks: &[ReportStack],
    suspects: &[Suspect],
    turns: &[TurnView],
    primary: Option<Source>,
    out: &OutputDir,
) -> Result<std::path::PathBuf> {
    let read = |name: &str| out.read(name).ok().map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let mut sources: Vec<(Source, u64)> = Source::ALL
        .into_iter()
        .filter(|source| stacks.iter().any(|stack| stack.source == *source))
        .map(|source| {
            (source, stacks.iter().filter(|stack| stack.source == source).map(|s| s.stats.outstanding_bytes).sum())
        })
        .collect();
    sources.sort_by_key(|(source, _)| Some(*source) != primary);
    // flamegraph.svg is the primary source's; the per-source files exist only when there are several.
    let mut flamegraphs = Vec::new();
    if sources.len() > 1 {
        for (source, _) in &sources {
            if let Some(svg) = read(&format!("flamegraph-{}.svg", source.name())) {
                flamegraphs.push((Some(*source), svg));
            }
        }
    } else if let Some(svg) = read("flamegraph.svg") {
        flamegraphs.push((primary, svg));
    }
    let counter = |name: &str| {
        tracer_common::counters::Counter::ALL
            .iter()
            .zip(&trace.kernel_counters)
            .find(|(counter, _)| counter.name() == name)
            .map_or(0, |(_, value)| *value)
    };
    let page = Page {
        target: format!("{} (pid {})", trace.target.exe.display(), trace.target.pid),
        command: super::redact::redact_cmdline(&trace.target.cmdline).join(" "),
        started_at: rfc3339(trace.started_at),
        seconds: trace.ended_at.duration_since(trace.started_at).unwrap_or_default().as_secs_f64(),
        end_reason: trace.ending.map(|ending| ending.reason.name()),
        sources,
        primary,
        coverage: Coverage {
            javascript: trace.javascript,
            events: trace.events,
            lost_events: counter("lost_events"),
            map_full: counter("map_full"),
            stack_errors: counter("stack_errors"),
            evicted_stacks: trace.ledger.counters().evicted_stacks,
            stacks_cut_at_non_code: trace.stack_ips.cut_at_non_code(),
        },
        suspects,
        trace_start: trace.started_at,
        turns: turns
            .iter()
            .map(|turn| TurnBar {
                id: turn.id.clone(),
                start: turn.start.duration_since(trace.started_at).unwrap_or_default().as_secs_f64(),
                retained_bytes: primary.and_then(|p| turn.retained.get(&p).copied()).unwrap_or(0),
            })
            .collect(),
        flamegraphs,
        growth: read("growth.svg"),
    };
    out.write("report.html", render(&page).as_bytes())
}

/// Escapes text for HTML content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A string as a JSON literal safe inside a `<script>` element: no `<` can close it.
fn script_json(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default().replace('<', "\\u003c")
}

fn signed_bytes(bytes: i64) -> String {
    let sign = if bytes < 0 { "−" } else { "+" };
    format!("{sign}{}", human_bytes(bytes.unsigned_abs()))
}

/// The suspects in the order the page lists them: as ranked (growing sites first, then by what they keep).
pub fn listed(suspects: &[Suspect]) -> &[Suspect] {
    &suspects[..suspects.len().min(LISTED)]
}

pub fn render(page: &Page) -> String {
    let mut html = String::new();
    let title = format!("Memory of {}", page.target);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head><body>\n",
        escape(&title)
    );
    header(&mut html, page);
    suspects_table(&mut html, page);
    growth_chart(&mut html, page);
    turns_chart(&mut html, page);
    flamegraphs(&mut html, page);
    let _ = write!(html, "<script>{SCRIPT}</script>\n</body></html>\n");
    html
}

fn header(html: &mut String, page: &Page) {
    let _ = write!(html, "<header><h1>Memory of <code>{}</code></h1>\n<dl class=\"facts\">", escape(&page.target));
    let mut fact = |name: &str, value: String| {
        let _ = write!(html, "<div><dt>{name}</dt><dd>{value}</dd></div>");
    };
    if !page.command.is_empty() {
        fact("command", format!("<code>{}</code>", escape(&page.command)));
    }
    fact(
        "traced",
        format!(
            "{:.1} s from {}{}",
            page.seconds,
            escape(&page.started_at),
            page.end_reason.map_or(String::new(), |reason| format!(", ended by {}", escape(reason)))
        ),
    );
    let sources: Vec<String> = page
        .sources
        .iter()
        .map(|(source, bytes)| {
            let primary = if Some(*source) == page.primary { " (suspects' source)" } else { "" };
            format!("{} {}{primary}", source.describe(), human_bytes(*bytes))
        })
        .collect();
    fact(
        "outstanding at the end",
        if sources.is_empty() { "nothing".to_string() } else { escape(&sources.join("; ")) },
    );
    let c = &page.coverage;
    let js = &c.javascript;
    let functions = js.located + js.runtime + js.unlocated;
    if functions > 0 {
        fact(
            "JIT frames named",
            format!(
                "{} of {functions} JavaScript functions located in the sources, {} the runtime's own, {} found nowhere{}; \
                 <span{}>{} stacks with JIT code no jitdump record named</span>",
                js.located,
                js.runtime,
                js.unlocated,
                js.sources.map_or(String::new(), |from| format!(
                    " (sources: {}, {} files)",
                    escape(from),
                    js.source_files
                )),
                if js.unnamed_jit_stacks > 0 { " class=\"warn\"" } else { "" },
                js.unnamed_jit_stacks,
            ),
        );
    }
    let warn = |count: u64| if count > 0 { " class=\"warn\"" } else { "" };
    fact(
        "stacks cut short",
        format!(
            "<span{}>{} events without a user stack</span> (counted under an unknown stack); {} stacks ended where \
             the frame-pointer walk left code (code without frame pointers); {} stacks forgotten to stay within memory",
            warn(c.stack_errors),
            c.stack_errors,
            c.stacks_cut_at_non_code,
            c.evicted_stacks
        ),
    );
    fact(
        "events lost",
        format!(
            "<span{}>{} of {} events lost</span>, {} kernel map inserts failed",
            warn(c.lost_events),
            c.lost_events,
            c.events + c.lost_events,
            c.map_full
        ),
    );
    html.push_str("</dl></header>\n");
}

fn suspects_table(html: &mut String, page: &Page) {
    html.push_str("<section id=\"suspects\"><h2>Suspects</h2>\n");
    let suspects = listed(page.suspects);
    let Some(top) = suspects.first() else {
        html.push_str("<p>No suspects: nothing held memory at the end of the trace.</p></section>\n");
        return;
    };
    let leak = if top.verdict == Verdict::Grows { " leak" } else { "" };
    let _ = writeln!(
        html,
        "<div class=\"top{leak}\"><div class=\"label\">Top suspect ({})</div><div class=\"site\">{}</div><div>{} · {} \
         · {}</div></div>",
        escape(top.source.describe()),
        escape(&top.site),
        escape(top.verdict.name()),
        per_turn(top),
        escape(&top.evidence)
    );
    html.push_str(
        "<table><thead><tr><th>#</th><th>site</th><th>verdict</th><th>bytes per turn</th><th>growth</th>\
         <th>outstanding</th><th>evidence</th></tr></thead><tbody>\n",
    );
    for (rank, suspect) in suspects.iter().enumerate() {
        let allocated_by = suspect
            .allocated_by
            .as_deref()
            .map_or(String::new(), |by| format!("<br><small>via {}</small>", escape(by)));
        let _ = writeln!(
            html,
            "<tr class=\"{}\"><td>{}</td><td class=\"site\">{}{allocated_by}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"evidence\">{}</td></tr>",
            if rank == 0 { "first" } else { "" },
            rank + 1,
            escape(&suspect.site),
            escape(suspect.verdict.name()),
            per_turn(suspect),
            signed_bytes(suspect.growth_bytes),
            human_bytes(suspect.outstanding_bytes),
            escape(&suspect.evidence)
        );
    }
    html.push_str("</tbody></table>");
    if page.suspects.len() > suspects.len() {
        let _ = write!(html, "<p>{} more sites in report.json.</p>", page.suspects.len() - suspects.len());
    }
    html.push_str("</section>\n");
}

fn per_turn(suspect: &Suspect) -> String {
    suspect.bytes_per_turn.map_or("–".to_string(), |bytes| format!("{}/turn", human_bytes(bytes.max(0.0) as u64)))
}

/// Chart geometry: the plot area inside an SVG of `WIDTH` × `HEIGHT`.
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 30.0;

fn x_of(seconds: f64, span: f64) -> f64 {
    LEFT + seconds / span * (WIDTH - LEFT - RIGHT)
}

fn y_of(bytes: f64, max: f64) -> f64 {
    HEIGHT - BOTTOM - bytes / max * (HEIGHT - TOP - BOTTOM)
}

fn axes(html: &mut String, span: f64, max: f64) {
    let _ = write!(
        html,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/><line class=\"axis\" x1=\"{LEFT}\" \
         y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\"/><text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{}</text><text \
         x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">0</text><text x=\"{r}\" y=\"{HEIGHT}\" \
         text-anchor=\"end\">{span:.1} s</text>",
        human_bytes(max as u64),
        b = HEIGHT - BOTTOM,
        r = WIDTH - RIGHT,
        tx = LEFT - 4.0,
        ty = TOP + 10.0,
    );
}

fn growth_chart(html: &mut String, page: &Page) {
    let charted = super::suspects::charted(page.suspects, CHARTED);
    if charted.is_empty() {
        return;
    }
    let seconds = |at: SystemTime| at.duration_since(page.trace_start).unwrap_or_default().as_secs_f64();
    let span = page
        .seconds
        .max(charted.iter().flat_map(|s| s.series.iter().map(|(at, _)| seconds(*at))).fold(0.0, f64::max))
        .max(1e-3);
    let max = charted.iter().flat_map(|s| s.series.iter().map(|(_, bytes)| *bytes)).max().unwrap_or(0).max(1) as f64;
    html.push_str("<section id=\"growth\"><h2>Growth over time</h2>\n");
    let _ = write!(html, "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">");
    // Turns as ticks under the axis: a mark each, not a grid over the lines.
    for turn in &page.turns {
        let x = x_of(turn.start, span);
        let _ = write!(
            html,
            "<line class=\"turn\" x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\"><title>turn {}</title></line>",
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 8.0,
            escape(&turn.id)
        );
    }
    axes(html, span, max);
    // Drawn last to first, so that the top suspect's line lies on top, and thicker.
    for (rank, (suspect, colour)) in charted.iter().zip(CHART_COLOURS).enumerate().rev() {
        let points: Vec<String> = suspect
            .series
            .iter()
            .map(|(at, bytes)| format!("{:.1},{:.1}", x_of(seconds(*at), span), y_of(*bytes as f64, max)))
            .collect();
        let _ = write!(
            html,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"{}\" points=\"{}\"><title>{}</title></polyline>",
            if rank == 0 { 3 } else { 2 },
            points.join(" "),
            escape(&suspect.site)
        );
    }
    html.push_str("</svg><ul class=\"legend\">");
    for (suspect, colour) in charted.iter().zip(CHART_COLOURS) {
        let _ = write!(
            html,
            "<li><span class=\"swatch\" style=\"background:{colour}\"></span>{} ({})</li>",
            escape(&suspect.site),
            escape(suspect.verdict.name())
        );
    }
    if !page.turns.is_empty() {
        html.push_str("<li><span class=\"swatch turn\"></span>turn starts</li>");
    }
    html.push_str("</ul></section>\n");
}

fn turns_chart(html: &mut String, page: &Page) {
    if page.turns.is_empty() {
        return;
    }
    let max = page.turns.iter().map(|turn| turn.retained_bytes).max().unwrap_or(0).max(1) as f64;
    let width = (WIDTH - LEFT - RIGHT) / page.turns.len() as f64;
    let source = page.primary.map_or("memory", Source::describe);
    let _ = write!(
        html,
        "<section id=\"turns\"><h2>Retained per turn</h2><p>What each turn allocated of {source} and still held at \
         the end of the trace.</p>\n<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">"
    );
    let b = HEIGHT - BOTTOM;
    let _ = write!(
        html,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{b}\" x2=\"{}\" y2=\"{b}\"/><text x=\"{}\" y=\"{}\" \
         text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{HEIGHT}\">{} turns</text>",
        WIDTH - RIGHT,
        LEFT - 4.0,
        TOP + 10.0,
        human_bytes(max as u64),
        LEFT,
        page.turns.len()
    );
    for (index, turn) in page.turns.iter().enumerate() {
        let top = y_of(turn.retained_bytes as f64, max);
        let _ = write!(
            html,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{}: {}</title></rect>",
            LEFT + index as f64 * width,
            (width * 0.8).max(0.5),
            b - top,
            escape(&turn.id),
            human_bytes(turn.retained_bytes)
        );
    }
    html.push_str("</svg></section>\n");
}

fn flamegraphs(html: &mut String, page: &Page) {
    if page.flamegraphs.is_empty() && page.growth.is_none() {
        return;
    }
    html.push_str(
        "<section id=\"flamegraphs\"><h2>Outstanding memory by stack</h2><p>One source at a time: mapped, resident and \
         allocator bytes measure different things and are never added together. Search: the Search button in the \
         top right corner of each graph, or Ctrl-F inside it.</p>\n<div class=\"switcher\">",
    );
    // `report.html#flamegraph-mmap` opens on that source.
    let id = |source: &Option<Source>| format!("flamegraph-{}", source.map_or("memory", Source::name));
    let label = |source: &Option<Source>| source.map_or("memory", Source::describe);
    for (index, (source, _)) in page.flamegraphs.iter().enumerate() {
        let _ = write!(
            html,
            "<button type=\"button\" data-show=\"{}\"{}>{}</button>",
            id(source),
            if index == 0 { " class=\"on\"" } else { "" },
            label(source)
        );
    }
    html.push_str("</div>\n");
    for (index, (source, svg)) in page.flamegraphs.iter().enumerate() {
        embed(html, &id(source), label(source), svg, index != 0);
    }
    if let Some(svg) = &page.growth {
        html.push_str("<h2>Growth by stack</h2>\n");
        embed(html, "growth-graph", "growth", svg, false);
    }
    html.push_str("</section>\n");
}

/// inferno's script sizes its frames to the SVG's width less the padding, and its labels by that width; an
/// iframe briefly 0 wide (while the page is laid out, or resized for a screenshot) made it -20 and the
/// labels' places Infinity%, errors on the console. The sizing waits for a width: the frame's resize event
/// brings it.
const INFERNO_FRAMES_WIDTH: &str = "frames.attributes.width.value = svg.width.baseVal.value - xpad * 2;";
const FRAMES_WIDTH_KEPT_POSITIVE: &str = "if (!(svg.width.baseVal.value > xpad * 2)) return; \
                                          frames.attributes.width.value = svg.width.baseVal.value - xpad * 2;";

/// An SVG in an iframe of its own, filled by the page's script from the JSON beside it.
fn embed(html: &mut String, id: &str, label: &str, svg: &str, hidden: bool) {
    let svg = svg.replace(INFERNO_FRAMES_WIDTH, FRAMES_WIDTH_KEPT_POSITIVE);
    let svg = svg.as_str();
    let _ = writeln!(
        html,
        "<div class=\"graph\" id=\"{id}\"{}><iframe title=\"{}\"></iframe><script type=\"application/json\">{}</script></div>",
        if hidden { " hidden" } else { "" },
        escape(label),
        script_json(svg)
    );
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 40px;color:#222;max-width:1200px}
h1{font-size:22px;margin:18px 0 8px}h2{font-size:17px;margin:26px 0 8px}
code{font:13px ui-monospace,monospace;word-break:break-all}
.facts{display:grid;grid-template-columns:1fr 1fr;gap:4px 24px;margin:0}
.facts div{display:flex;gap:8px}.facts dt{color:#666;min-width:11em}.facts dd{margin:0}
.warn{color:#b00;font-weight:600}
.top{border:2px solid #888;border-radius:6px;padding:10px 14px;margin:8px 0 14px;background:#f6f6f6}
.top.leak{border-color:#c00;background:#fff0f0}
.top .label{color:#666;font-size:12px;text-transform:uppercase}
.top .site{font:700 22px ui-monospace,monospace;color:#900;word-break:break-all}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top}
td.site{font-family:ui-monospace,monospace;min-width:16em;overflow-wrap:anywhere}
td.evidence{font-size:12px;color:#444}td.num{white-space:nowrap}tr.first{background:#fff0f0;font-weight:600}
.chart{width:100%;height:auto;max-height:280px}.chart text{font-size:11px;fill:#555}
.axis{stroke:#999}.turn{stroke:#888}.bar{fill:#d62728}
.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px;font-family:ui-monospace,monospace}
.swatch{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:middle}
.swatch.turn{width:1px;background:#888}
.switcher button{font:inherit;padding:4px 12px;border:1px solid #999;background:#fff;cursor:pointer}
.switcher button.on{background:#333;color:#fff}
.graph iframe{width:100%;height:620px;border:1px solid #ddd}
";

/// Fills each shown graph's iframe with its SVG (a Blob URL: the page's own origin, so inferno's script and search
/// run inside), wires the source switcher, then marks the page as having run without error.
const SCRIPT: &str = r#"
(function () {
  // A graph is loaded when first shown: inferno's script sizes the graph to its frame as it loads.
  function load(graph) {
    const frame = graph.querySelector('iframe');
    if (graph.hidden || frame.src) return;
    const svg = JSON.parse(graph.querySelector('script').textContent);
    frame.src = URL.createObjectURL(new Blob([svg], { type: 'image/svg+xml' }));
  }
  const graphs = document.querySelectorAll('.graph');
  const buttons = document.querySelectorAll('.switcher button');
  function show(id) {
    for (const button of buttons) {
      button.classList.toggle('on', button.dataset.show === id);
      document.getElementById(button.dataset.show).hidden = button.dataset.show !== id;
    }
  }
  for (const button of buttons) {
    button.addEventListener('click', function () {
      show(button.dataset.show);
      graphs.forEach(load);
    });
  }
  const chosen = decodeURIComponent(location.hash.slice(1));
  if ([...buttons].some(function (button) { return button.dataset.show === chosen; })) show(chosen);
  graphs.forEach(load);
  document.body.setAttribute('data-script', 'ran');
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_the_sites_that_grow_and_the_rest_only_when_none_does() {
        let ranked = [
            suspect("leak", Verdict::Grows, 1 << 20),
            suspect("cache", Verdict::LevelsOff, 1 << 19),
            suspect("churner", Verdict::Flat, 1 << 22),
        ];
        let names = |charted: Vec<&Suspect>| charted.iter().map(|s| s.site.clone()).collect::<Vec<_>>();
        assert_eq!(names(crate::reports::suspects::charted(&ranked, 4)), ["leak", "cache"]);
        assert_eq!(names(crate::reports::suspects::charted(&ranked, 1)), ["leak"]);
        assert_eq!(names(crate::reports::suspects::charted(&ranked[2..], 4)), ["churner"]);
    }

    #[test]
    fn infernos_frame_width_is_kept_positive_in_the_page() {
        let mut svg = Vec::new();
        let mut options = inferno::flamegraph::Options::default();
        inferno::flamegraph::from_lines(&mut options, ["main;leak 4096"], &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains(INFERNO_FRAMES_WIDTH), "inferno's script changed: see INFERNO_FRAMES_WIDTH");
        let mut html = String::new();
        embed(&mut html, "graph", "resident memory", &svg, false);
        assert!(html.contains(FRAMES_WIDTH_KEPT_POSITIVE));
    }
    use crate::reports::suspects::Verdict;

    fn suspect(site: &str, verdict: Verdict, growth: i64) -> Suspect {
        Suspect {
            site: site.to_string(),
            source: Source::PageFault,
            allocated_by: None,
            runtime_job: false,
            frames: Vec::new(),
            stacks: 1,
            outstanding_bytes: growth.max(0) as u64,
            allocated_bytes: growth.max(0) as u64,
            growth_bytes: growth,
            retained_fraction: 1.0,
            kept_growth_bytes: growth,
            bytes_per_second: 0.0,
            fit_r2: 1.0,
            sustained_growth: 0.0,
            verdict,
            evidence: format!("evidence of {site}"),
            bytes_per_turn: Some(4096.0),
            own_bytes_per_turn: None,
            turns_retaining: None,
            series: vec![
                (SystemTime::UNIX_EPOCH, 0),
                (SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2), 8192),
            ],
        }
    }

    fn page<'a>(suspects: &'a [Suspect], flamegraphs: Vec<(Option<Source>, String)>) -> Page<'a> {
        Page {
            target: "/bin/<server> (pid 7)".to_string(),
            command: "server --name=\"x\"".to_string(),
            started_at: "2026-01-01T00:00:00.000Z".to_string(),
            seconds: 2.0,
            end_reason: Some("duration"),
            sources: vec![(Source::PageFault, 8192)],
            primary: Some(Source::PageFault),
            coverage: Coverage::default(),
            suspects,
            trace_start: SystemTime::UNIX_EPOCH,
            turns: vec![TurnBar { id: "<t1>".to_string(), start: 1.0, retained_bytes: 4096 }],
            flamegraphs,
            growth: None,
        }
    }

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(escape(r#"a<b>&"c"'d'"#), "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;");
        assert_eq!(escape("plain [JS]"), "plain [JS]");
    }

    #[test]
    fn strings_from_the_trace_are_escaped_everywhere() {
        let hostile = "<img src=x onerror=alert(1)>";
        let suspects = [suspect(hostile, Verdict::Grows, 8192)];
        let svg = format!("<svg><script>var a = '</script><b>{hostile}</b>';</script></svg>");
        let html = render(&page(&suspects, vec![(Some(Source::PageFault), svg)]));
        assert!(!html.contains(hostile), "raw markup from the trace: {html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("&lt;t1&gt;") && html.contains("/bin/&lt;server&gt;"));
        // The embedded SVG cannot close the script element that carries it.
        let scripts = html.matches("</script>").count();
        assert_eq!(scripts, 2, "one JSON carrier and the page's script");
    }

    #[test]
    fn the_top_suspect_comes_first_and_is_featured() {
        let suspects = [
            suspect("leakyFunction", Verdict::Grows, 1 << 20),
            suspect("cacheFill", Verdict::LevelsOff, 2 << 20),
            suspect("temporary", Verdict::Flat, 0),
        ];
        let html = render(&page(&suspects, Vec::new()));
        let featured = html.find("<div class=\"top leak\">").expect("the top suspect is featured");
        let site = |name: &str| html.find(&format!("<td class=\"site\">{name}")).unwrap();
        assert!(html[featured..].starts_with("<div class=\"top leak\"><div class=\"label\">Top suspect (resident memory)</div><div class=\"site\">leakyFunction</div>"));
        assert!(featured < site("leakyFunction"));
        assert!(site("leakyFunction") < site("cacheFill") && site("cacheFill") < site("temporary"));
        assert!(html.contains("<tr class=\"first\"><td>1</td><td class=\"site\">leakyFunction"));
        // The growth chart draws the sites that grow, the top one on top; not the flat one.
        let chart = &html[html.find("id=\"growth\"").unwrap()..html.find("id=\"turns\"").unwrap()];
        let lines: Vec<&str> = chart.match_indices("<title>").map(|(at, _)| &chart[at + 7..]).collect();
        let names: Vec<&str> = lines.iter().map(|l| &l[..l.find('<').unwrap()]).collect();
        assert_eq!(names, ["turn &lt;t1&gt;", "cacheFill", "leakyFunction"]);
    }

    #[test]
    fn one_flamegraph_shown_at_a_time() {
        let graphs = vec![(Some(Source::PageFault), "<svg/>".to_string()), (Some(Source::Mmap), "<svg/>".to_string())];
        let html = render(&page(&[], graphs));
        assert!(html.contains("<button type=\"button\" data-show=\"flamegraph-page-fault\" class=\"on\">resident memory</button><button type=\"button\" data-show=\"flamegraph-mmap\">mapped memory</button>"));
        assert!(html.contains("<div class=\"graph\" id=\"flamegraph-page-fault\"><iframe title=\"resident memory\">"));
        assert!(html.contains("<div class=\"graph\" id=\"flamegraph-mmap\" hidden><iframe title=\"mapped memory\">"));
        assert!(html.contains("No suspects"));
    }
}

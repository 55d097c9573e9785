//! timeline.svg: the target's RSS, the outstanding bytes of each source and of the top suspects over
//! time, with turns shaded and labelled, and markers drawn as lines, so that growth can be seen to line
//! up with turns. Drawn with plotters.

use std::time::SystemTime;

use anyhow::{Result, anyhow};
use plotters::{
    prelude::*,
    style::{Color, RGBColor},
};

use super::suspects::Suspect;
use crate::collector::Trace;

/// Suspects drawn as series of their own (see [`super::suspects::charted`]).
const SITES: usize = 4;
/// Above this many turns, turns are shaded but not labelled.
const MAX_LABELLED_TURNS: usize = 40;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

const MIB: f64 = 1024.0 * 1024.0;

/// A named line to draw: (seconds since start, MiB) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub weight: Weight,
}

/// How strongly a line is drawn: the RSS and the sources are the context, the suspects the point, and the
/// top suspect the first thing the eye should meet (it is rarely the tallest line: RSS is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    Context,
    Suspect,
    TopSuspect,
}

impl Weight {
    fn stroke_width(self) -> u32 {
        match self {
            Weight::Context => 1,
            Weight::Suspect => 2,
            Weight::TopSuspect => 5,
        }
    }
}

/// Every series the timeline draws: RSS, outstanding bytes per source, the top suspects.
pub fn series(trace: &Trace<'_>, suspects: &[Suspect]) -> Vec<Series> {
    let seconds = |at: SystemTime| at.duration_since(trace.started_at).unwrap_or_default().as_secs_f64();
    let points = trace.timeline.points();
    let mut all = vec![Series {
        name: "RSS".to_string(),
        points: points.iter().map(|p| (seconds(p.at), p.rss_bytes as f64 / MIB)).collect(),
        weight: Weight::Context,
    }];
    let sources: Vec<_> = points
        .iter()
        .flat_map(|p| p.outstanding.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for source in sources {
        all.push(Series {
            name: format!("{} (outstanding)", source.describe()),
            points: points
                .iter()
                .map(|p| (seconds(p.at), *p.outstanding.get(&source).unwrap_or(&0) as f64 / MIB))
                .collect(),
            weight: Weight::Context,
        });
    }
    for suspect in super::suspects::charted(suspects, SITES) {
        let points = suspect.series.iter().map(|(at, bytes)| (seconds(*at), *bytes as f64 / MIB)).collect();
        let rank = suspects.iter().position(|s| std::ptr::eq(s, suspect)).unwrap_or(0) + 1;
        let weight = if rank == 1 { Weight::TopSuspect } else { Weight::Suspect };
        let name = format!("suspect {rank}: {} ({})", suspect.site, suspect.verdict.name());
        all.push(Series { name, points, weight });
    }
    all
}

pub fn render(trace: &Trace<'_>, suspects: &[Suspect]) -> Result<String> {
    let lines = series(trace, suspects);
    let seconds = |at: SystemTime| at.duration_since(trace.started_at).unwrap_or_default().as_secs_f64();
    let x_max = seconds(trace.ended_at).max(1.0);
    let y_max = lines.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1.0_f64, f64::max) * 1.1;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let title = format!("Memory of {} (pid {}) over time", trace.target.exe.display(), trace.target.pid);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds since the trace began")
            .y_desc("MiB")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;

        // Turns first, under the lines: alternating shades so that neighbours stay apart.
        let labelled = trace.turns.len() <= MAX_LABELLED_TURNS;
        for (index, turn) in trace.turns.iter().enumerate() {
            let (start, end) = (seconds(turn.start), seconds(turn.end.unwrap_or(trace.ended_at)));
            let shade = if index % 2 == 0 { RGBColor(220, 220, 235) } else { RGBColor(235, 235, 220) };
            let span = [(start, 0.0), (end.max(start + x_max / 2000.0), y_max)];
            let drawn = chart
                .draw_series(std::iter::once(Rectangle::new(span, shade.mix(0.6).filled())))
                .map_err(|e| anyhow!("{e}"))?;
            if index == 0 {
                drawn
                    .label(format!("turns ({})", trace.turns.len()))
                    .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], RGBColor(220, 220, 235).filled()));
            }
            if labelled {
                chart
                    .draw_series(std::iter::once(Text::new(turn.id.clone(), (start, y_max * 0.98), ("sans-serif", 11))))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        for marker in trace.markers {
            let at = seconds(marker.at);
            chart
                .draw_series(LineSeries::new([(at, 0.0), (at, y_max)], BLACK.mix(0.5).stroke_width(1)))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(std::iter::once(Text::new(marker.label.clone(), (at, y_max * 0.93), ("sans-serif", 11))))
                .map_err(|e| anyhow!("{e}"))?;
        }
        // The top suspect last, on top of the others.
        let mut order: Vec<usize> = (0..lines.len()).collect();
        order.sort_by_key(|&index| lines[index].weight == Weight::TopSuspect);
        for index in order {
            let line = &lines[index];
            let color = if index == 0 { BLACK } else { PALETTE[(index - 1) % PALETTE.len()] };
            let width = line.weight.stroke_width();
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(width)))
                .map_err(|e| anyhow!("{e}"))?
                .label(line.name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(width)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(svg)
}

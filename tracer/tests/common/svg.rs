//! Reading the SVG reports as a person sees them: the lines of timeline.svg (plotters) and the boxes of
//! growth.svg (inferno), so tests can say which item stands out.

/// A line of timeline.svg as plotters draws it: `<polyline ... stroke="#RRGGBB" stroke-width="N" points="x,y
/// ..."/>`.
#[derive(Debug)]
pub struct TimelineLine {
    pub colour: String,
    pub width: u32,
}

/// The data lines (more than two points), and the legend's entries: a two-point line 16 px long and the
/// text beside it (plotters draws the legend's texts first, then its lines: they are matched by height).
pub fn timeline_lines(svg: &str) -> (Vec<TimelineLine>, Vec<(TimelineLine, String)>) {
    let attribute = |text: &str, name: &str| -> Option<String> {
        Some(text.split(&format!(" {name}=\"")).nth(1)?.split('"').next()?.to_string())
    };
    let (mut lines, mut legend_lines, mut texts) = (Vec::new(), Vec::new(), Vec::new());
    for element in svg.split('<').skip(1) {
        if let Some(polyline) = element.strip_prefix("polyline") {
            let (Some(colour), Some(width), Some(points)) =
                (attribute(polyline, "stroke"), attribute(polyline, "stroke-width"), attribute(polyline, "points"))
            else {
                continue;
            };
            let points: Vec<(i64, i64)> = points
                .split_whitespace()
                .filter_map(|p| p.split_once(',').map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap())))
                .collect();
            let line = TimelineLine { colour, width: width.parse().unwrap() };
            if points.len() > 2 {
                lines.push(line);
            } else if points[1].0 - points[0].0 == 16 && points[0].1 == points[1].1 {
                legend_lines.push((line, points[1]));
            }
        } else if let Some(text) = element.strip_prefix("text") {
            let (Some(x), Some(y)) = (attribute(text, "x"), attribute(text, "y")) else { continue };
            let label = text.split_once('>').map_or("", |(_, label)| label).trim().to_string();
            texts.push((x.parse::<i64>().unwrap(), y.parse::<i64>().unwrap(), label));
        }
    }
    let legend = legend_lines
        .into_iter()
        .filter_map(|(line, (end_x, y))| {
            let beside = texts.iter().filter(|(x, _, _)| *x > end_x && *x < end_x + 30);
            let (_, _, label) = beside.min_by_key(|(_, text_y, _)| (text_y - y).abs())?;
            Some((line, label.clone()))
        })
        .collect();
    (lines, legend)
}

/// A box of growth.svg as inferno draws it: `<g [class="suspect" ...]><title>function (details)</title><rect
/// ... y=".." fill="rgb(r,g,b)" fg:x=".." fg:w=".."/>`.
#[derive(Debug)]
pub struct GrowthBox {
    pub function: String,
    pub title: String,
    pub suspect: bool,
    /// How far from white toward pure red: 255 - green for a red box, 0 for any other.
    pub redness: u32,
    pub y: u64,
    pub x: u64,
    pub width: u64,
}

pub fn growth_boxes(svg: &str) -> Vec<GrowthBox> {
    let attribute = |text: &str, name: &str| -> Option<String> {
        Some(text.split(&format!(" {name}=\"")).nth(1)?.split('"').next()?.to_string())
    };
    let frames = &svg[svg.find("<svg id=\"frames\"").expect("inferno's frames")..];
    frames
        .split("<g")
        .skip(1)
        .filter_map(|group| {
            let title = group.split("<title>").nth(1)?.split("</title>").next()?.to_string();
            let rect = group.split("<rect").nth(1)?;
            let fill = attribute(rect, "fill")?;
            let rgb: Vec<u32> =
                fill.strip_prefix("rgb(")?.strip_suffix(')')?.split(',').map(|c| c.parse().unwrap()).collect();
            Some(GrowthBox {
                // growth.svg tells boxes of one function apart by zero-width characters after its name.
                function: title
                    .rsplit_once(" (")
                    .map_or(title.as_str(), |(function, _)| function)
                    .trim_end_matches(['\u{200b}', '\u{200c}'])
                    .to_string(),
                suspect: group.split('>').next()?.contains("class=\"suspect\""),
                redness: if rgb[0] == 255 && rgb[1] == rgb[2] { 255 - rgb[1] } else { 0 },
                y: attribute(rect, "y")?.parse().ok()?,
                x: attribute(rect, "fg:x")?.parse().ok()?,
                width: attribute(rect, "fg:w")?.parse().ok()?,
                title,
            })
        })
        .collect()
}

/// The line drawn widest in timeline.svg is `site`'s, alone, and the legend names it suspect 1.
pub fn assert_the_widest_line_is(timeline: &str, site: &str) {
    let (lines, legend) = timeline_lines(timeline);
    let widest = lines.iter().map(|l| l.width).max().expect("lines in timeline.svg");
    let widest_lines: Vec<&TimelineLine> = lines.iter().filter(|l| l.width == widest).collect();
    assert_eq!(widest_lines.len(), 1, "one line stands out: {lines:?}");
    let entry = legend.iter().find(|(line, _)| line.colour == widest_lines[0].colour && line.width == widest);
    let label = &entry.expect("the widest line is in the legend").1;
    assert!(label.starts_with(&format!("suspect 1: {site}")), "{label} against {site}");
}

/// growth.svg is coloured by each box's growth: the box of frame `site` is the reddest of all but the
/// boxes it sits on and those on top of it (its callers and its callees hold its growth: a callee that
/// holds all of it, while another callee shrank a little, is a shade redder), and outlined as suspect 1;
/// the churner's (a function starting `churner`) is less than half as red and not outlined.
pub fn assert_the_reddest_box_is(growth: &str, site: &str, churner: &str) {
    let boxes = growth_boxes(growth);
    let tops: Vec<&GrowthBox> = boxes.iter().filter(|b| b.function == site).collect();
    let top = tops.iter().max_by_key(|b| b.redness).unwrap_or_else(|| panic!("a {site} box in growth.svg"));
    assert!(top.redness > 0 && top.suspect, "{top:?}");
    assert!(top.title.contains("suspect 1: grows") && top.title.contains("per turn"), "{top:?}");
    let sits_on = |below: &GrowthBox| {
        tops.iter().any(|c| below.y > c.y && below.x <= c.x && below.x + below.width >= c.x + c.width)
    };
    let on_top = |above: &GrowthBox| {
        tops.iter().any(|c| above.y < c.y && above.x >= c.x && above.x + above.width <= c.x + c.width)
    };
    let redder: Vec<&GrowthBox> =
        boxes.iter().filter(|b| b.redness > top.redness && !sits_on(b) && !on_top(b)).collect();
    assert!(redder.is_empty(), "redder than the top suspect {top:?}: {redder:?}");
    if let Some(churner) = boxes.iter().filter(|b| b.function.starts_with(churner)).max_by_key(|b| b.redness) {
        assert!(churner.redness * 2 < top.redness && !churner.suspect, "{churner:?} against {top:?}");
    }
}

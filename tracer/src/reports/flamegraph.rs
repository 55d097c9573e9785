//! Flamegraphs drawn by inferno from folded stacks: outstanding bytes, and growth over a window.
//! With nothing to draw, a small picture that says so: inferno refuses (`No stack counts found`) or draws
//! an error message of its own.
//!
//! Boxes are coloured by what a reader looks for, never at random: in flamegraph.svg by the kind of code
//! (JavaScript, runtime-internal, native, unnamed native, kernel), in growth.svg by how much the stacks
//! under the box grew. Labels are cut on the right, so a narrow box keeps the start of its function's name.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use anyhow::{Context, Result};
use inferno::flamegraph::{
    self, FuncFrameAttrsMap, Options, TextTruncateDirection,
    color::{Color, PaletteMap},
};

use super::{
    frames::{self, FrameClass},
    summary::human_bytes,
};

/// A flamegraph of folded `stack bytes` lines; `nothing`: what the picture says when no stack has bytes.
pub fn render(folded: &str, title: &str, subtitle: &str, nothing: &str) -> Result<Vec<u8>> {
    let folded: String = folded
        .lines()
        .map(|line| match line.rsplit_once(' ') {
            Some((stack, count)) => format!("{} {count}\n", fold_unnamed(stack)),
            None => format!("{line}\n"),
        })
        .collect();
    let mut palette = PaletteMap::default();
    for function in functions(folded.lines().filter_map(|line| line.rsplit_once(' ').map(|(stack, _)| stack))) {
        palette.insert(function, kind_colour(function));
    }
    let mut options = options(title, subtitle);
    options.palette_map = Some(&mut palette);
    draw(&folded, &mut options, nothing)
}

/// One stack of the growth view: its folded frames (`[source];root;...;leaf`), bytes at the end of the
/// window, what it gained over the window (negative: it shrank), and the share of all it allocated that
/// it still held at the end of the trace (0..=1).
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthStack {
    pub line: String,
    pub to_bytes: u64,
    pub growth: i64,
    pub retained_fraction: f64,
}

impl GrowthStack {
    /// The growth it keeps: growth × retained fraction, as report.json's `kept_growth_bytes`. A churner's
    /// resident memory grows by the freed pages it touched first, which then hold other stacks' data: it
    /// keeps a small share of all it made resident, and its growth counts by that share. The share is the
    /// suspect's (of all its stacks) when the stack's deepest suspect frame is one of `marks`, else the
    /// stack's own. Shrinking counts whole.
    pub fn kept_growth(&self, marks: &[Mark]) -> i64 {
        if self.growth <= 0 {
            return self.growth;
        }
        let suspect = self.line.rsplit(';').find_map(|frame| {
            let site = frames::site_name(frame);
            marks.iter().find(|mark| mark.site == site)
        });
        let retained = suspect.map_or(self.retained_fraction, |mark| mark.retained_fraction);
        (self.growth as f64 * retained.clamp(0.0, 1.0)).round() as i64
    }
}

/// A suspect to point out in growth.svg: its site (`retainStreamChunk (server.ts:143)`, as
/// [`frames::site_name`] names a frame), its rank in the report, verdict, bytes left per turn and the
/// share of all it allocated that it holds. `outlined`: judged a leak (it grows), drawn outlined.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    pub site: String,
    pub rank: usize,
    pub verdict: &'static str,
    pub outlined: bool,
    pub bytes_per_turn: Option<f64>,
    pub retained_fraction: f64,
}

/// growth.svg. A box's width is the bytes its stacks hold at the end of the window (what was freed by
/// then is not drawn), as in flamegraph.svg. Its colour is its own inclusive growth over the window, the
/// growth every stack under it kept ([`GrowthStack::kept_growth`]): red by how much, blue where they
/// shrank, grey when neither; so a leaking function is as red as what it leaked, and the callers it shares
/// with a churner only by what grew. The tooltip says the growth kept, the raw growth and the bytes held,
/// and for a suspect its rank, verdict and bytes per turn; suspects that grow are outlined.
pub fn render_growth(
    stacks: &[GrowthStack],
    marks: &[Mark],
    title: &str,
    subtitle: &str,
    nothing: &str,
) -> Result<Vec<u8>> {
    let stacks: Vec<GrowthStack> =
        stacks.iter().map(|stack| GrowthStack { line: fold_unnamed(&stack.line), ..stack.clone() }).collect();
    let stacks = stacks.as_slice();
    let (boxes, through) = growth_tree(stacks, marks);
    let colours = growth_colours(&boxes);
    // inferno keys colours and tooltips by function name: each box gets a name of its own, the function's
    // followed by its number among the boxes of that function in zero-width characters (nothing to see).
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let names: Vec<String> = boxes
        .iter()
        .map(|b| {
            let number = seen.entry(b.frame).or_default();
            *number += 1;
            format!("{}{}", b.frame, invisible_number(*number - 1))
        })
        .collect();
    let mut palette = PaletteMap::default();
    let mut attributes = String::new();
    for ((b, name), colour) in boxes.iter().zip(&names).zip(&colours) {
        palette.insert(name, *colour);
        // The attribute file's syntax: a name, a tab, then tab-separated `key=value`s; one box a line.
        if b.depth == 0 || name.contains(['\t', '\n', '\r']) || name.trim() != name {
            continue;
        }
        let function = b.frame;
        let growth = &b.growth;
        // inferno's script labels a box with its tooltip less a last `(...)`: the details go there.
        let mut tooltip = format!(
            "{function} ({} kept over the window, of {} grown; {} at its end",
            signed(growth.kept as f64),
            signed(growth.grown as f64),
            human_bytes(growth.to_bytes)
        );
        let mark = marks.iter().find(|mark| mark.site == frames::site_name(function));
        if let Some(mark) = mark {
            let _ = write!(tooltip, "; suspect {}: {}", mark.rank, mark.verdict);
            if let Some(per_turn) = mark.bytes_per_turn {
                let _ = write!(tooltip, ", {} per turn", signed(per_turn));
            }
        }
        tooltip.push(')');
        let _ = write!(attributes, "{name}\ttitle={}", tooltip.replace(['\t', '\n', '\r'], " "));
        if mark.is_some_and(|mark| mark.outlined) {
            attributes.push_str("\tg_extra=class=\"suspect\" stroke=\"#000000\" stroke-width=\"1.5\"");
        }
        attributes.push('\n');
    }
    let mut folded = String::new();
    for (stack, path) in stacks.iter().zip(&through).filter(|(stack, _)| stack.to_bytes > 0) {
        for (depth, index) in path.iter().enumerate() {
            if depth > 0 {
                folded.push(';');
            }
            folded.push_str(&names[*index]);
        }
        let _ = writeln!(folded, " {}", stack.to_bytes);
    }
    let mut options = options(title, subtitle);
    options.palette_map = Some(&mut palette);
    options.func_frameattrs =
        FuncFrameAttrsMap::from_reader(attributes.as_bytes()).context("cannot describe the frames")?;
    draw(&folded, &mut options, nothing)
}

/// Consecutive unnamed frames of one module (`bun+0x1;bun+0x2;bun+0x3`) as one box, `bun (3 frames: 0x1 0x2
/// 0x3)`: one by one they say nothing, and a Bun stack has a dozen of them at its root. The offsets stay in
/// the name, root first, so the tooltip expands the box (and search finds an address); the label, cut on
/// the right, starts `bun (3 frames`. Runs that differ in any frame stay different boxes, as they were.
pub fn fold_unnamed(line: &str) -> String {
    let mut folded: Vec<String> = Vec::new();
    // The run being read: its module and its frames' offsets.
    let mut run: Option<(&str, Vec<&str>)> = None;
    let end_run = |run: Option<(&str, Vec<&str>)>, folded: &mut Vec<String>| match run {
        Some((module, offsets)) if offsets.len() == 1 => folded.push(format!("{module}+{}", offsets[0])),
        Some((module, offsets)) => folded.push(format!("{module} ({} frames: {})", offsets.len(), offsets.join(" "))),
        None => {}
    };
    for frame in line.split(';') {
        let unnamed = (kind(frame) == Kind::Unnamed).then(|| frame.rsplit_once("+0x")).flatten();
        match (&mut run, unnamed) {
            (Some((current, offsets)), Some((module, _))) if *current == module => {
                offsets.push(&frame[module.len() + 1..]);
            }
            (_, Some((module, _))) => {
                end_run(run.take(), &mut folded);
                run = Some((module, vec![&frame[module.len() + 1..]]));
            }
            (_, None) => {
                end_run(run.take(), &mut folded);
                folded.push(frame.to_string());
            }
        }
    }
    end_run(run, &mut folded);
    folded.join(";")
}

/// 0: nothing; n: n in binary, a zero-width space for 0 and a zero-width non-joiner for 1 (distinct for
/// every n, since it starts with a 1).
fn invisible_number(number: usize) -> String {
    if number == 0 {
        return String::new();
    }
    format!("{number:b}").chars().map(|bit| if bit == '1' { '\u{200c}' } else { '\u{200b}' }).collect()
}

fn options<'a>(title: &str, subtitle: &str) -> Options<'a> {
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = Some(subtitle.to_string());
    options.count_name = "bytes".to_string();
    options.name_type = "Function:".to_string();
    options.text_truncate_direction = TextTruncateDirection::Right;
    options
}

/// The distinct frames of folded stacks (without their counts), and `""`, inferno's root `all`.
fn functions<'a>(stacks: impl Iterator<Item = &'a str>) -> HashSet<&'a str> {
    let mut functions: HashSet<&str> = stacks.flat_map(|stack| stack.split(';')).collect();
    functions.insert("");
    functions
}

/// What a box of the growth view stands for: the growth of the stacks under it, what of it they kept,
/// and their bytes at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BoxGrowth {
    pub grown: i64,
    pub kept: i64,
    pub to_bytes: u64,
}

/// A box of the growth view: its frame, its caller's box (the root's is itself), its depth (the root,
/// inferno's `all`, is 0; the source is 1) and the growth of all stacks through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrowthBox<'a> {
    pub frame: &'a str,
    pub parent: usize,
    pub depth: usize,
    pub growth: BoxGrowth,
}

/// The boxes of the growth view, the root first; and for each stack, the boxes it goes through from its
/// first frame to its last. A tree of frames rather than a map of paths: paths would take the square of
/// a stack's depth in memory.
pub fn growth_tree<'a>(stacks: &'a [GrowthStack], marks: &[Mark]) -> (Vec<GrowthBox<'a>>, Vec<Vec<usize>>) {
    let mut boxes = vec![GrowthBox { frame: "", parent: 0, depth: 0, growth: BoxGrowth::default() }];
    let mut children: HashMap<(usize, &str), usize> = HashMap::new();
    let mut through = Vec::with_capacity(stacks.len());
    for stack in stacks {
        let kept = stack.kept_growth(marks);
        let add = |growth: &mut BoxGrowth| {
            growth.grown = growth.grown.saturating_add(stack.growth);
            growth.kept = growth.kept.saturating_add(kept);
            growth.to_bytes = growth.to_bytes.saturating_add(stack.to_bytes);
        };
        add(&mut boxes[0].growth);
        let mut current = 0;
        let mut path = Vec::new();
        for frame in stack.line.split(';') {
            let next = boxes.len();
            current = *children.entry((current, frame)).or_insert_with(|| {
                let depth = boxes[current].depth + 1;
                boxes.push(GrowthBox { frame, parent: current, depth, growth: BoxGrowth::default() });
                next
            });
            add(&mut boxes[current].growth);
            path.push(current);
        }
        through.push(path);
    }
    (boxes, through)
}

/// Red for growth, blue for shrinking, on one scale: the largest change of any box below the source's
/// (which holds them all) is full colour.
pub fn growth_colours(boxes: &[GrowthBox<'_>]) -> Vec<Color> {
    let largest = boxes.iter().filter(|b| b.depth > 1).map(|b| b.growth.kept.unsigned_abs()).max().unwrap_or(0);
    boxes.iter().map(|b| growth_colour(b.growth.kept, largest)).collect()
}

/// Unchanged: grey. Otherwise from a pale to a full red (grew) or blue (shrank), linear in the change.
pub fn growth_colour(growth: i64, largest: u64) -> Color {
    if growth == 0 || largest == 0 {
        return Color { r: 221, g: 221, b: 221 };
    }
    let share = (growth.unsigned_abs() as f64 / largest as f64).min(1.0);
    // 230 is barely tinted; 0 is the pure hue.
    let faded = (230.0 * (1.0 - share)).round() as u8;
    if growth > 0 { Color { r: 255, g: faded, b: faded } } else { Color { r: faded, g: faded, b: 255 } }
}

/// The kind of code a frame is, for its palette.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The application's JavaScript.
    JavaScript,
    /// The runtime's own code: its JavaScript builtins and JIT stubs.
    Runtime,
    Native,
    /// Native code without a symbol (`bun+0x1234`).
    Unnamed,
    Kernel,
    /// The source a stack was seen in (`[page-fault]`) and inferno's root.
    Source,
}

pub fn kind(frame: &str) -> Kind {
    const KERNEL_PAGES: [&str; 3] = ["[vdso]", "[vsyscall]", "[uprobes]"];
    let bracketed = frame.starts_with('[') && frame.ends_with(']') && !frame.contains(' ');
    if frame.is_empty() || (bracketed && !KERNEL_PAGES.contains(&frame)) {
        return Kind::Source;
    }
    if frame.ends_with(')')
        && frame.split_once(" (").is_some_and(|(module, run)| {
            let (count, offsets) = run.split_once(" frames: ").unwrap_or(("", ""));
            !module.contains(' ')
                && !count.is_empty()
                && count.bytes().all(|b| b.is_ascii_digit())
                && offsets.trim_end_matches(')').split(' ').all(|offset| offset.starts_with("0x"))
        })
    {
        // A run of unnamed frames (`bun (12 frames: 0x1 ...)`, see `fold_unnamed`).
        return Kind::Unnamed;
    }
    if frame.ends_with("_[k]")
        || frame.starts_with("[kernel")
        || KERNEL_PAGES.iter().any(|page| frame.starts_with(page))
    {
        return Kind::Kernel;
    }
    match frames::classify(frame) {
        FrameClass::UserJs => Kind::JavaScript,
        FrameClass::RuntimeJs | FrameClass::JitStub => Kind::Runtime,
        FrameClass::Native => Kind::Native,
        FrameClass::Unnamed => Kind::Unnamed,
    }
}

/// A colour in the frame's kind's palette (green JavaScript, blue runtime, yellow native, pale brown
/// unnamed, orange kernel, grey sources), varied by a hash of its name so neighbours stay apart and the
/// same function has the same colour in every picture.
pub fn kind_colour(frame: &str) -> Color {
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let hash =
        frame.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x100_0000_01b3));
    let vary = |range: u8, shift: u32| ((hash >> shift) % (range as u64 + 1)) as u8;
    match kind(frame) {
        Kind::JavaScript => Color { r: 50 + vary(60, 0), g: 190 + vary(50, 8), b: 50 + vary(60, 16) },
        Kind::Runtime => Color { r: 80 + vary(60, 0), g: 160 + vary(50, 8), b: 220 + vary(35, 16) },
        Kind::Native => Color { r: 220 + vary(35, 0), g: 180 + vary(50, 8), b: 40 + vary(40, 16) },
        Kind::Unnamed => Color { r: 200 + vary(25, 0), g: 190 + vary(25, 0), b: 160 + vary(25, 0) },
        Kind::Kernel => Color { r: 240 + vary(15, 0), g: 120 + vary(50, 8), b: 30 + vary(30, 16) },
        Kind::Source => Color { r: 200, g: 200, b: 200 },
    }
}

/// `+1.5 MiB`, `-200 KiB`.
fn signed(bytes: f64) -> String {
    let sign = if bytes < 0.0 { "-" } else { "+" };
    format!("{sign}{}", human_bytes(bytes.abs().round() as u64))
}

fn draw(folded: &str, options: &mut Options, nothing: &str) -> Result<Vec<u8>> {
    if !has_bytes(folded) {
        return Ok(empty(&options.title, nothing));
    }
    let mut svg = Vec::new();
    flamegraph::from_lines(options, folded.lines(), &mut svg).context("cannot draw the flamegraph")?;
    Ok(svg)
}

/// Whether any line counts bytes: the last field of a folded line is above zero.
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
    use std::collections::BTreeMap;

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

    fn stack(line: &str, to_bytes: u64, growth: i64) -> GrowthStack {
        GrowthStack { line: line.to_string(), to_bytes, growth, retained_fraction: 1.0 }
    }

    #[test]
    fn growth_of_stacks_all_freed_by_the_end_draws_a_labelled_picture() {
        let stacks = [stack("[malloc];main;f", 0, -4096000)];
        let svg = render_growth(&stacks, &[], "Growth", "sub", "nothing outstanding at TO").unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("nothing outstanding at TO"));
    }

    #[test]
    fn stacks_with_bytes_are_drawn_by_inferno() {
        let svg = String::from_utf8(render("[malloc];main;f 4096\n", "t", "s", "nothing").unwrap()).unwrap();
        assert!(svg.contains("main") && !svg.contains("nothing"), "{svg}");
        let growth = render_growth(&[stack("[malloc];main;f", 4096, 4086)], &[], "t", "s", "nothing").unwrap();
        assert!(String::from_utf8(growth).unwrap().contains("main"));
    }

    #[test]
    fn a_box_grows_by_every_stack_under_it() {
        let stacks = [
            stack("[resident];main;run;leak", 900, 800),
            stack("[resident];main;run;churn", 300, -200),
            stack("[resident];main;leak;leak", 100, 100),
        ];
        let (tree, through) = growth_tree(&stacks, &[]);
        assert_eq!(through, [vec![1, 2, 3, 4], vec![1, 2, 3, 5], vec![1, 2, 6, 7]]);
        let colours = growth_colours(&tree);
        // Each box by its path from the root.
        let path = |mut index: usize| {
            let mut frames = Vec::new();
            while index != 0 {
                frames.push(tree[index].frame);
                index = tree[index].parent;
            }
            frames.reverse();
            frames.join(";")
        };
        let boxes: BTreeMap<String, (BoxGrowth, Color)> =
            (0..tree.len()).map(|index| (path(index), (tree[index].growth, colours[index]))).collect();
        let grown: Vec<(&str, i64, u64)> =
            boxes.iter().map(|(path, (b, _))| (path.as_str(), b.grown, b.to_bytes)).collect();
        assert_eq!(
            grown,
            [
                ("", 700, 1300),
                ("[resident]", 700, 1300),
                ("[resident];main", 700, 1300),
                ("[resident];main;leak", 100, 100),
                ("[resident];main;leak;leak", 100, 100),
                ("[resident];main;run", 600, 1200),
                ("[resident];main;run;churn", -200, 300),
                ("[resident];main;run;leak", 800, 900),
            ]
        );
        let colours: BTreeMap<&str, Color> = boxes.iter().map(|(path, (_, colour))| (path.as_str(), *colour)).collect();
        // The largest change below the source is full colour; the same function elsewhere is coloured by
        // what grew there.
        assert_eq!(colours["[resident];main;run;leak"], Color { r: 255, g: 0, b: 0 });
        assert_eq!(colours["[resident];main;leak"], growth_colour(100, 800));
        assert_eq!(colours["[resident];main;run;churn"], Color { r: 173, g: 173, b: 255 });
        assert_eq!(colours["[resident];main;leak;leak"], Color { r: 255, g: 201, b: 201 });
        assert_eq!(colours["[resident]"], growth_colour(700, 800));
        let redness = |path: &str| 255 - colours[path].g as i32;
        assert!(redness("[resident];main;run;leak") > redness("[resident];main;run"));
        assert!(redness("[resident];main;run") > redness("[resident];main;leak"));
    }

    #[test]
    fn one_function_in_two_places_has_two_colours() {
        let stacks = [stack("[resident];a;leak", 4096, 4096), stack("[resident];b;leak", 4096, 1024)];
        let svg = String::from_utf8(render_growth(&stacks, &[], "t", "s", "n").unwrap()).unwrap();
        let fills: Vec<&str> = svg
            .split("<title>leak (")
            .skip(1)
            .map(|rest| rest.split("fill=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert_eq!(fills, ["rgb(255,0,0)", "rgb(255,173,173)"]);
    }

    #[test]
    fn box_names_are_distinct_and_invisible() {
        let numbers: HashSet<String> = (0..64).map(invisible_number).collect();
        assert_eq!(numbers.len(), 64);
        assert!(numbers.iter().flat_map(|n| n.chars()).all(|c| c == '\u{200b}' || c == '\u{200c}'));
        assert_eq!(invisible_number(0), "");
    }

    #[test]
    fn growth_colours_are_grey_blue_or_red() {
        assert_eq!(growth_colour(0, 100), Color { r: 221, g: 221, b: 221 });
        assert_eq!(growth_colour(5, 0), Color { r: 221, g: 221, b: 221 });
        assert_eq!(growth_colour(100, 100), Color { r: 255, g: 0, b: 0 });
        assert_eq!(growth_colour(-100, 100), Color { r: 0, g: 0, b: 255 });
        assert_eq!(growth_colour(50, 100), Color { r: 255, g: 115, b: 115 });
        assert_eq!(growth_colour(i64::MIN, u64::MAX), Color { r: 115, g: 115, b: 255 });
    }

    /// The fill of the box whose tooltip starts with `function`, and that box's `<g>` attributes.
    fn box_of<'a>(svg: &'a str, function: &str) -> (&'a str, &'a str) {
        let at = svg.find(&format!("<title>{function}")).unwrap_or_else(|| panic!("no box {function}: {svg}"));
        let group = &svg[svg[..at].rfind("<g").unwrap()..at];
        let rect = &svg[at..];
        let fill = rect.split("fill=\"").nth(1).unwrap().split('"').next().unwrap();
        (fill, group)
    }

    #[test]
    fn growth_svg_colours_boxes_by_growth_kept_and_outlines_suspects() {
        let stacks = [
            stack("[resident];main;retainChunk (server.ts:143)", 9 << 20, 8 << 20),
            // A churner: its resident memory grew twice as much, but it holds an eighth of all it touched.
            GrowthStack {
                retained_fraction: 0.125,
                ..stack("[resident];main;renderTemporary (server.ts:211)", 20 << 20, 16 << 20)
            },
            stack("[resident];main;trim", 1 << 20, -(2 << 20)),
        ];
        let marks = [
            Mark {
                site: "retainChunk (server.ts:143)".into(),
                rank: 1,
                verdict: "grows",
                outlined: true,
                bytes_per_turn: Some(716.8 * 1024.0),
                retained_fraction: 1.0,
            },
            Mark {
                site: "renderTemporary (server.ts:211)".into(),
                rank: 2,
                verdict: "flat",
                outlined: false,
                bytes_per_turn: None,
                retained_fraction: 0.125,
            },
        ];
        let svg = String::from_utf8(render_growth(&stacks, &marks, "t", "s", "nothing").unwrap()).unwrap();
        let (fill, group) = box_of(&svg, "retainChunk (server.ts:143)");
        assert_eq!(fill, "rgb(255,0,0)");
        assert!(group.contains("class=\"suspect\""), "{group}");
        let tooltip = "<title>retainChunk (server.ts:143) (+8.0 MiB kept over the window, of +8.0 MiB grown; 9.0 MiB at \
                       its end; suspect 1: grows, +716.8 KiB per turn)</title>";
        assert!(svg.contains(tooltip), "{svg}");
        let (fill, group) = box_of(&svg, "renderTemporary (server.ts:211)");
        assert_eq!(fill, "rgb(255,173,173)");
        assert!(!group.contains("class"), "a suspect that does not grow is not outlined: {group}");
        let tooltip = "<title>renderTemporary (server.ts:211) (+2.0 MiB kept over the window, of +16.0 MiB grown; 20.0 \
                       MiB at its end; suspect 2: flat)</title>";
        assert!(svg.contains(tooltip), "{svg}");
        let (fill, _) = box_of(&svg, "trim");
        assert_eq!(fill, "rgb(173,173,255)");
        // Labels are cut on the right: the function's name stays.
        assert!(svg.contains("truncate_text_right = true"), "{svg}");
    }

    #[test]
    fn only_growth_counts_by_what_a_stack_or_its_suspect_kept() {
        let churner = GrowthStack { retained_fraction: 0.25, ..stack("[resident];f (a.ts:1);g", 100, 400) };
        assert_eq!(churner.kept_growth(&[]), 100);
        assert_eq!(GrowthStack { growth: -400, ..churner.clone() }.kept_growth(&[]), -400);
        assert_eq!(GrowthStack { retained_fraction: 7.0, ..churner.clone() }.kept_growth(&[]), 400);
        // Its deepest suspect frame's share, of all that suspect's stacks, wins.
        let mark = |site: &str, retained_fraction| Mark {
            site: site.to_string(),
            rank: 1,
            verdict: "flat",
            outlined: false,
            bytes_per_turn: None,
            retained_fraction,
        };
        assert_eq!(churner.kept_growth(&[mark("f (a.ts:1)", 0.5)]), 200);
        assert_eq!(churner.kept_growth(&[mark("f (a.ts:1)", 0.5), mark("g", 0.125)]), 50);
        assert_eq!(churner.kept_growth(&[mark("h", 0.5)]), 100);
    }

    #[test]
    fn runs_of_unnamed_frames_of_one_module_fold_into_one_box() {
        assert_eq!(
            fold_unnamed("[resident];bun+0x1;bun+0x2;bun+0x3;run (a.ts:1);bun+0x4;libc.so.6+0x5;libc.so.6+0x6"),
            "[resident];bun (3 frames: 0x1 0x2 0x3);run (a.ts:1);bun+0x4;libc.so.6 (2 frames: 0x5 0x6)"
        );
        assert_eq!(fold_unnamed("[malloc];main;f"), "[malloc];main;f");
        assert_eq!(fold_unnamed("bun+0x1;[unknown] 0x2;[unknown] 0x3"), "bun+0x1;[unknown] 0x2;[unknown] 0x3");
        assert_eq!(fold_unnamed("a+0x1;b+0x2;b+0x3"), "a+0x1;b (2 frames: 0x2 0x3)");
        assert_eq!(kind("bun (12 frames: 0x1 0x2)"), Kind::Unnamed);
        assert_eq!(kind("run (a.ts:12)"), Kind::JavaScript);
        assert_eq!(kind("f (2 frames: of text)"), Kind::Native, "only offsets make a run");
        // The tooltip expands the box; the same run twice is one box, as wide as both; another run is
        // another box.
        let svg = render(
            "[resident];bun+0x1;bun+0x2;f 4096\n[resident];bun+0x1;bun+0x2;g 4096\n[resident];bun+0x3;bun+0x4;f 4096\n",
            "t",
            "s",
            "n",
        )
        .unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<title>bun (2 frames: 0x1 0x2) (8,192 bytes, 66.67%)</title>"), "{svg}");
        assert!(svg.contains("<title>bun (2 frames: 0x3 0x4) (4,096 bytes, 33.33%)</title>"), "{svg}");
        let growth = render_growth(
            &[stack("[resident];bun+0x1;bun+0x2;f", 4096, 4096), stack("[resident];bun+0x1;bun+0x2;g", 4096, 0)],
            &[],
            "t",
            "s",
            "n",
        )
        .unwrap();
        let growth = String::from_utf8(growth).unwrap();
        assert!(
            growth.contains(
                "<title>bun (2 frames: 0x1 0x2) (+4.0 KiB kept over the window, of +4.0 KiB grown; 8.0 KiB at its end)</title>"
            ),
            "{growth}"
        );
    }

    #[test]
    fn frames_of_each_kind_have_their_own_palette() {
        for (frame, expected) in [
            ("retainStreamChunk (server.ts:143)", Kind::JavaScript),
            ("buildMessage [JS:FTL]", Kind::JavaScript),
            ("#pull [JS:Baseline]", Kind::Runtime),
            ("[JSC thunk] DefaultCall", Kind::Runtime),
            ("operator new(unsigned long)", Kind::Native),
            ("bun+0x1234ab", Kind::Unnamed),
            ("[vdso]+0x9c0", Kind::Kernel),
            ("do_anonymous_page_[k]", Kind::Kernel),
            ("[page-fault]", Kind::Source),
            ("", Kind::Source),
        ] {
            assert_eq!(kind(frame), expected, "{frame}");
        }
        let is_green = |c: Color| c.g > c.r && c.g > c.b;
        let is_blue = |c: Color| c.b > c.r && c.b > c.g;
        let is_yellow = |c: Color| c.r > c.b + 100 && c.g > c.b + 100;
        assert!(is_green(kind_colour("retainStreamChunk (server.ts:143)")));
        assert!(is_blue(kind_colour("#pull [JS:Baseline]")));
        assert!(is_yellow(kind_colour("operator new(unsigned long)")));
        assert_eq!(kind_colour("main"), kind_colour("main"), "the same function, the same colour");
        let svg = String::from_utf8(render("[resident];main;run (a.ts:1) 4096\n", "t", "s", "n").unwrap()).unwrap();
        let c = kind_colour("run (a.ts:1)");
        assert!(svg.contains(&format!("fill=\"rgb({},{},{})\"", c.r, c.g, c.b)), "{svg}");
    }
}

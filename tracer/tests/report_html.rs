//! report.html in a real browser: tests/fixtures/turns.c is traced with its turns, and headless Chromium
//! loads the page from file:// (no server, no network). The page's script must run without error (it
//! marks the body when it did, and Chromium logs no uncaught error), the top suspect of report.json must be
//! the page's featured site, each flamegraph must be there once, and a screenshot is taken.

mod common;

use std::{path::Path, process::Command};

use common::{Report, Running, fixture, output_dir, start_tracer};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `page` (with `fragment` after `#` when given) with `mode` (`--dump-dom`,
/// `--screenshot=...`), asserts that the page's console said nothing (errors included): (stdout, stderr).
fn chromium(page: &Path, fragment: &str, mode: &[&str]) -> (String, String) {
    let profile = page.parent().unwrap().join("chromium-profile");
    let output = Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Lets the iframes' Blob URLs load before the DOM is dumped.
        .arg("--virtual-time-budget=5000")
        .args(mode)
        .arg(format!("file://{}{fragment}", page.display()))
        .output()
        .unwrap_or_else(|error| panic!("cannot run {CHROMIUM}: {error}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "chromium failed: {stderr}");
    // Chromium logs the page's console, errors included, as `...:CONSOLE(line)] "message", source: ...`.
    let console: Vec<&str> = stderr.lines().filter(|line| line.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(!stderr.contains("Uncaught"), "{stderr}");
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

#[test]
fn the_page_loads_without_errors_and_features_the_top_suspect() {
    let out = output_dir("report_html");
    let mut target = Running::spawn(Command::new(fixture("turns")).arg("wait"));
    let pid = target.pid().to_string();
    let mut tracer = start_tracer(&[
        "-o",
        out.to_str().unwrap(),
        "--pid",
        &pid,
        "--turn-start",
        r"^turn start (?P<id>\S+)$",
        "--turn-end",
        r"^turn end (?P<id>\S+)$",
    ]);
    target.send_line("go");
    target.stdout.wait_for("done");
    target.close_stdin();
    assert!(target.wait().success());
    assert!(tracer.wait().success());
    let report = Report::load(&out);
    let top = report.0["suspects"][0]["site"].as_str().expect("a top suspect");
    let page = out.join("report.html");
    let html = std::fs::read_to_string(&page).expect("report.html is written");
    assert!(no_external_resource(&html), "the page names a resource elsewhere");

    let (dom, stderr) = chromium(&page, "", &["--dump-dom"]);
    assert!(dom.contains("data-script=\"ran\""), "the page's script did not run to its end: {stderr}");
    let featured = format!("<div class=\"site\">{}</div>", escape(top));
    assert!(dom.contains(&featured), "the top suspect {top} is not featured");
    let first_row = dom.find("<tr class=\"first\">").expect("a first row");
    assert!(dom[first_row..].contains(&format!("<td class=\"site\">{}", escape(top))));
    // turns.c has ten turns: one bar each, and a mark each on the growth chart.
    let turns = report.0["turns"].as_array().unwrap().len();
    assert_eq!(dom.matches("<rect class=\"bar\"").count(), turns);
    assert_eq!(dom.matches("<line class=\"turn\"").count(), turns);
    // One flamegraph per source seen (resident and mapped here), one shown at a time, and growth.
    let sources = report.0["totals"]["by_source"].as_object().unwrap().len();
    assert_eq!(dom.matches("<div class=\"graph\" id=\"flamegraph-").count(), sources);
    assert_eq!(
        dom.matches("<div class=\"graph\" id=\"flamegraph-").count() - 1,
        dom.matches("\" hidden=\"\"><iframe").count()
    );
    assert_eq!(dom.matches("<iframe").count(), sources + 1);
    // The shown flamegraph and the growth one are loaded; the others when chosen.
    assert_eq!(dom.matches("src=\"blob:").count(), 2, "each graph shown is loaded");

    // The source switcher, from a link: the mapped flamegraph alone is shown and loaded.
    let (dom, _) = chromium(&page, "#flamegraph-mmap", &["--dump-dom"]);
    assert!(dom.contains("data-script=\"ran\""));
    assert!(dom.contains("<div class=\"graph\" id=\"flamegraph-mmap\"><iframe title=\"mapped memory\" src=\"blob:"));
    assert!(dom.contains(
        "<div class=\"graph\" id=\"flamegraph-page-fault\" hidden=\"\"><iframe title=\"resident memory\"></iframe>"
    ));
    assert!(dom.contains("<button type=\"button\" data-show=\"flamegraph-mmap\" class=\"on\">"));

    let screenshot = out.join("report.png");
    chromium(&page, "", &[&format!("--screenshot={}", screenshot.display()), "--window-size=1280,1600"]);
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
}

/// The page's own markup (the embedded SVGs aside, which are inferno's, whose only URLs are in comments and
/// namespaces) names no URL: nothing is fetched.
fn no_external_resource(html: &str) -> bool {
    let carrier = "<script type=\"application/json\">";
    let own: String = html
        .split(carrier)
        .enumerate()
        .map(|(index, part)| if index == 0 { part } else { part.split_once("</script>").map_or("", |(_, rest)| rest) })
        .collect();
    own.contains("<html")
        && !own.contains("http:")
        && !own.contains("https:")
        && !["src=\"//", "href=\"//", "url("].iter().any(|link| own.contains(link))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

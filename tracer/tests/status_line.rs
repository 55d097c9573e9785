//! The live status line on a real terminal: tmux gives the tracer an 80-column pseudo-terminal, and its
//! screen, scrollback included, is read while the trace runs.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use common::{Report, Running, TRACER, fixture, output_dir};

const COLUMNS: usize = 80;
/// Printed by the pane's shell once the tracer is done, so that the pane stays for reading.
const EXITED: &str = "tracer exited with";

/// A tmux server of our own (its own socket), killed and its socket removed at the end whatever happens.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// `name` is short: a socket's path must fit in 108 bytes.
    fn start(name: &str, columns: usize, command: &str) -> Self {
        let socket = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tmux-{name}-{}", std::process::id()));
        let tmux = Self { socket };
        let width = columns.to_string();
        let output = tmux.run(&["new-session", "-d", "-x", &width, "-y", "24", command]);
        assert!(output.status.success(), "tmux cannot start: {}", String::from_utf8_lossy(&output.stderr));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        // No configuration file: the user's could change the pane's size or history.
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    /// Every line on the screen and in its history, lines the terminal wrapped joined back into one.
    fn lines(&self) -> Vec<String> {
        let output = self.run(&["capture-pane", "-p", "-J", "-S", "-"]);
        assert!(output.status.success(), "capture-pane: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).lines().map(|line| line.trim_end().to_string()).collect()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// What a terminal showed while the tracer ran with `args` until it ended by itself.
struct Screen {
    /// Every distinct line seen, in the pane or its history, over the whole run.
    seen: BTreeSet<String>,
    columns: usize,
}

impl Screen {
    /// Runs the tracer with `args` in an 80-column tmux pane, reading the pane every 100 ms; `meanwhile` is
    /// called with the time since the start at each reading.
    fn trace(test: &str, socket_name: &str, args: &[&str], meanwhile: impl FnMut(Duration)) -> Self {
        Self::trace_on(COLUMNS, test, socket_name, args, meanwhile)
    }

    /// [`Self::trace`] on a terminal `columns` wide.
    fn trace_on(
        columns: usize,
        test: &str,
        socket_name: &str,
        args: &[&str],
        mut meanwhile: impl FnMut(Duration),
    ) -> Self {
        let summary = output_dir(test).with_extension("summary");
        let mut command = quoted(TRACER);
        for arg in args {
            command.push(' ');
            command.push_str(&quoted(arg));
        }
        // The summary goes to a file: only stderr, where the status line is, is the terminal.
        let command = format!("{command} >{}; echo {EXITED} $?; sleep 600", quoted(&summary.to_string_lossy()));
        let tmux = Tmux::start(socket_name, columns, &command);
        let mut seen = BTreeSet::new();
        let started = Instant::now();
        loop {
            let lines = tmux.lines();
            let exited = lines.iter().any(|line| line.contains(EXITED));
            seen.extend(lines);
            if exited {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the tracer did not end; the screen: {seen:#?}");
            meanwhile(started.elapsed());
            thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file(&summary);
        let exit_line = seen.iter().find(|line| line.contains(EXITED)).unwrap();
        assert!(exit_line.ends_with(&format!("{EXITED} 0")), "{exit_line}; the screen: {seen:#?}");
        Self { seen, columns }
    }

    /// The status line's updates and whatever they left behind: they all say RSS. (The tracer's other
    /// messages are plain lines, which may wrap.)
    fn status_lines(&self) -> Vec<&String> {
        let lines: Vec<&String> = self.seen.iter().filter(|line| line.contains(" RSS ")).collect();
        assert!(!lines.is_empty(), "no status line was shown; the screen: {:#?}", self.seen);
        lines
    }

    /// No status line is wider than the terminal, wrapped lines joined, nor reaches its last column (where
    /// some terminals wrap).
    fn assert_fits(&self) {
        for line in self.status_lines() {
            assert!(line.chars().count() < self.columns, "{} characters: {line:?}", line.chars().count());
        }
    }

    /// The line says "lost" only when report.json counts a loss.
    fn assert_lost_only_for_losses(&self, report: &Report) {
        let losses = ["lost_events", "map_full", "stack_errors", "unpaired_syscalls", "missed_frees"];
        if losses.iter().all(|counter| report.counter(counter) == 0) {
            let lossy: Vec<_> = self.status_lines().into_iter().filter(|line| line.contains("lost")).collect();
            assert!(lossy.is_empty(), "report.json counts no loss, yet: {lossy:#?}");
        }
    }
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// On an 80-column terminal the status line is rewritten in place, every source's bytes or not: no line,
/// wrapped or not, is wider than the terminal.
#[test]
fn the_status_line_fits_an_80_column_terminal() {
    let test = "the_status_line_fits_an_80_column_terminal";
    let out = output_dir(test);
    let mut target = Running::spawn(Command::new(fixture("mappings")).arg("wait"));
    let pid = target.pid().to_string();
    let mut sent_go = false;
    // Some updates on an idle target, then with the target's mappings in every source.
    let screen = Screen::trace(test, "fits", &["-o", out.to_str().unwrap(), "-d", "6s", "--pid", &pid], |elapsed| {
        if !sent_go && elapsed > Duration::from_secs(3) {
            target.send_line("go");
            sent_go = true;
        }
    });
    target.stdout.wait_for("done");
    target.close_stdin();
    assert!(target.wait().success(), "the target must survive being traced");
    screen.assert_fits();
    screen.assert_lost_only_for_losses(&Report::load(&out));
}

/// Frees of blocks allocated before the trace began are expected when attaching: the line names them
/// "unmatched", not "lost".
#[test]
fn frees_of_blocks_from_before_the_trace_are_unmatched_not_lost() {
    let test = "frees_of_blocks_from_before_the_trace_are_unmatched_not_lost";
    let out = output_dir(test);
    // Allocates 1,000 blocks, holds them for 6 s (the tracer attaches meanwhile), frees them, lingers 3 s.
    let mut target = Running::spawn(Command::new(fixture("frees_all")).args(["6000", "3000"]));
    target.stdout.wait_for("allocated");
    let pid = target.pid().to_string();
    let screen = Screen::trace(test, "unmatched", &["-o", out.to_str().unwrap(), "--pid", &pid], |_| {});
    assert!(target.wait().success(), "the target must survive being traced");
    let report = Report::load(&out);
    assert!(report.counter("unmatched_frees") >= 1000, "the tracer attached after the frees began");
    screen.assert_fits();
    screen.assert_lost_only_for_losses(&report);
    let status_lines = screen.status_lines();
    assert!(status_lines.iter().any(|line| line.contains("unmatched 1")), "{status_lines:#?}");
}

/// Under a tiny overhead budget the line shows the programs' measured share and the page rate the budget
/// set, as report.json does (a 200-column terminal: on 80 columns the sources go first, and on 120 a line
/// that also counts lost events, as a loaded machine's can before the budget takes hold, drops it).
#[test]
fn the_status_line_shows_the_measured_overhead_and_the_page_rate() {
    let test = "the_status_line_shows_the_measured_overhead_and_the_page_rate";
    let out = output_dir(test);
    // Faults for 8 s (the tracer stops after 6 s), then waits for stdin to close.
    let mut target = Running::spawn(Command::new(fixture("fault_storm")).args(["run", "8"]));
    let pid = target.pid().to_string();
    let args = ["-o", out.to_str().unwrap(), "-d", "6s", "--overhead", "0.01", "--pid", &pid];
    let screen = Screen::trace_on(200, test, "overhead", &args, |_| {});
    target.close_stdin();
    assert!(target.wait().success(), "the target must survive being traced");
    screen.assert_fits();
    let report = Report::load(&out);
    let final_rate = report.0["overhead"]["sample_pages"].as_u64().unwrap();
    assert!(final_rate > 1, "{}", report.0["overhead"]);
    // Each rate the budget set shows in the line for a second at least.
    let status_lines = screen.status_lines();
    let rates: BTreeSet<u64> = status_lines
        .iter()
        .filter(|line| line.contains("bpf ") && line.contains("% of 0.01%"))
        .filter_map(|line| line.split("pages 1/").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert!(rates.iter().any(|rate| *rate > 1), "no page rate above 1 shown: {status_lines:#?}");
}

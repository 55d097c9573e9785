//! `cargo xtask demo`: the main job on the bundled demo. Starts the Bun mock of dispatch-server the way
//! production runs it (its own process, JIT dump on), attaches the tracer by pid, drives turns, stops the
//! trace and the server, and prints where the reports are.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{root, run, setup};

/// Turns come in rounds with pauses, as a server sees them, so that the collector, the garbage collector
/// and the allocator's purging all get their moments.
const ROUNDS: usize = 5;
const TURNS_PER_ROUND: &str = "40";
const PAUSE: Duration = Duration::from_secs(1);

pub fn run_demo(extra: &[String]) -> Result<()> {
    crate::build()?;
    let bun = setup::bun()?;
    let output = root().join("leaktrace-demo");
    let jitdump = root().join("target/demo/jitdump");
    let _ = std::fs::remove_dir_all(&output);
    let _ = std::fs::remove_dir_all(&jitdump);
    std::fs::create_dir_all(&jitdump)?;

    let mut server = Server::start(&bun, &jitdump)?;
    eprintln!("xtask: demo server pid {} on port {}", server.child.id(), server.port);

    let tracer_binary = root().join("target/release/dispatch-leaktrace");
    let mut tracer = if crate::is_root() {
        Command::new(&tracer_binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(&tracer_binary);
        sudo
    };
    tracer
        .arg("--pid")
        .arg(server.child.id().to_string())
        .arg("--output")
        .arg(&output)
        // The server logs each orchestrator turn (demo/bun/README.md).
        .args(["--interval", "500ms"])
        .args(["--turn-start", r"^turn start (?P<id>t\d+)$", "--turn-end", r"^turn end (?P<id>t\d+)$"])
        .args(extra);
    let mut tracer = tracer.stderr(Stdio::piped()).spawn().context("cannot start dispatch-leaktrace")?;
    let tracer_lines = lines_of(tracer.stderr.take().expect("piped"), true);
    wait_for(&tracer_lines, "tracing pid", Duration::from_secs(60)).context("the tracer did not start")?;

    for _ in 0..ROUNDS {
        run(Command::new(&bun).arg(root().join("demo/bun/driver.ts")).args([
            "--url",
            &format!("http://127.0.0.1:{}", server.port),
            "--turns",
            TURNS_PER_ROUND,
        ]))?;
        thread::sleep(PAUSE);
    }

    // SIGINT ends the trace with its report, as Ctrl-C would.
    let status = Command::new("kill").args(["-INT", &tracer.id().to_string()]).status()?;
    if !status.success() {
        bail!("cannot stop the tracer");
    }
    let status = tracer.wait()?;
    server.stop();
    if !status.success() {
        bail!("dispatch-leaktrace failed ({status})");
    }
    Ok(())
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(bun: &Path, jitdump: &Path) -> Result<Self> {
        let mut child = Command::new(bun)
            .arg(root().join("demo/bun/server.ts"))
            .env("PORT", "0")
            .env("BUN_JSC_useJITDump", "1")
            .env("BUN_JSC_jitDumpDirectory", jitdump)
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the Bun demo server")?;
        let lines = lines_of(child.stdout.take().expect("piped"), false);
        let line = wait_for(&lines, "listening ", Duration::from_secs(30)).context("the demo server did not start")?;
        let port = line.trim_start_matches("listening ").trim().parse().context("unreadable port")?;
        Ok(Self { child, port })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Lines of a stream, read on a thread; echoed to our stderr when `echo` is set.
fn lines_of(stream: impl std::io::Read + Send + 'static, echo: bool) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{line}");
            }
            let _ = sender.send(line);
        }
    });
    receiver
}

fn wait_for(lines: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> Result<String> {
    loop {
        let line = lines.recv_timeout(timeout).map_err(|_| anyhow::anyhow!("no line with {needle:?}"))?;
        if line.contains(needle) {
            return Ok(line);
        }
    }
}

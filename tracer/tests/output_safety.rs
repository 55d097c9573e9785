//! The output folder, as root beside users who can write in it: no link planted there (before the run or
//! during it) makes the tracer write, remove or hand over anything outside; an unsafe folder is refused; a
//! full disk still leaves a report.json that says what it holds; a reused folder holds no stale report;
//! a failed launch leaves no folder; and every run that traced gets every report.

mod common;

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::Duration,
};

use common::{Report, Running, TRACER, fixture, start_tracer_with_env, user::User};

/// A folder of one test's own under /tmp (reachable by the test's unprivileged user, wherever the
/// repository is), owned by root, mode 0755; removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("leaktrace-output-safety-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A new folder `name` with the given owner and mode.
    fn folder(&self, name: &str, uid: u32, gid: u32, mode: u32) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Root's files and folders the attacker points links at, and what they were.
struct Victims {
    root: PathBuf,
    before: BTreeMap<PathBuf, Entry>,
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    uid: u32,
    gid: u32,
    mode: u32,
    /// A file's length and beginning.
    content: String,
}

impl Victims {
    /// `file-0..3` and `dir-0..2`, each folder holding subfolders named like old checkpoints (which a
    /// pruning through a link would remove) and a file.
    fn new(scratch: &Scratch) -> Self {
        let root = scratch.path("victims");
        std::fs::create_dir(&root).unwrap();
        for index in 0..3 {
            std::fs::write(root.join(format!("file-{index}")), format!("precious {index}\n")).unwrap();
        }
        for index in 0..2 {
            for checkpoint in ["20000101T000000.000Z", "20000102T000000.000Z"] {
                let folder = root.join(format!("dir-{index}")).join(checkpoint);
                std::fs::create_dir_all(&folder).unwrap();
                std::fs::write(folder.join("data"), "precious\n").unwrap();
            }
        }
        let before = survey(&root);
        Self { root, before }
    }

    fn file(&self, index: usize) -> String {
        self.root.join(format!("file-{index}")).to_string_lossy().into_owned()
    }

    fn dir(&self, index: usize) -> String {
        self.root.join(format!("dir-{index}")).to_string_lossy().into_owned()
    }

    fn assert_untouched(&self) {
        assert_eq!(survey(&self.root), self.before, "a victim of a planted link was changed");
    }
}

/// Every path under `root` (links not followed) with its owner, mode and, for files, content.
fn survey(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let content = if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            format!("{} bytes: {}", bytes.len(), String::from_utf8_lossy(&bytes[..bytes.len().min(40)]))
        } else {
            String::new()
        };
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        }
        found.insert(path, Entry { uid: meta.uid(), gid: meta.gid(), mode: meta.mode(), content });
    }
    found
}

fn waiting_fixture() -> Running {
    Running::spawn(Command::new(fixture("mappings")).arg("wait"))
}

fn env_of(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect()
}

fn run_tracer(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(TRACER).args(args).envs(env_of(env)).output().unwrap()
}

/// The tracer failed with one error line that contains `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|line| line.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].starts_with("dispatch-leaktrace: error: ") && errors[0].contains(needle), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("internal error"), "{stderr}");
}

/// The files the summary on stdout says were written, by name.
fn files_listed(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| line.split_once(": "))
        // `report:     /path`: a one-word label, then the file.
        .filter(|(label, _)| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphabetic()))
        .map(|(_, path)| path.trim())
        .filter(|path| path.starts_with('/'))
        .map(|path| Path::new(path).file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn links_planted_in_the_output_folder_are_not_followed() {
    let scratch = Scratch::new("planted");
    let user = User::create("pl");
    let victims = Victims::new(&scratch);
    // The user's own folder, and they ran the tracer with sudo: accepted, and its files become theirs.
    let out = scratch.folder("out", user.uid, user.gid, 0o755);
    let at = |name: &str| out.join(name).to_string_lossy().into_owned();
    user.run(&["ln", "-s", &victims.file(0), &at(".leaktrace-write-check")]);
    user.run(&["ln", "-s", &victims.file(1), &at(".report.json.partial")]);
    user.run(&["ln", "-s", &victims.file(2), &at(".stacks.folded.partial")]);
    user.run(&["ln", "-s", &victims.dir(0), &at("checkpoints")]);
    user.run(&["ln", "-s", &victims.dir(1), &at("snapshots")]);

    let target = waiting_fixture();
    let pid = target.pid().to_string();
    let env = user.sudo_env();
    let args = ["-o", &at(""), "-d", "3s", "--checkpoint", "1s", "--keep", "1", "--pid", &pid];
    let mut tracer = start_tracer_with_env(&args, &env_of(&env));
    tracer.signal(libc::SIGUSR1);
    tracer.stderr.wait_for("snapshot");
    assert!(tracer.wait().success(), "{:?}", tracer.stderr.read_to_end());

    victims.assert_untouched();
    let report = std::fs::metadata(out.join("report.json")).unwrap();
    assert_eq!((report.uid(), report.gid()), (user.uid, user.gid), "report.json is handed to the sudo user");
    Report::load(&out);
}

#[test]
fn a_checkpoints_link_planted_during_the_run_is_not_followed() {
    let scratch = Scratch::new("during");
    let user = User::create("du");
    let victims = Victims::new(&scratch);
    let out = scratch.folder("out", user.uid, user.gid, 0o755);
    let at = |name: &str| out.join(name).to_string_lossy().into_owned();

    let target = waiting_fixture();
    let pid = target.pid().to_string();
    let env = user.sudo_env();
    let args = ["-o", &at(""), "--checkpoint", "1s", "--keep", "1", "--pid", &pid];
    let mut tracer = start_tracer_with_env(&args, &env_of(&env));
    tracer.stderr.wait_for("checkpoint written to");
    user.run(&["mv", &at("checkpoints"), &at("moved")]);
    user.run(&["ln", "-s", &victims.dir(0), &at("checkpoints")]);
    // Several checkpoints fall due with the link in place.
    thread::sleep(Duration::from_millis(3500));
    tracer.signal(libc::SIGINT);
    assert!(tracer.wait().success(), "{:?}", tracer.stderr.read_to_end());

    victims.assert_untouched();
    Report::load(&out);
}

#[test]
fn under_sudo_only_a_folder_the_user_could_have_made_becomes_theirs() {
    let scratch = Scratch::new("handover");
    let user = User::create("ho");
    let owners = |path: &Path| {
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.gid())
    };
    // A folder of root's that root's programs read (like /etc/systemd/system): a drop-in folder made there
    // for the user would let them write what root runs.
    let system = scratch.folder("system", 0, 0, 0o755);
    let dropin = system.join("x.service.d");
    let out = run_tracer(&["--no-alloc", "-o", dropin.to_str().unwrap(), "--", "/bin/true"], &user.sudo_env());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(owners(&dropin), (0, 0));
    assert_eq!(owners(&dropin.join("report.json")), (0, 0));
    let evil = dropin.join("evil.conf");
    assert!(!user.try_run(&["touch", evil.to_str().unwrap()]).status.success());
    assert!(!evil.exists());

    // Made in the user's own folder: theirs, and so is what is in it.
    let home = scratch.folder("home", user.uid, user.gid, 0o755);
    let reports = home.join("reports").join("today");
    let out = run_tracer(&["--no-alloc", "-o", reports.to_str().unwrap(), "--", "/bin/true"], &user.sudo_env());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for path in [home.join("reports"), reports.clone(), reports.join("report.json"), reports.join("flamegraph.svg")] {
        assert_eq!(owners(&path), (user.uid, user.gid), "{}", path.display());
    }
}

#[test]
fn an_output_folder_others_control_is_refused() {
    let scratch = Scratch::new("refused");
    let user = User::create("rf");
    let safe = scratch.folder("safe", 0, 0, 0o755);
    std::os::unix::fs::symlink(&safe, scratch.path("link")).unwrap();
    let cases = [
        (scratch.folder("users", user.uid, user.gid, 0o755), format!("belongs to uid {}", user.uid)),
        (scratch.folder("open", 0, 0, 0o777), "can be written in by anyone (mode 0777)".to_string()),
        (scratch.folder("sticky", 0, 0, 0o1777), "can be written in by anyone (mode 1777)".to_string()),
        (scratch.folder("group", 0, user.gid, 0o775), format!("can be written in by group {}", user.gid)),
        (scratch.path("link"), "is a symbolic link".to_string()),
    ];
    for (folder, problem) in &cases {
        let out = run_tracer(&["--no-alloc", "-o", folder.to_str().unwrap(), "--", "/bin/true"], &[]);
        assert_one_line_error(&out, problem);
        assert_one_line_error(&out, "choose another with -o");
        assert!(names_in(folder).is_empty(), "{} was written in", folder.display());
    }
    assert!(names_in(&safe).is_empty());

    // The same folder of the user's is fine when they are the one running sudo.
    let folder = &cases[0].0;
    let out = run_tracer(&["--no-alloc", "-o", folder.to_str().unwrap(), "--", "/bin/true"], &user.sudo_env());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Report::load(folder);
}

/// A small tmpfs mounted for one test, unmounted after.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> Self {
        std::fs::create_dir(&at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(status.success(), "cannot mount a tmpfs on {}", at.display());
        Self(at)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_still_gets_a_report_json_that_says_what_is_missing() {
    let scratch = Scratch::new("full");
    // The full report.json of this fixture is about 700 KiB, a trimmed one under 100 KiB.
    let disk = SmallDisk::mount(scratch.path("disk"), "256k");
    let program = fixture("many_stacks");
    let out = run_tracer(&["-o", disk.0.to_str().unwrap(), "--", program.to_str().unwrap()], &[]);

    assert_one_line_error(&out, "No space left on device");
    assert_one_line_error(&out, "report.json whole (a trimmed one is written)");
    assert_one_line_error(&out, "report.json lists what failed");
    let report = Report::load(&disk.0);
    assert_eq!(report.0["trimmed"], true);
    let reason = report.0["trimmed_reason"].as_str().unwrap();
    assert!(reason.contains("No space left on device") && reason.contains("stacks cut to the 100"), "{reason}");
    assert!(report.stacks().len() <= 100);
    let failed = report.0["report_errors"].as_array().unwrap();
    assert!(!failed.is_empty());
    let names = names_in(&disk.0);
    for failure in failed {
        let file = failure["file"].as_str().unwrap();
        assert!(failure["error"].as_str().unwrap().contains("No space left on device"), "{failure}");
        assert!(!names.iter().any(|name| name == file), "{file} failed, yet is there");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(file), "the error does not name {file}: {stderr}");
    }
    assert!(!names.iter().any(|name| name.starts_with('.')), "partial files left: {names:?}");
}

#[test]
fn reusing_an_output_folder_leaves_no_report_of_the_earlier_run() {
    let scratch = Scratch::new("reuse");
    let out = scratch.path("out");
    let program = fixture("frees_all");
    let mut first = start_tracer_with_env(
        &["-o", out.to_str().unwrap(), "--checkpoint", "1s", "--", program.to_str().unwrap(), "3000", "500"],
        &[],
    );
    first.stdout.wait_for("allocated");
    first.snapshot();
    first.stderr.wait_for("checkpoint written to");
    assert!(first.wait().success());
    let earlier = names_in(&out);
    for name in ["checkpoints", "snapshots", "latest", "flamegraph-page-fault.svg"] {
        assert!(earlier.iter().any(|n| n == name), "the first run wrote no {name}: {earlier:?}");
    }
    // The user's own files in the folder stay.
    std::fs::write(out.join("notes.txt"), "mine\n").unwrap();
    std::fs::create_dir(out.join("mine")).unwrap();

    let second = run_tracer(&["--no-alloc", "--no-faults", "-o", out.to_str().unwrap(), "--", "/bin/true"], &[]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let mut expected = files_listed(&second.stdout);
    expected.extend(["notes.txt".to_string(), "mine".to_string()]);
    expected.sort();
    assert!(!expected.iter().any(|name| name == "flamegraph-page-fault.svg"));
    assert_eq!(names_in(&out), expected, "stale files of the earlier run");
    assert_eq!(Report::load(&out).0["target"]["cmdline"][0], "/bin/true");
}

#[test]
fn a_launch_that_fails_leaves_no_output_folder() {
    let scratch = Scratch::new("launch");
    let nested = scratch.path("new").join("deeper");
    let out = run_tracer(&["-o", nested.to_str().unwrap(), "--", "/nonexistent"], &[]);
    assert_one_line_error(&out, "cannot run /nonexistent");
    assert!(!scratch.path("new").exists(), "the folders made for the run are left");

    let folder = scratch.path("passwd");
    let out = run_tracer(&["-o", folder.to_str().unwrap(), "--", "/etc/passwd"], &[]);
    assert_one_line_error(&out, "cannot run /etc/passwd: not an executable file");
    assert!(!folder.exists());

    // A folder that was there stays, with an earlier run's report untouched.
    let existing = scratch.folder("existing", 0, 0, 0o755);
    std::fs::write(existing.join("report.json"), "earlier\n").unwrap();
    let out = run_tracer(&["-o", existing.to_str().unwrap(), "--", "/nonexistent"], &[]);
    assert_one_line_error(&out, "cannot run /nonexistent");
    assert_eq!(std::fs::read_to_string(existing.join("report.json")).unwrap(), "earlier\n");
}

#[test]
fn a_run_that_ends_with_nothing_outstanding_gets_every_report() {
    let scratch = Scratch::new("nothing");
    let out = scratch.path("out");
    let program = fixture("frees_all");
    // Longer than an interval: the growth view starts at a snapshot holding the 1,000 blocks.
    let run = run_tracer(&["--interval", "1s", "-o", out.to_str().unwrap(), "--", program.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let report = Report::load(&out);
    let malloc = &report.0["totals"]["by_source"]["malloc"];
    assert_eq!(malloc["outstanding_bytes"], 0, "{malloc}");
    assert!(malloc["allocated_bytes"].as_u64().unwrap() >= 1000 * 4096, "{malloc}");
    assert_eq!(report.0["report_errors"], serde_json::json!([]));
    assert_eq!(report.0["trimmed"], false);
    let listed = files_listed(&run.stdout);
    for name in
        ["report.json", "report.html", "flamegraph.svg", "growth.svg", "timeline.svg", "stacks.folded", "profile.pb.gz"]
    {
        assert!(listed.iter().any(|n| n == name) && out.join(name).is_file(), "no {name}");
    }
    for name in listed.iter().filter(|name| name.ends_with(".svg")) {
        let svg = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "{name}");
        assert!(!svg.contains("No valid input") && !svg.contains("ERROR"), "{name}: {svg}");
    }
    let flamegraph = std::fs::read_to_string(out.join("flamegraph.svg")).unwrap();
    assert!(flamegraph.contains("nothing outstanding in allocator memory"), "{flamegraph}");
    let growth = std::fs::read_to_string(out.join("growth.svg")).unwrap();
    assert!(growth.contains("nothing outstanding in allocator memory"), "{growth}");
}

#[test]
fn a_report_that_cannot_be_written_does_not_stop_the_others() {
    let scratch = Scratch::new("writer");
    let out = scratch.folder("out", 0, 0, 0o755);
    // A folder where flamegraph.svg goes: that file cannot be renamed into place.
    std::fs::create_dir(out.join("flamegraph.svg")).unwrap();
    let run = run_tracer(&["--no-alloc", "-o", out.to_str().unwrap(), "--", "/bin/true"], &[]);
    assert_one_line_error(&run, "cannot write flamegraph.svg");

    let report = Report::load(&out);
    let failed = report.0["report_errors"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["file"], "flamegraph.svg");
    for name in ["growth.svg", "timeline.svg", "stacks.folded", "profile.pb.gz"] {
        assert!(out.join(name).is_file(), "no {name}");
    }
    assert!(!names_in(&out).iter().any(|name| name.starts_with('.')), "{:?}", names_in(&out));
}

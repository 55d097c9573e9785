//! A real unprivileged user for the tests that play a hostile or careless local user: created with
//! useradd for one test, removed when dropped, its commands run with setpriv.

use std::{
    process::{Command, Output},
    sync::Mutex,
    thread,
    time::Duration,
};

use super::Running;

/// useradd and userdel take a lock on /etc/passwd: one at a time in a test binary, and retried while another
/// process holds it.
static USER_DATABASE: Mutex<()> = Mutex::new(());

pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// A new user `lt<tag><pid>`, with a group of its own and no home.
    pub fn create(tag: &str) -> Self {
        let name = format!("lt{tag}{}", std::process::id());
        let _lock = USER_DATABASE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = Command::new("userdel").arg(&name).output(); // a leftover of a killed run
        let mut last = None;
        for _ in 0..40 {
            let out = Command::new("useradd")
                .args(["--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", &name])
                .output()
                .expect("useradd runs");
            if out.status.success() {
                last = None;
                break;
            }
            last = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            thread::sleep(Duration::from_millis(250));
        }
        assert!(last.is_none(), "cannot create user {name}: {last:?}");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        Self { name, uid, gid }
    }

    /// `program` to run as this user (no supplementary groups).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("setpriv");
        command.args(["--reuid", &self.uid.to_string(), "--regid", &self.gid.to_string(), "--clear-groups", "--"]);
        command.arg(program);
        command
    }

    /// Runs `command` (program and arguments) as this user; it must succeed.
    pub fn run(&self, command: &[&str]) {
        let out = self.try_run(command);
        assert!(out.status.success(), "{command:?} as {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `command` (program and arguments) as this user.
    pub fn try_run(&self, command: &[&str]) -> Output {
        let (program, args) = command.split_first().expect("a program");
        self.command(program).args(args).output().unwrap()
    }

    /// A process of this user that does nothing for a minute.
    pub fn sleeper(&self) -> Running {
        Running::spawn(self.command("sleep").arg("60"))
    }

    /// The environment sudo gives the tracer when this user runs it.
    pub fn sudo_env(&self) -> [(String, String); 2] {
        [("SUDO_UID".into(), self.uid.to_string()), ("SUDO_GID".into(), self.gid.to_string())]
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _lock = USER_DATABASE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for _ in 0..40 {
            let out = Command::new("userdel").arg(&self.name).output().unwrap();
            // 6: no such user (gone already).
            if out.status.success() || out.status.code() == Some(6) {
                return;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

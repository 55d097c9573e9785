//! How the target ended: a crash (a fatal signal: SIGSEGV, SIGILL, SIGABRT, SIGBUS...), the OOM killer, or
//! an ordinary exit. Signals and OOM choices come from the kernel as they happen; a launched target's
//! wait status, when we have it, settles the rest.

use std::time::{Duration, SystemTime};

use crate::target::ExitStatus;

/// Signals that end a process with a core dump by default: a crash.
const CRASH_SIGNALS: [i32; 7] =
    [libc::SIGSEGV, libc::SIGILL, libc::SIGABRT, libc::SIGBUS, libc::SIGFPE, libc::SIGTRAP, libc::SIGSYS];
/// A crash signal handled by the target (a crash handler printing a report) counts as the cause of an exit
/// that follows within this long.
const HANDLED_CRASH_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    /// It exited (with this status, when we know it).
    Exit(Option<ExitStatus>),
    /// Killed by a crash signal, at this time; `handled`: its own handler ran first.
    Crash { signal: i32, at: SystemTime, handled: bool },
    /// Chosen by the OOM killer, at this time.
    Oom { at: SystemTime },
}

#[derive(Debug, Default)]
pub struct DeathWatch {
    crash: Option<(i32, SystemTime, bool)>,
    oom: Option<SystemTime>,
}

impl DeathWatch {
    /// A signal delivered to the target; `handler` 0 is the default action.
    pub fn signal(&mut self, signal: i32, handler: u64, at: SystemTime) {
        if CRASH_SIGNALS.contains(&signal) {
            // The first crash signal is the cause; a crash handler often raises another one (SIGABRT) after.
            if self
                .crash
                .is_none_or(|(_, first, _)| at.duration_since(first).unwrap_or_default() > HANDLED_CRASH_WINDOW)
            {
                self.crash = Some((signal, at, handler != 0));
            }
        }
    }

    pub fn oom_killed(&mut self, at: SystemTime) {
        self.oom.get_or_insert(at);
    }

    /// What ended the target, which exited at `exited_at` (with `status` when we launched it).
    pub fn verdict(&self, status: Option<ExitStatus>, exited_at: SystemTime) -> Death {
        if let Some(at) = self.oom {
            return Death::Oom { at };
        }
        if let Some(ExitStatus::Signal(signal)) = status {
            if CRASH_SIGNALS.contains(&signal) {
                let at = self.crash.filter(|(s, ..)| *s == signal).map_or(exited_at, |(_, at, _)| at);
                return Death::Crash { signal, at, handled: self.crash.is_some_and(|(_, _, handled)| handled) };
            }
        }
        match self.crash {
            Some((signal, at, handled)) if exited_at.duration_since(at).unwrap_or_default() <= HANDLED_CRASH_WINDOW => {
                Death::Crash { signal, at, handled }
            }
            _ => Death::Exit(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn a_segfault_with_the_default_action_is_a_crash() {
        let mut watch = DeathWatch::default();
        watch.signal(libc::SIGSEGV, 0, at(100));
        assert_eq!(watch.verdict(None, at(100)), Death::Crash { signal: libc::SIGSEGV, at: at(100), handled: false });
    }

    #[test]
    fn a_crash_handler_that_aborts_reports_the_first_signal() {
        let mut watch = DeathWatch::default();
        watch.signal(libc::SIGSEGV, 0x4242, at(100));
        watch.signal(libc::SIGABRT, 0, at(101));
        let death = watch.verdict(Some(ExitStatus::Signal(libc::SIGABRT)), at(101));
        assert_eq!(death, Death::Crash { signal: libc::SIGABRT, at: at(101), handled: true });
        assert_eq!(watch.verdict(None, at(102)), Death::Crash { signal: libc::SIGSEGV, at: at(100), handled: true });
    }

    #[test]
    fn the_oom_killer_wins_and_ordinary_exits_stay_exits() {
        let mut watch = DeathWatch::default();
        assert_eq!(watch.verdict(Some(ExitStatus::Code(0)), at(5)), Death::Exit(Some(ExitStatus::Code(0))));
        watch.signal(libc::SIGTERM, 0, at(5));
        assert_eq!(watch.verdict(None, at(6)), Death::Exit(None));
        watch.oom_killed(at(7));
        assert_eq!(watch.verdict(Some(ExitStatus::Signal(libc::SIGKILL)), at(7)), Death::Oom { at: at(7) });
    }

    #[test]
    fn a_handled_crash_long_before_the_exit_is_not_its_cause() {
        let mut watch = DeathWatch::default();
        watch.signal(libc::SIGSEGV, 0x4242, at(100));
        assert_eq!(watch.verdict(Some(ExitStatus::Code(0)), at(500)), Death::Exit(Some(ExitStatus::Code(0))));
    }
}

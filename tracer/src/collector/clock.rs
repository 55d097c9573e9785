//! The kernel's clock: `bpf_ktime_get_ns` is CLOCK_MONOTONIC. Reports want wall-clock time.

use std::time::{Duration, SystemTime};

pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Converts monotonic nanoseconds to wall-clock time, from one reading of both clocks.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    monotonic_ns: u64,
    wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        Self { monotonic_ns: monotonic_now_ns(), wall: SystemTime::now() }
    }

    /// A time the clock cannot hold (a corrupt kernel timestamp) is taken as the reading itself.
    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let moved = if monotonic_ns >= self.monotonic_ns {
            self.wall.checked_add(Duration::from_nanos(monotonic_ns - self.monotonic_ns))
        } else {
            self.wall.checked_sub(Duration::from_nanos(self.monotonic_ns - monotonic_ns))
        };
        moved.unwrap_or(self.wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_times_map_around_the_reading() {
        let clock = Clock { monotonic_ns: 5_000_000_000, wall: SystemTime::UNIX_EPOCH + Duration::from_secs(100) };
        assert_eq!(clock.wall(6_500_000_000), SystemTime::UNIX_EPOCH + Duration::from_millis(101_500));
        assert_eq!(clock.wall(4_000_000_000), SystemTime::UNIX_EPOCH + Duration::from_secs(99));
    }
}

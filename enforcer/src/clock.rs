//! The clock, in one place: wall time in unix seconds and RFC 3339, and the conversions
//! to the kernel's clocks (the programs read `CLOCK_BOOTTIME`, events carry
//! `CLOCK_MONOTONIC`).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 3339 UTC, in seconds.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(unix)).to_string()
}

/// RFC 3339 UTC with nanoseconds for nanoseconds since the Unix epoch.
pub fn rfc3339_nanos(unix_ns: i128) -> String {
    let ns = unix_ns.max(0) as u128;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Now, as `rfc3339_nanos`.
pub fn now_rfc3339_nanos() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC, to turn bpf_ktime_get_ns() into wall time.
pub fn monotonic_to_realtime_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// Turns wall-clock deadlines (unix seconds) into `CLOCK_BOOTTIME` nanoseconds, the clock
/// the programs read (`bpf_ktime_get_boot_ns`): unlike the monotonic clock it keeps
/// counting across suspend, so a deadline passes in the kernel when it passes on the wall.
/// The offset is taken once per policy write; a wall-clock step after that moves the
/// daemon's view of a deadline, not the kernel's, until the next write (the daemon writes
/// again on every expiry it sees, and at every start).
#[derive(Clone, Copy, Debug)]
pub struct UnixToBoottime {
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, in nanoseconds.
    offset_ns: i128,
}

impl UnixToBoottime {
    pub fn now() -> Self {
        UnixToBoottime {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    /// The boottime instant of `unix` seconds; 1 (already past) for deadlines before boot.
    pub fn convert(&self, unix: u64) -> u64 {
        let t = unix as i128 * 1_000_000_000 - self.offset_ns;
        t.clamp(1, u64::MAX as i128) as u64
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

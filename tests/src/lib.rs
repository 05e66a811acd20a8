//! The test bed: real namespaces, veths, cgroups and daemon processes, each held by a guard
//! that removes it on drop (also when a test panics), with names unique per run so
//! tests run in parallel. Only what a test creates is touched: never the host's
//! interfaces, never the root cgroup.
//!
//! Conventions every test file gets from here:
//! - **Names**: make every namespace, veth, cgroup, pin dir and temp dir name with
//!   [`unique`]`(prefix)` (prefix of at most 4 characters for interfaces): it embeds this
//!   process's random run tag, registered under [`sweep::RUNS_DIR`] while the process lives,
//!   so `cargo xtask test` can remove an interrupted run's leftovers (and nothing else).
//! - **Skips**: a test that cannot prove what it is for says so with
//!   [`skip!`]`("reason")` (records the skip and returns) or [`skip_part`]`("reason")` (records
//!   it and goes on with the rest). Never print "skipped" and return `ok`: `cargo xtask test`
//!   counts recorded skips apart from passes, lists them, and under `CI=true` fails on them.
//! - **Time**: wait for a condition (an event, a counter, a state) with a generous deadline;
//!   an absence is watched for at least [`ABSENCE`].

pub mod bed;
pub mod daemon;
pub mod flood;
pub mod forge;
pub mod kernel;
pub mod machine;
pub mod net;
pub mod packets;
pub mod sinks;
pub mod sweep;
pub mod traffic;

use std::{
    io::Write as _,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// How long a test watches for something that must not happen (an event, a packet): long
/// enough that a loaded machine cannot fake a pass by being slow.
pub const ABSENCE: Duration = Duration::from_secs(2);

/// A short name unique to this run and call: `{prefix}{tag}x{n}`, the tag being this
/// process's random run tag (see [`sweep`]). Fits IFNAMSIZ for prefixes of up to 4
/// characters and up to 1000 names per process.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", sweep::run_tag())
}

/// The file `cargo xtask test` reads skip records from (one `SKIP: test: reason` line per
/// skip); without it, skips are only printed.
pub const SKIPS_ENV: &str = "ENFORCER_TEST_SKIPS";

/// Records that the calling test did not prove something, and why: a line
/// `SKIP: <binary>::<test>: <reason>` on stderr and in the file named by
/// [`SKIPS_ENV`]. The test name is the libtest thread's name (call this from the test's own
/// thread).
pub fn skip_part(reason: &str) {
    let exe = std::env::current_exe().ok();
    let binary = exe
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy())
        .map(|s| {
            s.rsplit_once('-')
                .map_or(s.to_string(), |(b, _)| b.to_string())
        })
        .unwrap_or_else(|| "?".into());
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<not on a test thread>");
    let line = format!("SKIP: {binary}::{test}: {}\n", reason.replace('\n', " "));
    eprint!("{line}");
    if let Some(path) = std::env::var_os(SKIPS_ENV) {
        // One append-mode write per record, so records of parallel tests do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "recording a skip in {}: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// Ends the test here, recording why it could not run (see [`skip_part`]):
/// `skip!("bpftool is not installed")`, with `format!` arguments.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)+) => {{
        $crate::skip_part(&format!($($reason)+));
        return;
    }};
}

/// Skips the test (see [`skip!`]) when it does not run as root (`cargo xtask test` refuses
/// to run without root, so under it every test runs).
#[macro_export]
macro_rules! need_root {
    () => {
        if !$crate::is_root() {
            $crate::skip!("needs root (namespaces, cgroups, BPF)");
        }
    };
}

/// Whether this process may do what the tests need (root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Keeps this thread (the whole process, if it has one thread) on the CPU it runs on: the
/// programs' memos are per CPU, and a test that hops CPUs would not exercise them.
pub fn stay_on_this_cpu() {
    // SAFETY: sched_getcpu and sched_setaffinity on this thread, with a set we own.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu failed");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// Now on `CLOCK_BOOTTIME`, the clock the programs' deadlines are on (ns).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The daemon binary: ENFORCER_BIN (set by `cargo xtask test`), else the workspace's
/// debug build.
pub fn enforcer_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("ENFORCER_BIN") {
        return p.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/enforcer")
}

/// The probe binary (this crate's `probe`), next to the test executable's directory.
pub fn probe_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("probe")
}

//! The test bed: real namespaces, veths, cgroups and daemon processes, each held by a guard
//! that removes it on drop (also when a test panics), with names unique per process so
//! tests run in parallel. Only what a test creates is touched: never the host's
//! interfaces, never the root cgroup.

pub mod bed;
pub mod daemon;
pub mod flood;
pub mod forge;
pub mod kernel;
pub mod machine;
pub mod net;
pub mod packets;
pub mod sinks;
pub mod traffic;

use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `{prefix}{pid}x{n}` (fits IFNAMSIZ for
/// prefixes of up to 4 characters).
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Ends a test early, saying so, when it does not run as root (`cargo xtask test` refuses
/// to run without root, so under it every test runs).
#[macro_export]
macro_rules! need_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root (namespaces, cgroups, BPF)");
            return;
        }
    };
}

/// Whether this process may do what the tests need (root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
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

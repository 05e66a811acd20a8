//! Run tags, and the sweep of interrupted runs' leftovers.
//!
//! Each test process draws a random tag (from getrandom, not the pid: pids repeat) and
//! registers it as a file under [`RUNS_DIR`] that it holds locked (flock) until it exits,
//! however it exits. Every name [`crate::unique`] makes embeds the tag. The sweep
//! (`cargo xtask test` runs it first, through the `sweep` binary) takes each registered
//! tag whose lock it can get, i.e. whose process is gone, and removes what carries that
//! tag: network namespaces (with their veths), interfaces, cgroups (killing what runs in
//! them), pin dirs under /sys/fs/bpf and temp dirs. A name without a registered dead tag
//! is never touched, so a run in progress beside it, or anything not made by this suite,
//! stays.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

/// Where live runs register their tags.
pub const RUNS_DIR: &str = "/run/enforcer-tests";

/// The tag's letters: no digit, no hex letter and no 'x', so a tag can never be read out
/// of the pid-based names earlier versions of the suite made (`{prefix}{pid}x{n}`).
const ALPHABET: &[u8] = b"ghijklmnopqrstuvwyz";
const TAG_LEN: usize = 6;

static TAG: OnceLock<String> = OnceLock::new();

/// This process's run tag, drawn and registered on first use.
pub fn run_tag() -> &'static str {
    TAG.get_or_init(register)
}

/// Random bytes from getrandom.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // SAFETY: getrandom writes at most `len` bytes into the buffer we pass.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(
        n,
        N as isize,
        "getrandom: {}",
        std::io::Error::last_os_error()
    );
    bytes
}

fn random_tag() -> String {
    random_bytes::<TAG_LEN>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn register() -> String {
    let dir = Path::new(RUNS_DIR);
    if std::fs::create_dir_all(dir).is_err() {
        // Not root: nothing this process makes can outlive it in a shared place anyway.
        return random_tag();
    }
    loop {
        let tag = random_tag();
        // create_new: a tag another run holds (or left) is drawn again.
        let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&tag))
        else {
            continue;
        };
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        let _ = std::fs::write(dir.join(&tag), format!("{}\n", std::process::id()));
        // Held until the process exits: the kernel drops the lock then, however it ends.
        std::mem::forget(f);
        return tag;
    }
}

/// The run tag in a name made by [`crate::unique`] (`{prefix}{tag}x{n}`), if it has one.
pub fn tag_of(name: &str) -> Option<&str> {
    let rest = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if rest.len() == name.len() {
        return None;
    }
    let rest = rest.strip_suffix('x')?;
    let tag = rest.get(rest.len().checked_sub(TAG_LEN)?..)?;
    tag.bytes().all(|b| ALPHABET.contains(&b)).then_some(tag)
}

/// The tags registered under [`RUNS_DIR`].
pub fn registered() -> Vec<String> {
    std::fs::read_dir(RUNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|t| tag_of(&format!("{t}x0")) == Some(t.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

/// The lock of a registered run, if its process is gone (held until dropped, so a new run
/// cannot take the tag meanwhile).
pub fn dead_lock(tag: &str) -> Option<File> {
    let f = File::open(Path::new(RUNS_DIR).join(tag)).ok()?;
    // SAFETY: flock on a descriptor we own.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    free.then_some(f)
}

/// Registered tags whose process is gone, each with its lock held.
fn dead_runs() -> Vec<(String, File)> {
    registered()
        .into_iter()
        .filter_map(|t| dead_lock(&t).map(|f| (t, f)))
        .collect()
}

/// What of the suite's exists now, with the run tag in its name: (tag, what, path).
fn tagged() -> Vec<(String, Thing)> {
    let mut v = Vec::new();
    let mut add = |name: &str, thing: Thing| {
        if let Some(tag) = tag_of(name) {
            v.push((tag.to_string(), thing));
        }
    };
    if let Ok(mount) = enforcer::host::cgroup2_mount() {
        for (name, path) in names_in(&mount) {
            if path.is_dir() {
                add(&name, Thing::Cgroup(path));
            }
        }
    }
    for ns in ip_names(&["netns", "list"]) {
        add(&ns, Thing::NetNs(ns.clone()));
    }
    for dev in ip_names(&["-o", "link", "show"]) {
        add(&dev, Thing::Link(dev.clone()));
    }
    for (name, path) in names_in(Path::new("/sys/fs/bpf")) {
        add(&name, Thing::Pins(path));
    }
    for (name, path) in names_in(&std::env::temp_dir()) {
        add(&name, Thing::TempDir(path));
    }
    v
}

/// Something a test run made, found by its name.
#[derive(Debug)]
pub enum Thing {
    Cgroup(PathBuf),
    NetNs(String),
    Link(String),
    Pins(PathBuf),
    TempDir(PathBuf),
}

impl Thing {
    /// Removes it; whether it is gone.
    fn remove(&self) -> bool {
        match self {
            // Its processes (daemons, listeners) are killed first.
            Thing::Cgroup(p) => {
                crate::net::remove_cgroup(p);
                !p.exists()
            }
            Thing::NetNs(n) => quiet(&["ip", "netns", "del", n]),
            Thing::Link(n) => quiet(&["ip", "link", "del", n]),
            Thing::Pins(p) => crate::daemon::remove_pins(p).is_ok(),
            Thing::TempDir(p) => std::fs::remove_dir_all(p).is_ok(),
        }
    }
}

/// What still exists of the runs tagged `tags`: their namespaces, interfaces, cgroups, pin
/// dirs, temp dirs, and processes whose command line names one of them.
pub fn leftovers(tags: &[String]) -> Vec<String> {
    let mut v: Vec<String> = tagged()
        .into_iter()
        .filter(|(t, _)| tags.contains(t))
        .map(|(_, thing)| format!("{thing:?}"))
        .collect();
    for (name, path) in names_in(Path::new("/proc")) {
        let Ok(cmd) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let named = cmd
            .split([' ', '/'])
            .any(|w| tag_of(w).is_some_and(|t| tags.iter().any(|x| x == t)));
        if name.parse::<u32>().is_ok() && named {
            v.push(format!("process {name}: {cmd}"));
        }
    }
    v
}

fn names_in(dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default()
}

fn ip_names(args: &[&str]) -> Vec<String> {
    let out = Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            // `ip netns list`: "name (id: 3)"; `ip -o link`: "7: name@peer: <...".
            let l = if args.contains(&"link") {
                l.split(": ").nth(1)?
            } else {
                l
            };
            Some(l.split([' ', '@']).next()?.to_string())
        })
        .collect()
}

fn quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes what interrupted runs left behind; returns one line per thing removed, or
/// that could not be removed (its run stays registered, to be tried again).
pub fn sweep() -> Vec<String> {
    let dead = dead_runs();
    if dead.is_empty() {
        return Vec::new();
    }
    let mut things: Vec<Thing> = tagged()
        .into_iter()
        .filter(|(t, _)| dead.iter().any(|(d, _)| d == t))
        .map(|(_, thing)| thing)
        .collect();
    // Cgroups first: their processes (daemons, listeners) hold namespaces and pins.
    things.sort_by_key(|t| !matches!(t, Thing::Cgroup(_)));
    let mut report = Vec::new();
    let mut failed = false;
    for thing in things {
        let gone = thing.remove();
        failed |= !gone;
        report.push(format!(
            "{} {thing:?}",
            if gone { "removed" } else { "could not remove" }
        ));
    }
    if !failed {
        for (tag, _lock) in &dead {
            let _ = std::fs::remove_file(Path::new(RUNS_DIR).join(tag));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_only_from_names_unique_makes() {
        let name = crate::unique("va");
        assert_eq!(tag_of(&name), Some(run_tag()), "{name}");
        assert!(name.len() <= 15 - 2, "{name}");
        // Earlier, pid-based names never yield a tag.
        for old in [
            "va12345x1",
            "enfcg4242x0",
            "enforcer-test-9x12",
            "eth0",
            "lo",
        ] {
            assert_eq!(tag_of(old), None, "{old}");
        }
    }
}

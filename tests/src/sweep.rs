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

fn random_tag() -> String {
    let mut bytes = [0u8; TAG_LEN];
    // SAFETY: getrandom writes at most `len` bytes into the buffer we pass.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(
        n,
        TAG_LEN as isize,
        "getrandom: {}",
        std::io::Error::last_os_error()
    );
    bytes
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

/// Tags registered under [`RUNS_DIR`] whose process is gone, each with its lock held (so a
/// new run cannot take the tag while its leftovers are removed).
fn dead_runs() -> Vec<(String, File)> {
    let Ok(entries) = std::fs::read_dir(RUNS_DIR) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let tag = e.file_name().to_string_lossy().into_owned();
            let f = File::open(e.path()).ok()?;
            // SAFETY: flock on a descriptor we own.
            let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            (free && tag_of(&format!("{tag}x0")) == Some(tag.as_str())).then_some((tag, f))
        })
        .collect()
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
    let is_dead = |name: &str| tag_of(name).is_some_and(|t| dead.iter().any(|(d, _)| d == t));
    let mut report = Vec::new();
    let mut failed = false;
    let mut note = |ok: bool, what: String| {
        failed |= !ok;
        report.push(if ok {
            format!("removed {what}")
        } else {
            format!("could not remove {what}")
        });
    };
    // Cgroups first: their processes (daemons, listeners) hold namespaces and pins.
    if let Ok(mount) = enforcer::kernel::host::cgroup2_mount() {
        for (name, path) in names_in(&mount) {
            if is_dead(&name) && path.is_dir() {
                crate::net::remove_cgroup(&path);
                note(!path.exists(), format!("cgroup {}", path.display()));
            }
        }
    }
    for ns in ip_names(&["netns", "list"]) {
        if is_dead(&ns) {
            note(
                quiet(&["ip", "netns", "del", &ns]),
                format!("network namespace {ns}"),
            );
        }
    }
    for dev in ip_names(&["-o", "link", "show"]) {
        if is_dead(&dev) {
            note(
                quiet(&["ip", "link", "del", &dev]),
                format!("interface {dev}"),
            );
        }
    }
    for (name, path) in names_in(Path::new("/sys/fs/bpf")) {
        if is_dead(&name) {
            note(
                enforcer::kernel::pins::remove_all(&path).is_ok(),
                format!("pin dir {}", path.display()),
            );
        }
    }
    for (name, path) in names_in(&std::env::temp_dir()) {
        if is_dead(&name) {
            note(
                std::fs::remove_dir_all(&path).is_ok(),
                format!("temp dir {}", path.display()),
            );
        }
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

//! The cgroup v2 hierarchy: where it is mounted, a cgroup's directory and id, and the
//! way back from an id to a path.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};

/// Where cgroup v2 is mounted, from /proc/self/mountinfo (never assumed).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mnt) = pre.split_whitespace().nth(4) {
                return Ok(PathBuf::from(unescape_mount(mnt)));
            }
        }
    }
    Err(anyhow!(
        "no cgroup v2 filesystem is mounted (see /proc/self/mountinfo)"
    ))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&oct, 8) {
                out.push(v as char);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

/// The directory of a cgroup v2 path (as in /proc/PID/cgroup) under the mount.
pub fn cgroup_dir(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// A cgroup's id (the inode number of its directory), or None if it does not exist.
pub fn cgroup_id(mount: &Path, path: &str) -> Option<u64> {
    let meta = std::fs::metadata(cgroup_dir(mount, path)).ok()?;
    meta.is_dir().then(|| meta.ino())
}

/// The path of the cgroup with `id`, searched below `under` (a path under the mount).
pub fn find_cgroup(mount: &Path, under: &str, id: u64, max_dirs: usize) -> Option<String> {
    let mut stack = vec![cgroup_dir(mount, under)];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > max_dirs {
            return None;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if meta.ino() == id {
            let rel = dir.strip_prefix(mount).ok()?;
            return Some(format!("/{}", rel.display()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    None
}

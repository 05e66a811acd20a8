//! The pin directory on bpffs: maps (`maps/NAME`) and links (`links/KIND@TARGET@...`)
//! that outlive the daemon, so enforcement goes on while it restarts (even after SIGKILL)
//! and a new daemon can adopt it with no gap.
//!
//! One daemon owns a pin directory at a time: it holds `flock(LOCK_EX)` on the directory
//! itself (bpffs takes no regular files, but flock works on any inode, and a lock on the
//! directory is seen by every process that can see the pins, whatever its network or mount
//! namespace), and keeps a record of itself in the symlink `owner` (bpffs has symlinks):
//! pid, process start time, network namespace. The lock dies with the process; the record
//! names the owner in refusals.

use std::{
    ffi::CString,
    fmt,
    fs::File,
    io,
    os::{
        fd::AsRawFd as _,
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

/// Where the daemon pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/enforcer";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    /// Prepares `root` (mounting bpffs at /sys/fs/bpf if nothing is mounted there).
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let parent = root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) {
            if parent.starts_with("/sys/fs/bpf") && !is_bpffs(Path::new("/sys/fs/bpf")) {
                mount_bpffs().context("mounting bpffs at /sys/fs/bpf")?;
            }
            if !is_bpffs(parent) {
                bail!(
                    "{} is not on a bpf filesystem (mount one with `mount -t bpf bpf {}`)",
                    root.display(),
                    parent.display()
                );
            }
        }
        for d in [root.to_path_buf(), root.join("maps"), root.join("links")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(PinDir {
            root: root.to_path_buf(),
        })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.root.join("links").join(name)
    }

    /// Names of the pinned links.
    pub fn links(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join("links")) else {
            return Vec::new();
        };
        let mut v: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Whether maps from an earlier daemon are pinned here.
    pub fn has_maps(&self) -> bool {
        self.map("HOST").exists()
    }

    fn owner_link(&self) -> PathBuf {
        self.root.join(OWNER_LINK)
    }

    /// Takes ownership of the directory, or names the daemon that has it. Changes nothing.
    pub fn lock(&self) -> Result<Ownership, LockError> {
        let io = |source| LockError::Io {
            root: self.root.clone(),
            source,
        };
        let dir = File::open(&self.root).map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LockError::Owned {
                    root: self.root.clone(),
                    owner: self
                        .owner()
                        .map_or_else(|| "a process that left no record".into(), |o| o.to_string()),
                });
            }
            return Err(io(e));
        }
        Ok(Ownership {
            dir,
            pins: self.clone(),
        })
    }

    /// The owner recorded here (the last daemon that took the directory; it may be gone).
    pub fn owner(&self) -> Option<Owner> {
        let target = std::fs::read_link(self.owner_link()).ok()?;
        Owner::decode(&target.to_string_lossy())
    }
}

/// The owner record's name in the pin directory.
const OWNER_LINK: &str = "owner";

/// A daemon as recorded beside the pins it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc/PID/stat): with the pid, one process.
    pub start_ticks: u64,
    /// The same, as wall time.
    pub started: String,
    /// Its network namespace: the inode of /proc/PID/ns/net, and the namespace cookie the
    /// programs compare sockets against.
    pub netns_ino: u64,
    pub netns_cookie: u64,
}

impl Owner {
    /// This process, in the network namespace with `netns_cookie`.
    pub fn this_process(netns_cookie: u64) -> io::Result<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        // Fields after the command (which may hold spaces) start at field 3; starttime is 22.
        let start_ticks = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19))
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| io::Error::other("no start time in /proc/self/stat"))?;
        let btime = std::fs::read_to_string("/proc/stat")?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
            .ok_or_else(|| io::Error::other("no btime in /proc/stat"))?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Owner {
            pid: std::process::id(),
            start_ticks,
            started: crate::clock::rfc3339(btime + start_ticks / hz),
            netns_ino: std::fs::metadata("/proc/self/ns/net")?.ino(),
            netns_cookie,
        })
    }

    fn encode(&self) -> String {
        format!(
            "pid={} start_ticks={} started={} netns=net:[{}] netns_cookie={}",
            self.pid, self.start_ticks, self.started, self.netns_ino, self.netns_cookie
        )
    }

    fn decode(s: &str) -> Option<Self> {
        let mut o = Owner {
            pid: 0,
            start_ticks: 0,
            started: String::new(),
            netns_ino: 0,
            netns_cookie: 0,
        };
        for kv in s.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "pid" => o.pid = v.parse().ok()?,
                "start_ticks" => o.start_ticks = v.parse().ok()?,
                "started" => o.started = v.to_string(),
                "netns" => {
                    o.netns_ino = v.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()?
                }
                "netns_cookie" => o.netns_cookie = v.parse().ok()?,
                _ => {}
            }
        }
        (o.pid != 0).then_some(o)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {}, started {}, network namespace net:[{}] (cookie {})",
            self.pid, self.started, self.netns_ino, self.netns_cookie
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the pin directory {root} is owned by a running enforcer ({owner}); one daemon per pin directory")]
    Owned { root: PathBuf, owner: String },
    #[error("locking the pin directory {root}: {source}")]
    Io { root: PathBuf, source: io::Error },
}

/// Ownership of a pin directory: its lock, held until drop (or the process's end).
pub struct Ownership {
    dir: File,
    pins: PinDir,
}

impl Ownership {
    /// Records `owner` beside the pins (replacing an earlier daemon's record in one rename).
    pub fn record(&self, owner: &Owner) -> io::Result<()> {
        let link = self.pins.owner_link();
        // bpffs refuses names with dots.
        let tmp = self
            .pins
            .root
            .join(format!("{OWNER_LINK}-new-{}", owner.pid));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(owner.encode(), &tmp)?;
        std::fs::rename(&tmp, &link)
    }

    /// Whether the directory at the pin path is still the one this lock is on (it is not
    /// once something removed it, e.g. `enforcer unload --force`).
    pub fn still_held(&self) -> bool {
        match (self.dir.metadata(), std::fs::metadata(&self.pins.root)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

/// Removes everything pinned under `root` (links first: that detaches the programs), and
/// the owner record.
pub fn remove_all(root: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for sub in ["links", "maps"] {
        let dir = root.join(sub);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
                n += 1;
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_file(root.join(OWNER_LINK));
    if root.exists() {
        std::fs::remove_dir(root).with_context(|| format!("removing {}", root.display()))?;
    }
    Ok(n)
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes the struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

fn mount_bpffs() -> io::Result<()> {
    std::fs::create_dir_all("/sys/fs/bpf")?;
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

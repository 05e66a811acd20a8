//! Network namespaces, veth pairs and cgroups created for a test, removed on drop.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::unique;

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace made by `ip netns add`, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> Self {
        let name = unique("enf");
        sh(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// Runs `f` on a thread that entered this namespace (network only), returning its value.
    /// Sockets made there stay in the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns on a namespace file we hold open.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A veth pair with one end in each namespace, both up, with the given addresses
/// (CIDR notation, IPv4 and/or IPv6). The pair goes away with either namespace.
pub struct Veth {
    pub a: String,
    pub b: String,
}

impl Veth {
    pub fn new(ns_a: &NetNs, addrs_a: &[&str], ns_b: &NetNs, addrs_b: &[&str]) -> Self {
        let a = unique("va");
        let b = unique("vb");
        sh(&[
            "ip", "link", "add", &a, "netns", &ns_a.name, "type", "veth", "peer", "name", &b,
            "netns", &ns_b.name,
        ]);
        for (ns, dev, addrs) in [(ns_a, &a, addrs_a), (ns_b, &b, addrs_b)] {
            for addr in addrs {
                if addr.contains(':') {
                    ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
                } else {
                    ns.ip(&["addr", "add", addr, "dev", dev]);
                }
            }
            ns.ip(&["link", "set", dev, "up"]);
        }
        Veth { a, b }
    }
}

/// Joins `peer` to `host` on test subnet `n` (1 to 9): the host's end is 10.n.0.1/24 and
/// fd0n::1/64, the peer's 10.n.0.2/24 and fd0n::2/64.
pub fn link(host: &NetNs, peer: &NetNs, n: u8) -> Veth {
    assert!((1..=9).contains(&n), "test subnet {n} out of 1..=9");
    Veth::new(
        host,
        &[&format!("10.{n}.0.1/24"), &format!("fd0{n}::1/64")],
        peer,
        &[&format!("10.{n}.0.2/24"), &format!("fd0{n}::2/64")],
    )
}

/// Gives `ns` (joined on subnet `n` by `link`) default routes through the host, as a
/// container has.
pub fn route_via_host(ns: &NetNs, n: u8) {
    ns.ip(&["route", "add", "default", "via", &format!("10.{n}.0.1")]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("fd0{n}::1"),
    ]);
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup_mount() -> PathBuf {
    enforcer::host::cgroup2_mount().expect("cgroup v2 mounted")
}

/// A cgroup directory made for a test under the cgroup v2 mount, removed on drop (its
/// processes are killed first).
pub struct Cgroup {
    /// Path as in /proc/PID/cgroup, e.g. "/enf123x4".
    pub path: String,
    pub dir: PathBuf,
}

impl Cgroup {
    /// A new top-level test cgroup.
    pub fn new() -> Self {
        Self::at(&format!("/{}", unique("enfcg")))
    }

    /// A child cgroup of this one (removed with it, or on its own drop).
    pub fn child(&self, name: &str) -> Cgroup {
        Self::at(&format!("{}/{name}", self.path))
    }

    fn at(path: &str) -> Self {
        let dir = cgroup_mount().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup {
            path: path.to_string(),
            dir,
        }
    }

    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn remove_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill on a pid read from our own test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.dir);
    }
}

//! A small topology for policy-lifecycle tests: a "host" namespace (where the daemon runs)
//! with two remote senders, one the policies allow (A) and one they refuse (R), and a test
//! cgroup tree for the attached cgroup programs.
//!
//! ```text
//!   a  10.1.0.2 fd01::2 ──veth── 10.1.0.1 fd01::1 ┐ host (daemon, XDP on both ends,
//!   r  10.2.0.2 fd02::2 ──veth── 10.2.0.1 fd02::1 ┘       listeners in CG/srv)
//! ```
//!
//! cgroups: CG (attached), CG/srv (the host's listeners), CG/allowed, CG/refused.
//! Everything is removed on drop: cgroups first (their processes killed), then the
//! namespaces (taking the veths with them).

use std::{path::PathBuf, process::Command};

use crate::{
    daemon::{probe, Probe},
    enforcer_bin,
    net::{link, Cgroup, NetNs, Veth},
};

pub const A4: &str = "10.1.0.2";
pub const A6: &str = "fd01::2";
pub const R4: &str = "10.2.0.2";
pub const R6: &str = "fd02::2";
/// The host's addresses on A's and R's links.
pub const HOST_A4: &str = "10.1.0.1";
pub const HOST_A6: &str = "fd01::1";
pub const HOST_R4: &str = "10.2.0.1";
pub const HOST_R6: &str = "fd02::1";

pub struct Bed {
    pub allowed: Cgroup,
    pub refused: Cgroup,
    pub srv: Cgroup,
    pub cg: Cgroup,
    pub v_a: Veth,
    pub v_r: Veth,
    pub a: NetNs,
    pub r: NetNs,
    pub host: NetNs,
}

impl Bed {
    pub fn new() -> Self {
        let host = NetNs::new();
        let a = NetNs::new();
        let r = NetNs::new();
        let v_a = link(&host, &a, 1);
        let v_r = link(&host, &r, 2);
        let cg = Cgroup::new();
        let srv = cg.child("srv");
        let allowed = cg.child("allowed");
        let refused = cg.child("refused");
        Bed {
            allowed,
            refused,
            srv,
            cg,
            v_a,
            v_r,
            a,
            r,
            host,
        }
    }

    /// `[attach]` for this bed: XDP on the host's two veth ends (generic mode: veths), the
    /// cgroup programs on CG. Every policy of a test must carry it (never the root cgroup).
    pub fn attach(&self) -> String {
        format!(
            "[attach]\ninterfaces = [\"{}\", \"{}\"]\nxdp_mode = \"auto\"\ncgroup = \"{}\"\n",
            self.v_a.a, self.v_r.a, self.cg.path
        )
    }

    /// A policy: `[attach]` for this bed, then `body` (rules, tests, ...). `head` goes
    /// before `[attach]` (top-level keys such as `mode`).
    pub fn policy(&self, head: &str, body: &str) -> String {
        self.policy_rated(head, 200, body)
    }

    /// As `policy`, with audit events limited to `rate` per second per rule (and CPU).
    pub fn policy_rated(&self, head: &str, rate: u32, body: &str) -> String {
        format!(
            "{head}\n[audit]\nrate_per_rule = {rate}\n\n{}\n{body}",
            self.attach()
        )
    }

    /// A listener in the host namespace and CG/srv (`kind` is "tcp-listen" or
    /// "udp-listen"), dual-stack on `port`.
    pub fn listen(&self, kind: &str, port: u16) -> Probe {
        Probe::spawn(
            Some(&self.host),
            Some(&self.srv.procs_file()),
            &[kind, "::", &port.to_string()],
        )
    }

    /// TCP connect from `ns` (optionally from `cg`), with a timeout in ms.
    pub fn tcp(
        &self,
        ns: &NetNs,
        cg: Option<&Cgroup>,
        dst: &str,
        port: u16,
        timeout_ms: u32,
    ) -> String {
        let procs = cg.map(Cgroup::procs_file);
        probe(
            Some(ns),
            procs.as_deref(),
            &[
                "tcp-connect",
                dst,
                &port.to_string(),
                &timeout_ms.to_string(),
            ],
        )
    }

    /// One UDP datagram from `ns` (optionally from `cg`), waiting `timeout_ms` for the echo.
    pub fn udp(
        &self,
        ns: &NetNs,
        cg: Option<&Cgroup>,
        dst: &str,
        port: u16,
        timeout_ms: u32,
    ) -> String {
        let procs = cg.map(Cgroup::procs_file);
        probe(
            Some(ns),
            procs.as_deref(),
            &["udp-send", dst, &port.to_string(), &timeout_ms.to_string()],
        )
    }
}

impl Default for Bed {
    fn default() -> Self {
        Self::new()
    }
}

/// The output of one `enforcer` command run without a daemon socket.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `enforcer ARGS` (for commands that take no socket, or pass their own).
pub fn enforcer(args: &[&str]) -> Run {
    let out = Command::new(enforcer_bin())
        .args(args)
        .output()
        .expect("run enforcer");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `enforcer check --config PATH`.
pub fn check(path: &std::path::Path) -> Run {
    enforcer(&["check", "--config", &path.display().to_string()])
}

/// The sha256 `enforcer check` reports for a valid policy file.
pub fn checked_hash(path: &std::path::Path) -> String {
    let out = check(path);
    assert_eq!(
        out.code,
        0,
        "check {}: {}{}",
        path.display(),
        out.stdout,
        out.stderr
    );
    let hash = out.stdout.split("sha256 ").nth(1).map(|s| {
        s.chars()
            .take_while(char::is_ascii_hexdigit)
            .collect::<String>()
    });
    hash.filter(|h| h.len() == 64)
        .unwrap_or_else(|| panic!("no sha256 in {:?}", out.stdout))
}

/// A file in `dir` holding `text`.
pub fn write_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

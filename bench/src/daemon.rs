//! The real daemon (`enforcer run`, the binary ENFORCER_BIN names, as the tests' Daemon
//! guard runs it) in the bench's receiving namespace, for the audit figures: its audit
//! stream goes through ring buffer -> decode -> enrich -> JSON line -> fan-out to stdout and
//! to one control-socket subscriber, and the bench counts the lines on both. The test bed's
//! `Daemon` keeps every line in memory, which millions of lines per second cannot afford:
//! here the lines are only counted.
//!
//! The daemon attaches its XDP program to a veth of its own in that namespace (so the
//! program sits in the XDP dispatcher, and test runs of it cost only their runs); the bench
//! takes that program from the daemon's pinned link, to test-run it or attach it elsewhere.

use std::{
    io::{BufRead as _, BufReader, Read, Write as _},
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::Path,
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;
use testbed::{
    daemon::{collect_text, run_command, Pins, TempDir},
    net::{Cgroup, NetNs},
};

use crate::{bpf, env::sh};

/// The daemon binary the audited figures run: ENFORCER_BIN, else the `enforcer` beside this
/// executable (the same build profile: a release bench measures a release daemon, never the
/// debug build the tests fall back to). Named in ENFORCER_BIN for the test bed's helpers.
pub fn binary() -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("ENFORCER_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locating the bench's executable")?;
    let beside = exe.with_file_name("enforcer");
    if !beside.is_file() {
        bail!(
            "no daemon binary: {} does not exist; build it (cargo build --release -p enforcer) or name one in ENFORCER_BIN",
            beside.display()
        );
    }
    std::env::set_var("ENFORCER_BIN", &beside);
    Ok(beside)
}

/// The audit figures the daemon reports (`status`, "audit").
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditCounts {
    pub events: u64,
    pub lost_kernel: u64,
    pub lost_sinks: u64,
}

pub struct BenchDaemon {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    stdout_lines: Arc<AtomicU64>,
    sub_lines: Arc<AtomicU64>,
    /// The threads that count the lines.
    counters: Arc<Mutex<Vec<libc::pid_t>>>,
    /// The subscriber's connection, shut down on drop (its counting thread then ends).
    sub: Option<UnixStream>,
    socket: std::path::PathBuf,
    /// The daemon's XDP program (from its pinned link, once it is up).
    xdp: Option<OwnedFd>,
    // Removed after the daemon has exited (drop order: the daemon first, in Drop).
    _pins: Pins,
    _cgroup: Cgroup,
    _dir: TempDir,
}

/// The newlines in `b`, counted in 8-bit lanes (chunks short enough not to overflow them):
/// the counters read gigabytes a second on the producer's CPU.
fn newlines(b: &[u8]) -> u64 {
    b.chunks(255)
        .map(|c| u64::from(c.iter().fold(0u8, |n, &x| n + u8::from(x == b'\n'))))
        .sum()
}

/// Counts the newlines `r` carries until it ends, on a thread whose id goes to `tids`.
fn count_lines(
    mut r: impl Read + Send + 'static,
    tids: &Arc<Mutex<Vec<libc::pid_t>>>,
) -> Arc<AtomicU64> {
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    let tids = tids.clone();
    std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        if let Ok(mut t) = tids.lock() {
            t.push(unsafe { libc::gettid() });
        }
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(k) = r.read(&mut buf) {
            if k == 0 {
                break;
            }
            c.fetch_add(newlines(&buf[..k]), Ordering::Relaxed);
        }
    });
    n
}

/// One control request on a connection of its own; the answer, parsed.
fn request(socket: &Path, line: &str) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer).with_context(|| format!("answer {answer:?}"))
}

impl BenchDaemon {
    /// Starts the daemon in `ns` with `policy_body` (mode and rules), audit events
    /// unlimited, XDP on a veth pair it gets of its own, the cgroup programs on a fresh
    /// cgroup; pins under `pin_root` (a bpffs). Waits until it answers `status`, then
    /// subscribes to its stream.
    pub fn start(ns: &NetNs, pin_root: &Path, policy_body: &str) -> anyhow::Result<Self> {
        let iface = testbed::unique("bdx");
        sh(&[
            "ip",
            "-n",
            &ns.name,
            "link",
            "add",
            &iface,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{iface}p"),
        ])?;
        sh(&["ip", "-n", &ns.name, "link", "set", &iface, "up"])?;
        let dir = TempDir::new();
        let cgroup = Cgroup::new();
        let pins = Pins(pin_root.join(testbed::unique("daemon")));
        let policy = format!(
            "{policy_body}\n[audit]\nrate_per_rule = 0\nrate_global = 0\n\n[attach]\ninterfaces = [\"{iface}\"]\nxdp_mode = \"native\"\ncgroup = \"{}\"\n",
            cgroup.path
        );
        let policy_path = dir.0.join("policy.toml");
        std::fs::write(&policy_path, policy)?;
        let socket = dir.0.join("control.sock");
        let state = dir.0.join("state");
        let mut cmd = run_command(ns, &policy_path, &socket, &pins.0, Some(&state));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", testbed::enforcer_bin().display()))?;
        let counters = Arc::new(Mutex::new(Vec::new()));
        let stdout_lines = count_lines(child.stdout.take().context("stdout")?, &counters);
        let stderr = collect_text(child.stderr.take().context("stderr")?);
        let mut d = BenchDaemon {
            child: Some(child),
            stderr,
            stdout_lines,
            sub_lines: Arc::new(AtomicU64::new(0)),
            counters,
            sub: None,
            socket,
            xdp: None,
            _pins: pins,
            _cgroup: cgroup,
            _dir: dir,
        };
        d.wait_ready()?;
        let link = d._pins.0.join("links").join(format!("xdp@{iface}@native"));
        let prog = bpf::link_prog(&bpf::obj_get(&link)?)?;
        d.xdp = Some(prog);
        d.subscribe()?;
        Ok(d)
    }

    /// The daemon's XDP program.
    pub fn xdp(&self) -> RawFd {
        self.xdp.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(format!(
            "enforcer run exited ({status}): {}",
            self.stderr
                .lock()
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        ))
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = self.exited() {
                bail!(e);
            }
            if let Ok(v) = request(&self.socket, r#"{"version":1,"command":"status"}"#) {
                if v["ok"] == true && v["policy"]["generation"].as_u64().unwrap_or(0) >= 1 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the daemon did not come up within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn subscribe(&mut self) -> anyhow::Result<()> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.write_all(b"{\"version\":1,\"command\":\"subscribe\"}\n")?;
        // The answer, one byte at a time: what follows it is the stream, counted.
        let mut answer = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            s.read_exact(&mut b)?;
            answer.push(b[0]);
        }
        let v: Value = serde_json::from_slice(&answer).context("subscribe answer")?;
        if v["ok"] != true {
            bail!("subscribe refused: {v}");
        }
        self.sub_lines = count_lines(s.try_clone()?, &self.counters);
        self.sub = Some(s);
        Ok(())
    }

    /// The daemon's audit counters.
    pub fn counts(&self) -> anyhow::Result<AuditCounts> {
        let v = request(&self.socket, r#"{"version":1,"command":"status"}"#)?;
        let a = &v["audit"];
        let get = |k: &str| {
            a[k].as_u64()
                .with_context(|| format!("status: audit.{k} in {v}"))
        };
        Ok(AuditCounts {
            events: get("events")?,
            lost_kernel: get("lost_kernel")?,
            lost_sinks: get("lost_sinks")?,
        })
    }

    /// Packets its XDP program refused so far (`status`: counters.xdp.dropped-source).
    pub fn refused_at_xdp(&self) -> anyhow::Result<u64> {
        let v = request(&self.socket, r#"{"version":1,"command":"status"}"#)?;
        Ok(v["counters"]["xdp"]["dropped-source"].as_u64().unwrap_or(0))
    }

    /// Lines counted so far: (stdout, subscriber).
    pub fn lines(&self) -> (u64, u64) {
        (
            self.stdout_lines.load(Ordering::Relaxed),
            self.sub_lines.load(Ordering::Relaxed),
        )
    }

    /// Keeps every thread of the daemon (and those they start later) on `cpu`.
    pub fn pin_to_cpu(&self, cpu: usize) -> anyhow::Result<()> {
        let Some(c) = self.child.as_ref() else {
            bail!("the daemon is not running");
        };
        for t in std::fs::read_dir(format!("/proc/{}/task", c.id()))?.flatten() {
            if let Ok(tid) = t.file_name().to_string_lossy().parse::<libc::pid_t>() {
                crate::env::pin_to_cpu(tid, cpu)?;
            }
        }
        Ok(())
    }

    /// Keeps the threads that count the daemon's lines on `cpu`.
    pub fn pin_counters(&self, cpu: usize) -> anyhow::Result<()> {
        let tids = self.counters.lock().map(|t| t.clone()).unwrap_or_default();
        for tid in tids {
            crate::env::pin_to_cpu(tid, cpu)?;
        }
        Ok(())
    }

    /// The daemon's CPU time so far (ns): every thread's run time.
    pub fn cpu_ns(&self) -> u64 {
        let Some(c) = self.child.as_ref() else {
            return 0;
        };
        let dir = format!("/proc/{}/task", c.id());
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| {
                std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Waits until the daemon has read every event of the ring (the `produced` since
    /// `from`, less what the kernel lost) and both sinks have stopped moving; returns the
    /// counters then.
    pub fn settle(&self, from: AuditCounts, produced: u64) -> anyhow::Result<AuditCounts> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = (self.lines(), Instant::now());
        loop {
            let c = self.counts()?;
            let read = c.events - from.events;
            let lost = c.lost_kernel - from.lost_kernel;
            let now = self.lines();
            if now != last.0 {
                last = (now, Instant::now());
            }
            if read + lost >= produced && last.1.elapsed() > Duration::from_millis(300) {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!("the daemon did not catch up within 30 s ({read} read + {lost} lost of {produced})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(s) = self.sub.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

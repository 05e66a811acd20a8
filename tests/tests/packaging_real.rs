//! packaging/ run for real, with Debian's own packages (installed when missing):
//! - the systemd unit under a booted systemd (a debootstrapped Debian, cached under
//!   target/packaging/, booted by systemd-nspawn in namespaces made here): enforcement is
//!   in place before any interface is up, and start, reload, grant, tail, stop (keep), an
//!   adopting start and unload all work under the unit's hardening;
//! - the container image (packaging/Containerfile, `podman build`) run from its own root
//!   filesystem (`podman image mount`; `podman run` cannot start containers on the test
//!   machine) under systemd-nspawn: it enforces, and its stop leaves enforcement in place;
//! - `--watch` through a Kubernetes ConfigMap volume's update, done as the kubelet does it;
//! - the metrics text through `promtool check metrics`.
//!
//! Containers run one at a time (see `testbed::machine`). The static daemon is the one
//! `cargo xtask test` builds (ENFORCER_STATIC_BIN).

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    bed::Bed,
    daemon::{collect_lines, collect_text, place, probe, Daemon, Probe, TempDir},
    machine::{debian_rootfs, need_tool, static_bin, BpfDir, Machine, Overlay},
    need_root,
    net::{enter_netns, NetNs, Veth},
};

const PORT: u16 = 7000;
/// The container's addresses on the allowed sender's and the refused sender's links.
const C_A: &str = "10.1.0.1";
const C_R: &str = "10.2.0.1";

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// CLOCK_MONOTONIC in µs: the clock systemd and journald stamp with (no time namespace).
fn monotonic_us() -> u64 {
    // SAFETY: clock_gettime writes the struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// The container's network namespace `c` with two senders: `a` (10.1.0.2, allowed) and
/// `r` (10.2.0.2, refused), each on a veth whose container end (`va`, `vr`) is down and
/// has no address: what configures them inside the container is the system's business.
struct Net {
    va: String,
    vr: String,
    r_end: String,
    _links: (Veth, Veth),
    a: NetNs,
    r: NetNs,
    c: NetNs,
}

impl Net {
    fn new() -> Self {
        let c = NetNs::new();
        let a = NetNs::new();
        let r = NetNs::new();
        let la = Veth::new(&c, &[], &a, &["10.1.0.2/24"]);
        let lr = Veth::new(&c, &[], &r, &["10.2.0.2/24"]);
        for (end, peer, dev, addr) in [(&la.a, &a, &la.b, C_A), (&lr.a, &r, &lr.b, C_R)] {
            c.ip(&["link", "set", end, "down"]);
            // The senders know the container's MAC: a SYN leaves the moment they try,
            // with no ARP round (and its back-off) before the address exists.
            let mac = link_mac(&c, end);
            peer.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        Net {
            va: la.a.clone(),
            vr: lr.a.clone(),
            r_end: lr.b.clone(),
            _links: (la, lr),
            a,
            r,
            c,
        }
    }

    /// Configures the container ends from the host (for a container that does not).
    fn up(&self) {
        for (end, addr) in [(&self.va, C_A), (&self.vr, C_R)] {
            self.c
                .ip(&["addr", "add", &format!("{addr}/24"), "dev", end]);
            self.c.ip(&["link", "set", end, "up"]);
        }
    }

    fn policy(&self, allow: &[&str]) -> String {
        let allow: Vec<String> = allow.iter().map(|p| format!("\"{p}\"")).collect();
        format!(
            "[attach]\ninterfaces = [\"{}\", \"{}\"]\ncgroup = \"/\"\n\n[[rule]]\nname = \"svc\"\nprotocol = \"tcp\"\nports = [{PORT}]\nallow_from = [{}]\n",
            self.va,
            self.vr,
            allow.join(", ")
        )
    }

    /// A TCP connect to the container's port from `a` or `r`.
    fn connect(&self, from: &NetNs) -> String {
        let to = if from.name == self.a.name { C_A } else { C_R };
        probe(
            Some(from),
            None,
            &["tcp-connect", to, &PORT.to_string(), "500"],
        )
    }

    /// Waits until a connect from `from` gives `want`.
    fn wait_connect(&self, from: &NetNs, want: &str, what: &str) {
        let start = Instant::now();
        loop {
            let got = self.connect(from);
            if got == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: {got}, not {want}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The MAC of `dev` in `ns` (sysfs shows the test's own namespace only).
fn link_mac(ns: &NetNs, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-j", "link", "show", dev])
        .output()
        .expect("ip link show");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    v[0]["address"].as_str().expect("address").to_string()
}

/// What the container answers on the refused sender's link, from the moment this starts
/// (tcpdump in `r`, started before the container): any SYN-ACK or RST from the guarded
/// port means a refused sender reached it. (Other segments are not answers: a connection
/// a grant let in earlier closes with retransmitted FINs once the grant is revoked.)
struct Answers {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Answers {
    fn watch(net: &Net) -> Self {
        need_tool("tcpdump", "tcpdump");
        let mut cmd = Command::new("tcpdump");
        cmd.args(["-l", "-n", "-Q", "in", "-i", &net.r_end])
            .arg(format!(
                "tcp and src host {C_R} and src port {PORT} and tcp[tcpflags] & (tcp-syn|tcp-rst) != 0"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        place(&mut cmd, Some(&net.r.path()), None);
        let mut child = cmd.spawn().expect("spawn tcpdump");
        let lines = collect_lines(child.stdout.take().expect("stdout"));
        let err = collect_text(child.stderr.take().expect("stderr"));
        let start = Instant::now();
        while !err.lock().expect("err").contains("listening on") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "tcpdump did not start: {}",
                err.lock().expect("err")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Answers { child, lines }
    }

    fn seen(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A refused sender knocking on the guarded port without pause (each attempt one SYN,
/// 50 ms for an answer), recording when each attempt started and how it ended.
struct Knocker {
    stop: Arc<AtomicBool>,
    tries: Arc<Mutex<Vec<(u64, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Knocker {
    fn start(net: &Net) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tries = Arc::new(Mutex::new(Vec::new()));
        let (s, t, path) = (stop.clone(), tries.clone(), net.r.path());
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            let to: SocketAddr = format!("{C_R}:{PORT}").parse().expect("addr");
            while !s.load(Ordering::Relaxed) {
                let at = monotonic_us();
                let r = match TcpStream::connect_timeout(&to, Duration::from_millis(50)) {
                    Ok(_) => "connected".to_string(),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "timeout".into(),
                    Err(e) => e.to_string(),
                };
                if r != "timeout" {
                    // Unreachable (no carrier yet) fails at once: do not spin.
                    std::thread::sleep(Duration::from_millis(10));
                }
                t.lock().expect("tries").push((at, r));
            }
        });
        Knocker {
            stop,
            tries,
            thread: Some(thread),
        }
    }

    /// Waits until `n` attempts started at or after `t` (µs, monotonic).
    fn wait_tries_since(&self, t: u64, n: usize) {
        let start = Instant::now();
        while self
            .tries
            .lock()
            .expect("tries")
            .iter()
            .filter(|(at, _)| *at >= t)
            .count()
            < n
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the knocker is stuck"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Vec<(u64, String)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("knocker");
        }
        std::mem::take(&mut *self.tries.lock().expect("tries"))
    }
}

impl Drop for Knocker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The booted Debian with the unit installed as packaging/ says, the static daemon, the
/// policy, a listener on the guarded port and systemd-networkd configuring the two
/// container ends (ordered, as networkd always is, after network-pre.target).
fn debian_with_the_unit(net: &Net) -> Overlay {
    let o = Overlay::new(&debian_rootfs());
    o.install(&static_bin(), "/usr/local/bin/enforcer");
    o.install(&testbed::probe_bin(), "/usr/local/bin/probe");
    let unit = std::fs::read_to_string(packaging().join("systemd/enforcer.service")).expect("unit");
    o.write("/etc/systemd/system/enforcer.service", &unit, 0o644);
    o.write(
        "/etc/enforcer/policy.toml",
        &net.policy(&["10.1.0.0/24"]),
        0o600,
    );
    o.write(
        "/etc/systemd/system/listener.service",
        &format!("[Unit]\nDescription=the guarded service (tcp/{PORT})\n[Service]\nExecStart=/usr/local/bin/probe tcp-listen 0.0.0.0 {PORT}\n[Install]\nWantedBy=multi-user.target\n"),
        0o644,
    );
    for (end, addr) in [(&net.va, C_A), (&net.vr, C_R)] {
        o.write(
            &format!("/etc/systemd/network/10-{end}.network"),
            &format!("[Match]\nName={end}\n[Network]\nAddress={addr}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"),
            0o644,
        );
    }
    let out = Command::new("systemctl")
        .arg(format!("--root={}", o.root.display()))
        .args(["enable", "enforcer", "listener", "systemd-networkd"])
        .output()
        .expect("systemctl --root enable");
    assert!(
        out.status.success(),
        "systemctl enable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    o
}

/// `systemctl show UNIT -p PROP --value` as a number.
fn show_us(m: &Machine, unit: &str, prop: &str) -> u64 {
    let (_, v, _) = m.sh(&["systemctl", "show", unit, "-p", prop, "--value"]);
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{unit} {prop}: {v:?}"))
}

#[test]
fn at_boot_the_unit_enforces_before_any_interface_is_up() {
    need_root!();
    need_tool("nsenter", "util-linux");
    let net = Net::new();
    let tree = debian_with_the_unit(&net);
    let bpf = BpfDir::new();
    let answers = Answers::watch(&net);
    let mut addrs = Command::new("ip");
    addrs
        .args(["-n", &net.c.name, "monitor", "address"])
        .stdout(Stdio::piped());
    let mut addrs = addrs.spawn().expect("ip monitor");
    let addr_lines = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    {
        let (out, l) = (addrs.stdout.take().expect("stdout"), addr_lines.clone());
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().expect("addrs").push((monotonic_us(), line));
            }
        });
    }
    let knocker = Knocker::start(&net);

    let m = Machine::boot(&tree.root, &net.c, &bpf);
    m.wait_booted();
    let boot_time = m.started.elapsed();
    net.wait_connect(&net.a, "connected", "the allowed sender after boot");
    // When the refused sender's link got its address (seen from the host), and what the
    // knocking found from then on.
    let addr_at = addr_lines
        .lock()
        .expect("addrs")
        .iter()
        .find(|(_, l)| l.contains(&format!("inet {C_R}/24")))
        .map(|(t, _)| *t)
        .expect("the container never configured its address");
    knocker.wait_tries_since(addr_at, 20);
    let tries = knocker.finish();
    let _ = addrs.kill();
    let _ = addrs.wait();
    let after: Vec<&(u64, String)> = tries.iter().filter(|(t, _)| *t >= addr_at).collect();
    let first_after = after.first().map(|(t, _)| t - addr_at);
    assert!(
        first_after.is_some_and(|d| d < 200_000) && after.len() >= 10,
        "the knocking did not cover the address's first moments: {first_after:?} µs, {} tries",
        after.len()
    );
    let breaches: Vec<_> = tries.iter().filter(|(_, r)| r == "connected").collect();
    assert!(
        breaches.is_empty(),
        "the refused sender got in ({} µs after the address): {breaches:?}\n{}",
        breaches[0].0 as i64 - addr_at as i64,
        m.journal(&["-u", "enforcer"])
    );
    let seen = answers.seen();
    assert!(
        seen.is_empty(),
        "the guarded port answered the refused sender:\n{}\n{}",
        seen.join("\n"),
        m.journal(&["-u", "enforcer", "-o", "short-monotonic"])
    );
    assert_eq!(
        net.connect(&net.r),
        "timeout",
        "the refused sender got in:\n{}",
        m.journal(&["-u", "enforcer"])
    );

    // The order, by the monotonic clock systemd keeps: the daemon applied the policy (its
    // event's time, put on that clock by the journal entry carrying it) and said READY=1
    // (the unit went active) before systemd-networkd, which puts the address there, started.
    let (_, journal, _) = m.sh(&["journalctl", "-u", "enforcer", "-o", "json", "--no-pager"]);
    let entry = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            v["MESSAGE"]
                .as_str()
                .is_some_and(|msg| msg.contains("\"action\":\"applied\""))
        })
        .expect("no applied event in the journal");
    let field = |k: &str| -> u64 {
        entry[k]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {entry}"))
    };
    let event: Value =
        serde_json::from_str(entry["MESSAGE"].as_str().expect("message")).expect("event json");
    let applied_wall = humantime::parse_rfc3339(event["ts"].as_str().expect("ts"))
        .expect("event time")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as u64;
    let applied_at =
        applied_wall - (field("__REALTIME_TIMESTAMP") - field("__MONOTONIC_TIMESTAMP"));
    let ready = show_us(&m, "enforcer", "ActiveEnterTimestampMonotonic");
    let networkd = show_us(&m, "systemd-networkd", "ExecMainStartTimestampMonotonic");
    let (_, status, _) = m.sh(&["systemctl", "status", "enforcer", "--no-pager", "-n", "5"]);
    let (_, order, _) = m.sh(&[
        "systemctl",
        "list-dependencies",
        "--after",
        "network-pre.target",
        "--no-pager",
    ]);
    let ms = |t: u64| format!("{:.1} ms", t as f64 / 1000.0);
    eprintln!("booted in {boot_time:?}\n{status}\n{order}");
    eprintln!(
        "monotonic clock: policy applied {}, enforcer.service active {}, systemd-networkd started {}, address {C_R} on {} seen {}",
        ms(applied_at),
        ms(ready),
        ms(networkd),
        net.vr,
        ms(addr_at)
    );
    eprintln!(
        "refused sender: {} SYNs, {} after the address appeared (first {} after), all unanswered; tcpdump: {} answers",
        tries.len(),
        after.len(),
        ms(first_after.unwrap_or(0)),
        seen.len()
    );
    assert!(status.contains("Active: active (running)"), "{status}");
    assert!(
        applied_at < networkd && ready <= networkd,
        "the network was configured before the policy was in force: applied {applied_at}, ready {ready}, networkd {networkd}"
    );
}

#[test]
fn under_systemd_the_unit_reloads_grants_tails_stops_adopts_and_unloads() {
    need_root!();
    need_tool("nsenter", "util-linux");
    let net = Net::new();
    let tree = debian_with_the_unit(&net);
    let bpf = BpfDir::new();
    let m = Machine::boot(&tree.root, &net.c, &bpf);
    m.wait_booted();
    eprintln!("booted in {:?}", m.started.elapsed());
    let enforcer = |args: &[&str]| {
        let mut cmd = vec!["/usr/local/bin/enforcer"];
        cmd.extend_from_slice(args);
        m.sh(&cmd)
    };
    let generation = || {
        let (ok, out, err) = enforcer(&["status", "--json"]);
        assert!(ok, "enforcer status: {err}");
        let v: Value = serde_json::from_str(&out).expect("status json");
        v["policy"]["generation"].as_u64().expect("generation")
    };
    net.wait_connect(&net.a, "connected", "the allowed sender");
    assert_eq!(net.connect(&net.r), "timeout", "the refused sender got in");
    let (ok, status, err) = enforcer(&["status"]);
    assert!(ok, "enforcer status under the unit: {err}");
    eprintln!("{status}");
    let g0 = generation();

    // systemctl reload: check, then SIGHUP. A good policy is applied...
    tree.write(
        "/etc/enforcer/policy.toml",
        &net.policy(&["10.1.0.0/24", "10.2.0.0/24"]),
        0o600,
    );
    let (ok, _, err) = m.sh(&["systemctl", "reload", "enforcer"]);
    assert!(
        ok,
        "systemctl reload: {err}\n{}",
        m.journal(&["-u", "enforcer", "-n", "20"])
    );
    net.wait_connect(
        &net.r,
        "connected",
        "after reloading a policy that allows it",
    );
    assert_eq!(generation(), g0 + 1);
    // ...a broken one is refused by the check, the daemon never asked, its error in the
    // journal.
    tree.write(
        "/etc/enforcer/policy.toml",
        &format!(
            "{}\n[[rule]]\nname = \"broken\"\nports = [\"nope\"]\n",
            net.policy(&["10.1.0.0/24"])
        ),
        0o600,
    );
    let (ok, _, _) = m.sh(&["systemctl", "reload", "enforcer"]);
    assert!(!ok, "systemctl reload accepted a broken policy");
    assert_eq!(generation(), g0 + 1, "the broken policy replaced the old");
    assert_eq!(net.connect(&net.r), "connected", "the old policy went");
    let journal = m.journal(&["-u", "enforcer", "-n", "30"]);
    assert!(
        journal.contains("/etc/enforcer/policy.toml:1"),
        "no located error in the journal:\n{journal}"
    );
    eprintln!(
        "journal after the broken reload:\n{}",
        journal
            .lines()
            .filter(|l| l.contains("policy.toml") || l.contains("reload"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    tree.write(
        "/etc/enforcer/policy.toml",
        &net.policy(&["10.1.0.0/24"]),
        0o600,
    );
    let (ok, _, err) = m.sh(&["systemctl", "reload", "enforcer"]);
    assert!(
        ok,
        "systemctl reload: {err}\n{}",
        m.journal(&["-u", "enforcer", "-n", "20"])
    );
    net.wait_connect(&net.r, "timeout", "after reloading the original policy");

    // grant (kept in the state directory, writable under ProtectSystem=strict), revoke.
    let (ok, out, err) = enforcer(&[
        "grant",
        "--rule",
        "svc",
        "--from",
        "10.2.0.2",
        "--for",
        "10m",
        "--reason",
        "packaging test",
    ]);
    assert!(ok, "enforcer grant: {err}");
    eprintln!("{out}");
    net.wait_connect(&net.r, "connected", "with a grant");
    let (ok, out, err) = enforcer(&["grants", "--json"]);
    assert!(ok, "enforcer grants: {err}");
    let grants: Value = serde_json::from_str(&out).expect("grants json");
    let id = grants
        .as_array()
        .or_else(|| grants["grants"].as_array())
        .and_then(|g| g.first())
        .and_then(|g| g["id"].as_str())
        .unwrap_or_else(|| panic!("no grant listed: {out}"))
        .to_string();
    let (_, files, _) = m.sh(&["ls", "/var/lib/enforcer"]);
    assert!(!files.trim().is_empty(), "nothing in the state directory");
    let (ok, _, err) = enforcer(&["revoke", &id]);
    assert!(ok, "enforcer revoke: {err}");
    net.wait_connect(&net.r, "timeout", "after the revoke");

    // tail: the refusals, from the daemon's history.
    let (_, out, err) = m.sh(&[
        "timeout",
        "3",
        "/usr/local/bin/enforcer",
        "tail",
        "--since",
        "10m",
        "--verdict",
        "drop",
        "--json",
    ]);
    assert!(
        out.lines().any(|l| l.contains("10.2.0.2")),
        "tail showed no refusal of 10.2.0.2:\n{out}{err}"
    );

    // stop with --on-stop keep: still enforcing; start: adopts, with no gap in between.
    let before_stop = generation();
    let answers = Answers::watch(&net);
    let knocker = Knocker::start(&net);
    let (ok, _, err) = m.sh(&["systemctl", "stop", "enforcer"]);
    assert!(ok, "systemctl stop: {err}");
    let (_, state, _) = m.sh(&["systemctl", "is-active", "enforcer"]);
    assert_eq!(state.trim(), "inactive");
    assert_eq!(net.connect(&net.r), "timeout", "a stop removed enforcement");
    assert_eq!(
        net.connect(&net.a),
        "connected",
        "a stop cut the allowed off"
    );
    let (ok, _, err) = m.sh(&["systemctl", "start", "enforcer"]);
    assert!(ok, "systemctl start: {err}");
    let tries = knocker.finish();
    let journal = m.journal(&["-u", "enforcer"]);
    let adopted = journal
        .lines()
        .filter(|l| l.contains("adopted the pinned programs"))
        .collect::<Vec<_>>();
    assert!(!adopted.is_empty(), "the start did not adopt:\n{journal}");
    eprintln!("{}", adopted.join("\n"));
    assert!(
        tries.iter().all(|(_, r)| r == "timeout"),
        "the refused sender got through around the restart: {:?}",
        tries
            .iter()
            .filter(|(_, r)| r != "timeout")
            .collect::<Vec<_>>()
    );
    assert!(
        answers.seen().is_empty(),
        "answers to the refused sender:\n{:?}",
        answers.seen()
    );
    eprintln!(
        "stop + start: {} SYNs from the refused sender, none answered",
        tries.len()
    );
    assert!(
        generation() > before_stop,
        "the adopted policy was not applied"
    );

    // unload, after stopping: enforcement goes (which the refused sender sees).
    let (ok, _, err) = m.sh(&["systemctl", "stop", "enforcer"]);
    assert!(ok, "systemctl stop: {err}");
    let (ok, out, err) = enforcer(&["unload"]);
    assert!(ok, "enforcer unload: {err}");
    eprintln!("{out}{err}");
    net.wait_connect(&net.r, "connected", "after unload");
}

/// An image built by `podman build`, removed (with its mount) on drop.
struct Image {
    tag: String,
    mounted: bool,
}

impl Image {
    fn build(containerfile: &Path, context: &Path) -> Self {
        let tag = format!("localhost/{}:test", testbed::unique("enforcer-"));
        let img = Image {
            tag: tag.clone(),
            mounted: false,
        };
        let out = Command::new("podman")
            .args(["build", "--quiet", "-f"])
            .arg(containerfile)
            .args(["-t", &tag])
            .arg(context)
            .output()
            .expect("podman build");
        assert!(
            out.status.success(),
            "podman build: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        img
    }

    fn mount(&mut self) -> PathBuf {
        let out = Command::new("podman")
            .args(["image", "mount", &self.tag])
            .output()
            .expect("podman image mount");
        assert!(
            out.status.success(),
            "podman image mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = true;
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    /// The image's configuration (Entrypoint, Cmd, User, ...).
    fn config(&self) -> Value {
        let out = Command::new("podman")
            .args([
                "image",
                "inspect",
                "--format",
                "{{json .Config}}",
                &self.tag,
            ])
            .output()
            .expect("podman image inspect");
        serde_json::from_slice(&out.stdout).expect("image config json")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("podman")
                .args(["image", "unmount", &self.tag])
                .output();
        }
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

#[test]
fn the_image_runs_the_static_daemon_alone_and_its_stop_keeps_enforcing() {
    need_root!();
    need_tool("podman", "podman");
    need_tool("nsenter", "util-linux");
    let context = TempDir::new();
    std::fs::copy(static_bin(), context.0.join("enforcer")).expect("copy the binary");
    let mut image = Image::build(&packaging().join("Containerfile"), &context.0);
    let config = image.config();
    let root = image.mount();
    let mut files: Vec<String> = walk(&root)
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["usr/local/bin/enforcer"],
        "the image holds more than the daemon"
    );
    let words = |key: &str| -> Vec<String> {
        config[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {config}"))
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    let command: Vec<String> = words("Entrypoint")
        .into_iter()
        .chain(words("Cmd"))
        .collect();
    assert!(
        command.iter().any(|w| w == "--watch")
            && command.windows(2).any(|w| w == ["--on-stop", "keep"]),
        "{command:?}"
    );

    let net = Net::new();
    net.up();
    let policy = TempDir::new();
    std::fs::write(policy.0.join("policy.toml"), net.policy(&["10.1.0.0/24"])).expect("policy");
    let _listener = Probe::spawn(
        Some(&net.c),
        None,
        &["tcp-listen", "0.0.0.0", &PORT.to_string()],
    );
    let bpf = BpfDir::new();
    let bind = format!("--bind-ro={}:/etc/enforcer", policy.0.display());
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut m = Machine::run(&root, &net.c, &bpf, &[&bind], &command);
    let start = Instant::now();
    let status = loop {
        let (ok, out, _) = m.sh(&["/usr/local/bin/enforcer", "status"]);
        if ok {
            break out;
        }
        assert!(
            m.running() && start.elapsed() < Duration::from_secs(30),
            "the daemon in the image did not come up:\n{}",
            m.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{command:?} in the image's root filesystem:\n{status}");
    net.wait_connect(&net.a, "connected", "the allowed sender");
    assert_eq!(net.connect(&net.r), "timeout", "the refused sender got in");

    // The documented stop: the programs stay attached with the policy in force.
    assert!(
        m.stop(Duration::from_secs(20)),
        "the container did not stop"
    );
    let out = m.output();
    eprintln!("the container's output:\n{out}");
    assert!(out.contains("--on-stop keep"), "{out}");
    assert_eq!(
        net.connect(&net.r),
        "timeout",
        "the stop removed enforcement"
    );
    assert_eq!(net.connect(&net.a), "connected");
    let out = Command::new(static_bin())
        .args(["unload", "--pin-dir"])
        .arg(bpf.pins())
        .output()
        .expect("enforcer unload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    net.wait_connect(&net.r, "connected", "after unload");
}

/// Regular files below `root`, relative to it.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(p);
            } else {
                files.push(p.strip_prefix(root).expect("below root").to_path_buf());
            }
        }
    }
    files
}

/// A ConfigMap volume as the kubelet's AtomicWriter keeps it: the data in a timestamped
/// directory, `..data` pointing at it, and `policy.toml -> ..data/policy.toml`.
struct ConfigMapVolume {
    dir: PathBuf,
    n: u32,
}

impl ConfigMapVolume {
    fn new(dir: &Path, policy: &str) -> Self {
        let mut v = ConfigMapVolume {
            dir: dir.to_path_buf(),
            n: 0,
        };
        v.update(policy);
        symlink("..data/policy.toml", dir.join("policy.toml")).expect("user-visible symlink");
        v
    }

    /// The kubelet's update: write the new payload into a new directory, point
    /// `..data_tmp` at it, rename that over `..data`, remove the old directory.
    fn update(&mut self, policy: &str) {
        self.n += 1;
        let ts = format!("..2026_11_30_12_00_{:02}.{}", self.n, std::process::id());
        let new = self.dir.join(&ts);
        std::fs::create_dir(&new).expect("payload dir");
        std::fs::write(new.join("policy.toml"), policy).expect("payload");
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        symlink(&ts, self.dir.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).expect("swap");
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).expect("remove the old payload");
        }
    }
}

#[test]
fn watch_applies_a_configmap_update_and_refuses_a_broken_one() {
    need_root!();
    let bed = Bed::new();
    let _listener = bed.listen("tcp-listen", PORT);
    let only_a = bed.policy("", &format!("[[rule]]\nname = \"svc\"\nprotocol = \"tcp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\n"));
    let a_and_r = only_a.replace("\"10.1.0.0/24\"", "\"10.1.0.0/24\", \"10.2.0.0/24\"");
    let volume_dir = TempDir::new();
    let mut volume = ConfigMapVolume::new(&volume_dir.0, &only_a);
    let config = volume_dir.0.join("policy.toml");
    let mut d = Daemon::start_file(&bed.host, &config, &["--watch"]);
    let r_gets = |bed: &Bed| bed.tcp(&bed.r, None, testbed::bed::HOST_R4, PORT, 500);
    assert_eq!(r_gets(&bed), "timeout");
    let g0 = d.generation();

    // A new policy: applied, as a reload would.
    volume.update(&a_and_r);
    d.wait_for(Duration::from_secs(20), |v| {
        v["event"] == "policy" && v["action"] == "applied" && v["policy"] == g0 + 1
    });
    assert_eq!(r_gets(&bed), "connected", "the update was not enforced");

    // A broken one: refused with its location, the policy in force stays.
    volume.update(&format!(
        "{a_and_r}\n[[rule]]\nname = \"broken\"\nports = [\"nope\"]\n"
    ));
    let refused = d.wait_for(Duration::from_secs(20), |v| {
        v["event"] == "policy" && v["action"] == "refused"
    });
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("policy.toml:")),
        "{refused}"
    );
    assert!(d.stderr().contains("reload refused"), "{}", d.stderr());
    assert_eq!(d.generation(), g0 + 1);
    assert_eq!(r_gets(&bed), "connected", "the policy in force went");

    // The same content again (another key changed): nothing to do. Then back to the
    // first policy, applied: the daemon still follows the volume.
    volume.update(&a_and_r);
    volume.update(&only_a);
    d.wait_for(Duration::from_secs(20), |v| {
        v["event"] == "policy" && v["action"] == "applied" && v["policy"] == g0 + 2
    });
    assert_eq!(r_gets(&bed), "timeout", "the last update was not enforced");
    assert_eq!(d.generation(), g0 + 2, "an unchanged policy was re-applied");
    let _ = d.stop();
}

#[test]
fn the_metrics_pass_promtool_check() {
    need_root!();
    need_tool("promtool", "prometheus");
    let bed = Bed::new();
    let _listener = bed.listen("tcp-listen", PORT);
    let policy = bed.policy("", &format!("[[rule]]\nname = \"svc\"\nprotocol = \"tcp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\n"));
    let d = Daemon::start_with(&bed.host, &policy, &["--metrics", "127.0.0.1:9477"]);
    // Some traffic of each verdict, so the labelled series exist.
    assert_eq!(
        bed.tcp(&bed.a, None, testbed::bed::HOST_A4, PORT, 500),
        "connected"
    );
    assert_eq!(
        bed.tcp(&bed.r, None, testbed::bed::HOST_R4, PORT, 500),
        "timeout"
    );
    let text = bed.host.run(|| {
        use std::io::{Read as _, Write as _};
        let start = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect("127.0.0.1:9477") {
                s.write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .expect("request");
                let mut resp = String::new();
                s.read_to_string(&mut resp).expect("response");
                return resp;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no metrics listener"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write as _;
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("feed promtool");
    }
    let out = check.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "promtool check metrics on {} lines ({} series): exit {}, {:?}",
        body.lines().count(),
        body.lines().filter(|l| !l.starts_with('#')).count(),
        out.status,
        said
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n{body}"
    );
    assert!(body.contains("# TYPE "), "{body}");
    drop(d);
}

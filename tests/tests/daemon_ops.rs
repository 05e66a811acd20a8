//! Operating the daemon: SIGKILL and restarts with pinned state (no gap for allowed
//! traffic, refusals dropped throughout), `enforcer unload`, incompatible pinned state,
//! `enforcer status`, Prometheus metrics, interface hotplug, and the control socket's
//! hygiene.
//!
//! Topology (one per test, names unique, everything removed on drop):
//!
//! ```text
//!   ok   10.1.0.2 fd01::2 ──veth── 10.1.0.1 fd01::1 ┐ host (daemon, XDP on both ends,
//!   bad  10.2.0.2 fd02::2 ──veth── 10.2.0.1 fd02::1 ┘       listeners on PORT in CG/srv)
//! ```
//!
//! cgroups: CG (attached), CG/srv, CG/allowed, CG/refused. Rules "tcp-svc" and "udp-svc"
//! protect PORT, allowing 10.1.0.0/24, fd01::/64 and CG/allowed.
//!
//! Needs root; skipped otherwise. Run with
//! `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test daemon_ops`.

use std::{
    io::Write as _,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    daemon::{probe, run_command, Daemon, Probe, TempDir},
    flood::{
        http_get, numbered_stream, parse_rfc3339_utc_ns, rule_status, status_json, udp_once,
        udp_send, ControlConn, StopOnDrop,
    },
    net::{link, Cgroup, NetNs, Veth},
};

const PORT: &str = "7000";
const PORT_N: u64 = 7000;
const PROBE_MS: &str = "800";
const EVENT_WAIT: Duration = Duration::from_secs(5);

use testbed::need_root;

struct Bed {
    allowed: Cgroup,
    refused: Cgroup,
    srv: Cgroup,
    cg: Cgroup,
    v_ok: Veth,
    v_bad: Veth,
    ok: NetNs,
    bad: NetNs,
    host: NetNs,
}

impl Bed {
    fn new() -> Self {
        let host = NetNs::new();
        let ok = NetNs::new();
        let bad = NetNs::new();
        let v_ok = link(&host, &ok, 1);
        let v_bad = link(&host, &bad, 2);
        let cg = Cgroup::new();
        let srv = cg.child("srv");
        let allowed = cg.child("allowed");
        let refused = cg.child("refused");
        Bed {
            allowed,
            refused,
            srv,
            cg,
            v_ok,
            v_bad,
            ok,
            bad,
            host,
        }
    }

    /// The policy, with `extra_ifaces` (quoted, comma-separated) added to the attach list
    /// and `extra_cgroups` to udp-svc's allowed cgroups.
    fn policy_with(&self, extra_ifaces: &str, extra_cgroups: &str) -> String {
        format!(
            r#"mode = "enforce"

[attach]
interfaces = ["{ok}", "{bad}"{extra_ifaces}]
cgroup = "{cg}"

[[rule]]
name = "tcp-svc"
protocol = "tcp"
ports = [{PORT}]
allow_from = ["10.1.0.0/24", "fd01::/64"]
allow_cgroups = ["{allowed}"]

[[rule]]
name = "udp-svc"
protocol = "udp"
ports = [{PORT}]
allow_from = ["10.1.0.0/24", "fd01::/64"]
allow_cgroups = ["{allowed}"{extra_cgroups}]
"#,
            ok = self.v_ok.a,
            bad = self.v_bad.a,
            cg = self.cg.path,
            allowed = self.allowed.path,
        )
    }

    fn policy(&self) -> String {
        self.policy_with("", "")
    }

    /// TCP and UDP (echo) listeners on PORT, dual-stack, in CG/srv.
    fn listeners(&self) -> (Probe, Probe) {
        let procs = self.srv.procs_file();
        (
            Probe::spawn(Some(&self.host), Some(&procs), &["tcp-listen", "::", PORT]),
            Probe::spawn(Some(&self.host), Some(&procs), &["udp-listen", "::", PORT]),
        )
    }
}

fn tcp(ns: &NetNs, cg: Option<&Cgroup>, addr: &str) -> String {
    let procs = cg.map(Cgroup::procs_file);
    probe(
        Some(ns),
        procs.as_deref(),
        &["tcp-connect", addr, PORT, PROBE_MS],
    )
}

fn udp(ns: &NetNs, cg: Option<&Cgroup>, addr: &str) -> String {
    let procs = cg.map(Cgroup::procs_file);
    probe(
        Some(ns),
        procs.as_deref(),
        &["udp-send", addr, PORT, PROBE_MS],
    )
}

/// Whether an XDP program is attached to `dev` in `ns`.
fn xdp_attached(ns: &NetNs, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-d", "link", "show", "dev", dev])
        .output()
        .expect("ip link show");
    assert!(
        out.status.success(),
        "ip link show {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("prog/xdp") || text.contains(" xdp")
}

/// Names of the links pinned under `pins`.
fn pinned_links(pins: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(pins.join("links"))
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Sends SIGTERM and waits (up to 10 s) for the daemon to exit, leaving it unreaped so its
/// guard still holds it; returns its stderr.
fn sigterm_and_wait(d: &Daemon) -> String {
    let pid = d.pid();
    d.signal(libc::SIGTERM);
    let start = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if stat.is_empty() || state == Some('Z') {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.stderr_to_end()
}

/// `enforcer unload --pin-dir DIR`: (success, stdout, stderr).
fn unload(dir: &Path) -> (bool, String, String) {
    let out = Command::new(testbed::enforcer_bin())
        .args(["unload", "--pin-dir"])
        .arg(dir)
        .output()
        .expect("run enforcer unload");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dropped(d: &Daemon, rule: &str) -> u64 {
    rule_status(&status_json(d), rule)["dropped"]
        .as_u64()
        .expect("dropped")
}

fn received_from(l: &Probe, addr: &str) -> Vec<String> {
    l.lines()
        .into_iter()
        .filter(|s| (s.starts_with("accepted") || s.starts_with("received")) && s.contains(addr))
        .collect()
}

/// Waits until `pred` holds, polling every 50 ms; panics with `what` on timeout.
fn wait_until(timeout: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigkill_keeps_enforcing_and_a_restart_adopts_without_a_gap() {
    need_root!();
    let bed = Bed::new();
    let (tcp_l, udp_l) = bed.listeners();
    let policy = bed.policy();
    let d = Daemon::start(&bed.host, &policy);
    let pin_dir = d.pins.as_ref().expect("pins").0.clone();

    let stop = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        // Allowed: numbered datagrams to the echo listener, each echo checked.
        let stream = s.spawn(|| {
            numbered_stream(
                &bed.ok,
                "10.1.0.1:7000".parse().unwrap(),
                Duration::from_millis(10),
                Duration::from_millis(1000),
                &stop,
                &answered,
            )
        });
        // Refused: a source that keeps knocking (at most 300 tries).
        let knocks = s.spawn(|| {
            let mut v = Vec::new();
            while !stop.load(Ordering::SeqCst) && v.len() < 300 {
                v.push(probe(
                    Some(&bed.bad),
                    None,
                    &["tcp-connect", "10.2.0.1", PORT, "300"],
                ));
            }
            v
        });
        let answered_at_least = |n: u64, what: &str| {
            wait_until(
                Duration::from_secs(10),
                &format!("{n} echoes ({what})"),
                || answered.load(Ordering::SeqCst) >= n,
            )
        };
        answered_at_least(20, "before the kill");
        let udp_before = dropped(&d, "udp-svc");
        let tcp_before = dropped(&d, "tcp-svc");
        assert!(tcp_before > 0, "the knocks were not dropped");

        // kill -9: nothing is cleaned up; the pinned links keep the programs attached.
        let links = pinned_links(&pin_dir);
        let pins = d.kill9();
        assert_eq!(
            pinned_links(&pin_dir),
            links,
            "pinned links changed with the daemon's death"
        );
        assert!(
            links
                .iter()
                .any(|l| l.starts_with(&format!("xdp@{}@", bed.v_bad.a))),
            "{links:?}"
        );
        assert!(
            xdp_attached(&bed.host, &bed.v_bad.a),
            "XDP detached when the daemon died"
        );
        let a0 = answered.load(Ordering::SeqCst);
        // While no daemon runs: refusals dropped (at XDP and at connect()), allowed flows.
        assert_eq!(
            udp_send(
                &bed.bad,
                "10.2.0.2:40300".parse().unwrap(),
                "10.2.0.1:7000".parse().unwrap(),
                b"dead",
                50,
                0,
                Duration::ZERO
            ),
            50
        );
        assert_eq!(
            tcp(&bed.bad, None, "10.2.0.1"),
            "timeout",
            "refused source while the daemon is dead"
        );
        assert_eq!(
            tcp(&bed.host, Some(&bed.refused), "127.0.0.1"),
            "eperm",
            "refused cgroup while the daemon is dead"
        );
        assert_eq!(
            tcp(&bed.ok, None, "10.1.0.1"),
            "connected",
            "allowed source while the daemon is dead"
        );
        answered_at_least(a0 + 20, "while the daemon is dead");

        // The successor adopts the pinned state (no gap), and says so.
        let mut d2 = Daemon::adopt(&bed.host, &policy, &[], pins);
        let applied = d2.wait_for(EVENT_WAIT, |v| {
            v["event"] == "policy" && v["action"] == "applied"
        });
        assert_eq!(
            applied["policy"], 2,
            "the successor's policy follows the adopted generation: {applied}"
        );
        // The counters were pinned too: the drops while no daemon ran are there.
        assert_eq!(
            dropped(&d2, "udp-svc"),
            udp_before + 50,
            "udp-svc drops across the kill"
        );
        assert!(
            dropped(&d2, "tcp-svc") > tcp_before,
            "tcp-svc drops across the kill"
        );
        let st = status_json(&d2);
        assert_eq!(
            st["programs"]["cgroup"]["path"],
            bed.cg.path.as_str(),
            "{st:#}"
        );
        let xdp = st["programs"]["xdp"]["attached"].to_string();
        assert!(
            xdp.contains(&bed.v_ok.a) && xdp.contains(&bed.v_bad.a),
            "{xdp}"
        );
        // Refusals made while no daemon ran wait in the pinned ring buffer.
        let ev = d2.wait_for(EVENT_WAIT, |v| {
            v["event"] == "packet" && v["sport"] == 40300
        });
        assert_eq!(
            (
                ev["verdict"].as_str(),
                ev["hook"].as_str(),
                ev["policy"].as_u64()
            ),
            (Some("drop"), Some("xdp"), Some(1)),
            "{ev}"
        );
        // The successor knows rule names of its own generation only (nothing pinned names
        // the adopted policy's rules): such an event may lack its rule, never misname it.
        assert!(ev.get("rule").is_none() || ev["rule"] == "udp-svc", "{ev}");
        assert_eq!(
            tcp(&bed.bad, None, "10.2.0.1"),
            "timeout",
            "refused source after the restart"
        );
        let a1 = answered.load(Ordering::SeqCst);
        answered_at_least(a1 + 20, "after the restart");

        stop.store(true, Ordering::SeqCst);
        let report = stream.join().expect("stream thread");
        let knocks = knocks.join().expect("knock thread");
        eprintln!(
            "allowed stream across kill -9 and restart: {report:?}; refused knocks: {}",
            knocks.len()
        );
        assert!(
            report.missing.is_empty(),
            "allowed datagrams without an echo (a gap): {:?}",
            report.missing
        );
        assert!(report.sent >= 60, "{report:?}");
        assert!(
            knocks.len() >= 3 && knocks.iter().all(|k| k == "timeout"),
            "refused knocks: {knocks:?}"
        );
        assert!(
            received_from(&tcp_l, "10.2.0.2").is_empty(),
            "refused source got through: {:?}",
            tcp_l.lines()
        );
        assert!(
            received_from(&udp_l, "10.2.0.2").is_empty(),
            "refused source got through: {:?}",
            udp_l.lines()
        );
        let status = d2.stop();
        assert!(status.success(), "{status}");
    });
}

#[test]
fn clean_stop_with_keep_then_restart_adopts_and_unload_removes_everything() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let policy = bed.policy();
    let mut d = Daemon::start_with(&bed.host, &policy, &["--on-stop", "keep"]);
    assert_eq!(tcp(&bed.bad, None, "10.2.0.1"), "timeout");
    let pins = d.pins.take().expect("pins");
    let pin_dir = pins.0.clone();
    let stderr = sigterm_and_wait(&d);
    assert!(stderr.contains("programs stay attached"), "{stderr}");
    drop(d);

    // Stopped, still enforcing.
    assert!(
        !pinned_links(&pin_dir).is_empty(),
        "nothing pinned after a stop with --on-stop keep"
    );
    assert!(
        xdp_attached(&bed.host, &bed.v_bad.a),
        "XDP detached by a stop with --on-stop keep"
    );
    assert_eq!(
        tcp(&bed.bad, None, "10.2.0.1"),
        "timeout",
        "refused source after the stop"
    );
    assert_eq!(
        udp(&bed.bad, None, "fd02::1"),
        "sent",
        "refused source after the stop"
    );
    assert_eq!(
        tcp(&bed.host, Some(&bed.refused), "::1"),
        "eperm",
        "refused cgroup after the stop"
    );
    assert_eq!(
        tcp(&bed.ok, None, "10.1.0.1"),
        "connected",
        "allowed source after the stop"
    );
    assert_eq!(
        tcp(&bed.host, Some(&bed.allowed), "127.0.0.1"),
        "connected",
        "allowed cgroup after the stop"
    );

    // A restart adopts; a second keep-stop keeps.
    let mut d2 = Daemon::start_pinned(&bed.host, &policy, &["--on-stop", "keep"], pins);
    assert!(d2.stderr().contains("adopted"), "{}", d2.stderr());
    let st = status_json(&d2);
    assert_eq!(st["policy"]["generation"], 2, "{st:#}");
    assert_eq!(
        st["programs"]["cgroup"]["path"],
        bed.cg.path.as_str(),
        "{st:#}"
    );
    assert_eq!(tcp(&bed.bad, None, "10.2.0.1"), "timeout");
    d2.wait_for(EVENT_WAIT, |v| {
        v["event"] == "packet" && v["src"] == "10.2.0.2" && v["policy"] == 2
    });
    let pins = d2.pins.take().expect("pins");
    sigterm_and_wait(&d2);
    drop(d2);
    assert!(xdp_attached(&bed.host, &bed.v_bad.a));
    assert_eq!(tcp(&bed.bad, None, "10.2.0.1"), "timeout");

    // unload removes everything: enforcement ends.
    let (ok, out, err) = unload(&pin_dir);
    assert!(ok, "enforcer unload failed: {err}");
    assert!(
        out.contains("removed") && out.contains(&pin_dir.display().to_string()),
        "{out}"
    );
    assert!(
        !pin_dir.exists(),
        "{} still exists after unload",
        pin_dir.display()
    );
    for dev in [&bed.v_ok.a, &bed.v_bad.a] {
        assert!(
            !xdp_attached(&bed.host, dev),
            "XDP still on {dev} after unload"
        );
    }
    assert_eq!(
        tcp(&bed.bad, None, "10.2.0.1"),
        "connected",
        "refused source after unload"
    );
    assert_eq!(
        udp(&bed.bad, None, "fd02::1"),
        "reply",
        "refused source after unload"
    );
    assert_eq!(
        tcp(&bed.host, Some(&bed.refused), "::1"),
        "connected",
        "refused cgroup after unload"
    );
    let (ok, out, _) = unload(&pin_dir);
    assert!(ok && out.contains("nothing pinned"), "second unload: {out}");
    drop(pins);
}

#[test]
fn incompatible_pinned_state_is_refused_clearly() {
    need_root!();
    if !Command::new("bpftool")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        testbed::skip!("bpftool is not installed (apt-get install -y bpftool)");
    }
    let bed = Bed::new();
    let policy = bed.policy();
    let mut d = Daemon::start_with(&bed.host, &policy, &["--on-stop", "keep"]);
    let pins = d.pins.take().expect("pins");
    let pin_dir = pins.0.clone();
    sigterm_and_wait(&d);
    drop(d);

    // HostInfo is {netns_cookie u64, layout u32, pad u32}: write layout 99.
    let host_map = pin_dir.join("maps/HOST");
    let mut args: Vec<String> = ["map", "update", "pinned"].map(String::from).to_vec();
    args.push(host_map.display().to_string());
    args.extend(["key", "hex", "00", "00", "00", "00", "value", "hex"].map(String::from));
    args.extend(["00"; 8].map(String::from));
    args.extend(["63", "00", "00", "00", "00", "00", "00", "00"].map(String::from));
    let out = Command::new("bpftool")
        .args(&args)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool map update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links = pinned_links(&pin_dir);

    // A daemon started on it exits non-zero, naming the pin dir and the way out.
    let dir = TempDir::new();
    let config = dir.0.join("policy.toml");
    std::fs::write(&config, &policy).expect("policy");
    let mut cmd = run_command(
        &bed.host,
        &config,
        &dir.0.join("control.sock"),
        &pin_dir,
        Some(&dir.0.join("state")),
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn enforcer");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("enforcer kept running on incompatible pinned state");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("enforcer run on incompatible state: {status}\n{stderr}");
    assert!(!status.success(), "enforcer adopted incompatible state");
    let dir_s = pin_dir.display().to_string();
    for w in [
        dir_s.as_str(),
        "incompatible",
        "layout 99",
        &format!("enforcer unload --pin-dir {dir_s}"),
    ] {
        assert!(stderr.contains(w), "{w:?} missing in {stderr}");
    }
    // It touched nothing: the kept enforcement goes on.
    assert_eq!(pinned_links(&pin_dir), links);
    assert!(xdp_attached(&bed.host, &bed.v_bad.a));
    assert_eq!(tcp(&bed.bad, None, "10.2.0.1"), "timeout");

    // After unload, a start is a fresh one.
    let (ok, _, err) = unload(&pin_dir);
    assert!(ok, "{err}");
    let d = Daemon::start_pinned(&bed.host, &policy, &[], pins);
    assert!(!d.stderr().contains("adopted"), "{}", d.stderr());
    assert_eq!(status_json(&d)["policy"]["generation"], 1);
}

#[test]
fn status_shows_programs_policy_counters_health_and_warnings() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let missing_if = testbed::unique("nx");
    let later = format!("{}/later", bed.cg.path);
    let policy = bed.policy_with(&format!(", \"{missing_if}\""), &format!(", \"{later}\""));
    let d = Daemon::start(&bed.host, &policy);

    let (refused, allowed) = (30u64, 12u64);
    udp_send(
        &bed.bad,
        "10.2.0.2:40400".parse().unwrap(),
        "10.2.0.1:7000".parse().unwrap(),
        b"no",
        refused as usize,
        0,
        Duration::ZERO,
    );
    udp_send(
        &bed.ok,
        "10.1.0.2:40401".parse().unwrap(),
        "10.1.0.1:7000".parse().unwrap(),
        b"yes",
        allowed as usize,
        0,
        Duration::ZERO,
    );
    // Allowed datagrams are judged twice: at XDP and at the listener's cgroup ingress.
    let deadline = Instant::now() + Duration::from_secs(5);
    let st = loop {
        let st = status_json(&d);
        let r = rule_status(&st, "udp-svc");
        if (r["dropped"] == refused
            && r["allowed"] == 2 * allowed
            && st["audit"]["events"] == refused)
            || Instant::now() > deadline
        {
            break st;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (ok, text, err) = d.cli(&["status"]);
    assert!(ok, "{err}");
    eprintln!("enforcer status:\n{text}");

    // Policy identity.
    let p = &st["policy"];
    let sha = Command::new("sha256sum")
        .arg(&d.policy_path)
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&sha.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    assert_eq!(p["hash"], sha.as_str(), "{p}");
    assert_eq!(
        (
            p["generation"].as_u64(),
            p["mode"].as_str(),
            p["rules"].as_u64()
        ),
        (Some(1), Some("enforce"), Some(2)),
        "{p}"
    );
    assert_eq!(p["file"], d.policy_path.display().to_string().as_str());
    let applied = parse_rfc3339_utc_ns(p["applied_at"].as_str().expect("applied_at"))
        .expect("applied_at is RFC 3339");
    assert!(
        (testbed::flood::now_ns() - applied).abs() < 120_000_000_000,
        "applied_at {}",
        p["applied_at"]
    );
    assert_eq!(st["daemon"]["pid"], d.pid(), "{st:#}");

    // Programs and where they are attached.
    assert_eq!(st["programs"]["xdp"]["name"], "enforcer_xdp");
    let xdp = st["programs"]["xdp"]["attached"]
        .as_array()
        .expect("attached")
        .clone();
    let ifaces: Vec<&str> = xdp.iter().filter_map(|a| a["iface"].as_str()).collect();
    assert_eq!(ifaces.len(), 2, "{xdp:?}");
    assert!(
        ifaces.contains(&bed.v_ok.a.as_str()) && ifaces.contains(&bed.v_bad.a.as_str()),
        "{xdp:?}"
    );
    for a in &xdp {
        assert!(a["mode"] == "native" || a["mode"] == "generic", "{a}");
        assert!(
            text.contains(&format!(
                "{} ({})",
                a["iface"].as_str().unwrap(),
                a["mode"].as_str().unwrap()
            )),
            "{text}"
        );
    }
    assert_eq!(st["programs"]["cgroup"]["path"], bed.cg.path.as_str());
    assert_eq!(
        st["programs"]["cgroup"]["programs"]
            .as_array()
            .map(Vec::len),
        Some(6),
        "{st:#}"
    );

    // Counters that match the traffic sent.
    let r = rule_status(&st, "udp-svc");
    assert_eq!(
        (
            r["dropped"].as_u64(),
            r["allowed"].as_u64(),
            r["would_drop"].as_u64()
        ),
        (Some(refused), Some(2 * allowed), Some(0)),
        "{r}"
    );
    let t = rule_status(&st, "tcp-svc");
    assert_eq!(
        (t["dropped"].as_u64(), t["allowed"].as_u64()),
        (Some(0), Some(0)),
        "{t}"
    );
    let c = &st["counters"];
    assert_eq!(c["xdp"]["dropped-source"], refused, "{c}");
    assert_eq!(c["xdp"]["allowed-by-source"], allowed, "{c}");
    assert_eq!(c["cgroup_ingress"]["allowed-by-source"], allowed, "{c}");
    // Audit health: only refusals are reported, none lost.
    let a = &st["audit"];
    assert_eq!(a["events"], refused, "{a}");
    for k in ["lost_kernel", "suppressed", "lost_sinks", "subscribers"] {
        assert_eq!(a[k], 0, "{k}: {a}");
    }
    assert_eq!(
        d.events().iter().filter(|v| v["event"] == "packet").count() as u64,
        refused
    );

    // Warnings: the missing interface, the allowed cgroup not created yet.
    let warnings = st["warnings"].to_string();
    assert!(
        warnings.contains(&format!(
            "interface {missing_if} in the policy does not exist"
        )),
        "{warnings}"
    );
    assert!(
        warnings.contains(&format!("cgroup {later} does not exist yet")),
        "{warnings}"
    );
    assert_eq!(
        st["warnings"].as_array().map(Vec::len),
        Some(2),
        "{warnings}"
    );

    // The readable form says the same.
    for needle in [
        format!("policy     generation 1 (enforce), sha256 {sha}"),
        format!("cgroup     {} (ingress, egress, connect4/6, sendmsg4/6)", bed.cg.path),
        format!("xdp             allowed-by-source={allowed} dropped-source={refused}"),
        format!("audit      {refused} events, 0 suppressed by rate limits, 0 lost in the kernel, 0 lost by slow sinks, 0 subscribers"),
        format!("warning    interface {missing_if} in the policy does not exist"),
        format!("warning    cgroup {later} does not exist yet"),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing in\n{text}");
    }
    let rule_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("udp-svc"))
        .expect("udp-svc line");
    assert_eq!(
        rule_line.split_whitespace().collect::<Vec<_>>(),
        [
            "udp-svc",
            &(2 * allowed).to_string(),
            &refused.to_string(),
            "0"
        ],
        "{rule_line}"
    );

    // The cgroup appears: its warning goes.
    let _later = bed.cg.child("later");
    wait_until(Duration::from_secs(3), "the cgroup warning to go", || {
        !status_json(&d)["warnings"].to_string().contains(&later)
    });

    // Without --metrics nothing listens for TCP but the test's own listener.
    let out = Command::new("ip")
        .args(["netns", "exec", &bed.host.name, "ss", "-H", "-ltnp"])
        .output()
        .expect("ss");
    let listening = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !listening.contains("enforcer"),
        "{listening}"
    );
}

#[test]
fn metrics_are_served_inside_the_daemon_namespace() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let addr = "127.0.0.1:9477";
    let d = Daemon::start_with(&bed.host, &bed.policy(), &["--metrics", addr]);

    udp_send(
        &bed.bad,
        "10.2.0.2:40500".parse().unwrap(),
        "10.2.0.1:7000".parse().unwrap(),
        b"no",
        7,
        0,
        Duration::ZERO,
    );
    udp_send(
        &bed.ok,
        "10.1.0.2:40501".parse().unwrap(),
        "10.1.0.1:7000".parse().unwrap(),
        b"yes",
        3,
        0,
        Duration::ZERO,
    );
    wait_until(Duration::from_secs(5), "the counters", || {
        let r = rule_status(&status_json(&d), "udp-svc");
        r["dropped"] == 7 && r["allowed"] == 6
    });
    let st = status_json(&d);
    let (status_line, body) = http_get(
        &bed.host,
        addr.parse().unwrap(),
        "/metrics",
        Duration::from_secs(5),
    )
    .expect("GET /metrics");
    eprintln!("GET /metrics: {status_line}\n{body}");
    assert_eq!(status_line, "HTTP/1.1 200 OK");

    // Every sample line is `name{labels} value` with a declared family.
    let mut types = Vec::new();
    for l in body.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            types.push(rest.split_whitespace().next().expect("family").to_string());
            continue;
        }
        if l.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = l
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {l:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {l:?}");
        let name = series.split('{').next().expect("name");
        assert!(types.iter().any(|t| t == name), "{name} has no # TYPE line");
        assert!(
            !series.contains('{') || series.ends_with('}'),
            "bad labels in {l:?}"
        );
    }
    let hash = st["policy"]["hash"].as_str().expect("hash");
    let file = st["policy"]["file"].as_str().expect("file");
    let mut want = vec![
        "# TYPE enforcer_packets_total counter".to_string(),
        "enforcer_packets_total{hook=\"xdp\",reason=\"dropped-source\"} 7".to_string(),
        "enforcer_packets_total{hook=\"xdp\",reason=\"allowed-by-source\"} 3".to_string(),
        "enforcer_packets_total{hook=\"cgroup_ingress\",reason=\"allowed-by-source\"} 3"
            .to_string(),
        "enforcer_rule_packets_total{rule=\"udp-svc\",verdict=\"drop\"} 7".to_string(),
        "enforcer_rule_packets_total{rule=\"udp-svc\",verdict=\"allow\"} 6".to_string(),
        "enforcer_rule_packets_total{rule=\"tcp-svc\",verdict=\"drop\"} 0".to_string(),
        "enforcer_policy_generation 1".to_string(),
        format!("enforcer_policy_info{{hash=\"{hash}\",file=\"{file}\"}} 1"),
        "enforcer_audit_events_total 7".to_string(),
        "enforcer_audit_suppressed_total 0".to_string(),
        "enforcer_audit_lost_total{scope=\"kernel\"} 0".to_string(),
        "enforcer_audit_subscribers 0".to_string(),
        "enforcer_warnings 0".to_string(),
    ];
    for a in st["programs"]["xdp"]["attached"]
        .as_array()
        .expect("attached")
    {
        want.push(format!(
            "enforcer_xdp_attached{{iface=\"{}\",mode=\"{}\"}} 1",
            a["iface"].as_str().unwrap(),
            a["mode"].as_str().unwrap()
        ));
    }
    for w in &want {
        assert!(body.lines().any(|l| l == w), "{w:?} missing in\n{body}");
    }

    // The figures follow the traffic.
    udp_send(
        &bed.bad,
        "10.2.0.2:40502".parse().unwrap(),
        "10.2.0.1:7000".parse().unwrap(),
        b"no",
        5,
        0,
        Duration::ZERO,
    );
    wait_until(Duration::from_secs(5), "the counters", || {
        dropped(&d, "udp-svc") == 12
    });
    // Metrics come from a snapshot at most a second old.
    wait_until(Duration::from_secs(5), "the metrics snapshot", || {
        let (_, body) = http_get(&bed.host, addr.parse().unwrap(), "/metrics", Duration::ZERO)
            .expect("GET /metrics");
        body.lines()
            .any(|l| l == "enforcer_rule_packets_total{rule=\"udp-svc\",verdict=\"drop\"} 12")
    });

    let (status_line, _) =
        http_get(&bed.host, addr.parse().unwrap(), "/", Duration::ZERO).expect("GET /");
    assert_eq!(status_line, "HTTP/1.1 404 Not Found");
    // Bound to loopback: not reachable on the host's other addresses.
    let err = http_get(
        &bed.bad,
        "10.2.0.1:9477".parse().unwrap(),
        "/metrics",
        Duration::ZERO,
    );
    assert!(
        err.is_err(),
        "metrics reachable from another machine: {err:?}"
    );
}

#[test]
fn interfaces_matching_a_glob_are_attached_when_they_appear_and_forgotten_when_gone() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let hot = NetNs::new();
    // Names: "hp<pid>x<n>a" (the glob's) with peer "hq<pid>x<n>a", at most 15 characters.
    let stem = testbed::unique("hp");
    let glob = format!("{stem}*");
    let dev = format!("{stem}a");
    let peer = format!("hq{}", &dev[2..]);
    assert!(dev.len() <= 15 && peer.len() <= 15, "{dev} {peer}");
    let mut d = Daemon::start(&bed.host, &bed.policy_with(&format!(", \"{glob}\""), ""));
    let st = status_json(&d);
    assert!(
        st["warnings"]
            .to_string()
            .contains(&format!("no interface matches {glob}")),
        "{st:#}"
    );
    let attached = |d: &Daemon| -> Vec<String> {
        status_json(d)["programs"]["xdp"]["attached"]
            .as_array()
            .expect("attached")
            .iter()
            .filter_map(|a| a["iface"].as_str().map(String::from))
            .collect()
    };

    for round in 0..2u16 {
        // The interface appears: XDP is attached to it.
        let sh = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(&[
            "link",
            "add",
            &dev,
            "netns",
            &bed.host.name,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &hot.name,
        ]);
        bed.host.ip(&["addr", "add", "10.5.0.1/24", "dev", &dev]);
        bed.host.ip(&["link", "set", &dev, "up"]);
        hot.ip(&["addr", "add", "10.5.0.2/24", "dev", &peer]);
        hot.ip(&["link", "set", &peer, "up"]);
        wait_until(Duration::from_secs(5), &format!("XDP on {dev}"), || {
            attached(&d).contains(&dev)
        });
        assert!(xdp_attached(&bed.host, &dev));
        let st = status_json(&d);
        assert!(
            !st["warnings"].to_string().contains("no interface matches"),
            "{st:#}"
        );
        assert!(
            d.stderr().contains("XDP attached") && d.stderr().contains(&dev),
            "{}",
            d.stderr()
        );

        // A refused source over it is dropped there.
        let sport = 40600 + round;
        udp_once(&hot, &format!("10.5.0.2:{sport}"), "10.5.0.1:7000", b"hot");
        let ev = d.wait_for(EVENT_WAIT, |v| {
            v["event"] == "packet" && v["sport"] == sport
        });
        assert_eq!(
            (
                ev["hook"].as_str(),
                ev["verdict"].as_str(),
                ev["iface"].as_str()
            ),
            (Some("xdp"), Some("drop"), Some(dev.as_str())),
            "{ev}"
        );
        assert_eq!(ev["dport"], PORT_N, "{ev}");
        assert_eq!(
            probe(
                Some(&hot),
                None,
                &["tcp-connect", "10.5.0.1", PORT, PROBE_MS]
            ),
            "timeout"
        );

        // Renamed (still matching): events name it as it is called now.
        let renamed = format!("{stem}b");
        bed.host.ip(&["link", "set", &dev, "down"]);
        bed.host.ip(&["link", "set", &dev, "name", &renamed]);
        bed.host.ip(&["link", "set", &renamed, "up"]);
        wait_until(Duration::from_secs(5), &format!("XDP on {renamed}"), || {
            attached(&d).contains(&renamed) && !attached(&d).contains(&dev)
        });
        // (A name the daemon looked up is used for up to a second.)
        let mut names = Vec::new();
        for i in 0..10u16 {
            let sport = 40610 + round * 16 + i;
            udp_once(&hot, &format!("10.5.0.2:{sport}"), "10.5.0.1:7000", b"hot");
            let ev = d.wait_for(EVENT_WAIT, |v| {
                v["event"] == "packet" && v["sport"] == sport
            });
            names.push(ev["iface"].as_str().unwrap_or("").to_string());
            if ev["iface"] == renamed.as_str() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(
            names.last(),
            Some(&renamed),
            "events after renaming {dev} to {renamed}: {names:?}"
        );
        bed.host.ip(&["link", "set", &renamed, "down"]);
        bed.host.ip(&["link", "set", &renamed, "name", &dev]);
        bed.host.ip(&["link", "set", &dev, "up"]);
        wait_until(
            Duration::from_secs(5),
            &format!("XDP back on {dev}"),
            || attached(&d).contains(&dev),
        );

        // It goes away: forgotten, without error.
        let stderr_before = d.stderr().len();
        bed.host.ip(&["link", "del", &dev]);
        wait_until(
            Duration::from_secs(5),
            &format!("{dev} to leave the status"),
            || !attached(&d).contains(&dev),
        );
        std::thread::sleep(testbed::ABSENCE);
        let st = status_json(&d);
        assert!(
            st["warnings"]
                .to_string()
                .contains(&format!("no interface matches {glob}")),
            "{st:#}"
        );
        let since = d.stderr()[stderr_before..].to_string();
        assert!(
            !since.contains("WARN") && !since.contains("ERROR"),
            "after deleting {dev}:\n{since}"
        );
        let pins = d.pins.as_ref().expect("pins").0.clone();
        assert!(
            !pinned_links(&pins).iter().any(|l| l.contains(&dev)),
            "{:?}",
            pinned_links(&pins)
        );
    }
    // Still healthy.
    assert_eq!(attached(&d).len(), 2);
    assert_eq!(udp(&bed.ok, None, "10.1.0.1"), "reply");
    assert_eq!(tcp(&bed.bad, None, "10.2.0.1"), "timeout");
    d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "packet" && v["proto"] == "tcp" && v["iface"] == bed.v_bad.a.as_str()
    });
}

#[test]
fn control_socket_is_private_and_survives_bad_requests() {
    need_root!();
    let bed = Bed::new();
    let d = Daemon::start(&bed.host, &bed.policy());

    let meta = std::fs::metadata(&d.socket).expect("socket");
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        d.socket.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "socket mode {:o}",
        meta.permissions().mode()
    );

    let mut c = ControlConn::connect(&d.socket);
    // Not UTF-8: answered like any other bad request.
    c.stream
        .write_all(b"{\"version\":1,\"command\":\"st\xffatus\"}\n")
        .expect("write");
    let v: Value =
        serde_json::from_str(&c.read_line().expect("an answer to a non-UTF-8 line")).expect("JSON");
    assert_eq!(v["ok"], false, "{v}");
    for (line, words) in [
        ("status", &["not a JSON request"][..]),
        (
            r#"{"version":2,"command":"status"}"#,
            &["unsupported protocol version 2"],
        ),
        (r#"{"command":"status"}"#, &["no \"version\""]),
        (
            r#"{"version":1,"command":"format-disk"}"#,
            &["bad request", "format-disk"],
        ),
        (r#"{"version":1}"#, &["bad request"]),
        ("[1,2,3]", &["version"]),
    ] {
        let v = c.request(line);
        assert_eq!(v["ok"], false, "{line}: {v}");
        assert_eq!(v["version"], 1, "{line}: {v}");
        let e = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}: no error in {v}"));
        for w in words {
            assert!(e.contains(w), "{line}: {w:?} missing in {e:?}");
        }
    }
    // The same connection still serves.
    let v = c.request(r#"{"version":1,"command":"status"}"#);
    assert_eq!(
        (v["ok"].as_bool(), v["policy"]["generation"].as_u64()),
        (Some(true), Some(1)),
        "{v}"
    );

    // A very long line is refused, and that connection closed.
    let mut long = ControlConn::connect(&d.socket);
    let line = format!(
        r#"{{"version":1,"command":"status","x":"{}"}}"#,
        "a".repeat(200_000)
    );
    let writer = {
        let mut s = long.stream.try_clone().expect("clone");
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = s.write_all(line.as_bytes());
            let _ = s.write_all(b"\n");
        })
    };
    let answer = long.read_line().expect("an answer to the long line");
    let v: Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("longer than")),
        "{v}"
    );
    assert_eq!(
        long.read_line(),
        None,
        "the connection stays open after a refused long line"
    );
    let _ = writer.join();

    // The limit is per line: a client may send any amount over one connection. (80
    // requests of 60 kB each, each answered: more than 4 MiB in all.)
    let pad = "b".repeat(60_000);
    for i in 0..80 {
        let v = c.request(&format!(
            r#"{{"version":1,"command":"status","pad":"{pad}"}}"#
        ));
        assert_eq!(v["version"], 1, "request {i}: {v}");
    }
    // Everyone else is unaffected.
    let v = c.request(r#"{"version":1,"command":"status"}"#);
    assert_eq!(v["ok"], true, "{v}");
    let (ok, _, err) = d.cli(&["status"]);
    assert!(ok, "{err}");
}

/// Sums of `suppressed` and kernel `lost` counts a daemon printed.
fn reported_counts(d: &Daemon) -> (u64, u64, u64) {
    let evs = d.events();
    let sum = |kind: &str| {
        evs.iter()
            .filter(|v| v["event"] == kind && (kind != "lost" || v["scope"] == "kernel"))
            .map(|v| v["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let packets = evs
        .iter()
        .filter(|v| v["event"] == "packet" && v["rule"] == "udp-svc")
        .count() as u64;
    (packets, sum("suppressed"), sum("lost"))
}

#[test]
fn a_restart_reports_only_what_it_did_not_report_before() {
    need_root!();
    let bed = Bed::new();
    let policy = bed.policy().replacen(
        "[attach]",
        "[audit]\nrate_per_rule = 20\nburst = 20\n\n[attach]",
        1,
    );
    let mut d = Daemon::start_with(&bed.host, &policy, &["--on-stop", "keep"]);
    let flood = |n: usize, sport: u16| {
        let bind = format!("10.2.0.2:{sport}").parse().unwrap();
        udp_send(
            &bed.bad,
            bind,
            "10.2.0.1:7000".parse().unwrap(),
            b"x",
            n,
            200,
            Duration::from_millis(2),
        );
    };
    flood(2000, 40700);
    d.wait_for(EVENT_WAIT, |v| v["event"] == "suppressed");
    // Suppressed counts are summed up once a second: wait until they meet the counter.
    wait_until(
        Duration::from_secs(20),
        "the first daemon's figures to balance",
        || {
            let (r, s, l) = reported_counts(&d);
            r + s + l == dropped(&d, "udp-svc")
        },
    );
    let first = reported_counts(&d);
    let dropped_first = dropped(&d, "udp-svc");
    let pins = d.pins.take().expect("pins");
    sigterm_and_wait(&d);
    // What the first daemon printed up to its exit.
    let first_final = reported_counts(&d);
    drop(d);
    assert_eq!(
        first_final.0 + first_final.1 + first_final.2,
        dropped_first,
        "first daemon: {first:?} / {first_final:?}"
    );

    let d2 = Daemon::start_pinned(&bed.host, &policy, &["--on-stop", "detach"], pins);
    // Quiet: nothing new to report (no re-reporting of the first daemon's figures).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        reported_counts(&d2),
        (0, 0, 0),
        "the successor re-reported: {:#?}",
        d2.events()
    );
    flood(1000, 40701);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let second = reported_counts(&d2);
        let total = dropped(&d2, "udp-svc");
        let sum = first_final.0 + first_final.1 + first_final.2 + second.0 + second.1 + second.2;
        if sum == total {
            eprintln!("across a restart: first daemon {first_final:?}, second {second:?}, kernel dropped {total}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first {first_final:?} + second {second:?} = {sum} != dropped {total}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

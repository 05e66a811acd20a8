//! End to end: the real daemon binary in a network namespace of its own ("the host"), real
//! sockets opened by the probe binary in other namespaces and cgroups.
//!
//! Topology (one per test, names unique, everything removed on drop):
//!
//! ```text
//!   ok   10.1.0.2 fd01::2 ──veth── 10.1.0.1 fd01::1 ┐
//!   bad  10.2.0.2 fd02::2 ──veth── 10.2.0.1 fd02::1 ├ host (daemon, XDP on its three ends,
//!   ctr  10.3.0.2 fd03::2 ──veth── 10.3.0.1 fd03::1 ┘       listeners on PORT and OPEN)
//! ```
//!
//! cgroups: CG (attached), CG/srv (the host's listeners), CG/allowed (and CG/allowed/deep),
//! CG/refused. The policy protects PORT (tcp rule "tcp-svc", udp rule "udp-svc"), allowing
//! 10.1.0.0/24, fd01::/64 and CG/allowed; OPEN is not protected.
//!
//! Needs root; skipped (with a message) otherwise. Run with
//! `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test e2e`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    daemon::{probe, Daemon, Probe},
    net::{link, route_via_host, Cgroup, NetNs, Veth},
};

const PORT: &str = "7000";
const PORT_N: u64 = 7000;
const OPEN: &str = "7100";
const OPEN_N: u64 = 7100;
/// How long a probe waits before calling a connection "timeout" (ms).
const PROBE_MS: &str = "1500";
/// How long an event may take to reach the audit stream.
const EVENT_WAIT: Duration = Duration::from_secs(5);

use testbed::need_root;

/// The namespaces, veths and cgroups of one test. Fields drop in order: cgroups first
/// (their processes are killed), then the namespaces (taking the veths with them).
struct Bed {
    allowed_deep: Cgroup,
    allowed: Cgroup,
    refused: Cgroup,
    srv: Cgroup,
    cg: Cgroup,
    v_ok: Veth,
    v_bad: Veth,
    v_ctr: Veth,
    ok: NetNs,
    bad: NetNs,
    ctr: NetNs,
    host: NetNs,
}

impl Bed {
    fn new() -> Self {
        let host = NetNs::new();
        let ok = NetNs::new();
        let bad = NetNs::new();
        let ctr = NetNs::new();
        let v_ok = link(&host, &ok, 1);
        let v_bad = link(&host, &bad, 2);
        let v_ctr = link(&host, &ctr, 3);
        // The container reaches the host through its veth (default routes, as a container
        // runtime would set them up).
        route_via_host(&ctr, 3);
        let cg = Cgroup::new();
        let srv = cg.child("srv");
        let allowed = cg.child("allowed");
        let allowed_deep = allowed.child("deep");
        let refused = cg.child("refused");
        Bed {
            allowed_deep,
            allowed,
            refused,
            srv,
            cg,
            v_ok,
            v_bad,
            v_ctr,
            ok,
            bad,
            ctr,
            host,
        }
    }

    /// The test policy; `report_allowed` adds `[audit] allowed = true`.
    fn policy(&self, mode: &str, report_allowed: bool) -> String {
        format!(
            r#"mode = "{mode}"

[audit]
allowed = {report_allowed}

[attach]
interfaces = ["{ok}", "{bad}", "{ctr}"]
xdp_mode = "auto"
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
allow_cgroups = ["{allowed}"]
"#,
            ok = self.v_ok.a,
            bad = self.v_bad.a,
            ctr = self.v_ctr.a,
            cg = self.cg.path,
            allowed = self.allowed.path,
        )
    }

    /// The host's listeners (TCP and UDP echo on PORT and OPEN, dual-stack), inside the
    /// attached subtree so cgroup ingress sees them.
    fn listeners(&self) -> Listeners {
        listeners(&self.host, Some(&self.srv))
    }

    /// The daemon in the host namespace, enforcing, reporting refusals only.
    fn start(&self) -> Daemon {
        Daemon::start(&self.host, &self.policy("enforce", false))
    }

    /// As `start`, reporting allowed packets too (to see which hook let them in, and why).
    fn start_reporting_allowed(&self) -> Daemon {
        Daemon::start(&self.host, &self.policy("enforce", true))
    }
}

struct Listeners {
    tcp: Probe,
    udp: Probe,
    _tcp_open: Probe,
    _udp_open: Probe,
}

/// TCP and UDP echo listeners on PORT and OPEN (dual-stack) in `ns`, optionally in `cg`.
fn listeners(ns: &NetNs, cg: Option<&Cgroup>) -> Listeners {
    let procs = cg.map(Cgroup::procs_file);
    let l = |kind: &str, port: &str| Probe::spawn(Some(ns), procs.as_deref(), &[kind, "::", port]);
    Listeners {
        tcp: l("tcp-listen", PORT),
        udp: l("udp-listen", PORT),
        _tcp_open: l("tcp-listen", OPEN),
        _udp_open: l("udp-listen", OPEN),
    }
}

/// Runs the probe in `ns` and (optionally) `cg`, returning its outcome word.
fn run(ns: &NetNs, cg: Option<&Cgroup>, args: &[&str]) -> String {
    let procs = cg.map(Cgroup::procs_file);
    let mut full = args.to_vec();
    full.push(PROBE_MS);
    probe(Some(ns), procs.as_deref(), &full)
}

fn tcp(ns: &NetNs, cg: Option<&Cgroup>, addr: &str, port: &str) -> String {
    run(ns, cg, &["tcp-connect", addr, port])
}

fn udp(ns: &NetNs, cg: Option<&Cgroup>, addr: &str, port: &str) -> String {
    run(ns, cg, &["udp-send", addr, port])
}

fn is_packet(v: &Value) -> bool {
    v["event"] == "packet"
}

fn refusals(d: &Daemon) -> Vec<Value> {
    d.events()
        .into_iter()
        .filter(|v| is_packet(v) && v["verdict"] != "allow")
        .collect()
}

/// Waits for a packet event whose fields equal `fields` (strings or numbers).
fn expect_event(d: &mut Daemon, fields: &[(&str, Value)]) -> Value {
    d.wait_for(EVENT_WAIT, |v| {
        is_packet(v) && fields.iter().all(|(k, want)| &v[*k] == want)
    })
}

/// Asserts that no packet event matching `pred` shows up while the test watches
/// (`testbed::ABSENCE`).
fn expect_no_event(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) {
    if let Some(v) = d.poll_for(testbed::ABSENCE, |v| is_packet(v) && pred(v)) {
        panic!(
            "unexpected event ({what}): {v}\nall events:\n{:#?}",
            d.events()
        );
    }
}

/// Whether listener `l` reported a connection or datagram from `addr` (its output is read
/// on another thread: give it a moment).
fn accepted_from(l: &Probe, addr: &str) -> bool {
    let start = Instant::now();
    loop {
        if l.lines().iter().any(|line| line.contains(addr)) {
            return true;
        }
        if start.elapsed() > Duration::from_secs(2) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many connections or datagrams listener `l` reported.
fn served(l: &Probe) -> usize {
    l.lines()
        .iter()
        .filter(|s| s.starts_with("accepted") || s.starts_with("received"))
        .count()
}

/// Waits until process `pid` (a child not yet reaped) has exited.
fn wait_exited(pid: i32) {
    let start = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "PID (COMM) STATE ...": Z once it has exited.
        let state = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().chars().next());
        if stat.is_empty() || state == Some(Some('Z')) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

#[test]
fn remote_in_allowed_subnet_connects_and_sends() {
    need_root!();
    let bed = Bed::new();
    let l = bed.listeners();
    let mut d = bed.start_reporting_allowed();

    assert_eq!(tcp(&bed.ok, None, "10.1.0.1", PORT), "connected");
    assert_eq!(udp(&bed.ok, None, "10.1.0.1", PORT), "reply");
    // Judged (and allowed by source) at XDP on the veth, and again at cgroup ingress.
    for (hook, proto, rule) in [
        ("xdp", "tcp", "tcp-svc"),
        ("xdp", "udp", "udp-svc"),
        ("cgroup_ingress", "tcp", "tcp-svc"),
        ("cgroup_ingress", "udp", "udp-svc"),
    ] {
        let ev = expect_event(
            &mut d,
            &[
                ("hook", hook.into()),
                ("proto", proto.into()),
                ("src", "10.1.0.2".into()),
            ],
        );
        assert_eq!(ev["verdict"], "allow", "{ev}");
        assert_eq!(ev["reason"], "allowed-by-source", "{ev}");
        assert_eq!(ev["rule"], rule, "{ev}");
        assert_eq!(ev["dport"], PORT_N, "{ev}");
        if hook == "xdp" {
            assert_eq!(ev["iface"], bed.v_ok.a.as_str(), "{ev}");
        }
    }
    assert!(
        accepted_from(&l.tcp, "10.1.0.2"),
        "tcp listener: {:?}",
        l.tcp.lines()
    );
    assert!(
        accepted_from(&l.udp, "10.1.0.2"),
        "udp listener: {:?}",
        l.udp.lines()
    );
    expect_no_event(&d, "refusal of an allowed source", |v| {
        v["verdict"] != "allow"
    });
}

#[test]
fn remote_outside_allowed_subnet_is_dropped_at_xdp_and_reported() {
    need_root!();
    let bed = Bed::new();
    let l = bed.listeners();
    let mut d = bed.start();

    assert_eq!(tcp(&bed.bad, None, "10.2.0.1", PORT), "timeout");
    let ev = expect_event(
        &mut d,
        &[
            ("hook", "xdp".into()),
            ("verdict", "drop".into()),
            ("proto", "tcp".into()),
            ("src", "10.2.0.2".into()),
            ("dport", PORT_N.into()),
        ],
    );
    assert_eq!(ev["rule"], "tcp-svc", "{ev}");
    assert_eq!(ev["reason"], "dropped-source", "{ev}");
    assert_eq!(ev["dst"], "10.2.0.1", "{ev}");
    assert_eq!(ev["iface"], bed.v_bad.a.as_str(), "{ev}");
    assert!(ev["policy"].as_u64().is_some_and(|g| g >= 1), "{ev}");
    assert!(ev["ts"].is_string(), "{ev}");

    assert_eq!(
        udp(&bed.bad, None, "10.2.0.1", PORT),
        "sent",
        "a dropped datagram gets no echo"
    );
    let ev = expect_event(
        &mut d,
        &[
            ("hook", "xdp".into()),
            ("verdict", "drop".into()),
            ("proto", "udp".into()),
            ("src", "10.2.0.2".into()),
        ],
    );
    assert_eq!(ev["rule"], "udp-svc", "{ev}");
    assert_eq!(ev["dport"], PORT_N, "{ev}");
    assert_eq!(ev["iface"], bed.v_bad.a.as_str(), "{ev}");

    assert!(
        !accepted_from(&l.tcp, "10.2.0.2"),
        "tcp listener saw the refused source: {:?}",
        l.tcp.lines()
    );
    assert!(
        !accepted_from(&l.udp, "10.2.0.2"),
        "udp listener saw the refused source: {:?}",
        l.udp.lines()
    );
}

#[test]
fn unprotected_port_is_untouched() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let d = bed.start();

    assert_eq!(tcp(&bed.bad, None, "10.2.0.1", OPEN), "connected");
    assert_eq!(udp(&bed.bad, None, "10.2.0.1", OPEN), "reply");
    assert_eq!(tcp(&bed.bad, None, "fd02::1", OPEN), "connected");
    assert_eq!(udp(&bed.bad, None, "fd02::1", OPEN), "reply");
    assert_eq!(
        tcp(&bed.host, Some(&bed.refused), "127.0.0.1", OPEN),
        "connected"
    );
    assert_eq!(udp(&bed.host, Some(&bed.refused), "::1", OPEN), "reply");
    expect_no_event(&d, "a packet to an unprotected port", |v| {
        v["dport"] == OPEN_N
    });
}

#[test]
fn ipv6_allowed_prefix_connects_and_others_are_dropped_at_xdp() {
    need_root!();
    let bed = Bed::new();
    let l = bed.listeners();
    let mut d = bed.start();

    assert_eq!(tcp(&bed.ok, None, "fd01::1", PORT), "connected");
    assert_eq!(udp(&bed.ok, None, "fd01::1", PORT), "reply");
    assert!(
        accepted_from(&l.tcp, "fd01::2"),
        "tcp listener: {:?}",
        l.tcp.lines()
    );
    expect_no_event(&d, "refusal of an allowed IPv6 source", |v| {
        v["verdict"] != "allow"
    });

    assert_eq!(tcp(&bed.bad, None, "fd02::1", PORT), "timeout");
    assert_eq!(udp(&bed.bad, None, "fd02::1", PORT), "sent");
    for (proto, rule) in [("tcp", "tcp-svc"), ("udp", "udp-svc")] {
        let ev = expect_event(
            &mut d,
            &[
                ("hook", "xdp".into()),
                ("verdict", "drop".into()),
                ("proto", proto.into()),
                ("src", "fd02::2".into()),
            ],
        );
        assert_eq!(ev["rule"], rule, "{ev}");
        assert_eq!(ev["dst"], "fd02::1", "{ev}");
        assert_eq!(ev["dport"], PORT_N, "{ev}");
        assert_eq!(ev["iface"], bed.v_bad.a.as_str(), "{ev}");
    }
    assert!(
        !accepted_from(&l.tcp, "fd02::2"),
        "tcp listener: {:?}",
        l.tcp.lines()
    );
    assert!(
        !accepted_from(&l.udp, "fd02::2"),
        "udp listener: {:?}",
        l.udp.lines()
    );
}

#[test]
fn local_process_is_judged_by_cgroup_over_loopback() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let mut d = bed.start_reporting_allowed();

    // Loopback, a v4-mapped loopback through an IPv6 socket, and one of the host's own
    // addresses (outside the allowed subnets, so only the cgroup can allow it).
    let addrs = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.2.0.1"];
    for addr in addrs {
        for cg in [&bed.allowed, &bed.allowed_deep] {
            assert_eq!(
                tcp(&bed.host, Some(cg), addr, PORT),
                "connected",
                "tcp {addr} from {}",
                cg.path
            );
            assert_eq!(
                udp(&bed.host, Some(cg), addr, PORT),
                "reply",
                "udp {addr} from {}",
                cg.path
            );
        }
    }
    expect_no_event(&d, "refusal of an allowed cgroup", |v| {
        v["verdict"] != "allow"
    });
    // Allowed by cgroup as it leaves the sender's socket (which is named), let in as a
    // remembered flow at the listener's cgroup ingress.
    for (proto, dst) in [("tcp", "127.0.0.1"), ("udp", "::1")] {
        let ev = expect_event(
            &mut d,
            &[
                ("hook", "cgroup_egress".into()),
                ("proto", proto.into()),
                ("dst", dst.into()),
            ],
        );
        assert_eq!(ev["reason"], "allowed-by-cgroup", "{ev}");
        assert_eq!(ev["comm"], "probe", "{ev}");
        let ev = expect_event(
            &mut d,
            &[
                ("hook", "cgroup_ingress".into()),
                ("proto", proto.into()),
                ("dst", dst.into()),
            ],
        );
        assert_eq!(ev["verdict"], "allow", "{ev}");
        assert_eq!(ev["reason"], "allowed-by-flow", "{ev}");
    }

    for addr in addrs {
        // "eperm" is the call failing at once (a dropped SYN would be "timeout" after
        // PROBE_MS): no wall-clock bound, which would time the probe's fork and exec too.
        let out = tcp(&bed.host, Some(&bed.refused), addr, PORT);
        assert_eq!(out, "eperm", "tcp {addr} from the refused cgroup");
        let out = udp(&bed.host, Some(&bed.refused), addr, PORT);
        assert_eq!(out, "eperm", "udp {addr} from the refused cgroup");

        // A v4-mapped destination is judged, and reported, as the IPv4 address it is.
        let dst = addr.trim_start_matches("::ffff:");
        for (hook, proto, rule) in [
            ("cgroup_connect", "tcp", "tcp-svc"),
            ("cgroup_sendmsg", "udp", "udp-svc"),
        ] {
            let ev = expect_event(
                &mut d,
                &[
                    ("hook", hook.into()),
                    ("proto", proto.into()),
                    ("dst", dst.into()),
                    ("verdict", "drop".into()),
                ],
            );
            assert_eq!(ev["rule"], rule, "{ev}");
            assert_eq!(ev["dport"], PORT_N, "{ev}");
            assert_eq!(ev["comm"], "probe", "{ev}");
            assert!(ev["pid"].as_u64().is_some_and(|p| p > 1), "{ev}");
            assert_eq!(ev["cgroup"], bed.refused.path.as_str(), "{ev}");
        }
    }
    // Refused at the socket: nothing reached the wire to be dropped later.
    expect_no_event(
        &d,
        "a refused local packet judged after its socket refused it",
        |v| {
            v["verdict"] != "allow"
                && (v["hook"] == "cgroup_egress" || v["hook"] == "cgroup_ingress")
        },
    );
}

#[test]
fn container_is_judged_at_egress_by_cgroup() {
    need_root!();
    let bed = Bed::new();
    let l = bed.listeners();
    let mut d = bed.start_reporting_allowed();

    for addr in ["10.3.0.1", "fd03::1"] {
        assert_eq!(
            tcp(&bed.ctr, Some(&bed.allowed), addr, PORT),
            "connected",
            "tcp {addr}"
        );
        assert_eq!(
            udp(&bed.ctr, Some(&bed.allowed), addr, PORT),
            "reply",
            "udp {addr}"
        );
    }
    assert!(
        accepted_from(&l.tcp, "10.3.0.2"),
        "tcp listener: {:?}",
        l.tcp.lines()
    );
    assert!(
        accepted_from(&l.tcp, "fd03::2"),
        "tcp listener: {:?}",
        l.tcp.lines()
    );
    expect_no_event(&d, "refusal of a container in an allowed cgroup", |v| {
        v["verdict"] != "allow"
    });
    // Allowed by cgroup at the container's egress, then let in as a remembered flow by
    // XDP on the host's end of the veth and by cgroup ingress of the host's listener.
    for (hook, reason) in [
        ("cgroup_egress", "allowed-by-cgroup"),
        ("xdp", "allowed-by-flow"),
        ("cgroup_ingress", "allowed-by-flow"),
    ] {
        for (proto, src) in [("tcp", "10.3.0.2"), ("udp", "fd03::2")] {
            let ev = expect_event(
                &mut d,
                &[
                    ("hook", hook.into()),
                    ("proto", proto.into()),
                    ("src", src.into()),
                ],
            );
            assert_eq!(ev["verdict"], "allow", "{ev}");
            assert_eq!(ev["reason"], reason, "{ev}");
            assert_eq!(ev["dport"], PORT_N, "{ev}");
        }
    }

    for addr in ["10.3.0.1", "fd03::1"] {
        // The socket is another namespace's: connect()/sendmsg() let it through, the
        // packets are dropped at cgroup egress. A TCP SYN dropped there is retransmitted
        // until the connect times out; a UDP send fails with the EPERM the kernel returns
        // for a packet cgroup egress dropped.
        assert_eq!(
            tcp(&bed.ctr, Some(&bed.refused), addr, PORT),
            "timeout",
            "tcp {addr}"
        );
        assert_eq!(
            udp(&bed.ctr, Some(&bed.refused), addr, PORT),
            "eperm",
            "udp {addr}"
        );
        for (proto, rule) in [("tcp", "tcp-svc"), ("udp", "udp-svc")] {
            let ev = expect_event(
                &mut d,
                &[
                    ("hook", "cgroup_egress".into()),
                    ("proto", proto.into()),
                    ("dst", addr.into()),
                    ("verdict", "drop".into()),
                ],
            );
            assert_eq!(ev["rule"], rule, "{ev}");
            assert_eq!(ev["dport"], PORT_N, "{ev}");
            assert_eq!(ev["cgroup"], bed.refused.path.as_str(), "{ev}");
        }
    }
    // Only the allowed container's connection and datagram (IPv4 and IPv6) got through.
    assert_eq!(served(&l.tcp), 2, "{:?}", l.tcp.lines());
    assert_eq!(served(&l.udp), 2, "{:?}", l.udp.lines());
    expect_no_event(&d, "a container's socket judged at connect/sendmsg", |v| {
        v["hook"] == "cgroup_connect" || v["hook"] == "cgroup_sendmsg"
    });
}

#[test]
fn container_own_listener_is_not_judged() {
    need_root!();
    let bed = Bed::new();
    // The container's listeners, in the refused cgroup, on the protected port.
    let l = listeners(&bed.ctr, Some(&bed.refused));
    let d = bed.start();

    for addr in ["127.0.0.1", "::1", "10.3.0.2", "fd03::2"] {
        assert_eq!(
            tcp(&bed.ctr, Some(&bed.refused), addr, PORT),
            "connected",
            "tcp {addr}"
        );
        assert_eq!(
            udp(&bed.ctr, Some(&bed.refused), addr, PORT),
            "reply",
            "udp {addr}"
        );
    }
    // The host reaching into the container is a connection to another machine.
    assert_eq!(
        tcp(&bed.host, Some(&bed.refused), "10.3.0.2", PORT),
        "connected"
    );
    assert_eq!(udp(&bed.host, Some(&bed.refused), "fd03::2", PORT), "reply");
    assert!(accepted_from(&l.tcp, "10.3.0.1"), "{:?}", l.tcp.lines());
    expect_no_event(&d, "the container's own port judged", |v| {
        v["dport"] == PORT_N
    });
}

#[test]
fn host_connecting_to_another_machine_is_untouched() {
    need_root!();
    let bed = Bed::new();
    let _host_l = bed.listeners();
    // "Another machine" listening on the protected port, at a refused source address.
    let remote = listeners(&bed.bad, None);
    let d = bed.start();

    for cg in [Some(&bed.refused), None] {
        assert_eq!(tcp(&bed.host, cg, "10.2.0.2", PORT), "connected");
        assert_eq!(udp(&bed.host, cg, "10.2.0.2", PORT), "reply");
        assert_eq!(tcp(&bed.host, cg, "fd02::2", PORT), "connected");
        assert_eq!(udp(&bed.host, cg, "fd02::2", PORT), "reply");
    }
    assert!(
        accepted_from(&remote.tcp, "10.2.0.1"),
        "{:?}",
        remote.tcp.lines()
    );
    assert!(
        accepted_from(&remote.tcp, "fd02::1"),
        "{:?}",
        remote.tcp.lines()
    );
    expect_no_event(&d, "an outgoing connection judged", |_| true);
}

#[test]
fn audit_mode_drops_nothing_but_reports_would_drop() {
    need_root!();
    let bed = Bed::new();
    let l = bed.listeners();
    let mut d = Daemon::start(&bed.host, &bed.policy("audit", false));

    assert_eq!(tcp(&bed.bad, None, "10.2.0.1", PORT), "connected");
    assert_eq!(udp(&bed.bad, None, "fd02::1", PORT), "reply");
    assert!(accepted_from(&l.tcp, "10.2.0.2"), "{:?}", l.tcp.lines());
    for (proto, src) in [("tcp", "10.2.0.2"), ("udp", "fd02::2")] {
        let ev = expect_event(
            &mut d,
            &[
                ("hook", "xdp".into()),
                ("proto", proto.into()),
                ("src", src.into()),
            ],
        );
        assert_eq!(ev["verdict"], "would-drop", "{ev}");
        assert_eq!(ev["reason"], "dropped-source", "{ev}");
        assert_eq!(ev["iface"], bed.v_bad.a.as_str(), "{ev}");
    }

    assert_eq!(
        tcp(&bed.host, Some(&bed.refused), "127.0.0.1", PORT),
        "connected"
    );
    assert_eq!(udp(&bed.host, Some(&bed.refused), "::1", PORT), "reply");
    for (proto, dst) in [("tcp", "127.0.0.1"), ("udp", "::1")] {
        let ev = expect_event(
            &mut d,
            &[
                ("proto", proto.into()),
                ("dst", dst.into()),
                ("dport", PORT_N.into()),
            ],
        );
        assert_eq!(ev["verdict"], "would-drop", "{ev}");
    }

    assert_eq!(
        tcp(&bed.ctr, Some(&bed.refused), "10.3.0.1", PORT),
        "connected"
    );
    let ev = expect_event(
        &mut d,
        &[("hook", "cgroup_egress".into()), ("src", "10.3.0.2".into())],
    );
    assert_eq!(ev["verdict"], "would-drop", "{ev}");

    let drops: Vec<Value> = refusals(&d)
        .into_iter()
        .filter(|v| v["verdict"] == "drop")
        .collect();
    assert!(drops.is_empty(), "audit mode dropped: {drops:#?}");
}

#[test]
fn sigterm_exits_zero_and_detaches() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let mut d = bed.start();

    assert!(
        xdp_attached(&bed.host, &bed.v_bad.a),
        "XDP not attached while running"
    );
    assert_eq!(tcp(&bed.bad, None, "10.2.0.1", PORT), "timeout");
    assert_eq!(
        tcp(&bed.host, Some(&bed.refused), "127.0.0.1", PORT),
        "eperm"
    );
    expect_event(
        &mut d,
        &[("hook", "xdp".into()), ("verdict", "drop".into())],
    );

    // SIGTERM, and wait for the daemon to exit (unreaped) while its guard, which would
    // remove the pin directory and so detach whatever the daemon left, still holds it:
    // what follows checks the daemon's own cleanup.
    let pin_dir = d.pins.as_ref().expect("pin dir").0.clone();
    d.signal(libc::SIGTERM);
    wait_exited(d.pid());
    assert!(
        std::fs::read_dir(&pin_dir).map_or(true, |mut e| e.next().is_none()),
        "pinned state left in {} after SIGTERM",
        pin_dir.display()
    );
    for dev in [&bed.v_ok.a, &bed.v_bad.a, &bed.v_ctr.a] {
        assert!(
            !xdp_attached(&bed.host, dev),
            "XDP still attached to {dev} after SIGTERM"
        );
    }
    assert_eq!(
        tcp(&bed.bad, None, "10.2.0.1", PORT),
        "connected",
        "refused source after stop"
    );
    assert_eq!(
        udp(&bed.bad, None, "fd02::1", PORT),
        "reply",
        "refused source after stop"
    );
    assert_eq!(
        tcp(&bed.host, Some(&bed.refused), "127.0.0.1", PORT),
        "connected",
        "refused cgroup after stop"
    );
    assert_eq!(
        tcp(&bed.ctr, Some(&bed.refused), "10.3.0.1", PORT),
        "connected",
        "refused container after stop"
    );
    let status = d.stop();
    assert!(status.success(), "enforcer exited with {status}");
}

#[test]
fn without_xdp_remote_senders_are_judged_at_cgroup_ingress() {
    need_root!();
    let bed = Bed::new();
    let l = bed.listeners();
    let policy = bed.policy("enforce", false);
    let interfaces = format!(
        "interfaces = [\"{}\", \"{}\", \"{}\"]",
        bed.v_ok.a, bed.v_bad.a, bed.v_ctr.a
    );
    assert!(policy.contains(&interfaces), "{policy}");
    let mut d = Daemon::start(&bed.host, &policy.replace(&interfaces, "interfaces = []"));
    assert!(
        !xdp_attached(&bed.host, &bed.v_bad.a),
        "XDP attached with no interfaces listed"
    );

    assert_eq!(tcp(&bed.ok, None, "10.1.0.1", PORT), "connected");
    assert_eq!(udp(&bed.ok, None, "fd01::1", PORT), "reply");
    assert_eq!(tcp(&bed.bad, None, "10.2.0.1", PORT), "timeout");
    assert_eq!(udp(&bed.bad, None, "fd02::1", PORT), "sent");
    for (proto, src, rule) in [
        ("tcp", "10.2.0.2", "tcp-svc"),
        ("udp", "fd02::2", "udp-svc"),
    ] {
        let ev = expect_event(
            &mut d,
            &[
                ("hook", "cgroup_ingress".into()),
                ("proto", proto.into()),
                ("src", src.into()),
            ],
        );
        assert_eq!(ev["verdict"], "drop", "{ev}");
        assert_eq!(ev["rule"], rule, "{ev}");
        assert_eq!(ev["dport"], PORT_N, "{ev}");
    }
    assert!(!accepted_from(&l.tcp, "10.2.0.2"), "{:?}", l.tcp.lines());
    expect_no_event(&d, "an XDP verdict with no XDP attached", |v| {
        v["hook"] == "xdp"
    });
}

//! The audit stream held against the traffic that produced it: every field of a refusal
//! as the packet had it, at each hook; allowed packets only when asked; exact accounting
//! under a flood (reported + suppressed + lost == the kernel's drop counter); a stuck
//! subscriber that loses only its own lines; and `enforcer tail` as an operator uses it.
//!
//! Topology (one per test, names unique, everything removed on drop):
//!
//! ```text
//!   ok    10.1.0.2 fd01::2 ──veth── 10.1.0.1 fd01::1 ┐
//!   bad   10.2.0.2 fd02::2 ──veth── 10.2.0.1 fd02::1 ├ host (daemon; XDP on ok, bad, ctr;
//!   ctr   10.3.0.2 fd03::2 ──veth── 10.3.0.1 fd03::1 │       listeners on PORT in CG/srv)
//!   plain 10.4.0.2 fd04::2 ──veth── 10.4.0.1 fd04::1 ┘  (no XDP: cgroup ingress judges)
//! ```
//!
//! cgroups: CG (attached), CG/srv, CG/allowed, CG/refused. Rules "tcp-svc" and "udp-svc"
//! protect PORT, allowing 10.1.0.0/24, fd01::/64 and CG/allowed.
//!
//! Needs root; skipped otherwise. Run with
//! `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test audit_stream`.

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer::control::server::SUBSCRIBER_QUEUE;
use serde_json::Value;
use testbed::{
    daemon::{place, probe, Daemon, Probe, TempDir},
    flood::{
        now_ns, parse_rfc3339_utc_ns, rule_status, status_json, udp_once, udp_send, ControlConn,
        Tail,
    },
    net::{link, route_via_host, Cgroup, NetNs, Veth},
};

const PORT: &str = "7000";
const PORT_N: u64 = 7000;
const PROBE_MS: &str = "1000";
const EVENT_WAIT: Duration = Duration::from_secs(5);

use testbed::need_root;

/// Fields drop in order: cgroups first (their processes are killed), then namespaces.
struct Bed {
    allowed: Cgroup,
    refused: Cgroup,
    srv: Cgroup,
    cg: Cgroup,
    v_ok: Veth,
    v_bad: Veth,
    v_ctr: Veth,
    v_plain: Veth,
    ok: NetNs,
    bad: NetNs,
    ctr: NetNs,
    plain: NetNs,
    host: NetNs,
}

impl Bed {
    fn new() -> Self {
        let host = NetNs::new();
        let ok = NetNs::new();
        let bad = NetNs::new();
        let ctr = NetNs::new();
        let plain = NetNs::new();
        let v_ok = link(&host, &ok, 1);
        let v_bad = link(&host, &bad, 2);
        let v_ctr = link(&host, &ctr, 3);
        let v_plain = link(&host, &plain, 4);
        route_via_host(&ctr, 3);
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
            v_ctr,
            v_plain,
            ok,
            bad,
            ctr,
            plain,
            host,
        }
    }

    /// The policy: `mode`, `[audit] allowed = report_allowed` plus `audit_extra` lines.
    fn policy(&self, mode: &str, report_allowed: bool, audit_extra: &str) -> String {
        format!(
            r#"mode = "{mode}"

[audit]
allowed = {report_allowed}
{audit_extra}

[attach]
interfaces = ["{ok}", "{bad}", "{ctr}"]
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

    /// TCP and UDP (echo) listeners on PORT, dual-stack, in CG/srv.
    fn listeners(&self) -> (Probe, Probe) {
        let procs = self.srv.procs_file();
        (
            Probe::spawn(Some(&self.host), Some(&procs), &["tcp-listen", "::", PORT]),
            Probe::spawn(Some(&self.host), Some(&procs), &["udp-listen", "::", PORT]),
        )
    }
}

fn run(ns: &NetNs, cg: Option<&Cgroup>, args: &[&str]) -> String {
    let procs = cg.map(Cgroup::procs_file);
    let mut full = args.to_vec();
    full.push(PROBE_MS);
    probe(Some(ns), procs.as_deref(), &full)
}

fn tcp(ns: &NetNs, cg: Option<&Cgroup>, addr: &str) -> String {
    run(ns, cg, &["tcp-connect", addr, PORT])
}

fn udp(ns: &NetNs, cg: Option<&Cgroup>, addr: &str) -> String {
    run(ns, cg, &["udp-send", addr, PORT])
}

/// The probe run as a child of ours, so its pid is known: (outcome, pid).
fn probe_with_pid(ns: &NetNs, cg: &Cgroup, args: &[&str]) -> (String, u32) {
    let mut cmd = Command::new(testbed::probe_bin());
    cmd.args(args)
        .arg(PROBE_MS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(&ns.path()), Some(&cg.procs_file()));
    let child = cmd.spawn().expect("spawn probe");
    let pid = child.id();
    let out = child.wait_with_output().expect("probe output");
    (
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        pid,
    )
}

fn packets(d: &Daemon) -> Vec<Value> {
    d.events()
        .into_iter()
        .filter(|v| v["event"] == "packet")
        .collect()
}

fn expect_event(d: &mut Daemon, fields: &[(&str, Value)]) -> Value {
    d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "packet" && fields.iter().all(|(k, want)| &v[*k] == want)
    })
}

/// Waits until no new event has come for `testbed::ABSENCE` (at most 30 s).
fn settle(d: &Daemon) {
    let start = Instant::now();
    let (mut n, mut since) = (d.events().len(), Instant::now());
    while since.elapsed() < testbed::ABSENCE {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the audit stream did not settle"
        );
        std::thread::sleep(Duration::from_millis(50));
        let now = d.events().len();
        if now != n {
            (n, since) = (now, Instant::now());
        }
    }
}

fn expect_no_event(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) {
    if let Some(v) = d.poll_for(testbed::ABSENCE, |v| v["event"] == "packet" && pred(v)) {
        panic!(
            "unexpected event ({what}): {v}\nall events:\n{:#?}",
            d.events()
        );
    }
}

/// Asserts `ev` has exactly these values, and none of the `absent` fields.
fn assert_fields(ev: &Value, fields: &[(&str, Value)], absent: &[&str]) {
    for (k, want) in fields {
        assert_eq!(&ev[*k], want, "field {k} of {ev}");
    }
    for k in absent {
        assert!(ev.get(*k).is_none(), "field {k} should be absent from {ev}");
    }
}

/// `ts` is RFC 3339 UTC with nanoseconds ("...T..:..:...nnnnnnnnnZ") and within 2 s of
/// `sent_ns` (when the packet was sent).
fn assert_ts_near(ev: &Value, sent_ns: i128) {
    let ts = ev["ts"].as_str().unwrap_or_else(|| panic!("no ts in {ev}"));
    let t = parse_rfc3339_utc_ns(ts)
        .unwrap_or_else(|| panic!("ts {ts:?} is not RFC 3339 UTC with nanoseconds"));
    let skew = (t - sent_ns).abs();
    assert!(
        skew < 2_000_000_000,
        "ts {ts} is {skew} ns away from when the packet was sent ({ev})"
    );
}

#[test]
fn refusals_carry_the_fields_of_the_packets_that_produced_them() {
    need_root!();
    let bed = Bed::new();
    let (tcp_l, udp_l) = bed.listeners();
    let mut d = Daemon::start(&bed.host, &bed.policy("enforce", false, ""));
    let st = status_json(&d);
    let generation = st["policy"]["generation"].clone();
    assert_eq!(generation, 1);
    // The premise of the cgroup ingress case below: no XDP where "plain" arrives.
    let xdp = st["programs"]["xdp"]["attached"].to_string();
    assert!(
        xdp.contains(&bed.v_bad.a) && !xdp.contains(&bed.v_plain.a),
        "{xdp}"
    );

    // XDP, IPv4 and IPv6: datagrams from known ports with a 10-byte payload.
    let payload = b"0123456789";
    let cases = [
        (
            "10.2.0.2:40001",
            "10.2.0.1:7000",
            "10.2.0.2",
            40001u64,
            "10.2.0.1",
            14 + 20 + 8 + 10,
        ),
        (
            "[fd02::2]:40002",
            "[fd02::1]:7000",
            "fd02::2",
            40002,
            "fd02::1",
            14 + 40 + 8 + 10,
        ),
    ];
    for (bind, dst_sa, src, sport, dst, frame_len) in cases {
        let sent = now_ns();
        udp_once(&bed.bad, bind, dst_sa, payload);
        let ev = expect_event(
            &mut d,
            &[
                ("hook", "xdp".into()),
                ("src", src.into()),
                ("sport", sport.into()),
            ],
        );
        assert_fields(
            &ev,
            &[
                ("event", "packet".into()),
                ("verdict", "drop".into()),
                ("reason", "dropped-source".into()),
                ("rule", "udp-svc".into()),
                ("proto", "udp".into()),
                ("dst", dst.into()),
                ("dport", PORT_N.into()),
                ("iface", bed.v_bad.a.as_str().into()),
                ("policy", generation.clone()),
                ("len", frame_len.into()),
            ],
            &["cgroup", "pid", "comm"],
        );
        assert_ts_near(&ev, sent);
    }
    // TCP at XDP: the SYN from the probe's ephemeral port.
    let sent = now_ns();
    assert_eq!(tcp(&bed.bad, None, "10.2.0.1"), "timeout");
    let ev = expect_event(
        &mut d,
        &[
            ("hook", "xdp".into()),
            ("proto", "tcp".into()),
            ("src", "10.2.0.2".into()),
        ],
    );
    assert_fields(
        &ev,
        &[
            ("verdict", "drop".into()),
            ("reason", "dropped-source".into()),
            ("rule", "tcp-svc".into()),
            ("dst", "10.2.0.1".into()),
            ("dport", PORT_N.into()),
            ("iface", bed.v_bad.a.as_str().into()),
            ("policy", generation.clone()),
        ],
        &["cgroup", "pid", "comm"],
    );
    assert!(ev["sport"].as_u64().is_some_and(|p| p >= 1024), "{ev}");
    assert_ts_near(&ev, sent);

    // Cgroup ingress: the same refusal arriving on an interface without XDP is judged at
    // the listener's socket (the length is the IP packet's there).
    let cases = [
        (
            "10.4.0.2:40003",
            "10.4.0.1:7000",
            "10.4.0.2",
            40003u64,
            "10.4.0.1",
            20 + 8 + 10,
        ),
        (
            "[fd04::2]:40004",
            "[fd04::1]:7000",
            "fd04::2",
            40004,
            "fd04::1",
            40 + 8 + 10,
        ),
    ];
    for (bind, dst_sa, src, sport, dst, ip_len) in cases {
        let sent = now_ns();
        udp_once(&bed.plain, bind, dst_sa, payload);
        let ev = expect_event(&mut d, &[("src", src.into()), ("sport", sport.into())]);
        assert_fields(
            &ev,
            &[
                ("hook", "cgroup_ingress".into()),
                ("verdict", "drop".into()),
                ("reason", "dropped-source".into()),
                ("rule", "udp-svc".into()),
                ("proto", "udp".into()),
                ("dst", dst.into()),
                ("dport", PORT_N.into()),
                ("policy", generation.clone()),
                ("len", ip_len.into()),
            ],
            &["iface", "pid", "comm"],
        );
        assert_ts_near(&ev, sent);
    }
    assert_eq!(tcp(&bed.plain, None, "10.4.0.1"), "timeout");
    let ev = expect_event(
        &mut d,
        &[("proto", "tcp".into()), ("src", "10.4.0.2".into())],
    );
    assert_fields(
        &ev,
        &[
            ("hook", "cgroup_ingress".into()),
            ("verdict", "drop".into()),
            ("rule", "tcp-svc".into()),
        ],
        &["iface"],
    );

    // A local sender refused at connect(): the probe's own pid and comm, its cgroup.
    for (addr, dst) in [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("::ffff:10.2.0.1", "10.2.0.1"),
    ] {
        let sent = now_ns();
        let (out, pid) = probe_with_pid(&bed.host, &bed.refused, &["tcp-connect", addr, PORT]);
        assert_eq!(out, "eperm", "tcp {addr} from the refused cgroup");
        let ev = expect_event(
            &mut d,
            &[("hook", "cgroup_connect".into()), ("pid", pid.into())],
        );
        assert_fields(
            &ev,
            &[
                ("verdict", "drop".into()),
                ("reason", "dropped-source".into()),
                ("rule", "tcp-svc".into()),
                ("proto", "tcp".into()),
                ("dst", dst.into()),
                ("dport", PORT_N.into()),
                ("comm", "probe".into()),
                ("cgroup", bed.refused.path.as_str().into()),
                ("policy", generation.clone()),
            ],
            &["iface", "sport", "len"],
        );
        assert_ts_near(&ev, sent);
    }

    // A container's datagram, refused at cgroup egress as it leaves its socket.
    let sent = now_ns();
    assert_eq!(udp(&bed.ctr, Some(&bed.refused), "10.3.0.1"), "eperm");
    let ev = expect_event(
        &mut d,
        &[("hook", "cgroup_egress".into()), ("src", "10.3.0.2".into())],
    );
    assert_fields(
        &ev,
        &[
            ("verdict", "drop".into()),
            ("reason", "dropped-source".into()),
            ("rule", "udp-svc".into()),
            ("proto", "udp".into()),
            ("dst", "10.3.0.1".into()),
            ("dport", PORT_N.into()),
            ("cgroup", bed.refused.path.as_str().into()),
            ("policy", generation.clone()),
            // IPv4 + UDP + the probe's 5-byte payload.
            ("len", (20 + 8 + 5).into()),
        ],
        &["iface"],
    );
    assert!(ev["sport"].as_u64().is_some_and(|p| p >= 1024), "{ev}");
    assert_ts_near(&ev, sent);

    // Nothing refused reached a listener, and every refusal was one event.
    for l in [&tcp_l, &udp_l] {
        let seen: Vec<String> = l
            .lines()
            .into_iter()
            .filter(|s| s.starts_with("accepted") || s.starts_with("received"))
            .collect();
        assert!(seen.is_empty(), "a listener saw refused traffic: {seen:?}");
    }
    assert!(
        packets(&d).iter().all(|v| v["verdict"] == "drop"),
        "{:#?}",
        packets(&d)
    );
}

#[test]
fn allowed_packets_are_reported_only_when_asked_and_audit_mode_reports_would_drop() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let mut d = Daemon::start(&bed.host, &bed.policy("enforce", false, ""));

    assert_eq!(udp(&bed.ok, None, "10.1.0.1"), "reply");
    assert_eq!(tcp(&bed.ok, None, "fd01::1"), "connected");
    expect_no_event(&d, "an allowed packet without [audit] allowed", |v| {
        v["verdict"] == "allow"
    });
    // Judged (and counted) all the same.
    let st = status_json(&d);
    assert!(
        rule_status(&st, "udp-svc")["allowed"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{st:#}"
    );
    assert!(
        rule_status(&st, "tcp-svc")["allowed"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{st:#}"
    );

    d.reload(&bed.policy("enforce", true, ""));
    d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "policy" && v["action"] == "applied" && v["policy"] == 2
    });
    let sent = now_ns();
    udp_once(&bed.ok, "10.1.0.2:40020", "10.1.0.1:7000", b"hello");
    for (hook, len) in [("xdp", 14 + 20 + 8 + 5), ("cgroup_ingress", 20 + 8 + 5)] {
        let ev = expect_event(&mut d, &[("hook", hook.into()), ("sport", 40020.into())]);
        assert_fields(
            &ev,
            &[
                ("verdict", "allow".into()),
                ("reason", "allowed-by-source".into()),
                ("rule", "udp-svc".into()),
                ("src", "10.1.0.2".into()),
                ("dst", "10.1.0.1".into()),
                ("dport", PORT_N.into()),
                ("policy", 2.into()),
                ("len", len.into()),
            ],
            &["pid", "comm"],
        );
        assert_ts_near(&ev, sent);
    }
    assert!(
        !packets(&d)
            .iter()
            .any(|v| v["verdict"] == "allow" && v["policy"] != 2),
        "allowed packets reported under a policy that did not ask for them: {:#?}",
        packets(&d)
    );

    // Audit mode: refusals are let through and reported as would-drop.
    d.reload(&bed.policy("audit", false, ""));
    d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "policy" && v["action"] == "applied" && v["policy"] == 3
    });
    assert_eq!(udp(&bed.bad, None, "10.2.0.1"), "reply");
    assert_eq!(tcp(&bed.bad, None, "fd02::1"), "connected");
    assert_eq!(tcp(&bed.host, Some(&bed.refused), "127.0.0.1"), "connected");
    for (proto, src) in [("udp", "10.2.0.2"), ("tcp", "fd02::2")] {
        let ev = expect_event(
            &mut d,
            &[
                ("hook", "xdp".into()),
                ("proto", proto.into()),
                ("src", src.into()),
                ("policy", 3.into()),
            ],
        );
        assert_fields(
            &ev,
            &[
                ("verdict", "would-drop".into()),
                ("reason", "dropped-source".into()),
                ("iface", bed.v_bad.a.as_str().into()),
            ],
            &[],
        );
    }
    let ev = expect_event(&mut d, &[("dst", "127.0.0.1".into()), ("policy", 3.into())]);
    assert_fields(
        &ev,
        &[
            ("verdict", "would-drop".into()),
            ("cgroup", bed.refused.path.as_str().into()),
        ],
        &[],
    );
    assert_eq!(udp(&bed.ok, None, "10.1.0.1"), "reply");
    expect_no_event(
        &d,
        "a drop or an allowed packet reported in audit mode",
        |v| v["policy"] == 3 && (v["verdict"] == "drop" || v["verdict"] == "allow"),
    );
}

/// Sums the audit stream's accounting for `rule`: (packet events, suppressed, kernel lost,
/// other sinks' lost notices).
fn accounting(d: &Daemon, rule: &str) -> (u64, u64, u64, u64) {
    let evs = d.events();
    let count = |pred: &dyn Fn(&Value) -> bool| {
        evs.iter()
            .filter(|v| pred(v))
            .map(|v| v["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let reported = evs
        .iter()
        .filter(|v| v["event"] == "packet" && v["rule"] == rule)
        .count() as u64;
    let suppressed = count(&|v| v["event"] == "suppressed" && v["rule"] == rule);
    let lost_kernel = count(&|v| v["event"] == "lost" && v["scope"] == "kernel");
    let lost_other = count(&|v| v["event"] == "lost" && v["scope"] != "kernel");
    (reported, suppressed, lost_kernel, lost_other)
}

#[test]
fn flood_reported_plus_suppressed_plus_lost_equals_the_kernel_drop_counter() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let (rate, burst) = (20u64, 20u64);
    let d = Daemon::start(
        &bed.host,
        &bed.policy(
            "enforce",
            false,
            &format!("rate_per_rule = {rate}\nburst = {burst}"),
        ),
    );

    let start = Instant::now();
    let sent = udp_send(
        &bed.bad,
        "10.2.0.2:40100".parse().unwrap(),
        "10.2.0.1:7000".parse().unwrap(),
        b"flood",
        5000,
        250,
        Duration::from_millis(5),
    );
    let flood_secs = start.elapsed().as_secs_f64();
    assert!(sent >= 4900, "only {sent} of 5000 datagrams could be sent");

    // Suppressed events are summed up once a second: wait for the sums to meet the
    // counter (and then check they stay there).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (dropped, (reported, suppressed, lost_kernel, lost_other)) = loop {
        let dropped = rule_status(&status_json(&d), "udp-svc")["dropped"]
            .as_u64()
            .expect("dropped");
        let acc = accounting(&d, "udp-svc");
        if acc.0 + acc.1 + acc.2 == dropped || Instant::now() > deadline {
            break (dropped, acc);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "flood: sent {sent} in {flood_secs:.2}s; kernel dropped {dropped}; reported {reported} + suppressed {suppressed} + lost {lost_kernel} = {}",
        reported + suppressed + lost_kernel
    );
    assert_eq!(
        reported + suppressed + lost_kernel,
        dropped,
        "reported {reported} + suppressed {suppressed} + lost {lost_kernel} != dropped {dropped}"
    );
    assert_eq!(lost_other, 0, "stdout lost lines");
    assert!(
        dropped >= 4000,
        "most of the flood should have reached XDP: dropped {dropped}"
    );
    assert!(suppressed > 0, "nothing was suppressed");
    // The limit held: per CPU, the burst plus `rate` a second.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as f64;
    let bound = cpus * (burst as f64 + rate as f64 * (flood_secs + 1.0));
    assert!(
        (reported as f64) <= bound,
        "{reported} events reported; the limit allows at most {bound}"
    );
    let st = status_json(&d);
    assert_eq!(st["audit"]["suppressed"], suppressed, "{st:#}");
    assert_eq!(st["audit"]["lost_kernel"], lost_kernel, "{st:#}");

    // It stays balanced: no late reports.
    std::thread::sleep(testbed::ABSENCE);
    let again = accounting(&d, "udp-svc");
    let dropped_again = rule_status(&status_json(&d), "udp-svc")["dropped"]
        .as_u64()
        .expect("dropped");
    assert_eq!(
        (again.0 + again.1 + again.2, dropped_again),
        (dropped, dropped),
        "{again:?}"
    );
}

#[test]
fn a_stuck_subscriber_loses_only_its_own_lines() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let d = Daemon::start(
        &bed.host,
        &bed.policy("enforce", false, "rate_per_rule = 0\nrate_global = 0"),
    );

    // The stuck client subscribes and then never reads; tail --json follows.
    let mut stuck = ControlConn::connect(&d.socket);
    stuck.send(r#"{"version":1,"command":"subscribe"}"#);
    let mut tail = Tail::spawn(&d.socket, &["--json"]);
    let t0 = Instant::now();
    while status_json(&d)["audit"]["subscribers"] != 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "subscribers never reached 2: {:#}",
            status_json(&d)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Far more lines than the stuck client's queue and socket buffer hold.
    const N: usize = SUBSCRIBER_QUEUE + 15_000;
    let sent = udp_send(
        &bed.bad,
        "10.2.0.2:40200".parse().unwrap(),
        "10.2.0.1:7000".parse().unwrap(),
        b"x",
        N,
        500,
        Duration::from_millis(40),
    );
    assert!(sent >= N - 100, "only {sent} datagrams sent");

    // The daemon answers at once while the stuck client sits on its lines.
    let t = Instant::now();
    let st = status_json(&d);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?} with a stuck subscriber",
        t.elapsed()
    );

    let total = |st: &Value| {
        rule_status(st, "udp-svc")["dropped"]
            .as_u64()
            .expect("dropped")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (dropped, tail_lines) = loop {
        let st = status_json(&d);
        let dropped = total(&st);
        let lines = tail.lines();
        let tail_packets = lines
            .iter()
            .filter(|l| l.contains(r#""event":"packet""#))
            .count() as u64;
        if tail_packets == dropped && st["audit"]["events"] == dropped || Instant::now() > deadline
        {
            break (dropped, lines);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        dropped >= (N as u64) * 9 / 10,
        "only {dropped} datagrams reached XDP"
    );
    let tail_packets = tail_lines
        .iter()
        .filter(|l| l.contains(r#""event":"packet""#))
        .count() as u64;
    assert_eq!(
        tail_packets, dropped,
        "tail --json missed lines (status {st:#})"
    );
    assert!(
        !tail_lines.iter().any(|l| l.contains(r#""event":"lost""#)),
        "tail lost lines"
    );
    assert_eq!(packets(&d).len() as u64, dropped, "stdout missed lines");
    let st = status_json(&d);
    assert_eq!(st["audit"]["events"], dropped, "{st:#}");
    assert_eq!(st["audit"]["lost_kernel"], 0, "{st:#}");
    let lost_sinks = st["audit"]["lost_sinks"].as_u64().expect("lost_sinks");
    assert!(lost_sinks > 0, "the stuck subscriber lost nothing? {st:#}");

    // Now it reads: what it has, then (after one more event) the notice of what it lost.
    stuck.set_read_timeout(Duration::from_millis(500));
    let mut got = Vec::new();
    let start = Instant::now();
    while let Some(line) = stuck.read_line() {
        got.push(line);
        assert!(
            got.len() <= N + 10 && start.elapsed() < Duration::from_secs(30),
            "endless stream"
        );
    }
    assert!(
        got.first()
            .is_some_and(|l| l.contains(r#""subscribed":true"#)),
        "first line: {:?}",
        got.first()
    );
    udp_once(&bed.bad, "10.2.0.2:40201", "10.2.0.1:7000", b"y");
    stuck.set_read_timeout(Duration::from_secs(5));
    let mut lost_notice = None;
    for _ in 0..4 {
        let Some(line) = stuck.read_line() else { break };
        let v: Value = serde_json::from_str(&line).expect("JSON line");
        if v["event"] == "lost" {
            lost_notice = Some(v);
        } else {
            got.push(line);
            break;
        }
    }
    let notice = lost_notice.expect("no lost notice after the stuck client caught up");
    assert_eq!(notice["scope"], "subscriber", "{notice}");
    let lost = notice["count"].as_u64().expect("count");
    let stuck_packets = got
        .iter()
        .filter(|l| l.contains(r#""event":"packet""#))
        .count() as u64;
    eprintln!("stuck subscriber: received {stuck_packets} packet lines, lost {lost}; tail and stdout got all {dropped} (+1)");
    assert_eq!(
        stuck_packets + lost,
        dropped + 1,
        "received {stuck_packets} + lost {lost} != offered {}",
        dropped + 1
    );
    assert_eq!(lost, lost_sinks, "status lost_sinks");
    assert!(
        stuck_packets >= SUBSCRIBER_QUEUE as u64,
        "the stuck client's queue held only {stuck_packets}"
    );
    assert!(
        tail.wait_lines(EVENT_WAIT, "the last event", |l| l
            .iter()
            .any(|s| s.contains(r#""sport":40201"#)))
            .len()
            > 1
    );
}

/// Runs `enforcer tail ARGS` until it printed `n` lines; returns them.
fn tail_n(d: &Daemon, args: &[&str], n: usize) -> Vec<String> {
    let mut t = Tail::spawn(&d.socket, args);
    let lines = t.wait_lines(EVENT_WAIT, &format!("{n} lines from tail {args:?}"), |l| {
        l.len() >= n
    });
    // Anything more would show up while the test watches.
    std::thread::sleep(testbed::ABSENCE);
    let lines_after = t.lines();
    assert_eq!(
        lines_after.len(),
        lines.len(),
        "tail {args:?} printed more than expected: {lines_after:#?}"
    );
    lines
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn tail_shows_readable_and_json_lines_filters_replays_and_writes_pcap() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listeners();
    let mut d = Daemon::start(&bed.host, &bed.policy("enforce", true, ""));
    // A live follower (refusals only), subscribed before any traffic.
    let mut live = Tail::spawn(&d.socket, &["--verdict", "drop"]);
    let t0 = Instant::now();
    while status_json(&d)["audit"]["subscribers"] != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "tail did not subscribe: {}",
            live.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    udp_once(&bed.ok, "10.1.0.2:40010", "10.1.0.1:7000", b"ok");
    udp_once(&bed.bad, "10.2.0.2:40011", "10.2.0.1:7000", b"bad4");
    udp_once(&bed.bad, "[fd02::2]:40012", "[fd02::1]:7000", b"bad6");
    assert_eq!(tcp(&bed.bad, None, "10.2.0.1"), "timeout");
    for (hook, sport) in [
        ("xdp", 40010),
        ("cgroup_ingress", 40010),
        ("xdp", 40011),
        ("xdp", 40012),
    ] {
        expect_event(&mut d, &[("hook", hook.into()), ("sport", sport.into())]);
    }
    expect_event(&mut d, &[("proto", "tcp".into())]);
    // The probe may have retransmitted its SYN: wait until the stream has settled.
    settle(&d);
    let all = d.events();
    let pkts: Vec<Value> = all
        .iter()
        .filter(|v| v["event"] == "packet")
        .cloned()
        .collect();
    let drops: Vec<Value> = pkts
        .iter()
        .filter(|v| v["verdict"] == "drop")
        .cloned()
        .collect();
    assert!(all.iter().any(|v| v["event"] == "policy"), "{all:#?}");

    // --since 1h --json replays exactly what the daemon printed.
    let replay = json_lines(&tail_n(&d, &["--since", "1h", "--json"], all.len()));
    assert_eq!(
        replay, all,
        "tail --since 1h --json differs from the daemon's stream"
    );

    // Readable lines: one per event, words an operator can read.
    let readable = tail_n(&d, &["--since", "1h"], all.len());
    eprintln!("enforcer tail --since 1h:\n{}", readable.join("\n"));
    for l in &readable {
        assert!(
            serde_json::from_str::<Value>(l).is_err(),
            "a readable line is JSON: {l}"
        );
        assert!(
            l.get(..30).and_then(parse_rfc3339_utc_ns).is_some(),
            "line does not start with its time: {l}"
        );
    }
    let line_of = |needle: &str| {
        readable
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {readable:#?}"))
            .clone()
    };
    let l4 = line_of("10.2.0.2:40011 -> 10.2.0.1:7000");
    for word in [
        " DROP ",
        " xdp ",
        " udp ",
        "rule=udp-svc",
        "reason=dropped-source",
        &format!("iface={}", bed.v_bad.a),
        "policy=1",
    ] {
        assert!(l4.contains(word), "{word:?} missing in {l4:?}");
    }
    // IPv6 endpoints in brackets: "fd02::2:40012" would read as one address.
    let l6 = line_of("[fd02::2]:40012 -> [fd02::1]:7000");
    assert!(l6.contains("rule=udp-svc") && l6.contains(" DROP "), "{l6}");
    let la = line_of("10.1.0.2:40010 -> 10.1.0.1:7000");
    assert!(
        la.contains(" ALLOW ") && la.contains("reason=allowed-by-source"),
        "{la}"
    );
    assert!(
        line_of("POLICY").contains("applied generation 1"),
        "{readable:#?}"
    );

    // Filters.
    let filtered = |args: &[&str], keep: &dyn Fn(&Value) -> bool| {
        let want: Vec<Value> = pkts.iter().filter(|v| keep(v)).cloned().collect();
        assert!(!want.is_empty(), "filter {args:?} keeps nothing");
        let mut full = vec!["--since", "1h", "--json"];
        full.extend_from_slice(args);
        let got = json_lines(&tail_n(&d, &full, want.len()));
        assert_eq!(got, want, "tail {args:?}");
    };
    filtered(&["--rule", "udp-svc"], &|v| v["rule"] == "udp-svc");
    filtered(&["--verdict", "allow"], &|v| v["verdict"] == "allow");
    filtered(&["--verdict", "drop", "--rule", "tcp-svc"], &|v| {
        v["verdict"] == "drop" && v["rule"] == "tcp-svc"
    });
    filtered(&["--src", "10.2.0.0/24"], &|v| {
        v["src"].as_str().is_some_and(|s| s.starts_with("10.2.0."))
    });
    filtered(&["--src", "fd02::/64"], &|v| v["src"] == "fd02::2");
    filtered(&["--src", "10.1.0.2"], &|v| v["src"] == "10.1.0.2");

    // Filters on readable lines too.
    let v6_drops = pkts
        .iter()
        .filter(|v| v["verdict"] == "drop" && v["src"] == "fd02::2")
        .count();
    let lines = tail_n(
        &d,
        &["--since", "1h", "--verdict", "drop", "--src", "fd02::/64"],
        v6_drops,
    );
    eprintln!(
        "enforcer tail --since 1h --verdict drop --src fd02::/64:\n{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" DROP ") && l.contains("[fd02::2]")),
        "{lines:#?}"
    );

    // The live follower saw the refusals (and nothing from before it subscribed).
    let live_lines = live.wait_lines(EVENT_WAIT, "the refusals", |l| l.len() >= drops.len());
    assert_eq!(live_lines.len(), drops.len(), "{live_lines:#?}");
    assert!(
        live_lines.iter().all(|l| l.contains(" DROP ")),
        "{live_lines:#?}"
    );

    // --pcap: a capture file of the judged packets' headers.
    let dir = TempDir::new();
    let pcap = dir.0.join("refused.pcap");
    let pcap_s = pcap.to_str().expect("path");
    tail_n(
        &d,
        &["--since", "1h", "--json", "--pcap", pcap_s],
        all.len(),
    );
    let bytes = std::fs::read(&pcap).expect("pcap file");
    check_pcap(&bytes, &pkts);
    if Command::new("tcpdump")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let out = Command::new("tcpdump")
            .args(["-r", pcap_s, "-n"])
            .output()
            .expect("tcpdump");
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("tcpdump -r {pcap_s} -n:\n{text}");
        assert!(
            out.status.success(),
            "tcpdump -r failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.lines().count(), pkts.len(), "{text}");
        // (tcpdump decodes UDP port 7000 as AFS rx, so no "UDP" word to look for.)
        assert!(
            text.contains("IP 10.2.0.2.40011 > 10.2.0.1.7000:"),
            "{text}"
        );
        assert!(text.contains("IP6 fd02::2.40012 > fd02::1.7000:"), "{text}");
        assert!(text.contains("10.2.0.1.7000: Flags [S]"), "{text}");
    } else {
        testbed::skip_part(
            "tcpdump is not installed: the pcap was not read back with `tcpdump -r`",
        );
    }
}

/// The pcap file: a nanosecond LINKTYPE_RAW header, then one record per packet event, in
/// order, whose IP and transport headers carry the event's addresses, ports and protocol.
fn check_pcap(b: &[u8], pkts: &[Value]) {
    let u32le = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    assert!(b.len() >= 24, "pcap shorter than its header");
    assert_eq!(u32le(0), 0xa1b2_3c4d, "magic (nanosecond pcap)");
    assert_eq!(
        (
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]])
        ),
        (2, 4),
        "version"
    );
    assert_eq!(u32le(20), 101, "LINKTYPE_RAW");
    let mut off = 24;
    let mut n = 0;
    while off < b.len() {
        assert!(off + 16 <= b.len(), "truncated record header at {off}");
        let (secs, nanos, incl, orig) = (
            u32le(off) as i128,
            u32le(off + 4) as i128,
            u32le(off + 8) as usize,
            u32le(off + 12) as usize,
        );
        assert!(
            nanos < 1_000_000_000 && incl <= orig,
            "record {n}: {nanos} ns, incl {incl}, orig {orig}"
        );
        let p = &b[off + 16..off + 16 + incl];
        let ev = pkts
            .get(n)
            .unwrap_or_else(|| panic!("more records than packet events ({n})"));
        let ts = parse_rfc3339_utc_ns(ev["ts"].as_str().expect("ts")).expect("ts");
        assert_eq!(secs * 1_000_000_000 + nanos, ts, "record {n} time vs {ev}");
        let (src, dst, proto, l4): (IpAddr, IpAddr, u8, usize) = match p[0] >> 4 {
            4 => (
                <[u8; 4]>::try_from(&p[12..16]).unwrap().into(),
                <[u8; 4]>::try_from(&p[16..20]).unwrap().into(),
                p[9],
                20,
            ),
            6 => (
                <[u8; 16]>::try_from(&p[8..24]).unwrap().into(),
                <[u8; 16]>::try_from(&p[24..40]).unwrap().into(),
                p[6],
                40,
            ),
            v => panic!("record {n}: IP version {v}"),
        };
        assert_eq!(
            src.to_string(),
            ev["src"].as_str().expect("src"),
            "record {n}"
        );
        assert_eq!(
            dst.to_string(),
            ev["dst"].as_str().expect("dst"),
            "record {n}"
        );
        assert_eq!(
            proto,
            if ev["proto"] == "tcp" { 6 } else { 17 },
            "record {n}"
        );
        let port = |o: usize| u16::from_be_bytes([p[l4 + o], p[l4 + o + 1]]) as u64;
        assert_eq!(
            port(0),
            ev["sport"].as_u64().unwrap_or(0),
            "record {n} sport"
        );
        assert_eq!(
            port(2),
            ev["dport"].as_u64().expect("dport"),
            "record {n} dport"
        );
        off += 16 + incl;
        n += 1;
    }
    assert_eq!(n, pkts.len(), "records vs packet events");
}

#[test]
fn tail_refuses_bad_arguments_clearly() {
    let dir = TempDir::new();
    let socket = dir.0.join("none.sock");
    let run = |args: &[&str]| {
        let out = Command::new(testbed::enforcer_bin())
            .arg("tail")
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .expect("run enforcer tail");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, words) in [
        (
            &["--verdict", "maybe"][..],
            &["--verdict", "allow, drop or would-drop", "maybe"][..],
        ),
        (
            &["--src", "banana"],
            &["--src", "banana", "not an IPv4 or IPv6 address"],
        ),
        (
            &["--src", "10.2.0.1/24"],
            &["--src", "host bits", "10.2.0.0/24"],
        ),
        (&["--since", "banana"], &["--since", "banana", "duration"]),
        (&[], &["cannot reach the daemon", "none.sock"]),
    ] {
        let (ok, err) = run(args);
        assert!(!ok, "tail {args:?} succeeded");
        for w in words {
            assert!(err.contains(w), "tail {args:?}: {w:?} missing in {err:?}");
        }
        assert!(
            err.lines().count() <= 3,
            "tail {args:?}: not one clear message: {err}"
        );
    }
}

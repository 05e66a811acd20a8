//! Hand-written expectations for the decisions the reference model and the programs share
//! and BPF_PROG_TEST_RUN cannot reach (a socket's cgroup, a flow remembered at egress, the
//! connect/sendmsg hooks): each row is one datagram or connection from a real socket in a
//! real namespace and cgroup, through the attached programs of a running daemon, and says
//! what the README says must happen: the sender's outcome, every hook's event (verdict,
//! reason, rule), and the change of the whole counter set (per hook and reason, per rule).
//! Nothing here is computed by the model.
//!
//! Also the flow memory's expiry: a flow allowed at egress is honoured at the receiving
//! side only FLOW_FRESH_NS (1 s) after its last packet was judged at egress.
//!
//! Topology: `testbed::bed` (host; remote A allowed by source, R refused; cgroups under the
//! test cgroup). R's namespace with a process in CG/allowed or CG/refused is a container
//! in that cgroup. Run with
//! `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test hooks_table`.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    bed::{Bed, A4, HOST_A4, HOST_R4, R4},
    daemon::{probe, Daemon},
    flood::status_json,
    need_root,
    net::Cgroup,
    ABSENCE,
};

const PORT: u16 = 7000;
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Who sends: a namespace (the host's or R's, A's) and optionally a cgroup.
#[derive(Clone, Copy)]
enum From {
    A,
    R,
    RIn(Cg),
    HostIn(Cg),
}

#[derive(Clone, Copy)]
enum Cg {
    Allowed,
    Refused,
}

/// One row: a probe from `from` with source port `sport` to `dst`, and what must follow.
struct Row {
    what: &'static str,
    from: From,
    proto: &'static str,
    dst: &'static str,
    sport: u16,
    /// The probe's word: reply / sent / eperm / connected.
    outcome: &'static str,
    /// (hook, verdict, reason, rule) of each event the packet or call makes.
    events: &'static [(&'static str, &'static str, &'static str, &'static str)],
    /// (hook, reason) of each packet of the exchange that passes unjudged (the echo).
    passes: &'static [(&'static str, &'static str)],
}

/// Reasons background traffic (ARP, neighbour discovery) counts under at any time.
const BACKGROUND: &[&str] = &["not-ip", "not-tcp-udp"];

fn policy(bed: &Bed) -> String {
    format!(
        "mode = \"enforce\"\n[audit]\nallowed = true\nrate_per_rule = 0\nrate_global = 0\n\n{}\n\
         [[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\nallow_cgroups = [\"{allowed}\"]\n\n\
         [[rule]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\nallow_cgroups = [\"{allowed}\"]\n",
        bed.attach(),
        allowed = bed.allowed.path,
    )
}

/// The whole counter set of a status: "hook/reason" and "rule/verdict" -> count.
fn counters(st: &Value) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (hook, reasons) in st["counters"].as_object().expect("counters") {
        for (reason, n) in reasons.as_object().expect("reasons") {
            m.insert(format!("{hook}/{reason}"), n.as_u64().expect("count"));
        }
    }
    for r in st["rules"].as_array().expect("rules") {
        for v in ["allowed", "dropped", "would_drop"] {
            m.insert(
                format!("{}/{v}", r["name"].as_str().expect("name")),
                r[v].as_u64().expect("count"),
            );
        }
    }
    m.retain(|k, n| *n > 0 && !BACKGROUND.iter().any(|b| k.ends_with(&format!("/{b}"))));
    m
}

/// `before` plus one per event of `row`: each judged event counts once under its hook and
/// reason and once under its rule and verdict.
fn expected_counters(before: &BTreeMap<String, u64>, row: &Row) -> BTreeMap<String, u64> {
    let mut m = before.clone();
    for (hook, verdict, reason, rule) in row.events {
        *m.entry(format!("{hook}/{reason}")).or_default() += 1;
        let v = if *verdict == "allow" {
            "allowed"
        } else {
            "dropped"
        };
        *m.entry(format!("{rule}/{v}")).or_default() += 1;
    }
    for (hook, reason) in row.passes {
        *m.entry(format!("{hook}/{reason}")).or_default() += 1;
    }
    m
}

/// Whether packet event `v` is of `row`'s exchange: by source port, or (connect/sendmsg
/// events carry none) by hook and destination.
fn of_row(v: &Value, row: &Row) -> bool {
    v["event"] == "packet"
        && v["dport"] == PORT
        && (v["sport"] == row.sport
            || (v.get("sport").is_none()
                && v["dst"] == row.dst
                && (v["hook"] == "cgroup_connect" || v["hook"] == "cgroup_sendmsg")))
}

fn run_row(bed: &Bed, d: &Daemon, row: &Row) {
    let before = counters(&status_json(d));
    let seen = d.events().len();
    let new_events = || -> Vec<Value> {
        d.events()
            .into_iter()
            .skip(seen)
            .filter(|v| of_row(v, row))
            .collect()
    };
    let (ns, cg): (_, Option<&Cgroup>) = match row.from {
        From::A => (&bed.a, None),
        From::R => (&bed.r, None),
        From::RIn(Cg::Allowed) => (&bed.r, Some(&bed.allowed)),
        From::RIn(Cg::Refused) => (&bed.r, Some(&bed.refused)),
        From::HostIn(Cg::Allowed) => (&bed.host, Some(&bed.allowed)),
        From::HostIn(Cg::Refused) => (&bed.host, Some(&bed.refused)),
    };
    let src = match row.from {
        From::A => A4,
        From::R | From::RIn(_) => R4,
        From::HostIn(_) => row.dst,
    };
    let bind = format!("{src}:{}", row.sport);
    let kind = if row.proto == "udp" {
        "udp-send"
    } else {
        "tcp-connect"
    };
    let procs = cg.map(Cgroup::procs_file);
    let out = probe(
        Some(ns),
        procs.as_deref(),
        &[kind, row.dst, &PORT.to_string(), "3000", &bind],
    );
    assert_eq!(out, row.outcome, "{}: the sender saw", row.what);
    for (hook, verdict, reason, rule) in row.events {
        let start = Instant::now();
        let ev = loop {
            if let Some(v) = new_events().into_iter().find(|v| v["hook"] == *hook) {
                break v;
            }
            assert!(
                start.elapsed() < EVENT_WAIT,
                "{}: no {hook} event; events of the row: {:?}",
                row.what,
                new_events()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            (
                ev["verdict"].as_str(),
                ev["reason"].as_str(),
                ev["rule"].as_str()
            ),
            (Some(*verdict), Some(*reason), Some(*rule)),
            "{}: the {hook} event {ev}",
            row.what
        );
    }
    let want = expected_counters(&before, row);
    let start = Instant::now();
    let mut got = counters(&status_json(d));
    while got != want && start.elapsed() < EVENT_WAIT {
        std::thread::sleep(Duration::from_millis(50));
        got = counters(&status_json(d));
    }
    assert_eq!(got, want, "{}: the counters (before: {before:?})", row.what);
    let hooks: Vec<&str> = row.events.iter().map(|e| e.0).collect();
    let all = new_events();
    let others: Vec<&Value> = all
        .iter()
        .filter(|v| !hooks.contains(&v["hook"].as_str().unwrap_or("")))
        .collect();
    assert!(
        others.is_empty(),
        "{}: unexpected events {others:?}",
        row.what
    );
}

#[test]
fn cgroup_and_flow_decisions_through_the_real_hooks() {
    need_root!();
    let bed = Bed::new();
    let _udp = bed.listen("udp-listen", PORT);
    let _tcp = bed.listen("tcp-listen", PORT);
    let d = Daemon::start(&bed.host, &policy(&bed));
    let rows = [
        Row {
            what: "a remote sender allowed by source",
            from: From::A,
            proto: "udp",
            dst: HOST_A4,
            sport: 41001,
            outcome: "reply",
            events: &[
                ("xdp", "allow", "allowed-by-source", "svc"),
                ("cgroup_ingress", "allow", "allowed-by-source", "svc"),
            ],
            passes: &[("cgroup_egress", "not-protected")],
        },
        Row {
            what: "a remote sender refused by source",
            from: From::R,
            proto: "udp",
            dst: HOST_R4,
            sport: 41002,
            outcome: "sent",
            events: &[("xdp", "drop", "dropped-source", "svc")],
            passes: &[],
        },
        Row {
            what: "a container in an allowed cgroup, from a refused address",
            from: From::RIn(Cg::Allowed),
            proto: "udp",
            dst: HOST_R4,
            sport: 41003,
            outcome: "reply",
            events: &[
                ("cgroup_egress", "allow", "allowed-by-cgroup", "svc"),
                ("xdp", "allow", "allowed-by-flow", "svc"),
                ("cgroup_ingress", "allow", "allowed-by-flow", "svc"),
            ],
            passes: &[
                ("cgroup_egress", "not-protected"),
                ("cgroup_ingress", "not-protected"),
            ],
        },
        Row {
            what: "a container in a refused cgroup",
            from: From::RIn(Cg::Refused),
            proto: "udp",
            dst: HOST_R4,
            sport: 41004,
            outcome: "eperm",
            events: &[("cgroup_egress", "drop", "dropped-source", "svc")],
            passes: &[],
        },
        // Host processes send from the host's address on R's link: outside every
        // allow_from, so only their cgroup can let them in.
        Row {
            what: "a host process in a refused cgroup, UDP",
            from: From::HostIn(Cg::Refused),
            proto: "udp",
            dst: HOST_R4,
            sport: 41005,
            outcome: "eperm",
            events: &[("cgroup_sendmsg", "drop", "dropped-source", "svc")],
            passes: &[],
        },
        Row {
            what: "a host process in a refused cgroup, TCP",
            from: From::HostIn(Cg::Refused),
            proto: "tcp",
            dst: HOST_R4,
            sport: 41006,
            outcome: "eperm",
            events: &[("cgroup_connect", "drop", "dropped-source", "web")],
            passes: &[],
        },
        Row {
            what: "a host process in an allowed cgroup, UDP",
            from: From::HostIn(Cg::Allowed),
            proto: "udp",
            dst: HOST_R4,
            sport: 41007,
            outcome: "reply",
            // connect()/sendmsg() report refusals only (docs/AUDIT-EVENTS.md).
            events: &[
                ("cgroup_egress", "allow", "allowed-by-cgroup", "svc"),
                ("cgroup_ingress", "allow", "allowed-by-flow", "svc"),
            ],
            passes: &[
                ("cgroup_egress", "not-protected"),
                ("cgroup_ingress", "not-protected"),
            ],
        },
    ];
    for row in &rows {
        run_row(&bed, &d, row);
    }
}

/// One datagram from R4:`sport` to the host, sent by this test's own thread in R's
/// namespace: its cgroup is not under the attached one, so no egress program judges (or
/// refreshes) it. Returns when it was sent, and whether the listener's echo came back.
fn send_unjudged(bed: &Bed, sport: u16, wait: Duration) -> (Instant, bool) {
    bed.r.run(move || {
        let s = UdpSocket::bind(SocketAddr::new(R4.parse().unwrap(), sport)).expect("bind");
        s.set_read_timeout(Some(wait)).expect("timeout");
        s.send_to(b"unjudged", SocketAddr::new(HOST_R4.parse().unwrap(), PORT))
            .expect("send");
        let sent = Instant::now();
        let mut buf = [0u8; 64];
        (sent, s.recv_from(&mut buf).is_ok())
    })
}

fn dropped_at_xdp(d: &Daemon) -> u64 {
    status_json(d)["counters"]["xdp"]["dropped-source"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_flow_remembered_at_egress_expires_after_a_second() {
    need_root!();
    const FLOW_FRESH: Duration = Duration::from_secs(1);
    let bed = Bed::new();
    let _udp = bed.listen("udp-listen", PORT);
    let d = Daemon::start(&bed.host, &policy(&bed));
    let sport = 41100u16;
    let bind = format!("{R4}:{sport}");
    let allowed = bed.allowed.procs_file();
    let judged = || {
        assert_eq!(
            probe(
                Some(&bed.r),
                Some(&allowed),
                &["udp-send", HOST_R4, &PORT.to_string(), "3000", &bind],
            ),
            "reply",
            "a container in the allowed cgroup"
        );
    };

    // Within the window, the same flow's unjudged datagram is let in. Timed from before
    // the judged send, so a slow machine can only make a try inconclusive, never wrong.
    let mut honoured = None;
    for _ in 0..5 {
        let t = Instant::now();
        judged();
        let (sent, came_back) = send_unjudged(&bed, sport, Duration::from_secs(3));
        if sent.duration_since(t) < FLOW_FRESH || came_back {
            honoured = Some(came_back);
            break;
        }
    }
    assert_eq!(
        honoured,
        Some(true),
        "an unjudged datagram of a flow judged at egress moments before was not let in"
    );

    // After the window, it is judged as what it is: a refused source, dropped at XDP.
    judged();
    let judged_at = Instant::now();
    let drops = dropped_at_xdp(&d);
    // The promise is a time: wait it out, with its own margin.
    std::thread::sleep(FLOW_FRESH + Duration::from_millis(500));
    let (sent, came_back) = send_unjudged(&bed, sport, ABSENCE);
    assert!(sent.duration_since(judged_at) > FLOW_FRESH);
    assert!(
        !came_back,
        "a flow last judged at egress over a second ago was still honoured"
    );
    let start = Instant::now();
    while dropped_at_xdp(&d) < drops + 1 {
        assert!(
            start.elapsed() < EVENT_WAIT,
            "the expired flow's datagram was not dropped at XDP"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(dropped_at_xdp(&d), drops + 1);
}

//! `enforcer scan` in a network namespace made here: real listeners (the probe binary),
//! the real binary reading /proc/net/* of that namespace, its report asserted.
//!
//! Needs root (namespaces, other processes' descriptors); skipped with a message otherwise.

use std::process::{Command, Stdio};

use serde_json::Value;
use testbed::{
    daemon::{place, Probe, TempDir},
    enforcer_bin,
    net::NetNs,
};

use testbed::need_root;

fn scan(ns: &NetNs, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(enforcer_bin());
    cmd.arg("scan")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(&ns.path()), None);
    let out = cmd.output().expect("run enforcer scan");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const POLICY: &str = r#"[failsafe]
ports = ["tcp/2222"]

[[rule]]
name = "svc"
protocol = "tcp"
ports = [7000]
allow_from = ["10.0.0.0/8"]

[[rule]]
name = "idle"
protocol = "any"
ports = ["7100-7110"]
allow_from = ["10.0.0.0/8"]

[[rule]]
name = "high"
protocol = "udp"
ports = [45050]
allow_from = ["10.0.0.0/8"]
"#;

fn socket<'a>(v: &'a Value, proto: &str, port: u64, addr: &str) -> &'a Value {
    v["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .find(|s| s["proto"] == proto && s["port"] == port && s["addr"] == addr)
        .unwrap_or_else(|| panic!("no {proto} {addr} {port} in {v:#}"))
}

#[test]
fn listeners_are_judged_against_the_policy() {
    need_root!();
    let ns = NetNs::new();
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "45000 45999\n"))
        .expect("set the range");
    let exposed = Probe::spawn(Some(&ns), None, &["tcp-listen", "0.0.0.0", "8080"]);
    let exposed6 = Probe::spawn(Some(&ns), None, &["udp-listen", "::", "5353"]);
    let local = Probe::spawn(Some(&ns), None, &["tcp-listen", "127.0.0.1", "8081"]);
    let protected = Probe::spawn(Some(&ns), None, &["tcp-listen", "0.0.0.0", "7000"]);
    let failsafe = Probe::spawn(Some(&ns), None, &["tcp-listen", "::", "2222"]);
    let dir = TempDir::new();
    let policy = dir.0.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("write policy");
    let policy_s = policy.display().to_string();

    let (code, out, err) = scan(&ns, &["--config", &policy_s, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["policy"], policy_s);
    assert_eq!(v["ephemeral_ports"]["first"], 45000);
    assert_eq!(v["ephemeral_ports"]["last"], 45999);
    // Exactly the namespace's five listeners: nothing of the host's leaks in.
    assert_eq!(v["sockets"].as_array().map(Vec::len), Some(5), "{v:#}");

    let s = socket(&v, "tcp", 8080, "0.0.0.0");
    assert_eq!(s["status"], "exposed");
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", exposed.pid()))
        .expect("the listener's cgroup");
    let cgroup = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    assert_eq!(
        s["processes"],
        serde_json::json!([{"pid": exposed.pid(), "name": "probe", "cgroup": cgroup}])
    );
    let s = socket(&v, "udp", 5353, "::");
    assert_eq!(s["status"], "exposed");
    assert_eq!(s["processes"][0]["pid"], exposed6.pid());
    let s = socket(&v, "tcp", 8081, "127.0.0.1");
    assert_eq!(s["status"], "loopback");
    assert_eq!(s["processes"][0]["pid"], local.pid());
    let s = socket(&v, "tcp", 7000, "0.0.0.0");
    assert_eq!(s["status"], "protected");
    assert_eq!(s["rules"], serde_json::json!(["svc"]));
    assert_eq!(s["processes"][0]["pid"], protected.pid());
    let s = socket(&v, "tcp", 2222, "::");
    assert_eq!(s["status"], "failsafe");
    assert_eq!(s["processes"][0]["pid"], failsafe.pid());

    let exposed_ports: Vec<u64> = v["exposed"]
        .as_array()
        .expect("exposed")
        .iter()
        .filter_map(|s| s["port"].as_u64())
        .collect();
    assert_eq!(exposed_ports, vec![8080, 5353]);
    let idle: Vec<String> = v["idle_protected"]
        .as_array()
        .expect("idle")
        .iter()
        .map(|f| {
            format!(
                "{} {}/{}-{}",
                f["rule"].as_str().unwrap_or(""),
                f["proto"].as_str().unwrap_or(""),
                f["first"],
                f["last"]
            )
        })
        .collect();
    assert_eq!(
        idle,
        vec![
            "idle tcp/7100-7110",
            "idle udp/7100-7110",
            "high udp/45050-45050"
        ]
    );
    let eph = &v["ephemeral"];
    assert_eq!(
        eph,
        &serde_json::json!([{"rule": "high", "proto": "udp", "first": 45050, "last": 45050}])
    );

    // The readable table says the same.
    let (code, out, err) = scan(&ns, &["--config", &policy_s]);
    assert_eq!(code, 0, "{err}");
    let row = |port: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(2) == Some(port))
            .unwrap_or_else(|| panic!("no row for port {port}:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("8080")[..5],
        [
            "tcp",
            "0.0.0.0",
            "8080",
            "EXPOSED",
            &format!("probe[{}]", exposed.pid())
        ],
        "{out}"
    );
    assert_eq!(
        row("8081")[..4],
        ["tcp", "127.0.0.1", "8081", "loopback"],
        "{out}"
    );
    assert_eq!(
        row("7000")[..7],
        [
            "tcp",
            "0.0.0.0",
            "7000",
            "protected",
            &format!("probe[{}]", protected.pid()),
            "rule",
            "svc"
        ],
        "{out}"
    );
    assert_eq!(row("2222")[..4], ["tcp", "::", "2222", "failsafe"], "{out}");
    assert!(out.contains("protected ports with nothing listening:\n  tcp/7100-7110   rule idle\n  udp/7100-7110   rule idle\n  udp/45050       rule high\n"), "{out}");
    assert!(
        out.contains("protected ports inside the ephemeral port range"),
        "{out}"
    );
    assert!(
        out.contains("5 listening sockets: 2 exposed, 1 protected, 0 partly protected, 1 failsafe, 1 loopback only"),
        "{out}"
    );

    // Without a policy every reachable socket counts as exposed.
    let (code, out, err) = scan(&ns, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["policy"], Value::Null);
    assert_eq!(v["exposed"].as_array().map(Vec::len), Some(4), "{v:#}");

    // A policy that cannot be used is refused, located.
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nname = \"x\"\nports = [0]\n").expect("write");
    let (code, _, err) = scan(&ns, &["--config", &bad.display().to_string()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{}:3:10: error: port 0 is out of range",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn an_empty_namespace_has_nothing_to_report() {
    need_root!();
    let ns = NetNs::new();
    let (code, out, err) = scan(&ns, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(no listening sockets)"), "{out}");
    assert!(out.contains("0 listening sockets: 0 exposed"), "{out}");
}

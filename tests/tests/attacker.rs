//! Attackers try to borrow the verdict: forged tuples of live flows put on the wire from
//! another interface, a raw-socket sender handing its trust to a stranger, a local process
//! riding on a prefix that holds the host's own address, XDP on a device it cannot parse.
//! Each case also runs the legitimate traffic beside it, which must still get through,
//! and each refusal must be an audit event naming its hook and reason.
//!
//! ```text
//!   c1   10.1.0.2 fd01::2 ──veth── 10.1.0.1 fd01::1 ┐
//!   c2   10.2.0.2 fd02::2 ──veth── 10.2.0.1 fd02::1 ├ host (daemon, listener in CG/srv)
//!   wire 10.3.0.2 fd03::2 ──veth── 10.3.0.1 fd03::1 ┘
//! ```
//! c1 and c2 are "containers" (own namespaces, routed through the host, processes in the
//! attached cgroup tree); wire is the attacker's network.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    bed::write_file,
    daemon::{probe, Daemon, Pins, Probe, TempDir},
    forge::{mac_of, send_frames, sysctl, udp_frame},
    need_root,
    net::{link, route_via_host, Cgroup, NetNs, Veth},
};

const PORT: u16 = 8125;
const TCP_PORT: u16 = 8126;

struct Scene {
    allowed: Cgroup,
    refused: Cgroup,
    srv: Cgroup,
    cg: Cgroup,
    v1: Veth,
    v2: Veth,
    v3: Veth,
    c1: NetNs,
    c2: NetNs,
    wire: NetNs,
    host: NetNs,
}

impl Scene {
    fn new() -> Self {
        let host = NetNs::new();
        let (c1, c2, wire) = (NetNs::new(), NetNs::new(), NetNs::new());
        let v1 = link(&host, &c1, 1);
        let v2 = link(&host, &c2, 2);
        let v3 = link(&host, &wire, 3);
        for (ns, n) in [(&c1, 1), (&c2, 2), (&wire, 3)] {
            route_via_host(ns, n);
        }
        sysctl(&host, "net.ipv4.ip_forward", "1");
        let cg = Cgroup::new();
        Scene {
            allowed: cg.child("allowed"),
            refused: cg.child("refused"),
            srv: cg.child("srv"),
            cg,
            v1,
            v2,
            v3,
            c1,
            c2,
            wire,
            host,
        }
    }

    /// The policy: udp/8125 for the allowed cgroup only; tcp/8126 for the allowed cgroup
    /// and prefixes that hold every address of the host (and of wire).
    fn policy(&self, xdp: bool) -> String {
        let ifaces = if xdp {
            format!("\"{}\", \"{}\", \"{}\"", self.v1.a, self.v2.a, self.v3.a)
        } else {
            String::new()
        };
        format!(
            "[attach]\ninterfaces = [{ifaces}]\ncgroup = \"{cg}\"\n\n[audit]\nrate_per_rule = 100000\n\n\
             [[rule]]\nname = \"statsd\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_cgroups = [\"{allowed}\"]\n\n\
             [[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [{TCP_PORT}]\n\
             allow_from = [\"10.0.0.0/8\", \"fd00::/8\", \"127.0.0.0/8\", \"::1/128\"]\nallow_cgroups = [\"{allowed}\"]\n",
            cg = self.cg.path,
            allowed = self.allowed.path,
        )
    }

    /// A UDP listener on the host that prints every payload it receives.
    fn record(&self) -> Probe {
        let p = Probe::spawn(
            Some(&self.host),
            Some(&self.srv.procs_file()),
            &["udp-record", "::", &PORT.to_string()],
        );
        wait_lines(&p, "the listener", |l| l.iter().any(|s| s == "listening"));
        p
    }
}

fn wait_lines(p: &Probe, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let start = Instant::now();
    loop {
        let lines = p.lines();
        if pred(&lines) {
            return lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {what} within 20 s: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// The listener's payloads that say `word`.
fn received(p: &Probe, word: &str) -> usize {
    p.lines().iter().filter(|l| l.ends_with(word)).count()
}

/// A live flow: `n` datagrams of `LEGIT`, 50 ms apart, from `src:40000` in `ns` (in the
/// allowed cgroup) to `dst`. Returns the sender, already running.
fn legit_flow(s: &Scene, ns: &NetNs, src: &str, dst: &str, n: u32, tag: &str) -> Probe {
    Probe::spawn(
        Some(ns),
        Some(&s.allowed.procs_file()),
        &[
            "udp-from",
            src,
            "40000",
            dst,
            &PORT.to_string(),
            &n.to_string(),
            &format!("LEGIT{tag}"),
        ],
    )
}

/// Forges the live flow `src:40000 -> dst` from `attacker` (out of its end `dev`, towards
/// `host_dev`'s MAC) while `flow` keeps it fresh; then checks that the listener saw the
/// legitimate datagrams and none of the forged ones, and that the daemon reported the
/// forgeries as refusals.
#[allow(clippy::too_many_arguments)]
fn forge_while_live(
    s: &Scene,
    d: &mut Daemon,
    listener: &Probe,
    flow: Probe,
    (attacker, dev, host_dev): (&NetNs, &str, &str),
    src: &str,
    dst: &str,
    tag: &str,
    want_hook: &str,
) {
    // The flow is live once its first datagram has arrived.
    let legit = format!("LEGIT{tag}");
    wait_lines(listener, "a legitimate datagram", |l| {
        l.iter().any(|x| x.ends_with(&legit))
    });
    let forged = format!("FORGED{tag}");
    let frame = udp_frame(
        mac_of(&s.host, host_dev),
        ip(src),
        40000,
        ip(dst),
        PORT,
        forged.as_bytes(),
    );
    send_frames(attacker, dev, frame, 20);
    // The legitimate sender keeps going after the last forged frame left: once its last
    // datagram is in, anything forged that got through would be in too.
    wait_lines(&flow, "the legitimate sender's end", |l| {
        l.iter().any(|x| x == "sent")
    });
    let total = wait_lines(listener, "every legitimate datagram", |l| {
        l.iter().filter(|x| x.ends_with(&legit)).count() >= 40
    });
    assert_eq!(
        received(listener, &forged),
        0,
        "forged datagrams of a live flow got through ({tag}): {total:#?}"
    );
    let ev = d.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "packet"
            && v["verdict"] == "drop"
            && v["src"] == src
            && v["sport"] == 40000
            && v["hook"] == want_hook
            && (want_hook != "xdp" || v["iface"] == host_dev)
    });
    assert_eq!(ev["hook"], want_hook, "{ev}");
    assert_eq!(ev["reason"], "dropped-source", "{ev}");
    assert_eq!(ev["rule"], "statsd", "{ev}");
    if want_hook == "xdp" {
        assert_eq!(ev["iface"], host_dev, "{ev}");
    }
}

fn is_packet(v: &Value) -> bool {
    v["event"] == "packet"
}

/// Forged tuples of live flows, from another interface, refused at XDP and (without XDP)
/// at cgroup ingress: a host-namespace flow over IPv6, a container's flow over IPv4 under
/// each rp_filter setting and over IPv6, and one container forging another's.
fn forged_tuples(xdp: bool) {
    let s = Scene::new();
    let mut d = Daemon::start(&s.host, &s.policy(xdp));
    let listener = s.record();
    let hook = if xdp { "xdp" } else { "cgroup_ingress" };
    let wire = (&s.wire, s.v3.b.as_str(), s.v3.a.as_str());

    // A host process keeps [fd01::1]:40000 -> [fd01::1]:8125 alive over loopback; the
    // outsider forges exactly that tuple (IPv6 has no reverse-path filter).
    let flow = legit_flow(&s, &s.host, "fd01::1", "fd01::1", 60, "h6");
    forge_while_live(
        &s, &mut d, &listener, flow, wire, "fd01::1", "fd01::1", "h6", hook,
    );

    // A container keeps 10.1.0.2:40000 -> 10.1.0.1:8125 alive; the outsider forges its
    // source, with each reverse-path filter setting (strict drops it in the stack anyway).
    for rp in ["0", "2", "1"] {
        sysctl(&s.host, "net.ipv4.conf.all.rp_filter", rp);
        sysctl(&s.host, &format!("net.ipv4.conf.{}.rp_filter", s.v3.a), rp);
        let tag = format!("c4rp{rp}");
        let flow = legit_flow(&s, &s.c1, "10.1.0.2", "10.1.0.1", 60, &tag);
        forge_while_live(
            &s, &mut d, &listener, flow, wire, "10.1.0.2", "10.1.0.1", &tag, hook,
        );
    }
    sysctl(&s.host, "net.ipv4.conf.all.rp_filter", "0");
    sysctl(&s.host, &format!("net.ipv4.conf.{}.rp_filter", s.v2.a), "0");

    // The same container's flow over IPv6.
    let flow = legit_flow(&s, &s.c1, "fd01::2", "fd01::1", 60, "c6");
    forge_while_live(
        &s, &mut d, &listener, flow, wire, "fd01::2", "fd01::1", "c6", hook,
    );

    // Container c2 (in the allowed cgroup too) forges c1's live flow from its own veth.
    let from_c2 = (&s.c2, s.v2.b.as_str(), s.v2.a.as_str());
    for (src, dst, tag) in [("10.1.0.2", "10.1.0.1", "x4"), ("fd01::2", "fd01::1", "x6")] {
        let flow = legit_flow(&s, &s.c1, src, dst, 60, tag);
        forge_while_live(&s, &mut d, &listener, flow, from_c2, src, dst, tag, hook);
    }
    assert!(
        d.events().iter().filter(|v| is_packet(v)).count() > 0,
        "no packet events"
    );
}

#[test]
fn forged_tuples_of_live_flows_are_refused_at_xdp() {
    need_root!();
    forged_tuples(true);
}

#[test]
fn forged_tuples_of_live_flows_are_refused_at_cgroup_ingress() {
    need_root!();
    forged_tuples(false);
}

/// A raw socket in an allowed cgroup sends with a stranger's source; the stranger then
/// uses that very tuple, and is judged by its own address (refused) all the same. From the
/// host's namespace and from a container.
#[test]
fn a_raw_socket_sender_cannot_hand_its_trust_on() {
    need_root!();
    let s = Scene::new();
    let mut d = Daemon::start(&s.host, &s.policy(true));
    let listener = s.record();
    for (ns, dst, tag) in [(&s.host, "10.3.0.1", "h"), (&s.c1, "10.1.0.1", "c")] {
        // The allowed sender's own forged datagrams arrive (it is allowed by its cgroup);
        // they open a flow for 10.3.0.2:40000 -> dst, from its namespace only.
        let raw = format!("RAW{tag}");
        let cgroup_procs = s.allowed.procs_file();
        let keep = std::thread::scope(|t| {
            let sender = t.spawn(|| {
                for _ in 0..30 {
                    let out = probe(
                        Some(ns),
                        Some(&cgroup_procs),
                        &["raw-udp", "10.3.0.2", "40000", dst, &PORT.to_string(), &raw],
                    );
                    assert_eq!(out.trim(), "sent", "raw sender: {out}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            // The stranger, with its real address and the very tuple, while the flow is
            // fresh.
            std::thread::sleep(Duration::from_millis(300));
            let stranger = format!("STRANGER{tag}");
            let out = probe(
                Some(&s.wire),
                None,
                &[
                    "udp-from",
                    "10.3.0.2",
                    "40000",
                    dst,
                    &PORT.to_string(),
                    "10",
                    &stranger,
                ],
            );
            assert_eq!(out.trim(), "sent");
            sender.join().expect("raw sender");
            stranger
        });
        if tag == "h" {
            // Over loopback the allowed process's own datagrams reach the listener.
            wait_lines(&listener, "the raw sender's datagrams", |l| {
                l.iter().any(|x| x.ends_with(&raw))
            });
        }
        assert_eq!(
            received(&listener, &keep),
            0,
            "the stranger rode on a flow its forged source opened ({tag}): {:#?}",
            listener.lines()
        );
        let ev = d.wait_for(Duration::from_secs(10), |v| {
            is_packet(v) && v["verdict"] == "drop" && v["src"] == "10.3.0.2" && v["dst"] == dst
        });
        assert_eq!(ev["hook"], "xdp", "{ev}");
        assert_eq!(ev["reason"], "dropped-source", "{ev}");
    }
}

/// A prefix holding the host's own addresses (10.0.0.0/8, fd00::/8, 127.0.0.0/8, ::1)
/// admits remote senders in it, never a local process outside allow_cgroups: over the
/// host's address, 127.0.0.1 and ::1 it gets EPERM; the allowed cgroup connects.
#[test]
fn a_prefix_holding_the_host_address_admits_no_local_process() {
    need_root!();
    let s = Scene::new();
    let mut d = Daemon::start(&s.host, &s.policy(true));
    let _srv = Probe::spawn(
        Some(&s.host),
        Some(&s.srv.procs_file()),
        &["tcp-listen", "::", &TCP_PORT.to_string()],
    );
    let port = TCP_PORT.to_string();
    let connect = |ns: &NetNs, cg: Option<&Cgroup>, dst: &str| {
        probe(
            Some(ns),
            cg.map(Cgroup::procs_file).as_deref(),
            &["tcp-connect", dst, &port, "3000"],
        )
        .trim()
        .to_string()
    };
    // The listener is up once the allowed cgroup connects.
    let start = Instant::now();
    while connect(&s.host, Some(&s.allowed), "127.0.0.1") != "connected" {
        assert!(start.elapsed() < Duration::from_secs(10), "listener not up");
    }
    for dst in [
        "10.1.0.1",
        "fd01::1",
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
    ] {
        assert_eq!(
            connect(&s.host, Some(&s.refused), dst),
            "eperm",
            "a local process outside allow_cgroups reached {dst}"
        );
        // Outside the attached subtree nothing judges the sender; the receiving socket's
        // program refuses what arrives over loopback without a flow its cgroup opened.
        assert_eq!(
            connect(&s.host, None, dst),
            "timeout",
            "a local process outside the attached cgroup reached {dst}"
        );
        assert_eq!(
            connect(&s.host, Some(&s.allowed), dst),
            "connected",
            "the allowed cgroup to {dst}"
        );
    }
    // A remote sender in the prefix still gets in, at XDP and at the socket.
    assert_eq!(connect(&s.wire, None, "10.3.0.1"), "connected");
    assert_eq!(connect(&s.wire, None, "fd03::1"), "connected");
    let ev = d.wait_for(Duration::from_secs(10), |v| {
        is_packet(v) && v["verdict"] == "drop" && v["dport"] == TCP_PORT
    });
    assert_eq!(ev["hook"], "cgroup_connect", "{ev}");
    assert_eq!(ev["reason"], "dropped-source", "{ev}");
    assert_eq!(ev["rule"], "api", "{ev}");
    let ev = d.wait_for(Duration::from_secs(10), |v| {
        is_packet(v) && v["verdict"] == "drop" && v["hook"] == "cgroup_ingress"
    });
    assert_eq!(ev["reason"], "dropped-source", "{ev}");
    assert_eq!(ev["dport"], TCP_PORT, "{ev}");
}

/// XDP cannot parse a layer-3 device: named outright, the daemon refuses to start and
/// says which device and why; matched by a glob, it is skipped and `status` says so.
#[test]
fn xdp_is_refused_on_devices_without_an_ethernet_header() {
    need_root!();
    let s = Scene::new();
    let tun = testbed::unique("tun");
    s.host.ip(&["tuntap", "add", "dev", &tun, "mode", "tun"]);
    s.host.ip(&["link", "set", &tun, "up"]);
    let cg = format!("cgroup = \"{}\"\n", s.cg.path);
    let rule = "[[rule]]\nname = \"pg\"\nports = [5432]\nallow_from = [\"10.1.0.0/24\"]\n";
    let dir = TempDir::new();
    let named = format!("[attach]\ninterfaces = [\"{tun}\"]\n{cg}\n{rule}");
    let policy = write_file(&dir.0, "named.toml", &named);
    let pins = Pins::new();
    let mut cmd = std::process::Command::new(testbed::enforcer_bin());
    cmd.args(["run", "--config"])
        .arg(&policy)
        .arg("--pin-dir")
        .arg(&pins.0)
        .arg("--socket")
        .arg(dir.0.join("sock"))
        .arg("--state-dir")
        .arg(dir.0.join("state"));
    testbed::daemon::place(&mut cmd, Some(&s.host.path()), None);
    let out = cmd.output().expect("run enforcer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with XDP on {tun}: {err}");
    assert!(
        err.contains(&tun) && err.contains("layer-3") && err.contains("Ethernet header"),
        "the refusal must name the device and why: {err}"
    );
    // A glob that matches it and the veths: the veths get XDP, the tun is skipped.
    let globbed = format!(
        "[attach]\ninterfaces = [\"{}\", \"tun*\"]\n{cg}\n{rule}",
        s.v1.a
    );
    let d = Daemon::start(&s.host, &globbed);
    let st = d.status();
    let attached: Vec<&str> = st["programs"]["xdp"]["attached"]
        .as_array()
        .expect("attached")
        .iter()
        .filter_map(|a| a["iface"].as_str())
        .collect();
    assert_eq!(attached, vec![s.v1.a.as_str()], "{st}");
    let warned = st["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(Value::as_str)
        .any(|w| w.contains(&tun) && w.contains("not attached"));
    assert!(warned, "status says nothing of the skipped {tun}: {st}");
}

/// `enforcer ARGS` run inside `ns`: (exit code, stdout + stderr).
fn enforcer_in(ns: &NetNs, args: &[&str]) -> (i32, String) {
    let mut cmd = std::process::Command::new(testbed::enforcer_bin());
    cmd.args(args);
    testbed::daemon::place(&mut cmd, Some(&ns.path()), None);
    let out = cmd.output().expect("run enforcer");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What the programs cannot guard is said by `check`, `scan` and `status`: a listener on a
/// protected port whose process is outside the attached cgroup, and a protected UDP port
/// served by a kernel tunnel socket (VXLAN here).
#[test]
fn coverage_gaps_are_said_out_loud() {
    need_root!();
    let s = Scene::new();
    let elsewhere = Cgroup::new();
    let vx = testbed::unique("vx");
    s.host.ip(&[
        "link", "add", &vx, "type", "vxlan", "id", "42", "dstport", "4789", "local", "10.1.0.1",
    ]);
    s.host.ip(&["link", "set", &vx, "up"]);
    let _outside = Probe::spawn(
        Some(&s.host),
        Some(&elsewhere.procs_file()),
        &["tcp-listen", "::", &TCP_PORT.to_string()],
    );
    wait_lines(&_outside, "the listener", |l| {
        l.iter().any(|x| x == "listening")
    });
    let policy = format!(
        "{}\n[[rule]]\nname = \"vxlan\"\nprotocol = \"udp\"\nports = [4789]\nallow_from = [\"10.1.0.0/24\"]\n",
        s.policy(true)
    );
    let dir = TempDir::new();
    let file = write_file(&dir.0, "policy.toml", &policy);
    let file = file.display().to_string();
    let (code, out) = enforcer_in(&s.host, &["check", "--config", &file]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("tcp/{TCP_PORT}"))
            && out.contains(&format!("outside the attached cgroup {}", s.cg.path))
            && out.contains("local senders outside"),
        "check says nothing of the listener outside the attached cgroup: {out}"
    );
    assert!(
        out.contains("udp/4789") && out.contains("kernel tunnel socket"),
        "check says nothing of the tunnel socket: {out}"
    );
    let (code, out) = enforcer_in(&s.host, &["scan", "--config", &file]);
    assert_eq!(code, 0, "{out}");
    let partly: Vec<&str> = out.lines().filter(|l| l.contains("PARTLY")).collect();
    assert_eq!(partly.len(), 2, "scan still calls them protected: {out}");
    let d = Daemon::start(&s.host, &policy);
    let start = Instant::now();
    loop {
        let st = d.status();
        let w = st["warnings"].to_string();
        if w.contains("kernel tunnel socket") && w.contains("outside the attached cgroup") {
            assert!(w.contains(&format!("XDP on {}", s.v1.a)), "{w}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "status names no coverage gap: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

//! The parser's cases (issue 3), one table row each, through the loaded XDP, cgroup
//! ingress and cgroup egress programs (BPF_PROG_TEST_RUN). Every row states, per program,
//! the verdict and reason, and the rule that decided; the check asserts
//! (a) the return value,
//! (b) that exactly the expected (hook, reason) counter moved, by one (and the rule's
//!     counter for that verdict when a rule decided),
//! (c) the audit record when one is due (refusals always; allowed packets with
//!     `[audit] allowed = true`): verdict, reason, rule, hook, protocol, family,
//!     addresses, ports, generation, length; and no record otherwise,
//! (d) that the reference model (`TestKernel::model`) decides the same.
//!
//! `a_wrong_expectation_fails` makes sure the check can fail.

use std::net::IpAddr;

use enforcer::{kernel::counters, policy::parse_str};
use enforcer_common::{
    consts::*,
    event::{PacketEvent, EVENT_PACKET},
    model::{self, Context, Judgement},
    reason::{Hook, Reason, Verdict},
};
use testbed::{
    is_root,
    kernel::{dropped, model_l3, Prog, TestKernel, SKB_DROP, SKB_PASS, XDP_DROP, XDP_PASS},
    packets::{
        hex, test_run_refuses, try_run, Ext, Packet, ETH_P_ARP, ETH_P_LLDP, IPPROTO_ESP,
        IPPROTO_GRE, IPPROTO_NONE, IPPROTO_SCTP,
    },
};
use Reason::*;

// Addresses: allowed and refused sources, the host's addresses and another host's.
const A4: &str = "10.1.1.1";
const R4: &str = "203.0.113.5";
const L4: &str = "192.0.2.1";
const N4: &str = "192.0.2.99";
/// The host's subnet-directed broadcast (the daemon lists it with the host's addresses).
const B4: &str = "192.0.2.255";
const A6: &str = "fd00::5";
const R6: &str = "2001:db8:ffff::5";
const L6: &str = "2001:db8::1";
const N6: &str = "2001:db8::99";

fn local_addrs() -> Vec<IpAddr> {
    [L4, B4, L6].iter().map(|a| ip(a)).collect()
}

/// The `[audit]` settings of every policy here: no event rate limits, so "an event is due"
/// never depends on timing (the limiter has its own tests).
const UNLIMITED: &str = "rate_per_rule = 0\nrate_global = 0\n";

/// Policies: `mode` (a top-level key, or ""), whether allowed packets are reported, rules.
fn policy(mode: &str, report_allowed: bool, rules: &str) -> String {
    format!("{mode}\n[audit]\nallowed = {report_allowed}\n{UNLIMITED}{rules}")
}

/// The policy most tables use: enforce mode, refusals reported.
fn main_policy() -> String {
    policy("", false, RULES)
}

/// Rule indexes: pg 0, narrow 1, dns 2, open 3, ssh-range 4, metrics 5, ops 6.
const RULES: &str = r#"
[[rule]]
name = "pg"
protocol = "tcp"
ports = [5432, "6000-6010"]
allow_from = ["10.0.0.0/8", "fd00::/8"]

[[rule]]
name = "narrow"
protocol = "tcp"
ports = [5432]
allow_from = ["10.1.2.3/32", "fd00::1/128"]

[[rule]]
name = "dns"
protocol = "udp"
ports = [53]
allow_from = ["192.168.1.0/24", "2001:db8:1::/48"]

[[rule]]
name = "open"
ports = [8080]
allow_from = ["0.0.0.0/0", "::/0"]

# Covers the failsafe port 22: the failsafe wins there.
[[rule]]
name = "ssh-range"
protocol = "tcp"
ports = ["20-23"]
allow_from = ["10.0.0.0/8"]

[[rule]]
name = "metrics"
protocol = "tcp"
ports = [9000, 9100]
allow_from = ["10.0.0.0/8"]
mode = "audit"

# Shares 9100 with the audit rule "metrics": an enforcing rule makes the port enforce.
[[rule]]
name = "ops"
protocol = "tcp"
ports = [9100]
allow_from = ["172.16.0.0/12"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn tcp(src: &str, dst: &str, dport: u16) -> Packet {
    Packet::tcp(ip(src), ip(dst), 40000, dport)
}

fn udp(src: &str, dst: &str, dport: u16) -> Packet {
    Packet::udp(ip(src), ip(dst), 40001, dport)
}

/// What one program must do with a row's frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Pass(Reason),
    Drop(Reason),
    WouldDrop(Reason),
    /// test_run refuses the input (see `test_run_refuses`); the model must say this (and
    /// a kernel that runs it anyway must do it).
    Refused(Verdict, Reason),
    /// A host-namespace sender whose source the rules allow: refused all the same (a host
    /// process is judged by its cgroup, never by its address), in its port's mode and
    /// naming the port's first rule.
    HostSender,
}

/// Input test_run refuses, in enforce mode.
fn refused_input(r: Reason) -> Out {
    Out::Refused(
        if r.refuses() {
            Verdict::Drop
        } else {
            Verdict::Allow
        },
        r,
    )
}

impl Out {
    fn reason(self) -> Reason {
        match self {
            Out::Pass(r) | Out::Drop(r) | Out::WouldDrop(r) | Out::Refused(_, r) => r,
            Out::HostSender => Denied,
        }
    }

    fn verdict(self) -> Verdict {
        match self {
            Out::Pass(_) => Verdict::Allow,
            Out::Drop(_) => Verdict::Drop,
            Out::WouldDrop(_) => Verdict::WouldDrop,
            Out::Refused(v, _) => v,
            Out::HostSender => Verdict::Drop,
        }
    }
}

const PROGS: [Prog; 3] = [Prog::Xdp, Prog::Ingress, Prog::Egress];

/// The event fields a row expects besides verdict, reason and rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EvSpec {
    family: u8,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
}

fn addr_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[derive(Clone, Debug)]
struct Row {
    name: String,
    frame: Vec<u8>,
    /// Per program: XDP, ingress, egress.
    out: [Option<Out>; 3],
    /// The rule named in the event and by the model, for judged outcomes.
    rule: Option<&'static str>,
    ev: EvSpec,
}

/// A row for `p`, expecting in its event what the builder put in the packet.
fn row(name: impl Into<String>, p: &Packet) -> Row {
    let (src, dst) = p
        .addrs()
        .map_or(([0; 16], [0; 16]), |(s, d)| (addr_bytes(s), addr_bytes(d)));
    let (sport, dport) = p.l4.ports().unwrap_or((0, 0));
    Row {
        name: name.into(),
        frame: p.build(),
        out: [None; 3],
        rule: None,
        ev: EvSpec {
            family: p.family(),
            proto: p.l4.proto(),
            src,
            dst,
            sport,
            dport,
        },
    }
}

/// A row for raw bytes.
fn raw(name: impl Into<String>, frame: Vec<u8>) -> Row {
    Row {
        name: name.into(),
        frame,
        out: [None; 3],
        rule: None,
        ev: EvSpec {
            family: 0,
            proto: 0,
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
        },
    }
}

impl Row {
    /// The same outcome at every hook; but a source-allowed packet sent by a socket of the
    /// host's own namespace (test_run's egress socket) is not allowed by its source.
    fn all(mut self, o: Out) -> Self {
        let egress = if o == allowed() { Out::HostSender } else { o };
        self.out = [Some(o), Some(o), Some(egress)];
        self
    }
    fn xdp(mut self, o: Out) -> Self {
        self.out[0] = Some(o);
        self
    }
    fn ingress(mut self, o: Out) -> Self {
        self.out[1] = Some(o);
        self
    }
    fn egress(mut self, o: Out) -> Self {
        self.out[2] = Some(o);
        self
    }
    /// Both cgroup programs.
    fn cgroup(self, o: Out) -> Self {
        self.ingress(o).egress(o)
    }
    fn rule(mut self, name: &'static str) -> Self {
        self.rule = Some(name);
        self
    }
    /// The parser stopped before the ports: none in the event.
    fn no_ports(mut self) -> Self {
        self.ev.sport = 0;
        self.ev.dport = 0;
        self
    }
    /// The protocol (or extension header) the parser stopped at.
    fn ev_proto(mut self, proto: u8) -> Self {
        self.ev.proto = proto;
        self
    }
    /// The IP header itself was refused: the event carries only the family.
    fn bare(mut self) -> Self {
        self.ev = EvSpec {
            family: self.ev.family,
            proto: 0,
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
        };
        self
    }
    fn family(mut self, family: u8) -> Self {
        self.ev.family = family;
        self
    }
}

use Out::{Drop as D, Pass as P, WouldDrop as W};

/// A loaded kernel and what the rows are checked against.
struct Bench {
    k: TestKernel,
    /// Whether test_run's socket is in the host's namespace (the model's context).
    host_netns: bool,
}

impl Bench {
    fn new(policy: &str) -> Bench {
        Bench {
            k: TestKernel::new(policy, &local_addrs()),
            host_netns: true,
        }
    }

    fn model(&self, prog: Prog, frame: &[u8]) -> Judgement {
        if self.host_netns {
            return self.k.model(prog, frame);
        }
        let parsed = match prog {
            Prog::Xdp => model::parse_frame(frame),
            _ => model_l3(frame),
        };
        let ctx = Context {
            socket_in_host_netns: false,
            ..Context::remote(prog.hook(), &self.k.local_addrs)
        };
        model::judge(&self.k.policy.verdict, &ctx, &parsed)
    }

    fn rule_index(&self, name: &str) -> usize {
        self.k
            .policy
            .verdict
            .rules
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("no rule {name:?} in the policy"))
    }

    /// Checks one row on every program it names; all problems, or Ok.
    fn check(&mut self, row: &Row) -> Result<(), String> {
        let mut problems = Vec::new();
        for (i, prog) in PROGS.into_iter().enumerate() {
            let Some(want) = row.out[i] else { continue };
            if let Err(e) = self.check_prog(prog, want, row) {
                problems.push(format!("  {}: {e}", prog.hook().name()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "row {:?}:\n{}\n  frame ({} bytes):\n{}",
                row.name,
                problems.join("\n"),
                row.frame.len(),
                hex(&row.frame)
            ))
        }
    }

    fn check_prog(&mut self, prog: Prog, want: Out, row: &Row) -> Result<(), String> {
        let hook = prog.hook();
        let (want, host_sender_rule) = match want {
            Out::HostSender => {
                let covering =
                    |r: &&enforcer_common::model::Rule| r.covers(row.ev.proto, row.ev.dport);
                let rules = &self.k.policy.verdict.rules;
                let first = rules
                    .iter()
                    .position(|r| covering(&r))
                    .expect("a host-sender row names a protected port");
                let enforce = rules
                    .iter()
                    .filter(covering)
                    .any(|r| r.mode == enforcer_common::model::Mode::Enforce);
                (if enforce { D(Denied) } else { W(Denied) }, Some(first))
            }
            w => (w, None),
        };
        let want_rule = match row.rule {
            _ if host_sender_rule.is_some() => host_sender_rule,
            Some(name) if want.reason().is_judged() => Some(self.rule_index(name)),
            _ => None,
        };
        let mut errs = Vec::new();

        // (d) the model.
        let m = self.model(prog, &row.frame);
        if (m.verdict, m.reason, m.rule) != (want.verdict(), want.reason(), want_rule) {
            errs.push(format!(
                "model says {} {} rule {:?}, the row wants {} {} rule {:?}",
                m.verdict.name(),
                m.reason.name(),
                m.rule,
                want.verdict().name(),
                want.reason().name(),
                want_rule
            ));
        }

        let before = self.k.reason_counts();
        let rule_before =
            want_rule.map(|r| counters::by_rule(&self.k.loaded.maps, r as u32, want.verdict()));
        let ret = match try_run(&self.k, prog, &row.frame) {
            Ok(ret) => ret,
            Err(e) => {
                // Only input test_run is known to refuse, and only where the row says so.
                match (want, test_run_refuses(prog, &row.frame)) {
                    (Out::Refused(..), Some(_)) => {}
                    _ => errs.push(format!("test_run refused the frame: {e}")),
                }
                if !self.k.drain_events().is_empty() {
                    errs.push("events from a refused run".into());
                }
                return if errs.is_empty() {
                    Ok(())
                } else {
                    Err(errs.join("; "))
                };
            }
        };
        if let Out::Refused(..) = want {
            if test_run_refuses(prog, &row.frame).is_none() {
                errs.push("the row expects test_run to refuse input it takes".into());
            }
        }

        // (a) the verdict.
        let valid = match prog {
            Prog::Xdp => [XDP_DROP, XDP_PASS].contains(&ret),
            _ => [SKB_DROP, SKB_PASS].contains(&ret),
        };
        if !valid || dropped(prog, ret) != (want.verdict() == Verdict::Drop) {
            errs.push(format!(
                "returned {ret}, the row wants {}",
                want.verdict().name()
            ));
        }

        // (b) exactly one counter moved, by one.
        let after = self.k.reason_counts();
        let moved: Vec<_> = after
            .iter()
            .filter(|(key, n)| before.get(key) != Some(n))
            .map(|(&(h, r), n)| {
                (
                    h.name(),
                    r.name(),
                    n - before.get(&(h, r)).copied().unwrap_or(0),
                )
            })
            .collect();
        if moved != [(hook.name(), want.reason().name(), 1)] {
            errs.push(format!(
                "counters moved {moved:?}, the row wants ({}, {}) by 1",
                hook.name(),
                want.reason().name()
            ));
        }
        if let (Some(r), Some(b)) = (want_rule, rule_before) {
            let a = counters::by_rule(&self.k.loaded.maps, r as u32, want.verdict());
            if a != b + 1 {
                errs.push(format!(
                    "rule {r} counter for {} went {b} -> {a}",
                    want.verdict().name()
                ));
            }
        }

        // (c) the audit record.
        let report_allowed = self.k.policy.report_allowed;
        let due = want.reason().is_judged() && (want.verdict() != Verdict::Allow || report_allowed);
        let events = self.k.drain_events();
        match (due, events.as_slice()) {
            (false, []) => {}
            (false, evs) => errs.push(format!("{} events, none due: {evs:?}", evs.len())),
            (true, [ev]) => {
                let l3_off = if prog == Prog::Xdp { 0 } else { ETH_HLEN };
                let want_ev = PacketEvent {
                    ts_ns: ev.ts_ns,
                    generation: self.k.generation(),
                    cgroup_id: ev.cgroup_id,
                    pid_tgid: ev.pid_tgid,
                    comm: ev.comm,
                    src: row.ev.src,
                    dst: row.ev.dst,
                    ifindex: ev.ifindex,
                    rule: want_rule.map_or(NO_RULE, |r| r as u32),
                    pkt_len: (row.frame.len() - l3_off) as u32,
                    sport: row.ev.sport,
                    dport: row.ev.dport,
                    kind: EVENT_PACKET,
                    verdict: want.verdict() as u8,
                    reason: want.reason() as u8,
                    hook: hook as u8,
                    proto: row.ev.proto,
                    family: row.ev.family,
                    _pad: [0; 2],
                };
                if *ev != want_ev {
                    errs.push(format!(
                        "event\n      {ev:?}\n    the row wants\n      {want_ev:?}"
                    ));
                }
                if ev.ts_ns == 0 {
                    errs.push("event without a timestamp".into());
                }
            }
            (true, evs) => errs.push(format!("{} events, one due: {evs:?}", evs.len())),
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("\n    "))
        }
    }

    fn check_all(&mut self, rows: &[Row]) {
        let failures: Vec<String> = rows.iter().filter_map(|r| self.check(r).err()).collect();
        let runs: usize = rows.iter().map(|r| r.out.iter().flatten().count()).sum();
        println!(
            "{} rows, {runs} program runs checked, {} failed",
            rows.len(),
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "{} of {} rows failed:\n{}",
            failures.len(),
            rows.len(),
            failures.join("\n")
        );
    }
}

fn denied() -> Out {
    D(Denied)
}
fn allowed() -> Out {
    P(AllowedSource)
}

/// Link layer: runts, VLAN tags, non-IP EtherTypes.
fn l2_rows() -> Vec<Row> {
    let refused = || tcp(R4, L4, 5432);
    vec![
        raw("ethernet: empty frame", vec![]).all(refused_input(NotIp)),
        raw("ethernet: 13 bytes", refused().build()[..13].to_vec()).all(refused_input(NotIp)),
        row(
            "ethernet: header only, ARP EtherType",
            &Packet::ethertype(ETH_P_ARP, vec![]),
        )
        .all(P(NotIp)),
        row(
            "ethernet: header only, IPv4 EtherType",
            &refused().truncate(14),
        )
        .xdp(D(Malformed))
        .cgroup(refused_input(Malformed))
        .bare(),
        row(
            "ethernet: header only, IPv6 EtherType",
            &tcp(R6, L6, 5432).truncate(14),
        )
        .xdp(D(Malformed))
        .cgroup(refused_input(Malformed))
        .bare(),
        row(
            "ethernet: 19 bytes of IPv4 header",
            &refused().truncate(14 + 19),
        )
        .xdp(D(Malformed))
        .cgroup(refused_input(Malformed))
        .bare(),
        row(
            "ethernet: 39 bytes of IPv6 header",
            &tcp(R6, L6, 5432).truncate(14 + 39),
        )
        .xdp(D(Malformed))
        .cgroup(refused_input(Malformed))
        .bare(),
        row(
            "vlan: 802.1Q tag cut off before its EtherType",
            &refused().vlan(ETH_P_8021Q, 5).truncate(16),
        )
        .all(P(NotIp)),
        row(
            "vlan: 802.1Q, refused source",
            &refused().vlan(ETH_P_8021Q, 100),
        )
        .xdp(denied())
        .cgroup(P(NotIp))
        .rule("pg"),
        row(
            "vlan: 802.1ad, allowed source",
            &tcp(A4, L4, 5432).vlan(ETH_P_8021AD, 100),
        )
        .xdp(allowed())
        .cgroup(P(NotIp))
        .rule("pg"),
        row(
            "vlan: priority tag (VLAN 0), IPv6 refused",
            &tcp(R6, L6, 5432).vlan(ETH_P_8021Q, 0),
        )
        .xdp(denied())
        .cgroup(P(NotIp))
        .rule("pg"),
        row(
            "vlan: 802.1ad + 802.1Q, refused",
            &refused().vlan(ETH_P_8021AD, 10).vlan(ETH_P_8021Q, 20),
        )
        .xdp(denied())
        .cgroup(P(NotIp))
        .rule("pg"),
        row(
            "vlan: 802.1Q + 802.1Q, IPv6 allowed",
            &tcp(A6, L6, 6000)
                .vlan(ETH_P_8021Q, 10)
                .vlan(ETH_P_8021Q, 20),
        )
        .xdp(allowed())
        .cgroup(P(NotIp))
        .rule("pg"),
        row(
            "vlan: 2 tags, UDP to dns refused",
            &udp(R4, L4, 53).vlan(ETH_P_8021AD, 1).vlan(ETH_P_8021Q, 2),
        )
        .xdp(denied())
        .cgroup(P(NotIp))
        .rule("dns"),
        row(
            "vlan: 3 tags pass XDP as not-ip (MAX_VLAN_TAGS = 2)",
            &refused()
                .vlan(ETH_P_8021AD, 10)
                .vlan(ETH_P_8021Q, 20)
                .vlan(ETH_P_8021Q, 30),
        )
        .all(P(NotIp)),
        row(
            "vlan: 3 priority tags pass XDP as not-ip",
            &tcp(R6, L6, 5432)
                .vlan(ETH_P_8021Q, 0)
                .vlan(ETH_P_8021Q, 0)
                .vlan(ETH_P_8021Q, 0),
        )
        .all(P(NotIp)),
        row(
            "vlan: 2 tags, IPv4 header cut short",
            &refused()
                .vlan(ETH_P_8021AD, 1)
                .vlan(ETH_P_8021Q, 2)
                .truncate(22 + 10),
        )
        .xdp(D(Malformed))
        .cgroup(P(NotIp))
        .bare(),
        row("vlan: unknown TPID 0x9100 is not walked", &{
            let mut p = refused();
            p.vlans.push((0x9100, 5));
            p
        })
        .all(P(NotIp)),
        row(
            "ethertype: LLDP",
            &Packet::ethertype(ETH_P_LLDP, vec![0x02; 40]),
        )
        .all(P(NotIp)),
        row(
            "ethertype: 802.3 length field",
            &Packet::ethertype(0x0040, vec![0xAA; 64]),
        )
        .all(P(NotIp)),
        row(
            "ethertype: garbage 0xffff",
            &Packet::ethertype(0xffff, vec![0x45; 64]),
        )
        .all(P(NotIp)),
        row(
            "arp: request for a host address",
            &Packet::arp("192.0.2.50".parse().unwrap(), L4.parse().unwrap()),
        )
        .all(P(NotIp)),
    ]
}

/// IPv4 header: IHL, total length, version.
fn ipv4_rows() -> Vec<Row> {
    let refused = || tcp(R4, L4, 5432);
    let mut rows = Vec::new();
    for ihl in 5..=15u8 {
        let opts = (ihl as usize - 5) * 4;
        rows.push(
            row(
                format!("ipv4: IHL {ihl} ({opts} option bytes), refused"),
                &refused().v4_options(opts),
            )
            .all(denied())
            .rule("pg"),
        );
        rows.push(
            row(
                format!("ipv4: IHL {ihl}, allowed"),
                &tcp(A4, L4, 5432).v4_options(opts),
            )
            .all(allowed())
            .rule("pg"),
        );
    }
    for ihl in 0..5u8 {
        rows.push(
            row(
                format!("ipv4: IHL {ihl} (< 5)"),
                &refused().v4(|h| h.ihl = Some(ihl)),
            )
            .all(D(Malformed))
            .bare(),
        );
    }
    rows.extend([
        row(
            "ipv4: IHL 15 beyond the packet",
            &udp(R4, L4, 53).payload(0).v4(|h| h.ihl = Some(15)),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "ipv4: IHL 7, option bytes cut off by the frame",
            &refused().v4_options(8).cut_l4(0).truncate(14 + 24),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "ipv4: total length 19 (< header)",
            &refused().v4(|h| h.total_len = Some(19)),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "ipv4: total length 0 < IHL 8",
            &refused().v4_options(12).v4(|h| h.total_len = Some(28)),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "ipv4: total length = header, protocol TCP (no TCP header)",
            &refused().v4(|h| h.total_len = Some(20)),
        )
        .all(D(Malformed))
        .no_ports(),
        row(
            "ipv4: total length one past the buffer",
            &refused().v4(|h| h.total_len = Some(41)),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "ipv4: total length 65535",
            &refused().v4(|h| h.total_len = Some(65535)),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "ipv4: frame cut inside the TCP header (lengths overrun)",
            &refused().truncate(14 + 20 + 10),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "ipv4: total length 0 (BIG TCP/GSO) judged on the buffer, refused",
            &refused().v4(|h| h.total_len = Some(0)),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv4: total length 0, allowed",
            &tcp(A4, L4, 5432).v4(|h| h.total_len = Some(0)),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "ipv4: version 6 under the IPv4 EtherType",
            &refused().v4(|h| h.version = 6),
        )
        .all(D(Malformed))
        .bare(),
        row("ipv4: version 4 under the IPv6 EtherType", &{
            let mut p = refused();
            p.ethertype = Some(ETH_P_IPV6);
            p
        })
        .all(D(Malformed))
        .bare()
        .family(AF_INET6),
        row(
            "ipv4: Ethernet padding after the total length",
            &refused().trailer(20),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv4: total length cuts the TCP header, padding would complete it",
            &refused().cut_l4(10).trailer(16),
        )
        .all(D(Malformed))
        .rule("pg"),
        // A bad IP header is dropped whatever its destination (README, PARSER.md): ip_rcv
        // drops it for any destination before routing, and its destination is not to be
        // trusted. Truncated transport headers to another host pass (below).
        row(
            "ipv4: malformed header to another host is dropped too",
            &tcp(R4, N4, 5432).v4(|h| h.ihl = Some(3)),
        )
        .all(D(Malformed))
        .bare(),
    ]);
    rows
}

/// IPv6 header and extension header chains.
fn ipv6_rows() -> Vec<Row> {
    let refused = || tcp(R6, L6, 5432);
    let chain = |p: Packet, n: usize| {
        let kinds = [
            Ext::DstOpts(0),
            Ext::HopByHop(1),
            Ext::Routing(0),
            Ext::Ah(4),
        ];
        (0..n).fold(p, |p, i| p.ext(kinds[i % kinds.len()].clone()))
    };
    let mut rows = Vec::new();
    for e in Ext::all_kinds() {
        rows.push(
            row(
                format!("ipv6: {} header, refused", e.name()),
                &refused().ext(e.clone()),
            )
            .all(denied())
            .rule("pg"),
        );
        rows.push(
            row(
                format!("ipv6: {} header, allowed", e.name()),
                &tcp(A6, L6, 5432).ext(e.clone()),
            )
            .all(allowed())
            .rule("pg"),
        );
        rows.push(
            row(
                format!("ipv6: {} header, UDP to dns refused", e.name()),
                &udp(R6, L6, 53).ext(e.clone()),
            )
            .all(denied())
            .rule("dns"),
        );
    }
    // The 9th header's kind is what the parser stopped at.
    let ninth = Ext::DstOpts(0).kind();
    rows.extend([
        row(
            "ipv6: hop-by-hop, routing, fragment, destination options, AH",
            &refused()
                .ext(Ext::HopByHop(0))
                .ext(Ext::Routing(2))
                .ext(Ext::Fragment {
                    offset: 0,
                    more: false,
                })
                .ext(Ext::DstOpts(1))
                .ext(Ext::Ah(4)),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv6: 8 extension headers (MAX_EXT_HDRS), refused",
            &chain(refused(), MAX_EXT_HDRS),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv6: 8 extension headers, allowed",
            &chain(tcp(A6, L6, 5432), MAX_EXT_HDRS),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "ipv6: 9 extension headers to a host address, even from an allowed source",
            &chain(tcp(A6, L6, 5432), 9),
        )
        .all(D(ExtChainTooLong))
        .ev_proto(ninth)
        .no_ports(),
        row(
            "ipv6: 9 extension headers to an unprotected port",
            &chain(tcp(R6, L6, 80), 9),
        )
        .all(D(ExtChainTooLong))
        .ev_proto(ninth)
        .no_ports(),
        row(
            "ipv6: 9 extension headers to another host",
            &chain(tcp(R6, N6, 5432), 9),
        )
        .xdp(P(NotLocal))
        .ingress(D(ExtChainTooLong))
        .egress(P(NotLocal))
        .ev_proto(ninth)
        .no_ports(),
        row(
            "ipv6: 9 extension headers to a multicast group",
            &chain(udp(R6, "ff02::1", 53), 9),
        )
        .all(D(ExtChainTooLong))
        .ev_proto(ninth)
        .no_ports(),
        row("ipv6: 12 extension headers", &chain(refused(), 12))
            .all(D(ExtChainTooLong))
            .ev_proto(ninth)
            .no_ports(),
        row(
            "ipv6: payload length ends inside the 2nd extension header",
            &refused()
                .ext(Ext::DstOpts(0))
                .ext(Ext::Routing(0))
                .v6(|h| h.payload_len = Some(9)),
        )
        .all(D(Malformed))
        .ev_proto(IPPROTO_ROUTING)
        .no_ports(),
        row(
            "ipv6: extension header cut off at the end of the packet",
            &refused()
                .ext(Ext::HopByHop(0))
                .ext(Ext::Raw {
                    kind: IPPROTO_DSTOPTS,
                    bytes: vec![0],
                })
                .cut_l4(0),
        )
        .all(D(Malformed))
        .ev_proto(IPPROTO_DSTOPTS)
        .no_ports(),
        row(
            "ipv6: extension header length runs past the packet",
            &refused().ext(Ext::Raw {
                kind: IPPROTO_DSTOPTS,
                bytes: vec![0, 200, 0, 0, 0, 0, 0, 0],
            }),
        )
        .all(D(Malformed))
        .no_ports(),
        row(
            "ipv6: two fragment headers",
            &refused()
                .ext(Ext::Fragment {
                    offset: 0,
                    more: false,
                })
                .ext(Ext::Fragment {
                    offset: 0,
                    more: false,
                }),
        )
        .all(D(Malformed))
        .ev_proto(IPPROTO_FRAGMENT)
        .no_ports(),
        row(
            "ipv6: chain ending in no next header",
            &Packet::proto(ip(R6), ip(L6), IPPROTO_NONE, 0).ext(Ext::DstOpts(0)),
        )
        .all(P(NotTcpUdp)),
        row(
            "ipv6: hop-by-hop then ICMPv6",
            &Packet::ping(ip(R6), ip(L6)).ext(Ext::HopByHop(0)),
        )
        .all(P(NotTcpUdp)),
        row("ipv6: ESP", &Packet::proto(ip(R6), ip(L6), IPPROTO_ESP, 32)).all(P(NotTcpUdp)),
        row(
            "ipv6: payload length one past the buffer",
            &refused().v6(|h| h.payload_len = Some(21)),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "ipv6: payload length 0 (jumbo/BIG TCP) judged on the buffer",
            &refused().v6(|h| h.payload_len = Some(0)),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv6: version 4 under the IPv6 EtherType",
            &refused().v6(|h| h.version = 4),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "ipv6: padding after the payload length",
            &refused().trailer(12),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv6: TCP header cut to 10 bytes, protected",
            &refused().cut_l4(10),
        )
        .all(D(Malformed))
        .rule("pg"),
        row(
            "ipv6: UDP header cut to 6 bytes, unprotected",
            &udp(R6, L6, 5353).cut_l4(6),
        )
        .all(P(NotProtected)),
    ]);
    rows
}

/// IPv4 and IPv6 fragments.
fn fragment_rows() -> Vec<Row> {
    let first4 = |src: &str, dst: &str, port: u16| tcp(src, dst, port).frag4(0, true).payload(16);
    let first6 = |src: &str, dst: &str, port: u16| {
        tcp(src, dst, port)
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .payload(16)
    };
    let later4 =
        |proto: u8, offset: u16| Packet::proto(ip(R4), ip(L4), proto, 24).frag4(offset, true);
    let later6 = |proto: u8, offset: u16| {
        Packet::proto(ip(R6), ip(L6), proto, 24).ext(Ext::Fragment { offset, more: true })
    };
    vec![
        // IPv4.
        row(
            "ipv4 fragment: first, whole TCP header, refused",
            &first4(R4, L4, 5432),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv4 fragment: first, whole TCP header, allowed",
            &first4(A4, L4, 5432),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "ipv4 fragment: first, TCP options continue in the next fragment",
            &tcp(R4, L4, 5432).tcp_options(20).frag4(0, true).cut_l4(24),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv4 fragment: first, 3 bytes of TCP",
            &first4(R4, L4, 5432).cut_l4(3),
        )
        .all(D(BadFragment))
        .no_ports(),
        row(
            "ipv4 fragment: first, 12 bytes of TCP (ports, no flags)",
            &first4(R4, L4, 5432).cut_l4(12),
        )
        .all(D(BadFragment)),
        row(
            "ipv4 fragment: first, 12 bytes of TCP, allowed source",
            &first4(A4, L4, 5432).cut_l4(12),
        )
        .all(D(BadFragment)),
        row(
            "ipv4 fragment: first, 12 bytes of TCP, unprotected port",
            &first4(R4, L4, 80).cut_l4(12),
        )
        .all(D(BadFragment)),
        row(
            "ipv4 fragment: first, 6 bytes of UDP",
            &udp(R4, L4, 53).frag4(0, true).cut_l4(6),
        )
        .all(D(BadFragment)),
        row(
            "ipv4 fragment: first, whole UDP header, refused",
            &udp(R4, L4, 53).frag4(0, true),
        )
        .all(denied())
        .rule("dns"),
        row(
            "ipv4 fragment: first, 3 bytes of TCP, to another host",
            &first4(R4, N4, 5432).cut_l4(3),
        )
        .xdp(P(NotLocal))
        .ingress(D(BadFragment))
        .egress(P(NotLocal))
        .no_ports(),
        row(
            "ipv4 fragment: later, TCP to a protected port",
            &later4(IPPROTO_TCP, 100),
        )
        .all(P(LaterFragment)),
        row(
            "ipv4 fragment: last (MF clear)",
            &later4(IPPROTO_TCP, 185).frag4(185, false),
        )
        .all(P(LaterFragment)),
        row(
            "ipv4 fragment: TCP at offset 1 (RFC 3128)",
            &later4(IPPROTO_TCP, 1),
        )
        .all(D(BadFragment))
        .no_ports(),
        row(
            "ipv4 fragment: TCP at offset 1, allowed source",
            &Packet::proto(ip(A4), ip(L4), IPPROTO_TCP, 24).frag4(1, false),
        )
        .all(D(BadFragment))
        .no_ports(),
        row(
            "ipv4 fragment: TCP at offset 1, to another host",
            &Packet::proto(ip(R4), ip(N4), IPPROTO_TCP, 24).frag4(1, true),
        )
        .xdp(P(NotLocal))
        .ingress(D(BadFragment))
        .egress(P(NotLocal))
        .no_ports(),
        row("ipv4 fragment: UDP at offset 1", &later4(IPPROTO_UDP, 1)).all(P(LaterFragment)),
        row("ipv4 fragment: TCP at offset 2", &later4(IPPROTO_TCP, 2)).all(P(LaterFragment)),
        row(
            "ipv4 fragment: ICMP first fragment",
            &Packet::ping(ip(R4), ip(L4)).frag4(0, true),
        )
        .all(P(NotTcpUdp)),
        // IPv6.
        row(
            "ipv6 fragment: first, whole TCP header, refused",
            &first6(R6, L6, 5432),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv6 fragment: first, whole TCP header, allowed",
            &first6(A6, L6, 5432),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "ipv6 fragment: first, after a routing header",
            &tcp(R6, L6, 5432).ext(Ext::Routing(0)).ext(Ext::Fragment {
                offset: 0,
                more: true,
            }),
        )
        .all(denied())
        .rule("pg"),
        row(
            "ipv6 fragment: first, 3 bytes of TCP",
            &first6(R6, L6, 5432).cut_l4(3),
        )
        .all(D(BadFragment))
        .no_ports(),
        row(
            "ipv6 fragment: first, 10 bytes of TCP",
            &first6(R6, L6, 5432).cut_l4(10),
        )
        .all(D(BadFragment)),
        row(
            "ipv6 fragment: first, 6 bytes of UDP",
            &udp(R6, L6, 53)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .cut_l4(6),
        )
        .all(D(BadFragment)),
        row(
            "ipv6 fragment: first, chain after the fragment header cut off",
            &tcp(R6, L6, 5432)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .ext(Ext::Raw {
                    kind: IPPROTO_DSTOPTS,
                    bytes: vec![0],
                })
                .cut_l4(0),
        )
        .all(D(BadFragment))
        .ev_proto(IPPROTO_DSTOPTS)
        .no_ports(),
        row(
            "ipv6 fragment: first, 3 bytes of TCP, to another host",
            &first6(R6, N6, 5432).cut_l4(3),
        )
        .xdp(P(NotLocal))
        .ingress(D(BadFragment))
        .egress(P(NotLocal))
        .no_ports(),
        row("ipv6 fragment: later, TCP", &later6(IPPROTO_TCP, 100)).all(P(LaterFragment)),
        row(
            "ipv6 fragment: TCP at offset 1 (RFC 3128)",
            &later6(IPPROTO_TCP, 1),
        )
        .all(D(BadFragment))
        .no_ports(),
        row("ipv6 fragment: UDP at offset 1", &later6(IPPROTO_UDP, 1)).all(P(LaterFragment)),
        row(
            "ipv6 fragment: fragment header cut off",
            &tcp(R6, L6, 5432)
                .ext(Ext::Raw {
                    kind: IPPROTO_FRAGMENT,
                    bytes: vec![6, 0, 0, 1],
                })
                .cut_l4(0),
        )
        .all(D(Malformed))
        .ev_proto(IPPROTO_FRAGMENT)
        .no_ports(),
    ]
}

/// Transport headers: truncated, bad data offsets; other protocols.
fn transport_rows() -> Vec<Row> {
    vec![
        row(
            "tcp: header cut to 10 bytes, protected port",
            &tcp(R4, L4, 5432).cut_l4(10),
        )
        .all(D(Malformed))
        .rule("pg"),
        row(
            "tcp: header cut to 10 bytes, allowed source",
            &tcp(A4, L4, 5432).cut_l4(10),
        )
        .all(D(Malformed))
        .rule("pg"),
        row(
            "tcp: header cut to 10 bytes, unprotected port",
            &tcp(R4, L4, 80).cut_l4(10),
        )
        .all(P(NotProtected)),
        row(
            "tcp: header cut to 10 bytes, failsafe port",
            &tcp(R4, L4, 22).cut_l4(10),
        )
        .all(P(Failsafe)),
        row(
            "tcp: header cut to 19 bytes, protected port",
            &tcp(R4, L4, 6010).cut_l4(19),
        )
        .all(D(Malformed))
        .rule("pg"),
        row(
            "tcp: header cut to 2 bytes (no ports)",
            &tcp(R4, L4, 80).cut_l4(2),
        )
        .all(D(Malformed))
        .no_ports(),
        row("tcp: no header at all", &tcp(R6, L6, 80).cut_l4(0))
            .all(D(Malformed))
            .no_ports(),
        row(
            "tcp: header cut to 2 bytes, to another host",
            &tcp(R4, N4, 5432).cut_l4(2),
        )
        .xdp(P(NotLocal))
        .ingress(D(Malformed))
        .egress(P(NotLocal))
        .no_ports(),
        row("tcp: data offset 4", &tcp(R4, L4, 5432).tcp_doff(4))
            .all(D(Malformed))
            .rule("pg"),
        row("tcp: data offset 0", &tcp(A6, L6, 5432).tcp_doff(0))
            .all(D(Malformed))
            .rule("pg"),
        row(
            "tcp: data offset 6 one word past the packet",
            &tcp(R4, L4, 5432).tcp_doff(6),
        )
        .all(D(Malformed))
        .rule("pg"),
        row(
            "tcp: data offset 15 past the packet",
            &tcp(R4, L4, 5432).tcp_doff(15).payload(20),
        )
        .all(D(Malformed))
        .rule("pg"),
        row(
            "tcp: data offset 15 with 40 option bytes",
            &tcp(R4, L4, 5432).tcp_options(40),
        )
        .all(denied())
        .rule("pg"),
        row(
            "tcp: bad data offset to an unprotected port",
            &tcp(R4, L4, 80).tcp_doff(2),
        )
        .all(P(NotProtected)),
        row(
            "udp: header cut to 6 bytes, protected",
            &udp(R4, L4, 53).cut_l4(6),
        )
        .all(D(Malformed))
        .rule("dns"),
        row(
            "udp: header cut to 6 bytes, unprotected",
            &udp(R4, L4, 5353).cut_l4(6),
        )
        .all(P(NotProtected)),
        row("udp: header cut to 3 bytes", &udp(R4, L4, 5353).cut_l4(3))
            .all(D(Malformed))
            .no_ports(),
        row("udp: header only, no payload", &udp(R4, L4, 53).payload(0))
            .all(denied())
            .rule("dns"),
        row(
            "icmp: echo request to the host",
            &Packet::ping(ip(R4), ip(L4)),
        )
        .all(P(NotTcpUdp)),
        row(
            "icmpv6: echo request to the host",
            &Packet::ping(ip(R6), ip(L6)),
        )
        .all(P(NotTcpUdp)),
        row(
            "icmpv6: NDP neighbor solicitation",
            &Packet::neighbor_solicitation("fe80::2".parse().unwrap(), L6.parse().unwrap()),
        )
        .all(P(NotTcpUdp)),
        row("ipv4: GRE", &Packet::proto(ip(R4), ip(L4), IPPROTO_GRE, 24)).all(P(NotTcpUdp)),
        row("ipv4: ESP", &Packet::proto(ip(R4), ip(L4), IPPROTO_ESP, 24)).all(P(NotTcpUdp)),
        row(
            "ipv4: SCTP",
            &Packet::proto(ip(R4), ip(L4), IPPROTO_SCTP, 24),
        )
        .all(P(NotTcpUdp)),
        row("ipv4: protocol 255", &Packet::proto(ip(R4), ip(L4), 255, 0)).all(P(NotTcpUdp)),
    ]
}

/// Ports, prefixes, rules and modes.
fn policy_rows() -> Vec<Row> {
    let t = |src: &'static str, port: u16| tcp(src, if src.contains(':') { L6 } else { L4 }, port);
    let mut rows = vec![
        row("port: unprotected", &t(R4, 80)).all(P(NotProtected)),
        row("port: UDP to a TCP-only protected port", &udp(R4, L4, 5432)).all(P(NotProtected)),
        row("port: TCP to a UDP-only protected port", &t(R4, 53)).all(P(NotProtected)),
        row("port: failsafe tcp/22 beats a rule covering it", &t(R4, 22)).all(P(Failsafe)),
        row("port: failsafe tcp/22 over IPv6", &t(R6, 22)).all(P(Failsafe)),
        row(
            "port: failsafe tcp/22 with a truncated header",
            &t(R4, 22).cut_l4(8),
        )
        .all(P(Failsafe)),
        row("port: tcp/23 next to the failsafe port", &t(R4, 23))
            .all(denied())
            .rule("ssh-range"),
        row("port: udp/22 is not failsafe", &udp(R4, L4, 22)).all(P(NotProtected)),
        row("port: 0", &t(R4, 0)).all(P(NotProtected)),
        row("port: 65535", &udp(R6, L6, 65535)).all(P(NotProtected)),
        row("port range: 5431 below a single port", &t(R4, 5431)).all(P(NotProtected)),
        row("port range: 5433 above a single port", &t(R4, 5433)).all(P(NotProtected)),
        row("port range: 5999 below 6000-6010", &t(R4, 5999)).all(P(NotProtected)),
        row("port range: 6000 first", &t(R4, 6000))
            .all(denied())
            .rule("pg"),
        row("port range: 6010 last", &t(R4, 6010))
            .all(denied())
            .rule("pg"),
        row("port range: 6011 above", &t(R4, 6011)).all(P(NotProtected)),
        row("port range: 6005 allowed", &t(A6, 6005))
            .all(allowed())
            .rule("pg"),
        row(
            "protocol any: UDP to 8080 from anywhere (/0)",
            &udp(R4, L4, 8080),
        )
        .all(allowed())
        .rule("open"),
        row("protocol any: TCP to 8080 over IPv6 (::/0)", &t(R6, 8080))
            .all(allowed())
            .rule("open"),
        row("prefix /0: source 0.0.0.0", &t("0.0.0.0", 8080))
            .all(allowed())
            .rule("open"),
        row("prefix /8: first address 10.0.0.0", &t("10.0.0.0", 5432))
            .all(allowed())
            .rule("pg"),
        row(
            "prefix /8: last address 10.255.255.255",
            &t("10.255.255.255", 5432),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "prefix /8: 9.255.255.255 just below",
            &t("9.255.255.255", 5432),
        )
        .all(denied())
        .rule("pg"),
        row("prefix /8: 11.0.0.0 just above", &t("11.0.0.0", 5432))
            .all(denied())
            .rule("pg"),
        row(
            "prefix /32: longest match picks the narrow rule",
            &t("10.1.2.3", 5432),
        )
        .all(allowed())
        .rule("narrow"),
        row(
            "prefix /32: the address below falls to /8",
            &t("10.1.2.2", 5432),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "prefix /32: the address above falls to /8",
            &t("10.1.2.4", 5432),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "prefix /32: on a port the narrow rule does not cover",
            &t("10.1.2.3", 6000),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "prefix /128: longest match picks the narrow rule",
            &t("fd00::1", 5432),
        )
        .all(allowed())
        .rule("narrow"),
        row("prefix /128: next address falls to /8", &t("fd00::2", 5432))
            .all(allowed())
            .rule("pg"),
        row("prefix /8 v6: first address fd00::", &t("fd00::", 5432))
            .all(allowed())
            .rule("pg"),
        row(
            "prefix /8 v6: last address",
            &t("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 5432),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "prefix /8 v6: just below",
            &t("fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 5432),
        )
        .all(denied())
        .rule("pg"),
        row("prefix /8 v6: just above", &t("fe00::", 5432))
            .all(denied())
            .rule("pg"),
        row("prefix /24: first address", &udp("192.168.1.0", L4, 53))
            .all(allowed())
            .rule("dns"),
        row("prefix /24: last address", &udp("192.168.1.255", L4, 53))
            .all(allowed())
            .rule("dns"),
        row("prefix /24: just below", &udp("192.168.0.255", L4, 53))
            .all(denied())
            .rule("dns"),
        row("prefix /24: just above", &udp("192.168.2.0", L4, 53))
            .all(denied())
            .rule("dns"),
        row(
            "prefix /48: last address",
            &udp("2001:db8:1:ffff:ffff:ffff:ffff:ffff", L6, 53),
        )
        .all(allowed())
        .rule("dns"),
        row("prefix /48: just above", &udp("2001:db8:2::", L6, 53))
            .all(denied())
            .rule("dns"),
        row(
            "prefix: an IPv4-mapped IPv6 source is not an IPv4 address",
            &t("::ffff:10.1.1.1", 5432),
        )
        .all(denied())
        .rule("pg"),
        row("mode: audit rule, refused -> would-drop", &t(R4, 9000))
            .all(W(Denied))
            .rule("metrics"),
        row("mode: audit rule, allowed", &t(A4, 9000))
            .all(allowed())
            .rule("metrics"),
        row(
            "mode: audit rule, truncated TCP header -> would-drop",
            &t(R4, 9000).cut_l4(10),
        )
        .all(W(Malformed))
        .rule("metrics"),
        row(
            "mode: audit and enforce rules share a port: enforce, first rule named",
            &t(R4, 9100),
        )
        .all(denied())
        .rule("metrics"),
        row(
            "mode: shared port, allowed by the enforcing rule",
            &t("172.16.0.9", 9100),
        )
        .all(allowed())
        .rule("ops"),
        row("mode: shared port, allowed by the audit rule", &t(A4, 9100))
            .all(allowed())
            .rule("metrics"),
    ];
    // Scope.
    rows.extend([
        row("scope: another host's address, refused", &tcp(R4, N4, 5432))
            .xdp(P(NotLocal))
            .ingress(denied())
            .egress(P(NotLocal))
            .rule("pg"),
        row(
            "scope: another host's IPv6 address, refused",
            &tcp(R6, N6, 6000),
        )
        .xdp(P(NotLocal))
        .ingress(denied())
        .egress(P(NotLocal))
        .rule("pg"),
        row("scope: another host, unprotected port", &tcp(R4, N4, 80)).all(P(NotProtected)),
        row("scope: another host, failsafe port", &tcp(R4, N4, 22)).all(P(Failsafe)),
        row(
            "scope: another host, truncated TCP header on a protected port",
            &tcp(R4, N4, 5432).cut_l4(10),
        )
        .xdp(P(NotLocal))
        .ingress(D(Malformed))
        .egress(P(NotLocal))
        .rule("pg"),
        row("scope: 0.0.0.0", &tcp(R4, "0.0.0.0", 5432))
            .xdp(P(NotLocal))
            .ingress(denied())
            .egress(P(NotLocal))
            .rule("pg"),
        row("scope: IPv4 broadcast", &udp(R4, "255.255.255.255", 53))
            .all(denied())
            .rule("dns"),
        row(
            "scope: subnet-directed broadcast (a host address)",
            &udp(R4, B4, 53),
        )
        .all(denied())
        .rule("dns"),
        row("scope: IPv4 multicast", &udp(R4, "224.0.0.251", 53))
            .all(denied())
            .rule("dns"),
        row(
            "scope: IPv4 multicast, allowed",
            &udp("192.168.1.20", "239.1.2.3", 53),
        )
        .all(allowed())
        .rule("dns"),
        row("scope: IPv6 multicast", &udp(R6, "ff02::fb", 53))
            .all(denied())
            .rule("dns"),
        row("scope: 127.0.0.1", &tcp(R4, "127.0.0.1", 5432))
            .all(denied())
            .rule("pg"),
        row(
            "scope: 127.0.0.2 (loopback /8)",
            &tcp(R4, "127.0.0.2", 5432),
        )
        .all(denied())
        .rule("pg"),
        row("scope: ::1", &tcp(R6, "::1", 5432))
            .all(denied())
            .rule("pg"),
        row(
            "scope: IPv4-mapped host address is not the host's",
            &tcp(R6, "::ffff:192.0.2.1", 5432),
        )
        .xdp(P(NotLocal))
        .ingress(denied())
        .egress(P(NotLocal))
        .rule("pg"),
    ]);
    rows
}

fn need_root() -> bool {
    if !is_root() {
        testbed::skip_part("loading BPF programs needs root");
        return false;
    }
    true
}

#[test]
fn link_layer() {
    if need_root() {
        Bench::new(&main_policy()).check_all(&l2_rows());
    }
}

#[test]
fn ipv4_header() {
    if need_root() {
        Bench::new(&main_policy()).check_all(&ipv4_rows());
    }
}

#[test]
fn ipv6_header_and_extension_chains() {
    if need_root() {
        Bench::new(&main_policy()).check_all(&ipv6_rows());
    }
}

#[test]
fn fragments() {
    if need_root() {
        Bench::new(&main_policy()).check_all(&fragment_rows());
    }
}

#[test]
fn transport_and_other_protocols() {
    if need_root() {
        Bench::new(&main_policy()).check_all(&transport_rows());
    }
}

#[test]
fn ports_prefixes_modes_and_scope() {
    if need_root() {
        Bench::new(&main_policy()).check_all(&policy_rows());
    }
}

/// `[audit] allowed = true`: allowed packets leave a record too; packets passed over
/// (not protected, failsafe, not local, later fragments, not IP) still do not.
#[test]
fn allowed_packets_are_reported_when_asked() {
    if !need_root() {
        return;
    }
    let mut b = Bench::new(&policy("", true, RULES));
    assert!(b.k.policy.report_allowed);
    b.check_all(&[
        row("allowed v4", &tcp(A4, L4, 5432))
            .all(allowed())
            .rule("pg"),
        row("allowed v6 by /128", &tcp("fd00::1", L6, 5432))
            .all(allowed())
            .rule("narrow"),
        row("allowed by /0", &udp(R6, L6, 8080))
            .all(allowed())
            .rule("open"),
        row("allowed on an audit rule", &tcp(A4, L4, 9000))
            .all(allowed())
            .rule("metrics"),
        row(
            "allowed first fragment",
            &tcp(A4, L4, 5432).frag4(0, true).payload(8),
        )
        .all(allowed())
        .rule("pg"),
        row(
            "allowed behind 2 VLAN tags",
            &tcp(A4, L4, 5432).vlan(ETH_P_8021AD, 1).vlan(ETH_P_8021Q, 2),
        )
        .xdp(allowed())
        .cgroup(P(NotIp))
        .rule("pg"),
        row(
            "allowed at ingress, not local elsewhere",
            &tcp(A4, N4, 5432),
        )
        .xdp(P(NotLocal))
        .ingress(allowed())
        .egress(P(NotLocal))
        .rule("pg"),
        row("refused", &tcp(R4, L4, 5432)).all(denied()).rule("pg"),
        row("not protected", &tcp(A4, L4, 80)).all(P(NotProtected)),
        row("failsafe", &tcp(A4, L4, 22)).all(P(Failsafe)),
        row(
            "later fragment",
            &Packet::proto(ip(A4), ip(L4), IPPROTO_TCP, 16).frag4(50, true),
        )
        .all(P(LaterFragment)),
        row("icmp", &Packet::ping(ip(A6), ip(L6))).all(P(NotTcpUdp)),
        row(
            "arp",
            &Packet::arp("192.0.2.50".parse().unwrap(), L4.parse().unwrap()),
        )
        .all(P(NotIp)),
    ]);
}

/// `mode = "audit"`: every refusal is a would-drop (passed and reported), malformed
/// packets and bad fragments included; a rule that says `mode = "enforce"` still drops.
#[test]
fn audit_mode_reports_and_passes() {
    if !need_root() {
        return;
    }
    let strict = "\n[[rule]]\nname = \"strict\"\nprotocol = \"tcp\"\nports = [7000]\nallow_from = [\"10.0.0.0/8\"]\nmode = \"enforce\"\n";
    let mut b = Bench::new(&policy(
        "mode = \"audit\"",
        false,
        &format!("{RULES}{strict}"),
    ));
    let chain9 = (0..9).fold(tcp(R6, L6, 5432), |p, _| p.ext(Ext::DstOpts(0)));
    b.check_all(&[
        row("audit: refused", &tcp(R4, L4, 5432))
            .all(W(Denied))
            .rule("pg"),
        row("audit: refused v6", &tcp(R6, L6, 6000))
            .all(W(Denied))
            .rule("pg"),
        row("audit: shared port is audit-only now", &tcp(R4, L4, 9100))
            .all(W(Denied))
            .rule("metrics"),
        row("audit: allowed", &tcp(A4, L4, 5432))
            .all(allowed())
            .rule("pg"),
        row(
            "audit: malformed IPv4 header",
            &tcp(R4, L4, 5432).v4(|h| h.ihl = Some(4)),
        )
        .all(W(Malformed))
        .bare(),
        row(
            "audit: truncated TCP header on a protected port",
            &tcp(R4, L4, 5432).cut_l4(10),
        )
        .all(W(Malformed))
        .rule("pg"),
        row(
            "audit: TCP header without ports",
            &tcp(R4, L4, 5432).cut_l4(2),
        )
        .all(W(Malformed))
        .no_ports(),
        row(
            "audit: tiny first fragment",
            &tcp(R4, L4, 5432).frag4(0, true).cut_l4(3),
        )
        .all(W(BadFragment))
        .no_ports(),
        row(
            "audit: TCP fragment at offset 1",
            &Packet::proto(ip(R4), ip(L4), IPPROTO_TCP, 24).frag4(1, true),
        )
        .all(W(BadFragment))
        .no_ports(),
        row("audit: extension chain too long", &chain9)
            .all(W(ExtChainTooLong))
            .ev_proto(IPPROTO_DSTOPTS)
            .no_ports(),
        row("audit: a rule in enforce mode drops", &tcp(R4, L4, 7000))
            .all(denied())
            .rule("strict"),
        row(
            "audit: IPv4 header cut short (cgroup: refused by test_run)",
            &tcp(R4, L4, 5432).truncate(14 + 10),
        )
        .xdp(W(Malformed))
        .cgroup(Out::Refused(Verdict::WouldDrop, Malformed))
        .bare(),
    ]);
}

/// A socket outside the host's network namespace (a container's): cgroup ingress passes
/// as not-local; egress keeps judging the host's addresses but loopback is the
/// container's own; XDP does not look at sockets.
#[test]
fn socket_outside_the_host_namespace() {
    if !need_root() {
        return;
    }
    let mut b = Bench::new(&main_policy());
    let real = enforcer::host::netns_cookie().expect("netns cookie");
    b.k.set_host_netns_cookie(real ^ 0x5a5a_5a5a);
    b.host_netns = false;
    let chain9 = (0..9).fold(tcp(R6, L6, 5432), |p, _| p.ext(Ext::DstOpts(0)));
    let rows = [
        row("netns: refused to a host address", &tcp(R4, L4, 5432))
            .xdp(denied())
            .ingress(P(NotLocal))
            .egress(denied())
            .rule("pg"),
        row("netns: allowed to a host address", &tcp(A4, L4, 5432))
            .xdp(allowed())
            .ingress(P(NotLocal))
            .egress(allowed())
            .rule("pg"),
        row("netns: refused to 127.0.0.1", &tcp(R4, "127.0.0.1", 5432))
            .xdp(denied())
            .ingress(P(NotLocal))
            .egress(P(NotLocal))
            .rule("pg"),
        row("netns: refused to ::1", &tcp(R6, "::1", 5432))
            .xdp(denied())
            .ingress(P(NotLocal))
            .egress(P(NotLocal))
            .rule("pg"),
        row("netns: multicast", &udp(R4, "224.0.0.251", 53))
            .xdp(denied())
            .ingress(P(NotLocal))
            .egress(denied())
            .rule("dns"),
        row(
            "netns: malformed IPv4 header",
            &tcp(R4, L4, 5432).v4(|h| h.ihl = Some(2)),
        )
        .all(D(Malformed))
        .bare(),
        row(
            "netns: tiny first fragment",
            &tcp(R4, L4, 5432).frag4(0, true).cut_l4(3),
        )
        .xdp(D(BadFragment))
        .ingress(P(NotLocal))
        .egress(D(BadFragment))
        .no_ports(),
        row("netns: extension chain too long", &chain9)
            .xdp(D(ExtChainTooLong))
            .ingress(P(NotLocal))
            .egress(D(ExtChainTooLong))
            .ev_proto(IPPROTO_DSTOPTS)
            .no_ports(),
        row("netns: unprotected port", &tcp(R4, L4, 80)).all(P(NotProtected)),
    ];
    b.check_all(&rows);
    // Back in the host's namespace, ingress judges again.
    b.k.set_host_netns_cookie(real);
    b.host_netns = true;
    b.check_all(&[
        row("netns: back in the host's namespace", &tcp(R4, L4, 5432))
            .all(denied())
            .rule("pg"),
    ]);
}

/// Events carry the generation of the policy that judged the packet; a new policy takes
/// effect at once.
#[test]
fn policy_generations_are_reported() {
    if !need_root() {
        return;
    }
    let mut b = Bench::new(&policy("", true, RULES));
    assert_eq!(b.k.generation(), 1);
    // Distinct source ports per step: an egress allow remembers the flow (FLOWS), which
    // would let the same flow in at XDP/ingress under the next policy (allowed-by-flow).
    let p = |sport: u16| Packet::tcp(ip(R4), ip(L4), sport, 5432);
    b.check_all(&[row("generation 1: refused", &p(1001))
        .all(denied())
        .rule("pg")]);

    let opened = policy(
        "",
        true,
        &RULES.replace(
            "\"10.0.0.0/8\", \"fd00::/8\"",
            "\"10.0.0.0/8\", \"fd00::/8\", \"203.0.113.0/24\"",
        ),
    );
    b.k.set_policy(parse_str(std::path::Path::new("opened.toml"), &opened).expect("policy"));
    assert_eq!(b.k.generation(), 2);
    b.check_all(&[row("generation 2: allowed by the new prefix", &p(1002))
        .all(allowed())
        .rule("pg")]);

    b.k.set_policy(
        parse_str(std::path::Path::new("again.toml"), &policy("", true, RULES)).expect("policy"),
    );
    assert_eq!(b.k.generation(), 3);
    b.check_all(&[row("generation 3: refused again", &p(1003))
        .all(denied())
        .rule("pg")]);
}

/// Limits test_run cannot reach (it takes at most about a page per frame, and XDP would
/// get the rest as fragments it does not read): the model's rules at MAX_HDR_OFFSET, which
/// the BPF parser's single bounds helper (`Packet::load`) applies the same way. XDP counts
/// the offset from the Ethernet header, the cgroup hooks from the IP header.
#[test]
fn model_limits_beyond_test_run() {
    let policy = parse_str(std::path::Path::new("t.toml"), &main_policy()).expect("policy");
    let locals = local_addrs();
    let judge = |hook: Hook, frame: &[u8]| {
        let parsed = if hook == Hook::Xdp {
            model::parse_frame(frame)
        } else {
            model_l3(frame)
        };
        let ctx = Context::remote(hook, &locals);
        let j = model::judge(&policy.verdict, &ctx, &parsed);
        (j.verdict, j.reason, j.rule)
    };
    // A 2048-byte and a (len + 1) * 8-byte destination options header: the TCP header
    // starts at frame offset 14 + 40 + 2048 + (len + 1) * 8.
    let tcp_at = |dport: u16, frame_off: usize| {
        let second = frame_off - 14 - 40 - 2048;
        assert_eq!(second % 8, 0);
        let p = tcp(R6, L6, dport)
            .ext(Ext::DstOpts(255))
            .ext(Ext::DstOpts((second / 8 - 1) as u8));
        let (f, l) = p.build_with_layout();
        assert_eq!(l.l4, frame_off, "TCP header placement");
        f
    };
    let (drop, denied, malformed) = (Verdict::Drop, Denied, Malformed);
    // Ports and data offset (at +12) within MAX_HDR_OFFSET: judged.
    let f = tcp_at(5432, 4078);
    assert_eq!(judge(Hook::Xdp, &f), (drop, denied, Some(0)));
    // Ports readable at 4094, the data offset byte (4106) is not: an incomplete header on
    // a protected port (dropped by its rule), an unprotected port passes.
    let f = tcp_at(5432, 4094);
    assert_eq!(judge(Hook::Xdp, &f), (drop, malformed, Some(0)));
    assert_eq!(
        judge(Hook::Xdp, &tcp_at(80, 4094)),
        (Verdict::Allow, NotProtected, None)
    );
    // The cgroup hooks count from L3 (4080 + 12 <= 4095): judged normally.
    assert_eq!(judge(Hook::CgroupIngress, &f), (drop, denied, Some(0)));
    // Ports past MAX_HDR_OFFSET: truncated, whatever the port.
    let f = tcp_at(80, 4102);
    assert_eq!(judge(Hook::Xdp, &f), (drop, malformed, None));
    // From L3 that is 4088: ports readable, the data offset byte not.
    assert_eq!(
        judge(Hook::CgroupEgress, &f),
        (Verdict::Allow, NotProtected, None)
    );
    assert_eq!(
        judge(Hook::CgroupEgress, &tcp_at(5432, 4102)),
        (drop, malformed, Some(0))
    );
    // L3 offset 4096: past the limit for the cgroup hooks too.
    assert_eq!(
        judge(Hook::CgroupIngress, &tcp_at(5432, 4110)),
        (drop, malformed, None)
    );
}

/// The check can fail: a wrong verdict, reason, rule, event field or model expectation
/// is each caught.
#[test]
fn a_wrong_expectation_fails() {
    if !need_root() {
        return;
    }
    let mut b = Bench::new(&main_policy());
    let good = row("refused", &tcp(R4, L4, 5432)).all(denied()).rule("pg");
    b.check(&good).expect("the right expectation passes");
    let wrong = [
        good.clone().all(P(Denied)),
        good.clone().all(D(Malformed)),
        good.clone().all(W(Denied)),
        good.clone().rule("narrow"),
        good.clone().no_ports(),
        good.clone().ev_proto(17),
        good.clone().xdp(P(NotLocal)),
        row("allowed, expected refused", &tcp(A4, L4, 5432))
            .all(denied())
            .rule("pg"),
        row("not protected, expected refused", &tcp(R4, L4, 80))
            .all(denied())
            .rule("pg"),
        raw("runt, expected to run", vec![0; 10]).all(P(NotIp)),
    ];
    for w in &wrong {
        assert!(b.check(w).is_err(), "a wrong row passed: {w:?}");
    }
}

//! Differential test: generated and mutated packets go through the loaded XDP, cgroup
//! ingress and cgroup egress programs (BPF_PROG_TEST_RUN) and through the reference model;
//! they must agree on every packet: the verdict, the reason (the one counter of the whole
//! set that moved), the judging rule's counter (the only per-rule counter that moved),
//! and for judged packets the audit record (verdict, reason, rule, and the addresses and
//! ports the model decoded).
//!
//! 3000 packets with a fixed seed by default; `ENFORCER_FUZZ_PACKETS` and
//! `ENFORCER_FUZZ_SEED` change that (`cargo xtask fuzz-verdicts --packets 100000`). A
//! disagreement prints the seed, the packet's index and its bytes in hex: regenerate it
//! with `Rng::for_index(seed, index)` or paste the bytes into a table case in
//! `verdict_table.rs`.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use enforcer::kernel::counters;
use enforcer_common::{
    consts::{AF_INET, AF_INET6, ETH_HLEN, NO_RULE},
    event::PacketEvent,
    maps::FlowKey,
    model::{self, Arrival, Context, Flow, Judgement, Parsed, L4},
    reason::{Hook, Reason, Verdict},
};
use testbed::{
    kernel::{dropped, model_l3, Prog, TestKernel},
    packets::{generate, hex, hex_compact, test_run_refuses, try_run_from, Rng, Universe},
};

const DEFAULT_PACKETS: u64 = 3000;
const DEFAULT_SEED: u64 = 0x5EED_0003;
/// Disagreements printed in full (all are counted).
const MAX_PRINTED: usize = 20;

/// Reports allowed packets too, so every judged packet leaves an event to compare, and
/// without rate limits (thousands of events a second here; the limiter has its own tests).
const POLICY: &str = r#"
[audit]
allowed = true
rate_per_rule = 0
rate_global = 0

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
name = "any-proto"
ports = ["1000-1999"]
allow_from = ["172.16.0.0/12", "2001:db8:1::/48"]

[[rule]]
name = "metrics"
protocol = "tcp"
ports = [9000, 1500]
allow_from = ["10.0.0.0/8"]
mode = "audit"

[[rule]]
name = "open"
ports = [8080]
allow_from = ["0.0.0.0/0", "::/0"]

# Enough long lengths for the group to be bucketed (LEN_BITS), beside short ones.
[[rule]]
name = "bucketed"
protocol = "tcp"
ports = [443]
allow_from = ["10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/28", "10.1.2.3/32", "172.16.0.0/12",
              "fd00::/16", "2001:db8:1::/48", "2001:db8:1::/64", "2001:db8:1::5/128"]
"#;

fn local_addrs() -> Vec<IpAddr> {
    ["192.0.2.1", "198.51.100.7", "2001:db8::1"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
}

fn universe() -> Universe {
    let v4 = |s: &[&str]| s.iter().map(|a| a.parse::<Ipv4Addr>().unwrap()).collect();
    let v6 = |s: &[&str]| s.iter().map(|a| a.parse::<Ipv6Addr>().unwrap()).collect();
    Universe {
        v4_sources: v4(&[
            "10.0.0.0",
            "10.1.2.3",
            "10.1.2.4",
            "10.255.255.255",
            "9.255.255.255",
            "11.0.0.0",
            "172.16.0.1",
            "172.31.255.255",
            "172.32.0.0",
            "192.168.1.77",
            "192.168.2.1",
            "203.0.113.5",
            "0.0.0.0",
            "127.0.0.1",
            // The host's own address as a source: never admitted by a prefix.
            "192.0.2.1",
        ]),
        v6_sources: v6(&[
            "fd00::1",
            "fd00::2",
            "fd00::",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe00::",
            "2001:db8:1::5",
            "2001:db8:2::5",
            "2001:db8:ffff::5",
            "::1",
            "::ffff:10.1.2.3",
            "::",
            "2001:db8::1",
        ]),
        v4_dests: v4(&[
            "192.0.2.1",
            "192.0.2.1",
            "198.51.100.7",
            "192.0.2.99",
            "8.8.8.8",
            "255.255.255.255",
            "224.0.0.251",
            "239.1.1.1",
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
        ]),
        v6_dests: v6(&[
            "2001:db8::1",
            "2001:db8::1",
            "2001:db8::99",
            "ff02::1",
            "ff05::fb",
            "::1",
            "fe80::1",
            "::ffff:192.0.2.1",
        ]),
        ports: vec![
            22, 53, 80, 443, 999, 1000, 1500, 1999, 2000, 5431, 5432, 5432, 5433, 5999, 6000, 6005,
            6010, 6011, 8080, 9000, 0, 65535,
        ],
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
        }
        Err(_) => default,
    }
}

/// What the kernel did with one packet.
#[derive(Debug)]
struct KernelOutcome {
    ret: u32,
    /// The reason counters (of every hook) that moved, and by how much.
    moved: Vec<(Hook, Reason, u64)>,
    /// The per-rule counters that moved: (rule index, verdict, by how much).
    rules_moved: Vec<(u32, Verdict, u64)>,
    events: Vec<PacketEvent>,
}

/// The event fields the model's parse determines: family, addresses, the protocol (or the
/// extension header the parser stopped at) and the ports, where the model knows them.
#[derive(Debug, PartialEq, Eq)]
struct Fields {
    family: u8,
    src: [u8; 16],
    dst: [u8; 16],
    proto: Option<u8>,
    ports: Option<(u16, u16)>,
}

fn model_fields(parsed: &Parsed) -> Option<Fields> {
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (AF_INET, b)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    };
    match *parsed {
        Parsed::NotIp => None,
        // The IP header was refused before anything else was read.
        Parsed::BadIp { family } => Some(Fields {
            family,
            src: [0; 16],
            dst: [0; 16],
            proto: Some(0),
            ports: Some((0, 0)),
        }),
        Parsed::Ip { src, dst, l4 } => {
            let (family, src) = bytes(src);
            let (_, dst) = bytes(dst);
            let (proto, ports) = match l4 {
                L4::Ports {
                    proto,
                    sport,
                    dport,
                    ..
                } => (Some(proto), Some((sport, dport))),
                // Stopped before the ports.
                L4::Truncated(p) => (Some(p), Some((0, 0))),
                // Ports in the event when the fragment held them.
                L4::BadFragment(p) => (Some(p), None),
                L4::Other(p) => (Some(p), Some((0, 0))),
                L4::LaterFragment | L4::ChainTooLong => (None, Some((0, 0))),
            };
            Some(Fields {
                family,
                src,
                dst,
                proto,
                ports,
            })
        }
    }
}

/// Compares the kernel's outcome with the model's; `None` when they agree.
fn disagreement(
    prog: Prog,
    want: &Judgement,
    parsed: &Parsed,
    got: &KernelOutcome,
    frame_len: usize,
    generation: u64,
) -> Option<String> {
    let mut why = Vec::new();
    if dropped(prog, got.ret) != (want.verdict == Verdict::Drop) {
        why.push(format!(
            "return value {} but the model says {}",
            got.ret,
            want.verdict.name()
        ));
    }
    // The whole counter set: exactly the hook's reason counter moved, by one, and the
    // judging rule's counter for the verdict (none when no rule judged).
    if got.moved != [(prog.hook(), want.reason, 1)] {
        why.push(format!(
            "counters moved {:?}, the model says {} {}",
            got.moved,
            prog.hook().name(),
            want.reason.name()
        ));
    }
    let want_rules: Vec<(u32, Verdict, u64)> = match want.rule {
        Some(r) if want.reason.is_judged() => vec![(r as u32, want.verdict, 1)],
        _ => vec![],
    };
    if got.rules_moved != want_rules {
        why.push(format!(
            "rule counters moved {:?}, the model says {want_rules:?}",
            got.rules_moved
        ));
    }
    if want.reason.is_judged() {
        match got.events.as_slice() {
            [ev] => {
                let want_rule = want.rule.map_or(NO_RULE, |r| r as u32);
                if ev.verdict != want.verdict as u8
                    || ev.reason != want.reason as u8
                    || ev.rule != want_rule
                {
                    why.push(format!(
                        "event verdict {} reason {} rule {}, the model says {} {} {:?}",
                        ev.verdict,
                        ev.reason,
                        ev.rule,
                        want.verdict.name(),
                        want.reason.name(),
                        want.rule
                    ));
                }
                if ev.hook != prog.hook() as u8 {
                    why.push(format!("event hook {}", ev.hook));
                }
                if let Some(want) = model_fields(parsed) {
                    let got = Fields {
                        family: ev.family,
                        src: ev.src,
                        dst: ev.dst,
                        proto: want.proto.map(|_| ev.proto),
                        ports: want.ports.map(|_| (ev.sport, ev.dport)),
                    };
                    if got != want {
                        why.push(format!("event fields {got:?}, the model decoded {want:?}"));
                    }
                }
                let l3_off = if prog == Prog::Xdp { 0 } else { ETH_HLEN };
                if ev.pkt_len as usize + l3_off != frame_len || ev.generation != generation {
                    why.push(format!("event pkt_len {} generation {} (frame of {frame_len} bytes, generation {generation})", ev.pkt_len, ev.generation));
                }
            }
            evs => why.push(format!("{} events for a judged packet (want 1)", evs.len())),
        }
    } else if !got.events.is_empty() {
        why.push(format!(
            "{} events for a packet not judged",
            got.events.len()
        ));
    }
    if why.is_empty() {
        None
    } else {
        Some(why.join("; "))
    }
}

/// Another namespace's cookie, and the interface the test makes its path (`PATHS`).
const CONTAINER: u64 = 0xC0FF_EE00_0000_0001;
const CONTAINER_IFINDEX: u32 = 1000;

/// Which remembered flow a packet may ride on, and the path it arrives by: generated
/// beside each packet so the flow decision is compared on every hook.
#[derive(Debug, Clone, Copy)]
struct Paths {
    /// A flow for the packet's exact tuple, sent from this namespace (None: no flow).
    flow_netns: Option<u64>,
    /// XDP's test runs arrive on loopback (ifindex 1): whether 1 is made a container's path.
    xdp_on_path: bool,
    /// Where the cgroup ingress run says the packet arrived: 0 (no device), loopback, or
    /// the container's path.
    ingress_ifindex: u32,
}

impl Paths {
    fn generate(rng: &mut Rng, host: u64) -> Paths {
        Paths {
            flow_netns: match rng.below(4) {
                0 => None,
                1 => Some(host),
                2 => Some(CONTAINER),
                _ => Some(0xBAD0_0000_0000_0002),
            },
            xdp_on_path: rng.below(2) == 0,
            ingress_ifindex: [0, 1, CONTAINER_IFINDEX][rng.below(3) as usize],
        }
    }

    fn arrival(&self, prog: Prog) -> Arrival {
        match (prog, self.ingress_ifindex) {
            (Prog::Xdp, _) if self.xdp_on_path => Arrival::Namespace(CONTAINER),
            (Prog::Ingress, 1) => Arrival::Loopback,
            (Prog::Ingress, CONTAINER_IFINDEX) => Arrival::Namespace(CONTAINER),
            _ => Arrival::Other,
        }
    }
}

/// The flow of a parsed packet (client to server), in the model's and the map's forms.
fn flow_of(parsed: &Parsed, netns: u64) -> Option<(Flow, FlowKey)> {
    let Parsed::Ip {
        src,
        dst,
        l4:
            L4::Ports {
                proto,
                sport,
                dport,
                ..
            },
    } = *parsed
    else {
        return None;
    };
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    Some((
        Flow {
            proto,
            src,
            sport,
            dst,
            dport,
            netns,
        },
        FlowKey {
            proto,
            family: if src.is_ipv4() { AF_INET } else { AF_INET6 },
            _pad: 0,
            sport,
            dport,
            src: bytes(src),
            dst: bytes(dst),
            netns,
        },
    ))
}

struct Runner {
    k: TestKernel,
    /// Reason counters as last read, per hook.
    counts: HashMap<(Hook, Reason), u64>,
    /// Per-rule counters as last read.
    rule_counts: HashMap<(u32, Verdict), u64>,
}

const VERDICTS: [Verdict; 3] = [Verdict::Allow, Verdict::Drop, Verdict::WouldDrop];

impl Runner {
    fn new(k: TestKernel) -> Self {
        let mut r = Runner {
            counts: k.reason_counts(),
            rule_counts: HashMap::new(),
            k,
        };
        r.rules_moved();
        r
    }

    /// The per-rule counters that moved since the last call.
    fn rules_moved(&mut self) -> Vec<(u32, Verdict, u64)> {
        let mut moved = Vec::new();
        for rule in 0..self.k.policy.verdict.rules.len() as u32 {
            for v in VERDICTS {
                let now = counters::by_rule(&self.k.loaded.maps, rule, v);
                let before = self.rule_counts.insert((rule, v), now).unwrap_or(0);
                if now != before {
                    moved.push((rule, v, now - before));
                }
            }
        }
        moved
    }

    /// Runs `prog` on `frame`; `Err` when test_run refuses the input. Reads back every
    /// counter (each hook's reasons, each rule's verdicts), not only the expected one.
    /// Runs `prog` on `frame` (cgroup ingress arriving on `ingress_ifindex`); `Err` when
    /// test_run refuses the input.
    fn run(
        &mut self,
        prog: Prog,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<KernelOutcome, String> {
        let ret = try_run_from(&self.k, prog, frame, ingress_ifindex)?;
        let mut moved = Vec::new();
        for h in Hook::ALL {
            for r in Reason::ALL {
                let now = counters::by_reason(&self.k.loaded.maps, h, r);
                let before = self.counts.insert((h, r), now).unwrap_or(0);
                if now != before {
                    moved.push((h, r, now - before));
                }
            }
        }
        let rules_moved = self.rules_moved();
        let events = self.k.drain_events();
        Ok(KernelOutcome {
            ret,
            moved,
            rules_moved,
            events,
        })
    }
}

#[test]
fn kernel_and_model_agree_on_generated_packets() {
    testbed::need_root!();
    let packets = env_u64("ENFORCER_FUZZ_PACKETS", DEFAULT_PACKETS);
    let seed = env_u64("ENFORCER_FUZZ_SEED", DEFAULT_SEED);
    let u = universe();
    let locals = local_addrs();
    let mut k = TestKernel::new(POLICY, &locals);
    k.set_path(CONTAINER_IFINDEX, Some(CONTAINER));
    let host = k.host_netns_cookie();
    let mut r = Runner::new(k);

    let mut compared = 0u64;
    let mut refused = 0u64;
    let mut per_reason: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut per_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failures = 0usize;
    let start = Instant::now();
    for i in 0..packets {
        let mut rng = Rng::for_index(seed, i);
        let g = generate(&mut rng, &u);
        let paths = Paths::generate(&mut rng, host);
        r.k.set_path(1, paths.xdp_on_path.then_some(CONTAINER));
        *per_kind.entry(g.kind).or_default() += 1;
        for prog in [Prog::Xdp, Prog::Ingress, Prog::Egress] {
            let parsed = match prog {
                Prog::Xdp => model::parse_frame(&g.frame),
                _ => model_l3(&g.frame),
            };
            let flow = paths.flow_netns.and_then(|n| flow_of(&parsed, n));
            if let Some((_, key)) = flow {
                r.k.set_flow(key, true);
            }
            let flows: Vec<Flow> = flow.iter().map(|(f, _)| *f).collect();
            let ctx = Context {
                host_netns: host,
                arrival: paths.arrival(prog),
                flows: &flows,
                ..Context::remote(prog.hook(), &locals)
            };
            let want = model::judge(&r.k.policy.verdict, &ctx, &parsed);
            let run = r.run(prog, &g.frame, paths.ingress_ifindex);
            if let Some((_, key)) = flow {
                r.k.set_flow(key, false);
            }
            let problem = match run {
                Ok(got) => {
                    compared += 1;
                    *per_reason
                        .entry((prog.hook().name(), want.reason.name()))
                        .or_default() += 1;
                    disagreement(prog, &want, &parsed, &got, g.frame.len(), r.k.generation())
                        .map(|why| format!("{why}\n  kernel: {got:?}"))
                }
                Err(e) => {
                    match test_run_refuses(prog, &g.frame) {
                        // Input test_run cannot take: the model alone is checked.
                        Some(model_must_say) => {
                            refused += 1;
                            (want.reason != model_must_say).then(|| {
                            format!("test_run refuses this frame; the model must say {}, says {want:?}", model_must_say.name())
                        })
                        }
                        None => Some(format!("test_run refused the frame unexpectedly: {e}")),
                    }
                }
            };
            if let Some(why) = problem {
                failures += 1;
                if failures <= MAX_PRINTED {
                    eprintln!(
                        "DISAGREEMENT seed={seed:#x} index={i} kind={} hook={} paths={paths:?}\n  {why}\n  model: {want:?}\n  parsed: {parsed:?}\n  frame ({} bytes): {}\n{}",
                        g.kind,
                        prog.hook().name(),
                        g.frame.len(),
                        hex_compact(&g.frame),
                        hex(&g.frame)
                    );
                }
            }
        }
    }
    let elapsed = start.elapsed();
    println!(
        "differential: seed {seed:#x}: {packets} packets, {compared} program runs compared with the model \
         ({refused} runs on input test_run refuses checked against the model only) in {:.2?}",
        elapsed
    );
    println!("by hook and reason:");
    for ((hook, reason), n) in &per_reason {
        println!("  {hook:<15} {reason:<18} {n}");
    }
    println!("by template:");
    for (kind, n) in &per_kind {
        println!("  {kind:<22} {n}");
    }
    assert_eq!(failures, 0, "{failures} disagreements between the kernel and the model (seed {seed:#x}); the first {MAX_PRINTED} are printed above");
}

/// The comparison can fail: a wrong verdict, reason, rule, event field or event count is
/// each reported (no kernel needed).
#[test]
fn the_comparison_catches_disagreements() {
    let parsed = Parsed::Ip {
        src: "203.0.113.5".parse().unwrap(),
        dst: "192.0.2.1".parse().unwrap(),
        l4: L4::Ports {
            proto: 6,
            sport: 40000,
            dport: 5432,
            complete: true,
        },
    };
    let want = Judgement {
        verdict: Verdict::Drop,
        reason: Reason::Denied,
        rule: Some(0),
    };
    let mut ev = PacketEvent::EMPTY;
    ev.generation = 1;
    ev.pkt_len = 54;
    ev.src[..4].copy_from_slice(&[203, 0, 113, 5]);
    ev.dst[..4].copy_from_slice(&[192, 0, 2, 1]);
    ev.sport = 40000;
    ev.dport = 5432;
    ev.proto = 6;
    ev.family = AF_INET;
    ev.verdict = Verdict::Drop as u8;
    ev.reason = Reason::Denied as u8;
    ev.rule = 0;
    let good = KernelOutcome {
        ret: 1,
        moved: vec![(Hook::Xdp, Reason::Denied, 1)],
        rules_moved: vec![(0, Verdict::Drop, 1)],
        events: vec![ev],
    };
    assert_eq!(disagreement(Prog::Xdp, &want, &parsed, &good, 54, 1), None);
    let with = |f: &dyn Fn(&mut KernelOutcome)| {
        let mut o = KernelOutcome {
            ret: good.ret,
            moved: good.moved.clone(),
            rules_moved: good.rules_moved.clone(),
            events: good.events.clone(),
        };
        f(&mut o);
        o
    };
    let bad = [
        with(&|o| o.ret = 2),
        with(&|o| o.moved = vec![(Hook::Xdp, Reason::Malformed, 1)]),
        with(&|o| o.moved = vec![(Hook::Xdp, Reason::Denied, 2)]),
        with(&|o| o.moved = vec![(Hook::CgroupIngress, Reason::Denied, 1)]),
        with(&|o| o.moved.push((Hook::Xdp, Reason::NotIp, 1))),
        with(&|o| o.moved.push((Hook::CgroupEgress, Reason::NotProtected, 1))),
        with(&|o| o.rules_moved.clear()),
        with(&|o| o.rules_moved = vec![(1, Verdict::Drop, 1)]),
        with(&|o| o.rules_moved = vec![(0, Verdict::Allow, 1)]),
        with(&|o| o.rules_moved.push((2, Verdict::Allow, 1))),
        with(&|o| o.events.clear()),
        with(&|o| o.events.push(ev)),
        with(&|o| o.events[0].rule = 1),
        with(&|o| o.events[0].verdict = Verdict::WouldDrop as u8),
        with(&|o| o.events[0].dport = 5433),
        with(&|o| o.events[0].proto = 17),
        with(&|o| o.events[0].src[3] = 6),
        with(&|o| o.events[0].generation = 2),
        with(&|o| o.events[0].pkt_len = 40),
        with(&|o| o.events[0].hook = Hook::CgroupIngress as u8),
    ];
    for (i, b) in bad.iter().enumerate() {
        assert!(
            disagreement(Prog::Xdp, &want, &parsed, b, 54, 1).is_some(),
            "case {i} passed: {b:?}"
        );
    }
    // Not judged: no event may appear.
    let pass = Judgement {
        verdict: Verdict::Allow,
        reason: Reason::NotProtected,
        rule: None,
    };
    let quiet = KernelOutcome {
        ret: 2,
        moved: vec![(Hook::Xdp, Reason::NotProtected, 1)],
        rules_moved: vec![],
        events: vec![],
    };
    assert_eq!(disagreement(Prog::Xdp, &pass, &parsed, &quiet, 54, 1), None);
    let noisy = KernelOutcome {
        events: vec![ev],
        ..quiet
    };
    assert!(disagreement(Prog::Xdp, &pass, &parsed, &noisy, 54, 1).is_some());
    let counted = KernelOutcome {
        rules_moved: vec![(0, Verdict::Allow, 1)],
        ..noisy
    };
    assert!(disagreement(Prog::Xdp, &pass, &parsed, &counted, 54, 1).is_some());
}

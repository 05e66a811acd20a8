//! Differential test: generated and mutated packets go through the loaded XDP, cgroup
//! ingress and cgroup egress programs (BPF_PROG_TEST_RUN) and through the reference model;
//! they must agree on every packet: the verdict, the reason (the one counter that moved),
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
    consts::NO_RULE,
    event::PacketEvent,
    model::{self, Judgement, Parsed, L4},
    reason::{Hook, Reason, Verdict},
};
use testbed::{
    is_root,
    kernel::{dropped, model_l3, Prog, TestKernel},
    packets::{generate, hex, hex_compact, test_run_refuses, try_run, Rng, Universe},
};

const DEFAULT_PACKETS: u64 = 3000;
const DEFAULT_SEED: u64 = 0x5EED_0003;
/// Disagreements printed in full (all are counted).
const MAX_PRINTED: usize = 20;

/// Reports allowed packets too, so every judged packet leaves an event to compare.
const POLICY: &str = r#"
[audit]
allowed = true

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
"#;

fn local_addrs() -> Vec<IpAddr> {
    ["192.0.2.1", "198.51.100.7", "2001:db8::1"].iter().map(|a| a.parse().unwrap()).collect()
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
    /// The reason counters that moved, and by how much.
    moved: Vec<(Reason, u64)>,
    events: Vec<PacketEvent>,
}

/// The event fields the model's parse determines: (family, proto, src, dst, sport, dport).
type Flow = (u8, u8, [u8; 16], [u8; 16], u16, u16);

fn model_flow(parsed: &Parsed) -> Option<Flow> {
    let Parsed::Ip { src, dst, l4: L4::Ports { proto, sport, dport, .. } } = *parsed else {
        return None;
    };
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (enforcer_common::consts::AF_INET, b)
        }
        IpAddr::V6(v6) => (enforcer_common::consts::AF_INET6, v6.octets()),
    };
    let (family, s) = bytes(src);
    let (_, d) = bytes(dst);
    Some((family, proto, s, d, sport, dport))
}

/// Compares the kernel's outcome with the model's; `None` when they agree.
fn disagreement(prog: Prog, want: &Judgement, parsed: &Parsed, got: &KernelOutcome) -> Option<String> {
    let mut why = Vec::new();
    if dropped(prog, got.ret) != (want.verdict == Verdict::Drop) {
        why.push(format!("return value {} but the model says {}", got.ret, want.verdict.name()));
    }
    if got.moved != [(want.reason, 1)] {
        why.push(format!("counters moved {:?}, the model says {}", got.moved, want.reason.name()));
    }
    if want.reason.is_judged() {
        match got.events.as_slice() {
            [ev] => {
                let want_rule = want.rule.map_or(NO_RULE, |r| r as u32);
                if ev.verdict != want.verdict as u8 || ev.reason != want.reason as u8 || ev.rule != want_rule {
                    why.push(format!(
                        "event verdict {} reason {} rule {}, the model says {} {} {:?}",
                        ev.verdict, ev.reason, ev.rule, want.verdict.name(), want.reason.name(), want.rule
                    ));
                }
                if ev.hook != prog.hook() as u8 {
                    why.push(format!("event hook {}", ev.hook));
                }
                if let Some(flow) = model_flow(parsed) {
                    let got_flow = (ev.family, ev.proto, ev.src, ev.dst, ev.sport, ev.dport);
                    if got_flow != flow {
                        why.push(format!("event flow {got_flow:?}, the model decoded {flow:?}"));
                    }
                }
            }
            evs => why.push(format!("{} events for a judged packet (want 1)", evs.len())),
        }
    } else if !got.events.is_empty() {
        why.push(format!("{} events for a packet not judged", got.events.len()));
    }
    if why.is_empty() {
        None
    } else {
        Some(why.join("; "))
    }
}

struct Runner {
    k: TestKernel,
    /// Reason counters as last read, per hook.
    counts: HashMap<(Hook, Reason), u64>,
}

impl Runner {
    /// Runs `prog` on `frame`; `Err` when test_run refuses the input.
    fn run(&mut self, prog: Prog, frame: &[u8], expected: Reason) -> Result<KernelOutcome, String> {
        let hook = prog.hook();
        let ret = try_run(&self.k, prog, frame)?;
        // Every run moves exactly one counter: read the expected one first (one lookup),
        // and all of the hook's only when it did not move by one.
        let now = counters::by_reason(&self.k.loaded.maps, hook, expected);
        let before = self.counts[&(hook, expected)];
        let moved = if now == before + 1 {
            self.counts.insert((hook, expected), now);
            vec![(expected, 1)]
        } else {
            let mut moved = Vec::new();
            for r in Reason::ALL {
                let now = counters::by_reason(&self.k.loaded.maps, hook, r);
                let before = self.counts.insert((hook, r), now).unwrap_or(0);
                if now != before {
                    moved.push((r, now - before));
                }
            }
            moved
        };
        let events = self.k.drain_events();
        Ok(KernelOutcome { ret, moved, events })
    }
}

#[test]
fn kernel_and_model_agree_on_generated_packets() {
    if !is_root() {
        eprintln!("skipped: loading BPF programs needs root");
        return;
    }
    let packets = env_u64("ENFORCER_FUZZ_PACKETS", DEFAULT_PACKETS);
    let seed = env_u64("ENFORCER_FUZZ_SEED", DEFAULT_SEED);
    let u = universe();
    let k = TestKernel::new(POLICY, &local_addrs());
    let counts = k.reason_counts();
    let mut r = Runner { k, counts };

    let mut compared = 0u64;
    let mut refused = 0u64;
    let mut per_reason: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut per_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failures = 0usize;
    let start = Instant::now();
    for i in 0..packets {
        let g = generate(&mut Rng::for_index(seed, i), &u);
        *per_kind.entry(g.kind).or_default() += 1;
        for prog in [Prog::Xdp, Prog::Ingress, Prog::Egress] {
            let want = r.k.model(prog, &g.frame);
            let parsed = match prog {
                Prog::Xdp => model::parse_frame(&g.frame),
                _ => model_l3(&g.frame),
            };
            let problem = match r.run(prog, &g.frame, want.reason) {
                Ok(got) => {
                    compared += 1;
                    *per_reason.entry((prog.hook().name(), want.reason.name())).or_default() += 1;
                    disagreement(prog, &want, &parsed, &got)
                        .map(|why| format!("{why}\n  kernel: {got:?}"))
                }
                Err(e) => match test_run_refuses(prog, &g.frame) {
                    // Input test_run cannot take: the model alone is checked.
                    Some(model_must_say) => {
                        refused += 1;
                        (want.reason != model_must_say).then(|| {
                            format!("test_run refuses this frame; the model must say {}, says {want:?}", model_must_say.name())
                        })
                    }
                    None => Some(format!("test_run refused the frame unexpectedly: {e}")),
                },
            };
            if let Some(why) = problem {
                failures += 1;
                if failures <= MAX_PRINTED {
                    eprintln!(
                        "DISAGREEMENT seed={seed:#x} index={i} kind={} hook={}\n  {why}\n  model: {want:?}\n  parsed: {parsed:?}\n  frame ({} bytes): {}\n{}",
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

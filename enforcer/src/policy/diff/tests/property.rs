//! The property: a packet's verdict differs iff the diff lists a change covering it.

use std::net::IpAddr;

use enforcer_common::{
    consts::{IPPROTO_TCP, IPPROTO_UDP},
    model::{self, Arrival, Context, Flow, Parsed, L4},
    reason::Hook,
};

use super::*;

/// A small seeded PRNG (splitmix64): reproducible cases without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Few ports, addresses and cgroups, so that rules overlap and packets hit their edges.
const PORT_MAX: u64 = 12;
const CGROUPS: [&str; 6] = ["/a", "/a/b", "/a/b/c", "/a/c", "/d", "/d/e"];

fn rand_prefix(rng: &mut Rng) -> String {
    if rng.chance(80) {
        let len = 20 + rng.below(13) as u32; // 20..=32 within 10.0.0.0/20
        let host = rng.below(1 << 12) as u32;
        let addr = (10u32 << 24) | host;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let a = std::net::Ipv4Addr::from(addr & mask);
        if rng.chance(8) {
            return "0.0.0.0/0".into();
        }
        format!("{a}/{len}")
    } else if rng.chance(30) {
        "::/0".into()
    } else {
        let len = 120 + rng.below(9) as u32;
        let host = rng.below(256) as u128;
        let addr: u128 = (0xfd00u128 << 112) | host;
        let mask = u128::MAX << (128 - len);
        format!("{}/{len}", std::net::Ipv6Addr::from(addr & mask))
    }
}

/// A rule as TOML pieces, so a mutation can edit one field.
#[derive(Clone)]
struct GenRule {
    name: String,
    protocol: &'static str,
    ports: Vec<(u64, u64)>,
    from: Vec<String>,
    cgroups: Vec<String>,
    mode: Option<&'static str>,
}

#[derive(Clone)]
struct GenPolicy {
    mode: Option<&'static str>,
    failsafe: Vec<String>,
    rules: Vec<GenRule>,
}

fn rand_rule(rng: &mut Rng, name: String) -> GenRule {
    let ports = (0..1 + rng.below(2))
        .map(|_| {
            let a = 1 + rng.below(PORT_MAX);
            (a, (a + rng.below(3)).min(PORT_MAX))
        })
        .collect();
    GenRule {
        name,
        protocol: ["tcp", "udp", "any"][rng.below(3) as usize],
        ports,
        from: (0..rng.below(4)).map(|_| rand_prefix(rng)).collect(),
        cgroups: (0..rng.below(3))
            .map(|_| rng.pick(&CGROUPS).to_string())
            .collect(),
        mode: *rng.pick(&[None, None, Some("enforce"), Some("audit")]),
    }
}

fn rand_policy(rng: &mut Rng) -> GenPolicy {
    GenPolicy {
        mode: *rng.pick(&[None, Some("audit")]),
        failsafe: (0..rng.below(2))
            .map(|_| {
                format!(
                    "{}/{}",
                    rng.pick(&["tcp", "udp", "any"]),
                    1 + rng.below(PORT_MAX)
                )
            })
            .collect(),
        rules: (0..1 + rng.below(4))
            .map(|i| rand_rule(rng, format!("r{i}")))
            .collect(),
    }
}

/// A small edit, often one that keeps access (a split prefix, a reorder, a rename).
fn mutate(rng: &mut Rng, p: &GenPolicy) -> GenPolicy {
    let mut q = p.clone();
    for _ in 0..1 + rng.below(2) {
        let i = rng.below(q.rules.len() as u64) as usize;
        let r = &mut q.rules[i];
        match rng.below(11) {
            0 => {
                // Split a prefix into its halves.
                if let Some(f) = r.from.first().cloned() {
                    let pre = crate::policy::values::parse_prefix(&f).unwrap();
                    let max = if pre.addr.is_ipv4() { 32 } else { 128 };
                    if pre.len < max {
                        let lo = format!("{}/{}", pre.addr, pre.len + 1);
                        let hi = match pre.addr {
                            IpAddr::V4(a) => format!(
                                "{}/{}",
                                std::net::Ipv4Addr::from(
                                    u32::from(a) | (1 << (31 - pre.len as u32))
                                ),
                                pre.len + 1
                            ),
                            IpAddr::V6(a) => format!(
                                "{}/{}",
                                std::net::Ipv6Addr::from(
                                    u128::from(a) | (1 << (127 - pre.len as u32))
                                ),
                                pre.len + 1
                            ),
                        };
                        r.from.remove(0);
                        r.from.push(hi);
                        r.from.push(lo);
                    }
                }
            }
            1 => q.rules.reverse(),
            2 => r.name = format!("{}x", r.name),
            3 => r.from.reverse(),
            4 => r.from.push(rand_prefix(rng)),
            5 => {
                r.from.pop();
            }
            6 => r.mode = *rng.pick(&[None, Some("enforce"), Some("audit")]),
            7 => r.ports = rand_rule(rng, String::new()).ports,
            8 => r.cgroups = rand_rule(rng, String::new()).cgroups,
            9 => q.mode = *rng.pick(&[None, Some("audit")]),
            _ => q.failsafe = rand_policy(rng).failsafe,
        }
    }
    q
}

fn toml(p: &GenPolicy) -> String {
    let q = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = String::new();
    if let Some(m) = p.mode {
        s += &format!("mode = \"{m}\"\n");
    }
    s += &format!("[failsafe]\nports = [{}]\n", q(&p.failsafe));
    for r in &p.rules {
        let ports: Vec<String> = r.ports.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        s += &format!(
            "[[rule]]\nname = \"{}\"\nprotocol = \"{}\"\nports = [{}]\nallow_from = [{}]\nallow_cgroups = [{}]\n",
            r.name,
            r.protocol,
            q(&ports),
            q(&r.from),
            q(&r.cgroups)
        );
        if let Some(m) = r.mode {
            s += &format!("mode = \"{m}\"\n");
        }
    }
    s
}

const LOCAL4: &str = "192.0.2.1";
const LOCAL6: &str = "2001:db8::1";

struct GenPacket {
    hook: Hook,
    parsed: Parsed,
    cgroup: Option<String>,
    in_host_netns: bool,
    authorized: bool,
}

fn rand_addr(rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(std::net::Ipv6Addr::from(
            (0xfd00u128 << 112) | rng.below(300) as u128,
        ))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::from(
            (10u32 << 24) | rng.below(1 << 13) as u32,
        ))
    }
}

fn rand_packet(rng: &mut Rng) -> GenPacket {
    let hook = *rng.pick(&[
        Hook::Xdp,
        Hook::CgroupIngress,
        Hook::CgroupEgress,
        Hook::CgroupConnect,
        Hook::CgroupSendmsg,
    ]);
    let v6 = rng.chance(30);
    let src = rand_addr(rng, v6);
    let dst = if rng.chance(85) {
        (if v6 { LOCAL6 } else { LOCAL4 }).parse().unwrap()
    } else {
        rand_addr(rng, v6)
    };
    let proto = *rng.pick(&[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_TCP, IPPROTO_UDP, 1]);
    let l4 = match rng.below(20) {
        0 => L4::Truncated(proto),
        1 => L4::BadFragment(proto),
        2 => L4::LaterFragment,
        _ if proto == 1 => L4::Other(1),
        _ => L4::Ports {
            proto,
            sport: 40000,
            dport: rng.below(PORT_MAX + 2) as u16,
            complete: rng.chance(90),
        },
    };
    let parsed = if rng.chance(3) {
        Parsed::BadIp { family: 2 }
    } else {
        Parsed::Ip { src, dst, l4 }
    };
    let mut cgroup = rng.pick(&CGROUPS).to_string();
    if rng.chance(30) {
        cgroup += "/x";
    }
    GenPacket {
        hook,
        parsed,
        cgroup: Some(cgroup),
        in_host_netns: rng.chance(85),
        authorized: rng.chance(20),
    }
}

/// The namespace whose flows "authorized" packets ride on (their arrival path's).
const FLOW_NETNS: u64 = 7;

/// For a packet marked authorized: the flow a local sender opened for it, on its path.
fn flow_of(g: &GenPacket) -> Vec<Flow> {
    match g.parsed {
        Parsed::Ip {
            src,
            dst,
            l4:
                L4::Ports {
                    proto,
                    sport,
                    dport,
                    ..
                },
        } if g.authorized => vec![Flow {
            proto,
            src,
            sport,
            dst,
            dport,
            netns: FLOW_NETNS,
        }],
        _ => Vec::new(),
    }
}

/// The packet as the diff sees it, or None when no policy can refuse it.
fn as_diff_packet<'a>(g: &'a GenPacket, local: &[IpAddr]) -> Option<Packet<'a>> {
    let sending = !matches!(g.hook, Hook::Xdp | Hook::CgroupIngress);
    let Parsed::Ip { src, dst, l4 } = g.parsed else {
        return matches!(g.parsed, Parsed::BadIp { .. }).then_some(Packet::Malformed);
    };
    let to_host = match g.hook {
        Hook::CgroupIngress => g.in_host_netns,
        _ => local.contains(&dst),
    };
    match l4 {
        L4::Ports {
            proto,
            dport,
            complete,
            ..
        } if to_host => Some(Packet::Port {
            proto,
            dport,
            probe: Probe {
                src,
                source_counts: !(local.contains(&src) || sending && g.in_host_netns),
                complete,
                sender_cgroup: if sending { g.cgroup.as_deref() } else { None },
                authorized_flow: !sending && g.authorized,
            },
        }),
        L4::Truncated(_) | L4::BadFragment(_) if to_host => Some(Packet::Malformed),
        _ => None,
    }
}

#[test]
fn verdicts_differ_exactly_where_the_diff_says() {
    let seed = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_d1ff);
    let cases = 3000;
    let packets = 60;
    let local: Vec<IpAddr> = vec![LOCAL4.parse().unwrap(), LOCAL6.parse().unwrap()];
    let mut rng = Rng(seed);
    let (mut differing, mut unchanged_pairs) = (0, 0);
    for case in 0..cases {
        let a = rand_policy(&mut rng);
        let b = if rng.chance(70) {
            mutate(&mut rng, &a)
        } else {
            rand_policy(&mut rng)
        };
        let (ta, tb) = (toml(&a), toml(&b));
        let (pa, pb) = (
            parse_str(Path::new("a.toml"), &ta).unwrap_or_else(|e| panic!("{e}\n{ta}")),
            parse_str(Path::new("b.toml"), &tb).unwrap_or_else(|e| panic!("{e}\n{tb}")),
        );
        let x = diff(&Side::of(&pa, NOW, &[]), &Side::of(&pb, NOW, &[]));
        if x.ports.is_empty() && x.mode.is_none() {
            unchanged_pairs += 1;
        }
        for _ in 0..packets {
            let g = rand_packet(&mut rng);
            let flows = flow_of(&g);
            let ctx = Context {
                socket_in_host_netns: g.in_host_netns,
                sender_cgroup: g.cgroup.as_deref(),
                arrival: if g.authorized {
                    Arrival::Namespace(FLOW_NETNS)
                } else {
                    Arrival::Other
                },
                flows: &flows,
                ..Context::remote(g.hook, &local)
            };
            let va = model::judge(&pa.verdict, &ctx, &g.parsed).verdict;
            let vb = model::judge(&pb.verdict, &ctx, &g.parsed).verdict;
            let p = as_diff_packet(&g, &local);
            let covered = p.as_ref().is_some_and(|p| x.covers(p));
            let why = || {
                format!(
                    "case {case} (seed {seed:#x}): {:?} {:?} cgroup {:?} netns {} authorized {}: {va:?} -> {vb:?}, covered {covered}\n--- a\n{ta}--- b\n{tb}{}",
                    g.hook,
                    g.parsed,
                    g.cgroup,
                    g.in_host_netns,
                    g.authorized,
                    text(&x, "a", "b")
                )
            };
            assert_eq!(va != vb, covered, "{}", why());
            if va != vb {
                differing += 1;
            }
            // Who gained or lost is named in the lists.
            if let Some(Packet::Port {
                proto,
                dport,
                probe,
            }) = p.filter(|_| va != vb)
            {
                let c = x.ports.iter().find(|c| c.applies_to(proto, dport)).unwrap();
                let named = |s: &Sets| {
                    s.from.iter().any(|e| e.contains_addr(probe.src))
                        || probe
                            .sender_cgroup
                            .is_some_and(|cg| s.cgroups.iter().any(|e| e.contains_cgroup(cg)))
                };
                use enforcer_common::reason::Verdict::Allow;
                if probe.complete && (va == Allow) != (vb == Allow) {
                    let list = if vb == Allow { &c.gained } else { &c.lost };
                    assert!(named(list), "not named in the lists: {}", why());
                }
            }
        }
        for c in &x.ports {
            assert!(
                has_witness(c, &pa.verdict, &pb.verdict, &local),
                "case {case}: no packet changes verdict under {c:#?}\n--- a\n{ta}--- b\n{tb}"
            );
        }
    }
    // The generator must exercise both outcomes.
    assert!(differing > 1000, "{differing} differing verdicts");
    assert!(
        unchanged_pairs > 100,
        "{unchanged_pairs} pairs without change"
    );
}

/// The first and last address of a prefix, and the addresses just outside it.
fn edges(p: &enforcer_common::model::Prefix) -> Vec<IpAddr> {
    match p.addr {
        IpAddr::V4(a) => {
            let host = if p.len == 0 {
                u32::MAX
            } else {
                (1u32 << (32 - p.len as u32)) - 1
            };
            let lo = u32::from(a);
            [
                lo.wrapping_sub(1),
                lo,
                lo | host,
                (lo | host).wrapping_add(1),
            ]
            .map(|x| IpAddr::V4(x.into()))
            .to_vec()
        }
        IpAddr::V6(a) => {
            let host = if p.len == 0 {
                u128::MAX
            } else {
                (1u128 << (128 - p.len as u32)) - 1
            };
            let lo = u128::from(a);
            [
                lo.wrapping_sub(1),
                lo,
                lo | host,
                (lo | host).wrapping_add(1),
            ]
            .map(|x| IpAddr::V6(x.into()))
            .to_vec()
        }
    }
}

/// Whether some packet to the first port of `c` gets another verdict from the two
/// policies: a listed change is never vacuous. Candidates are the edges of every prefix
/// and the cgroups the change names, and their neighbours.
fn has_witness(c: &PortChange, a: &VerdictPolicy, b: &VerdictPolicy, local: &[IpAddr]) -> bool {
    let parse = |s: &str| crate::policy::values::parse_prefix(s).unwrap();
    let mut srcs: Vec<IpAddr> = vec![
        "203.0.113.9".parse().unwrap(),
        "2001:db8:ffff::9".parse().unwrap(),
    ];
    let mut cgroups: Vec<String> = CGROUPS.iter().map(|c| c.to_string()).collect();
    cgroups.push("/zz".into());
    for s in [&c.gained, &c.lost] {
        for e in &s.from {
            for p in std::iter::once(&e.set).chain(&e.except) {
                srcs.extend(edges(&parse(p)));
            }
        }
        for e in &s.cgroups {
            cgroups.extend(std::iter::once(&e.set).chain(&e.except).cloned());
        }
    }
    for acc in [&c.before, &c.after] {
        srcs.extend(acc.from.prefixes().iter().flat_map(edges));
        cgroups.extend(acc.cgroups.paths().iter().cloned());
    }
    let extra: Vec<String> = cgroups
        .iter()
        .map(|c| format!("{}/x", c.trim_end_matches('/')))
        .collect();
    cgroups.extend(extra);
    cgroups.sort();
    cgroups.dedup();
    srcs.sort();
    srcs.dedup();
    let proto = if c.protocol == "udp" {
        IPPROTO_UDP
    } else {
        IPPROTO_TCP
    };
    let dport = c.ports[0].first;
    for src in srcs {
        let dst = if src.is_ipv4() { local[0] } else { local[1] };
        for complete in [true, false] {
            let parsed = Parsed::Ip {
                src,
                dst,
                l4: L4::Ports {
                    proto,
                    sport: 40000,
                    dport,
                    complete,
                },
            };
            let receiving = [(Hook::Xdp, None, false), (Hook::Xdp, None, true)];
            let sending = cgroups
                .iter()
                .map(|cg| (Hook::CgroupConnect, Some(cg.as_str()), false));
            for (hook, cg, authorized) in receiving.into_iter().chain(sending) {
                let flows = flow_of(&GenPacket {
                    hook,
                    parsed,
                    cgroup: None,
                    in_host_netns: true,
                    authorized,
                });
                let ctx = Context {
                    sender_cgroup: cg,
                    arrival: if authorized {
                        Arrival::Namespace(FLOW_NETNS)
                    } else {
                        Arrival::Other
                    },
                    flows: &flows,
                    ..Context::remote(hook, local)
                };
                if model::judge(a, &ctx, &parsed).verdict != model::judge(b, &ctx, &parsed).verdict
                {
                    return true;
                }
            }
        }
    }
    false
}

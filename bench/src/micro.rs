//! Per-packet cost through BPF_PROG_TEST_RUN (sections 1 and 2): enforcer's programs on
//! each kind of packet, beside the floor (a trivial program of the same type) and
//! xdp-filter, interleaved round by round; then how the cost scales with the policy.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
};

use anyhow::bail;
use enforcer::policy::Policy;

use crate::{
    bpf::{self, XDP_DROP, XDP_PASS},
    env::check_interrupted,
    kern::{self, build_policy, Kern},
    packets::{arp, tcp4, tcp4_vlan, tcp6},
    sol::Sol,
    stats::Samples,
    xdpfilter::XdpFilter,
};

pub const SKB_DROP: u32 = 0;
pub const SKB_PASS: u32 = 1;

/// Test runs per XDP figure, per cgroup_skb figure, and per figure that must fit in the
/// ring buffer (it holds `audit::ring_events()`).
pub const XDP_REPEAT: u32 = 2_000_000;
pub const SKB_REPEAT: u32 = 1_000_000;
pub const EVENT_REPEAT: u32 = 100_000;
/// Test runs per scaling figure: 20 policies, three figures each, every round; fewer runs
/// keep the section within its share of the bench's 10 minutes.
pub const SCALE_REPEAT: u32 = 500_000;

pub const HOST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const ALLOWED4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
pub const REFUSED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
pub const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const ALLOWED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 5);
pub const REFUSED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x66);

/// The trivial comparison programs.
pub struct Trivial {
    pub xdp_pass: OwnedFd,
    pub xdp_drop: OwnedFd,
    pub skb_pass: OwnedFd,
}

impl Trivial {
    pub fn load() -> anyhow::Result<Self> {
        Ok(Trivial {
            xdp_pass: bpf::load_trivial(bpf::PROG_TYPE_XDP, 0, XDP_PASS as i32, "bench_xdp_pass")?,
            xdp_drop: bpf::load_trivial(bpf::PROG_TYPE_XDP, 0, XDP_DROP as i32, "bench_xdp_drop")?,
            skb_pass: bpf::load_trivial(
                bpf::PROG_TYPE_CGROUP_SKB,
                bpf::ATTACH_CGROUP_INET_INGRESS,
                1,
                "bench_skb_pass",
            )?,
        })
    }
}

/// Whether this enforcer has audit event rate limits (`[audit] rate_per_rule`).
pub fn has_rate_limits() -> bool {
    kern::parse("[audit]\nrate_per_rule = 0\nrate_global = 0\n").is_ok()
}

/// The `[audit]` table for a policy: events unlimited (every refusal tries to emit one), or
/// the defaults (rate-limited, when the build has limits).
pub fn audit_table(unlimited: bool) -> &'static str {
    if unlimited && has_rate_limits() {
        "[audit]\nrate_per_rule = 0\nrate_global = 0\n"
    } else {
        ""
    }
}

/// The bench's own cgroup (as in /proc/self/cgroup): test_run's socket is in it, so the
/// egress program's allowed path (a process of this host, judged by its cgroup) is taken
/// by allowing it.
fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_else(|| "/".into())
}

pub fn base_policy(unlimited: bool) -> String {
    format!(
        "mode = \"enforce\"\n{}\n[[rule]]\nname = \"postgres\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.0.0/16\", \"fd00:1::/48\"]\nallow_cgroups = [\"{}\"]\n\
         [[rule]]\nname = \"other\"\nprotocol = \"tcp\"\nports = [5433]\nallow_from = [\"10.1.0.0/16\", \"fd00:1::/48\"]\n",
        audit_table(unlimited),
        own_cgroup()
    )
}

pub fn local_addrs() -> Vec<IpAddr> {
    vec![IpAddr::V4(HOST4), IpAddr::V6(HOST6)]
}

/// One timed test run: the kernel's average nanoseconds per run (test_run's `duration`,
/// whole nanoseconds). The kernel stops its clock while the thread yields the CPU, so
/// other load on the machine stays out of it, and so does each call's setup (for a
/// program not attached anywhere, adding it to the XDP dispatcher and removing it again,
/// which waits for RCU grace periods).
pub fn time_run(
    fd: RawFd,
    frame: &[u8],
    repeat: u32,
    expect: u32,
    what: &str,
) -> anyhow::Result<f64> {
    let r = bpf::test_run(fd, frame, repeat)?;
    if r.retval != expect {
        bail!(
            "{what}: returned {} where {expect} was expected: the bench would time the wrong path",
            r.retval
        );
    }
    Ok(r.ns as f64)
}

pub struct XdpRow {
    pub case: String,
    pub enforcer: Samples,
    pub floor: Samples,
    /// The speed-of-light contender (bench/sol-ebpf).
    pub sol: Samples,
    /// The xdp-filter list that does the nearest job, and its figures in the full variant
    /// (`-f all`) and the lean one.
    pub xdpf_label: &'static str,
    pub xdpf: Samples,
    pub xdpf_lean: Samples,
}

pub struct SkbRow {
    pub hook: &'static str,
    pub case: String,
    pub enforcer: Samples,
    pub trivial: Samples,
}

pub struct MicroResults {
    pub xdp: Vec<XdpRow>,
    pub skb: Vec<SkbRow>,
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ring {
    /// Run with the ring buffer full (no event can be written).
    Full,
    /// Run with the ring buffer drained, `EVENT_REPEAT` times, every run writing an event.
    Events,
    /// Run on the rate-limited kernel (default `[audit]` limits, bucket empty).
    Limited,
    /// No event concerned.
    Any,
}

struct Case {
    case: String,
    frame: Vec<u8>,
    ring: Ring,
    enforcer_expect: u32,
    /// xdp-filter: true for the allow-list variant.
    xdpf_allow_list: bool,
    xdpf_expect: u32,
}

struct SkbCase {
    hook: &'static str,
    case: String,
    frame: Vec<u8>,
    ring: Ring,
    expect: u32,
}

pub fn run(
    trivial: &Trivial,
    sol: &Sol,
    xdpf: &XdpFilter,
    rounds: usize,
) -> anyhow::Result<MicroResults> {
    let limits = has_rate_limits();
    let mut notes = Vec::new();
    let mut unlimited = Kern::new(&base_policy(true), &local_addrs())?;
    let mut limited = if limits {
        Some(Kern::new(&base_policy(false), &local_addrs())?)
    } else {
        None
    };

    let refused = tcp4(REFUSED4, HOST4, 40000, 5432);
    let no_event = if limits { Ring::Limited } else { Ring::Full };
    let mut cases = vec![
        Case {
            case: "non-IP (ARP)".into(),
            frame: arp(REFUSED4, HOST4),
            ring: Ring::Any,
            enforcer_expect: XDP_PASS,
            xdpf_allow_list: false,
            xdpf_expect: XDP_PASS,
        },
        Case {
            case: "unprotected port (tcp/80)".into(),
            frame: tcp4(REFUSED4, HOST4, 40000, 80),
            ring: Ring::Any,
            enforcer_expect: XDP_PASS,
            xdpf_allow_list: false,
            xdpf_expect: XDP_PASS,
        },
        Case {
            case: "protected port, allowed source".into(),
            frame: tcp4(ALLOWED4, HOST4, 40000, 5432),
            ring: Ring::Any,
            enforcer_expect: XDP_PASS,
            xdpf_allow_list: true,
            xdpf_expect: XDP_PASS,
        },
        Case {
            case: "refused source, with its event".into(),
            frame: refused.clone(),
            ring: Ring::Events,
            enforcer_expect: XDP_DROP,
            xdpf_allow_list: false,
            xdpf_expect: XDP_DROP,
        },
    ];
    if limits {
        cases.push(Case {
            case: "refused source, no event (rate limit spent)".into(),
            frame: refused.clone(),
            ring: Ring::Limited,
            enforcer_expect: XDP_DROP,
            xdpf_allow_list: false,
            xdpf_expect: XDP_DROP,
        });
    }
    cases.push(Case {
        case: "refused source, no event (ring buffer full)".into(),
        frame: refused.clone(),
        ring: Ring::Full,
        enforcer_expect: XDP_DROP,
        xdpf_allow_list: false,
        xdpf_expect: XDP_DROP,
    });
    cases.extend([
        Case {
            case: "IPv6, allowed source".into(),
            frame: tcp6(ALLOWED6, HOST6, 40000, 5432),
            ring: Ring::Any,
            enforcer_expect: XDP_PASS,
            xdpf_allow_list: true,
            xdpf_expect: XDP_PASS,
        },
        Case {
            case: "IPv6, refused source, no event".into(),
            frame: tcp6(REFUSED6, HOST6, 40000, 5432),
            ring: no_event,
            enforcer_expect: XDP_DROP,
            xdpf_allow_list: false,
            xdpf_expect: XDP_DROP,
        },
        Case {
            case: "802.1Q VLAN, allowed source".into(),
            frame: tcp4_vlan(100, ALLOWED4, HOST4, 40000, 5432),
            ring: Ring::Any,
            enforcer_expect: XDP_PASS,
            xdpf_allow_list: true,
            xdpf_expect: XDP_PASS,
        },
    ]);
    let skb_refused_l3 = refused.clone();
    let egress_refused = tcp4(REFUSED4, HOST4, 40000, 5433);
    let skb_cases = vec![
        SkbCase {
            hook: "ingress",
            case: "unprotected port".into(),
            frame: tcp4(REFUSED4, HOST4, 40000, 80),
            ring: Ring::Any,
            expect: SKB_PASS,
        },
        SkbCase {
            hook: "ingress",
            case: "allowed source".into(),
            frame: tcp4(ALLOWED4, HOST4, 40000, 5432),
            ring: Ring::Any,
            expect: SKB_PASS,
        },
        SkbCase {
            hook: "ingress",
            case: "refused source, with its event".into(),
            frame: skb_refused_l3.clone(),
            ring: Ring::Events,
            expect: SKB_DROP,
        },
        SkbCase {
            hook: "ingress",
            case: "refused source, no event".into(),
            frame: skb_refused_l3.clone(),
            ring: no_event,
            expect: SKB_DROP,
        },
        SkbCase {
            hook: "ingress",
            case: "IPv6, allowed source".into(),
            frame: tcp6(ALLOWED6, HOST6, 40000, 5432),
            ring: Ring::Any,
            expect: SKB_PASS,
        },
        SkbCase {
            hook: "egress",
            case: "unprotected port".into(),
            frame: tcp4(REFUSED4, HOST4, 40000, 80),
            ring: Ring::Any,
            expect: SKB_PASS,
        },
        // test_run's socket is this host's: it is judged by its cgroup, which the policy
        // allows; its source address counts for nothing.
        SkbCase {
            hook: "egress",
            case: "allowed source".into(),
            frame: tcp4(ALLOWED4, HOST4, 40000, 5432),
            ring: Ring::Any,
            expect: SKB_PASS,
        },
        // Refused: a port whose rule allows no cgroup.
        SkbCase {
            hook: "egress",
            case: "refused source, with its event".into(),
            frame: egress_refused.clone(),
            ring: Ring::Events,
            expect: SKB_DROP,
        },
        SkbCase {
            hook: "egress",
            case: "refused source, no event".into(),
            frame: egress_refused.clone(),
            ring: no_event,
            expect: SKB_DROP,
        },
    ];

    let mut xdp_rows: Vec<XdpRow> = cases
        .iter()
        .map(|c| XdpRow {
            case: c.case.clone(),
            enforcer: Samples::default(),
            floor: Samples::default(),
            sol: Samples::default(),
            xdpf_label: if c.xdpf_allow_list {
                "allow list (src)"
            } else {
                "deny list (tcp/5432)"
            },
            xdpf: Samples::default(),
            xdpf_lean: Samples::default(),
        })
        .collect();
    let mut skb_rows: Vec<SkbRow> = skb_cases
        .iter()
        .map(|c| SkbRow {
            hook: c.hook,
            case: c.case.clone(),
            enforcer: Samples::default(),
            trivial: Samples::default(),
        })
        .collect();

    // Warm-up (caches, JIT images, page pools), not recorded; it also fills the ring.
    for c in &cases {
        bpf::test_run(unlimited.xdp, &c.frame, 200_000)?;
        bpf::test_run(xdpf.deny_list.as_raw_fd(), &c.frame, 200_000)?;
        bpf::test_run(sol.xdp, &c.frame, 200_000)?;
    }
    if let Some(l) = limited.as_mut() {
        // Spend the rate-limit bucket.
        bpf::test_run(l.xdp, &refused, 200_000)?;
        bpf::test_run(l.ingress, &refused, 200_000)?;
        bpf::test_run(l.egress, &egress_refused, 200_000)?;
    }
    unlimited.fill(&refused)?;

    for round in 0..rounds {
        check_interrupted()?;
        // Rotate the order each round so no case always runs first or last.
        let n = cases.len();
        for i in (0..n).map(|i| (i + round) % n) {
            let c = &cases[i];
            let k: &mut Kern = match c.ring {
                Ring::Limited => limited.as_mut().expect("limited kernel"),
                _ => &mut unlimited,
            };
            let e = match c.ring {
                Ring::Events => {
                    k.drain();
                    let lost = k.events_lost();
                    let ns = time_run(k.xdp, &c.frame, EVENT_REPEAT, c.enforcer_expect, &c.case)?;
                    let got = k.drain();
                    if k.events_lost() != lost || got != EVENT_REPEAT as usize {
                        bail!(
                            "{}: {got} events of {EVENT_REPEAT} reached the ring",
                            c.case
                        );
                    }
                    k.fill(&refused)?;
                    ns
                }
                Ring::Limited => {
                    let ns = time_run(k.xdp, &c.frame, XDP_REPEAT, c.enforcer_expect, &c.case)?;
                    k.drain();
                    ns
                }
                _ => time_run(k.xdp, &c.frame, XDP_REPEAT, c.enforcer_expect, &c.case)?,
            };
            xdp_rows[i].enforcer.push(e);
            let f = time_run(
                trivial.xdp_pass.as_raw_fd(),
                &c.frame,
                XDP_REPEAT,
                XDP_PASS,
                "floor",
            )?;
            xdp_rows[i].floor.push(f);
            let s = time_run(
                sol.xdp,
                &c.frame,
                XDP_REPEAT,
                c.enforcer_expect,
                "speed of light",
            )?;
            xdp_rows[i].sol.push(s);
            let (full, lean) = if c.xdpf_allow_list {
                (&xdpf.allow_list, &xdpf.allow_list_lean)
            } else {
                (&xdpf.deny_list, &xdpf.deny_list_lean)
            };
            let x = time_run(
                full.as_raw_fd(),
                &c.frame,
                XDP_REPEAT,
                c.xdpf_expect,
                "xdp-filter",
            )?;
            xdp_rows[i].xdpf.push(x);
            let x = time_run(
                lean.as_raw_fd(),
                &c.frame,
                XDP_REPEAT,
                c.xdpf_expect,
                "xdp-filter (lean)",
            )?;
            xdp_rows[i].xdpf_lean.push(x);
        }
        let n = skb_cases.len();
        for i in (0..n).map(|i| (i + round) % n) {
            let c = &skb_cases[i];
            let k: &mut Kern = match c.ring {
                Ring::Limited => limited.as_mut().expect("limited kernel"),
                _ => &mut unlimited,
            };
            let fd = if c.hook == "ingress" {
                k.ingress
            } else {
                k.egress
            };
            let what = format!("cgroup {} {}", c.hook, c.case);
            let e = match c.ring {
                Ring::Events => {
                    k.drain();
                    let lost = k.events_lost();
                    let ns = time_run(fd, &c.frame, EVENT_REPEAT, c.expect, &what)?;
                    let got = k.drain();
                    if k.events_lost() != lost || got != EVENT_REPEAT as usize {
                        bail!("{what}: {got} events of {EVENT_REPEAT} reached the ring");
                    }
                    k.fill(&refused)?;
                    ns
                }
                Ring::Limited => {
                    let ns = time_run(fd, &c.frame, SKB_REPEAT, c.expect, &what)?;
                    k.drain();
                    ns
                }
                _ => time_run(fd, &c.frame, SKB_REPEAT, c.expect, &what)?,
            };
            skb_rows[i].enforcer.push(e);
            let t = time_run(
                trivial.skb_pass.as_raw_fd(),
                &c.frame,
                SKB_REPEAT,
                SKB_PASS,
                "trivial cgroup_skb",
            )?;
            skb_rows[i].trivial.push(t);
        }
    }
    if limits {
        notes.push("\"No event (rate limit spent)\": the policy's default `[audit]` rate limits, with the per-rule bucket already empty — the path every packet of a flood takes after the first ~1,000 per second per CPU. This is the honest \"without event\" figure: the program runs unchanged and decides exactly as it does for a flood.".into());
    }
    notes.push(format!(
        "\"No event (ring buffer full)\": events unlimited, and the {} MiB ring left undrained so every reservation fails; this includes the failed bpf_ringbuf_reserve and the loss counter, so it is an upper bound of a refusal without an event. \"With its event\": events unlimited, the ring drained before each run and {EVENT_REPEAT} runs per figure (what the ring holds), every run writing its event (checked: all {EVENT_REPEAT} read back, none lost).",
        enforcer_common::consts::EVENTS_BYTES >> 20
    ));
    Ok(MicroResults {
        xdp: xdp_rows,
        skb: skb_rows,
        notes,
    })
}

/// Scaling (section 2): allowed and refused cost against policy size.
pub struct ScaleRow {
    pub label: String,
    pub allowed: Samples,
    pub refused: Samples,
    pub floor: Samples,
}

pub struct ScaleSeries {
    pub title: String,
    /// The target for this series (largest size ≤ 1.3× the first), by its short name.
    pub target: Option<&'static str>,
    pub rows: Vec<ScaleRow>,
}

/// `n` distinct IPv4 prefixes, all /32 (`mixed` false) or of lengths cycling through
/// /16../32 from a /16 (17 distinct lengths, so up to 17 hash probes per refused packet);
/// none covers 192.0.2.0/24. The first one holds the allowed source the bench sends from.
pub fn prefixes(n: usize, mixed: bool) -> Vec<(IpAddr, u8)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut x: u32 = 0x9e37_79b9;
    while out.len() < n {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let len = if mixed {
            16 + (out.len() % 17) as u8
        } else {
            32
        };
        // First octet 1..=126: clear of 192.0.2.0/24.
        let a = ((x >> 8) % 126 + 1) << 24 | (x & 0x00ff_ffff);
        let masked = if len == 0 {
            0
        } else {
            a & (u32::MAX << (32 - len))
        };
        if seen.insert((masked, len)) {
            out.push((IpAddr::V4(Ipv4Addr::from(masked)), len));
        }
    }
    out
}

/// `n` distinct IPv6 prefixes in fd00::/8 of lengths cycling through /32../64 from a /32
/// (33 distinct lengths); none covers 2001:db8::/32. The first one, a /32, holds the
/// allowed source.
pub fn prefixes6(n: usize) -> Vec<(IpAddr, u8)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < n {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let len = 32 + (out.len() % 33) as u8;
        let a = (0xfdu128 << 120) | ((x as u128 & ((1 << 56) - 1)) << 64);
        let masked = a & (u128::MAX << (128 - len));
        if seen.insert((masked, len)) {
            out.push((IpAddr::V6(Ipv6Addr::from(masked)), len));
        }
    }
    out
}

/// One policy size of a scaling series: its policy and the two frames sent.
struct Config {
    label: String,
    policy: Policy,
    allowed: Vec<u8>,
    refused: Vec<u8>,
}

/// A config loaded: its own copy of the programs with its policy written.
struct Loaded {
    k: Kern,
    allowed: Vec<u8>,
    refused: Vec<u8>,
}

pub fn scaling(
    trivial: &Trivial,
    rounds: usize,
) -> anyhow::Result<(Vec<ScaleSeries>, Vec<String>)> {
    let limits = has_rate_limits();
    let audit = audit_table(false);
    let refused = tcp4(REFUSED4, HOST4, 40000, 5432);
    let mut notes = Vec::new();
    let header = format!("mode = \"enforce\"\n{audit}");
    let mut series: Vec<(String, Option<&'static str>, Vec<Config>)> = Vec::new();
    for (family, title, target) in [
        (32, "IPv4 allow_from prefixes, all /32 (one hash probe per packet)", None),
        (16, "IPv4 allow_from prefixes, lengths /16–/32 (one probe per distinct length, longest first: up to 17; the allowed source is in a /16, found by the last probe)", Some("IPv4, 17 lengths")),
        (6, "IPv6 allow_from prefixes, lengths /32–/64 (up to 33 probes; the allowed source is in a /32, found by the last probe)", Some("IPv6, 33 lengths")),
    ] {
        let mut rows = Vec::new();
        for n in [1usize, 16, 256, 4096, 65536] {
            let p = match family {
                6 => prefixes6(n),
                _ => prefixes(n, family == 16),
            };
            let distinct: std::collections::BTreeSet<u8> = p.iter().map(|(_, l)| *l).collect();
            // The allowed source: in the first prefix (a /32, or in the mixed series the
            // shortest length, found by the last probe).
            let (allowed, refused) = match p[0].0 {
                IpAddr::V4(first) if family == 16 => {
                    let o = first.octets();
                    (tcp4(Ipv4Addr::new(o[0], o[1], 7, 9), HOST4, 40000, 5432), refused.clone())
                }
                IpAddr::V4(first) => (tcp4(first, HOST4, 40000, 5432), refused.clone()),
                IpAddr::V6(first) => {
                    let s = first.segments();
                    let src = Ipv6Addr::new(s[0], s[1], 7, 9, 0, 0, 0, 1);
                    (tcp6(src, HOST6, 40000, 5432), tcp6(REFUSED6, HOST6, 40000, 5432))
                }
            };
            rows.push(Config {
                label: format!("{n} ({} length{})", distinct.len(), if distinct.len() == 1 { "" } else { "s" }),
                policy: build_policy(&header, &[(5432, p.clone())])?,
                allowed,
                refused,
            });
        }
        series.push((title.to_string(), target, rows));
    }
    let mut rows = Vec::new();
    for n in [1usize, 10, 100, 1000, 10000] {
        let k = n - 1;
        let port = 10000 + k as u16;
        let src = Ipv4Addr::new(10, (k / 256) as u8, (k % 256) as u8, 5);
        let rules: Vec<(u16, Vec<(IpAddr, u8)>)> = (0..n)
            .map(|i| {
                (
                    10000 + i as u16,
                    vec![(
                        IpAddr::V4(Ipv4Addr::new(10, (i / 256) as u8, (i % 256) as u8, 0)),
                        24,
                    )],
                )
            })
            .collect();
        rows.push(Config {
            label: format!("{n} rules"),
            policy: build_policy(&header, &rules)?,
            allowed: tcp4(src, HOST4, 40000, port),
            refused: tcp4(REFUSED4, HOST4, 40000, port),
        });
    }
    series.push((
        "rules, each protecting its own port (packet to the last rule's port)".into(),
        None,
        rows,
    ));

    // One loaded copy of the programs per policy, so rounds interleave them.
    let mut kernels: Vec<Vec<Loaded>> = Vec::new();
    for (_, _, rows) in &series {
        let mut ks = Vec::new();
        for c in rows {
            check_interrupted()?;
            let mut k = Kern::with_policy(&c.policy, &local_addrs())?;
            if limits {
                bpf::test_run(k.xdp, &c.refused, 200_000)?;
                k.drain();
            } else {
                k.fill(&c.refused)?;
            }
            ks.push(Loaded {
                k,
                allowed: c.allowed.clone(),
                refused: c.refused.clone(),
            });
        }
        kernels.push(ks);
    }
    let mut out: Vec<ScaleSeries> = series
        .iter()
        .map(|(t, target, rows)| ScaleSeries {
            title: t.clone(),
            target: *target,
            rows: rows
                .iter()
                .map(|c| ScaleRow {
                    label: c.label.clone(),
                    allowed: Samples::default(),
                    refused: Samples::default(),
                    floor: Samples::default(),
                })
                .collect(),
        })
        .collect();
    for round in 0..rounds {
        check_interrupted()?;
        for (s, ks) in kernels.iter_mut().enumerate() {
            let n = ks.len();
            for i in (0..n).map(|i| (i + round) % n) {
                let l = &mut ks[i];
                let a = time_run(
                    l.k.xdp,
                    &l.allowed,
                    SCALE_REPEAT,
                    XDP_PASS,
                    "scaling: allowed",
                )?;
                let r = time_run(
                    l.k.xdp,
                    &l.refused,
                    SCALE_REPEAT,
                    XDP_DROP,
                    "scaling: refused",
                )?;
                l.k.drain();
                let f = time_run(
                    trivial.xdp_pass.as_raw_fd(),
                    &l.allowed,
                    SCALE_REPEAT,
                    XDP_PASS,
                    "floor",
                )?;
                out[s].rows[i].allowed.push(a);
                out[s].rows[i].refused.push(r);
                out[s].rows[i].floor.push(f);
            }
        }
    }
    notes.push(format!(
        "Refused packets here take the no-event path ({}). Each policy size is its own loaded copy of the programs, so every round runs all sizes back to back.",
        if limits { "rate limit spent" } else { "ring buffer full" }
    ));
    Ok((out, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_series_have_their_lengths_and_miss_the_refused_sources() {
        let v6 = prefixes6(4096);
        let lengths: std::collections::BTreeSet<u8> = v6.iter().map(|p| p.1).collect();
        assert_eq!(lengths.len(), 33);
        assert_eq!(v6[0].1, 32);
        let v4 = prefixes(4096, true);
        let lengths: std::collections::BTreeSet<u8> = v4.iter().map(|p| p.1).collect();
        assert_eq!(lengths.len(), 17);
        let covers = |(net, len): &(IpAddr, u8), a: IpAddr| match (net, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = u32::MAX.checked_shl(32 - *len as u32).unwrap_or(0);
                u32::from(*n) == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = u128::MAX.checked_shl(128 - *len as u32).unwrap_or(0);
                u128::from(*n) == u128::from(a) & m
            }
            _ => false,
        };
        assert!(!v6.iter().any(|p| covers(p, REFUSED6.into())));
        assert!(!v4.iter().any(|p| covers(p, REFUSED4.into())));
    }
}

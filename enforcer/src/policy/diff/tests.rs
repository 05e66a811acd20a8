use std::{net::IpAddr, path::Path};

use enforcer_common::{
    consts::{IPPROTO_TCP, IPPROTO_UDP},
    model::{self, Arrival, Context, Flow, Parsed, L4},
    reason::Hook,
};

use super::*;
use crate::policy::parse_str;

/// 2027-01-15: after the "past" expiries below, before the "future" ones.
const NOW: u64 = 1_800_000_000;
const PAST: &str = "2026-01-01T00:00:00Z";
const FUTURE: &str = "2030-01-01T00:00:00Z";

fn side(text: &str) -> Side {
    let p = parse_str(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Side::of(&p, NOW, &[])
}

fn d(a: &str, b: &str) -> Diff {
    diff(&side(a), &side(b))
}

const BASE: &str = r#"
[[rule]]
name = "postgres"
protocol = "tcp"
ports = [5432]
allow_from = ["10.1.0.0/16", "fd00::/64"]
allow_cgroups = ["/system.slice/api.service"]

[[rule]]
name = "redis"
protocol = "tcp"
ports = ["6379-6380"]
allow_from = ["10.2.0.0/16"]

[[rule]]
name = "dns"
protocol = "any"
ports = [53]
allow_from = ["10.0.0.0/8"]
"#;

#[test]
fn rewrites_that_keep_access_report_nothing() {
    let rewrites = [
        // Rules reordered.
        BASE.replace("[[rule]]\nname = \"redis\"", "[[rule]]\nname = \"TMP\"")
            .replace("[[rule]]\nname = \"postgres\"", "[[rule]]\nname = \"redis\"")
            .replace("[[rule]]\nname = \"TMP\"", "[[rule]]\nname = \"postgres\"")
            .replace("ports = [5432]\nallow_from = [\"10.1.0.0/16\", \"fd00::/64\"]\nallow_cgroups = [\"/system.slice/api.service\"]", "PG")
            .replace("ports = [\"6379-6380\"]\nallow_from = [\"10.2.0.0/16\"]", "ports = [5432]\nallow_from = [\"10.1.0.0/16\", \"fd00::/64\"]\nallow_cgroups = [\"/system.slice/api.service\"]")
            .replace("PG", "ports = [\"6379-6380\"]\nallow_from = [\"10.2.0.0/16\"]"),
        // A prefix split into its halves, allow_from reordered, a redundant entry.
        BASE.replace(
            "[\"10.1.0.0/16\", \"fd00::/64\"]",
            "[\"fd00::/64\", \"10.1.128.0/17\", \"10.1.0.0/17\", \"10.1.2.0/24\"]",
        ),
        // Ports written another way; a cgroup below an allowed one.
        BASE.replace("[\"6379-6380\"]", "[6380, 6379, \"6379-6380\"]").replace(
            "[\"/system.slice/api.service\"]",
            "[\"/system.slice/api.service/worker\", \"/system.slice/api.service\"]",
        ),
        // "any" as two rules.
        BASE.replace(
            "name = \"dns\"\nprotocol = \"any\"\nports = [53]\nallow_from = [\"10.0.0.0/8\"]",
            "name = \"dns\"\nprotocol = \"tcp\"\nports = [53]\nallow_from = [\"10.0.0.0/8\"]\n[[rule]]\nname = \"dns-udp\"\nprotocol = \"udp\"\nports = [53]\nallow_from = [\"10.0.0.0/8\"]",
        ),
    ];
    for (i, text) in rewrites.iter().enumerate() {
        assert_ne!(text, BASE, "rewrite {i} rewrote nothing");
        let x = d(BASE, text);
        assert!(!x.changed, "rewrite {i}: {x:#?}");
        assert!(
            x.ports.is_empty() && x.mode.is_none(),
            "rewrite {i}: {x:#?}"
        );
        if i < 3 {
            assert!(x.is_empty(), "rewrite {i}: {x:#?}");
        }
    }
    // A renamed rule is a rename, and nothing else.
    let x = d(BASE, &BASE.replace("\"redis\"", "\"cache\""));
    assert!(!x.changed);
    assert_eq!(
        x.rules,
        RuleChanges {
            renamed: vec![Renamed {
                from: "redis".into(),
                to: "cache".into()
            }],
            ..RuleChanges::default()
        }
    );
    assert_eq!(
        render::body(&x),
        [
            "access: no change",
            "rules:",
            "  renamed redis -> cache (same content)"
        ]
    );
}

#[test]
fn a_widened_prefix_gains_exactly_the_difference() {
    let x = d(BASE, &BASE.replace("\"10.1.0.0/16\",", "\"10.0.0.0/8\","));
    assert!(x.changed);
    assert_eq!(x.ports.len(), 1);
    let c = &x.ports[0];
    assert_eq!(
        (c.protocol, c.ports.clone()),
        (
            "tcp",
            vec![PortRange {
                first: 5432,
                last: 5432
            }]
        )
    );
    assert_eq!(c.rules, ["postgres"]);
    assert_eq!(c.gained.from.len(), 1);
    assert_eq!(
        c.gained.from[0].to_string(),
        "10.0.0.0/8 except 10.1.0.0/16"
    );
    assert!(c.gained.cgroups.is_empty() && c.lost.is_empty());
    assert_eq!(
        x.rules.changed,
        [RuleEdit {
            rule: "postgres".into(),
            fields: vec!["allow_from"]
        }]
    );
    // Narrowed back: the same, lost.
    let y = d(&BASE.replace("\"10.1.0.0/16\",", "\"10.0.0.0/8\","), BASE);
    assert_eq!(y.ports[0].lost, c.gained);
}

#[test]
fn a_moved_port_closes_one_and_opens_the_other() {
    let x = d(BASE, &BASE.replace("ports = [5432]", "ports = [5433]"));
    assert!(x.changed);
    let [a, b] = &x.ports[..] else {
        panic!("{x:#?}")
    };
    assert_eq!(
        a.ports,
        [PortRange {
            first: 5432,
            last: 5432
        }]
    );
    assert_eq!(
        (a.before.state, a.after.state),
        (State::Protected, State::Unprotected)
    );
    assert_eq!(
        b.ports,
        [PortRange {
            first: 5433,
            last: 5433
        }]
    );
    assert_eq!(
        (b.before.state, b.after.state),
        (State::Unprotected, State::Protected)
    );
    // Opening 5432 lets in every source but the allowed ones, and every other cgroup.
    assert_eq!(
        a.gained
            .from
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        ["0.0.0.0/0 except 10.1.0.0/16", "::/0 except fd00::/64"]
    );
    assert_eq!(
        a.gained.cgroups[0].to_string(),
        "/ except /system.slice/api.service"
    );
    assert_eq!(b.lost, a.gained);
    assert_eq!(
        x.rules.changed,
        [RuleEdit {
            rule: "postgres".into(),
            fields: vec!["ports"]
        }]
    );
    let text = text(&x, "old", "new");
    assert!(text.contains("  tcp/5432 [postgres]\n    protected (enforce) -> unprotected: open to every sender (was: from 10.1.0.0/16, fd00::/64; cgroups /system.slice/api.service)\n"), "{text}");
    assert!(text.contains("  tcp/5433 [postgres]\n    unprotected -> protected (enforce): refuses all but from 10.1.0.0/16, fd00::/64; cgroups /system.slice/api.service\n"), "{text}");
}

#[test]
fn a_rule_switched_to_audit_changes_refusals_unless_another_rule_enforces() {
    let audit = BASE.replace(
        "allow_from = [\"10.2.0.0/16\"]",
        "allow_from = [\"10.2.0.0/16\"]\nmode = \"audit\"",
    );
    let x = d(BASE, &audit);
    assert!(x.changed);
    assert_eq!(x.ports.len(), 1);
    let c = &x.ports[0];
    assert_eq!(
        c.ports,
        [PortRange {
            first: 6379,
            last: 6380
        }]
    );
    assert_eq!(c.mode_change(), Some((Mode::Enforce, Mode::Audit)));
    assert!(c.gained.is_empty() && c.lost.is_empty());
    assert_eq!(x.rules.modes.len(), 1);
    assert!(render::body(&x).contains(
        &"    refusals enforce -> audit: refused packets now pass, logged as would-drop"
            .to_string()
    ));
    // Another enforcing rule on the same ports: refusals are still dropped there.
    let both = |t: &str| {
        format!("{t}\n[[rule]]\nname = \"redis-guard\"\nprotocol = \"tcp\"\nports = [6379, 6380]\n")
    };
    let y = d(&both(BASE), &both(&audit));
    assert!(!y.changed && y.ports.is_empty(), "{y:#?}");
    assert_eq!(y.rules.modes[0].rule, "redis");
}

#[test]
fn the_global_mode_changes_malformed_packets_and_inheriting_rules() {
    let x = d(BASE, &format!("mode = \"audit\"\n{BASE}"));
    assert_eq!(
        x.mode,
        Some(ModeChange {
            before: Mode::Enforce,
            after: Mode::Audit
        })
    );
    // All three rules inherit it; dns's tcp and udp ports change alike: one entry.
    assert_eq!(x.ports.len(), 3);
    assert_eq!(x.ports[0].protocol, "any");
    assert_eq!(x.rules.modes.len(), 3);
    assert!(x.covers(&Packet::Malformed));
}

#[test]
fn failsafe_changes_count_only_where_access_changes() {
    let x = d(
        BASE,
        &format!("[failsafe]\nports = [\"tcp/22\", \"udp/53\"]\n{BASE}"),
    );
    assert_eq!(x.failsafe.added, ["udp/53"]);
    assert_eq!(x.ports.len(), 1);
    assert_eq!(x.ports[0].after.state, State::Failsafe);
    assert_eq!(x.ports[0].protocol, "udp");
    // tcp/22 has no rule: failsafe or not, everyone gets in.
    let y = d(BASE, &format!("[failsafe]\nports = []\n{BASE}"));
    assert_eq!(y.failsafe.removed, ["tcp/22"]);
    assert!(!y.changed && y.ports.is_empty());
    let z = d(
        "[failsafe]\nports = [\"any/20-30\"]",
        "[failsafe]\nports = [\"tcp/20-25\", \"tcp/24-30\", \"udp/22\"]",
    );
    assert_eq!(z.failsafe.removed, ["udp/20-21", "udp/23-30"]);
    assert!(z.failsafe.added.is_empty());
}

#[test]
fn cgroups_compare_as_subtrees() {
    let x = d(
        BASE,
        &BASE.replace(
            "[\"/system.slice/api.service\"]",
            "[\"/system.slice\", \"/system.slice/api.service\"]",
        ),
    );
    let c = &x.ports[0];
    assert_eq!(
        c.gained.cgroups[0].to_string(),
        "/system.slice except /system.slice/api.service"
    );
    assert!(c.gained.from.is_empty());
    // Even when every source is allowed, cgroups are how this host's own processes get
    // in: a prefix never admits them.
    let open = BASE.replace("\"10.1.0.0/16\", \"fd00::/64\"", "\"0.0.0.0/0\", \"::/0\"");
    let y = d(
        &open,
        &open.replace("allow_cgroups = [\"/system.slice/api.service\"]", ""),
    );
    assert_eq!(
        y.ports[0].lost.cgroups[0].to_string(),
        "/system.slice/api.service",
        "{y:#?}"
    );
}

#[test]
fn identical_changes_on_several_ranges_are_one_entry() {
    let a = "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [\"100-110\", 200]\nallow_from = [\"10.0.0.0/8\"]\n";
    let b = a.replace("10.0.0.0/8", "10.0.0.0/7");
    let x = d(a, &b);
    assert_eq!(x.ports.len(), 1);
    assert_eq!(
        x.ports[0].ports,
        [
            PortRange {
                first: 100,
                last: 110
            },
            PortRange {
                first: 200,
                last: 200
            }
        ]
    );
    assert!(text(&x, "a", "b")
        .contains("  tcp/100-110,200 [a]\n    + from 10.0.0.0/7 except 10.0.0.0/8\n"));
}

#[test]
fn expiring_entries_added_moved_and_lapsed() {
    let with = |entry: &str| {
        BASE.replace(
            "allow_from = [\"10.2.0.0/16\"]",
            &format!("allow_from = [\"10.2.0.0/16\", {entry}]"),
        )
    };
    let future = with(&format!(
        "{{ from = \"192.0.2.0/24\", expires = \"{FUTURE}\" }}"
    ));
    let x = d(BASE, &future);
    assert!(x.changed);
    assert_eq!(x.expiring.added.len(), 1);
    assert_eq!(x.expiring.added[0].expires, FUTURE);
    assert_eq!(x.ports[0].gained.from[0].to_string(), "192.0.2.0/24");
    // The same entry, later: no access changes now, but access changes in time.
    let later = future.replace(FUTURE, "2031-01-01T00:00:00Z");
    let y = d(&future, &later);
    assert!(y.ports.is_empty() && y.changed);
    assert_eq!(y.expiring.changed.len(), 1);
    // An entry already past its expiry allows nothing, and says so.
    let past = with(&format!(
        "{{ from = \"192.0.2.0/24\", expires = \"{PAST}\" }}"
    ));
    let z = d(BASE, &past);
    assert!(!z.changed && z.ports.is_empty());
    assert_eq!(z.expiring.lapsed.len(), 1);
    assert!(z.expiring.added.is_empty());
    // Seen from before its expiry (the daemon applying it again once it lapsed).
    let before = Side::of(
        &parse_str(Path::new("t.toml"), &past).unwrap(),
        1_700_000_000,
        &[],
    );
    let w = diff(&before, &side(&past));
    assert_eq!(w.expiring.lapsed.len(), 1);
    assert_eq!(w.ports[0].lost.from[0].to_string(), "192.0.2.0/24");
    assert!(text(&w, "a", "b").contains(&format!(
        "  lapsed rule redis from 192.0.2.0/24 (at {PAST}): allows nothing"
    )));
}

#[test]
fn tests_added_removed_and_changed() {
    let t = |name: &str, src: &str| {
        format!("\n[[test]]\nname = \"{name}\"\nproto = \"tcp\"\nsrc = \"{src}\"\ndport = 5432\nexpect = \"allow\"\n")
    };
    let a = format!("{BASE}{}{}", t("api", "10.1.0.1"), t("old", "10.1.0.2"));
    let b = format!("{BASE}{}{}", t("api", "10.1.0.3"), t("new", "10.1.0.2"));
    let x = d(&a, &b);
    assert!(!x.changed);
    assert_eq!(
        x.tests,
        TestChanges {
            added: vec!["new".into()],
            removed: vec!["old".into()],
            changed: vec!["api".into()]
        }
    );
}

#[test]
fn grants_apply_to_both_sides_and_show() {
    let p = parse_str(Path::new("t.toml"), BASE).unwrap();
    let grant = crate::policy::Grant {
        id: "g1".into(),
        rule: "postgres".into(),
        entry: Entry::From("198.51.100.7/32".into()),
        reason: "debugging".into(),
        created_unix: NOW - 10,
        expires_unix: NOW + 3600,
    };
    let live = Side::of(&p, NOW, std::slice::from_ref(&grant));
    assert!(live.verdict.rules[0]
        .allow_from
        .iter()
        .any(|f| f.to_string() == "198.51.100.7/32"));
    let same = Side::of(&p, NOW, &live.grants);
    let x = diff(&live, &same);
    assert!(!x.changed);
    assert!(x.grants[0].kept);
    assert!(render::body(&x)
        .iter()
        .any(|l| l.contains("g1 rule postgres from 198.51.100.7/32")));
    // The rule renamed away: the grant stops applying, and its access goes.
    let renamed = parse_str(Path::new("t.toml"), &BASE.replace("\"postgres\"", "\"pg\"")).unwrap();
    let y = diff(&live, &Side::of(&renamed, NOW, &live.grants));
    assert!(y.changed && !y.grants[0].kept);
    assert_eq!(y.ports[0].lost.from[0].to_string(), "198.51.100.7/32");
    assert!(y.rules.renamed.is_empty());
}

#[test]
fn a_side_survives_its_json_form() {
    let s = side(&format!(
        "mode = \"audit\"\n[failsafe]\nports = [\"udp/1-3\"]\n{}\n[[test]]\nname = \"t\"\nproto = \"udp\"\nsrc = \"10.0.0.1\"\ndport = 53\nexpect = \"allow\"\n",
        BASE.replace(
            "allow_from = [\"10.2.0.0/16\"]",
            &format!("allow_from = [{{ from = \"10.2.0.0/16\", expires = \"{FUTURE}\" }}]\nmode = \"enforce\"")
        )
    ));
    let json = serde_json::to_value(&s).unwrap();
    let back: Side = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, s);
    let mut bad = json;
    bad["rules"][0]["allow_from"][0] = "10.0.0.1/8".into();
    assert!(serde_json::from_value::<Side>(bad)
        .unwrap_err()
        .to_string()
        .contains("host bits"));
}

#[test]
fn the_summary_keeps_counts_and_the_first_lines() {
    let mut b = BASE.replace("\"10.1.0.0/16\",", "\"10.0.0.0/8\",");
    for i in 0..20 {
        b += &format!(
            "\n[[rule]]\nname = \"r{i}\"\nprotocol = \"udp\"\nports = [{}]\nallow_from = [\"10.9.{i}.0/24\"]\n",
            1000 + 2 * i
        );
    }
    let s = Summary::of(&d(BASE, &b));
    assert!(s.changed);
    assert_eq!(
        (s.ports, s.opened, s.closed, s.rules_added, s.rules_changed),
        (21, 1, 20, 20, 1)
    );
    assert_eq!(s.lines.len(), render::SUMMARY_LINES);
    assert!(s.more_lines > 0);
    assert_eq!(
        s.lines[0],
        "access: 21 changes (1 let more in, 20 let fewer in)"
    );
}

// ---- The property: a packet's verdict differs iff the diff lists a change covering it.

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

//! Worked examples of what a diff reports; `property` checks it against the model on
//! random policies and packets.

use std::path::Path;

use super::*;
use crate::policy::parse_str;

mod property;

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

use std::path::Path;

use super::*;
use crate::policy::parse_str;

fn compiled(text: &str) -> Compiled {
    compile(&parse_str(Path::new("t.toml"), text).unwrap()).unwrap()
}

#[test]
fn ports_map_to_groups_and_overlaps_get_their_own() {
    let c = compiled(
        "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [\"100-200\"]\nallow_from = [\"10.0.0.0/8\"]\n\
         [[rule]]\nname = \"b\"\nprotocol = \"any\"\nports = [150, 300]\nallow_from = [\"10.0.0.0/12\", \"fd00::/8\"]\n",
    );
    let tcp = |p: usize| c.ports[p];
    let udp = |p: usize| c.ports[(1 << 16) | p];
    assert_eq!(tcp(99), 0);
    assert_eq!(tcp(201), 0);
    let a = tcp(100);
    assert_ne!(a, 0);
    assert_eq!(tcp(200), a);
    let ab = tcp(150);
    assert!(ab != a && ab != 0);
    let b = tcp(300);
    assert_eq!(udp(150), b);
    assert_eq!(udp(100), 0);
    let info = c.groups[(ab - 1) as usize];
    assert_eq!(info.primary_rule, 0);
    assert_eq!(info.n_v4, 2);
    // Short lengths only (none bucketed), longest first.
    assert_eq!(&info.v4_lens[..2], &[12, 8]);
    assert_eq!(info.n_v6, 1);
    assert_eq!(c.ports[22], PORT_FAILSAFE);
}

#[test]
fn group_ids_stay_put_across_compiles() {
    let a = "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [100]\nallow_from = [\"10.0.0.0/8\"]\n[[rule]]\nname = \"b\"\nprotocol = \"tcp\"\nports = [200]\nallow_from = [\"10.1.0.0/16\"]\n";
    let first = compiled(a);
    // Rule "a" moves to another port and a new rule arrives before it: "b"'s group
    // and its allow entries stay exactly as they were.
    let b = a.replace("ports = [100]", "ports = [150]").replace(
        "[[rule]]\nname = \"a\"",
        "[[rule]]\nname = \"z\"\nprotocol = \"tcp\"\nports = [50]\n[[rule]]\nname = \"a\"",
    );
    let p = parse_str(Path::new("t.toml"), &b).unwrap();
    let second = compile_after(&p, Some(&first)).unwrap();
    assert_eq!(second.ports[200], first.ports[200]);
    assert_eq!(second.ports[150], first.ports[100]);
    let b_entries = |c: &Compiled| {
        c.allow
            .keys()
            .filter(|k| k.group == c.ports[200] - 1)
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(b_entries(&second), b_entries(&first));
    assert_eq!(second.groups.len(), 3);
}

#[test]
fn a_port_covered_twice_by_one_rule_stays_one_group() {
    let c =
        compiled("[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [\"1-10\", \"5-20\", 7]\n");
    let g = c.ports[1];
    assert!((1..=20).all(|p| c.ports[p] == g));
    assert_eq!(c.ports[21], 0);
    assert_eq!(c.groups.len(), 1);
}

#[test]
fn duplicate_entries_keep_the_earlier_rule_and_audit_needs_all_rules() {
    let c = compiled(
        "mode = \"audit\"\n[[rule]]\nname = \"a\"\nprotocol = \"udp\"\nports = [53]\nallow_from = [\"10.0.0.0/8\"]\nallow_cgroups = [\"/x\"]\n\
         [[rule]]\nname = \"b\"\nprotocol = \"udp\"\nports = [53]\nallow_from = [\"10.0.0.0/8\"]\nallow_cgroups = [\"/x\", \"/y/z\"]\nmode = \"enforce\"\n",
    );
    assert_eq!(c.allow.len(), 1);
    assert_eq!(c.allow.values().next().unwrap().rule, 0);
    assert_eq!(c.cgroups[&(0, "/x".to_string())].rule, 0);
    assert_eq!(c.cgroups[&(0, "/y/z".to_string())].rule, 1);
    assert_eq!(c.groups[0].cgroup_levels, (1 << 1) | (1 << 2));
    assert_eq!(c.groups[0].flags & GROUP_ENFORCE, GROUP_ENFORCE);
    assert_eq!(c.slot_flags & SLOT_ENFORCE, 0);
}

#[test]
fn deadlines_reach_the_entries_and_a_permanent_duplicate_wins() {
    let text = "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [80]\nallow_from = [{ from = \"10.0.0.0/8\", expires = \"2099-01-01T00:00:00Z\" }, \"10.1.0.0/16\"]\nallow_cgroups = [{ cgroup = \"/x\", expires = \"2099-01-01T00:00:00Z\" }]\n\
                [[rule]]\nname = \"b\"\nprotocol = \"tcp\"\nports = [80]\nallow_from = [\"10.1.0.0/16\"]\n";
    let p = parse_str(Path::new("t.toml"), text).unwrap();
    let grant = (1, Entry::From("192.0.2.7/32".into()), 4_000_000_000);
    let c = compile(&p.effective(1_000, &[grant])).unwrap();
    let by_len = |len: u32| {
        c.allow
            .iter()
            .find(|(k, _)| k.family_len & 0xff == len)
            .map(|(_, v)| *v)
            .unwrap()
    };
    assert_eq!(by_len(8).expires_unix, 4_070_908_800);
    assert_eq!(by_len(16).expires_unix, 0);
    assert_eq!(
        by_len(32),
        Allowed {
            rule: 1,
            expires_unix: 4_000_000_000
        }
    );
    assert_eq!(
        c.cgroups[&(0, "/x".to_string())].expires_unix,
        4_070_908_800
    );
    // Past its deadline, the entry is gone from the compiled policy altogether.
    let later = compile(&p.effective(4_070_908_800, &[])).unwrap();
    assert!(!later.allow.values().any(|a| a.expires_unix != 0));
}

/// One rule on tcp/5432 allowing `n` distinct /32 sources.
fn with_sources(n: u32) -> String {
    let from: Vec<String> = (0..n)
        .map(|i| format!("\"10.{}.{}.{}/32\"", i >> 16, (i >> 8) & 0xff, i & 0xff))
        .collect();
    format!(
        "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [{}]\n",
        from.join(",")
    )
}

fn compile_text(text: &str) -> Result<Compiled, CompileError> {
    compile(&parse_str(Path::new("t.toml"), text).unwrap())
}

#[test]
fn allow_entries_are_limited_per_policy_and_the_error_names_the_limit() {
    let max = MAX_ALLOW_ENTRIES / 2;
    assert_eq!(
        compile_text(&with_sources(max)).unwrap().allow.len(),
        131_072
    );
    let e = compile_text(&with_sources(max + 1)).unwrap_err();
    assert_eq!(e, CompileError::TooManyPrefixes(131_073));
    assert!(
        e.to_string()
            .contains("the limit is 131072 allow entries per policy"),
        "{e}"
    );
}

#[test]
fn cgroup_entries_are_limited_per_policy() {
    // Rule "pg" shares each of its 16 ports with another rule: 16 port groups, each
    // holding every cgroup of "pg" (fewer cgroups keep the test quick).
    let text = |n: u32| {
        let cgs: Vec<String> = (0..n).map(|i| format!("\"/c{i}\"")).collect();
        let mut t = format!(
            "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [\"1001-1016\"]\nallow_cgroups = [{}]\n",
            cgs.join(",")
        );
        for p in 1001..=1016 {
            t += &format!("[[rule]]\nname = \"r{p}\"\nprotocol = \"tcp\"\nports = [{p}]\nallow_from = [\"10.0.0.0/8\"]\n");
        }
        t
    };
    let max = MAX_CGROUP_ENTRIES / 2;
    assert_eq!(compile_text(&text(max / 16)).unwrap().cgroups.len(), 32_768);
    let e = compile_text(&text(max / 16 + 1)).unwrap_err();
    assert_eq!(e, CompileError::TooManyCgroups(32_768 + 16));
    assert!(
        e.to_string()
            .contains("the limit is 32768 cgroup entries per policy"),
        "{e}"
    );
}

#[test]
fn port_groups_are_limited_per_policy() {
    // Rule j of a protocol covers the ports with bit j set: every port has its own set
    // of rules, so each protocol needs 65,535 groups, 131,070 in all.
    let mut text = String::new();
    for proto in ["tcp", "udp"] {
        for j in 0..16u32 {
            let ranges: Vec<String> = (0..(1u32 << (15 - j)))
                .map(|k| {
                    let first = (k << (j + 1)) | (1 << j);
                    format!("\"{first}-{}\"", first + (1 << j) - 1)
                })
                .collect();
            text += &format!(
                "[[rule]]\nname = \"{proto}{j}\"\nprotocol = \"{proto}\"\nports = [{}]\nallow_from = [\"10.0.0.0/8\"]\n",
                ranges.join(",")
            );
        }
    }
    let e = compile_text(&text).unwrap_err();
    assert!(
        matches!(e, CompileError::TooManyGroups(n) if n > 65_536),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("the limit is 65536 port groups per policy"),
        "{e}"
    );
}

#[test]
fn rules_are_limited_per_policy() {
    let rules = |n: usize| {
        (0..n)
            .map(|i| {
                format!(
                    "[[rule]]\nname = \"r{i}\"\nports = [{}]\nallow_from = [\"10.0.0.0/8\"]\n",
                    1000 + i
                )
            })
            .collect::<String>()
    };
    assert!(parse_str(Path::new("t.toml"), &rules(16_384)).is_ok());
    let e = parse_str(Path::new("t.toml"), &rules(16_385)).unwrap_err();
    assert!(
        e.to_string()
            .contains("16385 rules; the limit is 16384 rules per policy"),
        "{e}"
    );
}

#[test]
fn long_lengths_are_bucketed_by_the_leading_bits() {
    let c = compiled(
        "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [443]\nallow_from = [\"10.1.0.0/16\", \"10.1.2.0/24\", \"10.9.9.9/32\", \"172.16.0.0/12\", \"fd00::/64\"]\n",
    );
    let g = &c.groups[0];
    assert_eq!(g.flags & GROUP_V4_BUCKETS, GROUP_V4_BUCKETS);
    assert_eq!(
        g.flags & GROUP_V6_BUCKETS,
        GROUP_V6_BUCKETS,
        "one long IPv6 length is enough"
    );
    // The short /12 is probed for every packet, not bucketed.
    assert_eq!((g.n_v4, g.v4_lens[0], g.n_v6), (1, 12, 0));
    assert_eq!(c.buckets.len(), 3);
    let bits = |family: u8, top: [u8; 4]| {
        c.buckets[&BucketKey {
            group: 0,
            family: family as u32,
            top,
        }]
    };
    let b = bits(AF_INET, [10, 1, 0, 0]);
    assert!(b.has(16, 16) && b.has(16, 24) && !b.has(16, 32));
    let b = bits(AF_INET, [10, 9, 0, 0]);
    assert!(b.has(16, 32) && !b.has(16, 16));
    assert!(bits(AF_INET6, [0xfd, 0, 0, 0]).has(32, 64));
    // Only short lengths: probed directly.
    let c = compiled(
        "[[rule]]\nname = \"a\"\nports = [443]\nallow_from = [\"10.0.0.0/8\", \"172.16.0.0/12\", \"fd00::/16\"]\n",
    );
    let g = &c.groups[0];
    assert!(c.buckets.is_empty() && g.flags & (GROUP_V4_BUCKETS | GROUP_V6_BUCKETS) == 0);
    assert_eq!((g.n_v4, g.n_v6), (2, 1));
}

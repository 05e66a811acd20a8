use std::{collections::HashSet, path::Path};

use super::*;
// The parsers of the host facts are tested beside the port sets they produce.
use crate::{
    host::facts::{parse_ephemeral_range, parse_reserved_ports},
    policy::ports::subtract,
};

fn policy(text: &str) -> Policy {
    crate::policy::parse_str(Path::new("p.toml"), text).expect("valid policy")
}

fn facts() -> HostFacts {
    HostFacts::default()
}

fn with_cgroups(existing: &[&str]) -> HostFacts {
    let set: HashSet<String> = existing.iter().map(|s| s.to_string()).collect();
    HostFacts {
        cgroups: Some(CgroupFacts {
            mount: "/sys/fs/cgroup".into(),
            exists: Box::new(move |p| set.contains(p)),
        }),
        ..HostFacts::default()
    }
}

fn warnings(text: &str, facts: &HostFacts) -> Vec<String> {
    lint(&policy(text), facts)
        .iter()
        .map(|d| d.to_string())
        .collect()
}

fn r(first: u16, last: u16) -> PortRange {
    PortRange { first, last }
}

#[test]
fn lapsed_entries_are_named() {
    let text = "[[rule]]\nname = \"pg\"\nports = [5432]\nallow_from = [\"10.0.0.0/8\", { from = \"192.0.2.0/24\", expires = \"2026-01-01T00:00:00Z\" }]\n";
    let jan2 = humantime::parse_rfc3339("2026-01-02T00:00:00Z")
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let w = warnings(
        text,
        &HostFacts {
            now_unix: jan2,
            ..HostFacts::default()
        },
    );
    assert!(w.iter().any(|w| w.starts_with("p.toml:4:29: warning: allow_from entry 192.0.2.0/24 of rule \"pg\" expired at 2026-01-01T00:00:00Z")), "{w:?}");
    assert!(warnings(
        text,
        &HostFacts {
            now_unix: jan2 - 2 * 86400,
            ..HostFacts::default()
        }
    )
    .iter()
    .all(|w| !w.contains("expired")));
}

#[test]
fn port_sets() {
    assert_eq!(
        normalize(vec![r(5, 9), r(1, 3), r(4, 4), r(20, 30), r(25, 26)]),
        vec![r(1, 9), r(20, 30)]
    );
    assert_eq!(
        intersect(&[r(1, 10), r(20, 30)], &[r(5, 25)]),
        vec![r(5, 10), r(20, 25)]
    );
    assert_eq!(
        subtract(&[r(1, 10)], &[r(3, 4), r(10, 10)]),
        vec![r(1, 2), r(5, 9)]
    );
    assert_eq!(subtract(&[r(1, 65535)], &[r(1, 65535)]), vec![]);
    assert_eq!(
        subtract(&[r(65535, 65535)], &[r(1, 1)]),
        vec![r(65535, 65535)]
    );
    assert_eq!(
        normalize(vec![r(65535, 65535), r(1, 65534)]),
        vec![r(1, 65535)]
    );
    assert_eq!(
        parse_ephemeral_range("32768\t60999\n"),
        Some(r(32768, 60999))
    );
    assert_eq!(parse_ephemeral_range("9 1"), None);
    assert_eq!(parse_reserved_ports("\n"), vec![]);
    assert_eq!(
        parse_reserved_ports("8080,9000-9010,8081\n"),
        vec![r(8080, 8081), r(9000, 9010)]
    );
}

#[test]
fn a_careful_policy_has_no_warnings() {
    let text = "[[rule]]\nname = \"db\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.0.0.0/8\"]\nallow_cgroups = [\"/api\"]\n";
    let mut f = with_cgroups(&["/", "/api"]);
    f.ephemeral = Some(r(32768, 60999));
    f.sshd_ports = vec![22];
    assert_eq!(warnings(text, &f), Vec::<String>::new());
}

#[test]
fn allowing_everyone_is_located_at_the_entry() {
    let text = "[[rule]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [8080]\nallow_from = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\n";
    let w = warnings(text, &facts());
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("p.toml:5:29: warning: rule \"web\" allows 0.0.0.0/0, every IPv4 address: tcp/8080 is open to any IPv4 sender. The rule still refuses IPv6"), "{}", w[0]);
    let text = "[[rule]]\nname = \"web\"\nports = [8080]\nallow_from = [\"0.0.0.0/0\", \"::/0\"]\n";
    let w = warnings(text, &facts());
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[1].starts_with("p.toml:4:28: warning: rule \"web\" allows ::/0"),
        "{}",
        w[1]
    );
    assert!(
        w[1].contains("tcp+udp/8080") && w[1].contains("refuses no remote sender"),
        "{}",
        w[1]
    );
}

#[test]
fn a_rule_without_allow_list_refuses_everyone() {
    let w = warnings(
        "[[rule]]\nname = \"closed\"\nprotocol = \"udp\"\nports = [\"5000-5010\"]\n",
        &facts(),
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("p.toml:2:8: warning: rule \"closed\" has neither allow_from nor allow_cgroups: every packet to udp/5000-5010 is refused"), "{}", w[0]);
    let w = warnings(
        "mode = \"audit\"\n[[rule]]\nname = \"closed\"\nports = [1]\n",
        &facts(),
    );
    assert!(w[0].contains("would-drop (audit mode"), "{}", w[0]);
}

#[test]
fn overlapping_rules_name_both_and_the_ports() {
    let text = "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [\"5000-5100\"]\nallow_from = [\"10.0.0.0/8\"]\n\
                [[rule]]\nname = \"b\"\nports = [5050, 6000]\nallow_from = [\"192.168.0.0/16\"]\nmode = \"audit\"\n\
                [[rule]]\nname = \"c\"\nprotocol = \"udp\"\nports = [5050]\nallow_from = [\"10.0.0.0/8\"]\nmode = \"audit\"\n";
    let w = warnings(text, &facts());
    // a/b share tcp/5050; b/c share udp/5050; a/c share nothing (tcp vs udp).
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].starts_with("p.toml:8:9: warning: rules \"a\" (line 2) and \"b\" both cover tcp/5050: on those ports their allow lists add up"), "{}", w[0]);
    assert!(w[0].contains("both are enforced"), "{}", w[0]);
    assert!(
        w[1].starts_with(
            "p.toml:14:9: warning: rules \"b\" (line 7) and \"c\" both cover udp/5050"
        ),
        "{}",
        w[1]
    );
    assert!(!w[1].contains("enforced"), "{}", w[1]);
}

#[test]
fn protected_ports_in_the_ephemeral_range() {
    let text = "[[rule]]\nname = \"hi\"\nprotocol = \"tcp\"\nports = [\"40000-40010\", 8080]\nallow_from = [\"10.0.0.0/8\"]\n";
    let mut f = facts();
    f.ephemeral = Some(r(32768, 60999));
    let w = warnings(text, &f);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("p.toml:4:9: warning: rule \"hi\" protects tcp/40000-40010, inside the ephemeral port range 32768-60999 (net.ipv4.ip_local_port_range): this host's own outgoing connections"), "{}", w[0]);
    assert!(
        w[0].contains("replies to them arrive bound for a protected port"),
        "{}",
        w[0]
    );
    // Reserved ports are not handed out: no warning for them.
    f.reserved = vec![r(40000, 40010)];
    assert_eq!(warnings(text, &f), Vec::<String>::new());
    f.reserved = vec![r(40000, 40004)];
    assert!(warnings(text, &f)[0].contains("protects tcp/40005-40010,"));
    // Unknown range: silent.
    assert_eq!(warnings(text, &facts()), Vec::<String>::new());
}

#[test]
fn missing_and_misplaced_cgroups() {
    let text = "[attach]\ncgroup = \"/srv\"\n[[rule]]\nname = \"db\"\nports = [5432]\nallow_cgroups = [\"/srv/api\", \"/srv/gone\", \"/elsewhere\"]\n";
    let w = warnings(
        text,
        &with_cgroups(&["/", "/srv", "/srv/api", "/elsewhere"]),
    );
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].starts_with("p.toml:6:30: warning: cgroup \"/srv/gone\" (allowed by rule \"db\") does not exist under /sys/fs/cgroup yet"), "{}", w[0]);
    assert!(w[1].starts_with("p.toml:6:43: warning: cgroup \"/elsewhere\" (allowed by rule \"db\") lies outside the attach cgroup \"/srv\""), "{}", w[1]);
    let w = warnings(text, &with_cgroups(&["/", "/srv/api", "/srv/gone"]));
    assert!(
        w[0].starts_with(
            "p.toml:2:10: warning: the attach cgroup \"/srv\" does not exist under /sys/fs/cgroup"
        ),
        "{w:?}"
    );
    // Without facts only the pure part (outside the attach cgroup) is said.
    assert_eq!(warnings(text, &facts()).len(), 1);
    // Duplicates: the rule's line stands in for the entry.
    let w = warnings(
        "[[rule]]\nname = \"db\"\nports = [1]\nallow_cgroups = [\"/a\", \"/a/\", \"/b\"]\n",
        &with_cgroups(&["/", "/a"]),
    );
    assert!(
        w[0].starts_with("p.toml:2:8: warning: cgroup \"/b\""),
        "{w:?}"
    );
}

#[test]
fn sshd_on_a_protected_port() {
    let mut f = facts();
    f.sshd_ports = vec![22, 2222];
    // Default failsafe tcp/22: a rule on 22 is shadowed (separate lint), not a lockout.
    let text = "[[rule]]\nname = \"ssh\"\nprotocol = \"tcp\"\nports = [22, 2222]\nallow_from = [\"10.0.0.0/8\"]\n";
    let w = warnings(text, &f);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w.iter().any(|w| w.starts_with(
            "p.toml:4:9: warning: rule \"ssh\" protects tcp/2222, where this host's sshd listens"
        )),
        "{w:?}"
    );
    assert!(w.iter().any(|w| w.contains("tcp/22 is failsafe")), "{w:?}");
    // Emptied failsafe: the rule and the [failsafe] line both warn.
    let text = "[failsafe]\nports = []\n[[rule]]\nname = \"ssh\"\nprotocol = \"tcp\"\nports = [22]\nallow_from = [\"10.0.0.0/8\"]\n";
    let mut f = facts();
    f.sshd_ports = vec![22];
    let w = warnings(text, &f);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].starts_with("p.toml:2:9: warning: the [failsafe] list is empty while sshd listens on tcp/22, which rule \"ssh\" protects"), "{}", w[0]);
    assert!(
        w[1].starts_with(
            "p.toml:6:9: warning: rule \"ssh\" protects tcp/22, where this host's sshd listens"
        ),
        "{}",
        w[1]
    );
    // Emptied failsafe but no rule on sshd's port: fine.
    let text = "[failsafe]\nports = []\n[[rule]]\nname = \"x\"\nports = [80]\nallow_from = [\"10.0.0.0/8\"]\n";
    assert_eq!(warnings(text, &f), Vec::<String>::new());
    // udp rules do not touch sshd.
    let text = "[failsafe]\nports = []\n[[rule]]\nname = \"x\"\nprotocol = \"udp\"\nports = [22]\nallow_from = [\"10.0.0.0/8\"]\n";
    assert_eq!(warnings(text, &f), Vec::<String>::new());
}

#[test]
fn ports_shadowed_by_failsafe() {
    let text = "[failsafe]\nports = [\"tcp/8000-8010\"]\n[[rule]]\nname = \"a\"\nports = [8005, 9000]\nallow_from = [\"10.0.0.0/8\"]\n\
                [[rule]]\nname = \"b\"\nprotocol = \"tcp\"\nports = [\"8000-8001\"]\nallow_from = [\"10.0.0.0/8\"]\n";
    let w = warnings(text, &facts());
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[0], "p.toml:5:9: warning: rule \"a\": tcp/8005 is failsafe ([failsafe] at line 2), never judged, so the rule does not apply there");
    assert_eq!(w[1], "p.toml:10:9: warning: rule \"b\": tcp/8000-8001 are failsafe ([failsafe] at line 2), never judged, so the rule does not apply there: the rule has no effect at all");
    let w = warnings(
        "[[rule]]\nname = \"s\"\nprotocol = \"tcp\"\nports = [22]\nallow_from = [\"10.0.0.0/8\"]\n",
        &facts(),
    );
    assert!(
        w[0].contains("tcp/22 is failsafe (the default failsafe)")
            && w[0].ends_with("no effect at all"),
        "{w:?}"
    );
}

#[test]
fn failsafe_ports_are_not_counted_as_ephemeral_or_overlapping_judgement() {
    let text = "[failsafe]\nports = [\"any/40000\"]\n[[rule]]\nname = \"a\"\nports = [40000]\nallow_from = [\"10.0.0.0/8\"]\n";
    let mut f = facts();
    f.ephemeral = Some(r(32768, 60999));
    let w = warnings(text, &f);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("tcp+udp/40000 are failsafe"), "{w:?}");
}

#[test]
fn a_prefix_holding_the_host_address_is_named() {
    let text = "[[rule]]\nname = \"api\"\nports = [8080]\nallow_from = [\"10.0.0.0/8\", \"192.0.2.0/24\", \"127.0.0.0/8\"]\n";
    let f = HostFacts {
        local_addrs: vec!["10.1.2.3".parse().unwrap()],
        ..HostFacts::default()
    };
    let w = warnings(text, &f);
    let hits: Vec<&String> = w
        .iter()
        .filter(|w| w.contains("an address of this host"))
        .collect();
    assert_eq!(hits.len(), 2, "{w:?}");
    assert!(
        hits[0].starts_with("p.toml:4:")
            && hits[0].contains("10.0.0.0/8")
            && hits[0].contains("10.1.2.3"),
        "{hits:?}"
    );
    assert!(
        hits[1].contains("127.0.0.0/8") && hits[1].contains("127.0.0.1"),
        "{hits:?}"
    );
}

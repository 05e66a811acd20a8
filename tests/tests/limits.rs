//! The policy limits the README documents (16,384 rules, 131,072 allow entries, 65,536
//! port groups per policy): a policy at each limit passes `enforcer check`; one past it is
//! refused by `check`, the limit named (`... at most N ...`). The numbers are the README's,
//! written out here, not read from the code they check.
//!
//! No root needed (check only parses and compiles). Run with
//! `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test limits`.

use testbed::{
    bed::{check, write_file},
    daemon::TempDir,
};

const MAX_RULES: usize = 16_384;
const MAX_ALLOW_ENTRIES: usize = 131_072;
const MAX_PORT_GROUPS: usize = 65_536;

/// `check` passes `text`, or refuses it naming `limit`.
fn checks(name: &str, text: &str, refused_at_most: Option<usize>) {
    let dir = TempDir::new();
    let path = write_file(&dir.0, name, text);
    let out = check(&path);
    let said = format!("{}{}", out.stdout, out.stderr);
    match refused_at_most {
        None => assert_eq!(out.code, 0, "{name}: refused:\n{}", tail(&said)),
        Some(n) => {
            assert_ne!(
                out.code,
                0,
                "{name}: accepted past the limit:\n{}",
                tail(&said)
            );
            assert!(
                said.contains(&format!("the limit is {n} ")),
                "{name}: the refusal does not name the limit {n}:\n{}",
                tail(&said)
            );
            assert!(
                said.contains(&format!("{}:", path.display())),
                "{name}: the refusal does not name the file:\n{}",
                tail(&said)
            );
        }
    }
}

/// The last lines of a long output (warnings of big policies run to thousands of lines).
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// `n` rules, each on a port of its own.
fn rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (proto, port) = if i < 60_000 {
                ("tcp", 1024 + i)
            } else {
                ("udp", 1024 + i - 60_000)
            };
            format!("[[rule]]\nname = \"r{i}\"\nprotocol = \"{proto}\"\nports = [{port}]\nallow_from = [\"10.0.0.0/8\"]\n\n")
        })
        .collect()
}

/// One rule allowing `n` distinct /32 prefixes: `n` allow entries.
fn allow_entries(n: usize) -> String {
    let prefixes: Vec<String> = (0..n)
        .map(|i| format!("\"10.{}.{}.{}/32\"", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    format!(
        "[[rule]]\nname = \"many\"\nprotocol = \"tcp\"\nports = [7000]\nallow_from = [{}]\n",
        prefixes.join(", ")
    )
}

/// Exactly `n` port groups (distinct sets of rules covering a port), `n` > 65,535: 16 TCP
/// rules, rule j covering the ports with bit j set, give each TCP port 1..=65535 a set of
/// its own (65,535 groups); UDP rules on single ports of their own add one each.
fn port_groups(n: usize) -> String {
    assert!(n > 65_535);
    let mut text = String::new();
    for bit in 0..16 {
        let step = 1u32 << bit;
        let ranges: Vec<String> = (0..)
            .map(|k| step + 2 * step * k)
            .take_while(|&first| first <= 65_535)
            .map(|first| format!("\"{first}-{}\"", (first + step - 1).min(65_535)))
            .collect();
        text.push_str(&format!(
            "[[rule]]\nname = \"bit{bit}\"\nprotocol = \"tcp\"\nports = [{}]\nallow_from = [\"10.0.0.0/8\"]\n\n",
            ranges.join(", ")
        ));
    }
    for i in 0..n - 65_535 {
        text.push_str(&format!(
            "[[rule]]\nname = \"udp{i}\"\nprotocol = \"udp\"\nports = [{}]\nallow_from = [\"10.0.0.0/8\"]\n\n",
            5000 + i
        ));
    }
    text
}

#[test]
fn a_policy_at_the_rule_limit_passes_check_and_one_more_rule_is_refused() {
    checks("rules-at.toml", &rules(MAX_RULES), None);
    checks("rules-over.toml", &rules(MAX_RULES + 1), Some(MAX_RULES));
}

#[test]
fn a_policy_at_the_allow_entry_limit_passes_check_and_one_more_is_refused() {
    checks("allow-at.toml", &allow_entries(MAX_ALLOW_ENTRIES), None);
    checks(
        "allow-over.toml",
        &allow_entries(MAX_ALLOW_ENTRIES + 1),
        Some(MAX_ALLOW_ENTRIES),
    );
}

#[test]
fn a_policy_at_the_port_group_limit_passes_check_and_one_more_is_refused() {
    checks("groups-at.toml", &port_groups(MAX_PORT_GROUPS), None);
    checks(
        "groups-over.toml",
        &port_groups(MAX_PORT_GROUPS + 1),
        Some(MAX_PORT_GROUPS),
    );
}

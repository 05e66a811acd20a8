//! `enforcer diff` against the live daemon (a grant in force) and against files, then the
//! reload (by `enforcer reload` and by SIGHUP) whose `policy` event carries the same
//! summary of the change in access.
//!
//! Topology: `testbed::bed` (the daemon in a host namespace, cgroup programs on a test
//! cgroup). Needs root; skipped (with a message) otherwise.
//! Run with `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test diff`.

use std::time::Duration;

use serde_json::Value;
use testbed::{
    bed::{enforcer, write_file, Bed, Run},
    daemon::{Daemon, TempDir},
    need_root,
};

const EVENT_WAIT: Duration = Duration::from_secs(10);

/// The policy in force first: postgres from 10.20.0.0/16, redis on 6379, metrics enforced.
fn before(bed: &Bed) -> String {
    bed.policy(
        "",
        "[[rule]]\nname = \"postgres\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.20.0.0/16\"]\n\n\
         [[rule]]\nname = \"redis\"\nprotocol = \"tcp\"\nports = [6379]\nallow_from = [\"10.20.1.0/24\"]\n\n\
         [[rule]]\nname = \"metrics\"\nprotocol = \"tcp\"\nports = [9100]\nallow_from = [\"10.30.0.0/24\"]\n",
    )
}

/// The proposed change: the postgres prefix widened, redis moved to 6380, metrics audited.
fn after(bed: &Bed) -> String {
    before(bed)
        .replace("[\"10.20.0.0/16\"]", "[\"10.0.0.0/8\"]")
        .replace("ports = [6379]", "ports = [6380]")
        .replace(
            "allow_from = [\"10.30.0.0/24\"]\n",
            "allow_from = [\"10.30.0.0/24\"]\nmode = \"audit\"\n",
        )
}

fn diff(d: &Daemon, args: &[&str]) -> Run {
    let socket = d.socket.display().to_string();
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--socket", &socket]);
    enforcer(&all)
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", run.stdout, run.stderr))
}

/// The access lines of the text form (after the ---/+++ header).
fn body(text: &str) -> Vec<String> {
    text.lines().skip(2).map(str::to_string).collect()
}

#[test]
fn diff_against_the_live_policy_then_the_reload_reports_the_same_change() {
    need_root!();
    let bed = Bed::new();
    let mut d = Daemon::start(&bed.host, &before(&bed));
    let files = TempDir::new();
    let new = write_file(&files.0, "new.toml", &after(&bed));
    let new_arg = new.display().to_string();

    // A grant in force: the live policy includes it.
    let (ok, out, err) = d.cli(&[
        "grant",
        "--rule",
        "postgres",
        "--from",
        "192.0.2.77",
        "--for",
        "10m",
        "--reason",
        "incident 42",
    ]);
    assert!(ok, "grant: {out}{err}");
    let generation = d.generation();

    // The daemon's own file against the live policy: the same access (a reload keeps the
    // grant), and the grant is shown.
    let policy_arg = d.policy_path.display().to_string();
    let same = diff(&d, &["--against", "live", &policy_arg]);
    assert_eq!(same.code, 0, "{}{}", same.stdout, same.stderr);
    assert!(
        same.stdout
            .starts_with(&format!("--- live policy generation {generation} ("))
            && same.stdout.contains(", with 1 grant in force\n"),
        "{}",
        same.stdout
    );
    assert!(
        same.stdout.contains("access: no change\n"),
        "{}",
        same.stdout
    );
    assert!(
        same.stdout.contains("grants in force (a reload keeps them: applied to both sides):\n  g1 rule postgres from 192.0.2.77/32 until "),
        "{}",
        same.stdout
    );

    // The proposed file: live is the default while a daemon runs.
    let text = diff(&d, &[&new_arg]);
    assert_eq!(text.code, 2, "{}{}", text.stdout, text.stderr);
    let want = [
        "access: 4 changes (2 let more in, 1 let fewer in, 1 change what refusals do)",
        "  tcp/5432 [postgres]",
        "    + from 10.0.0.0/8 except 10.20.0.0/16",
        "  tcp/6379 [redis]",
        "    protected (enforce) -> unprotected: open to every sender (was: from 10.20.1.0/24)",
        "  tcp/6380 [redis]",
        "    unprotected -> protected (enforce): refuses all but from 10.20.1.0/24",
        "  tcp/9100 [metrics]",
        "    refusals enforce -> audit: refused packets now pass, logged as would-drop",
        "rules:",
        "  ~ postgres: allow_from",
        "  ~ redis: ports",
        "  ~ metrics: mode enforce -> audit",
        "grants in force (a reload keeps them: applied to both sides):",
    ];
    let lines = body(&text.stdout);
    assert_eq!(lines[..want.len()], want, "{}", text.stdout);
    println!("{}", text.stdout);

    let j = json(&diff(
        &d,
        &["--against", "live", &new_arg, "--format", "json"],
    ));
    println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    assert_eq!(j["changed"], true);
    assert_eq!(j["old"]["source"], "live");
    assert_eq!(j["old"]["generation"], generation);
    assert_eq!(j["old"]["grants"], 1);
    assert_eq!(j["grants"][0]["from"], "192.0.2.77/32");
    assert_eq!(j["grants"][0]["kept"], true);
    let ports = j["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 4);
    // The grant's /32 is inside the widened /8, and allowed before and after: not gained.
    assert_eq!(
        ports[0]["gained"]["from"],
        serde_json::json!([{"set": "10.0.0.0/8", "except": ["10.20.0.0/16"]}])
    );
    assert_eq!(
        ports[0]["before"]["from"],
        serde_json::json!(["10.20.0.0/16", "192.0.2.77/32"])
    );
    assert_eq!(ports[3]["after"]["mode"], "audit");

    // Against a file: no grants, and the same access changes.
    let old = write_file(&files.0, "old.toml", &before(&bed));
    let f = diff(&d, &["--against", &old.display().to_string(), &new_arg]);
    assert_eq!(f.code, 2, "{}", f.stderr);
    assert_eq!(body(&f.stdout)[..13], want[..13]);
    assert!(!f.stdout.contains("grant"));

    // The reload: its answer and its policy event carry the same summary.
    std::fs::write(&d.policy_path, after(&bed)).expect("write policy");
    let (ok, out, err) = d.cli(&["reload"]);
    assert!(ok, "reload: {out}{err}");
    assert!(out.contains(&format!("  {}\n", want[1])), "{out}");
    let ev = d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "policy" && v["action"] == "applied" && v["policy"] == generation + 1
    });
    let access = &ev["access"];
    assert_eq!(access["changed"], true, "{ev}");
    assert_eq!(
        (
            &access["ports"],
            &access["opened"],
            &access["closed"],
            &access["modes"]
        ),
        (&4.into(), &2.into(), &1.into(), &1.into()),
        "{ev}"
    );
    assert_eq!(access["rules_changed"], 3);
    let event_lines: Vec<String> = access["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l.as_str().expect("line").to_string())
        .collect();
    assert_eq!(event_lines, lines[..event_lines.len()], "{ev}");
    assert_eq!(event_lines.len(), 12);
    // The fields policy events had before stay.
    assert_eq!(
        ev["rules_changed"],
        serde_json::json!(["metrics", "postgres", "redis"])
    );
    // Now the live policy is the new file: nothing left to review.
    let after_reload = diff(&d, &[&new_arg]);
    assert_eq!(after_reload.code, 0, "{}", after_reload.stdout);

    // SIGHUP: the same, for a change that only closes (the widened prefix narrowed back).
    d.reload(&after(&bed).replace("[\"10.0.0.0/8\"]", "[\"10.20.0.0/16\"]"));
    let ev = d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "policy" && v["action"] == "applied" && v["policy"] == generation + 2
    });
    let lines = ev["access"]["lines"].as_array().expect("lines");
    assert_eq!(
        lines[..6],
        [
            "access: 1 change (1 let fewer in)",
            "  tcp/5432 [postgres]",
            "    - from 10.0.0.0/8 except 10.20.0.0/16",
            "rules:",
            "  ~ postgres: allow_from",
            "grants in force (a reload keeps them: applied to both sides):",
        ],
        "{ev}"
    );
    assert!(
        lines[6]
            .as_str()
            .is_some_and(|l| l.starts_with("  g1 rule postgres from 192.0.2.77/32 until ")),
        "{ev}"
    );
    assert!(d
        .stderr()
        .contains("policy reloaded; access: 1 change (1 let fewer in)"));
}

#[test]
fn an_invalid_policy_exits_1_with_its_location() {
    let files = TempDir::new();
    let good = write_file(
        &files.0,
        "good.toml",
        "[[rule]]\nname = \"a\"\nports = [1]\nallow_from = [\"10.0.0.0/8\"]\n",
    );
    let bad = write_file(
        &files.0,
        "bad.toml",
        "[[rule]]\nname = \"a\"\nports = [1]\nallow_from = [\"10.0.0.1/8\"]\n",
    );
    let (good, bad) = (good.display().to_string(), bad.display().to_string());
    let r = enforcer(&["diff", "--against", &good, &bad]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{bad}:4:15: error: \"10.0.0.1/8\" has host bits set"
        )),
        "{}",
        r.stderr
    );
    let r = enforcer(&["diff", "--against", &bad, &good, "--format", "json"]);
    assert_eq!(r.code, 1);
    assert_eq!(json(&r)["diagnostics"][0]["line"], 4);
    // Same access written another way: exit 0, nothing to report.
    let split = write_file(
        &files.0,
        "split.toml",
        "[[rule]]\nname = \"a\"\nports = [1]\nallow_from = [\"10.128.0.0/9\", \"10.0.0.0/9\"]\n",
    );
    let r = enforcer(&["diff", "--against", &good, &split.display().to_string()]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.ends_with("access: no change\n"), "{}", r.stdout);
    // No daemon and no --against: the installed policy (--config) is the old side.
    let r = enforcer(&[
        "diff",
        "--socket",
        &files.0.join("none.sock").display().to_string(),
        "--config",
        &good,
        &split.display().to_string(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("comparing with"), "{}", r.stderr);
}

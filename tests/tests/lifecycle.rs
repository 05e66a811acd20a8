//! The policy's life in a running daemon: reloads under traffic, refused reloads, cgroups
//! that come and go, the failsafe, confirmation deadlines, per-rule audit mode, and the
//! policy's identity (generation and hash) across status, policy events and packets.
//!
//! Topology: `testbed::bed` (a host namespace with the daemon, an allowed remote A and a
//! refused remote R, a test cgroup tree). Needs root; skipped (with a message) otherwise.
//! Run with `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test lifecycle`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    bed::{check, checked_hash, Bed, A4, A6, HOST_A4, HOST_A6, HOST_R4, HOST_R6, R4, R6},
    daemon::Daemon,
    traffic::{count_from, Flow, Pinger},
};

const PORT: u16 = 7000;
const EVENT_WAIT: Duration = Duration::from_secs(5);

use testbed::need_root;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("address"), port)
}

fn is_policy(v: &Value, action: &str) -> bool {
    v["event"] == "policy" && v["action"] == action
}

/// Waits for the policy event `action` about generation `gen`.
fn wait_policy(d: &mut Daemon, action: &str, gen: u64) -> Value {
    d.wait_for(EVENT_WAIT, |v| is_policy(v, action) && v["policy"] == gen)
}

fn count_policy(d: &Daemon, action: &str) -> usize {
    d.events().iter().filter(|v| is_policy(v, action)).count()
}

/// Whether an echoing UDP listener at `dst` answers `p` (polled a few times, so one lost
/// datagram does not decide).
fn reaches(p: &mut Pinger, dst: SocketAddr) -> bool {
    (0..3).any(|_| p.ping(dst, Duration::from_millis(150)))
}

/// Polls `f` (every 50 ms, at most `limit`) until it returns `want`; the time it took.
fn until(limit: Duration, want: bool, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    for _ in 0..1000 {
        if f() == want {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Policies that all allow A (v4 and v6) and refuse R on udp/PORT, differing in
/// everything else: rule order and count, prefixes, ports, protocols, an audit rule
/// elsewhere, R allowed on other ports, the failsafe.
fn variant(bed: &Bed, i: usize) -> String {
    let body = match i % 5 {
        0 => format!(
            "[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\", \"fd01::/64\"]\n\n\
             [[rule]]\nname = \"extra\"\nprotocol = \"tcp\"\nports = [7300]\nallow_from = [\"192.0.2.0/24\"]\n"
        ),
        1 => String::from(
            "[[rule]]\nname = \"first\"\nprotocol = \"any\"\nports = [\"7400-7410\"]\nallow_from = [\"10.2.0.0/24\", \"fd02::/64\"]\n\n\
             [[rule]]\nname = \"svc\"\nprotocol = \"any\"\nports = [\"6990-7010\"]\nallow_from = [\"10.1.0.2/32\", \"fd01::2/128\", \"198.51.100.0/24\"]\n"
        ),
        2 => format!(
            "[[rule]]\nname = \"aud\"\nprotocol = \"udp\"\nports = [7500]\nmode = \"audit\"\n\n\
             [[rule]]\nname = \"svc4\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/16\"]\n\n\
             [[rule]]\nname = \"svc6\"\nprotocol = \"udp\"\nports = [{PORT}, 7001]\nallow_from = [\"fd01::/16\"]\n"
        ),
        3 => {
            // Many rules, the one that matters in the middle (every index shifts).
            let mut s = String::from("[failsafe]\nports = [\"tcp/22\", \"udp/9999\"]\n\n");
            for k in 0..12 {
                s += &format!("[[rule]]\nname = \"r{k}\"\nprotocol = \"udp\"\nports = [{}]\nallow_from = [\"10.{k}.0.0/16\"]\n\n", 8000 + k);
            }
            s += &format!("[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\", \"fd01::/64\"]\n\n");
            for k in 12..20 {
                s += &format!("[[rule]]\nname = \"r{k}\"\nprotocol = \"tcp\"\nports = [{}]\nallow_from = [\"fd{k:02}::/16\"]\n\n", 8000 + k);
            }
            s
        }
        _ => format!(
            // Two rules cover the port: either's entries let A in; R is in neither.
            "[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.2/32\"]\n\n\
             [[rule]]\nname = \"wide\"\nprotocol = \"any\"\nports = [\"6000-7999\"]\nallow_from = [\"fd01::/64\", \"10.3.0.0/24\"]\n"
        ),
    };
    // Few audit events: the test reads all of them after every reload.
    bed.policy_rated("", 20, &body)
}

/// Issue 4.1: 52 reloads (SIGHUP and `enforcer reload` alternating) between policies that
/// all allow A and refuse R, under steady UDP traffic from both (IPv4 and IPv6): every
/// datagram from A arrives and is echoed, none from R arrives.
#[test]
fn reloads_under_traffic_drop_nothing_allowed_and_pass_nothing_refused() {
    need_root!();
    const RELOADS: usize = 52;
    let bed = Bed::new();
    let l = bed.listen("udp-listen", PORT);
    let mut d = Daemon::start(&bed.host, &variant(&bed, 0));
    let gen0 = d.generation();

    let every = Duration::from_millis(2);
    let (max, max_time) = (30_000, Duration::from_secs(40));
    let flows = [
        (
            "A4",
            A4,
            Flow::start(&bed.a, sa(HOST_A4, PORT), every, max, max_time),
        ),
        (
            "A6",
            A6,
            Flow::start(&bed.a, sa(HOST_A6, PORT), every, max, max_time),
        ),
        (
            "R4",
            R4,
            Flow::start(&bed.r, sa(HOST_R4, PORT), every, max, max_time),
        ),
        (
            "R6",
            R6,
            Flow::start(&bed.r, sa(HOST_R6, PORT), every, max, max_time),
        ),
    ];
    // Traffic flows before the first reload.
    assert!(
        until(Duration::from_secs(10), true, || {
            count_from(&l.lines(), A4) > 0 && count_from(&l.lines(), A6) > 0
        })
        .is_some(),
        "no traffic from A: {:?}",
        l.lines()
    );

    let started = Instant::now();
    for i in 1..=RELOADS {
        let text = variant(&bed, i);
        let gen = gen0 + i as u64;
        if i % 2 == 0 {
            d.reload(&text);
        } else {
            std::fs::write(&d.policy_path, &text).expect("write policy");
            let (ok, out, err) = d.cli(&["reload"]);
            assert!(ok, "enforcer reload #{i}: {err}");
            assert!(
                out.contains(&format!("generation {gen}")),
                "reload #{i}: {out}"
            );
        }
        wait_policy(&mut d, "applied", gen);
    }
    let reload_time = started.elapsed();
    // Some traffic after the last reload, too.
    let seen = count_from(&l.lines(), A4);
    assert!(
        until(Duration::from_secs(10), true, || count_from(&l.lines(), A4)
            > seen + 20)
        .is_some(),
        "no traffic from A after the last reload"
    );
    assert_eq!(d.generation(), gen0 + RELOADS as u64);

    let reports: Vec<_> = flows
        .into_iter()
        .map(|(name, ip, f)| {
            // Allowed flows end once every echo is back; refused ones watch for strays.
            let patience = if name.starts_with('A') {
                Duration::from_secs(10)
            } else {
                testbed::ABSENCE
            };
            (name, ip, f.finish(patience))
        })
        .collect();
    let lines = l.lines();
    for (name, ip, r) in &reports {
        assert!(r.sent > 500, "{name}: only {} datagrams sent", r.sent);
        assert_eq!(r.send_errors, 0, "{name}: send errors");
        let arrived = count_from(&lines, ip);
        if name.starts_with('A') {
            let missing = r.missing();
            assert!(
                missing.is_empty(),
                "{name}: {} of {} allowed datagrams lost, first {:?}",
                missing.len(),
                r.sent,
                &missing[..missing.len().min(20)]
            );
            assert_eq!(
                arrived as u64, r.sent,
                "{name}: the listener saw {arrived} of {} datagrams",
                r.sent
            );
        } else {
            assert!(
                r.echoed.is_empty(),
                "{name}: {} refused datagrams were answered: {:?}",
                r.echoed.len(),
                r.echoed.iter().take(20).collect::<Vec<_>>()
            );
            assert_eq!(
                arrived, 0,
                "{name}: the listener saw {arrived} refused datagrams"
            );
        }
    }
    // R's datagrams were judged (and dropped) all along: by many of the generations.
    let gens: std::collections::BTreeSet<u64> = d
        .events()
        .iter()
        .filter(|v| {
            v["event"] == "packet" && v["verdict"] == "drop" && (v["src"] == R4 || v["src"] == R6)
        })
        .filter_map(|v| v["policy"].as_u64())
        .collect();
    assert!(
        gens.len() > RELOADS / 4,
        "drops of R reported under only {} generations: {gens:?}",
        gens.len()
    );
    eprintln!(
        "{RELOADS} reloads in {reload_time:?}; sent {:?}; R drops reported under {} generations",
        reports
            .iter()
            .map(|(n, _, r)| (*n, r.sent))
            .collect::<Vec<_>>(),
        gens.len()
    );
}

/// Issue 4.2: a syntax error, a bad value and a failing `[[test]]`: each reload (by
/// `enforcer reload` and by SIGHUP) is refused with exactly the FILE:LINE:COL message
/// `enforcer check` gives; the policy in force keeps its generation and keeps enforcing.
#[test]
fn bad_policies_are_refused_and_the_policy_in_force_stays() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("udp-listen", PORT);
    let good = bed.policy("", &format!("[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\n"));
    let mut d = Daemon::start(&bed.host, &good);
    let before = d.status()["policy"].clone();
    let gen = before["generation"].as_u64().expect("generation");
    let mut from_a = Pinger::new(&bed.a, sa(HOST_A4, PORT));
    let mut from_r = Pinger::new(&bed.r, sa(HOST_R4, PORT));
    assert!(reaches(&mut from_a, sa(HOST_A4, PORT)));
    assert!(!reaches(&mut from_r, sa(HOST_R4, PORT)));

    let cases = [
        ("syntax error", bed.policy("", &format!("[[rule]]\nname = \"svc\nprotocol = \"udp\"\nports = [{PORT}]\n")), "", ),
        ("bad value", bed.policy("", "[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [70000]\n"), "port 70000 is out of range"),
        (
            "failing test",
            bed.policy(
                "",
                &format!(
                    "[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\n\n\
                     [[test]]\nname = \"R gets in\"\nproto = \"udp\"\nsrc = \"{R4}\"\ndst = \"{HOST_R4}\"\ndport = {PORT}\nexpect = \"allow\"\n"
                ),
            ),
            "test \"R gets in\" fails: expected allow, got drop (decided by rule \"svc\"",
        ),
    ];
    let file = d.policy_path.display().to_string();
    for (what, text, want) in &cases {
        std::fs::write(&d.policy_path, text).expect("write policy");
        let checked = check(&d.policy_path);
        assert_eq!(
            checked.code, 1,
            "{what}: check should fail: {}{}",
            checked.stdout, checked.stderr
        );
        let diag = checked.stderr.trim().to_string();
        assert!(
            diag.starts_with(&format!("{file}:"))
                && diag.contains(": error: ")
                && diag.contains(want),
            "{what}: check said {diag:?}"
        );
        // FILE:LINE:COL with real numbers.
        let loc: Vec<&str> = diag[file.len() + 1..].splitn(3, ':').collect();
        assert!(
            loc[0].parse::<u32>().is_ok_and(|n| n > 0)
                && loc[1].parse::<u32>().is_ok_and(|n| n > 0),
            "{what}: {diag}"
        );

        // `enforcer reload`: exit status non-zero, the same message.
        let refused = count_policy(&d, "refused");
        let (ok, out, err) = d.cli(&["reload"]);
        assert!(!ok, "{what}: enforcer reload succeeded: {out}");
        assert!(
            err.contains(&format!("generation {gen} stays in force")),
            "{what}: {err}"
        );
        assert!(
            err.contains(&diag),
            "{what}: reload said {err:?}, check said {diag:?}"
        );
        let ev = d.wait_for(EVENT_WAIT, |v| {
            is_policy(v, "refused") && v["error"].as_str() == Some(diag.as_str())
        });
        assert_eq!(ev["policy"], gen, "{ev}");
        assert_eq!(ev["file"], file.as_str(), "{ev}");
        assert_eq!(count_policy(&d, "refused"), refused + 1);

        // SIGHUP: refused alike, reported alike.
        d.reload(text);
        let seen = until(EVENT_WAIT, true, || {
            count_policy(&d, "refused") == refused + 2
        });
        assert!(
            seen.is_some(),
            "{what}: no refused event after SIGHUP: {:#?}",
            d.events()
        );
        let last = d
            .events()
            .into_iter()
            .rfind(|v| is_policy(v, "refused"))
            .expect("refused event");
        assert_eq!(
            last["error"].as_str(),
            Some(diag.as_str()),
            "{what}: {last}"
        );
        assert!(
            d.stderr().contains("reload refused"),
            "{what}: log: {}",
            d.stderr()
        );
        assert!(
            d.stderr().contains(&diag),
            "{what}: the log lacks the message: {}",
            d.stderr()
        );
    }
    // Still the same policy, still enforcing.
    let after = d.status()["policy"].clone();
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["hash"], before["hash"]);
    assert!(
        reaches(&mut from_a, sa(HOST_A4, PORT)),
        "A refused after the refused reloads"
    );
    assert!(
        !reaches(&mut from_r, sa(HOST_R4, PORT)),
        "R let in after the refused reloads"
    );
    assert_eq!(count_policy(&d, "applied"), 1, "{:#?}", d.events());
}

/// Issue 4.3: a rule naming a cgroup that does not exist yet applies once it is created
/// (within a couple of seconds), and again after the cgroup is removed and created anew
/// (a service restart: a new cgroup id under the same path).
#[test]
fn a_cgroup_created_later_and_recreated_keeps_its_rule() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("tcp-listen", PORT);
    let later_path = format!("{}/later", bed.cg.path);
    let policy = bed.policy(
        "",
        &format!("[[rule]]\nname = \"svc\"\nprotocol = \"tcp\"\nports = [{PORT}]\nallow_from = []\nallow_cgroups = [\"{later_path}\"]\n"),
    );
    let d = Daemon::start(&bed.host, &policy);
    let missing = format!("cgroup {later_path} does not exist yet");
    let warned = |d: &Daemon| {
        d.status()["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains(&missing)))
    };
    assert!(
        warned(&d),
        "no warning about the missing cgroup: {}",
        d.status()
    );
    assert_eq!(
        bed.tcp(&bed.host, Some(&bed.refused), "127.0.0.1", PORT, 500),
        "eperm"
    );

    for round in ["created", "re-created"] {
        let later = bed.cg.child("later");
        let created = Instant::now();
        let mut last = String::new();
        let took = until(Duration::from_secs(15), true, || {
            last = bed.tcp(&bed.host, Some(&later), "127.0.0.1", PORT, 300);
            last == "connected"
        });
        let took = took.unwrap_or_else(|| {
            panic!(
                "{round}: a process in {later_path} still gets {last:?} after {:?}",
                created.elapsed()
            )
        });
        eprintln!("{round}: the rule applied after {took:?}");
        assert!(!warned(&d), "{round}: still warned: {}", d.status());
        // Only that cgroup: its sibling is still refused, over IPv6 too.
        assert_eq!(
            bed.tcp(&bed.host, Some(&later), "::1", PORT, 500),
            "connected",
            "{round}"
        );
        assert_eq!(
            bed.tcp(&bed.host, Some(&bed.refused), "::1", PORT, 500),
            "eperm",
            "{round}"
        );
        eprintln!("{round}: applied after {took:?}");
        // The service stops: its cgroup goes away, and the daemon notices.
        drop(later);
        assert!(
            until(Duration::from_secs(3), true, || warned(&d)).is_some(),
            "the removal was not noticed: {}",
            d.status()
        );
    }
}

/// Issue 4.4: tcp/22 stays reachable from a refused source although a rule protects it and
/// allows nothing; with `[failsafe] ports = []` the rule applies to it.
#[test]
fn the_failsafe_keeps_ssh_reachable_unless_removed() {
    need_root!();
    let bed = Bed::new();
    let _ssh = bed.listen("tcp-listen", 22);
    let _svc = bed.listen("tcp-listen", PORT);
    let rule = format!("[[rule]]\nname = \"lockdown\"\nprotocol = \"tcp\"\nports = [22, {PORT}]\nallow_from = []\n");
    let mut d = Daemon::start(&bed.host, &bed.policy("", &rule));
    for dst in [HOST_R4, HOST_R6] {
        assert_eq!(
            bed.tcp(&bed.r, None, dst, 22, 1000),
            "connected",
            "ssh from R to {dst}"
        );
        assert_eq!(
            bed.tcp(&bed.r, None, dst, PORT, 500),
            "timeout",
            "the rule protects {PORT} ({dst})"
        );
    }
    assert_eq!(
        bed.tcp(&bed.host, Some(&bed.refused), "127.0.0.1", 22, 1000),
        "connected"
    );
    assert_eq!(
        bed.tcp(&bed.host, Some(&bed.refused), "127.0.0.1", PORT, 1000),
        "eperm"
    );

    let gen = d.generation();
    d.reload(&bed.policy("", &format!("[failsafe]\nports = []\n\n{rule}")));
    wait_policy(&mut d, "applied", gen + 1);
    for dst in [HOST_R4, HOST_R6] {
        assert_eq!(
            bed.tcp(&bed.r, None, dst, 22, 500),
            "timeout",
            "ssh from R to {dst} without the failsafe"
        );
    }
    assert_eq!(
        bed.tcp(&bed.host, Some(&bed.refused), "127.0.0.1", 22, 1000),
        "eperm"
    );
    d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "packet"
            && v["verdict"] == "drop"
            && v["dport"] == 22
            && v["rule"] == "lockdown"
    });
}

/// Issue 4.5: `enforcer reload --confirm-within 4s` without `enforcer confirm`: the previous
/// policy comes back by itself; with `enforcer confirm` in time the new one stays.
#[test]
fn confirm_within_rolls_back_unless_confirmed() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("udp-listen", PORT);
    let closed = bed.policy("", &format!("[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\n"));
    let open = bed.policy("", &format!("[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\", \"10.2.0.0/24\"]\n"));
    let mut d = Daemon::start(&bed.host, &closed);
    let closed_hash = d.status()["policy"]["hash"].clone();
    let mut from_r = Pinger::new(&bed.r, sa(HOST_R4, PORT));
    let mut from_a = Pinger::new(&bed.a, sa(HOST_A4, PORT));
    assert!(!reaches(&mut from_r, sa(HOST_R4, PORT)));

    // Not confirmed: rolled back.
    let gen = d.generation();
    std::fs::write(&d.policy_path, &open).expect("write policy");
    // Taken before asking: the deadline starts later, so the rollback cannot be seen
    // before 4 s from here unless it came early.
    let asked = Instant::now();
    // A deadline the checks of the pending policy fit in even on a loaded machine.
    let (ok, out, err) = d.cli(&["reload", "--confirm-within", "4s"]);
    assert!(ok, "{err}");
    assert!(out.contains("enforcer confirm"), "{out}");
    let ev = wait_policy(&mut d, "applied-pending-confirmation", gen + 1);
    assert_ne!(ev["hash"], closed_hash);
    assert!(d.status()["policy"]["confirm_by"].is_string());
    assert!(
        reaches(&mut from_r, sa(HOST_R4, PORT)),
        "the pending policy does not apply"
    );
    let ev = d.wait_for(Duration::from_secs(20), |v| {
        is_policy(v, "rolled-back") && v["policy"] == gen + 2
    });
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "rolled back {took:?} after the reload, before its 4 s deadline"
    );
    assert_eq!(ev["hash"], closed_hash, "{ev}");
    assert_eq!(ev["rules_changed"], serde_json::json!(["svc"]), "{ev}");
    assert!(
        !reaches(&mut from_r, sa(HOST_R4, PORT)),
        "R still let in after the rollback"
    );
    assert!(reaches(&mut from_a, sa(HOST_A4, PORT)));
    let st = d.status()["policy"].clone();
    assert_eq!(
        (st["generation"].as_u64(), &st["hash"], &st["confirm_by"]),
        (Some(gen + 2), &closed_hash, &Value::Null)
    );
    let events = d.events();
    let pos = |a: &str| {
        events
            .iter()
            .position(|v| is_policy(v, a))
            .unwrap_or(usize::MAX)
    };
    assert!(pos("applied-pending-confirmation") < pos("rolled-back"));

    // Confirmed in time: stays.
    let asked = Instant::now();
    let (ok, _, err) = d.cli(&["reload", "--confirm-within", "5s"]);
    assert!(ok, "{err}");
    wait_policy(&mut d, "applied-pending-confirmation", gen + 3);
    let (ok, out, err) = d.cli(&["confirm"]);
    assert!(ok, "enforcer confirm: {err}");
    assert!(
        out.contains(&format!("generation {} confirmed", gen + 3)),
        "{out}"
    );
    wait_policy(&mut d, "confirmed", gen + 3);
    // Watched past the deadline it had, for as long as any absence.
    let watch_until = asked + Duration::from_secs(5) + testbed::ABSENCE;
    std::thread::sleep(watch_until.saturating_duration_since(Instant::now()));
    assert_eq!(count_policy(&d, "rolled-back"), 1, "{:#?}", d.events());
    assert_eq!(d.generation(), gen + 3);
    assert!(d.status()["policy"]["confirm_by"].is_null());
    assert!(
        reaches(&mut from_r, sa(HOST_R4, PORT)),
        "the confirmed policy no longer applies"
    );
    // Nothing left to confirm.
    let (ok, _, err) = d.cli(&["confirm"]);
    assert!(!ok && err.contains("no policy is waiting"), "{err}");
}

/// Issue 4.6: under a global `mode = "enforce"`, a rule with `mode = "audit"` lets its
/// refused traffic through and reports it as would-drop, while another rule still drops.
#[test]
fn a_rule_in_audit_mode_overrides_global_enforce() {
    need_root!();
    let bed = Bed::new();
    let _watched = bed.listen("udp-listen", PORT);
    let _guarded = bed.listen("udp-listen", PORT + 1);
    let policy = bed.policy(
        "mode = \"enforce\"",
        &format!(
            "[[rule]]\nname = \"watch\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\nmode = \"audit\"\n\n\
             [[rule]]\nname = \"guard\"\nprotocol = \"udp\"\nports = [{}]\nallow_from = [\"10.1.0.0/24\"]\n",
            PORT + 1
        ),
    );
    let mut d = Daemon::start(&bed.host, &policy);
    for dst in [HOST_R4, HOST_R6] {
        assert_eq!(
            bed.udp(&bed.r, None, dst, PORT, 1000),
            "reply",
            "audit rule from R to {dst}"
        );
        assert_eq!(
            bed.udp(&bed.r, None, dst, PORT + 1, 300),
            "sent",
            "enforce rule from R to {dst}"
        );
    }
    for src in [R4, R6] {
        let ev = d.wait_for(EVENT_WAIT, |v| {
            v["event"] == "packet" && v["src"] == src && v["dport"] == PORT
        });
        assert_eq!(
            (ev["verdict"].as_str(), ev["rule"].as_str()),
            (Some("would-drop"), Some("watch")),
            "{ev}"
        );
        let ev = d.wait_for(EVENT_WAIT, |v| {
            v["event"] == "packet" && v["src"] == src && v["dport"] == PORT + 1
        });
        assert_eq!(
            (ev["verdict"].as_str(), ev["rule"].as_str()),
            (Some("drop"), Some("guard")),
            "{ev}"
        );
    }
    assert!(
        !d.events()
            .iter()
            .any(|v| v["event"] == "packet" && v["rule"] == "watch" && v["verdict"] == "drop"),
        "{:#?}",
        d.events()
    );
    // Allowed sources are allowed either way.
    assert_eq!(bed.udp(&bed.a, None, HOST_A4, PORT, 1000), "reply");
    assert_eq!(bed.udp(&bed.a, None, HOST_A4, PORT + 1, 1000), "reply");
    let st = d.status();
    let rule = |name: &str| {
        st["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .expect("rule")
    };
    let (watch, guard) = (rule("watch"), rule("guard"));
    assert_eq!(watch["mode"], "audit", "{watch}");
    assert_eq!(guard["mode"], "enforce", "{guard}");
    assert!(
        watch["would_drop"].as_u64() >= Some(2) && watch["dropped"] == 0,
        "{watch}"
    );
    assert!(
        guard["dropped"].as_u64() >= Some(2) && guard["would_drop"] == 0,
        "{guard}"
    );
}

/// Issue 4.7: `enforcer status --json` shows the generation and hash the audit stream's
/// policy events carry (and `enforcer check` computes), packets carry the generation that
/// judged them, and a change's policy event lists the rules added, removed and changed.
#[test]
fn policy_identity_is_the_same_in_status_events_and_packets() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("udp-listen", PORT);
    let first = bed.policy(
        "",
        &format!(
            "[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\n\n\
             [[rule]]\nname = \"same\"\nprotocol = \"tcp\"\nports = [7200]\nallow_from = [\"10.1.0.0/24\"]\n\n\
             [[rule]]\nname = \"old\"\nprotocol = \"tcp\"\nports = [7300]\n"
        ),
    );
    let second = bed.policy(
        "",
        &format!(
            "[[rule]]\nname = \"new\"\nprotocol = \"udp\"\nports = [7400]\n\n\
             [[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\", \"fd01::/64\"]\n\n\
             [[rule]]\nname = \"same\"\nprotocol = \"tcp\"\nports = [7200]\nallow_from = [\"10.1.0.0/24\"]\n"
        ),
    );
    let mut d = Daemon::start(&bed.host, &first);
    let expected_hash = checked_hash(&d.policy_path);
    let st = d.status();
    let (gen, hash) = (
        st["policy"]["generation"].as_u64().expect("generation"),
        st["policy"]["hash"].clone(),
    );
    assert_eq!(hash, expected_hash.as_str());
    assert_eq!(st["policy"]["rules"], 3);
    assert_eq!(
        st["policy"]["file"],
        d.policy_path.display().to_string().as_str()
    );
    let ev = wait_policy(&mut d, "applied", gen);
    assert_eq!(ev["hash"], hash, "{ev}");
    assert!(
        ev["rules_added"].is_null(),
        "the first policy is not a change: {ev}"
    );

    assert_eq!(bed.udp(&bed.r, None, HOST_R4, PORT, 300), "sent");
    let pkt = d.wait_for(EVENT_WAIT, |v| v["event"] == "packet" && v["src"] == R4);
    assert_eq!(pkt["policy"], gen, "{pkt}");

    d.reload(&second);
    let ev = wait_policy(&mut d, "applied", gen + 1);
    let expected_hash = checked_hash(&d.policy_path);
    let st = d.status();
    assert_eq!(st["policy"]["generation"], gen + 1);
    assert_eq!(st["policy"]["hash"], expected_hash.as_str());
    assert_eq!(ev["hash"], expected_hash.as_str(), "{ev}");
    assert_ne!(ev["hash"], hash);
    assert_eq!(ev["rules_added"], serde_json::json!(["new"]), "{ev}");
    assert_eq!(ev["rules_removed"], serde_json::json!(["old"]), "{ev}");
    assert_eq!(ev["rules_changed"], serde_json::json!(["svc"]), "{ev}");

    assert_eq!(bed.udp(&bed.r, None, HOST_R6, PORT, 300), "sent");
    let pkt = d.wait_for(EVENT_WAIT, |v| v["event"] == "packet" && v["src"] == R6);
    assert_eq!(pkt["policy"], gen + 1, "{pkt}");
    assert_eq!(pkt["rule"], "svc", "{pkt}");

    // The same file again: a new generation with the same hash and no rule changes.
    let (ok, _, err) = d.cli(&["reload"]);
    assert!(ok, "{err}");
    let ev = wait_policy(&mut d, "applied", gen + 2);
    assert_eq!(ev["hash"], expected_hash.as_str(), "{ev}");
    for k in ["rules_added", "rules_removed", "rules_changed"] {
        assert_eq!(ev[k], serde_json::json!([]), "{k}: {ev}");
    }
}

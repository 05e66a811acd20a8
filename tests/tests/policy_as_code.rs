//! Policy as code: `enforcer explain` held to the kernel's verdicts, a policy's own
//! `[[test]]` tables, temporary grants, and allow entries that expire.
//!
//! Topology: `testbed::bed` (a host namespace with the daemon, an allowed remote A and a
//! refused remote R, a test cgroup tree). Needs root; skipped (with a message) otherwise.
//! Run with `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test policy_as_code`.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    bed::{check, enforcer, Bed, A4, A6, HOST_A4, HOST_A6, HOST_R4, HOST_R6, R4, R6},
    daemon::{Daemon, TempDir},
    net::{Cgroup, NetNs},
    traffic::{now_unix_f64, parse_rfc3339, rfc3339, Pinger},
};

const PORT: u16 = 7000;
/// Not protected by any rule.
const OPEN: u16 = 7100;
const EVENT_WAIT: Duration = Duration::from_secs(5);

use testbed::need_root;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("address"), port)
}

/// Whether an echoing UDP listener at `dst` answers (a few tries, so one lost datagram
/// does not decide).
fn reaches(p: &mut Pinger, dst: SocketAddr) -> bool {
    (0..3).any(|_| p.ping(dst, Duration::from_millis(150)))
}

/// The kernel's verdict as a probe saw it.
fn kernel_verdict(outcome: &str) -> &'static str {
    match outcome {
        "connected" | "reply" => "allow",
        "timeout" | "sent" | "eperm" => "drop",
        other => panic!("unexpected probe outcome {other:?}"),
    }
}

/// The rules the explain table runs against: tcp and udp on PORT (and tcp/22, the
/// failsafe), allowing A's prefixes and CG/allowed.
fn explain_policy(bed: &Bed) -> String {
    let allowed = &bed.allowed.path;
    bed.policy(
        "",
        &format!(
            "[[rule]]\nname = \"tcp-svc\"\nprotocol = \"tcp\"\nports = [{PORT}, 22]\nallow_from = [\"10.1.0.0/24\", \"fd01::/64\"]\nallow_cgroups = [\"{allowed}\"]\n\n\
             [[rule]]\nname = \"udp-svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\", \"fd01::/64\"]\nallow_cgroups = [\"{allowed}\"]\n"
        ),
    )
}

/// `enforcer explain ... --json` against the daemon's live policy (its socket) and against
/// the policy file (`--config`); both answers, parsed.
fn explain_both(d: &Daemon, config: &Path, query: &[&str]) -> (Value, Value) {
    let mut args = vec!["explain", "--json"];
    args.extend_from_slice(query);
    let (ok, live, err) = d.cli(&args);
    assert!(ok, "explain {query:?}: {err}");
    let config = config.display().to_string();
    args.extend_from_slice(&["--config", &config]);
    let file = enforcer(&args);
    assert_eq!(file.code, 0, "explain --config {query:?}: {}", file.stderr);
    let parse = |s: &str| {
        serde_json::from_str::<Value>(s)
            .unwrap_or_else(|e| panic!("explain output is not JSON ({e}): {s}"))
    };
    (parse(&live), parse(&file.stdout))
}

struct Case<'a> {
    what: &'a str,
    ns: &'a NetNs,
    /// A local sender's cgroup (None: a remote sender).
    cg: Option<&'a Cgroup>,
    proto: &'a str,
    src: &'a str,
    dst: &'a str,
    dport: u16,
    expect: &'a str,
    /// The reason explain must give.
    reason: &'a str,
}

/// Issue 8.8: for a table of packets (remote senders allowed and refused over IPv4 and
/// IPv6, an unprotected port, the failsafe, local senders in allowed and refused cgroups),
/// `enforcer explain` (live, and with `--config`) gives the verdict the kernel gives real
/// traffic; for drops, the rule and reason the kernel reports too.
#[test]
fn explain_agrees_with_the_kernel() {
    need_root!();
    let bed = Bed::new();
    let _l = [
        bed.listen("tcp-listen", PORT),
        bed.listen("udp-listen", PORT),
        bed.listen("tcp-listen", OPEN),
        bed.listen("tcp-listen", 22),
    ];
    let mut d = Daemon::start(&bed.host, &explain_policy(&bed));
    let config = d.policy_path.clone();
    let (host, a, r) = (&bed.host, &bed.a, &bed.r);
    let (allowed, refused) = (Some(&bed.allowed), Some(&bed.refused));
    #[rustfmt::skip]
    let cases = [
        Case { what: "A, IPv4, tcp", ns: a, cg: None, proto: "tcp", src: A4, dst: HOST_A4, dport: PORT, expect: "allow", reason: "allowed-by-source" },
        Case { what: "A, IPv6, udp", ns: a, cg: None, proto: "udp", src: A6, dst: HOST_A6, dport: PORT, expect: "allow", reason: "allowed-by-source" },
        Case { what: "R, IPv4, tcp", ns: r, cg: None, proto: "tcp", src: R4, dst: HOST_R4, dport: PORT, expect: "drop", reason: "dropped-source" },
        Case { what: "R, IPv6, tcp", ns: r, cg: None, proto: "tcp", src: R6, dst: HOST_R6, dport: PORT, expect: "drop", reason: "dropped-source" },
        Case { what: "R, IPv4, udp", ns: r, cg: None, proto: "udp", src: R4, dst: HOST_R4, dport: PORT, expect: "drop", reason: "dropped-source" },
        Case { what: "R, IPv6, udp", ns: r, cg: None, proto: "udp", src: R6, dst: HOST_R6, dport: PORT, expect: "drop", reason: "dropped-source" },
        Case { what: "R, unprotected port", ns: r, cg: None, proto: "tcp", src: R4, dst: HOST_R4, dport: OPEN, expect: "allow", reason: "not-protected" },
        Case { what: "R, IPv6, unprotected port", ns: r, cg: None, proto: "tcp", src: R6, dst: HOST_R6, dport: OPEN, expect: "allow", reason: "not-protected" },
        Case { what: "R, failsafe tcp/22", ns: r, cg: None, proto: "tcp", src: R4, dst: HOST_R4, dport: 22, expect: "allow", reason: "failsafe" },
        Case { what: "local, allowed cgroup, tcp", ns: host, cg: allowed, proto: "tcp", src: "127.0.0.1", dst: "127.0.0.1", dport: PORT, expect: "allow", reason: "allowed-by-cgroup" },
        Case { what: "local, allowed cgroup, udp v6", ns: host, cg: allowed, proto: "udp", src: "::1", dst: "::1", dport: PORT, expect: "allow", reason: "allowed-by-cgroup" },
        Case { what: "local, refused cgroup, tcp", ns: host, cg: refused, proto: "tcp", src: "127.0.0.1", dst: "127.0.0.1", dport: PORT, expect: "drop", reason: "dropped-source" },
        Case { what: "local, refused cgroup, udp v6", ns: host, cg: refused, proto: "udp", src: "::1", dst: "::1", dport: PORT, expect: "drop", reason: "dropped-source" },
        // A local process is judged by its cgroup only: a prefix that holds the host's
        // address it connects to (and leaves from) does not let it in.
        Case { what: "local, refused cgroup, to an allowed address", ns: host, cg: refused, proto: "tcp", src: HOST_A4, dst: HOST_A4, dport: PORT, expect: "drop", reason: "dropped-source" },
        Case { what: "local, refused cgroup, to another address", ns: host, cg: refused, proto: "tcp", src: HOST_R6, dst: HOST_R6, dport: PORT, expect: "drop", reason: "dropped-source" },
        Case { what: "local, refused cgroup, unprotected port", ns: host, cg: refused, proto: "tcp", src: "127.0.0.1", dst: "127.0.0.1", dport: OPEN, expect: "allow", reason: "not-protected" },
    ];
    let mut table = String::new();
    for c in &cases {
        let port = c.dport.to_string();
        let mut query = vec![
            "--proto", c.proto, "--src", c.src, "--dst", c.dst, "--dport", &port,
        ];
        if let Some(cg) = c.cg {
            query.extend_from_slice(&["--cgroup", &cg.path]);
        }
        let (live, file) = explain_both(&d, &config, &query);
        assert_eq!(
            live, file,
            "{}: live and --config explanations differ",
            c.what
        );
        let outcome = match c.proto {
            "tcp" => bed.tcp(c.ns, c.cg, c.dst, c.dport, 500),
            _ => bed.udp(c.ns, c.cg, c.dst, c.dport, 500),
        };
        let kernel = kernel_verdict(&outcome);
        assert_eq!(
            live["verdict"], kernel,
            "{}: explain says {}, the kernel {outcome}",
            c.what, live["text"]
        );
        assert_eq!(
            kernel, c.expect,
            "{}: the kernel's verdict ({outcome}) is not the table's",
            c.what
        );
        assert_eq!(live["reason"], c.reason, "{}: {live}", c.what);
        assert_eq!(
            live["failsafe"],
            c.reason == "failsafe",
            "{}: {live}",
            c.what
        );
        if kernel == "drop" {
            // The kernel reports the drop with the rule and reason explain names.
            let (proto, dst, dport) = (c.proto, c.dst, u64::from(c.dport));
            let ev = d.wait_for(EVENT_WAIT, |v| {
                v["event"] == "packet"
                    && v["verdict"] == "drop"
                    && v["proto"] == proto
                    && v["dst"] == dst
                    && v["dport"] == dport
            });
            assert_eq!(ev["rule"], live["rule"], "{}: {ev}", c.what);
            assert_eq!(ev["reason"], live["reason"], "{}: {ev}", c.what);
        } else if c.reason.starts_with("allowed") {
            assert!(
                live["rule"].is_string() && live["matched"].is_string(),
                "{}: {live}",
                c.what
            );
        }
        table += &format!(
            "{:<48} explain {:<6} kernel {outcome}\n",
            c.what,
            live["verdict"].as_str().unwrap_or("")
        );
    }
    eprintln!("{table}");
    // The readable form, as a person reads it.
    let (ok, text, err) = d.cli(&[
        "explain",
        "--proto",
        "tcp",
        "--src",
        R4,
        "--dst",
        HOST_R4,
        "--dport",
        &PORT.to_string(),
    ]);
    assert!(ok, "{err}");
    assert!(
        text.starts_with("drop: tcp 10.2.0.2 -> 10.2.0.1:7000: protected by \"tcp-svc\""),
        "{text}"
    );
    assert!(
        text.contains(&format!("live policy generation {}", d.generation())),
        "{text}"
    );
    eprintln!("{text}");
}

/// Issue 8.9: a policy whose own `[[test]]` fails: `enforcer check` exits 1 naming the
/// test and the rule that decided (at the test's line); a reload with it is refused and the
/// policy in force stays.
#[test]
fn a_policy_whose_own_test_fails_is_not_applied() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("udp-listen", PORT);
    let tests = format!(
        "[[test]]\nname = \"A reaches svc\"\nproto = \"udp\"\nsrc = \"{A4}\"\ndst = \"{HOST_A4}\"\ndport = {PORT}\nexpect = \"allow\"\n\n\
         [[test]]\nname = \"R does not\"\nproto = \"udp\"\nsrc = \"{R4}\"\ndst = \"{HOST_R4}\"\ndport = {PORT}\nexpect = \"drop\"\n"
    );
    let rule = |allow: &str| {
        format!("[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [{allow}]\n\n")
    };
    // The policy's tests pass: it is applied.
    let good = bed.policy("", &(rule("\"10.1.0.0/24\"") + &tests));
    let mut d = Daemon::start(&bed.host, &good);
    let before = d.status()["policy"].clone();
    let ok = check(&d.policy_path);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);

    // Someone narrows the rule; the policy's own test catches it.
    let bad = bed.policy("", &(rule("\"10.1.0.128/25\"") + &tests));
    std::fs::write(&d.policy_path, &bad).expect("write policy");
    let out = check(&d.policy_path);
    assert_eq!(
        out.code, 1,
        "check passed a policy whose test fails: {}{}",
        out.stdout, out.stderr
    );
    let test_line = bad
        .lines()
        .position(|l| l == "name = \"A reaches svc\"")
        .expect("test line")
        + 1;
    let want = format!(
        "{}:{test_line}:8: error: test \"A reaches svc\" fails: expected allow, got drop (decided by rule \"svc\"",
        d.policy_path.display()
    );
    assert!(
        out.stderr.starts_with(&want),
        "check said:\n{}\nwanted it to start with:\n{want}",
        out.stderr
    );
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "only that test fails: {}",
        out.stderr
    );
    eprintln!(
        "$ enforcer check --config {}\n{}(exit {})",
        d.policy_path.display(),
        out.stderr,
        out.code
    );

    let (ok, _, err) = d.cli(&["reload"]);
    assert!(!ok, "the reload was applied");
    assert!(err.contains(out.stderr.trim()), "reload said {err:?}");
    d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "policy"
            && v["action"] == "refused"
            && v["error"].as_str() == Some(out.stderr.trim())
    });
    let after = d.status()["policy"].clone();
    assert_eq!(
        (&after["generation"], &after["hash"]),
        (&before["generation"], &before["hash"])
    );
    let mut from_a = Pinger::new(&bed.a, sa(HOST_A4, PORT));
    let mut from_r = Pinger::new(&bed.r, sa(HOST_R4, PORT));
    assert!(
        reaches(&mut from_a, sa(HOST_A4, PORT)),
        "the policy in force no longer lets A in"
    );
    assert!(!reaches(&mut from_r, sa(HOST_R4, PORT)));
}

/// `enforcer grants --json`, parsed.
fn grants(d: &Daemon) -> Vec<Value> {
    let (ok, out, err) = d.cli(&["grants", "--json"]);
    assert!(ok, "enforcer grants: {err}");
    serde_json::from_str::<Vec<Value>>(&out)
        .unwrap_or_else(|e| panic!("grants is not a JSON list ({e}): {out}"))
}

/// Runs `enforcer grant ARGS` and returns the grant's id and its entry in `enforcer grants`.
fn grant(d: &Daemon, args: &[&str]) -> (String, Value) {
    let mut full = vec!["grant"];
    full.extend_from_slice(args);
    let (ok, out, err) = d.cli(&full);
    assert!(ok, "enforcer {full:?}: {err}");
    let id = out
        .strip_prefix("grant ")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no grant id in {out:?}"))
        .to_string();
    let g = grants(d)
        .into_iter()
        .find(|g| g["id"] == id.as_str())
        .unwrap_or_else(|| panic!("grant {id} not listed"));
    (id, g)
}

/// Pings `dst` (every ~50 ms, for at most `limit`) until it stops answering; returns the
/// unix time of the last answered ping's start and of the first unanswered one.
fn until_refused(p: &mut Pinger, dst: SocketAddr, limit: Duration) -> (f64, f64) {
    let start = Instant::now();
    let mut last_ok = 0.0;
    while start.elapsed() < limit {
        let t = now_unix_f64();
        if !p.ping(dst, Duration::from_millis(150)) {
            // One lost datagram is not a verdict: a second try confirms.
            if !p.ping(dst, Duration::from_millis(150)) {
                return (last_ok, t);
            }
        } else {
            last_ok = t;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{dst} still answers after {limit:?}");
}

/// Asserts a grant (or an entry) that expires at `expires` (unix seconds) let traffic in
/// until about then and that it was refused within `within` seconds after it.
fn assert_lapsed_on_time(what: &str, expires: u64, within: f64, (last_ok, refused): (f64, f64)) {
    let e = expires as f64;
    eprintln!(
        "{what}: expires {e}, last answered {:+.3} s, first refused {:+.3} s",
        last_ok - e,
        refused - e
    );
    assert!(
        last_ok > e - 0.6,
        "{what}: let in only until {:.3} s before its expiry",
        e - last_ok
    );
    assert!(
        refused > e - 0.05,
        "{what}: refused {:.3} s before its expiry",
        e - refused
    );
    assert!(
        refused < e + within,
        "{what}: still let in {:.3} s after its expiry",
        refused - e
    );
}

/// Issue 8.10: grants let a refused source (or cgroup) in for a while: listed with the
/// time left, dropped again within a second of expiry, revocable, kept across a daemon
/// restart, each step in the audit stream.
#[test]
fn grants_let_a_refused_source_in_until_they_expire() {
    need_root!();
    let bed = Bed::new();
    let _l = [
        bed.listen("udp-listen", PORT),
        bed.listen("tcp-listen", PORT),
    ];
    let state = TempDir::new();
    let state_dir = state.0.display().to_string();
    let allowed = &bed.allowed.path;
    let policy = bed.policy(
        "",
        &format!(
            "[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\n\n\
             [[rule]]\nname = \"tcp-svc\"\nprotocol = \"tcp\"\nports = [{PORT}]\nallow_cgroups = [\"{allowed}\"]\n"
        ),
    );
    let args = ["--state-dir", state_dir.as_str(), "--on-stop", "keep"];
    let mut d = Daemon::start_with(&bed.host, &policy, &args);
    let (dst4, dst6) = (sa(HOST_R4, PORT), sa(HOST_R6, PORT));
    let mut r4 = Pinger::new(&bed.r, dst4);
    let mut r6 = Pinger::new(&bed.r, dst6);
    assert!(!reaches(&mut r4, dst4), "R is let in without a grant");

    // A grant for 3 s: in at once, listed with its time left, out again on time.
    let (ok, out, err) = d.cli(&[
        "grant",
        "--rule",
        "svc",
        "--from",
        "10.2.0.2/32",
        "--for",
        "3s",
        "--reason",
        "incident 42",
    ]);
    assert!(ok, "enforcer grant: {err}");
    eprintln!(
        "$ enforcer grant --rule svc --from 10.2.0.2/32 --for 3s --reason \"incident 42\"\n{out}"
    );
    let id = out
        .strip_prefix("grant ")
        .and_then(|s| s.split_whitespace().next())
        .expect("grant id")
        .to_string();
    assert!(reaches(&mut r4, dst4), "the grant does not let R in");
    let (ok, listing, err) = d.cli(&["grants"]);
    assert!(ok, "{err}");
    eprintln!("$ enforcer grants\n{listing}");
    let line = listing
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {listing}"));
    assert!(
        line.contains("svc") && line.contains("10.2.0.2/32") && line.contains("incident 42"),
        "{line}"
    );
    assert!(
        ["1s", "2s", "3s"]
            .iter()
            .any(|left| line.contains(&format!(" {left} "))),
        "no time left shown: {line}"
    );
    let g = grants(&d)
        .into_iter()
        .find(|g| g["id"] == id.as_str())
        .expect("listed");
    assert!(
        (1..=3).contains(&g["seconds_left"].as_u64().expect("seconds_left")),
        "{g}"
    );
    assert_eq!(g["active"], true, "{g}");
    let expires = parse_rfc3339(g["expires"].as_str().expect("expires")).expect("RFC 3339");
    let ev = d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "grant" && v["action"] == "granted" && v["id"] == id.as_str()
    });
    assert_eq!(
        (
            ev["reason"].as_str(),
            ev["rule"].as_str(),
            ev["from"].as_str()
        ),
        (Some("incident 42"), Some("svc"), Some("10.2.0.2/32")),
        "{ev}"
    );
    assert_eq!(
        parse_rfc3339(ev["expires"].as_str().unwrap_or("")),
        Some(expires),
        "{ev}"
    );
    assert_lapsed_on_time(
        "grant",
        expires,
        1.0,
        until_refused(&mut r4, dst4, Duration::from_secs(6)),
    );
    let ev = d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "grant" && v["action"] == "expired" && v["id"] == id.as_str()
    });
    assert_eq!(ev["reason"], "incident 42", "{ev}");
    eprintln!("expiry event: {ev}");
    assert!(grants(&d).is_empty(), "{:?}", grants(&d));
    let (_, listing, _) = d.cli(&["grants"]);
    assert!(listing.contains("no grants in force"), "{listing}");

    // Revoked early.
    let (id, _) = grant(
        &d,
        &[
            "--rule",
            "svc",
            "--from",
            "10.2.0.0/24",
            "--for",
            "1h",
            "--reason",
            "ticket 7",
        ],
    );
    assert!(reaches(&mut r4, dst4));
    let (ok, out, err) = d.cli(&["revoke", &id]);
    assert!(
        ok && out.contains(&format!("grant {id} revoked")),
        "{out}{err}"
    );
    assert!(
        !reaches(&mut r4, dst4),
        "R still let in after the revocation"
    );
    let ev = d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "grant" && v["action"] == "revoked" && v["id"] == id.as_str()
    });
    assert_eq!(ev["reason"], "ticket 7", "{ev}");
    let (ok, _, err) = d.cli(&["revoke", &id]);
    assert!(!ok && err.contains("no grant"), "{err}");

    // A cgroup grant: a local process in a refused cgroup connects.
    assert_eq!(
        bed.tcp(&bed.host, Some(&bed.refused), "127.0.0.1", PORT, 500),
        "eperm"
    );
    let (id, g) = grant(
        &d,
        &[
            "--rule",
            "tcp-svc",
            "--cgroup",
            &bed.refused.path,
            "--for",
            "30s",
            "--reason",
            "debugging",
        ],
    );
    assert_eq!(g["cgroup"], bed.refused.path.as_str(), "{g}");
    assert_eq!(
        bed.tcp(&bed.host, Some(&bed.refused), "127.0.0.1", PORT, 500),
        "connected"
    );
    assert_eq!(
        bed.tcp(&bed.host, Some(&bed.refused), "::1", PORT, 500),
        "connected"
    );
    let (ok, _, err) = d.cli(&["revoke", &id]);
    assert!(ok, "{err}");
    assert_eq!(
        bed.tcp(&bed.host, Some(&bed.refused), "127.0.0.1", PORT, 500),
        "eperm"
    );

    // Across a restart (the state directory kept; the programs kept attached in between).
    let (id, g) = grant(
        &d,
        &[
            "--rule",
            "svc",
            "--from",
            "fd02::2/128",
            "--for",
            "10s",
            "--reason",
            "incident 43",
        ],
    );
    let expires = parse_rfc3339(g["expires"].as_str().expect("expires")).expect("RFC 3339");
    let pins = d.pins.take().expect("pins");
    assert!(d.stop().success());
    assert!(
        reaches(&mut r6, dst6),
        "the kept programs dropped the grant while no daemon ran"
    );
    let mut d = Daemon::start_pinned(&bed.host, &policy, &args, pins);
    assert!(
        now_unix_f64() < expires as f64 - 1.0,
        "the restart took too long to test the grant: it (nearly) expired"
    );
    let g = grants(&d)
        .into_iter()
        .find(|g| g["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} lost across the restart"));
    assert_eq!(g["reason"], "incident 43", "{g}");
    assert!(
        reaches(&mut r6, dst6),
        "the grant does not apply after the restart"
    );
    assert!(
        !reaches(&mut r4, dst4),
        "the restart let R's IPv4 address in"
    );
    assert_eq!(
        parse_rfc3339(g["expires"].as_str().expect("expires")),
        Some(expires),
        "{g}"
    );
    // Within 2 s here, not 1: a daemon that adopted pinned maps does not know what their
    // slots hold, so its first two applies (the start, then this expiry) rewrite a whole
    // slot (131072 port entries, one syscall each), which takes most of a second in a
    // debug build on a busy machine.
    assert_lapsed_on_time(
        "grant across a restart",
        expires,
        2.0,
        until_refused(&mut r6, dst6, Duration::from_secs(12)),
    );
    let ev = d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "grant" && v["action"] == "expired" && v["id"] == id.as_str()
    });
    assert_eq!(ev["reason"], "incident 43", "{ev}");
    // The next grant does not reuse an id.
    let (next, _) = grant(
        &d,
        &[
            "--rule",
            "svc",
            "--from",
            "10.2.0.2/32",
            "--for",
            "1m",
            "--reason",
            "x",
        ],
    );
    assert_ne!(next, id);
}

/// Issue 8.11: allow entries with `expires`: a past one allows nothing; a near one allows
/// until then and not after, and the daemon reports the lapse as a policy event. `explain`
/// (live and `--config`) agrees at each step.
#[test]
fn allow_entries_expire_on_time() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("udp-listen", PORT);
    let rule = |entries: &str| {
        bed.policy("", &format!("[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\n  \"10.1.0.0/24\",\n{entries}]\n"))
    };
    // Started without the entries (loading the programs may take a few seconds on a busy
    // machine), then reloaded with them: the near expiry is whole seconds, 3 to 4 s ahead.
    let mut d = Daemon::start(&bed.host, &rule(""));
    let expires = (now_unix_f64() + 4.0) as u64;
    let entries = format!(
        "  {{ from = \"10.2.0.2/32\", expires = \"2020-01-01T00:00:00Z\" }},\n  {{ from = \"fd02::2/128\", expires = \"{}\" }},\n",
        rfc3339(expires)
    );
    std::fs::write(&d.policy_path, rule(&entries)).expect("write policy");
    let (ok, _, err) = d.cli(&["reload"]);
    assert!(ok, "{err}");
    let gen = d.generation();
    let config = d.policy_path.clone();
    let (dst4, dst6) = (sa(HOST_R4, PORT), sa(HOST_R6, PORT));
    let mut r4 = Pinger::new(&bed.r, dst4);
    let mut r6 = Pinger::new(&bed.r, dst6);
    let q4 = [
        "--proto", "udp", "--src", R4, "--dst", HOST_R4, "--dport", "7000",
    ];
    let q6 = [
        "--proto", "udp", "--src", R6, "--dst", HOST_R6, "--dport", "7000",
    ];

    assert!(
        !reaches(&mut r4, dst4),
        "an entry that expired in 2020 lets R in"
    );
    let (live, file) = explain_both(&d, &config, &q4);
    assert_eq!(
        (live["verdict"].as_str(), file["verdict"].as_str()),
        (Some("drop"), Some("drop")),
        "explain of a lapsed entry:\nlive {live}\nfile {file}"
    );
    assert!(
        reaches(&mut r6, dst6),
        "an entry that expires in a few seconds does not let R in"
    );
    let (live, file) = explain_both(&d, &config, &q6);
    assert_eq!(
        (live["verdict"].as_str(), file["verdict"].as_str()),
        (Some("allow"), Some("allow")),
        "live {live}\nfile {file}"
    );
    assert_eq!(live["matched"], "fd02::2/128", "{live}");

    assert_lapsed_on_time(
        "expiring entry",
        expires,
        1.0,
        until_refused(&mut r6, dst6, Duration::from_secs(10)),
    );
    let ev = d.wait_for(EVENT_WAIT, |v| {
        v["event"] == "policy" && v["action"] == "entry-expired"
    });
    assert_eq!(ev["policy"], gen + 1, "{ev}");
    assert_eq!(d.generation(), gen + 1);
    let (live, file) = explain_both(&d, &config, &q6);
    assert_eq!(
        (live["verdict"].as_str(), file["verdict"].as_str()),
        (Some("drop"), Some("drop")),
        "after the expiry:\nlive {live}\nfile {file}"
    );
    assert!(
        reaches(
            &mut Pinger::new(&bed.a, sa(HOST_A4, PORT)),
            sa(HOST_A4, PORT)
        ),
        "A lost its permanent entry"
    );
    // Once lapsed, the entry stays lapsed: no more expiry events.
    std::thread::sleep(testbed::ABSENCE);
    let n = d
        .events()
        .iter()
        .filter(|v| v["event"] == "policy" && v["action"] == "entry-expired")
        .count();
    assert_eq!(n, 1, "{:#?}", d.events());
}

/// Issue 12.1: a grant and an expiring entry lapse in the kernel at their deadline with no
/// daemon running, after a stop with `--on-stop keep` and after SIGKILL; the next daemon
/// reports each expiry once, late, with its true time.
#[test]
fn deadlines_hold_with_no_daemon_watching() {
    need_root!();
    for stop in ["keep", "sigkill"] {
        let bed = Bed::new();
        let _l = bed.listen("udp-listen", PORT);
        let state = TempDir::new();
        let state_dir = state.0.display().to_string();
        let policy_until = |expires: u64| {
            bed.policy(
                "",
                &format!(
                    "[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\n\
                     allow_from = [\"fd01::/64\", {{ from = \"10.1.0.2/32\", expires = \"{}\" }}]\n",
                    rfc3339(expires)
                ),
            )
        };
        let args = ["--state-dir", state_dir.as_str(), "--on-stop", "keep"];
        // Started first, the deadline set after: a slow start cannot eat into it.
        let mut d = Daemon::start_with(
            &bed.host,
            &policy_until(now_unix_f64() as u64 + 3600),
            &args,
        );
        let expires = now_unix_f64() as u64 + 7;
        let policy = policy_until(expires);
        d.reload(&policy);
        d.wait_for(Duration::from_secs(10), |v| {
            v["event"] == "policy" && v["action"] == "applied" && v["policy"] == 2
        });
        let (_, g) = grant(
            &d,
            &[
                "--rule",
                "svc",
                "--from",
                "10.2.0.2/32",
                "--for",
                "12s",
                "--reason",
                "deadline",
            ],
        );
        let grant_expires = parse_rfc3339(g["expires"].as_str().expect("expires")).expect("time");
        let (dst_a, dst_r) = (sa(HOST_A4, PORT), sa(HOST_R4, PORT));
        let mut a = Pinger::new(&bed.a, dst_a);
        let mut r = Pinger::new(&bed.r, dst_r);
        assert!(
            reaches(&mut a, dst_a),
            "{stop}: the expiring entry does not let A in"
        );
        assert!(
            reaches(&mut r, dst_r),
            "{stop}: the grant does not let R in"
        );

        // The daemon goes away; the pins stay, with the policy and the grant in force.
        let pins = match stop {
            "keep" => {
                let pins = d.pins.take().expect("pins");
                assert!(d.stop().success());
                pins
            }
            _ => d.kill9(),
        };
        assert!(
            reaches(&mut a, dst_a),
            "{stop}: A refused before its entry expired"
        );
        assert!(
            reaches(&mut r, dst_r),
            "{stop}: R refused before its grant expired"
        );
        assert_lapsed_on_time(
            &format!("{stop}: entry"),
            expires,
            1.0,
            until_refused(&mut a, dst_a, Duration::from_secs(20)),
        );
        assert_lapsed_on_time(
            &format!("{stop}: grant"),
            grant_expires,
            1.0,
            until_refused(&mut r, dst_r, Duration::from_secs(20)),
        );
        // A source the policy keeps stays in.
        let dst6 = sa(HOST_A6, PORT);
        let mut a6 = Pinger::new(&bed.a, dst6);
        assert!(
            reaches(&mut a6, dst6),
            "{stop}: fd01::/64 lost with the expiries"
        );

        // The next daemon reports both expiries once, late, with their true times.
        let mut d = Daemon::start_pinned(&bed.host, &policy, &args, pins);
        let g_ev = d.wait_for(Duration::from_secs(10), |v| {
            v["event"] == "grant" && v["action"] == "expired"
        });
        assert_eq!(g_ev["late"], true, "{stop}: {g_ev}");
        assert_eq!(
            g_ev["expired_at"],
            rfc3339(grant_expires).as_str(),
            "{g_ev}"
        );
        assert_eq!(g_ev["from"], "10.2.0.2/32", "{g_ev}");
        let e_ev = d.wait_for(Duration::from_secs(10), |v| {
            v["event"] == "entry" && v["action"] == "expired"
        });
        assert_eq!(e_ev["late"], true, "{stop}: {e_ev}");
        assert_eq!(e_ev["expired_at"], rfc3339(expires).as_str(), "{e_ev}");
        assert_eq!(e_ev["from"], "10.1.0.2/32", "{e_ev}");
        assert_eq!(e_ev["rule"], "svc", "{e_ev}");
        assert!(!reaches(&mut a, dst_a) && !reaches(&mut r, dst_r));
        let pins = d.pins.take().expect("pins");
        assert!(d.stop().success());
        // Once: a third daemon has nothing more to report.
        let mut d = Daemon::start_pinned(&bed.host, &policy, &args, pins);
        d.wait_for(Duration::from_secs(10), |v| {
            v["event"] == "policy" && v["action"] == "applied"
        });
        let again = d.poll_for(Duration::from_secs(2), |v| {
            (v["event"] == "grant" || v["event"] == "entry") && v["action"] == "expired"
        });
        assert!(again.is_none(), "{stop}: reported twice: {again:?}");
    }
}

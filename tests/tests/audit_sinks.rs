//! The audit sinks a fleet collects, held against the real daemon and a real collector:
//! the rotated file under a flood (sizes, `keep`, `seq` contiguous across files and a
//! restart, `audit verify` and what tampering does to it), exact loss accounting when the
//! disk fails (a tiny tmpfs), per-sink filters changed and removed by reloads, and
//! rsyslog (its own process on a private config) tailing the file with imfile and
//! receiving the syslog sink over UDP and TCP: every `seq` exactly once.
//!
//! Topology: `testbed::bed::Bed` (A 10.1.0.2 allowed, R 10.2.0.2 refused, daemon in
//! "host"). Needs root; skipped otherwise. Run with
//! `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test audit_sinks`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpStream,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use testbed::{
    bed::{enforcer, Bed, HOST_A4, HOST_R4},
    daemon::{Daemon, TempDir},
    flood::{rule_status, status_json, udp_once, udp_send},
    need_root,
    sinks::{json_lines, rotated_set, seqs, wait_until, DgramCollector, Rsyslog, Tmpfs},
};

const WAIT: Duration = Duration::from_secs(30);

const RULES: &str = r#"
[[rule]]
name = "udp-svc"
protocol = "udp"
ports = [7000]
allow_from = ["10.1.0.0/24"]

[[rule]]
name = "tcp-svc"
protocol = "tcp"
ports = [7001]
allow_from = ["10.1.0.0/24"]
"#;

/// A policy for `bed` with no event rate limits, `audit` lines in `[audit]`, then `sinks`
/// (`[audit.file]`, `[audit.syslog]`) and the rules.
fn policy(bed: &Bed, audit: &str, sinks: &str) -> String {
    format!(
        "[audit]\nrate_per_rule = 0\nrate_global = 0\n{audit}\n\n{}\n{sinks}\n{RULES}",
        bed.attach()
    )
}

fn file_sink(path: &Path, max_bytes: u64, keep: u32, filters: &str) -> String {
    format!(
        "[audit.file]\npath = \"{}\"\nmax_bytes = {max_bytes}\nkeep = {keep}\n{filters}\n",
        path.display()
    )
}

/// Refused datagrams from R to udp-svc, 100 at a time.
fn flood(bed: &Bed, n: usize, sport: u16) {
    flood_paced(bed, n, sport, 100, Duration::from_millis(5));
}

/// Refused datagrams from R to udp-svc, `batch` at a time with `pause` between.
fn flood_paced(bed: &Bed, n: usize, sport: u16, batch: usize, pause: Duration) {
    let sent = udp_send(
        &bed.r,
        format!("10.2.0.2:{sport}").parse().unwrap(),
        format!("{HOST_R4}:7000").parse().unwrap(),
        b"flood",
        n,
        batch,
        pause,
    );
    assert_eq!(sent, n, "datagrams sent");
}

/// Waits until every refusal the kernel counted for udp-svc is on stdout; returns the
/// daemon's lines.
fn settle(d: &Daemon) -> Vec<Value> {
    let packets = |d: &Daemon| {
        d.events()
            .iter()
            .filter(|v| v["event"] == "packet" && v["rule"] == "udp-svc" && v["verdict"] == "drop")
            .count() as u64
    };
    wait_until(
        WAIT,
        || {
            let dropped = rule_status(&status_json(d), "udp-svc")["dropped"]
                .as_u64()
                .unwrap_or(0);
            dropped > 0 && packets(d) == dropped
        },
        || format!("stdout behind the drop counter: {}", d.stderr()),
    );
    d.events()
}

/// The lines of a rotated set, oldest first.
fn set_lines(path: &Path) -> Vec<Value> {
    rotated_set(path)
        .iter()
        .flat_map(|p| json_lines(p))
        .collect()
}

fn assert_contiguous(s: &[u64], what: &str) {
    assert!(!s.is_empty(), "{what}: no seq");
    if let Some(w) = s.windows(2).find(|w| w[1] != w[0] + 1) {
        panic!("{what}: seq {} is followed by {}", w[0], w[1]);
    }
}

fn without_chain(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().expect("object").remove("chain");
    v
}

/// `enforcer audit verify FILES...`: (exit code, stdout + stderr).
fn verify(files: &[PathBuf], extra: &[&str]) -> (i32, String) {
    let mut args = vec!["audit".to_string(), "verify".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(files.iter().map(|f| f.display().to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = enforcer(&a);
    (r.code, format!("{}{}", r.stdout, r.stderr))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot_id")
        .trim()
        .to_string()
}

#[test]
fn rotation_under_a_flood_keeps_sizes_and_seq_and_verify_holds_across_a_restart() {
    need_root!();
    let bed = Bed::new();
    let tmp = TempDir::new();
    let state = tmp.0.join("state");
    let log = tmp.0.join("logs/audit.jsonl");
    let (max, keep) = (16_384u64, 3u32);
    let p = policy(&bed, "", &file_sink(&log, max, keep, ""));
    let args = ["--state-dir", state.to_str().unwrap()];

    let d = Daemon::start_with(&bed.host, &p, &args);
    flood(&bed, 2000, 40100);
    let out = settle(&d);
    let last = *seqs(&out).last().expect("seq on stdout");
    wait_until(
        WAIT,
        || seqs(&set_lines(&log)).last() == Some(&last),
        || format!("the file never got seq {last}"),
    );

    // Every line is numbered from 1 and says where it comes from.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for v in &out {
        assert_eq!(v["boot_id"], boot_id(), "{v}");
        assert_eq!(v["host"], host.trim(), "{v}");
    }
    let out_seqs = seqs(&out);
    assert_eq!(out_seqs.len(), out.len(), "a stdout line without seq");
    assert_eq!(out_seqs[0], 1);
    assert_contiguous(&out_seqs, "stdout");

    // Sizes, rotation count, modes.
    let set = rotated_set(&log);
    assert_eq!(set.len(), keep as usize + 1, "{set:?}");
    assert!(!PathBuf::from(format!("{}.{}", log.display(), keep + 1)).exists());
    for f in &set {
        let text = std::fs::read_to_string(f).unwrap();
        let longest = text.lines().map(|l| l.len() + 1).max().unwrap_or(0) as u64;
        assert!(
            text.len() as u64 <= max + longest,
            "{} has {} bytes (max_bytes {max}, longest line {longest})",
            f.display(),
            text.len()
        );
        assert_eq!(std::fs::metadata(f).unwrap().mode() & 0o777, 0o640);
    }
    assert_eq!(
        std::fs::metadata(log.parent().unwrap()).unwrap().mode() & 0o777,
        0o750
    );
    // Across the files: contiguous, no duplicate, the same lines stdout has.
    let lines = set_lines(&log);
    let file_seqs = seqs(&lines);
    assert_eq!(
        file_seqs.len(),
        lines.len(),
        "a line without seq (nothing was lost)"
    );
    assert_contiguous(&file_seqs, "rotated files");
    let by_seq: BTreeMap<u64, &Value> = out
        .iter()
        .map(|v| (v["seq"].as_u64().unwrap(), v))
        .collect();
    for v in &lines {
        assert_eq!(&without_chain(v), by_seq[&v["seq"].as_u64().unwrap()]);
    }
    let st = status_json(&d);
    assert_eq!(st["audit"]["lost"]["file"], 0, "{st:#}");
    assert_eq!(st["audit"]["file"]["path"], log.display().to_string());
    eprintln!(
        "first run: seq 1 to {last}; files hold {} to {} in {} files",
        file_seqs[0],
        last,
        set.len()
    );

    // A restart continues the numbers and the chain.
    assert!(d.stop().success());
    let last_before = *seqs(&set_lines(&log)).last().unwrap();
    let d = Daemon::start_with(&bed.host, &p, &args);
    flood(&bed, 300, 40101);
    let out2 = settle(&d);
    let s2 = seqs(&out2);
    assert_eq!(s2[0], last_before + 1, "the restart did not continue seq");
    assert_contiguous(&s2, "stdout after the restart");
    let last2 = *s2.last().unwrap();
    wait_until(
        WAIT,
        || seqs(&set_lines(&log)).last() == Some(&last2),
        || format!("the file never got seq {last2}"),
    );
    assert_contiguous(&seqs(&set_lines(&log)), "rotated files across the restart");
    drop(d);

    // verify passes on what was written, across rotations and the restart...
    let set = rotated_set(&log);
    let (code, msg) = verify(&set, &[]);
    assert_eq!(code, 0, "{msg}");
    eprintln!("{}", msg.trim());
    // ... also given in any order.
    let mut shuffled = set.clone();
    shuffled.reverse();
    assert_eq!(verify(&shuffled, &[]).0, 0);

    // ... and fails, naming the line, after one byte is changed, a line deleted, two
    // lines swapped (each on a fresh copy; line 10 of the middle file).
    let victim = set[set.len() / 2].clone();
    let name = victim.file_name().unwrap().to_owned();
    let original: Vec<String> = std::fs::read_to_string(&victim)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert!(original.len() > 12);
    let tamper = |what: &str, edit: &dyn Fn(&mut Vec<String>)| {
        let dir = TempDir::new();
        let mut copies = Vec::new();
        for f in &set {
            let to = dir.0.join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            copies.push(to);
        }
        let mut lines = original.clone();
        edit(&mut lines);
        std::fs::write(dir.0.join(&name), lines.join("\n") + "\n").unwrap();
        let (code, msg) = verify(&copies, &[]);
        let want = format!("{}:10:", dir.0.join(&name).display());
        assert_eq!(code, 1, "{what}: verify passed: {msg}");
        assert!(msg.contains(&want), "{what}: expected {want} in: {msg}");
        eprintln!("{what}: {}", msg.trim());
    };
    tamper("one byte changed", &|l| {
        // A digit of the source port: still valid JSON, another packet.
        let at = l[9].find("\"sport\":").unwrap() + 8;
        let mut b = l[9].clone().into_bytes();
        b[at] = if b[at] == b'9' { b'8' } else { b[at] + 1 };
        l[9] = String::from_utf8(b).unwrap();
    });
    tamper("line deleted", &|l| {
        l.remove(9);
    });
    tamper("lines swapped", &|l| l.swap(9, 10));
}

#[test]
fn lost_lines_are_counted_exactly_when_the_disk_fails() {
    need_root!();
    let bed = Bed::new();
    let tmp = TempDir::new();
    let disk = Tmpfs::new("64k");
    let log = disk.dir.join("audit/audit.jsonl");
    let p = policy(&bed, "", &file_sink(&log, 1 << 20, 1, ""));
    let d = Daemon::start_with(
        &bed.host,
        &p,
        &["--state-dir", tmp.0.join("state").to_str().unwrap()],
    );
    flood(&bed, 1500, 40200);
    let out = settle(&d);
    let offered = seqs(&out).len() as u64;
    // Every line offered to the file is in it or counted lost.
    let lost = std::cell::Cell::new(0);
    wait_until(
        WAIT,
        || {
            lost.set(
                status_json(&d)["audit"]["lost"]["file"]
                    .as_u64()
                    .unwrap_or(0),
            );
            seqs(&json_lines(&log)).len() as u64 + lost.get() == offered
        },
        || {
            format!(
                "file {} + lost {} != offered {offered}",
                seqs(&json_lines(&log)).len(),
                lost.get()
            )
        },
    );
    let lost = lost.get();
    assert!(lost > 0, "the full disk cost nothing?");
    let written = seqs(&json_lines(&log)).len();
    eprintln!("full disk: {offered} lines offered, {written} written, {lost} lost");
    assert_eq!(status_json(&d)["audit"]["lost"]["stdout"], 0);

    // Room again: the next line goes in after a notice of exactly what was lost.
    disk.resize("4m");
    udp_once(
        &bed.r,
        "10.2.0.2:40201",
        &format!("{HOST_R4}:7000"),
        b"after",
    );
    let mut d = d;
    let marker = d.wait_for(WAIT, |v| v["sport"] == 40201);
    let seq = marker["seq"].as_u64().unwrap();
    wait_until(
        WAIT,
        || seqs(&json_lines(&log)).contains(&seq),
        || format!("seq {seq} never reached the file"),
    );
    let lines = json_lines(&log);
    let notices: u64 = lines
        .iter()
        .filter(|v| v["event"] == "lost" && v["scope"] == "file")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(notices, lost, "lost notices in the file vs status");
    assert_eq!(status_json(&d)["audit"]["lost"]["file"], lost);
    let (_, human, _) = d.cli(&["status"]);
    let want = format!(
        "file       {}, rotated at 1048576 bytes, 1 kept; {lost} lines lost",
        log.display()
    );
    assert!(human.contains(&want), "{want} not in:\n{human}");
    assert_eq!(seqs(&lines).len() as u64 + notices, offered + 1);
    let (code, msg) = verify(std::slice::from_ref(&log), &[]);
    assert_eq!(code, 0, "{msg}");
    eprintln!("{}", msg.trim());
}

#[test]
fn per_sink_filters_and_reloads_that_change_or_remove_the_file_sink() {
    need_root!();
    let bed = Bed::new();
    let tmp = TempDir::new();
    let log = tmp.0.join("logs/audit.jsonl");
    let p1 = policy(
        &bed,
        "allowed = true",
        &file_sink(&log, 1 << 20, 2, "verdict = \"drop\"\nrule = \"udp-svc\""),
    );
    let mut d = Daemon::start(&bed.host, &p1);

    // Traffic of every kind: udp-svc drops (kept), tcp-svc drops, allowed datagrams.
    let traffic = |d: &mut Daemon, sport: u16| {
        let tcp_before = d.events().iter().filter(|v| v["rule"] == "tcp-svc").count();
        udp_once(
            &bed.r,
            &format!("10.2.0.2:{sport}"),
            &format!("{HOST_R4}:7000"),
            b"r",
        );
        udp_once(
            &bed.a,
            &format!("10.1.0.2:{sport}"),
            &format!("{HOST_A4}:7000"),
            b"a",
        );
        bed.tcp(&bed.r, None, HOST_R4, 7001, 200);
        for src in ["10.2.0.2", "10.1.0.2"] {
            d.wait_for(WAIT, |v| v["src"] == src && v["sport"] == sport);
        }
        wait_until(
            WAIT,
            || d.events().iter().filter(|v| v["rule"] == "tcp-svc").count() > tcp_before,
            || "no tcp-svc event".into(),
        );
    };
    // The lines of stdout after seq `from` that `keep` selects, and the file's after it.
    let check = |d: &Daemon, from: u64, keep: &dyn Fn(&Value) -> bool, what: &str| {
        let want: BTreeSet<u64> = d
            .events()
            .iter()
            .filter(|v| v["seq"].as_u64().unwrap() > from && keep(v))
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert!(!want.is_empty(), "{what}: nothing to keep");
        let got = || -> BTreeSet<u64> {
            seqs(&json_lines(&log))
                .into_iter()
                .filter(|s| *s > from)
                .collect()
        };
        wait_until(
            WAIT,
            || got() == want,
            || format!("{what}: file has {:?}, want {want:?}", got()),
        );
    };

    traffic(&mut d, 40300);
    check(
        &d,
        0,
        &|v| v["event"] == "packet" && v["verdict"] == "drop" && v["rule"] == "udp-svc",
        "verdict and rule",
    );
    for v in json_lines(&log) {
        assert_eq!(
            (v["verdict"].as_str(), v["rule"].as_str()),
            (Some("drop"), Some("udp-svc")),
            "{v}"
        );
    }
    let lines_before = json_lines(&log).len();
    assert!(lines_before >= 1);

    // Reload: the same file, another filter (by source).
    d.reload(&policy(
        &bed,
        "allowed = true",
        &file_sink(&log, 1 << 20, 2, "src = \"10.1.0.0/24\""),
    ));
    let applied = d.wait_for(WAIT, |v| v["event"] == "policy" && v["policy"] == 2);
    let from = applied["seq"].as_u64().unwrap();
    traffic(&mut d, 40301);
    check(
        &d,
        from,
        &|v| v["event"] == "packet" && v["src"] == "10.1.0.2",
        "src",
    );
    let st = status_json(&d);
    assert_eq!(
        st["audit"]["file"]["path"],
        log.display().to_string(),
        "{st:#}"
    );

    // A filtered file verifies with --filtered, and shows its gaps without.
    let (code, msg) = verify(std::slice::from_ref(&log), &["--filtered"]);
    assert_eq!(code, 0, "{msg}");
    let (code, msg) = verify(std::slice::from_ref(&log), &[]);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("seq gap"), "{msg}");

    // Reload without the sink: nothing more is written.
    d.reload(&policy(&bed, "allowed = true", ""));
    d.wait_for(WAIT, |v| v["event"] == "policy" && v["policy"] == 3);
    let frozen = std::fs::read(&log).unwrap();
    traffic(&mut d, 40302);
    assert_eq!(status_json(&d)["audit"]["file"], Value::Null);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read(&log).unwrap(),
        frozen,
        "a removed sink still writes"
    );
}

/// rsyslog's `%msg%` lines, as JSON (each from its first `{`).
fn collected(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("rsyslog wrote {l:?}: {e}")))
        .collect()
}

/// Asserts each seq of `want` is in `got` exactly once, and nothing else is.
fn exactly_once(got: &[u64], want: &[u64], what: &str) {
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for s in got {
        *count.entry(*s).or_default() += 1;
    }
    let dup: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dup.is_empty(),
        "{what}: seq received more than once: {dup:?}"
    );
    let want: BTreeSet<u64> = want.iter().copied().collect();
    let got: BTreeSet<u64> = count.keys().copied().collect();
    assert_eq!(
        got.symmetric_difference(&want).collect::<Vec<_>>(),
        Vec::<&u64>::new(),
        "{what}: missing or extra seq"
    );
}

#[test]
fn rsyslog_imfile_tails_the_rotated_file_and_gets_every_seq_once() {
    need_root!();
    let bed = Bed::new();
    let tmp = TempDir::new();
    let log = tmp.0.join("logs/audit.jsonl");
    let out_path = tmp.0.join("collected.log");
    let d = Daemon::start(
        &bed.host,
        &policy(&bed, "", &file_sink(&log, 65_536, 20, "")),
    );
    // The daemon made the directory: imfile watches it from the start.
    let rs = Rsyslog::start(
        None,
        &format!(
            r#"module(load="imfile" mode="inotify")
template(name="raw" type="string" string="%msg%\n")
ruleset(name="audit") {{ action(type="omfile" file="{out}" template="raw") }}
input(type="imfile" file="{log}" tag="enforcer" ruleset="audit")
"#,
            out = tmp.0.join("collected.log").display(),
            log = log.display()
        ),
    );
    // imfile finishes a renamed file before it follows the next rename: a rotation every
    // few hundred milliseconds (about 160 lines a file, 50 lines each 100 ms).
    flood_paced(&bed, 1500, 40400, 50, Duration::from_millis(100));
    let all = seqs(&settle(&d));
    let last = *all.last().unwrap();
    // imfile may finish a renamed file after it started on the new one: wait for all.
    let have_all = || {
        let got: BTreeSet<u64> = seqs(&collected(&out_path)).into_iter().collect();
        all.iter().all(|s| got.contains(s))
    };
    if std::panic::catch_unwind(|| {
        wait_until(WAIT, have_all, || format!("rsyslog never got seq {last}"))
    })
    .is_err()
    {
        eprintln!("rsyslog stderr: {}", rs.stderr());
    }
    let set = rotated_set(&log);
    assert!(
        set.len() > 5,
        "the flood should have rotated the file: {set:?}"
    );
    let got = collected(&out_path);
    exactly_once(&seqs(&got), &all, "imfile");
    assert_eq!(status_json(&d)["audit"]["lost"]["file"], 0);
    // What the collector holds still carries its chain.
    let (code, msg) = verify(std::slice::from_ref(&out_path), &[]);
    eprintln!(
        "audit verify on rsyslog's copy: exit {code}: {}",
        msg.trim()
    );
    let text = std::fs::read_to_string(&out_path).unwrap();
    eprintln!(
        "rsyslog imfile: {} lines across {} rotated files; excerpt:\n{}",
        got.len(),
        set.len(),
        text.lines().take(2).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn rsyslog_receives_the_syslog_sink_over_udp_and_tcp_every_seq_once() {
    need_root!();
    let bed = Bed::new();
    let tmp = TempDir::new();
    let (udp_out, tcp_out) = (tmp.0.join("udp.log"), tmp.0.join("tcp.log"));
    // rsyslog in the daemon's namespace, on its loopback. The sink sends a batch of lines
    // at once: with the default socket buffer (about 200 KiB), rsyslog's UDP socket
    // overflowed whenever the parallel tests kept it off the CPU, and UDP drops silently.
    let rs = Rsyslog::start(
        Some(&bed.host),
        &format!(
            r#"module(load="imudp")
module(load="imtcp")
template(name="raw" type="string" string="%pri% %app-name% %procid% %msgid% %msg%\n")
ruleset(name="udp") {{ action(type="omfile" file="{u}" template="raw") }}
ruleset(name="tcp") {{ action(type="omfile" file="{t}" template="raw") }}
input(type="imudp" address="127.0.0.1" port="5514" ruleset="udp" rcvbufSize="16m")
input(type="imtcp" address="127.0.0.1" port="5601" ruleset="tcp")
"#,
            u = udp_out.display(),
            t = tcp_out.display()
        ),
    );
    wait_until(
        WAIT,
        || {
            bed.host
                .run(|| TcpStream::connect("127.0.0.1:5601").is_ok())
        },
        || format!("rsyslog is not listening: {}", rs.stderr()),
    );
    let syslog =
        |target: &str| format!("[audit.syslog]\ntarget = \"{target}\"\nfacility = \"local3\"\n");
    let mut d = Daemon::start(
        &bed.host,
        &policy(&bed, "", &syslog("udp://127.0.0.1:5514")),
    );
    flood(&bed, 600, 40500);
    let all = seqs(&settle(&d));
    let last = *all.last().unwrap();
    wait_until(
        WAIT,
        || seqs(&collected(&udp_out)).contains(&last),
        || format!("rsyslog (udp) never got seq {last}: {}", rs.stderr()),
    );
    exactly_once(&seqs(&collected(&udp_out)), &all, "udp");

    // Reload onto TCP (octet-counted framing).
    d.reload(&policy(&bed, "", &syslog("tcp://127.0.0.1:5601")));
    d.wait_for(WAIT, |v| v["event"] == "policy" && v["policy"] == 2);
    flood(&bed, 600, 40501);
    let all = seqs(&settle(&d));
    let last = *all.last().unwrap();
    wait_until(
        WAIT,
        || seqs(&collected(&tcp_out)).contains(&last),
        || format!("rsyslog (tcp) never got seq {last}: {}", rs.stderr()),
    );
    let mut both = seqs(&collected(&udp_out));
    both.extend(seqs(&collected(&tcp_out)));
    exactly_once(&both, &all, "udp then tcp");
    assert!(seqs(&collected(&tcp_out)).len() >= 600);
    assert_eq!(status_json(&d)["audit"]["lost"]["syslog"], 0);

    // The header rsyslog parsed: local3.warning (PRI 156) for a drop, APP-NAME, PROCID,
    // MSGID the event kind.
    let text = std::fs::read_to_string(&tcp_out).unwrap();
    let drop_line = text
        .lines()
        .find(|l| l.contains("\"verdict\":\"drop\""))
        .expect("a drop over tcp");
    assert!(
        drop_line.starts_with(&format!("156 enforcer {} packet {{", d.pid())),
        "{drop_line}"
    );
    eprintln!(
        "rsyslog udp+tcp: {} lines; excerpt (tcp):\n{}",
        both.len(),
        text.lines().take(2).collect::<Vec<_>>().join("\n")
    );
}

/// The JSON of syslog messages (each from its first `{`).
fn messages_json(msgs: &[String]) -> Vec<Value> {
    msgs.iter()
        .map(|m| {
            let at = m.find('{').unwrap_or_else(|| panic!("no JSON in {m:?}"));
            serde_json::from_str(&m[at..]).unwrap_or_else(|e| panic!("{m:?}: {e}"))
        })
        .collect()
}

#[test]
fn syslog_sink_reconnects_to_a_unix_target_that_comes_back_and_counts_what_it_lost() {
    need_root!();
    let bed = Bed::new();
    let tmp = TempDir::new();
    let sock = tmp.0.join("log.sock");
    let first = DgramCollector::bind(&sock);
    let sink = format!(
        "[audit.syslog]\ntarget = \"unix:{}\"\nfacility = \"local0\"\n",
        sock.display()
    );
    let mut d = Daemon::start(&bed.host, &policy(&bed, "", &sink));
    flood(&bed, 200, 40600);
    let all = seqs(&settle(&d));
    wait_until(
        WAIT,
        || seqs(&messages_json(&first.messages())).len() == all.len(),
        || "the unix target did not get every line".into(),
    );
    let got_first = messages_json(&first.messages());
    assert!(
        first.messages()[0].starts_with("<133>1 "),
        "{}",
        first.messages()[0]
    );

    // The target goes away: every line meanwhile is counted lost.
    drop(first);
    flood(&bed, 100, 40601);
    let all = seqs(&settle(&d));
    let missing = (all.len() - got_first.len()) as u64;
    wait_until(
        WAIT,
        || status_json(&d)["audit"]["lost"]["syslog"] == missing,
        || {
            format!(
                "lost.syslog never reached {missing}: {:#}",
                status_json(&d)["audit"]
            )
        },
    );

    // It comes back: after the backoff the sink reconnects, and its first message says
    // exactly how many lines it lost.
    let second = DgramCollector::bind(&sock);
    let mut sport = 40602;
    wait_until(
        WAIT,
        || {
            udp_once(
                &bed.r,
                &format!("10.2.0.2:{sport}"),
                &format!("{HOST_R4}:7000"),
                b"x",
            );
            sport += 1;
            std::thread::sleep(Duration::from_millis(200));
            !second.messages().is_empty()
        },
        || "the sink never reconnected".into(),
    );
    let marker = d.wait_for(WAIT, |v| v["sport"] == sport - 1);
    let last = marker["seq"].as_u64().unwrap();
    wait_until(
        WAIT,
        || seqs(&messages_json(&second.messages())).contains(&last),
        || format!("seq {last} never arrived: {:?}", second.messages()),
    );
    let got_second = messages_json(&second.messages());
    let notice = &got_second[0];
    assert_eq!(
        (notice["event"].as_str(), notice["scope"].as_str()),
        (Some("lost"), Some("syslog")),
        "{notice}"
    );
    assert!(
        second.messages()[0].contains(" enforcer ") && second.messages()[0].contains(" lost - {"),
        "MSGID lost: {}",
        second.messages()[0]
    );
    let lost = status_json(&d)["audit"]["lost"]["syslog"].as_u64().unwrap();
    assert_eq!(notice["count"].as_u64(), Some(lost));
    let mut received = seqs(&got_first);
    received.extend(seqs(&got_second));
    let all = seqs(&d.events());
    let all_upto: Vec<u64> = all.into_iter().filter(|s| *s <= last).collect();
    assert_eq!(
        received.len() as u64 + lost,
        all_upto.len() as u64,
        "received + lost != offered"
    );
    let set: BTreeSet<u64> = received.iter().copied().collect();
    assert_eq!(set.len(), received.len(), "a line arrived twice");
    eprintln!(
        "unix syslog: {} received, {lost} lost while the target was away, then reconnected",
        received.len()
    );
}

#[test]
fn after_a_crash_seq_skips_ahead_never_repeats_and_verify_shows_the_gap() {
    need_root!();
    let bed = Bed::new();
    let tmp = TempDir::new();
    let state = tmp.0.join("state");
    let log = tmp.0.join("logs/audit.jsonl");
    let p = policy(&bed, "", &file_sink(&log, 1 << 20, 2, ""));
    let args = ["--state-dir", state.to_str().unwrap()];
    let d = Daemon::start_with(&bed.host, &p, &args);
    flood(&bed, 50, 40700);
    let last = *seqs(&settle(&d)).last().unwrap();
    wait_until(
        WAIT,
        || seqs(&json_lines(&log)).last() == Some(&last),
        || format!("the file never got seq {last}"),
    );
    // SIGKILL: no clean stop, the programs stay pinned and the next daemon adopts them.
    let pins = d.kill9();
    let d = Daemon::start_pinned(&bed.host, &p, &args, pins);
    let first = seqs(&d.events())[0];
    assert!(
        first > last + 1,
        "after a crash seq went on at {first} (last {last})"
    );
    wait_until(
        WAIT,
        || seqs(&json_lines(&log)).contains(&first),
        || format!("the file never got seq {first}"),
    );
    let lines = json_lines(&log);
    let n = lines.iter().position(|v| v["seq"] == first).unwrap() + 1;
    let (code, msg) = verify(std::slice::from_ref(&log), &[]);
    assert_eq!(code, 1, "{msg}");
    let want = format!(
        "{}:{n}: seq gap: {} line(s) between seq {last} and {first}",
        log.display(),
        first - last - 1
    );
    assert!(msg.contains(&want), "{want} not in {msg}");
    eprintln!("{}", msg.trim());
}

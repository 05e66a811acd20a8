//! The control plane keeps its promises (issue 12), against the real daemon and kernel:
//! one owner per pin directory, whatever namespace a second daemon starts from; `unload`
//! under a live owner; a reload at the documented capacity; a corrupt grants store; slow
//! metrics clients.

use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_common::maps::{ActiveSlot, AllowKey, AllowValue, HostInfo};
use serde_json::Value;
use testbed::{
    bed::{Bed, A4, A6, HOST_A4, HOST_R4, R4},
    daemon::{run_command, Daemon, TempDir},
    need_root,
    net::NetNs,
};

const PORT: u16 = 7100;

fn rule(allow_from: &[&str]) -> String {
    let from: Vec<String> = allow_from.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [{PORT}]\nallow_from = [{}]\n",
        from.join(", ")
    )
}

/// A's TCP connect to the host: allowed by every policy here.
fn a_connects(bed: &Bed) -> String {
    bed.tcp(&bed.a, None, HOST_A4, PORT, 1000)
}

/// R's TCP connect to the host: refused by every policy here.
fn r_connects(bed: &Bed) -> String {
    bed.tcp(&bed.r, None, HOST_R4, PORT, 500)
}

fn assert_enforcing(bed: &Bed, when: &str) {
    assert_eq!(a_connects(bed), "connected", "allowed source, {when}");
    assert_eq!(r_connects(bed), "timeout", "refused source, {when}");
    // A local sender outside the allowed cgroups: judged by the cgroup programs alone.
    assert_eq!(
        bed.tcp(&bed.host, Some(&bed.refused), "127.0.0.1", PORT, 500),
        "eperm",
        "refused cgroup, {when}"
    );
}

fn pins_events(d: &Daemon, action: &str) -> usize {
    d.events()
        .iter()
        .filter(|v| v["event"] == "pins" && v["action"] == action)
        .count()
}

fn linked(pins: &Path, prefix: &str) -> usize {
    std::fs::read_dir(pins.join("links"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

/// The HOST facts pinned under `pins` (the namespace the programs treat as the host's).
fn pinned_host(pins: &Path) -> HostInfo {
    let data = aya::maps::MapData::from_pin(pins.join("maps/HOST")).expect("pinned HOST");
    let host: aya::maps::Array<_, HostInfo> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("HOST is an array");
    host.get(&0, 0).expect("HOST[0]")
}

/// `enforcer run` on `pins` from `ns`, expected to be refused: its exit status and stderr
/// (it is killed, and the test fails, if it is still running after 30 s).
fn run_refused(ns: &NetNs, pins: &Path, policy: &str) -> (bool, String) {
    let dir = TempDir::new();
    let policy_path = dir.0.join("policy.toml");
    std::fs::write(&policy_path, policy).expect("write policy");
    let mut cmd = run_command(
        ns,
        &policy_path,
        &dir.0.join("control.sock"),
        pins,
        Some(&dir.0.join("state")),
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn enforcer");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second daemon on {} was not refused", pins.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    (status.success(), err)
}

fn unload(pins: &Path, force: bool) -> (bool, String, String) {
    let mut cmd = Command::new(testbed::enforcer_bin());
    cmd.arg("unload").arg("--pin-dir").arg(pins);
    if force {
        cmd.arg("--force");
    }
    let out = cmd.output().expect("run enforcer unload");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pin_dir(d: &Daemon) -> PathBuf {
    d.pins.as_ref().expect("pins").0.clone()
}

#[test]
fn a_second_daemon_from_another_namespace_is_refused_and_changes_nothing() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("tcp-listen", PORT);
    let policy = bed.policy("", &rule(&[&format!("{A4}/32"), &format!("{A6}/128")]));
    let d = Daemon::start(&bed.host, &policy);
    let pins = pin_dir(&d);
    assert_enforcing(&bed, "under the first daemon");
    let host = pinned_host(&pins);
    assert_ne!(host.netns_cookie, 0);
    let elsewhere = NetNs::new();

    // From another namespace (and from the same one), while the owner lives: refused,
    // naming the owner, and nothing changes.
    for ns in [&elsewhere, &bed.host] {
        let (ok, err) = run_refused(ns, &pins, &policy);
        assert!(!ok, "a second daemon started: {err}");
        assert!(
            err.contains("owned by a running enforcer")
                && err.contains(&format!("pid {}", d.pid()))
                && err.contains("started ")
                && err.contains("network namespace net:["),
            "the refusal names the owner: {err}"
        );
        assert_eq!(
            pinned_host(&pins),
            host,
            "HOST rewritten by a refused daemon"
        );
        assert_enforcing(&bed, "after a refused second daemon");
    }
    let status = d.status();
    assert!(
        status["pins"]["owner"]
            .as_str()
            .is_some_and(|o| o.contains(&format!("pid {}", d.pid()))),
        "{status}"
    );

    // The owner dies (SIGKILL): the pinned programs go on enforcing, and a daemon from
    // another namespace still cannot make its namespace the host's.
    let pins_guard = d.kill9();
    let (ok, err) = run_refused(&elsewhere, &pins, &policy);
    assert!(
        !ok,
        "a daemon from another namespace adopted the pins: {err}"
    );
    assert!(
        err.contains("treat network namespace cookie") && err.contains("enforcer unload --pin-dir"),
        "the refusal says how to proceed: {err}"
    );
    assert_eq!(
        pinned_host(&pins),
        host,
        "HOST rewritten by a refused daemon"
    );
    assert_enforcing(&bed, "after the owner died and another namespace tried");

    // A daemon in the host's namespace adopts as before.
    let d = Daemon::start_pinned(&bed.host, &policy, &[], pins_guard);
    assert!(d.stderr().contains("adopted"), "{}", d.stderr());
    assert_eq!(pinned_host(&pins), host);
    assert_enforcing(&bed, "under the adopting daemon");
}

#[test]
fn unload_is_refused_under_a_live_owner_and_a_forced_one_is_restored() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("tcp-listen", PORT);
    let policy = bed.policy("", &rule(&[&format!("{A4}/32")]));
    let mut d = Daemon::start(&bed.host, &policy);
    let pins = pin_dir(&d);
    assert_enforcing(&bed, "at start");

    let (ok, _, err) = unload(&pins, false);
    assert!(!ok, "unload under a live daemon succeeded");
    assert!(
        err.contains(&format!("pid {}", d.pid())) && err.contains("--force"),
        "{err}"
    );
    assert!(pins.join("maps/HOST").exists() && pins.join("links").read_dir().unwrap().count() > 0);
    assert_enforcing(&bed, "after a refused unload");

    let (ok, out, err) = unload(&pins, true);
    assert!(ok, "unload --force: {err}");
    assert!(out.contains("removed"), "{out}");
    assert!(
        err.contains("restores"),
        "unload --force says what happens next: {err}"
    );

    // The owner notices on its next tick, says so, and puts everything back.
    let lost = d.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "pins" && v["action"] == "lost"
    });
    assert!(
        lost["lost"].as_array().is_some_and(|l| !l.is_empty()),
        "{lost}"
    );
    d.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "pins" && v["action"] == "restored"
    });
    assert!(
        d.stderr()
            .contains("pinned state removed under this daemon"),
        "{}",
        d.stderr()
    );
    let status = d.status();
    assert!(
        status["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("removed under this daemon")))),
        "{status}"
    );
    assert!(status["pins"]["restored"].is_string(), "{status}");
    assert!(pins.join("maps/HOST").exists(), "maps pinned again");
    assert_eq!(linked(&pins, "cgroup@"), 6, "cgroup links pinned again");
    assert_eq!(linked(&pins, "xdp@"), 2, "XDP links pinned again");
    // Restored for good: no further loss on the next ticks.
    assert!(
        d.poll_for(Duration::from_millis(1500), |v| v["event"] == "pins"
            && v["action"] == "lost"
            && v["ts"] != lost["ts"])
            .is_none(),
        "pins lost again after the restore: {}",
        d.stderr()
    );
    assert_enforcing(&bed, "after the owner restored its pins");
    // Owned again: a plain unload is still refused.
    let (ok, _, err) = unload(&pins, false);
    assert!(!ok && err.contains(&format!("pid {}", d.pid())), "{err}");

    // Links removed by hand (one cgroup program's, one interface's) are noticed and
    // restored too.
    let restored_before = pins_events(&d, "restored");
    for prefix in ["cgroup@", "xdp@"] {
        let link = std::fs::read_dir(pins.join("links"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .expect("a link")
            .path();
        std::fs::remove_file(&link).expect("rm link");
    }
    let start = Instant::now();
    while pins_events(&d, "restored") == restored_before {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The XDP link comes back on the same tick's interface pass.
    let start = Instant::now();
    while linked(&pins, "xdp@") < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(linked(&pins, "cgroup@"), 6);
    assert_enforcing(&bed, "after links were removed by hand");
    assert!(d.status()["programs"]["xdp"]["attached"]
        .as_array()
        .is_some_and(|a| a.len() == 2));
}

/// Allow-list sources of policy `k`: A's address, then 131,071 /32s of which the first
/// 30% are shared by every `k` and the rest are `k`'s own.
fn capacity_sources(k: u32) -> Vec<String> {
    const TOTAL: u32 = 131_072;
    let shared = TOTAL * 3 / 10;
    let addr = |i: u32| format!("11.{}.{}.{}/32", i >> 16, (i >> 8) & 0xff, i & 0xff);
    let mut v = vec![format!("{A4}/32")];
    v.extend((1..shared).map(addr));
    v.extend((shared..TOTAL).map(|i| addr(1_000_000 * (k + 1) + i)));
    v
}

/// The active slot's allow entries in the pinned ALLOW map, as IPv4 /32 addresses.
fn active_allow(pins: &Path) -> (HashSet<[u8; 4]>, usize) {
    let data = aya::maps::MapData::from_pin(pins.join("maps/ACTIVE")).expect("ACTIVE");
    let active: aya::maps::Array<_, ActiveSlot> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("ACTIVE array");
    let slot = active.get(&0, 0).expect("ACTIVE[0]").slot & 1;
    let data = aya::maps::MapData::from_pin(pins.join("maps/ALLOW")).expect("ALLOW");
    let allow: aya::maps::HashMap<_, AllowKey, AllowValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("ALLOW hash");
    let mut mine = HashSet::new();
    let mut total = 0;
    for k in allow.keys() {
        let k = k.expect("key");
        total += 1;
        if (k.group >> 16) & 1 == slot {
            assert_eq!(k.family_len & 0xff, 32, "{k:?}");
            assert!(
                mine.insert([k.addr[0], k.addr[1], k.addr[2], k.addr[3]]),
                "{k:?} twice"
            );
        }
    }
    (mine, total)
}

#[test]
fn a_reload_at_capacity_changing_most_entries_succeeds_and_the_map_holds_exactly_it() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("tcp-listen", PORT);
    let policy = |k: u32| {
        let s = capacity_sources(k);
        let refs: Vec<&str> = s.iter().map(String::as_str).collect();
        bed.policy("", &rule(&refs))
    };
    let mut d = Daemon::start(&bed.host, &policy(0));
    let pins = pin_dir(&d);
    // Two reloads, each changing 70% of the entries: the second writes into a slot full of
    // the first policy while the other slot is full too.
    for (k, generation) in [(1u32, 2u64), (2, 3)] {
        d.reload(&policy(k));
        let v = d.wait_for(Duration::from_secs(120), |v| {
            v["event"] == "policy"
                && (v["action"] == "refused"
                    || (v["action"] == "applied" && v["policy"] == generation))
        });
        assert_eq!(v["action"], "applied", "reload {k} at capacity: {v}");
        assert_eq!(d.generation(), generation);
    }
    let want: HashSet<[u8; 4]> = capacity_sources(2)
        .iter()
        .map(|s| {
            let ip: std::net::Ipv4Addr = s.trim_end_matches("/32").parse().unwrap();
            ip.octets()
        })
        .collect();
    assert_eq!(want.len(), 131_072);
    let (active, total) = active_allow(&pins);
    assert_eq!(active.len(), 131_072, "entries of the active slot");
    assert!(
        active == want,
        "the active slot holds exactly the new policy"
    );
    assert_eq!(
        total,
        2 * 131_072,
        "both slots full (the idle one holds policy 1)"
    );
    assert_enforcing(&bed, "after the reloads at capacity");
}

#[test]
fn a_corrupt_grants_store_is_set_aside_and_the_refused_source_stays_refused() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("tcp-listen", PORT);
    let policy = bed.policy("", &rule(&[&format!("{A4}/32")]));
    let dir = TempDir::new();
    let state = dir.0.join("state");
    let state_arg = state.display().to_string();
    let args = ["--state-dir", state_arg.as_str()];
    let store = state.join("grants.json");

    // A grant lets R in, and is stored privately.
    let d = Daemon::start_with(&bed.host, &policy, &args);
    let (ok, _, err) = d.cli(&[
        "grant",
        "--rule",
        "pg",
        "--from",
        &format!("{R4}/32"),
        "--for",
        "1h",
        "--reason",
        "test",
    ]);
    assert!(ok, "grant: {err}");
    assert_eq!(r_connects(&bed), "connected", "R under its grant");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "state directory mode");
    assert_eq!(mode(&store), 0o600, "grants store mode");
    let good = std::fs::read(&store).expect("grants stored");
    drop(d);

    for (case, bytes) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"\x00\x01 not json {[".to_vec()),
    ] {
        for e in std::fs::read_dir(&state).unwrap().flatten() {
            if e.file_name().to_string_lossy().contains("corrupt") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        std::fs::write(&store, &bytes).unwrap();
        let d = Daemon::start_with(&bed.host, &policy, &args);
        assert!(
            d.stderr().contains("is corrupt") && d.stderr().contains("set aside"),
            "{case}: {}",
            d.stderr()
        );
        let aside: Vec<PathBuf> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains("grants.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{case}: set aside");
        assert_eq!(
            std::fs::read(&aside[0]).unwrap(),
            bytes,
            "{case}: kept as it was"
        );
        let (ok, out, err) = d.cli(&["grants", "--json"]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).expect("grants json");
        assert_eq!(v, serde_json::json!([]), "{case}: no grants");
        assert_enforcing(&bed, &format!("after a {case} grants store"));
        drop(d);
    }
}

/// One control-socket request's round trip.
fn status_latency(socket: &Path) -> Duration {
    let start = Instant::now();
    let mut s = UnixStream::connect(socket).expect("control socket");
    s.write_all(b"{\"version\":1,\"command\":\"status\"}\n")
        .expect("send");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("answer");
    let took = start.elapsed();
    let v: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["ok"], true, "{v}");
    took
}

fn http_get(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn slow_metrics_clients_do_not_stall_status_and_a_fresh_client_is_served() {
    need_root!();
    let bed = Bed::new();
    let policy = bed.policy("", &rule(&[&format!("{A4}/32")]));
    let d = Daemon::start_with(&bed.host, &policy, &["--metrics", "127.0.0.1:9477"]);

    // 100 clients that send nothing, 100 that ask and never read.
    let clients: Vec<TcpStream> = bed.host.run(|| {
        (0..200)
            .map(|i| {
                let mut s = TcpStream::connect("127.0.0.1:9477").expect("connect");
                if i % 2 == 1 {
                    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
                }
                s
            })
            .collect()
    });
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        worst = worst.max(status_latency(&d.socket));
    }
    eprintln!("status latency with 200 slow metrics clients: worst of 20 {worst:?}");
    assert!(worst < Duration::from_millis(100), "status took {worst:?}");

    // A fresh scraper is served while they hang.
    let fresh = bed.host.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:9477").expect("connect");
        http_get(&mut s)
    });
    assert!(
        fresh.starts_with("HTTP/1.1 200") && fresh.contains("enforcer_policy_generation 1"),
        "{fresh}"
    );
    // Idle clients are closed (made room for others, or timed out).
    let mut idle = clients.into_iter().step_by(2);
    let mut s = idle.next().expect("an idle client");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "an idle client got an answer instead of being closed");
    drop(d);
}

/// The host's addresses as the pinned maps hold them: in `LOCAL_ADDRS`, and whether
/// `HOST_ADDRS` names `a` itself in its slot.
fn pinned_host_addr(pins: &Path, a: std::net::IpAddr) -> (bool, bool) {
    use enforcer::kernel::host::{addr_key, slot_index};
    use enforcer_common::maps::{HostAddrSlot, LocalAddrKey, HOST_ADDR_V4, HOST_ADDR_V6};
    let data = aya::maps::MapData::from_pin(pins.join("maps/LOCAL_ADDRS")).expect("pinned");
    let local: aya::maps::HashMap<_, LocalAddrKey, u32> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash");
    let data = aya::maps::MapData::from_pin(pins.join("maps/HOST_ADDRS")).expect("pinned");
    let table: aya::maps::Array<_, HostAddrSlot> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("an array");
    let key = addr_key(a);
    let slot = table.get(&slot_index(a), 0).expect("slot");
    let exact = if a.is_ipv4() {
        HOST_ADDR_V4
    } else {
        HOST_ADDR_V6
    };
    (
        local.get(&key, 0).is_ok(),
        slot.state == exact && slot.addr == key.addr,
    )
}

/// A restarted daemon starts from the addresses its predecessor left pinned: one removed
/// while no daemon ran is taken out, so the programs stop treating it as the host's (a
/// source claiming it would stay refused by prefix, a destination judged, for good).
#[test]
fn an_address_removed_while_no_daemon_ran_is_taken_out_of_the_maps() {
    need_root!();
    let bed = Bed::new();
    let _l = bed.listen("tcp-listen", PORT);
    let extra: std::net::IpAddr = "10.77.7.7".parse().unwrap();
    bed.host.ip(&["addr", "add", "10.77.7.7/32", "dev", "lo"]);
    let policy = bed.policy("", &rule(&[&format!("{A4}/32")]));
    let mut d = Daemon::start_with(&bed.host, &policy, &["--on-stop", "keep"]);
    let pins = d.pins.take().expect("pins");
    let dir = pins.0.clone();
    assert_eq!(
        pinned_host_addr(&dir, extra),
        (true, true),
        "while it is the host's"
    );
    assert!(d.stop().success());
    bed.host.ip(&["addr", "del", "10.77.7.7/32", "dev", "lo"]);
    let d2 = Daemon::start_pinned(&bed.host, &policy, &[], pins);
    assert_eq!(
        pinned_host_addr(&dir, extra),
        (false, false),
        "after a restart, an address removed meanwhile"
    );
    assert_enforcing(&bed, "after the restart");
    drop(d2);
}

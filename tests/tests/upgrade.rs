//! Upgrading a running daemon's programs in place: a daemon stopped with `--on-stop keep`
//! leaves its links pinned and enforcing; the next daemon switches each pinned link to its
//! own freshly loaded program with BPF_LINK_UPDATE. Proven here on the kernel's own ids
//! (each link keeps its id, its program id changes) and on traffic (a steady refused flow
//! is dropped and counted packet for packet, none reaches the listener; a steady allowed
//! flow loses nothing).
//!
//! Topology: `testbed::bed`. Run with
//! `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test upgrade`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use testbed::{
    bed::{Bed, A4, A6, HOST_A4, HOST_A6, HOST_R4, HOST_R6, R4, R6},
    daemon::Daemon,
    flood::{rule_status, status_json, udp_once},
    kernel::pinned_link_ids,
    need_root,
    traffic::{count_from, Flow},
    ABSENCE,
};

const PORT: u16 = 7000;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("address"), port)
}

/// Pinned link name -> (link id, program id).
fn link_ids(pins: &Path) -> BTreeMap<String, (u32, u32)> {
    std::fs::read_dir(pins.join("links"))
        .expect("pinned links")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                pinned_link_ids(&e.path()),
            )
        })
        .collect()
}

fn dropped(d: &Daemon) -> u64 {
    rule_status(&status_json(d), "svc")["dropped"]
        .as_u64()
        .expect("dropped")
}

/// Waits (generously) until `f` holds; panics with `what` otherwise.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restart_switches_every_pinned_link_in_place_without_a_gap() {
    need_root!();
    let bed = Bed::new();
    let l = bed.listen("udp-listen", PORT);
    let policy = bed.policy(
        "mode = \"enforce\"",
        &format!("[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\", \"fd01::/64\"]\n"),
    );
    let mut d = Daemon::start_with(&bed.host, &policy, &["--on-stop", "keep"]);
    let pin_dir = d.pins.as_ref().expect("pins").0.clone();
    let before = link_ids(&pin_dir);
    // Two XDP links (one per veth) and the six cgroup programs' links.
    assert_eq!(before.len(), 8, "{before:?}");
    assert_eq!(dropped(&d), 0);

    let every = Duration::from_millis(2);
    let (max, max_time) = (60_000, Duration::from_secs(120));
    let flows = [
        (
            A4,
            Flow::start(&bed.a, sa(HOST_A4, PORT), every, max, max_time),
        ),
        (
            A6,
            Flow::start(&bed.a, sa(HOST_A6, PORT), every, max, max_time),
        ),
        (
            R4,
            Flow::start(&bed.r, sa(HOST_R4, PORT), every, max, max_time),
        ),
        (
            R6,
            Flow::start(&bed.r, sa(HOST_R6, PORT), every, max, max_time),
        ),
    ];
    wait_until("the refused flows to be dropped", || dropped(&d) >= 50);
    wait_until("the allowed flows to arrive", || {
        count_from(&l.lines(), A4) >= 50 && count_from(&l.lines(), A6) >= 50
    });

    // The old daemon stops and leaves its programs attached (the upgrade's first half).
    let pins = d.pins.take().expect("pins");
    let status = d.stop();
    assert!(status.success(), "{status}");
    assert_eq!(
        link_ids(&pin_dir),
        before,
        "the links changed when the daemon stopped with --on-stop keep"
    );
    let arrived = count_from(&l.lines(), A4);
    wait_until("allowed traffic while no daemon runs", || {
        count_from(&l.lines(), A4) >= arrived + 50
    });

    // The new daemon adopts: every link switched in place.
    let d2 = Daemon::adopt(&bed.host, &policy, &[], pins);
    let after = link_ids(&pin_dir);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "pinned links differ after the upgrade"
    );
    for (name, (link, prog)) in &before {
        let (link2, prog2) = after[name];
        assert_eq!(
            link2, *link,
            "{name}: the link was replaced ({link} -> {link2}), not updated in place"
        );
        assert_ne!(
            prog2, *prog,
            "{name}: still runs the old program {prog} after the upgrade"
        );
    }
    let stderr = d2.stderr();
    assert!(!stderr.contains("could not be switched"), "{stderr}");
    let warnings = status_json(&d2)["warnings"].clone();
    assert_eq!(
        warnings,
        serde_json::json!([]),
        "status warnings: {warnings}"
    );
    let arrived = count_from(&l.lines(), A4);
    wait_until("allowed traffic after the upgrade", || {
        count_from(&l.lines(), A4) >= arrived + 50
    });

    let mut refused_sent = 0;
    for (ip, f) in flows {
        let allowed = ip == A4 || ip == A6;
        let r = f.finish(if allowed {
            Duration::from_secs(10)
        } else {
            ABSENCE
        });
        assert_eq!(r.send_errors, 0, "{ip}: send errors");
        assert!(r.sent > 200, "{ip}: only {} datagrams sent", r.sent);
        if allowed {
            let missing = r.missing();
            assert!(
                missing.is_empty(),
                "{ip}: {} of {} allowed datagrams lost across the upgrade, first {:?}",
                missing.len(),
                r.sent,
                &missing[..missing.len().min(20)]
            );
        } else {
            assert!(r.echoed.is_empty(), "{ip}: refused datagrams answered");
            refused_sent += r.sent;
        }
    }
    for ip in [R4, R6] {
        assert_eq!(
            count_from(&l.lines(), ip),
            0,
            "refused datagrams from {ip} reached the listener (judged by nothing)"
        );
    }
    // Every refused datagram was judged and dropped by one generation of the programs or
    // the other (the counters are pinned, so both count into the same place).
    wait_until("every refused datagram counted", || {
        dropped(&d2) >= refused_sent
    });
    assert_eq!(
        dropped(&d2),
        refused_sent,
        "drops counted vs refused datagrams sent"
    );
}

/// Replaces the pinned `EVENTS` with a new, empty ring buffer of `bytes`, as an earlier
/// daemon built with another ring size would have left it.
fn pin_ring_of_size(pins: &Path, bytes: u32) {
    use enforcer::kernel::sys::{bpf_fd, obj_pin, Attr};
    use std::os::fd::AsFd as _;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    let path = pins.join("maps/EVENTS");
    std::fs::remove_file(&path).expect("unpinning EVENTS");
    // BPF_MAP_CREATE: map_type, key_size, value_size, max_entries (a ring's bytes).
    let mut a = Attr::default();
    a.put32(0, BPF_MAP_TYPE_RINGBUF).put32(12, bytes);
    let ring = bpf_fd(BPF_MAP_CREATE, &mut a).expect("creating a ring buffer");
    obj_pin(ring.as_fd(), &path).expect("pinning the ring buffer");
}

/// A daemon of another build may have made the ring buffer another size: the next daemon
/// adopts it at the size it has (mapping it at its own size is refused by the kernel, and
/// the upgrade would fail to start), and reads the events the new programs write there.
#[test]
fn a_ring_buffer_pinned_at_another_size_is_adopted_and_read() {
    need_root!();
    let bed = Bed::new();
    let policy = bed.policy(
        "mode = \"enforce\"",
        &format!("[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [{PORT}]\nallow_from = [\"10.1.0.0/24\"]\n"),
    );
    let mut d = Daemon::start_with(&bed.host, &policy, &["--on-stop", "keep"]);
    let pins = d.pins.take().expect("pins");
    assert!(d.stop().success());
    let ring_bytes = enforcer_common::consts::EVENTS_BYTES / 4;
    pin_ring_of_size(&pins.0, ring_bytes);

    let mut d2 = Daemon::adopt(&bed.host, &policy, &[], pins);
    udp_once(
        &bed.r,
        &format!("{R4}:40123"),
        &sa(HOST_R4, PORT).to_string(),
        b"x",
    );
    let ev = d2.wait_for(Duration::from_secs(20), |v| {
        v["event"] == "packet" && v["src"] == R4 && v["sport"] == 40123
    });
    assert_eq!(ev["verdict"], "drop", "{ev}");
    assert_eq!(status_json(&d2)["audit"]["lost_kernel"], 0);
}

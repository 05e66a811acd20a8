//! How the egress program remembers the flows it allows (`FLOWS`), through
//! BPF_PROG_TEST_RUN: each CPU notes the flows it found fresh in the current clock tick
//! (`FLOW_MEMO`) and skips their lookup until the tick ends. These tests hold what that
//! shortcut must not cost: a flow whose entry went away (evicted) is remembered again by
//! its next packet in a later tick, and flows that share a memo place are each remembered.

use std::{net::IpAddr, time::Duration};

use enforcer_common::{consts::AF_INET, maps::FlowKey, reason::Reason};
use testbed::{
    kernel::{Prog, TestKernel, SKB_PASS},
    packets::Packet,
    stay_on_this_cpu,
};

const HOST: &str = "10.9.0.1";
const CLIENT: &str = "10.1.2.3";
const PORT: u16 = 5432;

/// Longer than a clock tick at any HZ (100 at the least: 10 ms).
const NEXT_TICK: Duration = Duration::from_millis(30);

/// The programs with a rule allowing CLIENT's /8 on tcp/5432, and test_run's socket made a
/// container's (the host's namespace cookie set to another): its packets are judged by
/// source, and those allowed are remembered as flows.
fn kernel() -> TestKernel {
    let policy = format!(
        "[audit]\nrate_per_rule = 0\nrate_global = 0\n\
         [[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [{PORT}]\nallow_from = [\"10.0.0.0/8\"]\n"
    );
    let mut k = TestKernel::new(&policy, &[HOST.parse().unwrap()]);
    let own = k.host_netns_cookie();
    k.set_host_netns_cookie(own ^ 0x5a5a);
    k
}

fn flow(sport: u16, netns: u64) -> FlowKey {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&CLIENT.parse::<std::net::Ipv4Addr>().unwrap().octets());
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&HOST.parse::<std::net::Ipv4Addr>().unwrap().octets());
    FlowKey {
        proto: 6,
        family: AF_INET,
        _pad: 0,
        sport,
        dport: PORT,
        src,
        dst,
        netns,
    }
}

/// Sends the flow's packet through the egress program: allowed by its source.
fn send(k: &mut TestKernel, sport: u16) {
    let frame = Packet::tcp(
        CLIENT.parse::<IpAddr>().unwrap(),
        HOST.parse().unwrap(),
        sport,
        PORT,
    )
    .build();
    let before = k.reason_counts();
    assert_eq!(
        k.run(Prog::Egress, &frame),
        SKB_PASS,
        "egress refused the flow"
    );
    let after = k.reason_counts();
    let key = (Prog::Egress.hook(), Reason::AllowedSource);
    assert_eq!(
        after.get(&key).copied().unwrap_or(0),
        before.get(&key).copied().unwrap_or(0) + 1,
        "the packet was not allowed by its source"
    );
}

fn own_netns() -> u64 {
    enforcer::host::netns_cookie().expect("netns cookie")
}

#[test]
fn a_flow_whose_entry_went_away_is_remembered_again_after_the_tick() {
    testbed::need_root!();
    stay_on_this_cpu();
    let mut k = kernel();
    let key = flow(40_000, own_netns());
    send(&mut k, 40_000);
    assert!(
        k.flow_time(&key).is_some(),
        "the allowed flow was not remembered"
    );

    for round in 0..3 {
        // Gone, as an LRU eviction would take it; the memo still says it is fresh until
        // the tick ends.
        k.set_flow(key, false);
        std::thread::sleep(NEXT_TICK);
        send(&mut k, 40_000);
        assert!(
            k.flow_time(&key).is_some(),
            "round {round}: the flow's packet a tick after its entry went away did not remember it again"
        );
    }
}

#[test]
fn flows_sharing_a_memo_place_are_each_remembered() {
    testbed::need_root!();
    stay_on_this_cpu();
    let mut k = kernel();
    let netns = own_netns();
    // Places are chosen by the ports: these sports differ only above the place's bits, so
    // the flows share one, whatever the memo's size up to 2^14 places.
    let sports = [40_000u16, 40_000 ^ (1 << 14), 40_000 ^ (1 << 15)];
    for _ in 0..2 {
        for &sport in &sports {
            send(&mut k, sport);
        }
        for &sport in &sports {
            assert!(
                k.flow_time(&flow(sport, netns)).is_some(),
                "flow from port {sport} was not remembered beside the others in its place"
            );
        }
        // All forgotten; the two the memo does not hold (it holds the last sent) are sent
        // again: they find another flow in the place, so they look their entry up and
        // write it back.
        for &sport in &sports {
            k.set_flow(flow(sport, netns), false);
        }
        for &sport in &sports[..2] {
            send(&mut k, sport);
            assert!(
                k.flow_time(&flow(sport, netns)).is_some(),
                "flow from port {sport} was not written again though the memo held another"
            );
        }
        std::thread::sleep(NEXT_TICK);
    }
}

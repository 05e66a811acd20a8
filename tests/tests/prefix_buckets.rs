//! `LEN_BITS` through the real programs: a group with more buckets than the table holds
//! one each, so some share an entry (`BUCKET_SHARED`). Sources in every bucket that shares,
//! just outside its prefix, and in /32s of no bucket whose places are taken are each held
//! against the model.

use std::net::{IpAddr, Ipv6Addr};

use enforcer_common::{
    consts::AF_INET6,
    maps::{bucket_place, slot_group, BucketSlot, BUCKET_SHARED},
    reason::Verdict,
};
use testbed::{
    kernel::{dropped, Prog, TestKernel},
    packets::Packet,
};

/// Buckets: one /32 each, more than half the table's places, so a few share.
const BUCKETS: u32 = 70_000;

/// Prefix `i`: in its own /32, of length /48, /56 or /64 (enough long lengths for the
/// group to be bucketed).
fn prefix(i: u32) -> (Ipv6Addr, u8) {
    let top = 0xfd00_0000u128 + 7 * i as u128;
    let len = [48, 56, 64][i as usize % 3];
    (Ipv6Addr::from(top << 96 | (i as u128 & 0xff) << 80), len)
}

/// The `LEN_BITS` entries at a /32's two places (the group is the policy's only one).
fn entries(k: &TestKernel, slot: u32, top: u32) -> [BucketSlot; 2] {
    let (places, _) = bucket_place(slot_group(slot, 0), AF_INET6, top.to_be_bytes());
    places.map(|i| k.loaded.maps.len_bits.get(&i, 0).expect("LEN_BITS entry"))
}

fn judged_as_the_model_does(k: &mut TestKernel, src: Ipv6Addr, want_allowed: bool) {
    let dst: IpAddr = "2001:db8::1".parse().unwrap();
    let frame = Packet::tcp(IpAddr::V6(src), dst, 40000, 5432).build();
    let want = k.model(Prog::Xdp, &frame);
    assert_eq!(
        want.verdict == Verdict::Allow,
        want_allowed,
        "the model, for {src}: {want:?}"
    );
    let ret = k.run(Prog::Xdp, &frame);
    assert_eq!(
        dropped(Prog::Xdp, ret),
        want.verdict == Verdict::Drop,
        "{src}: the model says {want:?}"
    );
}

#[test]
fn buckets_sharing_an_entry_keep_every_prefix_and_admit_no_stranger() {
    let list: Vec<String> = (0..BUCKETS)
        .map(|i| {
            let (a, l) = prefix(i);
            format!("\"{a}/{l}\"")
        })
        .collect();
    let policy = format!(
        "mode = \"enforce\"\n[audit]\nrate_per_rule = 0\nrate_global = 0\n[[rule]]\nname = \"db\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [{}]\n",
        list.join(", ")
    );
    let mut k = TestKernel::new(&policy, &["2001:db8::1".parse().unwrap()]);
    let slot = k.loaded.maps.active.get(&0, 0).expect("ACTIVE").slot & 1;
    let top = |i: u32| 0xfd00_0000u32 + 7 * i;
    let shares = |e: &[BucketSlot; 2]| {
        e.iter()
            .any(|s| s.tag == BUCKET_SHARED && !s.bits.is_empty())
    };
    let mut sharing = 0;
    for i in 0..BUCKETS {
        let e = entries(&k, slot, top(i));
        assert!(
            e.iter().any(|s| !s.bits.is_empty()),
            "bucket {i} has no entry"
        );
        if !shares(&e) && i % 499 != 0 {
            continue;
        }
        sharing += shares(&e) as u32;
        let (a, len) = prefix(i);
        let a = u128::from(a);
        judged_as_the_model_does(&mut k, Ipv6Addr::from(a | 1), true);
        // The prefix's last bit flipped: outside it, in the same /32.
        let outside = a ^ 1u128 << (128 - len as u32);
        judged_as_the_model_does(&mut k, Ipv6Addr::from(outside | 1), false);
    }
    assert!(
        sharing > 0,
        "no bucket shares an entry: the test proves nothing"
    );
    // /32s of no bucket (between the policy's, 7 apart) whose places are taken.
    let mut strangers = 0;
    for i in 0..BUCKETS {
        let t = top(i) + 3;
        let e = entries(&k, slot, t);
        if e.iter().all(|s| s.bits.is_empty()) {
            continue;
        }
        let src = Ipv6Addr::from((t as u128) << 96 | 0x1234);
        judged_as_the_model_does(&mut k, src, false);
        strangers += 1;
        if strangers == 300 {
            break;
        }
    }
    assert_eq!(strangers, 300);
}

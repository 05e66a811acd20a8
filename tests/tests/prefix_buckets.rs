//! `LEN_BITS` through the real programs: a group with more buckets than the table holds
//! one each, so some share an entry (`BUCKET_SHARED`). Sources in every bucket that shares,
//! just outside its prefix, and in /32s of no bucket whose places are taken are each held
//! against the model; and reloads that remove, change and add buckets, each written as
//! changes to the slot's placement, leave the same judgements as the model's.

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

/// The policy allowing `prefixes` on tcp/5432 (events unlimited).
fn policy_of(prefixes: &[(Ipv6Addr, u8)]) -> String {
    let list: Vec<String> = prefixes
        .iter()
        .map(|(a, l)| format!("\"{a}/{l}\""))
        .collect();
    format!(
        "mode = \"enforce\"\n[audit]\nrate_per_rule = 0\nrate_global = 0\n[[rule]]\nname = \"db\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [{}]\n",
        list.join(", ")
    )
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

/// Reloads that remove prefixes, change their lengths and add new ones (new buckets),
/// with more buckets than the table holds one each: each reload moves the written slot's
/// placement only where the buckets differ, and both slots go through such reloads. After
/// each, sources inside every changed, added and a sample of kept prefixes are allowed,
/// and sources just outside them, or in a removed one, refused, as the model says.
#[test]
fn reloads_that_change_buckets_judge_as_the_model_does() {
    let mut prefixes: Vec<(Ipv6Addr, u8)> = (0..BUCKETS).map(prefix).collect();
    let mut k = TestKernel::new(&policy_of(&prefixes), &["2001:db8::1".parse().unwrap()]);
    let inside = |(a, _): (Ipv6Addr, u8)| Ipv6Addr::from(u128::from(a) | 1);
    let outside = |(a, len): (Ipv6Addr, u8)| {
        Ipv6Addr::from((u128::from(a) ^ 1u128 << (128 - len as u32)) | 1)
    };
    for round in 0..4u32 {
        let mut removed = Vec::new();
        let mut changed = Vec::new();
        for (i, p) in prefixes.iter_mut().enumerate() {
            if i as u32 % 97 == round {
                removed.push(*p);
            } else if i as u32 % 89 == round && p.1 != 40 {
                // Shorter: its /32's bucket gets another length.
                let a = u128::from(p.0) & !(u128::MAX >> 40);
                *p = (Ipv6Addr::from(a), 40);
                changed.push(*p);
            }
        }
        prefixes.retain(|p| !removed.contains(p));
        let added: Vec<(Ipv6Addr, u8)> = (0..500)
            .map(|j| prefix(BUCKETS + 1000 * (round + 1) + j))
            .collect();
        prefixes.extend(&added);
        let policy = policy_of(&prefixes);
        k.set_policy(enforcer::policy::parse_str(std::path::Path::new("t.toml"), &policy).unwrap());

        for &p in changed.iter().chain(&added).take(400) {
            judged_as_the_model_does(&mut k, inside(p), true);
            judged_as_the_model_does(&mut k, outside(p), false);
        }
        for &p in removed.iter().take(300) {
            judged_as_the_model_does(&mut k, inside(p), false);
        }
        for &p in prefixes.iter().step_by(499) {
            judged_as_the_model_does(&mut k, inside(p), true);
        }
    }
}

use enforcer_common::maps::HOST_ADDR_EMPTY;

use super::*;

/// What the programs' `in_host_addrs` answers for `a`, given a slot and `LOCAL_ADDRS`.
fn reads_host(slot: &HostAddrSlot, local: &BTreeSet<IpAddr>, a: IpAddr) -> bool {
    let exact = if a.is_ipv4() {
        HOST_ADDR_V4
    } else {
        HOST_ADDR_V6
    };
    match slot.state {
        HOST_ADDR_EMPTY => false,
        HOST_ADDR_SHARED => local.contains(&a),
        s => s == exact && slot.addr == addr_key(a).addr,
    }
}

fn bytes(s: &HostAddrSlot) -> Vec<u8> {
    let mut v = s.addr.to_vec();
    v.extend(s.state.to_ne_bytes());
    v.extend(s._pad.to_ne_bytes());
    v
}

/// Addresses (of the same family as `a`) whose slot is `a`'s.
fn colliding(a: IpAddr, n: usize) -> Vec<IpAddr> {
    let want = slot_index(a);
    let mut out = Vec::new();
    for i in 0u32.. {
        let b = match a {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | i as u128)),
        };
        if b != a && slot_index(b) == want {
            out.push(b);
            if out.len() == n {
                return out;
            }
        }
    }
    out
}

/// Runs `plan` from `old` to `new` on a simulated table and `LOCAL_ADDRS`, and checks
/// every state a reader can see on the way (each write seen whole, or half done where it
/// changes more than one byte) against both sets.
fn check_transition(
    table: &mut BTreeMap<u32, HostAddrSlot>,
    old: &BTreeSet<IpAddr>,
    new: &BTreeSet<IpAddr>,
    probes: &[IpAddr],
) {
    let mut local = old.clone();
    let steps = plan(old, new, |i| Ok(table.get(&i).copied().unwrap_or_default())).unwrap();
    let check = |table: &BTreeMap<u32, HostAddrSlot>,
                 local: &BTreeSet<IpAddr>,
                 seen: &[(u32, HostAddrSlot)]| {
        for a in probes {
            let i = slot_index(*a);
            let slot = seen
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, s)| *s)
                .unwrap_or_else(|| table.get(&i).copied().unwrap_or_default());
            let got = reads_host(&slot, local, *a);
            let (in_old, in_new) = (old.contains(a), new.contains(a));
            assert!(
                got == in_old || got == in_new,
                "{a}: read {got} in the middle of {old:?} -> {new:?} (slot {slot:?})"
            );
        }
    };
    check(table, &local, &[]);
    for step in steps {
        match step {
            Step::AddLocal(a) => {
                local.insert(a);
            }
            Step::RemoveLocal(a) => {
                local.remove(&a);
            }
            Step::Slot(i, s) => {
                let before = table.get(&i).copied().unwrap_or_default();
                let differ = bytes(&before)
                    .iter()
                    .zip(bytes(&s))
                    .filter(|(x, y)| **x != *y)
                    .count();
                // A write a reader could see half done is one byte, or made in SHARED.
                assert!(
                    differ <= 1
                        || (before.state == HOST_ADDR_SHARED && s.state == HOST_ADDR_SHARED),
                    "slot {i}: {before:?} -> {s:?} changes {differ} bytes outside SHARED"
                );
                if before.state == HOST_ADDR_SHARED && s.state == HOST_ADDR_SHARED {
                    // Half-done addresses: any mix reads LOCAL_ADDRS, like both ends.
                    check(
                        table,
                        &local,
                        &[(
                            i,
                            HostAddrSlot {
                                addr: [0xAA; 16],
                                ..s
                            },
                        )],
                    );
                }
                table.insert(i, s);
            }
        }
        check(table, &local, &[]);
    }
    assert_eq!(local, *new);
    for a in probes {
        let slot = table.get(&slot_index(*a)).copied().unwrap_or_default();
        assert_eq!(
            reads_host(&slot, &local, *a),
            new.contains(a),
            "{a} after the change"
        );
    }
}

#[test]
fn every_state_on_the_way_answers_for_the_old_set_or_the_new() {
    let a: IpAddr = "10.1.2.3".parse().unwrap();
    let [b, c, stranger]: [IpAddr; 3] = colliding(a, 3).try_into().unwrap();
    let a6: IpAddr = "fd00::1".parse().unwrap();
    let [b6]: [IpAddr; 1] = colliding(a6, 1).try_into().unwrap();
    let far: IpAddr = "192.0.2.7".parse().unwrap();
    let probes = [a, b, c, stranger, a6, b6, far, "::1".parse().unwrap()];
    let sets: Vec<BTreeSet<IpAddr>> = [
        vec![],
        vec![a],
        vec![a, b],
        vec![b],
        vec![a, b, c],
        vec![c, a6],
        vec![a6, b6, far],
        vec![far],
        vec![a, a6],
        vec![],
    ]
    .into_iter()
    .map(|v| v.into_iter().collect())
    .collect();
    // Every ordered pair, from a table left as the first set's.
    for from in &sets {
        for to in &sets {
            let mut table = BTreeMap::new();
            check_transition(&mut table, &BTreeSet::new(), from, &probes);
            check_transition(&mut table, from, to, &probes);
        }
    }
}

#[test]
fn a_slot_says_its_one_address_or_to_ask() {
    let v4: IpAddr = "10.1.2.3".parse().unwrap();
    let v6: IpAddr = "fd00::1".parse().unwrap();
    assert_eq!(wanted_slot(&[]).state, HOST_ADDR_EMPTY);
    let s = wanted_slot(&[v4]);
    assert_eq!((s.state, &s.addr[..4]), (HOST_ADDR_V4, &[10, 1, 2, 3][..]));
    assert_eq!(s.addr[4..], [0; 12]);
    assert_eq!(wanted_slot(&[v6]).state, HOST_ADDR_V6);
    assert_eq!(wanted_slot(&[v4, v6]).state, HOST_ADDR_SHARED);
}

#[test]
fn keys_read_back_as_addresses() {
    for a in ["10.1.2.3", "::1", "fe80::1"] {
        let a: IpAddr = a.parse().unwrap();
        assert_eq!(key_addr(&addr_key(a)), Some(a));
    }
}

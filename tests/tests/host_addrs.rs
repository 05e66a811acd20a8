//! The host-address table (`HOST_ADDRS`) through the real programs: addresses that share a
//! slot, a stranger that shares it too, and the host's set changing under them. Every
//! packet's verdict is held against the model with the same addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enforcer::kernel::host::slot_index;
use enforcer_common::reason::Reason;
use testbed::{
    kernel::{dropped, Prog, TestKernel},
    packets::Packet,
};

const POLICY: &str = r#"
mode = "enforce"
[audit]
rate_per_rule = 0
rate_global = 0
[[rule]]
name = "db"
protocol = "tcp"
ports = [5432]
allow_from = ["192.0.2.0/24", "2001:db8::/64"]
"#;

/// `n` addresses from `base` onwards, of `a`'s family, whose slot is `a`'s.
fn sharing(a: IpAddr, n: usize) -> Vec<IpAddr> {
    (1u32..)
        .map(|i| match a {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4).wrapping_add(i))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6).wrapping_add(i as u128))),
        })
        .filter(|b| slot_index(*b) == slot_index(a))
        .take(n)
        .collect()
}

#[test]
fn addresses_sharing_a_slot_are_each_the_hosts_and_a_stranger_sharing_it_is_not() {
    let a4: IpAddr = "10.20.0.1".parse().unwrap();
    let a6: IpAddr = "fd20::1".parse().unwrap();
    let [b4, s4]: [IpAddr; 2] = sharing(a4, 2).try_into().unwrap();
    let [b6, s6]: [IpAddr; 2] = sharing(a6, 2).try_into().unwrap();
    let far: IpAddr = "10.99.0.1".parse().unwrap();
    let mut k = TestKernel::new(POLICY, &[]);
    let sets: [&[IpAddr]; 6] = [
        &[a4, b4, a6, b6, far],
        &[a4, a6],
        &[b4, b6],
        &[a4, b4, a6],
        &[far],
        &[],
    ];
    for set in sets {
        k.set_local_addrs(set);
        for dst in [a4, b4, s4, a6, b6, s6, far] {
            let src: IpAddr = if dst.is_ipv4() {
                "198.51.100.7".parse().unwrap()
            } else {
                "2001:db8:1::7".parse().unwrap()
            };
            let frame = Packet::tcp(src, dst, 40000, 5432).build();
            for prog in [Prog::Xdp, Prog::Egress] {
                let want = k.model(prog, &frame);
                let before = k.reason_counts();
                let ret = k.run(prog, &frame);
                let after = k.reason_counts();
                let reason = [Reason::Denied, Reason::NotLocal]
                    .into_iter()
                    .find(|r| after.get(&(prog.hook(), *r)) != before.get(&(prog.hook(), *r)))
                    .unwrap_or_else(|| panic!("{prog:?} to {dst}: neither denied nor not-local"));
                assert_eq!(
                    reason, want.reason,
                    "{prog:?} to {dst} with host addresses {set:?}"
                );
                let hosts = set.contains(&dst);
                assert_eq!(
                    reason == Reason::Denied,
                    hosts,
                    "{prog:?} to {dst}: judged {reason:?} with host addresses {set:?}"
                );
                assert_eq!(dropped(prog, ret), hosts, "{prog:?} to {dst}");
            }
        }
    }
}

//! The host's addresses as the maps hold them (`LOCAL_ADDRS` keys, the `HOST` bloom
//! word); the host facts themselves live in `crate::host`, the clock in `crate::clock`.

use std::net::IpAddr;

/// `HostInfo::addr_bloom` for a set of addresses.
pub fn addr_bloom<'a>(addrs: impl IntoIterator<Item = &'a IpAddr>) -> u64 {
    addrs.into_iter().fold(0, |bloom, a| {
        let k = addr_key(*a);
        bloom | enforcer_common::maps::addr_bloom_bit(k.family as u8, &k.addr)
    })
}

/// The `LOCAL_ADDRS` key of an address.
pub fn addr_key(a: IpAddr) -> enforcer_common::maps::LocalAddrKey {
    use enforcer_common::consts::{AF_INET, AF_INET6};
    let mut addr = [0u8; 16];
    let family = match a {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            AF_INET
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            AF_INET6
        }
    };
    enforcer_common::maps::LocalAddrKey {
        family: family as u32,
        addr,
    }
}

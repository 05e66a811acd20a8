//! The host's addresses as the maps hold them: `LOCAL_ADDRS` (the whole set) and the
//! `HOST_ADDRS` table the programs ask first. The host facts themselves live in
//! `crate::host`, the clock in `crate::clock`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData};
use enforcer_common::{
    consts::{AF_INET, AF_INET6},
    maps::{
        host_addr_index, HostAddrSlot, LocalAddrKey, HOST_ADDR_SHARED, HOST_ADDR_V4,
        HOST_ADDR_V6,
    },
};

/// The `LOCAL_ADDRS` key of an address.
pub fn addr_key(a: IpAddr) -> LocalAddrKey {
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
    LocalAddrKey {
        family: family as u32,
        addr,
    }
}

fn key_addr(k: &LocalAddrKey) -> Option<IpAddr> {
    match k.family as u8 {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            k.addr[0], k.addr[1], k.addr[2], k.addr[3],
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(k.addr))),
        _ => None,
    }
}

/// The addresses `LOCAL_ADDRS` holds (pinned by an earlier daemon, or none).
pub fn pinned_addrs(local: &HashMap<MapData, LocalAddrKey, u32>) -> BTreeSet<IpAddr> {
    local
        .keys()
        .filter_map(|k| k.ok().as_ref().and_then(key_addr))
        .collect()
}

fn slot_index(a: IpAddr) -> u32 {
    let k = addr_key(a);
    host_addr_index(k.family as u8, &k.addr)
}

/// What a slot should say for the addresses of `addrs` that have it.
fn wanted_slot<'a>(mut addrs: impl Iterator<Item = &'a IpAddr>) -> HostAddrSlot {
    match (addrs.next(), addrs.next()) {
        (None, _) => HostAddrSlot::default(),
        (Some(a), None) => HostAddrSlot {
            addr: addr_key(*a).addr,
            state: if a.is_ipv4() {
                HOST_ADDR_V4
            } else {
                HOST_ADDR_V6
            },
            _pad: 0,
        },
        _ => HostAddrSlot {
            state: HOST_ADDR_SHARED,
            ..HostAddrSlot::default()
        },
    }
}

/// Makes the maps say `new` where they said `old`, so that a program reading them at any
/// moment gets an answer true of `old` or of `new`. A slot write is a plain copy a reader
/// may see half done, so each write changes the state alone or, in state `SHARED` (which
/// sends readers to `LOCAL_ADDRS`), the address alone; `LOCAL_ADDRS` holds `old ∪ new`
/// while slots change.
pub fn sync_addrs(
    local: &mut HashMap<MapData, LocalAddrKey, u32>,
    table: &mut Array<MapData, HostAddrSlot>,
    old: &BTreeSet<IpAddr>,
    new: &BTreeSet<IpAddr>,
) -> anyhow::Result<()> {
    for a in new.difference(old) {
        local
            .insert(addr_key(*a), 1, 0)
            .with_context(|| format!("adding the host address {a}"))?;
    }
    let mut by_slot: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
    for a in old.iter().chain(new) {
        by_slot.entry(slot_index(*a)).or_default();
    }
    for a in new {
        by_slot.entry(slot_index(*a)).or_default().push(*a);
    }
    for (index, addrs) in by_slot {
        let want = wanted_slot(addrs.iter());
        let mut cur = table.get(&index, 0).context("reading HOST_ADDRS")?;
        if cur == want {
            continue;
        }
        let mut write = |s: HostAddrSlot| {
            table
                .set(index, s, 0)
                .context("writing HOST_ADDRS")
                .map(|()| s)
        };
        if cur.state != HOST_ADDR_SHARED {
            cur = write(HostAddrSlot {
                state: HOST_ADDR_SHARED,
                ..cur
            })?;
        }
        if cur.addr != want.addr {
            cur = write(HostAddrSlot {
                addr: want.addr,
                ..cur
            })?;
        }
        if cur != want {
            write(want)?;
        }
    }
    for a in old.difference(new) {
        let _ = local.remove(&addr_key(*a));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use enforcer_common::maps::HOST_ADDR_EMPTY;

    use super::*;

    #[test]
    fn a_slot_says_its_one_address_or_to_ask() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(wanted_slot([].iter()).state, HOST_ADDR_EMPTY);
        let s = wanted_slot([v4].iter());
        assert_eq!((s.state, &s.addr[..4]), (HOST_ADDR_V4, &[10, 1, 2, 3][..]));
        assert_eq!(s.addr[4..], [0; 12]);
        assert_eq!(wanted_slot([v6].iter()).state, HOST_ADDR_V6);
        assert_eq!(wanted_slot([v4, v6].iter()).state, HOST_ADDR_SHARED);
    }

    #[test]
    fn keys_read_back_as_addresses() {
        for a in ["10.1.2.3", "::1", "fe80::1"] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(key_addr(&addr_key(a)), Some(a));
        }
    }
}

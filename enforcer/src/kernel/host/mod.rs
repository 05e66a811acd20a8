//! The host's addresses as the maps hold them: `LOCAL_ADDRS` (the whole set) and the
//! `HOST_ADDRS` table the programs ask first. The host facts themselves live in
//! `crate::host`, the clock in `crate::clock`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use enforcer_common::{
    consts::{AF_INET, AF_INET6},
    maps::{
        host_addr_index, HostAddrSlot, LocalAddrKey, HOST_ADDR_SHARED, HOST_ADDR_V4, HOST_ADDR_V6,
    },
};

use super::programs::Maps;

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

/// The `HOST_ADDRS` slot of an address.
pub fn slot_index(a: IpAddr) -> u32 {
    let k = addr_key(a);
    host_addr_index(k.family as u8, &k.addr)
}

/// What a slot should say for the addresses of `addrs` that have it.
fn wanted_slot(addrs: &[IpAddr]) -> HostAddrSlot {
    match addrs {
        [] => HostAddrSlot::default(),
        [a] => HostAddrSlot {
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

/// One write to the maps, in the order `plan` gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    AddLocal(IpAddr),
    Slot(u32, HostAddrSlot),
    RemoveLocal(IpAddr),
}

/// The writes that make the maps say `new` where they said `old`, so that a program
/// reading them at any moment gets an answer true of `old` or of `new`. A slot write is a
/// plain copy a reader may see half done, so each one changes the state alone or, in
/// state `SHARED` (which sends readers to `LOCAL_ADDRS`), the address alone; `LOCAL_ADDRS`
/// holds `old ∪ new` while slots change. `current` reads a slot as it is.
fn plan(
    old: &BTreeSet<IpAddr>,
    new: &BTreeSet<IpAddr>,
    mut current: impl FnMut(u32) -> anyhow::Result<HostAddrSlot>,
) -> anyhow::Result<Vec<Step>> {
    let mut steps: Vec<Step> = new.difference(old).map(|a| Step::AddLocal(*a)).collect();
    let mut by_slot: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
    for a in old {
        by_slot.entry(slot_index(*a)).or_default();
    }
    for a in new {
        by_slot.entry(slot_index(*a)).or_default().push(*a);
    }
    for (index, addrs) in by_slot {
        let want = wanted_slot(&addrs);
        let mut cur = current(index)?;
        if cur == want {
            continue;
        }
        if cur.state != HOST_ADDR_SHARED {
            cur.state = HOST_ADDR_SHARED;
            steps.push(Step::Slot(index, cur));
        }
        if cur.addr != want.addr || cur._pad != want._pad {
            cur = HostAddrSlot {
                state: HOST_ADDR_SHARED,
                ..want
            };
            steps.push(Step::Slot(index, cur));
        }
        if cur != want {
            steps.push(Step::Slot(index, want));
        }
    }
    steps.extend(old.difference(new).map(|a| Step::RemoveLocal(*a)));
    Ok(steps)
}

/// Makes the maps say `new` where they said `old` (see `plan`).
pub fn sync_addrs(
    maps: &mut Maps,
    old: &BTreeSet<IpAddr>,
    new: &BTreeSet<IpAddr>,
) -> anyhow::Result<()> {
    let (local, table) = (&mut maps.local_addrs, &mut maps.host_addrs);
    for step in plan(old, new, |i| table.get(&i, 0).context("reading HOST_ADDRS"))? {
        match step {
            Step::AddLocal(a) => local
                .insert(addr_key(a), 1, 0)
                .with_context(|| format!("adding the host address {a}"))?,
            Step::Slot(i, s) => table.set(i, s, 0).context("writing HOST_ADDRS")?,
            Step::RemoveLocal(a) => {
                let _ = local.remove(&addr_key(a));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

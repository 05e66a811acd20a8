//! Compiled policy -> the kernel's maps, with no moment where a packet sees a mix of two
//! policies or none.
//!
//! Every policy map holds two slots. A new policy goes, complete, into the slot the
//! programs are not reading; then `ACTIVE` flips in one 4-byte store. The slot the programs
//! left keeps the previous policy untouched, which makes it the base of the next write: only
//! entries that differ are written, so a reload costs in proportion to what changed.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_common::{
    consts::{port_index, MAX_GROUPS},
    maps::{
        slot_group, ActiveSlot, AllowKey, AllowValue, BucketBits, BucketKey, CgroupKey, GroupInfo,
        SlotInfo,
    },
};

use aya::maps::IterableMap as _;
use std::os::fd::AsFd as _;

use super::{programs::Maps, sys};
use crate::policy::{compile::Allowed, Compiled};

/// A program run lasts microseconds; a slot is rewritten only this long after the programs
/// stopped reading it (an RCU grace period with a wide margin).
const GRACE: Duration = Duration::from_millis(20);

/// What one slot holds, as written.
#[derive(Clone, Default)]
struct SlotContent {
    info: SlotInfo,
    ports: Vec<u32>,
    groups: Vec<GroupInfo>,
    allow: HashMap<AllowKey, AllowValue>,
    cgroups: HashMap<CgroupKey, AllowValue>,
    buckets: HashMap<BucketKey, BucketBits>,
}

/// How much one apply wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries_written: usize,
    pub entries_removed: usize,
}

pub struct Writer {
    active: u32,
    /// None: unknown (a failed write left it partial), so rewrite it whole.
    slots: [Option<SlotContent>; 2],
    last_flip: Option<Instant>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// A writer for freshly created maps: both slots empty, slot 0 active.
    pub fn new() -> Self {
        let empty = SlotContent {
            ports: vec![0; 2 * 65536],
            ..SlotContent::default()
        };
        Writer {
            active: 0,
            slots: [Some(empty.clone()), Some(empty)],
            last_flip: None,
        }
    }

    /// A writer for maps an earlier daemon filled, with `active` the slot in force: both
    /// slots' contents are unknown, so the first apply writes the idle one whole.
    pub fn adopt(active: u32) -> Self {
        Writer {
            active: active & 1,
            slots: [None, None],
            last_flip: None,
        }
    }

    /// Writes `compiled` (with the cgroup ids resolved in `cgroup_ids`) as `generation`
    /// into the idle slot, then makes it the active one.
    pub fn apply(
        &mut self,
        maps: &mut Maps,
        compiled: &Compiled,
        cgroup_ids: &BTreeMap<String, u64>,
        generation: u64,
    ) -> anyhow::Result<ApplyStats> {
        let target = 1 - self.active;
        if let Some(t) = self.last_flip {
            let since = t.elapsed();
            if since < GRACE {
                std::thread::sleep(GRACE - since);
            }
        }
        let new = content_for(target, compiled, cgroup_ids, generation);
        let old = self.slots[target as usize].take();
        let stats = write_slot(maps, target, old.as_ref(), &new)?;
        maps.active
            .set(
                0,
                ActiveSlot {
                    slot: target,
                    _pad: 0,
                },
                0,
            )
            .context("switching to the new policy")?;
        self.active = target;
        self.last_flip = Some(Instant::now());
        self.slots[target as usize] = Some(new);
        Ok(stats)
    }
}

fn content_for(
    slot: u32,
    compiled: &Compiled,
    cgroup_ids: &BTreeMap<String, u64>,
    generation: u64,
) -> SlotContent {
    let to_boot = crate::clock::UnixToBoottime::now();
    let value = |a: &Allowed| AllowValue {
        rule: a.rule,
        _pad: 0,
        expires_boot_ns: match a.expires_unix {
            0 => 0,
            t => to_boot.convert(t),
        },
    };
    let allow = compiled
        .allow
        .iter()
        .map(|(k, r)| {
            (
                AllowKey {
                    group: slot_group(slot, k.group),
                    ..*k
                },
                value(r),
            )
        })
        .collect();
    let cgroups = compiled
        .cgroups
        .iter()
        .filter_map(|((g, path), r)| {
            let id = *cgroup_ids.get(path)?;
            Some((
                CgroupKey {
                    group: slot_group(slot, *g),
                    _pad: 0,
                    cgroup_id: id,
                },
                value(r),
            ))
        })
        .collect();
    let buckets = compiled
        .buckets
        .iter()
        .map(|(k, b)| {
            (
                BucketKey {
                    group: slot_group(slot, k.group),
                    ..*k
                },
                *b,
            )
        })
        .collect();
    SlotContent {
        buckets,
        info: SlotInfo {
            generation,
            flags: compiled.slot_flags,
            burst: compiled.burst,
            rule_cost_ns: compiled.rule_cost_ns,
            global_cost_ns: compiled.global_cost_ns,
        },
        ports: compiled.ports.clone(),
        groups: compiled.groups.clone(),
        allow,
        cgroups,
    }
}

/// Makes slot `slot` hold `new`, writing only what differs from `old` (everything when
/// `old` is unknown).
fn write_slot(
    maps: &mut Maps,
    slot: u32,
    old: Option<&SlotContent>,
    new: &SlotContent,
) -> anyhow::Result<ApplyStats> {
    let mut stats = ApplyStats::default();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for (i, &v) in new.ports.iter().enumerate() {
        if old.is_some_and(|o| o.ports.get(i) == Some(&v)) {
            continue;
        }
        keys.push(port_index(slot, (i >> 16) as u32, (i & 0xffff) as u16));
        values.push(v);
    }
    if !keys.is_empty() {
        let fd = maps.ports.map().fd().as_fd();
        sys::array_update_batch(fd, &keys, &values).context("writing the port table")?;
        stats.entries_written += keys.len();
    }
    let old_groups = old.map_or(MAX_GROUPS as usize, |o| o.groups.len());
    for g in 0..new.groups.len().max(old_groups) {
        let want = new.groups.get(g).copied().unwrap_or_default();
        if old.is_some_and(|o| o.groups.get(g).copied().unwrap_or_default() == want) {
            continue;
        }
        if old.is_none() && g >= new.groups.len() {
            // Unknown old content: only groups a port could name matter, and none does.
            break;
        }
        maps.groups
            .set(slot * MAX_GROUPS + g as u32, want, 0)
            .context("writing port groups")?;
        stats.entries_written += 1;
    }
    sync_hash(
        &mut maps.allow,
        slot,
        old.map(|o| &o.allow),
        &new.allow,
        |k| k.group >> 16,
        &mut stats,
    )
    .context("writing allow entries")?;
    sync_hash(
        &mut maps.cgroups,
        slot,
        old.map(|o| &o.cgroups),
        &new.cgroups,
        |k| k.group >> 16,
        &mut stats,
    )
    .context("writing allowed cgroups")?;
    // Written after the allow entries: until then a bucket may lack a new length (the
    // slot is not read yet, and its old lengths all still have their entries).
    sync_hash(
        &mut maps.len_bits,
        slot,
        old.map(|o| &o.buckets),
        &new.buckets,
        |k| k.group >> 16,
        &mut stats,
    )
    .context("writing prefix-length buckets")?;
    maps.slot_info
        .set(slot, new.info, 0)
        .context("writing the policy generation")?;
    Ok(stats)
}

fn sync_hash<K, V>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    slot: u32,
    old: Option<&HashMap<K, V>>,
    new: &HashMap<K, V>,
    slot_of: impl Fn(&K) -> u32,
    stats: &mut ApplyStats,
) -> anyhow::Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    let stale: Vec<K> = match old {
        Some(old) => old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .copied()
            .collect(),
        // Unknown: whatever the kernel holds for this slot that is not wanted.
        None => map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| slot_of(k) & 1 == slot && !new.contains_key(k))
            .collect(),
    };
    // Stale entries go first: the map holds two slots' worth, so a slot at the limit that
    // changes most of its entries only fits once the idle slot's old ones are out (the
    // programs are not reading this slot).
    for k in stale {
        map.remove(&k)?;
        stats.entries_removed += 1;
    }
    for (k, v) in new {
        if old.is_some_and(|o| o.get(k) == Some(v)) {
            continue;
        }
        map.insert(*k, *v, 0)?;
        stats.entries_written += 1;
    }
    Ok(())
}

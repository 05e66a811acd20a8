//! Compiled policy -> the kernel's maps, with no moment where a packet sees a mix of two
//! policies or none.
//!
//! Every policy map holds two slots. A new policy goes, complete, into the slot the
//! programs are not reading; then `ACTIVE` flips in one 4-byte store. The slot the programs
//! left keeps the previous policy untouched, which makes it the base of the next write: only
//! entries that differ are written, so a reload costs in proportion to what changed. The
//! compiled entries come in key order, so finding what differs is a merge walk over the
//! slot's entries as written, not a lookup per entry.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_common::{
    consts::{port_index, MAX_GROUPS},
    maps::{
        bucket_place, slot_group, ActiveSlot, AllowKey, AllowValue, BucketBits, BucketKey,
        BucketSlot, CgroupKey, GroupInfo, SlotInfo, BUCKET_SHARED, LEN_BITS_PER_SLOT,
    },
};

use aya::maps::IterableMap as _;
use std::os::fd::AsFd as _;

use super::{programs::Maps, sys};
use crate::policy::{
    compile::{merge_walk, Allowed, FastMap as HashMap, SortedMap, Step},
    Compiled,
};

/// Moves `place_buckets` tries before a bucket shares an entry instead.
const MAX_KICKS: usize = 256;
/// The same where the slot's old placement is kept: each move is an entry written, so a
/// bucket added to a full table shares an entry sooner rather than rewrite hundreds.
const RELOAD_KICKS: usize = 16;

/// A program run lasts microseconds; a slot is rewritten only this long after the programs
/// stopped reading it (an RCU grace period with a wide margin). It also outlasts a clock
/// tick (10 ms at HZ=100, the least), so the answers the programs noted for the slot in
/// their per-CPU memos (keyed by slot, good for their tick) have lapsed before it changes.
const GRACE: Duration = Duration::from_millis(20);

/// A slot's `LEN_BITS` entries, from its first; each held entry with the two places of the
/// bucket that owns it (a shared entry's are those of the bucket that made it shared).
type Table = Vec<Option<(BucketSlot, [u32; 2])>>;

/// What one slot holds, as written.
#[derive(Clone)]
struct SlotContent {
    ports: Vec<u32>,
    groups: Vec<GroupInfo>,
    /// In the compiled entries' order (and keys: group ids without the slot's bit).
    allow: Vec<(AllowKey, AllowValue)>,
    cgroups: HashMap<CgroupKey, AllowValue>,
    /// The buckets `table` places.
    buckets: Arc<SortedMap<BucketKey, BucketBits>>,
    table: Table,
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
            groups: Vec::new(),
            allow: Vec::new(),
            cgroups: HashMap::default(),
            buckets: Arc::default(),
            table: vec![None; LEN_BITS_PER_SLOT as usize],
        };
        Writer {
            active: 0,
            slots: [Some(empty.clone()), Some(empty)],
            last_flip: None,
        }
    }

    /// A writer for maps an earlier daemon filled, with `active` the slot in force: both
    /// slots' contents are unknown, so the first apply writes the idle one whole. When that
    /// daemon last flipped is unknown too, so the first apply waits a whole `GRACE`.
    pub fn adopt(active: u32) -> Self {
        Writer {
            active: active & 1,
            slots: [None, None],
            last_flip: Some(Instant::now()),
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
        // Taken: if the write fails, the slot's content is unknown until a whole rewrite.
        let old = self.slots[target as usize].take();
        let (new, stats) = write_slot(maps, target, old, compiled, cgroup_ids, generation)?;
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

/// Makes slot `slot` hold `compiled`, writing only what differs from `old` (everything
/// when `old` is unknown); returns what the slot then holds.
fn write_slot(
    maps: &mut Maps,
    slot: u32,
    old: Option<SlotContent>,
    compiled: &Compiled,
    cgroup_ids: &BTreeMap<String, u64>,
    generation: u64,
) -> anyhow::Result<(SlotContent, ApplyStats)> {
    let mut stats = ApplyStats::default();
    let to_boot = crate::clock::UnixToBoottime::now();
    let value = |a: &Allowed| AllowValue {
        rule: a.rule,
        _pad: 0,
        expires_boot_ns: match a.expires_unix {
            0 => 0,
            t => to_boot.convert(t),
        },
    };

    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for (i, &v) in compiled.ports.iter().enumerate() {
        if old.as_ref().is_some_and(|o| o.ports.get(i) == Some(&v)) {
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

    let old_groups = old.as_ref().map_or(MAX_GROUPS as usize, |o| o.groups.len());
    for g in 0..compiled.groups.len().max(old_groups) {
        let want = compiled.groups.get(g).copied().unwrap_or_default();
        let had = old
            .as_ref()
            .map(|o| o.groups.get(g).copied().unwrap_or_default());
        if had == Some(want) {
            continue;
        }
        if old.is_none() && g >= compiled.groups.len() {
            // Unknown old content: only groups a port could name matter, and none does.
            break;
        }
        maps.groups
            .set(slot * MAX_GROUPS + g as u32, want, 0)
            .context("writing port groups")?;
        stats.entries_written += 1;
    }

    let in_slot = |k: &AllowKey| AllowKey {
        group: slot_group(slot, k.group),
        ..*k
    };
    let allow = write_allow(
        &mut maps.allow,
        slot,
        old.as_ref().map(|o| &o.allow[..]),
        compiled.allow.as_slice(),
        value,
        in_slot,
        &mut stats,
    )
    .context("writing allow entries")?;

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
    sync_hash(
        &mut maps.cgroups,
        slot,
        old.as_ref().map(|o| &o.cgroups),
        &cgroups,
        |k| k.group >> 16,
        &mut stats,
    )
    .context("writing allowed cgroups")?;

    // Written after the allow entries: until then a bucket may lack a new length (the
    // slot is not read yet, and its old lengths all still have their entries).
    let first = slot * LEN_BITS_PER_SLOT;
    let (table, changed): (Table, Vec<(u32, Option<BucketSlot>)>) = match old {
        // A slot placed before: moved to the new buckets where they differ.
        Some(o) if !o.buckets.is_empty() => {
            let mut table = o.table;
            let before = place_changes(slot, &mut table, &o.buckets, &compiled.buckets);
            let changed = before.into_iter().map(|(i, had)| (i, Some(had))).collect();
            (table, changed)
        }
        // Empty or unknown: placed afresh (an unknown slot is rewritten whole, clearing
        // what it may hold).
        o => {
            let table = place_buckets(slot, &compiled.buckets, o.as_ref().map(|o| &o.table));
            let changed = (0..LEN_BITS_PER_SLOT)
                .map(|i| (first + i, o.as_ref().map(|o| entry(&o.table, i))))
                .collect();
            (table, changed)
        }
    };
    let (mut at, mut bits) = (Vec::new(), Vec::new());
    for (i, had) in changed {
        let want = entry(&table, i - first);
        if had == Some(want) {
            continue;
        }
        at.push(i);
        bits.push(want);
        if !want.bits.is_empty() {
            stats.entries_written += 1;
        } else if had.is_some_and(|h| !h.bits.is_empty()) {
            stats.entries_removed += 1;
        }
    }
    if !at.is_empty() {
        let fd = maps.len_bits.map().fd().as_fd();
        sys::array_update_batch(fd, &at, &bits).context("writing prefix-length buckets")?;
    }

    let info = SlotInfo {
        generation,
        flags: compiled.slot_flags,
        burst: compiled.burst,
        rule_cost_ns: compiled.rule_cost_ns,
        global_cost_ns: compiled.global_cost_ns,
    };
    maps.slot_info
        .set(slot, info, 0)
        .context("writing the policy generation")?;
    let content = SlotContent {
        ports: compiled.ports.clone(),
        groups: compiled.groups.clone(),
        allow,
        cgroups,
        buckets: compiled.buckets.clone(),
        table,
    };
    Ok((content, stats))
}

/// Entry `i` (from the slot's first) of a table; an empty one where none is held.
fn entry(table: &Table, i: u32) -> BucketSlot {
    table[i as usize].map_or_else(BucketSlot::default, |(s, _)| s)
}

/// Makes the slot's allow entries those of `new` (in key order, each value as `value`
/// makes it), removing and writing only what differs from `old`; `in_slot` gives a key its
/// slot's group id. Returns the entries as written.
fn write_allow(
    map: &mut aya::maps::HashMap<aya::maps::MapData, AllowKey, AllowValue>,
    slot: u32,
    old: Option<&[(AllowKey, AllowValue)]>,
    new: &[(AllowKey, Allowed)],
    value: impl Fn(&Allowed) -> AllowValue,
    in_slot: impl Fn(&AllowKey) -> AllowKey,
    stats: &mut ApplyStats,
) -> anyhow::Result<Vec<(AllowKey, AllowValue)>> {
    let mut written = Vec::with_capacity(new.len());
    let (mut stale, mut wanted) = (Vec::new(), Vec::new());
    match old {
        // One pass: each value made once, compared, and kept.
        Some(old) => merge_walk(old, new, |step| match step {
            Step::Gone(k, _) => stale.push(in_slot(k)),
            Step::Came(k, a) => {
                let v = value(a);
                wanted.push((in_slot(k), v));
                written.push((*k, v));
            }
            Step::Both(k, had, a) => {
                let v = value(a);
                if *had != v {
                    wanted.push((in_slot(k), v));
                }
                written.push((*k, v));
            }
        }),
        None => {
            written.extend(new.iter().map(|(k, a)| (*k, value(a))));
            // Unknown: whatever the kernel holds for this slot that is not wanted.
            let ours = |k: &AllowKey| AllowKey {
                group: k.group & 0xffff,
                ..*k
            };
            stale = map
                .keys()
                .filter_map(Result::ok)
                .filter(|k| {
                    k.group >> 16 & 1 == slot
                        && new.binary_search_by(|(n, _)| n.cmp(&ours(k))).is_err()
                })
                .collect();
            wanted = written.iter().map(|(k, v)| (in_slot(k), *v)).collect();
        }
    }
    // Stale entries go first: the map holds two slots' worth, so a slot at the limit that
    // changes most of its entries only fits once the idle slot's old ones are out (the
    // programs are not reading this slot).
    for k in stale {
        map.remove(&k)?;
        stats.entries_removed += 1;
    }
    for (k, v) in wanted {
        map.insert(k, v, 0)?;
        stats.entries_written += 1;
    }
    Ok(written)
}

/// `LEN_BITS` entries of `slot` for the compiled buckets: each in one of its two places
/// with its tag, as in a cuckoo table (a bucket whose places are both taken moves an
/// occupant to that one's other place). One that finds no place after `MAX_KICKS` moves
/// (`RELOAD_KICKS` when `old` is known) shares one: that entry then holds the union of the
/// lengths placed there (`BUCKET_SHARED`). A bucket keeps the entry it had in `old` (the
/// slot's table as written), its own or a shared one; new buckets are placed in key order.
///
/// Where buckets had to share anew, the result is placed once more from itself: each
/// bucket that shares then settles on the first of its places holding its lengths, and
/// the shared entries narrow to what their buckets need. That placement is what placing
/// the same buckets from it makes again.
fn place_buckets(
    slot: u32,
    compiled: &SortedMap<BucketKey, BucketBits>,
    old: Option<&Table>,
) -> Table {
    match place_once(slot, compiled, old) {
        (placed, true) => place_once(slot, compiled, Some(&placed)).0,
        (placed, false) => placed,
    }
}

/// A bucket's entry (its tag and lengths) and its two places.
fn placed(slot: u32, k: &BucketKey, bits: BucketBits) -> (BucketSlot, [u32; 2]) {
    let (places, tag) = bucket_place(slot_group(slot, k.group), k.family as u8, k.top);
    let entry = BucketSlot { tag, _pad: 0, bits };
    (entry, places)
}

/// One placement (see `place_buckets`); true if some bucket had to share an entry anew.
fn place_once(
    slot: u32,
    compiled: &SortedMap<BucketKey, BucketBits>,
    old: Option<&Table>,
) -> (Table, bool) {
    let first = slot * LEN_BITS_PER_SLOT;
    let ix = |i: u32| (i - first) as usize;
    let mut table: Table = vec![None; LEN_BITS_PER_SLOT as usize];
    let old_entry = |i: u32| {
        old.and_then(|o| o[ix(i)].as_ref())
            .map(|(s, _)| s)
            .filter(|s| !s.bits.is_empty())
    };
    let mut rest = Vec::with_capacity(compiled.len());
    for (k, bits) in compiled.iter() {
        let (entry, places) = placed(slot, k, *bits);
        match places
            .into_iter()
            .find(|&i| table[ix(i)].is_none() && old_entry(i).is_some_and(|s| s.tag == entry.tag))
        {
            Some(i) => table[ix(i)] = Some((entry, places)),
            None => rest.push((entry, places)),
        }
    }
    // Then those that shared an entry share it again (the one that held their lengths, if
    // both places are shared): placed afresh, they would kick others out of theirs.
    let shared = |i: u32| old_entry(i).filter(|s| s.tag == BUCKET_SHARED);
    let mut fresh = Vec::with_capacity(rest.len());
    for (entry, places) in rest {
        let b = entry.bits;
        let held = places.into_iter().find(|&i| {
            shared(i).is_some_and(|s| (s.bits.lo & b.lo, s.bits.hi & b.hi) == (b.lo, b.hi))
        });
        match held.or_else(|| places.into_iter().find(|&i| shared(i).is_some())) {
            Some(i) => {
                let (s, _) = table[ix(i)].get_or_insert((BucketSlot::default(), places));
                s.bits.lo |= b.lo;
                s.bits.hi |= b.hi;
            }
            None => fresh.push((entry, places)),
        }
    }
    let kicks = if old.is_some() {
        RELOAD_KICKS
    } else {
        MAX_KICKS
    };
    let mut merged = false;
    for moving in fresh {
        merged |= kick_in(&mut table, first, moving, kicks, |_, _| {});
    }
    (table, merged)
}

/// Places `moving` in the first free one of its places, else moves an occupant to its
/// other place, up to `kicks` times, after which the moving entry shares the place it is
/// at. `touch(i, had)` is called before entry `i` (from the table's `first`) changes from
/// `had`; true if an entry became shared.
fn kick_in(
    table: &mut Table,
    first: u32,
    mut moving: (BucketSlot, [u32; 2]),
    kicks: usize,
    mut touch: impl FnMut(u32, BucketSlot),
) -> bool {
    let ix = |i: u32| (i - first) as usize;
    // Where the moving entry was just displaced from: it goes to its other place.
    let mut from = None;
    for kick in 0..=kicks {
        let [a, b] = moving.1;
        if let Some(free) = [a, b].into_iter().find(|&i| table[ix(i)].is_none()) {
            touch(free - first, BucketSlot::default());
            table[ix(free)] = Some(moving);
            return false;
        }
        let at = if from == Some(a) { b } else { a };
        touch(at - first, entry(table, at - first));
        let (occupant, _) = table[ix(at)].as_mut().expect("both places are taken");
        if kick == kicks || occupant.tag == BUCKET_SHARED {
            occupant.tag = BUCKET_SHARED;
            occupant.bits.lo |= moving.0.bits.lo;
            occupant.bits.hi |= moving.0.bits.hi;
            return true;
        }
        moving = table[ix(at)]
            .replace(moving)
            .expect("both places are taken");
        from = Some(at);
    }
    unreachable!("the last kick shares an entry")
}

/// Moves `table` (the slot's placement of `old`) to the buckets `new`, in proportion to
/// what differs: a bucket gone or changed leaves its own entry (a shared entry keeps its
/// lengths: one too many only costs a source a probe that finds nothing); a new or changed
/// one takes a free place of its two, else a shared one (one already holding its lengths
/// first), else moves occupants as `place_buckets` does. Returns each entry changed (from
/// the table's first) with what it held before.
fn place_changes(
    slot: u32,
    table: &mut Table,
    old: &SortedMap<BucketKey, BucketBits>,
    new: &SortedMap<BucketKey, BucketBits>,
) -> Vec<(u32, BucketSlot)> {
    let first = slot * LEN_BITS_PER_SLOT;
    let ix = |i: u32| (i - first) as usize;
    let (mut gone, mut came) = (Vec::new(), Vec::new());
    merge_walk(old.as_slice(), new.as_slice(), |step| match step {
        Step::Gone(k, b) => gone.push(placed(slot, k, *b)),
        Step::Came(k, b) => came.push(placed(slot, k, *b)),
        Step::Both(k, had, want) if had != want => {
            gone.push(placed(slot, k, *had));
            came.push(placed(slot, k, *want));
        }
        Step::Both(..) => {}
    });
    let mut before: HashMap<u32, BucketSlot> = HashMap::default();
    let mut touch = |i: u32, had: BucketSlot| {
        before.entry(i).or_insert(had);
    };
    for (entry, places) in gone {
        if let Some(i) = places.into_iter().find(|&i| {
            table[ix(i)]
                .as_ref()
                .is_some_and(|(s, _)| s.tag == entry.tag)
        }) {
            touch(i - first, self::entry(table, i - first));
            table[ix(i)] = None;
        }
    }
    for moving in came {
        let (b, places) = (moving.0.bits, moving.1);
        // A free place first (`kick_in` takes it without moving anything), then a shared
        // entry, one already holding the bucket's lengths first.
        if places.iter().all(|&i| table[ix(i)].is_some()) {
            let shared = |i: u32| {
                table[ix(i)]
                    .as_ref()
                    .map(|(s, _)| *s)
                    .filter(|s| s.tag == BUCKET_SHARED)
            };
            let holds = |s: BucketSlot| (s.bits.lo & b.lo, s.bits.hi & b.hi) == (b.lo, b.hi);
            if places.into_iter().any(|i| shared(i).is_some_and(holds)) {
                continue;
            }
            if let Some(i) = places.into_iter().find(|&i| shared(i).is_some()) {
                touch(i - first, self::entry(table, i - first));
                let (s, _) = table[ix(i)].as_mut().expect("a shared entry");
                s.bits.lo |= b.lo;
                s.bits.hi |= b.hi;
                continue;
            }
        }
        kick_in(table, first, moving, RELOAD_KICKS, &mut touch);
    }
    before
        .into_iter()
        .map(|(i, had)| (first + i, had))
        .collect()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use enforcer_common::{
        consts::{AF_INET, AF_INET6},
        maps::V6_BUCKET_LEN,
    };

    use super::*;

    /// `n` buckets of random leading bits, one length each.
    fn random_buckets(n: u32) -> HashMap<BucketKey, BucketBits> {
        let mut compiled = HashMap::default();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bits = BucketBits::default();
            bits.set(V6_BUCKET_LEN, V6_BUCKET_LEN + (x % 97) as u8);
            let key = BucketKey {
                group: i % 3,
                family: if i % 2 == 0 { AF_INET6 } else { AF_INET } as u32,
                top: (x >> 32).to_ne_bytes()[..4].try_into().unwrap(),
            };
            compiled.insert(key, bits);
        }
        compiled
    }

    /// `slot`'s placed entries that hold lengths, by `LEN_BITS` index.
    fn entries(slot: u32, table: &Table) -> HashMap<u32, BucketSlot> {
        (slot * LEN_BITS_PER_SLOT..)
            .zip(table)
            .filter_map(|(i, e)| Some((i, e.as_ref()?.0)))
            .filter(|(_, s)| !s.bits.is_empty())
            .collect()
    }

    fn place(slot: u32, compiled: &HashMap<BucketKey, BucketBits>, old: Option<&Table>) -> Table {
        place_buckets(slot, &SortedMap::from_map(compiled.clone()), old)
    }

    /// Buckets filling 40% of the table each get a place of their own; at half (65,536
    /// prefixes each under its own /16), next to none share.
    #[test]
    fn buckets_filling_under_half_the_table_each_get_a_place_of_their_own() {
        for (n, most_shared) in [(LEN_BITS_PER_SLOT * 2 / 5, 0), (LEN_BITS_PER_SLOT / 2, 8)] {
            let placed = entries(1, &place(1, &random_buckets(n), None));
            let shared = placed.values().filter(|s| s.tag == BUCKET_SHARED).count();
            assert!(
                shared <= most_shared,
                "{shared} shared entries for {n} buckets"
            );
            assert_eq!(placed.len(), n as usize - shared);
        }
    }

    /// Every bucket of `compiled` finds at least its own lengths in its places of `placed`.
    fn assert_each_finds_its_lengths(
        slot: u32,
        compiled: &HashMap<BucketKey, BucketBits>,
        placed: &HashMap<u32, BucketSlot>,
    ) {
        for (k, b) in compiled {
            let (at, tag) = bucket_place(slot_group(slot, k.group), k.family as u8, k.top);
            let got = at.iter().fold(BucketBits::default(), |mut u, i| {
                assert_eq!(i / LEN_BITS_PER_SLOT, slot);
                let s = placed
                    .get(i)
                    .map(|s| s.lengths_for(tag))
                    .unwrap_or_default();
                u.lo |= s.lo;
                u.hi |= s.hi;
                u
            });
            assert_eq!((got.lo & b.lo, got.hi & b.hi), (b.lo, b.hi), "{k:?}");
        }
    }

    /// A bucket keeps the entry it had, its own or a shared one: a policy that drops one
    /// bucket and gains another moves a few entries, where placing everything afresh in
    /// key order moves many, most of all in a table so full that buckets share entries.
    #[test]
    fn a_changed_bucket_moves_few_entries() {
        for (n, afresh) in [
            (LEN_BITS_PER_SLOT * 2 / 5, 0),
            (LEN_BITS_PER_SLOT * 3 / 4, 1000),
        ] {
            let before = random_buckets(n);
            let old_dense = place(0, &before, None);
            let old = entries(0, &old_dense);
            let mut after = before.clone();
            let gone = *after
                .keys()
                .min_by_key(|k| (k.group, k.family, k.top))
                .unwrap();
            after.remove(&gone);
            let mut bits = BucketBits::default();
            bits.set(V6_BUCKET_LEN, 48);
            after.insert(
                BucketKey {
                    group: 0,
                    family: AF_INET6 as u32,
                    top: [0, 0, 0, 1],
                },
                bits,
            );
            let moved = |new: &HashMap<u32, BucketSlot>| {
                old.keys()
                    .chain(new.keys())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|i| old.get(i) != new.get(i))
                    .count()
            };
            let seeded = entries(0, &place(0, &after, Some(&old_dense)));
            let fresh = entries(0, &place(0, &after, None));
            assert!(
                moved(&seeded) <= RELOAD_KICKS + 8,
                "{} entries moved",
                moved(&seeded)
            );
            assert!(moved(&fresh) > afresh, "{} entries moved", moved(&fresh));
            assert_each_finds_its_lengths(0, &after, &seeded);
        }
    }

    /// A placement is what placing the same buckets from it makes again, so a reload that
    /// changes no bucket writes no `LEN_BITS` entry: after a first placement into empty
    /// maps, into unknown ones, and after a change, at loads where buckets share entries.
    #[test]
    fn placing_the_same_buckets_again_moves_nothing() {
        let empty: Table = vec![None; LEN_BITS_PER_SLOT as usize];
        for n in [
            LEN_BITS_PER_SLOT * 2 / 5,
            LEN_BITS_PER_SLOT * 3 / 4,
            LEN_BITS_PER_SLOT * 5 / 4,
        ] {
            let before = random_buckets(n);
            let mut after = before.clone();
            after.retain(|k, _| k.top[0] != 7);
            let mut bits = BucketBits::default();
            bits.set(V6_BUCKET_LEN, 40);
            for i in 0..64u8 {
                after.insert(
                    BucketKey {
                        group: 1,
                        family: AF_INET6 as u32,
                        top: [0xfd, 0, 1, i],
                    },
                    bits,
                );
            }
            let first = place(0, &before, Some(&empty));
            let cases = [
                (&before, first.clone()),
                (&before, place(0, &before, None)),
                (&after, place(0, &after, Some(&first))),
            ];
            for (compiled, placed) in cases {
                let again = place(0, compiled, Some(&placed));
                let moved = (0..LEN_BITS_PER_SLOT)
                    .filter(|&i| entry(&placed, i) != entry(&again, i))
                    .count();
                assert_eq!(moved, 0, "{n} buckets: {moved} entries moved");
                assert_each_finds_its_lengths(0, compiled, &entries(0, &again));
            }
        }
    }

    /// A reload's buckets move in proportion to the change: rounds of buckets gone, changed
    /// and new, at loads where buckets share entries; after each, every bucket finds its
    /// lengths, the entries said to change are all that changed (with what they held
    /// before), and the same buckets again change nothing.
    #[test]
    fn changed_buckets_move_only_their_entries() {
        for n in [LEN_BITS_PER_SLOT * 2 / 5, LEN_BITS_PER_SLOT * 5 / 4] {
            let mut buckets = random_buckets(n);
            let mut table = place(1, &buckets, None);
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for round in 0..6 {
                let old = SortedMap::from_map(buckets.clone());
                let keys: Vec<BucketKey> = buckets.keys().copied().collect();
                let mut changes = 0;
                for _ in 0..40 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = keys[(x % keys.len() as u64) as usize];
                    let mut bits = BucketBits::default();
                    bits.set(V6_BUCKET_LEN, V6_BUCKET_LEN + (x >> 40) as u8 % 97);
                    match x % 3 {
                        0 => {
                            buckets.remove(&k);
                        }
                        1 => {
                            buckets.insert(k, bits);
                        }
                        _ => {
                            let top = ((x >> 20) as u32).to_ne_bytes();
                            buckets.insert(BucketKey { top, ..k }, bits);
                        }
                    }
                    changes += 1;
                }
                let new = SortedMap::from_map(buckets.clone());
                let pre = table.clone();
                let changed = place_changes(1, &mut table, &old, &new);
                let first = LEN_BITS_PER_SLOT;
                for &(i, had) in &changed {
                    assert_eq!(entry(&pre, i - first), had, "round {round}: entry {i}");
                }
                let listed: BTreeSet<u32> = changed.iter().map(|(i, _)| i - first).collect();
                for i in 0..LEN_BITS_PER_SLOT {
                    if entry(&pre, i) != entry(&table, i) {
                        assert!(
                            listed.contains(&i),
                            "round {round}: entry {i} changed unsaid"
                        );
                    }
                }
                assert!(
                    listed.len() <= changes * (RELOAD_KICKS + 3),
                    "round {round}: {} entries for {changes} changes",
                    listed.len()
                );
                assert_each_finds_its_lengths(1, &buckets, &entries(1, &table));
                assert!(place_changes(1, &mut table, &new, &new).is_empty());
            }
        }
    }

    /// Every bucket finds at least its own lengths in its places, also where buckets share
    /// one (more buckets than places); a source whose bucket has no entry finds nothing,
    /// or what the buckets sharing its places have.
    #[test]
    fn every_bucket_finds_its_lengths_and_a_stranger_only_what_shares_its_place() {
        let compiled = random_buckets(LEN_BITS_PER_SLOT * 5 / 4);
        for slot in 0..2 {
            let placed = entries(slot, &place(slot, &compiled, None));
            let shared = placed.values().filter(|s| s.tag == BUCKET_SHARED).count();
            assert!(shared > 0, "the test must make buckets share places");
            assert_each_finds_its_lengths(slot, &compiled, &placed);
            let stranger = BucketKey {
                group: 7,
                family: AF_INET6 as u32,
                top: [0xfe, 0x80, 0, 1],
            };
            let ([a, b], tag) = bucket_place(slot_group(slot, 7), AF_INET6, stranger.top);
            for i in [a, b] {
                let got = placed
                    .get(&i)
                    .map(|s| s.lengths_for(tag))
                    .unwrap_or_default();
                match placed.get(&i) {
                    Some(s) if s.tag == BUCKET_SHARED => assert_eq!(got, s.bits),
                    _ => assert!(got.is_empty()),
                }
            }
        }
    }
}

//! Validated policy -> the entries of one slot of the policy maps (pure).

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use enforcer_common::{
    consts::{AF_INET, AF_INET6, MAX_ALLOW_ENTRIES, MAX_CGROUP_ENTRIES, MAX_GROUPS, PORT_FAILSAFE},
    maps::{
        mask_addr, AllowKey, BucketBits, BucketKey, GroupInfo, GROUP_ENFORCE, GROUP_V4_BUCKETS,
        GROUP_V6_BUCKETS, SLOT_ENFORCE, SLOT_REPORT_ALLOWED, V4_BUCKET_LEN, V6_BUCKET_LEN,
    },
    model::{policy::cgroup_level, Mode, Prefix, Protocol},
};

use super::{validate::parse_prefix, Entry, Policy};

/// The maps a policy compiles to, and the writer's copies of them: a 100,000-prefix policy
/// is hashed several times over in a reload (compiled, placed, diffed against the slot),
/// and with the standard SipHash that was most of the reload. Policies are the operator's
/// files, so the flooding resistance SipHash buys is not needed here.
pub type FastMap<K, V> = foldhash::HashMap<K, V>;

mod sorted;
pub use sorted::{merge_walk, SortedMap, Step};

/// Entries for one slot. Group ids here carry no slot bits; the writer adds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    pub slot_flags: u32,
    /// Event rate limits as bucket costs (see `SlotInfo`).
    pub burst: u32,
    pub rule_cost_ns: u64,
    pub global_cost_ns: u64,
    /// Indexed by `proto_idx << 16 | port`: 0, `PORT_FAILSAFE`, or group + 1.
    pub ports: Vec<u32>,
    pub groups: Vec<GroupInfo>,
    /// Allow entries (key.group is the group id).
    pub allow: SortedMap<AllowKey, Allowed>,
    /// (group, cgroup path); the writer resolves paths to cgroup ids.
    pub cgroups: FastMap<(u32, String), Allowed>,
    /// Prefix lengths under each source bucket of the bucketed groups (`LEN_BITS`).
    /// Shared: the writer keeps each slot's buckets, and a reload copies a pointer.
    pub buckets: Arc<SortedMap<BucketKey, BucketBits>>,
    /// Per group id, the names of its rules (None: an unused id). The next compile keeps
    /// these ids for the same sets of rules, so a reload rewrites only what changed.
    pub group_names: Vec<Option<Vec<String>>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("the policy needs {0} port groups (distinct sets of rules sharing a port); the limit is {MAX_GROUPS} port groups per policy")]
    TooManyGroups(usize),
    #[error("the policy needs {0} allow entries (each allowed prefix once per port group of its rule); the limit is {max} allow entries per policy", max = MAX_ALLOW_ENTRIES / 2)]
    TooManyPrefixes(usize),
    #[error("the policy needs {0} allowed cgroup entries (each allowed cgroup once per port group of its rule); the limit is {max} cgroup entries per policy", max = MAX_CGROUP_ENTRIES / 2)]
    TooManyCgroups(usize),
}

/// What an allow entry admits for: a rule, until a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub rule: u32,
    /// Seconds since the epoch when the entry lapses; 0: never. The writer turns it into
    /// the kernel's clock, so the programs stop honouring it on time by themselves.
    pub expires_unix: u64,
}

impl Allowed {
    /// The same entry from another rule of the group: the earlier rule keeps it, and it
    /// lasts as long as its longest-lived source.
    fn merge(&mut self, later: Allowed) {
        self.expires_unix = if self.expires_unix == 0 || later.expires_unix == 0 {
            0
        } else {
            self.expires_unix.max(later.expires_unix)
        };
    }
}

const PROTOS: [(Protocol, usize); 2] = [(Protocol::Tcp, 0), (Protocol::Udp, 1)];

fn covers(rule_proto: Protocol, table_proto: Protocol) -> bool {
    rule_proto == Protocol::Any || rule_proto == table_proto
}

pub fn compile(policy: &Policy) -> Result<Compiled, CompileError> {
    compile_after(policy, None)
}

/// Compiles `policy`, giving each set of rules the group id it had in `previous`.
pub fn compile_after(
    policy: &Policy,
    previous: Option<&Compiled>,
) -> Result<Compiled, CompileError> {
    let rules = &policy.verdict.rules;
    let mut ports = vec![0u32; 2 * 65536];
    // Each distinct set of rules covering some (protocol, port) becomes a group.
    let mut group_ids: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut group_sets: Vec<Vec<u32>> = Vec::new();
    for (proto, idx) in PROTOS {
        // Sweep the port space: rules enter at the start of a range, leave after its end.
        let mut enter: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut leave: HashMap<u32, Vec<u32>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            if !covers(r.protocol, proto) {
                continue;
            }
            for range in &r.ports {
                enter.entry(range.first as u32).or_default().push(i as u32);
                leave
                    .entry(range.last as u32 + 1)
                    .or_default()
                    .push(i as u32);
            }
        }
        // Ranges of one rule may overlap: count entries per rule.
        let mut active: HashMap<u32, u32> = HashMap::new();
        let mut current: Option<u32> = None;
        for port in 0u32..65536 {
            let changed = leave.contains_key(&port) || enter.contains_key(&port);
            for r in leave.get(&port).into_iter().flatten() {
                if let Some(n) = active.get_mut(r) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(r);
                    }
                }
            }
            for r in enter.get(&port).into_iter().flatten() {
                *active.entry(*r).or_default() += 1;
            }
            if changed {
                current = if active.is_empty() {
                    None
                } else {
                    let set: Vec<u32> = active
                        .keys()
                        .copied()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let next = group_sets.len() as u32;
                    let id = *group_ids.entry(set.clone()).or_insert_with(|| {
                        group_sets.push(set);
                        next
                    });
                    Some(id)
                };
            }
            if let Some(g) = current {
                ports[(idx << 16) | port as usize] = g + 1;
            }
        }
    }
    // Stable ids: a set of rules keeps the id it had before, new sets take free ids.
    let names_of = |set: &Vec<u32>| -> Vec<String> {
        let mut n: Vec<String> = set
            .iter()
            .map(|&r| rules[r as usize].name.clone())
            .collect();
        n.sort();
        n
    };
    let set_names: Vec<Vec<String>> = group_sets.iter().map(names_of).collect();
    let before: HashMap<&Vec<String>, u32> = previous
        .map(|p| {
            p.group_names
                .iter()
                .enumerate()
                .filter_map(|(id, n)| Some((n.as_ref()?, id as u32)))
                .collect()
        })
        .unwrap_or_default();
    let mut remap = vec![u32::MAX; group_sets.len()];
    let mut taken = std::collections::HashSet::new();
    for (i, n) in set_names.iter().enumerate() {
        if let Some(&id) = before.get(n) {
            if taken.insert(id) {
                remap[i] = id;
            }
        }
    }
    let mut free = (0u32..).filter(|id| !taken.contains(id));
    for id in remap.iter_mut().filter(|id| **id == u32::MAX) {
        *id = free.next().expect("unbounded");
    }
    let n_ids = remap.iter().max().map_or(0, |m| *m as usize + 1);
    if n_ids > MAX_GROUPS as usize {
        return Err(CompileError::TooManyGroups(n_ids));
    }
    for v in ports.iter_mut().filter(|v| **v != 0) {
        *v = remap[*v as usize - 1] + 1;
    }
    let mut group_names = vec![None; n_ids];
    for (i, n) in set_names.into_iter().enumerate() {
        group_names[remap[i] as usize] = Some(n);
    }
    for (proto, range) in &policy.verdict.failsafe {
        for (table_proto, idx) in PROTOS {
            if covers(*proto, table_proto) {
                for port in range.first..=range.last {
                    ports[(idx << 16) | port as usize] = PORT_FAILSAFE;
                }
            }
        }
    }

    // Deadlines of expiring entries and grants, by (rule, entry).
    let mut prefix_deadline: HashMap<(usize, Prefix), u64> = HashMap::new();
    let mut cgroup_deadline: HashMap<(usize, &str), u64> = HashMap::new();
    for e in &policy.expiring {
        match &e.entry {
            Entry::From(text) => {
                if let Ok(p) = parse_prefix(text) {
                    prefix_deadline.insert((e.rule, p), e.expires_unix);
                }
            }
            Entry::Cgroup(c) => {
                cgroup_deadline.insert((e.rule, c.as_str()), e.expires_unix);
            }
        }
    }
    let mut groups = vec![GroupInfo::default(); n_ids];
    let mut buckets: FastMap<BucketKey, BucketBits> = FastMap::default();
    let mut allow: FastMap<AllowKey, Allowed> = FastMap::default();
    let mut cgroups: FastMap<(u32, String), Allowed> = FastMap::default();
    for (i, set) in group_sets.iter().enumerate() {
        let g = remap[i];
        let mut info = GroupInfo {
            primary_rule: set[0],
            ..GroupInfo::default()
        };
        if set.iter().any(|&r| rules[r as usize].mode == Mode::Enforce) {
            info.flags |= GROUP_ENFORCE;
        }
        let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
        // Rules in file order: on a duplicate entry the earlier rule keeps it.
        for &r in set {
            let rule = &rules[r as usize];
            for p in &rule.allow_from {
                let (family, addr) = match p.addr {
                    IpAddr::V4(a) => {
                        v4.insert(p.len);
                        let mut b = [0u8; 16];
                        b[..4].copy_from_slice(&a.octets());
                        (AF_INET, b)
                    }
                    IpAddr::V6(a) => {
                        v6.insert(p.len);
                        (AF_INET6, a.octets())
                    }
                };
                let mut key = AllowKey {
                    group: g,
                    family_len: (family as u32) << 8 | p.len as u32,
                    addr,
                };
                mask_addr(&mut key.addr, p.len);
                let this = Allowed {
                    rule: r,
                    expires_unix: prefix_deadline.get(&(r as usize, *p)).copied().unwrap_or(0),
                };
                allow
                    .entry(key)
                    .and_modify(|a| a.merge(this))
                    .or_insert(this);
            }
            for c in &rule.allow_cgroups {
                info.cgroup_levels |= 1 << cgroup_level(c);
                let this = Allowed {
                    rule: r,
                    expires_unix: cgroup_deadline
                        .get(&(r as usize, c.as_str()))
                        .copied()
                        .unwrap_or(0),
                };
                cgroups
                    .entry((g, c.clone()))
                    .and_modify(|a| a.merge(this))
                    .or_insert(this);
            }
        }
        // Long lengths: index them by the source's leading bits (see GROUP_*_BUCKETS); the
        // walk then holds only the shorter ones. Longest first: the first hit is the
        // longest match.
        for (family, lens, base, flag) in [
            (AF_INET, &v4, V4_BUCKET_LEN, GROUP_V4_BUCKETS),
            (AF_INET6, &v6, V6_BUCKET_LEN, GROUP_V6_BUCKETS),
        ] {
            let bucketed = lens.range(base..).next().is_some();
            let walked = lens.iter().rev().filter(|&&l| !bucketed || l < base);
            let (n, slots) = if family == AF_INET {
                (&mut info.n_v4, &mut info.v4_lens[..])
            } else {
                (&mut info.n_v6, &mut info.v6_lens[..])
            };
            for (slot, len) in slots.iter_mut().zip(walked) {
                *slot = *len;
                *n += 1;
            }
            if bucketed {
                info.flags |= flag;
            }
        }
        groups[g as usize] = info;
    }
    // Every prefix at or above its family's bucket length is in a bucketed group: one pass
    // over them all (not one per group) files each under its bucket.
    for k in allow.keys() {
        let (family, len) = ((k.family_len >> 8) as u8, (k.family_len & 0xff) as u8);
        let base = if family == AF_INET {
            V4_BUCKET_LEN
        } else {
            V6_BUCKET_LEN
        };
        if len < base {
            continue;
        }
        let top_bytes = base as usize / 8;
        let mut top = [0u8; 4];
        top[..top_bytes].copy_from_slice(&k.addr[..top_bytes]);
        buckets
            .entry(BucketKey {
                group: k.group,
                family: family as u32,
                top,
            })
            .or_default()
            .set(base, len);
    }
    if allow.len() > (MAX_ALLOW_ENTRIES / 2) as usize {
        return Err(CompileError::TooManyPrefixes(allow.len()));
    }
    if cgroups.len() > (MAX_CGROUP_ENTRIES / 2) as usize {
        return Err(CompileError::TooManyCgroups(cgroups.len()));
    }
    let mut slot_flags = 0;
    if policy.verdict.mode == Mode::Enforce {
        slot_flags |= SLOT_ENFORCE;
    }
    if policy.report_allowed {
        slot_flags |= SLOT_REPORT_ALLOWED;
    }
    let cost = |rate: u32| {
        if rate == 0 {
            0
        } else {
            1_000_000_000 / rate as u64
        }
    };
    Ok(Compiled {
        slot_flags,
        burst: policy.rates.burst,
        rule_cost_ns: cost(policy.rates.per_rule),
        global_cost_ns: cost(policy.rates.global),
        ports,
        groups,
        allow: SortedMap::from_map(allow),
        cgroups,
        buckets: Arc::new(SortedMap::from_map(buckets)),
        group_names,
    })
}

#[cfg(test)]
mod tests;

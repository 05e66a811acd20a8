//! Kernel event -> audit line: names for rules, interfaces and cgroups, wall time. `json`
//! writes a packet event's line directly; `Record` (serde) stays the reference it matches.

mod json;

use json::{Piece, Stamp};

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use enforcer_common::event::PacketEvent;

#[cfg(test)]
use super::record::Record;
use crate::host;

/// Hashes the integer keys of the caches looked up for every event (generations,
/// interface indexes, cgroup ids: numbers the kernel or the daemon hands out, not chosen by
/// whoever sends packets), where SipHash would cost more than the rest of the lookup.
#[derive(Default)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n.into());
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// Rule names of the policies events may still refer to, by generation.
#[derive(Default)]
pub struct RuleNames {
    by_generation: IntMap<u64, Vec<Name>>,
}

impl RuleNames {
    /// Records the names of `generation`, forgetting generations older than the last few.
    pub fn insert(&mut self, generation: u64, names: Vec<String>) {
        let names = names
            .into_iter()
            .map(|n| Name {
                field: Piece::field(b",\"rule\":", &n),
                text: n.into(),
            })
            .collect();
        self.by_generation.insert(generation, names);
        self.by_generation.retain(|g, _| g + 8 > generation);
    }

    fn name(&self, generation: u64, rule: u32) -> Option<&Name> {
        self.by_generation.get(&generation)?.get(rule as usize)
    }
}

/// A name as filters see it, and as its line's field.
struct Name {
    text: Arc<str>,
    field: Piece,
}

/// How long a looked-up interface name is used: interfaces get renamed (udev renames
/// them as they appear), and a deleted one's index may come back with another name.
const IFNAME_TTL: Duration = Duration::from_secs(1);
/// Interface names remembered before stale ones are dropped.
const IFNAME_CACHE: usize = 1024;

/// Cgroup paths remembered; beyond this many ids the oldest entry goes.
const CGROUP_CACHE: usize = 4096;
/// An id not found (a cgroup made after the last walk, or gone) is looked up again only
/// after this long: at most one directory walk per id per second.
const CGROUP_RETRY: Duration = Duration::from_secs(1);
/// Directories one lookup walks at most.
const CGROUP_WALK: usize = 20_000;

/// Cgroup id -> path, bounded, with misses remembered for `CGROUP_RETRY`.
struct CgroupCache {
    entries: IntMap<u64, (Option<String>, Instant)>,
    /// Ids in the order they entered: the front is evicted first.
    order: VecDeque<u64>,
    capacity: usize,
}

impl CgroupCache {
    fn new(capacity: usize) -> Self {
        CgroupCache {
            entries: IntMap::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn insert(&mut self, id: u64, path: Option<String>, now: Instant) {
        if self.entries.insert(id, (path, now)).is_none() {
            self.order.push_back(id);
            while self.entries.len() > self.capacity {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.entries.remove(&old);
            }
        }
    }

    /// The path of `id`, from the cache or from `lookup` (called only for an id not seen,
    /// or not found more than `CGROUP_RETRY` ago).
    fn path(
        &mut self,
        id: u64,
        now: Instant,
        lookup: impl FnOnce() -> Option<String>,
    ) -> Option<&str> {
        let known = match self.entries.get(&id) {
            Some((Some(_), _)) => true,
            Some((None, at)) => now.duration_since(*at) < CGROUP_RETRY,
            None => false,
        };
        if !known {
            self.insert(id, lookup(), now);
        }
        self.entries.get(&id)?.0.as_deref()
    }

    #[cfg(test)]
    fn get(
        &mut self,
        id: u64,
        now: Instant,
        lookup: impl FnOnce() -> Option<String>,
    ) -> Option<String> {
        self.path(id, now, lookup).map(str::to_string)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

pub struct Enricher {
    pub rules: RuleNames,
    clock_offset_ns: i128,
    /// Interface names by index, with when they were looked up.
    ifnames: IntMap<u32, (Name, Instant)>,
    cgroup_paths: CgroupCache,
    cgroup_mount: Option<PathBuf>,
    stamp: Stamp,
}

impl Enricher {
    pub fn new(cgroup_mount: Option<PathBuf>) -> Self {
        Enricher {
            rules: RuleNames::default(),
            clock_offset_ns: crate::clock::monotonic_to_realtime_offset_ns(),
            ifnames: IntMap::default(),
            cgroup_paths: CgroupCache::new(CGROUP_CACHE),
            cgroup_mount,
            stamp: Stamp::default(),
        }
    }

    /// Tells the enricher a cgroup's path (learnt while resolving the policy).
    pub fn know_cgroup(&mut self, id: u64, path: String) {
        self.cgroup_paths.insert(id, Some(path), Instant::now());
    }

    /// The event as a `Record`: what `line` writes, through serde.
    #[cfg(test)]
    pub fn record(&mut self, ev: &PacketEvent) -> Record {
        use enforcer_common::{
            consts::{AF_INET, IPPROTO_TCP, IPPROTO_UDP, NO_RULE},
            reason::{Hook, Reason, Verdict},
        };
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let now = Instant::now();
        let (src, dst) = if ev.family == AF_INET {
            let a = |b: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])).to_string();
            (a(&ev.src), a(&ev.dst))
        } else {
            (
                IpAddr::V6(Ipv6Addr::from(ev.src)).to_string(),
                IpAddr::V6(Ipv6Addr::from(ev.dst)).to_string(),
            )
        };
        let proto = match ev.proto {
            IPPROTO_TCP => "tcp".to_string(),
            IPPROTO_UDP => "udp".to_string(),
            n => n.to_string(),
        };
        let iface =
            (ev.ifindex != 0).then(|| iface(&mut self.ifnames, ev.ifindex, now).text.to_string());
        let cgroup = (ev.cgroup_id != 0)
            .then(|| {
                let mount = self.cgroup_mount.as_deref();
                cgroup_path(&mut self.cgroup_paths, mount, ev.cgroup_id, now).map(str::to_string)
            })
            .flatten();
        let pid = (ev.pid_tgid != 0).then_some((ev.pid_tgid >> 32) as u32);
        let comm = (ev.pid_tgid != 0).then(|| String::from_utf8_lossy(comm(ev)).into_owned());
        Record {
            ts: crate::clock::rfc3339_nanos(ev.ts_ns as i128 + self.clock_offset_ns),
            event: "packet",
            verdict: Verdict::from_u8(ev.verdict).map(Verdict::name),
            reason: Reason::from_u8(ev.reason).map(Reason::name),
            rule: (ev.rule != NO_RULE)
                .then(|| {
                    self.rules
                        .name(ev.generation, ev.rule)
                        .map(|n| n.text.to_string())
                })
                .flatten(),
            hook: Hook::from_u8(ev.hook).map(Hook::name),
            proto: Some(proto),
            src: Some(src),
            sport: (ev.sport != 0).then_some(ev.sport),
            dst: Some(dst),
            dport: Some(ev.dport),
            iface,
            cgroup,
            pid,
            comm,
            len: (ev.pkt_len != 0).then_some(ev.pkt_len),
            policy: Some(ev.generation),
            ..Record::default()
        }
    }
}

/// The name of interface `ifindex`, looked up again once `IFNAME_TTL` old. (The caches
/// are reached through their fields so that a line can hold names while it writes.)
fn iface(ifnames: &mut IntMap<u32, (Name, Instant)>, ifindex: u32, now: Instant) -> &Name {
    let fresh = ifnames
        .get(&ifindex)
        .is_some_and(|(_, at)| now.duration_since(*at) < IFNAME_TTL);
    if !fresh {
        let name = host::if_name(ifindex).unwrap_or_else(|| format!("if{ifindex}"));
        let name = Name {
            field: Piece::field(b",\"iface\":", &name),
            text: name.into(),
        };
        ifnames.insert(ifindex, (name, now));
        if ifnames.len() > IFNAME_CACHE {
            // Interfaces come and go (veths): keep only what is still fresh.
            ifnames.retain(|_, (_, at)| now.duration_since(*at) < IFNAME_TTL);
        }
    }
    &ifnames[&ifindex].0
}

fn cgroup_path<'a>(
    paths: &'a mut CgroupCache,
    mount: Option<&std::path::Path>,
    id: u64,
    now: Instant,
) -> Option<&'a str> {
    let mount = mount?;
    paths.path(id, now, || host::find_cgroup(mount, "/", id, CGROUP_WALK))
}

/// The task's name: `comm` up to its first NUL.
fn comm(ev: &PacketEvent) -> &[u8] {
    let end = ev
        .comm
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(ev.comm.len());
    &ev.comm[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_cache_is_bounded_and_evicts_the_oldest() {
        let mut c = CgroupCache::new(3);
        let now = Instant::now();
        for id in 1..=5u64 {
            assert_eq!(
                c.get(id, now, || Some(format!("/c{id}"))),
                Some(format!("/c{id}"))
            );
            assert!(c.len() <= 3);
        }
        assert_eq!(c.len(), 3);
        // 1 and 2 went first; 3..5 are answered without a lookup.
        for id in 3..=5u64 {
            assert_eq!(
                c.get(id, now, || panic!("looked up {id} again")),
                Some(format!("/c{id}"))
            );
        }
        let mut walked = false;
        assert_eq!(
            c.get(1, now, || {
                walked = true;
                Some("/c1".into())
            }),
            Some("/c1".into())
        );
        assert!(walked, "an evicted id is looked up again");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_missing_cgroup_is_looked_up_at_most_once_a_second() {
        let mut c = CgroupCache::new(16);
        let t0 = Instant::now();
        let mut walks = 0;
        for ms in [0u64, 10, 500, 999] {
            assert_eq!(
                c.get(7, t0 + Duration::from_millis(ms), || {
                    walks += 1;
                    None
                }),
                None
            );
        }
        assert_eq!(walks, 1, "misses within a second cost one walk");
        assert_eq!(
            c.get(7, t0 + Duration::from_millis(1000), || {
                walks += 1;
                Some("/new".into())
            }),
            Some("/new".into())
        );
        assert_eq!(walks, 2);
        // Found paths stay (cgroup ids are not reused).
        assert_eq!(
            c.get(7, t0 + Duration::from_secs(60), || panic!("walked")),
            Some("/new".into())
        );
    }
}

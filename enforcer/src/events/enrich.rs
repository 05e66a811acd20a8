//! Kernel event -> audit record: names for rules, interfaces and cgroups, wall time.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use enforcer_common::{
    consts::{AF_INET, IPPROTO_TCP, IPPROTO_UDP, NO_RULE},
    event::PacketEvent,
    reason::{Hook, Reason, Verdict},
};

use super::record::Record;
use crate::clock::rfc3339_nanos as rfc3339;
use crate::host;

/// Rule names of the policies events may still refer to, by generation.
#[derive(Default)]
pub struct RuleNames {
    by_generation: HashMap<u64, Arc<Vec<String>>>,
}

impl RuleNames {
    /// Records the names of `generation`, forgetting generations older than the last few.
    pub fn insert(&mut self, generation: u64, names: Vec<String>) {
        self.by_generation.insert(generation, Arc::new(names));
        self.by_generation.retain(|g, _| g + 8 > generation);
    }

    fn name(&self, generation: u64, rule: u32) -> Option<String> {
        self.by_generation
            .get(&generation)?
            .get(rule as usize)
            .cloned()
    }
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
    entries: HashMap<u64, (Option<String>, Instant)>,
    /// Ids in the order they entered: the front is evicted first.
    order: VecDeque<u64>,
    capacity: usize,
}

impl CgroupCache {
    fn new(capacity: usize) -> Self {
        CgroupCache {
            entries: HashMap::new(),
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
    fn get(
        &mut self,
        id: u64,
        now: Instant,
        lookup: impl FnOnce() -> Option<String>,
    ) -> Option<String> {
        match self.entries.get(&id) {
            Some((Some(path), _)) => return Some(path.clone()),
            Some((None, at)) if now.duration_since(*at) < CGROUP_RETRY => return None,
            _ => {}
        }
        let found = lookup();
        self.insert(id, found.clone(), now);
        found
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
    ifnames: HashMap<u32, (String, Instant)>,
    cgroup_paths: CgroupCache,
    cgroup_mount: Option<PathBuf>,
}

impl Enricher {
    pub fn new(cgroup_mount: Option<PathBuf>) -> Self {
        Enricher {
            rules: RuleNames::default(),
            clock_offset_ns: crate::clock::monotonic_to_realtime_offset_ns(),
            ifnames: HashMap::new(),
            cgroup_paths: CgroupCache::new(CGROUP_CACHE),
            cgroup_mount,
        }
    }

    /// Tells the enricher a cgroup's path (learnt while resolving the policy).
    pub fn know_cgroup(&mut self, id: u64, path: String) {
        self.cgroup_paths.insert(id, Some(path), Instant::now());
    }

    pub fn record(&mut self, ev: &PacketEvent) -> Record {
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
        let iface = (ev.ifindex != 0).then(|| {
            let now = Instant::now();
            match self.ifnames.get(&ev.ifindex) {
                Some((name, at)) if now.duration_since(*at) < IFNAME_TTL => name.clone(),
                _ => {
                    let name =
                        host::if_name(ev.ifindex).unwrap_or_else(|| format!("if{}", ev.ifindex));
                    self.ifnames.insert(ev.ifindex, (name.clone(), now));
                    if self.ifnames.len() > IFNAME_CACHE {
                        // Interfaces come and go (veths): keep only what is still fresh.
                        self.ifnames
                            .retain(|_, (_, at)| now.duration_since(*at) < IFNAME_TTL);
                    }
                    name
                }
            }
        });
        let cgroup = (ev.cgroup_id != 0)
            .then(|| self.cgroup_path(ev.cgroup_id))
            .flatten();
        let pid = (ev.pid_tgid != 0).then_some((ev.pid_tgid >> 32) as u32);
        let comm = (ev.pid_tgid != 0).then(|| {
            let end = ev
                .comm
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(ev.comm.len());
            String::from_utf8_lossy(&ev.comm[..end]).into_owned()
        });
        Record {
            ts: rfc3339(ev.ts_ns as i128 + self.clock_offset_ns),
            event: "packet",
            verdict: Verdict::from_u8(ev.verdict).map(Verdict::name),
            reason: Reason::from_u8(ev.reason).map(Reason::name),
            rule: (ev.rule != NO_RULE)
                .then(|| self.rules.name(ev.generation, ev.rule))
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

    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        let mount = self.cgroup_mount.as_ref()?;
        self.cgroup_paths.get(id, Instant::now(), || {
            host::find_cgroup(mount, "/", id, CGROUP_WALK)
        })
    }
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

//! Kernel event -> audit record: names for rules, interfaces and cgroups, wall time.

use std::{
    collections::HashMap,
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

use super::record::{rfc3339, Record};
use crate::kernel::host;

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

pub struct Enricher {
    pub rules: RuleNames,
    clock_offset_ns: i128,
    /// Interface names by index, with when they were looked up.
    ifnames: HashMap<u32, (String, Instant)>,
    cgroup_paths: HashMap<u64, Option<String>>,
    cgroup_mount: Option<PathBuf>,
}

impl Enricher {
    pub fn new(cgroup_mount: Option<PathBuf>) -> Self {
        Enricher {
            rules: RuleNames::default(),
            clock_offset_ns: host::monotonic_to_realtime_offset_ns(),
            ifnames: HashMap::new(),
            cgroup_paths: HashMap::new(),
            cgroup_mount,
        }
    }

    /// Tells the enricher a cgroup's path (learnt while resolving the policy).
    pub fn know_cgroup(&mut self, id: u64, path: String) {
        self.cgroup_paths.insert(id, Some(path));
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
        let mount = self.cgroup_mount.clone()?;
        self.cgroup_paths
            .entry(id)
            // Bounded walk: a miss is remembered, so an unknown id costs one search.
            .or_insert_with(|| host::find_cgroup(&mount, "/", id, 20_000))
            .clone()
    }
}

//! The host facts the lints judge a policy against (`crate::policy::lint::HostFacts`).

use enforcer_common::model::PortRange;

use crate::policy::{
    lint::{CgroupFacts, HostFacts},
    ports::normalize,
};

impl HostFacts {
    /// Reads the facts of this host (and of the caller's network namespace).
    pub fn gather() -> HostFacts {
        let mut facts = HostFacts {
            now_unix: crate::clock::now_unix(),
            ..HostFacts::default()
        };
        match read_ephemeral_range() {
            Ok(r) => facts.ephemeral = Some(r),
            Err(e) => facts
                .notes
                .push(format!("ephemeral port range not checked: {e:#}")),
        }
        facts.reserved = read_reserved_ports().unwrap_or_default();
        match crate::host::cgroup2_mount() {
            Ok(mount) => {
                let m = mount.clone();
                facts.cgroups = Some(CgroupFacts {
                    mount,
                    exists: Box::new(move |p| crate::host::cgroup_id(&m, p).is_some()),
                });
            }
            Err(e) => facts.notes.push(format!("cgroups not checked: {e:#}")),
        }
        match crate::host::local_addrs() {
            Ok(a) => facts.local_addrs = a.into_iter().collect(),
            Err(e) => facts
                .notes
                .push(format!("this host's addresses not checked: {e}")),
        }
        facts.ethernet_ifaces = crate::host::netlink::links()
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.arphrd == crate::host::netlink::ARPHRD_ETHER)
            .map(|l| l.name)
            .collect();
        match super::sockets::listeners() {
            Ok(s) => {
                facts.sshd_ports = s.sshd_tcp_ports();
                facts.listeners = s.listeners.clone();
                if facts.sshd_ports.is_empty() && s.unreadable_processes > 0 {
                    facts.notes.push(format!(
                        "sshd's ports not checked for {} processes whose sockets could not be read (run as root)",
                        s.unreadable_processes
                    ));
                }
            }
            Err(e) => facts.notes.push(format!("sshd's ports not checked: {e:#}")),
        }
        facts
    }
}

/// net.ipv4.ip_local_port_range of the caller's network namespace.
pub fn read_ephemeral_range() -> anyhow::Result<PortRange> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
    parse_ephemeral_range(&text)
        .ok_or_else(|| anyhow::anyhow!("{path}: cannot parse {:?}", text.trim()))
}

pub fn parse_ephemeral_range(text: &str) -> Option<PortRange> {
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>().ok());
    let (first, last) = (it.next()??, it.next()??);
    (first <= last).then_some(PortRange { first, last })
}

/// net.ipv4.ip_local_reserved_ports ("8080,9000-9010", or empty).
pub fn read_reserved_ports() -> anyhow::Result<Vec<PortRange>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")?;
    Ok(parse_reserved_ports(&text))
}

pub fn parse_reserved_ports(text: &str) -> Vec<PortRange> {
    let ranges = text
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let (first, last) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (first <= last).then_some(PortRange { first, last })
        });
    normalize(ranges.collect())
}

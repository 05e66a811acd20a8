//! What the lints know about the host, as data: gathered by `HostFacts::gather`
//! (`crate::host::facts`), made up in tests.

use std::path::PathBuf;

use enforcer_common::model::PortRange;

use crate::policy::exposure::Listener;

/// Which cgroups exist, below the cgroup v2 mount.
pub struct CgroupFacts {
    /// The cgroup v2 mount (named in messages).
    pub mount: PathBuf,
    /// Whether the cgroup with this normalized path ("/a/b") exists now.
    pub exists: Box<dyn Fn(&str) -> bool>,
}

/// What the lints need to know about the host. Unknown facts are `None` (or empty) and
/// their lints stay silent.
#[derive(Default)]
pub struct HostFacts {
    /// net.ipv4.ip_local_port_range: where outgoing connections take their local ports.
    pub ephemeral: Option<PortRange>,
    /// net.ipv4.ip_local_reserved_ports: taken out of the ephemeral range.
    pub reserved: Vec<PortRange>,
    pub cgroups: Option<CgroupFacts>,
    /// TCP ports a process named sshd listens on, in this network namespace.
    pub sshd_ports: Vec<u16>,
    /// What could not be found out, for people ("not root: ...").
    pub notes: Vec<String>,
    /// Now, in seconds since the epoch: allow entries that expired before it have lapsed.
    pub now_unix: u64,
    /// This host's own addresses (loopback's are always counted too).
    pub local_addrs: Vec<std::net::IpAddr>,
    /// The listening sockets, for the coverage gaps.
    pub listeners: Vec<Listener>,
    /// The Ethernet interfaces (XDP can attach only to those).
    pub ethernet_ifaces: Vec<String>,
}

//! The verdict-relevant part of a validated policy.

use alloc::{string::String, vec::Vec};
use core::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Enforce,
    Audit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Any,
}

impl Protocol {
    /// Whether this protocol covers the IP protocol number `proto`.
    pub fn covers(self, proto: u8) -> bool {
        use crate::consts::{IPPROTO_TCP, IPPROTO_UDP};
        match self {
            Protocol::Tcp => proto == IPPROTO_TCP,
            Protocol::Udp => proto == IPPROTO_UDP,
            Protocol::Any => proto == IPPROTO_TCP || proto == IPPROTO_UDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Any => "any",
        }
    }
}

/// Inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// An address prefix; the address has no bits set beyond `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn contains(self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len as u32)
                };
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len as u32)
                };
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl core::fmt::Display for Prefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
    pub allow_from: Vec<Prefix>,
    /// Normalized cgroup v2 paths ("/" or "/a/b", no trailing slash).
    pub allow_cgroups: Vec<String>,
    /// The rule's own mode, or the policy's when the rule names none.
    pub mode: Mode,
}

impl Rule {
    pub fn covers(&self, proto: u8, port: u16) -> bool {
        self.protocol.covers(proto) && self.ports.iter().any(|r| r.contains(port))
    }
}

/// What the verdict depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictPolicy {
    /// Global mode: decides drops that no rule decides (malformed packets, bad fragments).
    pub mode: Mode,
    pub rules: Vec<Rule>,
    /// Ports never judged, checked before any rule.
    pub failsafe: Vec<(Protocol, PortRange)>,
}

impl VerdictPolicy {
    pub fn is_failsafe(&self, proto: u8, port: u16) -> bool {
        self.failsafe
            .iter()
            .any(|(p, r)| p.covers(proto) && r.contains(port))
    }
}

/// Whether `path` is `ancestor` or below it.
pub fn cgroup_within(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return true;
    }
    path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// Depth of a normalized cgroup path: "/" is 0, "/a" is 1, "/a/b" is 2.
pub fn cgroup_level(path: &str) -> usize {
    if path == "/" {
        0
    } else {
        path.matches('/').count()
    }
}

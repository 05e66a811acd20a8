//! Internal-port exposure, judged: the host's listening sockets (read by
//! `crate::host::sockets`) against a policy and where its programs attach. Pure; the
//! text form is `render`.

mod render;

use std::{collections::BTreeMap, net::IpAddr};

use enforcer_common::model::{policy::cgroup_within, PortRange, Protocol};
use serde::Serialize;

pub use render::render;

use super::{
    ports::{concrete, ephemeral_overlap, fmt_range, judged_ports},
    Policy,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Transport::Tcp => Protocol::Tcp,
            Transport::Udp => Protocol::Udp,
        }
    }
}

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Owner {
    pub pid: i32,
    /// The process's comm (/proc/PID/comm).
    pub name: String,
    /// Its cgroup v2 path (/proc/PID/cgroup), "" when unknown.
    pub cgroup: String,
}

/// A TCP socket in LISTEN state, or an unconnected bound UDP socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub proto: Transport,
    pub addr: IpAddr,
    pub port: u16,
    pub inode: u64,
    pub uid: u32,
    pub owners: Vec<Owner>,
    /// No process holds it, and every process's descriptors were read: the kernel's own.
    pub kernel: bool,
}

impl Listener {
    /// A UDP socket of the kernel's own: a tunnel's (VXLAN, GENEVE, WireGuard, FOU, L2TP).
    /// The kernel hands its packets to the tunnel before any socket filter runs, so the
    /// cgroup ingress program never sees them.
    pub fn kernel_tunnel(&self) -> bool {
        self.proto == Transport::Udp && self.kernel
    }

    /// Bound to loopback only (127.0.0.0/8, ::1, or ::ffff:127.x): only this network
    /// namespace's own processes reach it.
    pub fn loopback_only(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => a.is_loopback(),
            IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
        }
    }
}

/// Where the programs are attached: what decides which listeners they can guard.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    /// The cgroup the cgroup programs are attached to (normalized path).
    pub cgroup: String,
    /// The interfaces XDP is (or would be) attached to.
    pub xdp: Vec<String>,
}

impl Coverage {
    fn xdp_guard(&self) -> String {
        if self.xdp.is_empty() {
            "nothing guards it (XDP is attached to no interface)".into()
        } else {
            format!("XDP on {} guards it", self.xdp.join(", "))
        }
    }

    /// Why a protected listener is guarded less than its rule says, if it is.
    fn gap(&self, l: &Listener) -> Option<String> {
        if l.kernel_tunnel() {
            return Some(format!(
                "a kernel tunnel socket (VXLAN, GENEVE, WireGuard, FOU or L2TP): cgroup ingress never sees its packets; {} from the interfaces its packets arrive on",
                self.xdp_guard()
            ));
        }
        let outside: Vec<&Owner> = l
            .owners
            .iter()
            .filter(|o| !o.cgroup.is_empty() && !cgroup_within(&o.cgroup, &self.cgroup))
            .collect();
        if outside.is_empty() || outside.len() < l.owners.len() {
            return None;
        }
        let xdp = if self.xdp.is_empty() {
            "nothing guards it (XDP is attached to no interface)".to_string()
        } else {
            format!("guarded by XDP on {} only", self.xdp.join(", "))
        };
        Some(format!(
            "its process is in cgroup {}, outside the attached cgroup {}: {xdp}; local senders outside {} are not judged",
            outside[0].cgroup, self.cgroup, self.cgroup
        ))
    }
}

/// How a listening socket stands under the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A rule judges its port.
    Protected,
    /// A rule covers its port, but the programs cannot judge all its traffic (`gap` says
    /// why): a listener outside the attached cgroup, or a kernel tunnel socket.
    Partial,
    /// Its port is a failsafe port: never judged, open to all by design.
    Failsafe,
    /// Unprotected, but bound to loopback only.
    Loopback,
    /// Unprotected and bound to a wildcard or non-loopback address: reachable by anyone
    /// who can reach the host.
    Exposed,
}

#[derive(Clone, Debug, Serialize)]
pub struct SocketFinding {
    pub proto: Transport,
    pub addr: IpAddr,
    pub port: u16,
    pub processes: Vec<Owner>,
    pub status: Status,
    /// The rules protecting the port.
    pub rules: Vec<String>,
    /// For `Partial`: what is not guarded, and what still guards it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
}

impl SocketFinding {
    /// One line naming the socket and its gap, for `check` and `status`.
    pub fn gap_line(&self) -> Option<String> {
        let gap = self.gap.as_ref()?;
        Some(format!(
            "{}/{} on {} ({}), rule {}: {gap}",
            self.proto.name(),
            self.port,
            self.addr,
            processes(&self.processes),
            self.rules.join(", ")
        ))
    }
}

/// A rule's ports of one protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortFinding {
    pub rule: String,
    pub proto: Transport,
    pub first: u16,
    pub last: u16,
}

impl PortFinding {
    pub fn ports(&self) -> String {
        format!(
            "{}/{}",
            self.proto.name(),
            fmt_range(PortRange {
                first: self.first,
                last: self.last
            })
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct EphemeralRange {
    pub first: u16,
    pub last: u16,
    pub reserved: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The policy file judged against, if any.
    pub policy: Option<String>,
    pub ephemeral_ports: Option<EphemeralRange>,
    /// Every listening socket, with its status.
    pub sockets: Vec<SocketFinding>,
    /// The exposed ones (status "exposed").
    pub exposed: Vec<SocketFinding>,
    /// Protected ports (ranges) on which nothing listens, on any address.
    pub idle_protected: Vec<PortFinding>,
    /// Protected ports inside the ephemeral port range.
    pub ephemeral: Vec<PortFinding>,
}

/// Judges `sockets` against `policy` (none: no port is protected or failsafe), with the
/// programs attached as `coverage` says (default: the policy's own cgroup, no XDP).
pub fn report(
    policy: Option<&Policy>,
    sockets: &[Listener],
    coverage: Option<&Coverage>,
    ephemeral: Option<PortRange>,
    reserved: &[PortRange],
) -> Report {
    let own;
    let coverage = match (coverage, policy) {
        (Some(c), _) => c,
        (None, p) => {
            own = Coverage {
                cgroup: p.map_or_else(|| "/".into(), |p| p.attach.cgroup.clone()),
                xdp: Vec::new(),
            };
            &own
        }
    };
    let mut found = Vec::new();
    for l in sockets {
        let (rules, failsafe) = match policy {
            None => (Vec::new(), false),
            Some(p) => {
                let proto = l.proto.protocol();
                let rules: Vec<String> = p
                    .verdict
                    .rules
                    .iter()
                    .filter(|r| {
                        judged_ports(p, r, proto)
                            .iter()
                            .any(|pr| pr.contains(l.port))
                    })
                    .map(|r| r.name.clone())
                    .collect();
                let failsafe = p
                    .verdict
                    .failsafe
                    .iter()
                    .any(|(fp, r)| concrete(*fp).contains(&proto) && r.contains(l.port));
                (rules, failsafe)
            }
        };
        let gap = (!rules.is_empty()).then(|| coverage.gap(l)).flatten();
        let status = if gap.is_some() {
            Status::Partial
        } else if !rules.is_empty() {
            Status::Protected
        } else if failsafe {
            Status::Failsafe
        } else if l.loopback_only() {
            Status::Loopback
        } else {
            Status::Exposed
        };
        found.push(SocketFinding {
            proto: l.proto,
            addr: l.addr,
            port: l.port,
            processes: l.owners.clone(),
            status,
            rules,
            gap,
        });
    }
    let mut idle = Vec::new();
    let mut in_ephemeral = Vec::new();
    if let Some(p) = policy {
        for r in &p.verdict.rules {
            for &proto in concrete(r.protocol) {
                let t = if proto == Protocol::Tcp {
                    Transport::Tcp
                } else {
                    Transport::Udp
                };
                for range in judged_ports(p, r, proto) {
                    if !sockets
                        .iter()
                        .any(|l| l.proto == t && range.contains(l.port))
                    {
                        idle.push(PortFinding {
                            rule: r.name.clone(),
                            proto: t,
                            first: range.first,
                            last: range.last,
                        });
                    }
                }
            }
            if let Some(e) = ephemeral {
                for (proto, ranges) in ephemeral_overlap(p, r, e, reserved) {
                    let t = if proto == Protocol::Tcp {
                        Transport::Tcp
                    } else {
                        Transport::Udp
                    };
                    for range in ranges {
                        in_ephemeral.push(PortFinding {
                            rule: r.name.clone(),
                            proto: t,
                            first: range.first,
                            last: range.last,
                        });
                    }
                }
            }
        }
    }
    Report {
        policy: policy.map(|p| p.path.display().to_string()),
        ephemeral_ports: ephemeral.map(|e| EphemeralRange {
            first: e.first,
            last: e.last,
            reserved: reserved.iter().map(|r| fmt_range(*r)).collect(),
        }),
        exposed: found
            .iter()
            .filter(|f| f.status == Status::Exposed)
            .cloned()
            .collect(),
        sockets: found,
        idle_protected: idle,
        ephemeral: in_ephemeral,
    }
}

fn processes(v: &[Owner]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    // One process name, many pids (forked workers): name[pid,pid].
    let mut by_name: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for o in v {
        by_name.entry(&o.name).or_default().push(o.pid);
    }
    by_name
        .iter()
        .map(|(n, pids)| {
            format!(
                "{n}[{}]",
                pids.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn l(proto: Transport, addr: &str, port: u16, name: &str) -> Listener {
        Listener {
            proto,
            addr: addr.parse().unwrap(),
            port,
            inode: 1,
            uid: 0,
            kernel: false,
            owners: vec![Owner {
                pid: 10,
                name: name.into(),
                cgroup: "/".into(),
            }],
        }
    }

    const POLICY: &str = "[[rule]]\nname = \"db\"\nprotocol = \"tcp\"\nports = [5432, 40000]\nallow_from = [\"10.0.0.0/8\"]\n\
                          [[rule]]\nname = \"dns\"\nports = [53]\nallow_from = [\"10.0.0.0/8\"]\n";

    #[test]
    fn sockets_are_judged_against_the_policy() {
        let p = crate::policy::parse_str(Path::new("p.toml"), POLICY).unwrap();
        let socks = [
            l(Transport::Tcp, "0.0.0.0", 22, "sshd"),
            l(Transport::Tcp, "::", 5432, "postgres"),
            l(Transport::Tcp, "0.0.0.0", 8080, "web"),
            l(Transport::Tcp, "10.0.0.5", 8081, "web"),
            l(Transport::Tcp, "127.0.0.1", 9000, "local"),
            l(Transport::Tcp, "::ffff:127.0.0.1", 9001, "local"),
            l(Transport::Udp, "0.0.0.0", 5432, "odd"),
        ];
        let r = report(
            Some(&p),
            &socks,
            None,
            Some(PortRange {
                first: 32768,
                last: 60999,
            }),
            &[],
        );
        let st: Vec<(u16, Status)> = r.sockets.iter().map(|f| (f.port, f.status)).collect();
        assert_eq!(
            st,
            vec![
                (22, Status::Failsafe),
                (5432, Status::Protected),
                (8080, Status::Exposed),
                (8081, Status::Exposed),
                (9000, Status::Loopback),
                (9001, Status::Loopback),
                (5432, Status::Exposed),
            ]
        );
        assert_eq!(r.sockets[1].rules, vec!["db"]);
        assert_eq!(r.exposed.len(), 3);
        let idle: Vec<String> = r
            .idle_protected
            .iter()
            .map(|f| format!("{} {}", f.rule, f.ports()))
            .collect();
        assert_eq!(idle, vec!["db tcp/40000", "dns tcp/53", "dns udp/53"]);
        let eph: Vec<String> = r
            .ephemeral
            .iter()
            .map(|f| format!("{} {}", f.rule, f.ports()))
            .collect();
        assert_eq!(eph, vec!["db tcp/40000"]);
        let text = render(&r);
        assert!(text.contains("EXPOSED"), "{text}");
        assert!(text.contains("web[10]"), "{text}");
        assert!(text.contains("3 exposed"), "{text}");
    }

    #[test]
    fn without_a_policy_every_reachable_socket_is_exposed() {
        let socks = [
            l(Transport::Tcp, "0.0.0.0", 22, "sshd"),
            l(Transport::Udp, "::1", 53, "dns"),
        ];
        let r = report(None, &socks, None, None, &[]);
        assert_eq!(r.exposed.len(), 1);
        assert_eq!(r.sockets[1].status, Status::Loopback);
        assert!(render(&r).contains("none given"));
    }

    #[test]
    fn gaps_are_said_out_loud() {
        let text = POLICY.replace(
            "[[rule]]\nname = \"db\"",
            "[attach]\ncgroup = \"/srv\"\n[[rule]]\nname = \"db\"",
        );
        let p = crate::policy::parse_str(Path::new("p.toml"), &text).unwrap();
        let mut inside = l(Transport::Tcp, "::", 5432, "postgres");
        inside.owners[0].cgroup = "/srv/pg".into();
        let mut outside = l(Transport::Tcp, "0.0.0.0", 5432, "rogue");
        outside.owners[0].cgroup = "/user.slice".into();
        let mut tunnel = l(Transport::Udp, "0.0.0.0", 53, "");
        tunnel.kernel = true;
        tunnel.owners.clear();
        let socks = [inside, outside, tunnel];
        let none = Coverage {
            cgroup: "/srv".into(),
            xdp: vec![],
        };
        let r = report(Some(&p), &socks, Some(&none), None, &[]);
        let st: Vec<Status> = r.sockets.iter().map(|f| f.status).collect();
        assert_eq!(
            st,
            vec![Status::Protected, Status::Partial, Status::Partial]
        );
        let lines: Vec<String> = r.sockets.iter().filter_map(|f| f.gap_line()).collect();
        assert!(
            lines[0].contains("cgroup /user.slice, outside the attached cgroup /srv"),
            "{lines:?}"
        );
        assert!(lines[0].contains("nothing guards it"), "{lines:?}");
        assert!(
            lines[1].contains("kernel tunnel socket") && lines[1].contains("nothing guards it"),
            "{lines:?}"
        );
        let xdp = Coverage {
            cgroup: "/srv".into(),
            xdp: vec!["eth0".into()],
        };
        let r = report(Some(&p), &socks, Some(&xdp), None, &[]);
        let lines: Vec<String> = r.sockets.iter().filter_map(|f| f.gap_line()).collect();
        assert!(
            lines[0]
                .contains("guarded by XDP on eth0 only; local senders outside /srv are not judged"),
            "{lines:?}"
        );
        assert!(lines[1].contains("XDP on eth0 guards it"), "{lines:?}");
        assert!(render(&r).contains("PARTLY"));
    }
}

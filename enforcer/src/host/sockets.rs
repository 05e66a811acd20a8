//! The listening sockets of the caller's network namespace (procfs) and the processes
//! that hold them (/proc/PID/fd); where a policy's programs attach on this host.

use std::collections::HashMap;

use anyhow::Context as _;
use procfs::{
    net::{TcpState, UdpState},
    process::FDTarget,
};

use crate::policy::{
    exposure::{Coverage, Listener, Owner, Transport},
    Policy,
};

/// The listening sockets of the caller's network namespace.
pub struct Sockets {
    pub listeners: Vec<Listener>,
    /// Processes whose descriptors could not be read (not root): their sockets show no owner.
    pub unreadable_processes: usize,
}

impl Sockets {
    /// The TCP ports a process named "sshd" listens on.
    pub fn sshd_tcp_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .listeners
            .iter()
            .filter(|l| l.proto == Transport::Tcp && l.owners.iter().any(|o| o.name == "sshd"))
            .map(|l| l.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Reads /proc/net/{tcp,tcp6,udp,udp6} (the caller's network namespace) and maps socket
/// inodes to processes through /proc/PID/fd.
pub fn listeners() -> anyhow::Result<Sockets> {
    let mut out = Vec::new();
    for (table, entries) in [
        ("/proc/net/tcp", procfs::net::tcp()),
        ("/proc/net/tcp6", procfs::net::tcp6()),
    ] {
        let entries = match entries {
            Ok(e) => e,
            // No IPv6 in this kernel or namespace.
            Err(_) if table.ends_with('6') => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {table}")),
        };
        out.extend(
            entries
                .into_iter()
                .filter(|e| e.state == TcpState::Listen)
                .map(|e| Listener {
                    proto: Transport::Tcp,
                    addr: e.local_address.ip(),
                    port: e.local_address.port(),
                    inode: e.inode,
                    uid: e.uid,
                    owners: Vec::new(),
                    kernel: false,
                }),
        );
    }
    for (table, entries) in [
        ("/proc/net/udp", procfs::net::udp()),
        ("/proc/net/udp6", procfs::net::udp6()),
    ] {
        let entries = match entries {
            Ok(e) => e,
            Err(_) if table.ends_with('6') => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {table}")),
        };
        // A connected UDP socket talks to one peer (a client); an unconnected bound one
        // takes datagrams from anyone.
        out.extend(
            entries
                .into_iter()
                .filter(|e| {
                    e.state != UdpState::Established
                        && e.remote_address.port() == 0
                        && e.local_address.port() != 0
                })
                .map(|e| Listener {
                    proto: Transport::Udp,
                    addr: e.local_address.ip(),
                    port: e.local_address.port(),
                    inode: e.inode,
                    uid: e.uid,
                    owners: Vec::new(),
                    kernel: false,
                }),
        );
    }
    let (owners, unreadable_processes) = socket_owners();
    for l in &mut out {
        match owners.get(&l.inode) {
            Some(o) => l.owners = o.clone(),
            None => l.kernel = unreadable_processes == 0,
        }
    }
    out.sort_by_key(|l| (l.proto, l.port, l.addr));
    Ok(Sockets {
        listeners: out,
        unreadable_processes,
    })
}

/// Where `policy`'s programs attach on this host: its cgroup, and the Ethernet interfaces
/// (this network namespace's) its names and globs match.
pub fn coverage_on_host(policy: &Policy) -> Coverage {
    let links = crate::host::netlink::links().unwrap_or_default();
    Coverage {
        cgroup: policy.attach.cgroup.clone(),
        xdp: links
            .into_iter()
            .filter(|l| l.arphrd == crate::host::netlink::ARPHRD_ETHER)
            .filter(|l| {
                policy
                    .attach
                    .interfaces
                    .iter()
                    .any(|p| crate::policy::values::glob_match(p, &l.name))
            })
            .map(|l| l.name)
            .collect(),
    }
}

/// socket inode -> the processes holding it; and how many processes could not be read.
fn socket_owners() -> (HashMap<u64, Vec<Owner>>, usize) {
    let mut map: HashMap<u64, Vec<Owner>> = HashMap::new();
    let mut unreadable = 0;
    let Ok(procs) = procfs::process::all_processes() else {
        return (map, 0);
    };
    for p in procs.flatten() {
        let fds = match p.fd() {
            Ok(f) => f,
            Err(procfs::ProcError::PermissionDenied(_)) => {
                unreadable += 1;
                continue;
            }
            // Gone meanwhile, or a kernel thread.
            Err(_) => continue,
        };
        let mut who = None;
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                let (name, cgroup) = who.get_or_insert_with(|| {
                    let name = std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                        .map(|s| s.trim_end().to_string())
                        .unwrap_or_default();
                    (name, cgroup_of(p.pid))
                });
                let owners = map.entry(inode).or_default();
                if !owners.iter().any(|o| o.pid == p.pid) {
                    owners.push(Owner {
                        pid: p.pid,
                        name: name.clone(),
                        cgroup: cgroup.clone(),
                    });
                }
            }
        }
    }
    for v in map.values_mut() {
        v.sort();
    }
    (map, unreadable)
}

/// A process's cgroup v2 path ("0::/a/b" in /proc/PID/cgroup).
fn cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
        })
        .unwrap_or_default()
}

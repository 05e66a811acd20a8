//! The verdict: what a hook decides for a parsed packet.

use core::net::IpAddr;

use super::parse::{Parsed, L4};
use super::policy::{cgroup_level, cgroup_within, Mode, VerdictPolicy};
use crate::reason::{Hook, Reason, Verdict};

/// How a packet reached a receiving hook: the path decides which remembered flows it may
/// ride on, never its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Over loopback: sent by a process of the host's own namespace (cgroup ingress only;
    /// XDP is never attached to loopback).
    Loopback,
    /// Over the host-side device of the network namespace with this cookie (a container's
    /// veth): only flows sent from that namespace ride on it.
    Namespace(u64),
    /// Any other device (a NIC, a tunnel, a bridge): no remembered flow applies.
    Other,
}

/// A flow a local sender's socket was allowed to open (client to server direction), and
/// the network namespace (cookie) it was sent from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub netns: u64,
}

/// What the hook knows besides the packet.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub hook: Hook,
    /// The host's addresses (all interfaces of the daemon's namespace).
    pub local_addrs: &'a [IpAddr],
    /// Cookie of the host's network namespace (the daemon's).
    pub host_netns: u64,
    /// Cgroup hooks: whether the socket (receiving at ingress, sending otherwise) is in the
    /// host's network namespace.
    pub socket_in_host_netns: bool,
    /// Sending hooks: the sending socket's cgroup path.
    pub sender_cgroup: Option<&'a str>,
    /// Receiving hooks: the path the packet arrived by.
    pub arrival: Arrival,
    /// Receiving hooks: flows authorized at local senders' sockets (and still fresh).
    pub flows: &'a [Flow],
}

impl Context<'_> {
    /// A context with nothing known about the sender: a remote packet on an ordinary
    /// device, a receiving socket in the host's namespace.
    pub fn remote(hook: Hook, local_addrs: &[IpAddr]) -> Context<'_> {
        Context {
            hook,
            local_addrs,
            host_netns: 0,
            socket_in_host_netns: true,
            sender_cgroup: None,
            arrival: Arrival::Other,
            flows: &[],
        }
    }

    fn sending(&self) -> bool {
        matches!(
            self.hook,
            Hook::CgroupEgress | Hook::CgroupConnect | Hook::CgroupSendmsg
        )
    }

    /// The sender is a process of this host's namespace: judged by its cgroup (sending
    /// hooks) or the flow its cgroup opened (loopback), never by its address.
    fn host_process(&self) -> bool {
        if self.sending() {
            self.socket_in_host_netns
        } else {
            self.hook == Hook::CgroupIngress && self.arrival == Arrival::Loopback
        }
    }

    /// The namespace whose flows this packet's path carries, if any.
    fn path_netns(&self) -> Option<u64> {
        match self.arrival {
            Arrival::Loopback if self.hook == Hook::CgroupIngress => Some(self.host_netns),
            Arrival::Namespace(c) => Some(c),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub reason: Reason,
    /// Index of the rule that decided, if one did.
    pub rule: Option<usize>,
}

impl Judgement {
    fn pass(reason: Reason) -> Self {
        Judgement {
            verdict: Verdict::Allow,
            reason,
            rule: None,
        }
    }
}

fn refuse(mode: Mode) -> Verdict {
    match mode {
        Mode::Enforce => Verdict::Drop,
        Mode::Audit => Verdict::WouldDrop,
    }
}

/// Loopback, broadcast and multicast destinations; `local_addrs` holds the rest.
fn is_special_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_loopback() || a.is_broadcast() || a.is_multicast(),
        IpAddr::V6(a) => a.is_loopback() || a.is_multicast(),
    }
}

/// Whether `a` is one of the host's own addresses (or loopback, broadcast, multicast).
fn is_host_addr(ctx: &Context<'_>, a: IpAddr) -> bool {
    is_special_local(a) || ctx.local_addrs.contains(&a)
}

/// Whether the packet is bound for a socket of the host (the daemon's namespace).
fn in_scope(ctx: &Context<'_>, dst: IpAddr) -> bool {
    let host_addr = is_host_addr(ctx, dst);
    match ctx.hook {
        Hook::Xdp => host_addr,
        Hook::CgroupIngress => ctx.socket_in_host_netns,
        // Loopback belongs to the sender's own namespace: only the host's counts.
        Hook::CgroupEgress | Hook::CgroupConnect | Hook::CgroupSendmsg => {
            if dst.is_loopback() {
                ctx.socket_in_host_netns
            } else {
                host_addr
            }
        }
    }
}

/// Judges one parsed packet.
pub fn judge(policy: &VerdictPolicy, ctx: &Context<'_>, parsed: &Parsed) -> Judgement {
    let (src, dst, l4) = match *parsed {
        Parsed::NotIp => return Judgement::pass(Reason::NotIp),
        Parsed::BadIp { .. } => {
            return Judgement {
                verdict: refuse(policy.mode),
                reason: Reason::Malformed,
                rule: None,
            };
        }
        Parsed::Ip { src, dst, l4 } => (src, dst, l4),
    };
    let (proto, sport, dport, complete) = match l4 {
        L4::Other(_) => return Judgement::pass(Reason::NotTcpUdp),
        L4::LaterFragment => return Judgement::pass(Reason::LaterFragment),
        L4::Ports {
            proto,
            sport,
            dport,
            complete,
        } => (proto, sport, dport, complete),
        L4::BadFragment(_) | L4::ChainTooLong | L4::Truncated(_) => {
            if !in_scope(ctx, dst) {
                return Judgement::pass(Reason::NotLocal);
            }
            let reason = match l4 {
                L4::BadFragment(_) => Reason::BadFragment,
                L4::ChainTooLong => Reason::ExtChainTooLong,
                _ => Reason::Malformed,
            };
            return Judgement {
                verdict: refuse(policy.mode),
                reason,
                rule: None,
            };
        }
    };
    // The cheapest question first: is the port protected at all?
    if policy.is_failsafe(proto, dport) {
        return Judgement::pass(Reason::Failsafe);
    }
    let covering = || {
        policy
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.covers(proto, dport))
    };
    let Some((primary, _)) = covering().next() else {
        return Judgement::pass(Reason::NotProtected);
    };
    if !in_scope(ctx, dst) {
        return Judgement::pass(Reason::NotLocal);
    }
    let mode = if covering().any(|(_, r)| r.mode == Mode::Enforce) {
        Mode::Enforce
    } else {
        Mode::Audit
    };
    if !complete {
        return Judgement {
            verdict: refuse(mode),
            reason: Reason::Malformed,
            rule: Some(primary),
        };
    }
    // Longest matching prefix across the covering rules; the earlier rule on a tie. A
    // process of this host, or a packet claiming one of the host's own addresses, is never
    // admitted by a prefix: that would admit every local process, whatever its cgroup.
    let source_counts = !ctx.host_process() && !is_host_addr(ctx, src);
    let by_source = covering()
        .filter(|_| source_counts)
        .flat_map(|(i, r)| {
            r.allow_from
                .iter()
                .filter(|p| p.contains(src))
                .map(move |p| (i, p.len))
        })
        .min_by_key(|&(i, len)| (u8::MAX - len, i));
    if let Some((rule, _)) = by_source {
        return Judgement {
            verdict: Verdict::Allow,
            reason: Reason::AllowedSource,
            rule: Some(rule),
        };
    }
    if ctx.sending() {
        if let Some(cgroup) = ctx.sender_cgroup {
            // The deepest matching allowed cgroup; the earlier rule on a tie.
            let by_cgroup = covering()
                .flat_map(|(i, r)| {
                    r.allow_cgroups
                        .iter()
                        .filter(move |c| cgroup_within(cgroup, c))
                        .map(move |c| (i, cgroup_level(c)))
                })
                .min_by_key(|&(i, level)| (usize::MAX - level, i));
            if let Some((rule, _)) = by_cgroup {
                return Judgement {
                    verdict: Verdict::Allow,
                    reason: Reason::AllowedCgroup,
                    rule: Some(rule),
                };
            }
        }
    } else if ctx.path_netns().is_some_and(|netns| {
        ctx.flows.contains(&Flow {
            proto,
            src,
            sport,
            dst,
            dport,
            netns,
        })
    }) {
        return Judgement {
            verdict: Verdict::Allow,
            reason: Reason::AllowedFlow,
            rule: Some(primary),
        };
    }
    Judgement {
        verdict: refuse(mode),
        reason: Reason::Denied,
        rule: Some(primary),
    }
}

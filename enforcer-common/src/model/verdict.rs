//! The verdict: what a hook decides for a parsed packet.

use core::net::IpAddr;

use super::parse::{Parsed, L4};
use super::policy::{cgroup_level, cgroup_within, Mode, VerdictPolicy};
use crate::reason::{Hook, Reason, Verdict};

/// What the hook knows besides the packet.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub hook: Hook,
    /// The host's addresses (all interfaces of the daemon's namespace).
    pub local_addrs: &'a [IpAddr],
    /// Cgroup hooks: whether the socket (receiving at ingress, sending otherwise) is in the
    /// host's network namespace.
    pub socket_in_host_netns: bool,
    /// Sending hooks: the sending socket's cgroup path.
    pub sender_cgroup: Option<&'a str>,
    /// Receiving hooks: the flow was authorized at a local sender's socket.
    pub authorized_flow: bool,
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

/// Whether the packet is bound for a socket of the host (the daemon's namespace).
fn in_scope(ctx: &Context<'_>, dst: IpAddr) -> bool {
    let host_addr = is_special_local(dst) || ctx.local_addrs.contains(&dst);
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
    let (proto, dport, complete) = match l4 {
        L4::Other(_) => return Judgement::pass(Reason::NotTcpUdp),
        L4::LaterFragment => return Judgement::pass(Reason::LaterFragment),
        L4::Ports {
            proto,
            dport,
            complete,
            ..
        } => (proto, dport, complete),
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
    // Longest matching prefix across the covering rules; the earlier rule on a tie.
    let by_source = covering()
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
    let sending = matches!(
        ctx.hook,
        Hook::CgroupEgress | Hook::CgroupConnect | Hook::CgroupSendmsg
    );
    if sending {
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
    } else if ctx.authorized_flow {
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

//! enforcer's BPF programs: XDP on the host's interfaces, cgroup_skb ingress/egress and
//! cgroup connect/sendmsg on a cgroup subtree. Each entry point parses, asks `verdict`,
//! and reports through `report`.
#![no_std]
#![no_main]
// Inline BPF assembly (`memo`'s compare-and-swap), as aya-ebpf itself uses.
#![expect(unstable_features, reason = "inline assembly for the BPF target")]
#![feature(asm_experimental_arch)]
// Map keys and values go to helpers by reference: passed by value, each call site copies
// them onto the 512-byte BPF stack, and the cgroup programs no longer fit.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by-value keys overflow the BPF stack"
)]

mod clock;
mod maps;
mod memo;
mod packet;
mod parse;
mod report;
mod verdict;

use core::cell::Cell;

use aya_ebpf::{
    bindings::{xdp_action, BPF_ANY},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_comm, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
        },
    },
    macros::{cgroup_skb, cgroup_sock_addr, xdp},
    programs::{SkBuffContext, SockAddrContext, XdpContext},
    EbpfContext,
};
use enforcer_common::{
    consts::*,
    maps::{CoarseClock, FlowKey, SockOwner},
    reason::{Hook, Reason, Verdict},
};

use crate::{
    maps::{FLOWS, FLOW_MEMO, PATHS, PATHS_FAR, SOCK_OWNERS},
    packet::{Skb, Xdp},
    parse::{Parsed, K_NOT_IP, K_PORTS},
    verdict::{addr_words, cgroup_rule, host_netns, is_host_addr, is_loopback, judge, HookEnv},
};

/// Remote senders, judged by source address: the destination must be the host's. XDP is
/// never attached to loopback, so only a container's own device carries flows here.
struct XdpEnv {
    ifindex: u32,
}

impl HookEnv for XdpEnv {
    #[inline(always)]
    fn in_scope(&self, p: &Parsed) -> bool {
        is_host_addr(p.family, &p.dst)
    }

    #[inline(always)]
    fn flow_authorized(&self, p: &Parsed) -> bool {
        match path_of(self.ifindex) {
            0 => false,
            netns => flow_authorized(p, netns),
        }
    }
}

#[xdp]
pub fn enforcer_xdp(ctx: XdpContext) -> u32 {
    let pkt = Xdp(&ctx);
    let p = parse::parse_frame(&pkt);
    // Non-IP frames (ARP, LLDP...) leave at once: counted, with nothing set up for a
    // verdict they never get.
    if p.kind == K_NOT_IP {
        report::count(Hook::Xdp, Reason::NotIp);
        return xdp_action::XDP_PASS;
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    let out = judge(&XdpEnv { ifindex }, &p);
    report::finish(Hook::Xdp, &out, &p, |e| {
        e.ifindex = ifindex;
        e.pkt_len = packet::Packet::len(&pkt) as u32;
    });
    if out.verdict == Verdict::Drop {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Parses what a cgroup_skb program sees: the L3 packet, family from skb->protocol.
#[inline(always)]
fn parse_skb(ctx: &SkBuffContext) -> Parsed {
    let skb = Skb(ctx);
    let proto = ctx.skb.protocol();
    if proto == (ETH_P_IP.to_be() as u32) {
        parse::parse_ipv4(&skb, 0)
    } else if proto == (ETH_P_IPV6.to_be() as u32) {
        parse::parse_ipv6(&skb, 0)
    } else {
        parse::Parsed {
            kind: K_NOT_IP,
            family: 0,
            proto: 0,
            complete: false,
            sport: 0,
            dport: 0,
            src: [0; 16],
            dst: [0; 16],
        }
    }
}

#[inline(always)]
fn skb_netns(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the helper takes the program's context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// A flow as `FLOWS` keys it, in six words (`FlowKey`'s layout): built field by field, the
/// compiler merges neighbouring stores into 8-byte ones at 4 mod 8 (it may: see
/// enforcer-ebpf/build.rs), which the verifier refuses on the stack.
#[inline(always)]
fn flow_words(p: &Parsed, netns: u64) -> [u64; 6] {
    let [s0, s1] = p.sport.to_ne_bytes();
    let [d0, d1] = p.dport.to_ne_bytes();
    let head = u64::from_ne_bytes([p.proto, p.family, 0, 0, s0, s1, d0, d1]);
    let [src0, src1] = addr_words(&p.src);
    let [dst0, dst1] = addr_words(&p.dst);
    [head, src0, src1, dst0, dst1, netns]
}

#[inline(always)]
fn as_flow_key(words: &[u64; 6]) -> &FlowKey {
    // SAFETY: FlowKey is repr(C) and 8-aligned: proto, family, _pad, sport, dport in the
    // first word, then src, dst and netns, 48 bytes with no padding, valid for every bit
    // pattern.
    unsafe { &*(words as *const [u64; 6] as *const FlowKey) }
}

/// The namespace whose own packets arrive on interface `ifindex` (0: none).
#[inline(always)]
fn path_of(ifindex: u32) -> u64 {
    if ifindex < PATH_TABLE {
        return PATHS.get(ifindex).map_or(0, |c| *c);
    }
    // SAFETY: a hash map lookup; the value is copied out at once.
    unsafe { PATHS_FAR.get(&ifindex) }.map_or(0, |c| *c)
}

/// Whether a socket in namespace `netns` was allowed to send this flow, lately.
#[inline(always)]
fn flow_authorized(p: &Parsed, netns: u64) -> bool {
    // SAFETY: a hash map lookup; the value is copied out at once.
    match unsafe { FLOWS.get(as_flow_key(&flow_words(p, netns))) } {
        Some(ts) => CoarseClock::within(clock::coarse_ns(), *ts, FLOW_FRESH_NS),
        None => false,
    }
}

/// Keeps a flow's `FLOWS` entry fresh. A lookup is cheaper than an update: the entry is
/// rewritten only when missing or a quarter-window old. And a flow found fresh, or
/// written, in this clock tick is noted in this CPU's `FLOW_MEMO`, so its next packets in
/// the tick skip even the lookup (48 bytes hashed and probed: about 30 of the 125 ns an
/// allowed packet took). An entry evicted meanwhile is missed until the tick ends (a few
/// ms): LRU eviction takes the entries no packet touched lately, which an active flow's
/// are not.
#[inline(always)]
fn refresh_flow(words: &[u64; 6]) {
    let tick = memo::tick();
    // The place: the ports (the head word's upper half), so a host's concurrent flows
    // spread.
    let at = words[0] >> 32;
    if memo::recall(&FLOW_MEMO, at, tick, words).is_some() {
        return;
    }
    let now = clock::coarse_ns();
    let key = as_flow_key(words);
    // SAFETY: a hash map lookup; the value is copied out at once.
    let fresh = unsafe { FLOWS.get(key) }
        .is_some_and(|ts| CoarseClock::within(now, *ts, FLOW_FRESH_NS / 4));
    if !fresh && FLOWS.insert(key, &now, BPF_ANY as u64).is_err() {
        return;
    }
    memo::note(&FLOW_MEMO, at, tick, words, &[]);
}

/// Receiving sockets: in scope when they are the host's (not a container's). What arrives
/// over loopback was sent by a process of the host's namespace.
struct IngressEnv<'a> {
    ctx: &'a SkBuffContext,
    ifindex: u32,
}

impl HookEnv for IngressEnv<'_> {
    /// Asked only of a packet to a protected port, so others skip the helper call.
    #[inline(always)]
    fn in_scope(&self, _p: &Parsed) -> bool {
        skb_netns(self.ctx) == host_netns()
    }

    #[inline(always)]
    fn host_process(&self) -> bool {
        self.ifindex == LOOPBACK_IFINDEX
    }

    #[inline(always)]
    fn flow_authorized(&self, p: &Parsed) -> bool {
        if self.ifindex == LOOPBACK_IFINDEX {
            return flow_authorized(p, host_netns());
        }
        match path_of(self.ifindex) {
            0 => false,
            netns => flow_authorized(p, netns),
        }
    }
}

#[cgroup_skb(ingress)]
pub fn enforcer_ingress(ctx: SkBuffContext) -> i32 {
    let p = parse_skb(&ctx);
    let env = IngressEnv {
        ctx: &ctx,
        // SAFETY: the kernel passes a valid __sk_buff; ingress_ifindex is readable here.
        ifindex: unsafe { (*ctx.skb.skb).ingress_ifindex },
    };
    let out = judge(&env, &p);
    report::finish(Hook::CgroupIngress, &out, &p, |e| {
        e.pkt_len = ctx.len();
    });
    (out.verdict != Verdict::Drop) as i32
}

/// Local senders: the host's addresses are in scope, and loopback only for the host's
/// own namespace; the sender's cgroup can allow it.
struct EgressEnv<'a> {
    ctx: &'a SkBuffContext,
    /// The sending socket's namespace cookie, read when first asked (0: not yet): packets
    /// to unprotected ports never need it.
    netns: Cell<u64>,
}

impl EgressEnv<'_> {
    #[inline(always)]
    fn netns(&self) -> u64 {
        if self.netns.get() == 0 {
            self.netns.set(skb_netns(self.ctx));
        }
        self.netns.get()
    }

    #[inline(always)]
    fn host_socket(&self) -> bool {
        self.netns() == host_netns()
    }
}

#[inline(always)]
fn sender_scope(host_socket: impl FnOnce() -> bool, p: &Parsed) -> bool {
    if is_loopback(p.family, &p.dst) {
        host_socket()
    } else {
        is_host_addr(p.family, &p.dst)
    }
}

impl HookEnv for EgressEnv<'_> {
    #[inline(always)]
    fn in_scope(&self, p: &Parsed) -> bool {
        sender_scope(|| self.host_socket(), p)
    }

    #[inline(always)]
    fn host_process(&self) -> bool {
        self.host_socket()
    }

    #[inline(always)]
    fn cgroup_rule(&self, sg: u32, levels: u32) -> Option<u32> {
        let skb = self.ctx.skb.skb;
        // SAFETY: the helper takes the program's __sk_buff.
        cgroup_rule(sg, levels, |level| unsafe {
            bpf_skb_ancestor_cgroup_id(skb, level)
        })
    }
}

#[cgroup_skb(egress)]
pub fn enforcer_egress(ctx: SkBuffContext) -> i32 {
    let p = parse_skb(&ctx);
    let env = EgressEnv {
        ctx: &ctx,
        netns: Cell::new(0),
    };
    let out = judge(&env, &p);
    if out.verdict == Verdict::Allow
        && matches!(out.reason, Reason::AllowedSource | Reason::AllowedCgroup)
    {
        // Remembered, with the sender's namespace, so the receiving side (cgroup ingress
        // over loopback, XDP or cgroup ingress on the container's own veth) does not refuse
        // what the sender's socket was allowed, and nothing arriving by another path can
        // ride on it.
        refresh_flow(&flow_words(&p, env.netns()));
    }
    report::finish(Hook::CgroupEgress, &out, &p, |e| {
        e.pkt_len = ctx.len();
        // SAFETY: the helpers take the program's context.
        unsafe {
            e.cgroup_id = bpf_skb_cgroup_id(ctx.skb.skb);
            let cookie = bpf_get_socket_cookie(ctx.as_ptr());
            if let Some(owner) = SOCK_OWNERS.get(&cookie) {
                e.pid_tgid = owner.pid_tgid;
                e.comm = owner.comm;
            }
        }
    });
    (out.verdict != Verdict::Drop) as i32
}

/// connect()/sendmsg() of a host-namespace socket: refused with EPERM at once instead of
/// a silent timeout. Sockets in other namespaces (containers) are left to the egress
/// program: their source address is not known yet.
struct SockAddrEnv {
    host_socket: bool,
}

impl HookEnv for SockAddrEnv {
    #[inline(always)]
    fn in_scope(&self, p: &Parsed) -> bool {
        sender_scope(|| self.host_socket, p)
    }

    #[inline(always)]
    fn host_process(&self) -> bool {
        self.host_socket
    }

    #[inline(always)]
    fn cgroup_rule(&self, sg: u32, levels: u32) -> Option<u32> {
        // SAFETY: the helper reads the current task's cgroup.
        cgroup_rule(sg, levels, |level| unsafe {
            bpf_get_current_ancestor_cgroup_id(level)
        })
    }
}

#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, hook: Hook, v6: bool) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr; these fields are readable by
    // every cgroup sock_addr program.
    let sa = unsafe { &*ctx.sock_addr };
    // SAFETY: the helper takes the program's context.
    let host_socket = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == host_netns();
    let proto = match sa.type_ {
        1 => IPPROTO_TCP, // SOCK_STREAM
        2 => IPPROTO_UDP, // SOCK_DGRAM
        _ => return 1,
    };
    let mut p = Parsed {
        kind: K_PORTS,
        family: AF_INET,
        proto,
        complete: true,
        sport: 0,
        dport: u16::from_be(sa.user_port as u16),
        src: [0; 16],
        dst: [0; 16],
    };
    if v6 {
        let mut a = [0u8; 16];
        for (i, w) in sa.user_ip6.iter().enumerate() {
            a[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        // A v4-mapped destination leaves as IPv4: judge it as such.
        if a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            p.dst[..4].copy_from_slice(&a[12..]);
        } else {
            p.family = AF_INET6;
            p.dst = a;
        }
    } else {
        p.dst[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    }
    // A host-namespace connection to one of the host's own addresses leaves from that
    // address (local routes pick it as source).
    p.src = p.dst;
    let out = judge(&SockAddrEnv { host_socket }, &p);
    // The sender, remembered for the egress program's events (which may run where the
    // current task is not the sender), also for containers.
    if out.reason.is_judged() {
        // SAFETY: helpers reading the current task, valid in this process context.
        let owner = SockOwner {
            pid_tgid: bpf_get_current_pid_tgid(),
            comm: current_comm(),
        };
        // SAFETY: the helper takes the program's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = SOCK_OWNERS.insert(&cookie, &owner, BPF_ANY as u64);
    }
    // A container's source address is not known before routing: its egress program
    // decides.
    if !host_socket || out.verdict != Verdict::Drop {
        return 1;
    }
    report::finish(hook, &out, &p, |e| {
        e.pid_tgid = bpf_get_current_pid_tgid();
        e.comm = current_comm();
        // SAFETY: a helper with no arguments.
        e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    });
    0
}

/// The current task's name (zeros if unreadable), through an 8-aligned buffer.
#[inline(always)]
fn current_comm() -> [u8; 16] {
    let mut buf = packet::Aligned([0u8; 16]);
    // SAFETY: the helper writes at most 16 bytes into `buf`.
    unsafe { bpf_get_current_comm(buf.0.as_mut_ptr() as *mut core::ffi::c_void, 16) };
    buf.0
}

#[cgroup_sock_addr(connect4)]
pub fn enforcer_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::CgroupConnect, false)
}

#[cgroup_sock_addr(connect6)]
pub fn enforcer_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::CgroupConnect, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn enforcer_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::CgroupSendmsg, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn enforcer_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::CgroupSendmsg, true)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

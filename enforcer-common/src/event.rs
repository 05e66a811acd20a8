//! The record a program puts in the ring buffer for every judged packet.

use crate::consts::NO_RULE;

/// Event kinds carried by the ring buffer.
pub const EVENT_PACKET: u8 = 1;

/// One judged packet. Addresses in network order (IPv4 in the first 4 bytes of `src`/`dst`),
/// ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when judged.
    pub ts_ns: u64,
    /// Policy generation that judged it.
    pub generation: u64,
    /// Sending socket's cgroup id (egress and socket hooks), else 0.
    pub cgroup_id: u64,
    /// `tgid << 32 | pid` of the sending task where the kernel knows it, else 0.
    pub pid_tgid: u64,
    pub comm: [u8; 16],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Receiving interface (XDP), else 0.
    pub ifindex: u32,
    /// Rule that decided, or `NO_RULE`.
    pub rule: u32,
    /// Length of the packet as the hook saw it.
    pub pkt_len: u32,
    pub sport: u16,
    pub dport: u16,
    pub kind: u8,
    pub verdict: u8,
    pub reason: u8,
    pub hook: u8,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl PacketEvent {
    pub const EMPTY: PacketEvent = PacketEvent {
        ts_ns: 0,
        generation: 0,
        cgroup_id: 0,
        pid_tgid: 0,
        comm: [0; 16],
        src: [0; 16],
        dst: [0; 16],
        ifindex: 0,
        rule: NO_RULE,
        pkt_len: 0,
        sport: 0,
        dport: 0,
        kind: EVENT_PACKET,
        verdict: 0,
        reason: 0,
        hook: 0,
        proto: 0,
        family: 0,
        _pad: [0; 2],
    };
}

const _: () = assert!(core::mem::size_of::<PacketEvent>() == 104);

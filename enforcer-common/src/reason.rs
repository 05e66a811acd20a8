//! Why a packet was judged (or passed over) as it was, and where.

/// Every way a packet leaves a program. Indexes the per-CPU reason counters.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, a runt frame, more VLAN tags than the parser walks): passed.
    NotIp = 0,
    /// IP but not TCP or UDP (ICMP, ICMPv6 with NDP, ESP, ...): passed.
    NotTcpUdp = 1,
    /// TCP/UDP to a port no rule protects: passed.
    NotProtected = 2,
    /// A failsafe port (by default tcp/22): passed before any rule.
    Failsafe = 3,
    /// Not bound for this host's own sockets (routed, a container's own port): passed.
    NotLocal = 4,
    /// A non-first fragment: passed (its first fragment carried the ports and was judged;
    /// the cgroup ingress program judges the reassembled datagram).
    LaterFragment = 5,
    /// Source address in an allow_from prefix of a rule covering the port.
    AllowedSource = 6,
    /// Sent by a local process in an allowed cgroup (or a descendant).
    AllowedCgroup = 7,
    /// A flow a local sender was authorized for at its socket, on its way in.
    AllowedFlow = 8,
    /// No allow entry matched: dropped (would-drop in audit mode).
    Denied = 9,
    /// Headers the kernel would reject or that hide the ports: dropped.
    Malformed = 10,
    /// A first fragment too short to hold the transport header, or an overlapping
    /// fragment (RFC 1858 / RFC 3128): dropped.
    BadFragment = 11,
    /// An IPv6 extension header chain longer than the parser walks: dropped.
    ExtChainTooLong = 12,
}

pub const REASON_COUNT: u32 = 13;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::NotIp,
        Reason::NotTcpUdp,
        Reason::NotProtected,
        Reason::Failsafe,
        Reason::NotLocal,
        Reason::LaterFragment,
        Reason::AllowedSource,
        Reason::AllowedCgroup,
        Reason::AllowedFlow,
        Reason::Denied,
        Reason::Malformed,
        Reason::BadFragment,
        Reason::ExtChainTooLong,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reason::NotIp => "not-ip",
            Reason::NotTcpUdp => "not-tcp-udp",
            Reason::NotProtected => "not-protected",
            Reason::Failsafe => "failsafe",
            Reason::NotLocal => "not-local",
            Reason::LaterFragment => "later-fragment",
            Reason::AllowedSource => "allowed-by-source",
            Reason::AllowedCgroup => "allowed-by-cgroup",
            Reason::AllowedFlow => "allowed-by-flow",
            Reason::Denied => "dropped-source",
            Reason::Malformed => "dropped-malformed",
            Reason::BadFragment => "dropped-fragment",
            Reason::ExtChainTooLong => "dropped-ext-chain",
        }
    }

    pub fn from_u8(v: u8) -> Option<Reason> {
        Reason::ALL.get(v as usize).copied()
    }

    /// Whether a packet with this reason was judged against a rule or dropped as a threat
    /// (and so is reported in the audit stream), rather than passed over.
    pub const fn is_judged(self) -> bool {
        matches!(
            self,
            Reason::AllowedSource
                | Reason::AllowedCgroup
                | Reason::AllowedFlow
                | Reason::Denied
                | Reason::Malformed
                | Reason::BadFragment
                | Reason::ExtChainTooLong
        )
    }

    /// Whether the policy refuses the packet (dropped, or reported as would-drop in audit mode).
    pub const fn refuses(self) -> bool {
        matches!(
            self,
            Reason::Denied | Reason::Malformed | Reason::BadFragment | Reason::ExtChainTooLong
        )
    }
}

/// Where a packet was judged.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Xdp = 0,
    CgroupIngress = 1,
    CgroupEgress = 2,
    /// connect4/connect6: a local connect() (TCP, or connected UDP) refused with EPERM.
    CgroupConnect = 3,
    /// sendmsg4/sendmsg6: an unconnected UDP send refused with EPERM.
    CgroupSendmsg = 4,
}

pub const HOOK_COUNT: u32 = 5;

impl Hook {
    pub const ALL: [Hook; HOOK_COUNT as usize] = [
        Hook::Xdp,
        Hook::CgroupIngress,
        Hook::CgroupEgress,
        Hook::CgroupConnect,
        Hook::CgroupSendmsg,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::CgroupIngress => "cgroup_ingress",
            Hook::CgroupEgress => "cgroup_egress",
            Hook::CgroupConnect => "cgroup_connect",
            Hook::CgroupSendmsg => "cgroup_sendmsg",
        }
    }

    pub fn from_u8(v: u8) -> Option<Hook> {
        Hook::ALL.get(v as usize).copied()
    }
}

/// Index of a (hook, reason) pair in the per-CPU reason counters.
#[inline(always)]
pub const fn counter_index(hook: Hook, reason: Reason) -> u32 {
    hook as u32 * REASON_COUNT + reason as u32
}

pub const COUNTER_ENTRIES: u32 = HOOK_COUNT * REASON_COUNT;

/// What happened to the packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow = 0,
    Drop = 1,
    /// Refused by a rule in audit mode: passed and reported.
    WouldDrop = 2,
}

impl Verdict {
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Drop => "drop",
            Verdict::WouldDrop => "would-drop",
        }
    }

    pub fn from_u8(v: u8) -> Option<Verdict> {
        match v {
            0 => Some(Verdict::Allow),
            1 => Some(Verdict::Drop),
            2 => Some(Verdict::WouldDrop),
            _ => None,
        }
    }
}

/// Per-rule packet counters, one per `Verdict` (`RuleStats::packets`).
pub const RULE_COUNTER_KINDS: u32 = 3;

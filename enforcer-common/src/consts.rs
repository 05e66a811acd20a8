//! Limits of the parser and the maps, and the wire constants both sides use.

/// VLAN tags (802.1Q / 802.1ad) the XDP parser walks. A frame with more tags passes XDP as
/// not-IP; the stack only delivers it through nested VLAN devices, where the cgroup ingress
/// program (which sees the untagged L3 packet) judges it.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up. A longer chain to a host address is
/// dropped (reason `ext-chain-too-long`): it must never be a way past the policy.
pub const MAX_EXT_HDRS: usize = 8;
/// The deepest packet offset the XDP parser reads at. Offsets are clamped to this so the
/// verifier can bound pointer arithmetic; headers beyond it count as truncated.
pub const MAX_HDR_OFFSET: usize = 0x0fff;
/// Deepest cgroup level (below the root) whose ancestors are matched against allow_cgroups.
pub const MAX_CGROUP_LEVEL: u32 = 31;

/// Version of the maps' layout and meaning. Bump it with any change to a map's key, value,
/// size or semantics: a daemon refuses pinned state of another layout.
pub const LAYOUT_VERSION: u32 = 4;

/// Two copies ("slots") of every policy map: the programs read the active one while the
/// daemon writes the other, then flips `ACTIVE` in one 4-byte store.
pub const SLOTS: u32 = 2;
/// Port groups per slot (a group is a distinct set of rules covering a port).
pub const MAX_GROUPS: u32 = 1 << 16;
/// Rules per policy (rule ids index the per-rule counters).
pub const MAX_RULES: u32 = 16384;
/// Allow-list entries (prefixes) across both slots.
pub const MAX_ALLOW_ENTRIES: u32 = 1 << 18;
/// Allowed cgroup entries across both slots.
pub const MAX_CGROUP_ENTRIES: u32 = 1 << 16;
/// Addresses of the host (all interfaces) the programs treat as "bound for this host".
pub const MAX_LOCAL_ADDRS: u32 = 4096;
/// `HOST_ADDRS` has `1 << HOST_ADDR_BITS` slots.
pub const HOST_ADDR_BITS: u32 = 14;
/// Flows authorized at the sending socket, remembered so the receiving hooks let them in.
pub const MAX_FLOWS: u32 = 1 << 16;
/// A flow authorized at egress is honoured on the receiving side only this long after its
/// last packet was judged at egress (every packet is judged there first, so the receiving
/// side sees it microseconds later).
pub const FLOW_FRESH_NS: u64 = 1_000_000_000;
/// Interface indexes below this find their path (`PATHS`) with one array load; higher
/// ones (hosts with much container churn) in the `PATHS_FAR` hash.
pub const PATH_TABLE: u32 = 1 << 16;
/// Host-side devices with an index of `PATH_TABLE` or more.
pub const MAX_PATHS_FAR: u32 = 4096;
/// Loopback's interface index in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;
/// Sockets whose sending task is remembered for events.
pub const MAX_SOCK_OWNERS: u32 = 1 << 14;
/// The longest tick of the coarse clock the event rate limits and `FLOWS` read
/// (CONFIG_HZ=100). Also how far one CPU's reading may run ahead of another's: jiffies
/// move before the clock does, so a CPU reading in between keeps the old time a tick.
pub const COARSE_TICK_MAX_NS: u64 = 10_000_000;
/// Ring buffer for audit events: about 300,000 events (104 bytes and an 8-byte header),
/// so the daemon's reader may fall 100 ms behind a flood of 3M events/s (a stall, a busy
/// CPU) before the kernel loses any.
pub const EVENTS_BYTES: u32 = 1 << 25;

/// Entries of the port table: slot x protocol (tcp, udp) x port.
pub const PORT_TABLE_ENTRIES: u32 = SLOTS * 2 * 65536;
/// Port table value: port not protected.
pub const PORT_UNPROTECTED: u32 = 0;
/// Port table value: a failsafe port, never judged.
pub const PORT_FAILSAFE: u32 = u32::MAX;

/// Rule id meaning "no rule".
pub const NO_RULE: u32 = u32::MAX;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_MH: u8 = 135;
pub const IPPROTO_HIP: u8 = 139;
pub const IPPROTO_SHIM6: u8 = 140;

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// Index of a protocol in the port table.
#[inline(always)]
pub const fn proto_index(proto: u8) -> Option<u32> {
    match proto {
        IPPROTO_TCP => Some(0),
        IPPROTO_UDP => Some(1),
        _ => None,
    }
}

/// Index into the port table.
#[inline(always)]
pub const fn port_index(slot: u32, proto_idx: u32, port: u16) -> u32 {
    ((slot & 1) << 17) | ((proto_idx & 1) << 16) | port as u32
}

/// Whether an IPv6 next-header value is an extension header the parser walks over.
#[inline(always)]
pub const fn is_ipv6_ext(nh: u8) -> bool {
    matches!(
        nh,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_AH
            | IPPROTO_DSTOPTS
            | IPPROTO_MH
            | IPPROTO_HIP
            | IPPROTO_SHIM6
    )
}

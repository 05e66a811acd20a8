//! Every map the programs use. Names are the ones the daemon looks up.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use enforcer_common::{consts::*, maps::*, reason::COUNTER_ENTRIES};

use crate::memo::Place;

/// The slot the programs read (see `enforcer_common::maps`).
#[map]
pub static ACTIVE: Array<ActiveSlot> = Array::with_max_entries(1, 0);

#[map]
pub static SLOT_INFO: Array<SlotInfo> = Array::with_max_entries(SLOTS, 0);

#[map]
pub static HOST: Array<HostInfo> = Array::with_max_entries(1, 0);

/// (slot, protocol, port) -> 0 (unprotected), `PORT_FAILSAFE`, or group + 1.
/// An array so "is this port protected?" is one load.
#[map]
pub static PORTS: Array<u32> = Array::with_max_entries(PORT_TABLE_ENTRIES, 0);

#[map]
pub static GROUPS: Array<GroupInfo> = Array::with_max_entries(SLOTS * MAX_GROUPS, 0);

/// Allow prefixes, one hash probe per distinct prefix length (flat cost at any size,
/// unlike an LPM trie whose cost grows with its entries).
#[map]
pub static ALLOW: HashMap<AllowKey, AllowValue> =
    HashMap::with_max_entries(MAX_ALLOW_ENTRIES, BPF_F_NO_PREALLOC);

/// Which prefix lengths a group has under a source's leading bits, at `bucket_place`.
#[map]
pub static LEN_BITS: Array<BucketSlot> = Array::with_max_entries(SLOTS * LEN_BITS_PER_SLOT, 0);

#[map]
pub static CGROUPS: HashMap<CgroupKey, AllowValue> =
    HashMap::with_max_entries(MAX_CGROUP_ENTRIES, BPF_F_NO_PREALLOC);

/// Every address of the host; asked only where `HOST_ADDRS` says its slot is shared.
#[map]
pub static LOCAL_ADDRS: HashMap<LocalAddrKey, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

/// The host's addresses by `host_addr_index`: one load answers "the host's?".
#[map]
pub static HOST_ADDRS: Array<HostAddrSlot> = Array::with_max_entries(1 << HOST_ADDR_BITS, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Flows this CPU found fresh in `FLOWS`, or wrote there (`refresh_flow`): `FlowKey`'s six
/// words.
#[map]
pub static FLOW_MEMO: PerCpuArray<Place<6, 0>> = PerCpuArray::with_max_entries(MEMO_PLACES, 0);

/// Sources this CPU found allowed by a prefix (`verdict::source_rule`): (family, slot and
/// group; the source as two words) -> (rule, the entry's deadline).
#[map]
pub static SOURCE_MEMO: PerCpuArray<Place<3, 2>> = PerCpuArray::with_max_entries(MEMO_PLACES, 0);

/// Cgroups this CPU found allowed (`verdict::cgroup_rule`): (slot and group, the ancestor
/// at the group's deepest allowed level) -> (rule, the entry's deadline).
#[map]
pub static CGROUP_MEMO: PerCpuArray<Place<2, 2>> = PerCpuArray::with_max_entries(MEMO_PLACES, 0);

/// Host-side interface index -> cookie of the network namespace on its other end (a
/// container's veth; 0: none), kept by the daemon: the only devices where a container's
/// flows are honoured. An array, so a refused packet pays one load for the question.
#[map]
pub static PATHS: Array<u64> = Array::with_max_entries(PATH_TABLE, 0);

/// The same for interface indexes of `PATH_TABLE` and above.
#[map]
pub static PATHS_FAR: HashMap<u32, u64> = HashMap::with_max_entries(MAX_PATHS_FAR, 0);

/// Per-(hook, reason) packet counts.
#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

/// Per-rule packet counts, event rate limits and held-back events (see `RuleStats`).
#[map]
pub static RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES + 2, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static SOCK_OWNERS: LruHashMap<u64, SockOwner> =
    LruHashMap::with_max_entries(MAX_SOCK_OWNERS, 0);

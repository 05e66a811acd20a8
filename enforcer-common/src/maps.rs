//! Keys and values of the BPF maps. All `#[repr(C)]` with explicit padding, addresses and
//! ports in network byte order unless a name says otherwise.
//!
//! Policy maps are double-buffered: every policy key carries a slot (0 or 1); `ACTIVE`
//! names the slot the programs read. The daemon fills the idle slot completely, flips
//! `ACTIVE` in one 4-byte store, and keeps the old slot as it was (the base of the next
//! write), so a packet is judged by one whole policy, old or new, never a mix and never an
//! empty one.

use crate::consts::MAX_EXT_HDRS;

/// `ACTIVE[0]`: the slot the programs read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveSlot {
    pub slot: u32,
    pub _pad: u32,
}

/// `SLOT_INFO[slot]`: what belongs to one policy besides its entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotInfo {
    /// Policy generation, reported in every event.
    pub generation: u64,
    /// `SLOT_*` flags.
    pub flags: u32,
    /// Events a rate-limit bucket may save up (its burst).
    pub burst: u32,
    /// Rate limits as the time one event costs a bucket (1e9 / events per second per
    /// CPU); 0: unlimited. Per rule, and across all rules.
    pub rule_cost_ns: u64,
    pub global_cost_ns: u64,
}

impl SlotInfo {
    /// An empty slot: audit mode, no limits, generation 0.
    pub const DEFAULT: SlotInfo = SlotInfo {
        generation: 0,
        flags: 0,
        burst: 0,
        rule_cost_ns: 0,
        global_cost_ns: 0,
    };
}

/// A per-CPU token bucket for audit events, in nanoseconds of credit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}

/// `RULE_STATS[rule]`, per CPU: everything a judged packet updates for its rule, in one
/// record so the programs look up one entry, not one per counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Packets the rule decided, by `Verdict`.
    pub packets: [u64; crate::reason::RULE_COUNTER_KINDS as usize],
    /// The rule's audit-event rate limit (`GLOBAL_BUCKET`: the global one).
    pub bucket: Bucket,
    /// Events the rate limits held back (`GLOBAL_BUCKET`: in total).
    pub suppressed: u64,
    /// `GLOBAL_BUCKET` only: events lost to a full ring buffer.
    pub lost: u64,
    /// `GLOBAL_BUCKET` only: this CPU's last reading of the coarse clock.
    pub clock: CoarseClock,
}

/// A reading of `CLOCK_MONOTONIC_COARSE` and the jiffies it was taken at. That clock moves
/// only on a tick, so the programs read it once per tick per CPU and otherwise reuse the
/// reading while jiffies (a load the verifier inlines) stay the same.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoarseClock {
    pub jiffies: u64,
    pub ns: u64,
}

impl CoarseClock {
    /// Whether `then`, a reading of the coarse clock on any CPU, lies at most `window`
    /// before `now`. A reading up to a tick after `now` counts too: another CPU may have
    /// read the clock just as it moved while this one still holds the tick before.
    #[inline(always)]
    pub fn within(now: u64, then: u64, window: u64) -> bool {
        use crate::consts::COARSE_TICK_MAX_NS;
        now.wrapping_sub(then).wrapping_add(COARSE_TICK_MAX_NS) < window + COARSE_TICK_MAX_NS
    }
}

/// `RULE_STATS` index for events no rule decided (malformed packets).
pub const NO_RULE_INDEX: u32 = crate::consts::MAX_RULES;
/// `RULE_STATS` index of the global bucket, the total held back and the events lost.
pub const GLOBAL_BUCKET: u32 = crate::consts::MAX_RULES + 1;

/// The global mode is enforce (else audit): drops with no rule to decide (malformed
/// packets, bad fragments) follow it.
pub const SLOT_ENFORCE: u32 = 1;
/// Report allowed packets too (`[audit] allowed = true`).
pub const SLOT_REPORT_ALLOWED: u32 = 2;

/// `HOST[0]`: facts about the host's namespace, kept by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// Network namespace cookie of the daemon's namespace (the host's): sockets in other
    /// namespaces (containers) are out of scope.
    pub netns_cookie: u64,
    /// `LAYOUT_VERSION` of the daemon that created the maps: a restarted daemon adopts
    /// pinned maps only of its own layout.
    pub layout: u32,
    /// Always 0. The XDP parser adds it to a VLAN-tagged frame's header offset, which the
    /// verifier then cannot know (see `opaque` in enforcer-ebpf's parse.rs).
    pub zero: u32,
}

/// `HOST_ADDRS[host_addr_index(..)]`: the host's addresses in an array, so "is this one of
/// the host's addresses?" is one load and a compare instead of a hash probe. `LOCAL_ADDRS`
/// stays the whole truth: a slot two addresses share says to ask it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostAddrSlot {
    /// Network order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
    /// `HOST_ADDR_*`.
    pub state: u32,
    pub _pad: u32,
}

/// No address of the host has this slot.
pub const HOST_ADDR_EMPTY: u32 = 0;
/// Exactly one IPv4 address of the host has this slot: `addr`.
pub const HOST_ADDR_V4: u32 = 1;
/// Exactly one IPv6 address of the host has this slot: `addr`.
pub const HOST_ADDR_V6: u32 = 2;
/// Several addresses have this slot (or it is being rewritten): ask `LOCAL_ADDRS`.
pub const HOST_ADDR_SHARED: u32 = 3;

/// The `HOST_ADDRS` slot of an address (network order; IPv4 in the first 4 bytes): a
/// multiplicative hash of its last 32 bits.
#[inline(always)]
pub fn host_addr_index(family: u8, a: &[u8; 16]) -> u32 {
    let w = if family == crate::consts::AF_INET {
        u32::from_be_bytes([a[0], a[1], a[2], a[3]])
    } else {
        u32::from_be_bytes([a[12], a[13], a[14], a[15]])
    };
    w.wrapping_mul(0x9E37_79B1) >> (32 - crate::consts::HOST_ADDR_BITS)
}

/// `GROUPS[slot * MAX_GROUPS + group]`: a port group is a distinct set of rules covering a
/// (protocol, port); its allow entries are the union of those rules'.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// The first rule (in file order) covering the port: named in events for refusals.
    pub primary_rule: u32,
    /// `GROUP_*` flags.
    pub flags: u32,
    /// Bit n set: some allowed cgroup sits at level n (root = 0), so the program only
    /// looks up the sender's ancestor at levels that can match.
    pub cgroup_levels: u32,
    /// Number of distinct IPv4 / IPv6 prefix lengths in `v4_lens` / `v6_lens`.
    pub n_v4: u32,
    pub n_v6: u32,
    /// Distinct prefix lengths of the allow entries, longest first: the program probes one
    /// hash lookup per length, so cost follows the number of lengths, not of prefixes. In
    /// a bucketed family (`GROUP_*_BUCKETS`) only the lengths below the bucket length: the
    /// longer ones come from the source's bucket in `LEN_BITS`.
    pub v4_lens: [u8; 36],
    pub v6_lens: [u8; 132],
}

impl Default for GroupInfo {
    fn default() -> Self {
        GroupInfo {
            primary_rule: 0,
            flags: 0,
            cgroup_levels: 0,
            n_v4: 0,
            n_v6: 0,
            v4_lens: [0; 36],
            v6_lens: [0; 132],
        }
    }
}

/// Some rule in the group enforces: a refusal drops (else would-drop).
pub const GROUP_ENFORCE: u32 = 1;
/// The group's IPv4 / IPv6 prefixes of `V4_BUCKET_LEN` / `V6_BUCKET_LEN` bits and longer
/// are indexed in `LEN_BITS` by the source's leading bits: a packet probes only the lengths
/// present under its own /16 (/32) instead of every length in `v4_lens` (`v6_lens`). Set
/// whenever the family has such a prefix, even one: a source far from all of them (what a
/// flood of refusals is) then pays two array loads instead of a hash probe per length,
/// where an allowed source pays the two loads beside its probe.
pub const GROUP_V4_BUCKETS: u32 = 2;
pub const GROUP_V6_BUCKETS: u32 = 4;
/// Leading bits that name a bucket.
pub const V4_BUCKET_LEN: u8 = 16;
pub const V6_BUCKET_LEN: u8 = 32;

/// A bucket: (slot, group, family, the source's leading bits). `LEN_BITS` holds, at
/// `bucket_index` of it, which prefix lengths of the group have entries under it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    /// `slot << 16 | group`.
    pub group: u32,
    pub family: u32,
    /// The first 2 (IPv4) or 4 (IPv6) bytes of the address, the rest zero.
    pub top: [u8; 4],
}

/// Entries of `LEN_BITS` per slot (a power of two): twice the buckets of 65,536 prefixes
/// each under its own /16 (/32), as a cuckoo table fills to about half.
pub const LEN_BITS_PER_SLOT: u32 = 1 << 17;

/// The two `LEN_BITS` entries a bucket may sit in (an array: a load each, where a hash map
/// probe cost about 15 ns), and the tag that tells its entry from another bucket's:
/// ([first, second], tag), from one multiplicative hash. The daemon places buckets as a
/// cuckoo table does, so two choices leave almost none sharing an entry. The tag is never
/// `BUCKET_SHARED`.
#[inline(always)]
pub const fn bucket_place(group: u32, family: u8, top: [u8; 4]) -> ([u32; 2], u32) {
    let x = (u32::from_ne_bytes(top) as u64) << 32 | ((group & 0xffff) << 8 | family as u32) as u64;
    // splitmix64's finalizer: every bit of the result depends on every bit of `x`, so the
    // two places and the tag can each take their own bits of it.
    let mut h = x ^ (x >> 30);
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let base = ((group >> 16) & 1) * LEN_BITS_PER_SLOT;
    let first = base + (h >> 44) as u32 % LEN_BITS_PER_SLOT;
    let second = base + (h >> 24) as u32 % LEN_BITS_PER_SLOT;
    ([first, second], h as u32 | 1)
}

/// Places in each of the programs' per-CPU memos (a power of two).
pub const MEMO_PLACES: u32 = 64;

/// The memo place of a question summed up in word `x` (a source's two words xored, a
/// cgroup id, a flow's ports): its bits folded down, so every byte counts. Shared so tests
/// can pick questions that meet in one place.
#[inline(always)]
pub const fn memo_place(x: u64) -> u32 {
    let mut h = x ^ (x >> 32);
    h ^= h >> 16;
    h ^= h >> 8;
    h as u32 & (MEMO_PLACES - 1)
}

/// A `LEN_BITS` entry: the lengths of the bucket whose tag it holds; or, where the daemon
/// found no place of its own for a bucket (`BUCKET_SHARED`), of every bucket placed here, so
/// a source may then probe a length its own bucket lacks, which finds no entry and costs
/// only the probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketSlot {
    pub tag: u32,
    pub _pad: u32,
    pub bits: BucketBits,
}

/// `BucketSlot::tag` of an entry shared by several buckets (or of an empty one).
pub const BUCKET_SHARED: u32 = 0;

impl BucketSlot {
    /// The lengths this entry gives a source whose bucket has tag `tag`.
    #[inline(always)]
    pub fn lengths_for(&self, tag: u32) -> BucketBits {
        if self.tag == tag || self.tag == BUCKET_SHARED {
            self.bits
        } else {
            BucketBits { lo: 0, hi: 0 }
        }
    }
}

/// Bit `i` (of `lo`, then of `hi`: 128 in all) stands for length `base + 127 - i`, where
/// `base` is the family's bucket length: the lowest set bit is the longest length, which
/// the programs find without a count-leading-zeros instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketBits {
    pub lo: u64,
    pub hi: u64,
}

impl BucketBits {
    #[inline(always)]
    fn bit(base: u8, len: u8) -> u32 {
        (base as u32 + 127).wrapping_sub(len as u32)
    }

    /// Whether prefix length `len` (at or above `base`) has entries in this bucket.
    pub fn has(&self, base: u8, len: u8) -> bool {
        match Self::bit(base, len) {
            i @ 0..64 => self.lo >> i & 1 != 0,
            i @ 64..128 => self.hi >> (i - 64) & 1 != 0,
            _ => false,
        }
    }

    pub fn set(&mut self, base: u8, len: u8) {
        match Self::bit(base, len) {
            i @ 0..64 => self.lo |= 1 << i,
            i @ 64..128 => self.hi |= 1 << (i - 64),
            _ => {}
        }
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.lo | self.hi == 0
    }

    /// Takes the longest length out of the set.
    #[inline(always)]
    pub fn pop_longest(&mut self, base: u8) -> Option<u8> {
        let (word, skipped) = if self.lo != 0 {
            (&mut self.lo, 0)
        } else if self.hi != 0 {
            (&mut self.hi, 64)
        } else {
            return None;
        };
        let i = skipped + word.trailing_zeros();
        *word &= *word - 1;
        Some((base as u32 + 127 - i) as u8)
    }
}

/// The value of an `ALLOW` or `CGROUPS` entry: the rule it belongs to, and when it stops
/// applying. The programs check the deadline themselves, so a grant or an expiring entry
/// lapses on time whether or not a daemon is running.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllowValue {
    pub rule: u32,
    pub _pad: u32,
    /// `CLOCK_BOOTTIME` (`bpf_ktime_get_boot_ns`) after which the entry no longer applies;
    /// 0: never. Boottime keeps counting across suspend, as wall-clock deadlines do.
    pub expires_boot_ns: u64,
}

impl AllowValue {
    /// Whether the entry still applies at boottime `now`.
    #[inline(always)]
    pub fn live(&self, now_boot_ns: u64) -> bool {
        self.expires_boot_ns == 0 || now_boot_ns < self.expires_boot_ns
    }
}

/// `ALLOW`: (slot, group, family, prefix length, masked address) -> `AllowValue`.
/// 8-aligned, so the programs build `addr` with two word stores, not sixteen byte stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllowKey {
    /// `slot << 16 | group`.
    pub group: u32,
    /// `family << 8 | prefix length`.
    pub family_len: u32,
    /// Address masked to the prefix length, network order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

/// `CGROUPS`: (slot, group, cgroup id) -> `AllowValue`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupKey {
    /// `slot << 16 | group`.
    pub group: u32,
    pub _pad: u32,
    /// cgroup v2 id: the inode number of the cgroup's directory.
    pub cgroup_id: u64,
}

/// `LOCAL_ADDRS`: an address of this host -> 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalAddrKey {
    pub family: u32,
    pub addr: [u8; 16],
}

/// `FLOWS`: a flow (client to server direction) authorized at a local sender's socket ->
/// the time it was last judged there (`bpf_ktime_get_coarse_ns`: a tick late at most,
/// against a 1 s window). The sender's network namespace is part of the flow: the
/// receiving side honours it only for packets that arrive by that namespace's own path
/// (loopback for the host's, `PATHS` for a container's), so the same tuple forged on any
/// other device is judged like any remote packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
    /// Ports in host order.
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network namespace cookie of the sending socket.
    pub netns: u64,
}

/// `SOCK_OWNERS`: socket cookie -> the task that connected or sent on it, recorded by the
/// connect/sendmsg programs (process context) for the egress program's events, which may
/// run in softirq context where the current task is not the sender.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    pub pid_tgid: u64,
    pub comm: [u8; 16],
}

#[inline(always)]
pub const fn slot_group(slot: u32, group: u32) -> u32 {
    ((slot & 1) << 16) | (group & 0xffff)
}

/// Masks `addr` (network order, `bytes` long: 4 or 16) to `len` bits, in place.
#[inline(always)]
pub fn mask_addr(addr: &mut [u8; 16], len: u8) {
    let [hi_mask, lo_mask] = prefix_masks(len);
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let hi = (hi & hi_mask).to_be_bytes();
    let lo = (lo & lo_mask).to_be_bytes();
    *addr = [
        hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], lo[0], lo[1], lo[2], lo[3], lo[4],
        lo[5], lo[6], lo[7],
    ];
}

/// The masks keeping the first `len` bits (at most 128) of an address read as two
/// big-endian words. Every shift stays below 64, so no length needs a branch of its own.
#[inline(always)]
pub const fn prefix_masks(len: u8) -> [u64; 2] {
    let len = len as u32;
    let hi = if len >= 64 {
        u64::MAX
    } else {
        !(u64::MAX >> len)
    };
    let lo = if len <= 64 {
        0
    } else {
        !((u64::MAX >> 1) >> ((len - 65) & 63))
    };
    [hi, lo]
}

const _: () = assert!(MAX_EXT_HDRS < 255);
const _: () = assert!(core::mem::size_of::<GroupInfo>() == 188);
const _: () = assert!(core::mem::size_of::<AllowKey>() == 24);
const _: () = assert!(core::mem::size_of::<CgroupKey>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);
const _: () = assert!(core::mem::size_of::<AllowValue>() == 16);
const _: () = assert!(LEN_BITS_PER_SLOT.is_power_of_two() && LEN_BITS_PER_SLOT <= 1 << 20);
const _: () = assert!(core::mem::size_of::<BucketSlot>() == 24);
const _: () = assert!(core::mem::size_of::<BucketBits>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coarse_reading_is_within_its_window_or_at_most_a_tick_ahead() {
        use crate::consts::COARSE_TICK_MAX_NS as TICK;
        let (now, w) = (5_000_000_000u64, 1_000_000_000);
        assert!(CoarseClock::within(now, now, w));
        assert!(CoarseClock::within(now, now - w + 1, w));
        assert!(!CoarseClock::within(now, now - w, w));
        assert!(!CoarseClock::within(now, 0, w));
        assert!(CoarseClock::within(now, now + TICK, w));
        assert!(!CoarseClock::within(now, now + TICK + 1, w));
        assert!(!CoarseClock::within(now, u64::MAX, w));
        // Early after boot, a window reaching back before 0.
        assert!(CoarseClock::within(10, 0, w) && CoarseClock::within(10, 10 + TICK, w));
    }

    #[test]
    fn a_bucket_is_placed_in_its_slots_half_of_len_bits() {
        let mut seen = [0u8; 2 * LEN_BITS_PER_SLOT as usize / 8];
        let mut distinct = 0;
        for slot in 0..2u32 {
            for top in 0..4096u32 {
                let t = (top * 16).to_be_bytes();
                let ([i, other], tag) = bucket_place(
                    slot_group(slot, 3),
                    crate::consts::AF_INET,
                    [t[2], t[3], 0, 0],
                );
                assert_ne!(tag, BUCKET_SHARED);
                assert_eq!(other / LEN_BITS_PER_SLOT, slot);
                assert_eq!(i / LEN_BITS_PER_SLOT, slot);
                let (byte, bit) = (i as usize / 8, 1u8 << (i % 8));
                if seen[byte] & bit == 0 {
                    distinct += 1;
                }
                seen[byte] |= bit;
            }
        }
        // Neighbouring /16s spread out: few of them share an index.
        assert!(distinct > 2 * 4096 * 95 / 100, "{distinct}");
    }

    #[test]
    fn prefix_masks_keep_exactly_the_first_len_bits() {
        for len in 0..=128u8 {
            let whole = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            let [hi, lo] = prefix_masks(len);
            assert_eq!(((hi as u128) << 64) | lo as u128, whole, "/{len}");
        }
    }

    #[test]
    fn a_bucket_gives_its_lengths_back_longest_first() {
        for (base, lens) in [
            (V4_BUCKET_LEN, &[16u8, 17, 24, 31, 32][..]),
            (V6_BUCKET_LEN, &[32, 33, 63, 64, 95, 96, 127, 128][..]),
        ] {
            let mut b = BucketBits::default();
            for &l in lens {
                b.set(base, l);
            }
            for l in 0..=128 {
                assert_eq!(b.has(base, l), lens.contains(&l), "/{l} from base {base}");
            }
            let mut popped = [0u8; 8];
            let mut n = 0;
            while let Some(l) = b.pop_longest(base) {
                popped[n] = l;
                n += 1;
            }
            let mut want = [0u8; 8];
            for (w, l) in want.iter_mut().zip(lens.iter().rev()) {
                *w = *l;
            }
            assert_eq!(popped[..n], want[..lens.len()]);
            assert!(b.is_empty());
        }
    }
}

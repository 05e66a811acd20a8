//! The decision, as `enforcer_common::model::verdict::judge` defines it, on map lookups.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_loop},
    maps::PerCpuArray,
};
use enforcer_common::{
    consts::*,
    maps::*,
    reason::{Reason, Verdict},
};

use crate::{
    maps::{
        ACTIVE, ALLOW, CGROUPS, CGROUP_MEMO, GROUPS, HOST, HOST_ADDRS, LEN_BITS, LOCAL_ADDRS,
        PORTS, SLOT_INFO, SOURCE_MEMO,
    },
    memo::{self, Place},
    parse::*,
};

pub struct Outcome {
    pub verdict: Verdict,
    pub reason: Reason,
    pub rule: u32,
    /// The policy slot that judged: its `SLOT_INFO` (generation, flags, event rate limits)
    /// is read only when an event may be due, so packets nobody judges pay nothing for it.
    pub slot: u32,
}

/// What differs between hooks: scope, and how a local sender may be recognised.
pub trait HookEnv {
    /// Whether the packet is bound for one of the host's own sockets.
    fn in_scope(&self, p: &Parsed) -> bool;
    /// Whether the sender is a process of the host's own namespace, which is judged by its
    /// cgroup (or the flow its cgroup opened), never by its source address.
    fn host_process(&self) -> bool {
        false
    }
    /// Sending hooks: the rule allowing the sender's cgroup, if any.
    fn cgroup_rule(&self, _slot_group: u32, _levels: u32) -> Option<u32> {
        None
    }
    /// Receiving hooks: whether a local sender's socket authorized this flow.
    fn flow_authorized(&self, _p: &Parsed) -> bool {
        false
    }
}

#[inline(always)]
fn refusal(enforce: bool) -> Verdict {
    if enforce {
        Verdict::Drop
    } else {
        Verdict::WouldDrop
    }
}

/// The slot the programs read.
#[inline(always)]
fn active_slot() -> u32 {
    match ACTIVE.get(0) {
        Some(a) => a.slot & 1,
        None => 0,
    }
}

/// Whether the policy in `slot` enforces drops no rule decides (malformed packets).
#[inline(always)]
fn global_enforce(slot: u32) -> bool {
    SLOT_INFO
        .get(slot)
        .is_some_and(|i| i.flags & SLOT_ENFORCE != 0)
}

#[inline(always)]
pub fn judge<H: HookEnv>(env: &H, p: &Parsed) -> Outcome {
    let mut out = Outcome {
        verdict: Verdict::Allow,
        reason: Reason::NotIp,
        rule: NO_RULE,
        slot: 0,
    };
    // Packets no policy judges return before any map is read.
    match p.kind {
        K_PORTS => {}
        K_NOT_IP => return out,
        K_BAD_IP => {
            out.slot = active_slot();
            out.verdict = refusal(global_enforce(out.slot));
            out.reason = Reason::Malformed;
            return out;
        }
        K_OTHER => {
            out.reason = Reason::NotTcpUdp;
            return out;
        }
        K_LATER_FRAGMENT => {
            out.reason = Reason::LaterFragment;
            return out;
        }
        kind => {
            if !env.in_scope(p) {
                out.reason = Reason::NotLocal;
                return out;
            }
            out.slot = active_slot();
            out.verdict = refusal(global_enforce(out.slot));
            out.reason = match kind {
                K_BAD_FRAGMENT => Reason::BadFragment,
                K_CHAIN_TOO_LONG => Reason::ExtChainTooLong,
                _ => Reason::Malformed,
            };
            return out;
        }
    }

    let slot = active_slot();
    out.slot = slot;
    // The cheapest question first: one array load answers "is this port protected?".
    let Some(proto_idx) = proto_index(p.proto) else {
        out.reason = Reason::NotTcpUdp;
        return out;
    };
    let entry = match PORTS.get(port_index(slot, proto_idx, p.dport)) {
        Some(e) => *e,
        None => PORT_UNPROTECTED,
    };
    if entry == PORT_UNPROTECTED {
        out.reason = Reason::NotProtected;
        return out;
    }
    if entry == PORT_FAILSAFE {
        out.reason = Reason::Failsafe;
        return out;
    }
    if !env.in_scope(p) {
        out.reason = Reason::NotLocal;
        return out;
    }
    let group = (entry - 1) & (MAX_GROUPS - 1);
    let Some(g) = GROUPS.get(slot * MAX_GROUPS + group) else {
        // Unreachable (the index is in range); refuse rather than pass if it ever is.
        out.verdict = refusal(global_enforce(slot));
        out.reason = Reason::Denied;
        return out;
    };
    let enforce = g.flags & GROUP_ENFORCE != 0;
    out.rule = g.primary_rule;
    if !p.complete {
        out.verdict = refusal(enforce);
        out.reason = Reason::Malformed;
        return out;
    }
    let sg = slot_group(slot, group);
    if !env.host_process() {
        if let Some(rule) = source_rule(g, sg, p) {
            out.rule = rule;
            out.reason = Reason::AllowedSource;
            return out;
        }
    }
    if let Some(rule) = env.cgroup_rule(sg, g.cgroup_levels) {
        out.rule = rule;
        out.reason = Reason::AllowedCgroup;
        return out;
    }
    if env.flow_authorized(p) {
        out.reason = Reason::AllowedFlow;
        return out;
    }
    out.verdict = refusal(enforce);
    out.reason = Reason::Denied;
    out
}

/// The lengths the group has under the source's bucket (`LEN_BITS`); none when the group
/// is not bucketed (its lengths are all in its own list).
#[inline(always)]
fn bucket(bucketed: bool, sg: u32, family: u8, src: &[u8; 16]) -> BucketBits {
    if !bucketed {
        return BucketBits::default();
    }
    let top = if family == AF_INET {
        [src[0], src[1], 0, 0]
    } else {
        [src[0], src[1], src[2], src[3]]
    };
    let ([first, second], tag) = bucket_place(sg, family, top);
    let at = |i| {
        LEN_BITS
            .get(i)
            .map_or_else(BucketBits::default, |s| s.lengths_for(tag))
    };
    let (a, b) = (at(first), at(second));
    BucketBits {
        lo: a.lo | b.lo,
        hi: a.hi | b.hi,
    }
}

/// The rule whose prefix holds the packet's source, if any.
///
/// A source claiming one of the host's own addresses is a local process (or a forgery of
/// one): a prefix holding the host's address must not admit it. Checked only on a match, so
/// refusals pay nothing for it.
///
/// A match is noted in this CPU's `SOURCE_MEMO` for the clock tick, so the source's next
/// packets to the group in the tick skip the probes (hashing and probing a 24-byte key: a
/// third of an allowed packet's cost). A noted match never outlives what it was worked out
/// from:
/// - the key holds the slot, and a slot is rewritten only `GRACE` (20 ms) after the
///   programs stopped reading it, by when its tick has ended (a tick is at most 10 ms);
/// - the entry's deadline is noted with it and checked on every recall;
/// - a source that becomes one of the host's addresses is refused once the tick ends.
#[inline(always)]
fn source_rule(g: &GroupInfo, sg: u32, p: &Parsed) -> Option<u32> {
    // Each family on a path of its own to the end: joined after the bucket, the two paths'
    // values spilled, and a refused packet paid about 3 ns more.
    if p.family == AF_INET {
        let bucketed = g.flags & GROUP_V4_BUCKETS != 0;
        let bits = bucket(bucketed, sg, AF_INET, &p.src);
        family_rule::<36>(sg, p, AF_INET, bits, g.n_v4, &g.v4_lens, V4_BUCKET_LEN)
    } else {
        let bucketed = g.flags & GROUP_V6_BUCKETS != 0;
        let bits = bucket(bucketed, sg, AF_INET6, &p.src);
        family_rule::<132>(sg, p, AF_INET6, bits, g.n_v6, &g.v6_lens, V6_BUCKET_LEN)
    }
}

/// `source_rule` for one family: its `n` lengths `lens` below the bucket length `base`, and
/// the source's bucket's `bits`.
#[inline(always)]
fn family_rule<const N: usize>(
    sg: u32,
    p: &Parsed,
    family: u8,
    bits: BucketBits,
    n: u32,
    lens: &[u8; N],
    base: u8,
) -> Option<u32> {
    // A source whose bucket has no lengths, in a group with none below it: nothing to
    // probe, so the walk's state (stores a refused flood would pay for) is never built.
    if bits.is_empty() && n == 0 {
        return None;
    }
    let (at, key) = source_memo_key(sg, p);
    if let Some(rule) = recall_rule(&SOURCE_MEMO, at, &key) {
        return Some(rule);
    }
    let found = allow_by_source::<N>(sg, family, n, lens, &p.src, bits, base)?;
    if is_host_addr(family, &p.src) {
        return None;
    }
    // Worked out again rather than kept across the walk: kept, they overflow ingress's
    // stack.
    let (at, key) = source_memo_key(sg, p);
    note_rule(&SOURCE_MEMO, at, &key, &found);
    Some(found.rule)
}

/// A source's `SOURCE_MEMO` place (`memo_place` of) and key: family, slot and group in one
/// word, then the address's two. The place is the source's alone, so a source's answers
/// for different rules meet there.
#[inline(always)]
fn source_memo_key(sg: u32, p: &Parsed) -> (u64, [u64; 3]) {
    let [a, b] = addr_words(&p.src);
    (a ^ b, [(p.family as u64) << 32 | sg as u64, a, b])
}

/// Longest-prefix match: one hash probe per distinct prefix length, longest first. In a
/// bucketed group, the lengths at or above the bucket length `base` come from the source's
/// bucket (`bits`), so a source far from every long prefix probes only the short ones.
///
/// Past the first length, the walks run under `bpf_loop`: the verifier then checks one
/// probe per walk instead of one per unrolled length (that was most of the programs' load
/// time). Each callback is a call and a return through the return thunk (about 9 ns
/// here), so each call probes a length that can match, and the first length of each walk
/// (all a one-length group needs) is probed inline.
#[inline(always)]
fn allow_by_source<const N: usize>(
    sg: u32,
    family: u8,
    n: u32,
    lens: &[u8; N],
    src: &[u8; 16],
    bits: BucketBits,
    base: u8,
) -> Option<AllowValue> {
    let mut walk = LenWalk::<N> {
        key: AllowKey {
            group: sg,
            family_len: 0,
            addr: *src,
        },
        src: addr_words(src),
        lens,
        bits,
        base,
        family,
        found: NOT_FOUND,
    };
    if let Some(len) = walk.bits.pop_longest(base) {
        if probe(&mut walk, len) {
            return Some(walk.found);
        }
        if !walk.bits.is_empty() {
            run_loop(128, probe_bucket::<N>, &mut walk);
            if walk.found.rule != NO_RULE {
                return Some(walk.found);
            }
        }
    }
    if n == 0 {
        return None;
    }
    if probe(&mut walk, lens[0]) {
        return Some(walk.found);
    }
    if n > 1 {
        let rest = if n as usize > N { N as u32 - 1 } else { n - 1 };
        run_loop(rest, probe_rest::<N>, &mut walk);
    }
    (walk.found.rule != NO_RULE).then_some(walk.found)
}

/// Runs `callback(i, state)` for `i` in `0..n` until it returns 1, under `bpf_loop`: the
/// verifier checks the callback once, whatever `n`.
#[inline(always)]
fn run_loop<T>(n: u32, callback: extern "C" fn(u64, *mut c_void) -> i64, state: &mut T) {
    // SAFETY: the callback reads `state` only while the loop runs, on this stack frame.
    unsafe {
        bpf_loop(
            n,
            callback as *mut c_void,
            state as *mut T as *mut c_void,
            0,
        )
    };
}

/// The length walk's state, on the caller's stack.
#[repr(C)]
struct LenWalk<'a, const N: usize> {
    key: AllowKey,
    /// The source address as two words (memory order), masked into `key` for each length.
    src: [u64; 2],
    lens: &'a [u8; N],
    /// The bucket's lengths not yet probed.
    bits: BucketBits,
    base: u8,
    family: u8,
    /// The matching entry; its rule is `NO_RULE` until one matches.
    found: AllowValue,
}

/// Probes length `len`; true (and `w.found` set) on a live match.
#[inline(always)]
fn probe<const N: usize>(w: &mut LenWalk<N>, len: u8) -> bool {
    w.key.family_len = (w.family as u32) << 8 | len as u32;
    let [hi, lo] = prefix_masks(len);
    // SAFETY: two words are sixteen bytes, and every byte pattern is an address.
    w.key.addr = unsafe {
        core::mem::transmute::<[u64; 2], [u8; 16]>([w.src[0] & hi.to_be(), w.src[1] & lo.to_be()])
    };
    // SAFETY: a hash map lookup; the value is copied out at once.
    if let Some(v) = unsafe { ALLOW.get(&w.key) } {
        if live(v) {
            // Field by field: copied whole, the rule travels in one 8-byte word with the
            // padding, and the verifier, reading 4 bytes of a spilled 8-byte value, stops
            // telling states apart (verified instructions went up fivefold).
            w.found.rule = v.rule;
            w.found.expires_boot_ns = v.expires_boot_ns;
            return true;
        }
    }
    false
}

/// The bucket's next longest length: 1 stops the loop (a match, or none left).
extern "C" fn probe_bucket<const N: usize>(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `allow_by_source` passes its `LenWalk`, which outlives the loop.
    let w = unsafe { &mut *(ctx as *mut LenWalk<N>) };
    match w.bits.pop_longest(w.base) {
        Some(len) => probe(w, len) as i64,
        None => 1,
    }
}

/// Length `i + 1` of the plain walk: 1 stops the loop (a match).
extern "C" fn probe_rest<const N: usize>(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: as in `probe_bucket`.
    let w = unsafe { &mut *(ctx as *mut LenWalk<N>) };
    match w.lens.get(i as usize + 1) {
        Some(&len) => probe(w, len) as i64,
        None => 1,
    }
}

/// Whether an allow entry still applies; reads the clock only for an entry with a
/// deadline.
#[inline(always)]
fn live(v: &AllowValue) -> bool {
    // SAFETY: a helper with no arguments.
    v.expires_boot_ns == 0 || v.live(unsafe { bpf_ktime_get_boot_ns() })
}

/// The rule `map` noted for `key` this tick, unless its allow has lapsed since: a memo
/// holds an allow's rule and deadline.
#[inline(always)]
fn recall_rule<const K: usize>(
    map: &PerCpuArray<Place<K, 2>>,
    at: u64,
    key: &[u64; K],
) -> Option<u32> {
    let [rule, expires] = memo::recall(map, at, memo::tick(), key)?;
    let noted = AllowValue {
        rule: rule as u32,
        _pad: 0,
        expires_boot_ns: expires,
    };
    live(&noted).then_some(noted.rule)
}

/// Notes the allow `found` for `key` for this tick.
#[inline(always)]
fn note_rule<const K: usize>(
    map: &PerCpuArray<Place<K, 2>>,
    at: u64,
    key: &[u64; K],
    found: &AllowValue,
) {
    let value = [found.rule as u64, found.expires_boot_ns];
    memo::note(map, at, memo::tick(), key, &value);
}

/// The rule allowing the deepest allowed ancestor of a cgroup; `ancestor(level)` returns
/// the id of the sender's cgroup ancestor at `level` (0 when deeper than the cgroup).
/// Only the levels some allowed cgroup sits at are probed, deepest first: the first inline,
/// the others under `bpf_loop` (see `allow_by_source`).
///
/// The ancestor at the deepest level names every ancestor above it (a cgroup stays under
/// its parent, and ids are not reused), so the answer for it is noted in this CPU's
/// `CGROUP_MEMO` for the clock tick, on the terms `source_rule` gives.
#[inline(always)]
pub fn cgroup_rule<F: Fn(i32) -> u64>(sg: u32, levels: u32, ancestor: F) -> Option<u32> {
    if levels == 0 {
        return None;
    }
    let mut walk = CgroupWalk {
        sg,
        levels,
        found: NOT_FOUND,
        ancestor,
    };
    let level = walk.pop_deepest();
    let id = (walk.ancestor)(level);
    let key = [sg as u64, id];
    if id != 0 {
        if let Some(rule) = recall_rule(&CGROUP_MEMO, id, &key) {
            return Some(rule);
        }
        probe_cgroup(&mut walk, id);
    }
    if walk.found.rule == NO_RULE && walk.levels != 0 {
        run_loop(MAX_CGROUP_LEVEL + 1, probe_level::<F>, &mut walk);
    }
    if walk.found.rule == NO_RULE {
        return None;
    }
    if id != 0 {
        note_rule(&CGROUP_MEMO, id, &key, &walk.found);
    }
    Some(walk.found.rule)
}

/// No entry found yet.
const NOT_FOUND: AllowValue = AllowValue {
    rule: NO_RULE,
    _pad: 0,
    expires_boot_ns: 0,
};

/// The cgroup walk's state, on the caller's stack.
#[repr(C)]
struct CgroupWalk<F> {
    sg: u32,
    /// The levels not yet probed.
    levels: u32,
    /// The matching entry; its rule is `NO_RULE` until one matches.
    found: AllowValue,
    ancestor: F,
}

impl<F> CgroupWalk<F> {
    /// Takes the deepest level left out of `levels` (which must not be empty).
    #[inline(always)]
    fn pop_deepest(&mut self) -> i32 {
        let level = 31 - self.levels.leading_zeros();
        self.levels &= !(1u32 << level);
        level as i32
    }
}

/// Probes ancestor `id`; true (and `w.found` set) on a live match.
#[inline(always)]
fn probe_cgroup<F>(w: &mut CgroupWalk<F>, id: u64) -> bool {
    let key = CgroupKey {
        group: w.sg,
        _pad: 0,
        cgroup_id: id,
    };
    // SAFETY: a hash map lookup; the value is copied out at once.
    if let Some(v) = unsafe { CGROUPS.get(&key) } {
        if live(v) {
            // Field by field: copied whole, the rule travels in one 8-byte word with the
            // padding, and the verifier, reading 4 bytes of a spilled 8-byte value, stops
            // telling states apart (verified instructions went up fivefold).
            w.found.rule = v.rule;
            w.found.expires_boot_ns = v.expires_boot_ns;
            return true;
        }
    }
    false
}

/// The next deepest level: 1 stops the loop (a match, or none left).
extern "C" fn probe_level<F: Fn(i32) -> u64>(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `cgroup_rule` passes its `CgroupWalk`, which outlives the loop.
    let w = unsafe { &mut *(ctx as *mut CgroupWalk<F>) };
    if w.levels == 0 {
        return 1;
    }
    let level = w.pop_deepest();
    let id = (w.ancestor)(level);
    (id != 0 && probe_cgroup(w, id)) as i64
}

/// Loopback, broadcast and multicast: bound for the host without being in LOCAL_ADDRS.
#[inline(always)]
pub fn is_loopback(family: u8, a: &[u8; 16]) -> bool {
    if family == AF_INET {
        a[0] == 127
    } else {
        a[..15] == [0; 15] && a[15] == 1
    }
}

/// Whether `a` is one of the host's addresses (or loopback, broadcast, multicast).
#[inline(always)]
pub fn is_host_addr(family: u8, a: &[u8; 16]) -> bool {
    is_special_local(family, a) || in_host_addrs(family, a)
}

/// Loopback, broadcast and multicast.
#[inline(always)]
fn is_special_local(family: u8, a: &[u8; 16]) -> bool {
    if family == AF_INET {
        a[0] == 127 || a[0] & 0xf0 == 0xe0 || a[..4] == [255; 4]
    } else {
        is_loopback(family, a) || a[0] == 0xff
    }
}

/// `HOST_ADDRS` first: its slot names the one host address that has it, or none, or says
/// to ask `LOCAL_ADDRS` (several share it, or the daemon is rewriting it).
#[inline(always)]
fn in_host_addrs(family: u8, a: &[u8; 16]) -> bool {
    let Some(s) = HOST_ADDRS.get(host_addr_index(family, a)) else {
        return in_local_addrs(family, a);
    };
    let exact = if family == AF_INET {
        HOST_ADDR_V4
    } else {
        HOST_ADDR_V6
    };
    match s.state {
        HOST_ADDR_EMPTY => false,
        HOST_ADDR_SHARED => in_local_addrs(family, a),
        state => state == exact && addr_words(&s.addr) == addr_words(a),
    }
}

/// An address as two words, for a two-compare equality (the BPF target has no memcmp).
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    ]
}

#[inline(always)]
fn in_local_addrs(family: u8, a: &[u8; 16]) -> bool {
    let mut key = LocalAddrKey {
        family: family as u32,
        addr: [0; 16],
    };
    // The address sits 4 bytes into the key: copied as words, a compiler allowed
    // misaligned accesses (see enforcer-ebpf/build.rs) stores 8 bytes at 4 mod 8, which the
    // verifier refuses on the stack. Volatile 4-byte stores keep each one aligned.
    for (i, w) in a.chunks_exact(4).enumerate() {
        let w = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
        // SAFETY: word `i` of the 16-byte address, inside `key`.
        unsafe { (key.addr.as_mut_ptr() as *mut u32).add(i).write_volatile(w) };
    }
    // SAFETY: a hash map lookup whose value is not kept.
    unsafe { LOCAL_ADDRS.get(&key) }.is_some()
}

/// The host's network namespace cookie.
#[inline(always)]
pub fn host_netns() -> u64 {
    match HOST.get(0) {
        Some(h) => h.netns_cookie,
        None => 0,
    }
}

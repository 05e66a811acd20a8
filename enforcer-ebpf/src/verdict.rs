//! The decision, as `enforcer_common::model::verdict::judge` defines it, on map lookups.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_loop},
};
use enforcer_common::{
    consts::*,
    maps::*,
    reason::{Reason, Verdict},
};

use crate::{
    maps::{
        ACTIVE, ALLOW, CGROUPS, GROUPS, HOST, HOST_ADDRS, LEN_BITS, LOCAL_ADDRS, PORTS, SLOT_INFO,
    },
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
        let by_source = if p.family == AF_INET {
            let bits = bucket(g.flags & GROUP_V4_BUCKETS != 0, sg, AF_INET, &p.src);
            allow_by_source::<36>(sg, AF_INET, g.n_v4, &g.v4_lens, &p.src, bits, V4_BUCKET_LEN)
        } else {
            let bits = bucket(g.flags & GROUP_V6_BUCKETS != 0, sg, AF_INET6, &p.src);
            allow_by_source::<132>(
                sg,
                AF_INET6,
                g.n_v6,
                &g.v6_lens,
                &p.src,
                bits,
                V6_BUCKET_LEN,
            )
        };
        // A source claiming one of the host's own addresses is a local process (or a
        // forgery of one): a prefix holding the host's address must not admit it. Checked
        // only on a match, so refusals pay nothing for it.
        if let Some(rule) = by_source {
            if !is_host_addr(p.family, &p.src) {
                out.rule = rule;
                out.reason = Reason::AllowedSource;
                return out;
            }
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

/// The lengths the group has under the source's bucket (`LEN_BITS`), or None when the
/// group is not bucketed (every length is probed).
#[inline(always)]
fn bucket(bucketed: bool, sg: u32, family: u8, src: &[u8; 16]) -> Option<BucketBits> {
    if !bucketed {
        return None;
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
    Some(BucketBits {
        lo: a.lo | b.lo,
        hi: a.hi | b.hi,
    })
}

/// Longest-prefix match: one hash probe per distinct prefix length, longest first. In a
/// bucketed group (`bits`), the lengths at or above the bucket length `base` come from the
/// source's bucket, so a source far from every long prefix probes only the short ones.
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
    bits: Option<BucketBits>,
    base: u8,
) -> Option<u32> {
    let bits = bits.unwrap_or_default();
    // A source whose bucket has no lengths, in a group with none below it: nothing to
    // probe, so the walk's state (stores a refused flood would pay for) is never built.
    if bits.is_empty() && n == 0 {
        return None;
    }
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
        rule: NO_RULE,
    };
    if let Some(len) = walk.bits.pop_longest(base) {
        if probe(&mut walk, len) {
            return Some(walk.rule);
        }
        if !walk.bits.is_empty() {
            run_loop(128, probe_bucket::<N>, &mut walk);
            if walk.rule != NO_RULE {
                return Some(walk.rule);
            }
        }
    }
    if n == 0 {
        return None;
    }
    if probe(&mut walk, lens[0]) {
        return Some(walk.rule);
    }
    if n > 1 {
        let rest = if n as usize > N { N as u32 - 1 } else { n - 1 };
        run_loop(rest, probe_rest::<N>, &mut walk);
    }
    found(walk.rule)
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

/// A walk's result: its rule, unless it is still `NO_RULE`.
#[inline(always)]
fn found(rule: u32) -> Option<u32> {
    if rule == NO_RULE {
        None
    } else {
        Some(rule)
    }
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
    /// The matching rule, `NO_RULE` until one matches.
    rule: u32,
}

/// Probes length `len`; true (and `w.rule` set) on a live match.
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
            w.rule = v.rule;
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

/// The rule allowing the deepest allowed ancestor of a cgroup; `ancestor(level)` returns
/// the id of the sender's cgroup ancestor at `level` (0 when deeper than the cgroup).
/// Only the levels some allowed cgroup sits at are probed, deepest first: the first inline,
/// the others under `bpf_loop` (see `allow_by_source`).
#[inline(always)]
pub fn cgroup_rule<F: Fn(i32) -> u64>(sg: u32, levels: u32, ancestor: F) -> Option<u32> {
    let mut walk = CgroupWalk {
        sg,
        levels,
        rule: NO_RULE,
        ancestor,
    };
    if probe_deepest_level(&mut walk) == 0 && walk.levels != 0 {
        run_loop(MAX_CGROUP_LEVEL + 1, probe_level::<F>, &mut walk);
    }
    found(walk.rule)
}

/// The cgroup walk's state, on the caller's stack.
#[repr(C)]
struct CgroupWalk<F> {
    sg: u32,
    /// The levels not yet probed.
    levels: u32,
    /// The matching rule, `NO_RULE` until one matches.
    rule: u32,
    ancestor: F,
}

/// Probes the deepest level left: 1 when it matched or none was left, else 0.
#[inline(always)]
fn probe_deepest_level<F: Fn(i32) -> u64>(w: &mut CgroupWalk<F>) -> i64 {
    if w.levels == 0 {
        return 1;
    }
    let level = 31 - w.levels.leading_zeros();
    w.levels &= !(1u32 << level);
    let id = (w.ancestor)(level as i32);
    if id == 0 {
        return 0;
    }
    let key = CgroupKey {
        group: w.sg,
        _pad: 0,
        cgroup_id: id,
    };
    // SAFETY: a hash map lookup; the value is copied out at once.
    if let Some(v) = unsafe { CGROUPS.get(&key) } {
        if live(v) {
            w.rule = v.rule;
            return 1;
        }
    }
    0
}

extern "C" fn probe_level<F: Fn(i32) -> u64>(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `cgroup_rule` passes its `CgroupWalk`, which outlives the loop.
    probe_deepest_level(unsafe { &mut *(ctx as *mut CgroupWalk<F>) })
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

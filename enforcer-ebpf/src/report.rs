//! Counters for every packet, and an audit event for every judged one.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use enforcer_common::{
    consts::{COARSE_TICK_MAX_NS, MAX_RULES, NO_RULE},
    event::{PacketEvent, EVENT_PACKET},
    maps::{Bucket, RuleStats, SlotInfo, GLOBAL_BUCKET, NO_RULE_INDEX, SLOT_REPORT_ALLOWED},
    reason::{counter_index, Hook, Reason, Verdict},
};

use crate::{
    clock,
    maps::{EVENTS, REASONS, RULE_STATS, SLOT_INFO},
    parse::Parsed,
    verdict::Outcome,
};

/// A per-CPU record: no other program touches it concurrently.
#[inline(always)]
fn stats(idx: u32) -> Option<&'static mut RuleStats> {
    // SAFETY: a per-CPU slot, valid for the program's run, used by this CPU alone.
    RULE_STATS.get_ptr_mut(idx).map(|s| unsafe { &mut *s })
}

/// Takes one event's worth of credit from `b` (a per-CPU token bucket, so no locks);
/// false when the bucket is empty. `cost` 0 means unlimited.
#[inline(always)]
fn take_token(b: &mut Bucket, cost: u64, burst: u32, now: u64) -> bool {
    if cost == 0 {
        return true;
    }
    // `now` advances a tick at a time: a bucket holds at least a tick's credit, or a tick
    // worth more than the burst would lose the excess and report below the rate.
    let cap = (cost * burst.max(1) as u64).max(COARSE_TICK_MAX_NS);
    let mut credit = b.credit_ns.saturating_add(now.saturating_sub(b.last_ns));
    if credit > cap {
        credit = cap;
    }
    b.last_ns = now;
    if credit >= cost {
        b.credit_ns = credit - cost;
        true
    } else {
        b.credit_ns = credit;
        false
    }
}

/// Counts a packet by hook and reason.
#[inline(always)]
pub fn count(hook: Hook, reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(counter_index(hook, reason)) {
        // SAFETY: a per-CPU slot: no other program touches it concurrently.
        unsafe { *c += 1 };
    }
}

/// Counts the packet and, if it was judged (and is a refusal, or allowed packets are
/// asked for), reports it. `fill` adds what only the hook knows. The verdict never waits
/// on the ring buffer: a full one costs an event (counted), not a decision.
#[inline(always)]
pub fn finish(hook: Hook, out: &Outcome, p: &Parsed, fill: impl FnOnce(&mut PacketEvent)) {
    count(hook, out.reason);
    let has_rule = out.rule < MAX_RULES;
    if !has_rule && !out.reason.is_judged() {
        return;
    }
    let Some(rule) = stats(if has_rule { out.rule } else { NO_RULE_INDEX }) else {
        return;
    };
    if has_rule {
        if let Some(n) = rule.packets.get_mut(out.verdict as usize) {
            *n += 1;
        }
    }
    if !out.reason.is_judged() {
        return;
    }
    let info = match SLOT_INFO.get(out.slot) {
        Some(i) => i,
        None => &SlotInfo::DEFAULT,
    };
    if out.verdict == Verdict::Allow && info.flags & SLOT_REPORT_ALLOWED == 0 {
        return;
    }
    let Some(global) = stats(GLOBAL_BUCKET) else {
        return;
    };
    // The coarse clock for the rate limits; the precise one (the TSC, at several times the
    // cost) only for an event's timestamp.
    let now = clock::read(&mut global.clock);
    // Rate limits: every event held back is counted, so reported + suppressed + lost
    // always adds up to the packets judged.
    if !take_token(&mut rule.bucket, info.rule_cost_ns, info.burst, now)
        || !take_token(&mut global.bucket, info.global_cost_ns, info.burst, now)
    {
        rule.suppressed += 1;
        global.suppressed += 1;
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) else {
        global.lost += 1;
        return;
    };
    // Written field by field into the reserved record: a struct built first would be
    // assembled on the stack and then copied in.
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record (8-aligned, sized for a PacketEvent); every field
    // is written before `fill` borrows it.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).generation = info.generation;
        // Volatile: four plain zero stores in a row become a call to `memset`, and on this
        // VM every BPF-to-BPF call pays a return thunk.
        // (`comm` is 8-aligned: it follows two u64 fields in a repr(C) struct.)
        core::ptr::addr_of_mut!((*ev).cgroup_id).write_volatile(0);
        core::ptr::addr_of_mut!((*ev).pid_tgid).write_volatile(0);
        let comm = core::ptr::addr_of_mut!((*ev).comm) as *mut u64;
        comm.write_volatile(0);
        comm.add(1).write_volatile(0);
        (*ev).src = p.src;
        (*ev).dst = p.dst;
        (*ev).ifindex = 0;
        (*ev).rule = if has_rule { out.rule } else { NO_RULE };
        (*ev).pkt_len = 0;
        (*ev).sport = p.sport;
        (*ev).dport = p.dport;
        (*ev).kind = EVENT_PACKET;
        (*ev).verdict = out.verdict as u8;
        (*ev).reason = out.reason as u8;
        (*ev).hook = hook as u8;
        (*ev).proto = p.proto;
        (*ev).family = p.family;
        (*ev)._pad = [0; 2];
        fill(&mut *ev);
    }
    entry.submit(0);
}

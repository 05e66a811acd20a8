//! Counters for every packet, and an audit event for every judged one.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use enforcer_common::{
    consts::{MAX_RULES, NO_RULE},
    event::PacketEvent,
    maps::SLOT_REPORT_ALLOWED,
    reason::{counter_index, Hook, Verdict, RULE_COUNTER_KINDS},
};

use crate::{
    maps::{EVENTS, EVENT_LOSS, REASONS, RULE_COUNTS},
    parse::Parsed,
    verdict::Outcome,
};

#[inline(always)]
fn bump(counter: Option<*mut u64>) {
    if let Some(c) = counter {
        // SAFETY: a per-CPU slot: no other program touches it concurrently.
        unsafe { *c += 1 };
    }
}

/// Counts the packet and, if it was judged (and is a refusal, or allowed packets are
/// asked for), reports it. `fill` adds what only the hook knows. The verdict never waits
/// on the ring buffer: a full one costs an event (counted), not a decision.
#[inline(always)]
pub fn finish(hook: Hook, out: &Outcome, p: &Parsed, fill: impl FnOnce(&mut PacketEvent)) {
    bump(REASONS.get_ptr_mut(counter_index(hook, out.reason)));
    if out.rule < MAX_RULES {
        bump(RULE_COUNTS.get_ptr_mut(out.rule * RULE_COUNTER_KINDS + out.verdict as u32));
    }
    if !out.reason.is_judged()
        || (out.verdict == Verdict::Allow && out.slot_flags & SLOT_REPORT_ALLOWED == 0)
    {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) else {
        bump(EVENT_LOSS.get_ptr_mut(0));
        return;
    };
    let mut ev = PacketEvent::EMPTY;
    // SAFETY: a helper with no arguments.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.generation = out.generation;
    ev.src = p.src;
    ev.dst = p.dst;
    ev.rule = if out.rule < MAX_RULES { out.rule } else { NO_RULE };
    ev.sport = p.sport;
    ev.dport = p.dport;
    ev.verdict = out.verdict as u8;
    ev.reason = out.reason as u8;
    ev.hook = hook as u8;
    ev.proto = p.proto;
    ev.family = p.family;
    fill(&mut ev);
    entry.write(ev);
    entry.submit(0);
}

//! Reading the per-CPU counters.

use enforcer_common::{
    consts::MAX_RULES,
    reason::{counter_index, Hook, Reason, Verdict, RULE_COUNTER_KINDS},
};

use super::programs::Maps;

/// Sum of a per-CPU counter across CPUs (0 if unreadable).
fn sum(map: &aya::maps::PerCpuArray<aya::maps::MapData, u64>, index: u32) -> u64 {
    map.get(&index, 0).map_or(0, |v| v.iter().sum())
}

/// Packets per (hook, reason).
pub fn by_reason(maps: &Maps, hook: Hook, reason: Reason) -> u64 {
    sum(&maps.reasons, counter_index(hook, reason))
}

/// Packets per (rule, verdict).
pub fn by_rule(maps: &Maps, rule: u32, verdict: Verdict) -> u64 {
    if rule >= MAX_RULES {
        return 0;
    }
    sum(
        &maps.rule_counts,
        rule * RULE_COUNTER_KINDS + verdict as u32,
    )
}

/// Events the kernel could not put in the ring buffer.
pub fn events_lost(maps: &Maps) -> u64 {
    sum(&maps.event_loss, 0)
}

/// Events the rate limits held back for rule index `idx` (`NO_RULE_INDEX` for events no
/// rule decided).
pub fn suppressed(maps: &Maps, idx: u32) -> u64 {
    sum(&maps.suppressed, idx)
}

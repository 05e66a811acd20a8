//! Reading the per-CPU counters.

use enforcer_common::{
    consts::MAX_RULES,
    maps::{RuleStats, GLOBAL_BUCKET},
    reason::{counter_index, Hook, Reason, Verdict},
};

use super::programs::Maps;

/// Sum of a per-CPU counter across CPUs (0 if unreadable).
fn sum(map: &aya::maps::PerCpuArray<aya::maps::MapData, u64>, index: u32) -> u64 {
    map.get(&index, 0).map_or(0, |v| v.iter().sum())
}

/// Sum of one field of a `RULE_STATS` record across CPUs (0 if unreadable).
fn rule_sum(maps: &Maps, index: u32, field: impl Fn(&RuleStats) -> u64) -> u64 {
    maps.rule_stats
        .get(&index, 0)
        .map_or(0, |v| v.iter().map(&field).sum())
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
    rule_sum(maps, rule, |s| s.packets[verdict as usize])
}

/// Events the kernel could not put in the ring buffer.
pub fn events_lost(maps: &Maps) -> u64 {
    rule_sum(maps, GLOBAL_BUCKET, |s| s.lost)
}

/// Events the rate limits held back for rule index `idx` (`NO_RULE_INDEX` for events no
/// rule decided, `GLOBAL_BUCKET` for the total).
pub fn suppressed(maps: &Maps, idx: u32) -> u64 {
    rule_sum(maps, idx, |s| s.suppressed)
}

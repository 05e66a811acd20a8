//! Record keeping: the audit records the policy owner writes (policy changes, lost and
//! suppressed events, expiries a stopped daemon could not report).

use super::*;

impl State {
    /// Reports grants and entries that expired while no daemon was running (the kernel
    /// stopped honouring them on time all the same).
    pub fn report_late_expiries(&mut self) {
        let now = now_unix();
        let due = self.grants.grants.iter().any(|g| g.expires_unix <= now)
            || self.policy.expiring.iter().any(|e| e.expires_unix <= now);
        if due {
            self.expire(true);
        }
    }

    /// A `lost` event for events the kernel could not queue since the last report.
    pub(super) fn report_lost(&mut self) {
        let lost = counters::events_lost(&self.loaded.maps);
        if lost > self.kernel_lost {
            let r = Record {
                ts: crate::clock::now_rfc3339_nanos(),
                event: "lost",
                scope: Some("kernel"),
                count: Some(lost - self.kernel_lost),
                policy: Some(self.generation),
                ..Record::default()
            };
            let _ = self.audit.send(AuditMsg::Record(Box::new(r)));
            self.kernel_lost = lost;
        }
    }

    /// Reports what is still unreported (lost and suppressed counts): on stopping.
    pub fn flush_reports(&mut self) {
        self.report_lost();
        self.report_suppressed();
    }

    /// One `suppressed` event per rule whose events the kernel held back since the last
    /// report, with the exact count.
    pub(super) fn report_suppressed(&mut self) {
        let maps = &self.loaded.maps;
        let total = counters::suppressed(maps, GLOBAL_BUCKET);
        if total == self.suppressed_total {
            return;
        }
        self.suppressed_total = total;
        let n = self.policy.verdict.rules.len() as u32;
        for idx in (0..n).chain([NO_RULE_INDEX]) {
            let now = counters::suppressed(maps, idx);
            let seen = self.suppressed_seen.entry(idx).or_default();
            if now > *seen {
                let r = Record {
                    ts: crate::clock::now_rfc3339_nanos(),
                    event: "suppressed",
                    rule: self
                        .policy
                        .verdict
                        .rules
                        .get(idx as usize)
                        .map(|r| r.name.clone()),
                    count: Some(now - *seen),
                    policy: Some(self.generation),
                    ..Record::default()
                };
                *seen = now;
                let _ = self.audit.send(AuditMsg::Record(Box::new(r)));
            }
        }
    }

    pub(super) fn policy_record(&self, action: &'static str, old: Option<&Policy>) -> Record {
        let mut r = Record {
            ts: crate::clock::now_rfc3339_nanos(),
            event: "policy",
            action: Some(action),
            policy: Some(self.generation),
            hash: Some(self.policy.hash.clone()),
            file: Some(self.policy.path.display().to_string()),
            ..Record::default()
        };
        if let Some(old) = old {
            let by_name = |p: &Policy| {
                p.verdict
                    .rules
                    .iter()
                    .map(|r| (r.name.clone(), r.clone()))
                    .collect::<BTreeMap<_, _>>()
            };
            let (before, after) = (by_name(old), by_name(&self.policy));
            r.rules_added = Some(
                after
                    .keys()
                    .filter(|k| !before.contains_key(*k))
                    .cloned()
                    .collect(),
            );
            r.rules_removed = Some(
                before
                    .keys()
                    .filter(|k| !after.contains_key(*k))
                    .cloned()
                    .collect(),
            );
            r.rules_changed = Some(
                after
                    .iter()
                    .filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v))
                    .map(|(k, _)| k.clone())
                    .collect(),
            );
        }
        r
    }
}

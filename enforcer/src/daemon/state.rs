//! What the policy owner holds, and every change it makes: apply, reload (with an optional
//! confirmation deadline), confirm, follow the host (addresses, cgroups), report status.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_common::{
    maps::{GLOBAL_BUCKET, NO_RULE_INDEX},
    reason::{Hook, Reason, Verdict},
};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::audit::{Control, Stats};
use crate::{
    events::{record, Record},
    grants::{describe, now_unix, Grant, Store},
    kernel::{counters, host, programs, writer::Writer, Loaded},
    policy::{self, compile, compile_after, Compiled, Policy},
};

/// How often held-back events are summed up in `suppressed` events.
const SUPPRESSED_INTERVAL: Duration = Duration::from_secs(1);

/// A policy applied with `--confirm-within`: the one to restore unless confirmed.
struct Pending {
    previous: Policy,
    deadline: Instant,
    deadline_wall: String,
}

pub struct State {
    loaded: Loaded,
    writer: Writer,
    /// The policy file as validated.
    pub policy: Policy,
    /// What applies now: `policy` without lapsed entries, with the grants in force.
    pub effective: Policy,
    grants: Store,
    /// When the next policy entry or grant lapses (unix seconds).
    next_expiry: Option<u64>,
    compiled: Compiled,
    cgroup_ids: BTreeMap<String, u64>,
    generation: u64,
    applied_at: String,
    started_at: String,
    cgroup_mount: PathBuf,
    config_path: PathBuf,
    local_addrs: BTreeSet<IpAddr>,
    kernel_lost: u64,
    /// Suppressed-event counts already reported: the total, and per rule index.
    suppressed_total: u64,
    suppressed_seen: BTreeMap<u32, u64>,
    last_suppressed_report: Instant,
    pending: Option<Pending>,
    audit: UnboundedSender<Control>,
    stats: Arc<Stats>,
}

impl State {
    /// Writes the first policy and attaches everything (maps first: no packet ever meets an
    /// empty policy).
    pub fn start(
        loaded: Loaded,
        policy: Policy,
        grants: Store,
        cgroup_mount: PathBuf,
        config_path: PathBuf,
        audit: UnboundedSender<Control>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Self> {
        let effective = policy.effective(now_unix(), &grants.entries(&policy));
        let compiled = compile(&effective).with_context(|| policy.path.display().to_string())?;
        // An adopted policy stays active while the new one is written to the other slot.
        let (writer, generation) = match loaded.adopted {
            Some((slot, generation)) => (Writer::adopt(slot), generation + 1),
            None => (Writer::new(), 1),
        };
        let mut st = State {
            loaded,
            writer,
            policy,
            effective,
            grants,
            next_expiry: None,
            compiled,
            cgroup_ids: BTreeMap::new(),
            generation,
            applied_at: record::now(),
            started_at: record::now(),
            cgroup_mount,
            config_path,
            local_addrs: BTreeSet::new(),
            kernel_lost: 0,
            suppressed_total: 0,
            suppressed_seen: BTreeMap::new(),
            last_suppressed_report: Instant::now(),
            pending: None,
            audit,
            stats,
        };
        if st.loaded.adopted.is_some() {
            // Adopted counters: what they hold was the earlier daemon's to report (it
            // reports its last figures when it stops); only what comes after is ours.
            let maps = &st.loaded.maps;
            st.kernel_lost = counters::events_lost(maps);
            st.suppressed_total = counters::suppressed(maps, GLOBAL_BUCKET);
            let n = st.policy.verdict.rules.len() as u32;
            st.suppressed_seen = (0..n)
                .chain([NO_RULE_INDEX])
                .map(|i| (i, counters::suppressed(maps, i)))
                .collect();
        }
        st.sync_local_addrs()?;
        st.cgroup_ids = resolve_cgroups(&st.cgroup_mount, &st.compiled);
        st.writer.apply(
            &mut st.loaded.maps,
            &st.compiled,
            &st.cgroup_ids,
            st.generation,
        )?;
        st.attach()?;
        st.next_expiry = st.compute_next_expiry();
        Ok(st)
    }

    fn compute_next_expiry(&self) -> Option<u64> {
        let now = now_unix();
        [self.policy.next_expiry(now), self.grants.next_expiry()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Tells the audit stream about the first policy.
    pub fn announce_initial(&mut self) {
        self.tell_audit();
        let r = self.policy_record("applied", None);
        let _ = self.audit.send(Control::Record(Box::new(r)));
        info!(generation = self.generation, hash = %self.policy.hash, file = %self.policy.path.display(), "policy applied");
    }

    fn tell_audit(&self) {
        let names: Vec<String> = self
            .policy
            .verdict
            .rules
            .iter()
            .map(|r| r.name.clone())
            .collect();
        if let Err(e) = super::history::remember(self.grants.dir(), self.generation, &names) {
            warn!("remembering rule names: {e:#}");
        }
        let _ = self.audit.send(Control::RuleNames(self.generation, names));
        let ids = self
            .cgroup_ids
            .iter()
            .map(|(p, i)| (*i, p.clone()))
            .collect();
        let _ = self.audit.send(Control::Cgroups(ids));
    }

    fn attach(&mut self) -> anyhow::Result<()> {
        self.loaded
            .attach_cgroup(&self.cgroup_mount, &self.policy.attach.cgroup)?;
        self.sync_interfaces()
    }

    /// XDP on exactly the interfaces that exist now and match the policy's names and
    /// globs: ones that appear get it, ones that go away (or no longer match) are forgotten.
    fn sync_interfaces(&mut self) -> anyhow::Result<()> {
        let patterns = &self.policy.attach.interfaces;
        let present = host::interfaces();
        let wanted: BTreeSet<String> = present
            .iter()
            .filter(|n| patterns.iter().any(|p| host::glob_match(p, n)))
            .cloned()
            .collect();
        let attached: Vec<String> = self
            .loaded
            .xdp_attachments()
            .map(|(k, _)| k.clone())
            .collect();
        for iface in attached {
            if !wanted.contains(&iface) {
                self.loaded.detach_xdp(&iface);
                info!(
                    iface,
                    "XDP detached (interface gone or no longer in the policy)"
                );
            }
        }
        let mut first_error = None;
        for iface in &wanted {
            if self.loaded.has_xdp(iface) {
                continue;
            }
            match self.loaded.attach_xdp(iface, self.policy.attach.xdp_mode) {
                Ok(a) => info!(iface, mode = a.mode, "XDP attached"),
                Err(e) => {
                    warn!(iface, "{e:#}");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn sync_local_addrs(&mut self) -> anyhow::Result<()> {
        let now = host::local_addrs().context("listing this host's addresses")?;
        for a in now.difference(&self.local_addrs) {
            self.loaded
                .maps
                .local_addrs
                .insert(host::addr_key(*a), 1, 0)
                .context("adding a host address")?;
        }
        for a in self.local_addrs.difference(&now) {
            let _ = self.loaded.maps.local_addrs.remove(&host::addr_key(*a));
        }
        self.local_addrs = now;
        Ok(())
    }

    /// Applies `new` as the next generation; returns the policy it replaced.
    fn apply(&mut self, new: Policy) -> anyhow::Result<Policy> {
        let effective = new.effective(now_unix(), &self.grants.entries(&new));
        let compiled = compile_after(&effective, Some(&self.compiled))
            .with_context(|| new.path.display().to_string())?;
        let ids = resolve_cgroups(&self.cgroup_mount, &compiled);
        let generation = self.generation + 1;
        self.writer
            .apply(&mut self.loaded.maps, &compiled, &ids, generation)?;
        let old = std::mem::replace(&mut self.policy, new);
        self.effective = effective;
        self.compiled = compiled;
        self.cgroup_ids = ids;
        self.generation = generation;
        self.applied_at = record::now();
        self.next_expiry = self.compute_next_expiry();
        if let Err(e) = self.attach() {
            warn!("attaching for the new policy: {e:#}");
        }
        self.tell_audit();
        Ok(old)
    }

    /// Re-reads the policy file and applies it. A policy that cannot be used is refused
    /// with its diagnostics and the policy in force stays.
    pub fn reload(&mut self, confirm_within: Option<Duration>) -> Result<Value, String> {
        let result = policy::load(&self.config_path)
            .map_err(anyhow::Error::from)
            .and_then(|p| self.apply(p));
        match result {
            Ok(old) => {
                let action = if confirm_within.is_some() {
                    "applied-pending-confirmation"
                } else {
                    "applied"
                };
                let r = self.policy_record(action, Some(&old));
                let _ = self.audit.send(Control::Record(Box::new(r)));
                info!(generation = self.generation, hash = %self.policy.hash, "policy reloaded");
                match confirm_within {
                    Some(d) => {
                        // A reload during a pending one keeps the last confirmed policy.
                        let previous = match self.pending.take() {
                            Some(p) => p.previous,
                            None => old,
                        };
                        let wall = std::time::SystemTime::now() + d;
                        self.pending = Some(Pending {
                            previous,
                            deadline: Instant::now() + d,
                            deadline_wall: humantime::format_rfc3339_seconds(wall).to_string(),
                        });
                    }
                    None => self.pending = None,
                }
                Ok(
                    json!({"generation": self.generation, "hash": self.policy.hash, "confirm_by": self.pending.as_ref().map(|p| p.deadline_wall.clone())}),
                )
            }
            Err(e) => {
                let msg = format!("{e:#}");
                warn!(
                    generation = self.generation,
                    "reload refused; the policy in force stays:\n{msg}"
                );
                let mut r = self.policy_record("refused", None);
                r.error = Some(msg.clone());
                r.file = Some(self.config_path.display().to_string());
                let _ = self.audit.send(Control::Record(Box::new(r)));
                Err(format!(
                    "reload refused; generation {} stays in force:\n{msg}",
                    self.generation
                ))
            }
        }
    }

    /// Keeps the policy applied with a confirmation deadline.
    pub fn confirm(&mut self) -> Result<Value, String> {
        match self.pending.take() {
            None => Err("no policy is waiting for confirmation".into()),
            Some(_) => {
                let r = self.policy_record("confirmed", None);
                let _ = self.audit.send(Control::Record(Box::new(r)));
                info!(generation = self.generation, "policy confirmed");
                Ok(json!({"generation": self.generation, "hash": self.policy.hash}))
            }
        }
    }

    /// Timers: follow the host, report kernel-side event loss, enforce deadlines.
    pub fn tick(&mut self) {
        if let Err(e) = self.sync_local_addrs() {
            warn!("{e:#}");
        }
        // Failures were logged; the next tick tries again.
        let _ = self.sync_interfaces();
        let ids = resolve_cgroups(&self.cgroup_mount, &self.compiled);
        if ids != self.cgroup_ids {
            match self
                .writer
                .apply(&mut self.loaded.maps, &self.compiled, &ids, self.generation)
            {
                Ok(_) => {
                    info!(?ids, "allowed cgroups changed on the host; entries updated");
                    self.cgroup_ids = ids;
                    self.tell_audit();
                }
                Err(e) => warn!("updating allowed cgroups: {e:#}"),
            }
        }
        self.report_lost();
        if self.next_expiry.is_some_and(|t| t <= now_unix()) {
            self.expire();
        }
        if self.last_suppressed_report.elapsed() >= SUPPRESSED_INTERVAL {
            self.last_suppressed_report = Instant::now();
            self.report_suppressed();
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| Instant::now() >= p.deadline)
        {
            let p = self.pending.take().expect("checked");
            match self.apply(p.previous) {
                Ok(old) => {
                    warn!(
                        generation = self.generation,
                        "not confirmed in time: previous policy restored"
                    );
                    let r = self.policy_record("rolled-back", Some(&old));
                    let _ = self.audit.send(Control::Record(Box::new(r)));
                }
                Err(e) => warn!("restoring the previous policy failed: {e:#}"),
            }
        }
    }

    /// Grants and policy entries whose time is up stop applying: the policy is applied
    /// again without them (atomically, as a new generation) and each is reported.
    fn expire(&mut self) {
        let now = now_unix();
        let expired = self.grants.take_expired(now);
        if !expired.is_empty() {
            if let Err(e) = self.grants.save() {
                warn!("saving grants: {e:#}");
            }
        }
        let policy = self.policy.clone();
        match self.apply(policy) {
            Ok(_) => {
                for g in &expired {
                    self.grant_record("expired", g);
                }
                let r = self.policy_record(
                    if expired.is_empty() {
                        "entry-expired"
                    } else {
                        "grant-expired"
                    },
                    None,
                );
                let _ = self.audit.send(Control::Record(Box::new(r)));
                info!(
                    generation = self.generation,
                    grants = expired.len(),
                    "expired entries removed"
                );
            }
            Err(e) => warn!("applying the policy without expired entries: {e:#}"),
        }
    }

    fn grant_record(&self, action: &'static str, g: &Grant) {
        let mut v = describe(g, now_unix());
        if let Some(m) = v.as_object_mut() {
            m.insert("ts".into(), record::now().into());
            m.insert("event".into(), "grant".into());
            m.insert("action".into(), action.into());
            m.insert("policy".into(), self.generation.into());
            m.remove("seconds_left");
        }
        let _ = self.audit.send(Control::Json(v));
    }

    /// `enforcer grant`: allow a source or cgroup on a rule until a deadline.
    pub fn grant(
        &mut self,
        rule: &str,
        from: Option<&str>,
        cgroup: Option<&str>,
        secs: u64,
        reason: &str,
    ) -> Result<Value, String> {
        let g = self
            .grants
            .add(&self.policy, rule, from, cgroup, secs, reason)?;
        let persisted = self.grants.save().map_err(|e| format!("{e:#}"));
        let applied = persisted.and_then(|_| {
            let p = self.policy.clone();
            self.apply(p).map(|_| ()).map_err(|e| format!("{e:#}"))
        });
        if let Err(e) = applied {
            self.grants.remove(&g.id);
            let _ = self.grants.save();
            return Err(format!("grant not applied: {e}"));
        }
        self.grant_record("granted", &g);
        info!(id = g.id, rule, reason, "grant applied");
        Ok(json!({"grant": describe(&g, now_unix()), "generation": self.generation}))
    }

    pub fn revoke(&mut self, id: &str) -> Result<Value, String> {
        let g = self
            .grants
            .remove(id)
            .ok_or_else(|| format!("no grant {id:?} (see `enforcer grants`)"))?;
        if let Err(e) = self.grants.save() {
            warn!("saving grants: {e:#}");
        }
        let p = self.policy.clone();
        self.apply(p).map_err(|e| format!("{e:#}"))?;
        self.grant_record("revoked", &g);
        info!(id, "grant revoked");
        Ok(json!({"revoked": describe(&g, now_unix()), "generation": self.generation}))
    }

    pub fn list_grants(&self) -> Value {
        let now = now_unix();
        let list: Vec<Value> = self
            .grants
            .grants
            .iter()
            .map(|g| {
                let mut v = describe(g, now);
                let active = self.policy.verdict.rules.iter().any(|r| r.name == g.rule);
                v["active"] = active.into();
                v
            })
            .collect();
        json!({"grants": list})
    }

    /// Reports grants that expired while no daemon was running.
    pub fn expire_stale_grants(&mut self) {
        if self
            .grants
            .grants
            .iter()
            .any(|g| g.expires_unix <= now_unix())
        {
            self.expire();
        }
    }

    /// A `lost` event for events the kernel could not queue since the last report.
    fn report_lost(&mut self) {
        let lost = counters::events_lost(&self.loaded.maps);
        if lost > self.kernel_lost {
            let r = Record {
                ts: record::now(),
                event: "lost",
                scope: Some("kernel"),
                count: Some(lost - self.kernel_lost),
                policy: Some(self.generation),
                ..Record::default()
            };
            let _ = self.audit.send(Control::Record(Box::new(r)));
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
    fn report_suppressed(&mut self) {
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
                    ts: record::now(),
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
                let _ = self.audit.send(Control::Record(Box::new(r)));
            }
        }
    }

    pub fn stop(&mut self) {
        self.loaded.detach_all();
    }

    fn policy_record(&self, action: &'static str, old: Option<&Policy>) -> Record {
        let mut r = Record {
            ts: record::now(),
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

    /// Everything `enforcer status` shows.
    pub fn status(&self) -> Value {
        let maps = &self.loaded.maps;
        let mut reasons = serde_json::Map::new();
        for h in Hook::ALL {
            let mut m = serde_json::Map::new();
            for r in Reason::ALL {
                let n = counters::by_reason(maps, h, r);
                if n > 0 {
                    m.insert(r.name().into(), n.into());
                }
            }
            reasons.insert(h.name().into(), Value::Object(m));
        }
        let rules: Vec<Value> = self
            .policy
            .verdict
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let i = i as u32;
                json!({
                    "name": r.name,
                    "mode": match r.mode { enforcer_common::model::Mode::Enforce => "enforce", _ => "audit" },
                    "allowed": counters::by_rule(maps, i, Verdict::Allow),
                    "dropped": counters::by_rule(maps, i, Verdict::Drop),
                    "would_drop": counters::by_rule(maps, i, Verdict::WouldDrop),
                })
            })
            .collect();
        let xdp: Vec<Value> = self
            .loaded
            .xdp_attachments()
            .map(|(i, a)| json!({"iface": i, "mode": a.mode}))
            .collect();
        let mut warnings: Vec<String> = self.loaded.adoption_failures().to_vec();
        let present = host::interfaces();
        for i in &self.policy.attach.interfaces {
            if !present.iter().any(|n| host::glob_match(i, n)) {
                warnings.push(if i.contains(['*', '?']) {
                    format!("no interface matches {i} (XDP attaches when one appears)")
                } else {
                    format!(
                        "interface {i} in the policy does not exist (XDP attaches when it appears)"
                    )
                });
            }
        }
        for (_, path) in self.compiled.cgroups.keys() {
            if !self.cgroup_ids.contains_key(path)
                && !warnings
                    .iter()
                    .any(|w| w.contains(&format!("cgroup {path} ")))
            {
                warnings.push(format!(
                    "cgroup {path} does not exist yet (its rule applies once it is created)"
                ));
            }
        }
        json!({
            "daemon": {"pid": std::process::id(), "started": self.started_at, "config": self.config_path.display().to_string()},
            "policy": {
                "generation": self.generation,
                "hash": self.policy.hash,
                "applied_at": self.applied_at,
                "file": self.policy.path.display().to_string(),
                "mode": match self.policy.verdict.mode { enforcer_common::model::Mode::Enforce => "enforce", _ => "audit" },
                "rules": self.policy.verdict.rules.len(),
                "confirm_by": self.pending.as_ref().map(|p| p.deadline_wall.clone()),
            },
            "programs": {
                "xdp": {"name": programs::XDP, "attached": xdp},
                "cgroup": {
                    "path": self.loaded.cgroup_path(),
                    "programs": [programs::INGRESS, programs::EGRESS, programs::SOCK_ADDR[0], programs::SOCK_ADDR[1], programs::SOCK_ADDR[2], programs::SOCK_ADDR[3]],
                },
            },
            "counters": reasons,
            "rules": rules,
            "audit": {
                "events": self.stats.events.load(Ordering::Relaxed),
                "lost_kernel": counters::events_lost(maps),
                "suppressed": counters::suppressed(maps, GLOBAL_BUCKET),
                "lost_sinks": self.stats.sink_lost.load(Ordering::Relaxed),
                "subscribers": self.stats.subscribers.load(Ordering::Relaxed),
            },
            "warnings": warnings,
        })
    }
}

/// Ids of the allowed cgroups that exist now.
fn resolve_cgroups(mount: &std::path::Path, compiled: &Compiled) -> BTreeMap<String, u64> {
    compiled
        .cgroups
        .keys()
        .filter_map(|(_, path)| host::cgroup_id(mount, path).map(|id| (path.clone(), id)))
        .collect()
}

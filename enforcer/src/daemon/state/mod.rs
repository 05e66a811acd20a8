//! What the policy owner holds, and its state machine: apply, reload (with an optional
//! confirmation deadline), confirm or roll back, expire. Following the host (`following`),
//! grant operations (`granting`), the audit records it writes (`records`) and the status
//! it reports (`reporting`) are its other jobs, each in its own file.

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

mod following;
mod granting;
mod records;
mod reporting;

use super::{
    audit::{AuditMsg, Stats},
    expiries::Ledger,
};
use crate::{
    clock::now_unix,
    control::status::{self, Status},
    events::{
        sink::{syslog, Origin, Scope},
        Record,
    },
    grants::{describe, Store},
    host::netlink,
    kernel::{counters, host, paths::Paths, programs, writer::Writer, Loaded},
    policy::Grant,
    policy::{
        self, compile, compile_after,
        diff::{self, Side, Summary},
        Compiled, Entry, Policy,
    },
};
use following::resolve_cgroups;

/// How often the listeners are checked for coverage gaps.
const GAPS_INTERVAL: Duration = Duration::from_secs(5);

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
    /// The same as `enforcer diff` sees it, taken when it was applied: the next
    /// generation's access is compared with it.
    side: Side,
    grants: Store,
    /// Policy entries whose expiry was reported.
    ledger: Ledger,
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
    /// Where containers' own packets arrive (`PATHS`).
    paths: Paths,
    /// Interfaces a glob matched that XDP cannot parse, and why.
    xdp_skipped: BTreeMap<String, String>,
    /// Listeners on protected ports the programs cannot fully guard, and when that was
    /// last looked at (a walk of /proc: not on every tick).
    gaps: Vec<String>,
    gaps_checked: Option<Instant>,
    /// The last time pinned state vanished under this daemon, and what it did about it.
    pins_incident: Option<String>,
    audit: UnboundedSender<AuditMsg>,
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
        audit: UnboundedSender<AuditMsg>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Self> {
        let effective = policy.effective(now_unix(), &grants.entries(&policy));
        let compiled = compile(&effective).with_context(|| policy.path.display().to_string())?;
        let side = Side::of(&policy, now_unix(), &grants.grants);
        // An adopted policy stays active while the new one is written to the other slot.
        let (writer, generation) = match loaded.adopted {
            Some((slot, generation)) => (Writer::adopt(slot), generation + 1),
            None => (Writer::new(), 1),
        };
        // What an earlier daemon left, so addresses gone meanwhile are taken out.
        let local_addrs = crate::kernel::host::pinned_addrs(&loaded.maps.local_addrs);
        let mut st = State {
            loaded,
            writer,
            policy,
            effective,
            ledger: Ledger::open(grants.dir()),
            side,
            grants,
            next_expiry: None,
            compiled,
            cgroup_ids: BTreeMap::new(),
            generation,
            applied_at: crate::clock::now_rfc3339_nanos(),
            started_at: crate::clock::now_rfc3339_nanos(),
            cgroup_mount,
            config_path,
            local_addrs,
            kernel_lost: 0,
            suppressed_total: 0,
            suppressed_seen: BTreeMap::new(),
            last_suppressed_report: Instant::now(),
            pending: None,
            paths: Paths::default(),
            xdp_skipped: BTreeMap::new(),
            gaps: Vec::new(),
            gaps_checked: None,
            pins_incident: None,
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
        let _ = self.audit.send(AuditMsg::Record(Box::new(r)));
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
        if let Err(e) = super::rule_names::remember(self.grants.dir(), self.generation, &names) {
            warn!("remembering rule names: {e:#}");
        }
        let _ = self.audit.send(AuditMsg::RuleNames(self.generation, names));
        let _ = self.audit.send(AuditMsg::Sinks(self.policy.sinks.clone()));
        let ids = self
            .cgroup_ids
            .iter()
            .map(|(p, i)| (*i, p.clone()))
            .collect();
        let _ = self.audit.send(AuditMsg::Cgroups(ids));
    }

    /// Applies `new` as the next generation; returns the policy it replaced and the change
    /// in access.
    fn apply(&mut self, new: Policy) -> anyhow::Result<(Policy, Summary)> {
        let now = now_unix();
        let effective = new.effective(now, &self.grants.entries(&new));
        let compiled = compile_after(&effective, Some(&self.compiled))
            .with_context(|| new.path.display().to_string())?;
        let ids = resolve_cgroups(&self.cgroup_mount, &compiled);
        let generation = self.generation + 1;
        self.writer
            .apply(&mut self.loaded.maps, &compiled, &ids, generation)?;
        let side = Side::of(&new, now, &self.grants.grants);
        let change = Summary::of(&diff::diff(&self.side, &side));
        self.side = side;
        let old = std::mem::replace(&mut self.policy, new);
        self.effective = effective;
        self.compiled = compiled;
        self.cgroup_ids = ids;
        self.generation = generation;
        self.applied_at = crate::clock::now_rfc3339_nanos();
        self.next_expiry = self.compute_next_expiry();
        if let Err(e) = self.attach() {
            warn!("attaching for the new policy: {e:#}");
        }
        self.tell_audit();
        Ok((old, change))
    }

    /// Re-reads the policy file and applies it. A policy that cannot be used is refused
    /// with its diagnostics and the policy in force stays.
    pub fn reload(&mut self, confirm_within: Option<Duration>) -> Result<Value, String> {
        let result = policy::load(&self.config_path)
            .map_err(anyhow::Error::from)
            .and_then(|p| self.apply(p));
        match result {
            Ok((old, change)) => {
                let action = if confirm_within.is_some() {
                    "applied-pending-confirmation"
                } else {
                    "applied"
                };
                let mut r = self.policy_record(action, Some(&old));
                r.access = Some(change.clone());
                let _ = self.audit.send(AuditMsg::Record(Box::new(r)));
                info!(
                    generation = self.generation,
                    hash = %self.policy.hash,
                    access_changed = change.changed,
                    "policy reloaded; {}",
                    change.lines.join("; ")
                );
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
                    json!({"generation": self.generation, "hash": self.policy.hash, "confirm_by": self.pending.as_ref().map(|p| p.deadline_wall.clone()), "access": change}),
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
                let _ = self.audit.send(AuditMsg::Record(Box::new(r)));
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
                let _ = self.audit.send(AuditMsg::Record(Box::new(r)));
                info!(generation = self.generation, "policy confirmed");
                Ok(json!({"generation": self.generation, "hash": self.policy.hash}))
            }
        }
    }

    /// Timers: keep the pins, follow the host, report kernel-side event loss, enforce
    /// deadlines. An error means this daemon can no longer own its pins: it must exit.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        let lost = self.loaded.lost_pins();
        if !lost.is_empty() {
            self.restore_pins(lost)?;
        }
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
        if self
            .gaps_checked
            .is_none_or(|t| t.elapsed() >= GAPS_INTERVAL)
        {
            self.check_gaps();
        }
        if self.next_expiry.is_some_and(|t| t <= now_unix()) {
            self.expire(false);
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
                Ok((old, change)) => {
                    warn!(
                        generation = self.generation,
                        "not confirmed in time: previous policy restored; {}",
                        change.lines.join("; ")
                    );
                    let mut r = self.policy_record("rolled-back", Some(&old));
                    r.access = Some(change);
                    let _ = self.audit.send(AuditMsg::Record(Box::new(r)));
                }
                Err(e) => warn!("restoring the previous policy failed: {e:#}"),
            }
        }
        Ok(())
    }

    /// Grants and policy entries whose time is up stop applying: the policy is applied
    /// again without them (atomically, as a new generation) and each is reported.
    /// The kernel stopped honouring them at their deadline already; `late`: they expired
    /// while no daemon ran (reported by the next one, once, with their true expiry time).
    fn expire(&mut self, late: bool) {
        let now = now_unix();
        let expired = self.grants.take_expired(now);
        if !expired.is_empty() {
            if let Err(e) = self.grants.save() {
                warn!("saving grants: {e:#}");
            }
        }
        let entries = self.ledger.due(&self.policy, now);
        if !entries.is_empty() {
            if let Err(e) = self.ledger.save() {
                warn!("saving reported expiries: {e:#}");
            }
        }
        let policy = self.policy.clone();
        match self.apply(policy) {
            Ok((_, change)) => {
                for g in &expired {
                    self.grant_record("expired", g, late);
                }
                for (rule, entry, at) in &entries {
                    let (key, value) = match entry {
                        Entry::From(f) => ("from", f),
                        Entry::Cgroup(c) => ("cgroup", c),
                    };
                    let _ = self.audit.send(AuditMsg::Json(json!({
                        "ts": crate::clock::now_rfc3339_nanos(),
                        "event": "entry",
                        "action": "expired",
                        "rule": rule,
                        key: value,
                        "expired_at": crate::clock::rfc3339(*at),
                        "late": late,
                        "policy": self.generation,
                    })));
                }
                let mut r = self.policy_record(
                    if expired.is_empty() {
                        "entry-expired"
                    } else {
                        "grant-expired"
                    },
                    None,
                );
                r.access = Some(change);
                let _ = self.audit.send(AuditMsg::Record(Box::new(r)));
                info!(
                    generation = self.generation,
                    grants = expired.len(),
                    "expired entries removed"
                );
            }
            Err(e) => warn!("applying the policy without expired entries: {e:#}"),
        }
    }

    pub fn stop(&mut self) {
        self.loaded.detach_all();
    }

    /// The policy in force as `enforcer diff --against live` compares it: the file's
    /// policy as it applies now, grants included.
    pub fn policy_view(&self) -> Value {
        json!({
            "generation": self.generation,
            "hash": self.policy.hash,
            "file": self.policy.path.display().to_string(),
            "side": Side::of(&self.policy, now_unix(), &self.grants.grants),
        })
    }
}

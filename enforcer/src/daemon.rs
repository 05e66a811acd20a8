//! `enforcer run`: one task owns the loaded programs and maps and reacts to signals and
//! timers; another drains the ring buffer into the audit stream.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use aya::maps::{MapData, RingBuf};
use enforcer_common::{
    consts::{AF_INET, AF_INET6},
    maps::{HostInfo, LocalAddrKey},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    events::{decode::decode, enrich::Enricher, record, sink::JsonLines, Record},
    kernel::{counters, host, writer::Writer, Loaded},
    policy::{self, compile, Compiled, Policy},
};

pub struct Options {
    pub config: PathBuf,
}

/// What the policy owner keeps between reloads.
struct State {
    loaded: Loaded,
    writer: Writer,
    policy: Policy,
    compiled: Compiled,
    cgroup_ids: BTreeMap<String, u64>,
    generation: u64,
    cgroup_mount: PathBuf,
    local_addrs: BTreeSet<IpAddr>,
    events_lost: u64,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let policy = policy::load(&opts.config)?;
    let compiled = compile(&policy).with_context(|| format!("{}", opts.config.display()))?;
    let cgroup_mount = host::cgroup2_mount()?;
    let mut loaded = Loaded::load()?;
    let cookie = host::netns_cookie().context("reading this network namespace's cookie")?;
    loaded.maps.host.set(0, HostInfo { netns_cookie: cookie }, 0).context("writing host facts")?;
    let events = loaded.events.take().ok_or_else(|| anyhow!("ring buffer missing"))?;

    let mut st = State {
        loaded,
        writer: Writer::new(),
        policy,
        compiled,
        cgroup_ids: BTreeMap::new(),
        generation: 1,
        cgroup_mount,
        local_addrs: BTreeSet::new(),
        events_lost: 0,
    };
    st.sync_local_addrs()?;
    st.cgroup_ids = resolve_cgroups(&st.cgroup_mount, &st.compiled);
    // The maps are complete before anything is attached: no packet meets an empty policy.
    st.writer.apply(&mut st.loaded.maps, &st.compiled, &st.cgroup_ids, st.generation)?;
    st.attach()?;

    let mut enricher = Enricher::new(Some(st.cgroup_mount.clone()));
    enricher.rules.insert(st.generation, rule_names(&st.policy));
    for (path, id) in &st.cgroup_ids {
        enricher.know_cgroup(*id, path.clone());
    }
    let (tx, rx) = mpsc::unbounded_channel::<Control>();
    let audit = tokio::spawn(audit_stream(events, enricher, rx));
    let _ = tx.send(Control::Record(policy_record(&st, "applied", None)));
    info!(generation = st.generation, hash = %st.policy.hash, file = %st.policy.path.display(), "policy applied");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => st.reload(&opts.config, &tx),
            _ = tick.tick() => st.refresh(&tx),
        }
    }
    info!("stopping: detaching programs");
    st.loaded.detach_all();
    drop(tx);
    let _ = audit.await;
    Ok(())
}

enum Control {
    Record(Record),
    RuleNames(u64, Vec<String>),
    Cgroups(Vec<(u64, String)>),
}

impl State {
    fn attach(&mut self) -> anyhow::Result<()> {
        self.loaded.attach_cgroup(&self.cgroup_mount, &self.policy.attach.cgroup)?;
        let wanted: BTreeSet<&String> = self.policy.attach.interfaces.iter().collect();
        let attached: Vec<String> = self.loaded.xdp_attachments().map(|(k, _)| k.clone()).collect();
        for iface in attached {
            if !wanted.contains(&iface) {
                self.loaded.detach_xdp(&iface);
                info!(iface, "XDP detached");
            }
        }
        for iface in wanted {
            if host::if_index(iface).is_none() {
                warn!(iface, "interface in the policy does not exist; XDP not attached to it");
                continue;
            }
            let a = self.loaded.attach_xdp(iface, self.policy.attach.xdp_mode)?;
            info!(iface, mode = a.mode, "XDP attached");
        }
        Ok(())
    }

    fn sync_local_addrs(&mut self) -> anyhow::Result<()> {
        let now = host::local_addrs().context("listing this host's addresses")?;
        for a in now.difference(&self.local_addrs) {
            self.loaded.maps.local_addrs.insert(addr_key(*a), 1, 0).context("adding a host address")?;
        }
        for a in self.local_addrs.difference(&now) {
            let _ = self.loaded.maps.local_addrs.remove(&addr_key(*a));
        }
        self.local_addrs = now;
        Ok(())
    }

    fn reload(&mut self, path: &Path, tx: &mpsc::UnboundedSender<Control>) {
        match self.try_reload(path) {
            Ok(old) => {
                info!(generation = self.generation, hash = %self.policy.hash, "policy reloaded");
                let _ = tx.send(Control::RuleNames(self.generation, rule_names(&self.policy)));
                let _ = tx.send(Control::Cgroups(self.cgroup_ids.iter().map(|(p, i)| (*i, p.clone())).collect()));
                let _ = tx.send(Control::Record(policy_record(self, "applied", Some(&old))));
            }
            Err(e) => {
                warn!(generation = self.generation, "reload refused; the policy in force stays: {e:#}");
                let mut r = policy_record(self, "refused", None);
                r.error = Some(format!("{e:#}"));
                r.file = Some(path.display().to_string());
                let _ = tx.send(Control::Record(r));
            }
        }
    }

    /// Applies the policy at `path`; returns the one it replaced.
    fn try_reload(&mut self, path: &Path) -> anyhow::Result<Policy> {
        let new = policy::load(path)?;
        let compiled = compile(&new)?;
        let ids = resolve_cgroups(&self.cgroup_mount, &compiled);
        let generation = self.generation + 1;
        self.writer.apply(&mut self.loaded.maps, &compiled, &ids, generation)?;
        let old = std::mem::replace(&mut self.policy, new);
        self.compiled = compiled;
        self.cgroup_ids = ids;
        self.generation = generation;
        if let Err(e) = self.attach() {
            warn!("attaching for the new policy: {e:#}");
        }
        Ok(old)
    }

    /// Follows the host: addresses come and go, cgroups are created and recreated.
    fn refresh(&mut self, tx: &mpsc::UnboundedSender<Control>) {
        if let Err(e) = self.sync_local_addrs() {
            warn!("{e:#}");
        }
        let ids = resolve_cgroups(&self.cgroup_mount, &self.compiled);
        if ids != self.cgroup_ids {
            match self.writer.apply(&mut self.loaded.maps, &self.compiled, &ids, self.generation) {
                Ok(_) => {
                    info!(?ids, "allowed cgroups changed on the host; entries updated");
                    let _ = tx.send(Control::Cgroups(ids.iter().map(|(p, i)| (*i, p.clone())).collect()));
                    self.cgroup_ids = ids;
                }
                Err(e) => warn!("updating allowed cgroups: {e:#}"),
            }
        }
        let lost = counters::events_lost(&self.loaded.maps);
        if lost > self.events_lost {
            let r = Record {
                ts: record::now(),
                event: "lost",
                count: Some(lost - self.events_lost),
                policy: Some(self.generation),
                ..Record::default()
            };
            let _ = tx.send(Control::Record(r));
            self.events_lost = lost;
        }
    }
}

fn addr_key(a: IpAddr) -> LocalAddrKey {
    let mut addr = [0u8; 16];
    let family = match a {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            AF_INET
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            AF_INET6
        }
    };
    LocalAddrKey { family: family as u32, addr }
}

/// Ids of the allowed cgroups that exist now.
fn resolve_cgroups(mount: &Path, compiled: &Compiled) -> BTreeMap<String, u64> {
    compiled
        .cgroups
        .keys()
        .filter_map(|(_, path)| host::cgroup_id(mount, path).map(|id| (path.clone(), id)))
        .collect()
}

fn rule_names(p: &Policy) -> Vec<String> {
    p.verdict.rules.iter().map(|r| r.name.clone()).collect()
}

fn policy_record(st: &State, action: &'static str, old: Option<&Policy>) -> Record {
    let mut r = Record {
        ts: record::now(),
        event: "policy",
        action: Some(action),
        policy: Some(st.generation),
        hash: Some(st.policy.hash.clone()),
        file: Some(st.policy.path.display().to_string()),
        ..Record::default()
    };
    if let Some(old) = old {
        let names = |p: &Policy| p.verdict.rules.iter().map(|r| (r.name.clone(), r.clone())).collect::<BTreeMap<_, _>>();
        let (before, after) = (names(old), names(&st.policy));
        r.rules_added = Some(after.keys().filter(|k| !before.contains_key(*k)).cloned().collect());
        r.rules_removed = Some(before.keys().filter(|k| !after.contains_key(*k)).cloned().collect());
        r.rules_changed = Some(after.iter().filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v)).map(|(k, _)| k.clone()).collect());
    }
    r
}

/// Drains the ring buffer into JSON lines on stdout, with the daemon's own records.
async fn audit_stream(events: RingBuf<MapData>, mut enricher: Enricher, mut rx: mpsc::UnboundedReceiver<Control>) {
    let mut out = JsonLines::new(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()));
    // SAFETY: the ring buffer owns its descriptor and is moved into the AsyncFd, which
    // deregisters it before dropping (and so closing) it.
    let mut fd = match unsafe { AsyncFd::register(events) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot watch the ring buffer: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                let Ok(mut guard) = ready else { break };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    match decode(&item) {
                        Ok(ev) => {
                            let r = enricher.record(&ev);
                            let _ = out.write(&r);
                        }
                        Err(e) => warn!("undecodable event: {e}"),
                    }
                }
                guard.clear_ready();
                let _ = out.flush();
            }
            msg = rx.recv() => {
                match msg {
                    None => break,
                    Some(Control::Record(r)) => { let _ = out.write(&r); let _ = out.flush(); }
                    Some(Control::RuleNames(g, names)) => enricher.rules.insert(g, names),
                    Some(Control::Cgroups(ids)) => for (id, p) in ids { enricher.know_cgroup(id, p) },
                }
            }
        }
    }
    let _ = out.flush();
    let _ = std::io::stdout().flush();
}

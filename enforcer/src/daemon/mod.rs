//! `enforcer run`: the policy owner (one task that holds the loaded programs and maps and
//! takes signals, timers and control-socket calls in one `select!`), the audit stream
//! (`audit`), and the control server.

pub mod audit;
mod expiries;
mod rule_names;
mod sd_notify;
mod seq;
mod state;
mod watch;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{anyhow, Context as _};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::info;

use crate::{
    control::{self, protocol, protocol::Request, server::Call},
    events::enrich::Enricher,
    host,
    kernel::{
        pins::{self, PinDir},
        Loaded,
    },
    policy,
};

pub use state::State;

pub struct Options {
    pub config: PathBuf,
    pub socket: PathBuf,
    /// bpffs directory for maps and links.
    pub pin_dir: PathBuf,
    pub on_stop: OnStop,
    /// Where grants are stored.
    pub state_dir: PathBuf,
    /// Serve Prometheus metrics here (off when None).
    pub metrics: Option<std::net::SocketAddr>,
    /// Reload when the policy file changes (`--watch`).
    pub watch: bool,
}

/// What a normal stop (SIGTERM, SIGINT) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnStop {
    /// Detach the programs and remove the pinned state: the host is unprotected until the
    /// next start (and a restart has a gap).
    Detach,
    /// Leave the programs attached and the policy in force (pinned): restarts and upgrades
    /// have no gap, and `enforcer unload` removes them.
    Keep,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    // Taken before anything is made: a SIGINT or SIGTERM during the start then stops the
    // daemon through the clean-up below instead of killing it with state half pinned.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Before the first read: a change from then on is reloaded.
    let mut changed = opts.watch.then(|| watch::start(&opts.config)).transpose()?;
    let policy = policy::load(&opts.config)?;
    let cgroup_mount = host::cgroup2_mount()?;
    // Ownership first: a daemon refused here has changed nothing (not the grants store,
    // not the socket, not the pinned maps).
    let pins = PinDir::open(&opts.pin_dir)?;
    let ownership = pins.lock()?;
    let cookie = host::netns_cookie().context("reading this network namespace's cookie")?;
    let grants = crate::grants::Store::open(&opts.state_dir)?;
    let listener = control::server::bind(&opts.socket)?;
    // Removed however this function ends (a refused start leaves no stale socket).
    let _socket = SocketFile(opts.socket.clone());
    let fresh = !pins.has_maps();
    let mut loaded = match Loaded::load_pinned(pins, ownership, cookie) {
        Ok(l) => l,
        Err(e) => {
            // What this attempt pinned goes; an earlier daemon's state (still enforcing)
            // is never touched here.
            if fresh {
                let _ = pins::remove_all(&opts.pin_dir);
            }
            return Err(e);
        }
    };
    if let Some((_, generation)) = loaded.adopted {
        info!(generation, pin_dir = %opts.pin_dir.display(), "adopted the pinned programs and policy of an earlier daemon");
    }
    let mut facts = loaded.maps.host.get(&0, 0).context("reading host facts")?;
    facts.netns_cookie = cookie;
    loaded
        .maps
        .host
        .set(0, facts, 0)
        .context("writing host facts")?;
    let events = loaded
        .events
        .take()
        .ok_or_else(|| anyhow!("ring buffer missing"))?;

    let (audit_tx, audit_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(audit::Stats::default());
    let started = State::start(
        loaded,
        policy,
        grants,
        cgroup_mount.clone(),
        opts.config.clone(),
        audit_tx,
        stats.clone(),
    );
    let mut st = match started {
        Ok(st) => st,
        Err(e) => {
            if fresh {
                let _ = pins::remove_all(&opts.pin_dir);
            }
            return Err(e);
        }
    };
    let mut enricher = Enricher::new(Some(cgroup_mount));
    // Names first: the pinned ring buffer may hold an earlier daemon's events.
    for (generation, names) in rule_names::load(&opts.state_dir) {
        enricher.rules.insert(generation, names);
    }
    let (sub_tx, sub_rx) = mpsc::channel(16);
    let audit = tokio::spawn(audit::run(
        events,
        enricher,
        st.policy.sinks.clone(),
        opts.state_dir.clone(),
        audit_rx,
        sub_rx,
        stats,
    ));
    st.announce_initial();
    st.report_late_expiries();

    let (call_tx, mut calls) = mpsc::channel::<Call>(64);
    let metrics = opts.metrics.map(|addr| {
        let calls = call_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = control::metrics::serve(addr, calls).await {
                tracing::error!("metrics on {addr}: {e:#}");
            }
        })
    });
    let server = tokio::spawn(control::server::serve(listener, call_tx, sub_tx));
    info!(socket = %opts.socket.display(), "control socket ready");
    if let Err(e) = sd_notify::ready() {
        tracing::warn!("{e:#}");
    }

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Set when the daemon cannot go on owning its pins (see `State::tick`).
    let mut fatal = None;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { let _ = st.reload(None); }
            Some(()) = async { changed.as_mut()?.recv().await } => { let _ = st.reload(None); }
            _ = tick.tick() => if let Err(e) = st.tick() {
                fatal = Some(e);
                break;
            },
            Some(call) = calls.recv() => {
                let answer = match call.request {
                    Request::Status => protocol::ok(serde_json::to_value(st.status()).expect("a status serializes")),
                    Request::Policy => protocol::ok(st.policy_view()),
                    Request::Reload { confirm_within_secs } => match st.reload(confirm_within_secs.map(Duration::from_secs)) {
                        Ok(v) => protocol::ok(v),
                        Err(e) => protocol::error(e),
                    },
                    Request::Confirm => match st.confirm() {
                        Ok(v) => protocol::ok(v),
                        Err(e) => protocol::error(e),
                    },
                    Request::Grant { rule, from, cgroup, for_secs, reason } => {
                        match st.grant(&rule, from.as_deref(), cgroup.as_deref(), for_secs, &reason) {
                            Ok(v) => protocol::ok(v),
                            Err(e) => protocol::error(e),
                        }
                    }
                    Request::Grants => protocol::ok(st.list_grants()),
                    Request::Revoke { id } => match st.revoke(&id) {
                        Ok(v) => protocol::ok(v),
                        Err(e) => protocol::error(e),
                    },
                    Request::Explain { query } => match crate::policy::explain::explain(&st.effective.verdict, &query) {
                        Ok(e) => protocol::ok(serde_json::json!({"explanation": e, "policy": st.generation()})),
                        Err(e) => protocol::error(e),
                    },
                    // Served by the connection itself; never forwarded.
                    Request::Subscribe { .. } => protocol::error("subscribe is not a call"),
                };
                let _ = call.reply.send(answer);
            }
        }
    }
    info!("stopping");
    st.flush_reports();
    server.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(e) = fatal {
        // The pin directory may be another daemon's now: leave it alone.
        drop(st);
        let _ = audit.await;
        return Err(e);
    }
    match opts.on_stop {
        OnStop::Detach => {
            st.stop();
            drop(st);
            let n = pins::remove_all(&opts.pin_dir)?;
            info!(removed = n, "detached; pinned state removed");
        }
        OnStop::Keep => {
            info!(pin_dir = %opts.pin_dir.display(), "programs stay attached with the policy in force (--on-stop keep)");
            drop(st);
        }
    }
    let _ = audit.await;
    Ok(())
}

/// The control socket's file, removed on drop.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

//! The audit stream: ring buffer -> decode -> enrich -> one JSON line, numbered (`seq`)
//! and stamped with its origin, offered to every sink (`events::sink`: stdout, the
//! rotated file, syslog, control-socket subscribers). Each sink has its own bounded queue
//! and filter: a sink that falls behind loses its own lines (counted, and told how many
//! with its next line); it never slows the others, this task, or the kernel.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use super::seq::Seq;
use crate::{
    control::server::Subscribe,
    events::{
        decode::decode,
        enrich::Enricher,
        sink::{self, file, syslog, Filter, Line, LostCounts, Meta, Scope, Sink},
        Record,
    },
    policy::sinks::AuditSinks,
};

/// What the policy owner tells the audit stream.
pub enum AuditMsg {
    Record(Box<Record>),
    /// A record that is not a packet or policy event (grants), as JSON.
    Json(serde_json::Value),
    RuleNames(u64, Vec<String>),
    Cgroups(Vec<(u64, String)>),
    /// The policy's sinks (after a reload): started, changed or stopped to match.
    Sinks(AuditSinks),
}

/// Audit stream health, shared with `status`.
#[derive(Default)]
pub struct Stats {
    /// Packet events turned into lines.
    pub events: AtomicU64,
    /// Lines each kind of sink lost.
    pub lost: Arc<LostCounts>,
    pub subscribers: AtomicU64,
    /// The `seq` the next line gets.
    pub next_seq: AtomicU64,
}

/// Recent lines held for `tail --since`.
const RECENT: usize = 10_000;

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Lines stdout may fall behind before it loses some.
const STDOUT_QUEUE: usize = 1 << 16;

/// A sink drained by a thread of its own, with the configuration it runs with.
struct Threaded<C> {
    config: C,
    sink: Sink,
}

/// Every sink, and the recent lines new subscribers may ask for.
struct Fanout {
    seq: Seq,
    stdout: Sink,
    file: Option<(Threaded<file::Config>, Arc<file::Limits>)>,
    syslog: Option<Threaded<syslog::Config>>,
    subscribers: Vec<Sink>,
    /// Sink threads, joined when the stream ends (everything queued gets written).
    threads: Vec<JoinHandle<()>>,
    recent: VecDeque<(u128, Arc<Line>)>,
    stats: Arc<Stats>,
    state_dir: PathBuf,
}

impl Fanout {
    /// Numbers and stamps `body` (one JSON object) and offers it to every sink.
    fn offer(&mut self, body: Vec<u8>, meta: Meta) {
        let line = Arc::new(Line::new(self.seq.take(), body, meta));
        self.stats
            .next_seq
            .store(self.seq.peek(), Ordering::Relaxed);
        self.stdout.offer(&line);
        if let Some((f, _)) = &mut self.file {
            f.sink.offer(&line);
        }
        if let Some(s) = &mut self.syslog {
            s.sink.offer(&line);
        }
        self.subscribers.retain_mut(|s| s.offer(&line));
        self.stats
            .subscribers
            .store(self.subscribers.len() as u64, Ordering::Relaxed);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((unix_ns(), line));
    }

    fn offer_record(&mut self, r: &Record) {
        self.offer(serde_json::to_vec(r).unwrap_or_default(), Meta::of(r));
    }

    fn subscribe(&mut self, sub: Subscribe) {
        let mut sink = Sink::new(
            Scope::Subscriber,
            Filter::default(),
            sub.tx,
            self.stats.lost.clone(),
        );
        if let Some(since) = sub.since_unix_ns {
            for (_, line) in self.recent.iter().filter(|(t, _)| *t >= since) {
                sink.offer(line);
            }
        }
        self.subscribers.push(sink);
        self.stats
            .subscribers
            .store(self.subscribers.len() as u64, Ordering::Relaxed);
    }

    /// Starts, changes or stops the file and syslog sinks to match `want`. A sink whose
    /// destination stays keeps its thread (and the file its chain); a removed one writes
    /// what it has queued and ends.
    fn configure(&mut self, want: AuditSinks) {
        let counts = self.stats.lost.clone();
        match (&mut self.file, want.file) {
            (Some((t, _)), Some(c)) if t.config == c => {}
            (Some((t, limits)), Some(c)) if t.config.path == c.path => {
                limits.set(&c);
                t.sink.filter = c.filter.clone();
                t.config = c;
            }
            (_, c) => {
                self.file = c.map(|c| {
                    let limits = file::Limits::of(&c);
                    let w = file::FileWriter::new(
                        c.path.clone(),
                        limits.clone(),
                        &self.state_dir,
                        counts.clone(),
                    );
                    let (sink, thread) = sink::spawn(
                        Scope::File,
                        c.filter.clone(),
                        file::QUEUE,
                        counts.clone(),
                        w,
                    );
                    self.threads.push(thread);
                    (Threaded { config: c, sink }, limits)
                });
            }
        }
        match (&mut self.syslog, want.syslog) {
            (Some(t), Some(c)) if t.config == c => {}
            (Some(t), Some(c))
                if t.config.target == c.target && t.config.facility == c.facility =>
            {
                t.sink.filter = c.filter.clone();
                t.config = c;
            }
            (_, c) => {
                self.syslog = c.map(|c| {
                    let w = syslog::SyslogWriter::new(&c, counts.clone());
                    let (sink, thread) = sink::spawn(
                        Scope::Syslog,
                        c.filter.clone(),
                        syslog::QUEUE,
                        counts.clone(),
                        w,
                    );
                    self.threads.push(thread);
                    Threaded { config: c, sink }
                });
            }
        }
        // Threads of sinks that were replaced end on their own.
        self.threads.retain(|t| !t.is_finished());
    }
}

pub async fn run(
    events: RingBuf<MapData>,
    mut enricher: Enricher,
    sinks: AuditSinks,
    state_dir: PathBuf,
    mut inbox: mpsc::UnboundedReceiver<AuditMsg>,
    mut subscribe: mpsc::Receiver<Subscribe>,
    stats: Arc<Stats>,
) {
    let (stdout, stdout_thread) = sink::spawn(
        Scope::Stdout,
        Filter::default(),
        STDOUT_QUEUE,
        stats.lost.clone(),
        sink::JsonLines::new(std::io::BufWriter::with_capacity(
            1 << 16,
            std::io::stdout(),
        )),
    );
    let seq = Seq::open(&state_dir);
    stats.next_seq.store(seq.peek(), Ordering::Relaxed);
    let mut out = Fanout {
        seq,
        stdout,
        file: None,
        syslog: None,
        subscribers: Vec::new(),
        threads: vec![stdout_thread],
        recent: VecDeque::with_capacity(RECENT),
        stats: stats.clone(),
        state_dir,
    };
    out.configure(sinks);
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
                            stats.events.fetch_add(1, Ordering::Relaxed);
                            out.offer_record(&r);
                        }
                        Err(e) => warn!("undecodable event: {e}"),
                    }
                }
                guard.clear_ready();
            }
            sub = subscribe.recv() => {
                if let Some(sub) = sub {
                    out.subscribe(sub);
                }
            }
            msg = inbox.recv() => match msg {
                None => break,
                Some(AuditMsg::Record(r)) => out.offer_record(&r),
                Some(AuditMsg::Json(v)) => {
                    let meta = Meta { event: v["event"].as_str().unwrap_or("").to_string(), ..Meta::default() };
                    out.offer(v.to_string().into_bytes(), meta);
                }
                Some(AuditMsg::RuleNames(g, names)) => enricher.rules.insert(g, names),
                Some(AuditMsg::Cgroups(ids)) => for (id, p) in ids { enricher.know_cgroup(id, p) },
                Some(AuditMsg::Sinks(s)) => out.configure(s),
            }
        }
    }
    // Everything queued is written before the daemon exits; then the next daemon's
    // numbers continue from here.
    let Fanout {
        seq,
        threads,
        stdout,
        file,
        syslog,
        subscribers,
        ..
    } = out;
    // The queues close: each sink thread writes what is left and ends.
    drop((stdout, file, syslog, subscribers));
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
        seq.close();
    })
    .await;
}

//! The audit stream: ring buffer -> decode -> enrich -> one JSON line, offered to every
//! sink (stdout and control-socket subscribers). Each sink has its own bounded queue: a
//! sink that falls behind loses its own lines (and is told how many when it catches up);
//! it never slows the others, this task, or the kernel.

use std::{
    collections::VecDeque,
    io::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aya::maps::{MapData, RingBuf};
use bytes::Bytes;
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use crate::{
    control::server::Subscribe,
    events::{decode::decode, enrich::Enricher, record, Record},
};

/// What the policy owner tells the audit stream.
pub enum Control {
    Record(Box<Record>),
    /// A record that is not a packet or policy event (grants), as JSON.
    Json(serde_json::Value),
    RuleNames(u64, Vec<String>),
    Cgroups(Vec<(u64, String)>),
}

/// Audit stream health, shared with `status`.
#[derive(Default)]
pub struct Stats {
    /// Packet events turned into lines.
    pub events: AtomicU64,
    /// Lines a sink lost because it fell behind.
    pub sink_lost: AtomicU64,
    pub subscribers: AtomicU64,
}

/// Recent lines held for `tail --since`.
const HISTORY: usize = 10_000;

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Lines stdout may fall behind before it loses some.
const STDOUT_QUEUE: usize = 1 << 16;

struct Sink {
    tx: mpsc::Sender<Bytes>,
    scope: &'static str,
    lost: u64,
}

impl Sink {
    /// Offers a line; false once the sink is gone.
    fn offer(&mut self, line: &Bytes, stats: &Stats) -> bool {
        if self.lost > 0 {
            let notice = Record {
                ts: record::now(),
                event: "lost",
                scope: Some(self.scope),
                count: Some(self.lost),
                ..Record::default()
            };
            match self.tx.try_send(to_line(&notice)) {
                Ok(()) => self.lost = 0,
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        match self.tx.try_send(line.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lost += 1;
                stats.sink_lost.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

fn to_line(r: &Record) -> Bytes {
    let mut v = serde_json::to_vec(r).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Starts the thread that writes stdout's queue; returns its sink and the thread.
fn stdout_sink() -> (Sink, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(STDOUT_QUEUE);
    let thread = std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
        while let Some(b) = rx.blocking_recv() {
            if out.write_all(&b).is_err() {
                return;
            }
            // Flush whenever the queue is drained, so a quiet stream is never held back.
            if rx.is_empty() && out.flush().is_err() {
                return;
            }
        }
        let _ = out.flush();
    });
    (
        Sink {
            tx,
            scope: "stdout",
            lost: 0,
        },
        thread,
    )
}

/// Every sink, and the recent lines new subscribers may ask for.
struct Fanout {
    sinks: Vec<Sink>,
    history: VecDeque<(u128, Bytes)>,
    stats: Arc<Stats>,
}

impl Fanout {
    fn offer(&mut self, line: Bytes) {
        let stats = &self.stats;
        self.sinks.retain_mut(|s| s.offer(&line, stats));
        self.stats
            .subscribers
            .store(self.sinks.len().saturating_sub(1) as u64, Ordering::Relaxed);
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((unix_ns(), line));
    }

    fn subscribe(&mut self, sub: Subscribe) {
        let mut sink = Sink {
            tx: sub.tx,
            scope: "subscriber",
            lost: 0,
        };
        if let Some(since) = sub.since_unix_ns {
            for (_, line) in self.history.iter().filter(|(t, _)| *t >= since) {
                sink.offer(line, &self.stats);
            }
        }
        self.sinks.push(sink);
        self.stats
            .subscribers
            .store(self.sinks.len().saturating_sub(1) as u64, Ordering::Relaxed);
    }
}

pub async fn run(
    events: RingBuf<MapData>,
    mut enricher: Enricher,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut subscribe: mpsc::Receiver<Subscribe>,
    stats: Arc<Stats>,
) {
    let (stdout, stdout_thread) = stdout_sink();
    let mut out = Fanout {
        sinks: vec![stdout],
        history: VecDeque::with_capacity(HISTORY),
        stats: stats.clone(),
    };
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
                            let line = to_line(&enricher.record(&ev));
                            stats.events.fetch_add(1, Ordering::Relaxed);
                            out.offer(line);
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
            msg = control.recv() => match msg {
                None => break,
                Some(Control::Record(r)) => out.offer(to_line(&r)),
                Some(Control::Json(v)) => {
                    let mut line = v.to_string().into_bytes();
                    line.push(b'\n');
                    out.offer(Bytes::from(line));
                }
                Some(Control::RuleNames(g, names)) => enricher.rules.insert(g, names),
                Some(Control::Cgroups(ids)) => for (id, p) in ids { enricher.know_cgroup(id, p) },
            }
        }
    }
    // Everything queued for stdout is written before the daemon exits.
    drop(out);
    let _ = tokio::task::spawn_blocking(move || stdout_thread.join()).await;
}

//! The audit stream: ring buffer -> decode -> enrich -> one JSON line, numbered (`seq`)
//! and stamped with its origin, offered to every sink (`events::sink`: stdout, the
//! rotated file, syslog, control-socket subscribers). Lines are made in batches (what one
//! wakeup finds in the ring, up to 512 KiB) that the sinks share. Each sink has its own
//! bounded queue and filter: a sink that falls behind loses its own lines (counted, and
//! told how many with its next line); it never slows the others, this task, or the kernel.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Instant,
};

use aya::maps::{MapData, RingBuf};
use enforcer_common::event::PacketEvent;
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use super::seq::Seq;
use crate::{
    control::server::{Subscribe, SUBSCRIBER_QUEUE},
    events::{
        decode::decode,
        enrich::Enricher,
        sink::{
            self, file, syslog, Batch, BatchBuilder, Filter, JsonLines, LostCounts, Meta, Origin,
            Scope, Sink,
        },
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

/// Recent lines held for `tail --since` (whole batches: at least this many).
const RECENT: usize = 10_000;
/// How long the reader waits after reading events before it looks again.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);
/// Events read between updates of the `events` count and of the time the name caches age
/// by (a busy ring keeps the reading loop going).
const TICK: usize = 1024;

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// How long the reader pauses after a batch while a sink catches up: about what a sink
/// takes to write one batch.
const CATCH_UP: std::time::Duration = std::time::Duration::from_micros(50);

/// Lines stdout may fall behind before it loses some.
const STDOUT_QUEUE: usize = 1 << 16;

/// Bytes a reader may lag behind on stdout (if a pipe; the kernel's default is 64 KiB) and
/// on a subscriber's connection (the kernel doubles it): two batches, so a batch does not
/// wait for the reader to be scheduled. The subscriber's stays small next to its queue: a
/// stuck subscriber loses lines soon, not after megabytes.
const STDOUT_PIPE: libc::c_int = 1 << 20;
const SUBSCRIBER_SNDBUF: libc::c_int = 1 << 19;

/// A sink drained by a thread of its own, with the configuration it runs with.
struct Threaded<C> {
    config: C,
    sink: Sink,
}

/// Every sink, and the recent lines new subscribers may ask for.
struct Fanout {
    seq: Seq,
    origin: &'static Origin,
    building: BatchBuilder,
    stdout: Sink,
    file: Option<(Threaded<file::Config>, Arc<file::Limits>)>,
    syslog: Option<Threaded<syslog::Config>>,
    subscribers: Vec<Sink>,
    /// Sink threads, joined when the stream ends (everything queued gets written).
    threads: Vec<JoinHandle<()>>,
    /// Batches with when they were offered, and how many lines they hold.
    recent: VecDeque<(u128, Arc<Batch>)>,
    recent_lines: usize,
    stats: Arc<Stats>,
    state_dir: PathBuf,
}

impl Fanout {
    /// Adds a packet event's line to the batch being made; offers the batch once full (the
    /// sinks take lines as they come while the ring is busy).
    fn event(&mut self, enricher: &mut Enricher, ev: &PacketEvent, now: Instant) {
        let seq = self.seq.take();
        let meta = enricher.line(ev, seq, now, self.origin, &mut self.building.buf);
        self.building.push(seq, meta);
        if self.building.full() {
            self.flush();
            // The sinks' threads may share this CPU: they take the batch now rather than
            // after this thread's time slice, which could fill their queues meanwhile. A
            // yield may not be enough: the scheduler keeps a thread that has had less than
            // its share running, and this one can make a sink's queue of lines in a
            // millisecond. So while a sink is behind but moving, this thread pauses
            // (the ring holds the events meanwhile); a stuck sink never makes it wait.
            if self.sinks().any(Sink::catching_up) {
                std::thread::sleep(CATCH_UP);
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Numbers and stamps `body` (one JSON object) and offers it, after the lines before.
    fn offer(&mut self, mut body: Vec<u8>, meta: Meta) {
        let seq = self.seq.take();
        debug_assert_eq!(body.last(), Some(&b'}'));
        body.pop();
        self.building.buf.append(&mut body);
        self.origin.finish(&mut self.building.buf, Some(seq));
        self.building.push(seq, meta);
        self.flush();
    }

    fn offer_record(&mut self, r: &Record) {
        self.offer(serde_json::to_vec(r).unwrap_or_default(), Meta::of(r));
    }

    fn sinks(&self) -> impl Iterator<Item = &Sink> {
        std::iter::once(&self.stdout)
            .chain(self.file.as_ref().map(|(f, _)| &f.sink))
            .chain(self.syslog.as_ref().map(|s| &s.sink))
            .chain(&self.subscribers)
    }

    /// Offers the batch made so far to every sink.
    fn flush(&mut self) {
        let Some(batch) = self.building.take() else {
            return;
        };
        self.stats
            .next_seq
            .store(self.seq.peek(), Ordering::Relaxed);
        self.stdout.offer(&batch);
        if let Some((f, _)) = &mut self.file {
            f.sink.offer(&batch);
        }
        if let Some(s) = &mut self.syslog {
            s.sink.offer(&batch);
        }
        self.subscribers.retain_mut(|s| s.offer(&batch));
        self.stats
            .subscribers
            .store(self.subscribers.len() as u64, Ordering::Relaxed);
        self.recent_lines += batch.lines.len();
        self.recent.push_back((unix_ns(), batch));
        while let Some((_, old)) = self.recent.front() {
            if self.recent_lines - old.lines.len() < RECENT {
                break;
            }
            self.recent_lines -= old.lines.len();
            self.recent.pop_front();
        }
    }

    /// A thread of its own writes to the subscriber: its answer first, then its lines.
    fn subscribe(&mut self, sub: Subscribe) {
        let size = SUBSCRIBER_SNDBUF;
        // SAFETY: setting an int socket option on a socket we own. On failure the
        // default stays.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sub.stream),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 16, sub.stream);
        // Buffered: written with the first lines, or when the queue is first found empty.
        let _ = std::io::Write::write_all(&mut out, &sub.answer);
        let (mut sink, _detached) = sink::spawn(
            Scope::Subscriber,
            Filter::default(),
            SUBSCRIBER_QUEUE,
            self.stats.lost.clone(),
            JsonLines::new(out, Scope::Subscriber),
        );
        if let Some(since) = sub.since_unix_ns {
            for (_, batch) in self.recent.iter().filter(|(t, _)| *t >= since) {
                sink.offer(batch);
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

/// Stdout as a plain file: `std::io::stdout()` locks and looks for newlines on every
/// write, for a line buffering the sink does itself.
fn stdout_file() -> Box<dyn std::io::Write + Send> {
    use std::os::fd::AsFd as _;
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(std::io::stdout()),
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
    // SAFETY: an fcntl on stdout; it fails harmlessly unless stdout is a pipe.
    unsafe { libc::fcntl(1, libc::F_SETPIPE_SZ, STDOUT_PIPE) };
    let (stdout, stdout_thread) = sink::spawn(
        Scope::Stdout,
        Filter::default(),
        STDOUT_QUEUE,
        stats.lost.clone(),
        JsonLines::new(
            std::io::BufWriter::with_capacity(1 << 16, stdout_file()),
            Scope::Stdout,
        ),
    );
    let seq = Seq::open(&state_dir);
    stats.next_seq.store(seq.peek(), Ordering::Relaxed);
    let mut out = Fanout {
        seq,
        origin: Origin::get(),
        building: BatchBuilder::default(),
        stdout,
        file: None,
        syslog: None,
        subscribers: Vec::new(),
        threads: vec![stdout_thread],
        recent: VecDeque::new(),
        recent_lines: 0,
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
                let mut now = Instant::now();
                let (mut n, mut any) = (0, false);
                while let Some(item) = ring.next() {
                    match decode(&item) {
                        Ok(ev) => {
                            drop(item);
                            out.event(&mut enricher, &ev, now);
                            n += 1;
                            any = true;
                            if n == TICK {
                                stats.events.fetch_add(n as u64, Ordering::Relaxed);
                                now = Instant::now();
                                n = 0;
                            }
                        }
                        Err(e) => warn!("undecodable event: {e}"),
                    }
                }
                out.flush();
                stats.events.fetch_add(n as u64, Ordering::Relaxed);
                guard.clear_ready();
                if any {
                    // Events come in bursts: let this one grow before the next read, so a
                    // wakeup (and each sink's) carries many lines rather than a few.
                    tokio::time::sleep(GATHER).await;
                }
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
                    let meta = Meta { event: v["event"].as_str().unwrap_or("").to_string().into(), ..Meta::default() };
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

//! Where audit lines go. The fan-out (`daemon::audit`) stamps each record once (`seq`,
//! `boot_id`, `host`) into a `Line` and offers it to every sink's bounded queue; each sink
//! applies its own filter and is drained by its own thread or task (stdout, the rotated
//! `file`, `syslog`, control-socket subscribers). A sink whose queue is full loses that
//! line, counted, and learns how many with the next line it gets (`Item::lost_before`), so
//! a slow sink never holds up the others or the ring-buffer reader.

pub mod chain;
pub mod file;
pub mod syslog;

use std::{
    io::Write,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::record::Record;

/// Where a sink's lines go; the `scope` of its `lost` notices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Stdout = 0,
    Subscriber = 1,
    File = 2,
    Syslog = 3,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Stdout, Scope::Subscriber, Scope::File, Scope::Syslog];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Stdout => "stdout",
            Scope::Subscriber => "subscriber",
            Scope::File => "file",
            Scope::Syslog => "syslog",
        }
    }
}

/// Lines each kind of sink lost since the daemon started (for `status`).
#[derive(Debug, Default)]
pub struct LostCounts([AtomicU64; 4]);

impl LostCounts {
    pub fn add(&self, scope: Scope, n: u64) {
        self.0[scope as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, scope: Scope) -> u64 {
        self.0[scope as usize].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        Scope::ALL.iter().map(|s| self.get(*s)).sum()
    }
}

/// Where the events come from, on every line: the boot (`/proc/sys/kernel/random/boot_id`)
/// and the host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub boot_id: String,
    pub host: String,
    /// `,"boot_id":"...","host":"..."`, ready to splice into a line.
    fields: String,
}

impl Origin {
    pub fn new(boot_id: &str, host: &str) -> Self {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        Origin {
            boot_id: boot_id.to_string(),
            host: host.to_string(),
            fields: format!(",\"boot_id\":{},\"host\":{}", q(boot_id), q(host)),
        }
    }

    /// This host's, read once.
    pub fn get() -> &'static Origin {
        static ORIGIN: OnceLock<Origin> = OnceLock::new();
        ORIGIN.get_or_init(|| {
            let read = |p: &str| {
                std::fs::read_to_string(p)
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            let host = read("/proc/sys/kernel/hostname");
            Origin::new(
                &read("/proc/sys/kernel/random/boot_id"),
                if host.is_empty() { "localhost" } else { &host },
            )
        })
    }

    /// `body` (one JSON object) with `seq` (if any) and the origin added, and a newline.
    pub fn stamp(&self, mut body: Vec<u8>, seq: Option<u64>) -> Vec<u8> {
        debug_assert_eq!(body.last(), Some(&b'}'));
        body.pop();
        if let Some(seq) = seq {
            let _ = write!(body, ",\"seq\":{seq}");
        }
        body.extend_from_slice(self.fields.as_bytes());
        body.extend_from_slice(b"}\n");
        body
    }
}

/// What filters look at, besides the JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub event: String,
    pub verdict: Option<&'static str>,
    pub rule: Option<String>,
    pub src: Option<IpAddr>,
}

impl Meta {
    pub fn of(r: &Record) -> Self {
        Meta {
            event: r.event.to_string(),
            verdict: r.verdict,
            rule: r.rule.clone(),
            src: r.src.as_deref().and_then(|s| s.parse().ok()),
        }
    }
}

/// One line of the audit stream as every sink receives it.
#[derive(Debug)]
pub struct Line {
    pub seq: u64,
    /// The JSON object (with `seq`, `boot_id`, `host`), newline-terminated.
    pub json: Bytes,
    pub meta: Meta,
}

impl Line {
    /// Stamps `body` (a JSON object, no newline) as line `seq`.
    pub fn new(seq: u64, body: Vec<u8>, meta: Meta) -> Self {
        Line {
            seq,
            json: Bytes::from(Origin::get().stamp(body, Some(seq))),
            meta,
        }
    }
}

/// What a sink's queue carries: a line, and how many lines the queue dropped just before
/// it (the sink writes a `lost` notice for them first).
#[derive(Debug, Clone)]
pub struct Item {
    pub line: Arc<Line>,
    pub lost_before: u64,
}

/// A sink's own `lost` notice (it has no `seq`: only that sink has it).
pub fn lost_notice(scope: Scope, count: u64) -> Vec<u8> {
    let r = Record {
        ts: crate::clock::now_rfc3339_nanos(),
        event: "lost",
        scope: Some(scope.name()),
        count: Some(count),
        ..Record::default()
    };
    Origin::get().stamp(serde_json::to_vec(&r).unwrap_or_default(), None)
}

pub use crate::policy::sinks::{Filter, VERDICTS};

impl Filter {
    fn keeps_line(&self, l: &Line) -> bool {
        self.keeps(
            &l.meta.event,
            l.meta.verdict,
            l.meta.rule.as_deref(),
            l.meta.src,
        )
    }
}

/// The fan-out's end of one sink: its queue, its filter, and what it dropped since the
/// last line it took.
pub struct Sink {
    pub scope: Scope,
    pub filter: Filter,
    tx: mpsc::Sender<Item>,
    lost: u64,
    counts: Arc<LostCounts>,
}

impl Sink {
    pub fn new(
        scope: Scope,
        filter: Filter,
        tx: mpsc::Sender<Item>,
        counts: Arc<LostCounts>,
    ) -> Self {
        Sink {
            scope,
            filter,
            tx,
            lost: 0,
            counts,
        }
    }

    /// Offers a line (never waits); false once the sink is gone.
    pub fn offer(&mut self, line: &Arc<Line>) -> bool {
        if !self.filter.keeps_line(line) {
            return !self.tx.is_closed();
        }
        let item = Item {
            line: line.clone(),
            lost_before: self.lost,
        };
        match self.tx.try_send(item) {
            Ok(()) => {
                self.lost = 0;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lost += 1;
                self.counts.add(self.scope, 1);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The end of a sink that a thread of its own drains.
pub trait LineWriter: Send + 'static {
    /// Writes an item (a `lost` notice first if the queue dropped lines before it). An
    /// error ends the sink.
    fn write(&mut self, item: &Item) -> std::io::Result<()>;
    /// The queue is empty for now: a good time to flush.
    fn idle(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// The sink is being removed or the daemon stops; everything queued was written.
    fn close(&mut self) {}
}

/// Starts a thread that drains a queue of `len` items into `w`; returns the fan-out's end
/// and the thread (which ends once the `Sink` is dropped and the queue is drained).
pub fn spawn<W: LineWriter>(
    scope: Scope,
    filter: Filter,
    len: usize,
    counts: Arc<LostCounts>,
    mut w: W,
) -> (Sink, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Item>(len);
    let thread = std::thread::Builder::new()
        .name(format!("audit-{}", scope.name()))
        .spawn(move || {
            while let Some(item) = rx.blocking_recv() {
                if w.write(&item).is_err() {
                    return;
                }
                if rx.is_empty() && w.idle().is_err() {
                    return;
                }
            }
            w.close();
        })
        .expect("spawning an audit sink thread");
    (Sink::new(scope, filter, tx, counts), thread)
}

/// JSON lines on a writer: the daemon's stdout sink, and records written directly (the
/// benchmark).
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines { out }
    }

    pub fn write(&mut self, r: &Record) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, r)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write + Send + 'static> LineWriter for JsonLines<W> {
    fn write(&mut self, item: &Item) -> std::io::Result<()> {
        if item.lost_before > 0 {
            self.out
                .write_all(&lost_notice(Scope::Stdout, item.lost_before))?;
        }
        self.out.write_all(&item.line.json)
    }

    // Flushed whenever the queue is drained, so a quiet stream is never held back.
    fn idle(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn close(&mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_with_seq_and_origin() {
        let o = Origin::new("b0-1", "h\"1");
        let l = o.stamp(br#"{"ts":"t","event":"packet"}"#.to_vec(), Some(7));
        assert_eq!(
            l,
            b"{\"ts\":\"t\",\"event\":\"packet\",\"seq\":7,\"boot_id\":\"b0-1\",\"host\":\"h\\\"1\"}\n"
        );
        let v: serde_json::Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["host"], "h\"1");
        let n = o.stamp(br#"{"event":"lost"}"#.to_vec(), None);
        assert!(!String::from_utf8(n).unwrap().contains("seq"));
    }

    #[test]
    fn filters_keep_what_tail_keeps() {
        let all = Filter::default();
        assert!(all.keeps("policy", None, None, None));
        let f = Filter {
            verdict: Some("drop".into()),
            rule: Some("db".into()),
            src: Some(crate::policy::values::parse_prefix("10.0.0.0/8").unwrap()),
        };
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(f.keeps("packet", Some("drop"), Some("db"), Some(a)));
        assert!(!f.keeps("policy", None, None, None));
        assert!(!f.keeps("packet", Some("allow"), Some("db"), Some(a)));
        assert!(!f.keeps("packet", Some("drop"), Some("web"), Some(a)));
        assert!(!f.keeps(
            "packet",
            Some("drop"),
            Some("db"),
            Some("192.168.0.1".parse().unwrap())
        ));
        assert!(!f.keeps("packet", Some("drop"), Some("db"), None));
    }

    #[test]
    fn a_full_queue_counts_and_reports_what_it_dropped() {
        let counts = Arc::new(LostCounts::default());
        let (tx, mut rx) = mpsc::channel(1);
        let mut s = Sink::new(Scope::File, Filter::default(), tx, counts.clone());
        let line = |seq| Arc::new(Line::new(seq, b"{}".to_vec(), Meta::default()));
        assert!(s.offer(&line(1)));
        assert!(s.offer(&line(2)));
        assert!(s.offer(&line(3)));
        assert_eq!(counts.get(Scope::File), 2);
        assert_eq!(rx.try_recv().unwrap().line.seq, 1);
        assert!(s.offer(&line(4)));
        let it = rx.try_recv().unwrap();
        assert_eq!((it.line.seq, it.lost_before), (4, 2));
        drop(rx);
        assert!(!s.offer(&line(5)));
    }
}

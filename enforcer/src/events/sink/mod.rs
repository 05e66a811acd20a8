//! Where audit lines go. The fan-out (`daemon::audit`) stamps each line once (`seq`,
//! `boot_id`, `host`) into a `Batch` of lines and offers the batch to every sink's bounded
//! `queue`; each sink applies its own filter and is drained by a thread of its own (stdout,
//! the rotated `file`, `syslog`, control-socket subscribers). A sink whose queue is full
//! loses those lines, counted, and learns how many with the next lines it gets
//! (`lost_before`), so a slow sink never holds up the others or the ring-buffer reader.

pub mod chain;
pub mod file;
mod queue;
pub mod syslog;

pub use queue::{spawn, Batch, BatchBuilder, Delivery, LineWriter, Sink};

use std::{
    borrow::Cow,
    io::Write,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
};

use bytes::Bytes;

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
        self.finish(&mut body, seq);
        body
    }

    /// Ends a line whose object's fields `out` holds: `seq` (if any), the origin, `}` and
    /// the newline.
    pub fn finish(&self, out: &mut Vec<u8>, seq: Option<u64>) {
        crate::events::cursor::append(out, 32 + self.fields.len(), |c| {
            if let Some(seq) = seq {
                c.put(b",\"seq\":");
                c.uint(seq);
            }
            c.put(self.fields.as_bytes());
            c.put(b"}\n");
        });
    }
}

/// What filters look at, besides the JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Borrowed for the events the daemon makes; owned for those it passes on (grants).
    pub event: Cow<'static, str>,
    pub verdict: Option<&'static str>,
    pub rule: Option<Arc<str>>,
    pub src: Option<IpAddr>,
}

impl Meta {
    pub fn of(r: &Record) -> Self {
        Meta {
            event: Cow::Borrowed(r.event),
            verdict: r.verdict,
            rule: r.rule.as_deref().map(Arc::from),
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
    #[cfg(test)]
    pub fn new(seq: u64, body: Vec<u8>, meta: Meta) -> Self {
        Line {
            seq,
            json: Bytes::from(Origin::get().stamp(body, Some(seq))),
            meta,
        }
    }
}

/// One line as the file and syslog sinks write it, and how many lines the queue dropped
/// just before it (the sink writes a `lost` notice for them first).
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

/// JSON lines on a writer: the daemon's stdout and its subscribers.
pub struct JsonLines<W: Write> {
    out: W,
    scope: Scope,
}

impl<W: Write> JsonLines<W> {
    /// `scope`: whose `lost` notices it writes.
    pub fn new(out: W, scope: Scope) -> Self {
        JsonLines { out, scope }
    }
}

impl<W: Write + Send + 'static> LineWriter for JsonLines<W> {
    fn write(&mut self, item: &Item) -> std::io::Result<()> {
        if item.lost_before > 0 {
            self.out
                .write_all(&lost_notice(self.scope, item.lost_before))?;
        }
        self.out.write_all(&item.line.json)
    }

    // A batch of all lines is already one buffer: one write (a large one bypasses the
    // BufWriter).
    fn write_batch(&mut self, d: &Delivery) -> std::io::Result<()> {
        let Some(all) = d.whole() else {
            return d.items().try_for_each(|item| self.write(&item));
        };
        if d.lost_before > 0 {
            self.out
                .write_all(&lost_notice(self.scope, d.lost_before))?;
        }
        self.out.write_all(all)
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
}

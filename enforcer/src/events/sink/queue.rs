//! The fan-out's queues. Lines are made in batches (one ring-buffer wakeup's worth) into one
//! buffer that every sink shares: a sink's queue carries whole batches, each with the lines
//! its filter keeps, so a sink costs one queue push per batch and, for stdout and
//! subscribers, one write. Queues are bounded in lines, as if lines were queued one by one:
//! the lines of a batch that do not fit are lost, counted, and reported before the next
//! lines the sink takes.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
};

use bytes::Bytes;

use super::{Filter, Item, Line, LostCounts, Meta, Scope};

/// Lines made together, in one buffer.
#[derive(Debug)]
pub struct Batch {
    /// The lines, each a JSON object and a newline.
    pub bytes: Bytes,
    pub lines: Vec<Entry>,
}

/// One line of a batch: where it ends in the buffer, its `seq`, what filters look at.
#[derive(Debug)]
pub struct Entry {
    pub end: usize,
    pub seq: u64,
    pub meta: Meta,
}

impl Batch {
    /// Line `i`'s bytes.
    pub fn line(&self, i: usize) -> Bytes {
        let start = if i == 0 { 0 } else { self.lines[i - 1].end };
        self.bytes.slice(start..self.lines[i].end)
    }
}

/// A batch being made: lines are written into `buf`, then `push`ed.
pub struct BatchBuilder {
    pub buf: Vec<u8>,
    lines: Vec<Entry>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            buf: Vec::with_capacity(BATCH_ROOM),
            lines: Vec::new(),
        }
    }
}

/// Bytes after which a batch is full: half the stdout pipe's and a subscriber's socket
/// buffer. Each batch costs every sink a wakeup and a write: at 3M events/s, 512 KiB
/// batches took the daemon's CPU per event 4-18% (median 9%) below 256 KiB ones (A/B
/// through the bench's audit section, six pairs of runs).
const BATCH_BYTES: usize = 1 << 19;
/// Room a batch starts with: enough for the line that takes it past `BATCH_BYTES` (the
/// buffer becomes the batch's, so it is allocated per batch, never grown).
const BATCH_ROOM: usize = BATCH_BYTES + (16 << 10);

impl BatchBuilder {
    /// The line written into `buf` since the last push is line `seq`.
    pub fn push(&mut self, seq: u64, meta: Meta) {
        self.lines.push(Entry {
            end: self.buf.len(),
            seq,
            meta,
        });
    }

    /// Whether the batch is full.
    pub fn full(&self) -> bool {
        self.buf.len() >= BATCH_BYTES
    }

    /// The batch made so far (None if empty); the builder starts a new one.
    pub fn take(&mut self) -> Option<Arc<Batch>> {
        if self.lines.is_empty() {
            return None;
        }
        let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH_ROOM));
        let n = self.lines.len();
        Some(Arc::new(Batch {
            bytes: Bytes::from(bytes),
            lines: std::mem::replace(&mut self.lines, Vec::with_capacity(n)),
        }))
    }
}

/// Lines held in a sink's queue; given back when the delivery is dropped (written).
#[derive(Debug)]
struct Permit {
    queued: Arc<AtomicUsize>,
    lines: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.lines, Ordering::Relaxed);
    }
}

/// What a sink's queue carries: a batch, the lines of it the sink keeps, and how many lines
/// the queue dropped just before it (the sink writes a `lost` notice for them first).
#[derive(Debug)]
pub struct Delivery {
    pub batch: Arc<Batch>,
    /// Indices of the kept lines; None: all of them.
    kept: Option<Vec<u32>>,
    pub lost_before: u64,
    _permit: Permit,
}

impl Delivery {
    /// All the batch's lines, as one buffer (None if the filter left some out).
    pub fn whole(&self) -> Option<&[u8]> {
        self.kept.is_none().then_some(&self.batch.bytes[..])
    }

    /// The kept lines' indices in the batch.
    pub fn indices(&self) -> Box<dyn Iterator<Item = usize> + '_> {
        match &self.kept {
            None => Box::new(0..self.batch.lines.len()),
            Some(k) => Box::new(k.iter().map(|&i| i as usize)),
        }
    }

    /// The kept lines one by one, the first carrying `lost_before`.
    pub fn items(&self) -> impl Iterator<Item = Item> + '_ {
        self.indices().enumerate().map(|(n, i)| {
            let e = &self.batch.lines[i];
            Item {
                line: Arc::new(Line {
                    seq: e.seq,
                    json: self.batch.line(i),
                    meta: e.meta.clone(),
                }),
                lost_before: if n == 0 { self.lost_before } else { 0 },
            }
        })
    }
}

/// The fan-out's end of one sink: its queue, its filter, and what it dropped since the
/// last batch it took.
pub struct Sink {
    pub scope: Scope,
    pub filter: Filter,
    tx: mpsc::Sender<Delivery>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    lost: u64,
    counts: Arc<LostCounts>,
    /// Lines queued just after the last offer.
    queued_after_offer: usize,
}

impl Sink {
    /// Whether the queue is more than half full and has given lines to its writer since
    /// the last offer: behind, but moving (unlike a stuck sink, which only fills up).
    pub fn catching_up(&self) -> bool {
        let queued = self.queued.load(Ordering::Relaxed);
        queued > self.capacity / 2 && queued < self.queued_after_offer
    }

    /// Offers a batch (never waits); false once the sink is gone. As if line by line: the
    /// lines that fit the queue go in, the rest are lost.
    pub fn offer(&mut self, batch: &Arc<Batch>) -> bool {
        let mut kept: Option<Vec<u32>> = (!self.filter.is_empty()).then(|| {
            (0..batch.lines.len() as u32)
                .filter(|&i| {
                    let m = &batch.lines[i as usize].meta;
                    self.filter
                        .keeps(&m.event, m.verdict, m.rule.as_deref(), m.src)
                })
                .collect()
        });
        let n = kept.as_ref().map_or(batch.lines.len(), Vec::len);
        if n == 0 {
            return true;
        }
        let queued = self.queued.load(Ordering::Relaxed);
        // An empty queue takes any batch, however large.
        let fits = if queued == 0 {
            n
        } else {
            n.min(self.capacity.saturating_sub(queued))
        };
        let dropped = (n - fits) as u64;
        self.counts.add(self.scope, dropped);
        if fits == 0 {
            self.lost += dropped;
            return true;
        }
        if fits < n {
            kept = Some(match kept {
                Some(mut k) => {
                    k.truncate(fits);
                    k
                }
                None => (0..fits as u32).collect(),
            });
        }
        self.queued_after_offer = self.queued.fetch_add(fits, Ordering::Relaxed) + fits;
        let d = Delivery {
            batch: batch.clone(),
            kept,
            lost_before: self.lost,
            _permit: Permit {
                queued: self.queued.clone(),
                lines: fits,
            },
        };
        if self.tx.send(d).is_err() {
            return false;
        }
        // The lines after those that fit are reported before the next ones taken.
        self.lost = dropped;
        true
    }
}

/// The end of a sink that a thread of its own drains.
pub trait LineWriter: Send + 'static {
    /// Writes an item (a `lost` notice first if the queue dropped lines before it). An
    /// error ends the sink.
    fn write(&mut self, item: &Item) -> std::io::Result<()>;
    /// Writes a delivery: by default its lines one by one.
    fn write_batch(&mut self, d: &Delivery) -> std::io::Result<()> {
        d.items().try_for_each(|item| self.write(&item))
    }
    /// The queue is empty for now: a good time to flush.
    fn idle(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// The sink is being removed or the daemon stops; everything queued was written.
    fn close(&mut self) {}
}

/// Starts a thread that drains a queue of `capacity` lines into `w`; returns the fan-out's
/// end and the thread (which ends once the `Sink` is dropped and the queue is drained).
pub fn spawn<W: LineWriter>(
    scope: Scope,
    filter: Filter,
    capacity: usize,
    counts: Arc<LostCounts>,
    mut w: W,
) -> (Sink, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Delivery>();
    let thread = std::thread::Builder::new()
        .name(format!("audit-{}", scope.name()))
        .spawn(move || loop {
            let d = match rx.try_recv() {
                Ok(d) => d,
                Err(mpsc::TryRecvError::Empty) => {
                    if w.idle().is_err() {
                        return;
                    }
                    match rx.recv() {
                        Ok(d) => d,
                        Err(_) => break w.close(),
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => break w.close(),
            };
            if w.write_batch(&d).is_err() {
                return;
            }
        })
        .expect("spawning an audit sink thread");
    let sink = Sink {
        scope,
        filter,
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
        capacity,
        lost: 0,
        counts,
        queued_after_offer: 0,
    };
    (sink, thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Arc<Batch> {
        let mut b = BatchBuilder::default();
        for seq in seqs {
            b.buf
                .extend_from_slice(format!("{{\"seq\":{seq}}}\n").as_bytes());
            b.push(seq, Meta::default());
        }
        b.take().unwrap()
    }

    /// A sink whose queue the test drains by hand.
    fn sink(capacity: usize, counts: &Arc<LostCounts>) -> (Sink, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel();
        let s = Sink {
            scope: Scope::File,
            filter: Filter::default(),
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            capacity,
            lost: 0,
            counts: counts.clone(),
            queued_after_offer: 0,
        };
        (s, rx)
    }

    #[test]
    fn a_sink_is_catching_up_only_while_it_moves() {
        let counts = Arc::new(LostCounts::default());
        let (mut s, rx) = sink(10, &counts);
        s.offer(&batch(1..=3));
        s.offer(&batch(4..=6));
        assert!(!s.catching_up(), "under half full");
        s.offer(&batch(7..=9));
        assert!(!s.catching_up(), "over half full but nothing taken: stuck");
        drop(rx.recv().unwrap());
        assert!(s.catching_up(), "over half full and taking lines");
        drop(rx.recv().unwrap());
        assert!(!s.catching_up(), "under half full again");
    }

    #[test]
    fn a_full_queue_counts_and_reports_what_it_dropped() {
        let counts = Arc::new(LostCounts::default());
        let (mut s, rx) = sink(3, &counts);
        assert!(s.offer(&batch(1..=2)));
        // One line fits; 4 and then 5 are lost, as they would be line by line.
        assert!(s.offer(&batch(3..=4)));
        assert!(s.offer(&batch(5..=5)));
        assert_eq!(counts.get(Scope::File), 2);
        let d = rx.try_recv().unwrap();
        assert_eq!(d.whole(), Some(&b"{\"seq\":1}\n{\"seq\":2}\n"[..]));
        let d2 = rx.try_recv().unwrap();
        let items: Vec<(u64, u64)> = d2.items().map(|i| (i.line.seq, i.lost_before)).collect();
        assert_eq!((d2.whole(), items), (None, vec![(3, 0)]));
        // Written: room again, and the notice of 4 and 5 comes first.
        drop((d, d2));
        assert!(s.offer(&batch(6..=8)));
        let d = rx.try_recv().unwrap();
        let items: Vec<(u64, u64)> = d.items().map(|i| (i.line.seq, i.lost_before)).collect();
        assert_eq!(items, [(6, 2), (7, 0), (8, 0)]);
        assert_eq!(&d.batch.line(1)[..], b"{\"seq\":7}\n");
        drop((d, rx));
        assert!(!s.offer(&batch(9..=9)));
    }

    #[test]
    fn filters_pick_lines_of_a_batch() {
        let counts = Arc::new(LostCounts::default());
        let (mut s, rx) = sink(100, &counts);
        s.filter.verdict = Some("drop".into());
        let mut b = BatchBuilder::default();
        for (seq, v) in [(1, "drop"), (2, "allow"), (3, "drop")] {
            b.buf
                .extend_from_slice(format!("{{\"seq\":{seq}}}\n").as_bytes());
            b.push(
                seq,
                Meta {
                    event: "packet".into(),
                    verdict: Some(v),
                    ..Meta::default()
                },
            );
        }
        assert!(s.offer(&b.take().unwrap()));
        let d = rx.try_recv().unwrap();
        assert_eq!(d.whole(), None);
        let seqs: Vec<u64> = d.items().map(|i| i.line.seq).collect();
        assert_eq!(seqs, [1, 3]);
    }
}

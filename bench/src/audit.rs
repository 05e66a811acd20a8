//! The audit pipeline (section 5): ring buffer -> decode -> enrich -> JSON lines, on a
//! reader thread, fed by test runs of refused packets (each run one event).

use std::{
    fs::File,
    io::{BufWriter, Read as _},
    os::fd::{AsRawFd as _, FromRawFd as _},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::maps::{MapData, RingBuf};
use enforcer::events::{decode::decode, enrich::Enricher, sink::JsonLines};

use crate::{
    bpf,
    env::{check_interrupted, ncpus, pin_to_cpu, Anchor},
    kern::Kern,
    micro::{base_policy, local_addrs, HOST4, REFUSED4},
    packets::tcp4,
    stats::Samples,
};

/// Nanoseconds the calling thread has run (/proc/thread-self/schedstat).
pub fn thread_runtime_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Where the JSON lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    DevNull,
    /// A pipe whose other end a thread reads and discards (as stdout into a log collector).
    Pipe,
}

impl SinkKind {
    pub fn label(self) -> &'static str {
        match self {
            SinkKind::DevNull => "/dev/null",
            SinkKind::Pipe => "pipe",
        }
    }
}

/// How the reader waits when the ring is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// poll(2) on the ring buffer's descriptor, as the daemon does (epoll through tokio).
    Poll,
    /// Never sleeps: spins on the ring (no wakeups needed, one CPU burnt).
    Spin,
}

impl Wait {
    pub fn label(self) -> &'static str {
        match self {
            Wait::Poll => "poll (as the daemon)",
            Wait::Spin => "spin",
        }
    }
}

/// A running reader: drains the ring into the sink until stopped, then drains what is left.
pub struct Reader {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<(RingBuf<MapData>, u64, u64)>>,
    pipe_reader: Option<JoinHandle<u64>>,
}

impl Reader {
    /// Starts the reader thread (pinned to `cpu` if given) with `rules` as the names of the
    /// policy's rules for generation 1 onwards.
    pub fn start(
        mut ring: RingBuf<MapData>,
        sink: SinkKind,
        wait: Wait,
        cpu: Option<usize>,
        rules: Vec<String>,
    ) -> anyhow::Result<Reader> {
        let stop = Arc::new(AtomicBool::new(false));
        let (out, pipe_reader): (File, Option<JoinHandle<u64>>) = match sink {
            SinkKind::DevNull => (File::options().write(true).open("/dev/null")?, None),
            SinkKind::Pipe => {
                let mut fds = [0; 2];
                // SAFETY: pipe2 fills two descriptors we then own.
                if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                    bail!("pipe2: {}", std::io::Error::last_os_error());
                }
                // SAFETY: fresh descriptors from pipe2.
                let (mut r, w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
                let h = std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    let mut total = 0u64;
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    total
                });
                (w, Some(h))
            }
        };
        let st = stop.clone();
        let handle = std::thread::spawn(move || -> anyhow::Result<(RingBuf<MapData>, u64, u64)> {
            if let Some(c) = cpu {
                pin_to_cpu(0, c)?;
            }
            let t0 = thread_runtime_ns();
            let mut enricher = Enricher::new(None);
            for g in 0..16 {
                enricher.rules.insert(g, rules.clone());
            }
            // As the daemon's stdout writer: a 64 KiB buffer.
            let mut sink = JsonLines::new(BufWriter::with_capacity(1 << 16, out));
            let fd = ring.as_raw_fd();
            let mut written = 0u64;
            loop {
                let mut n = 0;
                while let Some(item) = ring.next() {
                    let ev = decode(&item).context("decoding an event")?;
                    drop(item);
                    sink.write(&enricher.record(&ev))
                        .context("writing a record")?;
                    n += 1;
                }
                written += n;
                if n == 0 {
                    if st.load(Ordering::Acquire) {
                        break;
                    }
                    if wait == Wait::Poll {
                        let mut p = libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut p, 1, 5) };
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
            sink.flush()?;
            Ok((ring, written, thread_runtime_ns() - t0))
        });
        Ok(Reader {
            stop,
            handle,
            pipe_reader,
        })
    }

    /// Stops the reader after it has drained the ring; returns the ring and the count of
    /// records written.
    pub fn stop(self) -> anyhow::Result<(RingBuf<MapData>, u64)> {
        let (ring, n, _) = self.stop_timed()?;
        Ok((ring, n))
    }

    /// As `stop`, with the reader thread's CPU time (ns).
    pub fn stop_timed(self) -> anyhow::Result<(RingBuf<MapData>, u64, u64)> {
        self.stop.store(true, Ordering::Release);
        let r = self
            .handle
            .join()
            .map_err(|_| anyhow::anyhow!("the audit reader panicked"))??;
        if let Some(p) = self.pipe_reader {
            // The writer end closed with the reader thread's sink.
            let _ = p.join();
        }
        Ok(r)
    }
}

/// One step of the ladder: offered rate (None: flat out), and what happened.
pub struct Step {
    pub sink: SinkKind,
    pub wait: Wait,
    pub offered: Option<f64>,
    /// Events produced per second, delivered (written as JSON) per second, lost.
    pub produced_per_s: Samples,
    pub delivered_per_s: Samples,
    pub lost: Samples,
}

pub struct AuditResults {
    pub steps: Vec<Step>,
    /// Events per second the producer makes with nobody reading (ring drained first).
    pub kernel_alone: Samples,
    /// The reader's own rate on a pre-filled ring, per sink.
    pub drain: Vec<(SinkKind, Samples)>,
    pub notes: Vec<String>,
}

const STEP_SECS: f64 = 1.5;
pub const RATES: [f64; 4] = [250e3, 500e3, 1e6, 2e6];

/// Produces refused-packet events at `rate` per second (None: as fast as test runs go) for
/// `secs` of wall clock, on the calling thread; returns how many.
fn produce(k: &Kern, frame: &[u8], rate: Option<f64>, secs: f64) -> anyhow::Result<u64> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut produced = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let n = match rate {
            None => 10_000,
            Some(r) => {
                // What is due by now, at most 2 ms' worth at a time.
                let due = (r * (now - start).as_secs_f64()) as u64;
                (due.saturating_sub(produced) as f64).min(r / 500.0) as u32
            }
        };
        if n == 0 {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        bpf::test_run(k.xdp, frame, n)?;
        produced += n as u64;
    }
    Ok(produced)
}

/// How fast the reader empties a ring buffer filled beforehand (no producer running):
/// the pipeline's own rate, events per second.
fn drain_rate(
    k: &mut Kern,
    frame: &[u8],
    sink: SinkKind,
    cpu: Option<usize>,
) -> anyhow::Result<f64> {
    k.drain();
    let lost0 = k.events_lost();
    bpf::test_run(k.xdp, frame, DRAIN_EVENTS)?;
    if k.events_lost() != lost0 {
        bail!("the ring buffer did not hold {DRAIN_EVENTS} events");
    }
    let ring = k.events.take().context("ring buffer")?;
    let t = Instant::now();
    let reader = Reader::start(ring, sink, Wait::Poll, cpu, vec!["postgres".into()])?;
    let (ring, written) = reader.stop()?;
    let secs = t.elapsed().as_secs_f64();
    k.events = Some(ring);
    if written != DRAIN_EVENTS as u64 {
        bail!("drained {written} events of {DRAIN_EVENTS}");
    }
    Ok(written as f64 / secs)
}

/// Events put in the ring before a drain run (it holds ~149,000).
const DRAIN_EVENTS: u32 = 140_000;

pub fn run(anchor: &Anchor, rounds: usize) -> anyhow::Result<AuditResults> {
    let mut k = Kern::new(&base_policy(true), &local_addrs())?;
    anchor.hold(1, k.xdp)?;
    let frame = tcp4(REFUSED4, HOST4, 40000, 5432);
    let two_cpus = ncpus() >= 2;
    let mut steps: Vec<Step> = Vec::new();
    for (sink, wait) in [
        (SinkKind::DevNull, Wait::Poll),
        (SinkKind::Pipe, Wait::Poll),
        (SinkKind::DevNull, Wait::Spin),
    ] {
        for offered in RATES.iter().copied().map(Some).chain([None]) {
            steps.push(Step {
                sink,
                wait,
                offered,
                produced_per_s: Samples::default(),
                delivered_per_s: Samples::default(),
                lost: Samples::default(),
            });
        }
    }
    // The producer (this thread) on CPU 0, the reader on CPU 1.
    if two_cpus {
        pin_to_cpu(0, 0)?;
    }
    let mut drain = vec![
        (SinkKind::DevNull, Samples::default()),
        (SinkKind::Pipe, Samples::default()),
    ];
    let mut kernel_alone = Samples::default();

    let result = (|| -> anyhow::Result<()> {
        for _ in 0..rounds {
            for _ in 0..2 {
                k.drain();
                let t = Instant::now();
                bpf::test_run(k.xdp, &frame, DRAIN_EVENTS)?;
                kernel_alone.push(DRAIN_EVENTS as f64 / t.elapsed().as_secs_f64());
            }
            for (sink, d) in drain.iter_mut() {
                for _ in 0..2 {
                    d.push(drain_rate(&mut k, &frame, *sink, two_cpus.then_some(1))?);
                }
            }
            for s in steps.iter_mut() {
                check_interrupted()?;
                k.drain();
                let ring = k.events.take().context("ring buffer")?;
                let reader = Reader::start(
                    ring,
                    s.sink,
                    s.wait,
                    two_cpus.then_some(1),
                    vec!["postgres".into()],
                )?;
                let lost0 = k.events_lost();
                let t = Instant::now();
                let produced = produce(&k, &frame, s.offered, STEP_SECS);
                let elapsed = t.elapsed().as_secs_f64();
                let (ring, written) = reader.stop()?;
                k.events = Some(ring);
                let produced = produced?;
                let lost = k.events_lost() - lost0;
                if written + lost != produced {
                    bail!(
                        "audit: {produced} events produced but {written} written and {lost} lost"
                    );
                }
                s.produced_per_s.push(produced as f64 / elapsed);
                s.delivered_per_s.push(written as f64 / elapsed);
                s.lost.push(lost as f64);
            }
        }
        Ok(())
    })();
    crate::env::unpin();
    result?;
    let notes = vec![
        format!(
            "Producer: BPF_PROG_TEST_RUN of enforcer's XDP program on a refused TCP SYN (events unlimited), each run one event, paced by the wall clock (what is due, at most 2 ms' worth per test run), on CPU 0; {STEP_SECS} s per step; \"produced\" below the offered rate means the producer could not go faster. Reader: a thread on CPU 1 doing what the daemon's audit path does per event — `events::decode::decode`, `events::enrich::Enricher::record` (rule name, interface name, wall-clock time), `events::sink::JsonLines` into a 64 KiB BufWriter — and, when the ring is empty, either sleeping in poll(2) on its descriptor as the daemon does, or spinning. Delivered counts every record written, including the backlog drained after the producer stops; produced = delivered + lost is checked every step."
        ),
        "The 16 MiB ring buffer absorbs about 149,000 events, so a step without loss over 1.5 s means the pipeline keeps up to within ~100,000 events/s of the offered rate.".into(),
        format!("Drain rate: {DRAIN_EVENTS} events put in the ring first (no producer running), then the reader started and timed until it has written them all: the user-space pipeline's own rate, with no kernel work beside it."),
    ];
    Ok(AuditResults {
        steps,
        kernel_alone,
        drain,
        notes,
    })
}

/// Going up the ladder: the highest offered rate with no loss in any round before the first
/// rate with loss in some round, and that first rate.
pub fn loss_edges(steps: &[Step], sink: SinkKind, wait: Wait) -> (Option<f64>, Option<f64>) {
    let mut best_clean = None;
    for s in steps.iter().filter(|s| s.sink == sink && s.wait == wait) {
        let Some(r) = s.offered else { continue };
        if s.lost.max() > 0.0 {
            return (best_clean, Some(r));
        }
        best_clean = Some(r);
    }
    (best_clean, None)
}

pub fn flat_out(steps: &[Step], sink: SinkKind, wait: Wait) -> Option<&Step> {
    steps
        .iter()
        .find(|s| s.sink == sink && s.wait == wait && s.offered.is_none())
}

/// Makes sure writes of a closed pipe do not kill the process.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

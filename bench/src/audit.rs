//! The audit pipeline (section 5), through the real daemon: test runs of the daemon's own
//! XDP program on refused packets (each run one event) at offered rates, and what reaches
//! its stdout and a subscriber, with its loss counters. Beside it, for the diagnosis, the
//! kernel side alone and the daemon's per-event work alone (decode, enrich, JSON line) on a
//! reader thread of this process.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::maps::{MapData, RingBuf};
use enforcer::events::{decode::decode, enrich::Enricher, sink::Origin};
use enforcer_common::{consts::EVENTS_BYTES, event::PacketEvent};

use crate::{
    bpf,
    daemon::BenchDaemon,
    env::{check_interrupted, in_netns, ncpus, pin_to_cpu, Anchor, Bed, RECEIVER_ADDR},
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

/// A running reader: drains the ring into the sink until stopped, then drains what is left.
pub struct Reader {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<(RingBuf<MapData>, u64)>>,
    pipe_reader: Option<JoinHandle<u64>>,
}

impl Reader {
    /// Starts the reader thread (pinned to `cpu` if given) with `rules` as the names of the
    /// policy's rules for generation 1 onwards.
    pub fn start(
        mut ring: RingBuf<MapData>,
        sink: SinkKind,
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
        let handle = std::thread::spawn(move || -> anyhow::Result<(RingBuf<MapData>, u64)> {
            if let Some(c) = cpu {
                pin_to_cpu(0, c)?;
            }
            let mut enricher = Enricher::new(None);
            for g in 0..16 {
                enricher.rules.insert(g, rules.clone());
            }
            // As the daemon makes its lines: into a batch's buffer, written whole at 64 KiB
            // and when the ring is empty.
            let mut out = out;
            let mut buf = Vec::with_capacity(1 << 16);
            let origin = Origin::get();
            let fd = ring.as_raw_fd();
            let mut written = 0u64;
            loop {
                let mut n = 0;
                let now = Instant::now();
                while let Some(item) = ring.next() {
                    let ev = decode(&item).context("decoding an event")?;
                    drop(item);
                    enricher.line(&ev, written + n, now, origin, &mut buf);
                    n += 1;
                    if buf.len() >= 1 << 16 {
                        out.write_all(&buf).context("writing lines")?;
                        buf.clear();
                    }
                }
                out.write_all(&buf).context("writing lines")?;
                buf.clear();
                written += n;
                if n == 0 {
                    if st.load(Ordering::Acquire) {
                        break;
                    }
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 5) };
                }
            }
            Ok((ring, written))
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
        self.stop.store(true, Ordering::Release);
        let r = self
            .handle
            .join()
            .map_err(|_| anyhow::anyhow!("the audit reader panicked"))??;
        if let Some(p) = self.pipe_reader {
            // The writer end closed with the reader thread's sink.
            let _ = p.join();
        }
        Ok((r.0, r.1))
    }
}

/// One step of the ladder: offered rate (None: flat out), and what happened.
pub struct Step {
    pub offered: Option<f64>,
    /// Events produced per second; lines per second on stdout and on the subscriber
    /// (including the backlog written after the producer stopped), over the step's time.
    pub produced_per_s: Samples,
    pub stdout_per_s: Samples,
    pub sub_per_s: Samples,
    /// Events the kernel could not put in the ring (it was full), and lines the sinks lost.
    pub lost_kernel: Samples,
    pub lost_sinks: Samples,
    /// Daemon CPU time per event (ns).
    pub daemon_ns: Samples,
}

impl Step {
    /// No event lost in any round, and every one on both sinks.
    pub fn clean(&self) -> bool {
        self.lost_kernel.max() == 0.0
            && self.lost_sinks.max() == 0.0
            && self
                .stdout_per_s
                .0
                .iter()
                .chain(&self.sub_per_s.0)
                .zip(self.produced_per_s.0.iter().chain(&self.produced_per_s.0))
                .all(|(d, p)| (d - p).abs() / p.max(1.0) < 1e-3)
    }
}

pub struct AuditResults {
    pub steps: Vec<Step>,
    /// Events per second the producer makes with nobody reading (ring drained first).
    pub kernel_alone: Samples,
    /// The daemon's per-event work alone on a pre-filled ring, per sink.
    pub drain: Vec<(SinkKind, Samples)>,
    pub notes: Vec<String>,
}

/// Long enough that what the ring holds is a small part of a step: a step without loss
/// shows the pipeline keeps up with the offered rate, not that the ring hid a shortfall.
const STEP_SECS: f64 = 3.0;
/// The producer's nice value while it shares CPU 0 with the line counters.
const PRODUCER_NICE: libc::c_int = 5;

/// Sets the calling thread's nice value (per thread on Linux).
fn set_nice(nice: libc::c_int) {
    // SAFETY: setpriority on the calling thread (`who` 0); a failure leaves it as it was.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
}
pub const RATES: [f64; 5] = [250e3, 500e3, 1e6, 2e6, 3e6];

/// Produces refused-packet events with `prog` at `rate` per second (None: as fast as test
/// runs go) for `secs` of wall clock, on the calling thread; returns how many.
fn produce(prog: RawFd, frame: &[u8], rate: Option<f64>, secs: f64) -> anyhow::Result<u64> {
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
                // What is due by now, at most 2 ms' worth at a time; nothing until a
                // quarter of a millisecond's worth is due. Test runs of a few events each
                // would keep this CPU busy at any rate, and starve the threads that count
                // the daemon's lines here.
                let due = (r * (now - start).as_secs_f64()) as u64;
                let n = (due.saturating_sub(produced) as f64).min(r / 500.0);
                if n < r / 4000.0 {
                    0
                } else {
                    n as u32
                }
            }
        };
        if n == 0 {
            std::thread::sleep(Duration::from_micros(250));
            continue;
        }
        bpf::test_run(prog, frame, n)?;
        produced += n as u64;
    }
    Ok(produced)
}

/// How fast the reader empties a ring buffer filled beforehand (no producer running):
/// the per-event work's own rate, events per second.
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
    let reader = Reader::start(ring, sink, cpu, vec!["postgres".into()])?;
    let (ring, written) = reader.stop()?;
    let secs = t.elapsed().as_secs_f64();
    k.events = Some(ring);
    if written != DRAIN_EVENTS as u64 {
        bail!("drained {written} events of {DRAIN_EVENTS}");
    }
    Ok(written as f64 / secs)
}

/// Events put in the ring before a drain run (it holds `ring_events()`).
const DRAIN_EVENTS: u32 = 140_000;

/// Events the daemon's ring buffer holds: each is the event and an 8-byte header, in
/// 8-byte steps.
pub fn ring_events() -> u64 {
    let record = (std::mem::size_of::<PacketEvent>() + 8).next_multiple_of(8);
    u64::from(EVENTS_BYTES) / record as u64
}

/// The refused frame the daemon's program judges: to the receiving namespace's address.
pub fn refused_frame() -> Vec<u8> {
    tcp4(
        REFUSED4,
        RECEIVER_ADDR.parse().expect("address"),
        40000,
        5432,
    )
}

pub fn run(
    bed: &Bed,
    daemon: &BenchDaemon,
    anchor: &Anchor,
    rounds: usize,
) -> anyhow::Result<AuditResults> {
    let mut k = Kern::new(&base_policy(true), &local_addrs())?;
    anchor.hold(1, k.xdp)?;
    let frame = tcp4(REFUSED4, HOST4, 40000, 5432);
    let daemon_frame = refused_frame();
    let two_cpus = ncpus() >= 2;
    let mut steps: Vec<Step> = RATES
        .iter()
        .copied()
        .map(Some)
        .chain([None])
        .map(|offered| Step {
            offered,
            produced_per_s: Samples::default(),
            stdout_per_s: Samples::default(),
            sub_per_s: Samples::default(),
            lost_kernel: Samples::default(),
            lost_sinks: Samples::default(),
            daemon_ns: Samples::default(),
        })
        .collect();
    // The producer (this thread) and the threads counting the daemon's lines on CPU 0; the
    // daemon, and the reader of the diagnosis, on CPU 1, so the bench does not compete with
    // what it measures.
    if two_cpus {
        pin_to_cpu(0, 0)?;
        daemon.pin_counters(0)?;
        daemon.pin_to_cpu(1)?;
    }
    // The counters stand for the daemon's readers (a journal, a client), which would have
    // CPUs of their own: ahead of the producer on theirs, so a reader that lags is the
    // daemon's doing, not the bench's.
    set_nice(PRODUCER_NICE);
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
                d.push(drain_rate(&mut k, &frame, *sink, two_cpus.then_some(1))?);
            }
            for s in steps.iter_mut() {
                check_interrupted()?;
                let c0 = daemon.counts()?;
                let (out0, sub0) = daemon.lines();
                let cpu0 = daemon.cpu_ns();
                let t = Instant::now();
                let produced = in_netns(&bed.receiver.path(), || {
                    produce(daemon.xdp(), &daemon_frame, s.offered, STEP_SECS)
                })??;
                let elapsed = t.elapsed().as_secs_f64();
                let c = daemon.settle(c0, produced)?;
                let (out, sub) = daemon.lines();
                let cpu = daemon.cpu_ns() - cpu0;
                s.produced_per_s.push(produced as f64 / elapsed);
                s.stdout_per_s.push((out - out0) as f64 / elapsed);
                s.sub_per_s.push((sub - sub0) as f64 / elapsed);
                s.lost_kernel.push((c.lost_kernel - c0.lost_kernel) as f64);
                s.lost_sinks.push((c.lost_sinks - c0.lost_sinks) as f64);
                s.daemon_ns.push(cpu as f64 / produced.max(1) as f64);
            }
        }
        Ok(())
    })();
    crate::env::unpin();
    set_nice(0);
    result?;
    let notes = vec![
        format!(
            "Producer: BPF_PROG_TEST_RUN of the daemon's own XDP program (taken from its pinned link; the daemon runs in the bench's receiving namespace, `[audit]` unlimited) on a refused TCP SYN to that namespace's address, each run one event, paced by the wall clock (what is due, at most 2 ms' worth per test run, and none until 0.25 ms' worth is due: smaller test runs would keep CPU 0 busy and starve the line counters), on CPU 0 (with the bench's threads that count the daemon's lines), the daemon's threads kept on CPU 1; {STEP_SECS} s per step; \"produced\" below the offered rate means the producer could not go faster. Consumer: the real daemon (`enforcer run`): ring buffer -> decode -> enrich -> JSON line -> fan-out to its stdout (a pipe the bench reads) and to one control-socket subscriber (`subscribe`, read by the bench). Lines are counted on both, including the backlog written after the producer stops, over the step's time; \"lost in the kernel\" and \"lost by sinks\" are the daemon's own counters (`status`: audit.lost_kernel, audit.lost_sinks), per step. Daemon CPU: all its threads' run time (/proc/PID/task/*/schedstat) per event."
        ),
        format!(
            "The {} MiB ring buffer absorbs about {}k events, and stdout's queue 65,536 lines: a step without loss over {STEP_SECS} s means the pipeline keeps up to within ~{}k events/s of the offered rate.",
            EVENTS_BYTES >> 20,
            ring_events() / 1000,
            (ring_events() as f64 / STEP_SECS / 1e3).round(),
        ),
        format!("For the diagnosis: \"kernel alone\" is the producer with nobody reading ({DRAIN_EVENTS} test runs into an emptied ring, enforcer's programs loaded in the bench); \"per-event work alone\" is the daemon's decode, enrich and JSON line (`events::enrich::Enricher::line`, written 64 KiB at a time) on a reader thread of the bench pinned to CPU 1, emptying a ring pre-filled with {DRAIN_EVENTS} events (no producer, no fan-out)."),
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
pub fn loss_edges(steps: &[Step]) -> (Option<f64>, Option<f64>) {
    let mut best_clean = None;
    for s in steps {
        let Some(r) = s.offered else { continue };
        if !s.clean() {
            return (best_clean, Some(r));
        }
        best_clean = Some(r);
    }
    (best_clean, None)
}

/// Makes sure writes of a closed pipe do not kill the process.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(produced: f64, stdout: f64, sub: f64, lost: f64) -> Step {
        Step {
            offered: Some(produced),
            produced_per_s: Samples(vec![produced]),
            stdout_per_s: Samples(vec![stdout]),
            sub_per_s: Samples(vec![sub]),
            lost_kernel: Samples(vec![0.0]),
            lost_sinks: Samples(vec![lost]),
            daemon_ns: Samples(vec![1.0]),
        }
    }

    #[test]
    fn a_clean_step_has_every_event_on_both_sinks() {
        assert!(step(1e6, 1e6, 1e6, 0.0).clean());
        assert!(!step(1e6, 1e6, 0.9e6, 0.0).clean());
        assert!(!step(1e6, 1e6, 1e6, 3.0).clean());
        let steps = [step(1e6, 1e6, 1e6, 0.0), step(2e6, 2e6, 1e6, 5.0)];
        assert_eq!(loss_edges(&steps), (Some(1e6), Some(2e6)));
    }
}

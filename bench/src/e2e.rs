//! End to end (section 3): a flood of TCP SYNs from a refused source to a protected port,
//! over a veth pair between two namespaces, dropped at the receiver by each contender.
//!
//! The sender is a live-frames XDP test run (BPF_F_TEST_XDP_LIVE_FRAMES) of `r0 = XDP_TX`
//! on the sending veth, one thread per CPU: every frame is really transmitted through the
//! veth's ndo_xdp_xmit into the receiver's queue for that CPU, with no socket or skb on the
//! sending side (as xdp-trafficgen does). The receiving veth's NAPI runs in softirq on the
//! same CPU, after each batch of 64: the flood is as fast as the two cores can send and
//! receive it, and the receiving work shows as softirq time.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use enforcer_common::reason::{Hook, Reason};

use crate::{
    audit::{Reader, SinkKind},
    bpf,
    env::{check_interrupted, cpu_times, in_netns, ncpus, pin_to_cpu, ticks_per_sec, Bed, RECEIVER_ADDR},
    kern::Kern,
    micro::{audit_table, has_rate_limits, Trivial, REFUSED4},
    packets::tcp4,
    stats::Samples,
    xdpfilter::XdpFilter,
};

pub const RUN_SECS: f64 = 2.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    XdpDrop,
    Enforcer,
    EnforcerAudited,
    XdpFilter,
    Nft,
    Iptables,
}

impl Variant {
    pub const ALL: [Variant; 6] =
        [Variant::XdpDrop, Variant::Enforcer, Variant::EnforcerAudited, Variant::XdpFilter, Variant::Nft, Variant::Iptables];

    pub fn label(self) -> &'static str {
        match self {
            Variant::XdpDrop => "XDP_DROP alone (`r0 = 1; exit`)",
            Variant::Enforcer => "enforcer XDP (default audit rate limits)",
            Variant::EnforcerAudited => "enforcer XDP, every refusal's event (unlimited) read by the audit pipeline",
            Variant::XdpFilter => "xdp-filter (deny list tcp/5432)",
            Variant::Nft => "nftables netdev ingress drop rule",
            Variant::Iptables => "iptables-legacy raw PREROUTING drop rule",
        }
    }
}

pub struct Row {
    pub variant: Variant,
    /// Packets the receiver took in (and its filter dropped) per second.
    pub pps: Samples,
    /// Frames offered by the sender per second.
    pub offered_pps: Samples,
    /// Frames the receiver's queue had no room for (lost before any filter), per second.
    pub overflow_pps: Samples,
    /// Softirq (the receiving veth's NAPI: the receiver's work) CPU nanoseconds per packet.
    pub recv_ns: Samples,
    /// All CPUs' busy nanoseconds per packet (sender included).
    pub total_ns: Samples,
    /// What the filter's own counter says it dropped, over what arrived.
    pub counted: Samples,
    /// Audit events written per second (the audited variant).
    pub events_per_s: Samples,
}

pub struct E2eResults {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// The flood: 54-byte TCP SYNs from 192.0.2.66 to the receiver's tcp/5432.
fn flood_frame() -> Vec<u8> {
    tcp4(REFUSED4, RECEIVER_ADDR.parse::<Ipv4Addr>().expect("address"), 40000, 5432)
}

fn policy(unlimited: bool) -> String {
    format!(
        "mode = \"enforce\"\n{}\n[[rule]]\nname = \"postgres\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.0.0/16\"]\n",
        audit_table(unlimited)
    )
}

/// Sends for `secs` from the sender namespace, one thread per CPU; returns frames sent.
fn generate(bed: &Bed, tx: RawFd, frame: &[u8], secs: f64) -> anyhow::Result<u64> {
    let handles: Vec<_> = (0..ncpus())
        .map(|cpu| {
            let path = bed.sender.path();
            let ifindex = bed.va_ifindex;
            let frame = frame.to_vec();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                pin_to_cpu(0, cpu)?;
                in_netns(&path, || -> anyhow::Result<u64> {
                    let end = Instant::now() + Duration::from_secs_f64(secs);
                    let mut sent = 0u64;
                    const CHUNK: u32 = 100_000;
                    while Instant::now() < end {
                        bpf::xdp_live_frames(tx, &frame, CHUNK, ifindex, 64).context("live-frames test run")?;
                        sent += CHUNK as u64;
                    }
                    Ok(sent)
                })?
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
    }
    Ok(total)
}

/// Attached for one run; removed on drop.
enum Attached {
    Link(#[allow(dead_code)] OwnedFd),
    Nft,
    Ipt(Vec<String>),
}

fn ipt_rule(vb: &str) -> Vec<String> {
    ["-i", vb, "-p", "tcp", "--dport", "5432", "!", "-s", "10.1.0.0/16", "-j", "DROP"].iter().map(|s| s.to_string()).collect()
}

impl Attached {
    fn remove(self, bed: &Bed) {
        match self {
            Attached::Link(_) => {}
            Attached::Nft => {
                let _ = bed.in_receiver(&["nft", "delete", "table", "netdev", "enfbench"]);
            }
            Attached::Ipt(rule) => {
                let mut args = vec!["iptables-legacy", "-t", "raw", "-D", "PREROUTING"];
                args.extend(rule.iter().map(String::as_str));
                let _ = bed.in_receiver(&args);
            }
        }
    }

    /// Packets the rule counted.
    fn counter(&self, bed: &Bed) -> Option<u64> {
        match self {
            Attached::Link(_) => None,
            Attached::Nft => {
                let out = bed.in_receiver(&["nft", "list", "table", "netdev", "enfbench"]).ok()?;
                let i = out.find("packets ")?;
                out[i + 8..].split_whitespace().next()?.parse().ok()
            }
            Attached::Ipt(..) => {
                let out = bed.in_receiver(&["iptables-legacy", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"]).ok()?;
                let line = out.lines().find(|l| l.contains("DROP"))?;
                line.split_whitespace().next()?.parse().ok()
            }
        }
    }
}

fn attach_link(bed: &Bed, prog: RawFd) -> anyhow::Result<Attached> {
    let ifindex = bed.vb_ifindex;
    Ok(Attached::Link(in_netns(&bed.receiver.path(), || bpf::xdp_link(prog, ifindex))??))
}

struct Snapshot {
    t: Instant,
    rx: (u64, u64),
    cpu: Vec<(u64, u64)>,
}

fn snapshot(bed: &Bed) -> anyhow::Result<Snapshot> {
    Ok(Snapshot { t: Instant::now(), rx: bed.rx_counters()?, cpu: cpu_times() })
}

pub fn run(bed: &Bed, trivial: &Trivial, xdpf: &XdpFilter, rounds: usize) -> anyhow::Result<E2eResults> {
    if ncpus() < 2 {
        bail!("the end-to-end runs need two CPUs (sender and receiver)");
    }
    let tx = bpf::load_trivial(bpf::PROG_TYPE_XDP, 0, bpf::XDP_TX as i32, "bench_xdp_tx")?;
    let frame = flood_frame();
    let local = [IpAddr::V4(RECEIVER_ADDR.parse()?)];
    let mut enforcer = Kern::new(&policy(false), &local)?;
    let mut audited = Kern::new(&policy(true), &local)?;
    let limits = has_rate_limits();

    let mut rows: Vec<Row> = Variant::ALL
        .iter()
        .map(|&variant| Row {
            variant,
            pps: Samples::default(),
            offered_pps: Samples::default(),
            overflow_pps: Samples::default(),
            recv_ns: Samples::default(),
            total_ns: Samples::default(),
            counted: Samples::default(),
            events_per_s: Samples::default(),
        })
        .collect();
    let tick_ns = 1e9 / ticks_per_sec();
    for round in 0..rounds {
        let n = rows.len();
        for i in (0..n).map(|i| (i + round) % n) {
            check_interrupted()?;
            let v = rows[i].variant;
            let attached = match v {
                Variant::XdpDrop => attach_link(bed, trivial.xdp_drop.as_raw_fd())?,
                Variant::Enforcer => attach_link(bed, enforcer.xdp)?,
                Variant::EnforcerAudited => attach_link(bed, audited.xdp)?,
                Variant::XdpFilter => attach_link(bed, xdpf.deny_list.as_raw_fd())?,
                Variant::Nft => {
                    let rules = format!(
                        "table netdev enfbench {{\n chain ingress {{\n  type filter hook ingress device \"{}\" priority -500;\n  ip saddr != 10.1.0.0/16 tcp dport 5432 counter drop\n }}\n}}\n",
                        bed.vb
                    );
                    let file = std::env::temp_dir().join(format!("enforcer-bench-{}.nft", std::process::id()));
                    std::fs::write(&file, &rules)?;
                    let r = bed.in_receiver(&["nft", "-f", &file.to_string_lossy()]);
                    let _ = std::fs::remove_file(&file);
                    r?;
                    Attached::Nft
                }
                Variant::Iptables => {
                    let rule = ipt_rule(&bed.vb);
                    let mut args = vec!["iptables-legacy", "-t", "raw", "-A", "PREROUTING"];
                    args.extend(rule.iter().map(String::as_str));
                    bed.in_receiver(&args)?;
                    Attached::Ipt(rule)
                }
            };
            let result = (|| -> anyhow::Result<()> {
                let reader = if v == Variant::EnforcerAudited {
                    audited.drain();
                    Some(Reader::start(audited.events.take().context("ring")?, SinkKind::DevNull, None, vec!["postgres".into()])?)
                } else {
                    None
                };
                let k: &Kern = if v == Variant::EnforcerAudited { &audited } else { &enforcer };
                let denied0 = k.reason(Hook::Xdp, Reason::Denied);
                let c0 = attached.counter(bed);
                // Let the receiver settle (a first frame through a new program).
                std::thread::sleep(Duration::from_millis(50));
                let before = snapshot(bed)?;
                let sent = generate(bed, tx.as_raw_fd(), &frame, RUN_SECS);
                let after = snapshot(bed)?;
                let written = match reader {
                    Some(r) => {
                        let (ring, n) = r.stop()?;
                        audited.events = Some(ring);
                        Some(n)
                    }
                    None => None,
                };
                let sent = sent?;
                let secs = (after.t - before.t).as_secs_f64();
                let rx = after.rx.0 - before.rx.0;
                let overflow = after.rx.1 - before.rx.1;
                if rx == 0 {
                    bail!("{}: nothing arrived", v.label());
                }
                let counted = match v {
                    Variant::Enforcer | Variant::EnforcerAudited => {
                        let k: &Kern = if v == Variant::EnforcerAudited { &audited } else { &enforcer };
                        Some(k.reason(Hook::Xdp, Reason::Denied) - denied0)
                    }
                    _ => match (c0, attached.counter(bed)) {
                        (Some(a), Some(b)) => Some(b - a),
                        _ => None,
                    },
                };
                let busy: u64 = after.cpu.iter().zip(&before.cpu).map(|(a, b)| a.0 - b.0).sum();
                let softirq: u64 = after.cpu.iter().zip(&before.cpu).map(|(a, b)| a.1 - b.1).sum();
                let row = &mut rows[i];
                row.pps.push(rx as f64 / secs);
                row.offered_pps.push(sent as f64 / secs);
                row.overflow_pps.push(overflow as f64 / secs);
                row.recv_ns.push(softirq as f64 * tick_ns / rx as f64);
                row.total_ns.push(busy as f64 * tick_ns / rx as f64);
                if let Some(c) = counted {
                    row.counted.push(c as f64 / rx as f64);
                }
                if let Some(n) = written {
                    row.events_per_s.push(n as f64 / secs);
                }
                Ok(())
            })();
            attached.remove(bed);
            result?;
            // Keep the rate-limited copy's ring from filling over the rounds.
            enforcer.drain();
        }
    }
    let mut notes = vec![
        format!(
            "Sender: a live-frames XDP test run (BPF_F_TEST_XDP_LIVE_FRAMES, batches of 64) of `r0 = XDP_TX` on the sending veth, one thread pinned per CPU, in chunks of 100,000 frames: frames go through veth's ndo_xdp_xmit straight into the receiving veth's queue for that CPU, no socket or skb on the sending side. Receiver: the other veth, one queue per CPU, GRO on (NAPI, which frames redirected into a veth need). Each CPU sends a batch, then its softirq receives it: the rate is what the two cores sustain sending and dropping, so the sender's own cost (the XDP_DROP row's total is mostly sender) compresses the ratios between receivers; the softirq columns isolate the receiving side. {RUN_SECS} s per run; the variants take turns within each round."
        ),
        "Dropped/s is what the receiving veth took in (its rx_packets), all of it refused by the contender (the \"counted\" column is the contender's own drop counter over that; XDP_DROP and xdp-filter keep none the bench reads). Receiver ns/packet is softirq time (/proc/stat, sampled at the tick, 250 Hz here) per packet: the receiving veth's NAPI poll with the contender in it; capacity is what one core would drop at that cost. Total CPU ns/packet is every CPU's busy time per packet, sender included. Overflow is frames the receiver's queue had no room for (0 means nothing was lost before the contender saw it).".into(),
        "All frames carry one 5-tuple (a single-flow flood); XDP programs are attached in native mode through BPF links; nftables and iptables rules match the same thing enforcer's policy says: tcp/5432 from outside 10.1.0.0/16.".into(),
    ];
    if !limits {
        notes.push("This enforcer build has no audit rate limits: the plain enforcer row emits an event per refusal until its ring buffer is full, then counts the losses.".into());
    }
    Ok(E2eResults { rows, notes })
}

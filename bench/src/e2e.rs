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
    audit::thread_runtime_ns,
    bpf,
    daemon::BenchDaemon,
    env::{
        check_interrupted, cpu_times, in_netns, ncpus, pin_to_cpu, ticks_per_sec, Anchor, Bed,
        RECEIVER_ADDR,
    },
    kern::Kern,
    micro::{audit_table, has_rate_limits, Trivial, REFUSED4},
    packets::tcp4,
    sol::Sol,
    stats::Samples,
    xdpfilter::XdpFilter,
};

pub const RUN_SECS: f64 = 2.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    XdpDrop,
    Sol,
    Enforcer,
    EnforcerAudited,
    XdpFilter,
    XdpFilterLean,
    XdpFilterLeanAllow,
    Nft,
    Iptables,
}

impl Variant {
    pub const ALL: [Variant; 9] = [
        Variant::XdpDrop,
        Variant::Sol,
        Variant::Enforcer,
        Variant::EnforcerAudited,
        Variant::XdpFilter,
        Variant::XdpFilterLean,
        Variant::XdpFilterLeanAllow,
        Variant::Nft,
        Variant::Iptables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::XdpDrop => "XDP_DROP alone (`r0 = 1; exit`)",
            Variant::Sol => "speed of light (bench/sol-ebpf: parse, port array, exact source hash)",
            Variant::Enforcer => "enforcer XDP (default audit rate limits)",
            Variant::EnforcerAudited => {
                "enforcer XDP, every refusal's event (unlimited), the daemon's audit stream to stdout and a subscriber"
            }
            Variant::XdpFilter => "xdp-filter (deny list tcp/5432, `-f all`)",
            Variant::XdpFilterLean => "xdp-filter lean (deny list tcp/5432, `-f tcp`)",
            Variant::XdpFilterLeanAllow => {
                "xdp-filter lean allow list (sources 10.1.2.3 and fd00:1::5 pass, the rest dropped; `-f ipv4,ipv6,tcp`)"
            }
            Variant::Nft => "nftables netdev ingress drop rule",
            Variant::Iptables => "iptables-legacy raw PREROUTING drop rule",
        }
    }
}

pub struct Row {
    pub variant: Variant,
    /// Packets the receiver took in (and its contender dropped) per second of wall clock.
    pub pps: Samples,
    /// CPU nanoseconds per packet, sending and receiving: the run time of the sender threads
    /// (whose softirq receives each batch they send), of ksoftirqd (softirq work deferred
    /// there) and of the daemon, if its audit stream is read. Other load on the machine
    /// does not enter it.
    pub cpu_ns: Samples,
    /// Softirq share of the CPUs' time per packet (/proc/stat ticks): the receiving side.
    pub softirq_ns: Samples,
    /// Frames the receiver's queue had no room for, per second.
    pub overflow_pps: Samples,
    /// What the contender's own counter says it dropped, over what arrived.
    pub counted: Samples,
    /// The audited variant: lines per second on the daemon's stdout and on its subscriber,
    /// and events lost (in the kernel and by the sinks, per run).
    pub stdout_per_s: Samples,
    pub sub_per_s: Samples,
    pub lost: Samples,
}

impl Row {
    /// The rate the machine's CPUs sustain at this cost: CPUs × 1e9 / CPU ns per packet.
    pub fn sustained(&self) -> Samples {
        let n = ncpus() as f64;
        Samples(self.cpu_ns.0.iter().map(|ns| n * 1e9 / ns).collect())
    }
}

pub struct E2eResults {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// The flood: 54-byte TCP SYNs from 192.0.2.66 to the receiver's tcp/5432.
fn flood_frame() -> Vec<u8> {
    tcp4(
        REFUSED4,
        RECEIVER_ADDR.parse::<Ipv4Addr>().expect("address"),
        40000,
        5432,
    )
}

fn policy(unlimited: bool) -> String {
    format!(
        "mode = \"enforce\"\n{}\n[[rule]]\nname = \"postgres\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.0.0/16\"]\n",
        audit_table(unlimited)
    )
}

/// The ksoftirqd threads' total run time.
fn ksoftirqd_ns() -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        if comm.starts_with("ksoftirqd/") {
            if let Some(ns) = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                total += ns;
            }
        }
    }
    total
}

/// Sends for `secs` from the sender namespace, one thread per CPU; returns frames sent and
/// the threads' run time.
fn generate(bed: &Bed, tx: RawFd, frame: &[u8], secs: f64) -> anyhow::Result<(u64, u64)> {
    let handles: Vec<_> = (0..ncpus())
        .map(|cpu| {
            let path = bed.sender.path();
            let ifindex = bed.va_ifindex;
            let frame = frame.to_vec();
            std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
                pin_to_cpu(0, cpu)?;
                in_netns(&path, || -> anyhow::Result<(u64, u64)> {
                    let t0 = thread_runtime_ns();
                    let end = Instant::now() + Duration::from_secs_f64(secs);
                    let mut sent = 0u64;
                    const CHUNK: u32 = 100_000;
                    while Instant::now() < end {
                        bpf::xdp_live_frames(tx, &frame, CHUNK, ifindex, 64)
                            .context("live-frames test run")?;
                        sent += CHUNK as u64;
                    }
                    Ok((sent, thread_runtime_ns() - t0))
                })?
            })
        })
        .collect();
    let (mut sent, mut ns) = (0, 0);
    for h in handles {
        let (s, n) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        sent += s;
        ns += n;
    }
    Ok((sent, ns))
}

/// Attached for one run; removed on drop.
enum Attached {
    Link(#[allow(dead_code)] OwnedFd),
    Nft,
    Ipt(Vec<String>),
}

fn ipt_rule(vb: &str) -> Vec<String> {
    [
        "-i",
        vb,
        "-p",
        "tcp",
        "--dport",
        "5432",
        "!",
        "-s",
        "10.1.0.0/16",
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
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
                let out = bed
                    .in_receiver(&["nft", "list", "table", "netdev", "enfbench"])
                    .ok()?;
                let i = out.find("packets ")?;
                out[i + 8..].split_whitespace().next()?.parse().ok()
            }
            Attached::Ipt(..) => {
                let out = bed
                    .in_receiver(&[
                        "iptables-legacy",
                        "-t",
                        "raw",
                        "-L",
                        "PREROUTING",
                        "-v",
                        "-x",
                        "-n",
                    ])
                    .ok()?;
                let line = out.lines().find(|l| l.contains("DROP"))?;
                line.split_whitespace().next()?.parse().ok()
            }
        }
    }
}

fn attach_link(bed: &Bed, prog: RawFd) -> anyhow::Result<Attached> {
    let ifindex = bed.vb_ifindex;
    Ok(Attached::Link(in_netns(&bed.receiver.path(), || {
        bpf::xdp_link(prog, ifindex)
    })??))
}

struct Snapshot {
    t: Instant,
    rx: (u64, u64),
    cpu: Vec<(u64, u64)>,
    ksoftirqd: u64,
}

fn snapshot(bed: &Bed) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        t: Instant::now(),
        rx: bed.rx_counters()?,
        cpu: cpu_times(),
        ksoftirqd: ksoftirqd_ns(),
    })
}

pub fn run(
    bed: &Bed,
    anchor: &Anchor,
    trivial: &Trivial,
    sol: &Sol,
    xdpf: &XdpFilter,
    daemon: &BenchDaemon,
    rounds: usize,
) -> anyhow::Result<E2eResults> {
    if ncpus() < 2 {
        bail!("the end-to-end runs need two CPUs (sender and receiver)");
    }
    let tx = bpf::load_trivial(bpf::PROG_TYPE_XDP, 0, bpf::XDP_TX as i32, "bench_xdp_tx")?;
    anchor.hold(0, tx.as_raw_fd())?;
    let frame = flood_frame();
    let local = [IpAddr::V4(RECEIVER_ADDR.parse()?)];
    let mut enforcer = Kern::new(&policy(false), &local)?;
    let limits = has_rate_limits();

    let mut rows: Vec<Row> = Variant::ALL
        .iter()
        .map(|&variant| Row {
            variant,
            pps: Samples::default(),
            cpu_ns: Samples::default(),
            softirq_ns: Samples::default(),
            overflow_pps: Samples::default(),
            counted: Samples::default(),
            stdout_per_s: Samples::default(),
            sub_per_s: Samples::default(),
            lost: Samples::default(),
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
                Variant::Sol => attach_link(bed, sol.xdp)?,
                Variant::Enforcer => attach_link(bed, enforcer.xdp)?,
                Variant::EnforcerAudited => attach_link(bed, daemon.xdp())?,
                Variant::XdpFilter => attach_link(bed, xdpf.deny_list.as_raw_fd())?,
                Variant::XdpFilterLean => attach_link(bed, xdpf.deny_list_lean.as_raw_fd())?,
                Variant::XdpFilterLeanAllow => attach_link(bed, xdpf.allow_list_lean.as_raw_fd())?,
                Variant::Nft => {
                    let rules = format!(
                        "table netdev enfbench {{\n chain ingress {{\n  type filter hook ingress device \"{}\" priority -500;\n  ip saddr != 10.1.0.0/16 tcp dport 5432 counter drop\n }}\n}}\n",
                        bed.vb
                    );
                    let file = std::env::temp_dir()
                        .join(format!("enforcer-bench-{}.nft", std::process::id()));
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
                let audited = v == Variant::EnforcerAudited;
                let audit0 = if audited {
                    Some((
                        daemon.counts()?,
                        daemon.refused_at_xdp()?,
                        daemon.lines(),
                        daemon.cpu_ns(),
                    ))
                } else {
                    None
                };
                let denied0 = enforcer.reason(Hook::Xdp, Reason::Denied);
                let c0 = attached.counter(bed);
                // Let the receiver settle (a first frame through a new program).
                std::thread::sleep(Duration::from_millis(50));
                let before = snapshot(bed)?;
                let sent = generate(bed, tx.as_raw_fd(), &frame, RUN_SECS);
                let after = snapshot(bed)?;
                let (_, sender_ns) = sent?;
                let secs = (after.t - before.t).as_secs_f64();
                let rx = after.rx.0 - before.rx.0;
                let overflow = after.rx.1 - before.rx.1;
                if rx == 0 {
                    bail!("{}: nothing arrived", v.label());
                }
                // The audited run: every refusal has its event; wait for the daemon to write
                // them all (or count them lost). Refusals, not arrivals: a frame the kernel
                // sends on the veth by itself (IPv6 neighbour discovery) arrives unjudged.
                let mut daemon_ns = 0;
                let row = &mut rows[i];
                if let Some((c0, refused0, (out0, sub0), cpu0)) = audit0 {
                    let refused = daemon.refused_at_xdp()? - refused0;
                    let c = daemon.settle(c0, refused)?;
                    let (out, sub) = daemon.lines();
                    daemon_ns = daemon.cpu_ns() - cpu0;
                    row.stdout_per_s.push((out - out0) as f64 / secs);
                    row.sub_per_s.push((sub - sub0) as f64 / secs);
                    row.lost.push(
                        (c.lost_kernel - c0.lost_kernel + c.lost_sinks - c0.lost_sinks) as f64,
                    );
                }
                let counted = match v {
                    Variant::Enforcer => Some(enforcer.reason(Hook::Xdp, Reason::Denied) - denied0),
                    Variant::EnforcerAudited => None,
                    _ => match (c0, attached.counter(bed)) {
                        (Some(a), Some(b)) => Some(b - a),
                        _ => None,
                    },
                };
                let softirq: u64 = after
                    .cpu
                    .iter()
                    .zip(&before.cpu)
                    .map(|(a, b)| a.1 - b.1)
                    .sum();
                let ours = sender_ns + (after.ksoftirqd - before.ksoftirqd) + daemon_ns;
                row.pps.push(rx as f64 / secs);
                row.cpu_ns.push(ours as f64 / rx as f64);
                row.softirq_ns.push(softirq as f64 * tick_ns / rx as f64);
                row.overflow_pps.push(overflow as f64 / secs);
                if let Some(c) = counted {
                    row.counted.push(c as f64 / rx as f64);
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
            "Sender: a live-frames XDP test run (BPF_F_TEST_XDP_LIVE_FRAMES, batches of 64) of `r0 = XDP_TX` on the sending veth, one thread pinned per CPU, in chunks of 100,000 frames: every frame really goes through veth's ndo_xdp_xmit into the receiving veth's queue for that CPU, with no socket or skb on the sending side, so the sender is as cheap as a sender gets. Receiver: the other veth, one queue per CPU, GRO on (NAPI, which frames redirected into a veth need). Each CPU sends a batch, then its softirq receives it: nothing is lost between them (overflow 0), and the rate is what the cores sustain sending and dropping together. {RUN_SECS} s per run; the variants take turns within each round."
        ),
        "CPU ns/packet is the CPU time spent on the flood per packet that arrived — the sender threads (whose softirq does the receiving), ksoftirqd, and in the audited row the daemon (all its threads), from /proc/.../schedstat — so other load on the machine does not distort it; sustained Mpps is the CPUs' rate at that cost (CPUs × 1e3 / ns), and the ratios are taken on it. Measured Mpps is the plain wall-clock rate (lower when other processes took CPU time). The sender's share is the same for every receiver (about the XDP_DROP row's cost), so the ratios of these rates understate the receivers' own differences; \"above XDP_DROP\" is each receiver's extra cost per packet over XDP_DROP, within the round, which is the receiver-side difference alone. Softirq ns/packet: the /proc/stat softirq ticks (250 Hz sampling) per packet, roughly the receiving side's whole cost.".into(),
        "Audited row: the real daemon (`enforcer run`, `[audit]` unlimited) runs in the receiving namespace; its own XDP program (taken from its pinned link) is attached to the receiving veth for the run, so every refusal's event goes through its ring buffer, decode, enrich, JSON line and fan-out to its stdout (read by the bench) and one control-socket subscriber (read by the bench). Lines per second on each, counted until the daemon has caught up after the flood, over the run's time; lost = the daemon's audit.lost_kernel + audit.lost_sinks over the run.".into(),
        "All frames are one 5-tuple (a single-flow flood): 54-byte TCP SYNs from 192.0.2.66 to tcp/5432 of the receiver's address. XDP programs are attached in native mode through BPF links; nftables and iptables rules match what enforcer's policy says: tcp/5432 from outside 10.1.0.0/16. \"Counted\" is the contender's own drop counter over the packets that arrived (1.000: each one dropped by the rule). The speed-of-light row is the micro figures' least-work program (section 1), loaded with tcp/5432 protected and only the exact allowed sources allowed: the least any program doing enforcer's job costs here.".into(),
    ];
    if !limits {
        notes.push("This enforcer build has no audit rate limits: the plain enforcer row emits an event per refusal until its ring buffer is full, then counts the losses.".into());
    }
    Ok(E2eResults { rows, notes })
}

//! The bench's own corner of the machine: two network namespaces joined by a veth pair,
//! a private bpffs mount for xdp-filter, and helpers to act inside a namespace. Everything
//! is removed on drop (namespaces take their veth, XDP links, nftables and iptables rules
//! with them), also when a step fails.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context as _};
use testbed::net::NetNs;

use crate::packets::{MAC_RECEIVER, MAC_SENDER};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM only set a flag: the bench stops at its next check and its guards clean up.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` with the calling thread in the network namespace at `ns`, then moves it back
/// (also if `f` panics).
pub fn in_netns<T>(ns: &Path, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    struct Back(File);
    impl Drop for Back {
        fn drop(&mut self) {
            // SAFETY: setns on a namespace file we hold open.
            let rc = unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "could not return to the original network namespace");
        }
    }
    let orig = File::open("/proc/thread-self/ns/net").context("opening this thread's namespace")?;
    let target = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    // SAFETY: setns on a namespace file we hold open.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns {}: {}",
            ns.display(),
            std::io::Error::last_os_error()
        );
    }
    let _back = Back(orig);
    Ok(f())
}

/// Pins the calling thread (pid 0) or `pid` to one CPU.
pub fn pin_to_cpu(pid: libc::pid_t, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity({pid}, cpu {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Lets the calling thread run on every CPU again.
pub fn unpin() {
    // SAFETY: as in pin_to_cpu.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..ncpus() {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPUs online (not the calling thread's affinity, which the bench narrows at times).
pub fn ncpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        1
    } else {
        n as usize
    }
}

/// A bpffs mounted on a private directory (xdp-filter, run in a mount namespace where it
/// is bound over /sys/fs/bpf, pins there), unmounted and removed on drop. The host's
/// /sys/fs/bpf is not touched.
pub struct Bpffs {
    pub dir: PathBuf,
}

impl Bpffs {
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("enforcer-bench-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        sh(&["mount", "-t", "bpf", "bpf", &dir.to_string_lossy()])?;
        Ok(Bpffs { dir })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The end-to-end bed: a sender namespace and a receiver namespace, joined by a veth pair
/// with fixed MACs and one queue per CPU. The receiver end has GRO on, so it polls with
/// NAPI (which XDP frames redirected into a veth need) even with no XDP program attached.
pub struct Bed {
    pub sender: NetNs,
    pub receiver: NetNs,
    pub vb: String,
    pub va_ifindex: u32,
    pub vb_ifindex: u32,
}

pub const SENDER_ADDR: &str = "10.99.0.1";
pub const RECEIVER_ADDR: &str = "10.99.0.2";

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Bed {
    pub fn new() -> anyhow::Result<Self> {
        let sender = NetNs::new();
        let receiver = NetNs::new();
        let va = testbed::unique("bva");
        let vb = testbed::unique("bvb");
        let q = ncpus().to_string();
        sh(&[
            "ip",
            "link",
            "add",
            &va,
            "netns",
            &sender.name,
            "address",
            &mac(MAC_SENDER),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &receiver.name,
            "address",
            &mac(MAC_RECEIVER),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        sh(&[
            "ip",
            "-n",
            &sender.name,
            "addr",
            "add",
            &format!("{SENDER_ADDR}/24"),
            "dev",
            &va,
        ])?;
        sh(&[
            "ip",
            "-n",
            &receiver.name,
            "addr",
            "add",
            &format!("{RECEIVER_ADDR}/24"),
            "dev",
            &vb,
        ])?;
        sh(&["ip", "-n", &sender.name, "link", "set", &va, "up"])?;
        sh(&["ip", "-n", &receiver.name, "link", "set", &vb, "up"])?;
        let ifindex = |ns: &NetNs, dev: &str| -> anyhow::Result<u32> {
            let name = std::ffi::CString::new(dev)?;
            // SAFETY: a NUL-terminated name.
            let i = in_netns(&ns.path(), || unsafe {
                libc::if_nametoindex(name.as_ptr())
            })?;
            if i == 0 {
                bail!("no interface {dev}");
            }
            Ok(i)
        };
        let va_ifindex = ifindex(&sender, &va)?;
        let vb_ifindex = ifindex(&receiver, &vb)?;
        let bed = Bed {
            sender,
            receiver,
            vb,
            va_ifindex,
            vb_ifindex,
        };
        bed.set_gro(true)?;
        Ok(bed)
    }

    /// GRO on the receiving veth (ETHTOOL_SGRO through SIOCETHTOOL).
    fn set_gro(&self, on: bool) -> anyhow::Result<()> {
        let vb = self.vb.clone();
        in_netns(&self.receiver.path(), move || -> anyhow::Result<()> {
            const SIOCETHTOOL: libc::c_ulong = 0x8946;
            const ETHTOOL_SGRO: u32 = 0x2c;
            let value: [u32; 2] = [ETHTOOL_SGRO, on as u32];
            let mut ifr = [0u8; 40];
            ifr[..vb.len()].copy_from_slice(vb.as_bytes());
            ifr[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
            // SAFETY: a datagram socket; ifr is a valid ifreq whose data points at value.
            unsafe {
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    bail!("socket: {}", std::io::Error::last_os_error());
                }
                let rc = libc::ioctl(s, SIOCETHTOOL as _, ifr.as_mut_ptr());
                let err = std::io::Error::last_os_error();
                libc::close(s);
                if rc != 0 {
                    bail!("enabling GRO on {vb}: {err}");
                }
            }
            Ok(())
        })?
    }

    /// (rx_packets, rx_dropped) of the receiving veth.
    pub fn rx_counters(&self) -> anyhow::Result<(u64, u64)> {
        let vb = self.vb.clone();
        let text = in_netns(&self.receiver.path(), || {
            std::fs::read_to_string("/proc/thread-self/net/dev")
        })??;
        for l in text.lines() {
            let Some((name, rest)) = l.split_once(':') else {
                continue;
            };
            if name.trim() == vb {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if f.len() >= 4 {
                    return Ok((f[1], f[3]));
                }
            }
        }
        bail!("{vb} missing from /proc/net/dev")
    }

    /// `ip netns exec RECEIVER ARGS...` (nft, iptables, xdp-filter see the receiver's side).
    pub fn in_receiver(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.receiver.name];
        full.extend_from_slice(args);
        sh(&full)
    }
}

/// Interfaces that only hold XDP programs: a namespace of its own with `n` veth pairs (no
/// traffic). A program attached (native) to a device is in the kernel's XDP dispatcher
/// for as long as it stays attached; a test run of a program that is not adds it and
/// removes it again, two dispatcher updates that wait for RCU grace periods (10-30 ms per
/// test run here). Programs the bench test-runs in many small calls (the audit producer,
/// the flood generator) are anchored here so each call costs only its runs.
pub struct Anchor {
    ns: NetNs,
    ifindexes: Vec<u32>,
    links: std::sync::Mutex<Vec<std::os::fd::OwnedFd>>,
}

impl Anchor {
    pub fn new(n: usize) -> anyhow::Result<Self> {
        let ns = NetNs::new();
        let mut ifindexes = Vec::new();
        for i in 0..n {
            let (a, b) = (format!("anc{i}a"), format!("anc{i}b"));
            sh(&[
                "ip", "-n", &ns.name, "link", "add", &a, "type", "veth", "peer", "name", &b,
            ])?;
            sh(&["ip", "-n", &ns.name, "link", "set", &a, "up"])?;
            sh(&["ip", "-n", &ns.name, "link", "set", &b, "up"])?;
            let name = std::ffi::CString::new(a.clone())?;
            // SAFETY: a NUL-terminated name.
            let idx = in_netns(&ns.path(), || unsafe {
                libc::if_nametoindex(name.as_ptr())
            })?;
            if idx == 0 {
                bail!("no interface {a}");
            }
            ifindexes.push(idx);
        }
        Ok(Anchor {
            ns,
            ifindexes,
            links: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Attaches `prog` (XDP) to free slot `slot` until the anchor is dropped.
    pub fn hold(&self, slot: usize, prog: std::os::fd::RawFd) -> anyhow::Result<()> {
        let idx = *self.ifindexes.get(slot).context("no such anchor slot")?;
        let link = in_netns(&self.ns.path(), || crate::bpf::xdp_link(prog, idx))??;
        self.links
            .lock()
            .map_err(|_| anyhow::anyhow!("anchor lock"))?
            .push(link);
        Ok(())
    }
}

/// Per-CPU time from /proc/stat, in USER_HZ ticks: (busy, softirq) for each CPU.
pub fn cpu_times() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let get = |i: usize| f.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal
            let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
            (busy, get(6))
        })
        .collect()
}

pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

//! xdp-filter (Debian's xdp-tools) as a comparison: its deny list and its allow list, each
//! in the full variant (`-f all`, every feature compiled in) and the lean one (only the
//! features the job needs: `-f tcp` for a port rule, `-f ipv4,ipv6,tcp` for source rules),
//! configured for the nearest equivalent of enforcer's job, loaded by xdp-filter itself on
//! the bench's receiving veth, then kept by descriptor and unloaded from the interface (the
//! bench attaches what it runs itself, the same way for every program). LIBXDP_SKIP_DISPATCHER
//! makes libxdp load it as a plain XDP program (not an extension of a dispatcher), which
//! test runs and BPF links take like any other.

use std::os::fd::OwnedFd;

use anyhow::Context as _;

use crate::{
    bpf,
    env::{sh, Bed, Bpffs},
};

pub struct XdpFilter {
    /// `-p allow` (a deny list), with `port 5432 -p tcp`: drops everything to tcp/5432.
    pub deny_list: OwnedFd,
    /// `-p deny` (an allow list), with `ip -m src 10.1.2.3` and `fd00:1::5`: passes only
    /// those sources.
    pub allow_list: OwnedFd,
    /// The deny list loaded `-f tcp` (xdpfilt_alw_tcp).
    pub deny_list_lean: OwnedFd,
    /// The allow list loaded `-f ipv4,ipv6,tcp` (xdpfilt_dny_ip): IPv4 and IPv6 sources.
    pub allow_list_lean: OwnedFd,
}

/// Runs xdp-filter in the receiver's namespace, in a mount namespace of its own where
/// /sys/fs/bpf is the bench's private bpffs: its pins land there, not on the host's.
fn xf(bed: &Bed, bpffs: &Bpffs, args: &[&str]) -> anyhow::Result<String> {
    let script = format!(
        "mount --bind '{}' /sys/fs/bpf && exec nsenter --net='{}' xdp-filter {}",
        bpffs.dir.display(),
        bed.receiver.path().display(),
        args.join(" ")
    );
    sh(&[
        "env",
        "LIBXDP_SKIP_DISPATCHER=1",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ])
}

fn load_variant(
    bed: &Bed,
    bpffs: &Bpffs,
    policy: &str,
    features: &str,
    config: &[&[&str]],
) -> anyhow::Result<OwnedFd> {
    xf(
        bed,
        bpffs,
        &["load", &bed.vb, "-m", "skb", "-p", policy, "-f", features],
    )?;
    let kept = (|| -> anyhow::Result<OwnedFd> {
        for c in config {
            xf(bed, bpffs, c)?;
        }
        let dir = bpffs.dir.join("xdp-filter/programs").join(&bed.vb);
        let entry = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .next()
            .with_context(|| format!("no program pinned under {}", dir.display()))?;
        bpf::obj_get(&entry.path())
    })();
    xf(bed, bpffs, &["unload", &bed.vb])?;
    kept
}

pub fn load(bed: &Bed, bpffs: &Bpffs) -> anyhow::Result<XdpFilter> {
    let sources: &[&[&str]] = &[
        &["ip", "-m", "src", "10.1.2.3"],
        &["ip", "-m", "src", "fd00:1::5"],
    ];
    let port: &[&[&str]] = &[&["port", "-p", "tcp", "5432"]];
    let allow_list = load_variant(bed, bpffs, "deny", "all", sources)
        .context("loading xdp-filter (allow list)")?;
    let deny_list =
        load_variant(bed, bpffs, "allow", "all", port).context("loading xdp-filter (deny list)")?;
    let allow_list_lean = load_variant(bed, bpffs, "deny", "ipv4,ipv6,tcp", sources)
        .context("loading xdp-filter (allow list, -f ipv4,ipv6,tcp)")?;
    let deny_list_lean = load_variant(bed, bpffs, "allow", "tcp", port)
        .context("loading xdp-filter (deny list, -f tcp)")?;
    Ok(XdpFilter {
        deny_list,
        allow_list,
        deny_list_lean,
        allow_list_lean,
    })
}

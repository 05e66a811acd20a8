//! `cargo xtask bench`: installs the tools the comparisons need, builds the daemon (release)
//! for the audit figures, then runs the bench crate (release build), which writes
//! bench/RESULTS.md and prints a summary.

use std::process::{Command, Stdio};

use crate::setup;

/// (command, Debian package, why): what the bench compares enforcer against and runs with.
const TOOLS: &[(&str, &str, &str)] = &[
    (
        "xdp-filter",
        "xdp-tools",
        "xdp-filter, the XDP packet filter the per-packet and flood figures compare with",
    ),
    (
        "nft",
        "nftables",
        "nftables, for the netdev-ingress drop rule of the flood comparison",
    ),
    (
        "iptables-legacy",
        "iptables",
        "iptables, for the raw-table drop rule of the flood comparison",
    ),
    (
        "unshare",
        "util-linux",
        "unshare, to run xdp-filter with a private bpffs",
    ),
];

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&(&str, &str, &str)> = TOOLS.iter().filter(|(bin, ..)| !have(bin)).collect();
    if !missing.is_empty() {
        for (bin, pkg, why) in &missing {
            eprintln!("[bench] {bin} is missing: installing the Debian package {pkg} ({why})");
        }
        let mut pkgs: Vec<&str> = missing.iter().map(|(_, pkg, _)| *pkg).collect();
        pkgs.dedup();
        setup::apt_install(&pkgs)?;
    }
    // The audit figures run the real daemon: the release build of this tree.
    crate::cargo(&["build", "--release", "-p", "enforcer"], &[])?;
    let bin = crate::workspace_root().join("target/release/enforcer");
    let mut args = vec![
        "run",
        "--release",
        "-p",
        "enforcer-bench",
        "--",
        "--out",
        "bench/RESULTS.md",
    ];
    args.extend(extra.iter().map(String::as_str));
    crate::cargo(
        &args,
        &[("ENFORCER_BIN", bin.to_string_lossy().into_owned())],
    )
}

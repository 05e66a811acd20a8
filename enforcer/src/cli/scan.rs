//! `enforcer scan`: which of this host's listening sockets are exposed, judged against a
//! policy (read from procfs in the caller's network namespace; nothing is changed).

use std::path::Path;

use anyhow::Context as _;

use crate::{
    host::{facts, sockets},
    policy::{self, exposure},
};

pub fn scan(config: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let policy = match config {
        None => None,
        Some(c) => {
            Some(policy::load(c).map_err(|e| anyhow::anyhow!("the policy cannot be used:\n{e}"))?)
        }
    };
    let sockets = sockets::listeners().context("reading the listening sockets")?;
    let ephemeral = facts::read_ephemeral_range().ok();
    let reserved = facts::read_reserved_ports().unwrap_or_default();
    let coverage = policy.as_ref().map(sockets::coverage_on_host);
    let report = exposure::report(
        policy.as_ref(),
        &sockets.listeners,
        coverage.as_ref(),
        ephemeral,
        &reserved,
    );
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["unreadable_processes"] = sockets.unreadable_processes.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", exposure::render(&report));
        if sockets.unreadable_processes > 0 {
            println!(
                "note: the descriptors of {} processes could not be read (run as root to name every socket's process)",
                sockets.unreadable_processes
            );
        }
    }
    Ok(())
}

//! `enforcer tail`: follow the running daemon's audit stream, filtered, as readable lines,
//! JSON, or a pcap file.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::Value;

use crate::{
    control::{client, protocol::Request},
    events::{
        pcap::PcapWriter,
        sink::{Filter, VERDICTS},
    },
    policy::validate::parse_prefix,
};

#[derive(Args)]
pub struct TailArgs {
    #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Only packets judged by this rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// Only packets with this verdict: allow, drop, would-drop.
    #[arg(long)]
    pub verdict: Option<String>,
    /// Only packets from this address or prefix.
    #[arg(long)]
    pub src: Option<String>,
    /// Start with the recent events the daemon still holds: a duration ago (10m) or an
    /// RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Print JSON lines instead of readable ones.
    #[arg(long)]
    pub json: bool,
    /// Also write the judged packets' headers (rebuilt from the events) to a pcap file.
    #[arg(long)]
    pub pcap: Option<PathBuf>,
}

/// Whether `filter` keeps the audit line `v`.
fn keeps(filter: &Filter, v: &Value) -> bool {
    filter.keeps(
        v["event"].as_str().unwrap_or(""),
        v["verdict"].as_str(),
        v["rule"].as_str(),
        v["src"].as_str().and_then(|s| s.parse::<IpAddr>().ok()),
    )
}

fn parse_since(s: &str) -> anyhow::Result<u128> {
    let t = match humantime::parse_duration(s) {
        Ok(d) => std::time::SystemTime::now() - d,
        Err(_) => humantime::parse_rfc3339_weak(s)
            .with_context(|| format!("--since {s:?}: give a duration (10m) or an RFC 3339 time"))?,
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos()))
}

pub fn tail(a: TailArgs) -> anyhow::Result<()> {
    if let Some(v) = &a.verdict {
        if !VERDICTS.contains(&v.as_str()) {
            bail!("--verdict must be allow, drop or would-drop, not {v:?}");
        }
    }
    let filter = Filter {
        rule: a.rule,
        verdict: a.verdict,
        src: a
            .src
            .as_deref()
            .map(parse_prefix)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--src: {e}"))?,
    };
    let since_unix_ns = a.since.as_deref().map(parse_since).transpose()?;
    let mut pcap = a.pcap.as_ref().map(|p| PcapWriter::create(p)).transpose()?;
    let mut s = client::connect(&a.socket)?;
    client::send(&mut s, Request::Subscribe { since_unix_ns })?;
    let mut lines = BufReader::new(s).lines();
    let first = lines.next().context("the daemon closed the connection")??;
    let v: Value = serde_json::from_str(&first).context("the daemon's answer is not JSON")?;
    if v["ok"] != true {
        bail!("{}", v["error"].as_str().unwrap_or("subscribe failed"));
    }
    let stdout = std::io::stdout();
    for line in lines {
        let line = line.context("reading the audit stream")?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if !keeps(&filter, &v) {
            continue;
        }
        if let Some(p) = pcap.as_mut() {
            p.write_event(&v)?;
        }
        let mut out = stdout.lock();
        let r = if a.json {
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{}", human(&v))
        };
        // A closed pipe (tail | head) ends the command quietly.
        if r.is_err() || out.flush().is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// One readable line per event.
pub fn human(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    // An IPv6 address before ":port" in brackets: "fd00::2:5432" would read as one address.
    let host = |k: &str| {
        if s(k).contains(':') {
            format!("[{}]", s(k))
        } else {
            s(k)
        }
    };
    let ts = s("ts");
    match v["event"].as_str() {
        Some("packet") => {
            let mut line = format!(
                "{ts} {:<10} {:<14} {} {}{} -> {}:{}",
                s("verdict").to_uppercase(),
                s("hook"),
                s("proto"),
                host("src"),
                v["sport"]
                    .as_u64()
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default(),
                host("dst"),
                v["dport"]
            );
            for k in ["rule", "reason", "iface", "cgroup", "comm"] {
                if let Some(x) = v[k].as_str() {
                    line += &format!(" {k}={x}");
                }
            }
            if let Some(pid) = v["pid"].as_u64() {
                line += &format!(" pid={pid}");
            }
            line + &format!(" policy={}", v["policy"])
        }
        Some("policy") => {
            let mut line = format!(
                "{ts} POLICY     {} generation {} sha256 {}",
                s("action"),
                v["policy"],
                &s("hash").get(..12).unwrap_or("")
            );
            for k in ["rules_added", "rules_removed", "rules_changed"] {
                if let Some(list) = v[k].as_array().filter(|l| !l.is_empty()) {
                    let names: Vec<&str> = list.iter().filter_map(|x| x.as_str()).collect();
                    line += &format!(" {}={}", k.trim_start_matches("rules_"), names.join(","));
                }
            }
            if let Some(e) = v["error"].as_str() {
                line += &format!(" error: {}", e.replace('\n', " | "));
            }
            line
        }
        Some(other) => format!("{ts} {:<10} {}", other.to_uppercase(), v),
        None => v.to_string(),
    }
}

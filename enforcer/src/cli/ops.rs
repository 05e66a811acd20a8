//! Operating the running daemon and its pins: reload, confirm, status, explain, grant,
//! grants, revoke, unload.

use std::{net::IpAddr, path::Path, path::PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::{
    control::{client, protocol::Request, status::Status},
    kernel::pins::{LockError, PinDir},
    policy::explain::{explain, Explanation, Query},
};

pub fn reload(socket: &Path, confirm_within: Option<std::time::Duration>) -> anyhow::Result<()> {
    let v = client::call(
        socket,
        Request::Reload {
            confirm_within_secs: confirm_within.map(|d| d.as_secs().max(1)),
        },
    )?;
    println!(
        "applied policy generation {} (sha256 {})",
        v["generation"],
        v["hash"].as_str().unwrap_or("")
    );
    for line in v["access"]["lines"].as_array().into_iter().flatten() {
        println!("  {}", line.as_str().unwrap_or(""));
    }
    if let Some(n) = v["access"]["more_lines"].as_u64().filter(|n| *n > 0) {
        println!("  ... and {n} more lines");
    }
    if let Some(by) = v["confirm_by"].as_str() {
        println!("run `enforcer confirm` before {by} or the previous policy comes back");
    }
    Ok(())
}

pub fn unload(pin_dir: &Path, force: bool) -> anyhow::Result<()> {
    if !pin_dir.exists() {
        println!("nothing pinned at {}", pin_dir.display());
        return Ok(());
    }
    let pins = PinDir {
        root: pin_dir.to_path_buf(),
    };
    // Held while removing: no daemon starts on a half-removed directory.
    let _lock = match pins.lock() {
        Ok(lock) => Some(lock),
        Err(e @ LockError::Owned { .. }) if force => {
            eprintln!("enforcer: {e}
enforcer: removing the pins anyway (--force); that daemon notices within a second and restores them: stop it to stop enforcement");
            None
        }
        Err(e @ LockError::Owned { .. }) => {
            anyhow::bail!("{e}
not unloading under a live daemon: stop it (it detaches on stop unless run with --on-stop keep), or pass --force")
        }
        Err(e) => return Err(e.into()),
    };
    let n = crate::kernel::pins::remove_all(pin_dir)?;
    println!(
        "removed {n} pinned objects from {}: programs detached, policy gone",
        pin_dir.display()
    );
    Ok(())
}

pub fn confirm(socket: &Path) -> anyhow::Result<()> {
    let v = client::call(socket, Request::Confirm)?;
    println!("policy generation {} confirmed", v["generation"]);
    Ok(())
}

pub fn status(socket: &Path, json: bool) -> anyhow::Result<()> {
    let v = client::call(socket, Request::Status)?;
    let st: Status =
        serde_json::from_value(v.clone()).context("reading the daemon's status answer")?;
    if json {
        // The answer as the daemon sent it, less `ok`: the protocol version stays.
        let mut out = serde_json::to_value(&st)?;
        if let (Some(m), Some(version)) = (out.as_object_mut(), v.get("version")) {
            m.insert("version".into(), version.clone());
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print!("{}", render_status(&st));
    Ok(())
}

/// The readable form of a status answer.
pub fn render_status(st: &Status) -> String {
    let mut s = String::new();
    let p = &st.policy;
    s += &format!(
        "policy     generation {} ({}), sha256 {}, applied {}\n           {} rules from {}\n",
        p.generation, p.mode, p.hash, p.applied_at, p.rules, p.file
    );
    if let Some(by) = &p.confirm_by {
        s += &format!("           waiting for `enforcer confirm` until {by}\n");
    }
    let xdp: Vec<String> = st
        .programs
        .xdp
        .attached
        .iter()
        .map(|a| format!("{} ({})", a.iface, a.mode))
        .collect();
    s += &format!(
        "xdp        {}\n",
        if xdp.is_empty() {
            "not attached".to_string()
        } else {
            xdp.join(", ")
        }
    );
    s += &format!(
        "cgroup     {} (ingress, egress, connect4/6, sendmsg4/6)\n",
        st.programs.cgroup.path.as_deref().unwrap_or("not attached")
    );
    s += "rules      name                      allowed     dropped  would-drop\n";
    for r in &st.rules {
        s += &format!(
            "           {:<24} {:>8} {:>11} {:>11}{}\n",
            r.name,
            r.allowed,
            r.dropped,
            r.would_drop,
            if r.mode == "audit" { "  (audit)" } else { "" }
        );
    }
    s += "counters\n";
    for (hook, reasons) in &st.counters {
        let items: Vec<String> = reasons.iter().map(|(k, n)| format!("{k}={n}")).collect();
        if !items.is_empty() {
            s += &format!("           {hook:<15} {}\n", items.join(" "));
        }
    }
    let a = &st.audit;
    s += &format!(
        "audit      {} events, {} suppressed by rate limits, {} lost in the kernel, {} lost by slow sinks, {} subscribers\n",
        a.events, a.suppressed, a.lost_kernel, a.lost_sinks, a.subscribers
    );
    if let Some(f) = &a.file {
        s += &format!(
            "file       {}, rotated at {} bytes, {} kept; {} lines lost\n",
            f.path,
            f.max_bytes,
            f.keep,
            a.lost_by("file")
        );
    }
    if let Some(l) = &a.syslog {
        s += &format!(
            "syslog     {} (facility {}); {} lines lost\n",
            l.target,
            l.facility,
            a.lost_by("syslog")
        );
    }
    for w in &st.warnings {
        s += &format!("warning    {w}\n");
    }
    s
}

#[derive(Args)]
pub struct ExplainArgs {
    /// tcp or udp.
    #[arg(long)]
    pub proto: String,
    #[arg(long)]
    pub src: IpAddr,
    #[arg(long)]
    pub dport: u16,
    #[arg(long)]
    pub dst: Option<IpAddr>,
    #[arg(long)]
    pub sport: Option<u16>,
    /// The sender's cgroup (a local process); without it, a remote sender.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Judge against this policy file instead of the running daemon's live policy.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn explain_cmd(a: ExplainArgs) -> anyhow::Result<()> {
    let query = Query {
        proto: a.proto,
        src: a.src,
        dport: a.dport,
        dst: a.dst,
        sport: a.sport,
        cgroup: a.cgroup,
    };
    let (e, source): (Explanation, String) = match &a.config {
        Some(path) => {
            // As the policy applies now: allow entries past their `expires` allow nothing.
            let p = crate::policy::load(path)?.effective(crate::clock::now_unix(), &[]);
            (
                explain(&p.verdict, &query).map_err(anyhow::Error::msg)?,
                format!("policy file {}", path.display()),
            )
        }
        None => {
            let v = client::call(&a.socket, Request::Explain { query })?;
            let e = serde_json::from_value::<Explanation>(v["explanation"].clone())
                .context("the daemon's explanation")?;
            (e, format!("live policy generation {}", v["policy"]))
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        println!("{}", e.text);
        if let Some(r) = &e.rule {
            println!("  rule:      {r}");
        }
        if let Some(m) = &e.matched {
            println!("  matched:   {m}");
        }
        println!("  reason:    {} (judged at {})", e.reason, e.hook);
        if !e.covering_rules.is_empty() {
            println!("  protected by: {}", e.covering_rules.join(", "));
        }
        println!("  judged by the reference model against the {source}");
    }
    Ok(())
}

#[derive(Args)]
pub struct GrantArgs {
    /// The rule the exception applies to.
    #[arg(long)]
    pub rule: String,
    /// A source address or prefix to allow.
    #[arg(long, conflicts_with = "cgroup", required_unless_present = "cgroup")]
    pub from: Option<String>,
    /// A cgroup (and its descendants) to allow.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// How long (e.g. 30m, 1h, 2d).
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Why: recorded in the audit stream and the grant list.
    #[arg(long)]
    pub reason: String,
    #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn grant(a: GrantArgs) -> anyhow::Result<()> {
    let v = client::call(
        &a.socket,
        Request::Grant {
            rule: a.rule,
            from: a.from,
            cgroup: a.cgroup,
            for_secs: a.duration.as_secs(),
            reason: a.reason,
        },
    )?;
    let g = &v["grant"];
    println!(
        "grant {} applied (policy generation {}): rule {} allows {} until {}",
        g["id"].as_str().unwrap_or(""),
        v["generation"],
        g["rule"].as_str().unwrap_or(""),
        g["from"].as_str().or(g["cgroup"].as_str()).unwrap_or(""),
        g["expires"].as_str().unwrap_or("")
    );
    Ok(())
}

pub fn grants(socket: &Path, json: bool) -> anyhow::Result<()> {
    let v = client::call(socket, Request::Grants)?;
    let list = v["grants"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no grants in force");
        return Ok(());
    }
    println!(
        "{:<6} {:<16} {:<28} {:>10}  {:<22} reason",
        "id", "rule", "allows", "left", "expires"
    );
    for g in list {
        let left = std::time::Duration::from_secs(g["seconds_left"].as_u64().unwrap_or(0));
        println!(
            "{:<6} {:<16} {:<28} {:>10}  {:<22} {}{}",
            g["id"].as_str().unwrap_or(""),
            g["rule"].as_str().unwrap_or(""),
            g["from"].as_str().or(g["cgroup"].as_str()).unwrap_or(""),
            humantime::format_duration(left).to_string(),
            g["expires"].as_str().unwrap_or(""),
            g["reason"].as_str().unwrap_or(""),
            if g["active"] == false {
                " (inactive: rule not in the policy)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

pub fn revoke(socket: &Path, id: &str) -> anyhow::Result<()> {
    let v = client::call(socket, Request::Revoke { id: id.to_string() })?;
    println!("grant {id} revoked (policy generation {})", v["generation"]);
    Ok(())
}

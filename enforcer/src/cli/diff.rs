//! `enforcer diff`: what a proposed policy opens and closes, against the live policy (the
//! daemon's, grants included) or another policy file. Exit 0: access unchanged; 2: access
//! changes; 1: a policy cannot be used (or the daemon cannot be asked).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Args;
use serde_json::{json, Value};

use super::{check::usable, Format, DEFAULT_CONFIG};
use crate::{
    clock::now_unix,
    control::{client, protocol::Request},
    policy::{
        diff::{self, Side},
        PolicyError,
    },
};

#[derive(Args)]
pub struct DiffArgs {
    /// The proposed policy file.
    pub new: PathBuf,
    /// `live` (the running daemon's policy in force, grants included) or a policy file.
    /// Default: live when a daemon answers on --socket, else --config.
    #[arg(long, value_name = "live|FILE")]
    pub against: Option<String>,
    /// The installed policy, compared with when no daemon runs and --against is not given.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// The old side of the diff and how to name it.
struct Old {
    side: Side,
    label: String,
    json: Value,
}

fn file_side(path: &Path, now: u64) -> Result<Old, PolicyError> {
    let p = usable(path)?;
    Ok(Old {
        side: Side::of(&p, now, &[]),
        label: format!("{} (sha256 {})", path.display(), short(&p.hash)),
        json: json!({"source": "file", "file": path.display().to_string(), "hash": p.hash}),
    })
}

fn live_side(socket: &Path) -> anyhow::Result<Old> {
    let v = client::call(socket, Request::Policy)?;
    let side: Side = serde_json::from_value(v["side"].clone())
        .context("the daemon's policy is not in the form this enforcer reads")?;
    let grants = side.grants.len();
    let label = format!(
        "live policy generation {} ({}, sha256 {}){}",
        v["generation"],
        v["file"].as_str().unwrap_or(""),
        short(v["hash"].as_str().unwrap_or("")),
        match grants {
            0 => String::new(),
            1 => ", with 1 grant in force".into(),
            n => format!(", with {n} grants in force"),
        }
    );
    Ok(Old {
        side,
        label,
        json: json!({
            "source": "live",
            "generation": v["generation"],
            "file": v["file"],
            "hash": v["hash"],
            "grants": grants,
        }),
    })
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn invalid(e: &PolicyError, format: Format) -> ExitCode {
    match format {
        Format::Text => eprintln!("{e}"),
        Format::Json => println!("{}", json!({"ok": false, "diagnostics": e.diagnostics})),
    }
    ExitCode::FAILURE
}

fn failed(e: anyhow::Error, format: Format) -> ExitCode {
    match format {
        Format::Text => eprintln!("enforcer: {e:#}"),
        Format::Json => println!("{}", json!({"ok": false, "error": format!("{e:#}")})),
    }
    ExitCode::FAILURE
}

pub fn diff_cmd(a: DiffArgs) -> ExitCode {
    let now = now_unix();
    let new_policy = match usable(&a.new) {
        Ok(p) => p,
        Err(e) => return invalid(&e, a.format),
    };
    let old = match a.against.as_deref() {
        Some("live") => live_side(&a.socket),
        Some(file) => match file_side(Path::new(file), now) {
            Ok(o) => Ok(o),
            Err(e) => return invalid(&e, a.format),
        },
        None if client::connect(&a.socket).is_ok() => live_side(&a.socket),
        None => {
            eprintln!(
                "enforcer: no daemon answers on {}: comparing with {}",
                a.socket.display(),
                a.config.display()
            );
            match file_side(&a.config, now) {
                Ok(o) => Ok(o),
                Err(e) => return invalid(&e, a.format),
            }
        }
    };
    let old = match old {
        Ok(o) => o,
        Err(e) => return failed(e, a.format),
    };
    // A reload keeps the grants in force: the new policy is seen with them too.
    let new = Side::of(&new_policy, now, &old.side.grants);
    let d = diff::diff(&old.side, &new);
    let new_label = format!("{} (sha256 {})", a.new.display(), short(&new_policy.hash));
    match a.format {
        Format::Text => print!("{}", diff::text(&d, &old.label, &new_label)),
        Format::Json => {
            let text = diff::text(&d, &old.label, &new_label);
            let mut v = json!({
                "version": 1,
                "ok": true,
                "old": old.json,
                "new": {"source": "file", "file": a.new.display().to_string(), "hash": new_policy.hash},
                "text": text,
            });
            if let (Some(m), Ok(Value::Object(body))) =
                (v.as_object_mut(), serde_json::to_value(&d))
            {
                m.extend(body);
            }
            println!("{v}");
        }
    }
    if d.changed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

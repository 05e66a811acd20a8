//! `enforcer check`: validate a policy without touching the kernel.
//!
//! Errors (the policy cannot be used) exit 1. Warnings (legal but likely wrong, judged
//! against this host: see `policy::lint`) are printed the same way, FILE:LINE:COL, and
//! leave the exit status 0.

use std::{path::Path, process::ExitCode};

use super::Format;
use crate::policy::{
    self,
    diag::Severity,
    lint::{lint, HostFacts},
    Diagnostic, PolicyError,
};

/// Reads, validates and compiles `config`: a policy the daemon would apply.
pub fn usable(config: &Path) -> Result<policy::Policy, PolicyError> {
    policy::load(config).and_then(|p| {
        policy::compile(&p).map(|_| p).map_err(|e| PolicyError {
            diagnostics: vec![Diagnostic {
                file: config.display().to_string(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: e.to_string(),
            }],
        })
    })
}

/// Validates and compiles `config`; every problem as FILE:LINE:COL, exit 1 on errors.
pub fn check(config: &Path, format: Format) -> ExitCode {
    let result = usable(config);
    let file = config.display().to_string();
    match (result, format) {
        (Ok(p), format) => {
            let facts = HostFacts::gather();
            let warnings = lint(&p, &facts);
            if format == Format::Json {
                let v = serde_json::json!({
                    "file": file,
                    "ok": true,
                    "rules": p.verdict.rules.len(),
                    "hash": p.hash,
                    "diagnostics": warnings,
                    "notes": facts.notes,
                });
                println!("{v}");
                return ExitCode::SUCCESS;
            }
            for w in &warnings {
                eprintln!("{w}");
            }
            for n in &facts.notes {
                eprintln!("{file}: note: {n}");
            }
            let tail = match warnings.len() {
                0 => String::new(),
                1 => ", 1 warning".to_string(),
                n => format!(", {n} warnings"),
            };
            println!(
                "{file}: ok ({} rules, sha256 {}{tail})",
                p.verdict.rules.len(),
                p.hash
            );
            ExitCode::SUCCESS
        }
        (Err(e), Format::Text) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        (Err(e), Format::Json) => {
            println!(
                "{}",
                serde_json::json!({"file": file, "ok": false, "diagnostics": e.diagnostics})
            );
            ExitCode::FAILURE
        }
    }
}

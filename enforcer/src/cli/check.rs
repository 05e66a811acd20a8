//! `enforcer check`: validate a policy without touching the kernel.

use std::{path::Path, process::ExitCode};

use super::Format;
use crate::policy::{self, diag::Severity, Diagnostic, PolicyError};

/// Validates and compiles `config`; every problem as FILE:LINE:COL, exit 1 on errors.
pub fn check(config: &Path, format: Format) -> ExitCode {
    let result = policy::load(config).and_then(|p| {
        policy::compile(&p).map(|_| p).map_err(|e| PolicyError {
            diagnostics: vec![Diagnostic {
                file: config.display().to_string(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: e.to_string(),
            }],
        })
    });
    match (result, format) {
        (Ok(p), Format::Text) => {
            println!("{}: ok ({} rules, sha256 {})", config.display(), p.verdict.rules.len(), p.hash);
            ExitCode::SUCCESS
        }
        (Ok(p), Format::Json) => {
            let v = serde_json::json!({"file": config.display().to_string(), "ok": true, "rules": p.verdict.rules.len(), "hash": p.hash, "diagnostics": []});
            println!("{v}");
            ExitCode::SUCCESS
        }
        (Err(e), Format::Text) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        (Err(e), Format::Json) => {
            println!("{}", serde_json::json!({"file": config.display().to_string(), "ok": false, "diagnostics": e.diagnostics}));
            ExitCode::FAILURE
        }
    }
}

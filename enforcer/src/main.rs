//! The enforcer command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "enforcer", version, about = "Guards a host's internal ports in the kernel (XDP and cgroup programs)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the programs, apply the policy, and stream audit events as JSON lines on stdout.
    Run {
        #[arg(long, short, default_value = "/etc/enforcer/policy.toml")]
        config: PathBuf,
    },
    /// Validate a policy without touching the kernel (exit 1 if it cannot be used).
    Check {
        #[arg(long, short, default_value = "/etc/enforcer/policy.toml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match cli.command {
        Command::Run { config } => {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("enforcer: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(enforcer::daemon::run(enforcer::daemon::Options { config })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("enforcer: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, format } => check(&config, format),
    }
}

fn check(config: &std::path::Path, format: Format) -> ExitCode {
    let result = enforcer::policy::load(config).and_then(|p| {
        enforcer::policy::compile(&p).map(|_| p).map_err(|e| enforcer::policy::PolicyError {
            diagnostics: vec![enforcer::policy::Diagnostic {
                file: config.display().to_string(),
                line: 0,
                col: 0,
                severity: enforcer::policy::diag::Severity::Error,
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
            println!("{}", serde_json::json!({"file": config.display().to_string(), "ok": true, "rules": p.verdict.rules.len(), "hash": p.hash, "diagnostics": []}));
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

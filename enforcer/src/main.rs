//! The enforcer command line; each command lives in `enforcer::cli`.

use std::process::ExitCode;

use clap::Parser as _;
use enforcer::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let result = match cli.command {
        Command::Check { config, format } => return cli::check::check(&config, format),
        Command::Diff(args) => return cli::diff::diff_cmd(args),
        Command::Run {
            config,
            socket,
            pin_dir,
            on_stop,
            state_dir,
            metrics,
            watch,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(enforcer::daemon::run(enforcer::daemon::Options {
                    config,
                    socket,
                    pin_dir,
                    on_stop,
                    state_dir,
                    metrics,
                    watch,
                }))
            }),
        Command::Unload { pin_dir, force } => cli::ops::unload(&pin_dir, force),
        Command::Reload {
            socket,
            confirm_within,
        } => cli::ops::reload(&socket, confirm_within),
        Command::Confirm { socket } => cli::ops::confirm(&socket),
        Command::Status { socket, json } => cli::ops::status(&socket, json),
        Command::Scan { config, json } => cli::scan::scan(config.as_deref(), json),
        Command::Tail(args) => cli::tail::tail(args),
        Command::Audit { command } => cli::audit::run(command),
        Command::Grant(args) => cli::ops::grant(args),
        Command::Grants { socket, json } => cli::ops::grants(&socket, json),
        Command::Revoke { id, socket } => cli::ops::revoke(&socket, &id),
        Command::Explain(args) => cli::ops::explain_cmd(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enforcer: {e:#}");
            let denied = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
                    || c.to_string().contains("Operation not permitted")
            });
            // SAFETY: geteuid has no preconditions.
            if denied && unsafe { libc::geteuid() } != 0 {
                eprintln!("enforcer: hint: this needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; the control socket is root-only)");
            }
            ExitCode::FAILURE
        }
    }
}

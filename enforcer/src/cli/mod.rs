//! The command line: one module per command family.

pub mod audit;
pub mod check;
pub mod diff;
pub mod ops;
pub mod scan;
pub mod tail;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_CONFIG: &str = "/etc/enforcer/policy.toml";

#[derive(Parser)]
#[command(
    name = "enforcer",
    version,
    about = "Guards a host's internal ports in the kernel (XDP and cgroup programs)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load the programs, apply the policy, and stream audit events as JSON lines on stdout.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The control socket to serve.
        #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// bpffs directory where maps and links are pinned (mounted if needed).
        #[arg(long, default_value = crate::kernel::pins::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// On SIGTERM/SIGINT: detach everything, or keep enforcing (pinned) so a restart
        /// has no gap.
        #[arg(long, value_enum, default_value = "detach")]
        on_stop: crate::daemon::OnStop,
        /// Where grants are kept across restarts.
        #[arg(long, default_value = "/var/lib/enforcer")]
        state_dir: PathBuf,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477); off by
        /// default.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Reload (as SIGHUP does) when the policy file changes: inotify on its directory,
        /// which also sees a Kubernetes ConfigMap volume's `..data` symlink swap.
        #[arg(long)]
        watch: bool,
    },
    /// Remove everything a daemon pinned (stops enforcement; for after `--on-stop keep`).
    /// Refused while a daemon owns the pins.
    Unload {
        #[arg(long, default_value = crate::kernel::pins::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Remove the pins even though a live daemon owns them (it notices within a second
        /// and restores them: stop it to stop enforcement).
        #[arg(long)]
        force: bool,
    },
    /// Validate a policy without touching the kernel (exit 1 if it cannot be used).
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Ask the running daemon to re-read and apply its policy file.
    Reload {
        #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Restore the previous policy unless `enforcer confirm` arrives within this time
        /// (e.g. 60s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        confirm_within: Option<std::time::Duration>,
    },
    /// Keep a policy applied with `reload --confirm-within`.
    Confirm {
        #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// What the daemon runs, where, under which policy, with its counters and warnings.
    Status {
        #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Which listening sockets of this host are exposed: unprotected wildcard or non-loopback
    /// listeners (with their processes), protected ports with nothing listening, protected
    /// ports inside the ephemeral port range.
    Scan {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Follow the audit stream of the running daemon.
    Tail(tail::TailArgs),
    /// Work with what the audit sinks wrote (`verify`).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Allow a source or a cgroup on a rule for a limited time (just-in-time access).
    Grant(ops::GrantArgs),
    /// List the grants in force, with the time they have left.
    Grants {
        #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// End a grant early.
    Revoke {
        /// The grant's id (see `enforcer grants`).
        id: String,
        #[arg(long, default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The verdict for a packet, the rule and the allow entry that decided it.
    Explain(ops::ExplainArgs),
    /// What a policy change opens and closes: per protocol and port, who gains and who
    /// loses access (exit 0: no change in access; 2: access changes; 1: invalid policy).
    Diff(diff::DiffArgs),
}

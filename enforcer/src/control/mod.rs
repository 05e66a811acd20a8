//! The control socket: the daemon's own internal port. A Unix socket (root-only by
//! default) speaking newline-delimited JSON; `protocol` defines the messages, `server`
//! serves them inside the daemon, `client` is what the CLI commands use.

pub mod client;
pub mod metrics;
pub mod protocol;
pub mod server;

/// Where the daemon listens by default.
pub const DEFAULT_SOCKET: &str = "/run/enforcer/control.sock";

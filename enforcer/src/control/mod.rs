//! The control socket: the daemon's own internal port. A Unix socket (root-only by
//! default) speaking newline-delimited JSON; `protocol` defines the messages, `server`
//! serves them inside the daemon, `client` is what the CLI commands use; `status` is the
//! typed status answer the daemon fills and the CLI and `metrics` render.

pub mod client;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod status;

/// Where the daemon listens by default.
pub const DEFAULT_SOCKET: &str = "/run/enforcer/control.sock";

//! enforcer: guards a host's internal ports in the kernel.
//!
//! The data flows through one module per stage:
//! policy (file -> validated -> compiled), kernel (programs, map writer, host facts,
//! counters), events (ring buffer -> decoder -> enrichment -> sinks), and the daemon that
//! ties them together.

pub mod cli;
pub mod clock;
pub mod control;
pub mod daemon;
pub mod events;
pub mod grants;
pub mod host;
pub mod kernel;
pub mod policy;
pub mod statefile;

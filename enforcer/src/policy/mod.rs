//! Policy: TOML file -> validated policy (pure) -> compiled map entries (pure).
//! Writing the entries into the kernel is `crate::kernel::writer`'s job.

pub mod compile;
pub mod diag;
pub mod diff;
pub mod explain;
pub mod exposure;
pub mod file;
pub mod grant;
pub mod lint;
pub mod ports;
pub mod selftest;
pub mod sinks;
pub mod validate;
pub mod validated;
pub mod values;

pub use compile::{compile, compile_after, Compiled};
pub use diag::{Diagnostic, PolicyError};
pub use grant::Grant;
pub use validate::{load, parse_str};
pub use validated::{Attach, Entry, Expiring, Loc, Locations, Policy, Rates, XdpModeSetting};

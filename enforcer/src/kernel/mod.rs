//! The kernel side: load and attach the programs (`programs`), write policies into the
//! maps (`writer`), keep the host facts current (`host`), read counters (`counters`).

pub mod counters;
pub mod host;
pub mod pins;
pub mod programs;
pub mod writer;

pub use programs::{Loaded, XdpAttachment};

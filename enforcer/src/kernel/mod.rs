//! The kernel side: load and attach the programs (`programs`), write policies into the
//! maps (`writer`), keep the host facts current (`host`, `netlink`, and `paths`: where
//! containers' own packets arrive), read counters (`counters`).

pub mod counters;
pub mod host;
pub mod netlink;
pub mod paths;
pub mod pins;
pub mod programs;
pub mod writer;

pub use programs::{Loaded, XdpAttachment};

//! The kernel side: load and attach the programs (`programs`), write policies into the
//! maps (`writer`), keep the kernel's copy of the host facts current (`host`: the
//! `LOCAL_ADDRS` key; `paths`: where containers' own packets arrive), read counters
//! (`counters`). The facts themselves are read in `crate::host`.

pub mod counters;
pub mod host;
pub mod paths;
pub mod pins;
pub mod programs;
pub mod sys;
pub mod writer;

pub use programs::{Loaded, XdpAttachment};

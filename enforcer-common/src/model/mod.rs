//! The reference model: what the kernel programs must decide, as pure functions.
//!
//! `parse` turns the bytes a hook sees into [`parse::Parsed`]; `verdict::judge` decides
//! from that, the policy and what the hook knows about the sender. Tests run the same
//! packets through the loaded programs and through this model and require agreement;
//! `enforcer explain` answers with it.

pub mod parse;
pub mod policy;
pub mod verdict;

pub use parse::{parse_frame, parse_l3, Parsed, L4};
pub use policy::{Mode, PortRange, Prefix, Protocol, Rule, VerdictPolicy};
pub use verdict::{judge, Arrival, Context, Flow, Judgement};

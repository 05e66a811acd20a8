//! Events: ring buffer -> `decode` -> `enrich` (rule name, cgroup path, interface, wall
//! time) -> `sink` (JSON lines). The schema is documented in docs/AUDIT-EVENTS.md.

pub mod decode;
pub mod enrich;
pub mod pcap;
pub mod record;
pub mod sink;

pub use record::Record;

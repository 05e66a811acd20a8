//! Events: ring buffer -> `decode` -> `enrich` (rule name, cgroup path, interface, wall
//! time) -> `Record` -> `sink` (numbered JSON lines to stdout, the rotated file, syslog and
//! subscribers). The schema is documented in docs/AUDIT-EVENTS.md.

mod cursor;
pub mod decode;
pub mod enrich;
pub mod pcap;
pub mod record;
pub mod sink;

pub use record::Record;

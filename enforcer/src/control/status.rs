//! The status answer, typed: the daemon fills it, the socket carries it as JSON, and
//! `enforcer status` (readable and `--json`) and the metrics render it. The field names
//! are the JSON's (docs/CONTROL-PROTOCOL.md); renaming one breaks the build, not the
//! dashboards.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub daemon: Daemon,
    pub pins: Pins,
    pub policy: Policy,
    pub programs: Programs,
    /// Hook name → reason name → packets; a reason with no packets is left out.
    pub counters: BTreeMap<String, BTreeMap<String, u64>>,
    pub rules: Vec<Rule>,
    pub audit: Audit,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Daemon {
    pub pid: u32,
    pub started: String,
    pub config: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pins {
    pub dir: Option<String>,
    pub owner: Option<String>,
    pub restored: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub generation: u64,
    pub hash: String,
    pub applied_at: String,
    pub file: String,
    /// `enforce` or `audit`.
    pub mode: String,
    pub rules: usize,
    pub confirm_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Programs {
    pub xdp: Xdp,
    pub cgroup: Cgroup,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Xdp {
    pub name: String,
    pub attached: Vec<XdpAttached>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XdpAttached {
    pub iface: String,
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cgroup {
    pub path: Option<String>,
    pub programs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    /// `enforce` or `audit`.
    pub mode: String,
    pub allowed: u64,
    pub dropped: u64,
    pub would_drop: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    pub events: u64,
    pub lost_kernel: u64,
    pub suppressed: u64,
    pub lost_sinks: u64,
    /// Sink scope name → lines it lost.
    pub lost: BTreeMap<String, u64>,
    pub subscribers: u64,
    pub next_seq: u64,
    pub origin: Origin,
    pub file: Option<FileSink>,
    pub syslog: Option<SyslogSink>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub boot_id: String,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSink {
    pub path: String,
    pub max_bytes: u64,
    pub keep: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyslogSink {
    pub target: String,
    pub facility: String,
}

impl Audit {
    /// Lines the named sink lost (0 when it has no count).
    pub fn lost_by(&self, scope: &str) -> u64 {
        self.lost.get(scope).copied().unwrap_or(0)
    }
}

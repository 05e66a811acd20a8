//! The audit record as operators see it: one JSON object per line.

use serde::Serialize;

/// One line of the audit stream. Fields that do not apply are omitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Record {
    /// RFC 3339, UTC, nanoseconds.
    pub ts: String,
    /// "packet", "policy", "lost", ...
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
    /// Generation of the policy that judged the packet, or that a policy event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<u64>,
    /// Policy events: what happened ("applied", "refused").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_added: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_removed: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_changed: Option<Vec<String>>,
    /// Policy events that apply a generation: the change in access from the one before
    /// (counts and the first lines of `enforcer diff`'s text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::policy::diff::Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// "lost" events: where ("kernel": the ring buffer was full; "stdout" or
    /// "subscriber": that sink fell behind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'static str>,
    /// "lost" and "suppressed" events: how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

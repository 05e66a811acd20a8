//! The policy file as written: serde types that keep every value's position.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// "enforce" (default) or "audit".
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub attach: AttachFile,
    #[serde(default)]
    pub audit: AuditFile,
    /// Absent: the default failsafe ports (tcp/22). Present: exactly the ports listed,
    /// so `ports = []` is the explicit way to remove them.
    pub failsafe: Option<FailsafeFile>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleFile>,
    /// Expectations the policy must meet to be applied.
    #[serde(default, rename = "test")]
    pub tests: Vec<TestFile>,
}

/// `[[test]]`: a packet and the verdict the policy must give it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub name: Spanned<String>,
    pub proto: Spanned<String>,
    pub src: Spanned<String>,
    pub dport: Spanned<i64>,
    pub dst: Option<Spanned<String>>,
    pub sport: Option<Spanned<i64>>,
    /// A local sender's cgroup; absent, a remote sender.
    pub cgroup: Option<Spanned<String>>,
    /// "allow", "drop" or "would-drop".
    pub expect: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachFile {
    /// Interfaces for XDP; none by default (cgroup ingress still judges remote senders).
    #[serde(default)]
    pub interfaces: Vec<Spanned<String>>,
    /// "auto" (default), "native" or "generic".
    pub xdp_mode: Option<Spanned<String>>,
    /// cgroup v2 path for the cgroup programs; default the root "/".
    pub cgroup: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Report allowed packets too; default false (refusals only).
    #[serde(default)]
    pub allowed: bool,
    /// Events per second per rule, per CPU, before the kernel holds them back (counted and
    /// reported as `suppressed`); 0 for no limit. Default 1000.
    pub rate_per_rule: Option<Spanned<i64>>,
    /// Events per second across all rules, per CPU; 0 for no limit. Default 20000.
    pub rate_global: Option<Spanned<i64>>,
    /// Events a limit lets through at once after a quiet spell. Default: `rate_per_rule`.
    pub burst: Option<Spanned<i64>>,
    /// `[audit.file]`: a rotated JSON-lines file.
    pub file: Option<FileSinkFile>,
    /// `[audit.syslog]`: RFC 5424 messages to a syslog daemon or collector.
    pub syslog: Option<SyslogSinkFile>,
}

/// `[audit.file]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkFile {
    /// Absolute path of the current file; rotated ones get `.1`, `.2`, ...
    pub path: Spanned<String>,
    /// Rotate when the next line would make the file larger. Default 100 MiB.
    pub max_bytes: Option<Spanned<i64>>,
    /// Rotated files kept. Default 5.
    pub keep: Option<Spanned<i64>>,
    /// Filters, as `enforcer tail` takes them.
    pub verdict: Option<Spanned<String>>,
    pub rule: Option<Spanned<String>>,
    pub src: Option<Spanned<String>>,
}

/// `[audit.syslog]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSinkFile {
    /// "unix:/dev/log", "udp://HOST:PORT" or "tcp://HOST:PORT".
    pub target: Spanned<String>,
    /// Default "local0".
    pub facility: Option<Spanned<String>>,
    pub verdict: Option<Spanned<String>>,
    pub rule: Option<Spanned<String>>,
    pub src: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailsafeFile {
    pub ports: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub name: Spanned<String>,
    /// "tcp", "udp" or "any"; default "any" (a forgotten protocol leaves nothing open).
    pub protocol: Option<Spanned<String>>,
    pub ports: Spanned<Vec<Spanned<toml::Value>>>,
    /// Prefixes: "10.0.0.0/8", or { from = "10.0.0.0/8", expires = "2026-12-01T00:00:00Z" }.
    #[serde(default)]
    pub allow_from: Vec<Spanned<toml::Value>>,
    /// Cgroup paths: "/a/b", or { cgroup = "/a/b", expires = "..." }.
    #[serde(default)]
    pub allow_cgroups: Vec<Spanned<toml::Value>>,
    /// Overrides the policy's mode for this rule.
    pub mode: Option<Spanned<String>>,
}

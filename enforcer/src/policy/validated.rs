//! The validated policy: what `validate` makes of a file, and what it allows at a given
//! time (expiring entries and grants).

use std::path::PathBuf;

use enforcer_common::model::VerdictPolicy;

use super::{sinks::AuditSinks, values::parse_prefix};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeSetting {
    /// Native (driver) mode, else generic, saying which.
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attach {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeSetting,
    /// Normalized cgroup v2 path ("/" or "/a/b").
    pub cgroup: String,
}

/// Where something stands in the policy file (1-based).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    pub line: usize,
    pub col: usize,
}

/// Where the parts of a validated policy were written, for later messages (lints, tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locations {
    /// Per rule: its `name`.
    pub rules: Vec<Loc>,
    /// Per rule: each `allow_from` entry, and each `allow_cgroups` entry.
    pub allow_from: Vec<Vec<Loc>>,
    pub allow_cgroups: Vec<Vec<Loc>>,
    /// Per rule: its `ports` list.
    pub ports: Vec<Loc>,
    /// `[attach] interfaces` entries, and `[attach] cgroup`.
    pub interfaces: Vec<Loc>,
    pub cgroup: Loc,
    /// The `[failsafe]` table, if written.
    pub failsafe: Option<Loc>,
}

/// Audit event rate limits (events per second per CPU; 0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    pub per_rule: u32,
    pub global: u32,
    pub burst: u32,
}

/// An allow entry: a source prefix or a cgroup.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    From(String),
    Cgroup(String),
}

/// An allow entry that stops applying at `expires_unix` (seconds since the epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiring {
    pub rule: usize,
    pub entry: Entry,
    pub expires_unix: u64,
    pub at: Loc,
}

/// A policy that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub path: PathBuf,
    pub locations: Locations,
    /// sha256 of the file's bytes, hex.
    pub hash: String,
    pub attach: Attach,
    pub report_allowed: bool,
    pub rates: Rates,
    /// `[audit.file]` and `[audit.syslog]`.
    pub sinks: AuditSinks,
    pub verdict: VerdictPolicy,
    /// Its `[[test]]` expectations (all of them hold).
    pub tests: Vec<super::selftest::TestCase>,
    /// Allow entries with an expiry (they are also in `verdict`'s rules).
    pub expiring: Vec<Expiring>,
}

impl Policy {
    /// The policy as it applies at `now_unix`: lapsed entries removed, `extra` entries
    /// (temporary grants: rule index, entry and expiry) added, and listed in `expiring` so
    /// their deadlines reach the kernel.
    pub fn effective(&self, now_unix: u64, extra: &[(usize, Entry, u64)]) -> Policy {
        let mut p = self.clone();
        for e in self.expiring.iter().filter(|e| e.expires_unix <= now_unix) {
            let rule = &mut p.verdict.rules[e.rule];
            match &e.entry {
                Entry::From(s) => {
                    if let Ok(prefix) = parse_prefix(s) {
                        rule.allow_from.retain(|x| *x != prefix);
                    }
                }
                Entry::Cgroup(c) => rule.allow_cgroups.retain(|x| x != c),
            }
        }
        p.expiring.retain(|e| e.expires_unix > now_unix);
        for (i, entry, expires_unix) in extra {
            if *expires_unix <= now_unix {
                continue;
            }
            let Some(rule) = p.verdict.rules.get_mut(*i) else {
                continue;
            };
            // An entry the rule already has for good stays for good.
            let added = match entry {
                Entry::From(s) => match parse_prefix(s) {
                    Ok(prefix) if !rule.allow_from.contains(&prefix) => {
                        rule.allow_from.push(prefix);
                        true
                    }
                    _ => false,
                },
                Entry::Cgroup(c) if !rule.allow_cgroups.contains(c) => {
                    rule.allow_cgroups.push(c.clone());
                    true
                }
                Entry::Cgroup(_) => false,
            };
            if added {
                p.expiring.push(Expiring {
                    rule: *i,
                    entry: entry.clone(),
                    expires_unix: *expires_unix,
                    at: Loc::default(),
                });
            }
        }
        p
    }

    /// The next time an expiring entry lapses, after `now_unix`.
    pub fn next_expiry(&self, now_unix: u64) -> Option<u64> {
        self.expiring
            .iter()
            .map(|e| e.expires_unix)
            .filter(|t| *t > now_unix)
            .min()
    }
}

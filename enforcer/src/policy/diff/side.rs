//! One side of a diff: a policy as it applies at one moment (lapsed entries out, grants
//! in), with what the diff reports besides access (expiring entries, tests, grants). It
//! crosses the control socket for `enforcer diff --against live`, so it has a JSON form.

use enforcer_common::model::{Mode, PortRange, Protocol, Rule, VerdictPolicy};
use serde::{Deserialize, Serialize};

use crate::policy::{
    selftest::TestCase,
    values::{normalize_cgroup, parse_prefix},
    Entry, Grant, Policy,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SideWire", try_from = "SideWire")]
pub struct Side {
    /// What the verdict depends on, as it applies: lapsed entries removed, grants added.
    pub verdict: VerdictPolicy,
    /// Every allow entry with an expiry, lapsed or not.
    pub expiring: Vec<Expiry>,
    pub tests: Vec<TestCase>,
    /// The grants applied to `verdict` (those whose rule exists and that have not ended).
    pub grants: Vec<Grant>,
}

/// An allow entry with an expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expiry {
    pub rule: String,
    pub entry: Entry,
    pub expires_unix: u64,
    /// Whether it had lapsed when the side was taken (then it allows nothing).
    pub lapsed: bool,
}

impl Side {
    /// `policy` as it applies at `now_unix` with `grants` (matched to rules by name, as
    /// the daemon applies them; a reload keeps them).
    pub fn of(policy: &Policy, now_unix: u64, grants: &[Grant]) -> Side {
        let index = |name: &str| policy.verdict.rules.iter().position(|r| r.name == name);
        let grants: Vec<Grant> = grants
            .iter()
            .filter(|g| g.expires_unix > now_unix && index(&g.rule).is_some())
            .cloned()
            .collect();
        let extra: Vec<(usize, Entry, u64)> = grants
            .iter()
            .filter_map(|g| Some((index(&g.rule)?, g.entry.clone(), g.expires_unix)))
            .collect();
        let effective = policy.effective(now_unix, &extra);
        let expiring = policy
            .expiring
            .iter()
            .map(|e| Expiry {
                rule: policy.verdict.rules[e.rule].name.clone(),
                entry: e.entry.clone(),
                expires_unix: e.expires_unix,
                lapsed: e.expires_unix <= now_unix,
            })
            .collect();
        Side {
            verdict: effective.verdict,
            expiring,
            tests: policy.tests.clone(),
            grants,
        }
    }
}

pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    }
}

fn mode(s: &str) -> Result<Mode, String> {
    match s {
        "enforce" => Ok(Mode::Enforce),
        "audit" => Ok(Mode::Audit),
        other => Err(format!("unknown mode {other:?}")),
    }
}

fn protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "any" => Ok(Protocol::Any),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

fn range([first, last]: [u16; 2]) -> Result<PortRange, String> {
    if first > last {
        return Err(format!("port range {first}-{last} runs backwards"));
    }
    Ok(PortRange { first, last })
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SideWire {
    mode: String,
    failsafe: Vec<FailsafeWire>,
    rules: Vec<RuleWire>,
    expiring: Vec<Expiry>,
    tests: Vec<TestCase>,
    grants: Vec<Grant>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailsafeWire {
    protocol: String,
    ports: [u16; 2],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleWire {
    name: String,
    protocol: String,
    ports: Vec<[u16; 2]>,
    allow_from: Vec<String>,
    allow_cgroups: Vec<String>,
    mode: String,
}

impl From<Side> for SideWire {
    fn from(s: Side) -> Self {
        let v = s.verdict;
        SideWire {
            mode: mode_name(v.mode).into(),
            failsafe: v
                .failsafe
                .iter()
                .map(|(p, r)| FailsafeWire {
                    protocol: p.name().into(),
                    ports: [r.first, r.last],
                })
                .collect(),
            rules: v
                .rules
                .into_iter()
                .map(|r| RuleWire {
                    name: r.name,
                    protocol: r.protocol.name().into(),
                    ports: r.ports.iter().map(|p| [p.first, p.last]).collect(),
                    allow_from: r.allow_from.iter().map(|p| p.to_string()).collect(),
                    allow_cgroups: r.allow_cgroups,
                    mode: mode_name(r.mode).into(),
                })
                .collect(),
            expiring: s.expiring,
            tests: s.tests,
            grants: s.grants,
        }
    }
}

impl TryFrom<SideWire> for Side {
    type Error = String;

    fn try_from(w: SideWire) -> Result<Self, String> {
        let failsafe = w
            .failsafe
            .into_iter()
            .map(|f| Ok((protocol(&f.protocol)?, range(f.ports)?)))
            .collect::<Result<_, String>>()?;
        let rules = w
            .rules
            .into_iter()
            .map(|r| {
                Ok(Rule {
                    protocol: protocol(&r.protocol)?,
                    ports: r.ports.into_iter().map(range).collect::<Result<_, _>>()?,
                    allow_from: r
                        .allow_from
                        .iter()
                        .map(|p| parse_prefix(p))
                        .collect::<Result<_, _>>()?,
                    allow_cgroups: r
                        .allow_cgroups
                        .iter()
                        .map(|c| normalize_cgroup(c))
                        .collect::<Result<_, _>>()?,
                    mode: mode(&r.mode)?,
                    name: r.name,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Side {
            verdict: VerdictPolicy {
                mode: mode(&w.mode)?,
                rules,
                failsafe,
            },
            expiring: w.expiring,
            tests: w.tests,
            grants: w.grants,
        })
    }
}

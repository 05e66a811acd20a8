//! `enforcer diff`: what a policy change opens and closes, computed from the two policies
//! with the reference model's semantics, not from their text (pure; no I/O).
//!
//! Per protocol and destination port, the model lets a packet bound for the host through
//! when the port is failsafe or covered by no rule, and otherwise when its source is in the
//! union of the covering rules' `allow_from` (a remote sender, or a container's), or (a
//! local sender) its cgroup is in the
//! union of their `allow_cgroups`, or (received) its flow was authorized at a local
//! sender; it refuses the rest, dropping them if any covering rule enforces and logging
//! them (would-drop) if all audit; packets the kernel cannot parse are refused by the
//! global mode. [`Access`] is that picture for one port with every set in canonical form,
//! so two ways of writing the same access compare equal. The diff lists the port ranges
//! whose access differs (grouped by identical change), and beside them what changed that
//! is not access: rules renamed, added, removed or edited, failsafe ports, expiring
//! entries, `[[test]]` tables, grants.

mod access;
mod edits;
pub mod render;
pub mod sets;
mod side;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use enforcer_common::{
    consts::{IPPROTO_TCP, IPPROTO_UDP},
    model::{Mode, PortRange, Protocol, Rule, VerdictPolicy},
    reason::Verdict,
};
use serde::{Serialize, Serializer};

pub use access::{Access, Packet, Probe, Sets, State};
use edits::{expiring_changes, failsafe_changes, rule_changes, test_changes};
pub use render::{text, Summary};
use sets::{CgroupSet, Except, PrefixSet};
pub use side::{mode_name, Expiry, Side};

use super::{selftest::TestCase, Entry};

/// Port ranges of one protocol whose access changes the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortChange {
    /// "tcp", "udp", or "any" (both alike).
    pub protocol: &'static str,
    #[serde(serialize_with = "ranges_json")]
    pub ports: Vec<PortRange>,
    /// The rules covering these ports on either side.
    pub rules: Vec<String>,
    pub before: Access,
    pub after: Access,
    /// Who gets in after and did not before (for a local sender: by source or cgroup).
    pub gained: Sets,
    /// Who got in before and does not after.
    pub lost: Sets,
}

impl PortChange {
    pub fn applies_to(&self, proto: u8, port: u16) -> bool {
        let p = match self.protocol {
            "tcp" => proto == IPPROTO_TCP,
            "udp" => proto == IPPROTO_UDP,
            _ => proto == IPPROTO_TCP || proto == IPPROTO_UDP,
        };
        p && self.ports.iter().any(|r| r.contains(port))
    }

    /// Whether this change alters the verdict for the packet.
    pub fn covers(&self, proto: u8, port: u16, probe: &Probe<'_>) -> bool {
        self.applies_to(proto, port) && self.before.verdict(probe) != self.after.verdict(probe)
    }

    /// Refused packets change fate (both sides protected, modes differ).
    pub fn mode_change(&self) -> Option<(Mode, Mode)> {
        match (self.before.mode, self.after.mode) {
            (Some(a), Some(b)) if a != b => Some((a, b)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ModeChange {
    #[serde(serialize_with = "mode_json")]
    pub before: Mode,
    #[serde(serialize_with = "mode_json")]
    pub after: Mode,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Renamed {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleEdit {
    pub rule: String,
    /// Of "protocol", "ports", "allow_from", "allow_cgroups" (as sets: order and
    /// equivalent spellings do not count).
    pub fields: Vec<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleMode {
    pub rule: String,
    #[serde(flatten)]
    pub change: ModeChange,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same content under a new name.
    pub renamed: Vec<Renamed>,
    pub changed: Vec<RuleEdit>,
    pub modes: Vec<RuleMode>,
}

impl RuleChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.renamed.is_empty()
            && self.changed.is_empty()
            && self.modes.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes<T> {
    pub added: Vec<T>,
    pub removed: Vec<T>,
}

impl<T> Changes<T> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// An expiring allow entry, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpiryItem {
    pub rule: String,
    #[serde(flatten)]
    pub entry: Entry,
    /// RFC 3339.
    pub expires: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpiryMoved {
    pub rule: String,
    #[serde(flatten)]
    pub entry: Entry,
    pub expires_before: String,
    pub expires_after: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExpiringChanges {
    /// New entries that have not lapsed.
    pub added: Vec<ExpiryItem>,
    pub removed: Vec<ExpiryItem>,
    /// Same entry, another expiry.
    pub changed: Vec<ExpiryMoved>,
    /// Entries that have lapsed on the new side and had not on the old (or are new):
    /// they allow nothing.
    pub lapsed: Vec<ExpiryItem>,
}

impl ExpiringChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.lapsed.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TestChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same name, another packet or expectation.
    pub changed: Vec<String>,
}

impl TestChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A grant of the old side, and whether it still applies on the new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantNote {
    pub id: String,
    pub rule: String,
    #[serde(flatten)]
    pub entry: Entry,
    pub expires: String,
    /// False when the new policy has no rule of that name: the grant stops applying.
    pub kept: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Access changes, now or (an expiry moved) later: what a second approver is for.
    pub changed: bool,
    /// The global mode (decides packets the kernel cannot parse).
    pub mode: Option<ModeChange>,
    pub ports: Vec<PortChange>,
    /// Failsafe ports, as "tcp/22" or "udp/5000-5001".
    pub failsafe: Changes<String>,
    pub rules: RuleChanges,
    pub expiring: ExpiringChanges,
    pub tests: TestChanges,
    pub grants: Vec<GrantNote>,
}

impl Diff {
    /// Whether the diff lists a change that alters this packet's verdict.
    pub fn covers(&self, packet: &Packet<'_>) -> bool {
        match packet {
            Packet::Malformed => self.mode.is_some(),
            Packet::Port {
                proto,
                dport,
                probe,
            } => self.ports.iter().any(|c| c.covers(*proto, *dport, probe)),
        }
    }

    /// Nothing at all to report.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.ports.is_empty()
            && self.failsafe.is_empty()
            && self.rules.is_empty()
            && self.expiring.is_empty()
            && self.tests.is_empty()
            && self.grants.is_empty()
    }
}

fn mode_json<S: Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode_name(*m))
}

pub fn range_text(r: &PortRange) -> String {
    if r.first == r.last {
        r.first.to_string()
    } else {
        format!("{}-{}", r.first, r.last)
    }
}

fn ranges_json<S: Serializer>(ranges: &[PortRange], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ranges.iter().map(range_text))
}

/// The change from `old` to `new`.
pub fn diff(old: &Side, new: &Side) -> Diff {
    let mode = (old.verdict.mode != new.verdict.mode).then_some(ModeChange {
        before: old.verdict.mode,
        after: new.verdict.mode,
    });
    let ports = port_changes(&old.verdict, &new.verdict);
    let expiring = expiring_changes(&old.expiring, &new.expiring);
    Diff {
        changed: mode.is_some() || !ports.is_empty() || !expiring.changed.is_empty(),
        mode,
        ports,
        failsafe: failsafe_changes(&old.verdict, &new.verdict),
        rules: rule_changes(&old.verdict.rules, &new.verdict.rules),
        expiring,
        tests: test_changes(old, new),
        grants: old
            .grants
            .iter()
            .map(|g| GrantNote {
                id: g.id.clone(),
                rule: g.rule.clone(),
                entry: g.entry.clone(),
                expires: crate::clock::rfc3339(g.expires_unix),
                kept: new.grants.iter().any(|n| n.id == g.id),
            })
            .collect(),
    }
}

const PROTOS: [(Protocol, u8, &str); 2] = [
    (Protocol::Tcp, IPPROTO_TCP, "tcp"),
    (Protocol::Udp, IPPROTO_UDP, "udp"),
];

fn covers(rule: Protocol, table: Protocol) -> bool {
    rule == Protocol::Any || rule == table
}

/// One protocol's port space as consecutive segments of constant access: (first port,
/// index into `accesses`), the last segment running to 65535.
struct Segments {
    starts: Vec<(u32, usize)>,
    accesses: Vec<(Access, Vec<String>)>,
}

fn segments(policy: &VerdictPolicy, proto: Protocol) -> Segments {
    // Sweep: each range adds one to its rule's count (or the failsafe count) at its first
    // port and takes it away after its last.
    const FAILSAFE: usize = usize::MAX;
    let mut events: BTreeMap<u32, Vec<(usize, i32)>> = BTreeMap::new();
    events.entry(0).or_default();
    let mut add = |who: usize, r: &PortRange| {
        events.entry(r.first as u32).or_default().push((who, 1));
        events.entry(r.last as u32 + 1).or_default().push((who, -1));
    };
    for (i, rule) in policy.rules.iter().enumerate() {
        if covers(rule.protocol, proto) {
            rule.ports.iter().for_each(|r| add(i, r));
        }
    }
    for (p, r) in &policy.failsafe {
        if covers(*p, proto) {
            add(FAILSAFE, r);
        }
    }
    let mut active: BTreeMap<usize, i32> = BTreeMap::new();
    let mut cache: HashMap<Vec<usize>, usize> = HashMap::new();
    let mut out = Segments {
        starts: Vec::new(),
        accesses: Vec::new(),
    };
    for (port, changes) in events.range(..65536) {
        for (who, d) in changes {
            let n = active.entry(*who).or_default();
            *n += d;
            if *n == 0 {
                active.remove(who);
            }
        }
        let key: Vec<usize> = if active.contains_key(&FAILSAFE) {
            vec![FAILSAFE]
        } else {
            active.keys().copied().collect()
        };
        let next = out.accesses.len();
        let idx = *cache.entry(key).or_insert_with_key(|key| {
            let rules: Vec<&Rule> = key
                .iter()
                .filter(|i| **i != FAILSAFE)
                .map(|i| &policy.rules[*i])
                .collect();
            let access = match (key.first(), rules.is_empty()) {
                (Some(&FAILSAFE), _) => Access::open(State::Failsafe),
                (_, true) => Access::open(State::Unprotected),
                _ => Access::protected(&rules),
            };
            out.accesses
                .push((access, rules.iter().map(|r| r.name.clone()).collect()));
            next
        });
        out.starts.push((*port, idx));
    }
    out
}

fn port_changes(old: &VerdictPolicy, new: &VerdictPolicy) -> Vec<PortChange> {
    let mut by_proto: Vec<PortChange> = Vec::new();
    for (proto, _, name) in PROTOS {
        let (a, b) = (segments(old, proto), segments(new, proto));
        let mut starts: Vec<u32> = a.starts.iter().chain(&b.starts).map(|s| s.0).collect();
        starts.sort_unstable();
        starts.dedup();
        let at =
            |s: &Segments, port: u32| s.starts[s.starts.partition_point(|x| x.0 <= port) - 1].1;
        // Changes of this protocol, grouped by (before, after).
        let mut groups: HashMap<(usize, usize), usize> = HashMap::new();
        let first = by_proto.len();
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(65535, |n| n - 1);
            let (ia, ib) = (at(&a, start), at(&b, start));
            let ((before, names_a), (after, names_b)) = (&a.accesses[ia], &b.accesses[ib]);
            if before.effect() == after.effect() {
                continue;
            }
            let range = PortRange {
                first: start as u16,
                last: end as u16,
            };
            // Identical accesses may come from different sets of rules: group by value.
            let existing = groups.get(&(ia, ib)).copied().or_else(|| {
                by_proto[first..]
                    .iter()
                    .position(|c| c.before == *before && c.after == *after)
                    .map(|p| p + first)
            });
            let names = names_a.iter().chain(names_b).cloned();
            match existing {
                Some(k) => {
                    groups.insert((ia, ib), k);
                    let c = &mut by_proto[k];
                    match c.ports.last_mut() {
                        Some(last) if last.last as u32 + 1 == start => last.last = range.last,
                        _ => c.ports.push(range),
                    }
                    let all: BTreeSet<String> = c.rules.drain(..).chain(names).collect();
                    c.rules = all.into_iter().collect();
                }
                None => {
                    groups.insert((ia, ib), by_proto.len());
                    by_proto.push(PortChange {
                        protocol: name,
                        ports: vec![range],
                        rules: names.collect::<BTreeSet<_>>().into_iter().collect(),
                        gained: Sets {
                            from: after.from.minus(&before.from),
                            cgroups: after.cgroups.minus(&before.cgroups),
                        },
                        lost: Sets {
                            from: before.from.minus(&after.from),
                            cgroups: before.cgroups.minus(&after.cgroups),
                        },
                        before: before.clone(),
                        after: after.clone(),
                    });
                }
            }
        }
    }
    // The same change on tcp and udp (rules for "any") is one entry.
    let mut out: Vec<PortChange> = Vec::new();
    for c in by_proto {
        let twin = out.iter_mut().find(|o| {
            o.protocol == "tcp"
                && c.protocol == "udp"
                && o.ports == c.ports
                && o.before == c.before
                && o.after == c.after
        });
        match twin {
            Some(t) => {
                t.protocol = "any";
                let all: BTreeSet<String> = t.rules.drain(..).chain(c.rules).collect();
                t.rules = all.into_iter().collect();
            }
            None => out.push(c),
        }
    }
    out.sort_by_key(|c| (c.ports[0].first, c.protocol));
    out
}

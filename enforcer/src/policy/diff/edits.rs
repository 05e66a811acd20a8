//! What changed that is not access: failsafe ports, rules (renamed, added, removed,
//! edited), expiring entries, `[[test]]` tables.

use super::*;

/// Per protocol, the failsafe ports as sorted, merged ranges.
fn failsafe_ranges(p: &VerdictPolicy) -> Vec<(&'static str, PortRange)> {
    let mut out = Vec::new();
    for (proto, _, name) in PROTOS {
        let mut ranges: Vec<PortRange> = p
            .failsafe
            .iter()
            .filter(|(fp, _)| covers(*fp, proto))
            .map(|(_, r)| *r)
            .collect();
        ranges.sort_by_key(|r| r.first);
        for r in merge(ranges) {
            out.push((name, r));
        }
    }
    out
}

fn merge(sorted: Vec<PortRange>) -> Vec<PortRange> {
    let mut out: Vec<PortRange> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(l) if r.first as u32 <= l.last as u32 + 1 => l.last = l.last.max(r.last),
            _ => out.push(r),
        }
    }
    out
}

/// `a` less `b`, as ranges (both sorted and merged, per protocol).
fn ranges_minus(a: &[(&'static str, PortRange)], b: &[(&'static str, PortRange)]) -> Vec<String> {
    let mut out = Vec::new();
    for &(proto, r) in a {
        let mut cuts: Vec<PortRange> = b
            .iter()
            .filter(|(p, o)| *p == proto && o.first <= r.last && r.first <= o.last)
            .map(|(_, o)| *o)
            .collect();
        cuts.sort_by_key(|c| c.first);
        let mut next = r.first as u32;
        for c in cuts {
            if (c.first as u32) > next {
                out.push(format!(
                    "{proto}/{}",
                    range_text(&PortRange {
                        first: next as u16,
                        last: c.first - 1
                    })
                ));
            }
            next = next.max(c.last as u32 + 1);
        }
        if next <= r.last as u32 {
            out.push(format!(
                "{proto}/{}",
                range_text(&PortRange {
                    first: next as u16,
                    last: r.last
                })
            ));
        }
    }
    out
}

pub(super) fn failsafe_changes(old: &VerdictPolicy, new: &VerdictPolicy) -> Changes<String> {
    let (a, b) = (failsafe_ranges(old), failsafe_ranges(new));
    Changes {
        added: ranges_minus(&b, &a),
        removed: ranges_minus(&a, &b),
    }
}

/// A rule's content in canonical form: equal keys, equal rules (whatever the name).
#[derive(PartialEq, Eq)]
struct RuleKey {
    protocol: Protocol,
    ports: Vec<PortRange>,
    from: PrefixSet,
    cgroups: CgroupSet,
    mode: Mode,
}

fn rule_key(r: &Rule) -> RuleKey {
    let mut ports = r.ports.clone();
    ports.sort_by_key(|p| p.first);
    RuleKey {
        protocol: r.protocol,
        ports: merge(ports),
        from: PrefixSet::new(&r.allow_from),
        cgroups: CgroupSet::new(&r.allow_cgroups),
        mode: r.mode,
    }
}

pub(super) fn rule_changes(old: &[Rule], new: &[Rule]) -> RuleChanges {
    let mut out = RuleChanges::default();
    let find = |rules: &'_ [Rule], name: &str| rules.iter().position(|r| r.name == name);
    let old_only: Vec<&Rule> = old
        .iter()
        .filter(|r| find(new, &r.name).is_none())
        .collect();
    let mut new_only: Vec<&Rule> = new
        .iter()
        .filter(|r| find(old, &r.name).is_none())
        .collect();
    for r in old_only {
        let key = rule_key(r);
        match new_only.iter().position(|n| rule_key(n) == key) {
            Some(i) => out.renamed.push(Renamed {
                from: r.name.clone(),
                to: new_only.remove(i).name.clone(),
            }),
            None => out.removed.push(r.name.clone()),
        }
    }
    out.added = new_only.iter().map(|r| r.name.clone()).collect();
    for n in new {
        let Some(o) = find(old, &n.name).map(|i| &old[i]) else {
            continue;
        };
        let (a, b) = (rule_key(o), rule_key(n));
        let fields: Vec<&'static str> = [
            ("protocol", a.protocol != b.protocol),
            ("ports", a.ports != b.ports),
            ("allow_from", a.from != b.from),
            ("allow_cgroups", a.cgroups != b.cgroups),
        ]
        .into_iter()
        .filter_map(|(f, changed)| changed.then_some(f))
        .collect();
        if !fields.is_empty() {
            out.changed.push(RuleEdit {
                rule: n.name.clone(),
                fields,
            });
        }
        if a.mode != b.mode {
            out.modes.push(RuleMode {
                rule: n.name.clone(),
                change: ModeChange {
                    before: a.mode,
                    after: b.mode,
                },
            });
        }
    }
    out
}

pub(super) fn expiring_changes(old: &[Expiry], new: &[Expiry]) -> ExpiringChanges {
    let item = |e: &Expiry| ExpiryItem {
        rule: e.rule.clone(),
        entry: e.entry.clone(),
        expires: crate::clock::rfc3339(e.expires_unix),
    };
    let find = |list: &'_ [Expiry], e: &Expiry| {
        list.iter()
            .find(|o| o.rule == e.rule && o.entry == e.entry)
            .cloned()
    };
    let mut out = ExpiringChanges::default();
    for e in new {
        let before = find(old, e);
        if e.lapsed && before.as_ref().is_none_or(|b| !b.lapsed) {
            out.lapsed.push(item(e));
        }
        match before {
            None if !e.lapsed => out.added.push(item(e)),
            Some(b) if b.expires_unix != e.expires_unix => out.changed.push(ExpiryMoved {
                rule: e.rule.clone(),
                entry: e.entry.clone(),
                expires_before: crate::clock::rfc3339(b.expires_unix),
                expires_after: crate::clock::rfc3339(e.expires_unix),
            }),
            _ => {}
        }
    }
    out.removed = old
        .iter()
        .filter(|e| find(new, e).is_none())
        .map(item)
        .collect();
    out
}

pub(super) fn test_changes(old: &Side, new: &Side) -> TestChanges {
    fn names(s: &Side) -> BTreeMap<&str, &TestCase> {
        s.tests.iter().map(|t| (t.name.as_str(), t)).collect()
    }
    let (a, b) = (names(old), names(new));
    TestChanges {
        added: b
            .keys()
            .filter(|k| !a.contains_key(*k))
            .map(|k| k.to_string())
            .collect(),
        removed: a
            .keys()
            .filter(|k| !b.contains_key(*k))
            .map(|k| k.to_string())
            .collect(),
        changed: b
            .iter()
            .filter(|(k, t)| a.get(*k).is_some_and(|o| o != *t))
            .map(|(k, _)| k.to_string())
            .collect(),
    }
}

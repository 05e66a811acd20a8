//! Port sets: sorted, merged lists of inclusive ranges, and the ports a policy judges.

use enforcer_common::model::{PortRange, Protocol, Rule};

use super::Policy;

/// Sorts and merges overlapping or adjacent ranges.
pub fn normalize(mut v: Vec<PortRange>) -> Vec<PortRange> {
    v.sort_by_key(|r| (r.first, r.last));
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.first as u32 <= last.last as u32 + 1 => {
                last.last = last.last.max(r.last)
            }
            _ => out.push(r),
        }
    }
    out
}

/// The ports in both `a` and `b`.
pub fn intersect(a: &[PortRange], b: &[PortRange]) -> Vec<PortRange> {
    // A walk along both sorted lists, not every pair: a policy at the port-group limit has
    // rules of 32,768 ranges each.
    let (a, b) = (normalize(a.to_vec()), normalize(b.to_vec()));
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        let (first, last) = (x.first.max(y.first), x.last.min(y.last));
        if first <= last {
            out.push(PortRange { first, last });
        }
        if x.last < y.last {
            i += 1;
        } else {
            j += 1;
        }
    }
    normalize(out)
}

/// The ports in `a` but not in `b`.
pub fn subtract(a: &[PortRange], b: &[PortRange]) -> Vec<PortRange> {
    let mut cur = normalize(a.to_vec());
    for y in b {
        let mut next = Vec::with_capacity(cur.len() + 1);
        for x in cur {
            if y.last < x.first || y.first > x.last {
                next.push(x);
                continue;
            }
            if y.first > x.first {
                next.push(PortRange {
                    first: x.first,
                    last: y.first - 1,
                });
            }
            if y.last < x.last {
                next.push(PortRange {
                    first: y.last + 1,
                    last: x.last,
                });
            }
        }
        cur = next;
    }
    cur
}

pub fn fmt_range(r: PortRange) -> String {
    if r.first == r.last {
        r.first.to_string()
    } else {
        format!("{}-{}", r.first, r.last)
    }
}

/// "tcp/22, tcp/8000-8010".
pub fn fmt_ports(proto: &str, ranges: &[PortRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{proto}/{}", fmt_range(*r)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The protocols a rule's protocol stands for, one by one.
pub fn concrete(p: Protocol) -> &'static [Protocol] {
    match p {
        Protocol::Tcp => &[Protocol::Tcp],
        Protocol::Udp => &[Protocol::Udp],
        Protocol::Any => &[Protocol::Tcp, Protocol::Udp],
    }
}

/// The failsafe ports of `proto` (a concrete protocol).
pub fn failsafe_ports(policy: &Policy, proto: Protocol) -> Vec<PortRange> {
    normalize(
        policy
            .verdict
            .failsafe
            .iter()
            .filter(|(p, _)| *p == proto || *p == Protocol::Any)
            .map(|(_, r)| *r)
            .collect(),
    )
}

/// The ports of `rule` that are judged for `proto` (a concrete protocol): its ports less
/// the failsafe ones. Empty when the rule does not cover `proto`.
pub fn judged_ports(policy: &Policy, rule: &Rule, proto: Protocol) -> Vec<PortRange> {
    if !concrete(rule.protocol).contains(&proto) {
        return Vec::new();
    }
    subtract(&rule.ports, &failsafe_ports(policy, proto))
}

/// Per-protocol port sets as text, "tcp+udp/53" when both protocols have the same ports.
pub(super) fn fmt_sets(sets: &[(Protocol, Vec<PortRange>)]) -> String {
    let sets: Vec<_> = sets.iter().filter(|(_, r)| !r.is_empty()).collect();
    match sets.as_slice() {
        [(_, a), (_, b)] if a == b => fmt_ports("tcp+udp", a),
        _ => sets
            .iter()
            .map(|(p, r)| fmt_ports(p.name(), r))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The ports of `rule` inside the usable ephemeral range (ip_local_port_range less the
/// reserved ports), per protocol; only judged ports count.
pub fn ephemeral_overlap(
    policy: &Policy,
    rule: &Rule,
    ephemeral: PortRange,
    reserved: &[PortRange],
) -> Vec<(Protocol, Vec<PortRange>)> {
    let usable = subtract(&[ephemeral], reserved);
    concrete(rule.protocol)
        .iter()
        .map(|p| (*p, intersect(&judged_ports(policy, rule, *p), &usable)))
        .filter(|(_, r)| !r.is_empty())
        .collect()
}

/// Both protocols' common part: `None` if they share nothing.
pub(super) fn common_protocol(a: Protocol, b: Protocol) -> Option<Protocol> {
    match (a, b) {
        (Protocol::Any, x) | (x, Protocol::Any) => Some(x),
        (x, y) if x == y => Some(x),
        _ => None,
    }
}

pub(super) fn proto_label(p: Protocol) -> &'static str {
    match p {
        Protocol::Any => "tcp+udp",
        p => p.name(),
    }
}

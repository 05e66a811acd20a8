//! Warnings about a valid policy: what is legal but likely wrong, each located at the line
//! that causes it.
//!
//! [`lint`] is pure: it judges a [`Policy`] against [`HostFacts`] (the ephemeral port range,
//! which cgroups exist, where sshd listens), which [`HostFacts::gather`] reads from the
//! host separately, so tests can feed made-up facts.

use std::path::PathBuf;

use enforcer_common::model::{policy::cgroup_within, Mode, PortRange, Protocol, Rule};

use super::{
    diag::{Diagnostic, Severity},
    Loc, Policy,
};

/// Which cgroups exist, below the cgroup v2 mount.
pub struct CgroupFacts {
    /// The cgroup v2 mount (named in messages).
    pub mount: PathBuf,
    /// Whether the cgroup with this normalized path ("/a/b") exists now.
    pub exists: Box<dyn Fn(&str) -> bool>,
}

/// What the lints need to know about the host. Unknown facts are `None` (or empty) and
/// their lints stay silent.
#[derive(Default)]
pub struct HostFacts {
    /// net.ipv4.ip_local_port_range: where outgoing connections take their local ports.
    pub ephemeral: Option<PortRange>,
    /// net.ipv4.ip_local_reserved_ports: taken out of the ephemeral range.
    pub reserved: Vec<PortRange>,
    pub cgroups: Option<CgroupFacts>,
    /// TCP ports a process named sshd listens on, in this network namespace.
    pub sshd_ports: Vec<u16>,
    /// What could not be found out, for people ("not root: ...").
    pub notes: Vec<String>,
    /// Now, in seconds since the epoch: allow entries that expired before it have lapsed.
    pub now_unix: u64,
    /// This host's own addresses (loopback's are always counted too).
    pub local_addrs: Vec<std::net::IpAddr>,
    /// The listening sockets, for the coverage gaps.
    pub listeners: Vec<crate::scan::Listener>,
    /// The Ethernet interfaces (XDP can attach only to those).
    pub ethernet_ifaces: Vec<String>,
}

impl HostFacts {
    /// Reads the facts of this host (and of the caller's network namespace).
    pub fn gather() -> HostFacts {
        let mut facts = HostFacts {
            now_unix: crate::clock::now_unix(),
            ..HostFacts::default()
        };
        match read_ephemeral_range() {
            Ok(r) => facts.ephemeral = Some(r),
            Err(e) => facts
                .notes
                .push(format!("ephemeral port range not checked: {e:#}")),
        }
        facts.reserved = read_reserved_ports().unwrap_or_default();
        match crate::host::cgroup2_mount() {
            Ok(mount) => {
                let m = mount.clone();
                facts.cgroups = Some(CgroupFacts {
                    mount,
                    exists: Box::new(move |p| crate::host::cgroup_id(&m, p).is_some()),
                });
            }
            Err(e) => facts.notes.push(format!("cgroups not checked: {e:#}")),
        }
        match crate::host::local_addrs() {
            Ok(a) => facts.local_addrs = a.into_iter().collect(),
            Err(e) => facts
                .notes
                .push(format!("this host's addresses not checked: {e}")),
        }
        facts.ethernet_ifaces = crate::kernel::netlink::links()
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.arphrd == crate::kernel::netlink::ARPHRD_ETHER)
            .map(|l| l.name)
            .collect();
        match crate::scan::listeners() {
            Ok(s) => {
                facts.sshd_ports = s.sshd_tcp_ports();
                facts.listeners = s.listeners.clone();
                if facts.sshd_ports.is_empty() && s.unreadable_processes > 0 {
                    facts.notes.push(format!(
                        "sshd's ports not checked for {} processes whose sockets could not be read (run as root)",
                        s.unreadable_processes
                    ));
                }
            }
            Err(e) => facts.notes.push(format!("sshd's ports not checked: {e:#}")),
        }
        facts
    }
}

/// net.ipv4.ip_local_port_range of the caller's network namespace.
pub fn read_ephemeral_range() -> anyhow::Result<PortRange> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
    parse_ephemeral_range(&text)
        .ok_or_else(|| anyhow::anyhow!("{path}: cannot parse {:?}", text.trim()))
}

pub fn parse_ephemeral_range(text: &str) -> Option<PortRange> {
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>().ok());
    let (first, last) = (it.next()??, it.next()??);
    (first <= last).then_some(PortRange { first, last })
}

/// net.ipv4.ip_local_reserved_ports ("8080,9000-9010", or empty).
pub fn read_reserved_ports() -> anyhow::Result<Vec<PortRange>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")?;
    Ok(parse_reserved_ports(&text))
}

pub fn parse_reserved_ports(text: &str) -> Vec<PortRange> {
    let ranges = text
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let (first, last) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (first <= last).then_some(PortRange { first, last })
        });
    normalize(ranges.collect())
}

// ---- port sets: sorted, merged lists of inclusive ranges ----

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
fn fmt_sets(sets: &[(Protocol, Vec<PortRange>)]) -> String {
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
fn common_protocol(a: Protocol, b: Protocol) -> Option<Protocol> {
    match (a, b) {
        (Protocol::Any, x) | (x, Protocol::Any) => Some(x),
        (x, y) if x == y => Some(x),
        _ => None,
    }
}

fn proto_label(p: Protocol) -> &'static str {
    match p {
        Protocol::Any => "tcp+udp",
        p => p.name(),
    }
}

fn refuses(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "refused",
        Mode::Audit => "reported as would-drop (audit mode; refused once enforced)",
    }
}

struct Linter<'a> {
    policy: &'a Policy,
    file: String,
    out: Vec<Diagnostic>,
}

impl Linter<'_> {
    fn warn(&mut self, at: Loc, message: String) {
        let at = if at.line == 0 {
            Loc { line: 1, col: 1 }
        } else {
            at
        };
        self.out.push(Diagnostic {
            file: self.file.clone(),
            line: at.line,
            col: at.col,
            severity: Severity::Warning,
            message,
        });
    }

    fn rule_loc(&self, i: usize) -> Loc {
        self.policy
            .locations
            .rules
            .get(i)
            .copied()
            .unwrap_or_default()
    }

    fn ports_loc(&self, i: usize) -> Loc {
        self.policy
            .locations
            .ports
            .get(i)
            .copied()
            .unwrap_or_else(|| self.rule_loc(i))
    }

    fn allow_from_loc(&self, i: usize, j: usize) -> Loc {
        self.policy
            .locations
            .allow_from
            .get(i)
            .and_then(|v| v.get(j))
            .copied()
            .unwrap_or_else(|| self.rule_loc(i))
    }

    /// Duplicates are dropped in validation, so an entry's place is known only when none were.
    fn allow_cgroup_loc(&self, i: usize, j: usize) -> Loc {
        let locs = self.policy.locations.allow_cgroups.get(i);
        match locs {
            Some(v) if v.len() == self.policy.verdict.rules[i].allow_cgroups.len() => v[j],
            _ => self.rule_loc(i),
        }
    }

    /// Every port the rule covers, as text.
    fn rule_ports(&self, r: &Rule) -> String {
        fmt_ports(proto_label(r.protocol), &normalize(r.ports.clone()))
    }

    fn open_to_everyone(&mut self) {
        for (i, r) in self.policy.verdict.rules.iter().enumerate() {
            let v4 = r.allow_from.iter().any(|p| p.len == 0 && p.addr.is_ipv4());
            let v6 = r.allow_from.iter().any(|p| p.len == 0 && p.addr.is_ipv6());
            for (j, p) in r.allow_from.iter().enumerate().filter(|(_, p)| p.len == 0) {
                let (family, other) = if p.addr.is_ipv4() {
                    ("IPv4", v6)
                } else {
                    ("IPv6", v4)
                };
                let tail = if other {
                    " With both 0.0.0.0/0 and ::/0 the rule refuses no remote sender at all: if the port is meant to be public, remove the rule".to_string()
                } else {
                    format!(
                        " The rule still refuses {} senders it does not list",
                        if p.addr.is_ipv4() { "IPv6" } else { "IPv4" }
                    )
                };
                let at = self.allow_from_loc(i, j);
                let verb = if r.ports.len() == 1 && r.protocol != Protocol::Any {
                    "is"
                } else {
                    "are"
                };
                self.warn(at, format!(
                    "rule {:?} allows {p}, every {family} address: {} {verb} open to any {family} sender.{tail}",
                    r.name, self.rule_ports(r)
                ));
            }
        }
    }

    fn no_allow_list(&mut self) {
        for (i, r) in self.policy.verdict.rules.iter().enumerate() {
            if r.allow_from.is_empty() && r.allow_cgroups.is_empty() {
                let overlaps = self.policy.verdict.rules.iter().enumerate().any(|(k, o)| {
                    k != i
                        && common_protocol(r.protocol, o.protocol).is_some()
                        && !intersect(&normalize(r.ports.clone()), &normalize(o.ports.clone()))
                            .is_empty()
                });
                let except = if overlaps {
                    " (except where another rule covers the same ports: its allow list then applies)"
                } else {
                    ""
                };
                let at = self.rule_loc(i);
                self.warn(at, format!(
                    "rule {:?} has neither allow_from nor allow_cgroups: every packet to {} is {}, from other hosts and from this host's own processes alike{except}; add an allow list, or remove the rule if the port should stay open",
                    r.name, self.rule_ports(r), refuses(r.mode)
                ));
            }
        }
    }

    fn overlapping_rules(&mut self) {
        let rules = &self.policy.verdict.rules;
        // Normalized once, with their bounds: a policy at the rule limit has 134M pairs.
        let ports: Vec<Vec<PortRange>> = rules.iter().map(|r| normalize(r.ports.clone())).collect();
        let bounds: Vec<(u16, u16)> = ports
            .iter()
            .map(|p| match (p.first(), p.last()) {
                (Some(f), Some(l)) => (f.first, l.last),
                _ => (1, 0),
            })
            .collect();
        for j in 0..rules.len() {
            let (bf, bl) = bounds[j];
            for i in 0..j {
                let (af, al) = bounds[i];
                if al < bf || bl < af || af > al {
                    continue;
                }
                let (a, b) = (&rules[i], &rules[j]);
                let Some(proto) = common_protocol(a.protocol, b.protocol) else {
                    continue;
                };
                let common = intersect(&ports[i], &ports[j]);
                if common.is_empty() {
                    continue;
                }
                let modes = if a.mode != b.mode {
                    "; and as one of them enforces, both are enforced there (the audit one too)"
                } else {
                    ""
                };
                let at = self.ports_loc(j);
                self.warn(at, format!(
                    "rules {:?} (line {}) and {:?} both cover {}: on those ports their allow lists add up (a sender either rule allows gets in){modes}; give each port to one rule",
                    a.name, self.rule_loc(i).line, b.name, fmt_ports(proto_label(proto), &common)
                ));
            }
        }
    }

    fn ephemeral(&mut self, facts: &HostFacts) {
        let Some(eph) = facts.ephemeral else { return };
        for (i, r) in self.policy.verdict.rules.iter().enumerate() {
            let hits = ephemeral_overlap(self.policy, r, eph, &facts.reserved);
            if hits.is_empty() {
                continue;
            }
            let at = self.ports_loc(i);
            self.warn(at, format!(
                "rule {:?} protects {}, inside the ephemeral port range {} (net.ipv4.ip_local_port_range): this host's own outgoing connections take their local ports from that range, so the replies to them arrive bound for a protected port and are judged by this rule like any other packet; a reply from a server the rule does not allow is {}. Move the service out of the range, narrow the range, or list the ports in net.ipv4.ip_local_reserved_ports",
                r.name, fmt_sets(&hits), fmt_range(eph), refuses(r.mode)
            ));
        }
    }

    fn cgroups(&mut self, facts: &HostFacts) {
        let attach = self.policy.attach.cgroup.clone();
        if let Some(cg) = &facts.cgroups {
            if !(cg.exists)(&attach) {
                let at = self.policy.locations.cgroup;
                self.warn(at, format!(
                    "the attach cgroup {attach:?} does not exist under {}: `enforcer run` (and a reload onto it) cannot attach the cgroup programs until it is created",
                    cg.mount.display()
                ));
            }
        }
        for (i, r) in self.policy.verdict.rules.iter().enumerate() {
            for (j, c) in r.allow_cgroups.iter().enumerate() {
                let at = self.allow_cgroup_loc(i, j);
                if !cgroup_within(c, &attach) {
                    self.warn(at, format!(
                        "cgroup {c:?} (allowed by rule {:?}) lies outside the attach cgroup {attach:?}: the cgroup programs never see its processes' sockets, so this entry allows nothing",
                        r.name
                    ));
                } else if let Some(cg) = &facts.cgroups {
                    if !(cg.exists)(c) {
                        self.warn(at, format!(
                            "cgroup {c:?} (allowed by rule {:?}) does not exist under {} yet: the entry allows nothing until it is created (the daemon picks it up then; a misspelt path never matches)",
                            r.name, cg.mount.display()
                        ));
                    }
                }
            }
        }
    }

    fn sshd(&mut self, facts: &HostFacts) {
        let failsafe = failsafe_ports(self.policy, Protocol::Tcp);
        for &port in &facts.sshd_ports {
            let one = [PortRange {
                first: port,
                last: port,
            }];
            if !intersect(&one, &failsafe).is_empty() {
                continue;
            }
            let covering: Vec<usize> = self
                .policy
                .verdict
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    concrete(r.protocol).contains(&Protocol::Tcp)
                        && r.ports.iter().any(|p| p.contains(port))
                })
                .map(|(i, _)| i)
                .collect();
            for &i in &covering {
                let r = &self.policy.verdict.rules[i];
                let at = self.ports_loc(i);
                self.warn(at, format!(
                    "rule {:?} protects tcp/{port}, where this host's sshd listens, and tcp/{port} is not a failsafe port: SSH from addresses the rule does not allow is {}, so a wrong allow list locks you out (keep \"tcp/{port}\" in [failsafe] ports unless that is meant)",
                    r.name, refuses(r.mode)
                ));
            }
            if let (Some(at), Some(&first)) = (self.policy.locations.failsafe, covering.first()) {
                let name = &self.policy.verdict.rules[first].name;
                let what = if self.policy.verdict.failsafe.is_empty() {
                    "the [failsafe] list is empty".to_string()
                } else {
                    format!("the [failsafe] list leaves out tcp/{port}")
                };
                self.warn(at, format!(
                    "{what} while sshd listens on tcp/{port}, which rule {name:?} protects: nothing keeps SSH reachable if the policy is wrong (lockout risk)"
                ));
            }
        }
    }

    fn shadowed_by_failsafe(&mut self) {
        let where_ = match self.policy.locations.failsafe {
            Some(l) => format!("[failsafe] at line {}", l.line),
            None => "the default failsafe".to_string(),
        };
        for (i, r) in self.policy.verdict.rules.iter().enumerate() {
            let shadowed: Vec<(Protocol, Vec<PortRange>)> = concrete(r.protocol)
                .iter()
                .map(|p| {
                    (
                        *p,
                        intersect(
                            &normalize(r.ports.clone()),
                            &failsafe_ports(self.policy, *p),
                        ),
                    )
                })
                .filter(|(_, s)| !s.is_empty())
                .collect();
            if shadowed.is_empty() {
                continue;
            }
            let none_left = concrete(r.protocol)
                .iter()
                .all(|p| judged_ports(self.policy, r, *p).is_empty());
            let tail = if none_left {
                ": the rule has no effect at all"
            } else {
                ""
            };
            let at = self.ports_loc(i);
            self.warn(at, format!(
                "rule {:?}: {} failsafe ({where_}), never judged, so the rule does not apply there{tail}",
                r.name,
                match shadowed.as_slice() {
                    [(_, s)] if s.len() == 1 && s[0].first == s[0].last => format!("{} is", fmt_sets(&shadowed)),
                    _ => format!("{} are", fmt_sets(&shadowed)),
                }
            ));
        }
    }
}

impl Linter<'_> {
    /// Allow entries whose `expires` has passed: they no longer allow anything.
    /// A prefix that holds one of this host's own addresses admits remote senders in it,
    /// never this host's processes (judged by their cgroup): say so where it is written.
    fn host_addresses(&mut self, facts: &HostFacts) {
        let loopback: [std::net::IpAddr; 2] = [
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ];
        for (i, r) in self.policy.verdict.rules.iter().enumerate() {
            for (j, p) in r.allow_from.iter().enumerate() {
                if p.len == 0 {
                    // Allow-all prefixes have their own warning.
                    continue;
                }
                let Some(a) = loopback
                    .iter()
                    .chain(&facts.local_addrs)
                    .find(|a| p.contains(**a))
                else {
                    continue;
                };
                let at = self.allow_from_loc(i, j);
                self.warn(at, format!(
                    "{p} in rule {:?} holds {a}, an address of this host: it admits remote senders in it, not this host's own processes (they are judged by allow_cgroups; allow_cgroups = [\"/\"] admits every local process)",
                    r.name
                ));
            }
        }
    }

    /// Listeners on protected ports that the programs cannot fully guard.
    fn coverage(&mut self, facts: &HostFacts) {
        if facts.listeners.is_empty() {
            return;
        }
        let coverage = crate::scan::Coverage {
            cgroup: self.policy.attach.cgroup.clone(),
            xdp: facts
                .ethernet_ifaces
                .iter()
                .filter(|n| {
                    self.policy
                        .attach
                        .interfaces
                        .iter()
                        .any(|p| crate::policy::values::glob_match(p, n))
                })
                .cloned()
                .collect(),
        };
        let report = crate::scan::report(
            Some(self.policy),
            &facts.listeners,
            Some(&coverage),
            None,
            &[],
        );
        for f in &report.sockets {
            let Some(line) = f.gap_line() else { continue };
            let rule = f
                .rules
                .first()
                .and_then(|n| self.policy.verdict.rules.iter().position(|r| &r.name == n))
                .unwrap_or(0);
            let at = self.ports_loc(rule);
            self.warn(at, line);
        }
    }

    fn lapsed(&mut self, facts: &HostFacts) {
        for e in &self.policy.expiring {
            if e.expires_unix <= facts.now_unix {
                let what = match &e.entry {
                    crate::policy::Entry::From(f) => format!("allow_from entry {f}"),
                    crate::policy::Entry::Cgroup(c) => format!("allow_cgroups entry {c}"),
                };
                let rule = &self.policy.verdict.rules[e.rule].name;
                self.warn(
                    e.at,
                    format!("{what} of rule {rule:?} expired at {}: it has lapsed and allows nothing (remove it, or move its expiry)", crate::clock::rfc3339(e.expires_unix)),
                );
            }
        }
    }
}

/// Every warning for `policy` on a host with `facts`, in file order.
pub fn lint(policy: &Policy, facts: &HostFacts) -> Vec<Diagnostic> {
    let mut l = Linter {
        policy,
        file: policy.path.display().to_string(),
        out: Vec::new(),
    };
    l.open_to_everyone();
    l.no_allow_list();
    l.overlapping_rules();
    l.ephemeral(facts);
    l.cgroups(facts);
    l.sshd(facts);
    l.shadowed_by_failsafe();
    l.lapsed(facts);
    l.host_addresses(facts);
    l.coverage(facts);
    let mut out = l.out;
    out.sort_by_key(|d| (d.line, d.col));
    out
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, path::Path};

    use super::*;

    fn policy(text: &str) -> Policy {
        crate::policy::parse_str(Path::new("p.toml"), text).expect("valid policy")
    }

    fn facts() -> HostFacts {
        HostFacts::default()
    }

    fn with_cgroups(existing: &[&str]) -> HostFacts {
        let set: HashSet<String> = existing.iter().map(|s| s.to_string()).collect();
        HostFacts {
            cgroups: Some(CgroupFacts {
                mount: "/sys/fs/cgroup".into(),
                exists: Box::new(move |p| set.contains(p)),
            }),
            ..HostFacts::default()
        }
    }

    fn warnings(text: &str, facts: &HostFacts) -> Vec<String> {
        lint(&policy(text), facts)
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    fn r(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn lapsed_entries_are_named() {
        let text = "[[rule]]\nname = \"pg\"\nports = [5432]\nallow_from = [\"10.0.0.0/8\", { from = \"192.0.2.0/24\", expires = \"2026-01-01T00:00:00Z\" }]\n";
        let jan2 = humantime::parse_rfc3339("2026-01-02T00:00:00Z")
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let w = warnings(
            text,
            &HostFacts {
                now_unix: jan2,
                ..HostFacts::default()
            },
        );
        assert!(w.iter().any(|w| w.starts_with("p.toml:4:29: warning: allow_from entry 192.0.2.0/24 of rule \"pg\" expired at 2026-01-01T00:00:00Z")), "{w:?}");
        assert!(warnings(
            text,
            &HostFacts {
                now_unix: jan2 - 2 * 86400,
                ..HostFacts::default()
            }
        )
        .iter()
        .all(|w| !w.contains("expired")));
    }

    #[test]
    fn port_sets() {
        assert_eq!(
            normalize(vec![r(5, 9), r(1, 3), r(4, 4), r(20, 30), r(25, 26)]),
            vec![r(1, 9), r(20, 30)]
        );
        assert_eq!(
            intersect(&[r(1, 10), r(20, 30)], &[r(5, 25)]),
            vec![r(5, 10), r(20, 25)]
        );
        assert_eq!(
            subtract(&[r(1, 10)], &[r(3, 4), r(10, 10)]),
            vec![r(1, 2), r(5, 9)]
        );
        assert_eq!(subtract(&[r(1, 65535)], &[r(1, 65535)]), vec![]);
        assert_eq!(
            subtract(&[r(65535, 65535)], &[r(1, 1)]),
            vec![r(65535, 65535)]
        );
        assert_eq!(
            normalize(vec![r(65535, 65535), r(1, 65534)]),
            vec![r(1, 65535)]
        );
        assert_eq!(
            parse_ephemeral_range("32768\t60999\n"),
            Some(r(32768, 60999))
        );
        assert_eq!(parse_ephemeral_range("9 1"), None);
        assert_eq!(parse_reserved_ports("\n"), vec![]);
        assert_eq!(
            parse_reserved_ports("8080,9000-9010,8081\n"),
            vec![r(8080, 8081), r(9000, 9010)]
        );
    }

    #[test]
    fn a_careful_policy_has_no_warnings() {
        let text = "[[rule]]\nname = \"db\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.0.0.0/8\"]\nallow_cgroups = [\"/api\"]\n";
        let mut f = with_cgroups(&["/", "/api"]);
        f.ephemeral = Some(r(32768, 60999));
        f.sshd_ports = vec![22];
        assert_eq!(warnings(text, &f), Vec::<String>::new());
    }

    #[test]
    fn allowing_everyone_is_located_at_the_entry() {
        let text = "[[rule]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [8080]\nallow_from = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\n";
        let w = warnings(text, &facts());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("p.toml:5:29: warning: rule \"web\" allows 0.0.0.0/0, every IPv4 address: tcp/8080 is open to any IPv4 sender. The rule still refuses IPv6"), "{}", w[0]);
        let text =
            "[[rule]]\nname = \"web\"\nports = [8080]\nallow_from = [\"0.0.0.0/0\", \"::/0\"]\n";
        let w = warnings(text, &facts());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[1].starts_with("p.toml:4:28: warning: rule \"web\" allows ::/0"),
            "{}",
            w[1]
        );
        assert!(
            w[1].contains("tcp+udp/8080") && w[1].contains("refuses no remote sender"),
            "{}",
            w[1]
        );
    }

    #[test]
    fn a_rule_without_allow_list_refuses_everyone() {
        let w = warnings(
            "[[rule]]\nname = \"closed\"\nprotocol = \"udp\"\nports = [\"5000-5010\"]\n",
            &facts(),
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("p.toml:2:8: warning: rule \"closed\" has neither allow_from nor allow_cgroups: every packet to udp/5000-5010 is refused"), "{}", w[0]);
        let w = warnings(
            "mode = \"audit\"\n[[rule]]\nname = \"closed\"\nports = [1]\n",
            &facts(),
        );
        assert!(w[0].contains("would-drop (audit mode"), "{}", w[0]);
    }

    #[test]
    fn overlapping_rules_name_both_and_the_ports() {
        let text = "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [\"5000-5100\"]\nallow_from = [\"10.0.0.0/8\"]\n\
                    [[rule]]\nname = \"b\"\nports = [5050, 6000]\nallow_from = [\"192.168.0.0/16\"]\nmode = \"audit\"\n\
                    [[rule]]\nname = \"c\"\nprotocol = \"udp\"\nports = [5050]\nallow_from = [\"10.0.0.0/8\"]\nmode = \"audit\"\n";
        let w = warnings(text, &facts());
        // a/b share tcp/5050; b/c share udp/5050; a/c share nothing (tcp vs udp).
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("p.toml:8:9: warning: rules \"a\" (line 2) and \"b\" both cover tcp/5050: on those ports their allow lists add up"), "{}", w[0]);
        assert!(w[0].contains("both are enforced"), "{}", w[0]);
        assert!(
            w[1].starts_with(
                "p.toml:14:9: warning: rules \"b\" (line 7) and \"c\" both cover udp/5050"
            ),
            "{}",
            w[1]
        );
        assert!(!w[1].contains("enforced"), "{}", w[1]);
    }

    #[test]
    fn protected_ports_in_the_ephemeral_range() {
        let text = "[[rule]]\nname = \"hi\"\nprotocol = \"tcp\"\nports = [\"40000-40010\", 8080]\nallow_from = [\"10.0.0.0/8\"]\n";
        let mut f = facts();
        f.ephemeral = Some(r(32768, 60999));
        let w = warnings(text, &f);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("p.toml:4:9: warning: rule \"hi\" protects tcp/40000-40010, inside the ephemeral port range 32768-60999 (net.ipv4.ip_local_port_range): this host's own outgoing connections"), "{}", w[0]);
        assert!(
            w[0].contains("replies to them arrive bound for a protected port"),
            "{}",
            w[0]
        );
        // Reserved ports are not handed out: no warning for them.
        f.reserved = vec![r(40000, 40010)];
        assert_eq!(warnings(text, &f), Vec::<String>::new());
        f.reserved = vec![r(40000, 40004)];
        assert!(warnings(text, &f)[0].contains("protects tcp/40005-40010,"));
        // Unknown range: silent.
        assert_eq!(warnings(text, &facts()), Vec::<String>::new());
    }

    #[test]
    fn missing_and_misplaced_cgroups() {
        let text = "[attach]\ncgroup = \"/srv\"\n[[rule]]\nname = \"db\"\nports = [5432]\nallow_cgroups = [\"/srv/api\", \"/srv/gone\", \"/elsewhere\"]\n";
        let w = warnings(
            text,
            &with_cgroups(&["/", "/srv", "/srv/api", "/elsewhere"]),
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("p.toml:6:30: warning: cgroup \"/srv/gone\" (allowed by rule \"db\") does not exist under /sys/fs/cgroup yet"), "{}", w[0]);
        assert!(w[1].starts_with("p.toml:6:43: warning: cgroup \"/elsewhere\" (allowed by rule \"db\") lies outside the attach cgroup \"/srv\""), "{}", w[1]);
        let w = warnings(text, &with_cgroups(&["/", "/srv/api", "/srv/gone"]));
        assert!(w[0].starts_with("p.toml:2:10: warning: the attach cgroup \"/srv\" does not exist under /sys/fs/cgroup"), "{w:?}");
        // Without facts only the pure part (outside the attach cgroup) is said.
        assert_eq!(warnings(text, &facts()).len(), 1);
        // Duplicates: the rule's line stands in for the entry.
        let w = warnings(
            "[[rule]]\nname = \"db\"\nports = [1]\nallow_cgroups = [\"/a\", \"/a/\", \"/b\"]\n",
            &with_cgroups(&["/", "/a"]),
        );
        assert!(
            w[0].starts_with("p.toml:2:8: warning: cgroup \"/b\""),
            "{w:?}"
        );
    }

    #[test]
    fn sshd_on_a_protected_port() {
        let mut f = facts();
        f.sshd_ports = vec![22, 2222];
        // Default failsafe tcp/22: a rule on 22 is shadowed (separate lint), not a lockout.
        let text = "[[rule]]\nname = \"ssh\"\nprotocol = \"tcp\"\nports = [22, 2222]\nallow_from = [\"10.0.0.0/8\"]\n";
        let w = warnings(text, &f);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w.iter().any(|w| w.starts_with("p.toml:4:9: warning: rule \"ssh\" protects tcp/2222, where this host's sshd listens")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("tcp/22 is failsafe")), "{w:?}");
        // Emptied failsafe: the rule and the [failsafe] line both warn.
        let text = "[failsafe]\nports = []\n[[rule]]\nname = \"ssh\"\nprotocol = \"tcp\"\nports = [22]\nallow_from = [\"10.0.0.0/8\"]\n";
        let mut f = facts();
        f.sshd_ports = vec![22];
        let w = warnings(text, &f);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("p.toml:2:9: warning: the [failsafe] list is empty while sshd listens on tcp/22, which rule \"ssh\" protects"), "{}", w[0]);
        assert!(
            w[1].starts_with(
                "p.toml:6:9: warning: rule \"ssh\" protects tcp/22, where this host's sshd listens"
            ),
            "{}",
            w[1]
        );
        // Emptied failsafe but no rule on sshd's port: fine.
        let text = "[failsafe]\nports = []\n[[rule]]\nname = \"x\"\nports = [80]\nallow_from = [\"10.0.0.0/8\"]\n";
        assert_eq!(warnings(text, &f), Vec::<String>::new());
        // udp rules do not touch sshd.
        let text = "[failsafe]\nports = []\n[[rule]]\nname = \"x\"\nprotocol = \"udp\"\nports = [22]\nallow_from = [\"10.0.0.0/8\"]\n";
        assert_eq!(warnings(text, &f), Vec::<String>::new());
    }

    #[test]
    fn ports_shadowed_by_failsafe() {
        let text = "[failsafe]\nports = [\"tcp/8000-8010\"]\n[[rule]]\nname = \"a\"\nports = [8005, 9000]\nallow_from = [\"10.0.0.0/8\"]\n\
                    [[rule]]\nname = \"b\"\nprotocol = \"tcp\"\nports = [\"8000-8001\"]\nallow_from = [\"10.0.0.0/8\"]\n";
        let w = warnings(text, &facts());
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0], "p.toml:5:9: warning: rule \"a\": tcp/8005 is failsafe ([failsafe] at line 2), never judged, so the rule does not apply there");
        assert_eq!(w[1], "p.toml:10:9: warning: rule \"b\": tcp/8000-8001 are failsafe ([failsafe] at line 2), never judged, so the rule does not apply there: the rule has no effect at all");
        let w = warnings("[[rule]]\nname = \"s\"\nprotocol = \"tcp\"\nports = [22]\nallow_from = [\"10.0.0.0/8\"]\n", &facts());
        assert!(
            w[0].contains("tcp/22 is failsafe (the default failsafe)")
                && w[0].ends_with("no effect at all"),
            "{w:?}"
        );
    }

    #[test]
    fn failsafe_ports_are_not_counted_as_ephemeral_or_overlapping_judgement() {
        let text = "[failsafe]\nports = [\"any/40000\"]\n[[rule]]\nname = \"a\"\nports = [40000]\nallow_from = [\"10.0.0.0/8\"]\n";
        let mut f = facts();
        f.ephemeral = Some(r(32768, 60999));
        let w = warnings(text, &f);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("tcp+udp/40000 are failsafe"), "{w:?}");
    }

    #[test]
    fn a_prefix_holding_the_host_address_is_named() {
        let text = "[[rule]]\nname = \"api\"\nports = [8080]\nallow_from = [\"10.0.0.0/8\", \"192.0.2.0/24\", \"127.0.0.0/8\"]\n";
        let f = HostFacts {
            local_addrs: vec!["10.1.2.3".parse().unwrap()],
            ..HostFacts::default()
        };
        let w = warnings(text, &f);
        let hits: Vec<&String> = w
            .iter()
            .filter(|w| w.contains("an address of this host"))
            .collect();
        assert_eq!(hits.len(), 2, "{w:?}");
        assert!(
            hits[0].starts_with("p.toml:4:")
                && hits[0].contains("10.0.0.0/8")
                && hits[0].contains("10.1.2.3"),
            "{hits:?}"
        );
        assert!(
            hits[1].contains("127.0.0.0/8") && hits[1].contains("127.0.0.1"),
            "{hits:?}"
        );
    }
}

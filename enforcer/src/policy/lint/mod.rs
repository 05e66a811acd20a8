//! Warnings about a valid policy: what is legal but likely wrong, each located at the line
//! that causes it.
//!
//! [`lint`] is pure: it judges a [`Policy`] against [`HostFacts`] (the ephemeral port range,
//! which cgroups exist, where sshd listens), which [`HostFacts::gather`] reads from the
//! host separately, so tests can feed made-up facts.

mod facts;
#[cfg(test)]
mod tests;

use enforcer_common::model::{policy::cgroup_within, Mode, PortRange, Protocol, Rule};

use super::{
    diag::{Diagnostic, Severity},
    ports::{
        common_protocol, concrete, ephemeral_overlap, failsafe_ports, fmt_ports, fmt_range,
        fmt_sets, intersect, judged_ports, normalize, proto_label,
    },
    Loc, Policy,
};

pub use facts::{CgroupFacts, HostFacts};

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
        let coverage = crate::policy::exposure::Coverage {
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
        let report = crate::policy::exposure::report(
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

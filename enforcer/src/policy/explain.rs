//! "Why was this dropped (or let in)?": a described packet judged by the reference model
//! against a policy, with the rule and the allow entry that decided.

use std::net::IpAddr;

use enforcer_common::{
    consts::{IPPROTO_TCP, IPPROTO_UDP},
    model::{
        self,
        policy::{cgroup_level, cgroup_within},
        Context, Parsed, VerdictPolicy, L4,
    },
    reason::{Hook, Reason},
};
use serde::{Deserialize, Serialize};

/// A packet to explain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// "tcp" or "udp".
    pub proto: String,
    pub src: IpAddr,
    pub dport: u16,
    /// Defaults to an address of this host (loopback of the source's family).
    #[serde(default)]
    pub dst: Option<IpAddr>,
    #[serde(default)]
    pub sport: Option<u16>,
    /// The sender's cgroup: a local process (judged at its socket); absent, a remote
    /// sender (judged at XDP and cgroup ingress).
    #[serde(default)]
    pub cgroup: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub verdict: String,
    pub reason: String,
    pub hook: String,
    /// The rule that decided.
    pub rule: Option<String>,
    /// The allow entry that let it in (a prefix or a cgroup).
    pub matched: Option<String>,
    /// Every rule protecting this protocol and port.
    pub covering_rules: Vec<String>,
    pub failsafe: bool,
    /// One sentence for people.
    pub text: String,
}

pub fn protocol_number(p: &str) -> Result<u8, String> {
    match p {
        "tcp" => Ok(IPPROTO_TCP),
        "udp" => Ok(IPPROTO_UDP),
        other => Err(format!(
            "protocol must be \"tcp\" or \"udp\", not {other:?}"
        )),
    }
}

/// Judges `q` under `policy` with the reference model the kernel is held to.
pub fn explain(policy: &VerdictPolicy, q: &Query) -> Result<Explanation, String> {
    let proto = protocol_number(&q.proto)?;
    let dst = q.dst.unwrap_or(match q.src {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    });
    if dst.is_ipv4() != q.src.is_ipv4() {
        return Err("src and dst must be of the same family".into());
    }
    let cgroup = match &q.cgroup {
        Some(c) => Some(crate::policy::values::normalize_cgroup(c)?),
        None => None,
    };
    let hook = if cgroup.is_some() {
        Hook::CgroupEgress
    } else {
        Hook::Xdp
    };
    let parsed = Parsed::Ip {
        src: q.src,
        dst,
        l4: L4::Ports {
            proto,
            sport: q.sport.unwrap_or(40000),
            dport: q.dport,
            complete: true,
        },
    };
    let local = [dst];
    // With a cgroup: a process of this host sending, judged by its cgroup. Without: a
    // remote sender on an ordinary interface, judged by its address.
    let ctx = Context {
        sender_cgroup: cgroup.as_deref(),
        ..Context::remote(hook, &local)
    };
    let j = model::judge(policy, &ctx, &parsed);
    let covering: Vec<String> = policy
        .rules
        .iter()
        .filter(|r| r.covers(proto, q.dport))
        .map(|r| r.name.clone())
        .collect();
    let rule = j.rule.map(|i| policy.rules[i].name.clone());
    let matched = match (j.reason, j.rule) {
        (Reason::AllowedSource, Some(i)) => policy.rules[i]
            .allow_from
            .iter()
            .filter(|p| p.contains(q.src))
            .max_by_key(|p| p.len)
            .map(|p| p.to_string()),
        (Reason::AllowedCgroup, Some(i)) => policy.rules[i]
            .allow_cgroups
            .iter()
            .filter(|c| cgroup.as_deref().is_some_and(|s| cgroup_within(s, c)))
            .max_by_key(|c| cgroup_level(c))
            .cloned(),
        _ => None,
    };
    let who = match &cgroup {
        Some(c) => format!("{} {}:{} from cgroup {c}", q.proto, q.src, q.dport),
        None => format!("{} {} -> {}:{}", q.proto, q.src, dst, q.dport),
    };
    let text = match j.reason {
        Reason::Failsafe => format!(
            "allow: {who}: port {} is a failsafe port, never judged",
            q.dport
        ),
        Reason::NotProtected => format!("allow: {who}: no rule protects {}/{}", q.proto, q.dport),
        Reason::AllowedSource => format!(
            "allow: {who}: rule {:?} allows {}",
            rule.clone().unwrap_or_default(),
            matched.clone().unwrap_or_default()
        ),
        Reason::AllowedCgroup => format!(
            "allow: {who}: rule {:?} allows cgroup {} and its descendants",
            rule.clone().unwrap_or_default(),
            matched.clone().unwrap_or_default()
        ),
        _ => format!(
            "{}: {who}: protected by {}; no allow_from entry contains {}{}",
            j.verdict.name(),
            covering
                .iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            q.src,
            if cgroup.is_some() {
                " and no allow_cgroups entry contains the sender's cgroup"
            } else {
                " (a remote sender: cgroups do not apply)"
            }
        ),
    };
    Ok(Explanation {
        verdict: j.verdict.name().into(),
        reason: j.reason.name().into(),
        hook: hook.name().into(),
        rule,
        matched,
        covering_rules: covering,
        failsafe: j.reason == Reason::Failsafe,
        text,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy() -> VerdictPolicy {
        crate::policy::parse_str(
            Path::new("t.toml"),
            "[[rule]]\nname = \"postgres\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.0.0.0/8\", \"10.1.0.0/16\"]\nallow_cgroups = [\"/system.slice\"]\n",
        )
        .unwrap()
        .verdict
    }

    fn q(src: &str, dport: u16, cgroup: Option<&str>) -> Query {
        Query {
            proto: "tcp".into(),
            src: src.parse().unwrap(),
            dport,
            dst: None,
            sport: None,
            cgroup: cgroup.map(Into::into),
        }
    }

    #[test]
    fn names_the_rule_and_the_longest_entry() {
        let e = explain(&policy(), &q("10.1.2.3", 5432, None)).unwrap();
        assert_eq!(
            (
                e.verdict.as_str(),
                e.reason.as_str(),
                e.rule.as_deref(),
                e.matched.as_deref()
            ),
            (
                "allow",
                "allowed-by-source",
                Some("postgres"),
                Some("10.1.0.0/16")
            )
        );
        let e = explain(&policy(), &q("203.0.113.7", 5432, None)).unwrap();
        assert_eq!(
            (
                e.verdict.as_str(),
                e.reason.as_str(),
                e.rule.as_deref(),
                e.matched
            ),
            ("drop", "dropped-source", Some("postgres"), None)
        );
        assert!(
            e.text.contains("no allow_from entry contains 203.0.113.7"),
            "{}",
            e.text
        );
        let e = explain(
            &policy(),
            &q("203.0.113.7", 5432, Some("/system.slice/api.service")),
        )
        .unwrap();
        assert_eq!(
            (e.reason.as_str(), e.matched.as_deref()),
            ("allowed-by-cgroup", Some("/system.slice"))
        );
        let e = explain(&policy(), &q("203.0.113.7", 22, None)).unwrap();
        assert!(e.failsafe);
        let e = explain(&policy(), &q("203.0.113.7", 80, None)).unwrap();
        assert_eq!(e.reason, "not-protected");
    }

    #[test]
    fn bad_queries_say_why() {
        let mut bad = q("10.0.0.1", 5432, None);
        bad.proto = "icmp".into();
        assert!(explain(&policy(), &bad)
            .unwrap_err()
            .contains("protocol must be"));
        let mut mixed = q("10.0.0.1", 5432, None);
        mixed.dst = Some("::1".parse().unwrap());
        assert!(explain(&policy(), &mixed)
            .unwrap_err()
            .contains("same family"));
        assert!(explain(&policy(), &q("10.0.0.1", 5432, Some("relative")))
            .unwrap_err()
            .contains("must start with '/'"));
    }
}

//! Policy file -> validated policy: every value checked, every problem located.

use std::{collections::HashSet, path::Path};

use enforcer_common::{
    consts::MAX_RULES,
    model::{Mode, PortRange, Prefix, Protocol, Rule, VerdictPolicy},
};
use toml::Spanned;

mod sinks;

use super::{Attach, Entry, Expiring, Loc, Locations, Policy, Rates, XdpModeSetting};

pub use super::values::parse_prefix;
use super::{
    diag::{Diagnostic, Locator, PolicyError, Severity},
    file::{PolicyFile, RuleFile},
    values::{normalize_cgroup, parse_port_number, parse_port_range},
};

/// Reads and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
        diagnostics: vec![Diagnostic {
            file: path.display().to_string(),
            line: 0,
            col: 0,
            severity: Severity::Error,
            message: format!("cannot read the policy: {e}"),
        }],
    })?;
    parse_str(path, &text)
}

/// Validates policy text (`path` names it in messages).
pub fn parse_str(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let loc = Locator::new(path, text);
    let mut file: PolicyFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        PolicyError {
            diagnostics: vec![loc.at(offset, Severity::Error, e.message().trim().to_string())],
        }
    })?;
    let mut v = Validator {
        loc: &loc,
        errors: Vec::new(),
        expiring: Vec::new(),
        rule_index: 0,
    };
    let tests = std::mem::take(&mut file.tests);
    let mut policy = v.policy(path, text, file);
    if v.errors.is_empty() {
        // A policy whose own tests fail cannot be applied: check and reload refuse it alike.
        let (cases, errors) = super::selftest::run(&loc, &policy, &tests);
        policy.tests = cases;
        v.errors.extend(errors);
    }
    if v.errors.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyError {
            diagnostics: v.errors,
        })
    }
}

pub(super) struct Validator<'a> {
    loc: &'a Locator<'a>,
    errors: Vec<Diagnostic>,
    expiring: Vec<Expiring>,
    rule_index: usize,
}

impl Validator<'_> {
    pub(super) fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.errors
            .push(self.loc.at(at.span().start, Severity::Error, message));
    }

    fn policy(&mut self, path: &Path, text: &str, file: PolicyFile) -> Policy {
        let mode = file.mode.as_ref().map_or(Mode::Enforce, |m| self.mode(m));
        let xdp_mode = match &file.attach.xdp_mode {
            None => XdpModeSetting::Auto,
            Some(m) => {
                match m.get_ref().as_str() {
                    "auto" => XdpModeSetting::Auto,
                    "native" => XdpModeSetting::Native,
                    "generic" => XdpModeSetting::Generic,
                    other => {
                        self.error(m, format!("xdp_mode must be \"auto\", \"native\" or \"generic\", not {other:?}"));
                        XdpModeSetting::Auto
                    }
                }
            }
        };
        let mut interfaces = Vec::new();
        for i in &file.attach.interfaces {
            let name = i.get_ref();
            if name.is_empty()
                || name.len() > 15
                || name.contains(['/', ' ', '\t', '\n', ':'])
                || name == "."
                || name == ".."
            {
                self.error(i, format!("{name:?} is not a valid interface name or pattern (1 to 15 characters, no '/', ':' or spaces; '*' and '?' match)"));
            } else if interfaces.contains(name) {
                self.error(i, format!("interface {name:?} is listed twice"));
            } else {
                interfaces.push(name.clone());
            }
        }
        let cgroup = match &file.attach.cgroup {
            None => "/".to_string(),
            Some(c) => self.cgroup_path(c).unwrap_or_default(),
        };
        let failsafe = match &file.failsafe {
            None => vec![(
                Protocol::Tcp,
                PortRange {
                    first: 22,
                    last: 22,
                },
            )],
            Some(f) => f
                .ports
                .get_ref()
                .iter()
                .filter_map(|p| self.failsafe_port(p))
                .collect(),
        };
        if file.rules.len() > MAX_RULES as usize {
            self.errors.push(self.loc.at(
                0,
                Severity::Error,
                format!(
                    "{} rules; the limit is {MAX_RULES} rules per policy",
                    file.rules.len()
                ),
            ));
        }
        let rate = |v: &mut Self, r: &Option<Spanned<i64>>, default: u32| match r {
            None => default,
            Some(x) if (0..=10_000_000).contains(x.get_ref()) => *x.get_ref() as u32,
            Some(x) => {
                v.error(
                    x,
                    format!(
                        "{} is not a rate (0 to 10000000 events per second; 0 for no limit)",
                        x.get_ref()
                    ),
                );
                default
            }
        };
        let per_rule = rate(self, &file.audit.rate_per_rule, 1000);
        let global = rate(self, &file.audit.rate_global, 20_000);
        let burst = rate(self, &file.audit.burst, per_rule.max(1));
        let rates = Rates {
            per_rule,
            global,
            burst: burst.max(1),
        };
        let mut names = HashSet::new();
        let rules = file
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if !names.insert(r.name.get_ref().clone()) {
                    self.error(
                        &r.name,
                        format!(
                            "a rule named {:?} already exists; rule names must be unique",
                            r.name.get_ref()
                        ),
                    );
                }
                self.rule_index = i;
                self.rule(r, mode)
            })
            .collect::<Vec<_>>();
        let sinks = self.audit_sinks(file.audit.file.as_ref(), file.audit.syslog.as_ref(), &rules);
        let at = |offset: usize| {
            let d = self.loc.at(offset, Severity::Warning, "");
            Loc {
                line: d.line,
                col: d.col,
            }
        };
        let locations = Locations {
            rules: file.rules.iter().map(|r| at(r.name.span().start)).collect(),
            allow_from: file
                .rules
                .iter()
                .map(|r| r.allow_from.iter().map(|a| at(a.span().start)).collect())
                .collect(),
            allow_cgroups: file
                .rules
                .iter()
                .map(|r| r.allow_cgroups.iter().map(|a| at(a.span().start)).collect())
                .collect(),
            ports: file
                .rules
                .iter()
                .map(|r| at(r.ports.span().start))
                .collect(),
            interfaces: file
                .attach
                .interfaces
                .iter()
                .map(|i| at(i.span().start))
                .collect(),
            cgroup: file
                .attach
                .cgroup
                .as_ref()
                .map_or(Loc { line: 1, col: 1 }, |c| at(c.span().start)),
            failsafe: file.failsafe.as_ref().map(|f| at(f.ports.span().start)),
        };
        Policy {
            path: path.to_path_buf(),
            locations,
            hash: sha256_hex(text.as_bytes()),
            attach: Attach {
                interfaces,
                xdp_mode,
                cgroup,
            },
            report_allowed: file.audit.allowed,
            rates,
            sinks,
            verdict: VerdictPolicy {
                mode,
                rules,
                failsafe,
            },
            tests: Vec::new(),
            expiring: std::mem::take(&mut self.expiring),
        }
    }

    fn mode(&mut self, m: &Spanned<String>) -> Mode {
        match m.get_ref().as_str() {
            "enforce" => Mode::Enforce,
            "audit" => Mode::Audit,
            other => {
                self.error(
                    m,
                    format!("mode must be \"enforce\" or \"audit\", not {other:?}"),
                );
                Mode::Enforce
            }
        }
    }

    fn protocol(&mut self, p: &Spanned<String>) -> Option<Protocol> {
        match p.get_ref().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "any" => Some(Protocol::Any),
            other => {
                self.error(
                    p,
                    format!("protocol must be \"tcp\", \"udp\" or \"any\", not {other:?}"),
                );
                None
            }
        }
    }

    fn rule(&mut self, r: &RuleFile, global: Mode) -> Rule {
        let name = r.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.error(&r.name, format!("rule name {name:?} must be non-empty and use only letters, digits, '-', '_' and '.'"));
        }
        let protocol = r
            .protocol
            .as_ref()
            .map_or(Some(Protocol::Any), |p| self.protocol(p))
            .unwrap_or(Protocol::Any);
        if r.ports.get_ref().is_empty() {
            self.error(&r.ports, format!("rule {name:?} lists no ports"));
        }
        let ports = r
            .ports
            .get_ref()
            .iter()
            .filter_map(|p| self.port(p))
            .collect();
        let mut allow_from = Vec::new();
        for p in &r.allow_from {
            let Some((text, expires)) = self.entry(p, "from") else {
                continue;
            };
            let Some(prefix) = self.prefix(&text) else {
                continue;
            };
            if let Some(t) = expires {
                self.expire(Entry::From(prefix.to_string()), t, p.span().start);
            }
            allow_from.push(prefix);
        }
        let mut allow_cgroups: Vec<String> = Vec::new();
        for c in &r.allow_cgroups {
            let Some((text, expires)) = self.entry(c, "cgroup") else {
                continue;
            };
            if let Some(path) = self.cgroup_path(&text) {
                if let Some(t) = expires {
                    self.expire(Entry::Cgroup(path.clone()), t, c.span().start);
                }
                if !allow_cgroups.contains(&path) {
                    allow_cgroups.push(path);
                }
            }
        }
        let mode = r.mode.as_ref().map_or(global, |m| self.mode(m));
        Rule {
            name: name.clone(),
            protocol,
            ports,
            allow_from,
            allow_cgroups,
            mode,
        }
    }

    /// An allow entry: "TEXT", or { KEY = "TEXT", expires = "RFC 3339" }.
    fn entry(
        &mut self,
        v: &Spanned<toml::Value>,
        key: &str,
    ) -> Option<(Spanned<String>, Option<u64>)> {
        let spanned = |s: &str| Spanned::new(v.span(), s.to_string());
        match v.get_ref() {
            toml::Value::String(s) => Some((spanned(s), None)),
            toml::Value::Table(t) => {
                if let Some(k) = t.keys().find(|k| *k != key && *k != "expires") {
                    self.error(v, format!("unknown key {k:?} in an allow entry (expected {key:?} and \"expires\")"));
                    return None;
                }
                let Some(text) = t.get(key).and_then(|x| x.as_str()) else {
                    self.error(v, format!("an allow entry table needs {key:?} = \"...\""));
                    return None;
                };
                let expires = match t.get("expires") {
                    None => None,
                    Some(e) => {
                        let text_time = match e {
                            toml::Value::String(s) => s.clone(),
                            toml::Value::Datetime(d) => d.to_string(),
                            _ => String::new(),
                        };
                        match humantime::parse_rfc3339_weak(&text_time) {
                            Ok(t) => Some(
                                t.duration_since(std::time::UNIX_EPOCH)
                                    .map_or(0, |d| d.as_secs()),
                            ),
                            Err(_) => {
                                self.error(v, format!("expires must be an RFC 3339 time like \"2026-12-01T00:00:00Z\", not {e}"));
                                return None;
                            }
                        }
                    }
                };
                Some((spanned(text), expires))
            }
            other => {
                self.error(v, format!("an allow entry is a string or a table with {key:?} and \"expires\", not {}", other.type_str()));
                None
            }
        }
    }

    fn expire(&mut self, entry: Entry, expires_unix: u64, offset: usize) {
        let d = self.loc.at(offset, Severity::Warning, "");
        self.expiring.push(Expiring {
            rule: self.rule_index,
            entry,
            expires_unix,
            at: Loc {
                line: d.line,
                col: d.col,
            },
        });
    }

    fn port(&mut self, p: &Spanned<toml::Value>) -> Option<PortRange> {
        let parsed = match p.get_ref() {
            toml::Value::Integer(n) => {
                parse_port_number(*n).map(|n| PortRange { first: n, last: n })
            }
            toml::Value::String(s) => parse_port_range(s),
            other => Err(format!(
                "a port is a number or a \"first-last\" string, not {}",
                other.type_str()
            )),
        };
        parsed.map_err(|e| self.error(p, e)).ok()
    }

    fn failsafe_port(&mut self, p: &Spanned<String>) -> Option<(Protocol, PortRange)> {
        let s = p.get_ref();
        let Some((proto, ports)) = s.split_once('/') else {
            self.error(p, format!("a failsafe port is \"PROTOCOL/PORT\" or \"PROTOCOL/FIRST-LAST\" (like \"tcp/22\"), not {s:?}"));
            return None;
        };
        let proto = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "any" => Protocol::Any,
            other => {
                self.error(
                    p,
                    format!("protocol must be \"tcp\", \"udp\" or \"any\", not {other:?}"),
                );
                return None;
            }
        };
        parse_port_range(ports)
            .map_err(|e| self.error(p, e))
            .ok()
            .map(|r| (proto, r))
    }

    fn prefix(&mut self, p: &Spanned<String>) -> Option<Prefix> {
        parse_prefix(p.get_ref()).map_err(|e| self.error(p, e)).ok()
    }

    fn cgroup_path(&mut self, c: &Spanned<String>) -> Option<String> {
        match normalize_cgroup(c.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(c, e);
                None
            }
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;

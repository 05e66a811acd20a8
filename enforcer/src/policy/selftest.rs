//! `[[test]]` tables: packets and the verdicts the policy must give them, judged by the
//! reference model (the one the kernel is held to). A failing test is an error at its
//! line, so a policy that breaks what must keep working is never applied.

use std::net::IpAddr;

use toml::Spanned;

use super::{
    diag::{Diagnostic, Locator, Severity},
    file::TestFile,
    Policy,
};
use crate::policy::explain::{explain, Query};

/// One `[[test]]` as validated: kept with the policy so `enforcer diff` can compare them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TestCase {
    pub name: String,
    pub query: Query,
    /// "allow", "drop" or "would-drop".
    pub expect: String,
}

/// Judges every test; returns the well-formed ones and a diagnostic per problem.
pub fn run(
    loc: &Locator<'_>,
    policy: &Policy,
    tests: &[TestFile],
) -> (Vec<TestCase>, Vec<Diagnostic>) {
    let mut cases = Vec::new();
    let mut out = Vec::new();
    // Judged as the policy applies now: lapsed entries no longer allow anything.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let policy = policy.effective(now, &[]);
    let mut err = |at: usize, msg: String| out.push(loc.at(at, Severity::Error, msg));
    for t in tests {
        let name = t.name.get_ref();
        let start = t.name.span().start;
        let addr = |s: &Spanned<String>| {
            s.get_ref().parse::<IpAddr>().map_err(|_| {
                (
                    s.span().start,
                    format!("test {name:?}: {:?} is not an IP address", s.get_ref()),
                )
            })
        };
        let port = |p: &Spanned<i64>| {
            u16::try_from(*p.get_ref()).ok().filter(|p| *p > 0).ok_or((
                p.span().start,
                format!(
                    "test {name:?}: port {} is out of range (1 to 65535)",
                    p.get_ref()
                ),
            ))
        };
        let query = (|| {
            Ok::<_, (usize, String)>(Query {
                proto: t.proto.get_ref().clone(),
                src: addr(&t.src)?,
                dport: port(&t.dport)?,
                dst: t.dst.as_ref().map(addr).transpose()?,
                sport: t.sport.as_ref().map(port).transpose()?,
                cgroup: t.cgroup.as_ref().map(|c| c.get_ref().clone()),
            })
        })();
        let query = match query {
            Ok(q) => q,
            Err((at, msg)) => {
                err(at, msg);
                continue;
            }
        };
        let expect = t.expect.get_ref().as_str();
        if !["allow", "drop", "would-drop"].contains(&expect) {
            err(t.expect.span().start, format!("test {name:?}: expect must be \"allow\", \"drop\" or \"would-drop\", not {expect:?}"));
            continue;
        }
        let judged = explain(&policy.verdict, &query);
        cases.push(TestCase {
            name: name.clone(),
            query,
            expect: expect.to_string(),
        });
        match judged {
            Err(e) => err(start, format!("test {name:?}: {e}")),
            Ok(e) if e.verdict != expect => err(
                start,
                format!(
                    "test {name:?} fails: expected {expect}, got {} (decided by {}; {})",
                    e.verdict,
                    e.rule
                        .as_deref()
                        .map_or("no rule".to_string(), |r| format!("rule {r:?}")),
                    e.text
                ),
            ),
            Ok(_) => {}
        }
    }
    (cases, out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::parse_str;

    const POLICY: &str = r#"
[[rule]]
name = "postgres"
protocol = "tcp"
ports = [5432]
allow_from = ["10.0.0.0/8"]
allow_cgroups = ["/system.slice/api.service"]
"#;

    #[test]
    fn passing_tests_let_the_policy_through() {
        let text = format!("{POLICY}\n[[test]]\nname = \"api\"\nproto = \"tcp\"\nsrc = \"10.1.2.3\"\ndport = 5432\nexpect = \"allow\"\n\n[[test]]\nname = \"outsider\"\nproto = \"tcp\"\nsrc = \"203.0.113.7\"\ndport = 5432\nexpect = \"drop\"\n\n[[test]]\nname = \"svc\"\nproto = \"tcp\"\nsrc = \"127.0.0.1\"\ndport = 5432\ncgroup = \"/system.slice/api.service\"\nexpect = \"allow\"\n");
        let p = parse_str(Path::new("p.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.tests.len(), 3);
    }

    #[test]
    fn a_failing_test_refuses_the_policy_naming_test_and_rule() {
        let text = format!("{POLICY}\n[[test]]\nname = \"office reaches postgres\"\nproto = \"tcp\"\nsrc = \"192.0.2.10\"\ndport = 5432\nexpect = \"allow\"\n");
        let e = parse_str(Path::new("p.toml"), &text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("p.toml:10:8: error: test \"office reaches postgres\" fails: expected allow, got drop (decided by rule \"postgres\""), "{msg}");
    }

    #[test]
    fn bad_test_values_are_located() {
        let text = format!("{POLICY}\n[[test]]\nname = \"t\"\nproto = \"tcp\"\nsrc = \"nope\"\ndport = 5432\nexpect = \"allow\"\n");
        assert!(parse_str(Path::new("p.toml"), &text)
            .unwrap_err()
            .to_string()
            .contains("p.toml:12:7: error: test \"t\": \"nope\" is not an IP address"));
        let text = format!("{POLICY}\n[[test]]\nname = \"t\"\nproto = \"tcp\"\nsrc = \"10.0.0.1\"\ndport = 5432\nexpect = \"maybe\"\n");
        assert!(parse_str(Path::new("p.toml"), &text)
            .unwrap_err()
            .to_string()
            .contains("expect must be"));
    }
}

//! Validating `[audit.file]` and `[audit.syslog]`.

use std::path::{Component, Path};

use enforcer_common::model::Rule;
use toml::Spanned;

use super::Validator;
use crate::policy::{
    file::{FileSinkFile, SyslogSinkFile},
    sinks::{
        facility, facility_names, AuditSinks, FileConfig, Filter, SyslogConfig, SyslogTarget,
        DEFAULT_KEEP, DEFAULT_MAX_BYTES, VERDICTS,
    },
    values::parse_prefix,
};

/// Largest rotation size accepted (1 TiB), and the smallest (a few lines).
const MAX_BYTES: i64 = 1 << 40;
const MIN_BYTES: i64 = 4096;
const MAX_KEEP: i64 = 1000;

impl Validator<'_> {
    pub(super) fn audit_sinks(
        &mut self,
        f: Option<&FileSinkFile>,
        s: Option<&SyslogSinkFile>,
        rules: &[Rule],
    ) -> AuditSinks {
        AuditSinks {
            file: f.and_then(|f| self.file_sink(f, rules)),
            syslog: s.and_then(|s| self.syslog_sink(s, rules)),
        }
    }

    fn file_sink(&mut self, f: &FileSinkFile, rules: &[Rule]) -> Option<FileConfig> {
        let p = f.path.get_ref();
        let path = Path::new(p);
        let ok = path.is_absolute()
            && !p.ends_with('/')
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !ok {
            self.error(
                &f.path,
                format!("path must be an absolute file path without \"..\" or \".\", not {p:?}"),
            );
        }
        let max_bytes = self.int(&f.max_bytes, MIN_BYTES, MAX_BYTES, "max_bytes", "bytes");
        let keep = self.int(&f.keep, 1, MAX_KEEP, "keep", "rotated files");
        let filter = self.filter(&f.verdict, &f.rule, &f.src, rules);
        Some(FileConfig {
            path: path.to_path_buf(),
            max_bytes: max_bytes.map_or(DEFAULT_MAX_BYTES, |n| n as u64),
            keep: keep.map_or(DEFAULT_KEEP, |n| n as u32),
            filter: filter?,
        })
        .filter(|_| ok)
    }

    fn syslog_sink(&mut self, s: &SyslogSinkFile, rules: &[Rule]) -> Option<SyslogConfig> {
        let target = SyslogTarget::parse(s.target.get_ref())
            .map_err(|e| self.error(&s.target, e))
            .ok();
        let facility = match &s.facility {
            None => facility("local0"),
            Some(f) => facility(f.get_ref()).or_else(|| {
                self.error(
                    f,
                    format!(
                        "facility must be one of {}, not {:?}",
                        facility_names(),
                        f.get_ref()
                    ),
                );
                None
            }),
        };
        let filter = self.filter(&s.verdict, &s.rule, &s.src, rules);
        Some(SyslogConfig {
            target: target?,
            facility: facility?,
            filter: filter?,
        })
    }

    /// An integer setting within `min..=max`; None when absent (or wrong, reported).
    fn int(
        &mut self,
        v: &Option<Spanned<i64>>,
        min: i64,
        max: i64,
        what: &str,
        unit: &str,
    ) -> Option<i64> {
        let v = v.as_ref()?;
        if (min..=max).contains(v.get_ref()) {
            Some(*v.get_ref())
        } else {
            self.error(
                v,
                format!(
                    "{what} must be from {min} to {max} {unit}, not {}",
                    v.get_ref()
                ),
            );
            None
        }
    }

    /// The filters `enforcer tail` takes; a rule must be one of this policy's.
    fn filter(
        &mut self,
        verdict: &Option<Spanned<String>>,
        rule: &Option<Spanned<String>>,
        src: &Option<Spanned<String>>,
        rules: &[Rule],
    ) -> Option<Filter> {
        let mut ok = true;
        if let Some(v) = verdict {
            if !VERDICTS.contains(&v.get_ref().as_str()) {
                self.error(
                    v,
                    format!(
                        "verdict must be \"allow\", \"drop\" or \"would-drop\", not {:?}",
                        v.get_ref()
                    ),
                );
                ok = false;
            }
        }
        if let Some(r) = rule {
            if !rules.iter().any(|x| &x.name == r.get_ref()) {
                self.error(r, format!("no rule named {:?} in this policy", r.get_ref()));
                ok = false;
            }
        }
        let src = match src {
            None => None,
            Some(s) => match parse_prefix(s.get_ref()) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.error(s, e);
                    ok = false;
                    None
                }
            },
        };
        ok.then(|| Filter {
            verdict: verdict.as_ref().map(|v| v.get_ref().clone()),
            rule: rule.as_ref().map(|r| r.get_ref().clone()),
            src,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::parse_str;
    use std::path::Path;

    const RULE: &str = "[[rule]]\nname = \"db\"\nports = [5432]\n";

    fn parse(audit: &str) -> Result<crate::policy::Policy, String> {
        parse_str(Path::new("p.toml"), &format!("{audit}\n{RULE}")).map_err(|e| e.to_string())
    }

    #[test]
    fn sinks_are_read_with_defaults() {
        let p = parse("[audit.file]\npath = \"/var/log/enforcer/audit.jsonl\"\n[audit.syslog]\ntarget = \"udp://127.0.0.1:514\"\nverdict = \"drop\"\nrule = \"db\"\nsrc = \"10.0.0.0/8\"\n").unwrap();
        let f = p.sinks.file.unwrap();
        assert_eq!(
            (f.max_bytes, f.keep, f.filter.is_empty()),
            (100 << 20, 5, true)
        );
        let s = p.sinks.syslog.unwrap();
        assert_eq!(s.facility, 16);
        assert_eq!(s.filter.rule.as_deref(), Some("db"));
        assert!(parse("").unwrap().sinks.file.is_none());
    }

    #[test]
    fn bad_sinks_are_refused_with_their_place() {
        let e = parse("[audit.file]\npath = \"var/log/a\"\nmax_bytes = 10\nkeep = 0\nverdict = \"dropped\"\nrule = \"nope\"\nsrc = \"10.0.0.1/8\"\n").unwrap_err();
        for want in [
            "p.toml:2:8: error: path must be an absolute",
            "p.toml:3:13: error: max_bytes must be from 4096",
            "p.toml:4:8: error: keep must be from 1",
            "p.toml:5:11: error: verdict must be",
            "p.toml:6:8: error: no rule named \"nope\"",
            "p.toml:7:7: error:",
        ] {
            assert!(e.contains(want), "{want} not in:\n{e}");
        }
        let e = parse("[audit.syslog]\ntarget = \"udp://h\"\nfacility = \"local9\"\n").unwrap_err();
        assert!(
            e.contains("p.toml:2:10: error:") && e.contains("no port"),
            "{e}"
        );
        assert!(
            e.contains("p.toml:3:12: error: facility must be one of"),
            "{e}"
        );
        let e = parse("[audit.syslog]\nfacility = \"local1\"\n").unwrap_err();
        assert!(e.contains("missing field `target`"), "{e}");
        let e = parse("[audit.file]\npath = \"/a\"\nsize = 1\n").unwrap_err();
        assert!(e.contains("unknown field `size`"), "{e}");
    }
}

//! `[audit.file]` and `[audit.syslog]`: where else the audit stream goes. The values the
//! sinks in `crate::events::sink` run with; `validate::sinks` reads them from the file.

use std::{fmt, net::IpAddr, path::PathBuf};

use enforcer_common::model::Prefix;

/// The audit sinks a policy asks for, besides stdout and subscribers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditSinks {
    pub file: Option<FileConfig>,
    pub syslog: Option<SyslogConfig>,
}

pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
pub const DEFAULT_KEEP: u32 = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub keep: u32,
    pub filter: Filter,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyslogTarget {
    Unix(PathBuf),
    /// HOST:PORT
    Udp(String),
    Tcp(String),
}

impl SyslogTarget {
    pub fn parse(s: &str) -> Result<SyslogTarget, String> {
        let host_port = |a: &str| -> Result<String, String> {
            let (host, port) = a
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?} has no port (HOST:PORT)"))?;
            match port.parse::<u16>() {
                Ok(p) if p > 0 && !host.is_empty() => Ok(a.to_string()),
                _ => Err(format!(
                    "{s:?}: expected HOST:PORT with a port from 1 to 65535"
                )),
            }
        };
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                return Err(format!("{s:?}: a unix target needs an absolute path"));
            }
            Ok(SyslogTarget::Unix(p.into()))
        } else if let Some(a) = s.strip_prefix("udp://") {
            host_port(a).map(SyslogTarget::Udp)
        } else if let Some(a) = s.strip_prefix("tcp://") {
            host_port(a).map(SyslogTarget::Tcp)
        } else {
            Err(format!(
                "target must be \"unix:/PATH\", \"udp://HOST:PORT\" or \"tcp://HOST:PORT\", not {s:?}"
            ))
        }
    }
}

impl fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyslogTarget::Unix(p) => write!(f, "unix:{}", p.display()),
            SyslogTarget::Udp(a) => write!(f, "udp://{a}"),
            SyslogTarget::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Facility names (RFC 5424 table 1) and their codes.
const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

pub fn facility(name: &str) -> Option<u8> {
    FACILITIES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

pub fn facility_name(code: u8) -> &'static str {
    FACILITIES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("?", |(n, _)| n)
}

pub fn facility_names() -> String {
    FACILITIES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogConfig {
    pub target: SyslogTarget,
    pub facility: u8,
    pub filter: Filter,
}

pub const VERDICTS: [&str; 3] = ["allow", "drop", "would-drop"];

/// Which lines a sink (or `enforcer tail`) keeps. With any condition set, only packet
/// events that meet all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub verdict: Option<String>,
    pub rule: Option<String>,
    pub src: Option<Prefix>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.verdict.is_none() && self.rule.is_none() && self.src.is_none()
    }

    pub fn keeps(
        &self,
        event: &str,
        verdict: Option<&str>,
        rule: Option<&str>,
        src: Option<IpAddr>,
    ) -> bool {
        if self.is_empty() {
            return true;
        }
        event == "packet"
            && self.verdict.as_deref().is_none_or(|v| verdict == Some(v))
            && self.rule.as_deref().is_none_or(|r| rule == Some(r))
            && self
                .src
                .as_ref()
                .is_none_or(|p| src.is_some_and(|a| p.contains(a)))
    }
}

//! The syslog sink (`[audit.syslog]`): each line as an RFC 5424 message (APP-NAME
//! `enforcer`, MSGID the event kind, the JSON object as MSG) to a unix socket (datagram,
//! or stream with newline-terminated messages), over UDP (one datagram each) or over TCP
//! (octet-counted framing, RFC 6587). A target that goes away is reconnected with
//! backoff; what could not be handed to the socket meanwhile is counted as lost and
//! reported with the next message that goes through.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket},
    os::unix::net::{UnixDatagram, UnixStream},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{info, warn};

pub use crate::policy::sinks::{
    facility, facility_name, facility_names, SyslogConfig as Config, SyslogTarget as Target,
};

use super::{lost_notice, Item, LineWriter, LostCounts, Meta, Origin, Scope};

/// Lines syslog may fall behind the stream before it loses some.
pub const QUEUE: usize = 1 << 14;
const APP_NAME: &str = "enforcer";
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A stuck collector costs at most this per message before the connection is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The RFC 5424 HEADER fields.
pub struct Header<'a> {
    pub pri: u8,
    pub timestamp: &'a str,
    pub hostname: &'a str,
    pub app_name: &'a str,
    pub procid: &'a str,
    pub msgid: &'a str,
}

/// A header field: printable US-ASCII, at most `max` characters, `-` when empty.
fn field(out: &mut Vec<u8>, s: &str, max: usize) {
    let start = out.len();
    out.extend(s.bytes().filter(|b| (33..=126).contains(b)).take(max));
    if out.len() == start {
        out.push(b'-');
    }
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]`.
pub fn format(h: &Header, structured_data: &str, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + msg.len());
    let _ = write!(out, "<{}>1 ", h.pri);
    field(&mut out, h.timestamp, 64);
    out.push(b' ');
    field(&mut out, h.hostname, 255);
    out.push(b' ');
    field(&mut out, h.app_name, 48);
    out.push(b' ');
    field(&mut out, h.procid, 128);
    out.push(b' ');
    field(&mut out, h.msgid, 32);
    out.push(b' ');
    out.extend_from_slice(if structured_data.is_empty() {
        b"-"
    } else {
        structured_data.as_bytes()
    });
    if !msg.is_empty() {
        out.push(b' ');
        out.extend_from_slice(msg);
    }
    out
}

/// An RFC 3339 time with at most the 6 fractional digits RFC 5424 allows.
pub fn timestamp(rfc3339: &str) -> String {
    let Some(dot) = rfc3339.find('.') else {
        return rfc3339.to_string();
    };
    let frac_end = rfc3339[dot + 1..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(rfc3339.len(), |i| dot + 1 + i);
    let keep = (frac_end - dot - 1).min(6);
    format!("{}{}", &rfc3339[..dot + 1 + keep], &rfc3339[frac_end..])
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub fn octet_counted(msg: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg);
    out
}

/// Severity by what happened: refusals and losses are warnings.
fn severity(event: &str, verdict: Option<&str>) -> u8 {
    match (event, verdict) {
        ("packet", Some("drop")) | ("lost", _) => 4,
        ("packet", Some("would-drop")) | ("policy", _) | ("grant", _) => 5,
        _ => 6,
    }
}

/// The message for one audit line (a JSON object, newline-terminated).
pub fn message(facility: u8, meta: &Meta, json: &[u8], procid: &str) -> Vec<u8> {
    let json = json.strip_suffix(b"\n").unwrap_or(json);
    // Every line starts with its time (`{"ts":"...",`).
    let ts = json
        .strip_prefix(b"{\"ts\":\"")
        .and_then(|rest| rest.iter().position(|&b| b == b'"').map(|end| &rest[..end]))
        .and_then(|t| std::str::from_utf8(t).ok())
        .map(timestamp)
        // Lines built from a JSON value (grants) have their keys in another order.
        .or_else(|| {
            let v: serde_json::Value = serde_json::from_slice(json).ok()?;
            v["ts"].as_str().map(timestamp)
        })
        .unwrap_or_else(|| timestamp(&crate::clock::now_rfc3339_nanos()));
    format(
        &Header {
            pri: facility * 8 + severity(&meta.event, meta.verdict),
            timestamp: &ts,
            hostname: &Origin::get().host,
            app_name: APP_NAME,
            procid,
            msgid: &meta.event,
        },
        "-",
        json,
    )
}

enum Conn {
    Dgram(UnixDatagram),
    Stream(UnixStream),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Conn {
    fn open(target: &Target) -> std::io::Result<Conn> {
        let resolve = |a: &str| -> std::io::Result<SocketAddr> {
            a.to_socket_addrs()?.next().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("{a}: no address"))
            })
        };
        match target {
            Target::Unix(p) => {
                let d = UnixDatagram::unbound()?;
                match d.connect(p) {
                    Ok(()) => {
                        d.set_write_timeout(Some(IO_TIMEOUT))?;
                        Ok(Conn::Dgram(d))
                    }
                    // A stream socket (as syslog-ng's unix-stream source makes).
                    Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {
                        let s = UnixStream::connect(p)?;
                        s.set_write_timeout(Some(IO_TIMEOUT))?;
                        Ok(Conn::Stream(s))
                    }
                    Err(e) => Err(e),
                }
            }
            Target::Udp(a) => {
                let to = resolve(a)?;
                let any: SocketAddr = if to.is_ipv4() {
                    "0.0.0.0:0".parse().expect("address")
                } else {
                    "[::]:0".parse().expect("address")
                };
                let s = UdpSocket::bind(any)?;
                s.connect(to)?;
                Ok(Conn::Udp(s))
            }
            Target::Tcp(a) => {
                let s = TcpStream::connect_timeout(&resolve(a)?, IO_TIMEOUT)?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
        }
    }

    fn send(&mut self, msg: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Dgram(s) => s.send(msg).map(drop),
            Conn::Udp(s) => s.send(msg).map(drop),
            Conn::Stream(s) => {
                let mut m = msg.to_vec();
                m.push(b'\n');
                s.write_all(&m)
            }
            Conn::Tcp(s) => s.write_all(&octet_counted(msg)),
        }
    }
}

pub struct SyslogWriter {
    target: Target,
    facility: u8,
    procid: String,
    conn: Option<Conn>,
    retry_at: Instant,
    backoff: Duration,
    /// Lines not handed to the socket and not reported yet.
    pending_lost: u64,
    counts: Arc<LostCounts>,
    failing: bool,
}

impl SyslogWriter {
    pub fn new(c: &Config, counts: Arc<LostCounts>) -> Self {
        SyslogWriter {
            target: c.target.clone(),
            facility: c.facility,
            procid: std::process::id().to_string(),
            conn: None,
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
            pending_lost: 0,
            counts,
            failing: false,
        }
    }

    /// Connected, or connecting now if the backoff allows.
    fn connected(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        let now = Instant::now();
        if now < self.retry_at {
            return false;
        }
        match Conn::open(&self.target) {
            Ok(c) => {
                self.conn = Some(c);
                true
            }
            Err(e) => {
                self.broken(&e);
                false
            }
        }
    }

    /// The target failed: lines are lost (counted) until the next try, which waits
    /// longer each time until a message goes through again (a collector that accepts
    /// connections but never reads costs one timeout per try, not one per line).
    fn broken(&mut self, e: &std::io::Error) {
        if !self.failing {
            warn!(target = %self.target, "audit syslog: {e}; lines are counted as lost until it is back");
            self.failing = true;
        }
        self.conn = None;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn send(&mut self, meta: &Meta, json: &[u8]) -> bool {
        let msg = message(self.facility, meta, json, &self.procid);
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        match conn.send(&msg) {
            Ok(()) => {
                if self.failing {
                    info!(target = %self.target, "audit syslog: sending again");
                    self.failing = false;
                }
                self.backoff = BACKOFF_MIN;
                true
            }
            Err(e) => {
                self.broken(&e);
                false
            }
        }
    }
}

impl LineWriter for SyslogWriter {
    fn write(&mut self, item: &Item) -> std::io::Result<()> {
        self.pending_lost += item.lost_before;
        if self.connected() {
            if self.pending_lost > 0 {
                let meta = Meta {
                    event: "lost".into(),
                    ..Meta::default()
                };
                if self.send(&meta, &lost_notice(Scope::Syslog, self.pending_lost)) {
                    self.pending_lost = 0;
                }
            }
            // No line goes out after an unreported gap.
            if self.pending_lost == 0 && self.send(&item.line.meta, &item.line.json) {
                return Ok(());
            }
        }
        self.pending_lost += 1;
        self.counts.add(Scope::Syslog, 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOM: &str = "\u{feff}";

    /// RFC 5424 section 6.5, examples 1 to 4.
    #[test]
    fn frames_the_rfc_5424_examples() {
        let ex1 = format(
            &Header {
                pri: 4 * 8 + 2,
                timestamp: "2003-10-11T22:14:15.003Z",
                hostname: "mymachine.example.com",
                app_name: "su",
                procid: "",
                msgid: "ID47",
            },
            "",
            format!("{BOM}'su root' failed for lonvick on /dev/pts/8").as_bytes(),
        );
        assert_eq!(
            String::from_utf8(ex1).unwrap(),
            format!("<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - {BOM}'su root' failed for lonvick on /dev/pts/8")
        );
        let ex2 = format(
            &Header {
                pri: 20 * 8 + 5,
                timestamp: &timestamp("2003-08-24T05:14:15.000003-07:00"),
                hostname: "192.0.2.1",
                app_name: "myproc",
                procid: "8710",
                msgid: "",
            },
            "-",
            b"%% It's time to make the do-nuts.",
        );
        assert_eq!(
            ex2,
            b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts."
        );
        let sd = r#"[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]"#;
        let h = Header {
            pri: 165,
            timestamp: "2003-10-11T22:14:15.003Z",
            hostname: "mymachine.example.com",
            app_name: "evntslog",
            procid: "-",
            msgid: "ID47",
        };
        let ex3 = format(
            &h,
            sd,
            format!("{BOM}An application event log entry...").as_bytes(),
        );
        assert_eq!(
            String::from_utf8(ex3).unwrap(),
            format!("<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 {sd} {BOM}An application event log entry...")
        );
        let sd4 = format!("{sd}[examplePriority@32473 class=\"high\"]");
        assert_eq!(
            String::from_utf8(format(&h, &sd4, b"")).unwrap(),
            format!("<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 {sd4}")
        );
    }

    #[test]
    fn audit_lines_become_messages_with_at_most_microseconds() {
        assert_eq!(
            timestamp("2026-11-23T15:18:44.432103690Z"),
            "2026-11-23T15:18:44.432103Z"
        );
        assert_eq!(timestamp("2026-11-23T15:18:44Z"), "2026-11-23T15:18:44Z");
        let meta = Meta {
            event: "packet".into(),
            verdict: Some("drop"),
            ..Meta::default()
        };
        let json = b"{\"ts\":\"2026-11-23T15:18:44.432103690Z\",\"event\":\"packet\"}\n";
        let m = String::from_utf8(message(16, &meta, json, "42")).unwrap();
        let host = &Origin::get().host;
        assert_eq!(
            m,
            format!("<132>1 2026-11-23T15:18:44.432103Z {host} enforcer 42 packet - {{\"ts\":\"2026-11-23T15:18:44.432103690Z\",\"event\":\"packet\"}}")
        );
        assert_eq!(octet_counted(b"<1>1 - - - - - -"), b"16 <1>1 - - - - - -");
    }

    #[test]
    fn targets_and_facilities_parse() {
        assert_eq!(
            Target::parse("unix:/dev/log"),
            Ok(Target::Unix("/dev/log".into()))
        );
        assert_eq!(
            Target::parse("udp://127.0.0.1:514"),
            Ok(Target::Udp("127.0.0.1:514".into()))
        );
        assert_eq!(
            Target::parse("tcp://[::1]:601"),
            Ok(Target::Tcp("[::1]:601".into()))
        );
        for bad in [
            "unix:dev/log",
            "udp://127.0.0.1",
            "tcp://:601",
            "http://x:1",
            "udp://h:0",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(facility("local0"), Some(16));
        assert_eq!(facility("local8"), None);
        assert_eq!(facility_name(23), "local7");
    }
}

//! Helpers for the audit-stream and daemon-operations tests: datagrams sent from inside a
//! test's namespace (single ones with a chosen source port, floods, a numbered stream that
//! checks every echo), `enforcer tail` as a long-running child, a raw control-socket
//! client, a plain HTTP GET, and RFC 3339 parsing. Every loop is bounded in count and time.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::net::{enter_netns, NetNs};

/// Sends `count` datagrams of `payload` from `bind` to `dst` inside `ns`, `batch` at a
/// time with `pause` between batches (no pause when `batch` is 0). Returns how many
/// `send_to` calls succeeded.
pub fn udp_send(
    ns: &NetNs,
    bind: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    count: usize,
    batch: usize,
    pause: Duration,
) -> usize {
    let payload = payload.to_vec();
    ns.run(move || {
        let s = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let mut ok = 0;
        for i in 0..count {
            if s.send_to(&payload, dst).is_ok() {
                ok += 1;
            }
            if batch > 0 && (i + 1) % batch == 0 {
                std::thread::sleep(pause);
            }
        }
        ok
    })
}

/// One datagram from `bind` to `dst` inside `ns`.
pub fn udp_once(ns: &NetNs, bind: &str, dst: &str, payload: &[u8]) {
    let bind: SocketAddr = bind.parse().expect("bind address");
    let dst: SocketAddr = dst.parse().expect("destination");
    assert_eq!(
        udp_send(ns, bind, dst, payload, 1, 0, Duration::ZERO),
        1,
        "send {bind} -> {dst}"
    );
}

/// What a numbered stream of datagrams saw.
#[derive(Debug, Default)]
pub struct StreamReport {
    pub sent: u64,
    pub answered: u64,
    /// Sequence numbers whose echo did not come back in time.
    pub missing: Vec<u64>,
}

/// Sends numbered datagrams (8-byte sequence numbers) from `ns` to an echo server at
/// `dst`, one every `interval`, each waiting up to `patience` for its echo, until `stop`
/// is set (at most `max` datagrams or `max_time`). Runs on the calling thread, which it
/// moves into `ns` (call it from a thread of its own). `answered` is kept up to date.
pub fn numbered_stream(
    ns: &NetNs,
    dst: SocketAddr,
    interval: Duration,
    patience: Duration,
    stop: &AtomicBool,
    answered: &AtomicU64,
) -> StreamReport {
    const MAX: u64 = 20_000;
    let max_time = Duration::from_secs(90);
    enter_netns(&ns.path());
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(bind).expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let start = Instant::now();
    let mut r = StreamReport::default();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) && r.sent < MAX && start.elapsed() < max_time {
        let seq = r.sent;
        r.sent += 1;
        let sent_at = Instant::now();
        if s.send_to(&seq.to_be_bytes(), dst).is_err() {
            r.missing.push(seq);
            continue;
        }
        let mut got = false;
        while sent_at.elapsed() < patience {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if n == 8 && buf[..8] == seq.to_be_bytes() {
                    got = true;
                    break;
                }
            }
        }
        if got {
            r.answered += 1;
            answered.store(r.answered, Ordering::SeqCst);
        } else {
            r.missing.push(seq);
        }
        if let Some(rest) = interval.checked_sub(sent_at.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    r
}

/// Sets a flag when dropped: background loops stop also when a test fails half-way.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `enforcer tail ARGS --socket SOCKET`, running until dropped, its output collected.
pub struct Tail {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Tail {
    pub fn spawn(socket: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(crate::enforcer_bin())
            .arg("tail")
            .args(args)
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enforcer tail");
        let lines = crate::daemon::collect_lines(child.stdout.take().expect("stdout"));
        let stderr = crate::daemon::collect_text(child.stderr.take().expect("stderr"));
        Tail {
            child,
            lines,
            stderr,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// Waits until `pred` holds for the lines so far; panics with them on timeout.
    pub fn wait_lines(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let start = Instant::now();
        loop {
            let lines = self.lines();
            if pred(&lines) {
                return lines;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its stdout may still be being read: wait for the reader to reach EOF
                // (it holds the other reference until then).
                let exited = Instant::now();
                while Arc::strong_count(&self.lines) > 1
                    && exited.elapsed() < Duration::from_secs(20)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let lines = self.lines();
                if pred(&lines) {
                    return lines;
                }
                panic!(
                    "enforcer tail exited ({status}) before {what}\nstderr: {}\nlines: {lines:#?}",
                    self.stderr()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "enforcer tail: no {what} within {timeout:?}\nstderr: {}\n{} lines: {:#?}",
                    self.stderr(),
                    lines.len(),
                    lines.iter().take(50).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw client of the control socket.
pub struct ControlConn {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ControlConn {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        ControlConn { stream, reader }
    }

    /// Sends `line` (a newline is added) without reading anything.
    pub fn send(&mut self, line: &str) {
        self.stream
            .write_all(line.as_bytes())
            .expect("write request");
        self.stream.write_all(b"\n").expect("write newline");
    }

    /// Reads one line (None at end of stream or on timeout).
    pub fn read_line(&mut self) -> Option<String> {
        let mut s = String::new();
        match self.reader.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(s.trim_end().to_string()),
        }
    }

    /// Sends `line` and returns the answer, parsed.
    pub fn request(&mut self, line: &str) -> Value {
        self.send(line);
        let answer = self
            .read_line()
            .unwrap_or_else(|| panic!("no answer to {:.80}", line));
        serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("answer {answer:?} is not JSON: {e}"))
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("timeout");
    }
}

/// `GET path` over HTTP/1.1 to `addr` from inside `ns`: (status line, body). Retries the
/// connection for up to `wait` (the server may still be starting).
pub fn http_get(
    ns: &NetNs,
    addr: SocketAddr,
    path: &str,
    wait: Duration,
) -> std::io::Result<(String, String)> {
    let path = path.to_string();
    ns.run(move || {
        let start = Instant::now();
        let mut s = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if start.elapsed() >= wait => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp.as_str(), ""));
        Ok((
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        ))
    })
}

/// Nanoseconds since the Unix epoch of an RFC 3339 time in UTC with nanoseconds, exactly
/// as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`; None for any other form.
pub fn parse_rfc3339_utc_ns(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() != 30
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[29] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = &s[r];
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec, ns) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..29)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), after H. Hinnant.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    Some(secs as i128 * 1_000_000_000 + ns as i128)
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// `enforcer status --json` of a running daemon, parsed.
pub fn status_json(d: &crate::daemon::Daemon) -> Value {
    let (ok, out, err) = d.cli(&["status", "--json"]);
    assert!(ok, "enforcer status --json failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

/// The status entry of rule `name`.
pub fn rule_status(status: &Value, name: &str) -> Value {
    status["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no rule {name} in status: {status:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_nanos_utc() {
        assert_eq!(
            parse_rfc3339_utc_ns("1970-01-01T00:00:00.000000000Z"),
            Some(0)
        );
        assert_eq!(parse_rfc3339_utc_ns("2024-02-29T12:00:01.5Z"), None);
        assert_eq!(
            parse_rfc3339_utc_ns("2024-02-29T12:00:01.000000005+00:00"),
            None
        );
        // 2000-03-01T00:00:00Z is 951868800.
        assert_eq!(
            parse_rfc3339_utc_ns("2000-03-01T00:00:00.000000007Z"),
            Some(951_868_800_000_000_007)
        );
    }
}

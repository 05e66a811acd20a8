//! Bounded traffic for tests: UDP flows with sequence numbers sent from a socket made in a
//! namespace to an echoing listener (the probe's `udp-listen`), the echoes counted by
//! sequence number; a pinger for one-datagram reachability checks; RFC 3339 times.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::net::NetNs;

/// A UDP socket bound (to the unspecified address of `dst`'s family, any port) inside `ns`.
pub fn udp_socket(ns: &NetNs, dst: SocketAddr) -> UdpSocket {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    ns.run(move || UdpSocket::bind(bind).expect("bind"))
}

/// A flow of datagrams "SEQ" (0, 1, 2, ...) to `dst` every `interval`, at most `max`
/// datagrams and for at most `max_time`; its echoes are collected by sequence number.
pub struct Flow {
    pub dst: SocketAddr,
    stop_send: Arc<AtomicBool>,
    stop_recv: Arc<AtomicBool>,
    sender: Option<JoinHandle<(u64, u64)>>,
    receiver: Option<JoinHandle<()>>,
    echoed: Arc<Mutex<BTreeSet<u64>>>,
}

/// What a flow sent and what came back.
#[derive(Debug)]
pub struct FlowReport {
    pub sent: u64,
    /// send_to() failures (none expected from a remote sender: drops happen on the way).
    pub send_errors: u64,
    /// Sequence numbers echoed back.
    pub echoed: BTreeSet<u64>,
}

impl FlowReport {
    /// The sequence numbers sent that never came back.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.sent)
            .filter(|s| !self.echoed.contains(s))
            .collect()
    }
}

impl Flow {
    pub fn start(
        ns: &NetNs,
        dst: SocketAddr,
        interval: Duration,
        max: u64,
        max_time: Duration,
    ) -> Flow {
        let sock = udp_socket(ns, dst);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let rsock = sock.try_clone().expect("clone socket");
        let stop_send = Arc::new(AtomicBool::new(false));
        let stop_recv = Arc::new(AtomicBool::new(false));
        let stop = stop_send.clone();
        let sender = std::thread::spawn(move || {
            let start = Instant::now();
            let (mut seq, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) && seq < max && start.elapsed() < max_time {
                if sock.send_to(seq.to_string().as_bytes(), dst).is_err() {
                    errors += 1;
                }
                seq += 1;
                std::thread::sleep(interval);
            }
            (seq, errors)
        });
        let stop = stop_recv.clone();
        let echoed = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = echoed.clone();
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = rsock.recv_from(&mut buf) {
                    if from == dst {
                        if let Some(seq) = std::str::from_utf8(&buf[..n])
                            .ok()
                            .and_then(|s| s.parse().ok())
                        {
                            seen.lock().expect("echoes").insert(seq);
                        }
                    }
                }
            }
        });
        Flow {
            dst,
            stop_send,
            stop_recv,
            sender: Some(sender),
            receiver: Some(receiver),
            echoed,
        }
    }

    /// Stops sending, waits until every datagram sent is echoed or `patience` passed (a
    /// refused flow waits all of it: make it at least `ABSENCE`), and reports.
    pub fn finish(mut self, patience: Duration) -> FlowReport {
        self.stop_send.store(true, Ordering::Relaxed);
        let (sent, send_errors) = self
            .sender
            .take()
            .expect("sender")
            .join()
            .expect("sender thread");
        let start = Instant::now();
        while (self.echoed.lock().expect("echoes").len() as u64) < sent
            && start.elapsed() < patience
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop_recv.store(true, Ordering::Relaxed);
        self.receiver
            .take()
            .expect("receiver")
            .join()
            .expect("receiver thread");
        let echoed = std::mem::take(&mut *self.echoed.lock().expect("echoes"));
        FlowReport {
            sent,
            send_errors,
            echoed,
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop_send.store(true, Ordering::Relaxed);
        self.stop_recv.store(true, Ordering::Relaxed);
    }
}

/// How many datagrams or connections a probe listener reported from `ip` (any port):
/// lines "received IP:PORT" / "accepted IP:PORT" (IPv6 as "[IP]:PORT"; IPv4 through a
/// dual-stack socket as "[::ffff:IP]:PORT").
pub fn count_from(lines: &[String], ip: &str) -> usize {
    lines
        .iter()
        .filter_map(|l| {
            l.strip_prefix("received ")
                .or_else(|| l.strip_prefix("accepted "))
        })
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .filter(|a| {
            let got = match a.ip() {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
                v4 => v4,
            };
            got.to_string() == ip
        })
        .count()
}

/// One socket in a namespace for quick reachability checks against an echoing UDP listener.
pub struct Pinger {
    sock: UdpSocket,
    seq: u64,
}

impl Pinger {
    pub fn new(ns: &NetNs, dst: SocketAddr) -> Self {
        Pinger {
            sock: udp_socket(ns, dst),
            seq: 0,
        }
    }

    /// Sends one datagram to `dst`; whether its echo came back within `timeout`.
    pub fn ping(&mut self, dst: SocketAddr, timeout: Duration) -> bool {
        self.seq += 1;
        let want = format!("ping{}", self.seq);
        if self.sock.send_to(want.as_bytes(), dst).is_err() {
            return false;
        }
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.sock.set_read_timeout(Some(left)).expect("timeout");
            match self.sock.recv_from(&mut buf) {
                // Late echoes of earlier pings are skipped.
                Ok((n, from)) if from == dst && &buf[..n] == want.as_bytes() => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// "YYYY-MM-DDTHH:MM:SSZ" for `unix` seconds (UTC).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // civil_from_days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Unix seconds of an RFC 3339 UTC time "YYYY-MM-DDTHH:MM:SS[.frac]Z".
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    u64::try_from(days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2024-02-29T12:34:56Z"), Some(1_709_210_096));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.123456789Z"),
            Some(1_709_210_096)
        );
        for t in [0, 951_782_400, 1_709_210_096, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
    }

    #[test]
    fn listener_lines_are_counted_by_source() {
        let lines: Vec<String> = [
            "listening",
            "received [::ffff:10.1.0.2]:4000",
            "received [fd01::2]:5000",
            "accepted 10.1.0.2:1",
            "received [::ffff:10.1.0.20]:4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(count_from(&lines, "10.1.0.2"), 2);
        assert_eq!(count_from(&lines, "fd01::2"), 1);
        assert_eq!(count_from(&lines, "10.2.0.2"), 0);
    }
}

//! Prometheus metrics in the text exposition format, served over HTTP (GET /metrics) on
//! an address the operator chooses (127.0.0.1 by default; off unless configured). The
//! figures are the status answer's, asked of the policy owner at most once a second and
//! served to every scraper from that snapshot. Connections are capped; a client gets a
//! few seconds for its request and for taking the answer, and when every slot is taken
//! the client that has waited longest without sending its request makes room: idle or
//! slow clients cannot pile up tasks, keep scrapers out, or load the policy owner.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, Mutex, Semaphore},
};
use tracing::warn;

use super::{protocol::Request, server::Call, status::Status};

/// Connections served at once.
const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its whole request head, and to take the whole answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The snapshot is refreshed at most this often.
const SNAPSHOT_AGE: Duration = Duration::from_secs(1);
/// Largest request head read: the endpoint takes no body.
const MAX_HEAD: usize = 8192;

/// The last rendered metrics and when they were taken.
type Snapshot = Arc<Mutex<Option<(Instant, Arc<String>)>>>;

/// Connections still waiting for their request head, oldest first: dropping one's sender
/// closes it.
type Waiting = Arc<std::sync::Mutex<VecDeque<(u64, oneshot::Sender<()>)>>>;

pub async fn serve(addr: SocketAddr, calls: mpsc::Sender<Call>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics served at /metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let snapshot: Snapshot = Arc::default();
    let waiting: Waiting = Arc::default();
    let mut next_id: u64 = 0;
    let mut evicted: u64 = 0;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("metrics accept: {e}");
                // Out of descriptors, say: give the clients in flight time to finish.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: the client idle longest makes room. If every slot is answering a
                // request, this one waits its turn, briefly.
                let oldest = waiting.lock().expect("waiting").pop_front();
                if oldest.is_some() {
                    drop(oldest);
                    evicted += 1;
                    if evicted.is_power_of_two() {
                        warn!(
                            evicted,
                            "metrics: {MAX_CONNECTIONS} connections open; closing the ones idle longest"
                        );
                    }
                }
                match tokio::time::timeout(CLIENT_TIMEOUT, slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => continue,
                }
            }
        };
        let id = next_id;
        next_id += 1;
        let (close_tx, close_rx) = oneshot::channel();
        waiting.lock().expect("waiting").push_back((id, close_tx));
        let (calls, snapshot, waiting) = (calls.clone(), snapshot.clone(), waiting.clone());
        tokio::spawn(async move {
            answer(stream, id, close_rx, &waiting, calls, snapshot).await;
            waiting.lock().expect("waiting").retain(|(i, _)| *i != id);
            drop(permit);
        });
    }
}

async fn answer(
    mut s: TcpStream,
    id: u64,
    close: oneshot::Receiver<()>,
    waiting: &Waiting,
    calls: mpsc::Sender<Call>,
    snapshot: Snapshot,
) {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    let head_done = |b: &[u8]| b.windows(4).any(|w| w == b"\r\n\r\n");
    // One deadline for the whole head: a client trickling bytes gets no more time.
    let read_head = async {
        while n < MAX_HEAD && !head_done(&buf[..n]) {
            match s.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => n += k,
            }
        }
        true
    };
    tokio::select! {
        r = tokio::time::timeout(CLIENT_TIMEOUT, read_head) => if !matches!(r, Ok(true)) { return },
        // Evicted to make room for a newer client.
        _ = close => return,
    }
    waiting.lock().expect("waiting").retain(|(i, _)| *i != id);
    let head = String::from_utf8_lossy(&buf[..n]);
    let first = head.lines().next().unwrap_or("");
    let (status, body) = if first.starts_with("GET /metrics ") || first == "GET /metrics" {
        match current(&calls, &snapshot).await {
            Some(text) => ("200 OK", text),
            None => (
                "503 Service Unavailable",
                Arc::new("stopping\n".to_string()),
            ),
        }
    } else {
        (
            "404 Not Found",
            Arc::new("only GET /metrics is served\n".to_string()),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await
    })
    .await;
}

/// The metrics text: the snapshot if it is fresh, else a new one from a status call (one
/// at a time: scrapers arriving meanwhile wait for it and share it).
async fn current(calls: &mpsc::Sender<Call>, snapshot: &Snapshot) -> Option<Arc<String>> {
    let mut snap = snapshot.lock().await;
    if let Some((at, text)) = snap.as_ref() {
        if at.elapsed() < SNAPSHOT_AGE {
            return Some(text.clone());
        }
    }
    let (reply, rx) = oneshot::channel();
    calls
        .send(Call {
            request: Request::Status,
            reply,
        })
        .await
        .ok()?;
    let answer = rx.await.ok()?;
    let status = match serde_json::from_value::<Status>(answer) {
        Ok(s) => s,
        Err(e) => {
            warn!("metrics: the status answer does not read as a status: {e}");
            return None;
        }
    };
    let text = Arc::new(render(&status));
    *snap = Some((Instant::now(), text.clone()));
    Some(text)
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition of a status answer.
pub fn render(st: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (labels, value) in samples {
            out += &format!("{name}{labels} {value}\n");
        }
    };
    let mut packets = Vec::new();
    for (hook, reasons) in &st.counters {
        for (reason, n) in reasons {
            packets.push((
                format!("{{hook=\"{}\",reason=\"{}\"}}", label(hook), label(reason)),
                *n,
            ));
        }
    }
    family(
        "enforcer_packets_total",
        "counter",
        "Packets seen, by hook and reason.",
        packets,
    );
    let mut rules = Vec::new();
    for r in &st.rules {
        let name = label(&r.name);
        for (n, verdict) in [
            (r.allowed, "allow"),
            (r.dropped, "drop"),
            (r.would_drop, "would-drop"),
        ] {
            rules.push((format!("{{rule=\"{name}\",verdict=\"{verdict}\"}}"), n));
        }
    }
    family(
        "enforcer_rule_packets_total",
        "counter",
        "Packets judged by each rule, by verdict.",
        rules,
    );
    let p = &st.policy;
    family(
        "enforcer_policy_generation",
        "gauge",
        "Generation of the policy in force.",
        vec![(String::new(), p.generation)],
    );
    family(
        "enforcer_policy_info",
        "gauge",
        "The policy in force (its sha256 and file).",
        vec![(
            format!(
                "{{hash=\"{}\",file=\"{}\"}}",
                label(&p.hash),
                label(&p.file)
            ),
            1,
        )],
    );
    let a = &st.audit;
    family(
        "enforcer_audit_events_total",
        "counter",
        "Audit events delivered by the kernel.",
        vec![(String::new(), a.events)],
    );
    family(
        "enforcer_audit_suppressed_total",
        "counter",
        "Audit events held back by rate limits.",
        vec![(String::new(), a.suppressed)],
    );
    family(
        "enforcer_audit_lost_total",
        "counter",
        "Audit events lost: in the kernel (ring buffer full) or by slow sinks.",
        vec![
            ("{scope=\"kernel\"}".to_string(), a.lost_kernel),
            ("{scope=\"sinks\"}".to_string(), a.lost_sinks),
        ],
    );
    family(
        "enforcer_audit_subscribers",
        "gauge",
        "Clients following the audit stream.",
        vec![(String::new(), a.subscribers)],
    );
    let xdp = st
        .programs
        .xdp
        .attached
        .iter()
        .map(|x| {
            (
                format!(
                    "{{iface=\"{}\",mode=\"{}\"}}",
                    label(&x.iface),
                    label(&x.mode)
                ),
                1,
            )
        })
        .collect();
    family(
        "enforcer_xdp_attached",
        "gauge",
        "Interfaces with the XDP program attached.",
        xdp,
    );
    family(
        "enforcer_warnings",
        "gauge",
        "Warnings in the status (see `enforcer status`).",
        vec![(String::new(), st.warnings.len() as u64)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_rules_and_health() {
        let v = serde_json::json!({
            "version": 1, "ok": true,
            "daemon": {"pid": 7, "started": "t0", "config": "/etc/enforcer.toml"},
            "pins": {"dir": null, "owner": null, "restored": null},
            "counters": {"xdp": {"dropped-source": 3}},
            "rules": [{"name": "pg", "mode": "enforce", "allowed": 1, "dropped": 3, "would_drop": 0}],
            "policy": {"generation": 4, "hash": "ab", "applied_at": "t1", "file": "/etc/p.toml",
                       "mode": "enforce", "rules": 1, "confirm_by": null},
            "audit": {"events": 3, "suppressed": 0, "lost_kernel": 0, "lost_sinks": 0, "subscribers": 1,
                      "lost": {}, "next_seq": 4, "origin": {"boot_id": "b", "host": "h"},
                      "file": null, "syslog": null},
            "programs": {"xdp": {"name": "xdp", "attached": [{"iface": "eth0", "mode": "native"}]},
                         "cgroup": {"path": null, "programs": []}},
            "warnings": [],
        });
        let t = render(&serde_json::from_value(v).unwrap());
        for line in [
            "enforcer_packets_total{hook=\"xdp\",reason=\"dropped-source\"} 3",
            "enforcer_rule_packets_total{rule=\"pg\",verdict=\"drop\"} 3",
            "enforcer_policy_generation 4",
            "enforcer_audit_lost_total{scope=\"kernel\"} 0",
            "enforcer_xdp_attached{iface=\"eth0\",mode=\"native\"} 1",
            "# TYPE enforcer_packets_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
    }
}

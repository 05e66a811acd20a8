//! Prometheus metrics in the text exposition format, served over HTTP (GET /metrics) on
//! an address the operator chooses (127.0.0.1 by default; off unless configured). The
//! figures are the status answer's, asked of the policy owner like any control call.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tracing::warn;

use super::{protocol::Request, server::Call};

pub async fn serve(addr: SocketAddr, calls: mpsc::Sender<Call>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics served at /metrics");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("metrics accept: {e}");
                continue;
            }
        };
        tokio::spawn(answer(stream, calls.clone()));
    }
}

/// Largest request head read: the endpoint takes no body.
const MAX_HEAD: usize = 8192;

async fn answer(mut s: TcpStream, calls: mpsc::Sender<Call>) {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    let head_done = |b: &[u8]| b.windows(4).any(|w| w == b"\r\n\r\n");
    while n < MAX_HEAD && !head_done(&buf[..n]) {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf[n..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(k)) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let first = head.lines().next().unwrap_or("");
    let (status, body) = if first.starts_with("GET /metrics ") || first == "GET /metrics" {
        let (reply, rx) = oneshot::channel();
        if calls
            .send(Call {
                request: Request::Status,
                reply,
            })
            .await
            .is_err()
        {
            return;
        }
        match rx.await {
            Ok(v) => ("200 OK", render(&v)),
            Err(_) => ("503 Service Unavailable", "stopping\n".to_string()),
        }
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_string())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition of a status answer.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (labels, value) in samples {
            out += &format!("{name}{labels} {value}\n");
        }
    };
    let mut packets = Vec::new();
    if let Some(hooks) = v["counters"].as_object() {
        for (hook, reasons) in hooks {
            for (reason, n) in reasons.as_object().into_iter().flatten() {
                packets.push((
                    format!("{{hook=\"{}\",reason=\"{}\"}}", label(hook), label(reason)),
                    n.as_u64().unwrap_or(0),
                ));
            }
        }
    }
    family(
        "enforcer_packets_total",
        "counter",
        "Packets seen, by hook and reason.",
        packets,
    );
    let mut rules = Vec::new();
    for r in v["rules"].as_array().into_iter().flatten() {
        let name = label(r["name"].as_str().unwrap_or(""));
        for (key, verdict) in [
            ("allowed", "allow"),
            ("dropped", "drop"),
            ("would_drop", "would-drop"),
        ] {
            rules.push((
                format!("{{rule=\"{name}\",verdict=\"{verdict}\"}}"),
                r[key].as_u64().unwrap_or(0),
            ));
        }
    }
    family(
        "enforcer_rule_packets_total",
        "counter",
        "Packets judged by each rule, by verdict.",
        rules,
    );
    let p = &v["policy"];
    family(
        "enforcer_policy_generation",
        "gauge",
        "Generation of the policy in force.",
        vec![(String::new(), p["generation"].as_u64().unwrap_or(0))],
    );
    family(
        "enforcer_policy_info",
        "gauge",
        "The policy in force (its sha256 and file).",
        vec![(
            format!(
                "{{hash=\"{}\",file=\"{}\"}}",
                label(p["hash"].as_str().unwrap_or("")),
                label(p["file"].as_str().unwrap_or(""))
            ),
            1,
        )],
    );
    let a = &v["audit"];
    family(
        "enforcer_audit_events_total",
        "counter",
        "Audit events delivered by the kernel.",
        vec![(String::new(), a["events"].as_u64().unwrap_or(0))],
    );
    family(
        "enforcer_audit_suppressed_total",
        "counter",
        "Audit events held back by rate limits.",
        vec![(String::new(), a["suppressed"].as_u64().unwrap_or(0))],
    );
    family(
        "enforcer_audit_lost_total",
        "counter",
        "Audit events lost: in the kernel (ring buffer full) or by slow sinks.",
        vec![
            (
                "{scope=\"kernel\"}".to_string(),
                a["lost_kernel"].as_u64().unwrap_or(0),
            ),
            (
                "{scope=\"sinks\"}".to_string(),
                a["lost_sinks"].as_u64().unwrap_or(0),
            ),
        ],
    );
    family(
        "enforcer_audit_subscribers",
        "gauge",
        "Clients following the audit stream.",
        vec![(String::new(), a["subscribers"].as_u64().unwrap_or(0))],
    );
    let xdp = v["programs"]["xdp"]["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            (
                format!(
                    "{{iface=\"{}\",mode=\"{}\"}}",
                    label(x["iface"].as_str().unwrap_or("")),
                    label(x["mode"].as_str().unwrap_or(""))
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
        vec![(
            String::new(),
            v["warnings"].as_array().map_or(0, |w| w.len() as u64),
        )],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_rules_and_health() {
        let v = serde_json::json!({
            "counters": {"xdp": {"dropped-source": 3}},
            "rules": [{"name": "pg", "allowed": 1, "dropped": 3, "would_drop": 0}],
            "policy": {"generation": 4, "hash": "ab", "file": "/etc/p.toml"},
            "audit": {"events": 3, "suppressed": 0, "lost_kernel": 0, "lost_sinks": 0, "subscribers": 1},
            "programs": {"xdp": {"attached": [{"iface": "eth0", "mode": "native"}]}},
            "warnings": [],
        });
        let t = render(&v);
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

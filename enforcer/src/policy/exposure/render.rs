//! `enforcer scan`'s text: one line per finding, the gaps first.

use super::*;

/// The readable form.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    match &r.policy {
        Some(p) => s += &format!("policy:          {p}\n"),
        None => s += "policy:          none given (--config FILE): no port counts as protected\n",
    }
    if let Some(e) = &r.ephemeral_ports {
        let reserved = if e.reserved.is_empty() {
            String::new()
        } else {
            format!(", reserved {}", e.reserved.join(","))
        };
        s += &format!(
            "ephemeral ports: {}-{} (net.ipv4.ip_local_port_range{reserved})\n",
            e.first, e.last
        );
    }
    s += "\n";
    let rows: Vec<[String; 6]> = r
        .sockets
        .iter()
        .map(|f| {
            let note = match f.status {
                Status::Protected => format!("rule {}", f.rules.join(", ")),
                Status::Partial => format!(
                    "rule {}, but {}",
                    f.rules.join(", "),
                    f.gap.as_deref().unwrap_or_default()
                ),
                Status::Failsafe => "failsafe port, never judged".into(),
                Status::Loopback => "loopback only".into(),
                Status::Exposed => "no rule protects this port".into(),
            };
            let status = match f.status {
                Status::Exposed => "EXPOSED".to_string(),
                Status::Partial => "PARTLY".to_string(),
                st => serde_json::to_value(st)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            };
            [
                f.proto.name().to_string(),
                f.addr.to_string(),
                f.port.to_string(),
                status,
                processes(&f.processes),
                note,
            ]
        })
        .collect();
    let head = ["PROTO", "ADDRESS", "PORT", "STATUS", "PROCESS", "WHY"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in std::iter::once(&head).chain(&rows) {
        let mut line = String::new();
        for (i, (w, c)) in widths.iter().zip(row).enumerate() {
            if i == 5 {
                line += c;
            } else if i == 2 {
                line += &format!("{c:>w$}  ");
            } else {
                line += &format!("{c:<w$}  ");
            }
        }
        s += line.trim_end();
        s += "\n";
    }
    if r.sockets.is_empty() {
        s += "(no listening sockets)\n";
    }
    if !r.idle_protected.is_empty() {
        s += "\nprotected ports with nothing listening:\n";
        for f in &r.idle_protected {
            s += &format!("  {:<15} rule {}\n", f.ports(), f.rule);
        }
    }
    if !r.ephemeral.is_empty() {
        s += "\nprotected ports inside the ephemeral port range (replies to this host's own outgoing\nconnections from these ports are judged by the rule, and refused unless allowed):\n";
        for f in &r.ephemeral {
            s += &format!("  {:<15} rule {}\n", f.ports(), f.rule);
        }
    }
    let count = |st: Status| r.sockets.iter().filter(|f| f.status == st).count();
    s += &format!(
        "\n{}: {} exposed, {} protected, {} partly protected, {} failsafe, {} loopback only; {} with nothing listening; {} in the ephemeral range\n",
        plural(r.sockets.len(), "listening socket"),
        count(Status::Exposed),
        count(Status::Protected),
        count(Status::Partial),
        count(Status::Failsafe),
        count(Status::Loopback),
        plural(r.idle_protected.len(), "protected port range"),
        plural(r.ephemeral.len(), "protected port range"),
    );
    s
}

//! A pcap sink: judged packets' headers, rebuilt from their audit records, so tcpdump
//! and Wireshark can show what XDP dropped (packet capture never sees those packets).
//! Payloads are not captured; headers carry the recorded addresses, ports, protocol and
//! length, with zero checksums.

use std::{fs::File, io::Write as _, net::IpAddr, path::Path};

use anyhow::Context as _;
use serde_json::Value;

/// pcap with nanosecond timestamps, LINKTYPE_RAW (packets start at the IP header).
const MAGIC_NS: u32 = 0xa1b2_3c4d;
const LINKTYPE_RAW: u32 = 101;

pub struct PcapWriter {
    out: std::io::BufWriter<File>,
}

impl PcapWriter {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(f);
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC_NS.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&h)?;
        out.flush()?;
        Ok(PcapWriter { out })
    }

    /// Writes a packet event (other events are skipped).
    pub fn write_event(&mut self, v: &Value) -> anyhow::Result<()> {
        let Some(pkt) = headers(v) else { return Ok(()) };
        let ns = v["ts"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        let orig = v["len"]
            .as_u64()
            .unwrap_or(pkt.len() as u64)
            .max(pkt.len() as u64) as u32;
        let mut rec = Vec::with_capacity(16 + pkt.len());
        rec.extend_from_slice(&(ns.as_secs() as u32).to_le_bytes());
        rec.extend_from_slice(&ns.subsec_nanos().to_le_bytes());
        rec.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        rec.extend_from_slice(&orig.to_le_bytes());
        rec.extend_from_slice(&pkt);
        self.out.write_all(&rec)?;
        self.out.flush()?;
        Ok(())
    }
}

/// IP + TCP/UDP headers for a packet record.
pub fn headers(v: &Value) -> Option<Vec<u8>> {
    if v["event"] != "packet" {
        return None;
    }
    let src: IpAddr = v["src"].as_str()?.parse().ok()?;
    let dst: IpAddr = v["dst"].as_str()?.parse().ok()?;
    let sport = v["sport"].as_u64().unwrap_or(0) as u16;
    let dport = v["dport"].as_u64()? as u16;
    let (proto, l4): (u8, Vec<u8>) = match v["proto"].as_str()? {
        "tcp" => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[12] = 5 << 4;
            t[13] = 0x02; // SYN: the usual knock on a port
            (6, t)
        }
        "udp" => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&8u16.to_be_bytes());
            (17, u)
        }
        _ => return None,
    };
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + l4.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => return None,
    }
    p.extend_from_slice(&l4);
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_ipv4_tcp_and_ipv6_udp_headers() {
        let v = serde_json::json!({"event":"packet","proto":"tcp","src":"10.0.0.2","sport":1234,"dst":"10.0.0.1","dport":5432});
        let p = headers(&v).unwrap();
        assert_eq!(p.len(), 40);
        assert_eq!(p[9], 6);
        assert_eq!(&p[12..16], &[10, 0, 0, 2]);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 5432);
        let v = serde_json::json!({"event":"packet","proto":"udp","src":"fd00::2","dst":"fd00::1","dport":53});
        let p = headers(&v).unwrap();
        assert_eq!(p.len(), 48);
        assert_eq!(p[6], 17);
        assert!(headers(&serde_json::json!({"event":"policy"})).is_none());
    }
}

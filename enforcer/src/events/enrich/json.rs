//! A packet event's audit line, written straight into a batch's buffer: the bytes serde
//! would make of its `Record` (same fields, order and escapes), without the per-field
//! strings. The time's date and clock part is formatted once per second.

use std::{borrow::Cow, io::Write as _, net::Ipv6Addr, sync::OnceLock, time::Instant};

use enforcer_common::{
    consts::{AF_INET, IPPROTO_TCP, IPPROTO_UDP, NO_RULE},
    event::PacketEvent,
    reason::{Hook, Reason, Verdict},
};

use super::{comm, Enricher};
use crate::events::sink::{write_uint as uint, Meta, Origin};

/// Bytes that go into many lines (a field with its key, the time's second), kept so they
/// are appended as one fixed-size block cut back to length: a copy the compiler inlines,
/// where a short copy of variable length is a call to memcpy.
pub(super) enum Piece {
    Short([u8; PIECE], usize),
    Long(Box<[u8]>),
}

const PIECE: usize = 64;

impl Piece {
    pub(super) fn new(b: &[u8]) -> Self {
        if b.len() <= PIECE {
            let mut a = [0; PIECE];
            a[..b.len()].copy_from_slice(b);
            Piece::Short(a, b.len())
        } else {
            Piece::Long(b.into())
        }
    }

    /// `key` (`,"name":`) and `s` as a JSON string.
    pub(super) fn field(key: &[u8], s: &str) -> Self {
        let mut b = Vec::new();
        field(&mut b, key, s);
        Piece::new(&b)
    }

    #[inline(always)]
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Piece::Short(a, n) => {
                let len = out.len();
                out.extend_from_slice(a);
                out.truncate(len + n);
            }
            Piece::Long(b) => out.extend_from_slice(b),
        }
    }
}

/// The verdict, reason and hook fields, by their kernel value.
struct Names {
    verdict: [Option<Piece>; 256],
    reason: [Option<Piece>; 256],
    hook: [Option<Piece>; 256],
}

fn names() -> &'static Names {
    static NAMES: OnceLock<Names> = OnceLock::new();
    NAMES.get_or_init(|| Names {
        verdict: std::array::from_fn(|i| {
            Verdict::from_u8(i as u8).map(|v| Piece::field(b",\"verdict\":", v.name()))
        }),
        reason: std::array::from_fn(|i| {
            Reason::from_u8(i as u8).map(|r| Piece::field(b",\"reason\":", r.name()))
        }),
        hook: std::array::from_fn(|i| {
            Hook::from_u8(i as u8).map(|h| Piece::field(b",\"hook\":", h.name()))
        }),
    })
}

impl Enricher {
    /// Appends `ev`'s line (numbered `seq`, stamped by `origin`, newline-terminated) to
    /// `out`; returns what filters look at. `now` ages the name caches.
    pub fn line(
        &mut self,
        ev: &PacketEvent,
        seq: u64,
        now: Instant,
        origin: &Origin,
        out: &mut Vec<u8>,
    ) -> Meta {
        let names = names();
        out.extend_from_slice(b"{\"ts\":\"");
        self.time(ev.ts_ns as i128 + self.clock_offset_ns, out);
        out.extend_from_slice(b"\",\"event\":\"packet\"");
        if let Some(v) = &names.verdict[ev.verdict as usize] {
            v.put(out);
        }
        if let Some(r) = &names.reason[ev.reason as usize] {
            r.put(out);
        }
        let rule = (ev.rule != NO_RULE)
            .then(|| self.rules.name(ev.generation, ev.rule))
            .flatten()
            .map(|n| {
                n.field.put(out);
                n.text.clone()
            });
        if let Some(h) = &names.hook[ev.hook as usize] {
            h.put(out);
        }
        match ev.proto {
            IPPROTO_TCP => out.extend_from_slice(b",\"proto\":\"tcp\""),
            IPPROTO_UDP => out.extend_from_slice(b",\"proto\":\"udp\""),
            n => {
                out.extend_from_slice(b",\"proto\":\"");
                uint(out, n.into());
                out.push(b'"');
            }
        }
        let src = addr(ev, &ev.src);
        out.extend_from_slice(b",\"src\":\"");
        ip(out, src);
        out.push(b'"');
        if ev.sport != 0 {
            out.extend_from_slice(b",\"sport\":");
            uint(out, ev.sport.into());
        }
        out.extend_from_slice(b",\"dst\":\"");
        ip(out, addr(ev, &ev.dst));
        out.extend_from_slice(b"\",\"dport\":");
        uint(out, ev.dport.into());
        if ev.ifindex != 0 {
            self.iface(ev.ifindex, now).field.put(out);
        }
        if ev.cgroup_id != 0 {
            if let Some(path) = self.cgroup_path(ev.cgroup_id, now) {
                field(out, b",\"cgroup\":", path);
            }
        }
        if ev.pid_tgid != 0 {
            out.extend_from_slice(b",\"pid\":");
            uint(out, ev.pid_tgid >> 32);
            let name = comm(ev);
            if name
                .iter()
                .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
            {
                out.extend_from_slice(b",\"comm\":\"");
                let len = out.len();
                out.extend_from_slice(&ev.comm);
                out.truncate(len + name.len());
                out.push(b'"');
            } else {
                field(out, b",\"comm\":", &String::from_utf8_lossy(name));
            }
        }
        if ev.pkt_len != 0 {
            out.extend_from_slice(b",\"len\":");
            uint(out, ev.pkt_len.into());
        }
        out.extend_from_slice(b",\"policy\":");
        uint(out, ev.generation);
        origin.finish(out, Some(seq));
        Meta {
            event: Cow::Borrowed("packet"),
            verdict: Verdict::from_u8(ev.verdict).map(Verdict::name),
            rule,
            src: Some(src),
        }
    }

    /// `unix_ns` as `clock::rfc3339_nanos` writes it.
    fn time(&mut self, unix_ns: i128, out: &mut Vec<u8>) {
        let ns = unix_ns.max(0) as u64;
        let (second, nanos) = (ns / 1_000_000_000, ns % 1_000_000_000);
        if second != self.ts_second {
            let mut t = crate::clock::rfc3339_nanos(i128::from(second) * 1_000_000_000);
            // `.000000000Z` -> `.`
            t.truncate(t.len() - 10);
            self.ts_prefix = Piece::new(t.as_bytes());
            self.ts_second = second;
        }
        self.ts_prefix.put(out);
        // Written in place (as `write_uint`), zero-padded to nine digits.
        let start = out.len();
        out.extend_from_slice(b"000000000Z");
        let digits = &mut out[start..start + 9];
        let mut n = nanos;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
}

fn addr(ev: &PacketEvent, b: &[u8; 16]) -> std::net::IpAddr {
    if ev.family == AF_INET {
        [b[0], b[1], b[2], b[3]].into()
    } else {
        Ipv6Addr::from(*b).into()
    }
}

fn ip(out: &mut Vec<u8>, a: std::net::IpAddr) {
    match a {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                uint(out, o.into());
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `key` (`,"name":`) and `s` as a JSON string: copied when nothing in it needs escaping,
/// else escaped by serde_json.
fn field(out: &mut Vec<u8>, key: &[u8], s: &str) {
    out.extend_from_slice(key);
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sink::Meta;

    /// Every field, each present and absent, in both families and on every hook.
    fn events() -> Vec<PacketEvent> {
        let mut out = Vec::new();
        let comms: [&[u8]; 6] = [
            b"curl",
            b"",
            b"a\"b\\c\n\td",
            b"\x01\x1f\x7f",
            b"\xff\xfeok",
            "né€".as_bytes(),
        ];
        for i in 0..96u64 {
            let mut ev = PacketEvent::EMPTY;
            ev.ts_ns = 1_000_000_007 * i + 999_999_999 * (i % 3);
            ev.generation = i % 4;
            ev.verdict = (i % 5) as u8;
            ev.reason = (i % 17) as u8;
            ev.hook = (i % 7) as u8;
            ev.proto = [IPPROTO_TCP, IPPROTO_UDP, 1, 58, 0][i as usize % 5];
            ev.rule = if i % 3 == 0 { NO_RULE } else { (i % 4) as u32 };
            ev.family = if i % 2 == 0 { AF_INET } else { 10 };
            ev.src = [(i * 37) as u8; 16];
            ev.dst = [0; 16];
            ev.dst[15] = 1;
            if i % 8 == 1 {
                // ::ffff:10.0.0.1
                ev.src = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
            }
            ev.sport = if i % 4 == 0 { 0 } else { 40000 + i as u16 };
            ev.dport = (i * 101) as u16;
            ev.ifindex = [0, 1, 2, 7][i as usize % 4];
            ev.cgroup_id = [0, 11, 12, 13][(i / 4) as usize % 4];
            ev.pid_tgid = if i % 6 == 0 { 0 } else { (i << 32) | 5 };
            let c = comms[i as usize % comms.len()];
            ev.comm = [0; 16];
            ev.comm[..c.len()].copy_from_slice(c);
            if i % 11 == 0 {
                // No NUL: all 16 bytes are the name.
                ev.comm = *b"sixteen-bytes-xx";
            }
            ev.pkt_len = if i % 5 == 0 { 0 } else { 60 + i as u32 };
            out.push(ev);
        }
        out
    }

    fn enricher() -> Enricher {
        let mut e = Enricher::new(Some(std::path::PathBuf::from("/nonexistent")));
        for g in 0..4 {
            e.rules
                .insert(g, vec!["db".into(), "we\"b\\".into(), "ünï\ncode".into()]);
        }
        let now = Instant::now();
        for (i, name) in [(1, "lo"), (2, "eth\"0"), (7, "veth-αβ")] {
            let name = super::super::Name {
                field: Piece::field(b",\"iface\":", name),
                text: name.into(),
            };
            e.ifnames.insert(i, (name, now));
        }
        e.know_cgroup(11, "/system.slice/sshd.service".into());
        e.know_cgroup(12, "/odd\\path\u{1}\"".into());
        e
    }

    #[test]
    fn lines_are_what_serde_makes_of_the_record() {
        let origin = Origin::new("boot-1", "host\"x");
        let mut e = enricher();
        for (seq, ev) in events().iter().enumerate() {
            let r = e.record(ev);
            let want = origin.stamp(serde_json::to_vec(&r).unwrap(), Some(seq as u64));
            let mut got = b"prefix".to_vec();
            let meta = e.line(ev, seq as u64, Instant::now(), &origin, &mut got);
            assert_eq!(
                String::from_utf8_lossy(&got[6..]),
                String::from_utf8_lossy(&want),
                "{ev:?}"
            );
            assert_eq!(meta, Meta::of(&r));
        }
    }

    #[test]
    fn times_change_second_and_clamp_at_the_epoch() {
        let mut e = enricher();
        for ns in [
            -5i128,
            0,
            999_999_999,
            1_000_000_000,
            1_764_515_136_000_000_001,
            1_764_515_136_999_999_999,
            1_764_515_137_000_000_000,
            1_764_515_136_500_000_000,
        ] {
            let mut out = Vec::new();
            e.time(ns, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                crate::clock::rfc3339_nanos(ns)
            );
        }
    }
}

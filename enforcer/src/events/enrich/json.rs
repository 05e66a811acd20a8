//! A packet event's audit line: the bytes serde would make of its `Record` (same fields,
//! order and escapes), without the per-field strings. The line is written through a
//! `Cursor` straight into the batch, in room reserved first for the longest line this
//! event can make. The time's date and clock part is formatted once per second.

use std::{borrow::Cow, io::Write as _, net::Ipv6Addr, sync::OnceLock, time::Instant};

use enforcer_common::{
    consts::{AF_INET, IPPROTO_TCP, IPPROTO_UDP, NO_RULE},
    event::PacketEvent,
    reason::{Hook, Reason, Verdict},
};

use super::{cgroup_path, comm, iface, Enricher};
use crate::events::{
    cursor::{append, Cursor},
    sink::{Meta, Origin},
};

/// Bytes that go into many lines (a field with its key, the time's second), kept so they
/// are written as one fixed-size block cut back to length: a store the compiler inlines,
/// where a short copy of variable length is a call to memcpy.
pub(super) enum Piece {
    Short([u8; PIECE], usize),
    Long(Box<[u8]>),
}

const PIECE: usize = 64;

/// Room a line takes at most, besides its names of unbounded length (rule, interface,
/// cgroup path): the fixed text, numbers, two IPv6 addresses, an escaped `comm`, and the
/// verdict, reason and hook fields written as whole pieces.
const LINE_ROOM: usize = 1024;

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

    /// Room it takes in a line.
    fn room(&self) -> usize {
        match self {
            Piece::Short(..) => PIECE,
            Piece::Long(b) => b.len(),
        }
    }

    #[inline(always)]
    fn put(&self, c: &mut Cursor) {
        match self {
            Piece::Short(a, n) => c.put_first(a, *n),
            Piece::Long(b) => c.put(b),
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

/// The unix second last written, and its RFC 3339 form up to the dot
/// (`2026-11-30T15:05:36.`): only the nanoseconds change within a second.
pub(super) struct Stamp {
    second: u64,
    prefix: Piece,
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp {
            second: u64::MAX,
            prefix: Piece::new(b""),
        }
    }
}

impl Stamp {
    /// `unix_ns` as `clock::rfc3339_nanos` writes it.
    #[inline(always)]
    fn write(&mut self, unix_ns: i128, c: &mut Cursor) {
        let ns = unix_ns.max(0) as u64;
        let (second, nanos) = (ns / 1_000_000_000, ns % 1_000_000_000);
        if second != self.second {
            let mut t = crate::clock::rfc3339_nanos(i128::from(second) * 1_000_000_000);
            // `.000000000Z` -> `.`
            t.truncate(t.len() - 10);
            self.prefix = Piece::new(t.as_bytes());
            self.second = second;
        }
        self.prefix.put(c);
        c.padded(nanos, 9);
        c.byte(b'Z');
    }
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
        let rule = (ev.rule != NO_RULE)
            .then(|| self.rules.name(ev.generation, ev.rule))
            .flatten();
        let iface = (ev.ifindex != 0).then(|| iface(&mut self.ifnames, ev.ifindex, now));
        let cgroup = (ev.cgroup_id != 0)
            .then(|| {
                cgroup_path(
                    &mut self.cgroup_paths,
                    self.cgroup_mount.as_deref(),
                    ev.cgroup_id,
                    now,
                )
            })
            .flatten();
        // Every byte of a cgroup path may take six escaped.
        let room = LINE_ROOM
            + rule.map_or(0, |n| n.field.room())
            + iface.map_or(0, |n| n.field.room())
            + cgroup.map_or(0, |p| 16 + 6 * p.len());
        let stamp = &mut self.stamp;
        let unix_ns = ev.ts_ns as i128 + self.clock_offset_ns;
        let src = addr(ev, &ev.src);
        append(out, room, |c| {
            c.put(b"{\"ts\":\"");
            stamp.write(unix_ns, c);
            c.put(b"\",\"event\":\"packet\"");
            if let Some(v) = &names.verdict[ev.verdict as usize] {
                v.put(c);
            }
            if let Some(r) = &names.reason[ev.reason as usize] {
                r.put(c);
            }
            if let Some(n) = rule {
                n.field.put(c);
            }
            if let Some(h) = &names.hook[ev.hook as usize] {
                h.put(c);
            }
            match ev.proto {
                IPPROTO_TCP => c.put(b",\"proto\":\"tcp\""),
                IPPROTO_UDP => c.put(b",\"proto\":\"udp\""),
                n => {
                    c.put(b",\"proto\":\"");
                    c.uint(n.into());
                    c.byte(b'"');
                }
            }
            c.put(b",\"src\":\"");
            ip(c, src);
            c.byte(b'"');
            if ev.sport != 0 {
                c.put(b",\"sport\":");
                c.uint(ev.sport.into());
            }
            c.put(b",\"dst\":\"");
            ip(c, addr(ev, &ev.dst));
            c.put(b"\",\"dport\":");
            c.uint(ev.dport.into());
            if let Some(n) = iface {
                n.field.put(c);
            }
            if let Some(path) = cgroup {
                string_field(c, b",\"cgroup\":", path);
            }
            if ev.pid_tgid != 0 {
                c.put(b",\"pid\":");
                c.uint(ev.pid_tgid >> 32);
                let name = comm(ev);
                if plain(name) {
                    c.put(b",\"comm\":\"");
                    c.put_first(&ev.comm, name.len());
                    c.byte(b'"');
                } else {
                    string_field(c, b",\"comm\":", &String::from_utf8_lossy(name));
                }
            }
            if ev.pkt_len != 0 {
                c.put(b",\"len\":");
                c.uint(ev.pkt_len.into());
            }
            c.put(b",\"policy\":");
            c.uint(ev.generation);
        });
        origin.finish(out, Some(seq));
        Meta {
            event: Cow::Borrowed("packet"),
            verdict: Verdict::from_u8(ev.verdict).map(Verdict::name),
            rule: rule.map(|n| n.text.clone()),
            src: Some(src),
        }
    }

    /// `unix_ns` as `clock::rfc3339_nanos` writes it.
    #[cfg(test)]
    fn time(&mut self, unix_ns: i128, out: &mut Vec<u8>) {
        append(out, 128, |c| self.stamp.write(unix_ns, c));
    }
}

fn addr(ev: &PacketEvent, b: &[u8; 16]) -> std::net::IpAddr {
    if ev.family == AF_INET {
        [b[0], b[1], b[2], b[3]].into()
    } else {
        Ipv6Addr::from(*b).into()
    }
}

#[inline(always)]
fn ip(c: &mut Cursor, a: std::net::IpAddr) {
    match a {
        std::net::IpAddr::V4(v4) => c.ipv4(v4.octets()),
        std::net::IpAddr::V6(v6) => {
            // At most 45 bytes ("ffff:...:255.255.255.255").
            let mut room = [0u8; 48];
            let mut w = &mut room[..];
            let _ = write!(w, "{v6}");
            let n = 48 - w.len();
            c.put(&room[..n]);
        }
    }
}

/// Whether `s` goes into a JSON string as it is (printable ASCII, no quote or backslash).
fn plain(s: &[u8]) -> bool {
    s.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `key` and `s` as a JSON string, through the cursor: `field`'s bytes.
fn string_field(c: &mut Cursor, key: &[u8], s: &str) {
    if needs_escape(s) {
        let mut b = Vec::new();
        field(&mut b, key, s);
        c.put(&b);
    } else {
        c.put(key);
        c.byte(b'"');
        c.put(s.as_bytes());
        c.byte(b'"');
    }
}

fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `key` (`,"name":`) and `s` as a JSON string: copied when nothing in it needs escaping,
/// else escaped by serde_json.
fn field(out: &mut Vec<u8>, key: &[u8], s: &str) {
    out.extend_from_slice(key);
    if needs_escape(s) {
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
    fn long_names_that_escape_to_six_bytes_each_fit_their_line() {
        let origin = Origin::new("boot-1", "host");
        let mut e = enricher();
        // Control characters: each is written `\u00XX`, six bytes.
        let long = "\u{1}".repeat(3000);
        e.rules.insert(9, vec![long.clone()]);
        e.know_cgroup(21, format!("/{long}"));
        let name = super::super::Name {
            field: Piece::field(b",\"iface\":", &long),
            text: long.as_str().into(),
        };
        e.ifnames.insert(5, (name, Instant::now()));
        let mut ev = events()[1];
        (ev.generation, ev.rule, ev.ifindex, ev.cgroup_id) = (9, 0, 5, 21);
        ev.comm = [0x1f; 16];
        let want = origin.stamp(serde_json::to_vec(&e.record(&ev)).unwrap(), Some(3));
        let mut got = Vec::new();
        e.line(&ev, 3, Instant::now(), &origin, &mut got);
        assert!(got.len() > 3 * 18_000, "{}", got.len());
        assert_eq!(got, want);
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

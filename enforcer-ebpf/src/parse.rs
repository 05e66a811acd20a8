//! The header parser both hooks share. Same rules as `enforcer_common::model::parse`
//! (the reference the tests hold it to); PARSER.md explains them.

use enforcer_common::consts::*;

use crate::{maps::HOST, packet::Packet};

/// What the parser found.
pub const K_NOT_IP: u8 = 0;
pub const K_BAD_IP: u8 = 1;
pub const K_OTHER: u8 = 2;
pub const K_LATER_FRAGMENT: u8 = 3;
pub const K_BAD_FRAGMENT: u8 = 4;
pub const K_CHAIN_TOO_LONG: u8 = 5;
pub const K_TRUNCATED: u8 = 6;
pub const K_PORTS: u8 = 7;

/// 8-aligned with the addresses at 8 and 24, so copying one into a map key takes two word
/// moves instead of sixteen byte moves (the BPF target assumes nothing of unaligned data).
#[repr(C, align(8))]
pub struct Parsed {
    pub kind: u8,
    pub family: u8,
    pub proto: u8,
    /// Transport header valid as a whole (see the model's `L4::Ports`).
    pub complete: bool,
    /// Ports in host order.
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Parsed {
    #[inline(always)]
    const fn new(kind: u8) -> Self {
        Parsed {
            kind,
            family: 0,
            proto: 0,
            complete: false,
            sport: 0,
            dport: 0,
            src: [0; 16],
            dst: [0; 16],
        }
    }
}

/// Parses from the Ethernet header (XDP).
#[inline(always)]
pub fn parse_frame<P: Packet>(p: &P) -> Parsed {
    let Some(eth) = p.load::<2>(12) else {
        return Parsed::new(K_NOT_IP);
    };
    let mut ethertype = u16::from_be_bytes(eth);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = p.load::<2>(off + 2) else {
            return Parsed::new(K_NOT_IP);
        };
        ethertype = u16::from_be_bytes(inner);
        off += VLAN_HLEN;
    }
    // Untagged frames keep a constant offset; tagged ones share one the verifier cannot
    // know (see `opaque`).
    match (ethertype, off == ETH_HLEN) {
        (ETH_P_IP, true) => parse_ipv4(p, ETH_HLEN),
        (ETH_P_IPV6, true) => parse_ipv6(p, ETH_HLEN),
        (ETH_P_IP, false) => parse_ipv4(p, opaque(off)),
        (ETH_P_IPV6, false) => parse_ipv6(p, opaque(off)),
        _ => Parsed::new(K_NOT_IP),
    }
}

/// `off`, as a value the verifier cannot know. With up to two VLAN tags the L3 header
/// starts at one of three constant offsets, and the verifier walked everything after the
/// Ethernet header once for each. Adding a map field it cannot see into (always 0) leaves
/// it one bounded offset for both tagged cases; untagged frames keep their constant and
/// pay nothing.
#[inline(always)]
fn opaque(off: usize) -> usize {
    let zero = HOST.get(0).map_or(0, |h| h.zero as usize);
    (off + zero) & 0x3f
}

/// Parses an IPv4 header at `l3`.
#[inline(always)]
pub fn parse_ipv4<P: Packet>(p: &P, l3: usize) -> Parsed {
    let mut out = Parsed::new(K_BAD_IP);
    out.family = AF_INET;
    let Some(h) = p.load::<20>(l3) else {
        return out;
    };
    if h[0] >> 4 != 4 {
        return out;
    }
    let hlen = (h[0] & 0x0f) as usize * 4;
    let buf = p.len() - l3;
    if hlen < IPV4_MIN_HLEN || hlen > buf {
        return out;
    }
    let tot = u16::from_be_bytes([h[2], h[3]]) as usize;
    let end = if tot == 0 {
        buf
    } else if tot < hlen || tot > buf {
        return out;
    } else {
        tot
    };
    out.src[..4].copy_from_slice(&h[12..16]);
    out.dst[..4].copy_from_slice(&h[16..20]);
    out.proto = h[9];
    if out.proto != IPPROTO_TCP && out.proto != IPPROTO_UDP {
        out.kind = K_OTHER;
        return out;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let frag_off = frag & 0x1fff;
    if frag_off != 0 {
        // RFC 3128: a TCP fragment at offset 8 can rewrite the first fragment's header.
        out.kind = if frag_off == 1 && out.proto == IPPROTO_TCP {
            K_BAD_FRAGMENT
        } else {
            K_LATER_FRAGMENT
        };
        return out;
    }
    transport(p, l3, hlen, end, frag & 0x2000 != 0, &mut out);
    out
}

/// Parses an IPv6 header and its extension header chain at `l3`.
#[inline(always)]
pub fn parse_ipv6<P: Packet>(p: &P, l3: usize) -> Parsed {
    let mut out = Parsed::new(K_BAD_IP);
    out.family = AF_INET6;
    let Some(h) = p.load::<40>(l3) else {
        return out;
    };
    if h[0] >> 4 != 6 {
        return out;
    }
    let buf = p.len() - l3;
    let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
    let end = if payload == 0 {
        buf
    } else if IPV6_HLEN + payload > buf {
        return out;
    } else {
        IPV6_HLEN + payload
    };
    out.src.copy_from_slice(&h[8..24]);
    out.dst.copy_from_slice(&h[24..40]);

    let mut nh = h[6];
    let mut off = IPV6_HLEN;
    let mut first_fragment = false;
    let mut seen_fragment = false;
    // Bounded walk: the verifier accepts a loop with a constant trip count.
    for _ in 0..MAX_EXT_HDRS {
        if !is_ipv6_ext(nh) {
            break;
        }
        out.proto = nh;
        out.kind = if first_fragment {
            K_BAD_FRAGMENT
        } else {
            K_TRUNCATED
        };
        if nh == IPPROTO_FRAGMENT {
            // A second fragment header is never valid (RFC 8200 4.5); the kernel drops it.
            if seen_fragment {
                out.kind = K_TRUNCATED;
                return out;
            }
            if off + 8 > end {
                return out;
            }
            let Some(f) = p.load::<4>(l3 + off) else {
                return out;
            };
            seen_fragment = true;
            let frag_off = u16::from_be_bytes([f[2], f[3]]) >> 3;
            if frag_off != 0 {
                out.proto = f[0];
                out.kind = if frag_off == 1 && f[0] == IPPROTO_TCP {
                    K_BAD_FRAGMENT
                } else {
                    K_LATER_FRAGMENT
                };
                return out;
            }
            first_fragment = f[3] & 1 != 0;
            nh = f[0];
            off += 8;
            continue;
        }
        if off + 2 > end {
            return out;
        }
        let Some(e) = p.load::<2>(l3 + off) else {
            return out;
        };
        off += if nh == IPPROTO_AH {
            (e[1] as usize + 2) * 4
        } else {
            (e[1] as usize + 1) * 8
        };
        nh = e[0];
    }
    out.proto = nh;
    if nh == IPPROTO_TCP || nh == IPPROTO_UDP {
        transport(p, l3, off, end, first_fragment, &mut out);
    } else if is_ipv6_ext(nh) {
        out.kind = K_CHAIN_TOO_LONG;
    } else {
        out.kind = K_OTHER;
    }
    out
}

/// Reads the TCP/UDP header at `l3 + off`; `end` is where the IP length says the packet ends.
#[inline(always)]
fn transport<P: Packet>(
    p: &P,
    l3: usize,
    off: usize,
    end: usize,
    first_fragment: bool,
    out: &mut Parsed,
) {
    let fail = if first_fragment {
        K_BAD_FRAGMENT
    } else {
        K_TRUNCATED
    };
    let avail = end.saturating_sub(off);
    if avail < 4 {
        out.kind = fail;
        return;
    }
    let Some(ports) = p.load::<4>(l3 + off) else {
        out.kind = fail;
        return;
    };
    out.sport = u16::from_be_bytes([ports[0], ports[1]]);
    out.dport = u16::from_be_bytes([ports[2], ports[3]]);
    let tcp = out.proto == IPPROTO_TCP;
    let min = if tcp { TCP_MIN_HLEN } else { UDP_HLEN };
    // RFC 1858: a first fragment must carry the whole transport header.
    if first_fragment && avail < min {
        out.kind = K_BAD_FRAGMENT;
        return;
    }
    out.kind = K_PORTS;
    out.complete = if !tcp {
        avail >= UDP_HLEN
    } else if avail < TCP_MIN_HLEN {
        false
    } else {
        match p.load::<1>(l3 + off + 12) {
            Some(d) => {
                let doff = (d[0] >> 4) as usize * 4;
                doff >= TCP_MIN_HLEN && (first_fragment || doff <= avail)
            }
            None => false,
        }
    };
}

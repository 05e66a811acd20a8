//! Reference parser: the headers a hook sees, decoded with plain slice reads.
//!
//! The BPF programs implement the same rules with verifier-friendly reads; see
//! `enforcer-ebpf/PARSER.md` for the rules and their reasons.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::consts::*;

/// What the transport layer turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// Not TCP/UDP (the IP protocol or final next header).
    Other(u8),
    /// A non-first fragment.
    LaterFragment,
    /// A first fragment too short for the transport header, or an RFC 3128 overlap.
    BadFragment(u8),
    /// More IPv6 extension headers than `MAX_EXT_HDRS`.
    ChainTooLong,
    /// Headers end before the transport ports (or an extension header is cut off).
    Truncated(u8),
    /// TCP or UDP with readable ports. `complete` says whether the whole transport
    /// header is valid (TCP: 20 bytes, data offset at least 5 and within the packet;
    /// UDP: 8 bytes).
    Ports {
        proto: u8,
        sport: u16,
        dport: u16,
        complete: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4/IPv6, or an Ethernet/VLAN header that is cut off.
    NotIp,
    /// IPv4/IPv6 whose own header the kernel rejects (too short, wrong version, bad IHL or
    /// length).
    BadIp {
        family: u8,
    },
    Ip {
        src: IpAddr,
        dst: IpAddr,
        l4: L4,
    },
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// Parses an Ethernet frame (as XDP sees it).
pub fn parse_frame(frame: &[u8]) -> Parsed {
    let Some(mut ethertype) = u16_at(frame, 12) else {
        return Parsed::NotIp;
    };
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = u16_at(frame, off + 2) else {
            return Parsed::NotIp;
        };
        ethertype = inner;
        off += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_l3(&frame[off..], AF_INET, MAX_HDR_OFFSET - off),
        ETH_P_IPV6 => parse_l3(&frame[off..], AF_INET6, MAX_HDR_OFFSET - off),
        _ => Parsed::NotIp,
    }
}

/// Parses an IP packet of `family` (as the cgroup_skb programs see it: from the L3 header).
/// `max_off` is the deepest offset (from the start of `pkt`) a header read may start at;
/// the XDP program reads no deeper than `MAX_HDR_OFFSET` into the frame.
pub fn parse_l3(pkt: &[u8], family: u8, max_off: usize) -> Parsed {
    match family {
        AF_INET => parse_ipv4(pkt, max_off),
        AF_INET6 => parse_ipv6(pkt, max_off),
        _ => Parsed::NotIp,
    }
}

fn parse_ipv4(pkt: &[u8], max_off: usize) -> Parsed {
    let bad = Parsed::BadIp { family: AF_INET };
    if pkt.len() < IPV4_MIN_HLEN {
        return bad;
    }
    if pkt[0] >> 4 != 4 {
        return bad;
    }
    let hlen = (pkt[0] & 0x0f) as usize * 4;
    if hlen < IPV4_MIN_HLEN || hlen > pkt.len() {
        return bad;
    }
    // A total length of 0 means "the buffer's length" (BIG TCP / GSO packets at the
    // cgroup hooks); otherwise it must cover the header and fit in the buffer.
    let tot_len = u16_at(pkt, 2).unwrap_or(0) as usize;
    let end = if tot_len == 0 {
        pkt.len()
    } else if tot_len < hlen || tot_len > pkt.len() {
        return bad;
    } else {
        tot_len
    };
    let src = IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]));
    let proto = pkt[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Parsed::Ip {
            src,
            dst,
            l4: L4::Other(proto),
        };
    }
    let frag = u16_at(pkt, 6).unwrap_or(0);
    let frag_off = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    if frag_off != 0 {
        // RFC 3128: a TCP fragment at offset 8 can rewrite the first fragment's header.
        let l4 = if frag_off == 1 && proto == IPPROTO_TCP {
            L4::BadFragment(proto)
        } else {
            L4::LaterFragment
        };
        return Parsed::Ip { src, dst, l4 };
    }
    let l4 = transport(&pkt[..end], hlen, proto, more, max_off);
    Parsed::Ip { src, dst, l4 }
}

fn parse_ipv6(pkt: &[u8], max_off: usize) -> Parsed {
    let bad = Parsed::BadIp { family: AF_INET6 };
    if pkt.len() < IPV6_HLEN || pkt[0] >> 4 != 6 {
        return bad;
    }
    // A payload length of 0 is a jumbogram or a BIG TCP packet: use the buffer's length.
    let payload = u16_at(pkt, 4).unwrap_or(0) as usize;
    let end = if payload == 0 {
        pkt.len()
    } else if IPV6_HLEN + payload > pkt.len() {
        return bad;
    } else {
        IPV6_HLEN + payload
    };
    let pkt = &pkt[..end];
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s.copy_from_slice(&pkt[8..24]);
    d.copy_from_slice(&pkt[24..40]);
    let src = IpAddr::V6(Ipv6Addr::from(s));
    let dst = IpAddr::V6(Ipv6Addr::from(d));
    let l4 = ipv6_chain(pkt, pkt[6], max_off);
    Parsed::Ip { src, dst, l4 }
}

fn ipv6_chain(pkt: &[u8], first: u8, max_off: usize) -> L4 {
    let mut nh = first;
    let mut off = IPV6_HLEN;
    let mut first_fragment = false;
    let mut seen_fragment = false;
    for _ in 0..MAX_EXT_HDRS {
        if !is_ipv6_ext(nh) {
            return match nh {
                IPPROTO_TCP | IPPROTO_UDP => transport(pkt, off, nh, first_fragment, max_off),
                other => L4::Other(other),
            };
        }
        let truncated = if first_fragment {
            L4::BadFragment(nh)
        } else {
            L4::Truncated(nh)
        };
        if nh == IPPROTO_FRAGMENT {
            // A second fragment header is never valid (RFC 8200 4.5); the kernel drops it.
            if seen_fragment {
                return L4::Truncated(nh);
            }
            if off + 8 > pkt.len() || off > max_off {
                return truncated;
            }
            seen_fragment = true;
            let next = pkt[off];
            let fo = u16::from_be_bytes([pkt[off + 2], pkt[off + 3]]);
            let frag_off = fo >> 3;
            if frag_off != 0 {
                return if frag_off == 1 && next == IPPROTO_TCP {
                    L4::BadFragment(next)
                } else {
                    L4::LaterFragment
                };
            }
            first_fragment = fo & 1 != 0;
            nh = next;
            off += 8;
            continue;
        }
        if off + 2 > pkt.len() || off > max_off {
            return truncated;
        }
        let next = pkt[off];
        let len = pkt[off + 1] as usize;
        off += if nh == IPPROTO_AH {
            (len + 2) * 4
        } else {
            (len + 1) * 8
        };
        nh = next;
    }
    match nh {
        IPPROTO_TCP | IPPROTO_UDP => transport(pkt, off, nh, first_fragment, max_off),
        n if is_ipv6_ext(n) => L4::ChainTooLong,
        other => L4::Other(other),
    }
}

/// Decodes the TCP/UDP header at `off`. `pkt` ends where the IP length says.
fn transport(pkt: &[u8], off: usize, proto: u8, first_fragment: bool, max_off: usize) -> L4 {
    let bad_frag = L4::BadFragment(proto);
    let avail = pkt.len().saturating_sub(off);
    if avail < 4 || off > max_off {
        return if first_fragment {
            bad_frag
        } else {
            L4::Truncated(proto)
        };
    }
    let sport = u16::from_be_bytes([pkt[off], pkt[off + 1]]);
    let dport = u16::from_be_bytes([pkt[off + 2], pkt[off + 3]]);
    let min = if proto == IPPROTO_TCP {
        TCP_MIN_HLEN
    } else {
        UDP_HLEN
    };
    // RFC 1858: a first fragment must carry the whole transport header.
    if first_fragment && avail < min {
        return bad_frag;
    }
    let complete = if proto == IPPROTO_TCP {
        if avail < TCP_MIN_HLEN || off + 12 > max_off {
            false
        } else {
            let doff = (pkt[off + 12] >> 4) as usize * 4;
            doff >= TCP_MIN_HLEN && (first_fragment || doff <= avail)
        }
    } else {
        avail >= UDP_HLEN
    };
    L4::Ports {
        proto,
        sport,
        dport,
        complete,
    }
}

//! Packets for the parser tests: a builder for every header the parsers read (Ethernet,
//! VLAN tags, IPv4 with options and fragment fields, IPv6 with extension header chains,
//! TCP, UDP, ICMP, ICMPv6, ARP), and a seeded generator and mutator for the differential
//! test (`tests/differential.rs`).
//!
//! The builder computes every length field from what it is given (IPv4 IHL and total
//! length, IPv6 payload length, next-header chain, TCP data offset, UDP length) unless a
//! field is set explicitly, so a test states only what it wants wrong. Three ways to cut a
//! packet short:
//! - [`Packet::cut_l4`]: the transport header (and payload) end early and the IP lengths
//!   say so (a consistent but short packet);
//! - [`Packet::trailer`]: bytes after the IP packet that the IP lengths do not count
//!   (Ethernet padding);
//! - [`Packet::truncate`]: the frame is cut after everything was computed, so the IP
//!   lengths overrun the buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enforcer_common::{consts::*, reason::Reason};

use crate::kernel::{Prog, TestKernel};

pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_LLDP: u16 = 0x88CC;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_SCTP: u8 = 132;

pub const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The TCP flags byte of a SYN.
pub const TCP_SYN: u8 = 0x02;

/// An IPv6 extension header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options; the field is Hdr Ext Len ((len + 1) * 8 bytes).
    HopByHop(u8),
    Routing(u8),
    DstOpts(u8),
    /// Mobility header (135).
    Mobility(u8),
    /// Host Identity Protocol (139).
    Hip(u8),
    /// Shim6 (140).
    Shim6(u8),
    /// Authentication header; the field is Payload Len ((len + 2) * 4 bytes).
    Ah(u8),
    /// Fragment header: offset in 8-octet units and the M flag.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Any header kind with these bytes; the first byte is replaced by the next header.
    Raw {
        kind: u8,
        bytes: Vec<u8>,
    },
}

impl Ext {
    /// Every kind the parsers walk, with a small length.
    pub fn all_kinds() -> Vec<Ext> {
        vec![
            Ext::HopByHop(0),
            Ext::Routing(1),
            Ext::DstOpts(0),
            Ext::Fragment {
                offset: 0,
                more: false,
            },
            Ext::Ah(4),
            Ext::Mobility(0),
            Ext::Hip(1),
            Ext::Shim6(0),
        ]
    }

    /// The next-header value that announces this header.
    pub fn kind(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => IPPROTO_HOPOPTS,
            Ext::Routing(_) => IPPROTO_ROUTING,
            Ext::DstOpts(_) => IPPROTO_DSTOPTS,
            Ext::Mobility(_) => IPPROTO_MH,
            Ext::Hip(_) => IPPROTO_HIP,
            Ext::Shim6(_) => IPPROTO_SHIM6,
            Ext::Ah(_) => IPPROTO_AH,
            Ext::Fragment { .. } => IPPROTO_FRAGMENT,
            Ext::Raw { kind, .. } => *kind,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Ext::HopByHop(_) => "hop-by-hop",
            Ext::Routing(_) => "routing",
            Ext::DstOpts(_) => "destination-options",
            Ext::Mobility(_) => "mobility",
            Ext::Hip(_) => "hip",
            Ext::Shim6(_) => "shim6",
            Ext::Ah(_) => "ah",
            Ext::Fragment { .. } => "fragment",
            Ext::Raw { .. } => "raw",
        }
    }

    fn encode(&self, next: u8, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Ext::HopByHop(len)
            | Ext::Routing(len)
            | Ext::DstOpts(len)
            | Ext::Mobility(len)
            | Ext::Hip(len)
            | Ext::Shim6(len) => {
                // Options and type-specific data are zeros (Pad1 options, routing type 0
                // with no segments left): the parsers read only the first two bytes.
                out.extend_from_slice(&[next, *len]);
                out.resize(start + (*len as usize + 1) * 8, 0);
            }
            Ext::Ah(len) => {
                out.extend_from_slice(&[next, *len, 0, 0]);
                out.extend_from_slice(&0x100u32.to_be_bytes()); // SPI
                out.extend_from_slice(&1u32.to_be_bytes()); // sequence number
                out.resize(start + (*len as usize + 2) * 4, 0xAA); // ICV
            }
            Ext::Fragment { offset, more } => {
                let fo = (offset << 3) | *more as u16;
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&fo.to_be_bytes());
                out.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            }
            Ext::Raw { bytes, .. } => {
                out.extend_from_slice(bytes);
                if let Some(b) = out.get_mut(start) {
                    *b = next;
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub version: u8,
    /// Header length in 32-bit words; computed from the options when `None`.
    pub ihl: Option<u8>,
    pub tos: u8,
    /// Computed (header + transport + payload, after `cut_l4`) when `None`.
    pub total_len: Option<u16>,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    /// Fragment offset in 8-octet units (13 bits).
    pub frag_offset: u16,
    pub ttl: u8,
    /// The transport's protocol when `None`.
    pub proto: Option<u8>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Option bytes, zero-padded (End of Options) to a multiple of 4.
    pub options: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub version: u8,
    /// Computed (extension headers + transport + payload, after `cut_l4`) when `None`.
    pub payload_len: Option<u16>,
    /// The first extension header's kind, else the transport's protocol, when `None`.
    pub next: Option<u8>,
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub exts: Vec<Ext>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L3 {
    V4(Ipv4),
    V6(Ipv6),
    /// An ARP request (sender, target).
    Arp(Ipv4Addr, Ipv4Addr),
    /// Anything: bytes after the EtherType.
    Raw(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        /// Data offset in 32-bit words; computed from the options when `None`.
        doff: Option<u8>,
        flags: u8,
        /// Option bytes (NOP-padded to a multiple of 4).
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        /// Computed when `None`.
        len: Option<u16>,
    },
    Icmp {
        ty: u8,
        code: u8,
    },
    Icmpv6 {
        ty: u8,
        code: u8,
        body: Vec<u8>,
    },
    /// Any other protocol (or no transport at all, with no bytes).
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl Transport {
    pub fn proto(&self) -> u8 {
        match self {
            Transport::Tcp { .. } => IPPROTO_TCP,
            Transport::Udp { .. } => IPPROTO_UDP,
            Transport::Icmp { .. } => IPPROTO_ICMP,
            Transport::Icmpv6 { .. } => IPPROTO_ICMPV6,
            Transport::Raw { proto, .. } => *proto,
        }
    }

    pub fn ports(&self) -> Option<(u16, u16)> {
        match *self {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
                Some((sport, dport))
            }
            _ => None,
        }
    }

    /// Header bytes; `payload_len` is what follows (for the UDP length).
    fn encode(&self, payload_len: usize) -> Vec<u8> {
        match self {
            Transport::Tcp {
                sport,
                dport,
                doff,
                flags,
                options,
            } => {
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(1); // NOP
                }
                let doff = doff.unwrap_or((5 + opts.len() / 4) as u8);
                let mut b = Vec::with_capacity(20 + opts.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&1000u32.to_be_bytes()); // seq
                b.extend_from_slice(&0u32.to_be_bytes()); // ack
                b.push(doff << 4);
                b.push(*flags);
                b.extend_from_slice(&65535u16.to_be_bytes()); // window
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                b.extend_from_slice(&opts);
                b
            }
            Transport::Udp { sport, dport, len } => {
                let len = len.unwrap_or((UDP_HLEN + payload_len).min(0xffff) as u16);
                let mut b = Vec::with_capacity(8);
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b
            }
            Transport::Icmp { ty, code } => vec![*ty, *code, 0, 0, 0, 1, 0, 1],
            Transport::Icmpv6 { ty, code, body } => {
                let mut b = vec![*ty, *code, 0, 0];
                b.extend_from_slice(body);
                b
            }
            Transport::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

/// A packet to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// VLAN tags, outermost first: (TPID, TCI).
    pub vlans: Vec<(u16, u16)>,
    /// The EtherType after the tags; from `l3` when `None`.
    pub ethertype: Option<u16>,
    pub l3: L3,
    pub l4: Transport,
    /// Bytes after the transport header.
    pub payload: Vec<u8>,
    /// Keep only this many bytes of transport header + payload (IP lengths follow).
    pub l4_cut: Option<usize>,
    /// Bytes after the IP packet, not counted by the IP lengths.
    pub trailer: usize,
    /// Cut the finished frame to this many bytes.
    pub truncate: Option<usize>,
}

/// Where the layers of a built frame start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// End of the Ethernet header and of each VLAN tag.
    pub l2_ends: Vec<usize>,
    /// Start of the IP (or other L3) header.
    pub l3: usize,
    /// Family of the IP header (AF_INET/AF_INET6), 0 when not IP.
    pub family: u8,
    /// Start of each IPv6 extension header.
    pub exts: Vec<usize>,
    /// Start of the transport header.
    pub l4: usize,
    /// Start of the payload.
    pub payload: usize,
    /// End of the IP packet (before the trailer).
    pub ip_end: usize,
}

impl Layout {
    /// Every layer boundary, in order.
    pub fn boundaries(&self) -> Vec<usize> {
        let mut v = vec![0, 12];
        v.extend(&self.l2_ends);
        v.push(self.l3);
        v.extend(&self.exts);
        // Transport: ports, UDP header end, TCP data offset byte, header end.
        v.extend([
            self.l4,
            self.l4 + 4,
            self.l4 + 8,
            self.l4 + 13,
            self.payload,
            self.ip_end,
        ]);
        v.sort_unstable();
        v.dedup();
        v
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Packet {
    fn ip(src: IpAddr, dst: IpAddr, l4: Transport) -> Packet {
        let proto = l4.proto();
        let l3 = match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => L3::V4(Ipv4 {
                version: 4,
                ihl: None,
                tos: 0,
                total_len: None,
                id: 0x4242,
                df: proto == IPPROTO_TCP,
                mf: false,
                frag_offset: 0,
                ttl: 64,
                proto: None,
                src,
                dst,
                options: Vec::new(),
            }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => L3::V6(Ipv6 {
                version: 6,
                payload_len: None,
                next: None,
                hop_limit: 64,
                src,
                dst,
                exts: Vec::new(),
            }),
            _ => panic!("{src} and {dst} are of different families"),
        };
        Packet {
            vlans: Vec::new(),
            ethertype: None,
            l3,
            l4,
            payload: Vec::new(),
            l4_cut: None,
            trailer: 0,
            truncate: None,
        }
    }

    /// A TCP SYN.
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Packet {
        Packet::ip(
            src,
            dst,
            Transport::Tcp {
                sport,
                dport,
                doff: None,
                flags: TCP_SYN,
                options: Vec::new(),
            },
        )
    }

    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Packet {
        Packet::ip(
            src,
            dst,
            Transport::Udp {
                sport,
                dport,
                len: None,
            },
        )
        .payload(8)
    }

    /// TCP or UDP by protocol number.
    pub fn l4(proto: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Packet {
        match proto {
            IPPROTO_TCP => Packet::tcp(src, dst, sport, dport),
            IPPROTO_UDP => Packet::udp(src, dst, sport, dport),
            _ => panic!("not TCP/UDP: {proto}"),
        }
    }

    /// An ICMP echo request (IPv4) or ICMPv6 echo request (IPv6).
    pub fn ping(src: IpAddr, dst: IpAddr) -> Packet {
        let l4 = match src {
            IpAddr::V4(_) => Transport::Icmp { ty: 8, code: 0 },
            IpAddr::V6(_) => Transport::Icmpv6 {
                ty: 128,
                code: 0,
                body: vec![0, 1, 0, 1],
            },
        };
        Packet::ip(src, dst, l4).payload(16)
    }

    /// An NDP neighbor solicitation for `target`, to its solicited-node multicast address.
    pub fn neighbor_solicitation(src: Ipv6Addr, target: Ipv6Addr) -> Packet {
        let t = target.octets();
        let dst = Ipv6Addr::from([
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
        ]);
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(&t);
        body.extend_from_slice(&[1, 1]); // source link-layer address option
        body.extend_from_slice(&MAC_SRC);
        let mut p = Packet::ip(
            IpAddr::V6(src),
            IpAddr::V6(dst),
            Transport::Icmpv6 {
                ty: 135,
                code: 0,
                body,
            },
        );
        if let L3::V6(h) = &mut p.l3 {
            h.hop_limit = 255;
        }
        p
    }

    /// An IP packet of another protocol.
    pub fn proto(src: IpAddr, dst: IpAddr, proto: u8, bytes: usize) -> Packet {
        Packet::ip(
            src,
            dst,
            Transport::Raw {
                proto,
                bytes: pattern(bytes),
            },
        )
    }

    /// An ARP request.
    pub fn arp(sender: Ipv4Addr, target: Ipv4Addr) -> Packet {
        Packet {
            vlans: Vec::new(),
            ethertype: None,
            l3: L3::Arp(sender, target),
            l4: Transport::Raw {
                proto: 0,
                bytes: Vec::new(),
            },
            payload: Vec::new(),
            l4_cut: None,
            trailer: 0,
            truncate: None,
        }
    }

    /// A frame of any EtherType with these bytes after it.
    pub fn ethertype(ethertype: u16, bytes: Vec<u8>) -> Packet {
        Packet {
            ethertype: Some(ethertype),
            l3: L3::Raw(bytes),
            ..Packet::arp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED)
        }
    }

    /// Adds a VLAN tag inside the ones already there (TPID 0x8100 or 0x88a8, VLAN id).
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid & 0x0fff));
        self
    }

    /// Edits the IPv4 header.
    pub fn v4(mut self, f: impl FnOnce(&mut Ipv4)) -> Self {
        match &mut self.l3 {
            L3::V4(h) => f(h),
            other => panic!("not IPv4: {other:?}"),
        }
        self
    }

    /// Edits the IPv6 header.
    pub fn v6(mut self, f: impl FnOnce(&mut Ipv6)) -> Self {
        match &mut self.l3 {
            L3::V6(h) => f(h),
            other => panic!("not IPv6: {other:?}"),
        }
        self
    }

    /// Edits the transport header.
    pub fn l4_edit(mut self, f: impl FnOnce(&mut Transport)) -> Self {
        f(&mut self.l4);
        self
    }

    /// Appends an IPv6 extension header to the chain.
    pub fn ext(self, e: Ext) -> Self {
        self.v6(|h| h.exts.push(e))
    }

    /// IPv4 options of `n` bytes (NOPs ending in End of Options), IHL following.
    pub fn v4_options(self, n: usize) -> Self {
        self.v4(|h| {
            h.options = vec![1; n];
            if let Some(last) = h.options.last_mut() {
                *last = 0;
            }
        })
    }

    /// IPv4 fragment fields: offset in 8-octet units, More Fragments.
    pub fn frag4(self, offset: u16, more: bool) -> Self {
        self.v4(|h| {
            h.frag_offset = offset;
            h.mf = more;
            h.df = false;
        })
    }

    /// TCP data offset (in 32-bit words), whatever the header's real length.
    pub fn tcp_doff(self, doff: u8) -> Self {
        self.l4_edit(|t| match t {
            Transport::Tcp { doff: d, .. } => *d = Some(doff),
            other => panic!("not TCP: {other:?}"),
        })
    }

    /// TCP options of `n` bytes (NOPs), data offset following.
    pub fn tcp_options(self, n: usize) -> Self {
        self.l4_edit(|t| match t {
            Transport::Tcp { options, .. } => *options = vec![1; n],
            other => panic!("not TCP: {other:?}"),
        })
    }

    /// `n` bytes of payload after the transport header.
    pub fn payload(mut self, n: usize) -> Self {
        self.payload = pattern(n);
        self
    }

    /// Keeps only `n` bytes of transport header + payload; the IP lengths say so.
    pub fn cut_l4(mut self, n: usize) -> Self {
        self.l4_cut = Some(n);
        self
    }

    /// `n` bytes after the IP packet that the IP lengths do not count.
    pub fn trailer(mut self, n: usize) -> Self {
        self.trailer = n;
        self
    }

    /// Cuts the finished frame to `n` bytes.
    pub fn truncate(mut self, n: usize) -> Self {
        self.truncate = Some(n);
        self
    }

    pub fn family(&self) -> u8 {
        match self.l3 {
            L3::V4(_) => AF_INET,
            L3::V6(_) => AF_INET6,
            _ => 0,
        }
    }

    /// Source and destination, when IP.
    pub fn addrs(&self) -> Option<(IpAddr, IpAddr)> {
        match &self.l3 {
            L3::V4(h) => Some((IpAddr::V4(h.src), IpAddr::V4(h.dst))),
            L3::V6(h) => Some((IpAddr::V6(h.src), IpAddr::V6(h.dst))),
            _ => None,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_layout().0
    }

    pub fn build_with_layout(&self) -> (Vec<u8>, Layout) {
        let mut layout = Layout::default();
        let mut l4 = self.l4.encode(self.payload.len());
        let l4_hlen = l4.len();
        l4.extend_from_slice(&self.payload);
        if let Some(n) = self.l4_cut {
            l4.truncate(n);
        }
        let mut f = Vec::with_capacity(64 + l4.len());
        f.extend_from_slice(&MAC_DST);
        f.extend_from_slice(&MAC_SRC);
        let l3_type = match self.l3 {
            L3::V4(_) => ETH_P_IP,
            L3::V6(_) => ETH_P_IPV6,
            L3::Arp(..) => ETH_P_ARP,
            L3::Raw(_) => 0x88B5, // local experimental
        };
        let ethertype = self.ethertype.unwrap_or(l3_type);
        // Each tag's TPID takes the place of the EtherType before it.
        let mut types: Vec<u16> = self.vlans.iter().map(|v| v.0).collect();
        types.push(ethertype);
        f.extend_from_slice(&types[0].to_be_bytes());
        layout.l2_ends.push(f.len());
        for (i, (_, tci)) in self.vlans.iter().enumerate() {
            f.extend_from_slice(&tci.to_be_bytes());
            f.extend_from_slice(&types[i + 1].to_be_bytes());
            layout.l2_ends.push(f.len());
        }
        layout.l3 = f.len();
        match &self.l3 {
            L3::V4(h) => {
                layout.family = AF_INET;
                let mut opts = h.options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(0);
                }
                let hlen = IPV4_MIN_HLEN + opts.len();
                let ihl = h.ihl.unwrap_or((hlen / 4) as u8);
                let total = h.total_len.unwrap_or((hlen + l4.len()).min(0xffff) as u16);
                let frag = ((h.df as u16) << 14) | ((h.mf as u16) << 13) | (h.frag_offset & 0x1fff);
                let mut hdr = Vec::with_capacity(hlen);
                hdr.push((h.version << 4) | (ihl & 0x0f));
                hdr.push(h.tos);
                hdr.extend_from_slice(&total.to_be_bytes());
                hdr.extend_from_slice(&h.id.to_be_bytes());
                hdr.extend_from_slice(&frag.to_be_bytes());
                hdr.push(h.ttl);
                hdr.push(h.proto.unwrap_or(self.l4.proto()));
                hdr.extend_from_slice(&[0, 0]);
                hdr.extend_from_slice(&h.src.octets());
                hdr.extend_from_slice(&h.dst.octets());
                hdr.extend_from_slice(&opts);
                let c = checksum(&hdr);
                hdr[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&hdr);
            }
            L3::V6(h) => {
                layout.family = AF_INET6;
                let mut chain = Vec::new();
                let mut starts = Vec::new();
                for (i, e) in h.exts.iter().enumerate() {
                    let next = h.exts.get(i + 1).map_or(self.l4.proto(), Ext::kind);
                    starts.push(chain.len());
                    e.encode(next, &mut chain);
                }
                let first = h.exts.first().map_or(self.l4.proto(), Ext::kind);
                let payload_len = h
                    .payload_len
                    .unwrap_or((chain.len() + l4.len()).min(0xffff) as u16);
                f.push((h.version << 4) & 0xf0);
                f.extend_from_slice(&[0, 0, 0]);
                f.extend_from_slice(&payload_len.to_be_bytes());
                f.push(h.next.unwrap_or(first));
                f.push(h.hop_limit);
                f.extend_from_slice(&h.src.octets());
                f.extend_from_slice(&h.dst.octets());
                let base = f.len();
                layout.exts = starts.iter().map(|s| base + s).collect();
                f.extend_from_slice(&chain);
            }
            L3::Arp(sender, target) => {
                f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
                f.extend_from_slice(&MAC_SRC);
                f.extend_from_slice(&sender.octets());
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&target.octets());
            }
            L3::Raw(b) => f.extend_from_slice(b),
        }
        layout.l4 = f.len();
        layout.payload = layout.l4 + l4_hlen.min(l4.len());
        if matches!(self.l3, L3::V4(_) | L3::V6(_)) {
            f.extend_from_slice(&l4);
        }
        layout.ip_end = f.len();
        f.extend(std::iter::repeat_n(0u8, self.trailer));
        if let Some(n) = self.truncate {
            f.truncate(n);
        }
        (f, layout)
    }
}

/// Rewrites the IP length field of a built frame so the IP packet ends at `end` (a frame
/// offset). Returns false when the header is not there to rewrite.
pub fn set_ip_end(frame: &mut [u8], layout: &Layout, end: usize) -> bool {
    let l3 = layout.l3;
    match layout.family {
        AF_INET if frame.len() >= l3 + 4 => {
            let len = end.saturating_sub(l3).min(0xffff) as u16;
            frame[l3 + 2..l3 + 4].copy_from_slice(&len.to_be_bytes());
            true
        }
        AF_INET6 if frame.len() >= l3 + 6 => {
            let len = end.saturating_sub(l3 + IPV6_HLEN).min(0xffff) as u16;
            frame[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
            true
        }
        _ => false,
    }
}

/// Formats bytes as hex, 16 per line, with offsets.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in b.chunks(16).enumerate() {
        s.push_str(&format!("{:04x}:", i * 16));
        for x in line {
            s.push_str(&format!(" {x:02x}"));
        }
        s.push('\n');
    }
    s
}

/// Hex as one unbroken string (for pasting into a table case).
pub fn hex_compact(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `prog` on `frame` through BPF_PROG_TEST_RUN like `TestKernel::run`, but returns
/// the kernel's refusal of the input instead of panicking.
pub fn try_run(k: &TestKernel, prog: Prog, frame: &[u8]) -> Result<u32, String> {
    try_run_from(k, prog, frame, 0)
}

/// As `try_run`, with the cgroup ingress program seeing the packet arrive on interface
/// `ingress_ifindex` (0: none given; XDP's test runs always arrive on loopback, 1).
pub fn try_run_from(
    k: &TestKernel,
    prog: Prog,
    frame: &[u8],
    ingress_ifindex: u32,
) -> Result<u32, String> {
    use aya::programs::{CgroupSkb, TestRun as _, TestRunOptions, Xdp};
    use enforcer::kernel::programs::{EGRESS, INGRESS, XDP};
    // struct __sk_buff up to `ifindex`: test_run takes mark, priority, ingress_ifindex and
    // ifindex from it and wants the rest zero; `ingress_ifindex` is at byte 36.
    let mut ctx = [0u8; 44];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let with_ctx = prog == Prog::Ingress && ingress_ifindex != 0;
    let opts = TestRunOptions {
        data_in: Some(frame),
        ctx_in: with_ctx.then_some(&ctx[..]),
        repeat: 1,
        ..Default::default()
    };
    let name = match prog {
        Prog::Xdp => XDP,
        Prog::Ingress => INGRESS,
        Prog::Egress => EGRESS,
    };
    let p = k
        .loaded
        .ebpf
        .program(name)
        .ok_or_else(|| format!("no program {name}"))?;
    let r = match prog {
        Prog::Xdp => <&Xdp>::try_from(p)
            .map_err(|e| e.to_string())?
            .test_run(opts),
        _ => <&CgroupSkb>::try_from(p)
            .map_err(|e| e.to_string())?
            .test_run(opts),
    };
    r.map(|o| o.return_value)
        .map_err(|e| match std::error::Error::source(&e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        })
}

/// Input BPF_PROG_TEST_RUN refuses (EINVAL), and what the model must say of it instead:
/// frames shorter than an Ethernet header (a NIC never delivers them: not-ip), and for
/// cgroup_skb (as of kernel 6.18) IPv4/IPv6 frames whose L3 part is shorter than the
/// fixed IP header (the stack never hands the hooks such a packet; malformed if it did).
/// A kernel that runs such input anyway is held to the model like any other.
pub fn test_run_refuses(prog: Prog, frame: &[u8]) -> Option<Reason> {
    if frame.len() < ETH_HLEN {
        return Some(Reason::NotIp);
    }
    let l3 = frame.len() - ETH_HLEN;
    match (prog, u16::from_be_bytes([frame[12], frame[13]])) {
        (Prog::Xdp, _) => None,
        (_, ETH_P_IP) if l3 < IPV4_MIN_HLEN => Some(Reason::Malformed),
        (_, ETH_P_IPV6) if l3 < IPV6_HLEN => Some(Reason::Malformed),
        _ => None,
    }
}

/// A small, fast, seeded PRNG (splitmix64): reproducible packets without a crate.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// An independent stream for item `index` of run `seed`, so one packet can be
    /// regenerated from (seed, index) alone.
    pub fn for_index(seed: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn u8(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// The addresses and ports the generator draws from: chosen so that a random pick lands
/// on allowed and refused sources, host and other destinations, and protected,
/// unprotected and failsafe ports (and their range and prefix edges).
#[derive(Clone, Debug)]
pub struct Universe {
    pub v4_sources: Vec<Ipv4Addr>,
    pub v6_sources: Vec<Ipv6Addr>,
    pub v4_dests: Vec<Ipv4Addr>,
    pub v6_dests: Vec<Ipv6Addr>,
    pub ports: Vec<u16>,
}

/// One generated frame and the template it came from.
#[derive(Clone, Debug)]
pub struct Generated {
    pub frame: Vec<u8>,
    pub kind: &'static str,
}

/// Largest frame the generator makes: test_run hands XDP at most a page minus headroom and
/// tailroom (about 3.5 KB) linearly, and refuses larger cgroup_skb input.
pub const MAX_GEN_FRAME: usize = 3000;

const EXT_KINDS: [u8; 8] = [
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPPROTO_FRAGMENT,
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_MH,
    IPPROTO_HIP,
    IPPROTO_SHIM6,
];

impl Universe {
    fn src(&self, rng: &mut Rng, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(*rng.pick(&self.v6_sources))
        } else {
            IpAddr::V4(*rng.pick(&self.v4_sources))
        }
    }

    fn dst(&self, rng: &mut Rng, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(*rng.pick(&self.v6_dests))
        } else {
            IpAddr::V4(*rng.pick(&self.v4_dests))
        }
    }

    fn port(&self, rng: &mut Rng) -> u16 {
        if rng.chance(85) {
            *rng.pick(&self.ports)
        } else {
            rng.u16()
        }
    }
}

fn random_ext(rng: &mut Rng) -> Ext {
    // Mostly short headers; sometimes long ones.
    let len = if rng.chance(85) {
        rng.below(3) as u8
    } else {
        rng.u8() / 4
    };
    match rng.below(8) {
        0 => Ext::HopByHop(len),
        1 => Ext::Routing(len),
        2 => Ext::DstOpts(len),
        3 => Ext::Mobility(len),
        4 => Ext::Hip(len),
        5 => Ext::Shim6(len),
        6 => Ext::Ah(if rng.chance(70) { 4 } else { len }),
        _ => random_fragment(rng),
    }
}

fn random_fragment(rng: &mut Rng) -> Ext {
    let offset = match rng.below(4) {
        0 => 0,
        1 => 1,
        2 => rng.range(2, 200) as u16,
        _ => rng.u16() & 0x1fff,
    };
    Ext::Fragment {
        offset,
        more: rng.chance(60),
    }
}

/// A well-formed TCP/UDP packet to a random address and port, with random decoration
/// (VLAN tags, IPv4 options, IPv6 extension headers, TCP options, payload, padding).
pub fn random_packet(rng: &mut Rng, u: &Universe) -> Packet {
    let v6 = rng.chance(50);
    let proto = if rng.chance(60) {
        IPPROTO_TCP
    } else {
        IPPROTO_UDP
    };
    let mut p = Packet::l4(
        proto,
        u.src(rng, v6),
        u.dst(rng, v6),
        rng.u16(),
        u.port(rng),
    );
    p = p.payload(if rng.chance(90) {
        rng.range(0, 64)
    } else {
        rng.range(64, 1400)
    });
    if rng.chance(12) {
        for _ in 0..rng.range(1, 3) {
            p = random_vlan(rng, p);
        }
    }
    if v6 {
        if rng.chance(25) {
            for _ in 0..rng.range(1, 4) {
                let e = random_ext(rng);
                // Fragment headers belong to the fragment template; here only atomic ones.
                let e = match e {
                    Ext::Fragment { .. } => Ext::Fragment {
                        offset: 0,
                        more: false,
                    },
                    e => e,
                };
                p = p.ext(e);
            }
        }
    } else if rng.chance(20) {
        p = p.v4_options(rng.range(1, 40));
    }
    if proto == IPPROTO_TCP && rng.chance(15) {
        p = p.tcp_options(rng.range(1, 40));
    }
    if rng.chance(10) {
        p = p.trailer(rng.range(1, 46));
    }
    p
}

fn random_vlan(rng: &mut Rng, p: Packet) -> Packet {
    let tpid = if rng.chance(50) {
        ETH_P_8021Q
    } else {
        ETH_P_8021AD
    };
    let vid = if rng.chance(30) {
        0
    } else {
        rng.u16() & 0x0fff
    };
    p.vlan(tpid, vid)
}

/// Flips `n` random bits, mostly in the first 96 bytes (where the headers are).
pub fn flip_bits(rng: &mut Rng, frame: &mut [u8], n: usize) {
    if frame.is_empty() {
        return;
    }
    for _ in 0..n {
        let span = if rng.chance(85) {
            frame.len().min(96)
        } else {
            frame.len()
        };
        let i = rng.below(span as u64) as usize;
        frame[i] ^= 1 << rng.below(8);
    }
}

/// How [`cut_near_boundary`] cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The frame ends early; the IP lengths still describe the whole packet (they overrun).
    Frame,
    /// The frame ends early and the IP length says so (a consistent short packet).
    Consistent,
    /// Only the IP length ends early; the bytes after it stay in the buffer (a parser
    /// that reads past the IP length reads them).
    LengthOnly,
}

/// Cuts `frame` at or near a layer boundary, the way `how` says.
pub fn cut_near_boundary(rng: &mut Rng, frame: &mut Vec<u8>, layout: &Layout, how: Cut) {
    let b = layout.boundaries();
    let at = *rng.pick(&b) as i64 + rng.range(0, 6) as i64 - 3;
    let at = (at.max(0) as usize).min(frame.len());
    if how != Cut::LengthOnly {
        frame.truncate(at);
    }
    if how != Cut::Frame {
        set_ip_end(frame, layout, at);
    }
}

fn random_cut(rng: &mut Rng) -> Cut {
    *rng.pick(&[
        Cut::Frame,
        Cut::Consistent,
        Cut::Consistent,
        Cut::LengthOnly,
        Cut::LengthOnly,
    ])
}

/// Random damage to a frame: bit flips, byte overwrites, cuts, inserted or removed bytes.
pub fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 3) {
        match rng.below(5) {
            0 => {
                let n = rng.range(1, 4);
                flip_bits(rng, frame, n);
            }
            1 if !frame.is_empty() => {
                let i = rng.below(frame.len().min(96) as u64) as usize;
                let r = rng.u8();
                frame[i] = *rng.pick(&[0, 1, 4, 5, 6, 17, 43, 44, 51, 60, 0x45, 0x60, 0xff, r]);
            }
            2 => {
                let n = rng.below(frame.len() as u64 + 1) as usize;
                frame.truncate(n);
            }
            3 if !frame.is_empty() => {
                let i = rng.below(frame.len() as u64) as usize;
                let n = rng.range(1, 8);
                let bytes = rng.bytes(n);
                frame.splice(i..i, bytes);
            }
            _ if !frame.is_empty() => {
                let i = rng.below(frame.len() as u64) as usize;
                let n = rng.range(1, 8).min(frame.len() - i);
                frame.drain(i..i + n);
            }
            _ => {}
        }
    }
    frame.truncate(MAX_GEN_FRAME);
}

/// Generates one frame from `rng`: a mix of valid packets, truncations, bit flips, random
/// extension header chains, fragments, VLAN stacks, IP header field damage, non-IP frames
/// and ICMP, some of them further mutated.
pub fn generate(rng: &mut Rng, u: &Universe) -> Generated {
    let roll = rng.below(100);
    let (mut frame, kind) = match roll {
        0..=24 => (random_packet(rng, u).build(), "valid"),
        25..=36 => {
            let (mut f, l) = random_packet(rng, u).build_with_layout();
            let how = random_cut(rng);
            cut_near_boundary(rng, &mut f, &l, how);
            let kind = match how {
                Cut::Frame => "truncated-frame",
                Cut::Consistent => "truncated-consistent",
                Cut::LengthOnly => "truncated-length-only",
            };
            (f, kind)
        }
        37..=46 => {
            let mut f = random_packet(rng, u).build();
            let n = rng.range(1, 8);
            flip_bits(rng, &mut f, n);
            (f, "bit-flipped")
        }
        47..=58 => (ext_chain(rng, u), "ext-chain"),
        59..=68 => (fragment(rng, u), "fragment"),
        69..=73 => {
            let mut p = random_packet(rng, u);
            p.vlans.clear();
            for _ in 0..rng.range(0, 4) {
                p = random_vlan(rng, p);
            }
            if rng.chance(15) {
                // A tag with an unknown TPID is not walked.
                p.vlans
                    .push((*rng.pick(&[0x9100, 0x9200, 0x8100, 0x88a8]), rng.u16()));
            }
            (p.build(), "vlan")
        }
        74..=83 => (ip_fields(rng, u), "ip-fields"),
        84..=91 => (not_ip(rng), "not-ip"),
        _ => (other_proto(rng, u), "icmp-other"),
    };
    let kind = if rng.chance(12) {
        mutate(rng, &mut frame);
        match kind {
            "valid" => "valid+mutated",
            "ext-chain" => "ext-chain+mutated",
            "fragment" => "fragment+mutated",
            "ip-fields" => "ip-fields+mutated",
            other => other,
        }
    } else {
        kind
    };
    frame.truncate(MAX_GEN_FRAME);
    Generated { frame, kind }
}

/// IPv6 with a random extension header chain: long ones (past `MAX_EXT_HDRS`), fragment
/// headers anywhere (and twice), random lengths, sometimes cut off.
fn ext_chain(rng: &mut Rng, u: &Universe) -> Vec<u8> {
    let proto = *rng.pick(&[
        IPPROTO_TCP,
        IPPROTO_TCP,
        IPPROTO_UDP,
        IPPROTO_ICMPV6,
        IPPROTO_NONE,
    ]);
    let (src, dst) = (u.src(rng, true), u.dst(rng, true));
    let mut p = match proto {
        IPPROTO_TCP | IPPROTO_UDP => Packet::l4(proto, src, dst, rng.u16(), u.port(rng)),
        IPPROTO_ICMPV6 => Packet::ping(src, dst),
        _ => Packet::proto(src, dst, IPPROTO_NONE, 0),
    };
    let n = match rng.below(10) {
        0..=5 => rng.range(1, MAX_EXT_HDRS),
        6..=7 => rng.range(MAX_EXT_HDRS - 1, MAX_EXT_HDRS + 2),
        _ => rng.range(0, 14),
    };
    for _ in 0..n {
        let e = if rng.chance(80) {
            let e = random_ext(rng);
            match e {
                // Mostly first fragments and atomic ones, so the chain goes on.
                Ext::Fragment { .. } if rng.chance(60) => Ext::Fragment {
                    offset: 0,
                    more: rng.chance(50),
                },
                e => e,
            }
        } else {
            let kind = *rng.pick(&EXT_KINDS);
            let len = rng.range(2, 24);
            Ext::Raw {
                kind,
                bytes: rng.bytes(len),
            }
        };
        p = p.ext(e);
    }
    if rng.chance(20) {
        let n = rng.range(0, 24);
        p = p.cut_l4(n);
    }
    p = p.payload(rng.range(0, 40));
    let (mut f, l) = p.build_with_layout();
    if rng.chance(30) {
        let how = random_cut(rng);
        cut_near_boundary(rng, &mut f, &l, how);
    }
    f
}

/// IPv4 and IPv6 fragments: first ones (whole, tiny, cut inside the ports or the TCP
/// header), later ones at random offsets, offset 1 (RFC 3128), other protocols.
fn fragment(rng: &mut Rng, u: &Universe) -> Vec<u8> {
    let v6 = rng.chance(50);
    let proto = *rng.pick(&[IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP]);
    let (src, dst) = (u.src(rng, v6), u.dst(rng, v6));
    let mut p = match proto {
        IPPROTO_TCP | IPPROTO_UDP => Packet::l4(proto, src, dst, rng.u16(), u.port(rng)),
        _ => Packet::ping(src, dst),
    };
    let offset = match rng.below(5) {
        0 | 1 => 0,
        2 => 1,
        3 => rng.range(2, 8) as u16,
        _ => rng.u16() & 0x1fff,
    };
    let more = offset == 0 || rng.chance(50);
    if v6 {
        for _ in 0..rng.below(3) {
            p = p.ext(random_ext(rng));
        }
        p = p.ext(Ext::Fragment { offset, more });
        if rng.chance(20) {
            p = p.ext(random_ext(rng));
        }
    } else {
        p = p.frag4(offset, more);
        if rng.chance(15) {
            p = p.v4_options(rng.range(1, 40));
        }
    }
    if proto == IPPROTO_TCP && rng.chance(20) {
        p = p.tcp_options(rng.range(4, 40));
    }
    p = p.payload(rng.range(0, 32));
    if offset == 0 && rng.chance(50) {
        // Tiny first fragments: 0..24 bytes of transport header.
        let n = rng.range(0, 24);
        p = p.cut_l4(n);
    }
    if rng.chance(10) {
        p = p.trailer(rng.range(1, 40));
    }
    let (mut f, l) = p.build_with_layout();
    if rng.chance(20) {
        let how = random_cut(rng);
        cut_near_boundary(rng, &mut f, &l, how);
    }
    f
}

/// IP header fields set to edge and random values: version, IHL, total/payload length,
/// TTL, protocol; sometimes with the frame cut to match.
fn ip_fields(rng: &mut Rng, u: &Universe) -> Vec<u8> {
    let p = random_packet(rng, u);
    let (mut f, l) = p.build_with_layout();
    let l3 = l.l3;
    if f.len() < l3 + 8 {
        return f;
    }
    match l.family {
        AF_INET => match rng.below(5) {
            0 => f[l3] = (f[l3] & 0xf0) | rng.below(16) as u8,
            1 => {
                let real = (l.ip_end - l3) as i64;
                let ihl = ((f[l3] & 0x0f) as i64) * 4;
                let r = rng.u16() as i64;
                let v = *rng.pick(&[
                    0,
                    ihl - 1,
                    ihl,
                    ihl + 3,
                    real - 1,
                    real,
                    real + 1,
                    0xffff,
                    r,
                ]);
                let v = v.clamp(0, 0xffff) as u16;
                f[l3 + 2..l3 + 4].copy_from_slice(&v.to_be_bytes());
            }
            2 => f[l3] = (rng.below(16) as u8) << 4 | (f[l3] & 0x0f),
            3 => f[l3 + 9] = rng.u8(),
            _ => {
                let v = rng.u16();
                f[l3 + 6..l3 + 8].copy_from_slice(&v.to_be_bytes());
            }
        },
        _ => match rng.below(4) {
            0 => {
                let real = (l.ip_end - l3 - IPV6_HLEN) as i64;
                let r = rng.u16() as i64;
                let v = *rng.pick(&[0, real - 1, real, real + 1, 1, 0xffff, r]);
                let v = v.clamp(0, 0xffff) as u16;
                f[l3 + 4..l3 + 6].copy_from_slice(&v.to_be_bytes());
            }
            1 => f[l3] = (rng.below(16) as u8) << 4 | (f[l3] & 0x0f),
            2 => {
                let r = rng.u8();
                f[l3 + 6] = *rng.pick(&[
                    r,
                    IPPROTO_HOPOPTS,
                    IPPROTO_FRAGMENT,
                    IPPROTO_AH,
                    IPPROTO_NONE,
                ]);
            }
            _ => {
                let n = rng.range(l3, f.len());
                f.truncate(n);
            }
        },
    }
    f
}

/// Frames that are not IP: runts, ARP, LLDP, 802.3 lengths, unknown EtherTypes, random
/// bytes, IP EtherTypes with garbage behind them.
fn not_ip(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => {
            let n = rng.range(0, 20);
            rng.bytes(n)
        }
        1 => Packet::arp(
            Ipv4Addr::new(192, 0, 2, rng.u8()),
            Ipv4Addr::new(192, 0, 2, 1),
        )
        .build(),
        2 => {
            let r = rng.u16();
            let et = *rng.pick(&[ETH_P_LLDP, 0x0100, 0x05dc, 0x88B5, 0x0000, 0xffff, r]);
            let n = rng.range(0, 80);
            Packet::ethertype(et, rng.bytes(n)).build()
        }
        3 => {
            let et = *rng.pick(&[ETH_P_IP, ETH_P_IPV6]);
            let n = rng.range(0, 80);
            Packet::ethertype(et, rng.bytes(n)).build()
        }
        4 => {
            let n = rng.range(14, 200);
            rng.bytes(n)
        }
        _ => {
            let et = *rng.pick(&[ETH_P_IP, ETH_P_IPV6, ETH_P_ARP]);
            let mut p = Packet::ethertype(et, Vec::new());
            for _ in 0..rng.range(1, 4) {
                p = random_vlan(rng, p);
            }
            let mut f = p.build();
            let n = rng.range(0, f.len());
            if rng.chance(50) {
                f.truncate(n);
            }
            f
        }
    }
}

/// ICMP, ICMPv6 (NDP, echo) and other IP protocols.
fn other_proto(rng: &mut Rng, u: &Universe) -> Vec<u8> {
    let v6 = rng.chance(50);
    let (src, dst) = (u.src(rng, v6), u.dst(rng, v6));
    match rng.below(4) {
        0 => Packet::ping(src, dst).build(),
        1 => match (src, dst) {
            (IpAddr::V6(s), IpAddr::V6(d)) => Packet::neighbor_solicitation(s, d).build(),
            _ => Packet::ping(src, dst).build(),
        },
        2 => {
            let r = rng.u8();
            let proto = *rng.pick(&[IPPROTO_GRE, IPPROTO_ESP, IPPROTO_SCTP, IPPROTO_NONE, r]);
            let n = rng.range(0, 40);
            Packet::proto(src, dst, proto, n).build()
        }
        _ => {
            let mut p = Packet::ping(src, dst);
            if v6 && rng.chance(50) {
                p = p.ext(Ext::HopByHop(0));
            }
            p.build()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn ipv4_tcp_is_laid_out_as_on_the_wire() {
        let f = Packet::tcp(A, B, 1234, 5432).build();
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 40);
        assert_eq!(f[14 + 9], IPPROTO_TCP);
        assert_eq!(checksum(&f[14..34]), 0, "header checksum");
        assert_eq!(&f[34..38], &[0x04, 0xd2, 0x15, 0x38]);
        assert_eq!(f[34 + 12], 0x50);
    }

    #[test]
    fn vlans_options_and_cuts() {
        let p = Packet::udp(A, B, 1, 53)
            .vlan(ETH_P_8021AD, 5)
            .vlan(ETH_P_8021Q, 7)
            .v4_options(5);
        let (f, l) = p.build_with_layout();
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x08, 0x00]);
        assert_eq!(l.l3, 22);
        assert_eq!(f[22], 0x47, "IHL 7 for 5 option bytes padded to 8");
        assert_eq!(l.l4, 22 + 28);
        let f = Packet::tcp(A, B, 1, 2).cut_l4(10).trailer(6).build();
        assert_eq!(f.len(), 14 + 20 + 10 + 6);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 30);
        let f = Packet::tcp(A, B, 1, 2).truncate(40).build();
        assert_eq!(f.len(), 40);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 40);
    }

    #[test]
    fn ipv6_chains_link_their_next_headers() {
        let s: IpAddr = "fd00::1".parse().unwrap();
        let d: IpAddr = "2001:db8::1".parse().unwrap();
        let p = Packet::tcp(s, d, 1, 2)
            .ext(Ext::HopByHop(0))
            .ext(Ext::Fragment {
                offset: 3,
                more: true,
            })
            .ext(Ext::Ah(4));
        let (f, l) = p.build_with_layout();
        assert_eq!(f[14 + 6], IPPROTO_HOPOPTS);
        assert_eq!(l.exts, vec![54, 62, 70]);
        assert_eq!(f[54], IPPROTO_FRAGMENT);
        assert_eq!(f[62], IPPROTO_AH);
        assert_eq!(&f[64..66], &[0, 0x19]);
        assert_eq!(f[70], IPPROTO_TCP);
        assert_eq!(l.l4, 70 + 24);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]) as usize, 8 + 8 + 24 + 20);
    }

    #[test]
    fn the_generator_is_reproducible_and_varied() {
        let u = Universe {
            v4_sources: vec![Ipv4Addr::new(10, 0, 0, 1)],
            v6_sources: vec!["fd00::1".parse().unwrap()],
            v4_dests: vec![Ipv4Addr::new(192, 0, 2, 1)],
            v6_dests: vec!["2001:db8::1".parse().unwrap()],
            ports: vec![22, 5432],
        };
        let a: Vec<_> = (0..200)
            .map(|i| generate(&mut Rng::for_index(7, i), &u).frame)
            .collect();
        let b: Vec<_> = (0..200)
            .map(|i| generate(&mut Rng::for_index(7, i), &u).frame)
            .collect();
        assert_eq!(a, b);
        let kinds: std::collections::HashSet<_> = (0..500)
            .map(|i| generate(&mut Rng::for_index(1, i), &u).kind)
            .collect();
        assert!(kinds.len() >= 9, "{kinds:?}");
        assert!(a.iter().all(|f| f.len() <= MAX_GEN_FRAME));
    }
}

//! Frames built by hand: Ethernet, 802.1Q, IPv4, IPv6, TCP, ARP. Checksums are right, so
//! the frames also pass the stack's checks in the end-to-end runs.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const MAC_SENDER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_RECEIVER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

const TCP_SYN: u8 = 0x02;

fn eth(out: &mut Vec<u8>, ethertype: u16, vlan: Option<u16>) {
    out.extend_from_slice(&MAC_RECEIVER);
    out.extend_from_slice(&MAC_SENDER);
    if let Some(id) = vlan {
        out.extend_from_slice(&0x8100u16.to_be_bytes());
        out.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn csum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    for c in bytes.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 20-byte TCP SYN header with its checksum over `pseudo` (the pseudo-header).
fn tcp_syn(sport: u16, dport: u16, pseudo: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // seq
    t.extend_from_slice(&0u32.to_be_bytes()); // ack
    t.push(5 << 4); // data offset 5 words
    t.push(TCP_SYN);
    t.extend_from_slice(&64240u16.to_be_bytes()); // window
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    let sum = csum_fold(csum_add(csum_add(0, pseudo), &t));
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

fn ipv4_tcp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let tcp = tcp_syn(sport, dport, &pseudo);
    let mut ip = vec![0x45, 0, 0, 0, 0x00, 0x01, 0x40, 0x00, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = csum_fold(csum_add(0, &ip));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// 54 bytes: Ethernet + IPv4 + TCP SYN.
pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    eth(&mut f, 0x0800, None);
    f.extend_from_slice(&ipv4_tcp_packet(src, dst, sport, dport));
    f
}

/// 58 bytes: Ethernet + 802.1Q tag + IPv4 + TCP SYN.
pub fn tcp4_vlan(vlan: u16, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(58);
    eth(&mut f, 0x0800, Some(vlan));
    f.extend_from_slice(&ipv4_tcp_packet(src, dst, sport, dport));
    f
}

/// 74 bytes: Ethernet + IPv6 + TCP SYN.
pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
    let tcp = tcp_syn(sport, dport, &pseudo);
    let mut f = Vec::with_capacity(74);
    eth(&mut f, 0x86dd, None);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[6, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&tcp);
    f
}

/// 42 bytes: an ARP request (not IP).
pub fn arp(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    eth(&mut f, 0x0806, None);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_SENDER);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_checksums() {
        let f = tcp4(
            Ipv4Addr::new(192, 0, 2, 66),
            Ipv4Addr::new(10, 0, 0, 1),
            40000,
            5432,
        );
        assert_eq!(f.len(), 54);
        // A correct IPv4 header sums to 0xffff (folded, before complement).
        assert_eq!(csum_fold(csum_add(0, &f[14..34])), 0);
        assert_eq!(
            tcp4_vlan(7, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2).len(),
            58
        );
        assert_eq!(
            tcp6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 1, 2).len(),
            74
        );
        assert_eq!(arp(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST).len(), 42);
    }
}

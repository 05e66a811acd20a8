//! Forged frames, put on the wire from a peer namespace with a packet socket: what an
//! attacker on another interface can send, whatever the source address or port it claims.

use std::{net::IpAddr, process::Command};

use crate::net::NetNs;

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &NetNs, dev: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-o", "link", "show", "dev", dev])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {dev} in {text:?}"));
    let mut b = [0u8; 6];
    for (i, part) in mac.split(':').enumerate() {
        b[i] = u8::from_str_radix(part, 16).expect("hex");
    }
    b
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// An Ethernet frame to `dst_mac` carrying a UDP datagram `src:sport -> dst:dport` with
/// correct IP and UDP checksums (the stack delivers it as it would a real one).
pub fn udp_frame(
    dst_mac: [u8; 6],
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&[0x02, 0xee, 0, 0, 0, 0x0e]);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let pseudo = sum16(&s.octets()) + sum16(&d.octets()) + 17 + udp.len() as u32;
            let c = fold(pseudo + sum16(&udp));
            udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            let total = 20 + udp.len();
            let mut h = vec![
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0x12,
                0x34,
                0x40,
                0,
                64,
                17,
                0,
                0,
            ];
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = fold(sum16(&h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let pseudo = sum16(&s.octets()) + sum16(&d.octets()) + 17 + udp.len() as u32;
            let c = fold(pseudo + sum16(&udp));
            udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            h.extend_from_slice(&[17, 64]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&h);
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&udp);
    f
}

/// Sends `frame` `n` times out of `dev` in `ns` through a packet socket (no routing, no
/// source check: the frame leaves as written).
pub fn send_frames(ns: &NetNs, dev: &str, frame: Vec<u8>, n: usize) {
    let dev = dev.to_string();
    ns.run(move || {
        let name = std::ffi::CString::new(dev.clone()).expect("name");
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert_ne!(ifindex, 0, "no device {dev}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
            for _ in 0..n {
                let rc = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                );
                assert!(rc >= 0, "sendto: {}", std::io::Error::last_os_error());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            libc::close(fd);
        }
    });
}

/// `sysctl -w KEY=VALUE` inside `ns` (its own copy of the network sysctls).
pub fn sysctl(ns: &NetNs, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    ns.run(move || {
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
    });
}

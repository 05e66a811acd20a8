//! The little of rtnetlink the daemon needs: the links of this namespace (index, name,
//! device type, kind, and the namespace id of a veth's peer), and the id this namespace
//! gives another namespace.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
/// Device types (`ARPHRD_*`): frames on these start with an Ethernet header.
pub const ARPHRD_ETHER: u16 = 1;
pub const ARPHRD_LOOPBACK: u16 = 772;

/// A readable name for a device type.
pub fn arphrd_name(t: u16) -> String {
    match t {
        ARPHRD_ETHER => "Ethernet".into(),
        ARPHRD_LOOPBACK => "loopback".into(),
        65534 => "layer-3 (no link-layer header: tun, WireGuard)".into(),
        768 => "IPIP tunnel".into(),
        769 => "IPv6-in-IPv6 tunnel".into(),
        776 => "SIT tunnel".into(),
        778 => "GRE tunnel".into(),
        823 => "IPv6 GRE tunnel".into(),
        t => format!("type {t}"),
    }
}

/// One network device as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `ARPHRD_*`: what the device's frames start with.
    pub arphrd: u16,
    /// `IFLA_INFO_KIND` ("veth", "vxlan", "wireguard", ...), if any.
    pub kind: Option<String>,
    /// The peer's (or lower device's) index, in `link_netnsid`'s namespace when set.
    pub link: Option<u32>,
    /// The id, in this namespace, of the namespace the peer lives in.
    pub link_netnsid: Option<i32>,
}

struct Socket(OwnedFd);

impl Socket {
    /// A route netlink socket in the calling thread's network namespace.
    fn open() -> io::Result<Self> {
        // SAFETY: a plain socket(2) call; the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for its length; the kernel is the default address.
        let n = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads replies until `done` says the request is answered; hands each message's type
    /// and payload to `each`.
    fn replies(&self, mut each: impl FnMut(u16, &[u8]) -> io::Result<bool>) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: the buffer is valid for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(io::Error::other("truncated netlink message"));
                }
                let payload = &rest[NLMSG_HDRLEN..len];
                match ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(0..4)
                            .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(());
                    }
                    _ => {
                        if !each(ty, payload)? {
                            return Ok(());
                        }
                    }
                }
                rest = &rest[align4(len).min(rest.len())..];
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn request(ty: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    m.extend_from_slice(body);
    m
}

/// Route attributes in `data`, as (type without flags, payload).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, payload))
    })
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(0..4)?.try_into().ok()?))
}

/// Every link of the calling thread's network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let sock = Socket::open()?;
    // struct ifinfomsg, all zero: every family, every device.
    sock.send(&request(RTM_GETLINK, NLM_F_DUMP, &[0u8; 16]))?;
    let mut out = Vec::new();
    sock.replies(|ty, payload| {
        if ty != RTM_NEWLINK || payload.len() < 16 {
            return Ok(true);
        }
        let arphrd = u16::from_ne_bytes([payload[2], payload[3]]);
        let index = u32_of(&payload[4..8]).unwrap_or(0);
        let mut link = Link {
            index,
            name: String::new(),
            arphrd,
            kind: None,
            link: None,
            link_netnsid: None,
        };
        for (t, v) in attrs(&payload[16..]) {
            match t {
                IFLA_IFNAME => {
                    link.name = String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v))
                        .into_owned()
                }
                IFLA_LINK => link.link = u32_of(v),
                IFLA_LINK_NETNSID => link.link_netnsid = u32_of(v).map(|n| n as i32),
                IFLA_LINKINFO => {
                    for (it, iv) in attrs(v) {
                        if it == IFLA_INFO_KIND {
                            let k = iv.split(|b| *b == 0).next().unwrap_or(iv);
                            link.kind = Some(String::from_utf8_lossy(k).into_owned());
                        }
                    }
                }
                _ => {}
            }
        }
        out.push(link);
        Ok(true)
    })?;
    Ok(out)
}

/// The id the calling thread's namespace gives the namespace open at `ns_fd`, if it has
/// one (a veth between the two gives it one).
pub fn nsid_of(ns_fd: RawFd) -> io::Result<Option<i32>> {
    let sock = Socket::open()?;
    // struct rtgenmsg (padded to 4 bytes), then NETNSA_FD.
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&8u16.to_ne_bytes());
    body.extend_from_slice(&NETNSA_FD.to_ne_bytes());
    body.extend_from_slice(&(ns_fd as u32).to_ne_bytes());
    sock.send(&request(RTM_GETNSID, 0, &body))?;
    let mut nsid = None;
    sock.replies(|ty, payload| {
        if ty == RTM_NEWNSID && payload.len() >= 4 {
            for (t, v) in attrs(&payload[4..]) {
                if t == NETNSA_NSID {
                    nsid = u32_of(v).map(|n| n as i32).filter(|n| *n >= 0);
                }
            }
        }
        Ok(false)
    })?;
    Ok(nsid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_type() {
        let links = links().expect("dump links");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_eq!(lo.index, 1);
        assert_eq!(lo.arphrd, ARPHRD_LOOPBACK);
    }

    #[test]
    fn attributes_parse_and_stop_at_truncation() {
        let mut data = Vec::new();
        data.extend_from_slice(&8u16.to_ne_bytes());
        data.extend_from_slice(&IFLA_LINK.to_ne_bytes());
        data.extend_from_slice(&7u32.to_ne_bytes());
        data.extend_from_slice(&9u16.to_ne_bytes()); // claims more than there is
        data.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        let got: Vec<(u16, Vec<u8>)> = attrs(&data).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(got, vec![(IFLA_LINK, 7u32.to_ne_bytes().to_vec())]);
    }
}

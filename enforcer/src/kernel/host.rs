//! Facts about the host the programs need: its namespace, its addresses, its cgroups.

use std::{
    collections::BTreeSet,
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};

/// Where cgroup v2 is mounted, from /proc/self/mountinfo (never assumed).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mnt) = pre.split_whitespace().nth(4) {
                return Ok(PathBuf::from(unescape_mount(mnt)));
            }
        }
    }
    Err(anyhow!(
        "no cgroup v2 filesystem is mounted (see /proc/self/mountinfo)"
    ))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&oct, 8) {
                out.push(v as char);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

/// The directory of a cgroup v2 path (as in /proc/PID/cgroup) under the mount.
pub fn cgroup_dir(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// A cgroup's id (the inode number of its directory), or None if it does not exist.
pub fn cgroup_id(mount: &Path, path: &str) -> Option<u64> {
    let meta = std::fs::metadata(cgroup_dir(mount, path)).ok()?;
    meta.is_dir().then(|| meta.ino())
}

/// The path of the cgroup with `id`, searched below `under` (a path under the mount).
pub fn find_cgroup(mount: &Path, under: &str, id: u64, max_dirs: usize) -> Option<String> {
    let mut stack = vec![cgroup_dir(mount, under)];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > max_dirs {
            return None;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if meta.ino() == id {
            let rel = dir.strip_prefix(mount).ok()?;
            return Some(format!("/{}", rel.display()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    None
}

/// The network namespace cookie of the calling thread's namespace.
pub fn netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket syscalls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

/// Every address of every interface in this namespace, with IPv4 broadcast addresses.
pub fn local_addrs() -> io::Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            if let Some(a) = sockaddr_ip(ifa.ifa_addr) {
                out.insert(a);
            }
            if ifa.ifa_flags & libc::IFF_BROADCAST as u32 != 0 {
                if let Some(b) = sockaddr_ip(ifa.ifa_ifu) {
                    out.insert(b);
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// SAFETY: `sa` is null or points at a sockaddr of the length its family implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: per the caller's contract.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

/// The name of interface `ifindex`, if it exists.
pub fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The index of interface `name`, if it exists.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC, to turn bpf_ktime_get_ns() into wall time.
pub fn monotonic_to_realtime_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// Turns wall-clock deadlines (unix seconds) into `CLOCK_BOOTTIME` nanoseconds, the clock
/// the programs read (`bpf_ktime_get_boot_ns`): unlike the monotonic clock it keeps
/// counting across suspend, so a deadline passes in the kernel when it passes on the wall.
/// The offset is taken once per policy write; a wall-clock step after that moves the
/// daemon's view of a deadline, not the kernel's, until the next write (the daemon writes
/// again on every expiry it sees, and at every start).
#[derive(Clone, Copy, Debug)]
pub struct UnixToBoottime {
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, in nanoseconds.
    offset_ns: i128,
}

impl UnixToBoottime {
    pub fn now() -> Self {
        UnixToBoottime {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    /// The boottime instant of `unix` seconds; 1 (already past) for deadlines before boot.
    pub fn convert(&self, unix: u64) -> u64 {
        let t = unix as i128 * 1_000_000_000 - self.offset_ns;
        t.clamp(1, u64::MAX as i128) as u64
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// `HostInfo::addr_bloom` for a set of addresses.
pub fn addr_bloom<'a>(addrs: impl IntoIterator<Item = &'a IpAddr>) -> u64 {
    addrs.into_iter().fold(0, |bloom, a| {
        let k = addr_key(*a);
        bloom | enforcer_common::maps::addr_bloom_bit(k.family as u8, &k.addr)
    })
}

/// The `LOCAL_ADDRS` key of an address.
pub fn addr_key(a: IpAddr) -> enforcer_common::maps::LocalAddrKey {
    use enforcer_common::consts::{AF_INET, AF_INET6};
    let mut addr = [0u8; 16];
    let family = match a {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            AF_INET
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            AF_INET6
        }
    };
    enforcer_common::maps::LocalAddrKey {
        family: family as u32,
        addr,
    }
}

/// Names of the interfaces in this namespace.
pub fn interfaces() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed once below.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return out;
        }
        let mut cur = head;
        while (*cur).if_index != 0 && !(*cur).if_name.is_null() {
            out.push(
                CStr::from_ptr((*cur).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
    }
    out
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters and `?`
/// for one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("eth0", "eth0", true),
            ("eth0", "eth01", false),
            ("eth*", "eth0", true),
            ("eth*", "eth", true),
            ("veth?", "veth1", true),
            ("veth?", "veth12", false),
            ("*", "lo", true),
            ("b*nd*", "bond0", true),
            ("*0", "eth1", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} ~ {n}");
        }
    }
}

//! The paths a container's own packets take to the host: the host-side end of each veth
//! whose peer lives in another network namespace, and that namespace's cookie (`PATHS`).
//! A flow a container's socket was allowed to open is honoured only on its own veth, so
//! the same tuple forged on a NIC, a tunnel or another container's veth is judged by its
//! source like any remote packet.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::PathBuf,
};

use aya::maps::MapError;
use enforcer_common::consts::PATH_TABLE;
use tracing::{info, warn};

use super::programs::Maps;
use crate::host::{self, netlink::Link};

/// What `PATHS` holds, and what it was made from.
#[derive(Default)]
pub struct Paths {
    /// (host ifindex, peer namespace id) of the veths last resolved: nothing is looked up
    /// again until this changes (a veth's peer cannot change namespace without it).
    signature: Vec<(u32, i32)>,
    written: BTreeMap<u32, u64>,
}

impl Paths {
    /// Brings `PATHS` in line with the host's veths (`links`: this namespace's links).
    /// Peers whose namespace cannot be found or entered get no path: their flows are not
    /// honoured (fail closed), and the log says why.
    pub fn sync(&mut self, maps: &mut Maps, links: &[Link]) {
        let signature: Vec<(u32, i32)> = links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("veth"))
            .filter_map(|l| Some((l.index, l.link_netnsid?)))
            .collect();
        if signature == self.signature {
            return;
        }
        let wanted: BTreeSet<i32> = signature.iter().map(|(_, n)| *n).collect();
        let cookies = resolve(&wanted);
        let mut want = BTreeMap::new();
        for (ifindex, nsid) in &signature {
            match cookies.get(nsid) {
                Some(c) => {
                    want.insert(*ifindex, *c);
                }
                None => warn!(
                    ifindex,
                    nsid,
                    "the network namespace behind this veth could not be entered (needs CAP_SYS_ADMIN, and a process or a /run/netns entry in it): flows its processes open are not honoured on it"
                ),
            }
        }
        let mut ok = true;
        for (i, c) in &want {
            if self.written.get(i) != Some(c) {
                if let Err(e) = set_path(maps, *i, *c) {
                    warn!(ifindex = i, "writing PATHS: {e}");
                    ok = false;
                }
            }
        }
        for i in self.written.keys().filter(|i| !want.contains_key(i)) {
            let _ = set_path(maps, *i, 0);
        }
        if want != self.written {
            info!(paths = ?want, "container paths (host-side veth -> namespace cookie)");
        }
        self.written = want;
        // A failed write is tried again on the next tick.
        if ok {
            self.signature = signature;
        }
    }

    /// Host-side interface index -> namespace cookie, as written.
    pub fn written(&self) -> &BTreeMap<u32, u64> {
        &self.written
    }
}

/// Makes `cookie` the namespace behind interface `ifindex` (0: none).
pub fn set_path(maps: &mut Maps, ifindex: u32, cookie: u64) -> Result<(), MapError> {
    if ifindex < PATH_TABLE {
        return maps.paths.set(ifindex, cookie, 0);
    }
    match cookie {
        0 => match maps.paths_far.remove(&ifindex) {
            Err(MapError::KeyNotFound) => Ok(()),
            r => r,
        },
        c => maps.paths_far.insert(ifindex, c, 0),
    }
}

/// The cookies of the namespaces (by the id this namespace gives them) in `wanted`,
/// found among the named namespaces (`/run/netns`) and those of running processes.
fn resolve(wanted: &BTreeSet<i32>) -> BTreeMap<i32, u64> {
    let mut found = BTreeMap::new();
    if wanted.is_empty() {
        return found;
    }
    let mut seen = BTreeSet::new();
    for path in candidates() {
        if found.len() == wanted.len() {
            break;
        }
        // The link text ("net:[4026532281]") names the namespace: open each one once.
        let id = std::fs::read_link(&path).ok();
        if id.as_ref().is_some_and(|id| !seen.insert(id.clone())) {
            continue;
        }
        let Ok(f) = File::open(&path) else { continue };
        let Ok(Some(nsid)) = host::netlink::nsid_of(f.as_raw_fd()) else {
            continue;
        };
        if !wanted.contains(&nsid) || found.contains_key(&nsid) {
            continue;
        }
        match cookie_in(&f) {
            Ok(c) => {
                found.insert(nsid, c);
            }
            Err(e) => warn!(path = %path.display(), "entering a network namespace: {e}"),
        }
    }
    found
}

fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    out.extend(
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .map(|e| e.path().join("ns/net")),
    );
    out
}

/// The cookie of the namespace open at `ns`: read from a socket made inside it, by a
/// thread of its own (setns changes only the calling thread).
fn cookie_in(ns: &File) -> io::Result<u64> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a descriptor we hold open; only this short-lived thread
            // moves.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            host::netns_cookie()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

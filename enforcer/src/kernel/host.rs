//! The `LOCAL_ADDRS` key of an address; the host facts themselves live in `crate::host`,
//! the clock in `crate::clock`.

use std::net::IpAddr;

// Re-exported for `kernel/writer.rs` and the bench, which another change owns right
// now; they can import from `crate::clock` and `crate::host` directly after it lands.
pub use crate::clock::UnixToBoottime;
pub use crate::host::{cgroup2_mount, cgroup_id, netns_cookie};

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

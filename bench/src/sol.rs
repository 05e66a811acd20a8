//! The speed-of-light contender (bench/sol-ebpf, built by bench/build.rs): the least work
//! enforcer's XDP job needs, loaded with the same policy as the micro figures (tcp/5432
//! protected, the exact allowed sources allowed).

use std::{net::IpAddr, os::fd::RawFd};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, MapData},
    programs::Xdp,
    Ebpf,
};

use crate::bpf;

pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sol"));
pub const PROGRAM: &str = "sol_xdp";

/// Mirrors `SrcKey` in bench/sol-ebpf/src/main.rs.
#[repr(C)]
#[derive(Clone, Copy)]
struct SrcKey {
    group: u32,
    family: u32,
    addr: [u32; 4],
}

// SAFETY: repr(C), plain integers, no padding.
unsafe impl aya::Pod for SrcKey {}

pub struct Sol {
    /// Holds the program and its maps.
    _ebpf: Ebpf,
    pub xdp: RawFd,
}

impl Sol {
    /// Loads the program: `tcp_ports` protected (group 1), `allowed` the sources allowed on it.
    pub fn load(tcp_ports: &[u16], allowed: &[IpAddr]) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading the speed-of-light object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .context("sol_xdp missing")?
            .try_into()?;
        prog.load().context("loading sol_xdp")?;
        // The program holds its maps: these handles are only for writing the policy.
        let mut ports: Array<MapData, u32> =
            Array::try_from(ebpf.take_map("SOL_PORTS").context("SOL_PORTS")?)?;
        for &p in tcp_ports {
            ports.set(p as u32, 1, 0)?;
        }
        let mut allow: HashMap<MapData, SrcKey, u32> =
            HashMap::try_from(ebpf.take_map("SOL_ALLOW").context("SOL_ALLOW")?)?;
        for a in allowed {
            let (family, addr) = match a {
                IpAddr::V4(v4) => (4, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
                IpAddr::V6(v6) => {
                    let o = v6.octets();
                    let w =
                        |i: usize| u32::from_ne_bytes(o[i * 4..i * 4 + 4].try_into().expect("4"));
                    (6, [w(0), w(1), w(2), w(3)])
                }
            };
            allow.insert(
                SrcKey {
                    group: 1,
                    family,
                    addr,
                },
                1,
                0,
            )?;
        }
        let xdp = bpf::aya_prog_fd(&ebpf, PROGRAM)?;
        Ok(Sol { _ebpf: ebpf, xdp })
    }
}

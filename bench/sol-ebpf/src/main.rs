//! The speed-of-light contender of `cargo xtask bench`: the least work enforcer's XDP job
//! needs, and nothing else. Parse Ethernet (one optional 802.1Q tag), IPv4 or IPv6 without
//! extension headers, and the TCP/UDP destination port; one array lookup answers "is this
//! port protected?", one hash probe of the exact source answers "is it allowed?". No
//! counters, no events, no prefixes, no scope check: the floor a real filter builds on.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap},
    programs::XdpContext,
};

/// The source hash key: the port's group (from `PORTS`), the family, the address (IPv4 in
/// the first word, the rest zero). Mirrored by `bench/src/sol.rs`.
#[repr(C)]
pub struct SrcKey {
    pub group: u32,
    pub family: u32,
    pub addr: [u32; 4],
}

/// Index `proto_bit << 16 | port` (proto_bit 0 for TCP, 1 for UDP): the port's group, 0
/// when the port is not protected.
#[map]
static SOL_PORTS: Array<u32> = Array::with_max_entries(1 << 17, 0);

/// Allowed sources per group: present means allowed.
#[map]
static SOL_ALLOW: HashMap<SrcKey, u32> = HashMap::with_max_entries(1 << 16, 0);

const ETH_P_IP: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; unaligned packet bytes.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[xdp]
pub fn sol_xdp(ctx: XdpContext) -> u32 {
    match judge(&ctx) {
        Some(false) => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Some(true) allowed, Some(false) refused, None not our business.
#[inline(always)]
fn judge(ctx: &XdpContext) -> Option<bool> {
    let mut ethertype: u16 = load(ctx, 12)?;
    let mut l3 = 14;
    if ethertype == ETH_P_8021Q {
        ethertype = load(ctx, 16)?;
        l3 = 18;
    }
    let (family, proto, addr, l4) = if ethertype == ETH_P_IP {
        let ver_ihl: u8 = load(ctx, l3)?;
        let proto: u8 = load(ctx, l3 + 9)?;
        let src: u32 = load(ctx, l3 + 12)?;
        (
            4,
            proto,
            [src, 0, 0, 0],
            l3 + ((ver_ihl & 0x0f) as usize) * 4,
        )
    } else if ethertype == ETH_P_IPV6 {
        let proto: u8 = load(ctx, l3 + 6)?;
        let src: [u32; 4] = load(ctx, l3 + 8)?;
        (6, proto, src, l3 + 40)
    } else {
        return None;
    };
    let bit = match proto {
        IPPROTO_TCP => 0,
        IPPROTO_UDP => 1 << 16,
        _ => return None,
    };
    let dport: u16 = load(ctx, l4 + 2)?;
    let group = *SOL_PORTS.get(bit | u16::from_be(dport) as u32)?;
    if group == 0 {
        return None;
    }
    let key = SrcKey {
        group,
        family,
        addr,
    };
    // SAFETY: a lookup; the value is not kept.
    Some(unsafe { SOL_ALLOW.get(&key) }.is_some())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

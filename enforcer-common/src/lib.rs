//! Types shared by the BPF programs (`enforcer-ebpf`) and the daemon (`enforcer`), and the
//! reference model of the verdict that both are held to.
//!
//! Layout: `consts` (limits and wire constants), `maps` (keys and values of every BPF map),
//! `event` (the record the programs put in the ring buffer), `reason` (why a packet was
//! judged as it was). With the `user` feature, `model` adds the pure reference model:
//! a frame parser and the verdict function, which tests hold the kernel programs to.
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

pub mod consts;
pub mod event;
pub mod maps;
pub mod reason;

#[cfg(feature = "user")]
pub mod model;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type here is #[repr(C)], made of integers and byte arrays, with explicit
    // padding fields, so any bit pattern is valid and there are no padding bytes.
    unsafe impl aya::Pod for crate::maps::ActiveSlot {}
    unsafe impl aya::Pod for crate::maps::SlotInfo {}
    unsafe impl aya::Pod for crate::maps::HostInfo {}
    unsafe impl aya::Pod for crate::maps::HostAddrSlot {}
    unsafe impl aya::Pod for crate::maps::GroupInfo {}
    unsafe impl aya::Pod for crate::maps::AllowKey {}
    unsafe impl aya::Pod for crate::maps::AllowValue {}
    unsafe impl aya::Pod for crate::maps::BucketSlot {}
    unsafe impl aya::Pod for crate::maps::CgroupKey {}
    unsafe impl aya::Pod for crate::maps::LocalAddrKey {}
    unsafe impl aya::Pod for crate::maps::FlowKey {}
    unsafe impl aya::Pod for crate::maps::SockOwner {}
    unsafe impl aya::Pod for crate::maps::Bucket {}
    unsafe impl aya::Pod for crate::maps::RuleStats {}
    unsafe impl aya::Pod for crate::event::PacketEvent {}
}

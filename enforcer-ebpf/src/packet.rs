//! Bounds-checked header reads: the only way the programs touch packet bytes.

use aya_ebpf::programs::{SkBuffContext, XdpContext};
use enforcer_common::consts::MAX_HDR_OFFSET;

/// A packet as a hook sees it: XDP from the Ethernet header, cgroup_skb from L3.
pub trait Packet {
    /// Bytes in the buffer.
    fn len(&self) -> usize;
    /// `N` bytes at `off`, or `None` when they are not all in the buffer or `off` is past
    /// `MAX_HDR_OFFSET`.
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

pub struct Xdp<'a>(pub &'a XdpContext);

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // The verifier needs a bounded offset before it allows pointer arithmetic on packet
        // data, and the comparison must be on the pointer itself (not on a length computed
        // from it) for it to learn the access is within data_end.
        if off > MAX_HDR_OFFSET {
            return None;
        }
        let ptr = self.0.data() + off;
        if ptr + N > self.0.data_end() {
            return None;
        }
        // SAFETY: [ptr, ptr + N) lies within [data, data_end), checked above.
        Some(unsafe { core::ptr::read_unaligned(ptr as *const [u8; N]) })
    }
}

pub struct Skb<'a>(pub &'a SkBuffContext);

impl Packet for Skb<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // Same depth limit as XDP, so both hooks (and the model) agree on what is readable.
        if off > MAX_HDR_OFFSET {
            return None;
        }
        // Headers are almost always in the linear part: read them in place, as XDP does
        // (cgroup_skb may read data/data_end with CAP_BPF), and pay a helper call only
        // for bytes beyond it.
        let skb = self.0.skb.skb;
        // SAFETY: the kernel passes a valid __sk_buff; data and data_end are readable here.
        let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
        let ptr = data + off;
        // A one-byte check becomes `ptr < data_end`, from which the verifier learns no
        // range: check two bytes then (a last byte is left to the helper).
        let need = if N < 2 { 2 } else { N };
        if ptr + need <= end {
            // SAFETY: [ptr, ptr + N) lies within [data, data_end), checked above.
            return Some(unsafe { core::ptr::read_unaligned(ptr as *const [u8; N]) });
        }
        // `load` (bpf_skb_load_bytes with a constant size) also reads non-linear data;
        // `load_bytes` is rejected here (a zero-sized read the verifier cannot rule out).
        self.0.load::<Aligned<N>>(off).ok().map(|a| a.0)
    }
}

/// A stack buffer for helpers to fill: 8-aligned, so the word loads that read it are
/// aligned (the verifier refuses misaligned stack access; see build.rs).
#[repr(C, align(8))]
pub struct Aligned<const N: usize>(pub [u8; N]);

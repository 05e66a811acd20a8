//! Per-CPU memos: an answer this CPU worked out from the maps, kept for the rest of the
//! clock tick (`bpf_jiffies64`), so the same question asked again in the tick skips the
//! hash probes behind it. A memo is the programs' own cache: not pinned, so programs
//! loaded anew start with empty ones.
//!
//! What keeps an answer from outliving what it was worked out from is up to each memo's
//! user; a tick is one to ten ms. The entry of a place is read and written under a sequence
//! word: programs on one CPU interrupt each other (a softirq's XDP run inside a process's
//! egress run) and, on preemptible kernels, preempt each other, so a reader must never
//! take half of one entry and half of another for an answer.

use core::ptr::{addr_of, addr_of_mut};

use aya_ebpf::{helpers::generated::bpf_jiffies64, maps::PerCpuArray};
use enforcer_common::maps::memo_place;

/// One place: `key` was answered `value` in clock tick `tick`.
#[repr(C)]
pub struct Place<const K: usize, const V: usize> {
    /// Odd while a writer fills the place; each write advances it by two, so a reader that
    /// reads the same even value before and after the entry read one writer's whole entry.
    seq: u64,
    tick: u64,
    key: [u64; K],
    value: [u64; V],
}

/// The clock tick memos are good for.
#[inline(always)]
pub fn tick() -> u64 {
    // SAFETY: a helper with no arguments (the verifier inlines it into one load).
    unsafe { bpf_jiffies64() }
}

/// The value noted for `key` in tick `tick` at the place for `at` (see `memo_place`).
#[inline(always)]
pub fn recall<const K: usize, const V: usize>(
    memo: &PerCpuArray<Place<K, V>>,
    at: u64,
    tick: u64,
    key: &[u64; K],
) -> Option<[u64; V]> {
    let p = memo.get_ptr_mut(memo_place(at))?;
    // SAFETY: a per-CPU place, valid and aligned for the program's run. Volatile reads, so
    // the compiler keeps them between the two reads of the sequence word.
    unsafe {
        let seq = addr_of!((*p).seq).read_volatile();
        if seq & 1 != 0 || addr_of!((*p).tick).read_volatile() != tick {
            return None;
        }
        let mut differ = 0;
        for (i, k) in key.iter().enumerate() {
            differ |= (addr_of!((*p).key) as *const u64).add(i).read_volatile() ^ k;
        }
        if differ != 0 {
            return None;
        }
        let mut value = [0; V];
        for (i, v) in value.iter_mut().enumerate() {
            *v = (addr_of!((*p).value) as *const u64).add(i).read_volatile();
        }
        (addr_of!((*p).seq).read_volatile() == seq).then_some(value)
    }
}

/// Notes `key` -> `value` for tick `tick` at the place for `at`. Skipped when another
/// program run on this CPU is writing the place (one it interrupted or preempted).
#[inline(always)]
pub fn note<const K: usize, const V: usize>(
    memo: &PerCpuArray<Place<K, V>>,
    at: u64,
    tick: u64,
    key: &[u64; K],
    value: &[u64; V],
) {
    let Some(p) = memo.get_ptr_mut(memo_place(at)) else {
        return;
    };
    // SAFETY: as in `recall`.
    unsafe {
        let seq = addr_of_mut!((*p).seq);
        let s = seq.read_volatile();
        // Taken with a compare-and-swap: a writer preempted between reading the word and
        // taking the place must not take it after another writer did.
        if s & 1 != 0 || compare_and_swap(seq, s, s + 1) != s {
            return;
        }
        addr_of_mut!((*p).tick).write_volatile(tick);
        for (i, k) in key.iter().enumerate() {
            (addr_of_mut!((*p).key) as *mut u64)
                .add(i)
                .write_volatile(*k);
        }
        for (i, v) in value.iter().enumerate() {
            (addr_of_mut!((*p).value) as *mut u64)
                .add(i)
                .write_volatile(*v);
        }
        seq.write_volatile(s + 2);
    }
}

/// Writes `new` to `*p` if it holds `old`, in one atomic instruction; returns what `*p`
/// held. Assembly: Rust's BPF target has no compare-and-swap (`atomic-cas: false`), though
/// the instruction set has had one since kernel 5.12.
///
/// # Safety
/// `p` is a valid, 8-aligned pointer into a map value.
#[inline(always)]
unsafe fn compare_and_swap(p: *mut u64, old: u64, new: u64) -> u64 {
    let held: u64;
    // SAFETY: the caller's; the instruction touches `*p` alone. No `nomem`: the compiler
    // keeps memory accesses on either side of it in order.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") old => held,
            options(nostack),
        );
    }
    held
}

//! Writing an audit line into room made beforehand: the line's writer (`enrich::json`)
//! knows the most a line can take, so each field is a store at a position, with none of a
//! `Vec`'s length and capacity bookkeeping between them (that bookkeeping, and numbers
//! written through calls, were most of a line's cost), and straight into the batch: no
//! copy, and no zeroing of the room first.

use std::mem::MaybeUninit;

/// Bytes written at `pos` into `buf`. Every byte before `pos` has been written: each
/// method stores every byte it moves `pos` over, and `append` relies on it.
pub struct Cursor<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    pos: usize,
}

/// Appends to `out` what `write` puts through a cursor, in `room` bytes reserved for it
/// (a store past the room panics).
#[inline(always)]
pub fn append<R>(out: &mut Vec<u8>, room: usize, write: impl FnOnce(&mut Cursor) -> R) -> R {
    out.reserve(room);
    let mut c = Cursor {
        buf: &mut out.spare_capacity_mut()[..room],
        pos: 0,
    };
    let r = write(&mut c);
    let n = c.pos;
    // SAFETY: the `n` bytes after the length are initialised (the cursor's invariant) and
    // within the capacity (they are in the room reserved).
    unsafe { out.set_len(out.len() + n) };
    r
}

/// "00".."99": numbers are written two digits at a time.
const PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Each octet in decimal followed by a dot, in a block of four: an IPv4 address is four
/// fixed-size stores.
const OCTETS: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (b, n) = &mut t[i];
        let mut len = 0;
        if i >= 100 {
            b[len] = b'0' + (i / 100) as u8;
            len += 1;
        }
        if i >= 10 {
            b[len] = b'0' + (i / 10 % 10) as u8;
            len += 1;
        }
        b[len] = b'0' + (i % 10) as u8;
        b[len + 1] = b'.';
        *n = len as u8 + 2;
        i += 1;
    }
    t
};

impl Cursor<'_> {
    #[inline(always)]
    pub fn put(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].write_copy_of_slice(b);
        self.pos += b.len();
    }

    /// The first `len` bytes of `block`, stored as the whole block (`N` bytes of room): a
    /// store of known size, where a copy of variable length is a call to memcpy.
    #[inline(always)]
    pub fn put_first<const N: usize>(&mut self, block: &[u8; N], len: usize) {
        self.buf[self.pos..self.pos + N].write_copy_of_slice(block);
        self.pos += len.min(N);
    }

    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        self.buf[self.pos].write(b);
        self.pos += 1;
    }

    /// `n` in decimal, as `write!` makes it.
    #[inline(always)]
    pub fn uint(&mut self, n: u64) {
        let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
        self.pos += digits;
        self.digits(n, self.pos);
    }

    /// `n` zero-padded to `width` digits (`n` < 10^width).
    #[inline(always)]
    pub fn padded(&mut self, n: u64, width: usize) {
        let end = self.pos + width;
        self.buf[self.pos..end].fill(MaybeUninit::new(b'0'));
        self.pos = end;
        self.digits(n, end);
    }

    /// `n`'s digits ending just before `end` (the room before it is the caller's).
    #[inline(always)]
    fn digits(&mut self, mut n: u64, end: usize) {
        let mut i = end;
        while n >= 100 {
            let r = (n % 100) as usize * 2;
            n /= 100;
            i -= 2;
            self.buf[i..i + 2].write_copy_of_slice(&PAIRS[r..r + 2]);
        }
        if n >= 10 {
            let r = n as usize * 2;
            self.buf[i - 2..i].write_copy_of_slice(&PAIRS[r..r + 2]);
        } else {
            self.buf[i - 1].write(b'0' + n as u8);
        }
    }

    /// An IPv4 address, dotted.
    #[inline(always)]
    pub fn ipv4(&mut self, octets: [u8; 4]) {
        for o in octets {
            let (b, n) = &OCTETS[o as usize];
            self.put_first(b, *n as usize);
        }
        // The last octet's dot.
        self.pos -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_are_written_as_format_does() {
        for n in (0..1000u64)
            .chain((0..64).map(|s| 1u64 << s))
            .chain((1..20).map(|p| 10u64.pow(p) - 1))
            .chain([u64::MAX, 1_000_000_007])
        {
            let mut out = b"x".to_vec();
            append(&mut out, 20, |c| c.uint(n));
            assert_eq!(out, format!("x{n}").as_bytes());
        }
        for n in (0..1000u64).chain([999_999_999, 1_000_000_007, 123_456_789]) {
            let mut out = b"x".to_vec();
            append(&mut out, 16, |c| c.padded(n % 1_000_000_000, 9));
            assert_eq!(out, format!("x{:09}", n % 1_000_000_000).as_bytes());
        }
        for a in [
            [0, 0, 0, 0],
            [10, 201, 0, 2],
            [255, 255, 255, 255],
            [1, 22, 133, 9],
        ] {
            let mut out = Vec::new();
            append(&mut out, 16, |c| c.ipv4(a));
            assert_eq!(out, std::net::Ipv4Addr::from(a).to_string().as_bytes());
        }
    }

    #[test]
    #[should_panic]
    fn a_store_past_the_room_panics() {
        append(&mut Vec::new(), 4, |c| c.put(b"hello"));
    }
}

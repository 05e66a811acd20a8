//! Raw bpf(2), for the commands aya does not offer: one zero-padded attribute block and
//! the syscall, shared by the daemon (pins, links, batched map writes) and the bench.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_OBJ_PIN: libc::c_long = 6;
pub const BPF_OBJ_GET: libc::c_long = 7;
pub const BPF_PROG_TEST_RUN: libc::c_long = 10;
pub const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
pub const BPF_LINK_CREATE: libc::c_long = 28;
pub const BPF_LINK_UPDATE: libc::c_long = 29;

/// A `union bpf_attr`, zero-padded: the kernel reads the fields of the command and
/// requires the rest to be zero.
pub struct Attr([u8; 128]);

impl Default for Attr {
    fn default() -> Self {
        Attr([0; 128])
    }
}

impl Attr {
    pub fn put32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    pub fn put64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    pub fn get32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }

    pub fn bytes_mut(&mut self) -> &mut [u8; 128] {
        &mut self.0
    }
}

/// `bpf(cmd, attr, size)`.
pub fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, writable bpf_attr-sized buffer; pointers in it are the
    // caller's and outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len() as u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `bpf` for the commands that return a new descriptor.
pub fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens a pinned object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut a = Attr::default();
    a.put64(0, c.as_ptr() as u64);
    bpf_fd(BPF_OBJ_GET, &mut a)
}

/// Pins the object behind `fd` at `path` (BPF_OBJ_PIN).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // BPF_OBJ_PIN: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut a = Attr::default();
    a.put64(0, c.as_ptr() as u64)
        .put32(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut a).map(drop)
}

/// Atomically replaces the program of a link (BPF_LINK_UPDATE): the attach point is never
/// without a program.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // BPF_LINK_UPDATE: link_fd, new_prog_fd, flags, old_prog_fd.
    let mut a = Attr::default();
    a.put32(0, link.as_raw_fd() as u32)
        .put32(4, prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut a).map(drop)
}

/// Writes `values[i]` at index `keys[i]` of an array map in one BPF_MAP_UPDATE_BATCH call
/// per chunk instead of one syscall per entry.
pub fn array_update_batch<V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[u32],
    values: &[V],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    for (k, v) in keys.chunks(1 << 16).zip(values.chunks(1 << 16)) {
        // Batch ops: in_batch, out_batch, keys, values (u64 pointers), count, map_fd,
        // elem_flags (u64), flags (u64).
        let mut a = Attr::default();
        a.put64(16, k.as_ptr() as u64)
            .put64(24, v.as_ptr() as u64)
            .put32(32, k.len() as u32)
            .put32(36, map.as_raw_fd() as u32);
        bpf(BPF_MAP_UPDATE_BATCH, &mut a)?;
    }
    Ok(())
}

//! The pin directory on bpffs: maps (`maps/NAME`) and links (`links/KIND@TARGET@...`)
//! that outlive the daemon, so enforcement goes on while it restarts (even after SIGKILL)
//! and a new daemon can adopt it with no gap.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

/// Where the daemon pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/enforcer";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    /// Prepares `root` (mounting bpffs at /sys/fs/bpf if nothing is mounted there).
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let parent = root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) {
            if parent.starts_with("/sys/fs/bpf") && !is_bpffs(Path::new("/sys/fs/bpf")) {
                mount_bpffs().context("mounting bpffs at /sys/fs/bpf")?;
            }
            if !is_bpffs(parent) {
                bail!(
                    "{} is not on a bpf filesystem (mount one with `mount -t bpf bpf {}`)",
                    root.display(),
                    parent.display()
                );
            }
        }
        for d in [root.to_path_buf(), root.join("maps"), root.join("links")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(PinDir {
            root: root.to_path_buf(),
        })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.root.join("links").join(name)
    }

    /// Names of the pinned links.
    pub fn links(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join("links")) else {
            return Vec::new();
        };
        let mut v: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Whether maps from an earlier daemon are pinned here.
    pub fn has_maps(&self) -> bool {
        self.map("HOST").exists()
    }
}

/// Removes everything pinned under `root` (links first: that detaches the programs).
pub fn remove_all(root: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for sub in ["links", "maps"] {
        let dir = root.join(sub);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
                n += 1;
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    if root.exists() {
        std::fs::remove_dir(root).with_context(|| format!("removing {}", root.display()))?;
    }
    Ok(n)
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes the struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

fn mount_bpffs() -> io::Result<()> {
    std::fs::create_dir_all("/sys/fs/bpf")?;
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Opens a pinned object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut attr = [0u64; 3];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: the attr buffer is larger than the kernel reads for this command.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Atomically replaces the program of a link (BPF_LINK_UPDATE): the attach point is never
/// without a program.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // union bpf_attr for BPF_LINK_UPDATE: link_fd, new_prog_fd, flags, old_prog_fd.
    let mut attr = [0u32; 4];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = prog.as_raw_fd() as u32;
    // SAFETY: the attr buffer is what the kernel reads for this command.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `values[i]` at index `keys[i]` of an array map in one BPF_MAP_UPDATE_BATCH call
/// per chunk instead of one syscall per entry.
pub fn array_update_batch(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    for (k, v) in keys.chunks(1 << 16).zip(values.chunks(1 << 16)) {
        // union bpf_attr for batch ops: in_batch, out_batch, keys, values (u64 pointers),
        // count, map_fd, elem_flags (u64), flags (u64).
        #[repr(C)]
        struct Batch {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        let mut attr = Batch {
            in_batch: 0,
            out_batch: 0,
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: keys and values outlive the call and hold `count` entries each.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut Batch,
                std::mem::size_of::<Batch>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

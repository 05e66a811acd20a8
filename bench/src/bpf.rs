//! The few bpf(2) commands the bench needs, called directly so every program (enforcer's,
//! the trivial comparison programs, xdp-filter's) is timed through the very same path; the
//! syscall itself is the daemon's (`enforcer::kernel::sys`).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{bail, Context as _};
use enforcer::kernel::sys::{
    self, bpf, Attr, BPF_LINK_CREATE, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_GET_FD_BY_ID, BPF_PROG_LOAD,
    BPF_PROG_TEST_RUN,
};

pub const PROG_TYPE_XDP: u32 = 6;
pub const PROG_TYPE_CGROUP_SKB: u32 = 8;
pub const ATTACH_CGROUP_INET_INGRESS: u32 = 0;
const ATTACH_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// `r0 = ret; exit`: the cheapest program of a type that returns `ret`.
pub fn load_trivial(
    prog_type: u32,
    expected_attach: u32,
    ret: i32,
    name: &str,
) -> anyhow::Result<OwnedFd> {
    // mov64 r0, imm (0xb7) ; exit (0x95)
    let insns: [u64; 2] = [0xb7 | ((ret as u32 as u64) << 32), 0x95];
    let license = b"GPL\0";
    let mut a = Attr::default();
    a.put32(0, prog_type);
    a.put32(4, insns.len() as u32);
    a.put64(8, insns.as_ptr() as u64);
    a.put64(16, license.as_ptr() as u64);
    let n = name.as_bytes();
    a.bytes_mut()[48..48 + n.len().min(15)].copy_from_slice(&n[..n.len().min(15)]);
    a.put32(68, expected_attach);
    let fd = bpf(BPF_PROG_LOAD, &mut a)
        .with_context(|| format!("loading the trivial program {name}"))?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A pinned object (program or map) by path.
pub fn obj_get(path: &Path) -> anyhow::Result<OwnedFd> {
    sys::obj_get(path).with_context(|| format!("opening pinned {}", path.display()))
}

/// One BPF_PROG_TEST_RUN result.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub retval: u32,
    /// Average nanoseconds per run, as the kernel measured it.
    pub ns: u32,
}

/// Runs `prog` `repeat` times on `data` (an Ethernet frame).
pub fn test_run(prog: RawFd, data: &[u8], repeat: u32) -> anyhow::Result<Run> {
    let mut a = Attr::default();
    a.put32(0, prog as u32);
    a.put32(8, data.len() as u32);
    a.put64(16, data.as_ptr() as u64);
    a.put32(32, repeat);
    bpf(BPF_PROG_TEST_RUN, &mut a).context("BPF_PROG_TEST_RUN")?;
    Ok(Run {
        retval: a.get32(4),
        ns: a.get32(36),
    })
}

/// A live-frames XDP test run (BPF_F_TEST_XDP_LIVE_FRAMES): `repeat` copies of `frame` are
/// run through `prog` as if received on `ifindex` (in the caller's network namespace), and
/// what it returns is carried out for real: XDP_TX sends the frame out of `ifindex`.
pub fn xdp_live_frames(
    prog: RawFd,
    frame: &[u8],
    repeat: u32,
    ifindex: u32,
    batch: u32,
) -> io::Result<()> {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut a = Attr::default();
    a.put32(0, prog as u32);
    a.put32(8, frame.len() as u32);
    a.put64(16, frame.as_ptr() as u64);
    a.put32(32, repeat);
    a.put32(40, std::mem::size_of_val(&ctx) as u32);
    a.put64(48, ctx.as_ptr() as u64);
    a.put32(64, BPF_F_TEST_XDP_LIVE_FRAMES);
    a.put32(72, batch);
    bpf(BPF_PROG_TEST_RUN, &mut a).map(|_| ())
}

/// Attaches an XDP program to `ifindex` (native mode) through a BPF link: closing the
/// returned descriptor detaches it. `ifindex` is resolved in the caller's namespace.
pub fn xdp_link(prog: RawFd, ifindex: u32) -> anyhow::Result<OwnedFd> {
    let mut a = Attr::default();
    a.put32(0, prog as u32);
    a.put32(4, ifindex);
    a.put32(8, ATTACH_XDP);
    a.put32(12, XDP_FLAGS_DRV_MODE);
    let fd = bpf(BPF_LINK_CREATE, &mut a)
        .with_context(|| format!("attaching XDP (native) to ifindex {ifindex}"))?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What `/proc/self/fdinfo` and BPF_OBJ_GET_INFO_BY_FD say about one map.
#[derive(Clone, Debug)]
pub struct MapMem {
    pub name: String,
    pub memlock: u64,
}

/// Every BPF map this process holds a descriptor for, with its memory (deduplicated by id).
pub fn process_maps() -> anyhow::Result<Vec<MapMem>> {
    let mut seen = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let Ok(fd) = e.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| {
                    l.strip_prefix(k)
                        .map(|v| v.trim().trim_start_matches(':').trim().to_string())
                })
                .unwrap_or_default()
        };
        let id: u64 = field("map_id").parse().unwrap_or(0);
        let memlock: u64 = field("memlock").parse().unwrap_or(0);
        let name = map_name(fd).unwrap_or_default();
        seen.entry(id).or_insert(MapMem { name, memlock });
    }
    Ok(seen.into_values().collect())
}

fn map_name(fd: RawFd) -> io::Result<String> {
    // struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16]...
    let mut info = [0u8; 96];
    let mut a = Attr::default();
    a.put32(0, fd as u32);
    a.put32(4, info.len() as u32);
    a.put64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let name = &info[24..40];
    let end = name.iter().position(|&c| c == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// A program's size: (xlated bytes, jited bytes).
pub fn prog_size(fd: RawFd) -> io::Result<(u32, u32)> {
    // struct bpf_prog_info: type, id, tag[8], jited_prog_len, xlated_prog_len, ...
    let mut info = [0u8; 256];
    let mut a = Attr::default();
    a.put32(0, fd as u32);
    a.put32(4, info.len() as u32);
    a.put64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let jited = u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes"));
    let xlated = u32::from_ne_bytes(info[20..24].try_into().expect("4 bytes"));
    Ok((xlated, jited))
}

/// The program a BPF link (by descriptor) runs.
pub fn link_prog(link: &OwnedFd) -> anyhow::Result<OwnedFd> {
    // struct bpf_link_info: type, id, prog_id, ...
    let mut info = [0u8; 64];
    let mut a = Attr::default();
    a.put32(0, link.as_raw_fd() as u32);
    a.put32(4, info.len() as u32);
    a.put64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).context("link info")?;
    let prog_id = u32::from_ne_bytes(info[8..12].try_into().expect("4 bytes"));
    let mut a = Attr::default();
    a.put32(0, prog_id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut a)
        .with_context(|| format!("opening program id {prog_id}"))?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The raw descriptor of an aya program (loaded).
pub fn aya_prog_fd(ebpf: &aya::Ebpf, name: &str) -> anyhow::Result<RawFd> {
    use std::os::fd::AsFd as _;
    let Some(p) = ebpf.program(name) else {
        bail!("program {name} missing")
    };
    Ok(p.fd()
        .with_context(|| format!("program {name} not loaded"))?
        .as_fd()
        .as_raw_fd())
}

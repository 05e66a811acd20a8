//! The programs loaded in the test process (not attached), with a policy written, run on
//! crafted packets through BPF_PROG_TEST_RUN; and the reference model beside them.

use std::{collections::HashMap, net::IpAddr, path::Path};

use aya::programs::{CgroupSkb, TestRun as _, TestRunOptions, Xdp};
use enforcer::{
    kernel::{
        counters, host,
        programs::{EGRESS, INGRESS, XDP},
        writer::Writer,
        Loaded,
    },
    policy::{compile, parse_str, Policy},
};
use enforcer_common::{
    consts::{AF_INET, AF_INET6},
    event::PacketEvent,
    maps::{FlowKey, HostInfo},
    model::{self, Context, Judgement},
    reason::{Hook, Reason},
};

/// XDP_DROP / XDP_PASS, and the cgroup_skb return values.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const SKB_DROP: u32 = 0;
pub const SKB_PASS: u32 = 1;

pub struct TestKernel {
    pub loaded: Loaded,
    writer: Writer,
    generation: u64,
    pub policy: Policy,
    pub local_addrs: Vec<IpAddr>,
    events: aya::maps::RingBuf<aya::maps::MapData>,
}

/// Which program to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    Xdp,
    Ingress,
    Egress,
}

impl Prog {
    pub fn hook(self) -> Hook {
        match self {
            Prog::Xdp => Hook::Xdp,
            Prog::Ingress => Hook::CgroupIngress,
            Prog::Egress => Hook::CgroupEgress,
        }
    }
}

impl TestKernel {
    /// Loads the programs with `policy` (TOML) and the given host addresses. The host's
    /// namespace is this process's, so test_run's socket counts as the host's.
    pub fn new(policy: &str, local_addrs: &[IpAddr]) -> Self {
        let mut loaded = Loaded::load().expect("load programs");
        let events = loaded.events.take().expect("ring buffer");
        let cookie = enforcer::host::netns_cookie().expect("netns cookie");
        loaded
            .maps
            .host
            .set(
                0,
                HostInfo {
                    netns_cookie: cookie,
                    ..HostInfo::default()
                },
                0,
            )
            .expect("host info");
        host::sync_addrs(
            &mut loaded.maps,
            &Default::default(),
            &local_addrs.iter().copied().collect(),
        )
        .expect("host addresses");
        let policy = parse_str(Path::new("test.toml"), policy).unwrap_or_else(|e| panic!("{e}"));
        let mut k = TestKernel {
            loaded,
            writer: Writer::new(),
            generation: 0,
            policy: policy.clone(),
            local_addrs: local_addrs.to_vec(),
            events,
        };
        k.set_policy(policy);
        k
    }

    /// Applies another policy (a new generation), with the allowed cgroups that exist
    /// resolved to their ids, as the daemon does.
    pub fn set_policy(&mut self, policy: Policy) {
        let compiled = compile(&policy).expect("compile");
        let mount = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
        let ids = compiled
            .cgroups
            .keys()
            .filter_map(|(_, p)| enforcer::host::cgroup_id(&mount, p).map(|id| (p.clone(), id)))
            .collect();
        self.generation += 1;
        self.writer
            .apply(&mut self.loaded.maps, &compiled, &ids, self.generation)
            .expect("apply");
        self.policy = policy;
    }

    /// Pins `prog` at `path` (for a process of another cgroup to run it: see the probe's
    /// `test-run`).
    pub fn pin(&mut self, prog: Prog, path: &Path) {
        let name = match prog {
            Prog::Xdp => XDP,
            Prog::Ingress => INGRESS,
            Prog::Egress => EGRESS,
        };
        let p = self.loaded.ebpf.program_mut(name).expect("program");
        p.pin(path)
            .unwrap_or_else(|e| panic!("pinning {name} at {}: {e}", path.display()));
    }

    /// The deadlines (`CLOCK_BOOTTIME` ns) of the `ALLOW` and `CGROUPS` entries that have
    /// one, in the slot in force.
    pub fn deadlines(&self) -> Vec<u64> {
        let slot = self.loaded.maps.active.get(&0, 0).expect("ACTIVE").slot;
        let prefixes = self.loaded.maps.allow.iter().flatten();
        let prefixes = prefixes.map(|(k, v)| (k.group >> 16, v));
        let cgroups = self.loaded.maps.cgroups.iter().flatten();
        let cgroups = cgroups.map(|(k, v)| (k.group >> 16, v));
        prefixes
            .chain(cgroups)
            .filter(|(s, v)| *s == slot && v.expires_boot_ns != 0)
            .map(|(_, v)| v.expires_boot_ns)
            .collect()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Host-namespace switch for the cgroup programs: set the host cookie to something
    /// else, and test_run's socket looks like a container's.
    pub fn set_host_netns_cookie(&mut self, cookie: u64) {
        let host = &mut self.loaded.maps.host;
        let facts = host.get(&0, 0).expect("host info");
        host.set(
            0,
            HostInfo {
                netns_cookie: cookie,
                ..facts
            },
            0,
        )
        .expect("host info");
    }

    /// Makes interface `ifindex` the path of the namespace with `cookie` (`PATHS`); None
    /// removes it.
    pub fn set_path(&mut self, ifindex: u32, cookie: Option<u64>) {
        enforcer::kernel::paths::set_path(&mut self.loaded.maps, ifindex, cookie.unwrap_or(0))
            .expect("PATHS");
    }

    /// Remembers `flow` as authorized at a sender's socket just now (as the egress program
    /// would), or forgets it.
    pub fn set_flow(&mut self, flow: FlowKey, fresh: bool) {
        let map = self.loaded.ebpf.map_mut("FLOWS").expect("FLOWS");
        let mut flows: aya::maps::HashMap<_, FlowKey, u64> =
            aya::maps::HashMap::try_from(map).expect("FLOWS is a hash");
        if fresh {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC_COARSE is
            // the clock of bpf_ktime_get_coarse_ns, which FLOWS' times come from.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
            let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            flows.insert(flow, now, 0).expect("FLOWS insert");
        } else {
            let _ = flows.remove(&flow);
        }
    }

    /// When `flow` was last remembered in `FLOWS` (coarse-clock ns), if it is there.
    pub fn flow_time(&mut self, flow: &FlowKey) -> Option<u64> {
        let map = self.loaded.ebpf.map_mut("FLOWS").expect("FLOWS");
        let flows: aya::maps::HashMap<_, FlowKey, u64> =
            aya::maps::HashMap::try_from(map).expect("FLOWS is a hash");
        flows.get(flow, 0).ok()
    }

    /// Makes `addrs` the host's addresses, as the daemon changes them.
    pub fn set_local_addrs(&mut self, addrs: &[IpAddr]) {
        host::sync_addrs(
            &mut self.loaded.maps,
            &self.local_addrs.iter().copied().collect(),
            &addrs.iter().copied().collect(),
        )
        .expect("host addresses");
        self.local_addrs = addrs.to_vec();
    }

    /// The host namespace's cookie, as the programs know it.
    pub fn host_netns_cookie(&self) -> u64 {
        self.loaded.maps.host.get(&0, 0).expect("host").netns_cookie
    }

    /// Runs `prog` on an Ethernet frame (the cgroup programs see it from L3, with the
    /// protocol from the EtherType, as the kernel's test_run sets it up) and returns its
    /// return value.
    pub fn run(&mut self, prog: Prog, frame: &[u8]) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        };
        let name = match prog {
            Prog::Xdp => XDP,
            Prog::Ingress => INGRESS,
            Prog::Egress => EGRESS,
        };
        let p = self.loaded.ebpf.program(name).expect("program");
        let r = match prog {
            Prog::Xdp => <&Xdp>::try_from(p).expect("xdp").test_run(opts),
            _ => <&CgroupSkb>::try_from(p)
                .expect("cgroup_skb")
                .test_run(opts),
        };
        r.unwrap_or_else(|e| panic!("test_run {name}: {e}"))
            .return_value
    }

    /// All reason counters, summed over CPUs.
    pub fn reason_counts(&self) -> HashMap<(Hook, Reason), u64> {
        let mut m = HashMap::new();
        for h in Hook::ALL {
            for r in Reason::ALL {
                m.insert((h, r), counters::by_reason(&self.loaded.maps, h, r));
            }
        }
        m
    }

    /// Events in the ring buffer now.
    pub fn drain_events(&mut self) -> Vec<PacketEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(enforcer::events::decode::decode(&item).expect("decode"));
        }
        out
    }

    /// What the reference model decides for `frame` at `prog`'s hook, with a socket in the
    /// host's namespace, no sender cgroup and no authorized flow.
    pub fn model(&self, prog: Prog, frame: &[u8]) -> Judgement {
        let parsed = match prog {
            Prog::Xdp => model::parse_frame(frame),
            _ => model_l3(frame),
        };
        let ctx = Context::remote(prog.hook(), &self.local_addrs);
        model::judge(&self.policy.verdict, &ctx, &parsed)
    }
}

/// What test_run hands a cgroup_skb program: the packet after the Ethernet header, its
/// family from the EtherType (a VLAN tag leaves it not-IP).
pub fn model_l3(frame: &[u8]) -> model::Parsed {
    use enforcer_common::consts::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, MAX_HDR_OFFSET};
    if frame.len() < ETH_HLEN {
        return model::Parsed::NotIp;
    }
    let et = u16::from_be_bytes([frame[12], frame[13]]);
    let family = match et {
        ETH_P_IP => AF_INET,
        ETH_P_IPV6 => AF_INET6,
        _ => return model::Parsed::NotIp,
    };
    model::parse_l3(&frame[ETH_HLEN..], family, MAX_HDR_OFFSET)
}

/// The verdict a program's return value means (true: dropped).
pub fn dropped(prog: Prog, ret: u32) -> bool {
    match prog {
        Prog::Xdp => ret == XDP_DROP,
        _ => ret == SKB_DROP,
    }
}

/// The ids of the BPF link pinned at `path`: (link id, id of the program it runs), read
/// with BPF_OBJ_GET and BPF_OBJ_GET_INFO_BY_FD.
pub fn pinned_link_ids(path: &Path) -> (u32, u32) {
    use std::os::fd::AsRawFd as _;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let fd = enforcer::kernel::sys::obj_get(path)
        .unwrap_or_else(|e| panic!("BPF_OBJ_GET {}: {e}", path.display()));
    // struct bpf_link_info starts with type, id, prog_id (u32 each).
    let mut info = [0u32; 4];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the attr and the info buffer it points to are what the kernel reads and writes
    // for this command, and live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_OBJ_GET_INFO_BY_FD {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    (info[1], info[2])
}

/// How many programs are attached to the cgroup at `dir` for each of the attach types the
/// daemon uses (ingress, egress, connect4/6, sendmsg4/6), read with BPF_PROG_QUERY.
pub fn cgroup_programs(dir: &Path) -> Vec<(&'static str, u32)> {
    use std::os::fd::AsRawFd as _;
    const BPF_PROG_QUERY: libc::c_long = 16;
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
    }
    let cg = std::fs::File::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    [
        ("ingress", 0),
        ("egress", 1),
        ("connect4", 10),
        ("connect6", 11),
        ("sendmsg4", 14),
        ("sendmsg6", 15),
    ]
    .into_iter()
    .map(|(name, attach_type)| {
        let mut attr = QueryAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_type,
            ..QueryAttr::default()
        };
        // SAFETY: the attr is what the kernel reads and writes for this command; with no
        // prog_ids buffer it only writes the count.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut QueryAttr,
                std::mem::size_of::<QueryAttr>(),
            )
        };
        assert_eq!(
            rc,
            0,
            "BPF_PROG_QUERY {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        (name, attr.prog_cnt)
    })
    .collect()
}

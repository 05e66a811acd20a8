//! Loading the embedded programs, and attaching them to interfaces and a cgroup.

use std::{collections::BTreeMap, fs::File, path::Path};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        cgroup_skb::CgroupSkbLinkId, cgroup_sock_addr::CgroupSockAddrLinkId, xdp::XdpLinkId,
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, Xdp,
        XdpMode,
    },
    Ebpf,
};
use enforcer_common::maps::{
    ActiveSlot, AllowKey, CgroupKey, GroupInfo, HostInfo, LocalAddrKey, SlotInfo,
};

/// The BPF object built from enforcer-ebpf by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

pub const XDP: &str = "enforcer_xdp";
pub const INGRESS: &str = "enforcer_ingress";
pub const EGRESS: &str = "enforcer_egress";
/// The cgroup sock_addr programs: (name, attach point label).
pub const SOCK_ADDR: [&str; 4] = [
    "enforcer_connect4",
    "enforcer_connect6",
    "enforcer_sendmsg4",
    "enforcer_sendmsg6",
];

/// The maps the daemon reads and writes, taken out of the object.
pub struct Maps {
    pub active: Array<MapData, ActiveSlot>,
    pub slot_info: Array<MapData, SlotInfo>,
    pub host: Array<MapData, HostInfo>,
    pub ports: Array<MapData, u32>,
    pub groups: Array<MapData, GroupInfo>,
    pub allow: HashMap<MapData, AllowKey, u32>,
    pub cgroups: HashMap<MapData, CgroupKey, u32>,
    pub local_addrs: HashMap<MapData, LocalAddrKey, u32>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub rule_counts: PerCpuArray<MapData, u64>,
    pub event_loss: PerCpuArray<MapData, u64>,
}

/// Where XDP is attached, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpAttachment {
    pub mode: &'static str,
}

enum CgroupLink {
    Skb(&'static str, CgroupSkbLinkId),
    SockAddr(&'static str, CgroupSockAddrLinkId),
}

/// Loaded programs, their maps, and where they are attached.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub events: Option<RingBuf<MapData>>,
    xdp_links: BTreeMap<String, (XdpLinkId, XdpAttachment)>,
    cgroup_links: Vec<CgroupLink>,
    cgroup_path: Option<String>,
}

fn load_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            anyhow!("the kernel refused program {name}: {io_error}\nverifier log:\n{verifier_log}")
        }
        other => anyhow!(other).context(format!("loading program {name}")),
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Loaded {
    /// Loads every program into the kernel (attaching none).
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading the BPF object")?;
        {
            let xdp: &mut Xdp = program(&mut ebpf, XDP)?;
            xdp.load().map_err(|e| load_error(XDP, e))?;
        }
        for name in [INGRESS, EGRESS] {
            let p: &mut CgroupSkb = program(&mut ebpf, name)?;
            p.load().map_err(|e| load_error(name, e))?;
        }
        for name in SOCK_ADDR {
            let p: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            p.load().map_err(|e| load_error(name, e))?;
        }
        let maps = Maps {
            active: take(&mut ebpf, "ACTIVE")?,
            slot_info: take(&mut ebpf, "SLOT_INFO")?,
            host: take(&mut ebpf, "HOST")?,
            ports: take(&mut ebpf, "PORTS")?,
            groups: take(&mut ebpf, "GROUPS")?,
            allow: take(&mut ebpf, "ALLOW")?,
            cgroups: take(&mut ebpf, "CGROUPS")?,
            local_addrs: take(&mut ebpf, "LOCAL_ADDRS")?,
            reasons: take(&mut ebpf, "REASONS")?,
            rule_counts: take(&mut ebpf, "RULE_COUNTS")?,
            event_loss: take(&mut ebpf, "EVENT_LOSS")?,
        };
        let events = Some(take(&mut ebpf, "EVENTS")?);
        Ok(Loaded {
            ebpf,
            maps,
            events,
            xdp_links: BTreeMap::new(),
            cgroup_links: Vec::new(),
            cgroup_path: None,
        })
    }

    /// Attaches XDP to `iface`: `mode` "native", "generic", or "auto" (native, else generic).
    pub fn attach_xdp(&mut self, iface: &str, mode: super::super::policy::XdpModeSetting) -> anyhow::Result<XdpAttachment> {
        use crate::policy::XdpModeSetting as M;
        if let Some((_, a)) = self.xdp_links.get(iface) {
            return Ok(a.clone());
        }
        let prog: &mut Xdp = program(&mut self.ebpf, XDP)?;
        let tries: &[(XdpMode, &'static str)] = match mode {
            M::Native => &[(XdpMode::Driver, "native")],
            M::Generic => &[(XdpMode::Skb, "generic")],
            M::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        };
        let mut last = None;
        for (m, label) in tries {
            match prog.attach(iface, *m) {
                Ok(id) => {
                    let a = XdpAttachment { mode: label };
                    self.xdp_links.insert(iface.to_string(), (id, a.clone()));
                    return Ok(a);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow!(last.expect("at least one mode tried")).context(format!("attaching XDP to {iface}")))
    }

    /// Detaches XDP from `iface` (nothing if it is not attached or already gone).
    pub fn detach_xdp(&mut self, iface: &str) {
        if let Some((id, _)) = self.xdp_links.remove(iface) {
            if let Ok(prog) = program::<Xdp>(&mut self.ebpf, XDP) {
                // An interface that went away took its link with it.
                let _ = prog.detach(id);
            }
        }
    }

    pub fn xdp_attachments(&self) -> impl Iterator<Item = (&String, &XdpAttachment)> {
        self.xdp_links.iter().map(|(k, (_, a))| (k, a))
    }

    /// Attaches the cgroup programs to `path` (a cgroup v2 path) under `mount`. Programs
    /// attached elsewhere before stay until the new ones are in, so there is no gap.
    pub fn attach_cgroup(&mut self, mount: &Path, path: &str) -> anyhow::Result<()> {
        if self.cgroup_path.as_deref() == Some(path) {
            return Ok(());
        }
        let dir = super::host::cgroup_dir(mount, path);
        let fd = File::open(&dir).with_context(|| format!("opening cgroup {}", dir.display()))?;
        let mut links = Vec::new();
        // On this kernel aya attaches through bpf_link_create, which always coexists with
        // other programs on the cgroup (systemd's, for one) and takes no attach flags:
        // "Single" is the mode that passes none.
        let mode = CgroupAttachMode::Single;
        let attached = (|| -> anyhow::Result<()> {
            for (name, kind) in [(INGRESS, CgroupSkbAttachType::Ingress), (EGRESS, CgroupSkbAttachType::Egress)] {
                let p: &mut CgroupSkb = program(&mut self.ebpf, name)?;
                let id = p.attach(&fd, kind, mode)
                    .with_context(|| format!("attaching {name} to cgroup {path}"))?;
                links.push(CgroupLink::Skb(name, id));
            }
            for name in SOCK_ADDR {
                let p: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
                let id = p.attach(&fd, mode)
                    .with_context(|| format!("attaching {name} to cgroup {path}"))?;
                links.push(CgroupLink::SockAddr(name, id));
            }
            Ok(())
        })();
        if let Err(e) = attached {
            self.detach_links(links);
            return Err(e);
        }
        let old = std::mem::replace(&mut self.cgroup_links, links);
        self.detach_links(old);
        self.cgroup_path = Some(path.to_string());
        Ok(())
    }

    pub fn cgroup_path(&self) -> Option<&str> {
        self.cgroup_path.as_deref()
    }

    fn detach_links(&mut self, links: Vec<CgroupLink>) {
        for l in links {
            match l {
                CgroupLink::Skb(name, id) => {
                    if let Ok(p) = program::<CgroupSkb>(&mut self.ebpf, name) {
                        let _ = p.detach(id);
                    }
                }
                CgroupLink::SockAddr(name, id) => {
                    if let Ok(p) = program::<CgroupSockAddr>(&mut self.ebpf, name) {
                        let _ = p.detach(id);
                    }
                }
            }
        }
    }

    /// Detaches everything (also done by dropping `Loaded`).
    pub fn detach_all(&mut self) {
        let ifaces: Vec<String> = self.xdp_links.keys().cloned().collect();
        for i in ifaces {
            self.detach_xdp(&i);
        }
        let links = std::mem::take(&mut self.cgroup_links);
        self.detach_links(links);
        self.cgroup_path = None;
    }
}

/// A loaded program by name and type.
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    p.try_into().with_context(|| format!("program {name} has an unexpected type"))
}

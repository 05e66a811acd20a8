//! Loading the embedded programs, and attaching them to interfaces and a cgroup.

use std::{
    collections::BTreeMap,
    fs::File,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use enforcer_common::{
    consts::LAYOUT_VERSION,
    maps::{
        ActiveSlot, AllowKey, AllowValue, BucketSlot, CgroupKey, GroupInfo, HostAddrSlot, HostInfo,
        LocalAddrKey, RuleStats, SlotInfo,
    },
};

mod attach;

use attach::attach_cgroup_program;

use super::{
    pins::{Owner, Ownership, PinDir},
    sys,
};
use crate::policy::XdpModeSetting;

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
    pub allow: HashMap<MapData, AllowKey, AllowValue>,
    pub cgroups: HashMap<MapData, CgroupKey, AllowValue>,
    pub len_bits: Array<MapData, BucketSlot>,
    pub local_addrs: HashMap<MapData, LocalAddrKey, u32>,
    pub host_addrs: Array<MapData, HostAddrSlot>,
    /// Host-side interface index -> the network namespace cookie on its other end: an
    /// array below `PATH_TABLE`, a hash above.
    pub paths: Array<MapData, u64>,
    pub paths_far: HashMap<MapData, u32, u64>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub rule_stats: PerCpuArray<MapData, RuleStats>,
}

/// Where XDP is attached, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpAttachment {
    pub mode: &'static str,
}

/// Every map in the object, pinned under `maps/` by name.
const MAP_NAMES: [&str; 17] = [
    "ACTIVE",
    "SLOT_INFO",
    "HOST",
    "PORTS",
    "GROUPS",
    "ALLOW",
    "CGROUPS",
    "LEN_BITS",
    "LOCAL_ADDRS",
    "HOST_ADDRS",
    "FLOWS",
    "PATHS",
    "PATHS_FAR",
    "REASONS",
    "RULE_STATS",
    "EVENTS",
    "SOCK_OWNERS",
];

/// Loaded programs, their maps, and where they are attached. Attachments are links pinned
/// under the pin directory: they outlive this process, and `detach_*` removes their pins.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub events: Option<RingBuf<MapData>>,
    pins: Option<PinDir>,
    /// The pin directory's lock and this daemon's record beside it.
    ownership: Option<(Ownership, Owner)>,
    /// A descriptor of every pinned map, to pin it again if its pin is removed.
    map_fds: Vec<(&'static str, OwnedFd)>,
    /// Interface -> (link pin name, how it is attached).
    xdp_links: BTreeMap<String, (String, XdpAttachment)>,
    /// Link pin names of the cgroup programs, and the cgroup they are on.
    cgroup_links: Vec<String>,
    cgroup: Option<(String, u64)>,
    /// State pinned by an earlier daemon was adopted: (active slot, its generation).
    pub adopted: Option<(u32, u64)>,
    /// Pinned links that could not be switched in place (re-attached, with a gap).
    adoption_failures: Vec<String>,
}

fn load_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            anyhow!("the kernel refused program {name}: {io_error}\nverifier log:\n{verifier_log}")
        }
        other => anyhow!(other).context(format!("loading program {name}")),
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// The `EVENTS` ring buffer at the size the kernel made it. One pinned by an earlier daemon
/// keeps its size (until the state is unloaded); aya would map it at this object's size,
/// which the kernel refuses when the two differ.
fn ring_as_made(ebpf: &mut Ebpf) -> anyhow::Result<RingBuf<MapData>> {
    let aya::maps::Map::RingBuf(made) = ebpf
        .take_map("EVENTS")
        .ok_or_else(|| anyhow!("map EVENTS missing from the object"))?
    else {
        anyhow::bail!("map EVENTS is not a ring buffer");
    };
    let fd = made
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the EVENTS descriptor")?;
    let data = MapData::from_fd(fd).context("reading the EVENTS map's size")?;
    RingBuf::try_from(aya::maps::Map::RingBuf(data)).context("mapping the EVENTS ring buffer")
}

/// A link's pin name for an XDP attachment.
fn xdp_pin_name(iface: &str, mode: &str) -> String {
    format!("xdp@{iface}@{mode}")
}

impl Loaded {
    /// Loads every program into the kernel, with maps of its own and nothing attached
    /// (tests run the programs through BPF_PROG_TEST_RUN).
    pub fn load() -> anyhow::Result<Self> {
        let ebpf = Ebpf::load(OBJECT).context("loading the BPF object")?;
        Self::finish(ebpf, None)
    }

    /// Loads the programs with their maps pinned under `pins`, which `ownership` holds,
    /// for a daemon in the network namespace with `netns_cookie`. Maps an earlier daemon
    /// pinned there are reused (its policy stays in force) if they are of this layout and
    /// treat this namespace as the host's; its pinned links are switched to the new
    /// programs in place. Nothing is written before those checks pass.
    pub fn load_pinned(
        pins: PinDir,
        ownership: Ownership,
        netns_cookie: u64,
    ) -> anyhow::Result<Self> {
        if pins.has_maps() {
            check_pinned(&pins, netns_cookie)?;
        }
        let owner = Owner::this_process(netns_cookie).context("describing this process")?;
        ownership
            .record(&owner)
            .with_context(|| format!("recording the owner in {}", pins.root.display()))?;
        let mut loader = EbpfLoader::new();
        for name in MAP_NAMES {
            loader.map_pin_path(name, pins.map(name));
        }
        let ebpf = loader.load(OBJECT).context("loading the BPF object")?;
        let map_fds = MAP_NAMES
            .into_iter()
            .map(|name| {
                let path = pins.map(name);
                sys::obj_get(&path)
                    .map(|fd| (name, fd))
                    .with_context(|| format!("opening {}", path.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut loaded = Self::finish(ebpf, Some(pins))?;
        loaded.ownership = Some((ownership, owner));
        loaded.map_fds = map_fds;
        loaded.adopt_links()?;
        Ok(loaded)
    }

    fn finish(mut ebpf: Ebpf, pins: Option<PinDir>) -> anyhow::Result<Self> {
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
        let mut maps = Maps {
            active: take(&mut ebpf, "ACTIVE")?,
            slot_info: take(&mut ebpf, "SLOT_INFO")?,
            host: take(&mut ebpf, "HOST")?,
            ports: take(&mut ebpf, "PORTS")?,
            groups: take(&mut ebpf, "GROUPS")?,
            allow: take(&mut ebpf, "ALLOW")?,
            cgroups: take(&mut ebpf, "CGROUPS")?,
            len_bits: take(&mut ebpf, "LEN_BITS")?,
            local_addrs: take(&mut ebpf, "LOCAL_ADDRS")?,
            host_addrs: take(&mut ebpf, "HOST_ADDRS")?,
            paths: take(&mut ebpf, "PATHS")?,
            paths_far: take(&mut ebpf, "PATHS_FAR")?,
            reasons: take(&mut ebpf, "REASONS")?,
            rule_stats: take(&mut ebpf, "RULE_STATS")?,
        };
        let events = Some(ring_as_made(&mut ebpf)?);
        let mut host = maps.host.get(&0, 0).context("reading host facts")?;
        let adopted = if host.layout == LAYOUT_VERSION {
            let slot = maps
                .active
                .get(&0, 0)
                .context("reading the active slot")?
                .slot
                & 1;
            let generation = maps
                .slot_info
                .get(&slot, 0)
                .context("reading the policy generation")?
                .generation;
            Some((slot, generation))
        } else {
            host.layout = LAYOUT_VERSION;
            maps.host.set(0, host, 0).context("writing host facts")?;
            None
        };
        Ok(Loaded {
            ebpf,
            maps,
            events,
            pins,
            ownership: None,
            map_fds: Vec::new(),
            xdp_links: BTreeMap::new(),
            cgroup_links: Vec::new(),
            cgroup: None,
            adopted,
            adoption_failures: Vec::new(),
        })
    }

    /// Switches every link pinned by an earlier daemon to this daemon's programs.
    fn adopt_links(&mut self) -> anyhow::Result<()> {
        let Some(pins) = self.pins.clone() else {
            return Ok(());
        };
        for name in pins.links() {
            let unknown = || anyhow!("unknown pinned link {name} in {}", pins.root.display());
            let parts: Vec<&str> = name.split('@').collect();
            let prog = match parts.as_slice() {
                ["xdp", _, _] => XDP,
                ["cgroup", _, prog] => [INGRESS, EGRESS]
                    .into_iter()
                    .chain(SOCK_ADDR)
                    .find(|p| p == prog)
                    .ok_or_else(unknown)?,
                _ => return Err(unknown()),
            };
            let path = pins.link(&name);
            let link =
                sys::obj_get(&path).with_context(|| format!("opening {}", path.display()))?;
            let prog_fd = self
                .ebpf
                .program(prog)
                .ok_or_else(|| anyhow!("program {prog} missing"))?
                .fd()?;
            if let Err(e) = sys::link_update(link.as_fd(), prog_fd.as_fd()) {
                if e.raw_os_error() == Some(libc::ENOLINK) {
                    // The attach point went away (an interface was removed): forget it.
                    tracing::info!("pinned link {name} is gone ({e}); removing it");
                } else {
                    // The in-place swap is what makes adoption gapless: re-attaching leaves
                    // the attach point unguarded for a moment, which must not pass unseen.
                    let msg = format!("pinned link {name} could not be switched to the new programs in place ({e}); it was detached and attached again, leaving a moment without enforcement there");
                    tracing::error!("{msg}");
                    self.adoption_failures.push(msg);
                }
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match parts.as_slice() {
                ["xdp", iface, mode] => {
                    self.xdp_links.insert(
                        iface.to_string(),
                        (
                            name.clone(),
                            XdpAttachment {
                                mode: mode_label(mode),
                            },
                        ),
                    );
                }
                ["cgroup", id, _] => {
                    let id: u64 = id.parse().with_context(|| format!("pinned link {name}"))?;
                    self.cgroup_links.push(name.clone());
                    self.cgroup.get_or_insert((String::new(), id));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Pinned links this daemon could not switch in place when it adopted them.
    pub fn adoption_failures(&self) -> &[String] {
        &self.adoption_failures
    }

    fn pins(&self) -> anyhow::Result<&PinDir> {
        self.pins
            .as_ref()
            .ok_or_else(|| anyhow!("programs loaded without a pin directory cannot be attached"))
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|p| p.root.as_path())
    }

    /// This daemon as recorded beside its pins.
    pub fn owner(&self) -> Option<&Owner> {
        self.ownership.as_ref().map(|(_, o)| o)
    }

    /// What of this daemon's pinned state is no longer in the pin directory (removed by
    /// `enforcer unload --force` or by hand): a few stat calls, cheap enough for every tick.
    pub fn lost_pins(&self) -> Vec<String> {
        let (Some(pins), Some((ownership, owner))) = (&self.pins, &self.ownership) else {
            return Vec::new();
        };
        if !ownership.still_held() {
            return vec![format!("the pin directory {}", pins.root.display())];
        }
        let gone = |p: &Path| std::fs::symlink_metadata(p).is_err();
        let mut lost: Vec<String> = self
            .map_fds
            .iter()
            .filter(|(name, _)| gone(&pins.map(name)))
            .map(|(name, _)| format!("maps/{name}"))
            .collect();
        lost.extend(
            self.xdp_links
                .values()
                .map(|(name, _)| name)
                .chain(&self.cgroup_links)
                .filter(|name| gone(&pins.link(name)))
                .map(|name| format!("links/{name}")),
        );
        if pins.owner().as_ref() != Some(owner) {
            lost.push("owner".into());
        }
        lost
    }

    /// Puts this daemon's pinned state back: the directory (locked again), the owner
    /// record, the maps (the same maps, by the descriptors this daemon holds, so the policy
    /// in them is intact), the cgroup programs' links. XDP attachments whose links went are
    /// forgotten, for the caller to attach again. Fails if another daemon took the
    /// directory meanwhile.
    pub fn restore_pins(&mut self, cgroup_mount: &Path) -> anyhow::Result<()> {
        let (Some(pins), Some((ownership, owner))) = (self.pins.clone(), self.ownership.take())
        else {
            return Ok(());
        };
        let ownership = if ownership.still_held() {
            ownership
        } else {
            drop(ownership);
            PinDir::open(&pins.root)?;
            pins.lock()?
        };
        for d in [pins.root.join("maps"), pins.root.join("links")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        if pins.owner().as_ref() != Some(&owner) {
            ownership
                .record(&owner)
                .with_context(|| format!("recording the owner in {}", pins.root.display()))?;
        }
        self.ownership = Some((ownership, owner));
        for (name, fd) in &self.map_fds {
            let path = pins.map(name);
            if std::fs::symlink_metadata(&path).is_err() {
                sys::obj_pin(fd.as_fd(), &path)
                    .with_context(|| format!("pinning {}", path.display()))?;
            }
        }
        let gone = |name: &String| std::fs::symlink_metadata(pins.link(name)).is_err();
        self.xdp_links.retain(|_, (name, _)| !gone(name));
        // Only the cgroup programs whose links went are attached again (under the same
        // names): the others never stop judging.
        let missing: Vec<String> = self
            .cgroup_links
            .iter()
            .filter(|n| gone(n))
            .cloned()
            .collect();
        if let (false, Some((path, _))) = (missing.is_empty(), &self.cgroup) {
            let dir = crate::host::cgroup_dir(cgroup_mount, path);
            let fd =
                File::open(&dir).with_context(|| format!("opening cgroup {}", dir.display()))?;
            for pin in missing {
                let name = pin.rsplit('@').next().unwrap_or_default().to_string();
                attach_cgroup_program(&mut self.ebpf, &fd, &name, &pins.link(&pin))
                    .with_context(|| format!("attaching {name} to cgroup {path} again"))?;
            }
        }
        Ok(())
    }
}

fn mode_label(m: &str) -> &'static str {
    match m {
        "native" => "native",
        "generic" => "generic",
        _ => "unknown",
    }
}

/// Refuses pinned maps of another layout (reading them with this daemon's types would
/// misjudge packets), and maps that treat another network namespace as the host's: a
/// daemon in a container must not make the host's own sockets look foreign.
fn check_pinned(pins: &PinDir, netns_cookie: u64) -> anyhow::Result<()> {
    let incompatible = |why: String| {
        anyhow!(
            "the state pinned at {} was made by an incompatible enforcer ({why}); this daemon will not adopt it. \
             Remove it with `enforcer unload --pin-dir {}` (enforcement stops until the next start).",
            pins.root.display(),
            pins.root.display()
        )
    };
    let data = MapData::from_pin(pins.map("HOST"))
        .map_err(|e| incompatible(format!("its HOST map cannot be read: {e}")))?;
    let host: Array<MapData, HostInfo> = Array::try_from(aya::maps::Map::Array(data))
        .map_err(|e| incompatible(format!("its HOST map has another shape: {e}")))?;
    let facts = host.get(&0, 0).unwrap_or_default();
    if facts.layout != LAYOUT_VERSION {
        return Err(incompatible(format!(
            "map layout {}, this daemon uses {LAYOUT_VERSION}",
            facts.layout
        )));
    }
    if facts.netns_cookie != 0 && facts.netns_cookie != netns_cookie {
        let recorded = pins
            .owner()
            .filter(|o| o.netns_cookie == facts.netns_cookie)
            .map_or_else(String::new, |o| {
                format!(", net:[{}], last owned by pid {}", o.netns_ino, o.pid)
            });
        let here = std::fs::metadata("/proc/self/ns/net")
            .map(|m| format!(" (net:[{}])", m.ino()))
            .unwrap_or_default();
        anyhow::bail!(
            "the programs pinned at {} treat network namespace cookie {}{recorded} as the host's; \
             this daemon runs in namespace cookie {netns_cookie}{here} and will not change that. \
             Start it in that namespace, or remove the pinned state first with \
             `enforcer unload --pin-dir {}` (enforcement stops until the next start).",
            pins.root.display(),
            facts.netns_cookie,
            pins.root.display()
        );
    }
    Ok(())
}

/// A loaded program by name and type.
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    p.try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

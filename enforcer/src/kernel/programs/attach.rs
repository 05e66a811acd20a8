//! Attaching the loaded programs: XDP to interfaces, the cgroup programs to the policy's
//! cgroup (each link pinned, so it outlives the daemon), and detaching them again.

use super::*;

impl Loaded {
    /// Whether XDP is attached to `iface`.
    pub fn has_xdp(&self, iface: &str) -> bool {
        self.xdp_links.contains_key(iface)
    }

    /// Attaches XDP to `iface`: `mode` "native", "generic", or "auto" (native, else generic).
    pub fn attach_xdp(
        &mut self,
        iface: &str,
        mode: XdpModeSetting,
    ) -> anyhow::Result<XdpAttachment> {
        if let Some((_, a)) = self.xdp_links.get(iface) {
            return Ok(a.clone());
        }
        let pins = self.pins()?.clone();
        let prog: &mut Xdp = program(&mut self.ebpf, XDP)?;
        let tries: &[(XdpMode, &'static str)] = match mode {
            XdpModeSetting::Native => &[(XdpMode::Driver, "native")],
            XdpModeSetting::Generic => &[(XdpMode::Skb, "generic")],
            XdpModeSetting::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        };
        let mut last = None;
        for (m, label) in tries {
            match prog.attach(iface, *m) {
                Ok(id) => {
                    let link: FdLink = prog.take_link(id)?.try_into()?;
                    let name = xdp_pin_name(iface, label);
                    link.pin(pins.link(&name))
                        .with_context(|| format!("pinning the XDP link of {iface}"))?;
                    let a = XdpAttachment { mode: label };
                    self.xdp_links.insert(iface.to_string(), (name, a.clone()));
                    return Ok(a);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow!(last.expect("at least one mode tried"))
            .context(format!("attaching XDP to {iface}")))
    }

    /// Detaches XDP from `iface` (nothing if it is not attached or already gone).
    pub fn detach_xdp(&mut self, iface: &str) {
        if let (Some((name, _)), Some(pins)) = (self.xdp_links.remove(iface), &self.pins) {
            let _ = std::fs::remove_file(pins.link(&name));
        }
    }

    pub fn xdp_attachments(&self) -> impl Iterator<Item = (&String, &XdpAttachment)> {
        self.xdp_links.iter().map(|(k, (_, a))| (k, a))
    }

    /// Attaches the cgroup programs to `path` (a cgroup v2 path) under `mount`. Programs
    /// attached elsewhere before stay until the new ones are in, so there is no gap.
    pub fn attach_cgroup(&mut self, mount: &Path, path: &str) -> anyhow::Result<()> {
        let dir = crate::host::cgroup_dir(mount, path);
        let id = crate::host::cgroup_id(mount, path)
            .ok_or_else(|| anyhow!("cgroup {path} does not exist ({})", dir.display()))?;
        if let Some((p, current)) = &mut self.cgroup {
            if *current == id {
                *p = path.to_string();
                return Ok(());
            }
        }
        let pins = self.pins()?.clone();
        let fd = File::open(&dir).with_context(|| format!("opening cgroup {}", dir.display()))?;
        let mut new_links = Vec::new();
        let attached = (|| -> anyhow::Result<()> {
            for name in [INGRESS, EGRESS].into_iter().chain(SOCK_ADDR) {
                let pin = format!("cgroup@{id}@{name}");
                attach_cgroup_program(&mut self.ebpf, &fd, name, &pins.link(&pin))
                    .with_context(|| format!("attaching {name} to cgroup {path}"))?;
                new_links.push(pin);
            }
            Ok(())
        })();
        if let Err(e) = attached {
            for pin in new_links {
                let _ = std::fs::remove_file(pins.link(&pin));
            }
            return Err(e);
        }
        for old in std::mem::replace(&mut self.cgroup_links, new_links) {
            let _ = std::fs::remove_file(pins.link(&old));
        }
        self.cgroup = Some((path.to_string(), id));
        Ok(())
    }

    pub fn cgroup_path(&self) -> Option<&str> {
        self.cgroup.as_ref().map(|(p, _)| p.as_str())
    }

    /// Detaches everything this daemon attached or adopted.
    pub fn detach_all(&mut self) {
        let ifaces: Vec<String> = self.xdp_links.keys().cloned().collect();
        for i in ifaces {
            self.detach_xdp(&i);
        }
        if let Some(pins) = &self.pins {
            for l in self.cgroup_links.drain(..) {
                let _ = std::fs::remove_file(pins.link(&l));
            }
        }
        self.cgroup = None;
    }
}

/// Attaches cgroup program `name` to the cgroup open as `cgroup` and pins its link at `pin`.
pub(super) fn attach_cgroup_program(
    ebpf: &mut Ebpf,
    cgroup: &File,
    name: &str,
    pin: &Path,
) -> anyhow::Result<()> {
    // On this kernel aya attaches through bpf_link_create, which always coexists with
    // other programs on the cgroup (systemd's, for one) and takes no attach flags:
    // "Single" is the mode that passes none.
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match name {
        INGRESS | EGRESS => {
            let kind = if name == INGRESS {
                CgroupSkbAttachType::Ingress
            } else {
                CgroupSkbAttachType::Egress
            };
            let p: &mut CgroupSkb = program(ebpf, name)?;
            let lid = p.attach(cgroup, kind, mode)?;
            p.take_link(lid)?.try_into()?
        }
        _ => {
            let p: &mut CgroupSockAddr = program(ebpf, name)?;
            let lid = p.attach(cgroup, mode)?;
            p.take_link(lid)?.try_into()?
        }
    };
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

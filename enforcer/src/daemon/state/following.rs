//! Following the host: the policy's cgroup and interfaces (XDP attached to the ones that
//! match as they come and go), the host's addresses, pins removed behind the daemon's
//! back, and the listeners its programs do not cover.

use super::*;

impl State {
    pub(super) fn attach(&mut self) -> anyhow::Result<()> {
        self.loaded
            .attach_cgroup(&self.cgroup_mount, &self.policy.attach.cgroup)?;
        self.sync_interfaces()
    }

    /// XDP on exactly the interfaces that exist now and match the policy's names and
    /// globs: ones that appear get it, ones that go away (or no longer match) are forgotten.
    /// Only Ethernet devices: the program reads an Ethernet header first, so on a tun,
    /// WireGuard or IPIP device it would misread every frame. A glob skips such a device
    /// (said in `status`); a device named outright is refused. Also keeps `PATHS` current.
    pub(super) fn sync_interfaces(&mut self) -> anyhow::Result<()> {
        let links = netlink::links().context("listing this host's interfaces")?;
        self.paths.sync(&mut self.loaded.maps, &links);
        let patterns = &self.policy.attach.interfaces;
        let mut wanted = BTreeSet::new();
        let mut skipped = BTreeMap::new();
        let mut first_error = None;
        for l in &links {
            if !patterns
                .iter()
                .any(|p| crate::policy::values::glob_match(p, &l.name))
            {
                continue;
            }
            if l.arphrd == netlink::ARPHRD_ETHER {
                wanted.insert(l.name.clone());
                continue;
            }
            let why = format!(
                "XDP is not attached to {}: it is a {} device, whose frames do not start with the Ethernet header the XDP program parses (the cgroup programs still judge what reaches this host's sockets through it)",
                l.name,
                netlink::arphrd_name(l.arphrd)
            );
            if patterns.contains(&l.name) {
                first_error.get_or_insert(anyhow::anyhow!("interface {}: {why}", l.name));
            } else if !self.xdp_skipped.contains_key(&l.name) {
                warn!(iface = l.name, "{why}");
            }
            skipped.insert(l.name.clone(), why);
        }
        self.xdp_skipped = skipped;
        let attached: Vec<String> = self
            .loaded
            .xdp_attachments()
            .map(|(k, _)| k.clone())
            .collect();
        for iface in attached {
            if !wanted.contains(&iface) {
                self.loaded.detach_xdp(&iface);
                info!(
                    iface,
                    "XDP detached (interface gone or no longer in the policy)"
                );
            }
        }
        for iface in &wanted {
            if self.loaded.has_xdp(iface) {
                continue;
            }
            match self.loaded.attach_xdp(iface, self.policy.attach.xdp_mode) {
                Ok(a) => info!(iface, mode = a.mode, "XDP attached"),
                Err(e) => {
                    warn!(iface, "{e:#}");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub(super) fn sync_local_addrs(&mut self) -> anyhow::Result<()> {
        let now = crate::host::local_addrs().context("listing this host's addresses")?;
        if now == self.local_addrs {
            return Ok(());
        }
        host::sync_addrs(&mut self.loaded.maps, &self.local_addrs, &now)?;
        self.local_addrs = now;
        Ok(())
    }

    /// Pinned state removed under this daemon (`enforcer unload --force`, or by hand) is put
    /// back: the maps by the descriptors it holds, the links by attaching again. Said in
    /// the log, an audit event and `status`.
    pub(super) fn restore_pins(&mut self, lost: Vec<String>) -> anyhow::Result<()> {
        let pin_dir = self
            .loaded
            .pin_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let at = crate::clock::now_rfc3339_nanos();
        tracing::error!(
            pin_dir,
            ?lost,
            "pinned state removed under this daemon; restoring it"
        );
        let generation = self.generation;
        let event = |action: &str, error: Option<String>| {
            AuditMsg::Json(json!({
                "ts": crate::clock::now_rfc3339_nanos(),
                "event": "pins",
                "action": action,
                "pin_dir": pin_dir,
                "lost": lost,
                "policy": generation,
                "error": error,
            }))
        };
        let _ = self.audit.send(event("lost", None));
        if let Err(e) = self.loaded.restore_pins(&self.cgroup_mount) {
            let msg = format!("{e:#}");
            let _ = self.audit.send(event("restore-failed", Some(msg.clone())));
            return Err(e.context(format!(
                "restoring the pinned state at {pin_dir}; exiting so that a supervisor starts a daemon afresh"
            )));
        }
        // As at any time: an attach point that refuses is logged, and XDP is tried again
        // on every tick.
        let attached = self.attach().err().map(|e| format!("{e:#}"));
        let _ = self.audit.send(event("restored", attached.clone()));
        info!(
            pin_dir,
            "pinned state restored: programs attached, policy in force"
        );
        self.pins_incident = Some(format!(
            "pinned state at {pin_dir} was removed under this daemon at {at} ({}); restored at {}{}",
            lost.join(", "),
            crate::clock::now_rfc3339_nanos(),
            attached.map_or_else(String::new, |e| format!(", but attaching failed: {e}"))
        ));
        Ok(())
    }

    /// Finds the listeners on protected ports that only part of the programs can guard
    /// (outside the attached cgroup, kernel tunnel sockets) and logs each new one.
    pub(super) fn check_gaps(&mut self) {
        self.gaps_checked = Some(Instant::now());
        let Ok(sockets) = crate::host::sockets::listeners() else {
            return;
        };
        let coverage = crate::policy::exposure::Coverage {
            cgroup: self.policy.attach.cgroup.clone(),
            xdp: self
                .loaded
                .xdp_attachments()
                .map(|(i, _)| i.clone())
                .collect(),
        };
        let report = crate::policy::exposure::report(
            Some(&self.policy),
            &sockets.listeners,
            Some(&coverage),
            None,
            &[],
        );
        let gaps: Vec<String> = report.sockets.iter().filter_map(|f| f.gap_line()).collect();
        for g in gaps.iter().filter(|g| !self.gaps.contains(g)) {
            warn!("coverage gap: {g}");
        }
        self.gaps = gaps;
    }
}

/// Ids of the allowed cgroups that exist now.
pub(super) fn resolve_cgroups(
    mount: &std::path::Path,
    compiled: &Compiled,
) -> BTreeMap<String, u64> {
    compiled
        .cgroups
        .keys()
        .filter_map(|(_, path)| crate::host::cgroup_id(mount, path).map(|id| (path.clone(), id)))
        .collect()
}

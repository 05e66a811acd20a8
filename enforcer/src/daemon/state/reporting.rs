//! Reporting: the typed status answer (`control::status::Status`) filled from the maps'
//! counters, the loaded programs and the owner's own state.

use super::*;

impl State {
    /// Everything `enforcer status` shows.
    pub fn status(&self) -> Status {
        let maps = &self.loaded.maps;
        let mut reasons = BTreeMap::new();
        for h in Hook::ALL {
            let mut m = BTreeMap::new();
            for r in Reason::ALL {
                let n = counters::by_reason(maps, h, r);
                if n > 0 {
                    m.insert(r.name().to_string(), n);
                }
            }
            reasons.insert(h.name().to_string(), m);
        }
        let rules = self
            .policy
            .verdict
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let i = i as u32;
                status::Rule {
                    name: r.name.clone(),
                    mode: mode_name(r.mode).to_string(),
                    allowed: counters::by_rule(maps, i, Verdict::Allow),
                    dropped: counters::by_rule(maps, i, Verdict::Drop),
                    would_drop: counters::by_rule(maps, i, Verdict::WouldDrop),
                }
            })
            .collect();
        let xdp = self
            .loaded
            .xdp_attachments()
            .map(|(i, a)| status::XdpAttached {
                iface: i.clone(),
                mode: a.mode.to_string(),
            })
            .collect();
        let mut warnings: Vec<String> = self.loaded.adoption_failures().to_vec();
        let present = crate::host::interfaces();
        for i in &self.policy.attach.interfaces {
            if !present
                .iter()
                .any(|n| crate::policy::values::glob_match(i, n))
            {
                warnings.push(if i.contains(['*', '?']) {
                    format!("no interface matches {i} (XDP attaches when one appears)")
                } else {
                    format!(
                        "interface {i} in the policy does not exist (XDP attaches when it appears)"
                    )
                });
            }
        }
        warnings.extend(self.xdp_skipped.values().cloned());
        warnings.extend(self.gaps.iter().cloned());
        for (_, path) in self.compiled.cgroups.keys() {
            if !self.cgroup_ids.contains_key(path)
                && !warnings
                    .iter()
                    .any(|w| w.contains(&format!("cgroup {path} ")))
            {
                warnings.push(format!(
                    "cgroup {path} does not exist yet (its rule applies once it is created)"
                ));
            }
        }
        warnings.extend(self.pins_incident.clone());
        let origin = Origin::get();
        Status {
            daemon: status::Daemon {
                pid: std::process::id(),
                started: self.started_at.clone(),
                config: self.config_path.display().to_string(),
            },
            pins: status::Pins {
                dir: self.loaded.pin_dir().map(|p| p.display().to_string()),
                owner: self.loaded.owner().map(|o| o.to_string()),
                restored: self.pins_incident.clone(),
            },
            policy: status::Policy {
                generation: self.generation,
                hash: self.policy.hash.clone(),
                applied_at: self.applied_at.clone(),
                file: self.policy.path.display().to_string(),
                mode: mode_name(self.policy.verdict.mode).to_string(),
                rules: self.policy.verdict.rules.len(),
                confirm_by: self.pending.as_ref().map(|p| p.deadline_wall.clone()),
            },
            programs: status::Programs {
                xdp: status::Xdp {
                    name: programs::XDP.to_string(),
                    attached: xdp,
                },
                cgroup: status::Cgroup {
                    path: self.loaded.cgroup_path().map(str::to_string),
                    programs: [
                        programs::INGRESS,
                        programs::EGRESS,
                        programs::SOCK_ADDR[0],
                        programs::SOCK_ADDR[1],
                        programs::SOCK_ADDR[2],
                        programs::SOCK_ADDR[3],
                    ]
                    .map(str::to_string)
                    .to_vec(),
                },
            },
            counters: reasons,
            rules,
            audit: status::Audit {
                events: self.stats.events.load(Ordering::Relaxed),
                lost_kernel: counters::events_lost(maps),
                suppressed: counters::suppressed(maps, GLOBAL_BUCKET),
                lost_sinks: self.stats.lost.total(),
                lost: Scope::ALL
                    .iter()
                    .map(|s| (s.name().to_string(), self.stats.lost.get(*s)))
                    .collect(),
                subscribers: self.stats.subscribers.load(Ordering::Relaxed),
                next_seq: self.stats.next_seq.load(Ordering::Relaxed),
                origin: status::Origin {
                    boot_id: origin.boot_id.clone(),
                    host: origin.host.clone(),
                },
                file: self.policy.sinks.file.as_ref().map(|f| status::FileSink {
                    path: f.path.display().to_string(),
                    max_bytes: f.max_bytes,
                    keep: f.keep,
                }),
                syslog: self
                    .policy
                    .sinks
                    .syslog
                    .as_ref()
                    .map(|s| status::SyslogSink {
                        target: s.target.to_string(),
                        facility: syslog::facility_name(s.facility).to_string(),
                    }),
            },
            warnings,
        }
    }
}

/// How the status names a policy's or a rule's mode.
fn mode_name(mode: enforcer_common::model::Mode) -> &'static str {
    match mode {
        enforcer_common::model::Mode::Enforce => "enforce",
        _ => "audit",
    }
}

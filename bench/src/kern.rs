//! enforcer's programs loaded in this process (nothing attached unless the bench attaches
//! it), with host facts and a policy written the way the daemon writes them. Like the test
//! bed's `TestKernel`, but the ring buffer stays reachable, for the audit reader thread.

use std::{
    net::IpAddr,
    os::fd::RawFd,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _};
use aya::maps::{MapData, RingBuf};
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
    model::policy::{PortRange, Prefix},
    reason::{Hook, Reason},
};

use crate::bpf;

pub struct Kern {
    pub loaded: Loaded,
    pub events: Option<RingBuf<MapData>>,
    writer: Writer,
    generation: u64,
    pub xdp: RawFd,
    pub ingress: RawFd,
    pub egress: RawFd,
}

/// Parses a policy, with a readable error.
pub fn parse(text: &str) -> anyhow::Result<Policy> {
    parse_str(Path::new("bench.toml"), text).map_err(|e| anyhow!("bench policy refused: {e}"))
}

/// A big policy built without its text: a one-rule file is parsed (so every default and
/// every field is the parser's), then the rule is copied once per `(port, prefixes)`, named
/// r0, r1, .... Parsing a file of 65,536 prefixes takes minutes (section 4 measures it),
/// which the data-path measurements have no need to wait for.
pub fn build_policy(header: &str, rules: &[(u16, Vec<(IpAddr, u8)>)]) -> anyhow::Result<Policy> {
    let mut policy = parse(&format!(
        "{header}\n[[rule]]\nname = \"template\"\nprotocol = \"tcp\"\nports = [1]\nallow_from = [\"192.0.2.1/32\"]\n"
    ))?;
    let template = policy.verdict.rules.pop().context("the template rule")?;
    for (i, (port, prefixes)) in rules.iter().enumerate() {
        let mut r = template.clone();
        r.name = format!("r{i}");
        r.ports = vec![PortRange {
            first: *port,
            last: *port,
        }];
        r.allow_from = prefixes
            .iter()
            .map(|&(addr, len)| Prefix { addr, len })
            .collect();
        policy.verdict.rules.push(r);
    }
    Ok(policy)
}

impl Kern {
    /// Loads the programs, marks `local_addrs` as the host's and this namespace as the
    /// host's, and applies `policy`.
    pub fn new(policy: &str, local_addrs: &[IpAddr]) -> anyhow::Result<Self> {
        Self::with_policy(&parse(policy)?, local_addrs)
    }

    /// As `new`, with a policy already parsed or built.
    pub fn with_policy(policy: &Policy, local_addrs: &[IpAddr]) -> anyhow::Result<Self> {
        let mut loaded = Loaded::load()?;
        let events = loaded.events.take();
        let mut info = loaded.maps.host.get(&0, 0).context("reading host facts")?;
        info.netns_cookie = enforcer::host::netns_cookie().context("netns cookie")?;
        loaded
            .maps
            .host
            .set(0, info, 0)
            .context("writing host facts")?;
        host::sync_addrs(
            &mut loaded.maps,
            &Default::default(),
            &local_addrs.iter().copied().collect(),
        )?;
        let xdp = bpf::aya_prog_fd(&loaded.ebpf, XDP)?;
        let ingress = bpf::aya_prog_fd(&loaded.ebpf, INGRESS)?;
        let egress = bpf::aya_prog_fd(&loaded.ebpf, EGRESS)?;
        let mut k = Kern {
            loaded,
            events,
            writer: Writer::new(),
            generation: 0,
            xdp,
            ingress,
            egress,
        };
        k.apply(policy)?;
        Ok(k)
    }

    /// Compiles and writes `policy` as the next generation; returns how long the write took.
    pub fn apply(&mut self, policy: &Policy) -> anyhow::Result<Duration> {
        let compiled = compile(policy).map_err(|e| anyhow!("compiling the bench policy: {e}"))?;
        // Allowed cgroups that exist (the bench's own, for the egress allowed path).
        let mount = enforcer::host::cgroup2_mount()?;
        let ids = compiled
            .cgroups
            .keys()
            .filter_map(|(_, p)| enforcer::host::cgroup_id(&mount, p).map(|id| (p.clone(), id)))
            .collect();
        self.generation += 1;
        let t = Instant::now();
        self.writer
            .apply(&mut self.loaded.maps, &compiled, &ids, self.generation)?;
        Ok(t.elapsed())
    }

    pub fn events_lost(&self) -> u64 {
        counters::events_lost(&self.loaded.maps)
    }

    pub fn reason(&self, hook: Hook, reason: Reason) -> u64 {
        counters::by_reason(&self.loaded.maps, hook, reason)
    }

    /// Empties the ring buffer; returns how many events it held.
    pub fn drain(&mut self) -> usize {
        let Some(ring) = self.events.as_mut() else {
            return 0;
        };
        let mut n = 0;
        while ring.next().is_some() {
            n += 1;
        }
        n
    }

    /// Fills the ring buffer with events of `refused` (an XDP frame that emits one), until
    /// reservations fail.
    pub fn fill(&mut self, refused: &[u8]) -> anyhow::Result<()> {
        let before = self.events_lost();
        for _ in 0..8 {
            bpf::test_run(self.xdp, refused, 50_000)?;
            if self.events_lost() > before {
                return Ok(());
            }
        }
        anyhow::bail!("the ring buffer did not fill: refusals emit no events (rate-limited?)")
    }
}

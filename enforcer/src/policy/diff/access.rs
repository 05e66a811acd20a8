//! The access the model gives packets bound for one port: [`Access`], with every set in
//! canonical form, and the probes that ask it for a verdict.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A failsafe port: never judged.
    Failsafe,
    /// No rule covers it.
    Unprotected,
    Protected,
}

/// Who gets through to one protocol and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub state: State,
    /// For a protected port: what happens to refused packets.
    pub mode: Option<Mode>,
    /// Sources let in (everything, for an open port).
    pub from: PrefixSet,
    /// Local senders' cgroups let in (the whole tree, for an open port). A process of
    /// this host is judged by its cgroup only, so an allow-all prefix does not stand in
    /// for these.
    pub cgroups: CgroupSet,
}

impl Access {
    pub(super) fn open(state: State) -> Self {
        Access {
            state,
            mode: None,
            from: PrefixSet::all(),
            cgroups: CgroupSet::all(),
        }
    }

    pub(super) fn protected(rules: &[&Rule]) -> Self {
        let mode = if rules.iter().any(|r| r.mode == Mode::Enforce) {
            Mode::Enforce
        } else {
            Mode::Audit
        };
        let from = PrefixSet::new(rules.iter().flat_map(|r| &r.allow_from));
        let cgroups = CgroupSet::new(rules.iter().flat_map(|r| &r.allow_cgroups));
        Access {
            state: State::Protected,
            mode: Some(mode),
            from,
            cgroups,
        }
    }

    /// Whether the port is judged at all (failsafe and unprotected ports let all in).
    pub fn is_protected(&self) -> bool {
        self.state == State::Protected
    }

    /// The verdict for a TCP/UDP packet bound for this host on this port.
    pub fn verdict(&self, p: &Probe<'_>) -> Verdict {
        let Some(mode) = self.mode.filter(|_| self.is_protected()) else {
            return Verdict::Allow;
        };
        let refuse = match mode {
            Mode::Enforce => Verdict::Drop,
            Mode::Audit => Verdict::WouldDrop,
        };
        let allowed = p.complete
            && ((p.source_counts && self.from.contains(p.src))
                || match p.sender_cgroup {
                    Some(c) => self.cgroups.contains(c),
                    None => p.authorized_flow,
                });
        if allowed {
            Verdict::Allow
        } else {
            refuse
        }
    }

    /// What decides verdicts: open ports are alike whether failsafe or unprotected.
    pub(super) fn effect(&self) -> Option<(&Option<Mode>, &PrefixSet, &CgroupSet)> {
        self.is_protected()
            .then_some((&self.mode, &self.from, &self.cgroups))
    }
}

impl Serialize for Access {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            state: State,
            mode: Option<&'static str>,
            from: Vec<String>,
            cgroups: &'a [String],
        }
        Json {
            state: self.state,
            mode: self.mode.map(mode_name),
            from: self.from.to_strings(),
            cgroups: self.cgroups.paths(),
        }
        .serialize(s)
    }
}

/// A TCP/UDP packet bound for this host, as far as access is concerned.
#[derive(Clone, Copy, Debug)]
pub struct Probe<'a> {
    pub src: IpAddr,
    /// Whether the source address can admit it: not for a process of this host (judged by
    /// its cgroup) nor for a source claiming one of the host's own addresses.
    pub source_counts: bool,
    /// The whole transport header is there (a cut-off one is refused on protected ports).
    pub complete: bool,
    /// A local sender judged at its socket: its cgroup. None: judged on receipt.
    pub sender_cgroup: Option<&'a str>,
    /// Received: the flow was authorized at a local sender's socket.
    pub authorized_flow: bool,
}

/// A packet bound for this host. (Packets bound elsewhere, and packets that are neither
/// TCP nor UDP, are let through by every policy: no diff covers them.)
#[derive(Clone, Copy, Debug)]
pub enum Packet<'a> {
    Port {
        proto: u8,
        dport: u16,
        probe: Probe<'a>,
    },
    /// Headers the kernel cannot parse (bad IP header, bad fragment, cut-off transport
    /// header of an unknown port, too many extension headers): the global mode decides.
    Malformed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sets {
    pub from: Vec<Except>,
    pub cgroups: Vec<Except>,
}

impl Sets {
    pub fn is_empty(&self) -> bool {
        self.from.is_empty() && self.cgroups.is_empty()
    }
}

//! The diff for people (`enforcer diff`'s text) and its summary for the audit trail.

use enforcer_common::model::Mode;
use serde::Serialize;

use super::{mode_name, range_text, Diff, Entry, PortChange, Sets, State};

fn state_text(c: &super::Access) -> String {
    match (c.state, c.mode) {
        (State::Failsafe, _) => "failsafe".into(),
        (State::Unprotected, _) => "unprotected".into(),
        (State::Protected, m) => format!("protected ({})", m.map_or("", mode_name)),
    }
}

fn refusals(before: Mode, after: Mode) -> String {
    let fate = match after {
        Mode::Audit => "refused packets now pass, logged as would-drop",
        Mode::Enforce => "refused packets are now dropped",
    };
    format!("{} -> {}: {fate}", mode_name(before), mode_name(after))
}

fn entry_text(e: &Entry) -> String {
    match e {
        Entry::From(f) => format!("from {f}"),
        Entry::Cgroup(c) => format!("cgroup {c}"),
    }
}

fn sets_lines(out: &mut Vec<String>, sign: char, s: &Sets) {
    for f in &s.from {
        out.push(format!("    {sign} from {f}"));
    }
    for c in &s.cgroups {
        out.push(format!("    {sign} cgroup {c}"));
    }
}

fn port_lines(out: &mut Vec<String>, c: &PortChange) {
    let ports: Vec<String> = c.ports.iter().map(range_text).collect();
    let proto = if c.protocol == "any" {
        "tcp+udp"
    } else {
        c.protocol
    };
    let rules = if c.rules.is_empty() {
        String::new()
    } else {
        format!(" [{}]", c.rules.join(", "))
    };
    out.push(format!("  {proto}/{}{rules}", ports.join(",")));
    let (b, a) = (&c.before, &c.after);
    match (b.is_protected(), a.is_protected()) {
        (true, false) => out.push(format!(
            "    {} -> {}: open to every sender (was: {})",
            state_text(b),
            state_text(a),
            allow_text(b).unwrap_or_else(|| "every sender refused".into())
        )),
        (false, true) => out.push(format!(
            "    {} -> {}: {}",
            state_text(b),
            state_text(a),
            allow_text(a).map_or("refuses every sender".into(), |t| format!(
                "refuses all but {t}"
            ))
        )),
        _ => {
            if let Some((before, after)) = c.mode_change() {
                out.push(format!("    refusals {}", refusals(before, after)));
            }
            sets_lines(out, '+', &c.gained);
            sets_lines(out, '-', &c.lost);
        }
    }
}

/// Who a protected port lets in, or None for no one.
fn allow_text(a: &super::Access) -> Option<String> {
    let from = a.from.to_strings();
    let mut parts = Vec::new();
    if !from.is_empty() {
        parts.push(format!("from {}", from.join(", ")));
    }
    if !a.cgroups.paths().is_empty() {
        parts.push(format!("cgroups {}", a.cgroups.paths().join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The diff's lines after the header: access first, then the rest.
pub fn body(d: &Diff) -> Vec<String> {
    let mut out = Vec::new();
    if d.ports.is_empty() && d.mode.is_none() {
        out.push("access: no change".to_string());
    } else {
        out.push(format!("access: {}", headline(d)));
        for c in &d.ports {
            port_lines(&mut out, c);
        }
        if let Some(m) = d.mode {
            out.push(format!(
                "  packets the kernel cannot parse (global mode): {}",
                refusals(m.before, m.after)
            ));
        }
    }
    let r = &d.rules;
    if !r.is_empty() {
        out.push("rules:".into());
        out.extend(
            r.renamed
                .iter()
                .map(|x| format!("  renamed {} -> {} (same content)", x.from, x.to)),
        );
        out.extend(r.added.iter().map(|x| format!("  + {x}")));
        out.extend(r.removed.iter().map(|x| format!("  - {x}")));
        out.extend(
            r.changed
                .iter()
                .map(|x| format!("  ~ {}: {}", x.rule, x.fields.join(", "))),
        );
        out.extend(r.modes.iter().map(|x| {
            format!(
                "  ~ {}: mode {} -> {}",
                x.rule,
                mode_name(x.change.before),
                mode_name(x.change.after)
            )
        }));
    }
    if !d.failsafe.is_empty() {
        out.push("failsafe ports:".into());
        out.extend(d.failsafe.added.iter().map(|x| format!("  + {x}")));
        out.extend(d.failsafe.removed.iter().map(|x| format!("  - {x}")));
    }
    let e = &d.expiring;
    if !e.is_empty() {
        out.push("expiring entries:".into());
        let who = |rule: &str, entry: &Entry| format!("rule {rule} {}", entry_text(entry));
        out.extend(
            e.added
                .iter()
                .map(|x| format!("  + {} until {}", who(&x.rule, &x.entry), x.expires)),
        );
        out.extend(
            e.removed
                .iter()
                .map(|x| format!("  - {} (was until {})", who(&x.rule, &x.entry), x.expires)),
        );
        out.extend(e.changed.iter().map(|x| {
            format!(
                "  ~ {}: until {} -> until {}",
                who(&x.rule, &x.entry),
                x.expires_before,
                x.expires_after
            )
        }));
        out.extend(e.lapsed.iter().map(|x| {
            format!(
                "  lapsed {} (at {}): allows nothing",
                who(&x.rule, &x.entry),
                x.expires
            )
        }));
    }
    let t = &d.tests;
    if !t.is_empty() {
        out.push("tests:".into());
        out.extend(t.added.iter().map(|x| format!("  + {x:?}")));
        out.extend(t.removed.iter().map(|x| format!("  - {x:?}")));
        out.extend(t.changed.iter().map(|x| format!("  ~ {x:?}")));
    }
    if !d.grants.is_empty() {
        out.push("grants in force (a reload keeps them: applied to both sides):".into());
        out.extend(d.grants.iter().map(|g| {
            format!(
                "  {} rule {} {} until {}{}",
                g.id,
                g.rule,
                entry_text(&g.entry),
                g.expires,
                if g.kept {
                    ""
                } else {
                    " -- stops applying: the new policy has no such rule"
                }
            )
        }));
    }
    out
}

/// "3 port ranges change: 2 open to more senders, 1 closes to some, 1 changes refusals".
pub fn headline(d: &Diff) -> String {
    let s = Summary::counts(d);
    let mut parts = Vec::new();
    if s.opened > 0 {
        parts.push(format!("{} let more in", s.opened));
    }
    if s.closed > 0 {
        parts.push(format!("{} let fewer in", s.closed));
    }
    if s.modes > 0 {
        parts.push(format!("{} change what refusals do", s.modes));
    }
    format!(
        "{} change{}{}",
        s.ports,
        if s.ports == 1 { "" } else { "s" },
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    )
}

/// The whole text form: a header naming both sides, then `body`.
pub fn text(d: &Diff, old: &str, new: &str) -> String {
    let mut s = format!("--- {old}\n+++ {new}\n");
    for l in body(d) {
        s += &l;
        s.push('\n');
    }
    s
}

/// How many lines of the text form a summary keeps.
pub const SUMMARY_LINES: usize = 12;

/// What the audit trail keeps of a diff: counts and the first lines of the text form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// As `Diff::changed`.
    pub changed: bool,
    /// Entries of `ports` (port ranges whose access changes), plus the global mode.
    pub ports: usize,
    /// Of those, where someone gains access, loses it, or refusals change fate.
    pub opened: usize,
    pub closed: usize,
    pub modes: usize,
    pub rules_added: usize,
    pub rules_removed: usize,
    pub rules_renamed: usize,
    pub rules_changed: usize,
    pub failsafe: usize,
    pub expiring: usize,
    pub tests: usize,
    pub lines: Vec<String>,
    /// Lines of the text form left out.
    pub more_lines: usize,
}

impl Summary {
    fn counts(d: &Diff) -> Summary {
        let global = usize::from(d.mode.is_some());
        let e = &d.expiring;
        let t = &d.tests;
        Summary {
            changed: d.changed,
            ports: d.ports.len() + global,
            opened: d.ports.iter().filter(|c| !c.gained.is_empty()).count(),
            closed: d.ports.iter().filter(|c| !c.lost.is_empty()).count(),
            modes: d.ports.iter().filter(|c| c.mode_change().is_some()).count() + global,
            rules_added: d.rules.added.len(),
            rules_removed: d.rules.removed.len(),
            rules_renamed: d.rules.renamed.len(),
            rules_changed: {
                let mut names: Vec<&String> = d.rules.changed.iter().map(|c| &c.rule).collect();
                names.extend(d.rules.modes.iter().map(|m| &m.rule));
                names.sort();
                names.dedup();
                names.len()
            },
            failsafe: d.failsafe.added.len() + d.failsafe.removed.len(),
            expiring: e.added.len() + e.removed.len() + e.changed.len() + e.lapsed.len(),
            tests: t.added.len() + t.removed.len() + t.changed.len(),
            lines: Vec::new(),
            more_lines: 0,
        }
    }

    pub fn of(d: &Diff) -> Summary {
        let mut s = Summary::counts(d);
        let mut lines = body(d);
        s.more_lines = lines.len().saturating_sub(SUMMARY_LINES);
        lines.truncate(SUMMARY_LINES);
        s.lines = lines;
        s
    }
}

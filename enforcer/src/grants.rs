//! Temporary exceptions (just-in-time access): a source prefix or a cgroup allowed on one
//! rule until a deadline. Grants are stored in the state directory, so they survive a
//! restart, and expire on time whether or not anyone is watching.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    clock::{now_unix, rfc3339},
    policy::{
        values::{normalize_cgroup, parse_prefix},
        Entry, Grant, Policy,
    },
    statefile,
};

/// The longest a grant may last.
pub const MAX_GRANT_SECS: u64 = 30 * 24 * 3600;

/// Grants in force, persisted as JSON in the state directory.
pub struct Store {
    path: PathBuf,
    pub grants: Vec<Grant>,
    next: u64,
}

impl Store {
    /// Loads `state_dir/grants.json` (none if absent), making the directory private. A
    /// store that cannot be parsed (empty, truncated, garbage) is set aside and the daemon
    /// goes on without those grants: a grant only ever allows more, so losing one fails
    /// closed, where refusing to start would leave the host to whatever is pinned.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        statefile::private_dir(state_dir)?;
        let path = state_dir.join("grants.json");
        let grants: Vec<Grant> = match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str(&text) {
                Ok(g) => g,
                Err(e) => {
                    let aside = statefile::set_aside(&path)?;
                    tracing::error!(
                        "the grants store {} is corrupt ({}); set aside as {}: starting without those grants (they no longer allow anything)",
                        path.display(),
                        if text.trim().is_empty() { "empty".to_string() } else { e.to_string() },
                        aside.display()
                    );
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let next = grants
            .iter()
            .filter_map(|g| g.id.trim_start_matches('g').parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        Ok(Store { path, grants, next })
    }

    /// The state directory the grants live in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Writes the grants atomically and durably (a crash leaves the old file or the new).
    pub fn save(&self) -> anyhow::Result<()> {
        statefile::write_atomic(&self.path, &serde_json::to_vec_pretty(&self.grants)?)
    }

    /// Validates and adds a grant (not yet saved).
    pub fn add(
        &mut self,
        policy: &Policy,
        rule: &str,
        from: Option<&str>,
        cgroup: Option<&str>,
        secs: u64,
        reason: &str,
    ) -> Result<Grant, String> {
        if !policy.verdict.rules.iter().any(|r| r.name == rule) {
            return Err(format!("no rule named {rule:?} in the policy in force"));
        }
        let entry = match (from, cgroup) {
            (Some(f), None) => Entry::From(parse_prefix(f)?.to_string()),
            (None, Some(c)) => Entry::Cgroup(normalize_cgroup(c)?),
            _ => {
                return Err("a grant allows either a source (--from) or a cgroup (--cgroup)".into())
            }
        };
        if secs == 0 || secs > MAX_GRANT_SECS {
            return Err(format!(
                "a grant lasts from 1 second to {} days",
                MAX_GRANT_SECS / 86400
            ));
        }
        if reason.trim().is_empty() {
            return Err("a grant needs a reason (--reason)".into());
        }
        let now = now_unix();
        let g = Grant {
            id: format!("g{}", self.next),
            rule: rule.to_string(),
            entry,
            reason: reason.to_string(),
            created_unix: now,
            expires_unix: now + secs,
        };
        self.next += 1;
        self.grants.push(g.clone());
        Ok(g)
    }

    pub fn remove(&mut self, id: &str) -> Option<Grant> {
        let i = self.grants.iter().position(|g| g.id == id)?;
        Some(self.grants.remove(i))
    }

    /// Removes and returns the grants that have expired at `now`.
    pub fn take_expired(&mut self, now: u64) -> Vec<Grant> {
        let (gone, keep): (Vec<Grant>, Vec<Grant>) =
            self.grants.drain(..).partition(|g| g.expires_unix <= now);
        self.grants = keep;
        gone
    }

    /// The grants in force as (rule index, entry) for `Policy::effective`.
    pub fn entries(&self, policy: &Policy) -> Vec<(usize, Entry, u64)> {
        self.grants
            .iter()
            .filter_map(|g| {
                policy
                    .verdict
                    .rules
                    .iter()
                    .position(|r| r.name == g.rule)
                    .map(|i| (i, g.entry.clone(), g.expires_unix))
            })
            .collect()
    }

    pub fn next_expiry(&self) -> Option<u64> {
        self.grants.iter().map(|g| g.expires_unix).min()
    }
}

/// A grant as JSON for events and listings.
pub fn describe(g: &Grant, now: u64) -> serde_json::Value {
    let (from, cgroup) = match &g.entry {
        Entry::From(f) => (Some(f.clone()), None),
        Entry::Cgroup(c) => (None, Some(c.clone())),
    };
    serde_json::json!({
        "id": g.id,
        "rule": g.rule,
        "from": from,
        "cgroup": cgroup,
        "reason": g.reason,
        "created": rfc3339(g.created_unix),
        "expires": rfc3339(g.expires_unix),
        "seconds_left": g.expires_unix.saturating_sub(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn policy() -> Policy {
        crate::policy::parse_str(Path::new("t.toml"), "[[rule]]\nname = \"pg\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.0.0.0/8\"]\n").unwrap()
    }

    #[test]
    fn grants_are_validated_stored_and_expire() {
        let dir = std::env::temp_dir().join(format!("enforcer-grants-{}", std::process::id()));
        let p = policy();
        let mut s = Store::open(&dir).unwrap();
        assert!(s
            .add(&p, "nope", Some("1.2.3.4/32"), None, 60, "x")
            .unwrap_err()
            .contains("no rule named"));
        assert!(s
            .add(&p, "pg", Some("1.2.3.4/8"), None, 60, "x")
            .unwrap_err()
            .contains("host bits"));
        assert!(s
            .add(&p, "pg", Some("1.2.3.4"), Some("/a"), 60, "x")
            .unwrap_err()
            .contains("either"));
        assert!(s
            .add(&p, "pg", Some("1.2.3.4"), None, 60, " ")
            .unwrap_err()
            .contains("reason"));
        assert!(s
            .add(&p, "pg", Some("1.2.3.4"), None, MAX_GRANT_SECS + 1, "x")
            .unwrap_err()
            .contains("days"));
        let g = s
            .add(&p, "pg", Some("198.51.100.4/32"), None, 60, "incident 42")
            .unwrap();
        s.save().unwrap();
        let mut again = Store::open(&dir).unwrap();
        assert_eq!(again.grants, vec![g.clone()]);
        let eff = p.effective(now_unix(), &again.entries(&p));
        assert_eq!(eff.verdict.rules[0].allow_from.len(), 2);
        assert_eq!(again.take_expired(g.expires_unix), vec![g]);
        assert!(again.grants.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_store_is_set_aside_and_opens_empty() {
        let p = policy();
        for (case, text) in [
            ("empty", String::new()),
            (
                "truncated",
                "[{\"id\": \"g1\", \"rule\": \"pg\"".to_string(),
            ),
            ("garbage", "\u{0}\u{1}not json at all".to_string()),
        ] {
            let dir =
                std::env::temp_dir().join(format!("enforcer-grants-{case}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("grants.json"), &text).unwrap();
            let mut s = Store::open(&dir).unwrap();
            assert!(s.grants.is_empty(), "{case}");
            let names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                names.len() == 1 && names[0].starts_with("grants.json.corrupt-"),
                "{case}: {names:?}"
            );
            // The store works on: a new grant is saved beside what was set aside.
            s.add(&p, "pg", Some("198.51.100.4/32"), None, 60, "x")
                .unwrap();
            s.save().unwrap();
            assert_eq!(Store::open(&dir).unwrap().grants.len(), 1, "{case}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn policy_entries_lapse_at_their_expiry() {
        let p = crate::policy::parse_str(
            Path::new("t.toml"),
            "[[rule]]\nname = \"pg\"\nports = [5432]\nallow_from = [\"10.0.0.0/8\", { from = \"192.0.2.0/24\", expires = \"2026-01-01T00:00:00Z\" }]\nallow_cgroups = [{ cgroup = \"/x\", expires = \"2030-01-01T00:00:00Z\" }]\n",
        )
        .unwrap();
        assert_eq!(p.expiring.len(), 2);
        let before = humantime::parse_rfc3339("2025-12-31T23:59:59Z")
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(
            p.effective(before, &[]).verdict.rules[0].allow_from.len(),
            2
        );
        let after = before + 1;
        let eff = p.effective(after, &[]);
        assert_eq!(eff.verdict.rules[0].allow_from.len(), 1);
        assert_eq!(eff.verdict.rules[0].allow_cgroups, vec!["/x"]);
        assert_eq!(p.next_expiry(before), Some(after));
    }
}

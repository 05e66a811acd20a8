//! Which policy entries' expiries were reported, kept in the state directory. The kernel
//! stops honouring an entry at its deadline whether or not a daemon runs; this ledger lets
//! the next daemon report, once, each expiry that passed while nobody watched.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use crate::policy::{Entry, Policy};

/// (rule name, entry, expiry in unix seconds).
pub type Expiry = (String, Entry, u64);

pub struct Ledger {
    path: PathBuf,
    reported: BTreeSet<Expiry>,
}

impl Ledger {
    /// The ledger in `state_dir` (empty if absent or unreadable: at worst an expiry is
    /// reported twice, never missed).
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join("expiries.json");
        let reported = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<Expiry>>(&t).ok())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        Ledger { path, reported }
    }

    /// The entries of `policy` that have lapsed at `now` and were not reported yet; they
    /// count as reported from here on. Entries no longer in the policy are forgotten.
    pub fn due(&mut self, policy: &Policy, now: u64) -> Vec<Expiry> {
        let all: BTreeSet<Expiry> = policy
            .expiring
            .iter()
            .filter_map(|e| {
                let rule = policy.verdict.rules.get(e.rule)?;
                Some((rule.name.clone(), e.entry.clone(), e.expires_unix))
            })
            .collect();
        self.reported.retain(|x| all.contains(x));
        let due: Vec<Expiry> = all
            .into_iter()
            .filter(|x| x.2 <= now && !self.reported.contains(x))
            .collect();
        self.reported.extend(due.iter().cloned());
        due
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let list: Vec<&Expiry> = self.reported.iter().collect();
        crate::statefile::write_atomic(&self.path, &serde_json::to_vec(&list)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_expiry_is_due_once_and_forgotten_with_its_entry() {
        let text = "[[rule]]\nname = \"a\"\nports = [80]\nallow_from = [{ from = \"10.0.0.0/8\", expires = \"2026-01-01T00:00:00Z\" }, { from = \"10.1.0.0/16\", expires = \"2099-01-01T00:00:00Z\" }]\n";
        let p = crate::policy::parse_str(Path::new("p.toml"), text).unwrap();
        let dir = std::env::temp_dir().join(format!("enforcer-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut l = Ledger::open(&dir);
        let now = 1_800_000_000;
        let due = l.due(&p, now);
        assert_eq!(
            due,
            vec![(
                "a".to_string(),
                Entry::From("10.0.0.0/8".into()),
                1_767_225_600
            )]
        );
        l.save().unwrap();
        assert!(Ledger::open(&dir).due(&p, now).is_empty(), "reported twice");
        let other = crate::policy::parse_str(
            Path::new("p.toml"),
            "[[rule]]\nname = \"a\"\nports = [80]\n",
        )
        .unwrap();
        let mut l = Ledger::open(&dir);
        assert!(l.due(&other, now).is_empty());
        assert!(l.reported.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

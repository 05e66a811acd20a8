//! Rule names of recent policy generations, kept in the state directory: events judged by
//! an earlier daemon (left in the pinned ring buffer while it was down) still get their
//! rule's name after a restart.

use std::{collections::BTreeMap, path::Path};

/// Generations remembered.
const KEEP: usize = 8;

fn file(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("generations.json")
}

/// The remembered generations, oldest first (none if the file is absent or unreadable).
pub fn load(state_dir: &Path) -> Vec<(u64, Vec<String>)> {
    std::fs::read_to_string(file(state_dir))
        .ok()
        .and_then(|t| serde_json::from_str::<BTreeMap<u64, Vec<String>>>(&t).ok())
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

/// Adds `generation`'s rule names, keeping the last few.
pub fn remember(state_dir: &Path, generation: u64, names: &[String]) -> anyhow::Result<()> {
    let mut m: BTreeMap<u64, Vec<String>> = load(state_dir).into_iter().collect();
    m.insert(generation, names.to_vec());
    while m.len() > KEEP {
        m.pop_first();
    }
    crate::statefile::write_atomic(&file(state_dir), &serde_json::to_vec(&m)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_generations() {
        let dir = std::env::temp_dir().join(format!("enforcer-rule-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).is_empty());
        for g in 1..=10 {
            remember(&dir, g, &[format!("r{g}")]).unwrap();
        }
        let h = load(&dir);
        assert_eq!(h.len(), KEEP);
        assert_eq!(h.first().unwrap(), &(3, vec!["r3".to_string()]));
        assert_eq!(h.last().unwrap(), &(10, vec!["r10".to_string()]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

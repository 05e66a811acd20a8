//! Compiled entries in key order: the writer diffs a slot's entries against a new policy's
//! in one merge walk, with no hashing, so a reload costs little more than what changed.

use std::ops::Index;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortedMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap(Vec::new())
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    /// The entries of `map` in key order.
    pub fn from_map(map: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut v: Vec<(K, V)> = map.into_iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        SortedMap(v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// The entries, in key order.
    pub fn as_slice(&self) -> &[(K, V)] {
        &self.0
    }
}

impl<K: Ord, V> Index<&K> for SortedMap<K, V> {
    type Output = V;

    fn index(&self, key: &K) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

/// One key of a merge walk over two sorted entry lists.
pub enum Step<'a, K, A, B> {
    /// Only in the old list.
    Gone(&'a K, &'a A),
    /// Only in the new list.
    Came(&'a K, &'a B),
    /// In both (the values may differ).
    Both(&'a K, &'a A, &'a B),
}

/// Walks `old` and `new` (each in key order) together, calling `f` once per key.
pub fn merge_walk<'a, K: Ord, A, B>(
    old: &'a [(K, A)],
    new: &'a [(K, B)],
    mut f: impl FnMut(Step<'a, K, A, B>),
) {
    use std::cmp::Ordering;
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            // Equal keys first: in a reload almost every key is in both lists, and an
            // equality test is cheaper than an ordering.
            (Some(a), Some(b)) if a.0 == b.0 => Ordering::Equal,
            (Some(a), Some(b)) => a.0.cmp(&b.0),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                f(Step::Gone(&old[i].0, &old[i].1));
                i += 1;
            }
            Ordering::Greater => {
                f(Step::Came(&new[j].0, &new[j].1));
                j += 1;
            }
            Ordering::Equal => {
                f(Step::Both(&old[i].0, &old[i].1, &new[j].1));
                i += 1;
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_walk_sees_each_key_once_as_gone_came_or_both() {
        let old = SortedMap::from_map([(5, 'a'), (1, 'b'), (3, 'c'), (9, 'd')]);
        let new = SortedMap::from_map([(3, 'c'), (2, 'x'), (9, 'e'), (10, 'f')]);
        let mut seen = Vec::new();
        merge_walk(old.as_slice(), new.as_slice(), |s| {
            seen.push(match s {
                Step::Gone(k, v) => format!("-{k}{v}"),
                Step::Came(k, v) => format!("+{k}{v}"),
                Step::Both(k, a, b) => format!("={k}{a}{b}"),
            })
        });
        assert_eq!(seen, ["-1b", "+2x", "=3cc", "-5a", "=9de", "+10f"]);
        assert_eq!(new.get(&9), Some(&'e'));
        assert_eq!(new.get(&4), None);
        assert_eq!(new[&10], 'f');
    }
}

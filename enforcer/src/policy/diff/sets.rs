//! Sets of sources and cgroups in one canonical form, so that two ways of writing the same
//! set compare equal (a /16 and its two /17s; a cgroup and the same cgroup with a child).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enforcer_common::model::{policy::cgroup_within, Prefix};
use serde::Serialize;

/// (family width in bits, network address right-aligned, length): sorts IPv4 before IPv6,
/// then by address, then shorter first.
type Key = (u32, u128, u8);

fn key(p: &Prefix) -> Key {
    match p.addr {
        IpAddr::V4(a) => (32, u32::from(a) as u128, p.len),
        IpAddr::V6(a) => (128, u128::from(a), p.len),
    }
}

fn prefix((width, value, len): Key) -> Prefix {
    let addr = if width == 32 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    };
    Prefix { addr, len }
}

fn within(inner: &Prefix, outer: &Prefix) -> bool {
    inner.len >= outer.len && outer.contains(inner.addr)
}

/// The addresses a set of prefixes covers, as the fewest prefixes that cover exactly them
/// (IPv4 first, by address): equal sets have equal forms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixSet(Vec<Prefix>);

impl PrefixSet {
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a Prefix>) -> Self {
        let mut keys: Vec<Key> = prefixes.into_iter().map(key).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut out: Vec<Key> = Vec::with_capacity(keys.len());
        for k in keys {
            // Sorted and disjoint so far: only the last kept prefix can contain `k`.
            if out.last().is_some_and(|l| within(&prefix(k), &prefix(*l))) {
                continue;
            }
            out.push(k);
            // Two halves of one prefix become that prefix, as often as they pair up.
            while let [.., (wa, a, la), (wb, b, lb)] = out[..] {
                let bit = |len: u8| 1u128 << (wa - len as u32);
                if wa != wb || la != lb || la == 0 || a & bit(la) != 0 || b != a | bit(la) {
                    break;
                }
                out.truncate(out.len() - 2);
                out.push((wa, a, la - 1));
            }
        }
        PrefixSet(out.into_iter().map(prefix).collect())
    }

    /// Every address of both families.
    pub fn all() -> Self {
        PrefixSet(vec![
            Prefix {
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                len: 0,
            },
            Prefix {
                addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                len: 0,
            },
        ])
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|p| p.contains(addr))
    }

    pub fn prefixes(&self) -> &[Prefix] {
        &self.0
    }

    /// What `self` covers and `other` does not, each part as a prefix of `self` less the
    /// prefixes of `other` inside it (exact: both sets are canonical).
    pub fn minus(&self, other: &PrefixSet) -> Vec<Except> {
        self.0
            .iter()
            .filter(|p| !other.0.iter().any(|o| within(p, o)))
            .map(|p| Except {
                set: p.to_string(),
                except: other
                    .0
                    .iter()
                    .filter(|o| within(o, p))
                    .map(|o| o.to_string())
                    .collect(),
            })
            .collect()
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|p| p.to_string()).collect()
    }
}

/// Cgroup subtrees, none inside another (sorted): equal sets have equal forms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupSet(Vec<String>);

impl CgroupSet {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a String>) -> Self {
        let mut all: Vec<&String> = paths.into_iter().collect();
        all.sort_unstable();
        all.dedup();
        let kept = all
            .iter()
            .filter(|p| !all.iter().any(|o| o != *p && cgroup_within(p, o)))
            .map(|p| (*p).clone())
            .collect();
        CgroupSet(kept)
    }

    /// The whole tree.
    pub fn all() -> Self {
        CgroupSet(vec!["/".to_string()])
    }

    pub fn contains(&self, cgroup: &str) -> bool {
        self.0.iter().any(|c| cgroup_within(cgroup, c))
    }

    pub fn paths(&self) -> &[String] {
        &self.0
    }

    /// As `PrefixSet::minus`, for subtrees.
    pub fn minus(&self, other: &CgroupSet) -> Vec<Except> {
        self.0
            .iter()
            .filter(|c| !other.0.iter().any(|o| cgroup_within(c, o)))
            .map(|c| Except {
                set: c.clone(),
                except: other
                    .0
                    .iter()
                    .filter(|o| cgroup_within(o, c))
                    .cloned()
                    .collect(),
            })
            .collect()
    }
}

/// A prefix (or cgroup subtree) less the prefixes (subtrees) inside it listed in `except`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Except {
    pub set: String,
    pub except: Vec<String>,
}

impl Except {
    /// Whether `addr` is in the prefix and in none of the exceptions.
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        let has = |s: &str| {
            crate::policy::values::parse_prefix(s).is_ok_and(|p: Prefix| p.contains(addr))
        };
        has(&self.set) && !self.except.iter().any(|e| has(e))
    }

    pub fn contains_cgroup(&self, cgroup: &str) -> bool {
        cgroup_within(cgroup, &self.set) && !self.except.iter().any(|e| cgroup_within(cgroup, e))
    }
}

impl std::fmt::Display for Except {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.set)?;
        if !self.except.is_empty() {
            write!(f, " except {}", self.except.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &[&str]) -> PrefixSet {
        let p: Vec<Prefix> = s
            .iter()
            .map(|s| crate::policy::values::parse_prefix(s).unwrap())
            .collect();
        PrefixSet::new(&p)
    }

    #[test]
    fn halves_merge_and_covered_prefixes_go() {
        assert_eq!(
            set(&["10.0.128.0/17", "10.0.0.0/17"]),
            set(&["10.0.0.0/16"])
        );
        assert_eq!(
            set(&[
                "10.0.0.0/18",
                "10.0.64.0/18",
                "10.0.128.0/17",
                "10.0.3.0/24"
            ])
            .to_strings(),
            vec!["10.0.0.0/16"]
        );
        assert_eq!(
            set(&["10.0.0.0/8", "10.1.0.0/16", "fd00::/8", "fd00::1"]).to_strings(),
            vec!["10.0.0.0/8", "fd00::/8"]
        );
        // Neighbours that are not halves of one prefix stay apart.
        assert_eq!(
            set(&["10.0.1.0/24", "10.0.2.0/24"]).to_strings(),
            vec!["10.0.1.0/24", "10.0.2.0/24"]
        );
        assert_eq!(
            set(&["0.0.0.0/1", "128.0.0.0/1"]).to_strings(),
            vec!["0.0.0.0/0"]
        );
    }

    #[test]
    fn differences_are_exact() {
        let wide = set(&["10.0.0.0/8"]);
        let narrow = set(&["10.1.0.0/16", "192.0.2.0/24"]);
        let d = wide.minus(&narrow);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].to_string(), "10.0.0.0/8 except 10.1.0.0/16");
        assert!(d[0].contains_addr("10.2.0.1".parse().unwrap()));
        assert!(!d[0].contains_addr("10.1.0.1".parse().unwrap()));
        let d = narrow.minus(&wide);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].to_string(), "192.0.2.0/24");
        let c = CgroupSet::new(&["/a".to_string(), "/a/b".to_string(), "/ab".to_string()]);
        assert_eq!(c.paths(), ["/a", "/ab"]);
        let d = CgroupSet::all().minus(&c);
        assert_eq!(d[0].to_string(), "/ except /a, /ab");
        assert!(d[0].contains_cgroup("/abc"));
        assert!(!d[0].contains_cgroup("/a/b/c"));
    }
}

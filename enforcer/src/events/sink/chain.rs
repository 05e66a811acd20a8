//! The tamper-evident `chain` of the file sink's lines, and its check (`enforcer audit
//! verify`).
//!
//! Each line ends with `,"chain":"HEX"}`: HEX is the SHA-256 of the previous line's chain
//! (64 ASCII hex digits; `GENESIS` before the very first line) followed by this line's
//! bytes without the field (`{...}`, no newline). Changing, removing or moving a line
//! breaks the link of the line itself or of the one after it.

use sha2::{Digest as _, Sha256};

/// The chain before the first line ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const SUFFIX_START: &[u8] = b",\"chain\":\"";

/// The link of a line whose bytes without the field are `body`.
pub fn link(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(body);
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    b.iter()
        .flat_map(|x| [D[(x >> 4) as usize] as char, D[(x & 15) as usize] as char])
        .collect()
}

/// Seals `line` (a JSON object, newline-terminated) after `prev`: returns the line with
/// its `chain` field, and the chain.
pub fn seal(prev: &str, line: &[u8]) -> (Vec<u8>, String) {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let chain = link(prev, body);
    let mut out = Vec::with_capacity(body.len() + SUFFIX_START.len() + 67);
    out.extend_from_slice(&body[..body.len().saturating_sub(1)]);
    out.extend_from_slice(SUFFIX_START);
    out.extend_from_slice(chain.as_bytes());
    out.extend_from_slice(b"\"}\n");
    (out, chain)
}

/// A sealed line (without its newline) split into its body and its chain.
pub fn split(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    // `,"chain":"` + 64 hex digits + `"}`
    let tail = SUFFIX_START.len() + 64 + 2;
    if line.len() < tail + 1 || !line.ends_with(b"\"}") {
        return None;
    }
    let at = line.len() - tail;
    if &line[at..at + SUFFIX_START.len()] != SUFFIX_START {
        return None;
    }
    let chain = std::str::from_utf8(&line[at + SUFFIX_START.len()..line.len() - 2]).ok()?;
    if !chain
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return None;
    }
    let mut body = line[..at].to_vec();
    body.push(b'}');
    Some((body, chain))
}

/// Why a line fails the check.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("not a sealed audit line (no `chain` field at its end, or not JSON)")]
    NotSealed,
    #[error(
        "chain broken: this line was changed, or the line before it was removed, changed or moved"
    )]
    Link,
    #[error("seq {found} does not follow {last}")]
    Order { last: u64, found: u64 },
    #[error("seq gap: {missing} line(s) between seq {last} and {found} are missing ({reported} reported lost)")]
    Gap {
        last: u64,
        found: u64,
        missing: u64,
        reported: u64,
    },
}

/// Checks lines in the order they were written, across files.
#[derive(Debug, Default)]
pub struct Verifier {
    /// Lines of a filtered sink: `seq` only has to increase.
    pub filtered: bool,
    prev: Option<String>,
    last_seq: Option<u64>,
    first_seq: Option<u64>,
    /// Lines the sink reported lost since the last numbered line.
    reported: u64,
    pub lines: u64,
    /// Lines the sink reported lost in all.
    pub lost: u64,
}

impl Verifier {
    pub fn new(filtered: bool) -> Self {
        Verifier {
            filtered,
            ..Verifier::default()
        }
    }

    /// Checks the next line (without its newline).
    pub fn line(&mut self, line: &[u8]) -> Result<(), Broken> {
        let (body, chain) = split(line).ok_or(Broken::NotSealed)?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| Broken::NotSealed)?;
        // The first line's predecessor is not in the files: it is taken as it stands
        // (unless it is the very first line, which links to GENESIS).
        if let Some(prev) = &self.prev {
            if link(prev, &body) != chain {
                return Err(Broken::Link);
            }
        }
        match v["seq"].as_u64() {
            Some(seq) => {
                if let Some(last) = self.last_seq {
                    if seq <= last {
                        return Err(Broken::Order { last, found: seq });
                    }
                    let missing = seq - last - 1;
                    if !self.filtered && missing != self.reported {
                        return Err(Broken::Gap {
                            last,
                            found: seq,
                            missing,
                            reported: self.reported,
                        });
                    }
                }
                self.first_seq.get_or_insert(seq);
                self.last_seq = Some(seq);
                self.reported = 0;
            }
            // The sink's own notice of lines it could not write.
            None if v["event"] == "lost" && v["scope"] == "file" => {
                let n = v["count"].as_u64().unwrap_or(0);
                self.reported += n;
                self.lost += n;
            }
            None => return Err(Broken::NotSealed),
        }
        self.prev = Some(chain.to_string());
        self.lines += 1;
        Ok(())
    }

    /// The first and last `seq` seen.
    pub fn range(&self) -> Option<(u64, u64)> {
        Some((self.first_seq?, self.last_seq?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let l = format!("{{\"event\":\"packet\",\"seq\":{seq}}}\n");
                let (out, c) = seal(&prev, l.as_bytes());
                prev = c;
                out.strip_suffix(b"\n").unwrap().to_vec()
            })
            .collect()
    }

    fn check(lines: &[Vec<u8>]) -> Result<(), (usize, Broken)> {
        let mut v = Verifier::new(false);
        for (i, l) in lines.iter().enumerate() {
            v.line(l).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    #[test]
    fn seals_and_splits() {
        let (out, c) = seal(GENESIS, b"{\"a\":1}\n");
        assert_eq!(c, link(GENESIS, b"{\"a\":1}"));
        let s = String::from_utf8(out.clone()).unwrap();
        assert_eq!(s, format!("{{\"a\":1,\"chain\":\"{c}\"}}\n"));
        let (body, chain) = split(out.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!((body.as_slice(), chain), (&b"{\"a\":1}"[..], c.as_str()));
        assert!(split(b"{\"a\":1}").is_none());
    }

    #[test]
    fn changed_removed_and_swapped_lines_break_the_chain() {
        let lines = sealed(5);
        assert_eq!(check(&lines), Ok(()));
        let mut changed = lines.clone();
        changed[2][2] ^= 1;
        assert_eq!(check(&changed).unwrap_err().0, 2);
        let mut removed = lines.clone();
        removed.remove(2);
        assert_eq!(check(&removed), Err((2, Broken::Link)));
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert_eq!(check(&swapped), Err((1, Broken::Link)));
        // A gap without a notice, and a gap with its notice.
        let mut v = Verifier::new(false);
        let (a, ca) = seal(GENESIS, b"{\"seq\":1}\n");
        let (n, cn) = seal(
            &ca,
            b"{\"event\":\"lost\",\"scope\":\"file\",\"count\":2}\n",
        );
        let (b, _) = seal(&cn, b"{\"seq\":4}\n");
        for l in [&a, &n, &b] {
            v.line(l.strip_suffix(b"\n").unwrap()).unwrap();
        }
        assert_eq!((v.lost, v.range()), (2, Some((1, 4))));
        let (b2, _) = seal(&ca, b"{\"seq\":4}\n");
        let mut v = Verifier::new(false);
        v.line(a.strip_suffix(b"\n").unwrap()).unwrap();
        assert!(matches!(
            v.line(b2.strip_suffix(b"\n").unwrap()),
            Err(Broken::Gap { missing: 2, .. })
        ));
    }
}

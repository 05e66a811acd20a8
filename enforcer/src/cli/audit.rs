//! `enforcer audit`: work with what the audit sinks wrote.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;

use crate::events::sink::chain::Verifier;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check files the file sink wrote: every line's chain link, and that `seq` has no
    /// gap the files do not report as lost. Rotated sets (audit.jsonl.N ... audit.jsonl)
    /// are read oldest first, whatever the order given; other files in the order given.
    /// Exit 1 naming the first broken line.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The files come from a filtered sink: `seq` only has to increase.
        #[arg(long)]
        filtered: bool,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { files, filtered } => verify(&files, filtered),
    }
}

/// `FILE.N` -> (FILE, N); anything else -> (itself, 0).
fn rotation(p: &Path) -> (PathBuf, u64) {
    let s = p.to_string_lossy();
    match s.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (PathBuf::from(base), n.parse().unwrap_or(u64::MAX))
        }
        _ => (p.to_path_buf(), 0),
    }
}

/// A rotated set oldest first; other lists as given.
fn in_order(files: &[PathBuf]) -> Vec<PathBuf> {
    let keyed: Vec<(PathBuf, u64)> = files.iter().map(|f| rotation(f)).collect();
    let mut files = files.to_vec();
    if keyed.iter().all(|(b, _)| *b == keyed[0].0) {
        files.sort_by_key(|f| std::cmp::Reverse(rotation(f).1));
    }
    files
}

pub fn verify(files: &[PathBuf], filtered: bool) -> anyhow::Result<()> {
    let files = in_order(files);
    let mut v = Verifier::new(filtered);
    for f in &files {
        let text = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        for (i, line) in lines.iter().enumerate() {
            if let Err(e) = v.line(line) {
                bail!("{}:{}: {e}", f.display(), i + 1);
            }
        }
    }
    let range = v.range().map_or("no numbered lines".to_string(), |(a, b)| {
        format!("seq {a} to {b}")
    });
    println!(
        "ok: {} lines in {} file(s), {range}, {} reported lost; every link holds",
        v.lines,
        files.len(),
        v.lost
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_sets_are_read_oldest_first() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            in_order(&[
                p("/l/a.jsonl"),
                p("/l/a.jsonl.1"),
                p("/l/a.jsonl.10"),
                p("/l/a.jsonl.2")
            ]),
            vec![
                p("/l/a.jsonl.10"),
                p("/l/a.jsonl.2"),
                p("/l/a.jsonl.1"),
                p("/l/a.jsonl")
            ]
        );
        assert_eq!(
            in_order(&[p("/x/b"), p("/x/a.1")]),
            vec![p("/x/b"), p("/x/a.1")]
        );
    }
}

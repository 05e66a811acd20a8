//! The rotated file sink (`[audit.file]`): sealed JSON lines (see `chain`) appended to
//! `path`, rotated by renaming (`path` -> `path.1` -> ... -> `path.KEEP`, older ones
//! deleted) before a line would make the file larger than `max_bytes`, so collectors that
//! tail it follow the rename. Its own thread writes; a line it cannot write (full or
//! failing disk) is counted as lost, and a `lost` notice goes in before the next line it
//! can write.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tracing::{info, warn};

pub use crate::policy::sinks::{FileConfig as Config, DEFAULT_KEEP, DEFAULT_MAX_BYTES};

use super::{chain, lost_notice, Item, LineWriter, LostCounts, Scope};

/// Lines the file may fall behind the stream before it loses some.
pub const QUEUE: usize = 1 << 16;
/// Where the last run's last chain is kept in the state directory.
const ANCHOR: &str = "audit-chain.json";

/// Rotation limits a reload may change while the sink runs.
#[derive(Debug)]
pub struct Limits {
    pub max_bytes: AtomicU64,
    pub keep: AtomicU64,
}

impl Limits {
    pub fn of(c: &Config) -> Arc<Self> {
        Arc::new(Limits {
            max_bytes: AtomicU64::new(c.max_bytes),
            keep: AtomicU64::new(c.keep.into()),
        })
    }

    pub fn set(&self, c: &Config) {
        self.max_bytes.store(c.max_bytes, Ordering::Relaxed);
        self.keep.store(c.keep.into(), Ordering::Relaxed);
    }
}

/// `path.N`
pub fn rotated(path: &Path, n: u64) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

pub struct FileWriter {
    path: PathBuf,
    limits: Arc<Limits>,
    anchor: PathBuf,
    file: Option<File>,
    size: u64,
    /// The chain of the last line written (None until first needed).
    chain: Option<String>,
    /// The file ends with a torn line (a crash mid-write): start a new file.
    rotate_first: bool,
    /// Lines this thread could not write and has not reported yet.
    pending_lost: u64,
    counts: Arc<LostCounts>,
    failing: bool,
}

impl FileWriter {
    /// Touches nothing yet: the file and the anchor are read by the sink's own thread.
    pub fn new(
        path: PathBuf,
        limits: Arc<Limits>,
        state_dir: &Path,
        counts: Arc<LostCounts>,
    ) -> Self {
        FileWriter {
            path,
            limits,
            anchor: state_dir.join(ANCHOR),
            file: None,
            size: 0,
            chain: None,
            rotate_first: false,
            pending_lost: 0,
            counts,
            failing: false,
        }
    }

    /// The chain continues from the last line in the file, else from the last line the
    /// previous run wrote (kept in the state directory), else from GENESIS.
    fn chain(&mut self) -> &str {
        if self.chain.is_none() {
            let (last, torn) = last_chain(&self.path);
            self.rotate_first = torn;
            let anchored = || {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&self.anchor).ok()?).ok()?;
                v["chain"].as_str().map(str::to_string)
            };
            self.chain = Some(
                last.or_else(anchored)
                    .unwrap_or_else(|| chain::GENESIS.to_string()),
            );
        }
        self.chain.as_deref().unwrap_or(chain::GENESIS)
    }

    fn open(&mut self) -> std::io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.exists()) {
            DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
            // The umask may have taken bits away.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o640))?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    /// `path` -> `path.1` -> ... -> `path.KEEP`; what lies beyond is deleted.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let keep = self.limits.keep.load(Ordering::Relaxed).max(1);
        for i in (1..keep).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        // A reload may have lowered `keep`.
        let mut i = keep + 1;
        while std::fs::remove_file(rotated(&self.path, i)).is_ok() {
            i += 1;
        }
        self.rotate_first = false;
        self.open()
    }

    /// Seals and appends one line; on failure nothing of it stays in the file.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let (sealed, chain) = chain::seal(self.chain(), line);
        self.open()?;
        let max = self.limits.max_bytes.load(Ordering::Relaxed);
        if self.rotate_first || (self.size > 0 && self.size + sealed.len() as u64 > max) {
            self.rotate()?;
        }
        let f = self.file.as_mut().expect("opened");
        if let Err(e) = f.write_all(&sealed) {
            // A torn line would break the file for every reader: cut it off.
            let _ = f.set_len(self.size);
            return Err(e);
        }
        self.size += sealed.len() as u64;
        self.chain = Some(chain);
        Ok(())
    }

    fn failed(&mut self, e: &std::io::Error) {
        if !self.failing {
            warn!(path = %self.path.display(), "audit file: {e}; lines are counted as lost until it can be written");
            self.failing = true;
        }
    }
}

impl LineWriter for FileWriter {
    fn write(&mut self, item: &Item) -> std::io::Result<()> {
        let lost = item.lost_before + self.pending_lost;
        if lost > 0 {
            if let Err(e) = self.append(&lost_notice(Scope::File, lost)) {
                // The line waits behind its notice: no line is written after an
                // unreported gap.
                self.failed(&e);
                self.pending_lost = lost + 1;
                self.counts.add(Scope::File, 1);
                return Ok(());
            }
            self.pending_lost = 0;
        }
        match self.append(&item.line.json) {
            Ok(()) => {
                if self.failing {
                    info!(path = %self.path.display(), "audit file writable again");
                    self.failing = false;
                }
            }
            Err(e) => {
                self.failed(&e);
                self.pending_lost += 1;
                self.counts.add(Scope::File, 1);
            }
        }
        Ok(())
    }

    fn close(&mut self) {
        if self.pending_lost > 0
            && self
                .append(&lost_notice(Scope::File, self.pending_lost))
                .is_ok()
        {
            self.pending_lost = 0;
        }
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
        // Nothing written: the anchor stays as the last run left it.
        let Some(chain) = &self.chain else { return };
        let anchor = serde_json::json!({"path": self.path.display().to_string(), "chain": chain});
        if let Err(e) = crate::statefile::write_atomic(&self.anchor, anchor.to_string().as_bytes())
        {
            warn!(path = %self.anchor.display(), "keeping the audit chain's anchor: {e}");
        }
    }
}

/// The chain of the file's last line, and whether the file ends with a torn line.
fn last_chain(path: &Path) -> (Option<String>, bool) {
    let Ok(mut f) = File::open(path) else {
        return (None, false);
    };
    let len = f.metadata().map_or(0, |m| m.len());
    if len == 0 {
        return (None, false);
    }
    // Lines are far shorter than this.
    let window = len.min(1 << 20);
    let mut buf = Vec::with_capacity(window as usize);
    if f.seek(SeekFrom::Start(len - window)).is_err()
        || f.take(window).read_to_end(&mut buf).is_err()
    {
        return (None, false);
    }
    let torn = buf.last() != Some(&b'\n');
    let complete = match buf.iter().rposition(|&b| b == b'\n') {
        Some(end) => &buf[..end],
        None => return (None, torn),
    };
    let start = complete
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let chain = chain::split(&complete[start..]).map(|(_, c)| c.to_string());
    (chain, torn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sink::{Filter, Line, Meta};
    use std::os::unix::fs::MetadataExt as _;

    fn item(seq: u64, lost_before: u64) -> Item {
        let body = format!("{{\"event\":\"packet\",\"pad\":\"{}\"}}", "x".repeat(100));
        Item {
            line: Arc::new(Line::new(seq, body.into_bytes(), Meta::default())),
            lost_before,
        }
    }

    #[test]
    fn rotates_by_renaming_and_the_chain_spans_files_and_runs() {
        let dir = std::env::temp_dir().join(format!("enforcer-filesink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("logs/audit.jsonl");
        let cfg = Config {
            path: path.clone(),
            max_bytes: 2500,
            keep: 2,
            filter: Filter::default(),
        };
        let counts = Arc::new(LostCounts::default());
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = FileWriter::new(path.clone(), Limits::of(&cfg), &dir, counts.clone());
        // The queue dropped 10, 11 and 12.
        for seq in (1..=9).chain(13..=20) {
            w.write(&item(seq, if seq == 13 { 3 } else { 0 })).unwrap();
        }
        w.close();
        // A second run continues the chain.
        let mut w = FileWriter::new(path.clone(), Limits::of(&cfg), &dir, counts);
        w.write(&item(21, 0)).unwrap();
        w.close();
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o750
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert!(rotated(&path, 2).exists() && !rotated(&path, 3).exists());
        let mut v = chain::Verifier::new(false);
        for p in [rotated(&path, 2), rotated(&path, 1), path.clone()] {
            let text = std::fs::read(&p).unwrap();
            assert!(
                text.len() <= 2500,
                "{} has {} bytes",
                p.display(),
                text.len()
            );
            for l in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                v.line(l).unwrap();
            }
        }
        let (_, last) = v.range().unwrap();
        assert_eq!((last, v.lost), (21, 3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_last_line_is_left_alone_in_a_rotated_file() {
        let dir = std::env::temp_dir().join(format!("enforcer-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let cfg = Config {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 2,
            filter: Filter::default(),
        };
        let counts = Arc::new(LostCounts::default());
        let mut w = FileWriter::new(path.clone(), Limits::of(&cfg), &dir, counts.clone());
        w.write(&item(1, 0)).unwrap();
        w.close();
        // A crash in the middle of a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"ts\":\"2026").unwrap();
        let mut w = FileWriter::new(path.clone(), Limits::of(&cfg), &dir, counts);
        w.write(&item(2, 0)).unwrap();
        w.close();
        assert!(std::fs::read(rotated(&path, 1)).unwrap().ends_with(b"2026"));
        // The new file continues the chain of the last complete line.
        let mut v = chain::Verifier::new(false);
        let old = std::fs::read(rotated(&path, 1)).unwrap();
        v.line(old.split(|&b| b == b'\n').next().unwrap()).unwrap();
        let new = std::fs::read(&path).unwrap();
        v.line(new.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(v.range(), Some((1, 2)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

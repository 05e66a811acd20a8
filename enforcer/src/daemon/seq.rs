//! The audit stream's sequence numbers: one per line, contiguous across sinks, rotation
//! and restarts. The state directory holds the first number the next daemon may use: a
//! clean stop leaves exactly the next one; while running, a block ahead is reserved (by a
//! thread of its own, so the stream never waits on the disk), so a crash skips at most
//! that block and never reuses a number.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
};

use tracing::warn;

const FILE: &str = "audit-seq.json";
/// Numbers reserved ahead on disk: a third of a second at 3 million lines a second, so
/// the reservations (each a synced write) stay a few a second.
const BLOCK: u64 = 1_000_000;

pub struct Seq {
    next: u64,
    /// Numbers below this are reserved once the persister has written it.
    reserved: u64,
    persisted: Arc<AtomicU64>,
    persister: Option<(mpsc::Sender<u64>, JoinHandle<()>)>,
    path: PathBuf,
    warned: bool,
}

fn write(path: &Path, next: u64) -> anyhow::Result<()> {
    crate::statefile::write_atomic(
        path,
        serde_json::json!({ "next": next }).to_string().as_bytes(),
    )
}

impl Seq {
    /// Continues after what the state directory says; reserves the first block before
    /// any number is used.
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(FILE);
        let next = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| v["next"].as_u64())
                .unwrap_or_else(|| {
                    warn!(path = %path.display(), "unreadable audit sequence state; seq starts again at 1");
                    1
                }),
            Err(_) => 1,
        };
        let reserved = next + BLOCK;
        let persisted = Arc::new(AtomicU64::new(0));
        match write(&path, reserved) {
            Ok(()) => persisted.store(reserved, Ordering::Relaxed),
            Err(e) => warn!(path = %path.display(), "reserving audit sequence numbers: {e}"),
        }
        let (tx, rx) = mpsc::channel::<u64>();
        let (p, done) = (path.clone(), persisted.clone());
        let thread = std::thread::Builder::new()
            .name("audit-seq".into())
            .spawn(move || {
                while let Ok(mut want) = rx.recv() {
                    // Only the latest reservation matters.
                    want = rx.try_iter().last().unwrap_or(want);
                    match write(&p, want) {
                        Ok(()) => done.store(want, Ordering::Relaxed),
                        Err(e) => {
                            warn!(path = %p.display(), "reserving audit sequence numbers: {e}")
                        }
                    }
                }
            })
            .expect("spawning the audit-seq thread");
        Seq {
            next,
            reserved,
            persisted,
            persister: Some((tx, thread)),
            path,
            warned: false,
        }
    }

    /// The next number.
    pub fn take(&mut self) -> u64 {
        let n = self.next;
        self.next += 1;
        if self.next + BLOCK / 2 > self.reserved {
            self.reserved = self.next + BLOCK;
            if let Some((tx, _)) = &self.persister {
                let _ = tx.send(self.reserved);
            }
        }
        if n >= self.persisted.load(Ordering::Relaxed) && !self.warned {
            warn!("audit sequence numbers are used faster than they can be reserved on disk; a crash now could repeat some");
            self.warned = true;
        }
        n
    }

    /// The number the next line gets.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// A clean stop: the next daemon continues right after the last number used.
    pub fn close(mut self) {
        if let Some((tx, thread)) = self.persister.take() {
            drop(tx);
            let _ = thread.join();
        }
        if let Err(e) = write(&self.path, self.next) {
            warn!(path = %self.path.display(), "keeping the audit sequence: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_after_a_clean_stop_and_skips_after_a_crash() {
        let dir = std::env::temp_dir().join(format!("enforcer-seq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Seq::open(&dir);
        let first: Vec<u64> = (0..3 * BLOCK).map(|_| s.take()).collect();
        assert_eq!(first[0], 1);
        assert!(first.windows(2).all(|w| w[1] == w[0] + 1));
        s.close();
        let mut s = Seq::open(&dir);
        assert_eq!(s.take(), 3 * BLOCK + 1);
        // Dropped without close: a crash.
        drop(s);
        let mut s = Seq::open(&dir);
        let n = s.take();
        assert!(n > 3 * BLOCK + 1 && n <= 3 * BLOCK + 2 + BLOCK, "{n}");
        s.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `--watch`: the policy file's directory under inotify, so a changed file is reloaded as
//! SIGHUP would reload it. Every way the file gets replaced is an event in that directory:
//! an editor writing it or renaming a new one over it, and Kubernetes' ConfigMap volume,
//! whose kubelet writes a new `..2026_...` directory, points a `..data_tmp` symlink at it
//! and renames that over `..data`, the symlink `policy.toml -> ..data/policy.toml` goes
//! through. Events come in bursts and most do not change the file (the old directory's
//! removal, other keys of the ConfigMap): a burst is let settle, then the file's content
//! is compared with what it was, and only a change is reported.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use inotify::{Inotify, WatchMask};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tracing::{error, info};

/// How long a burst of events must stay quiet before the file is read.
const SETTLE: Duration = Duration::from_millis(100);

/// Watches the directory of `config` from now on; changes of the file's content arrive on
/// the returned channel. Call before the policy is first read, so no change is missed.
pub fn start(config: &Path) -> anyhow::Result<mpsc::Receiver<()>> {
    let dir = match config.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let inotify = Inotify::init().context("inotify_init")?;
    inotify
        .watches()
        .add(
            &dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF,
        )
        .with_context(|| format!("watching {} (inotify)", dir.display()))?;
    let events = inotify
        .into_event_stream([0u8; 4096])
        .context("inotify event stream")?;
    let (tx, rx) = mpsc::channel(1);
    let config = config.to_path_buf();
    let last = digest(&config);
    info!(dir = %dir.display(), "watching the policy file's directory (--watch)");
    tokio::spawn(watch(events, config, last, tx));
    Ok(rx)
}

async fn watch(
    mut events: inotify::EventStream<[u8; 4096]>,
    config: PathBuf,
    mut last: Option<[u8; 32]>,
    tx: mpsc::Sender<()>,
) {
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            error!("--watch: reading inotify events: {e}; the policy file is no longer watched");
            return;
        }
        while let Ok(Some(_)) = tokio::time::timeout(SETTLE, events.next()).await {}
        let now = digest(&config);
        if now != last {
            last = now;
            info!(file = %config.display(), "the policy file changed: reloading");
            if tx.send(()).await.is_err() {
                return;
            }
        }
    }
}

/// The file's content as reached through its symlinks; None when it cannot be read (the
/// reload that follows says why).
fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(b).into())
}

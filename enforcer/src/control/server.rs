//! Serves the control socket: each request goes to the daemon's policy owner (or, for
//! `subscribe`, to the audit stream) and its answer comes back on the connection.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::protocol::{self, Request};
use crate::events::sink::{lost_notice, Item, Scope};

/// A request for the policy owner, with where to send its answer.
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<serde_json::Value>,
}

/// A subscriber for the audit stream: lines go to `tx`, starting with the held lines
/// from `since_unix_ns` on.
pub struct Subscribe {
    pub tx: mpsc::Sender<Item>,
    pub since_unix_ns: Option<u128>,
}

/// Binds the socket (replacing a stale one), root-only.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another daemon is serving {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(l)
}

pub async fn serve(
    listener: UnixListener,
    calls: mpsc::Sender<Call>,
    subs: mpsc::Sender<Subscribe>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, calls.clone(), subs.clone()));
            }
            Err(e) => {
                warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Longest request line accepted: a client cannot make the daemon buffer without bound.
const MAX_LINE: usize = 64 * 1024;

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>, subs: mpsc::Sender<Subscribe>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // The bound is per line (one byte more than allowed shows a line is too long);
        // a connection may carry any number of requests. Bytes, not a String: a line that
        // is not UTF-8 gets an answer too.
        match (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE {
            let _ = write_json(
                &mut write,
                &protocol::error(format!("request longer than {MAX_LINE} bytes")),
            )
            .await;
            return;
        }
        let request = match protocol::parse_request(String::from_utf8_lossy(&line).trim()) {
            Ok(r) => r,
            Err(e) => {
                if write_json(&mut write, &protocol::error(e)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if let Request::Subscribe { since_unix_ns } = request {
            let (tx, mut rx) = mpsc::channel::<Item>(SUBSCRIBER_QUEUE);
            if subs.send(Subscribe { tx, since_unix_ns }).await.is_err() {
                return;
            }
            if write_json(
                &mut write,
                &protocol::ok(serde_json::json!({"subscribed": true})),
            )
            .await
            .is_err()
            {
                return;
            }
            while let Some(item) = rx.recv().await {
                if item.lost_before > 0
                    && write
                        .write_all(&lost_notice(Scope::Subscriber, item.lost_before))
                        .await
                        .is_err()
                {
                    return;
                }
                if write.write_all(&item.line.json).await.is_err() {
                    debug!("subscriber went away");
                    return;
                }
            }
            return;
        }
        let (reply, answer) = oneshot::channel();
        if calls.send(Call { request, reply }).await.is_err() {
            return;
        }
        let v = answer
            .await
            .unwrap_or_else(|_| protocol::error("the daemon is stopping"));
        if write_json(&mut write, &v).await.is_err() {
            return;
        }
    }
}

/// Lines a subscriber may fall behind before it loses events (and is told how many).
pub const SUBSCRIBER_QUEUE: usize = 8192;

async fn write_json(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &serde_json::Value,
) -> std::io::Result<()> {
    let mut s = v.to_string();
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

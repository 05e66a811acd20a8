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

/// A request for the policy owner, with where to send its answer.
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<serde_json::Value>,
}

/// A subscriber for the audit stream: its connection gets `answer`, then the held lines
/// from `since_unix_ns` on, then every line.
pub struct Subscribe {
    pub stream: std::os::unix::net::UnixStream,
    pub answer: Vec<u8>,
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
            // The audit stream's sink thread writes the rest, blocking: the connection
            // leaves the runtime.
            let Ok(stream) = lines
                .into_inner()
                .reunite(write)
                .map_err(drop)
                .and_then(|s| s.into_std().map_err(drop))
            else {
                return;
            };
            if stream.set_nonblocking(false).is_err() {
                return;
            }
            let mut answer = protocol::ok(serde_json::json!({"subscribed": true})).to_string();
            answer.push('\n');
            let sub = Subscribe {
                stream,
                answer: answer.into_bytes(),
                since_unix_ns,
            };
            if subs.send(sub).await.is_err() {
                debug!("the audit stream is gone");
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

/// Lines a subscriber may fall behind before it loses events (and is told how many): as
/// many as stdout may. At 3 million events a second that is 22 ms, so a subscriber whose
/// process waits a few scheduler slices for a CPU loses nothing. Batches are shared with
/// the other sinks, so a subscriber only holds memory of its own while it lags behind
/// them: about 20 MiB when its queue is full.
pub const SUBSCRIBER_QUEUE: usize = 1 << 16;

async fn write_json(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &serde_json::Value,
) -> std::io::Result<()> {
    let mut s = v.to_string();
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

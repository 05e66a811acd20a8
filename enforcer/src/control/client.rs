//! The CLI's side of the control socket.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};

use super::protocol::{Request, RequestEnvelope, VERSION};

/// Connects to the daemon's control socket.
pub fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the daemon at {} (is `enforcer run` running, and are you root?)",
            socket.display()
        )
    })
}

/// Sends one request and returns the response object (an error if it says ok=false).
pub fn call(socket: &Path, request: Request) -> anyhow::Result<serde_json::Value> {
    let mut s = connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    send(&mut s, request)?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .context("reading the daemon's answer")?;
    if line.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    let v: serde_json::Value =
        serde_json::from_str(&line).context("the daemon's answer is not JSON")?;
    if v["ok"] != true {
        return Err(anyhow!(
            "{}",
            v["error"].as_str().unwrap_or("request failed")
        ));
    }
    Ok(v)
}

pub fn send(s: &mut UnixStream, request: Request) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(&RequestEnvelope {
        version: VERSION,
        request,
    })?;
    line.push('\n');
    s.write_all(line.as_bytes()).context("sending the request")
}

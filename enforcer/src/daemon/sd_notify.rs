//! systemd's readiness protocol (`Type=notify`): the unit counts as started only once the
//! policy is enforced and the control socket answers. The unit is ordered before
//! `network-pre.target`, so no interface is configured before then; with `Type=simple` the
//! network could come up while the programs are still loading.

use std::os::{linux::net::SocketAddrExt as _, unix::net::UnixDatagram};

use anyhow::Context as _;

/// Sends `READY=1` to `$NOTIFY_SOCKET`, if systemd set it (nothing to do otherwise).
pub fn ready() -> anyhow::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    let sock = UnixDatagram::unbound().context("socket for NOTIFY_SOCKET")?;
    // "@name" is a socket in the abstract namespace.
    let addr = match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    }
    .with_context(|| format!("NOTIFY_SOCKET={path}"))?;
    sock.send_to_addr(b"READY=1", &addr)
        .with_context(|| format!("notifying systemd at {path}"))?;
    Ok(())
}

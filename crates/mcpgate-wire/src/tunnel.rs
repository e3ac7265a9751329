//! The multiplexer: HTTP/2 (`h2`) over the agent's mTLS connection to the proxy.
//!
//! Roles are reversed on purpose. The agent dials out (so it works behind NAT) and is the
//! TLS client, but it is the HTTP/2 *server* ([`agent`]): it accepts streams. The proxy is
//! the TLS server and the HTTP/2 *client* ([`proxy`]): it opens the streams.
//!
//! - **Announcements**: the proxy first opens a control stream (`GET /announce`); the agent
//!   answers `200` with a response body that never ends, carrying [`Announce`] messages, each
//!   `len: u32 BE | JSON`. The first arrives at once and the proxy routes nothing to the
//!   agent before it; later ones replace it when the agent's apps change.
//! - **Sessions**: one stream per client session, `POST /session` with the [`OpenMeta`] as
//!   JSON in the `mcpgate-open` header. The request body carries client→agent bytes, the
//!   response body agent→client bytes, untouched. The agent answers `200` at once, or `400`
//!   when the metadata is unreadable.
//! - **Keepalive**: each side sends an HTTP/2 PING every [`PING_EVERY`]; a side that has not
//!   answered one within [`DEAD_AFTER`] is dropped, and with it every stream.
//!
//! **Memory and flow control.** Every stream has an HTTP/2 window of [`STREAM_WINDOW`]
//! bytes in each direction, the connection [`CONNECTION_WINDOW`]. A receiver gives window
//! back only as its consumer reads ([`crate::io::RecvReader`]), and a sender writes only
//! into open window ([`crate::io::SendWriter`]). So a session whose client stops reading
//! holds at most `STREAM_WINDOW` (128 KiB) of its data in the receiver's h2 buffers, and its
//! writer then waits; the other streams go on. The stalled data also counts against the
//! shared connection window, which is why that is 1024 stream windows (128 MiB, buffered only
//! if that many sessions stall at once): only 1024 sessions of one agent stalled at the same
//! time would stall the rest.
//!
//! [`Announce`]: crate::Announce
//! [`OpenMeta`]: crate::OpenMeta

pub mod agent;
pub mod proxy;

use bytes::Bytes;
use std::time::Duration;
use tokio::io::AsyncReadExt;

use crate::io::RecvReader;
use crate::{Announce, WireError};

/// The HTTP/2 window of one stream, in each direction: the most a stalled stream holds.
pub const STREAM_WINDOW: u32 = 128 << 10;
/// The HTTP/2 window of a whole tunnel, shared by its streams (1024 stream windows).
pub const CONNECTION_WINDOW: u32 = 1024 * STREAM_WINDOW;
/// How often each side pings the other.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// A side that answers no ping for this long is dropped.
pub const DEAD_AFTER: Duration = Duration::from_secs(15);
/// The largest [`Announce`] message accepted (full app definitions).
pub const MAX_ANNOUNCE: usize = 4 << 20;
/// The largest header block accepted: the client's certificate chain rides in one.
pub const MAX_HEADER_LIST: u32 = 64 << 10;

/// The header carrying [`crate::OpenMeta`] as JSON.
pub const OPEN_HEADER: &str = "mcpgate-open";
const SESSION_PATH: &str = "/session";
const ANNOUNCE_PATH: &str = "/announce";
/// Request URIs: h2 wants a scheme and authority; the agent only looks at the path.
const SESSION_URI: &str = "https://mcpgate-tunnel/session";
const ANNOUNCE_URI: &str = "https://mcpgate-tunnel/announce";

/// Pings the peer every [`PING_EVERY`]; returns once one is not answered within
/// [`DEAD_AFTER`] or the connection fails. Needs the connection polled to make progress.
async fn keepalive(mut pings: h2::PingPong) -> WireError {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(DEAD_AFTER, pings.ping(h2::Ping::opaque())).await {
            Err(_) => return WireError::Silent(DEAD_AFTER),
            Ok(Err(e)) => return e.into(),
            Ok(Ok(_)) => {}
        }
    }
}

/// One [`Announce`] framed for the control stream: `len: u32 BE | JSON`.
fn frame_announce(announce: &Announce) -> Result<Bytes, WireError> {
    let json =
        serde_json::to_vec(announce).map_err(|e| WireError::Protocol(format!("announce: {e}")))?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n as usize <= MAX_ANNOUNCE)
        .ok_or_else(|| WireError::Protocol("announce too large".into()))?;
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out.into())
}

/// Reads the next [`Announce`] from the control stream; `None` when it ended cleanly.
async fn read_announce(body: &mut RecvReader) -> Result<Option<Announce>, WireError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match body.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(WireError::Closed),
            Ok(n) => got += n,
            Err(e) => return Err(WireError::Protocol(format!("control stream: {e}"))),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_ANNOUNCE {
        return Err(WireError::Protocol(format!("announce of {len} bytes")));
    }
    let mut json = vec![0u8; len];
    body.read_exact(&mut json)
        .await
        .map_err(|e| WireError::Protocol(format!("control stream: {e}")))?;
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(|e| WireError::Protocol(format!("announce: {e}")))
}

#[cfg(test)]
mod tests;

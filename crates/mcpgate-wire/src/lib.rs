//! The tunnel protocol that the proxy, the agent and the bridge share as peers.
//!
//! - [`hello`]: the first line a bridge sends on an MCP stream (`{"app": NAME}`) and the
//!   proxy's one-line answer.
//! - [`meta`]: what travels with a tunnel stream — [`OpenMeta`] (who opened a client session)
//!   and [`Announce`] (what an agent serves) — and [`selects`], the label match of an agent's
//!   selectors against a cluster app.
//! - [`tunnel`]: the multiplexer, HTTP/2 over the agent's mTLS connection (`h2`). The agent
//!   dials out but is the HTTP/2 server ([`tunnel::agent`]); the proxy is the HTTP/2 client
//!   ([`tunnel::proxy`]) and opens one stream per client session. HTTP/2's per-stream windows
//!   keep one slow reader from stalling the other sessions of the same agent.
//! - [`io`]: `AsyncRead`/`AsyncWrite` over one HTTP/2 stream that respect its flow control.

pub mod hello;
pub mod io;
pub mod meta;
pub mod tunnel;

pub use hello::{Hello, HelloReply};
pub use io::{RecvReader, SendWriter};
pub use meta::{Announce, OpenMeta, decode_certs, encode_certs, selects};

use std::time::Duration;

/// Tunnel failures.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The HTTP/2 layer failed: the handshake, a protocol error, a reset or a dropped connection.
    #[error("tunnel: {0}")]
    H2(#[from] h2::Error),
    /// The peer sent something this protocol does not allow.
    #[error("tunnel protocol: {0}")]
    Protocol(String),
    /// The peer answered no ping for this long.
    #[error("the peer went silent for {0:?}")]
    Silent(Duration),
    /// The tunnel closed before the expected message arrived.
    #[error("the tunnel closed")]
    Closed,
}

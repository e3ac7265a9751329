//! The agent's side: the HTTP/2 server on the connection it dialled to the proxy.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    ANNOUNCE_PATH, CONNECTION_WINDOW, MAX_HEADER_LIST, OPEN_HEADER, SESSION_PATH, STREAM_WINDOW,
    frame_announce, keepalive,
};
use crate::io::{RecvReader, SendWriter};
use crate::{Announce, OpenMeta, WireError};

/// The agent's end of a tunnel: yields the streams the proxy opens.
pub struct Listener<S> {
    conn: h2::server::Connection<S, Bytes>,
    keepalive: Pin<Box<dyn Future<Output = WireError> + Send>>,
}

/// A stream the proxy opened.
pub enum Incoming {
    /// The control stream: send the apps served now, then again whenever they change.
    Announcer(Announcer),
    /// A client session.
    Session(Session),
}

/// One client session: who it is, and its bytes both ways.
pub struct Session {
    pub meta: OpenMeta,
    /// What the client sends.
    pub reader: RecvReader,
    /// What goes to the client; shutting it down ends the session's stream.
    pub writer: SendWriter,
}

/// Sends [`Announce`] messages on the control stream.
pub struct Announcer {
    writer: SendWriter,
}

impl Announcer {
    /// Sends one announcement (waits if the proxy does not read).
    pub async fn send(&mut self, announce: &Announce) -> Result<(), WireError> {
        let framed = frame_announce(announce)?;
        self.writer
            .write_all(&framed)
            .await
            .map_err(|e| WireError::Protocol(format!("control stream: {e}")))
    }
}

/// Accepts the proxy's HTTP/2 connection over `io` (the agent's TLS stream to the proxy).
pub async fn handshake<S>(io: S) -> Result<Listener<S>, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(STREAM_WINDOW as usize)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake(io)
        .await?;
    let pings = conn
        .ping_pong()
        .ok_or_else(|| WireError::Protocol("no ping handle".into()))?;
    Ok(Listener {
        conn,
        keepalive: Box::pin(keepalive(pings)),
    })
}

impl<S> Listener<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The next stream the proxy opens; `None` when the proxy closed the tunnel cleanly.
    /// This drives the whole connection (every stream's bytes and the keepalive), so call it
    /// in a loop; it is cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Incoming>, WireError> {
        loop {
            let accepted = tokio::select! {
                accepted = self.conn.accept() => accepted,
                dead = &mut self.keepalive => return Err(dead),
            };
            let (request, respond) = match accepted {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(stream)) => stream,
            };
            if let Some(incoming) = classify(request, respond) {
                return Ok(Some(incoming));
            }
        }
    }
}

/// What a new stream is; streams this protocol does not know are answered and dropped.
fn classify(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Option<Incoming> {
    let status = |code: http::StatusCode| {
        let mut r = http::Response::new(());
        *r.status_mut() = code;
        r
    };
    match request.uri().path() {
        SESSION_PATH => {
            let meta = request
                .headers()
                .get(OPEN_HEADER)
                .and_then(|v| serde_json::from_slice::<OpenMeta>(v.as_bytes()).ok());
            let Some(meta) = meta else {
                tracing::warn!("tunnel stream without readable open metadata: refused");
                let _ = respond.send_response(status(http::StatusCode::BAD_REQUEST), true);
                return None;
            };
            let send = respond
                .send_response(status(http::StatusCode::OK), false)
                .ok()?;
            Some(Incoming::Session(Session {
                meta,
                reader: RecvReader::new(request.into_body()),
                writer: SendWriter::new(send),
            }))
        }
        ANNOUNCE_PATH => {
            let send = respond
                .send_response(status(http::StatusCode::OK), false)
                .ok()?;
            Some(Incoming::Announcer(Announcer {
                writer: SendWriter::new(send),
            }))
        }
        _ => {
            let _ = respond.send_response(status(http::StatusCode::NOT_FOUND), true);
            None
        }
    }
}

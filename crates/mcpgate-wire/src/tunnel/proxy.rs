//! The proxy's side: the HTTP/2 client on the connection an agent dialled in.
//!
//! [`OpenMeta`] rides in a request header rather than in front of the body: it arrives
//! whole with the stream's opening (one HEADERS frame, HPACK-compressed), the agent can
//! refuse a stream before reading a byte of it, and the body stays exactly the client's
//! bytes, so both ends hand the stream to the session as it is.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    ANNOUNCE_URI, CONNECTION_WINDOW, MAX_HEADER_LIST, OPEN_HEADER, SESSION_URI, STREAM_WINDOW,
    keepalive, read_announce,
};
use crate::io::{RecvReader, SendWriter};
use crate::{Announce, OpenMeta, WireError};

/// Opens streams on an agent's tunnel; clones share the tunnel.
#[derive(Clone)]
pub struct Opener {
    send: h2::client::SendRequest<Bytes>,
}

/// The tunnel's I/O and keepalive: poll it (spawn it) for as long as the tunnel lives.
/// It ends when the connection fails, closes, or the agent stops answering pings;
/// dropping it ends every stream of the tunnel.
pub struct Connection {
    inner: Pin<Box<dyn Future<Output = Result<(), WireError>> + Send>>,
}

impl Future for Connection {
    type Output = Result<(), WireError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// The announcements of one agent, in order.
pub struct Announcements {
    body: RecvReader,
}

impl Announcements {
    /// The next announcement; `None` when the agent ended the control stream.
    pub async fn next(&mut self) -> Result<Option<Announce>, WireError> {
        read_announce(&mut self.body).await
    }
}

/// Starts HTTP/2 over `io` (an agent's TLS stream, already authenticated as a host).
pub async fn handshake<S>(io: S) -> Result<(Opener, Connection), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(STREAM_WINDOW as usize)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<S, Bytes>(io)
        .await?;
    let pings = conn
        .ping_pong()
        .ok_or_else(|| WireError::Protocol("no ping handle".into()))?;
    let inner = Box::pin(async move {
        tokio::select! {
            done = &mut conn => done.map_err(WireError::from),
            dead = keepalive(pings) => Err(dead),
        }
    });
    Ok((Opener { send }, Connection { inner }))
}

impl Opener {
    /// Opens the control stream; the agent answers with its announcements.
    pub async fn announcements(&self) -> Result<Announcements, WireError> {
        let request = http::Request::get(ANNOUNCE_URI)
            .body(())
            .map_err(|e| WireError::Protocol(e.to_string()))?;
        let mut send = self.send.clone().ready().await?;
        let (response, _) = send.send_request(request, true)?;
        Ok(Announcements {
            body: RecvReader::response(response),
        })
    }

    /// Opens a stream for one client session: what the writer takes reaches the agent's
    /// session, what the session sends comes out of the reader.
    pub async fn open(&self, meta: &OpenMeta) -> Result<(RecvReader, SendWriter), WireError> {
        let json =
            serde_json::to_vec(meta).map_err(|e| WireError::Protocol(format!("open: {e}")))?;
        let value = http::HeaderValue::from_bytes(&json)
            .map_err(|e| WireError::Protocol(format!("open: {e}")))?;
        self.open_raw(value).await
    }

    /// Opens a session stream with this `mcpgate-open` header value.
    pub(super) async fn open_raw(
        &self,
        value: http::HeaderValue,
    ) -> Result<(RecvReader, SendWriter), WireError> {
        let request = http::Request::post(SESSION_URI)
            .header(OPEN_HEADER, value)
            .body(())
            .map_err(|e| WireError::Protocol(e.to_string()))?;
        let mut send = self.send.clone().ready().await?;
        let (response, body) = send.send_request(request, false)?;
        Ok((RecvReader::response(response), SendWriter::new(body)))
    }
}

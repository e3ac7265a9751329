//! The reverse tunnel: the agent dials OUT to the proxy (so it works behind NAT) over mTLS
//! with its host certificate (ALPN `mcpgate-tunnel/1`) and multiplexes client sessions over
//! that one connection.
//!
//! Frames: `stream: u32 BE | kind: u8 | len: u32 BE | payload`. Stream 0 carries control
//! frames (announce, ping, pong). The proxy opens a stream per client session with `OPEN`
//! (who the client is); both sides send `DATA` and end their direction with `CLOSE`.

use base64::Engine;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};

use crate::{Agent, ClientConn};

pub const OPEN: u8 = 1;
pub const DATA: u8 = 2;
pub const CLOSE: u8 = 3;
pub const ANNOUNCE: u8 = 5;
pub const PING: u8 = 6;
pub const PONG: u8 = 7;

/// Largest frame payload accepted.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Chunk size when pumping a stream into frames.
pub const CHUNK: usize = 64 << 10;
/// How often the agent pings; a side that hears nothing for three periods drops the tunnel.
pub const PING_EVERY: Duration = Duration::from_secs(2);
pub const DEAD_AFTER: Duration = Duration::from_secs(15);

/// One frame.
#[derive(Debug)]
pub struct Frame {
    pub stream: u32,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Who opened a stream, as the proxy saw it. The agent verifies the certificates itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpenMeta {
    pub app: String,
    pub addr: SocketAddr,
    /// DER certificates, base64.
    pub certs: Vec<String>,
}

/// What an agent serves, sent when the tunnel opens and whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub agent: String,
    /// The apps it serves now.
    pub apps: Vec<mcpgate_types::resource::App>,
    /// Its selectors of cluster apps, so the proxy can route an app created a moment ago.
    #[serde(default)]
    pub selectors: Vec<std::collections::BTreeMap<String, String>>,
}

/// Encodes a frame.
pub fn encode(stream: u32, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut header = [0u8; 9];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let stream = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "tunnel frame too large",
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        stream,
        kind: header[4],
        payload,
    }))
}

/// Writes one frame under the writer's lock.
pub async fn send<W: AsyncWrite + Unpin + ?Sized>(
    w: &tokio::sync::Mutex<W>,
    stream: u32,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let frame = encode(stream, kind, payload);
    let mut w = w.lock().await;
    w.write_all(&frame).await?;
    w.flush().await
}

pub fn encode_certs(certs: &[CertificateDer<'_>]) -> Vec<String> {
    certs
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
        .collect()
}

fn decode_certs(certs: &[String]) -> Option<Vec<CertificateDer<'static>>> {
    certs
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c)
                .ok()
                .map(CertificateDer::from)
        })
        .collect()
}

/// Gives the TLS config with the agent's current certificate, and when it expires.
pub type TlsSource =
    dyn Fn() -> Result<(Arc<rustls::ClientConfig>, std::time::SystemTime), String> + Send + Sync;

/// How the agent reaches the proxy: address, and a TLS config with its current host
/// certificate (called again for every connection, so renewed certificates are used).
pub struct Dial {
    pub proxy: String,
    pub server_name: String,
    /// The TLS config with the current host certificate, and when that certificate expires:
    /// the tunnel is re-dialled shortly before, with the renewed one.
    pub tls: Box<TlsSource>,
}

impl Agent {
    /// Keeps a tunnel to the proxy open for as long as the process runs, reconnecting with
    /// backoff (up to 5 s) when it drops.
    pub async fn run_tunnel(self: Arc<Self>, name: String, dial: Dial) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.clone().tunnel_once(&name, &dial).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, proxy = %dial.proxy, "tunnel to the proxy failed; retrying")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn tunnel_once(self: Arc<Self>, name: &str, dial: &Dial) -> Result<(), String> {
        let (tls, cert_expires) = (dial.tls)()?;
        let redial_at = {
            let left = cert_expires
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::Instant::now()
                + left
                    .saturating_sub(Duration::from_secs(60))
                    .max(Duration::from_secs(1))
        };
        let tcp = tokio::net::TcpStream::connect(&dial.proxy)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let server = ServerName::try_from(dial.server_name.clone()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut reader, writer) = tokio::io::split(stream);
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let mut announced = Announce {
            agent: name.to_string(),
            apps: self.app_list().await,
            selectors: self.selectors().to_vec(),
        };
        send(
            &writer,
            0,
            ANNOUNCE,
            &serde_json::to_vec(&announced).unwrap_or_default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(proxy = %dial.proxy, apps = announced.apps.len(), "tunnel to the proxy is up");

        // Keepalive and app changes.
        let control = {
            let (agent, writer, name) = (self.clone(), writer.clone(), name.to_string());
            tokio::spawn(async move {
                // Apps are looked at again when roles or apps change here (the epoch), and
                // every ping period in any case (changes made elsewhere).
                let mut epoch = agent.cluster.epoch();
                let mut last = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let now_epoch = agent.cluster.epoch();
                    if now_epoch == epoch && last.elapsed() < PING_EVERY {
                        continue;
                    }
                    epoch = now_epoch;
                    last = tokio::time::Instant::now();
                    let now = Announce {
                        agent: name.clone(),
                        apps: agent.app_list().await,
                        selectors: agent.selectors().to_vec(),
                    };
                    let frame = if now != announced {
                        announced = now;
                        send(
                            &writer,
                            0,
                            ANNOUNCE,
                            &serde_json::to_vec(&announced).unwrap_or_default(),
                        )
                        .await
                    } else {
                        send(&writer, 0, PING, &[]).await
                    };
                    if frame.is_err() {
                        return;
                    }
                }
            })
        };
        let mut streams: HashMap<u32, WriteHalf<tokio::io::DuplexStream>> = HashMap::new();
        let result = loop {
            if tokio::time::Instant::now() >= redial_at {
                break Ok(()); // the certificate is about to expire: reconnect with a fresh one
            }
            let frame = match tokio::time::timeout(DEAD_AFTER, read_frame(&mut reader)).await {
                Err(_) => break Err("the proxy went silent".to_string()),
                Ok(Err(e)) => break Err(e.to_string()),
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(f))) => f,
            };
            match frame.kind {
                OPEN => {
                    let Ok(meta) = serde_json::from_slice::<OpenMeta>(&frame.payload) else {
                        continue;
                    };
                    let certs = decode_certs(&meta.certs).unwrap_or_default();
                    let (session_side, gateway_side) = tokio::io::duplex(256 << 10);
                    let (from_session, to_session) = tokio::io::split(gateway_side);
                    streams.insert(frame.stream, to_session);
                    let conn = ClientConn {
                        certs,
                        addr: meta.addr,
                        app: meta.app,
                    };
                    let agent = self.clone();
                    tokio::spawn(async move {
                        let (r, w) = tokio::io::split(session_side);
                        agent.serve(conn, r, w).await;
                    });
                    tokio::spawn(pump(from_session, writer.clone(), frame.stream));
                }
                DATA => {
                    if let Some(w) = streams.get_mut(&frame.stream)
                        && w.write_all(&frame.payload).await.is_err()
                    {
                        streams.remove(&frame.stream);
                    }
                }
                CLOSE => {
                    if let Some(mut w) = streams.remove(&frame.stream) {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {} // PONG and unknown control frames
            }
        };
        control.abort();
        // Sessions whose tunnel is gone see their client leave and stop their upstreams.
        for (_, mut w) in streams.drain() {
            let _ = w.shutdown().await;
        }
        result
    }

    async fn app_list(&self) -> Vec<mcpgate_types::resource::App> {
        match self.apps().await {
            Ok(apps) => apps,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list apps");
                Vec::new()
            }
        }
    }
}

/// Copies what a session writes into DATA frames, then CLOSE.
pub async fn pump<R, W, M>(mut from: R, writer: M, stream: u32)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
    M: std::ops::Deref<Target = tokio::sync::Mutex<W>>,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if send(&writer, stream, DATA, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = send(&writer, stream, CLOSE, &[]).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_refuse_oversize() {
        let mut bytes = encode(7, DATA, b"hello");
        bytes.extend(encode(0, PING, b""));
        let mut r = &bytes[..];
        let f = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(
            (f.stream, f.kind, f.payload.as_slice()),
            (7, DATA, &b"hello"[..])
        );
        let f = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!((f.stream, f.kind), (0, PING));
        assert!(read_frame(&mut r).await.unwrap().is_none());
        let mut big = vec![0, 0, 0, 1, DATA];
        big.extend(((MAX_PAYLOAD + 1) as u32).to_be_bytes());
        assert!(read_frame(&mut &big[..]).await.is_err());
        let truncated = &encode(1, DATA, b"abc")[..10];
        assert!(read_frame(&mut &truncated[..]).await.is_err());
    }
}

//! The proxy: the cluster's one public TLS endpoint, routing each connection by ALPN.
//!
//! - `http/1.1` (or no ALPN): the HTTPS API of the auth service (login, certificates, admin),
//!   with the verified client certificate attached to every request.
//! - `mcpgate-mcp/1`: MCP streams from `mcpgate mcp connect` (the MCP access path).
//!
//! Client certificates are optional at the TLS layer (login needs none); every endpoint that
//! needs one checks it on every request.

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use mcpgate_auth::api::ConnInfo;
use mcpgate_pki::tls::{ALPN_HTTP1, ALPN_MCP};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ALPN protocols the proxy offers, in preference order.
pub const ALPN: &[&[u8]] = &[ALPN_MCP, ALPN_HTTP1];

/// Accepts connections until the listener fails; each connection runs in its own task.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, api: axum::Router) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, api) = (acceptor.clone(), api.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, addr, api).await {
                tracing::debug!(%addr, error = %e, "connection ended");
            }
        });
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    api: axum::Router,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await??;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer = session
        .peer_certificates()
        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>()));
    let conn = ConnInfo { peer, addr };
    match alpn.as_deref() {
        Some(ALPN_MCP) => {
            // The MCP access path is not served by this build yet: close cleanly.
            tracing::info!(%addr, "MCP stream refused: the MCP access path is not available yet");
            Ok(())
        }
        _ => {
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(conn.clone());
                    let mut api = api.clone();
                    async move { api.call(req).await }
                },
            );
            http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), service)
                .await?;
            Ok(())
        }
    }
}

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

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use mcpgate_types::IdentityKind;
use mcpgate_wire::{Hello, HelloReply, OpenMeta};

pub mod admission;
pub mod apps;
pub mod tunnels;
use mcpgate_auth::api::ConnInfo;
use mcpgate_pki::tls::{ALPN_HTTP1, ALPN_MCP, ALPN_TUNNEL};
pub use tunnels::{LocalAgent, LocalOpen, Tunnels};

/// How long the agent of this process may take to end a session itself once it lost its
/// standing (answering and auditing what waits) before the session is dropped.
const CUT_GRACE: Duration = Duration::from_secs(3);

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ALPN protocols the proxy offers, in preference order.
pub const ALPN: &[&[u8]] = &[ALPN_MCP, ALPN_TUNNEL, ALPN_HTTP1];

/// Where the proxy sends what it accepts.
#[derive(Clone)]
pub struct Routes {
    /// The HTTPS API.
    pub api: axum::Router,
    /// The agents connected through their tunnels.
    pub tunnels: Arc<Tunnels>,
    /// The auth service, for the cluster's apps.
    pub auth: Arc<mcpgate_auth::AuthService>,
    /// The cluster name, to check client certificates.
    pub cluster: String,
    pub clock: Arc<dyn mcpgate_types::Clock>,
}

/// Accepts connections until the listener fails; each connection runs in its own task.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, routes: Routes) {
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
        let (acceptor, routes) = (acceptor.clone(), routes.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, addr, routes).await {
                tracing::debug!(%addr, error = %e, "connection ended");
            }
        });
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    routes: Routes,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Someone typing http:// (a browser, curl): told in words instead of a TLS alert.
    let mut first = [0u8; 1];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await??;
    if first[0].is_ascii_uppercase() {
        let mut tcp = tcp;
        let body = "mcpgate speaks HTTPS on this port: use https:// (and the cluster's CA)\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut tcp, answer.as_bytes()).await?;
        return Ok(());
    }
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await??;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer = session
        .peer_certificates()
        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>()));
    let conn = ConnInfo { peer, addr };
    match alpn.as_deref() {
        Some(ALPN_MCP) => mcp(tls, conn, routes).await,
        Some(ALPN_TUNNEL) => {
            // Only hosts signed by the host CA may offer apps; the tunnels check that the
            // certificate was issued to a registered agent in good standing.
            let certs = conn.peer.as_deref().cloned().unwrap_or_default();
            match mcpgate_pki::tls::peer_identity(Some(&certs), &routes.cluster, routes.clock.now())
            {
                Ok(info) if info.claims.kind == IdentityKind::Host => {
                    routes
                        .tunnels
                        .accept(tls, info.claims, addr, info.not_after, routes.clock.clone())
                        .await;
                }
                _ => tracing::warn!(%addr, "tunnel refused: not an agent of this cluster"),
            }
            Ok(())
        }
        _ => {
            let api = routes.api;
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

/// An MCP stream: read the hello, check the client certificate now, open a stream on the
/// tunnel of an agent serving the app, then copy both ways. The agent checks the certificate
/// again, and every message.
///
/// Each direction is its own future: a client that stops reading stalls only the copy to it,
/// and through the stream's HTTP/2 window only its own session on the agent — never the
/// tunnel's other streams.
async fn mcp<S>(
    stream: S,
    conn: ConnInfo,
    routes: Routes,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, mut write) = tokio::io::split(stream);
    // The session's only read buffer (the agent reads from it): TLS records are at most
    // 16 KiB, most MCP messages far smaller, and every open session holds one.
    let mut reader = BufReader::with_capacity(4 << 10, read);
    let mut line = Vec::new();
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let n = (&mut reader)
            .take(4096)
            .read_until(b'\n', &mut line)
            .await?;
        Ok::<_, std::io::Error>(serde_json::from_slice::<Hello>(&line[..n]).ok())
    })
    .await;
    let hello = match hello {
        Ok(Ok(Some(h))) => h,
        _ => {
            write
                .write_all(&HelloReply::line(Some(
                    "expected {\"app\": NAME} as the first line".into(),
                )))
                .await?;
            return Ok(());
        }
    };
    let certs = conn.peer.as_deref().cloned().unwrap_or_default();
    let who =
        match mcpgate_pki::tls::peer_identity(Some(&certs), &routes.cluster, routes.clock.now()) {
            Ok(info) if matches!(info.claims.kind, IdentityKind::User | IdentityKind::Bot) => info,
            Ok(_) => {
                let e = "only user and bot certificates may open MCP sessions";
                write
                    .write_all(&HelloReply::line(Some(format!("access denied: {e}"))))
                    .await?;
                return Ok(());
            }
            Err(e) => {
                write
                    .write_all(&HelloReply::line(Some(format!("access denied: {e}"))))
                    .await?;
                return Ok(());
            }
        };
    let cluster_app = routes.auth.all_apps().await.ok().and_then(|apps| {
        apps.into_iter()
            .find(|a| a.metadata.name.as_str() == hello.app)
    });
    let not_found = |app: &str| format!("app {app:?} not found: no agent serves it");
    let Some(tunnel) = routes.tunnels.pick(&hello.app, cluster_app.as_ref()) else {
        write
            .write_all(&HelloReply::line(Some(not_found(&hello.app))))
            .await?;
        return Ok(());
    };
    // A lock or removal reaches routing at once, not only at the tunnel's next check (and
    // one found after this check ends a session handed over in memory).
    let local = routes.tunnels.local(&tunnel).map(|agent| {
        let cut = || routes.tunnels.agent_cut(&tunnel.agent);
        (agent, cut(), cut())
    });
    let standing = routes.tunnels.standing(&tunnel).await;
    if let Err(why) = standing {
        tracing::warn!(agent = %tunnel.agent, "not routing to it: {why}");
        write
            .write_all(&HelloReply::line(Some(not_found(&hello.app))))
            .await?;
        return Ok(());
    }
    // The session is recorded as routed to this agent before it opens: the agent may
    // ship events of this session and no other (fail closed if it cannot be recorded).
    let session = mcpgate_types::audit::random_id();
    // The app's URI: a cluster app's as registered, an agent's own as it announced it (the
    // audience of the caller's assertions in this session).
    let uri = cluster_app
        .as_ref()
        .map(|a| a.spec.uri.clone())
        .or_else(|| Tunnels::announced_uri(&tunnel, &hello.app));
    if let Err(e) = routes
        .auth
        .open_session(&session, &tunnel.agent, &who, &hello.app, uri)
        .await
    {
        tracing::error!(error = %e, "cannot record a session");
        write
            .write_all(&HelloReply::line(Some(
                "the audit log is unavailable: the session was not opened".into(),
            )))
            .await?;
        return Ok(());
    }
    if let Some((local, agent_cut, proxy_cut)) = local {
        // The agent of this process: the session is handed to it in memory. It ends the
        // session itself when the agent loses its standing (told, answered, audited); one
        // that cannot (not yet moving messages) is dropped after a grace period.
        let _recording = routes.tunnels.local_session();
        if let Err(e) = accept(&mut write).await {
            closed(&routes, &session).await;
            return Err(e.into());
        }
        let open = LocalOpen {
            app: hello.app,
            addr: conn.addr,
            certs,
            session: session.clone(),
            cut: agent_cut,
        };
        let mut unfinished = None;
        {
            let serve = local.serve(open, &mut reader, &mut write);
            tokio::pin!(serve);
            tokio::select! {
                _ = &mut serve => {}
                why = proxy_cut => {
                    if tokio::time::timeout(CUT_GRACE, &mut serve).await.is_err() {
                        unfinished = Some(why);
                    }
                }
            }
        }
        return end(unfinished, write, &routes, &session).await;
    }
    let meta = OpenMeta {
        app: hello.app,
        addr: conn.addr,
        certs: mcpgate_wire::encode_certs(&certs),
        session: Some(session.clone()),
    };
    let (mut from_agent, mut to_agent) = match tunnel.open(&meta).await {
        Ok(stream) => stream,
        Err(e) => {
            // The agent's tunnel is going away as we speak.
            tracing::debug!(agent = %tunnel.agent, error = %e, "cannot open a tunnel stream");
            let told = write
                .write_all(&HelloReply::line(Some(not_found(&meta.app))))
                .await;
            closed(&routes, &session).await;
            return told.map_err(Into::into);
        }
    };
    if let Err(e) = accept(&mut write).await {
        closed(&routes, &session).await;
        return Err(e.into());
    }
    let up = async {
        let _ = tokio::io::copy_buf(&mut reader, &mut to_agent).await;
        let _ = to_agent.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy_buf(&mut from_agent, &mut write).await;
    };
    {
        tokio::pin!(up, down);
        tokio::select! {
            // The agent ended the session: nothing more to carry from the client.
            _ = &mut down => {}
            // The client finished sending: its answers may still be coming.
            _ = &mut up => down.await,
        }
    }
    end(tunnel.cut_reason(), write, &routes, &session).await
}

/// Opens an MCP session in memory for a caller the proxy authenticated itself (an OAuth
/// client at `/mcp/apps/NAME`): `certs` is the chain the session presents, `addr` the
/// client's address. The stream speaks what a bridge's TLS connection does (the hello
/// line, its answer, then MCP lines), and the session is routed and checked the same way.
pub fn open_in_memory(
    routes: &Routes,
    certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    addr: SocketAddr,
) -> tokio::io::DuplexStream {
    // Each direction holds at most this much before the writer waits: a client that stops
    // reading stalls its own session only.
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let conn = ConnInfo {
        peer: Some(Arc::new(certs)),
        addr,
    };
    let routes = routes.clone();
    tokio::spawn(async move {
        if let Err(e) = mcp(theirs, conn, routes).await {
            tracing::debug!(%addr, error = %e, "in-memory session ended");
        }
    });
    ours
}

/// Ends a session: a client whose agent lost its standing (`cut`, when the agent did not
/// say so itself) hears why, its stream is closed, and the session's end is recorded.
async fn end<W: AsyncWrite + Unpin>(
    cut: Option<String>,
    mut write: W,
    routes: &Routes,
    session: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // A tunnel the proxy cut (a lock, a removal): the client hears why.
    if let Some(why) = cut {
        let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "error", "logger": "mcpgate", "data": format!("the session was ended: {why}")}});
        let _ = write.write_all(format!("{note}\n").as_bytes()).await;
    }
    // Close the client's stream cleanly (TLS close_notify): the session is over, and its
    // agent gets no more assertions for it.
    let _ = write.shutdown().await;
    closed(routes, session).await;
    Ok(())
}

/// Tells the client its session is open.
async fn accept<W: AsyncWrite + Unpin>(write: &mut W) -> std::io::Result<()> {
    write.write_all(&HelloReply::line(None)).await?;
    write.flush().await
}

/// Records the end of a session whose opening was recorded, however it ended (its agent
/// gets no more assertions for it, its leases under limits go).
async fn closed(routes: &Routes, session: &str) {
    if let Err(e) = routes.auth.close_session(session).await {
        tracing::warn!(error = %e, "cannot record a session's end");
    }
}

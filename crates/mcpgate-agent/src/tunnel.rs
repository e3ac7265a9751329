//! The agent's shell over the tunnel protocol ([`mcpgate_wire::tunnel::agent`]): dial OUT to
//! the proxy (so the agent works behind NAT) over mTLS with the host certificate (ALPN
//! `mcpgate-tunnel/2`), serve the HTTP/2 streams the proxy opens, announce the apps.
//!
//! Each session stream is handed to [`Agent::serve`] as it is: its request body is the
//! client's bytes, its response body the answers, with HTTP/2 flow control per stream.

use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;

use mcpgate_wire::tunnel::agent::{self, Announcer, Incoming};
use mcpgate_wire::{Announce, decode_certs};

use crate::{Agent, ClientConn};

/// How often apps are looked at again even if nothing changed here (changes made elsewhere).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

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
        let mut listener = agent::handshake(stream).await.map_err(|e| e.to_string())?;
        let mut control: Option<tokio::task::JoinHandle<()>> = None;
        let result = loop {
            let incoming = tokio::select! {
                // The certificate is about to expire: reconnect with a fresh one.
                _ = tokio::time::sleep_until(redial_at) => break Ok(()),
                incoming = listener.next() => incoming,
            };
            match incoming {
                Err(e) => break Err(e.to_string()),
                Ok(None) => break Ok(()),
                Ok(Some(Incoming::Announcer(to))) => {
                    tracing::info!(proxy = %dial.proxy, "tunnel to the proxy is up");
                    if let Some(old) =
                        control.replace(tokio::spawn(self.clone().announce(name.to_string(), to)))
                    {
                        old.abort();
                    }
                }
                Ok(Some(Incoming::Session(s))) => {
                    let conn = ClientConn {
                        // Unreadable certificates verify as none: the session refuses them.
                        certs: decode_certs(&s.meta.certs).unwrap_or_default(),
                        addr: s.meta.addr,
                        app: s.meta.app,
                        session: s.meta.session,
                    };
                    let agent = self.clone();
                    tokio::spawn(async move { agent.serve(conn, s.reader, s.writer).await });
                }
            }
        };
        if let Some(control) = control {
            control.abort();
        }
        // Dropping the connection ends every stream: sessions whose tunnel is gone see their
        // client leave and stop their upstreams.
        drop(listener);
        result
    }

    /// Sends the apps served now on the control stream, then again whenever they change:
    /// looked at when roles or apps change here (the epoch), and every [`ANNOUNCE_EVERY`]
    /// in any case (changes made elsewhere).
    async fn announce(self: Arc<Self>, name: String, mut to: Announcer) {
        let now = |agent: Arc<Agent>, name: String| async move {
            let apps = agent.app_list().await;
            let mut announce = Announce {
                agent: name,
                tools: agent.catalog.of(&apps),
                apps,
                selectors: agent.selectors().to_vec(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            // What the agent serves must always get through: the tools only if they fit.
            let size = serde_json::to_vec(&announce).map_or(usize::MAX, |v| v.len());
            if size > mcpgate_wire::tunnel::MAX_ANNOUNCE / 2 {
                tracing::warn!(
                    size,
                    "the tool catalog is too large to announce; mcp ls will not list tools"
                );
                announce.tools.clear();
            }
            announce
        };
        let mut announced = now(self.clone(), name.clone()).await;
        self.clone().survey(&announced.apps);
        if to.send(&announced).await.is_err() {
            return;
        }
        let mut epoch = self.cluster.epoch();
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now_epoch = self.cluster.epoch();
            if now_epoch == epoch && last.elapsed() < ANNOUNCE_EVERY {
                continue;
            }
            epoch = now_epoch;
            last = tokio::time::Instant::now();
            let current = now(self.clone(), name.clone()).await;
            self.clone().survey(&current.apps);
            if current != announced {
                announced = current;
                if to.send(&announced).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Lists the tools of each app no session has listed yet, once per app and agent, in
    /// the background: the next announcement carries them.
    fn survey(self: Arc<Self>, apps: &[mcpgate_types::resource::App]) {
        for app in apps {
            let name = app.metadata.name.to_string();
            if !self.catalog.needs_survey(&name) {
                continue;
            }
            let (agent, app) = (self.clone(), app.clone());
            tokio::spawn(async move {
                let Some(tools) = crate::catalog::survey(&app).await else {
                    return;
                };
                // What the server offers is pinned (or held) now, and the catalog shows
                // only what the pins let through.
                let strict = app.spec.pin == mcpgate_types::resource::PinMode::Strict;
                match agent.cluster.tools_seen(&name, strict, tools.clone()).await {
                    Ok(pins) => {
                        let book = crate::pins::PinBook::new(&name, pins, strict);
                        agent.catalog.offer(&name, &book.admitted(&tools));
                    }
                    Err(e) => {
                        tracing::warn!(app = %name, error = %e, "cannot report the tools the server offers");
                    }
                }
            });
        }
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

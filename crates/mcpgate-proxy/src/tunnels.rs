//! The proxy's side of agent tunnels: which agents are connected, which apps each serves,
//! and opening a stream on one for a client session. The protocol (HTTP/2, the proxy as
//! its client) is [`mcpgate_wire::tunnel::proxy`].

use mcpgate_types::resource::App;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

use mcpgate_wire::tunnel::proxy::{self, Opener};
use mcpgate_wire::tunnel::{DEAD_AFTER, PING_EVERY};
use mcpgate_wire::{Announce, OpenMeta, RecvReader, SendWriter, WireError};

/// How often a tunnel's agent certificate is checked for expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// One connected agent.
pub struct Tunnel {
    pub agent: String,
    apps: Mutex<Vec<App>>,
    selectors: Mutex<Vec<std::collections::BTreeMap<String, String>>>,
    opener: Opener,
}

/// Every connected agent.
#[derive(Default)]
pub struct Tunnels {
    list: Mutex<Vec<Arc<Tunnel>>>,
    turn: AtomicUsize,
}

impl Tunnels {
    /// An agent serving `app` — one that announced it, or, for a cluster app (`cluster_app`)
    /// created since the last announcement, one whose selectors match it — taking turns.
    pub fn pick(&self, app: &str, cluster_app: Option<&App>) -> Option<Arc<Tunnel>> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let mut serving: Vec<&Arc<Tunnel>> = list.iter().filter(|t| t.serves(app)).collect();
        if serving.is_empty()
            && let Some(app) = cluster_app
        {
            serving = list.iter().filter(|t| t.selects(app)).collect();
        }
        if serving.is_empty() {
            return None;
        }
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % serving.len();
        Some(serving[i].clone())
    }

    /// Names of the connected agents and their apps.
    pub fn agents(&self) -> Vec<(String, Vec<String>)> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .map(|t| {
                let mut apps: Vec<String> = t
                    .apps
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|a| a.metadata.name.to_string())
                    .collect();
                apps.sort();
                (t.agent.clone(), apps)
            })
            .collect()
    }

    /// Whether some connected agent's selectors match this cluster app.
    pub fn selects(&self, app: &App) -> bool {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|t| t.selects(app))
    }

    /// Every app some connected agent serves (one entry per name).
    pub fn apps(&self) -> Vec<App> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<App> = Vec::new();
        for t in list.iter() {
            for app in t.apps.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if !out.iter().any(|a| a.metadata.name == app.metadata.name) {
                    out.push(app.clone());
                }
            }
        }
        out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        out
    }

    /// Serves one agent connection (already authenticated as a host) until it drops, its
    /// agent stops answering pings, or its certificate expires.
    pub async fn accept<S>(
        self: Arc<Self>,
        stream: S,
        cert_expires: std::time::SystemTime,
        clock: Arc<dyn mcpgate_types::Clock>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (opener, connection) = match proxy::handshake(stream).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "tunnel handshake failed");
                return;
            }
        };
        // The connection runs on its own task (it moves every stream's bytes); ending it
        // ends every session of this agent.
        let mut connection = tokio::spawn(connection);
        let _stop = AbortOnDrop(connection.abort_handle());
        // Nothing is routed to an agent before it has said what it serves.
        let first = tokio::time::timeout(DEAD_AFTER, async {
            let mut announcements = opener.announcements().await?;
            let first = announcements.next().await?.ok_or(WireError::Closed)?;
            Ok::<_, WireError>((announcements, first))
        });
        let (mut announcements, first) = tokio::select! {
            first = first => match first {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "tunnel refused: no announcement");
                    return;
                }
                Err(_) => {
                    tracing::warn!("tunnel refused: no announcement within {DEAD_AFTER:?}");
                    return;
                }
            },
            _ = &mut connection => return,
        };
        let tunnel = Arc::new(Tunnel {
            agent: first.agent.clone(),
            apps: Mutex::new(first.apps),
            selectors: Mutex::new(first.selectors),
            opener,
        });
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tunnel.clone());
        tracing::info!(agent = %tunnel.agent, "agent connected");
        let mut expiry = tokio::time::interval(EXPIRY_CHECK.min(PING_EVERY));
        loop {
            tokio::select! {
                ended = &mut connection => {
                    match ended {
                        Ok(Err(e)) => tracing::warn!(agent = %tunnel.agent, error = %e, "agent tunnel failed"),
                        _ => tracing::debug!(agent = %tunnel.agent, "agent tunnel closed"),
                    }
                    break;
                }
                next = announcements.next() => match next {
                    Ok(Some(a)) => tunnel.update(a),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(agent = %tunnel.agent, error = %e, "bad announcement");
                        break;
                    }
                },
                _ = expiry.tick() => {
                    // An agent's certificate is valid for its tunnel only until it expires.
                    if clock.now() >= cert_expires {
                        tracing::warn!(agent = %tunnel.agent, "agent certificate expired: closing its tunnel");
                        break;
                    }
                }
            }
        }
        // The agent is gone: stop routing to it, and end its sessions (dropping the
        // connection ends every stream).
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t| !Arc::ptr_eq(t, &tunnel));
        tracing::warn!(agent = %tunnel.agent, "agent disconnected");
    }
}

/// Ends a tunnel's connection task when its owner returns (or is dropped).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Tunnel {
    fn selects(&self, app: &App) -> bool {
        mcpgate_wire::selects(
            &self.selectors.lock().unwrap_or_else(|p| p.into_inner()),
            app,
        )
    }

    fn serves(&self, app: &str) -> bool {
        self.apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|a| a.metadata.name.as_str() == app)
    }

    fn update(&self, a: Announce) {
        *self.apps.lock().unwrap_or_else(|p| p.into_inner()) = a.apps;
        *self.selectors.lock().unwrap_or_else(|p| p.into_inner()) = a.selectors;
    }

    /// Opens a stream for a client session: the writer takes what the client sends, the
    /// reader gives what the agent answers, each with its own flow control.
    pub async fn open(&self, meta: &OpenMeta) -> Result<(RecvReader, SendWriter), WireError> {
        self.opener.open(meta).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on failure by design

    use super::*;
    use mcpgate_types::FakeClock;
    use mcpgate_wire::tunnel::agent::{self, Incoming};
    use std::time::SystemTime;

    #[tokio::test]
    async fn a_tunnel_lives_only_as_long_as_its_agent_certificate() {
        let clock = FakeClock::new(SystemTime::now());
        let tunnels = Arc::new(Tunnels::default());
        let (agent_io, proxy_io) = tokio::io::duplex(1 << 16);
        let expires = SystemTime::now() + Duration::from_secs(3600);
        tokio::spawn(
            tunnels
                .clone()
                .accept(proxy_io, expires, Arc::new(clock.clone())),
        );
        let mut listener = agent::handshake(agent_io).await.unwrap();
        let Some(Incoming::Announcer(mut to)) = listener.next().await.unwrap() else {
            panic!("the proxy opens the control stream first");
        };
        let announce = Announce {
            agent: "edge".into(),
            apps: vec![],
            selectors: vec![],
        };
        tokio::spawn(async move {
            to.send(&announce).await.unwrap();
            std::future::pending::<()>().await;
        });
        // Drive the agent's side until the proxy ends the tunnel.
        let agent = tokio::spawn(async move { listener.next().await.map(|n| n.is_none()) });
        for _ in 0..100 {
            if !tunnels.agents().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tunnels.agents(), [("edge".to_string(), vec![])]);

        // Past its certificate's expiry the proxy closes the tunnel and stops routing to it.
        clock.advance(Duration::from_secs(3601));
        let ended = tokio::time::timeout(Duration::from_secs(5), agent)
            .await
            .expect("the proxy closes the tunnel")
            .unwrap();
        assert!(
            !matches!(ended, Ok(false)),
            "no stream opens after the expiry"
        );
        assert!(tunnels.agents().is_empty());
    }
}

//! The proxy's side of agent tunnels: which agents are connected, which apps each serves,
//! and the streams of client sessions multiplexed over each.

use std::collections::HashMap;

use mcpgate_types::resource::App;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use mcpgate_agent::tunnel::{
    self, ANNOUNCE, Announce, CLOSE, DATA, DEAD_AFTER, OPEN, OpenMeta, PING, PONG,
};

type ClientWriter = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Unpin + Send>>>;
type TunnelWriter = tokio::sync::Mutex<Box<dyn AsyncWrite + Unpin + Send>>;

/// One connected agent.
pub struct Tunnel {
    pub agent: String,
    apps: Mutex<Vec<App>>,
    selectors: Mutex<Vec<std::collections::BTreeMap<String, String>>>,
    writer: TunnelWriter,
    streams: Mutex<HashMap<u32, ClientWriter>>,
    next: AtomicU32,
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

    /// Serves one agent connection (already authenticated as a host) until it drops.
    pub async fn accept<S>(
        self: Arc<Self>,
        stream: S,
        cert_expires: std::time::SystemTime,
        clock: Arc<dyn mcpgate_types::Clock>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut reader, writer): (ReadHalf<S>, WriteHalf<S>) = tokio::io::split(stream);
        let first = match tokio::time::timeout(DEAD_AFTER, tunnel::read_frame(&mut reader)).await {
            Ok(Ok(Some(f))) if f.kind == ANNOUNCE => f,
            _ => return,
        };
        let Ok(announce) = serde_json::from_slice::<Announce>(&first.payload) else {
            return;
        };
        let tunnel = Arc::new(Tunnel {
            agent: announce.agent.clone(),
            apps: Mutex::new(announce.apps),
            selectors: Mutex::new(announce.selectors),
            writer: tokio::sync::Mutex::new(Box::new(writer)),
            streams: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
        });
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tunnel.clone());
        tracing::info!(agent = %tunnel.agent, "agent connected");
        loop {
            let frame =
                match tokio::time::timeout(DEAD_AFTER, tunnel::read_frame(&mut reader)).await {
                    Ok(Ok(Some(f))) => f,
                    _ => break,
                };
            // An agent's certificate is valid for its tunnel only until it expires (the agent
            // pings every 2 s, so this is checked at least that often).
            if clock.now() >= cert_expires {
                tracing::warn!(agent = %tunnel.agent, "agent certificate expired: closing its tunnel");
                break;
            }
            match frame.kind {
                DATA => {
                    let w = tunnel.stream(frame.stream);
                    if let Some(w) = w
                        && w.lock().await.write_all(&frame.payload).await.is_err()
                    {
                        tunnel.forget(frame.stream);
                    }
                }
                CLOSE => {
                    if let Some(w) = tunnel.forget(frame.stream) {
                        let _ = w.lock().await.shutdown().await;
                    }
                }
                ANNOUNCE => {
                    if let Ok(a) = serde_json::from_slice::<Announce>(&frame.payload) {
                        *tunnel.apps.lock().unwrap_or_else(|p| p.into_inner()) = a.apps;
                        *tunnel.selectors.lock().unwrap_or_else(|p| p.into_inner()) = a.selectors;
                    }
                }
                PING if tunnel::send(&tunnel.writer, 0, PONG, &[]).await.is_err() => break,
                _ => {}
            }
        }
        // The agent is gone: stop routing to it and end its sessions.
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t| !Arc::ptr_eq(t, &tunnel));
        let streams: Vec<ClientWriter> = tunnel
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in streams {
            let _ = w.lock().await.shutdown().await;
        }
        tracing::warn!(agent = %tunnel.agent, "agent disconnected");
    }
}

impl Tunnel {
    fn selects(&self, app: &App) -> bool {
        mcpgate_agent::selects(
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

    fn stream(&self, id: u32) -> Option<ClientWriter> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn forget(&self, id: u32) -> Option<ClientWriter> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    /// Opens a stream for a client session; what the agent sends goes to `to_client`.
    pub async fn open(&self, meta: &OpenMeta, to_client: ClientWriter) -> std::io::Result<u32> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, to_client);
        let payload = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
        if let Err(e) = tunnel::send(&self.writer, id, OPEN, &payload).await {
            self.forget(id);
            return Err(e);
        }
        Ok(id)
    }

    /// Copies the client's bytes to the agent until the client closes, then CLOSE.
    pub async fn pump<R: AsyncRead + Unpin>(&self, id: u32, from_client: R) {
        tunnel::pump(from_client, WriterRef(&self.writer), id).await;
    }
}

/// Lets `tunnel::pump` share the tunnel's writer without another `Arc`.
struct WriterRef<'a>(&'a TunnelWriter);

impl<'a> std::ops::Deref for WriterRef<'a> {
    type Target = TunnelWriter;
    fn deref(&self) -> &TunnelWriter {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgate_agent::tunnel::{encode, read_frame};
    use mcpgate_types::FakeClock;
    use std::time::{Duration, SystemTime};
    use tokio::io::AsyncWriteExt;

    async fn agent_side(
        tunnels: Arc<Tunnels>,
        expires_in: Duration,
        clock: FakeClock,
    ) -> tokio::io::DuplexStream {
        let (mut agent, proxy) = tokio::io::duplex(1 << 16);
        let expires = SystemTime::now() + expires_in;
        tokio::spawn(tunnels.accept(proxy, expires, Arc::new(clock)));
        let announce = Announce {
            agent: "edge".into(),
            apps: vec![],
            selectors: vec![],
        };
        agent
            .write_all(&encode(
                0,
                ANNOUNCE,
                &serde_json::to_vec(&announce).unwrap(),
            ))
            .await
            .unwrap();
        agent
    }

    #[tokio::test]
    async fn a_tunnel_lives_only_as_long_as_its_agent_certificate() {
        let clock = FakeClock::new(SystemTime::now());
        let tunnels = Arc::new(Tunnels::default());
        let mut agent = agent_side(tunnels.clone(), Duration::from_secs(3600), clock.clone()).await;
        agent.write_all(&encode(0, PING, &[])).await.unwrap();
        let pong = read_frame(&mut agent).await.unwrap().unwrap();
        assert_eq!(pong.kind, PONG);
        assert_eq!(tunnels.agents().len(), 1);

        // Past its certificate's expiry the proxy closes the tunnel and stops routing to it.
        clock.advance(Duration::from_secs(3601));
        agent.write_all(&encode(0, PING, &[])).await.unwrap();
        assert!(
            read_frame(&mut agent).await.unwrap().is_none(),
            "closed, no pong"
        );
        for _ in 0..100 {
            if tunnels.agents().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(tunnels.agents().is_empty());
    }
}

//! The proxy's side of agent tunnels: which agents are connected, which apps each may and
//! does serve, and opening a stream on one for a client session. The protocol (HTTP/2, the
//! proxy as its client) is [`mcpgate_wire::tunnel::proxy`].
//!
//! An agent is who its certificate says, never what it announces: its name comes from the
//! certificate, and of the apps it announces only those its registered scope admits are
//! routed to it (the others are audited as `agent.announce.denied`). Its standing —
//! registered, newest certificate generation, not locked — is checked when the tunnel opens
//! and every second after; a tunnel that loses it is cut, and its sessions' clients are told
//! why.

use mcpgate_types::Claims;
use mcpgate_types::resource::{AgentScope, App};
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

use mcpgate_wire::tunnel::proxy::{self, Opener};
use mcpgate_wire::tunnel::{DEAD_AFTER, PING_EVERY};
use mcpgate_wire::{Announce, OpenMeta, RecvReader, SendWriter, WireError};

/// How often a tunnel's agent is checked: certificate expiry, registration, locks.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the proxy asks the cluster about agents (the auth service; a fake in tests).
pub trait Admission: Send + Sync {
    /// The scope of the agent with these certificate claims if it may hold a tunnel now
    /// (issued to an agent, registered, newest generation — or the one before for a tunnel
    /// already `established` — not locked), else why not.
    fn standing<'a>(
        &'a self,
        agent: &'a Claims,
        established: bool,
    ) -> BoxFuture<'a, Result<AgentScope, String>>;
    /// The cluster's apps (`admin create`), whose labels an agent's scope is matched with.
    fn cluster_apps(&self) -> BoxFuture<'_, Vec<App>>;
    /// Records that `agent` announced `app` outside its scope.
    fn denied<'a>(&'a self, agent: &'a str, app: &'a str, why: &'a str) -> BoxFuture<'a, ()>;
}

/// One connected agent.
pub struct Tunnel {
    /// The agent's name, from its certificate.
    pub agent: String,
    claims: Claims,
    addr: SocketAddr,
    version: Mutex<String>,
    scope: Mutex<AgentScope>,
    /// The announced apps its scope admits: only these are routed to it.
    apps: Mutex<Vec<App>>,
    /// The tools their servers offer, as the agent announced them (unfiltered).
    tools: Mutex<std::collections::BTreeMap<String, Vec<serde_json::Value>>>,
    selectors: Mutex<Vec<std::collections::BTreeMap<String, String>>>,
    opener: Opener,
    /// Set (before the connection ends) when the proxy cuts the tunnel, with the reason.
    cut: tokio::sync::watch::Sender<Option<String>>,
}

/// Every connected agent.
pub struct Tunnels {
    list: Mutex<Vec<Arc<Tunnel>>>,
    turn: AtomicUsize,
    admission: Arc<dyn Admission>,
    /// The agent running in this process (`mcpgate start`), by its name.
    local: std::sync::OnceLock<(String, Arc<dyn LocalAgent>)>,
    /// Each agent's loss of standing (a lock, a removal), with its reason, whichever of its
    /// tunnels saw it: sessions handed over in memory outlive the tunnel they were routed
    /// on (a reconnection), not the agent's standing.
    agent_cuts:
        Mutex<std::collections::HashMap<String, tokio::sync::watch::Sender<Option<String>>>>,
    /// Sessions handed to the local agent whose end is not recorded yet.
    local_sessions: tokio::sync::watch::Sender<usize>,
}

/// A session handed to the local agent, until its end is recorded.
pub struct LocalSession<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for LocalSession<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The agent of this process. It holds a tunnel like any other agent (its standing, scope
/// and announcements are checked the same way), but the sessions routed to its tunnel are
/// handed to it in memory instead of over an HTTP/2 stream on a loopback TLS connection:
/// the same checks, two fewer hops for every message.
pub trait LocalAgent: Send + Sync {
    /// Serves one client session until it ends; dropping the future ends it.
    fn serve<'a>(
        &'a self,
        open: LocalOpen,
        reader: &'a mut (dyn tokio::io::AsyncBufRead + Unpin + Send),
        writer: &'a mut (dyn AsyncWrite + Unpin + Send),
    ) -> BoxFuture<'a, ()>;
}

/// What the proxy knows of a session it hands to the agent of this process: what the
/// stream's [`OpenMeta`] carries to an agent elsewhere.
pub struct LocalOpen {
    pub app: String,
    pub addr: SocketAddr,
    /// The client's certificate chain, for the agent to verify again.
    pub certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub session: String,
    /// Resolves, with the reason, when the agent loses its standing: the session ends as a
    /// lock ends it.
    pub cut: BoxFuture<'static, String>,
}

impl Tunnels {
    pub fn new(admission: Arc<dyn Admission>) -> Tunnels {
        Tunnels {
            list: Mutex::new(Vec::new()),
            turn: AtomicUsize::new(0),
            admission,
            local: std::sync::OnceLock::new(),
            agent_cuts: Mutex::new(Default::default()),
            local_sessions: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Counts a session handed to the local agent until the guard is dropped.
    pub fn local_session(&self) -> LocalSession<'_> {
        self.local_sessions.send_modify(|n| *n += 1);
        LocalSession(&self.local_sessions)
    }

    /// Waits (at most `within`) until every session handed to the local agent has its end
    /// recorded: a stopping daemon, once its agent has ended them.
    pub async fn local_sessions_recorded(&self, within: Duration) {
        let mut n = self.local_sessions.subscribe();
        let _ = tokio::time::timeout(within, n.wait_for(|n| *n == 0)).await;
    }

    fn agent_cut_sender(&self, agent: &str) -> tokio::sync::watch::Sender<Option<String>> {
        self.agent_cuts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(None).0)
            .clone()
    }

    /// Resolves, with the reason, the next time `agent` is found out of standing (by any
    /// of its tunnels, or when one is refused). Take it before checking the standing.
    pub fn agent_cut(&self, agent: &str) -> BoxFuture<'static, String> {
        let mut rx = self.agent_cut_sender(agent).subscribe();
        Box::pin(async move {
            match rx.changed().await {
                Ok(()) => rx.borrow().clone().unwrap_or_default(),
                Err(_) => std::future::pending().await,
            }
        })
    }

    fn cut_agent(&self, agent: &str, why: &str) {
        self.agent_cut_sender(agent)
            .send_replace(Some(why.to_string()));
    }

    /// Names the agent of this process: sessions routed to the tunnel of the agent called
    /// `name` are handed to `agent` directly. Set once.
    pub fn set_local(&self, name: &str, agent: Arc<dyn LocalAgent>) {
        let _ = self.local.set((name.to_string(), agent));
    }

    /// The agent of this process, if `tunnel` is its tunnel.
    pub fn local(&self, tunnel: &Tunnel) -> Option<Arc<dyn LocalAgent>> {
        self.local
            .get()
            .filter(|(name, _)| *name == tunnel.agent)
            .map(|(_, agent)| agent.clone())
    }

    /// An agent serving `app` — one that announced it within its scope, or, for a cluster
    /// app (`cluster_app`) created since the last announcement, one whose selectors match it
    /// and whose scope admits it — taking turns.
    pub fn pick(&self, app: &str, cluster_app: Option<&App>) -> Option<Arc<Tunnel>> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let mut serving: Vec<&Arc<Tunnel>> = list.iter().filter(|t| t.serves(app)).collect();
        if serving.is_empty()
            && let Some(app) = cluster_app
        {
            serving = list
                .iter()
                .filter(|t| t.selects(app) && t.admits(app))
                .collect();
        }
        if serving.is_empty() {
            return None;
        }
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % serving.len();
        Some(serving[i].clone())
    }

    /// The URI of `app` as the agent of `tunnel` announced it (its own, static apps).
    pub fn announced_uri(tunnel: &Tunnel, app: &str) -> Option<String> {
        tunnel
            .apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|a| a.metadata.name.as_str() == app)
            .map(|a| a.spec.uri.clone())
    }

    /// Whether the agent of `tunnel` is in good standing now (asked again, not cached).
    pub async fn standing(&self, tunnel: &Tunnel) -> Result<(), String> {
        self.admission
            .standing(&tunnel.claims, true)
            .await
            .map(|_| ())
    }

    /// The apps the connected agents announced (their own, static apps and the cluster's
    /// they serve), one per name.
    pub fn announced_apps(&self) -> Vec<mcpgate_types::resource::App> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<mcpgate_types::resource::App> = Vec::new();
        for t in list.iter() {
            for a in t.apps.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if !out.iter().any(|o| o.metadata.name == a.metadata.name) {
                    out.push(a.clone());
                }
            }
        }
        out
    }

    /// The connected agents, one entry per agent (however many tunnels it holds).
    pub fn agents(&self) -> Vec<AgentView> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<AgentView> = Vec::new();
        for t in list.iter() {
            let apps: Vec<String> = t
                .apps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|a| a.metadata.name.to_string())
                .collect();
            let version = t.version.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let i = match out.iter().position(|v| v.name == t.agent) {
                Some(i) => i,
                None => {
                    out.push(AgentView {
                        name: t.agent.clone(),
                        ..Default::default()
                    });
                    out.len() - 1
                }
            };
            let view = &mut out[i];
            view.apps.extend(apps);
            view.tunnels += 1;
            view.addrs.insert(t.addr.to_string());
            view.version = version;
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The tools the server of `app` offers, as an agent serving it announced them
    /// (unfiltered: callers see them filtered by their roles); `None` if none knows yet.
    pub fn tools(&self, app: &str) -> Option<Vec<serde_json::Value>> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().find_map(|t| {
            t.tools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(app)
                .cloned()
        })
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

    /// Serves one agent connection (its certificate verified: `claims`, valid until
    /// `cert_expires`) until it drops, its agent stops answering pings, its certificate
    /// expires or it loses its standing (removed, locked, a newer generation issued).
    pub async fn accept<S>(
        self: Arc<Self>,
        stream: S,
        claims: Claims,
        addr: SocketAddr,
        cert_expires: std::time::SystemTime,
        clock: Arc<dyn mcpgate_types::Clock>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let scope = match self.admission.standing(&claims, false).await {
            Ok(scope) => scope,
            Err(why) => {
                tracing::warn!(%addr, "tunnel refused: {why}");
                self.cut_agent(&claims.name, &why);
                return;
            }
        };
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
            agent: claims.name.clone(),
            claims: claims.clone(),
            addr,
            version: Mutex::new(String::new()),
            scope: Mutex::new(scope),
            apps: Mutex::new(Vec::new()),
            tools: Mutex::new(Default::default()),
            selectors: Mutex::new(Vec::new()),
            opener,
            cut: tokio::sync::watch::channel(None).0,
        });
        let mut refused = BTreeSet::new();
        // The last announcement, admitted again every tick: a cluster app relabelled out
        // of the agent's scope (or removed) stops being routed to it within a second.
        let mut last = first.clone();
        self.update(&tunnel, first, &mut refused).await;
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tunnel.clone());
        tracing::info!(agent = %tunnel.agent, %addr, "agent connected");
        // Announcements are read by a task of their own: reading one is not cancel-safe (a
        // half-read message would desynchronise the stream), so it never races the timer.
        let (announced, mut announcements) = {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let reader = tokio::spawn(async move {
                loop {
                    let next = announcements.next().await;
                    let end = !matches!(next, Ok(Some(_)));
                    if tx.send(next).await.is_err() || end {
                        return;
                    }
                }
            });
            (AbortOnDrop(reader.abort_handle()), rx)
        };
        let _reader = announced;
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
                next = announcements.recv() => match next.unwrap_or(Ok(None)) {
                    Ok(Some(a)) => {
                        last = a.clone();
                        self.update(&tunnel, a, &mut refused).await;
                    }
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
                    match self.admission.standing(&claims, true).await {
                        Ok(scope) => {
                            *tunnel.scope.lock().unwrap_or_else(|p| p.into_inner()) = scope;
                            self.update(&tunnel, last.clone(), &mut refused).await;
                        }
                        Err(why) => {
                            tracing::warn!(agent = %tunnel.agent, "closing its tunnel: {why}");
                            // Sessions tell their clients why before the connection ends.
                            self.cut_agent(&tunnel.agent, &why);
                            tunnel.cut.send_replace(Some(why));
                            break;
                        }
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

impl Tunnels {
    /// Takes an announcement: of its apps, only those the agent's scope admits are routed
    /// to it; each other one is audited once per tunnel.
    async fn update(&self, tunnel: &Tunnel, a: Announce, refused: &mut BTreeSet<String>) {
        let scope = tunnel
            .scope
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let cluster = self.admission.cluster_apps().await;
        let mut admitted = Vec::new();
        for app in a.apps {
            let name = app.metadata.name.to_string();
            let cluster_app = cluster
                .iter()
                .find(|c| c.metadata.name == app.metadata.name);
            if scope.admits(&name, cluster_app) {
                admitted.push(app);
            } else if refused.insert(name.clone()) {
                let why = match cluster_app {
                    Some(_) => "the cluster app's labels are outside the agent's scope",
                    None => "the app is not in the agent's scope (another agent may hold it)",
                };
                tracing::warn!(agent = %tunnel.agent, app = %name, "announcement refused: {why}");
                self.admission.denied(&tunnel.agent, &name, why).await;
            }
        }
        let mut tools = a.tools;
        tools.retain(|app, _| admitted.iter().any(|a| a.metadata.name.as_str() == app));
        *tunnel.tools.lock().unwrap_or_else(|p| p.into_inner()) = tools;
        *tunnel.apps.lock().unwrap_or_else(|p| p.into_inner()) = admitted;
        *tunnel.selectors.lock().unwrap_or_else(|p| p.into_inner()) = a.selectors;
        *tunnel.version.lock().unwrap_or_else(|p| p.into_inner()) = a.version;
    }
}

/// A connected agent as `admin status` and `admin get agents` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentView {
    pub name: String,
    /// The apps routed to it.
    pub apps: BTreeSet<String>,
    pub tunnels: usize,
    pub addrs: BTreeSet<String>,
    pub version: String,
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

    /// Whether the agent's scope admits this cluster app.
    fn admits(&self, app: &App) -> bool {
        self.scope
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admits(app.metadata.name.as_str(), Some(app))
    }

    /// Why the tunnel was cut, if the proxy cut it.
    pub fn cut_reason(&self) -> Option<String> {
        self.cut.borrow().clone()
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

    /// Admits every agent, with every app in scope.
    struct Everyone;

    impl Admission for Everyone {
        fn standing<'a>(
            &'a self,
            _: &'a Claims,
            _: bool,
        ) -> BoxFuture<'a, Result<AgentScope, String>> {
            Box::pin(async { Ok(AgentScope::everything()) })
        }
        fn cluster_apps(&self) -> BoxFuture<'_, Vec<App>> {
            Box::pin(async { Vec::new() })
        }
        fn denied<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> BoxFuture<'a, ()> {
            Box::pin(async {})
        }
    }

    /// Refuses every agent, as a lock does.
    struct Locked;

    impl Admission for Locked {
        fn standing<'a>(
            &'a self,
            _: &'a Claims,
            _: bool,
        ) -> BoxFuture<'a, Result<AgentScope, String>> {
            Box::pin(async { Err("the agent is locked: incident 9".to_string()) })
        }
        fn cluster_apps(&self) -> BoxFuture<'_, Vec<App>> {
            Box::pin(async { Vec::new() })
        }
        fn denied<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> BoxFuture<'a, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn an_agent_out_of_standing_ends_what_was_handed_to_it_and_nothing_else() {
        let tunnels = Arc::new(Tunnels::new(Arc::new(Locked)));
        let edge = tunnels.agent_cut("edge");
        let other = tunnels.agent_cut("other");
        // Its new tunnel is refused (the agent reconnecting after a lock).
        let (_agent_io, proxy_io) = tokio::io::duplex(1 << 16);
        tunnels
            .clone()
            .accept(
                proxy_io,
                claims("edge"),
                "127.0.0.1:9".parse().unwrap(),
                SystemTime::now() + Duration::from_secs(3600),
                Arc::new(FakeClock::new(SystemTime::now())),
            )
            .await;
        let why = tokio::time::timeout(Duration::from_secs(5), edge)
            .await
            .expect("the agent's sessions are told");
        assert!(why.contains("incident 9"), "{why}");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other)
                .await
                .is_err(),
            "another agent's sessions go on"
        );
        // A session handed over after that (the agent unlocked again) is not ended by it.
        let later = tunnels.agent_cut("edge");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), later)
                .await
                .is_err()
        );
    }

    fn claims(name: &str) -> Claims {
        Claims {
            name: name.into(),
            kind: mcpgate_types::IdentityKind::Host,
            roles: vec!["agent".into()],
            traits: Default::default(),
            generation: 1,
            cluster: "c".into(),
            oauth_client: None,
        }
    }

    #[tokio::test]
    async fn a_tunnel_lives_only_as_long_as_its_agent_certificate() {
        let clock = FakeClock::new(SystemTime::now());
        let tunnels = Arc::new(Tunnels::new(Arc::new(Everyone)));
        let handed_over = tunnels.agent_cut("edge");
        let (agent_io, proxy_io) = tokio::io::duplex(1 << 16);
        let expires = SystemTime::now() + Duration::from_secs(3600);
        tokio::spawn(tunnels.clone().accept(
            proxy_io,
            claims("edge"),
            "127.0.0.1:9".parse().unwrap(),
            expires,
            Arc::new(clock.clone()),
        ));
        let mut listener = agent::handshake(agent_io).await.unwrap();
        let Some(Incoming::Announcer(mut to)) = listener.next().await.unwrap() else {
            panic!("the proxy opens the control stream first");
        };
        let announce = Announce {
            agent: "it says local".into(),
            apps: vec![],
            selectors: vec![],
            version: "1".into(),
            tools: Default::default(),
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
        let agents = tunnels.agents();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].name, "edge", "the certificate names the agent");
        assert_eq!((agents[0].tunnels, agents[0].version.as_str()), (1, "1"));

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
        // A tunnel that closes is not a loss of standing: sessions handed over in memory
        // go on (the agent reconnects).
        assert!(
            tokio::time::timeout(Duration::from_millis(50), handed_over)
                .await
                .is_err()
        );
    }
}

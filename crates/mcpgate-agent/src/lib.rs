//! The agent: runs next to MCP servers, and is the one place policy is applied.
//!
//! - [`Agent`]: which apps it serves (static ones from its config, dynamic ones from the
//!   cluster whose labels match its selectors).
//! - [`session`]: one client session — re-verify the client certificate, start the upstream,
//!   and move bytes as the gate (`mcpgate_mcp::gate`) decides, auditing every step.
//! - [`journal`]: the audit journal — begin (durable before forwarding), complete, recover
//!   (`interrupted` after a crash), ship (agents on other hosts).
//! - [`cluster`]: what the agent needs from its cluster (roles, apps, locks), implemented by
//!   the binary for the auth service in-process or over the proxy's API.
//! - [`upstream`]: stdio child processes; [`http`]: Streamable HTTP and SSE upstreams as
//!   line streams, with server-side credentials and the caller's identity assertion; [`secrets`]: `${env:..}`/`${file:..}` on this host;
//!   [`redact`]: audit parameters without secrets; [`lines`]: bounded line framing.

pub mod catalog;
pub mod cluster;
pub mod http;
pub mod journal;
pub mod lines;
mod locks;
pub mod pins;
pub mod redact;
pub mod secrets;
pub mod session;
mod shared;
pub mod tunnel;
pub mod upstream;

use rustls::server::danger::ClientCertVerifier;
use std::collections::BTreeMap;
use std::sync::Arc;

use mcpgate_mcp::Limits;
use mcpgate_types::resource::App;

pub use cluster::Cluster;
pub use journal::{Journal, Sink};
pub use session::ClientConn;

/// Agent failures outside a session.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The audit journal failed.
    #[error("audit journal: {0}")]
    Journal(String),
    /// The user CA cannot be used to verify clients.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The cluster (auth service, local or remote) could not answer.
    #[error("{0}")]
    Cluster(String),
}

/// The agent, shared by its sessions.
pub struct Agent {
    /// Its name, as its certificate says: every session event names it.
    pub(crate) name: String,
    pub(crate) cluster: Arc<dyn Cluster>,
    static_apps: Vec<App>,
    selectors: Vec<BTreeMap<String, String>>,
    pub(crate) limits: Limits,
    pub(crate) verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) journal: Arc<Journal>,
    /// The tools each app's server offers, announced to the proxy for `mcp ls`.
    pub(crate) catalog: catalog::Catalog,
    /// This agent's audit redaction key (from the cluster), once known.
    redaction: std::sync::OnceLock<Vec<u8>>,
    /// Compiled policies by roles and traits, shared by the sessions.
    pub(crate) policies: shared::Shared<mcpgate_policy::Policy>,
    /// Tool pins by app, shared by the sessions.
    pub(crate) pin_books: shared::Shared<pins::PinBook>,
    /// The locks in force, read once for all the sessions.
    pub(crate) locks: locks::LockView,
    /// Set once the agent is stopping: its sessions end, and new ones with them.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Sessions being served.
    live: tokio::sync::watch::Sender<usize>,
}

/// A session being served (see [`Agent::serving`]).
pub(crate) struct Serving<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Whether an agent with these `agent.resources` selectors serves a cluster app (the match
/// lives with the tunnel protocol, which the proxy shares).
pub use mcpgate_wire::selects;

impl Agent {
    /// An agent serving `static_apps`, and cluster apps whose labels match a selector.
    pub fn new(
        name: &str,
        cluster: Arc<dyn Cluster>,
        journal: Arc<Journal>,
        static_apps: Vec<App>,
        selectors: Vec<BTreeMap<String, String>>,
        limits: Limits,
    ) -> Result<Arc<Agent>, AgentError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(cluster.user_ca().clone())
            .map_err(|e| AgentError::Tls(e.to_string()))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| AgentError::Tls(e.to_string()))?;
        Ok(Arc::new(Agent {
            name: name.to_string(),
            cluster,
            static_apps,
            selectors,
            limits,
            verifier,
            journal,
            catalog: Default::default(),
            redaction: std::sync::OnceLock::new(),
            policies: Default::default(),
            pin_books: Default::default(),
            locks: Default::default(),
            stopping: tokio::sync::watch::Sender::new(false),
            live: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// Stops serving: every session ends as a lock ends it, saying that the gateway is
    /// stopping (what waits is answered and audited, the server stopped, the end audited),
    /// and so does any that starts meanwhile; waits at most `within` for them, then until
    /// the audit journal has stored what it holds. Returns how many sessions had not ended.
    pub async fn stop(&self, within: std::time::Duration) -> usize {
        self.stopping.send_replace(true);
        let mut live = self.live.subscribe();
        let _ = tokio::time::timeout(within, live.wait_for(|n| *n == 0)).await;
        // What the journal still holds is recovered at the next start if this cannot be.
        if tokio::time::timeout(within, self.journal.flush())
            .await
            .is_ok()
        {
            self.journal.close();
        }
        *self.live.borrow()
    }

    /// Whether the agent is stopping.
    pub(crate) fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// `work`'s output, or `None` once the agent is stopping.
    pub(crate) async fn unless_stopped<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            () = self.stopped() => None,
        }
    }

    /// Resolves once the agent is stopping.
    pub(crate) async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        if stopping.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Counts a session as served until the guard is dropped.
    pub(crate) fn serving(&self) -> Serving<'_> {
        self.live.send_modify(|n| *n += 1);
        Serving(&self.live)
    }

    /// Sets the key secrets in audit parameters are hashed with (once; before it is set
    /// they are replaced by `[REDACTED]`, and can then not be searched for).
    pub fn set_redaction_key(&self, key: Vec<u8>) {
        let _ = self.redaction.set(key);
    }

    pub(crate) fn redaction_key(&self) -> Option<&[u8]> {
        self.redaction.get().map(Vec::as_slice)
    }

    fn serves(&self, app: &App) -> bool {
        selects(&self.selectors, app)
    }

    /// The label selectors of the cluster apps this agent serves.
    pub fn selectors(&self) -> &[BTreeMap<String, String>] {
        &self.selectors
    }

    /// The app called `name`, if this agent serves it.
    pub async fn app(&self, name: &str) -> Result<Option<App>, AgentError> {
        Ok(self
            .apps()
            .await?
            .into_iter()
            .find(|a| a.metadata.name.as_str() == name))
    }

    /// Every app this agent serves, static ones first.
    pub async fn apps(&self) -> Result<Vec<App>, AgentError> {
        let mut out = self.static_apps.clone();
        for app in self.cluster.apps().await.map_err(AgentError::Cluster)? {
            if self.serves(&app) && !out.iter().any(|a| a.metadata.name == app.metadata.name) {
                out.push(app);
            }
        }
        Ok(out)
    }

    /// Records requests that were forwarded when a process was killed as interrupted.
    pub async fn recover(&self) -> Result<usize, AgentError> {
        self.journal.recover().await.map_err(AgentError::Journal)
    }
}

//! The agent: runs next to MCP servers, and is the one place policy is applied.
//!
//! - [`Agent`]: which apps it serves (static ones from its config, dynamic ones from the
//!   cluster whose labels match its selectors) and the recovery of audit events that a killed
//!   process left pending.
//! - [`session`]: one client session — re-verify the client certificate, start the upstream,
//!   check every message, filter `tools/list`, gate `tools/call`, audit everything.
//! - [`upstream`]: stdio child processes; [`secrets`]: `${env:..}`/`${file:..}` on this host;
//!   [`redact`]: audit parameters without secrets; [`lines`]: bounded line framing.

pub mod cluster;
pub mod lines;
pub mod redact;
pub mod secrets;
pub mod session;
pub mod tunnel;
pub mod upstream;

use rustls::server::danger::ClientCertVerifier;
use std::collections::BTreeMap;
use std::sync::Arc;

use mcpgate_mcp::Limits;
use mcpgate_store::Store;
use mcpgate_types::AuditEvent;
use mcpgate_types::resource::App;

pub use cluster::{Cluster, Local};
pub use session::ClientConn;

/// Agent failures outside a session.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The local storage (spool) failed.
    #[error(transparent)]
    Store(#[from] mcpgate_store::StoreError),
    /// The user CA cannot be used to verify clients.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The cluster (auth service, local or remote) could not answer.
    #[error("{0}")]
    Cluster(String),
}

/// The agent, shared by its sessions.
pub struct Agent {
    pub(crate) cluster: Arc<dyn Cluster>,
    static_apps: Vec<App>,
    selectors: Vec<BTreeMap<String, String>>,
    pub(crate) limits: Limits,
    pub(crate) verifier: Arc<dyn ClientCertVerifier>,
    /// Final events of calls whose pending events are durable, stored in batches.
    pub(crate) completions: tokio::sync::mpsc::Sender<Completion>,
}

/// Whether an agent with these `agent.resources` selectors serves a cluster app (the match
/// lives with the tunnel protocol, which the proxy shares).
pub use mcpgate_wire::selects;

/// Stores completed call events in batches (one transaction for many calls), then drops
/// their pending events. Off every session's path: a crash in between only means the pending
/// events are recovered at the next start.
async fn complete_in_batches(
    cluster: Arc<dyn Cluster>,
    mut rx: tokio::sync::mpsc::Receiver<Completion>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut flushed = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Completion::Event(ev) => batch.push(*ev),
                Completion::Flush(done) => flushed.push(done),
            }
            if batch.len() < 512 {
                next = rx.try_recv().ok();
            }
        }
        match cluster.record(&batch).await {
            Ok(()) => {
                let keys: Vec<String> =
                    batch.iter().map(|e| format!("{PENDING}{}", e.id)).collect();
                if let Err(e) = cluster.spool().delete_many(&keys).await {
                    tracing::warn!(error = %e, "pending audit events stay until the next start");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit write failed; the pending events will be recovered")
            }
        }
        batch.clear();
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// What the batch writer is told.
pub(crate) enum Completion {
    /// A final call event to store.
    Event(Box<AuditEvent>),
    /// Answer once everything sent before is stored.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Key prefix of audit events written before a call is forwarded and completed after.
pub const PENDING: &str = "audit-pending/";

impl Agent {
    /// An agent serving `static_apps`, and cluster apps whose labels match a selector.
    pub fn new(
        cluster: Arc<dyn Cluster>,
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
        let (completions, rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(complete_in_batches(cluster.clone(), rx));
        Ok(Arc::new(Agent {
            cluster,
            static_apps,
            selectors,
            limits,
            verifier,
            completions,
        }))
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

    /// Completes audit events of calls that were forwarded when a process was killed: each
    /// is stored (once: storing is idempotent by id) with the error that its answer is unknown.
    pub async fn recover(&self) -> Result<usize, AgentError> {
        let store = self.cluster.spool();
        let pending = store.list(PENDING).await?;
        for (key, bytes) in &pending {
            if let Ok(mut event) = serde_json::from_slice::<AuditEvent>(bytes) {
                event.fields.insert(
                    "error".into(),
                    "the gateway stopped before the answer was recorded".into(),
                );
                self.cluster
                    .record(std::slice::from_ref(&event))
                    .await
                    .map_err(AgentError::Cluster)?;
            }
            store.delete(key).await?;
        }
        if !pending.is_empty() {
            tracing::warn!(
                recovered = pending.len(),
                "completed audit events of calls forwarded before the last stop"
            );
        }
        Ok(pending.len())
    }
}

//! What an agent needs from its cluster, whether the auth service runs in the same process
//! ([`Local`]) or elsewhere (an implementation over the HTTPS API, in the binary).

use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mcpgate_auth::AuthService;
use mcpgate_store::{AnyStore, Store};
use mcpgate_types::resource::{App, Lock, Role};
use mcpgate_types::{AuditEvent, Clock};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The agent's view of the cluster. Errors are sentences for logs and client answers.
pub trait Cluster: Send + Sync {
    /// The cluster's name.
    fn name(&self) -> &str;
    fn clock(&self) -> &Arc<dyn Clock>;
    /// The user CA certificate, to verify client certificates with.
    fn user_ca(&self) -> &CertificateDer<'static>;
    /// Changes when roles change (0 if unknown: policies then reload by age only).
    fn epoch(&self) -> u64 {
        0
    }
    fn roles<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<Vec<Role>, String>>;
    /// Every app registered in the cluster (the agent keeps those its selectors match).
    fn apps(&self) -> BoxFuture<'_, Result<Vec<App>, String>>;
    /// Locks in force.
    fn locks(&self) -> BoxFuture<'_, Result<Vec<Lock>, String>>;
    /// Local durable storage: audit events of calls in flight live here.
    fn spool(&self) -> &AnyStore;
    /// Stores audit events durably (shipping them later is the implementation's business).
    fn record<'a>(&'a self, events: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), String>>;
}

/// The auth service in this process.
pub struct Local(pub Arc<AuthService>);

impl Cluster for Local {
    fn name(&self) -> &str {
        self.0.cluster()
    }
    fn clock(&self) -> &Arc<dyn Clock> {
        self.0.clock()
    }
    fn user_ca(&self) -> &CertificateDer<'static> {
        self.0.user_ca().cert_der()
    }
    fn epoch(&self) -> u64 {
        self.0.epoch()
    }
    fn roles<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<Vec<Role>, String>> {
        Box::pin(async move { self.0.roles(names).await.map_err(|e| e.to_string()) })
    }
    fn apps(&self) -> BoxFuture<'_, Result<Vec<App>, String>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (_, bytes) in self
                .0
                .store()
                .list("apps/")
                .await
                .map_err(|e| e.to_string())?
            {
                out.push(serde_json::from_slice(&bytes).map_err(|e| e.to_string())?);
            }
            Ok(out)
        })
    }
    fn locks(&self) -> BoxFuture<'_, Result<Vec<Lock>, String>> {
        Box::pin(async move { self.0.locks().await.map_err(|e| e.to_string()) })
    }
    fn spool(&self) -> &AnyStore {
        self.0.store()
    }
    fn record<'a>(&'a self, events: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .store()
                .append_events(events)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

//! The cluster as the agent of `mcpgate start` sees it: the auth service in the same
//! process. (An agent on another host sees it through the proxy's API: `cli/agent.rs`.)

use rustls::pki_types::CertificateDer;
use std::sync::Arc;

use mcpgate_agent::Cluster;
use mcpgate_agent::cluster::BoxFuture;
use mcpgate_auth::AuthService;
use mcpgate_store::Store;
use mcpgate_types::Clock;
use mcpgate_types::identity::Assertion;
use mcpgate_types::limits::{Counter, Limited};
use mcpgate_types::pins::Pin;
use mcpgate_types::resource::{App, Lock, Role};

/// The auth service in this process, and the name its agent is registered under.
pub struct Local(pub Arc<AuthService>, pub String);

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
    fn pins<'a>(&'a self, app: &'a str) -> BoxFuture<'a, Result<Vec<Pin>, String>> {
        Box::pin(async move { self.0.pins(app).await.map_err(|e| e.to_string()) })
    }
    fn tools_seen<'a>(
        &'a self,
        app: &'a str,
        strict: bool,
        tools: Vec<serde_json::Value>,
    ) -> BoxFuture<'a, Result<Vec<Pin>, String>> {
        Box::pin(async move {
            self.0
                .record_tools(&self.1, app, strict, &tools)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn count_call<'a>(
        &'a self,
        session: &'a str,
        call: &'a str,
        counters: Vec<Counter>,
    ) -> BoxFuture<'a, Result<Option<Limited>, String>> {
        Box::pin(async move {
            self.0
                .count_call(&self.1, session, call, &counters)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn release_call<'a>(
        &'a self,
        session: &'a str,
        call: &'a str,
        counters: Vec<Counter>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .release_call(&self.1, session, call, &counters)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn assertion<'a>(
        &'a self,
        session: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Assertion, String>> {
        Box::pin(async move {
            self.0
                .assertion(&self.1, session, audience)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

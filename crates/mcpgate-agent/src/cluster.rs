//! What an agent needs from its cluster, whether the auth service runs in the same process
//! or elsewhere (both implementations are the binary's: the agent does not depend on the
//! auth service). Audit events go through the [`Journal`](crate::Journal), not here.

use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mcpgate_types::Clock;
use mcpgate_types::identity::Assertion;
use mcpgate_types::limits::{Counter, Limited};
use mcpgate_types::pins::Pin as ToolPin;
use mcpgate_types::resource::{App, Lock, Role};

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
    /// The tool-definition pins of `app` (cluster-wide).
    fn pins<'a>(&'a self, app: &'a str) -> BoxFuture<'a, Result<Vec<ToolPin>, String>>;
    /// Reports the tools `app`'s server offers (`strict`: the app's own `pin: strict`);
    /// the cluster pins what is new, holds what changed, and returns the app's pins after.
    fn tools_seen<'a>(
        &'a self,
        app: &'a str,
        strict: bool,
        tools: Vec<serde_json::Value>,
    ) -> BoxFuture<'a, Result<Vec<ToolPin>, String>>;
    /// Counts call `call` of `session` against its limits (calls per minute, and leases
    /// for calls at once): the first one exceeded, if any.
    fn count_call<'a>(
        &'a self,
        session: &'a str,
        call: &'a str,
        counters: Vec<Counter>,
    ) -> BoxFuture<'a, Result<Option<Limited>, String>>;
    /// Gives back the leases call `call` of `session` holds.
    fn release_call<'a>(
        &'a self,
        session: &'a str,
        call: &'a str,
        counters: Vec<Counter>,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// The cluster-signed identity assertion for session `session` (routed to this agent)
    /// to the app at `audience`, sent to HTTP upstreams.
    fn assertion<'a>(
        &'a self,
        session: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Assertion, String>>;
}

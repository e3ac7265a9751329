//! Agents on other hosts: they join once with a single-use agent token, then hold a host
//! certificate they renew, and read what sessions need (roles, apps, locks) and ship audit
//! events through the API, authenticated by that certificate.

use std::time::Duration;

use mcpgate_pki::CertInfo;
use mcpgate_store::Store;
use mcpgate_types::audit::codes;
use mcpgate_types::resource::{App, TokenKind};
use mcpgate_types::{AuditEvent, IdentityKind, Name};

use crate::service::from_json;
use crate::wire::CertResponse;
use crate::{AuthError, AuthService, Result};

/// Lifetime of an agent's host certificate; agents renew at half-life.
pub const AGENT_TTL: Duration = Duration::from_secs(24 * 3600);

impl AuthService {
    /// An agent joins with its single-use token and gets a host certificate.
    pub async fn agent_join(
        &self,
        token: &str,
        name: &str,
        public_key: &str,
    ) -> Result<CertResponse> {
        let name =
            Name::new(name).map_err(|e| AuthError::BadRequest(format!("agent name: {e}")))?;
        self.take_token(token, TokenKind::Agent).await?;
        self.issue_host(name.as_str(), public_key, codes::AGENT_JOIN)
            .await
    }

    /// An agent renews its host certificate with the current one.
    pub async fn agent_renew(&self, caller: &CertInfo, public_key: &str) -> Result<CertResponse> {
        Self::require_host(caller)?;
        self.issue_host(&caller.claims.name, public_key, codes::CERT_CREATE)
            .await
    }

    async fn issue_host(
        &self,
        name: &str,
        public_key: &str,
        event: (&str, &str),
    ) -> Result<CertResponse> {
        let claims = self.claims(name, IdentityKind::Host, &[]);
        self.sign(&claims, public_key, AGENT_TTL, event).await
    }

    /// Only agents (host certificates) may read what sessions need and ship events.
    pub fn require_host(caller: &CertInfo) -> Result<()> {
        if caller.claims.kind == IdentityKind::Host {
            Ok(())
        } else {
            Err(AuthError::AccessDenied("only agents may call this".into()))
        }
    }

    /// Every app registered in the cluster.
    pub async fn all_apps(&self) -> Result<Vec<App>> {
        let mut out = Vec::new();
        for (_, bytes) in self.store.list("apps/").await? {
            out.push(from_json(&bytes)?);
        }
        Ok(out)
    }

    /// Stores events shipped by an agent (idempotent by id: a retried batch keeps one copy).
    pub async fn ingest(&self, events: &[AuditEvent]) -> Result<()> {
        if events.iter().any(|e| e.cluster != self.cluster()) {
            return Err(AuthError::BadRequest("events of another cluster".into()));
        }
        Ok(self.store.append_events(events).await?)
    }
}

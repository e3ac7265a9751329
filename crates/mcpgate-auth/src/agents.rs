//! Agents on other hosts: they join once with a single-use agent token, then hold a host
//! certificate they renew, and read what sessions need (roles, apps, locks) and ship audit
//! events through the API, authenticated by that certificate.

use serde_json::Value;
use std::time::Duration;

use mcpgate_pki::CertInfo;
use mcpgate_store::Store;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::unix_secs;
use mcpgate_types::resource::{App, Token, TokenKind};
use mcpgate_types::{AuditEvent, Claims, IdentityKind, Name};

use crate::service::{from_json, pem_cert, token_key};
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
        let record: Option<Token> = match self.store.take(&token_key(token)).await? {
            Some(bytes) => Some(from_json(&bytes)?),
            None => None,
        };
        if !record.is_some_and(|t| t.kind == TokenKind::Agent && t.expires > unix_secs(self.now()))
        {
            return Err(AuthError::InvalidToken);
        }
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
        (kind, code): (&str, &str),
    ) -> Result<CertResponse> {
        let claims = Claims {
            name: name.to_string(),
            kind: IdentityKind::Host,
            roles: vec![],
            traits: Default::default(),
            generation: 0,
            cluster: self.cluster().into(),
        };
        let now = self.now();
        let cert = self
            .host_ca
            .issue(public_key, &claims, &[], now, AGENT_TTL)
            .map_err(|_| {
                AuthError::BadRequest("the public key is not a valid PEM public key".into())
            })?;
        self.emit(self.event(
            kind,
            code,
            &claims,
            true,
            [("ttl", Value::from(AGENT_TTL.as_secs()))],
        ))
        .await?;
        Ok(CertResponse {
            cert: pem_cert(&cert),
            cas: self.ca_pems(),
            expires: unix_secs(now + AGENT_TTL),
            roles: vec![],
        })
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

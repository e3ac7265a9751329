//! Rate limits on MCP calls, counted per calendar minute in the store, so they hold across
//! every agent and auth instance sharing it. The agent (the enforcement point) asks before
//! it forwards a call; the identity and app counted are the session's, as the proxy
//! recorded them, never the agent's word.

use mcpgate_store::Store;
use mcpgate_types::clock::unix_secs;
use mcpgate_types::limits::{Counter, Limited};

use crate::agents::{SessionRecord, session_key};
use crate::service::from_json;
use crate::{AuthError, AuthService, Result};

impl AuthService {
    /// Counts one call of session `session` (routed to `agent`) against `counters`: the
    /// first limit it would exceed, if any (counters before it have counted the call).
    pub async fn count_call(
        &self,
        agent: &str,
        session: &str,
        counters: &[Counter],
    ) -> Result<Option<Limited>> {
        let record: SessionRecord = match self.store.get(&session_key(session)).await? {
            Some(b) => from_json(&b)?,
            None => return Err(AuthError::AccessDenied(format!("no session {session}"))),
        };
        if record.agent != agent || record.closed.is_some() {
            return Err(AuthError::AccessDenied(format!(
                "session {session} is not open on agent {agent}"
            )));
        }
        let now = unix_secs(self.now());
        let window = now.div_euclid(60);
        let who = format!("rate/{}/{}", record.user_kind.as_str(), record.user);
        for c in counters {
            let key = match (c.scope.as_str(), &c.tool) {
                ("identity", _) => who.clone(),
                ("app", _) => format!("{who}/app/{}", record.app),
                ("tool", Some(tool)) => format!("{who}/tool/{}/{tool}", record.app),
                _ => return Err(AuthError::BadRequest(format!("no scope {:?}", c.scope))),
            };
            if self
                .store
                .hit(&key, window, u64::from(c.limit))
                .await?
                .is_none()
            {
                return Ok(Some(Limited {
                    counter: c.clone(),
                    retry_after: u64::try_from(60 - now.rem_euclid(60)).unwrap_or(60),
                }));
            }
        }
        Ok(None)
    }
}

/// Where the cluster's audit redaction key is kept (32 random bytes, made once).
const REDACTION_KEY: &str = "audit/redaction-key";

impl AuthService {
    /// The cluster's redaction key, made at first use (of two instances making it at once,
    /// the first one stored wins).
    async fn cluster_redaction_key(&self) -> Result<Vec<u8>> {
        if let Some(k) = self.store.get(REDACTION_KEY).await? {
            return Ok(k);
        }
        use ring::rand::SecureRandom;
        let mut key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| AuthError::Internal("no randomness".into()))?;
        self.store.create(REDACTION_KEY, &key).await?;
        self.store
            .get(REDACTION_KEY)
            .await?
            .ok_or_else(|| AuthError::Internal("the redaction key vanished".into()))
    }

    /// Agent `agent`'s redaction key (its own, derived from the cluster's).
    pub async fn redaction_key_for(&self, agent: &str) -> Result<Vec<u8>> {
        Ok(mcpgate_types::secrets::agent_redaction_key(
            &self.cluster_redaction_key().await?,
            agent,
        ))
    }

    /// The events matching `query` that held `secret` in a redacted parameter: its keyed
    /// hash under every agent's key, searched as free text. `secret` is never stored or
    /// logged.
    pub async fn match_secret(
        &self,
        caller: &crate::service::Caller,
        query: &mcpgate_types::AuditQuery,
        secret: &str,
    ) -> Result<Vec<mcpgate_types::AuditEvent>> {
        caller.require("event", "list")?;
        if secret.is_empty() {
            return Err(AuthError::BadRequest("the secret to match is empty".into()));
        }
        let cluster_key = self.cluster_redaction_key().await?;
        let mut out: Vec<mcpgate_types::AuditEvent> = Vec::new();
        for agent in self.agents().await? {
            let key =
                mcpgate_types::secrets::agent_redaction_key(&cluster_key, agent.name.as_str());
            let tag = mcpgate_types::secrets::redaction_tag(&key, secret);
            let q = mcpgate_types::AuditQuery {
                text: Some(tag),
                ..query.clone()
            };
            for ev in self.store.search_events(&q).await? {
                if !out.iter().any(|e| e.id == ev.id) {
                    out.push(ev);
                }
            }
        }
        out.sort_by_key(|e| e.time);
        if let Some(limit) = query.limit {
            let extra = out.len().saturating_sub(limit as usize);
            out.drain(..extra);
        }
        Ok(out)
    }
}

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
    /// The session, if it is open on `agent`.
    async fn open_session_of(&self, agent: &str, session: &str) -> Result<SessionRecord> {
        let record: SessionRecord = match self.store.get(&session_key(session)).await? {
            Some(b) => from_json(&b)?,
            None => return Err(AuthError::AccessDenied(format!("no session {session}"))),
        };
        if record.agent != agent || record.closed.is_some() {
            return Err(AuthError::AccessDenied(format!(
                "session {session} is not open on agent {agent}"
            )));
        }
        Ok(record)
    }

    /// The store key a counter counts under: the session's identity (and app, and tool).
    fn counter_key(record: &SessionRecord, c: &Counter) -> Result<String> {
        let who = format!(
            "{}/{}/{}",
            if c.concurrent { "conc" } else { "rate" },
            record.user_kind.as_str(),
            record.user
        );
        match (c.scope.as_str(), &c.tool) {
            ("identity", _) => Ok(who),
            ("app", _) => Ok(format!("{who}/app/{}", record.app)),
            ("tool", Some(tool)) => Ok(format!("{who}/tool/{}/{tool}", record.app)),
            _ => Err(AuthError::BadRequest(format!("no scope {:?}", c.scope))),
        }
    }

    /// Counts call `call` of session `session` (routed to `agent`) against `counters`:
    /// leases for the limits on calls at once (held until [`Self::release_call`], or
    /// [`LEASE`] seconds at most), then the calls per minute. The first limit it would
    /// exceed, if any; a refused call holds no lease.
    pub async fn count_call(
        &self,
        agent: &str,
        session: &str,
        call: &str,
        counters: &[Counter],
    ) -> Result<Option<Limited>> {
        let record = self.open_session_of(agent, session).await?;
        // The limits are the roles', as the session's certificate named them: an agent
        // says what to count, never how much.
        let roles = self.roles(&record.roles).await?;
        let policy = mcpgate_policy::Policy::compile(&roles, &Default::default())
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let counters: Vec<Counter> = counters
            .iter()
            .filter_map(|c| {
                let scope = match c.scope.as_str() {
                    "identity" => mcpgate_policy::Scope::Identity,
                    "app" => mcpgate_policy::Scope::App,
                    "tool" => mcpgate_policy::Scope::Tool,
                    _ => return None,
                };
                let bound = policy
                    .limits(&record.app, c.tool.as_deref())
                    .into_iter()
                    .find(|b| b.scope == scope)?;
                let (limit, role) = if c.concurrent {
                    bound.concurrent?
                } else {
                    bound.per_minute?
                };
                Some(Counter {
                    limit,
                    role: role.to_string(),
                    ..c.clone()
                })
            })
            .collect();
        let counters = &counters;
        let now = unix_secs(self.now());
        let lease = format!("{session}/{call}");
        let mut taken = Vec::new();
        let mut refused = None;
        for c in counters.iter().filter(|c| c.concurrent) {
            let key = Self::counter_key(&record, c)?;
            if self
                .store
                .lease(&key, &lease, u64::from(c.limit), now, now + LEASE)
                .await?
            {
                taken.push(key);
            } else {
                refused = Some(Limited {
                    counter: c.clone(),
                    retry_after: 0,
                });
                break;
            }
        }
        if refused.is_none() {
            let window = now.div_euclid(60);
            for c in counters.iter().filter(|c| !c.concurrent) {
                let key = Self::counter_key(&record, c)?;
                if self
                    .store
                    .hit(&key, window, u64::from(c.limit))
                    .await?
                    .is_none()
                {
                    refused = Some(Limited {
                        counter: c.clone(),
                        retry_after: u64::try_from(60 - now.rem_euclid(60)).unwrap_or(60),
                    });
                    break;
                }
            }
        }
        if refused.is_some() {
            for key in taken {
                self.store.release(&key, &lease).await?;
            }
        }
        Ok(refused)
    }

    /// Gives back the leases call `call` of `session` took (its answer came, or it ended).
    pub async fn release_call(
        &self,
        agent: &str,
        session: &str,
        call: &str,
        counters: &[Counter],
    ) -> Result<()> {
        let record: SessionRecord = match self.store.get(&session_key(session)).await? {
            Some(b) => from_json(&b)?,
            None => return Ok(()),
        };
        if record.agent != agent {
            return Err(AuthError::AccessDenied(format!(
                "session {session} is not on agent {agent}"
            )));
        }
        let lease = format!("{session}/{call}");
        for c in counters.iter().filter(|c| c.concurrent) {
            self.store
                .release(&Self::counter_key(&record, c)?, &lease)
                .await?;
        }
        Ok(())
    }
}

/// The longest a call holds its place under a limit on calls at once (seconds): what an
/// agent that died without giving it back costs.
const LEASE: i64 = 15 * 60;

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
        // Each search is itself on the record (a way to test guesses is watched).
        self.emit(self.event(
            mcpgate_types::audit::codes::AUDIT_MATCH_SECRET.0,
            mcpgate_types::audit::codes::AUDIT_MATCH_SECRET.1,
            &caller.info.claims,
            true,
            [("matched", serde_json::Value::from(out.len()))],
        ))
        .await?;
        Ok(out)
    }
}

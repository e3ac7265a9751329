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

//! Dashboard sessions: what a browser holds instead of a certificate.
//!
//! A login at `/login` goes through the same checks as `mcpgate login` (password, second
//! factor, rate limits, locks) and yields a random token for a cookie. Only its SHA-256 is
//! stored, with the identity as the login saw it, a CSRF token and an expiry no later than
//! the certificate that login would have issued. Every request looks the session up again:
//! expired, logged out or locked, it is gone.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

use mcpgate_pki::CertInfo;
use mcpgate_policy::Policy;
use mcpgate_store::Store;
use mcpgate_types::Claims;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::unix_secs;

use crate::service::{from_json, random_token, to_json, token_id};
use crate::{AuthError, AuthService, Caller, Result};

const PREFIX: &str = "web/sessions/";

/// A dashboard session as stored (under the hash of its token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebSession {
    /// The identity, as at login (as a certificate would carry it).
    pub claims: Claims,
    /// Unix seconds.
    pub issued: i64,
    /// Unix seconds; never later than the user's certificate lifetime allows.
    pub expires: i64,
    /// The token every form of this session must carry.
    pub csrf: String,
}

/// A new session: the cookie's token (shown once, never stored) and the session.
pub struct WebLogin {
    pub token: String,
    pub session: WebSession,
}

fn key(token: &str) -> String {
    format!("{PREFIX}{}", token_id(token))
}

impl AuthService {
    /// A dashboard login: the same checks as a certificate login, audited the same way
    /// (`user.login`, `via: web`), then a session for a cookie.
    pub async fn web_login(
        &self,
        user: &str,
        password: &str,
        otp: Option<&str>,
        addr: Option<IpAddr>,
    ) -> Result<WebLogin> {
        let login = self.verified(user, password, otp, addr).await?;
        let now = self.issue_time(&login.claims).await?;
        let session = WebSession {
            claims: login.claims,
            issued: unix_secs(now),
            expires: unix_secs(now + login.max_ttl),
            csrf: random_token()?,
        };
        let token = random_token()?;
        self.store.put(&key(&token), &to_json(&session)?).await?;
        self.emit(self.event(
            codes::USER_LOGIN.0,
            codes::USER_LOGIN.1,
            &session.claims,
            true,
            [
                ("method", Value::from(login.method)),
                ("via", Value::from("web")),
            ],
        ))
        .await?;
        self.emit(self.event(
            codes::WEB_SESSION_START.0,
            codes::WEB_SESSION_START.1,
            &session.claims,
            true,
            [
                ("expires", Value::from(session.expires)),
                ("addr", Value::from(addr.map(|a| a.to_string()))),
            ],
        ))
        .await?;
        Ok(WebLogin { token, session })
    }

    /// The caller behind a session cookie, checked now: known, not expired, not locked.
    /// Its roles are compiled as stored now, like a certificate's on every request.
    pub async fn web_caller(&self, token: &str) -> Result<(Caller, WebSession)> {
        let unauthenticated = || AuthError::Unauthenticated("log in at /login".into());
        let k = key(token);
        let session: WebSession = match self.store.get(&k).await? {
            Some(b) => from_json(&b)?,
            None => return Err(unauthenticated()),
        };
        let now = self.now();
        if unix_secs(now) >= session.expires {
            self.end_web_session(&k, &session, "expired").await?;
            return Err(unauthenticated());
        }
        if let Some(lock) = self.lock_for(&session.claims, Some(session.issued)).await? {
            // A lock ends the session for good, not just this request.
            self.end_web_session(&k, &session, "locked").await?;
            return Err(AuthError::AccessDenied(format!(
                "{} is locked: {}",
                lock.target, lock.message
            )));
        }
        let roles = self.roles(&session.claims.roles).await?;
        let policy = Policy::compile(&roles, &session.claims.traits)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let info = CertInfo {
            claims: session.claims.clone(),
            not_before: std::time::UNIX_EPOCH + Duration::from_secs(session.issued.max(0) as u64),
            not_after: std::time::UNIX_EPOCH + Duration::from_secs(session.expires.max(0) as u64),
            issuer: "dashboard session".into(),
        };
        Ok((Caller { info, policy }, session))
    }

    /// Ends a dashboard session (logout); unknown tokens are ignored.
    pub async fn web_logout(&self, token: &str) -> Result<()> {
        let k = key(token);
        if let Some(b) = self.store.get(&k).await? {
            self.end_web_session(&k, &from_json(&b)?, "logout").await?;
        }
        Ok(())
    }

    /// Deletes the sessions whose time is up, each audited as ended (`reason: expired`),
    /// so storage keeps only live ones; `mcpgate start` runs it every 30 s. Returns how many
    /// it ended.
    pub async fn sweep_web_sessions(&self) -> Result<usize> {
        let now = unix_secs(self.now());
        let mut ended = 0;
        for (k, b) in self.store.list(PREFIX).await? {
            let session: WebSession = from_json(&b)?;
            if now >= session.expires && self.end_web_session(&k, &session, "expired").await? {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Deletes a session and audits its end, once: of two concurrent enders, one records it.
    async fn end_web_session(&self, k: &str, session: &WebSession, reason: &str) -> Result<bool> {
        if !self.store.delete(k).await? {
            return Ok(false);
        }
        self.emit(self.event(
            codes::WEB_SESSION_END.0,
            codes::WEB_SESSION_END.1,
            &session.claims,
            true,
            [("reason", Value::from(reason))],
        ))
        .await?;
        Ok(true)
    }
}

//! Identity assertions for HTTP upstreams: a short-lived JWT (ES256) the cluster signs for
//! one MCP session, naming its caller (`sub`, `kind`, `roles`) and the app (`aud`), which an
//! agent sends as `Mcpgate-Jwt-Assertion`. Keys live in the storage (private halves sealed
//! like the CAs'); every key not retired for longer than an assertion lives is published at
//! `/.well-known/jwks.json`, so a rotation never invalidates an assertion in flight.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mcpgate_store::Store;
use mcpgate_types::clock::unix_secs;
use mcpgate_types::identity::Assertion;

use crate::agents::SessionRecord;
use crate::service::{AuthService, from_json, to_json};
use crate::{AuthError, Result};

/// The longest an assertion lives (never past the caller's certificate).
pub const ASSERTION_TTL: Duration = Duration::from_secs(10 * 60);
const KEYS: &str = "jwt/keys/";
const CURRENT: &str = "jwt/current";

/// A signing key as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// The PKCS#8 document, sealed with the CA key.
    sealed: String,
    /// The public point's coordinates, base64url.
    x: String,
    y: String,
    created: i64,
    /// When it stopped signing (Unix seconds).
    #[serde(default)]
    retired: Option<i64>,
}

fn label(kid: &str) -> String {
    format!("mcpgate-jwt-key:{kid}")
}

impl AuthService {
    /// The signing key in use, created on first use (by whichever instance gets there first).
    async fn signing_key(&self) -> Result<(String, Arc<EcdsaKeyPair>)> {
        let kid = match self.store.get(CURRENT).await? {
            Some(kid) => String::from_utf8_lossy(&kid).into_owned(),
            None => {
                let kid = self.new_key().await?;
                if !self.store.create(CURRENT, kid.as_bytes()).await? {
                    // Another instance made one first: use it (ours stays unused, retired).
                    self.retire(&kid).await?;
                }
                let current = self.store.get(CURRENT).await?.unwrap_or_default();
                String::from_utf8_lossy(&current).into_owned()
            }
        };
        if let Some((cached, pair)) = self
            .jwt_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *cached == kid
        {
            return Ok((kid, pair.clone()));
        }
        let stored: StoredKey = from_json(
            &self
                .store
                .get(&format!("{KEYS}{kid}"))
                .await?
                .ok_or_else(|| AuthError::Internal(format!("JWT key {kid} is missing")))?,
        )?;
        let pkcs8 = self.config.ca_key.open(&label(&kid), &stored.sealed)?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| AuthError::Internal("the JWT key cannot be read".into()))?;
        let pair = Arc::new(pair);
        *self.jwt_key.lock().unwrap_or_else(|p| p.into_inner()) = Some((kid.clone(), pair.clone()));
        Ok((kid, pair))
    }

    /// Stores a new key pair, not yet in use; returns its id.
    async fn new_key(&self) -> Result<String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| AuthError::Internal("cannot generate a JWT key".into()))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| AuthError::Internal("cannot generate a JWT key".into()))?;
        // An uncompressed point: 0x04 ‖ x ‖ y.
        let point = pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        let kid = mcpgate_types::audit::random_id();
        let stored = StoredKey {
            sealed: self.config.ca_key.seal(&label(&kid), pkcs8.as_ref())?,
            kid: kid.clone(),
            x: B64.encode(x),
            y: B64.encode(y),
            created: unix_secs(self.now()),
            retired: None,
        };
        self.store
            .put(&format!("{KEYS}{kid}"), &to_json(&stored)?)
            .await?;
        Ok(kid)
    }

    async fn retire(&self, kid: &str) -> Result<()> {
        let key = format!("{KEYS}{kid}");
        if let Some(bytes) = self.store.get(&key).await? {
            let mut stored: StoredKey = from_json(&bytes)?;
            stored.retired.get_or_insert(unix_secs(self.now()));
            self.store.put(&key, &to_json(&stored)?).await?;
        }
        Ok(())
    }

    /// `admin jwt rotate`: checks the caller may update the cluster, rotates, audits.
    pub async fn rotate_jwt(&self, caller: &crate::Caller) -> Result<String> {
        caller.require("cluster", "update")?;
        let kid = self.rotate_jwt_key().await?;
        self.audit_change(
            caller,
            mcpgate_types::audit::codes::RESOURCE_UPDATE,
            "jwt_key",
            &kid,
        )
        .await?;
        Ok(kid)
    }

    /// Starts signing with a new key; the old one stays published until every assertion it
    /// signed has expired. Returns the new key's id.
    pub async fn rotate_jwt_key(&self) -> Result<String> {
        // Make sure there is a current key to replace.
        let (old, _) = self.signing_key().await?;
        let kid = self.new_key().await?;
        if !self
            .store
            .compare_and_swap(CURRENT, old.as_bytes(), kid.as_bytes())
            .await?
        {
            // Another rotation won: ours never signed anything.
            self.retire(&kid).await?;
            return Err(AuthError::BadRequest(
                "the key was rotated at the same time; run it again if you still need to".into(),
            ));
        }
        self.retire(&old).await?;
        Ok(kid)
    }

    /// The public keys an upstream verifies assertions with (RFC 7517).
    pub async fn jwks(&self) -> Result<Value> {
        let mut stored = self.store.list(KEYS).await?;
        if stored.is_empty() {
            // Make sure there is one to publish before anything is signed.
            self.signing_key().await?;
            stored = self.store.list(KEYS).await?;
        }
        let now = unix_secs(self.now());
        let mut keys = Vec::new();
        for (_, bytes) in stored {
            let k: StoredKey = from_json(&bytes)?;
            if k.retired
                .is_some_and(|r| r + ASSERTION_TTL.as_secs() as i64 + 60 < now)
            {
                continue;
            }
            keys.push(json!({"kty": "EC", "crv": "P-256", "x": k.x, "y": k.y,
                "kid": k.kid, "use": "sig", "alg": "ES256"}));
        }
        Ok(json!({ "keys": keys }))
    }

    /// The assertion for session `session`, asked for by `agent` (the agent the proxy routed
    /// it to; any other is refused): its caller, roles and app as the proxy recorded them,
    /// for `audience` (the app's URI), valid for [`ASSERTION_TTL`] and never past the
    /// caller's certificate.
    pub async fn assertion(&self, agent: &str, session: &str, audience: &str) -> Result<Assertion> {
        let refused =
            || AuthError::AccessDenied(format!("session {session:?} is not routed to this agent"));
        let record: SessionRecord =
            match self.store.get(&crate::agents::session_key(session)).await? {
                Some(bytes) => from_json(&bytes)?,
                None => return Err(refused()),
            };
        if record.agent != agent {
            return Err(refused());
        }
        if record.closed.is_some() {
            return Err(AuthError::AccessDenied(format!(
                "session {session:?} has ended"
            )));
        }
        let now = self.now();
        let now_secs = unix_secs(now);
        let lock = self.locks().await?.into_iter().find(|l| {
            l.applies(
                record.user_kind,
                &record.user,
                &record.roles,
                now_secs,
                record.issued,
            )
        });
        if let Some(lock) = lock {
            return Err(AuthError::AccessDenied(format!(
                "{} is locked: {}",
                lock.target, lock.message
            )));
        }
        let mut expires = now + ASSERTION_TTL;
        if let Some(cert) = record.expires {
            expires = expires.min(SystemTime::UNIX_EPOCH + Duration::from_secs(cert.max(0) as u64));
        }
        if expires <= now {
            return Err(AuthError::Unauthenticated(
                "the caller's certificate has expired".into(),
            ));
        }
        // The audience is the app's URI: a cluster app's as registered (several apps may
        // front one server); an agent's own app's as it announced it when the session opened,
        // which may not be a registered app's (an agent cannot mint assertions for a server
        // the cluster knows under another name).
        let registered = self.all_apps().await?;
        let uri = match registered
            .iter()
            .find(|a| a.metadata.name.as_str() == record.app)
        {
            Some(app) => app.spec.uri.clone(),
            None => {
                let Some(uri) = record.uri.clone() else {
                    return Err(refused());
                };
                if registered.iter().any(|a| a.spec.uri == uri) {
                    return Err(AuthError::AccessDenied(format!(
                        "app {:?} of this agent announced {uri:?}, the URI of a cluster app",
                        record.app
                    )));
                }
                uri
            }
        };
        if uri != audience {
            return Err(AuthError::AccessDenied(format!(
                "{audience:?} is not the URI of app {:?}",
                record.app
            )));
        }
        let aud = uri;
        let (kid, pair) = self.signing_key().await?;
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let claims = json!({
            "iss": self.cluster(),
            "sub": record.user,
            "kind": record.user_kind.as_str(),
            "roles": record.roles,
            "aud": aud,
            "app": record.app,
            "session": session,
            "iat": unix_secs(now),
            "nbf": unix_secs(now) - 60,
            "exp": unix_secs(expires),
            "jti": mcpgate_types::audit::random_id(),
        });
        let mut token = format!(
            "{}.{}",
            B64.encode(to_json(&header)?),
            B64.encode(to_json(&claims)?)
        );
        let sig = pair
            .sign(&SystemRandom::new(), token.as_bytes())
            .map_err(|_| AuthError::Internal("signing failed".into()))?;
        token.push('.');
        token.push_str(&B64.encode(sig.as_ref()));
        Ok(Assertion {
            token,
            expires: unix_secs(expires),
        })
    }
}

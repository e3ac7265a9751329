//! Access tokens from the company's own identity provider, accepted for chosen apps at
//! `/mcp/apps/NAME` (as Teleport's `app_auth_config` does): a client that already holds a
//! token from Okta, Entra ID, Keycloak... for the app uses it directly, and the person is the
//! mcpgate user a claim names — their roles, their locks, their audit trail.
//!
//! A token is a JWT signed RS256 or ES256 by a key of the issuer's JWKS (fetched over https
//! from where the configuration says, kept 10 minutes, fetched again for a key id it does not
//! hold, at most every 30 seconds); `iss` must be the issuer exactly, `aud` must hold the
//! audience (by default the app's URL, RFC 8707), `exp` must be in the future and `nbf`/`iat`
//! not (30 seconds of clock skew either way).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clock skew allowed on `exp`, `nbf` and `iat`.
const SKEW: i64 = 30;
const JWKS_TTL: Duration = Duration::from_secs(10 * 60);
/// A key id the cached JWKS does not hold triggers a fetch at most this often.
const REFETCH: Duration = Duration::from_secs(30);
const MAX_JWKS: usize = 256 << 10;

/// One identity provider trusted for some apps (`auth.trusted_issuers` in the config).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The `iss` its tokens carry, exactly.
    pub issuer: String,
    /// Where its signing keys are published (https).
    pub jwks_url: String,
    /// The `aud` a token must hold; by default the app's URL.
    #[serde(default)]
    pub audience: Option<String>,
    /// The claim that names the mcpgate user (default `sub`).
    #[serde(default = "default_claim")]
    pub user_claim: String,
    /// The apps it is trusted for, by name (`*`: every app).
    pub apps: Vec<String>,
    /// Trust only this CA (PEM) for the JWKS URL instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Scopes a token must hold (its `scope` or `scp` claim); one without them is refused
    /// with 403 `insufficient_scope`, naming them, so the client can ask for more.
    #[serde(default)]
    pub scopes: Vec<String>,
}

fn default_claim() -> String {
    "sub".into()
}

/// The scopes a token holds: its `scope` (space-separated) or `scp` (a list, or text).
fn scopes_of(claims: &Value) -> Vec<&str> {
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s.split(' ').collect(),
        (_, Some(Value::Array(a))) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A verified token: who it names and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub user: String,
    /// The client the token was issued to (`azp` or `client_id`), if it says.
    pub client: Option<String>,
    pub issuer: String,
    pub subject: String,
    /// Unix seconds.
    pub issued: i64,
    pub expires: i64,
    /// The scopes the issuer's configuration asks for, when the token lacks one.
    pub missing_scope: Option<String>,
}

/// A key of a JWKS, ready to verify.
#[derive(Clone)]
enum Key {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec(Vec<u8>),
}

struct Jwks {
    fetched: Instant,
    /// The last attempt, successful or not: what the refetch limit counts from.
    tried: Instant,
    keys: HashMap<String, Key>,
}

/// The trusted issuers and their keys.
#[derive(Default)]
pub struct Issuers {
    list: Mutex<Vec<(TrustedIssuer, Option<Arc<rustls::ClientConfig>>)>>,
    jwks: tokio::sync::Mutex<HashMap<String, Jwks>>,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuers").finish_non_exhaustive()
    }
}

/// Whether a bearer token is a JWT (three base64url parts), not one of the proxy's own.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("ey")
}

fn jwk(v: &Value) -> Option<(String, Key)> {
    let kid = v.get("kid")?.as_str()?.to_string();
    let b = |name: &str| B64.decode(v.get(name)?.as_str()?).ok();
    match v.get("kty")?.as_str()? {
        "RSA" => Some((
            kid,
            Key::Rsa {
                n: b("n")?,
                e: b("e")?,
            },
        )),
        "EC" if v.get("crv")?.as_str()? == "P-256" => {
            let (x, y) = (b("x")?, b("y")?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = vec![4u8];
            point.extend(x);
            point.extend(y);
            Some((kid, Key::Ec(point)))
        }
        _ => None,
    }
}

fn verify_signature(key: &Key, alg: &str, message: &[u8], signature: &[u8]) -> bool {
    use ring::signature;
    match (key, alg) {
        (Key::Rsa { n, e }, "RS256") => signature::RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
            .is_ok(),
        (Key::Ec(point), "ES256") => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok()
        }
        _ => false,
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

impl Issuers {
    /// Replaces the trusted issuers (at start, from the config). Fails on an unreadable
    /// `ca_file` or a JWKS URL that is not https.
    pub fn set(&self, issuers: Vec<TrustedIssuer>) -> Result<(), String> {
        let mut list = Vec::new();
        for i in issuers {
            if !i.jwks_url.starts_with("https://") {
                return Err(format!(
                    "trusted issuer {:?}: jwks_url must be an https URL",
                    i.issuer
                ));
            }
            let tls = match &i.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!(
                            "trusted issuer {:?}: ca_file {}: {e}",
                            i.issuer,
                            path.display()
                        )
                    })?;
                    let mut roots = rustls::RootCertStore::empty();
                    for c in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(&pem) {
                        let c = c.map_err(|e| {
                            format!("trusted issuer {:?}: ca_file {}: {e}", i.issuer, path.display())
                        })?;
                        roots.add(c).map_err(|e| {
                            format!("trusted issuer {:?}: ca_file {}: {e}", i.issuer, path.display())
                        })?;
                    }
                    Some(Arc::new(crate::fetch::client_config(roots)))
                }
                None => None,
            };
            list.push((i, tls));
        }
        *self.list.lock().unwrap_or_else(|p| p.into_inner()) = list;
        Ok(())
    }

    /// The issuers trusted for `app`.
    fn for_app(&self, app: &str) -> Vec<(TrustedIssuer, Option<Arc<rustls::ClientConfig>>)> {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(i, _)| i.apps.iter().any(|a| a == "*" || a == app))
            .cloned()
            .collect()
    }

    /// Whether any issuer is trusted for `app`.
    pub fn any_for(&self, app: &str) -> bool {
        !self.for_app(app).is_empty()
    }

    /// Verifies `token` for `app` at `resource` (its URL) at `now` (unix seconds).
    pub async fn verify(
        &self,
        token: &str,
        app: &str,
        resource: &str,
        now: i64,
    ) -> Result<Verified, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the token is not a JWT".into());
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the token's header is unreadable")?;
        let claims: Value = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the token's claims are unreadable")?;
        let signature = B64
            .decode(s)
            .map_err(|_| "the token's signature is unreadable")?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some((issuer, tls)) = self.for_app(app).into_iter().find(|(i, _)| i.issuer == iss)
        else {
            return Err(format!(
                "tokens of issuer {iss:?} are not accepted for app {app:?}"
            ));
        };
        if !matches!(header.alg.as_str(), "RS256" | "ES256") {
            return Err(format!(
                "alg {:?} is not accepted (RS256, ES256)",
                header.alg
            ));
        }
        let kid = header.kid.unwrap_or_default();
        let key = self.key(&issuer, tls, &kid).await?;
        let message = &token[..h.len() + 1 + p.len()];
        if !verify_signature(&key, &header.alg, message.as_bytes(), &signature) {
            return Err("the token's signature does not verify".into());
        }
        let audience = issuer.audience.as_deref().unwrap_or(resource);
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a.trim_end_matches('/') == audience.trim_end_matches('/'),
            Some(Value::Array(a)) => a.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| a.trim_end_matches('/') == audience.trim_end_matches('/'))
            }),
            _ => false,
        };
        if !aud_ok {
            return Err(format!("the token's audience is not {audience:?}"));
        }
        let num = |name: &str| claims.get(name).and_then(Value::as_i64);
        let Some(exp) = num("exp") else {
            return Err("the token has no exp".into());
        };
        if now >= exp + SKEW {
            return Err("the token expired".into());
        }
        if num("nbf").is_some_and(|nbf| nbf > now + SKEW)
            || num("iat").is_some_and(|iat| iat > now + SKEW)
        {
            return Err("the token is not valid yet".into());
        }
        let user = claims
            .get(&issuer.user_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| format!("the token has no {:?} claim", issuer.user_claim))?;
        let held = scopes_of(&claims);
        let missing_scope = issuer
            .scopes
            .iter()
            .any(|s| !held.contains(&s.as_str()))
            .then(|| issuer.scopes.join(" "));
        let client = ["azp", "client_id"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .map(str::to_string);
        Ok(Verified {
            user: user.to_string(),
            client,
            issuer: issuer.issuer.clone(),
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or(user)
                .to_string(),
            issued: num("iat").unwrap_or(now),
            expires: exp,
            missing_scope,
        })
    }

    /// The key `kid` of the issuer's JWKS: cached, fetched when stale or when it holds no
    /// such key (rotation), at most every [`REFETCH`].
    async fn key(
        &self,
        issuer: &TrustedIssuer,
        tls: Option<Arc<rustls::ClientConfig>>,
        kid: &str,
    ) -> Result<Key, String> {
        let mut cache = self.jwks.lock().await;
        let cached = cache.get(&issuer.issuer);
        let fresh = cached.is_some_and(|j| j.fetched.elapsed() < JWKS_TTL);
        let found = cached.and_then(|j| j.keys.get(kid).cloned());
        let may_refetch = cached.is_none_or(|j| j.tried.elapsed() >= REFETCH);
        if let Some(k) = found.clone()
            && fresh
        {
            return Ok(k);
        }
        if !may_refetch {
            return found.ok_or_else(|| format!("the issuer's keys have no key {kid:?}"));
        }
        let tls = tls.unwrap_or_else(crate::fetch::system_roots);
        let fetched = crate::fetch::get(&issuer.jwks_url, tls, MAX_JWKS)
            .await
            .map_err(|e| format!("the issuer's keys ({}): {e}", issuer.jwks_url))
            .and_then(|body| {
                serde_json::from_slice::<Value>(&body)
                    .map_err(|e| format!("the issuer's keys are not a JWKS: {e}"))
            });
        let v = match fetched {
            Ok(v) => v,
            Err(why) => {
                // Keep what was known, and do not try again before the refetch limit: a
                // failing provider is not asked on every request.
                let now = Instant::now();
                cache
                    .entry(issuer.issuer.clone())
                    .and_modify(|j| j.tried = now)
                    .or_insert(Jwks {
                        fetched: now,
                        tried: now,
                        keys: HashMap::new(),
                    });
                return found.ok_or(why);
            }
        };
        let keys: HashMap<String, Key> = v
            .get("keys")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(jwk).collect())
            .unwrap_or_default();
        let key = keys.get(kid).cloned();
        cache.insert(
            issuer.issuer.clone(),
            Jwks {
                fetched: Instant::now(),
                tried: Instant::now(),
                keys,
            },
        );
        key.ok_or_else(|| format!("the issuer's keys have no key {kid:?}"))
    }
}

impl Issuers {
    /// The issuers trusted for `app`, as named in its protected resource metadata.
    pub fn issuers_for(&self, app: &str) -> Vec<String> {
        self.for_app(app)
            .into_iter()
            .map(|(i, _)| i.issuer)
            .collect()
    }
}

impl crate::AuthService {
    /// Who an identity provider's token stands for on `app` at `resource`, checked now:
    /// signed by the issuer's key, for this audience, unexpired, naming an mcpgate user no
    /// lock covers. The session lasts until the token expires, and no longer than the
    /// user's roles allow a login to.
    pub async fn idp_bearer(
        &self,
        token: &str,
        app: &str,
        resource: &str,
    ) -> crate::Result<std::result::Result<crate::oauth::Bearer, crate::oauth::BearerError>> {
        use crate::oauth::{Bearer, BearerError};
        let now = mcpgate_types::clock::unix_secs(self.now());
        let v = match self.idp.verify(token, app, resource, now).await {
            Ok(v) => v,
            Err(why) => return Ok(Err(BearerError::invalid(why))),
        };
        if let Some(scope) = v.missing_scope.clone() {
            return Ok(Err(BearerError {
                why: format!("the token lacks the scope {scope:?}"),
                needs_scope: Some(scope),
            }));
        }
        let Some(user) = (match mcpgate_types::Name::new(&v.user) {
            Ok(n) => self.user(n.as_str()).await?,
            Err(_) => None,
        }) else {
            return Ok(Err(BearerError::invalid(format!(
                "the token names {:?}, who is not a user of this cluster",
                v.user
            ))));
        };
        let mut claims = mcpgate_types::Claims {
            traits: user.traits.clone(),
            ..self.claims(
                user.name.as_str(),
                mcpgate_types::IdentityKind::User,
                &user.roles,
            )
        };
        let client = v.client.clone().unwrap_or_else(|| v.issuer.clone());
        claims.oauth_client = Some(format!("idp:{client}"));
        if let Some(lock) = self.lock_for(&claims, Some(v.issued)).await? {
            return Ok(Err(BearerError::invalid(format!(
                "{} is locked: {}",
                lock.target, lock.message
            ))));
        }
        let roles = self.roles(&user.roles).await?;
        let max = mcpgate_policy::Policy::compile(&roles, &user.traits)
            .map_err(|e| crate::AuthError::Internal(e.to_string()))?
            .max_session_ttl()
            .unwrap_or(crate::service::USER_TTL)
            .min(crate::service::USER_TTL);
        Ok(Ok(Bearer {
            claims,
            issued: v.issued,
            until: v.expires.min(now + max.as_secs() as i64),
            grant: format!(
                "idp:{}",
                crate::service::token_id(&format!("{}\n{}\n{client}", v.issuer, v.subject))
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es256_key() -> (ring::signature::EcdsaKeyPair, Key) {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref().to_vec();
        (pair, Key::Ec(point))
    }

    #[test]
    fn es256_signatures_verify_and_tampering_does_not() {
        let (pair, key) = es256_key();
        let rng = ring::rand::SystemRandom::new();
        let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";
        let sig = pair.sign(&rng, msg).unwrap();
        assert!(verify_signature(&key, "ES256", msg, sig.as_ref()));
        assert!(!verify_signature(
            &key,
            "ES256",
            b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJib2IifQ",
            sig.as_ref()
        ));
        assert!(
            !verify_signature(&key, "RS256", msg, sig.as_ref()),
            "alg confusion"
        );
        assert!(!verify_signature(&key, "none", msg, b""));
    }

    #[test]
    fn scopes_are_read_from_scope_or_scp() {
        let c = |v: Value| {
            scopes_of(&v)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            c(serde_json::json!({"scope": "openid mcp:tools"})),
            ["openid", "mcp:tools"]
        );
        assert_eq!(c(serde_json::json!({"scp": ["mcp:tools"]})), ["mcp:tools"]);
        assert_eq!(c(serde_json::json!({"scp": "a b"})), ["a", "b"]);
        assert!(c(serde_json::json!({"scope": 3})).is_empty());
    }

    #[test]
    fn a_jwk_becomes_a_key_only_when_whole() {
        let ec = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "a",
            "x": B64.encode([1u8; 32]), "y": B64.encode([2u8; 32])});
        assert!(matches!(jwk(&ec), Some((k, Key::Ec(p))) if k == "a" && p.len() == 65));
        let short = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "a",
            "x": B64.encode([1u8; 31]), "y": B64.encode([2u8; 32])});
        assert!(jwk(&short).is_none());
        let p384 = serde_json::json!({"kty": "EC", "crv": "P-384", "kid": "a", "x": "", "y": ""});
        assert!(jwk(&p384).is_none());
        let rsa = serde_json::json!({"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"});
        assert!(matches!(jwk(&rsa), Some((k, Key::Rsa { .. })) if k == "r"));
        assert!(jwk(&serde_json::json!({"kty": "oct", "kid": "s", "k": "AA"})).is_none());
    }
}

//! The proxy as an OAuth 2.1 authorization server for MCP clients that speak Streamable
//! HTTP and cannot run a bridge (MCP authorization specification, 2025-11-25).
//!
//! A person logs in (the same checks as `mcpgate login`) and lets a client act for them on
//! one app; the client gets short-lived access tokens bound to that app's URL (RFC 8707)
//! and a refresh token that rotates. What is stored:
//!
//! - `oauth/clients/ID`: a registered client (dynamic registration, RFC 7591, or an admin's).
//!   Public clients only: PKCE (S256) is what binds a code to the client that asked for it.
//! - `oauth/requests/ID`: an authorization request between the authorize page and the
//!   consent, bound to the browser that opened it (a cookie's hash) and a CSRF token.
//! - `oauth/codes/HASH`: an authorization code (taken once; 60 s). `oauth/used/HASH`
//!   remembers a taken code's grant, so a code presented twice revokes what it yielded.
//! - `oauth/grants/ID`: a grant — the identity as at login, the client, the app's URL, the
//!   hash of its one current refresh token, and when it ends (the login's `max_session_ttl`).
//!   Deleting it revokes every token of it at once.
//! - `oauth/refresh/HASH` → grant id; `oauth/access/HASH`: an access token (≤ 10 minutes).
//! - `oauth/consents/USER/CLIENT`: a remembered consent.
//!
//! Only hashes of codes and tokens are stored; no token appears in a log or an event.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

use mcpgate_store::Store;
use mcpgate_types::Claims;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::unix_secs;

use crate::service::{from_json, random_token, to_json, token_id};
use crate::{AuthError, AuthService, Caller, Result};

/// How long an access token lives at most.
pub const ACCESS_TTL: Duration = Duration::from_secs(10 * 60);
/// How long an authorization code may wait for its exchange.
const CODE_TTL: i64 = 60;
/// How long a person may take between the authorize page and the consent.
const REQUEST_TTL: i64 = 10 * 60;
/// How long a taken code is remembered (to revoke what it yielded if it comes back).
const USED_TTL: i64 = 10 * 60;
/// Authorization requests one source network may open in the limiter's window.
const REQUESTS_PER_ADDR: u32 = 120;
/// Dynamic registrations one source address may make in the limiter's window.
const REGISTRATIONS_PER_ADDR: u32 = 20;
/// The one scope: use the app's MCP endpoint as the person who granted it.
pub const SCOPE: &str = "mcp";
/// Where apps are served to OAuth clients, under the issuer.
pub const APPS_PATH: &str = "/mcp/apps/";

const CLIENTS: &str = "oauth/clients/";
const REQUESTS: &str = "oauth/requests/";
const CODES: &str = "oauth/codes/";
const USED: &str = "oauth/used/";
const GRANTS: &str = "oauth/grants/";
const REFRESH: &str = "oauth/refresh/";
const ACCESS: &str = "oauth/access/";
const CONSENTS: &str = "oauth/consents/";
const REVOKED: &str = "oauth/revoked/";

/// A registered client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OAuthClient {
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    /// `native` (loopback or custom-scheme redirects) or `web` (https redirects).
    pub application_type: String,
    /// `dcr` (registered by the client itself) or `admin:NAME`.
    pub via: String,
    /// Unix seconds.
    pub created: i64,
}

impl OAuthClient {
    /// The registration as RFC 7591 answers it.
    pub fn registration(&self) -> Value {
        serde_json::json!({
            "client_id": self.client_id,
            "client_id_issued_at": self.created,
            "client_name": self.client_name,
            "redirect_uris": self.redirect_uris,
            "application_type": self.application_type,
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": SCOPE,
        })
    }

    /// The name shown on the consent page: the client's own, and for a client known by its
    /// metadata document, the host that vouches for it.
    pub fn display_name(&self) -> String {
        let name = self.client_name.as_deref().unwrap_or(&self.client_id);
        match (self.via.as_str(), self.client_id.parse::<axum::http::Uri>()) {
            ("cimd", Ok(u)) => format!("{name} (from {})", u.host().unwrap_or_default()),
            ("dcr", _) => format!("{name} (registered itself)"),
            _ => name.to_string(),
        }
    }

    /// The registered redirect URI `given` stands for: the same text, or for a loopback
    /// one (RFC 8252 §7.3) the same but for the port.
    fn redirect<'a>(&self, given: &'a str) -> Option<&'a str> {
        self.redirect_uris
            .iter()
            .find(|r| r.as_str() == given || loopback_match(r, given))
            .map(|_| given)
    }
}

/// A registration request (RFC 7591); what mcpgate does not support is refused.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Registration {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub application_type: Option<String>,
    pub token_endpoint_auth_method: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub response_types: Option<Vec<String>>,
    pub scope: Option<String>,
}

/// A registration the server refuses: `invalid_redirect_uri` or `invalid_client_metadata`.
#[derive(Debug)]
pub struct RegistrationError {
    pub error: &'static str,
    pub description: String,
}

/// An authorization request as the client sent it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub state: Option<String>,
    pub scope: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub resource: Option<String>,
}

/// Why an authorization request goes no further.
#[derive(Debug)]
pub enum AuthorizeError {
    /// The client or its redirect URI cannot be trusted: told to the person, never
    /// redirected (an open redirector otherwise).
    Show(String),
    /// Sent back to the client at its redirect URI.
    Redirect(String),
}

/// A pending authorization request, between the authorize page and the consent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    /// The app's URL: the audience of the tokens.
    pub resource: String,
    pub app: String,
    /// SHA-256 of the cookie of the browser that opened the request.
    browser: String,
    /// The token the request's forms carry.
    pub csrf: String,
    /// Once the person logged in: who they are and until when they may stay.
    login: Option<Login>,
    expires: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Login {
    claims: Claims,
    /// Unix seconds: when the login happened and when its session would end.
    issued: i64,
    until: i64,
}

impl Pending {
    /// The host the client's redirect goes to, shown on the consent page.
    pub fn redirect_host(&self) -> String {
        self.redirect_uri
            .parse::<axum::http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.to_string()))
            .unwrap_or_default()
    }

    /// The origin of the redirect URI (`scheme://authority`), which the consent form's
    /// answer redirects to.
    pub fn redirect_origin(&self) -> String {
        origin(&self.redirect_uri)
    }

    /// The person logged in on this request, if they have.
    pub fn user(&self) -> Option<&str> {
        self.login.as_ref().map(|l| l.claims.name.as_str())
    }
}

/// `scheme://authority` of a URI, or "" when it has none.
pub fn origin(uri: &str) -> String {
    match uri.parse::<axum::http::Uri>() {
        Ok(u) => match (u.scheme_str(), u.authority()) {
            (Some(s), Some(a)) => format!("{s}://{a}"),
            _ => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// What the login step leads to.
pub enum AfterLogin {
    /// The person has not let this client act for them before: ask.
    Consent(Box<Pending>),
    /// Consent remembered: back to the client with a code.
    Redirect(String),
}

/// A grant: what a client may do for a person, on one app, until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Grant {
    id: String,
    claims: Claims,
    client_id: String,
    resource: String,
    /// Unix seconds: the login's time and when the grant ends.
    issued: i64,
    until: i64,
    /// SHA-256 of the one refresh token that is current.
    refresh: String,
}

/// An authorization code as stored (under its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Code {
    grant: Grant,
    redirect_uri: String,
    code_challenge: String,
    expires: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Access {
    grant: String,
    expires: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Used {
    grant: String,
    expires: i64,
}

/// A token request (RFC 6749 §4.1.3, §6), form-encoded.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub client_id: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub client_secret: Option<String>,
}

/// Tokens as the token endpoint answers them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    /// None for a bot (client credentials): it asks again with its renewed certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
}

/// An error of the token or revocation endpoint (RFC 6749 §5.2).
#[derive(Debug)]
pub struct TokenError {
    pub error: &'static str,
    pub description: String,
}

impl TokenError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        TokenError {
            error,
            description: description.into(),
        }
    }
}

impl From<mcpgate_store::StoreError> for TokenError {
    fn from(e: mcpgate_store::StoreError) -> Self {
        AuthError::from(e).into()
    }
}

impl From<AuthError> for TokenError {
    fn from(e: AuthError) -> Self {
        // Storage and the like: the client can only retry.
        tracing::error!(error = %e, "the token endpoint failed");
        TokenError::new("server_error", "the authorization server cannot answer now")
    }
}

/// Who an access token stands for, checked now.
#[derive(Debug, Clone)]
pub struct Bearer {
    /// The identity as at login, with the client named.
    pub claims: Claims,
    /// Unix seconds: the login, and when the grant ends.
    pub issued: i64,
    pub until: i64,
    /// The grant, so an HTTP session stays with the grant that opened it.
    pub grant: String,
}

/// Why a bearer token is refused: 401 (`invalid_token`) and what to say, or 403
/// (`insufficient_scope`) with the scope a new token needs (step-up).
#[derive(Debug)]
pub struct BearerError {
    pub why: String,
    /// Set when the token is valid but lacks this scope.
    pub needs_scope: Option<String>,
}

impl BearerError {
    pub fn invalid(why: impl Into<String>) -> Self {
        BearerError {
            why: why.into(),
            needs_scope: None,
        }
    }
}

/// Whether `registered` and `given` are the same loopback redirect but for the port.
fn loopback_match(registered: &str, given: &str) -> bool {
    let (Ok(r), Ok(g)) = (
        registered.parse::<axum::http::Uri>(),
        given.parse::<axum::http::Uri>(),
    ) else {
        return false;
    };
    let loopback = |u: &axum::http::Uri| {
        u.scheme_str() == Some("http")
            && matches!(u.host(), Some("127.0.0.1" | "[::1]" | "::1" | "localhost"))
    };
    loopback(&r)
        && loopback(&g)
        && r.host() == g.host()
        && r.path_and_query().map(|p| p.as_str()) == g.path_and_query().map(|p| p.as_str())
        && r.authority()
            .is_some_and(|a| a.as_str().rsplit_once('@').is_none())
        && g.authority()
            .is_some_and(|a| a.as_str().rsplit_once('@').is_none())
}

/// A redirect URI a client may register: absolute, no fragment, no user info; https, or
/// http on a loopback address, or a private-use scheme (`com.example.app:/cb`) for a native
/// client.
fn check_redirect(uri: &str, native: bool) -> std::result::Result<(), String> {
    if uri.len() > 2000 {
        return Err("a redirect URI is longer than 2000 characters".into());
    }
    if uri.contains('#') {
        return Err(format!("redirect URI {uri:?} has a fragment"));
    }
    // A private-use scheme (RFC 8252 §7.1): `com.example.app:/callback`.
    if let Some((scheme, rest)) = uri.split_once(':')
        && !rest.starts_with("//")
    {
        let ok = native
            && scheme.contains('.')
            && scheme
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        return if ok && rest.starts_with('/') {
            Ok(())
        } else {
            Err(format!(
                "redirect URI {uri:?}: use https, http on a loopback address, or (native apps) a reverse-domain scheme"
            ))
        };
    }
    let u: axum::http::Uri = uri
        .parse()
        .map_err(|_| format!("redirect URI {uri:?} is not an absolute URI"))?;
    let Some(scheme) = u.scheme_str() else {
        return Err(format!("redirect URI {uri:?} is not an absolute URI"));
    };
    if u.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("redirect URI {uri:?} carries user information"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if matches!(u.host(), Some("127.0.0.1" | "[::1]" | "::1" | "localhost")) => Ok(()),
        "http" => Err(format!(
            "redirect URI {uri:?}: http is allowed only on a loopback address; use https"
        )),
        _ => Err(format!(
            "redirect URI {uri:?}: use https, http on a loopback address, or (native apps) a reverse-domain scheme"
        )),
    }
}

/// The app an MCP resource URL names, if it is one of `issuer`'s.
pub fn app_of<'a>(issuer: &str, resource: &'a str) -> Option<&'a str> {
    let name = resource
        .strip_prefix(issuer)?
        .strip_prefix(APPS_PATH)?
        .trim_end_matches('/');
    mcpgate_types::Name::new(name).ok().map(|_| name)
}

/// S256 of a PKCE verifier (RFC 7636 §4.2), base64url without padding.
fn s256(verifier: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// `uri` with `params` added to its query.
pub fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", q.finish())
}

use crate::service::same_secret as same;

/// The public key every OAuth session certificate carries: those certificates never
/// authenticate a TLS connection (the proxy hands their sessions over in memory), so no
/// private key is kept for them.
fn session_key() -> Result<&'static str> {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(k) = KEY.get() {
        return Ok(k);
    }
    let key = rcgen::KeyPair::generate().map_err(mcpgate_pki::PkiError::from)?;
    Ok(KEY.get_or_init(|| key.public_key_pem()))
}

impl AuthService {
    /// Registers a client: by itself (RFC 7591, `by` = None) or by an admin.
    pub async fn oauth_register(
        &self,
        reg: Registration,
        by: Option<&Caller>,
        addr: Option<IpAddr>,
    ) -> std::result::Result<OAuthClient, RegistrationError> {
        let bad = |error, description: String| RegistrationError { error, description };
        if let Some(c) = by {
            c.require("oauth_client", "create")
                .map_err(|e| bad("access_denied", e.to_string()))?;
        }
        // Anyone may register: a source address gets a few registrations per window.
        if by.is_none()
            && let Some(a) = addr
        {
            let key = format!("register:{}", network(a));
            let now = self.now();
            let mut rl = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            if rl.limited(&key, REGISTRATIONS_PER_ADDR, now) {
                return Err(bad(
                    "rate_limited",
                    "too many client registrations from this address; try again in a few minutes"
                        .into(),
                ));
            }
            rl.fail(key, now);
        }
        let application_type = reg.application_type.clone().unwrap_or("web".into());
        if !matches!(application_type.as_str(), "web" | "native") {
            return Err(bad(
                "invalid_client_metadata",
                format!("application_type {application_type:?}: web or native"),
            ));
        }
        if reg.redirect_uris.is_empty() || reg.redirect_uris.len() > 16 {
            return Err(bad(
                "invalid_redirect_uri",
                "a client registers between 1 and 16 redirect_uris".into(),
            ));
        }
        // A client that registers only loopback redirects is native whatever it says.
        let native = application_type == "native"
            || reg
                .redirect_uris
                .iter()
                .all(|u| origin(u).starts_with("http://"));
        for u in &reg.redirect_uris {
            check_redirect(u, native).map_err(|e| bad("invalid_redirect_uri", e))?;
        }
        if let Some(m) = reg.token_endpoint_auth_method.as_deref()
            && m != "none"
        {
            // Clients that ask for a secret get a public registration: PKCE binds the code.
            tracing::debug!(
                method = m,
                "registered as a public client (auth method none)"
            );
        }
        if let Some(g) = &reg.grant_types
            && g.iter()
                .any(|g| g != "authorization_code" && g != "refresh_token")
        {
            return Err(bad(
                "invalid_client_metadata",
                "grant_types: authorization_code and refresh_token only".into(),
            ));
        }
        if let Some(r) = &reg.response_types
            && r.iter().any(|r| r != "code")
        {
            return Err(bad(
                "invalid_client_metadata",
                "response_types: code only".into(),
            ));
        }
        let name = reg.client_name.as_deref().map(clean_name);
        let client = OAuthClient {
            client_id: format!("mcpgate-{}", mcpgate_types::audit::random_id()),
            client_name: name,
            redirect_uris: reg.redirect_uris,
            application_type: if native {
                "native".into()
            } else {
                "web".into()
            },
            via: by.map_or("dcr".into(), |c| format!("admin:{}", c.name())),
            created: unix_secs(self.now()),
        };
        let stored = async {
            self.store
                .put(
                    &format!("{CLIENTS}{}", client.client_id),
                    &to_json(&client)?,
                )
                .await?;
            let who = by
                .map(|c| c.info.claims.clone())
                .unwrap_or_else(|| self.claims("oauth", mcpgate_types::IdentityKind::User, &[]));
            self.emit(self.event(
                codes::OAUTH_CLIENT_CREATE.0,
                codes::OAUTH_CLIENT_CREATE.1,
                &who,
                true,
                [
                    ("client_id", Value::from(client.client_id.as_str())),
                    ("client_name", Value::from(client.client_name.clone())),
                    ("redirect_uris", Value::from(client.redirect_uris.clone())),
                    ("via", Value::from(client.via.as_str())),
                ],
            ))
            .await
        };
        stored
            .await
            .map_err(|e| bad("server_error", e.to_string()))?;
        Ok(client)
    }

    /// A registered client, or one known by its metadata document (an https client id;
    /// `BadRequest` says why such a document cannot be used).
    pub async fn oauth_client(&self, id: &str) -> Result<Option<OAuthClient>> {
        if crate::cimd::is_document_id(id) {
            let doc = self
                .cimd
                .document(id)
                .await
                .map_err(AuthError::BadRequest)?;
            let native = doc
                .redirect_uris
                .iter()
                .all(|u| origin(u).starts_with("http://"));
            for u in &doc.redirect_uris {
                check_redirect(u, native)
                    .map_err(|e| AuthError::BadRequest(format!("client_id {id:?}: {e}")))?;
            }
            return Ok(Some(OAuthClient {
                client_id: id.to_string(),
                client_name: doc.client_name.as_deref().map(clean_name),
                redirect_uris: doc.redirect_uris,
                application_type: if native {
                    "native".into()
                } else {
                    "web".into()
                },
                via: "cimd".into(),
                created: unix_secs(self.now()),
            }));
        }
        if id.is_empty() || id.len() > 200 || id.contains('/') {
            return Ok(None);
        }
        match self.store.get(&format!("{CLIENTS}{id}")).await? {
            Some(b) => Ok(Some(from_json(&b)?)),
            None => Ok(None),
        }
    }

    /// Every registered client (`admin oauth clients ls`).
    pub async fn oauth_clients(&self, caller: &Caller) -> Result<Vec<OAuthClient>> {
        caller.require("oauth_client", "list")?;
        self.store
            .list(CLIENTS)
            .await?
            .iter()
            .map(|(_, b)| from_json(b))
            .collect()
    }

    /// Removes a client; its grants end with it (their tokens are refused from now on).
    pub async fn oauth_remove_client(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.require("oauth_client", "delete")?;
        if !self.store.delete(&format!("{CLIENTS}{id}")).await? {
            return Err(AuthError::NotFound(format!("OAuth client {id:?}")));
        }
        for (k, b) in self.store.list(GRANTS).await? {
            if from_json::<Grant>(&b).is_ok_and(|g| g.client_id == id) {
                self.store.delete(&k).await?;
            }
        }
        self.emit(self.event(
            codes::OAUTH_CLIENT_DELETE.0,
            codes::OAUTH_CLIENT_DELETE.1,
            &caller.info.claims,
            true,
            [("client_id", Value::from(id))],
        ))
        .await
    }

    /// Checks an authorization request and keeps it for the login and consent that follow;
    /// `browser` is the cookie the requesting browser now holds.
    pub async fn oauth_begin(
        &self,
        issuer: &str,
        p: &AuthorizeParams,
        browser: &str,
        addr: Option<IpAddr>,
    ) -> std::result::Result<Pending, AuthorizeError> {
        let show = AuthorizeError::Show;
        // Each request is kept until it is answered or expires: a source network may open
        // a bounded number of them.
        if let Some(a) = addr {
            let key = format!("authorize:{}", network(a));
            let now = self.now();
            let mut rl = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            if rl.limited(&key, REQUESTS_PER_ADDR, now) {
                return Err(show(
                    "too many authorization requests from this address; try again in a few minutes"
                        .into(),
                ));
            }
            rl.fail(key, now);
        }
        let internal = |e: AuthError| AuthorizeError::Show(format!("internal error: {e}"));
        let client_id = p
            .client_id
            .as_deref()
            .ok_or_else(|| show("the request names no client_id".into()))?;
        let client = match self.oauth_client(client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(show(format!("unknown client {client_id:?}"))),
            Err(AuthError::BadRequest(why)) => return Err(show(why)),
            Err(e) => return Err(internal(e)),
        };
        let given = p
            .redirect_uri
            .as_deref()
            .ok_or_else(|| show("the request names no redirect_uri".into()))?;
        let redirect_uri = client
            .redirect(given)
            .ok_or_else(|| {
                show(format!(
                    "redirect_uri {given:?} is not one client {client_id:?} registered"
                ))
            })?
            .to_string();
        // From here on errors go back to the client, with its state and our issuer.
        // Before anyone has logged in, an error goes back to the client only if an admin
        // registered it: anyone can register a client (or host a metadata document) whose
        // redirect is theirs, and a link to a bad request would then redirect from this
        // proxy to anywhere (RFC 9700 §4.11.2). Others see the error here.
        let trusted = client.via.starts_with("admin:");
        let back = |error: &str, description: &str| {
            if !trusted {
                return AuthorizeError::Show(format!(
                    "{} sent an invalid authorization request ({error}): {description}",
                    client.display_name()
                ));
            }
            let mut q = vec![
                ("error", error),
                ("error_description", description),
                ("iss", issuer),
            ];
            if let Some(s) = p.state.as_deref() {
                q.push(("state", s));
            }
            AuthorizeError::Redirect(with_query(&redirect_uri, &q))
        };
        if p.state.as_deref().is_some_and(|s| s.len() > 1024) {
            return Err(back(
                "invalid_request",
                "state is longer than 1024 characters",
            ));
        }
        if p.response_type.as_deref() != Some("code") {
            return Err(back(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        let challenge = match (
            p.code_challenge.as_deref(),
            p.code_challenge_method.as_deref(),
        ) {
            (Some(c), Some("S256")) if (43..=128).contains(&c.len()) => c.to_string(),
            (None, _) => {
                return Err(back(
                    "invalid_request",
                    "PKCE is required: code_challenge with code_challenge_method=S256",
                ));
            }
            (Some(_), Some("S256")) => {
                return Err(back(
                    "invalid_request",
                    "code_challenge must be 43 to 128 characters",
                ));
            }
            _ => {
                return Err(back(
                    "invalid_request",
                    "code_challenge_method must be S256 (plain is not accepted)",
                ));
            }
        };
        if let Some(scope) = p.scope.as_deref()
            && scope.split(' ').any(|s| !s.is_empty() && s != SCOPE)
        {
            return Err(back(
                "invalid_scope",
                &format!("the only scope is {SCOPE:?}"),
            ));
        }
        let Some(resource) = p.resource.as_deref() else {
            return Err(back(
                "invalid_target",
                "resource is required: the URL of the app (RFC 8707)",
            ));
        };
        let Some(app) = app_of(issuer, resource) else {
            return Err(back(
                "invalid_target",
                &format!("resource must be an app's URL: {issuer}{APPS_PATH}NAME"),
            ));
        };
        let pending = Pending {
            id: random_token().map_err(internal)?,
            client_id: client.client_id.clone(),
            client_name: client.display_name(),
            redirect_uri,
            state: p.state.clone(),
            code_challenge: challenge,
            resource: resource.trim_end_matches('/').to_string(),
            app: app.to_string(),
            browser: token_id(browser),
            csrf: random_token().map_err(internal)?,
            login: None,
            expires: unix_secs(self.now()) + REQUEST_TTL,
        };
        self.store
            .put(
                &format!("{REQUESTS}{}", token_id(&pending.id)),
                &to_json(&pending).map_err(internal)?,
            )
            .await
            .map_err(|e| internal(e.into()))?;
        Ok(pending)
    }

    /// The request `id`, if it is live and belongs to this browser and form.
    pub async fn oauth_pending(&self, id: &str, browser: &str, csrf: &str) -> Result<Pending> {
        let stale = || {
            AuthError::BadRequest(
                "this authorization request expired or belongs to another browser: start again from your client".into(),
            )
        };
        let b = self
            .store
            .get(&format!("{REQUESTS}{}", token_id(id)))
            .await?
            .ok_or_else(stale)?;
        let p: Pending = from_json(&b)?;
        if unix_secs(self.now()) >= p.expires
            || !same(&p.browser, &token_id(browser))
            || !same(&p.csrf, csrf)
        {
            return Err(stale());
        }
        Ok(p)
    }

    /// The person logs in on an authorization request (the checks of `mcpgate login`).
    pub async fn oauth_login(
        &self,
        issuer: &str,
        mut pending: Pending,
        user: &str,
        password: &str,
        otp: Option<&str>,
        addr: Option<IpAddr>,
    ) -> Result<AfterLogin> {
        let login = self.verified(user, password, otp, addr).await?;
        let now = unix_secs(self.issue_time(&login.claims).await?);
        self.emit(self.event(
            codes::USER_LOGIN.0,
            codes::USER_LOGIN.1,
            &login.claims,
            true,
            [
                ("method", Value::from(login.method)),
                ("via", Value::from("oauth")),
                ("client_id", Value::from(pending.client_id.as_str())),
            ],
        ))
        .await?;
        pending.login = Some(Login {
            claims: login.claims,
            issued: now,
            until: now + login.max_ttl.as_secs() as i64,
        });
        let consented = self
            .store
            .get(&consent_key(
                pending.user().unwrap_or_default(),
                &pending.client_id,
                &pending.resource,
            ))
            .await?
            .is_some();
        if consented {
            return Ok(AfterLogin::Redirect(
                self.oauth_grant(issuer, pending).await?,
            ));
        }
        self.store
            .put(
                &format!("{REQUESTS}{}", token_id(&pending.id)),
                &to_json(&pending)?,
            )
            .await?;
        Ok(AfterLogin::Consent(Box::new(pending)))
    }

    /// The person's answer on the consent page: where the browser goes next.
    pub async fn oauth_consent(
        &self,
        issuer: &str,
        pending: Pending,
        allow: bool,
    ) -> Result<String> {
        let Some(user) = pending.user().map(str::to_string) else {
            return Err(AuthError::BadRequest(
                "log in before answering the consent".into(),
            ));
        };
        if !allow {
            self.store
                .delete(&format!("{REQUESTS}{}", token_id(&pending.id)))
                .await?;
            let mut q = vec![
                ("error", "access_denied"),
                ("error_description", "the person declined"),
                ("iss", issuer),
            ];
            if let Some(s) = pending.state.as_deref() {
                q.push(("state", s));
            }
            return Ok(with_query(&pending.redirect_uri, &q));
        }
        self.store
            .put(
                &consent_key(&user, &pending.client_id, &pending.resource),
                &to_json(&serde_json::json!({"time": unix_secs(self.now())}))?,
            )
            .await?;
        self.oauth_grant(issuer, pending).await
    }

    /// Issues the code of a logged-in, consented request: the redirect back to the client.
    async fn oauth_grant(&self, issuer: &str, pending: Pending) -> Result<String> {
        // The request is used up: taken, so two submissions cannot both issue a code.
        if self
            .store
            .take(&format!("{REQUESTS}{}", token_id(&pending.id)))
            .await?
            .is_none()
        {
            return Err(AuthError::BadRequest(
                "this authorization request was already answered".into(),
            ));
        }
        let login = pending
            .login
            .clone()
            .ok_or_else(|| AuthError::BadRequest("log in first".into()))?;
        let mut claims = login.claims;
        claims.oauth_client = Some(pending.client_id.clone());
        let grant = Grant {
            id: mcpgate_types::audit::random_id(),
            claims,
            client_id: pending.client_id.clone(),
            resource: pending.resource.clone(),
            issued: login.issued,
            until: login.until,
            refresh: String::new(),
        };
        let code = random_token()?;
        let stored = Code {
            grant,
            redirect_uri: pending.redirect_uri.clone(),
            code_challenge: pending.code_challenge.clone(),
            expires: unix_secs(self.now()) + CODE_TTL,
        };
        self.store
            .put(&format!("{CODES}{}", token_id(&code)), &to_json(&stored)?)
            .await?;
        self.emit(self.event(
            codes::OAUTH_GRANT.0,
            codes::OAUTH_GRANT.1,
            &stored.grant.claims,
            true,
            [
                ("app", Value::from(pending.app.as_str())),
                ("resource", Value::from(pending.resource.as_str())),
                ("grant", Value::from(stored.grant.id.as_str())),
                ("redirect_host", Value::from(pending.redirect_host())),
            ],
        ))
        .await?;
        let mut q = vec![("code", code.as_str()), ("iss", issuer)];
        if let Some(s) = pending.state.as_deref() {
            q.push(("state", s));
        }
        Ok(with_query(&pending.redirect_uri, &q))
    }

    /// The token endpoint: an authorization code or a refresh token for new tokens.
    pub async fn oauth_token(&self, req: &TokenRequest) -> std::result::Result<Tokens, TokenError> {
        let client_id = req
            .client_id
            .as_deref()
            .ok_or_else(|| TokenError::new("invalid_client", "client_id is required"))?;
        match self.oauth_client(client_id).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(TokenError::new("invalid_client", "unknown client")),
            Err(AuthError::BadRequest(why)) => return Err(TokenError::new("invalid_client", why)),
            Err(e) => return Err(e.into()),
        }
        match req.grant_type.as_deref() {
            Some("authorization_code") => self.exchange_code(client_id, req).await,
            Some("refresh_token") => self.refresh(client_id, req).await,
            Some(_) => Err(TokenError::new(
                "unsupported_grant_type",
                "authorization_code and refresh_token only",
            )),
            None => Err(TokenError::new("invalid_request", "grant_type is required")),
        }
    }

    async fn exchange_code(
        &self,
        client_id: &str,
        req: &TokenRequest,
    ) -> std::result::Result<Tokens, TokenError> {
        let invalid = |d: &str| TokenError::new("invalid_grant", d);
        let code = req
            .code
            .as_deref()
            .ok_or_else(|| TokenError::new("invalid_request", "code is required"))?;
        let hash = token_id(code);
        let now = unix_secs(self.now());
        let Some(b) = self.store.take(&format!("{CODES}{hash}")).await? else {
            // A code that was used before: what it yielded is revoked (RFC 6749 §4.1.2).
            if let Some(b) = self.store.get(&format!("{USED}{hash}")).await?
                && let Ok(used) = from_json::<Used>(&b)
                && used.expires > now
            {
                self.revoke_grant(&used.grant, "an authorization code was used twice", true)
                    .await?;
            }
            return Err(invalid("the code is invalid, expired or already used"));
        };
        let stored: Code = from_json(&b)?;
        // Remembered before anything can fail: a second presentation revokes.
        self.store
            .put(
                &format!("{USED}{hash}"),
                &to_json(&Used {
                    grant: stored.grant.id.clone(),
                    expires: now + USED_TTL,
                })?,
            )
            .await?;
        if stored.expires <= now {
            return Err(invalid("the code expired"));
        }
        if stored.grant.client_id != client_id {
            return Err(invalid("the code was issued to another client"));
        }
        if req.redirect_uri.as_deref() != Some(stored.redirect_uri.as_str()) {
            return Err(invalid(
                "redirect_uri must be the one of the authorization request",
            ));
        }
        let Some(verifier) = req.code_verifier.as_deref() else {
            return Err(TokenError::new(
                "invalid_request",
                "code_verifier is required (PKCE)",
            ));
        };
        if !(43..=128).contains(&verifier.len()) || !same(&s256(verifier), &stored.code_challenge) {
            return Err(invalid("code_verifier does not match the code_challenge"));
        }
        if let Some(r) = req.resource.as_deref()
            && r.trim_end_matches('/') != stored.grant.resource
        {
            return Err(TokenError::new(
                "invalid_target",
                "resource is not the one the person granted",
            ));
        }
        let mut grant = stored.grant;
        if now >= grant.until {
            return Err(invalid("the login behind this code has ended"));
        }
        let (tokens, refresh_hash) = self.new_tokens(&grant, now).await?;
        grant.refresh = refresh_hash.clone();
        self.store
            .put(&format!("{GRANTS}{}", grant.id), &to_json(&grant)?)
            .await?;
        self.store
            .put(&format!("{REFRESH}{refresh_hash}"), grant.id.as_bytes())
            .await?;
        // The same code presented again while this exchange ran: what it made is revoked.
        if self
            .store
            .get(&format!("{REVOKED}{}", grant.id))
            .await?
            .is_some()
        {
            self.revoke_grant(&grant.id, "an authorization code was used twice", true)
                .await?;
            return Err(invalid("the code was used twice"));
        }
        self.token_event(&grant, "authorization_code", tokens.expires_in)
            .await?;
        Ok(tokens)
    }

    async fn refresh(
        &self,
        client_id: &str,
        req: &TokenRequest,
    ) -> std::result::Result<Tokens, TokenError> {
        let invalid = |d: &str| TokenError::new("invalid_grant", d);
        let token = req
            .refresh_token
            .as_deref()
            .ok_or_else(|| TokenError::new("invalid_request", "refresh_token is required"))?;
        let hash = token_id(token);
        let Some(grant_id) = self.store.get(&format!("{REFRESH}{hash}")).await? else {
            return Err(invalid("the refresh token is invalid or revoked"));
        };
        let grant_id = String::from_utf8_lossy(&grant_id).to_string();
        let key = format!("{GRANTS}{grant_id}");
        let Some(old) = self.store.get(&key).await? else {
            return Err(invalid("the refresh token is invalid or revoked"));
        };
        let mut grant: Grant = from_json(&old)?;
        if grant.client_id != client_id {
            return Err(invalid("the refresh token was issued to another client"));
        }
        if !same(&grant.refresh, &hash) {
            // A refresh token that was already rotated: someone holds a copy. The whole
            // grant ends (OAuth 2.1 §4.3.1).
            self.revoke_grant(&grant_id, "a rotated refresh token was used again", true)
                .await?;
            return Err(invalid("the refresh token was already used"));
        }
        if let Some(r) = req.resource.as_deref()
            && r.trim_end_matches('/') != grant.resource
        {
            return Err(TokenError::new(
                "invalid_target",
                "resource is not the one the person granted",
            ));
        }
        let now = unix_secs(self.now());
        if now >= grant.until {
            self.revoke_grant(&grant_id, "the grant's time is up", false)
                .await?;
            return Err(invalid("the grant has ended: authorize again"));
        }
        if let Some(lock) = self.lock_for(&grant.claims, Some(grant.issued)).await? {
            return Err(invalid(&format!(
                "{} is locked: {}",
                lock.target, lock.message
            )));
        }
        let (tokens, refresh_hash) = self.new_tokens(&grant, now).await?;
        grant.refresh = refresh_hash.clone();
        // Rotation is a compare-and-swap: of two refreshes with the same token, one wins
        // and the other is reuse.
        if !self
            .store
            .compare_and_swap(&key, &old, &to_json(&grant)?)
            .await?
        {
            self.revoke_grant(&grant_id, "a refresh token was used twice at once", true)
                .await?;
            return Err(invalid("the refresh token was already used"));
        }
        self.store
            .put(&format!("{REFRESH}{refresh_hash}"), grant.id.as_bytes())
            .await?;
        self.token_event(&grant, "refresh_token", tokens.expires_in)
            .await?;
        Ok(tokens)
    }

    async fn new_tokens(&self, grant: &Grant, now: i64) -> Result<(Tokens, String)> {
        let access = format!("mga_{}", random_token()?);
        let refresh = format!("mgr_{}", random_token()?);
        let ttl = (ACCESS_TTL.as_secs() as i64).min(grant.until - now).max(1);
        self.store
            .put(
                &format!("{ACCESS}{}", token_id(&access)),
                &to_json(&Access {
                    grant: grant.id.clone(),
                    expires: now + ttl,
                })?,
            )
            .await?;
        let refresh_hash = token_id(&refresh);
        Ok((
            Tokens {
                access_token: access,
                token_type: "Bearer".into(),
                expires_in: ttl as u64,
                refresh_token: Some(refresh),
                scope: SCOPE.into(),
            },
            refresh_hash,
        ))
    }

    async fn token_event(&self, grant: &Grant, grant_type: &str, expires_in: u64) -> Result<()> {
        self.emit(self.event(
            codes::OAUTH_TOKEN.0,
            codes::OAUTH_TOKEN.1,
            &grant.claims,
            true,
            [
                ("grant", Value::from(grant.id.as_str())),
                ("grant_type", Value::from(grant_type)),
                ("resource", Value::from(grant.resource.as_str())),
                ("expires_in", Value::from(expires_in)),
            ],
        ))
        .await
    }

    /// Ends a grant: every access and refresh token of it is refused from now on.
    async fn revoke_grant(&self, id: &str, reason: &str, reuse: bool) -> Result<()> {
        let key = format!("{GRANTS}{id}");
        let Some(b) = self.store.get(&key).await? else {
            // Not stored yet (a code exchanged twice at once): the first exchange finds this
            // and revokes what it made.
            let until = unix_secs(self.now()) + USED_TTL;
            self.store
                .put(
                    &format!("{REVOKED}{id}"),
                    &to_json(&serde_json::json!({"expires": until}))?,
                )
                .await?;
            return Ok(());
        };
        if !self.store.delete(&key).await? {
            return Ok(());
        }
        let grant: Grant = from_json(&b)?;
        let code = if reuse {
            codes::OAUTH_TOKEN_REUSE
        } else {
            codes::OAUTH_TOKEN_REVOKE
        };
        self.emit(self.event(
            code.0,
            code.1,
            &grant.claims,
            !reuse,
            [("grant", Value::from(id)), ("reason", Value::from(reason))],
        ))
        .await
    }

    /// The client credentials grant for bots (RFC 6749 §4.4), the client authenticated by
    /// the bot's certificate on the TLS connection (RFC 8705 §2): an HTTP-only agent uses its
    /// bot identity. The token lives 10 minutes at most and never past the certificate; no
    /// refresh token (the bot asks again with its renewed certificate).
    pub async fn oauth_client_credentials(
        &self,
        issuer: &str,
        peer: Option<&[rustls_pki_types::CertificateDer<'static>]>,
        req: &TokenRequest,
    ) -> std::result::Result<Tokens, TokenError> {
        let caller = match self.caller(peer).await {
            Ok(c) => c,
            Err(AuthError::Store(e)) => return Err(AuthError::Store(e).into()),
            Err(e) => {
                return Err(TokenError::new(
                    "invalid_client",
                    format!("client credentials need a bot's certificate on the connection: {e}"),
                ));
            }
        };
        if caller.info.claims.kind != mcpgate_types::IdentityKind::Bot {
            return Err(TokenError::new(
                "unauthorized_client",
                "the client credentials grant is for bots; people authorize in a browser",
            ));
        }
        let Some(resource) = req.resource.as_deref().map(|r| r.trim_end_matches('/')) else {
            return Err(TokenError::new(
                "invalid_target",
                "resource is required: the URL of the app (RFC 8707)",
            ));
        };
        let Some(app) = app_of(issuer, resource) else {
            return Err(TokenError::new(
                "invalid_target",
                format!("resource must be an app's URL: {issuer}{APPS_PATH}NAME"),
            ));
        };
        if let Some(scope) = req.scope.as_deref()
            && scope.split(' ').any(|s| !s.is_empty() && s != SCOPE)
        {
            return Err(TokenError::new(
                "invalid_scope",
                format!("the only scope is {SCOPE:?}"),
            ));
        }
        let mut claims = caller.info.claims.clone();
        claims.oauth_client = Some(format!("bot:{}", claims.name));
        // One grant per certificate and app: a bot asking again (every few minutes) renews
        // it rather than piling up grants, and its HTTP sessions stay with it.
        let id = token_id(&format!(
            "{}\n{}\n{}\n{resource}",
            caller.info.claims.name,
            caller.info.claims.generation,
            caller.info.issued()
        ));
        let grant = Grant {
            id: format!("bot-{}", &id[..32]),
            claims,
            client_id: format!("bot:{}", caller.info.claims.name),
            resource: resource.to_string(),
            issued: caller.info.issued(),
            until: unix_secs(caller.info.not_after),
            refresh: String::new(),
        };
        let now = unix_secs(self.now());
        self.store
            .put(&format!("{GRANTS}{}", grant.id), &to_json(&grant)?)
            .await?;
        let (mut tokens, _) = self.new_tokens(&grant, now).await?;
        tokens.refresh_token = None;
        self.emit(self.event(
            codes::OAUTH_TOKEN.0,
            codes::OAUTH_TOKEN.1,
            &grant.claims,
            true,
            [
                ("grant", Value::from(grant.id.as_str())),
                ("grant_type", Value::from("client_credentials")),
                ("app", Value::from(app)),
                ("resource", Value::from(resource)),
                ("expires_in", Value::from(tokens.expires_in)),
            ],
        ))
        .await?;
        Ok(tokens)
    }

    /// Revocation (RFC 7009): a refresh or access token of the client's; its grant ends.
    /// An unknown token is not an error.
    pub async fn oauth_revoke(
        &self,
        token: &str,
        client_id: &str,
    ) -> std::result::Result<(), TokenError> {
        let hash = token_id(token);
        let grant = match self.store.get(&format!("{REFRESH}{hash}")).await? {
            Some(g) => Some(String::from_utf8_lossy(&g).to_string()),
            None => match self.store.get(&format!("{ACCESS}{hash}")).await? {
                Some(b) => Some(from_json::<Access>(&b)?.grant),
                None => None,
            },
        };
        let Some(grant) = grant else { return Ok(()) };
        let Some(b) = self.store.get(&format!("{GRANTS}{grant}")).await? else {
            return Ok(());
        };
        if from_json::<Grant>(&b)?.client_id != client_id {
            return Err(TokenError::new(
                "invalid_client",
                "the token was issued to another client",
            ));
        }
        self.revoke_grant(&grant, "revoked by its client", false)
            .await?;
        Ok(())
    }

    /// Who an access token stands for on `resource` (an app's URL), checked now: known,
    /// not expired, its grant alive, for this app, and no lock on the person.
    pub async fn oauth_bearer(
        &self,
        token: &str,
        resource: &str,
    ) -> Result<std::result::Result<Bearer, BearerError>> {
        let refuse = |why: &str| Ok(Err(BearerError::invalid(why)));
        let Some(b) = self
            .store
            .get(&format!("{ACCESS}{}", token_id(token)))
            .await?
        else {
            return refuse("the access token is invalid or revoked");
        };
        let access: Access = from_json(&b)?;
        let now = unix_secs(self.now());
        if now >= access.expires {
            return refuse("the access token expired");
        }
        let Some(g) = self.store.get(&format!("{GRANTS}{}", access.grant)).await? else {
            return refuse("the access token was revoked");
        };
        let grant: Grant = from_json(&g)?;
        if grant.resource != resource.trim_end_matches('/') {
            return refuse("the access token was issued for another app");
        }
        if now >= grant.until {
            return refuse("the grant has ended");
        }
        if let Some(lock) = self.lock_for(&grant.claims, Some(grant.issued)).await? {
            return refuse(&format!("{} is locked: {}", lock.target, lock.message));
        }
        Ok(Ok(Bearer {
            claims: grant.claims,
            issued: grant.issued,
            until: grant.until,
            grant: grant.id,
        }))
    }

    /// Whether a grant (of this server's own tokens) still stands: not revoked, not ended.
    pub async fn oauth_grant_alive(&self, id: &str) -> Result<bool> {
        match self.store.get(&format!("{GRANTS}{id}")).await? {
            Some(b) => Ok(unix_secs(self.now()) < from_json::<Grant>(&b)?.until),
            None => Ok(false),
        }
    }

    /// The certificate chain an OAuth session presents to its agent, as a bridge's would:
    /// the person's claims (with the client named), valid until the grant ends. Nobody
    /// holds its private key; it never authenticates a connection.
    pub fn oauth_chain(
        &self,
        bearer: &Bearer,
    ) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
        // Issued as of the login, as a bridge's certificate would be: a lock that voids
        // what was issued before a time (`admin users update`) ends these sessions too.
        let issued = mcpgate_types::clock::from_unix_secs(bearer.issued);
        let ttl = Duration::from_secs((bearer.until - bearer.issued).max(1) as u64);
        let cert = self
            .user_ca()
            .issue(session_key()?, &bearer.claims, &[], issued, ttl)?;
        Ok(vec![cert])
    }

    /// Deletes expired OAuth records (requests, codes, access tokens, used codes, ended
    /// grants and their refresh tokens); `mcpgate start` runs it with the session sweep.
    pub async fn sweep_oauth(&self) -> Result<usize> {
        #[derive(Deserialize)]
        struct Expiring {
            #[serde(default)]
            expires: i64,
            #[serde(default)]
            until: i64,
        }
        let now = unix_secs(self.now());
        let mut gone = Vec::new();
        for prefix in [REQUESTS, CODES, ACCESS, USED, GRANTS, REVOKED] {
            for (k, b) in self.store.list(prefix).await? {
                if let Ok(e) = serde_json::from_slice::<Expiring>(&b)
                    && e.expires.max(e.until) <= now
                {
                    gone.push(k);
                }
            }
        }
        let grants: std::collections::HashSet<String> = self
            .store
            .list(GRANTS)
            .await?
            .into_iter()
            .filter(|(k, _)| !gone.contains(k))
            .map(|(k, _)| k.trim_start_matches(GRANTS).to_string())
            .collect();
        for (k, g) in self.store.list(REFRESH).await? {
            if !grants.contains(String::from_utf8_lossy(&g).as_ref()) {
                gone.push(k);
            }
        }
        self.store.delete_many(&gone).await?;
        Ok(gone.len())
    }
}

/// The network a rate limit counts an address in: the address itself for IPv4, its /64 for
/// IPv6 (one host holds a whole /64).
fn network(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// A client's name as people are shown it: 100 characters at most, hidden and control
/// characters (bidi overrides, zero-width) written out as escapes.
fn clean_name(name: &str) -> String {
    mcpgate_types::pins::escaped(&name.chars().take(100).collect::<String>()).replace('\n', " ")
}

fn consent_key(user: &str, client: &str, resource: &str) -> String {
    format!(
        "{CONSENTS}{}/{}",
        token_id(user),
        token_id(&format!("{client}\n{resource}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects_match_on_any_port_only() {
        let r = "http://127.0.0.1:0/callback";
        assert!(loopback_match(r, "http://127.0.0.1:53123/callback"));
        assert!(!loopback_match(r, "http://127.0.0.1:53123/callback/x"));
        assert!(!loopback_match(r, "http://localhost:53123/callback"));
        assert!(!loopback_match(
            r,
            "http://127.0.0.1.evil.example:80/callback"
        ));
        assert!(!loopback_match(r, "http://evil@127.0.0.1:80/callback"));
        assert!(!loopback_match(
            "https://app.example/cb",
            "https://app.example:444/cb"
        ));
    }

    #[test]
    fn redirect_uris_a_client_may_register() {
        assert!(check_redirect("https://app.example/cb", false).is_ok());
        assert!(check_redirect("http://127.0.0.1:9/cb", false).is_ok());
        assert!(check_redirect("com.example.app:/cb", true).is_ok());
        for bad in [
            "http://app.example/cb",
            "https://app.example/cb#x",
            "https://u@app.example/cb",
            "javascript:alert(1)",
            "/relative",
            "com.example.app:/cb",
        ] {
            assert!(check_redirect(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn pkce_s256_as_rfc7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn resources_name_apps_of_this_issuer_only() {
        let iss = "https://proxy.example:3080";
        assert_eq!(
            app_of(iss, "https://proxy.example:3080/mcp/apps/git"),
            Some("git")
        );
        assert_eq!(
            app_of(iss, "https://proxy.example:3080/mcp/apps/git/"),
            Some("git")
        );
        assert_eq!(app_of(iss, "https://other.example/mcp/apps/git"), None);
        assert_eq!(
            app_of(iss, "https://proxy.example:3080/mcp/apps/../x"),
            None
        );
        assert_eq!(app_of(iss, "https://proxy.example:3080/mcp/apps/"), None);
    }
}

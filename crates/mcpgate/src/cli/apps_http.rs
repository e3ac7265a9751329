//! `https://PROXY/mcp/apps/NAME`: every app as a Streamable HTTP endpoint for MCP clients
//! that cannot run a bridge, protected by the proxy's own OAuth access tokens
//! (`mcpgate_auth::oauth`). A request is checked here — the bearer token (known, not
//! expired, its grant alive, issued for this app's URL, no lock on the person), no token in
//! the query string — and then served by the same endpoint code as `mcp proxy`, whose
//! sessions the proxy routes in memory with a certificate chain made for the grant: the
//! agent checks that chain, the caller's roles and every message as for a bridge, and
//! the audit names the person and the OAuth client. The client's token goes no further.

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mcpgate_auth::AuthService;
use mcpgate_auth::api::ConnInfo;
use mcpgate_auth::oauth::{APPS_PATH, SCOPE};

use super::endpoint::{Edge, Endpoint, Opener};

/// Grants with an endpoint at once, at most (each holds its own sessions, 256 at most).
const MAX_ENDPOINTS: usize = 4096;
/// How often the grants of open sessions are checked (idle sessions: every sixth time).
const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

struct Apps {
    auth: Arc<AuthService>,
    routes: mcpgate_proxy::Routes,
    issuer: String,
    /// Per grant and app, the endpoint that holds its sessions: a session id is only ever
    /// looked up among the sessions of the grant presenting it.
    endpoints: Mutex<HashMap<(String, String), Arc<Endpoint>>>,
}

/// The routes, and a task that ends idle sessions and forgets unused endpoints.
pub fn router(
    auth: Arc<AuthService>,
    routes: mcpgate_proxy::Routes,
    issuer: String,
) -> axum::Router {
    let apps = Arc::new(Apps {
        auth,
        routes,
        issuer,
        endpoints: Mutex::new(HashMap::new()),
    });
    let sweeper = Arc::downgrade(&apps);
    tokio::spawn(async move {
        let mut round = 0u32;
        loop {
            tokio::time::sleep(REVOCATION_CHECK).await;
            let Some(apps) = sweeper.upgrade() else {
                return;
            };
            round += 1;
            // A grant revoked (by its client, by a reused token, with its client) or ended:
            // its open sessions end too, not only its next request.
            let all: Vec<((String, String), Arc<Endpoint>)> = apps
                .map()
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            for ((grant, app), e) in all {
                let ours = !grant.starts_with("idp:");
                if ours && matches!(apps.auth.oauth_grant_alive(&grant).await, Ok(false)) {
                    tracing::info!(%app, "ending the sessions of a revoked or ended OAuth grant");
                    apps.map().remove(&(grant, app));
                    e.close_all().await;
                } else if round.is_multiple_of(6) {
                    e.reap_idle().await;
                }
            }
            if round.is_multiple_of(6) {
                apps.map().retain(|_, e| !e.unused());
            }
        }
    });
    axum::Router::new()
        .route("/mcp/apps/{name}", axum::routing::any(serve))
        .with_state(apps)
}

impl Apps {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Endpoint>>> {
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a request's token does not do, as the client is told it.
enum Challenge<'a> {
    /// No token: 401 and where to find out how to get one (RFC 9728 §5.1).
    Missing,
    /// 401 `invalid_token`, and why.
    Invalid(&'a str),
    /// 403 `insufficient_scope`: a valid token without `scope`, which the client may ask a
    /// new one with (step-up, RFC 6750 §3.1).
    Scope { scope: &'a str, why: &'a str },
}

fn challenge(apps: &Apps, name: &str, c: Challenge<'_>) -> Response {
    let metadata = format!(
        "{}/.well-known/oauth-protected-resource{APPS_PATH}{name}",
        apps.issuer
    );
    let quoted = |t: &str| t.replace(['"', '\\'], "'");
    let (status, header, body) = match c {
        Challenge::Missing => (
            StatusCode::UNAUTHORIZED,
            format!("Bearer resource_metadata=\"{metadata}\", scope=\"{SCOPE}\""),
            serde_json::json!({"error": "unauthorized", "error_description": "this app needs an OAuth access token"}),
        ),
        Challenge::Invalid(why) => (
            StatusCode::UNAUTHORIZED,
            format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\", resource_metadata=\"{metadata}\", scope=\"{SCOPE}\"",
                quoted(why)
            ),
            serde_json::json!({"error": "invalid_token", "error_description": why}),
        ),
        Challenge::Scope { scope, why } => (
            StatusCode::FORBIDDEN,
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\", resource_metadata=\"{metadata}\", error_description=\"{}\"",
                quoted(scope),
                quoted(why)
            ),
            serde_json::json!({"error": "insufficient_scope", "error_description": why, "scope": scope}),
        ),
    };
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&header) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    // Bearer tokens, never cookies: any origin may call, as with any OAuth API.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("mcp-session-id, www-authenticate"),
    );
    r
}

async fn serve(
    State(apps): State<Arc<Apps>>,
    Path(name): Path<String>,
    Extension(conn): Extension<ConnInfo>,
    req: axum::extract::Request,
) -> Response {
    cors(answer(apps, name, conn, req).await)
}

/// A refusal before the request's body was read: the connection is closed after it, and
/// the client is told so (`Connection: close`), rather than left to reuse a connection the
/// server is about to drop.
fn refusal(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn answer(
    apps: Arc<Apps>,
    name: String,
    conn: ConnInfo,
    req: axum::extract::Request,
) -> Response {
    if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, accept, last-event-id, mcp-session-id, mcp-protocol-version, mcp-method, mcp-name, mcp-param-*",
            ),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return r;
    }
    if mcpgate_types::Name::new(&name).is_err() {
        return refusal((StatusCode::NOT_FOUND, "no such app\n").into_response());
    }
    // A token in a URL ends up in logs and histories: refused (OAuth 2.1 §5.1.3).
    let in_query = req
        .uri()
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token"));
    if in_query {
        return refusal(
            (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({
                    "error": "invalid_request",
                    "error_description": "send the access token in the Authorization header, never in the URL",
                })),
            )
                .into_response(),
        );
    }
    let Some(token) = bearer(req.headers()) else {
        return refusal(challenge(&apps, &name, Challenge::Missing));
    };
    let resource = format!("{}{APPS_PATH}{name}", apps.issuer);
    // A JWT, for an app that trusts an identity provider: the company's own token.
    let checked = if mcpgate_auth::idp::looks_like_jwt(token) && apps.auth.idp.any_for(&name) {
        apps.auth.idp_bearer(token, &name, &resource).await
    } else {
        apps.auth.oauth_bearer(token, &resource).await
    };
    let who = match checked {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return refusal(match e.needs_scope {
                Some(scope) => challenge(
                    &apps,
                    &name,
                    Challenge::Scope {
                        scope: &scope,
                        why: &e.why,
                    },
                ),
                None => challenge(&apps, &name, Challenge::Invalid(&e.why)),
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check an access token");
            return refusal(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the authorization server cannot answer now\n",
                )
                    .into_response(),
            );
        }
    };
    let endpoint = {
        let mut map = apps.map();
        let key = (who.grant.clone(), name.clone());
        if let Some(e) = map.get(&key) {
            e.renew(who);
            e.clone()
        } else {
            if map.len() >= MAX_ENDPOINTS {
                return refusal(
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many OAuth sessions are open on this proxy\n",
                    )
                        .into_response(),
                );
            }
            let e = Arc::new(Endpoint::new(
                &name,
                Opener::Proxy {
                    routes: apps.routes.clone(),
                    bearer: Mutex::new(Box::new(who)),
                    addr: conn.addr,
                },
                Edge::Proxy,
            ));
            map.insert(key, e.clone());
            e
        }
    };
    endpoint.dispatch(req).await.map(axum::body::Body::new)
}

/// The token of `Authorization: Bearer TOKEN` (the scheme in any case, RFC 7235).
fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

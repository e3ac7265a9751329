//! The OAuth 2.1 authorization server's HTTP face (MCP authorization, 2025-11-25):
//! discovery metadata (RFC 8414, RFC 9728), dynamic client registration (RFC 7591), the
//! authorization pages (login, consent), the token endpoint and revocation (RFC 7009).
//! What each step decides is `mcpgate_auth::oauth`'s; this module is forms and JSON.
//!
//! The pages carry the dashboard's security headers, with one difference: the consent
//! form's answer redirects to the client, so `form-action` names the client's redirect
//! origin besides `'self'`.

use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::html;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

use mcpgate_auth::api::ConnInfo;
use mcpgate_auth::oauth::{
    APPS_PATH, AfterLogin, AuthorizeError, AuthorizeParams, Pending, Registration, SCOPE,
    TokenRequest,
};
use mcpgate_auth::{AuthError, AuthService, SecondFactor};

use crate::page;

/// The cookie that binds an authorization request to the browser that opened it.
const COOKIE: &str = "__Host-mcpgate_oauth";

struct OAuth {
    auth: Arc<AuthService>,
    /// `https://PUBLIC_ADDR`: the issuer, and the origin of every app's URL.
    issuer: String,
}

/// The authorization server's routes, for the proxy's HTTPS port.
pub fn router(auth: Arc<AuthService>, issuer: String) -> Router {
    Router::new()
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/openid-configuration", get(metadata))
        .route(
            "/.well-known/oauth-protected-resource/mcp/apps/{name}",
            get(resource_metadata),
        )
        .route("/oauth/register", post(register).options(preflight))
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/authorize/login", post(login))
        .route("/oauth/authorize/consent", post(consent))
        .route("/oauth/token", post(token).options(preflight))
        .route("/oauth/revoke", post(revoke).options(preflight))
        .layer(axum::middleware::map_response(secure))
        .with_state(Arc::new(OAuth { auth, issuer }))
}

/// The dashboard's headers, keeping a page's own `Content-Security-Policy`.
async fn secure(res: Response) -> Response {
    let own = res.headers().get(header::CONTENT_SECURITY_POLICY).cloned();
    let mut res = page::secure(res).await;
    if let Some(csp) = own {
        res.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    res
}

/// JSON that any origin may read (metadata, tokens: nothing rides on cookies here).
fn open_json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, mcp-protocol-version"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414) and the OpenID path.
async fn metadata(State(o): State<Arc<OAuth>>) -> Response {
    let i = &o.issuer;
    open_json(
        StatusCode::OK,
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/oauth/authorize"),
            "token_endpoint": format!("{i}/oauth/token"),
            "registration_endpoint": format!("{i}/oauth/register"),
            "revocation_endpoint": format!("{i}/oauth/revoke"),
            "scopes_supported": [SCOPE],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "token_endpoint_auth_methods_supported": ["none", "tls_client_auth"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": true,
            "authorization_response_iss_parameter_supported": true,
        }),
    )
}

/// `GET /.well-known/oauth-protected-resource/mcp/apps/NAME` (RFC 9728).
async fn resource_metadata(State(o): State<Arc<OAuth>>, Path(name): Path<String>) -> Response {
    if mcpgate_types::Name::new(&name).is_err() {
        return open_json(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
    }
    // This proxy first, then identity providers trusted for the app.
    let mut servers = vec![o.issuer.clone()];
    servers.extend(o.auth.idp.issuers_for(&name));
    open_json(
        StatusCode::OK,
        json!({
            "resource": format!("{}{APPS_PATH}{name}", o.issuer),
            "authorization_servers": servers,
            "scopes_supported": [SCOPE],
            "bearer_methods_supported": ["header"],
            "resource_name": format!("{name} (mcpgate)"),
        }),
    )
}

/// `POST /oauth/register` (RFC 7591): public clients, PKCE.
async fn register(
    State(o): State<Arc<OAuth>>,
    Extension(conn): Extension<ConnInfo>,
    body: axum::body::Bytes,
) -> Response {
    let reg: Registration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return open_json(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_client_metadata", "error_description": format!("the registration is not valid JSON metadata: {e}")}),
            );
        }
    };
    match o.auth.oauth_register(reg, None, Some(conn.addr.ip())).await {
        Ok(c) => open_json(StatusCode::CREATED, c.registration()),
        Err(e) if e.error == "rate_limited" => open_json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": "invalid_client_metadata", "error_description": e.description}),
        ),
        Err(e) if e.error == "server_error" => {
            tracing::error!(error = %e.description, "client registration failed");
            open_json(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "server_error"}),
            )
        }
        Err(e) => open_json(
            StatusCode::BAD_REQUEST,
            json!({"error": e.error, "error_description": e.description}),
        ),
    }
}

use crate::session::cookie;

/// A page of the flow; its form may answer with a redirect to `redirect_origin`.
fn flow_page(
    status: StatusCode,
    title: &str,
    body: maud::Markup,
    redirect_origin: Option<&str>,
) -> Response {
    let mut r = page::bare_with(status, title, body);
    let form_action = match redirect_origin.filter(|o| {
        !o.is_empty()
            && o.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":/.-[]".contains(&b))
    }) {
        Some(o) => format!("'self' {o}"),
        None => "'self'".into(),
    };
    let csp = page::CSP.replace("form-action 'self'", &format!("form-action {form_action}"));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

fn problem(status: StatusCode, message: &str) -> Response {
    flow_page(
        status,
        "Authorization failed",
        html! { p.error role="alert" { (message) } },
        None,
    )
}

fn see_other(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(v) => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => problem(StatusCode::BAD_REQUEST, "the redirect URI cannot be used"),
    }
}

fn login_page(o: &OAuth, p: &Pending, status: StatusCode, error: Option<&str>) -> Response {
    let otp_required = o.auth.second_factor() == SecondFactor::Otp;
    let body = html! {
        p { "Log in to let " strong { (p.client_name) } " use the app " strong { (p.app) } " as you." }
        @if let Some(e) = error {
            p.error role="alert" { (e) }
        }
        form.login method="post" action="/oauth/authorize/login" {
            input type="hidden" name="request" value=(p.id);
            input type="hidden" name="csrf" value=(p.csrf);
            (crate::session::login_fields(otp_required))
            button type="submit" { "Log in" }
        }
        p.hint { "The same account as " code { "mcpgate login" } "." }
    };
    flow_page(
        status,
        &format!("Log in to {}", o.auth.cluster()),
        body,
        Some(&p.redirect_origin()),
    )
}

fn consent_page(o: &OAuth, p: &Pending) -> Response {
    let body = html! {
        p { strong { (p.client_name) } " (" code { (p.client_id) } ") asks to use the app "
            strong { (p.app) } " of " (o.auth.cluster()) " as " strong { (p.user().unwrap_or_default()) } "." }
        p { "After you allow it, you go back to " strong { (p.redirect_host()) } ". Its access follows your roles; every call is audited with its name." }
        form method="post" action="/oauth/authorize/consent" {
            input type="hidden" name="request" value=(p.id);
            input type="hidden" name="csrf" value=(p.csrf);
            button type="submit" name="decision" value="allow" { "Allow" }
            " "
            button type="submit" name="decision" value="deny" { "Deny" }
        }
    };
    flow_page(
        StatusCode::OK,
        "Allow access?",
        body,
        Some(&p.redirect_origin()),
    )
}

/// `GET /oauth/authorize`: checks the request, then the login form.
async fn authorize(
    State(o): State<Arc<OAuth>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Query(params): Query<AuthorizeParams>,
) -> Response {
    let browser = match cookie(&headers, COOKIE) {
        Some(c) if c.len() == 64 => c.to_string(),
        _ => match mcpgate_auth::service::random_token() {
            Ok(t) => t,
            Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
    };
    match o
        .auth
        .oauth_begin(&o.issuer, &params, &browser, Some(conn.addr.ip()))
        .await
    {
        Ok(p) => {
            let mut r = login_page(&o, &p, StatusCode::OK, None);
            let c = format!(
                "{COOKIE}={browser}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=600"
            );
            if let Ok(v) = HeaderValue::from_str(&c) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(AuthorizeError::Show(m)) => problem(StatusCode::BAD_REQUEST, &m),
        Err(AuthorizeError::Redirect(to)) => see_other(&to),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    request: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    otp: String,
}

/// The request a form belongs to, checked against the browser's cookie and its CSRF token.
async fn pending(
    o: &OAuth,
    headers: &HeaderMap,
    request: &str,
    csrf: &str,
) -> Result<Pending, Response> {
    let browser = cookie(headers, COOKIE).unwrap_or_default();
    o.auth
        .oauth_pending(request, browser, csrf)
        .await
        .map_err(|e| match e {
            AuthError::BadRequest(m) => problem(StatusCode::FORBIDDEN, &m),
            other => problem(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string()),
        })
}

/// `POST /oauth/authorize/login`.
async fn login(
    State(o): State<Arc<OAuth>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let p = match pending(&o, &headers, &f.request, &f.csrf).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let otp = Some(f.otp.trim()).filter(|s| !s.is_empty());
    match o
        .auth
        .oauth_login(
            &o.issuer,
            p.clone(),
            &f.username,
            &f.password,
            otp,
            Some(conn.addr.ip()),
        )
        .await
    {
        Ok(AfterLogin::Consent(p)) => consent_page(&o, &p),
        Ok(AfterLogin::Redirect(to)) => see_other(&to),
        Err(e) if let Some(status) = crate::session::refused_login(&e) => {
            login_page(&o, &p, status, Some(&e.to_string()))
        }
        Err(AuthError::BadRequest(m)) => problem(StatusCode::BAD_REQUEST, &m),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct ConsentForm {
    #[serde(default)]
    request: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
}

/// `POST /oauth/authorize/consent`.
async fn consent(
    State(o): State<Arc<OAuth>>,
    headers: HeaderMap,
    Form(f): Form<ConsentForm>,
) -> Response {
    let p = match pending(&o, &headers, &f.request, &f.csrf).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match o
        .auth
        .oauth_consent(&o.issuer, p, f.decision == "allow")
        .await
    {
        Ok(to) => see_other(&to),
        Err(AuthError::BadRequest(m)) => problem(StatusCode::BAD_REQUEST, &m),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The client id of HTTP Basic client authentication, if the request uses it.
fn basic_client(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let id = text.split_once(':').map_or(text.as_str(), |(id, _)| id);
    Some(
        form_urlencoded::parse(format!("x={id}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default(),
    )
}

fn token_error(e: mcpgate_auth::oauth::TokenError) -> Response {
    let status = match e.error {
        "invalid_client" => StatusCode::UNAUTHORIZED,
        "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    open_json(
        status,
        json!({"error": e.error, "error_description": e.description}),
    )
}

/// `POST /oauth/token`.
async fn token(
    State(o): State<Arc<OAuth>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(mut req)) = form else {
        return token_error(mcpgate_auth::oauth::TokenError {
            error: "invalid_request",
            description: "the request must be a form (application/x-www-form-urlencoded)".into(),
        });
    };
    if req.grant_type.as_deref() == Some("client_credentials") {
        let peer = conn.peer.as_deref().map(Vec::as_slice);
        return match o.auth.oauth_client_credentials(&o.issuer, peer, &req).await {
            Ok(t) => open_json(StatusCode::OK, serde_json::to_value(t).unwrap_or_default()),
            Err(e) => token_error(e),
        };
    }
    if req.client_id.is_none() {
        req.client_id = basic_client(&headers);
    }
    match o.auth.oauth_token(&req).await {
        Ok(t) => open_json(StatusCode::OK, serde_json::to_value(t).unwrap_or_default()),
        Err(e) => token_error(e),
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    token: String,
    client_id: Option<String>,
}

/// `POST /oauth/revoke` (RFC 7009).
async fn revoke(
    State(o): State<Arc<OAuth>>,
    headers: HeaderMap,
    form: Result<Form<RevokeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return token_error(mcpgate_auth::oauth::TokenError {
            error: "invalid_request",
            description: "the request must be a form (application/x-www-form-urlencoded)".into(),
        });
    };
    let Some(client) = f.client_id.or_else(|| basic_client(&headers)) else {
        return token_error(mcpgate_auth::oauth::TokenError {
            error: "invalid_client",
            description: "client_id is required".into(),
        });
    };
    match o.auth.oauth_revoke(&f.token, &client).await {
        Ok(()) => open_json(StatusCode::OK, json!({})),
        Err(e) => token_error(e),
    }
}

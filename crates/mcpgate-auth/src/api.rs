//! The HTTPS API behind the proxy. Handlers are thin: authenticate the caller from its TLS
//! certificate on every request, call the service, map the error in one place.

use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

use mcpgate_types::clock::unix_secs;
use mcpgate_types::resource::Kind;
use mcpgate_types::{AuditEvent, AuditQuery};

use crate::wire::*;
use crate::{AuthError, AuthService, Caller};

/// What the proxy knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's certificate chain, verified by the TLS handshake against the cluster CAs.
    pub peer: Option<Arc<Vec<CertificateDer<'static>>>>,
    pub addr: SocketAddr,
}

/// Lists the connected agents and their apps, for `admin status`.
pub type AgentList = Arc<dyn Fn() -> Vec<AgentStatus> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    auth: Arc<AuthService>,
    services: Arc<Vec<String>>,
    agents: AgentList,
}

/// The API router. `services` are listed by `admin status`.
pub fn router(auth: Arc<AuthService>, services: Vec<String>, agents: AgentList) -> Router {
    Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/signup", post(signup))
        .route("/v1/login", post(login))
        .route("/v1/whoami", get(whoami))
        .route("/v1/admin/status", get(status))
        .route("/v1/admin/resources", post(create))
        .route("/v1/admin/resources/{kind}", get(list))
        .route(
            "/v1/admin/resources/{kind}/{name}",
            get(read).delete(remove),
        )
        .route("/v1/admin/users", post(add_user))
        .route("/v1/admin/users/{name}", axum::routing::put(update_user))
        .route("/v1/admin/users/{name}/reset", post(reset_user))
        .route("/v1/admin/bots", post(add_bot))
        .route("/v1/admin/bots/{name}", post(update_bot))
        .route("/v1/admin/tokens", post(add_token))
        .route("/v1/admin/locks", post(lock))
        .route(
            "/v1/admin/oauth/clients",
            post(add_oauth_client).get(oauth_clients),
        )
        .route(
            "/v1/admin/oauth/clients/{id}",
            axum::routing::delete(remove_oauth_client),
        )
        .route("/v1/bot/join", post(bot_join))
        .route("/v1/agent/join", post(agent_join))
        .route("/v1/agent/renew", post(agent_renew))
        .route("/v1/agent/roles", post(agent_roles))
        .route("/v1/agent/apps", get(agent_apps))
        .route("/v1/agent/locks", get(agent_locks))
        .route("/v1/agent/events", post(agent_events))
        .route("/v1/agent/assertion", post(agent_assertion))
        .route("/v1/agent/pins", post(agent_tools_seen))
        .route("/v1/agent/count", post(agent_count))
        .route("/v1/agent/release", post(agent_release))
        .route("/v1/agent/redaction-key", get(agent_redaction_key))
        .route("/v1/admin/audit/match", post(match_secret))
        .route("/v1/agent/pins/{app}", get(agent_pins))
        .route("/v1/admin/pins/{app}", get(admin_pins))
        .route("/v1/admin/pins/{app}/approve", post(approve_pins))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/admin/jwt/rotate", post(rotate_jwt))
        .route("/v1/bot/renew", post(bot_renew))
        .route("/v1/admin/audit/search", post(search))
        .route("/v1/admin/audit/findings", post(findings))
        .route("/v1/admin/audit/findings/{id}", post(triage))
        .route("/v1/admin/audit/verify", get(verify_audit))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(5 << 20))
        .with_state(AppState {
            auth,
            services: Arc::new(services),
            agents,
        })
}

/// The one place an [`AuthError`] becomes an HTTP status and a JSON body.
pub struct ApiError(AuthError);

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            AuthError::InvalidCredentials
            | AuthError::Unauthenticated(_)
            | AuthError::InvalidToken
            | AuthError::OtpReused => StatusCode::UNAUTHORIZED,
            AuthError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            AuthError::AccessDenied(_) => StatusCode::FORBIDDEN,
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            AuthError::AlreadyExists(_) => StatusCode::CONFLICT,
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::Store(_) | AuthError::Pki(_) | AuthError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let error = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.0, "request failed");
            "internal error; see the auth service's log".to_string()
        } else {
            self.0.to_string()
        };
        (status, Json(ErrorBody { error })).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn caller(s: &AppState, conn: &ConnInfo) -> Result<Caller, ApiError> {
    Ok(s.auth
        .caller(conn.peer.as_deref().map(|v| v.as_slice()))
        .await?)
}

async fn not_found() -> ApiError {
    ApiError(AuthError::NotFound("API endpoint".into()))
}

async fn ping(State(s): State<AppState>) -> Json<Ping> {
    Json(Ping {
        cluster: s.auth.cluster().into(),
        version: env!("CARGO_PKG_VERSION").into(),
        second_factor: match s.auth.second_factor() {
            crate::SecondFactor::Otp => "otp".into(),
            crate::SecondFactor::Off => "off".into(),
        },
    })
}

async fn signup(
    State(s): State<AppState>,
    Json(req): Json<SignupRequest>,
) -> ApiResult<SignupResponse> {
    let totp = req.totp_secret.as_deref().zip(req.otp.as_deref());
    Ok(Json(s.auth.signup(&req.invite, &req.password, totp).await?))
}

async fn login(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<CertResponse> {
    Ok(Json(s.auth.login(&req, Some(conn.addr.ip())).await?))
}

async fn whoami(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
) -> ApiResult<WhoAmI> {
    let c = caller(&s, &conn).await?;
    Ok(Json(WhoAmI {
        name: c.info.claims.name.clone(),
        kind: c.info.claims.kind.as_str().into(),
        roles: c.info.claims.roles.clone(),
        expires: unix_secs(c.info.not_after),
    }))
}

async fn status(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
) -> ApiResult<Status> {
    let c = caller(&s, &conn).await?;
    let mut status = s.auth.status(&c, s.services.to_vec())?;
    status.agents = (s.agents)();
    Ok(Json(status))
}

async fn create(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<CreateRequest>,
) -> ApiResult<CreateResponse> {
    let c = caller(&s, &conn).await?;
    Ok(Json(
        s.auth
            .create_resources(&c, &req.file, &req.text, req.force)
            .await?,
    ))
}

fn kind(s: &str) -> Result<Kind, ApiError> {
    Kind::parse(s).ok_or_else(|| {
        ApiError(AuthError::BadRequest(format!(
            "unknown kind {s:?} (expected one of: role, app, user, bot, token, lock, agent)"
        )))
    })
}

async fn list(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(k): Path<String>,
) -> ApiResult<Vec<serde_json::Value>> {
    let c = caller(&s, &conn).await?;
    let kind = kind(&k)?;
    if kind == Kind::Agent {
        // Registrations, with what each holds of this proxy now.
        c.require("agent", "list")?;
        let connected = (s.agents)();
        let mut agents = Vec::new();
        for a in s.auth.agents().await? {
            let live = connected.iter().find(|c| c.name == a.name.as_str());
            agents.push(serde_json::json!({
                "name": a.name,
                "scope": a.scope,
                "generation": a.generation,
                "joined": a.joined,
                "tunnels": live.map(|l| l.tunnels).unwrap_or(0),
                "addrs": live.map(|l| l.addrs.clone()).unwrap_or_default(),
                "version": live.map(|l| l.version.clone()).unwrap_or_default(),
                "apps": live.map(|l| l.apps.clone()).unwrap_or_default(),
            }));
        }
        return Ok(Json(agents));
    }
    Ok(Json(s.auth.get_resources(&c, kind, None).await?))
}

async fn read(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path((k, name)): Path<(String, String)>,
) -> ApiResult<Vec<serde_json::Value>> {
    let c = caller(&s, &conn).await?;
    Ok(Json(
        s.auth.get_resources(&c, kind(&k)?, Some(&name)).await?,
    ))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path((k, name)): Path<(String, String)>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<serde_json::Value> {
    let c = caller(&s, &conn).await?;
    s.auth
        .remove_resource(&c, kind(&k)?, &name, q.force)
        .await?;
    Ok(Json(serde_json::json!({"removed": format!("{k}/{name}")})))
}

async fn update_user(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(name): Path<String>,
    Json(req): Json<crate::wire::UpdateUserRequest>,
) -> ApiResult<mcpgate_types::resource::UserView> {
    let c = caller(&s, &conn).await?;
    Ok(Json(
        s.auth.update_user(&c, &name, req.roles, req.traits).await?,
    ))
}

async fn reset_user(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(name): Path<String>,
) -> ApiResult<TokenResponse> {
    let c = caller(&s, &conn).await?;
    let (token, expires) = s.auth.reset_user(&c, &name).await?;
    Ok(Json(TokenResponse { token, expires }))
}

async fn add_user(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<AddUserRequest>,
) -> ApiResult<TokenResponse> {
    let c = caller(&s, &conn).await?;
    let (token, expires) = s.auth.invite(&c, &req.name, &req.roles, req.traits).await?;
    Ok(Json(TokenResponse { token, expires }))
}

#[derive(Deserialize)]
struct Empty {}

async fn search(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Query(_): Query<Empty>,
    Json(q): Json<AuditQuery>,
) -> ApiResult<Vec<AuditEvent>> {
    let c = caller(&s, &conn).await?;
    Ok(Json(s.auth.search_audit(&c, &q).await?))
}

async fn verify_audit(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
) -> ApiResult<crate::integrity::Verification> {
    let c = caller(&s, &conn).await?;
    Ok(Json(s.auth.verify_audit(&c).await?))
}

async fn add_bot(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<AddBotRequest>,
) -> ApiResult<TokenResponse> {
    let c = caller(&s, &conn).await?;
    let ttl = req.ttl_secs.map(std::time::Duration::from_secs);
    let (token, expires) = s.auth.add_bot(&c, &req.name, &req.roles, ttl).await?;
    Ok(Json(TokenResponse { token, expires }))
}

async fn update_bot(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(name): Path<String>,
    Json(req): Json<UpdateBotRequest>,
) -> ApiResult<mcpgate_types::resource::Bot> {
    let c = caller(&s, &conn).await?;
    Ok(Json(
        s.auth
            .update_bot(&c, &name, &req.add_roles, req.set_roles.as_deref())
            .await?,
    ))
}

async fn add_token(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<AddTokenRequest>,
) -> ApiResult<TokenResponse> {
    let c = caller(&s, &conn).await?;
    let (token, expires) = s
        .auth
        .add_token(
            &c,
            req.kind,
            req.bot.as_deref(),
            req.agent.as_deref(),
            req.scope,
        )
        .await?;
    Ok(Json(TokenResponse { token, expires }))
}

async fn add_oauth_client(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(reg): Json<crate::oauth::Registration>,
) -> ApiResult<serde_json::Value> {
    let c = caller(&s, &conn).await?;
    match s.auth.oauth_register(reg, Some(&c), None).await {
        Ok(client) => Ok(Json(client.registration())),
        Err(e) if e.error == "access_denied" => Err(AuthError::AccessDenied(e.description).into()),
        Err(e) if e.error == "server_error" => Err(AuthError::Internal(e.description).into()),
        Err(e) => Err(AuthError::BadRequest(e.description).into()),
    }
}

async fn oauth_clients(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
) -> ApiResult<Vec<crate::oauth::OAuthClient>> {
    let c = caller(&s, &conn).await?;
    Ok(Json(s.auth.oauth_clients(&c).await?))
}

async fn remove_oauth_client(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<serde_json::Value> {
    let c = caller(&s, &conn).await?;
    s.auth.oauth_remove_client(&c, &id).await?;
    Ok(Json(serde_json::json!({"removed": id})))
}

async fn lock(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<LockRequest>,
) -> ApiResult<mcpgate_types::resource::Lock> {
    let c = caller(&s, &conn).await?;
    let ttl = req.ttl_secs.map(std::time::Duration::from_secs);
    Ok(Json(s.auth.lock(&c, req.target, ttl, &req.message).await?))
}

async fn bot_join(
    State(s): State<AppState>,
    Json(req): Json<JoinRequest>,
) -> ApiResult<CertResponse> {
    Ok(Json(
        s.auth
            .bot_join(&req.token, &req.public_key, req.ttl_secs)
            .await?,
    ))
}

async fn bot_renew(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<RenewRequest>,
) -> ApiResult<CertResponse> {
    // Authenticated like any request, but a bot with an old generation must reach the
    // generation check (and be locked), so only validity is checked here.
    let peer = conn.peer.as_deref().map(|v| v.as_slice());
    let info = mcpgate_pki::tls::peer_identity(peer, s.auth.cluster(), s.auth.clock().now())
        .map_err(|e| AuthError::Unauthenticated(e.to_string()))?;
    Ok(Json(
        s.auth
            .bot_renew(&info, &req.public_key, req.ttl_secs)
            .await?,
    ))
}

fn host(s: &AppState, conn: &ConnInfo) -> Result<mcpgate_pki::CertInfo, ApiError> {
    let peer = conn.peer.as_deref().map(|v| v.as_slice());
    let info = mcpgate_pki::tls::peer_identity(peer, s.auth.cluster(), s.auth.clock().now())
        .map_err(|e| AuthError::Unauthenticated(e.to_string()))?;
    AuthService::require_agent(&info)?;
    Ok(info)
}

/// An agent in good standing now (registered, newest generation, not locked): only such an
/// agent reads what sessions need and ships events. (Renewal checks its own, stricter way.)
async fn agent(s: &AppState, conn: &ConnInfo) -> Result<mcpgate_pki::CertInfo, ApiError> {
    let info = host(s, conn)?;
    match s.auth.agent_standing(&info.claims, false).await? {
        crate::agents::Standing::Good(_) => Ok(info),
        crate::agents::Standing::Refused(why) => Err(ApiError(AuthError::AccessDenied(why))),
    }
}

async fn agent_join(
    State(s): State<AppState>,
    Json(req): Json<JoinRequest>,
) -> ApiResult<CertResponse> {
    let name = req.name.clone().unwrap_or_default();
    Ok(Json(
        s.auth
            .agent_join(&req.token, &name, &req.public_key, &req.apps)
            .await?,
    ))
}

async fn agent_renew(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<RenewRequest>,
) -> ApiResult<CertResponse> {
    let info = host(&s, &conn)?;
    Ok(Json(s.auth.agent_renew(&info, &req.public_key).await?))
}

async fn agent_roles(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(names): Json<Vec<String>>,
) -> ApiResult<Vec<mcpgate_types::resource::Role>> {
    let info = agent(&s, &conn).await?;
    Ok(Json(s.auth.roles_for(&info, &names).await?))
}

async fn agent_apps(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
) -> ApiResult<Vec<mcpgate_types::resource::App>> {
    let info = agent(&s, &conn).await?;
    Ok(Json(s.auth.apps_for(&info).await?))
}

async fn agent_locks(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
) -> ApiResult<Vec<mcpgate_types::resource::Lock>> {
    let info = agent(&s, &conn).await?;
    Ok(Json(s.auth.locks_for(&info).await?))
}

async fn agent_assertion(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<crate::wire::AssertionRequest>,
) -> ApiResult<mcpgate_types::identity::Assertion> {
    let info = agent(&s, &conn).await?;
    AuthService::require_agent(&info)?;
    Ok(Json(
        s.auth
            .assertion(&info.claims.name, &req.session, &req.audience)
            .await?,
    ))
}

async fn findings(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<crate::wire::FindingsRequest>,
) -> ApiResult<Vec<crate::findings::Stored>> {
    let c = caller(&s, &conn).await?;
    Ok(Json(s.auth.findings(&c, req.since_micros).await?))
}

type Pins = ApiResult<Vec<mcpgate_types::pins::Pin>>;

async fn agent_redaction_key(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
) -> ApiResult<crate::wire::RedactionKey> {
    let info = agent(&s, &conn).await?;
    AuthService::require_agent(&info)?;
    let key = s.auth.redaction_key_for(&info.claims.name).await?;
    Ok(Json(crate::wire::RedactionKey {
        key: crate::service::hex(&key),
    }))
}

async fn match_secret(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<crate::wire::MatchSecret>,
) -> ApiResult<Vec<AuditEvent>> {
    let c = caller(&s, &conn).await?;
    Ok(Json(
        s.auth.match_secret(&c, &req.query, &req.secret).await?,
    ))
}

async fn agent_count(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<mcpgate_types::limits::CountRequest>,
) -> ApiResult<Option<mcpgate_types::limits::Limited>> {
    let info = agent(&s, &conn).await?;
    AuthService::require_agent(&info)?;
    Ok(Json(
        s.auth
            .count_call(&info.claims.name, &req.session, &req.call, &req.counters)
            .await?,
    ))
}

async fn agent_release(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<mcpgate_types::limits::CountRequest>,
) -> ApiResult<serde_json::Value> {
    let info = agent(&s, &conn).await?;
    AuthService::require_agent(&info)?;
    s.auth
        .release_call(&info.claims.name, &req.session, &req.call, &req.counters)
        .await?;
    Ok(Json(serde_json::json!({})))
}

async fn agent_tools_seen(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(req): Json<crate::wire::ToolsSeen>,
) -> Pins {
    let info = agent(&s, &conn).await?;
    Ok(Json(
        s.auth
            .observe_tools(&info, &req.app, req.strict, &req.tools)
            .await?,
    ))
}

async fn agent_pins(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    axum::extract::Path(app): axum::extract::Path<String>,
) -> Pins {
    let info = agent(&s, &conn).await?;
    Ok(Json(s.auth.pins_for(&info, &app).await?))
}

async fn admin_pins(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    axum::extract::Path(app): axum::extract::Path<String>,
) -> Pins {
    let c = caller(&s, &conn).await?;
    Ok(Json(s.auth.pins_as(&c, &app).await?))
}

async fn approve_pins(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    axum::extract::Path(app): axum::extract::Path<String>,
    Json(req): Json<crate::wire::ApproveRequest>,
) -> Pins {
    let c = caller(&s, &conn).await?;
    Ok(Json(
        s.auth
            .approve_pins(&c, &app, req.tool.as_deref(), req.hash.as_deref())
            .await?,
    ))
}

async fn triage(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Json(req): Json<crate::wire::TriageRequest>,
) -> ApiResult<crate::findings::Stored> {
    let c = caller(&s, &conn).await?;
    Ok(Json(s.auth.triage(&c, &id, req.triage).await?))
}

async fn rotate_jwt(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
) -> ApiResult<serde_json::Value> {
    let c = caller(&s, &conn).await?;
    let kid = s.auth.rotate_jwt(&c).await?;
    Ok(Json(serde_json::json!({ "kid": kid })))
}

/// The keys that verify identity assertions; public.
async fn jwks(State(s): State<AppState>) -> ApiResult<serde_json::Value> {
    Ok(Json(s.auth.jwks().await?))
}

async fn agent_events(
    State(s): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Json(events): Json<Vec<AuditEvent>>,
) -> ApiResult<serde_json::Value> {
    let info = agent(&s, &conn).await?;
    let (stored, refused) = s.auth.ingest(&info, &events).await?;
    Ok(Json(
        serde_json::json!({"stored": stored, "refused": refused}),
    ))
}

//! The web dashboard, served by the proxy on its HTTPS port beside the API: server-rendered
//! HTML (maud escapes every value), htmx for partial updates, readable without JavaScript.
//!
//! - [`session`]: login and logout, the session cookie, CSRF tokens; who is looking.
//! - [`page`]: the page shell, the security headers every response carries.
//! - [`audit`]: the explorer (`/audit`), one event with its session (`/audit/events/ID`),
//!   export, and the live tail.
//! - [`overview`]: `/`: calls over time, deny rate, top tools, apps and identities, durations.
//! - [`inventory`]: apps, users, bots, tokens, locks (lock and unlock), roles and their editor.
//! - [`findings`]: `/findings` and their triage.
//! - [`assets`]: the vendored htmx, the stylesheet and scripts, embedded and pinned by hash.
//!
//! What one sees follows the roles: the same [`mcpgate_auth::Caller`] checks as the API,
//! and anyone may see their own activity.

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

use mcpgate_auth::api::AgentList;
use mcpgate_auth::{AuthError, AuthService};

pub mod assets;
mod audit;
mod findings;
mod inventory;
pub mod oauth;
mod overview;
mod page;
mod session;

/// The apps the connected agents announced, with their labels and URIs.
pub type AppList = Arc<dyn Fn() -> Vec<mcpgate_types::resource::App> + Send + Sync>;

/// The tools an app's server offers, as its agent listed them (unfiltered); `None` while no
/// agent has.
pub type ToolList = Arc<dyn Fn(&str) -> Option<Vec<serde_json::Value>> + Send + Sync>;

/// What the pages share.
pub(crate) struct Web {
    pub auth: Arc<AuthService>,
    pub agents: AgentList,
    pub announced: AppList,
    pub tools: ToolList,
}

/// The dashboard's routes (no fallback: the API's answers what is not found).
pub fn router(
    auth: Arc<AuthService>,
    agents: AgentList,
    announced: AppList,
    tools: ToolList,
) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/login", get(session::form).post(session::login))
        .route("/logout", get(session::logout_form).post(session::logout))
        .route("/audit", get(audit::explorer))
        .route("/audit/events/{id}", get(audit::event))
        .route("/audit/export", get(audit::export))
        .route("/audit/live", get(audit::live))
        .route("/audit/live/events", get(audit::stream))
        .route("/findings", get(findings::page))
        .route("/findings/{id}", post(findings::triage))
        .route("/apps", get(inventory::apps))
        .route("/apps/{name}", get(inventory::app))
        .route("/users", get(inventory::users))
        .route("/bots", get(inventory::bots))
        .route("/tokens", get(inventory::tokens))
        .route("/locks", get(inventory::locks).post(inventory::lock))
        .route("/locks/{id}/delete", post(inventory::unlock))
        .route("/roles", get(inventory::roles))
        .route(
            "/roles/{name}/edit",
            get(inventory::edit_role).post(inventory::save_role),
        )
        .route("/roles/who", get(inventory::who))
        .route("/assets/{file}", get(assets::serve))
        .layer(axum::middleware::from_fn(back_after_login))
        .layer(axum::middleware::map_response(page::secure))
        .with_state(Arc::new(Web {
            auth,
            agents,
            announced,
            tools,
        }))
}

/// A page that needs a login sends the browser to `/login?next=PAGE` (for a GET), so a
/// bookmarked or shared filter opens once the login is done.
async fn back_after_login(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::{HeaderValue, Method, header::LOCATION};
    let back = if req.method() == Method::GET {
        req.uri().path_and_query().map(|p| p.as_str().to_string())
    } else {
        None
    };
    let mut res = next.run(req).await;
    if let Some(back) = back
        && res.status() == StatusCode::SEE_OTHER
        && res.headers().get(LOCATION).is_some_and(|l| l == "/login")
        && back != "/"
        && let Ok(to) = HeaderValue::from_str(&format!("/login?next={}", page::encode(&back)))
    {
        res.headers_mut().insert(LOCATION, to);
    }
    res
}

/// Why a page could not be shown. One place turns each into a status and a page.
#[derive(Debug)]
pub(crate) enum WebError {
    /// No session, or it ended: log in (again).
    Login,
    /// A lock covers the viewer; their session is over.
    Locked(String),
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Internal(String),
}

impl From<AuthError> for WebError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(_) => WebError::Login,
            AuthError::AccessDenied(m) if m.contains(" is locked: ") => WebError::Locked(m),
            AuthError::AccessDenied(m) => WebError::Forbidden(m),
            AuthError::NotFound(m) => WebError::NotFound(format!("{m} not found")),
            AuthError::BadRequest(m) | AuthError::AlreadyExists(m) => WebError::BadRequest(m),
            other => WebError::Internal(other.to_string()),
        }
    }
}

impl From<mcpgate_store::StoreError> for WebError {
    fn from(e: mcpgate_store::StoreError) -> Self {
        WebError::Internal(e.to_string())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            WebError::Login => {
                return (
                    StatusCode::SEE_OTHER,
                    [(axum::http::header::LOCATION, "/login")],
                )
                    .into_response();
            }
            WebError::Locked(m) => {
                let mut r = page::bare(
                    StatusCode::FORBIDDEN,
                    "Locked",
                    &format!("Your session has ended. {m}"),
                );
                r.headers_mut().append(
                    axum::http::header::SET_COOKIE,
                    session::clear_cookie(session::COOKIE),
                );
                return r;
            }
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            WebError::Internal(m) => {
                tracing::error!(error = %m, "dashboard request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error",
                    "internal error; see the auth service's log".to_string(),
                )
            }
        };
        page::bare(status, title, &message)
    }
}

pub(crate) type WebResult = Result<Response, WebError>;

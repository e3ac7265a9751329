//! `GET /v1/mcp/apps`: the apps connected agents serve that the caller may reach, with the
//! tools their servers offer that its roles allow (from the agents' catalogs), and the
//! patterns of its roles (what `mcpgate mcp ls` prints). The same `Policy` decides here as
//! in the agent's sessions.

use axum::extract::{Extension, Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

use mcpgate_auth::AuthService;
use mcpgate_auth::api::{ApiError, ConnInfo};
use mcpgate_policy::{AppDecision, Subject};

use crate::Tunnels;

/// One app as `mcp ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub labels: BTreeMap<String, String>,
    /// The tools the app's server offers that the caller may call (name, title,
    /// description, annotations); `None` while no agent has listed them yet.
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// Tool patterns of the caller's roles.
    pub allowed_tools: Vec<String>,
    pub denied_tools: Vec<String>,
    /// Resource URI patterns.
    #[serde(default)]
    pub allowed_resources: Vec<String>,
    #[serde(default)]
    pub denied_resources: Vec<String>,
    /// Prompt name patterns.
    #[serde(default)]
    pub allowed_prompts: Vec<String>,
    #[serde(default)]
    pub denied_prompts: Vec<String>,
}

#[derive(Clone)]
struct AppsState {
    auth: Arc<AuthService>,
    tunnels: Arc<Tunnels>,
}

pub fn router(auth: Arc<AuthService>, tunnels: Arc<Tunnels>) -> Router {
    Router::new()
        .route("/v1/mcp/apps", get(apps))
        .route("/v1/admin/apps/{name}", get(app))
        .with_state(AppsState { auth, tunnels })
}

/// `GET /v1/admin/apps/NAME`: one app, created in the cluster or announced by an agent that
/// serves it (secrets hidden), for `admin policy test`. Needs `app: read`.
async fn app(
    State(s): State<AppsState>,
    Extension(conn): Extension<ConnInfo>,
    Path(name): Path<String>,
) -> Result<Json<mcpgate_types::resource::App>, ApiError> {
    let caller = s
        .auth
        .caller(conn.peer.as_deref().map(|v| v.as_slice()))
        .await?;
    caller.require("app", "read")?;
    let found = match s
        .auth
        .all_apps()
        .await?
        .into_iter()
        .find(|a| a.metadata.name.as_str() == name)
    {
        Some(a) => Some(a),
        None => s
            .tunnels
            .apps()
            .into_iter()
            .find(|a| a.metadata.name.as_str() == name),
    };
    let mut app = found.ok_or_else(|| mcpgate_auth::AuthError::NotFound(format!("app {name}")))?;
    app.spec = app.spec.shown();
    Ok(Json(app))
}

async fn apps(
    State(s): State<AppsState>,
    Extension(conn): Extension<ConnInfo>,
) -> Result<Json<Vec<AppView>>, ApiError> {
    let caller = s
        .auth
        .caller(conn.peer.as_deref().map(|v| v.as_slice()))
        .await?;
    let mut apps = s.tunnels.apps();
    // Cluster apps created since the agents last announced, that an agent's selectors match.
    for app in s.auth.all_apps().await? {
        if !apps.iter().any(|a| a.metadata.name == app.metadata.name) && s.tunnels.selects(&app) {
            apps.push(app);
        }
    }
    let mut out = Vec::new();
    for app in apps {
        let labels = &app.metadata.labels;
        if let AppDecision::Allow { .. } = caller.policy.app(labels) {
            let patterns = |subject| {
                let (allow, deny) = caller.policy.patterns(labels, subject);
                let owned = |v: Vec<&str>| v.into_iter().map(str::to_string).collect();
                (owned(allow), owned(deny))
            };
            let (allowed_tools, denied_tools) = patterns(Subject::Tool);
            let (allowed_resources, denied_resources) = patterns(Subject::Resource);
            let (allowed_prompts, denied_prompts) = patterns(Subject::Prompt);
            let tools = s.tunnels.tools(app.metadata.name.as_str()).map(|tools| {
                tools
                    .into_iter()
                    .filter(|t| {
                        t.get("name")
                            .and_then(serde_json::Value::as_str)
                            .is_some_and(|n| caller.policy.tool(labels, n).is_allow())
                    })
                    .collect()
            });
            out.push(AppView {
                tools,
                name: app.metadata.name.to_string(),
                description: app.metadata.description.clone().unwrap_or_default(),
                labels: labels.clone(),
                allowed_tools,
                denied_tools,
                allowed_resources,
                denied_resources,
                allowed_prompts,
                denied_prompts,
            });
        }
    }
    Ok(Json(out))
}

//! `GET /v1/mcp/apps`: the apps the caller may reach, with the tool patterns its roles allow
//! (what `mcpgate mcp ls` prints). The same `Policy` decides here as in sessions.

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use mcpgate_auth::AuthError;
use mcpgate_auth::api::{ApiError, ConnInfo};
use mcpgate_policy::AppDecision;

use crate::Agent;

/// One app as `mcp ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub allowed_tools: Vec<String>,
    pub denied_tools: Vec<String>,
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/mcp/apps", get(apps))
        .with_state(agent)
}

async fn apps(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<ConnInfo>,
) -> Result<Json<Vec<AppView>>, ApiError> {
    let caller = agent
        .auth
        .caller(conn.peer.as_deref().map(|v| v.as_slice()))
        .await?;
    let apps = agent
        .apps()
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?;
    let mut out = Vec::new();
    for app in apps {
        let labels = &app.metadata.labels;
        if let AppDecision::Allow { .. } = caller.policy.app(labels) {
            let (allow, deny) = caller.policy.tool_patterns(labels);
            out.push(AppView {
                name: app.metadata.name.to_string(),
                description: app.metadata.description.clone().unwrap_or_default(),
                labels: labels.clone(),
                allowed_tools: allow.into_iter().map(str::to_string).collect(),
                denied_tools: deny.into_iter().map(str::to_string).collect(),
            });
        }
    }
    Ok(Json(out))
}

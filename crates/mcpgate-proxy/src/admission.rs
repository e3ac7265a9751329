//! The auth service answers the proxy's questions about agents.

use std::sync::Arc;

use mcpgate_auth::AuthService;
use mcpgate_auth::agents::Standing;
use mcpgate_types::Claims;
use mcpgate_types::resource::{AgentScope, App};

use crate::tunnels::{Admission, BoxFuture};

/// [`Admission`] by the auth service in this process.
pub struct ByAuth(pub Arc<AuthService>);

impl Admission for ByAuth {
    fn standing<'a>(
        &'a self,
        agent: &'a Claims,
        established: bool,
    ) -> BoxFuture<'a, Result<AgentScope, String>> {
        Box::pin(async move {
            match self.0.agent_standing(agent, established).await {
                Ok(Standing::Good(record)) => Ok(record.scope),
                Ok(Standing::Refused(why)) => Err(why),
                // Fail closed: an agent whose standing cannot be read gets no tunnel.
                Err(e) => Err(format!("the agent's standing cannot be checked: {e}")),
            }
        })
    }

    fn cluster_apps(&self) -> BoxFuture<'_, Vec<App>> {
        Box::pin(async move { self.0.all_apps().await.unwrap_or_default() })
    }

    fn denied<'a>(&'a self, agent: &'a str, app: &'a str, why: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.0.announce_denied(agent, app, why).await {
                tracing::error!(error = %e, "cannot audit a refused announcement");
            }
        })
    }
}

//! Tool-definition pins, cluster-wide (`pins/APP/TOOL`): the first definition of a tool that
//! an agent sees is pinned (trust on first use); a different one later is held, with an
//! `mcp.tool.drift` event, until an admin approves it. New tools are held too when the app
//! is `pin: strict`, or when their text hides characters (ANSI escapes, zero-width, bidi
//! controls, Unicode tags). Agents hide and refuse what is held.

use serde_json::Value;

use mcpgate_pki::CertInfo;
use mcpgate_store::Store;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::unix_secs;
use mcpgate_types::pins::{self, Pin, Version};
use mcpgate_types::resource::PinMode;
use mcpgate_types::{Claims, IdentityKind};

use crate::service::{Caller, from_json, to_json};
use crate::{AuthError, AuthService, Result};

/// The most tools one observation may carry.
pub const MAX_TOOLS: usize = 2000;
/// The most diff lines an event carries.
const MAX_DIFF: usize = 60;

fn prefix(app: &str) -> String {
    format!("pins/{app}/")
}

fn key(app: &str, tool: &str) -> String {
    format!("pins/{app}/{tool}")
}

impl AuthService {
    /// The pins of `app`, by tool name.
    pub async fn pins(&self, app: &str) -> Result<Vec<Pin>> {
        let mut out = Vec::new();
        for (_, bytes) in self.store.list(&prefix(app)).await? {
            out.push(from_json::<Pin>(&bytes)?);
        }
        Ok(out)
    }

    /// The pins of `app` for an agent that may serve it.
    pub async fn pins_for(&self, agent: &CertInfo, app: &str) -> Result<Vec<Pin>> {
        self.require_serving(agent, app).await?;
        self.pins(app).await
    }

    /// The pins of `app` for an admin (`app: read`).
    pub async fn pins_as(&self, caller: &Caller, app: &str) -> Result<Vec<Pin>> {
        caller.require("app", "read")?;
        self.pins(app).await
    }

    /// An agent reports the tools its server offers for `app` (`strict`: the agent's own
    /// word for its static apps; a cluster app's definition decides for cluster apps).
    pub async fn observe_tools(
        &self,
        agent: &CertInfo,
        app: &str,
        strict: bool,
        tools: &[Value],
    ) -> Result<Vec<Pin>> {
        self.require_serving(agent, app).await?;
        self.record_tools(&agent.claims.name, app, strict, tools)
            .await
    }

    /// Records what agent `seen_by` saw (the in-process agent calls this directly).
    pub async fn record_tools(
        &self,
        seen_by: &str,
        app: &str,
        strict: bool,
        tools: &[Value],
    ) -> Result<Vec<Pin>> {
        if tools.len() > MAX_TOOLS {
            return Err(AuthError::BadRequest(format!(
                "more than {MAX_TOOLS} tools in one report"
            )));
        }
        let strict = match self
            .all_apps()
            .await?
            .iter()
            .find(|a| a.metadata.name.as_str() == app)
        {
            Some(a) => a.spec.pin == PinMode::Strict,
            None => strict,
        };
        let now = unix_secs(self.now());
        let agent = self.claims(seen_by, IdentityKind::Host, &[]);
        for tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            let definition = pins::definition(tool);
            let hash = pins::hash(&definition);
            let hidden = pins::hidden_in(&definition);
            let version = Version {
                hash: hash.clone(),
                definition,
                at: now,
                by: seen_by.to_string(),
            };
            let k = key(app, name);
            // A few rounds: another agent may pin or hold the same tool at the same time.
            for _ in 0..5 {
                match self.store.get(&k).await? {
                    None => {
                        let held = strict || !hidden.is_empty();
                        let pin = Pin {
                            app: app.to_string(),
                            tool: name.to_string(),
                            approved: (!held).then(|| Version {
                                by: "first use".into(),
                                ..version.clone()
                            }),
                            held: held.then(|| version.clone()),
                        };
                        if !self.store.create(&k, &to_json(&pin)?).await? {
                            continue;
                        }
                        if held {
                            self.drift(&agent, &pin, &hidden).await?;
                        }
                    }
                    Some(bytes) => {
                        let pin: Pin = from_json(&bytes)?;
                        let known =
                            pin.allows(&hash) || pin.held.as_ref().is_some_and(|h| h.hash == hash);
                        if known {
                            break;
                        }
                        let next = Pin {
                            held: Some(version.clone()),
                            ..pin
                        };
                        if !self
                            .store
                            .compare_and_swap(&k, &bytes, &to_json(&next)?)
                            .await?
                        {
                            continue;
                        }
                        self.drift(&agent, &next, &hidden).await?;
                    }
                }
                break;
            }
        }
        self.pins(app).await
    }

    /// The `mcp.tool.drift` event of a pin that has just been held.
    async fn drift(&self, agent: &Claims, pin: &Pin, hidden: &[String]) -> Result<()> {
        let Some(held) = &pin.held else {
            return Ok(());
        };
        let empty = Value::Object(Default::default());
        let old = pin
            .approved
            .as_ref()
            .map(|a| &a.definition)
            .unwrap_or(&empty);
        let mut diff = pins::diff(old, &held.definition);
        if diff.len() > MAX_DIFF {
            let more = diff.len() - MAX_DIFF;
            diff.truncate(MAX_DIFF);
            diff.push(format!("… {more} more lines"));
        }
        let change = if pin.approved.is_some() {
            "changed"
        } else {
            "new"
        };
        tracing::warn!(app = %pin.app, tool = %pin.tool, change, "tool definition held until an admin approves it");
        self.emit(
            self.event(
                codes::MCP_TOOL_DRIFT.0,
                codes::MCP_TOOL_DRIFT.1,
                agent,
                false,
                [
                    ("app", Value::from(pin.app.as_str())),
                    ("tool", Value::from(pin.tool.as_str())),
                    ("change", Value::from(change)),
                    (
                        "old_hash",
                        pin.approved
                            .as_ref()
                            .map_or(Value::Null, |a| Value::from(a.hash.as_str())),
                    ),
                    ("new_hash", Value::from(held.hash.as_str())),
                    ("diff", Value::from(diff)),
                    ("hidden", Value::from(hidden.to_vec())),
                    ("agent", Value::from(agent.name.as_str())),
                ],
            ),
        )
        .await
    }

    /// An admin approves what is held on `app` (one tool, or all): each held definition
    /// becomes the pinned one. Returns the pins approved.
    pub async fn approve_pins(
        &self,
        caller: &Caller,
        app: &str,
        tool: Option<&str>,
        hash: Option<&str>,
    ) -> Result<Vec<Pin>> {
        caller.require("app", "update")?;
        if let Some(h) = hash
            && (tool.is_none() || h.len() < "sha256:".len() + 8 || !h.starts_with("sha256:"))
        {
            return Err(AuthError::BadRequest(
                "--hash names one held definition: give --tool too, and at least sha256: and 8 hex digits".into(),
            ));
        }
        let mut approved = Vec::new();
        let entries = match tool {
            Some(t) => match self.store.get(&key(app, t)).await? {
                Some(b) => vec![(key(app, t), b)],
                None => {
                    return Err(AuthError::NotFound(format!(
                        "a pin of tool {t} on app {app}"
                    )));
                }
            },
            None => self.store.list(&prefix(app)).await?,
        };
        let now = unix_secs(self.now());
        for (k, bytes) in entries {
            let pin: Pin = from_json(&bytes)?;
            let Some(held) = pin.held.clone() else {
                continue;
            };
            if let Some(h) = hash
                && !held.hash.starts_with(h)
            {
                return Err(AuthError::BadRequest(format!(
                    "tool {} on app {app} holds {} now, not {h}: look at `admin apps pins {app}` again",
                    pin.tool, held.hash
                )));
            }
            let next = Pin {
                approved: Some(Version {
                    at: now,
                    by: caller.name().to_string(),
                    ..held
                }),
                held: None,
                ..pin
            };
            if !self
                .store
                .compare_and_swap(&k, &bytes, &to_json(&next)?)
                .await?
            {
                return Err(AuthError::BadRequest(format!(
                    "tool {} on app {app} changed again while being approved; look at `admin apps pins {app}` and approve again",
                    next.tool
                )));
            }
            self.emit(
                self.event(
                    codes::MCP_TOOL_APPROVE.0,
                    codes::MCP_TOOL_APPROVE.1,
                    &caller.info.claims,
                    true,
                    [
                        ("app", Value::from(app)),
                        ("tool", Value::from(next.tool.as_str())),
                        (
                            "hash",
                            Value::from(
                                next.approved
                                    .as_ref()
                                    .map(|a| a.hash.as_str())
                                    .unwrap_or_default(),
                            ),
                        ),
                    ],
                ),
            )
            .await?;
            approved.push(next);
        }
        if tool.is_some() && approved.is_empty() {
            return Err(AuthError::BadRequest(format!(
                "tool {} on app {app} holds nothing to approve",
                tool.unwrap_or_default()
            )));
        }
        self.bump_epoch();
        Ok(approved)
    }

    /// Fails unless `agent` may serve `app`.
    async fn require_serving(&self, agent: &CertInfo, app: &str) -> Result<()> {
        Self::require_agent(agent)?;
        let record = match self.agent_standing(&agent.claims, false).await? {
            crate::agents::Standing::Good(r) => r,
            _ => {
                return Err(AuthError::AccessDenied(
                    "this agent is not in good standing".into(),
                ));
            }
        };
        let cluster_app = self
            .all_apps()
            .await?
            .into_iter()
            .find(|a| a.metadata.name.as_str() == app);
        if record.scope.admits(app, cluster_app.as_ref()) {
            Ok(())
        } else {
            Err(AuthError::AccessDenied(format!(
                "agent {} does not serve app {app}",
                agent.claims.name
            )))
        }
    }
}

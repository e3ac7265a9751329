//! Admin operations: resources, tokens, audit search, status. Every one checks the caller's
//! rules first and records what it changed.

use serde_json::Value;

use mcpgate_policy::Policy;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::unix_secs;
use mcpgate_types::resource::{App, Kind, Resource, Role, Token, User, UserView, parse_resources};
use mcpgate_types::{AuditEvent, AuditQuery};

use crate::service::{EDITOR_ROLE, app_key, from_json, role_key, to_json, user_key};
use crate::wire::{CreateResponse, Status};
use crate::{AuthError, AuthService, Caller, Result};
use mcpgate_store::Store;

fn key_of(kind: Kind, name: &str) -> Result<String> {
    match kind {
        Kind::Role => Ok(role_key(name)),
        Kind::App => Ok(app_key(name)),
        Kind::User => Ok(user_key(name)),
        Kind::Token => Ok(format!("tokens/{name}")),
        Kind::Bot => Ok(crate::bots::bot_key(name)),
        Kind::Lock => Ok(crate::bots::lock_key(name)),
        Kind::Agent => Ok(crate::agents::agent_key(name)),
    }
}

impl AuthService {
    /// `admin create -f`: validates every document, then writes them all. Existing
    /// resources are only replaced with `force`.
    pub async fn create_resources(
        &self,
        caller: &Caller,
        file: &str,
        text: &str,
        force: bool,
    ) -> Result<CreateResponse> {
        // Only callers who may write some resource get their file parsed at all.
        let may_write = ["role", "app"]
            .iter()
            .any(|k| caller.policy.admin(k, "create") || caller.policy.admin(k, "update"));
        if !may_write {
            return Err(AuthError::AccessDenied(format!(
                "{} may not create roles or apps",
                caller.name()
            )));
        }
        let (resources, warnings) =
            parse_resources(file, text).map_err(|e| AuthError::BadRequest(e.to_string()))?;
        if resources.is_empty() {
            return Err(AuthError::BadRequest(format!("{file}: no resources found")));
        }
        // Validate and authorise everything before writing anything.
        let mut plan = Vec::with_capacity(resources.len());
        for res in &resources {
            let (kind, name) = (res.kind(), res.name().as_str());
            if let Resource::Role(role) = res {
                Policy::check(role).map_err(|e| AuthError::BadRequest(format!("{file}: {e}")))?;
            }
            if let Resource::App(app) = res {
                app.spec
                    .check()
                    .map_err(|e| AuthError::BadRequest(format!("{file}: app {name}: {e}")))?;
                if let Some(e) = app.spec.literal_secret() {
                    return Err(AuthError::BadRequest(format!("{file}: app {name}: {e}")));
                }
                if let Some(holder) = self.app_holder(name).await? {
                    return Err(AuthError::AlreadyExists(format!(
                        "{file}: app {name}: agent {holder} serves a static app of this name; remove that agent (admin rm agent/{holder}) or choose another name"
                    )));
                }
            }
            let key = key_of(kind, name)?;
            let exists = self.store.get(&key).await?.is_some();
            if exists && !force {
                return Err(AuthError::AlreadyExists(format!(
                    "{kind} {name} already exists (use --force to replace it)"
                )));
            }
            caller.require(kind.as_str(), if exists { "update" } else { "create" })?;
            let bytes = match res {
                Resource::Role(r) => to_json(r)?,
                Resource::App(a) => to_json(a)?,
            };
            plan.push((kind, name.to_string(), key, bytes, exists));
        }
        let mut out = CreateResponse {
            warnings: warnings.iter().map(|w| w.to_string()).collect(),
            ..Default::default()
        };
        for (kind, name, key, bytes, exists) in plan {
            self.store.put(&key, &bytes).await?;
            self.bump_epoch();
            let (t, code) = if exists {
                codes::RESOURCE_UPDATE
            } else {
                codes::RESOURCE_CREATE
            };
            self.emit(self.event(
                t,
                code,
                &caller.info.claims,
                true,
                [
                    ("kind", Value::from(kind.as_str())),
                    ("name", Value::from(name.as_str())),
                ],
            ))
            .await?;
            let label = format!("{kind} {name}");
            if exists {
                out.updated.push(label)
            } else {
                out.created.push(label)
            }
        }
        Ok(out)
    }

    /// `admin get KIND [NAME]`: resources as JSON values (secrets never included).
    pub async fn get_resources(
        &self,
        caller: &Caller,
        kind: Kind,
        name: Option<&str>,
    ) -> Result<Vec<Value>> {
        caller.require(kind.as_str(), if name.is_some() { "read" } else { "list" })?;
        let key = key_of(kind, name.unwrap_or(""))?;
        let entries = match name {
            Some(_) => match self.store.get(&key).await? {
                Some(v) => vec![(key, v)],
                None => {
                    return Err(AuthError::NotFound(format!(
                        "{kind} {}",
                        name.unwrap_or_default()
                    )));
                }
            },
            None => self.store.list(&key).await?,
        };
        let now = unix_secs(self.now());
        let mut out = Vec::with_capacity(entries.len());
        for (key, bytes) in entries {
            let value = match kind {
                Kind::Role => serde_json::to_value(from_json::<Role>(&bytes)?),
                Kind::App => {
                    let mut app = from_json::<App>(&bytes)?;
                    app.spec = app.spec.shown();
                    serde_json::to_value(app)
                }
                Kind::User => serde_json::to_value(UserView::from(&from_json::<User>(&bytes)?)),
                Kind::Bot => serde_json::to_value(from_json::<mcpgate_types::resource::Bot>(&bytes)?),
                Kind::Agent => serde_json::to_value(from_json::<mcpgate_types::resource::AgentRecord>(&bytes)?),
                Kind::Lock => {
                    let l: mcpgate_types::resource::Lock = from_json(&bytes)?;
                    if l.expires.is_some_and(|e| e <= now) {
                        continue;
                    }
                    serde_json::to_value(l)
                }
                Kind::Token => {
                    let t: Token = from_json(&bytes)?;
                    if t.expires <= now {
                        continue;
                    }
                    let id = key.trim_start_matches("tokens/");
                    // The id is a hash of the token, not the token: listing reveals nothing usable.
                    Ok(serde_json::json!({"id": id, "type": t.kind, "subject": t.subject, "expires": t.expires}))
                }
            }
            .map_err(|e| AuthError::Internal(e.to_string()))?;
            out.push(value);
        }
        Ok(out)
    }

    /// Who holds role `name`: `user NAME` and `bot NAME` entries.
    pub async fn role_holders(&self, name: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (_, bytes) in self.store.list("users/").await? {
            let u: User = from_json(&bytes)?;
            if u.roles.iter().any(|r| r == name) {
                out.push(format!("user {}", u.name));
            }
        }
        for (_, bytes) in self.store.list("bots/").await? {
            let b: mcpgate_types::resource::Bot = from_json(&bytes)?;
            if b.roles.iter().any(|r| r == name) {
                out.push(format!("bot {}", b.name));
            }
        }
        Ok(out)
    }

    /// `admin rm KIND/NAME`; a role that users or bots hold only with `force`.
    pub async fn remove_resource(
        &self,
        caller: &Caller,
        kind: Kind,
        name: &str,
        force: bool,
    ) -> Result<()> {
        if kind == Kind::Agent {
            return self.remove_agent(caller, name).await;
        }
        caller.require(kind.as_str(), "delete")?;
        if kind == Kind::Role && !force && name != EDITOR_ROLE {
            let holders = self.role_holders(name).await?;
            if !holders.is_empty() {
                return Err(AuthError::BadRequest(format!(
                    "role {name} is held by {}; take it from them first, or pass --force",
                    holders.join(", ")
                )));
            }
        }
        if kind == Kind::Role && name == EDITOR_ROLE {
            return Err(AuthError::BadRequest(format!(
                "role {EDITOR_ROLE} is a preset that the local admin identity uses; it cannot be removed"
            )));
        }
        let key = key_of(kind, name)?;
        if kind == Kind::User {
            crate::users::not_the_admin(name)?;
            if self.store.get(&key).await?.is_none() {
                return Err(AuthError::NotFound(format!("{kind} {name}")));
            }
            // Their certificates go with them (first: a failure here leaves the user, and
            // `rm` can be run again).
            self.void_certificates(caller, name, "the user was removed")
                .await?;
        }
        if !self.store.delete(&key).await? {
            return Err(AuthError::NotFound(format!("{kind} {name}")));
        }
        self.bump_epoch();
        let (t, code) = if kind == Kind::Lock {
            codes::LOCK_DELETE
        } else {
            codes::RESOURCE_DELETE
        };
        self.emit(self.event(
            t,
            code,
            &caller.info.claims,
            true,
            [
                ("kind", Value::from(kind.as_str())),
                ("name", Value::from(name)),
            ],
        ))
        .await
    }

    /// `admin audit search`.
    pub async fn search_audit(
        &self,
        caller: &Caller,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>> {
        caller.require("event", "list")?;
        Ok(self.store.search_events(query).await?)
    }

    /// `admin status`.
    pub fn status(&self, caller: &Caller, services: Vec<String>) -> Result<Status> {
        caller.require("cluster", "read")?;
        Ok(Status {
            cluster: self.cluster().into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ca_pins: [
                ("host".to_string(), self.host_ca.pin()),
                ("user".to_string(), self.user_ca.pin()),
            ]
            .into(),
            services,
            storage: self.config.storage.clone(),
            agents: Vec::new(),
        })
    }
}

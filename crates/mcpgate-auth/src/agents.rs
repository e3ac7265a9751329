//! Agents as least-privileged identities. An agent joins once with a single-use agent token
//! and is registered under one name (`agents/NAME`) with the scope of apps it may serve —
//! the token's, or the static apps it declares at its first join that nobody else holds
//! (`app-claims/APP`: the first claim binds). Its host certificate names it, carries its
//! scope and a generation; a renewal must present the newest generation (an older one means
//! a copied credential: the agent is locked). It reads only what its scope needs, and may
//! ship only the events of sessions the proxy routed to it (`sessions/ID`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, SystemTime};

use mcpgate_pki::CertInfo;
use mcpgate_store::Store;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::{unix_micros, unix_secs};
use mcpgate_types::resource::{AgentRecord, AgentScope, App, Lock, LockTarget, TokenKind};
use mcpgate_types::{AuditEvent, Claims, IdentityKind, Name};

use crate::service::{Caller, from_json, random_token, to_json};
use crate::wire::CertResponse;
use crate::{AuthError, AuthService, Result};

/// Lifetime of an agent's host certificate; agents renew at half-life.
pub const AGENT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The role every agent certificate carries: it tells agents from other hosts (the proxy).
pub const AGENT_ROLE: &str = "agent";
/// How far an event's time may lie outside its session's span (clock skew).
const SKEW: Duration = Duration::from_secs(120);
/// The most static apps one agent may claim at its join.
const MAX_CLAIMS: usize = 64;
/// The certificate trait that carries the registration id.
const REGISTRATION: &str = "registration";

pub fn agent_key(name: &str) -> String {
    format!("agents/{name}")
}

fn claim_key(app: &str) -> String {
    format!("app-claims/{app}")
}

pub(crate) fn session_key(id: &str) -> String {
    format!("sessions/{id}")
}

/// Marks that a session of `who` (a role name, or `kind/name` of an identity) was routed
/// to `agent`: what its API may then tell it about.
fn seen_key(agent: &str, what: &str, who: &str) -> String {
    format!("agent-seen/{agent}/{what}/{who}")
}

/// A client session the proxy routed to an agent: the only one whose events it may ship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub agent: String,
    pub user: String,
    pub user_kind: IdentityKind,
    /// The roles its certificate named: events of the session carry these, whatever the
    /// agent says.
    #[serde(default)]
    pub roles: Vec<String>,
    pub app: String,
    /// Unix microseconds.
    pub opened: i64,
    /// When the caller's certificate expires (Unix seconds): no assertion outlives it.
    #[serde(default)]
    pub expires: Option<i64>,
    /// When it was issued (Unix seconds), for locks on certificates issued before a time.
    #[serde(default)]
    pub issued: Option<i64>,
    /// The app's URI when the session opened: the audience of its assertions.
    #[serde(default)]
    pub uri: Option<String>,
    /// When the session ended (Unix seconds): no assertion after that.
    #[serde(default)]
    pub closed: Option<i64>,
}

/// What the auth service says of an agent that presents its certificate now.
#[derive(Debug, Clone)]
pub enum Standing {
    /// Registered, current generation, not locked.
    Good(AgentRecord),
    /// Why it may not connect.
    Refused(String),
}

impl AuthService {
    /// An agent joins with its single-use token and gets a host certificate naming it, with
    /// its scope and generation 1. `declared` are the static apps it serves, claimed for it
    /// when the token names no scope.
    pub async fn agent_join(
        &self,
        token: &str,
        name: &str,
        public_key: &str,
        declared: &[String],
    ) -> Result<CertResponse> {
        let requested =
            Name::new(name).map_err(|e| AuthError::BadRequest(format!("agent name: {e}")))?;
        let token = self.take_token(token, TokenKind::Agent).await?;
        let name = match &token.subject {
            Some(bound) if bound != &requested => {
                return Err(AuthError::AccessDenied(format!(
                    "this token admits agent {bound:?}, not {requested:?}"
                )));
            }
            Some(bound) => bound.clone(),
            None => requested,
        };
        if declared.len() > MAX_CLAIMS {
            return Err(AuthError::BadRequest(format!(
                "an agent may declare at most {MAX_CLAIMS} static apps"
            )));
        }
        for app in declared {
            Name::new(app).map_err(|e| AuthError::BadRequest(format!("app name: {e}")))?;
        }
        let mut record = AgentRecord {
            name: name.clone(),
            scope: token.scope.clone(),
            id: crate::service::random_id(),
            generation: 1,
            joined: unix_secs(self.now()),
        };
        let claims = self.agent_claims(&record);
        if !self
            .store
            .create(&agent_key(name.as_str()), &to_json(&record)?)
            .await?
        {
            self.emit(self.event(
                codes::AGENT_JOIN_FAILURE.0,
                codes::AGENT_JOIN_FAILURE.1,
                &claims,
                false,
                [(
                    "error",
                    Value::from("an agent of this name is already registered"),
                )],
            ))
            .await?;
            return Err(AuthError::AccessDenied(format!(
                "an agent named {:?} is already registered; remove it first (admin rm agent/{})",
                name.as_str(),
                name.as_str()
            )));
        }
        if token.scope.is_empty() {
            record.scope.claimed = self.claim_apps(&record.name, declared).await?;
            self.store
                .put(&agent_key(name.as_str()), &to_json(&record)?)
                .await?;
        }
        self.bump_epoch();
        let claims = self.agent_claims(&record);
        self.sign(&claims, public_key, AGENT_TTL, codes::AGENT_JOIN)
            .await
    }

    /// Claims the app names nobody holds for `agent`: neither another agent nor a cluster
    /// app. Returns those it got; each refused one is audited.
    async fn claim_apps(&self, agent: &Name, apps: &[String]) -> Result<Vec<String>> {
        let mut got = Vec::new();
        for app in apps {
            let taken = if self
                .store
                .get(&crate::service::app_key(app))
                .await?
                .is_some()
            {
                Some("a cluster app has this name".to_string())
            } else if self
                .store
                .create(&claim_key(app), agent.as_str().as_bytes())
                .await?
            {
                None
            } else {
                match self.store.get(&claim_key(app)).await? {
                    Some(holder) if holder == agent.as_str().as_bytes() => None,
                    Some(holder) => Some(format!(
                        "agent {} holds it",
                        String::from_utf8_lossy(&holder)
                    )),
                    None => Some("it was claimed at the same time".to_string()),
                }
            };
            match taken {
                None => got.push(app.clone()),
                Some(why) => {
                    self.announce_denied(agent.as_str(), app, &why).await?;
                }
            }
        }
        Ok(got)
    }

    /// Records that `agent` tried to serve `app` outside its scope.
    pub async fn announce_denied(&self, agent: &str, app: &str, why: &str) -> Result<()> {
        let who = self.claims(agent, IdentityKind::Host, &[AGENT_ROLE.to_string()]);
        self.emit(self.event(
            codes::AGENT_ANNOUNCE_DENIED.0,
            codes::AGENT_ANNOUNCE_DENIED.1,
            &who,
            false,
            [
                ("agent", Value::from(agent)),
                ("app", Value::from(app)),
                ("reason", Value::from(why)),
            ],
        ))
        .await
    }

    /// The agent inside `mcpgate start`: registered with every app in scope, holding its
    /// static apps. Issued in-process, generation 0 (it never renews through the API).
    pub async fn register_local_agent(&self, name: &str, static_apps: &[String]) -> Result<()> {
        let name = Name::new(name).map_err(|e| AuthError::BadRequest(e.to_string()))?;
        let claimed = self.claim_apps(&name, static_apps).await?;
        for app in static_apps.iter().filter(|a| !claimed.contains(a)) {
            tracing::warn!(
                app,
                "another agent holds this static app's name: it is not served here"
            );
        }
        let record = AgentRecord {
            name: name.clone(),
            scope: AgentScope {
                claimed,
                ..AgentScope::everything()
            },
            id: crate::service::random_id(),
            generation: 0,
            joined: unix_secs(self.now()),
        };
        self.store
            .put(&agent_key(name.as_str()), &to_json(&record)?)
            .await?;
        Ok(())
    }

    /// The certificate claims of a registered agent.
    pub fn agent_claims(&self, record: &AgentRecord) -> Claims {
        let mut claims = self.claims(
            record.name.as_str(),
            IdentityKind::Host,
            &[AGENT_ROLE.to_string()],
        );
        claims.generation = record.generation;
        claims
            .traits
            .insert(REGISTRATION.into(), vec![record.id.clone()]);
        claims
            .traits
            .insert("apps".into(), record.scope.apps.clone());
        claims
            .traits
            .insert("claimed".into(), record.scope.claimed.clone());
        claims.traits.insert(
            "app_labels".into(),
            record
                .scope
                .app_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        );
        claims
    }

    /// An agent renews its host certificate with the current one. Only the newest generation
    /// may renew: an older one means the credential was copied, and the agent is locked.
    pub async fn agent_renew(&self, caller: &CertInfo, public_key: &str) -> Result<CertResponse> {
        Self::require_agent(caller)?;
        let name = caller.claims.name.as_str();
        let key = agent_key(name);
        let record = loop {
            let old = self.store.get(&key).await?.ok_or_else(|| {
                AuthError::AccessDenied(format!("agent {name} is not registered (removed?)"))
            })?;
            let mut record: AgentRecord = from_json(&old)?;
            if !same_registration(&caller.claims, &record) {
                return Err(AuthError::AccessDenied(format!(
                    "this certificate belongs to an earlier registration of agent {name}, which was removed"
                )));
            }
            let presented = caller.claims.generation;
            if presented != record.generation {
                let message = format!(
                    "certificate generation {presented} presented after {} was issued: the credential may be copied",
                    record.generation
                );
                self.emit(self.event(
                    codes::AGENT_GENERATION_MISMATCH.0,
                    codes::AGENT_GENERATION_MISMATCH.1,
                    &caller.claims,
                    false,
                    [
                        ("target", Value::from(format!("agent {name}"))),
                        ("presented", Value::from(presented)),
                        ("current", Value::from(record.generation)),
                    ],
                ))
                .await?;
                self.system_lock(
                    LockTarget::Agent(name.to_string()),
                    &message,
                    &caller.claims,
                )
                .await?;
                return Err(AuthError::AccessDenied(format!(
                    "agent {name} is locked: {message}"
                )));
            }
            if let Some(lock) = self.lock_for(&caller.claims, Some(caller.issued())).await? {
                return Err(AuthError::AccessDenied(format!(
                    "agent {name} is locked: {}",
                    lock.message
                )));
            }
            record.generation += 1;
            if self
                .store
                .compare_and_swap(&key, &old, &to_json(&record)?)
                .await?
            {
                break record;
            }
        };
        self.sign(
            &self.agent_claims(&record),
            public_key,
            AGENT_TTL,
            codes::CERT_CREATE,
        )
        .await
    }

    /// A lock the cluster places itself (a copied credential).
    pub(crate) async fn system_lock(
        &self,
        target: LockTarget,
        message: &str,
        by: &Claims,
    ) -> Result<()> {
        let lock = Lock {
            id: random_token()?[..16].to_string(),
            target,
            message: message.to_string(),
            expires: None,
            created: unix_secs(self.now()),
            created_by: "mcpgate".into(),
            issued_before: None,
        };
        self.store_lock(&lock, by).await
    }

    /// Only agents (host certificates issued to an agent) may read what sessions need and
    /// ship events.
    pub fn require_agent(caller: &CertInfo) -> Result<()> {
        if caller.claims.kind == IdentityKind::Host
            && caller.claims.roles.iter().any(|r| r == AGENT_ROLE)
        {
            Ok(())
        } else {
            Err(AuthError::AccessDenied("only agents may call this".into()))
        }
    }

    /// The registration of agent `name`.
    pub async fn agent(&self, name: &str) -> Result<Option<AgentRecord>> {
        match self.store.get(&agent_key(name)).await? {
            Some(bytes) => Ok(Some(from_json(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every registered agent.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>> {
        let mut out = Vec::new();
        for (_, bytes) in self.store.list("agents/").await? {
            out.push(from_json(&bytes)?);
        }
        Ok(out)
    }

    /// Whether the agent presenting these claims may hold a tunnel now: issued to an agent,
    /// registered, its newest generation, not locked.
    ///
    /// `established`: the certificate of a tunnel already open, which the agent re-dials
    /// only shortly before it expires — the generation before the newest is good for it;
    /// anything new (a tunnel, an API call) needs the newest.
    pub async fn agent_standing(&self, claims: &Claims, established: bool) -> Result<Standing> {
        let name = claims.name.as_str();
        if claims.kind != IdentityKind::Host || !claims.roles.iter().any(|r| r == AGENT_ROLE) {
            return Ok(Standing::Refused(format!(
                "{name} holds a host certificate that was not issued to an agent"
            )));
        }
        let Some(record) = self.agent(name).await? else {
            return Ok(Standing::Refused(format!(
                "agent {name} is not registered (removed?)"
            )));
        };
        if !same_registration(claims, &record) {
            return Ok(Standing::Refused(format!(
                "the certificate belongs to an earlier registration of agent {name}, which was removed"
            )));
        }
        // The certificate a live tunnel was dialled with stays good after the agent renews
        // (it re-dials before that one expires): the newest generation or the one before.
        // A copy renewing out of turn is caught at renewal.
        let previous = established && claims.generation.saturating_add(1) == record.generation;
        if claims.generation != record.generation && !previous {
            return Ok(Standing::Refused(format!(
                "agent {name} presented certificate generation {}, older than the newest ({})",
                claims.generation, record.generation
            )));
        }
        if let Some(lock) = self.lock_for(claims, None).await? {
            return Ok(Standing::Refused(format!(
                "agent {name} is locked: {}",
                lock.message
            )));
        }
        Ok(Standing::Good(record))
    }

    /// `admin rm agent/NAME`: forgets the registration and the apps it held; its tunnels
    /// close and its renewals are refused.
    pub async fn remove_agent(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require("agent", "delete")?;
        if !self.store.delete(&agent_key(name)).await? {
            return Err(AuthError::NotFound(format!("agent {name}")));
        }
        let claims: Vec<String> = self
            .store
            .list("app-claims/")
            .await?
            .into_iter()
            .filter(|(_, holder)| holder == name.as_bytes())
            .map(|(k, _)| k)
            .collect();
        self.store.delete_many(&claims).await?;
        let seen: Vec<String> = self
            .store
            .list(&format!("agent-seen/{name}/"))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        self.store.delete_many(&seen).await?;
        self.bump_epoch();
        self.emit(self.event(
            codes::RESOURCE_DELETE.0,
            codes::RESOURCE_DELETE.1,
            &caller.info.claims,
            true,
            [("kind", Value::from("agent")), ("name", Value::from(name))],
        ))
        .await
    }

    /// Every app registered in the cluster.
    pub async fn all_apps(&self) -> Result<Vec<App>> {
        let mut out = Vec::new();
        for (_, bytes) in self.store.list("apps/").await? {
            out.push(from_json(&bytes)?);
        }
        Ok(out)
    }

    /// The cluster apps an agent's scope admits (with their `env` references): no others.
    pub async fn apps_for(&self, agent: &CertInfo) -> Result<Vec<App>> {
        let Standing::Good(record) = self.agent_standing(&agent.claims, false).await? else {
            return Ok(Vec::new());
        };
        Ok(self
            .all_apps()
            .await?
            .into_iter()
            .filter(|a| record.scope.admits(a.metadata.name.as_str(), Some(a)))
            .collect())
    }

    /// The agent holding `app` as a static app of its own, if one does.
    pub async fn app_holder(&self, app: &str) -> Result<Option<String>> {
        Ok(self
            .store
            .get(&claim_key(app))
            .await?
            .map(|h| String::from_utf8_lossy(&h).into_owned()))
    }

    /// Records that the proxy routed session `id` of `user` on `app` to `agent`: the only
    /// session whose events that agent may ship.
    pub async fn open_session(
        &self,
        id: &str,
        agent: &str,
        user: &CertInfo,
        app: &str,
        uri: Option<String>,
    ) -> Result<()> {
        let expires = mcpgate_types::clock::unix_secs(user.not_after);
        let issued = user.issued();
        let user = &user.claims;
        // What the agent may learn from now on: this identity's roles and locks.
        let identity = format!("{}/{}", user.kind.as_str(), user.name);
        self.store
            .put(&seen_key(agent, "identity", &identity), b"")
            .await?;
        for role in &user.roles {
            self.store.put(&seen_key(agent, "role", role), b"").await?;
        }
        let record = SessionRecord {
            agent: agent.to_string(),
            user: user.name.clone(),
            user_kind: user.kind,
            roles: user.roles.clone(),
            app: app.to_string(),
            opened: unix_micros(self.now()),
            expires: Some(expires),
            issued: Some(issued),
            uri,
            closed: None,
        };
        Ok(self.store.put(&session_key(id), &to_json(&record)?).await?)
    }

    /// Records that session `id` ended (its events may still be shipped; no assertion is
    /// made for it any more).
    pub async fn close_session(&self, id: &str) -> Result<()> {
        let key = session_key(id);
        if let Some(bytes) = self.store.get(&key).await? {
            let mut record: SessionRecord = from_json(&bytes)?;
            record.closed = Some(mcpgate_types::clock::unix_secs(self.now()));
            self.store.put(&key, &to_json(&record)?).await?;
        }
        // Places its calls held under limits on calls at once go with it, whatever its
        // agent did.
        self.store.release_all(&format!("{id}/")).await?;
        Ok(())
    }

    /// The roles of `names` that identities of sessions routed to this agent hold: an agent
    /// learns no role no session of its own needs.
    pub async fn roles_for(
        &self,
        agent: &CertInfo,
        names: &[String],
    ) -> Result<Vec<mcpgate_types::resource::Role>> {
        let mut known = Vec::with_capacity(names.len());
        for name in names {
            if self
                .store
                .get(&seen_key(&agent.claims.name, "role", name))
                .await?
                .is_some()
            {
                known.push(name.clone());
            }
        }
        self.roles(&known).await
    }

    /// The locks in force that concern identities or roles of sessions routed to this agent.
    pub async fn locks_for(&self, agent: &CertInfo) -> Result<Vec<Lock>> {
        let prefix = format!("agent-seen/{}/", agent.claims.name);
        let seen: std::collections::BTreeSet<String> = self
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect();
        Ok(self
            .locks()
            .await?
            .into_iter()
            .filter(|l| {
                let key = match &l.target {
                    LockTarget::User(u) => format!("identity/user/{u}"),
                    LockTarget::Bot(b) => format!("identity/bot/{b}"),
                    LockTarget::Role(r) => format!("role/{r}"),
                    LockTarget::Agent(a) => return a == &agent.claims.name,
                };
                seen.contains(&key)
            })
            .collect())
    }

    /// Stores the events an agent shipped that are its own to record: `mcp.*` events of a
    /// session the proxy routed to it, with that session's user and app, timed within it
    /// (idempotent by id). Every other event is refused and audited as
    /// `agent.event.refused`. Each stored event names the agent. Returns (stored, refused).
    pub async fn ingest(&self, agent: &CertInfo, events: &[AuditEvent]) -> Result<(usize, usize)> {
        Self::require_agent(agent)?;
        let name = agent.claims.name.as_str();
        let now = self.now();
        let mut stored = Vec::with_capacity(events.len());
        let mut refused: Vec<(String, String)> = Vec::new();
        let mut sessions: std::collections::HashMap<String, Option<SessionRecord>> =
            Default::default();
        for ev in events {
            let session = match ev.field("session_id") {
                Some(id) => {
                    if !sessions.contains_key(id) {
                        let rec = match self.store.get(&session_key(id)).await? {
                            Some(b) => from_json::<SessionRecord>(&b).ok(),
                            None => None,
                        };
                        sessions.insert(id.to_string(), rec);
                    }
                    sessions.get(id).cloned().flatten()
                }
                None => None,
            };
            let why = check_event(ev, name, session.as_ref(), self.cluster(), now);
            match (why, session) {
                (None, Some(session)) => {
                    let mut ev = ev.clone();
                    ev.fields.insert("agent".into(), Value::from(name));
                    // Who the session belongs to is the proxy's word, not the agent's.
                    ev.roles = session.roles.clone();
                    stored.push(ev);
                }
                (None, None) => refused.push((ev.id.clone(), "no session".into())),
                (Some(why), _) => refused.push((ev.id.clone(), why)),
            }
        }
        self.store.append_events(&stored).await?;
        if !refused.is_empty() {
            let reasons: Vec<Value> = refused
                .iter()
                .take(20)
                .map(|(id, why)| serde_json::json!({"id": id, "reason": why}))
                .collect();
            self.emit(self.event(
                codes::AGENT_EVENT_REFUSED.0,
                codes::AGENT_EVENT_REFUSED.1,
                &agent.claims,
                false,
                [
                    ("agent", Value::from(name)),
                    ("refused", Value::from(refused.len())),
                    ("events", Value::Array(reasons)),
                ],
            ))
            .await?;
        }
        Ok((stored.len(), refused.len()))
    }
}

/// Whether a certificate was issued to this registration (not an earlier one of the same
/// name). Registrations made before ids existed have none and match any.
fn same_registration(claims: &Claims, record: &AgentRecord) -> bool {
    record.id.is_empty()
        || claims
            .traits
            .get(REGISTRATION)
            .is_some_and(|ids| ids.contains(&record.id))
}

/// Why an agent may not record `ev`, if it may not.
fn check_event(
    ev: &AuditEvent,
    agent: &str,
    session: Option<&SessionRecord>,
    cluster: &str,
    now: SystemTime,
) -> Option<String> {
    if ev.cluster != cluster {
        return Some("an event of another cluster".into());
    }
    if !ev.kind.starts_with("mcp.") {
        return Some(format!("agents record only mcp.* events, not {}", ev.kind));
    }
    let Some(session) = session else {
        return Some("no session of this id was routed to any agent".into());
    };
    if session.agent != agent {
        return Some("the session was routed to another agent".into());
    }
    if ev.user != session.user || ev.user_kind != Some(session.user_kind) {
        return Some("the event names another identity than the session's".into());
    }
    if ev.field("app") != Some(session.app.as_str()) {
        return Some("the event names another app than the session's".into());
    }
    let t = unix_micros(ev.time);
    let skew = SKEW.as_micros() as i64;
    if t < session.opened - skew || t > unix_micros(now) + skew {
        return Some("the event's time lies outside its session".into());
    }
    None
}

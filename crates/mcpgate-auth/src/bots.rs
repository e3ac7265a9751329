//! Machines and bans: bots with single-use join tokens and renewing certificates (each
//! renewal one generation later, so a copied credential is caught), agent join tokens, locks.

use serde_json::Value;
use std::time::Duration;

use mcpgate_pki::CertInfo;
use mcpgate_store::Store;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::unix_secs;
use mcpgate_types::resource::{AgentScope, Bot, Lock, LockTarget, Token, TokenKind};
use mcpgate_types::{Claims, IdentityKind, Name};

use crate::service::{from_json, random_token, role_key, to_json, token_key};
use crate::wire::CertResponse;
use crate::{AuthError, AuthService, Caller, Result};

/// Lifetime of a join token.
pub const JOIN_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);
/// The longest certificate a bot may ask for.
pub const BOT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// A bot's certificate when it asks for none in particular.
pub const BOT_DEFAULT_TTL: Duration = Duration::from_secs(3600);

pub(crate) fn bot_key(name: &str) -> String {
    format!("bots/{name}")
}

pub(crate) fn lock_key(id: &str) -> String {
    format!("locks/{id}")
}

impl AuthService {
    /// At least one role, each of them existing.
    pub(crate) async fn check_roles(&self, roles: &[String]) -> Result<()> {
        if roles.is_empty() {
            return Err(AuthError::BadRequest(
                "at least one role is needed (--roles)".into(),
            ));
        }
        for role in roles {
            if self.store.get(&role_key(role)).await?.is_none() {
                return Err(AuthError::BadRequest(format!(
                    "role {role:?} does not exist"
                )));
            }
        }
        Ok(())
    }

    async fn join_token(
        &self,
        kind: TokenKind,
        subject: Option<Name>,
        scope: AgentScope,
    ) -> Result<(String, i64)> {
        let token = random_token()?;
        let expires = unix_secs(self.now() + JOIN_TOKEN_TTL);
        self.store
            .put(
                &token_key(&token),
                &to_json(&Token {
                    kind,
                    subject,
                    expires,
                    scope,
                })?,
            )
            .await?;
        Ok((token, expires))
    }

    /// `admin bots add`: creates the bot and returns its single-use join token.
    pub async fn add_bot(
        &self,
        caller: &Caller,
        name: &str,
        roles: &[String],
        max_ttl: Option<Duration>,
    ) -> Result<(String, i64)> {
        caller.require("bot", "create")?;
        let name = Name::new(name).map_err(|e| AuthError::BadRequest(e.to_string()))?;
        self.check_roles(roles).await?;
        let max_ttl = max_ttl.unwrap_or(BOT_MAX_TTL);
        if max_ttl > BOT_MAX_TTL || max_ttl < Duration::from_secs(60) {
            return Err(AuthError::BadRequest(
                "a bot's --ttl must be between 1m and 24h".into(),
            ));
        }
        let bot = Bot {
            name: name.clone(),
            roles: roles.to_vec(),
            max_ttl: max_ttl.as_secs(),
            generation: 0,
            created: unix_secs(self.now()),
        };
        if !self
            .store
            .create(&bot_key(name.as_str()), &to_json(&bot)?)
            .await?
        {
            return Err(AuthError::AlreadyExists(format!(
                "bot {name} already exists"
            )));
        }
        self.bump_epoch();
        self.audit_change(caller, codes::RESOURCE_CREATE, "bot", name.as_str())
            .await?;
        self.join_token(TokenKind::Bot, Some(name), AgentScope::default())
            .await
    }

    /// `admin bots update`: adds roles, or replaces them.
    pub async fn update_bot(
        &self,
        caller: &Caller,
        name: &str,
        add: &[String],
        set: Option<&[String]>,
    ) -> Result<Bot> {
        caller.require("bot", "update")?;
        let key = bot_key(name);
        for _ in 0..10 {
            let old = self
                .store
                .get(&key)
                .await?
                .ok_or_else(|| AuthError::NotFound(format!("bot {name}")))?;
            let mut bot: Bot = from_json(&old)?;
            if let Some(set) = set {
                bot.roles = set.to_vec();
            }
            for r in add {
                if !bot.roles.contains(r) {
                    bot.roles.push(r.clone());
                }
            }
            self.check_roles(&bot.roles).await?;
            if self
                .store
                .compare_and_swap(&key, &old, &to_json(&bot)?)
                .await?
            {
                self.bump_epoch();
                self.audit_change(caller, codes::RESOURCE_UPDATE, "bot", name)
                    .await?;
                return Ok(bot);
            }
        }
        Err(AuthError::Internal(
            "the bot kept changing; try again".into(),
        ))
    }

    /// `admin tokens add`: a join token for a bot (which must exist) or an agent (with the
    /// name it must join under and the apps it may serve, if the admin says so).
    pub async fn add_token(
        &self,
        caller: &Caller,
        kind: TokenKind,
        bot: Option<&str>,
        agent: Option<&str>,
        scope: AgentScope,
    ) -> Result<(String, i64)> {
        caller.require("token", "create")?;
        match kind {
            TokenKind::Bot => {
                let name = bot.ok_or_else(|| {
                    AuthError::BadRequest("a bot token names its bot (--bot NAME)".into())
                })?;
                if self.store.get(&bot_key(name)).await?.is_none() {
                    return Err(AuthError::BadRequest(format!(
                        "bot {name:?} does not exist"
                    )));
                }
                let name = Name::new(name).map_err(|e| AuthError::BadRequest(e.to_string()))?;
                self.join_token(TokenKind::Bot, Some(name), AgentScope::default())
                    .await
            }
            TokenKind::Agent => {
                let name = agent
                    .map(Name::new)
                    .transpose()
                    .map_err(|e| AuthError::BadRequest(format!("agent name: {e}")))?;
                for app in &scope.apps {
                    Name::new(app).map_err(|e| AuthError::BadRequest(format!("app: {e}")))?;
                }
                self.join_token(TokenKind::Agent, name, scope).await
            }
            TokenKind::Invite => Err(AuthError::BadRequest(
                "invites come from `admin users add`".into(),
            )),
        }
    }

    /// Records a change of a `what` resource named `name` by `caller`.
    pub(crate) async fn audit_change(
        &self,
        caller: &Caller,
        (kind, code): (&str, &str),
        what: &str,
        name: &str,
    ) -> Result<()> {
        self.emit(self.event(
            kind,
            code,
            &caller.info.claims,
            true,
            [("kind", Value::from(what)), ("name", Value::from(name))],
        ))
        .await
    }

    fn bot_claims(&self, bot: &Bot, generation: u64) -> Claims {
        Claims {
            generation,
            ..self.claims(bot.name.as_str(), IdentityKind::Bot, &bot.roles)
        }
    }

    fn bot_ttl(bot: &Bot, asked: Option<u64>) -> Duration {
        let max = Duration::from_secs(bot.max_ttl).min(BOT_MAX_TTL);
        asked
            .map(Duration::from_secs)
            .unwrap_or(BOT_DEFAULT_TTL)
            .clamp(Duration::from_secs(60), max)
    }

    /// A bot joins with its single-use token and gets generation 1 of its certificate.
    pub async fn bot_join(
        &self,
        token: &str,
        public_key: &str,
        ttl_secs: Option<u64>,
    ) -> Result<CertResponse> {
        let record = match self.take_token(token, TokenKind::Bot).await {
            Ok(t) => t,
            Err(e) => {
                let who = self.claims("unknown", IdentityKind::Bot, &[]);
                let fields = [("error", Value::from("invalid, expired or used token"))];
                self.emit(self.event(
                    codes::BOT_JOIN_FAILURE.0,
                    codes::BOT_JOIN_FAILURE.1,
                    &who,
                    false,
                    fields,
                ))
                .await?;
                return Err(e);
            }
        };
        let name = record.subject.ok_or(AuthError::InvalidToken)?;
        self.issue_bot(name.as_str(), None, public_key, ttl_secs, codes::BOT_JOIN)
            .await
    }

    /// A bot renews with its current certificate. Only the newest generation may renew: an
    /// older one means the credential was copied, and the bot is locked.
    pub async fn bot_renew(
        &self,
        caller: &CertInfo,
        public_key: &str,
        ttl_secs: Option<u64>,
    ) -> Result<CertResponse> {
        if caller.claims.kind != IdentityKind::Bot {
            return Err(AuthError::AccessDenied(
                "only bots renew this way; people log in".into(),
            ));
        }
        self.issue_bot(
            &caller.claims.name,
            Some(caller.claims.generation),
            public_key,
            ttl_secs,
            codes::BOT_RENEW,
        )
        .await
    }

    async fn issue_bot(
        &self,
        name: &str,
        presented: Option<u64>,
        public_key: &str,
        ttl_secs: Option<u64>,
        event: (&str, &str),
    ) -> Result<CertResponse> {
        let key = bot_key(name);
        let (bot, generation) = loop {
            let old =
                self.store.get(&key).await?.ok_or_else(|| {
                    AuthError::AccessDenied(format!("bot {name} no longer exists"))
                })?;
            let mut bot: Bot = from_json(&old)?;
            if let Some(presented) = presented
                && presented != bot.generation
            {
                let claims = self.bot_claims(&bot, presented);
                self.emit(self.event(
                    codes::BOT_GENERATION_MISMATCH.0,
                    codes::BOT_GENERATION_MISMATCH.1,
                    &claims,
                    false,
                    [
                        ("target", Value::from(format!("bot {name}"))),
                        ("presented", Value::from(presented)),
                        ("current", Value::from(bot.generation)),
                    ],
                ))
                .await?;
                let message = format!(
                    "certificate generation {presented} presented after {} was issued: the credential may be copied",
                    bot.generation
                );
                self.system_lock(LockTarget::Bot(name.to_string()), &message, &claims)
                    .await?;
                return Err(AuthError::AccessDenied(format!(
                    "bot {name} is locked: {message}"
                )));
            }
            if let Some(lock) = self.lock_for(&self.bot_claims(&bot, 0), None).await? {
                return Err(AuthError::AccessDenied(format!(
                    "bot {name} is locked: {}",
                    lock.message
                )));
            }
            bot.generation += 1;
            if self
                .store
                .compare_and_swap(&key, &old, &to_json(&bot)?)
                .await?
            {
                let g = bot.generation;
                break (bot, g);
            }
        };
        let ttl = Self::bot_ttl(&bot, ttl_secs);
        self.sign(&self.bot_claims(&bot, generation), public_key, ttl, event)
            .await
    }

    /// `admin lock`.
    pub async fn lock(
        &self,
        caller: &Caller,
        target: LockTarget,
        ttl: Option<Duration>,
        message: &str,
    ) -> Result<Lock> {
        caller.require("lock", "create")?;
        let now = self.now();
        let lock = Lock {
            id: random_token()?[..16].to_string(),
            target,
            message: message.to_string(),
            expires: ttl.map(|t| unix_secs(now + t)),
            created: unix_secs(now),
            created_by: caller.name().to_string(),
            issued_before: None,
        };
        self.store_lock(&lock, &caller.info.claims).await?;
        Ok(lock)
    }

    pub(crate) async fn store_lock(&self, lock: &Lock, by: &Claims) -> Result<()> {
        self.store.put(&lock_key(&lock.id), &to_json(lock)?).await?;
        self.bump_epoch();
        self.emit(self.event(
            codes::LOCK_CREATE.0,
            codes::LOCK_CREATE.1,
            by,
            true,
            [
                ("target", Value::from(lock.target.to_string())),
                ("message", Value::from(lock.message.as_str())),
                ("lock_id", Value::from(lock.id.as_str())),
            ],
        ))
        .await
    }

    /// Locks in force now.
    pub async fn locks(&self) -> Result<Vec<Lock>> {
        let now = unix_secs(self.now());
        let mut out = Vec::new();
        for (_, bytes) in self.store.list("locks/").await? {
            let lock: Lock = from_json(&bytes)?;
            if lock.expires.is_none_or(|e| e > now) {
                out.push(lock);
            }
        }
        Ok(out)
    }

    /// The lock that bans this identity now, if any, for a certificate issued at `issued`
    /// (`None`: one about to be issued).
    pub async fn lock_for(&self, claims: &Claims, issued: Option<i64>) -> Result<Option<Lock>> {
        let now = unix_secs(self.now());
        Ok(self
            .locks()
            .await?
            .into_iter()
            .find(|l| l.applies(claims.kind, &claims.name, &claims.roles, now, issued)))
    }
}

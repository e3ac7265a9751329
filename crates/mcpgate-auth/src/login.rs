//! People: invites, signup (password and TOTP enrolment), login, rate limits.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};
use totp_rs::{Algorithm, Secret, TOTP};

use mcpgate_policy::Policy;
use mcpgate_store::Store;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::unix_secs;
use mcpgate_types::resource::{Token, TokenKind, User};
use mcpgate_types::{Claims, IdentityKind, Name};

use crate::service::{USER_TTL, from_json, to_json, token_key, user_key};
use crate::wire::{CertResponse, LoginRequest, SignupResponse};
use crate::{AuthError, AuthService, Result, SecondFactor};

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;
const WINDOW: Duration = Duration::from_secs(300);
const MAX_FAILURES_PER_USER: u32 = 5;
const MAX_FAILURES_PER_ADDR: u32 = 20;
const TOTP_STEP: u64 = 30;

/// A user whose password and second factor were right, and whom no lock covers.
pub(crate) struct Verified {
    pub claims: Claims,
    /// The longest a login may last: the roles' `max_session_ttl`, at most [`USER_TTL`].
    pub max_ttl: Duration,
    /// `password` or `password+otp`.
    pub method: &'static str,
}

/// Counts failed logins per user and per source address in a sliding five-minute window.
/// Unknown user names are counted like known ones, so the limit reveals nothing.
#[derive(Debug, Default)]
pub struct RateLimiter {
    failures: HashMap<String, (SystemTime, u32)>,
}

impl RateLimiter {
    pub(crate) fn limited(&mut self, key: &str, max: u32, now: SystemTime) -> bool {
        match self.failures.get(key) {
            Some((start, _)) if now.duration_since(*start).unwrap_or_default() >= WINDOW => {
                self.failures.remove(key);
                false
            }
            Some((_, n)) => *n >= max,
            None => false,
        }
    }

    /// Takes back an attempt counted in advance that turned out not to be a failure.
    fn undo(&mut self, key: &str) {
        if let Some(entry) = self.failures.get_mut(key) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }

    pub(crate) fn fail(&mut self, key: String, now: SystemTime) {
        if self.failures.len() > 100_000 {
            self.failures
                .retain(|_, (start, _)| now.duration_since(*start).unwrap_or_default() < WINDOW);
        }
        let entry = self.failures.entry(key).or_insert((now, 0));
        entry.1 += 1;
    }
}

/// Hashes a password with argon2id (default parameters: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| AuthError::Internal("no randomness".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(e.to_string()))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

fn totp(secret_b32: &str) -> Result<TOTP> {
    let bytes = Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .map_err(|_| AuthError::Internal("corrupt TOTP secret".into()))?;
    TOTP::new(Algorithm::SHA1, 6, 1, TOTP_STEP, bytes)
        .map_err(|e| AuthError::Internal(e.to_string()))
}

/// The time step at which `code` is valid (now, or one step either side), if any.
pub fn otp_step(secret_b32: &str, code: &str, now: SystemTime) -> Option<u64> {
    let t = totp(secret_b32).ok()?;
    let now = unix_secs(now).max(0) as u64;
    let current = now / TOTP_STEP;
    [current, current.saturating_sub(1), current + 1]
        .into_iter()
        .find(|step| t.generate(step * TOTP_STEP) == code)
}

/// The `otpauth://` URI authenticator apps take (as a QR code or a link).
pub fn otp_uri_for(cluster: &str, user: &str, secret_b32: &str) -> String {
    format!(
        "otpauth://totp/{cluster}:{user}?secret={secret_b32}&issuer={cluster}&algorithm=SHA1&digits=6&period={TOTP_STEP}"
    )
}

/// A new random TOTP secret (20 bytes), base32.
pub fn new_otp_secret() -> Result<String> {
    let mut secret = [0u8; 20];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| AuthError::Internal("no randomness".into()))?;
    match Secret::Raw(secret.to_vec()).to_encoded() {
        Secret::Encoded(b32) => Ok(b32),
        Secret::Raw(_) => Err(AuthError::Internal("TOTP secret encoding".into())),
    }
}

/// The current TOTP code for a base32 secret (for tests and tooling).
pub fn otp_code(secret_b32: &str, now: SystemTime) -> Result<String> {
    Ok(totp(secret_b32)?.generate(unix_secs(now).max(0) as u64))
}

impl AuthService {
    /// Creates user `name` with `roles` (which must exist) and returns a single-use invite.
    pub async fn invite(
        &self,
        caller: &crate::Caller,
        name: &str,
        roles: &[String],
        traits: std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<(String, i64)> {
        caller.require("user", "create")?;
        crate::users::not_the_admin(name)?;
        let name = Name::new(name).map_err(|e| AuthError::BadRequest(e.to_string()))?;
        if roles.is_empty() {
            return Err(AuthError::BadRequest(
                "a user needs at least one role (--roles)".into(),
            ));
        }
        for role in roles {
            if self
                .store
                .get(&crate::service::role_key(role))
                .await?
                .is_none()
            {
                return Err(AuthError::BadRequest(format!(
                    "role {role:?} does not exist"
                )));
            }
        }
        let user = User {
            name: name.clone(),
            roles: roles.to_vec(),
            traits,
            password_hash: None,
            totp_secret: None,
            last_otp_step: 0,
            created: unix_secs(self.now()),
            invite: None,
        };
        if !self
            .store
            .create(&user_key(name.as_str()), &to_json(&user)?)
            .await?
        {
            return Err(AuthError::AlreadyExists(format!(
                "user {name} already exists"
            )));
        }
        let (token, expires) = self.new_invite(name.as_str()).await?;
        self.bind_invite(name.as_str(), &token).await?;
        self.emit(self.event(
            "resource.create",
            codes::RESOURCE_CREATE.1,
            &caller.info.claims,
            true,
            [
                ("kind", Value::from("user")),
                ("name", Value::from(name.as_str())),
            ],
        ))
        .await?;
        Ok((token, expires))
    }

    /// A single-use invite for user `name`.
    pub(crate) async fn new_invite(&self, name: &str) -> Result<(String, i64)> {
        let name = Name::new(name).map_err(|e| AuthError::BadRequest(e.to_string()))?;
        let token = crate::service::random_token()?;
        let expires = unix_secs(self.now() + crate::service::INVITE_TTL);
        let record = Token {
            kind: TokenKind::Invite,
            subject: Some(name),
            expires,
            scope: Default::default(),
        };
        self.store
            .put(&token_key(&token), &to_json(&record)?)
            .await?;
        Ok((token, expires))
    }

    /// Makes `token` the one invite that may sign user `name` up.
    pub(crate) async fn bind_invite(&self, name: &str, token: &str) -> Result<()> {
        let bound = token_key(token);
        self.change_user(name, |u| u.invite = Some(bound.clone()))
            .await
            .map(|_| ())
    }

    /// Uses an invite: sets the password and, when required, enrols TOTP.
    ///
    /// With a second factor, `totp` is the secret the person enrolled in their authenticator
    /// and a code it shows now: the account is active only once a code has confirmed the
    /// enrolment (checked before the invite is used, so a mistake does not burn it).
    pub async fn signup(
        &self,
        invite: &str,
        password: &str,
        totp: Option<(&str, &str)>,
    ) -> Result<SignupResponse> {
        if password.chars().count() < MIN_PASSWORD {
            return Err(AuthError::BadRequest(format!(
                "the password must be at least {MIN_PASSWORD} characters"
            )));
        }
        // The invite must be good before anything else is asked of it.
        match self.store.get(&token_key(invite)).await? {
            Some(bytes) => {
                let t: Token = from_json(&bytes)?;
                if t.kind != TokenKind::Invite || t.expires <= unix_secs(self.now()) {
                    return Err(AuthError::InvalidToken);
                }
            }
            None => return Err(AuthError::InvalidToken),
        }
        let confirmed = match (self.config.second_factor, totp) {
            (SecondFactor::Off, _) => None,
            (SecondFactor::Otp, None) => {
                return Err(AuthError::BadRequest(
                    "this cluster requires a second factor: enrol the secret in an authenticator app and confirm with a code it shows (mcpgate signup asks for one)".into(),
                ));
            }
            (SecondFactor::Otp, Some((secret, code))) => {
                let secret = secret.trim().to_ascii_uppercase();
                let strong = Secret::Encoded(secret.clone())
                    .to_bytes()
                    .is_ok_and(|b| b.len() >= 16);
                if !strong {
                    return Err(AuthError::BadRequest(
                        "the TOTP secret must be base32 of at least 16 bytes".into(),
                    ));
                }
                let step = otp_step(&secret, code.trim(), self.now()).ok_or_else(|| {
                    AuthError::BadRequest(
                        "the code does not match the secret: check the authenticator (and its clock) and try again".into(),
                    )
                })?;
                Some((secret, step))
            }
        };
        // Hash before taking the token, so a failure here does not burn the invite.
        let pw = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))??;
        let token = self.take_token(invite, TokenKind::Invite).await?;
        let name = token.subject.ok_or(AuthError::InvalidToken)?;
        let key = user_key(name.as_str());
        let old = self.store.get(&key).await?.ok_or(AuthError::InvalidToken)?;
        let mut user: User = from_json(&old)?;
        // Only the newest invite signs up (a user from before invites were bound: only
        // while they have no password yet).
        let ours = match &user.invite {
            Some(bound) => *bound == token_key(invite),
            None => user.password_hash.is_none(),
        };
        if !ours {
            return Err(AuthError::InvalidToken);
        }
        user.invite = None;
        user.password_hash = Some(hash);
        let mut otp_uri = None;
        if let Some((b32, _step)) = confirmed {
            otp_uri = Some(otp_uri_for(self.cluster(), name.as_str(), &b32));
            user.totp_secret = Some(b32);
            // The code that confirmed the enrolment may still log in once (the person logs
            // in right after signing up, within the same 30 s); it is then used up.
            user.last_otp_step = 0;
        }
        if !self
            .store
            .compare_and_swap(&key, &old, &to_json(&user)?)
            .await?
        {
            return Err(AuthError::Internal(
                "user changed during signup; ask for a new invite".into(),
            ));
        }
        let who = self.claims(name.as_str(), IdentityKind::User, &user.roles);
        self.emit(self.event(
            codes::USER_SIGNUP.0,
            codes::USER_SIGNUP.1,
            &who,
            true,
            [("otp", Value::from(otp_uri.is_some()))],
        ))
        .await?;
        Ok(SignupResponse {
            user: name.to_string(),
            otp_uri,
        })
    }

    /// Password (and TOTP) login: issues a certificate for the client's public key.
    pub async fn login(&self, req: &LoginRequest, addr: Option<IpAddr>) -> Result<CertResponse> {
        let login = self
            .verified(&req.user, &req.password, req.otp.as_deref(), addr)
            .await?;
        let ttl = req
            .ttl_secs
            .map(Duration::from_secs)
            .unwrap_or(login.max_ttl)
            .min(login.max_ttl);
        if ttl < Duration::from_secs(1) {
            return Err(AuthError::BadRequest(
                "the certificate lifetime must be at least 1s".into(),
            ));
        }
        self.emit(self.event(
            codes::USER_LOGIN.0,
            codes::USER_LOGIN.1,
            &login.claims,
            true,
            [("method", Value::from(login.method))],
        ))
        .await?;
        self.sign(&login.claims, &req.public_key, ttl, codes::CERT_CREATE)
            .await
    }

    /// Checks a user's password and second factor, under the rate limits, and that no lock
    /// covers them: what every way of logging in (certificate, dashboard) goes through.
    /// A failure is audited here; the caller audits the success.
    pub(crate) async fn verified(
        &self,
        user: &str,
        password: &str,
        otp: Option<&str>,
        addr: Option<IpAddr>,
    ) -> Result<Verified> {
        let now = self.now();
        let user_key_rl = format!("user:{}", user.chars().take(128).collect::<String>());
        let addr_key = addr.map(|a| format!("addr:{a}"));
        // Each attempt counts as a failure before it is checked (and is taken back if it
        // succeeds): attempts sent at once cannot all pass the limit before any has failed.
        let limited = {
            let mut rl = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            let limited = rl.limited(&user_key_rl, MAX_FAILURES_PER_USER, now)
                || addr_key
                    .as_deref()
                    .is_some_and(|k| rl.limited(k, MAX_FAILURES_PER_ADDR, now));
            if !limited {
                rl.fail(user_key_rl.clone(), now);
                if let Some(k) = &addr_key {
                    rl.fail(k.clone(), now);
                }
            }
            limited
        };
        if limited {
            self.login_failed(user, "rate limited").await?;
            return Err(AuthError::RateLimited);
        }
        let checked = {
            // A few password hashes at a time (each takes 19 MiB): a flood of logins
            // waits here instead of exhausting memory.
            let _turn = self
                .login_permits
                .acquire()
                .await
                .map_err(|_| AuthError::Internal("shutting down".into()))?;
            self.check_login(user, password, otp, now).await
        };
        let failed = matches!(
            checked,
            Err(AuthError::InvalidCredentials | AuthError::OtpReused)
        );
        if !failed {
            let mut rl = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            rl.undo(&user_key_rl);
            if let Some(k) = &addr_key {
                rl.undo(k);
            }
        }
        match checked {
            Ok(v) => Ok(v),
            Err(e) => {
                self.login_failed(user, &e.to_string()).await?;
                Err(e)
            }
        }
    }

    async fn login_failed(&self, user: &str, error: &str) -> Result<()> {
        let name: String = user.chars().take(128).collect();
        let who = self.claims(&name, IdentityKind::User, &[]);
        self.emit(self.event(
            codes::USER_LOGIN_FAILURE.0,
            codes::USER_LOGIN_FAILURE.1,
            &who,
            false,
            [
                ("method", Value::from("password")),
                ("error", Value::from(error)),
            ],
        ))
        .await
    }

    async fn check_login(
        &self,
        name: &str,
        password: &str,
        otp: Option<&str>,
        now: SystemTime,
    ) -> Result<Verified> {
        let user = match Name::new(name) {
            Ok(name) => self.user(name.as_str()).await?,
            Err(_) => None,
        };
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        let password = password.to_string();
        // Unknown users cost the same argon2 work as known ones.
        let ok = tokio::task::spawn_blocking(move || match hash {
            Some(h) => verify_password(&password, &h),
            None => {
                let _ = verify_password(&password, DUMMY_HASH);
                false
            }
        })
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?;
        let Some(user) = user.filter(|_| ok) else {
            return Err(AuthError::InvalidCredentials);
        };
        let method = match (&user.totp_secret, self.config.second_factor) {
            (Some(secret), _) => {
                let code = otp.unwrap_or_default();
                let step = otp_step(secret, code, now).ok_or(AuthError::InvalidCredentials)?;
                self.consume_otp_step(&user, step).await?;
                "password+otp"
            }
            (None, SecondFactor::Otp) => return Err(AuthError::InvalidCredentials),
            (None, SecondFactor::Off) => "password",
        };
        let claims = Claims {
            traits: user.traits.clone(),
            ..self.claims(user.name.as_str(), IdentityKind::User, &user.roles)
        };
        if let Some(lock) = self.lock_for(&claims, None).await? {
            return Err(AuthError::AccessDenied(format!(
                "{} is locked: {}",
                lock.target, lock.message
            )));
        }
        let roles = self.roles(&user.roles).await?;
        let policy = Policy::compile(&roles, &user.traits)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let max_ttl = policy.max_session_ttl().unwrap_or(USER_TTL).min(USER_TTL);
        Ok(Verified {
            claims,
            max_ttl,
            method,
        })
    }

    /// Records that a TOTP step was used; a code of the same or an earlier step is refused.
    async fn consume_otp_step(&self, user: &User, step: u64) -> Result<()> {
        let key = user_key(user.name.as_str());
        let old = self
            .store
            .get(&key)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let mut current: User = from_json(&old)?;
        if step <= current.last_otp_step {
            // Only someone who knows the password and a valid code gets here: say it plainly.
            return Err(AuthError::OtpReused);
        }
        current.last_otp_step = step;
        if self
            .store
            .compare_and_swap(&key, &old, &to_json(&current)?)
            .await?
        {
            Ok(())
        } else {
            // A concurrent login changed the record: treat as replay.
            Err(AuthError::InvalidCredentials)
        }
    }
}

/// A valid argon2id hash of a random password, checked against for unknown users.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2sF9dRPl8bmJ4UQ47m+Bd0PD1vtT5iSv1IdSXxRw+Es";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_hash_parses_so_unknown_users_cost_the_same() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password("anything", DUMMY_HASH));
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
    }

    #[test]
    fn rate_limiter_window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut rl = RateLimiter::default();
        for _ in 0..5 {
            assert!(!rl.limited("u", 5, t0));
            rl.fail("u".into(), t0);
        }
        assert!(rl.limited("u", 5, t0 + Duration::from_secs(60)));
        assert!(!rl.limited("u", 5, t0 + WINDOW));
    }

    #[test]
    fn otp_steps() {
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let code = otp_code(secret, now).unwrap();
        assert_eq!(otp_step(secret, &code, now), Some(1_800_000_000 / 30));
        assert!(
            otp_step(secret, &code, now + Duration::from_secs(30)).is_some(),
            "one step of skew"
        );
        assert!(otp_step(secret, &code, now + Duration::from_secs(120)).is_none());
        assert!(otp_step(secret, "000000x", now).is_none());
    }
}

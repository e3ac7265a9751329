//! Users after their invite: change their roles and traits, reset their credentials, remove
//! them. Each of these voids the certificates they hold (a lock on certificates issued
//! before now, lapsing when the last of those would have expired): a person whose roles
//! were narrowed, or whose credentials may be compromised, does not keep the old ones.

use std::collections::BTreeMap;

use mcpgate_store::Store;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::unix_secs;
use mcpgate_types::resource::{Lock, LockTarget, User, UserView};

use crate::service::{ADMIN_NAME, USER_TTL, from_json, random_token, to_json, user_key};
use crate::{AuthError, AuthService, Caller, Result};

/// The local admin identity shares no name with a user account: voiding "its" certificates
/// would lock the admin out of every admin command.
pub(crate) fn not_the_admin(name: &str) -> Result<()> {
    if name == ADMIN_NAME {
        return Err(AuthError::BadRequest(format!(
            "{ADMIN_NAME:?} is the local admin identity, not a user account"
        )));
    }
    Ok(())
}

impl AuthService {
    /// `admin users update NAME`: new roles and/or traits, from the next login.
    pub async fn update_user(
        &self,
        caller: &Caller,
        name: &str,
        roles: Option<Vec<String>>,
        traits: Option<BTreeMap<String, Vec<String>>>,
    ) -> Result<UserView> {
        caller.require("user", "update")?;
        not_the_admin(name)?;
        if let Some(roles) = &roles {
            self.check_roles(roles).await?;
        }
        let user = self
            .change_user(name, |u| {
                if let Some(r) = &roles {
                    u.roles = r.clone();
                }
                if let Some(t) = &traits {
                    u.traits = t.clone();
                }
            })
            .await?;
        self.void_certificates(
            caller,
            name,
            "the user's roles or traits changed; log in again",
        )
        .await?;
        // (The lock that voids their certificates says what changed.)
        self.audit_change(caller, codes::RESOURCE_UPDATE, "user", name)
            .await?;
        Ok(UserView::from(&user))
    }

    /// `admin users reset NAME`: forgets the password and second factor, voids the user's
    /// certificates (ending their sessions) and returns a new single-use invite.
    pub async fn reset_user(&self, caller: &Caller, name: &str) -> Result<(String, i64)> {
        caller.require("user", "update")?;
        not_the_admin(name)?;
        self.change_user(name, |u| {
            u.password_hash = None;
            u.totp_secret = None;
            u.last_otp_step = 0;
        })
        .await?;
        self.void_certificates(caller, name, "the user's credentials were reset")
            .await?;
        self.audit_change(caller, codes::RESOURCE_UPDATE, "user", name)
            .await?;
        let (token, expires) = self.new_invite(name).await?;
        // Older invites of this user are void from now on.
        self.bind_invite(name, &token).await?;
        Ok((token, expires))
    }

    /// Voids the certificates a user holds now (after `admin rm user/NAME` too).
    pub async fn void_certificates(&self, caller: &Caller, name: &str, why: &str) -> Result<()> {
        let now = self.now();
        let lock = Lock {
            id: random_token()?[..16].to_string(),
            target: LockTarget::User(name.to_string()),
            message: why.to_string(),
            expires: Some(unix_secs(now + USER_TTL) + 1),
            created: unix_secs(now),
            created_by: caller.name().to_string(),
            // Certificates issued up to this second; a login after it gets a good one.
            issued_before: Some(unix_secs(now) + 1),
        };
        self.store_lock(&lock, &caller.info.claims).await
    }

    /// Applies `change` to the stored user, again if another writer got there first.
    pub(crate) async fn change_user(&self, name: &str, change: impl Fn(&mut User)) -> Result<User> {
        let key = user_key(name);
        for _ in 0..8 {
            let old = self
                .store
                .get(&key)
                .await?
                .ok_or_else(|| AuthError::NotFound(format!("user {name}")))?;
            let mut user: User = from_json(&old)?;
            change(&mut user);
            if self
                .store
                .compare_and_swap(&key, &old, &to_json(&user)?)
                .await?
            {
                return Ok(user);
            }
        }
        Err(AuthError::Internal(
            "the user kept changing; try again".into(),
        ))
    }
}

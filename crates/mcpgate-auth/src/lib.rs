//! The auth service: the cluster's certificate authorities and state.
//!
//! - [`service`]: [`AuthService`] — bootstrap (CAs, preset roles), certificate issuance,
//!   the caller's policy on every request, audit emission.
//! - [`login`]: invites, signup, password and TOTP login, rate limits.
//! - [`admin`]: `admin create/get/rm`, users, audit search, status.
//! - [`api`]: the HTTPS API (axum) the proxy serves; one function maps errors to statuses.
//! - [`findings`]: the findings reader (a cursor over the audit log) and their triage.
//! - [`jwt`]: identity assertions for HTTP upstreams, and the keys that verify them.
//! - [`web`]: dashboard sessions (cookie tokens, CSRF tokens) over the same login checks.
//! - [`wire`]: request and response bodies shared with the CLI.

pub mod admin;
pub mod agents;
pub mod api;
pub mod bots;
pub mod cimd;
pub(crate) mod fetch;
pub mod findings;
pub mod idp;
pub mod integrity;
pub mod jwt;
pub mod limits;
pub mod login;
pub mod oauth;
pub mod pins;
pub mod service;
pub mod users;
pub mod web;
pub mod wire;

pub use service::{AuthConfig, AuthService, CaKey, Caller, SecondFactor};

use mcpgate_pki::PkiError;
use mcpgate_store::StoreError;

/// Why an auth request failed. Each variant maps to one HTTP status in [`api`].
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong user, password or code: deliberately the same for each, so nobody can learn
    /// which users exist.
    #[error("invalid user name, password or second factor code")]
    InvalidCredentials,
    /// A TOTP code that was already used (the password and code were right).
    #[error("this one-time code was already used; wait for the next one and log in again")]
    OtpReused,
    /// Too many failed logins for this user or address.
    #[error("too many failed login attempts; try again in a few minutes")]
    RateLimited,
    /// The caller has no certificate, or one that is not valid now.
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    /// The caller's roles do not allow this.
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Invalid input, with a sentence that says what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// An invite or join token that is unknown, used or expired.
    #[error("the token is invalid, expired or already used")]
    InvalidToken,
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
    #[error("certificate failure: {0}")]
    Pki(#[from] PkiError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, AuthError>;

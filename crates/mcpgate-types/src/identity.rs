//! What a client or host certificate says about its holder.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The kind of identity a certificate was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// A person, logged in with a password (and TOTP).
    User,
    /// A machine identity renewed by `mcpgate bot start`.
    Bot,
    /// An agent or proxy host (signed by the host CA).
    Host,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::User => "user",
            IdentityKind::Bot => "bot",
            IdentityKind::Host => "host",
        }
    }
}

/// Claims carried in a certificate's mcpgate extension (JSON), besides its subject and validity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User, bot or host name (also the certificate's common name).
    pub name: String,
    pub kind: IdentityKind,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Traits such as `mcp_tools`, used by `{{internal.x}}` in roles.
    #[serde(default)]
    pub traits: BTreeMap<String, Vec<String>>,
    /// Bot renewal generation (0 for users and hosts).
    #[serde(default)]
    pub generation: u64,
    /// The cluster that issued the certificate.
    pub cluster: String,
    /// The OAuth client acting for the identity, when the certificate stands for an OAuth
    /// grant (a session at `/mcp/apps/NAME`): every audit event of the session names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client: Option<String>,
}

/// A signed identity assertion (a JWT) for an HTTP upstream, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assertion {
    pub token: String,
    /// Unix seconds.
    pub expires: i64,
}

//! Bodies of the HTTPS API, shared by the auth service and the CLI.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    pub cluster: String,
    pub version: String,
    /// `otp` or `off`: whether login asks for a TOTP code.
    pub second_factor: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupRequest {
    pub invite: String,
    pub password: String,
    /// The TOTP secret (base32) the person enrolled in their authenticator, and a code it
    /// shows now: a cluster with a second factor activates the account only with both.
    #[serde(default)]
    pub totp_secret: Option<String>,
    #[serde(default)]
    pub otp: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupResponse {
    pub user: String,
    /// `otpauth://` URI to add to an authenticator app, when TOTP is required.
    pub otp_uri: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    #[serde(default)]
    pub otp: Option<String>,
    /// The client's public key (PEM); the private key never leaves the client.
    pub public_key: String,
    /// Requested lifetime in seconds; capped by the roles.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A certificate and the CAs to trust with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertResponse {
    pub cert: String,
    pub cas: Vec<String>,
    /// Unix seconds.
    pub expires: i64,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The file name, for error messages.
    pub file: String,
    pub text: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CreateResponse {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddUserRequest {
    pub name: String,
    pub roles: Vec<String>,
    #[serde(default)]
    pub traits: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    /// Unix seconds.
    pub expires: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub cluster: String,
    pub version: String,
    pub ca_pins: BTreeMap<String, String>,
    pub services: Vec<String>,
    pub storage: String,
    /// Agents connected to this proxy, with the apps each serves.
    #[serde(default)]
    pub agents: Vec<AgentStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    /// The apps it announced and may serve.
    pub apps: Vec<String>,
    /// Tunnels it holds to this proxy now.
    #[serde(default)]
    pub tunnels: usize,
    /// Where its tunnels come from.
    #[serde(default)]
    pub addrs: Vec<String>,
    /// The mcpgate version it announced.
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    pub kind: String,
    pub roles: Vec<String>,
    /// Unix seconds.
    pub expires: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddBotRequest {
    pub name: String,
    pub roles: Vec<String>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateBotRequest {
    #[serde(default)]
    pub add_roles: Vec<String>,
    #[serde(default)]
    pub set_roles: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddTokenRequest {
    #[serde(rename = "type")]
    pub kind: mcpgate_types::resource::TokenKind,
    #[serde(default)]
    pub bot: Option<String>,
    /// For an agent token: the name the agent must join under.
    #[serde(default)]
    pub agent: Option<String>,
    /// For an agent token: the apps it may serve (empty: what it declares at its first join,
    /// if nobody else holds it).
    #[serde(default)]
    pub scope: mcpgate_types::resource::AgentScope,
}

/// `admin users update`: what changes (absent: unchanged).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateUserRequest {
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub traits: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockRequest {
    pub target: mcpgate_types::resource::LockTarget,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub message: String,
}

/// A bot's (or agent's) first contact: its join token and public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub public_key: String,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// An agent's name (agents only).
    #[serde(default)]
    pub name: Option<String>,
    /// The static apps an agent serves (agents only): claimed for it at its first join when
    /// its token names no scope.
    #[serde(default)]
    pub apps: Vec<String>,
}

/// A renewal, authenticated by the current certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub public_key: String,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// An agent asking for the identity assertion of a session routed to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssertionRequest {
    pub session: String,
    /// The app's URI, as the agent calls it.
    pub audience: String,
}

/// An agent reporting the tools its server offers for an app (tool-definition pins).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolsSeen {
    pub app: String,
    /// The app is `pin: strict` in the agent's own configuration (a static app).
    #[serde(default)]
    pub strict: bool,
    pub tools: Vec<serde_json::Value>,
}

/// An agent's audit redaction key, hex.
#[derive(Clone, Serialize, Deserialize)]
pub struct RedactionKey {
    pub key: String,
}

/// `admin audit search --match-secret`: the events that held `secret`.
#[derive(Clone, Serialize, Deserialize)]
pub struct MatchSecret {
    pub query: mcpgate_types::AuditQuery,
    pub secret: String,
}

/// `admin apps approve APP [--tool T]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApproveRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The held definition the admin looked at (its hash, or a prefix of it): approve only
    /// that one, not one the server has put in its place since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// `admin audit findings`: findings since this time (Unix microseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FindingsRequest {
    pub since_micros: i64,
}

/// `admin audit triage ID STATE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriageRequest {
    pub triage: crate::findings::Triage,
}

//! Rate limits on MCP calls, as the agent asks the cluster to count them (per calendar
//! minute, in the store every auth instance shares).

use serde::{Deserialize, Serialize};

/// What one call counts against: the identity's calls, its calls on the session's app, or
/// of one tool there. The cluster derives the identity and the app from the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// `identity`, `app` or `tool`.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Calls per minute, or calls at once when `concurrent`.
    pub limit: u32,
    /// A limit on calls at once: the call holds a lease until it is released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub concurrent: bool,
    /// The role that sets it, for the message.
    pub role: String,
}

/// A call over a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limited {
    pub counter: Counter,
    /// Seconds until the window ends (0 for a limit on calls at once).
    pub retry_after: u64,
}

/// An agent's request to count a call of a session routed to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountRequest {
    pub session: String,
    /// The call, unique in the session: what its leases are taken as.
    #[serde(default)]
    pub call: String,
    pub counters: Vec<Counter>,
}

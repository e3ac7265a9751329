//! JSON-RPC for MCP, without I/O: the envelope parser of untrusted messages, the error
//! answers the gateway writes, and the rewrites it owns (the `tools/list` filter).
//!
//! - [`envelope`]: parse only `jsonrpc`, `id`, `method`, `params.name`, `params.arguments`,
//!   `result`, `error`, borrowing from the line; refuse what has fooled other gateways (case
//!   variants of keys, duplicate keys, escaped names, batches, deep nesting).
//! - [`gate`]: the decision about every message of a session, both ways, without I/O: the
//!   pending-request tables (gateway ids for every forwarded request), tools, resources and
//!   prompts gated by the caller's rules, list answers filtered, refusals as JSON-RPC errors.
//! - [`answer`]: JSON-RPC error lines.
//! - [`headers`]: the HTTP headers that mirror a message (`Mcp-Method`, `Mcp-Name`), checked
//!   against the body and written from it.
//! - [`sse`]: server-sent events, decoded as they arrive and encoded, for Streamable HTTP.

pub mod answer;
pub mod envelope;
pub mod gate;
pub mod headers;
pub mod sse;

pub use envelope::{Envelope, EnvelopeError, Kind, Limits, parse};
pub use gate::{Gate, Rules};

/// JSON-RPC error codes the gateway uses.
pub mod code {
    /// The bytes are not JSON (or not UTF-8).
    pub const PARSE_ERROR: i64 = -32700;
    /// JSON, but not an acceptable request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad parameters — and `access denied` for a tool the roles do not allow.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The gateway failed (e.g. the audit log is unavailable).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Over a rate or concurrency limit (`mcp_limits`); the message says when to retry.
    /// From the range JSON-RPC leaves to implementations.
    pub const RATE_LIMITED: i64 = -32029;
}

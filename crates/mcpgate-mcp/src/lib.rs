//! JSON-RPC for MCP, without I/O: the envelope parser of untrusted messages, the error
//! answers the gateway writes, and the rewrites it owns (the `tools/list` filter).
//!
//! - [`envelope`]: parse only `jsonrpc`, `id`, `method`, `params.name`, `params.arguments`,
//!   `result`, `error`, borrowing from the line; refuse what has fooled other gateways (case
//!   variants of keys, duplicate keys, escaped names, batches, deep nesting).
//! - [`answer`]: JSON-RPC error lines and the filtered `tools/list` result.

pub mod answer;
pub mod envelope;

pub use envelope::{Envelope, EnvelopeError, Kind, Limits, parse};

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
}

//! Roles become decisions. Pure and synchronous: no I/O, no clock, no async.
//!
//! - [`matcher`]: one pattern — literal, `*` glob, `^regex$` — with `{{internal.x}}` traits.
//! - [`policy`]: a compiled role set answering "may this identity reach this app, call this
//!   tool, read this resource, get this prompt, use this admin verb?". The same [`Policy`] serves the `tools/list` filter, the
//!   `tools/call` gate, `mcp ls` and the admin API, so they cannot disagree.

pub mod matcher;
pub mod policy;

pub use matcher::{Matcher, PatternError};
pub use policy::{AppDecision, Decision, DenyReason, Policy, PolicyError, Subject};

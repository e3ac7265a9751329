//! Roles become decisions. Pure and synchronous: no I/O, no clock, no async.
//!
//! - [`matcher`]: one pattern — literal, `*` glob, `^regex$` — with `{{internal.x}}` traits.
//! - [`args`]: argument patterns (`**` across `/`, normalised paths) and a call's arguments.
//! - [`policy`]: a compiled role set answering "may this identity reach this app, call this
//!   tool, read this resource, get this prompt, use this admin verb?". The same [`Policy`] serves the `tools/list` filter, the
//!   `tools/call` gate, `mcp ls` and the admin API, so they cannot disagree.

pub mod args;
pub mod matcher;
pub mod policy;

pub use args::{ArgMatcher, Arguments, Problem};
pub use matcher::{Matcher, PatternError};
pub use policy::{
    AppDecision, Bound, CallDecision, Decision, DenyReason, Policy, PolicyError, Scope, Subject,
};

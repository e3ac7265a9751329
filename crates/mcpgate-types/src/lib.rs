//! Shared vocabulary of mcpgate: names, durations, the clock, resources and their YAML
//! parsing, certificate claims and audit events. Serde only: no I/O, no async.
//!
//! - [`clock`]: the injected [`Clock`] (system or fake), so expiry is testable without sleeping.
//! - [`duration`]: Go-style durations (`8h`, `1h30m`, `20m`).
//! - [`name`]: validated names of users, bots, roles and apps.
//! - [`resource`]: roles, apps, users, bots, tokens, locks; `admin create -f` parsing.
//! - [`identity`]: what a client certificate says about its holder.
//! - [`audit`]: audit events and their stable codes.

pub mod audit;
pub mod clock;
pub mod duration;
pub mod identity;
pub mod limits;
pub mod name;
pub mod pins;
pub mod resource;
pub mod secrets;

pub use audit::{AuditEvent, AuditQuery, Cursor, Page};
pub use clock::{Clock, FakeClock, SystemClock};
pub use identity::{Claims, IdentityKind};
pub use name::{Name, NameError};

/// `bytes` as lower-case hex digits.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` to `out` as lower-case hex digits.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

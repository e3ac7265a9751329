//! Names of users, bots, roles and apps: parsed once at the edge, valid from then on.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid name {0:?}: use 1 to 128 letters, digits, '.', '_', '-' or '@', starting with a letter or digit"
)]
pub struct NameError(pub String);

/// A validated resource or identity name: `[A-Za-z0-9][A-Za-z0-9._@-]{0,127}`.
///
/// The alphabet keeps names safe in storage keys, certificate subjects, file names and
/// log lines: no '/', no whitespace, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Validates `s` as a name.
    pub fn new(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(NameError(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Name::new(s)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(&s).map_err(serde::de::Error::custom)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "alice",
            "dev-readonly",
            "ci.bot",
            "a",
            "bob@example.com",
            "X_1",
        ] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_dangerous_names() {
        let long = "a".repeat(129);
        for bad in [
            "",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            "a\nb",
            "é",
            long.as_str(),
            "../etc",
        ] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
    }
}

//! What a secret looks like: the names that hold one and the shapes of well-known ones.
//! The agent's audit redaction and the checks on app definitions share these.

use regex::RegexSet;
use std::sync::OnceLock;

/// Parts of a key or variable name that say its value is a secret (compared lowercased).
const SECRET_NAMES: &[&str] = &[
    "token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "authorization",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "private_key",
    "credential",
    "cookie",
    "session_key",
    "client_secret",
];

fn shapes() -> &'static RegexSet {
    static SET: OnceLock<RegexSet> = OnceLock::new();
    SET.get_or_init(|| {
        RegexSet::new([
            r"gh[pousr]_[A-Za-z0-9]{20,}",
            r"github_pat_[A-Za-z0-9_]{20,}",
            r"\bsk-[A-Za-z0-9_-]{16,}",
            r"xox[abposr]-[A-Za-z0-9-]{10,}",
            r"\bAKIA[0-9A-Z]{16}\b",
            r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}",
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
            r"glpat-[A-Za-z0-9_-]{20,}",
            // Stripe live keys, Google API keys.
            r"\b[rs]k_live_[A-Za-z0-9]{16,}",
            r"\bAIza[0-9A-Za-z_-]{35}",
            // A password in a URL: scheme://user:PASS@host.
            r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@",
            // `password=...`, `token: ...` inside free text.
            r"(?i)\b(password|passwd|pwd|token|secret|api[_-]?key)\s*[=:]\s*\S+",
        ])
        .unwrap_or_else(|_| RegexSet::empty())
    })
}

/// Whether a key or variable name says its value is a secret (`GITHUB_TOKEN`, `pwd`).
pub fn secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|n| k.contains(n))
}

/// Whether the text holds something shaped like a well-known secret.
pub fn secret_shaped(s: &str) -> bool {
    shapes().is_match(s)
}

/// The text with its `${env:..}` and `${file:..}` references taken out: what is literal.
pub fn literal_part(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => rest = &rest[start + end + 1..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_shapes_and_literals() {
        assert!(secret_name("GITHUB_TOKEN") && secret_name("pwd") && secret_name("X-Api-Key"));
        assert!(!secret_name("PATH") && !secret_name("HOME"));
        assert!(secret_shaped("ghp_0123456789abcdefghij0123"));
        assert!(secret_shaped("postgres://app:hunter2@db/x"));
        assert!(!secret_shaped("https://example.com/a:b@c"));
        assert_eq!(literal_part("Bearer ${env:GITHUB_TOKEN}"), "Bearer ");
        assert_eq!(literal_part("${file:/run/t}"), "");
        assert_eq!(literal_part("a${env:X}b${env:Y}c"), "abc");
    }
}

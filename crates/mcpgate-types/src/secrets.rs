//! What a secret looks like: the names that hold one and the shapes of well-known ones.
//! The agent's audit redaction and the checks on app definitions share these.

use regex::{Regex, RegexSet};
use std::ops::Range;
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

/// Shapes of well-known secrets; the group `s`, where there is one, is the secret itself
/// (the rest says where it is).
const SHAPES: &[&str] = &[
    r"gh[pousr]_[A-Za-z0-9]{20,}",
    r"github_pat_[A-Za-z0-9_]{20,}",
    r"\bsk-[A-Za-z0-9_-]{16,}",
    r"xox[abposr]-[A-Za-z0-9-]{10,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"(?i)\bbearer\s+(?P<s>[A-Za-z0-9._~+/=-]{8,})",
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    r"(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\z)",
    r"glpat-[A-Za-z0-9_-]{20,}",
    // Stripe live keys, Google API keys.
    r"\b[rs]k_live_[A-Za-z0-9]{16,}",
    r"\bAIza[0-9A-Za-z_-]{35}",
    // A password in a URL: scheme://user:PASS@host.
    r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:(?P<s>[^/\s@]+)@",
    // `password=...`, `token: ...` inside free text.
    // A quoted value is one secret, spaces and all.
    r#"(?i)\b(?:password|passwd|pwd|token|secret|api[_-]?key)\s*[=:]\s*(?P<s>"[^"]*"?|'[^']*'?|\S+)"#,
];

fn shapes() -> &'static (RegexSet, Vec<Regex>) {
    static SET: OnceLock<(RegexSet, Vec<Regex>)> = OnceLock::new();
    SET.get_or_init(|| {
        (
            RegexSet::new(SHAPES).unwrap_or_else(|_| RegexSet::empty()),
            SHAPES.iter().filter_map(|p| Regex::new(p).ok()).collect(),
        )
    })
}

/// Where the secrets in `s` are: byte ranges, sorted, not overlapping.
pub fn secret_spans(s: &str) -> Vec<Range<usize>> {
    let (set, each) = shapes();
    let mut spans: Vec<Range<usize>> = Vec::new();
    for i in set.matches(s).iter() {
        for c in each[i].captures_iter(s) {
            if let Some(m) = c.name("s").or_else(|| c.get(0)) {
                spans.push(m.range());
            }
        }
    }
    spans.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut out: Vec<Range<usize>> = Vec::new();
    for r in spans {
        match out.last_mut() {
            Some(last) if r.start < last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Whether a key or variable name says its value is a secret (`GITHUB_TOKEN`, `pwd`).
pub fn secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|n| k.contains(n))
}

/// Whether the text holds something shaped like a well-known secret.
pub fn secret_shaped(s: &str) -> bool {
    shapes().0.is_match(s)
}

/// What replaces a secret in the audit log when no redaction key is at hand.
pub const REDACTED: &str = "[REDACTED]";

/// What replaces `secret` in the audit log: a keyed hash (HMAC-SHA256, 96 bits shown), as
/// Vault's audit devices do, so a known value can still be found (`admin audit search
/// --match-secret`) while the log never holds it, nor anything to guess it from without
/// the key.
pub fn redaction_tag(key: &[u8], secret: &str) -> String {
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        secret.as_bytes(),
    );
    format!("[REDACTED:{}]", crate::hex(&tag.as_ref()[..12]))
}

/// The redaction key of one agent, derived from the cluster's: an agent holds its own only,
/// so what one agent's key reveals ends with that agent's events.
pub fn agent_redaction_key(cluster_key: &[u8], agent: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, cluster_key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(b"mcpgate audit redaction v1\0");
    ctx.update(agent.as_bytes());
    ctx.sign().as_ref().to_vec()
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

    #[test]
    fn spans_are_the_secrets_themselves() {
        let text = "use Bearer abcdefghijkl, then postgres://app:hunter2@db and password=s3cret! ghp_0123456789abcdefghij0123";
        let found: Vec<&str> = secret_spans(text).into_iter().map(|r| &text[r]).collect();
        assert_eq!(
            found,
            [
                "abcdefghijkl",
                "hunter2",
                "s3cret!",
                "ghp_0123456789abcdefghij0123"
            ]
        );
        let pem = "key: -----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY----- done";
        let found: Vec<&str> = secret_spans(pem).into_iter().map(|r| &pem[r]).collect();
        assert_eq!(
            found,
            ["-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----"]
        );
        assert!(secret_spans("nothing here").is_empty());
        let quoted = r#"login with password="correct horse battery" now, token: 'a b'"#;
        let found: Vec<&str> = secret_spans(quoted)
            .into_iter()
            .map(|r| &quoted[r])
            .collect();
        assert_eq!(found, [r#""correct horse battery""#, "'a b'"]);
    }
}

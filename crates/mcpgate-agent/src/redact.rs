//! Redaction of audit parameters: values under secret-like names, and secrets shaped like
//! well-known ones inside any string, are replaced before an event is stored — by a keyed
//! hash of the value when the agent has its redaction key (see
//! [`mcpgate_types::secrets::redaction_tag`]), else by `[REDACTED]`.

use mcpgate_types::secrets::{REDACTED, redaction_tag, secret_name, secret_spans};
use serde_json::Value;

fn replacement(key: Option<&[u8]>, secret: &str) -> String {
    match key {
        Some(k) => redaction_tag(k, secret),
        None => REDACTED.to_string(),
    }
}
/// Parameters larger than this are stored truncated.
const MAX_PARAMS: usize = 64 << 10;

/// Redacts a JSON value in place, at any depth.
pub fn redact(v: &mut Value, key: Option<&[u8]>) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if secret_name(k) && !val.is_null() {
                    let secret = match &mut *val {
                        Value::String(s) => std::mem::take(s),
                        other => other.to_string(),
                    };
                    *val = Value::String(replacement(key, &secret));
                } else {
                    redact(val, key);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| redact(i, key)),
        Value::String(s) => {
            let spans = secret_spans(s);
            if spans.is_empty() {
                return;
            }
            let mut out = String::with_capacity(s.len());
            let mut at = 0;
            for r in spans {
                out.push_str(&s[at..r.start]);
                out.push_str(&replacement(key, &s[r.clone()]));
                at = r.end;
            }
            out.push_str(&s[at..]);
            *s = out;
        }
        _ => {}
    }
}

/// The audit form of raw parameters: parsed, redacted, size-capped.
pub fn audit_params(raw: Option<&str>, key: Option<&[u8]>) -> Value {
    let Some(raw) = raw else { return Value::Null };
    if raw.len() > MAX_PARAMS {
        return Value::String(format!("[{} bytes, not stored]", raw.len()));
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(mut v) => {
            redact(&mut v, key);
            v
        }
        Err(_) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_names_and_shapes() {
        let raw = r#"{"name":"create_issue","arguments":{"title":"hi","token":"abc","nested":{"Authorization":"Basic x","list":["ghp_0123456789abcdefghij0123","fine"]},"note":"use Bearer abcdefghijkl please","count":3}}"#;
        let v = audit_params(Some(raw), None);
        assert_eq!(v["arguments"]["token"], REDACTED);
        assert_eq!(v["arguments"]["nested"]["Authorization"], REDACTED);
        assert_eq!(v["arguments"]["nested"]["list"][0], REDACTED);
        assert_eq!(v["arguments"]["nested"]["list"][1], "fine");
        assert_eq!(v["arguments"]["note"], "use Bearer [REDACTED] please");
        assert_eq!(v["arguments"]["title"], "hi");
        assert_eq!(v["arguments"]["count"], 3);
        assert_eq!(v["name"], "create_issue");
        // Stripe and Google keys, URL passwords, a `pwd` key, credentials inside free text.
        let raw = r#"{"a":"sk_live_4eC39HqLyjWDarjtT1zdp7dc","b":"rk_live_51HaBcDeFgHiJkLmNoPq","c":"AIzaSyA-1234567890abcdefghijklmnopqrstu","d":"postgres://app:hunter2@db:5432/x","e":{"pwd":"hunter2"},"f":"connect with password=hunter2 today","g":"TOKEN: abc123","h":"https://example.com/a:b@c","i":"the password is long"}"#;
        let v = audit_params(Some(raw), None);
        for k in ["a", "b", "c"] {
            assert_eq!(v[k], REDACTED, "{k}");
        }
        assert_eq!(v["d"], "postgres://app:[REDACTED]@db:5432/x");
        assert_eq!(v["f"], "connect with password=[REDACTED] today");
        assert_eq!(v["g"], "TOKEN: [REDACTED]");
        assert_eq!(v["e"]["pwd"], REDACTED);
        // A colon and an at-sign in a path are not a URL password; prose about passwords stays.
        assert_eq!(v["h"], "https://example.com/a:b@c");
        assert_eq!(v["i"], "the password is long");
        assert!(
            audit_params(Some(&"x".repeat(70_000)), None)
                .as_str()
                .unwrap()
                .contains("not stored")
        );
    }

    #[test]
    fn a_key_makes_each_secret_a_searchable_tag() {
        let key = b"0123456789abcdef0123456789abcdef";
        let raw = r#"{"arguments":{"deep":[{"api_key":"canary-7f3a9c"}],"note":"password=hunter2 and postgres://u:hunter2@db"}}"#;
        let v = audit_params(Some(raw), Some(key));
        let canary = redaction_tag(key, "canary-7f3a9c");
        let hunter = redaction_tag(key, "hunter2");
        assert!(canary.starts_with("[REDACTED:") && canary.len() == "[REDACTED:]".len() + 24);
        assert_eq!(v["arguments"]["deep"][0]["api_key"], canary.as_str());
        assert_eq!(
            v["arguments"]["note"],
            format!("password={hunter} and postgres://u:{hunter}@db")
        );
        assert!(!v.to_string().contains("hunter2") && !v.to_string().contains("canary-7f3a9c"));
        assert_ne!(redaction_tag(b"another key", "hunter2"), hunter);
    }
}

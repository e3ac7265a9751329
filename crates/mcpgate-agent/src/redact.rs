//! Redaction of audit parameters: values under secret-like names, and values shaped like
//! well-known secrets, are replaced before an event is stored.

use mcpgate_types::secrets::{secret_name, secret_shaped};
use serde_json::Value;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";
/// Parameters larger than this are stored truncated.
const MAX_PARAMS: usize = 64 << 10;

/// Redacts a JSON value in place.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if secret_name(k) && !val.is_null() {
                    *val = Value::String(REDACTED.into());
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) if secret_shaped(s) => *s = REDACTED.into(),
        _ => {}
    }
}

/// The audit form of raw parameters: parsed, redacted, size-capped.
pub fn audit_params(raw: Option<&str>) -> Value {
    let Some(raw) = raw else { return Value::Null };
    if raw.len() > MAX_PARAMS {
        return Value::String(format!("[{} bytes, not stored]", raw.len()));
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(mut v) => {
            redact(&mut v);
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
        let v = audit_params(Some(raw));
        assert_eq!(v["arguments"]["token"], REDACTED);
        assert_eq!(v["arguments"]["nested"]["Authorization"], REDACTED);
        assert_eq!(v["arguments"]["nested"]["list"][0], REDACTED);
        assert_eq!(v["arguments"]["nested"]["list"][1], "fine");
        assert_eq!(v["arguments"]["note"], REDACTED);
        assert_eq!(v["arguments"]["title"], "hi");
        assert_eq!(v["arguments"]["count"], 3);
        assert_eq!(v["name"], "create_issue");
        // Shapes that passed unredacted before: Stripe and Google keys, URL passwords, a
        // `pwd` key, and credentials inside free text.
        let raw = r#"{"a":"sk_live_4eC39HqLyjWDarjtT1zdp7dc","b":"rk_live_51HaBcDeFgHiJkLmNoPq","c":"AIzaSyA-1234567890abcdefghijklmnopqrstu","d":"postgres://app:hunter2@db:5432/x","e":{"pwd":"hunter2"},"f":"connect with password=hunter2 today","g":"TOKEN: abc123","h":"https://example.com/a:b@c","i":"the password is long"}"#;
        let v = audit_params(Some(raw));
        for k in ["a", "b", "c", "d", "f", "g"] {
            assert_eq!(v[k], REDACTED, "{k}");
        }
        assert_eq!(v["e"]["pwd"], REDACTED);
        // A colon and an at-sign in a path are not a URL password; prose about passwords stays.
        assert_eq!(v["h"], "https://example.com/a:b@c");
        assert_eq!(v["i"], "the password is long");
        assert!(
            audit_params(Some(&"x".repeat(70_000)))
                .as_str()
                .unwrap()
                .contains("not stored")
        );
    }
}

//! Agent-side secrets: `${env:NAME}` and `${file:PATH}` in an app's `env` values, resolved
//! on the agent host only, when the upstream starts. Errors name the reference, never a value.

/// A reference that cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable {0} referenced by ${{env:{0}}} is not set on the agent host")]
    MissingEnv(String),
    #[error("cannot read {0} referenced by ${{file:{0}}} on the agent host")]
    UnreadableFile(String),
    #[error("unknown secret reference ${{{0}:...}}: use ${{env:NAME}} or ${{file:PATH}}")]
    UnknownKind(String),
    #[error("unterminated secret reference in a value (missing '}}')")]
    Unterminated,
}

/// Replaces every `${env:NAME}` and `${file:PATH}` in `value`. A file's trailing newline is
/// dropped. Text around references is kept; `$` not followed by `{` is literal.
pub fn resolve(value: &str) -> Result<String, SecretError> {
    resolve_into(value, &mut Vec::new())
}

/// [`resolve`], adding each reference's value to `given`: what the server is handed from
/// this host's secrets (see [`Scrubber`]).
pub fn resolve_into(value: &str, given: &mut Vec<String>) -> Result<String, SecretError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(SecretError::Unterminated)?;
        let reference = &after[..end];
        let (kind, arg) = reference.split_once(':').unwrap_or((reference, ""));
        match kind {
            "env" => {
                let v = std::env::var(arg).map_err(|_| SecretError::MissingEnv(arg.to_string()))?;
                out.push_str(&v);
                given.push(v);
            }
            "file" => {
                let text = std::fs::read_to_string(arg)
                    .map_err(|_| SecretError::UnreadableFile(arg.to_string()))?;
                let v = text.strip_suffix('\n').unwrap_or(&text);
                out.push_str(v);
                given.push(v.to_string());
            }
            other => return Err(SecretError::UnknownKind(other.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The values a server was given from this host's secrets, taken out again wherever the
/// server sends them back (its messages, its standard error): a tool that prints its
/// environment does not hand its credentials to the client, the audit log or the logs.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// Longest first, each as given and as it appears inside a JSON string; searchers built
    /// once, for every line the server sends.
    needles: Vec<memchr::memmem::Finder<'static>>,
}

/// What a secret is replaced with.
const SCRUBBED: &[u8] = b"[REDACTED]";

impl Scrubber {
    /// Shorter values would scrub ordinary text.
    const MIN: usize = 6;

    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Scrubber {
        let mut needles = Vec::new();
        for v in values.into_iter().filter(|v| v.len() >= Self::MIN) {
            needles.push(v.as_bytes().to_vec());
            // Inside a JSON string, as the encoders servers use write it: serde's (and most),
            // with `/` as `\/` (PHP), and with `& < >` as `\u00XX` (Go).
            if let Ok(json) = serde_json::to_string(v) {
                let inner = &json[1..json.len() - 1];
                let slashed = inner.replace('/', "\\/");
                let html = inner
                    .replace('&', "\\u0026")
                    .replace('<', "\\u003c")
                    .replace('>', "\\u003e");
                for form in [inner.to_string(), slashed, html] {
                    if form != v {
                        needles.push(form.into_bytes());
                    }
                }
            }
        }
        needles.sort_by_key(|n: &Vec<u8>| std::cmp::Reverse(n.len()));
        needles.dedup();
        Scrubber {
            needles: needles
                .iter()
                .map(|n| memchr::memmem::Finder::new(n).into_owned())
                .collect(),
        }
    }

    /// `line` with every secret in it replaced, if it held any (no allocation otherwise).
    pub fn scrub(&self, line: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for needle in &self.needles {
            let src = out.as_deref().unwrap_or(line);
            if needle.find(src).is_none() {
                continue;
            }
            let mut next = Vec::with_capacity(src.len());
            let mut rest = src;
            while let Some(i) = needle.find(rest) {
                next.extend_from_slice(&rest[..i]);
                next.extend_from_slice(SCRUBBED);
                rest = &rest[i + needle.needle().len()..];
            }
            next.extend_from_slice(rest);
            out = Some(next);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_env_and_files() {
        // set_var is unsafe in edition 2024 (and the crate forbids unsafe): use a variable that is set.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(resolve("x-${env:PATH}-y").unwrap(), format!("x-{path}-y"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(
            resolve(&format!("Bearer ${{file:{}}}", f.display())).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(resolve("plain $5 value").unwrap(), "plain $5 value");
    }

    #[test]
    fn errors_never_carry_values() {
        assert_eq!(
            resolve("${env:MCPGATE_SURELY_UNSET_VAR}"),
            Err(SecretError::MissingEnv("MCPGATE_SURELY_UNSET_VAR".into()))
        );
        assert!(matches!(
            resolve("${file:/nonexistent/x}"),
            Err(SecretError::UnreadableFile(_))
        ));
        assert!(matches!(
            resolve("${vault:x}"),
            Err(SecretError::UnknownKind(_))
        ));
        assert_eq!(resolve("${env:X"), Err(SecretError::Unterminated));
    }

    #[test]
    fn secrets_given_to_a_server_are_taken_out_of_what_it_sends_back() {
        let s = Scrubber::new(["sk-e2e-secret-7f3a9c1d5e", "pa\"ss\\word", "short"]);
        let line = br#"{"API_KEY":"sk-e2e-secret-7f3a9c1d5e","b":"x sk-e2e-secret-7f3a9c1d5e y","c":"pa\"ss\\word","d":"short"}"#;
        let clean = String::from_utf8(s.scrub(line).unwrap()).unwrap();
        assert_eq!(
            clean,
            r#"{"API_KEY":"[REDACTED]","b":"x [REDACTED] y","c":"[REDACTED]","d":"short"}"#
        );
        assert!(serde_json::from_str::<serde_json::Value>(&clean).is_ok());
        assert_eq!(s.scrub(b"nothing here"), None);
        // As other encoders write it: PHP's `\/`, Go's `\u0026`.
        let s = Scrubber::new(["abc/def+ghi", "tok&en<1>"]);
        let line = br#"{"a":"abc\/def+ghi","b":"tok\u0026en\u003c1\u003e"}"#;
        assert_eq!(
            String::from_utf8(s.scrub(line).unwrap()).unwrap(),
            r#"{"a":"[REDACTED]","b":"[REDACTED]"}"#
        );
    }
}

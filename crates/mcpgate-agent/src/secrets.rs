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
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(SecretError::Unterminated)?;
        let reference = &after[..end];
        let (kind, arg) = reference.split_once(':').unwrap_or((reference, ""));
        match kind {
            "env" => out.push_str(
                &std::env::var(arg).map_err(|_| SecretError::MissingEnv(arg.to_string()))?,
            ),
            "file" => {
                let text = std::fs::read_to_string(arg)
                    .map_err(|_| SecretError::UnreadableFile(arg.to_string()))?;
                out.push_str(text.strip_suffix('\n').unwrap_or(&text));
            }
            other => return Err(SecretError::UnknownKind(other.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
}

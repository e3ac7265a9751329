//! A single name pattern, as Teleport writes them in roles.

use regex::Regex;
use std::collections::BTreeMap;

/// A pattern that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A `^...$` pattern that is not a valid regular expression.
    #[error("invalid regular expression {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    /// A `{{...}}` template that is not `{{internal.NAME}}` or `{{external.NAME}}`.
    #[error("invalid template {0:?}: expected {{{{internal.NAME}}}} or {{{{external.NAME}}}}")]
    Template(String),
}

/// How a pattern matches a value.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// `*`: every value.
    Any,
    /// A plain string: exactly this value.
    Literal(String),
    /// A glob with `*`, or a `^...$` regular expression (anchored).
    Regex(Regex),
}

impl Matcher {
    /// Compiles one pattern (after trait expansion).
    pub fn new(pattern: &str) -> Result<Matcher, PatternError> {
        if pattern == "*" {
            return Ok(Matcher::Any);
        }
        let source = if pattern.starts_with('^') && pattern.ends_with('$') {
            pattern.to_string()
        } else if pattern.contains('*') {
            let parts: Vec<String> = pattern.split('*').map(regex::escape).collect();
            // `(?s)`: a glob's `*` matches any character, newlines included.
            format!("(?s)^{}$", parts.join(".*"))
        } else {
            return Ok(Matcher::Literal(pattern.to_string()));
        };
        compile(pattern, &source).map(Matcher::Regex)
    }

    /// Whether `value` matches. Allocation-free.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Literal(s) => s == value,
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

/// Compiles the regular expression `source` made from `pattern` (named in the error),
/// bounded in size.
pub(crate) fn compile(pattern: &str, source: &str) -> Result<Regex, PatternError> {
    regex::RegexBuilder::new(source)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| PatternError::Regex {
            pattern: pattern.to_string(),
            reason: e
                .to_string()
                .lines()
                .last()
                .unwrap_or("invalid")
                .trim()
                .to_string(),
        })
}

/// Expands `{{internal.x}}` / `{{external.x}}` in `pattern` with the identity's traits:
/// one pattern per trait value; none if the trait is missing. Text around the template is
/// kept (`prefix_{{internal.x}}`). Patterns without a template expand to themselves.
pub fn expand(
    pattern: &str,
    traits: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, PatternError> {
    let Some(open) = pattern.find("{{") else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find("}}")
        .map(|i| open + i)
        .ok_or_else(|| PatternError::Template(pattern.to_string()))?;
    let inner = pattern[open + 2..close].trim();
    let name = inner
        .strip_prefix("internal.")
        .or_else(|| inner.strip_prefix("external."))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .ok_or_else(|| PatternError::Template(pattern.to_string()))?;
    let (before, after) = (&pattern[..open], &pattern[close + 2..]);
    if after.contains("{{") {
        return Err(PatternError::Template(pattern.to_string()));
    }
    Ok(traits
        .get(name)
        .map(|values| {
            values
                .iter()
                .map(|v| format!("{before}{v}{after}"))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str) -> Matcher {
        Matcher::new(p).unwrap()
    }

    #[test]
    fn literal_glob_and_regex() {
        assert!(m("echo").matches("echo"));
        assert!(!m("echo").matches("echo2"));
        assert!(!m("echo").matches("Echo"));
        assert!(m("read_*").matches("read_file"));
        assert!(m("read_*").matches("read_"));
        assert!(!m("read_*").matches("xread_file"));
        assert!(m("*delete*").matches("repo_delete_all"));
        assert!(m("^(get|list)_.*$").matches("list_issues"));
        assert!(!m("^(get|list)_.*$").matches("xget_a"));
        assert!(m("*").matches(""));
        // Regex metacharacters in globs are literal.
        assert!(m("a.b*").matches("a.bc"));
        assert!(!m("a.b*").matches("axbc"));
        assert!(!m("a+").matches("aa"));
        assert!(m("file:///etc/*").matches("file:///etc/passwd\n"));
    }

    #[test]
    fn bad_regex_is_an_error() {
        let e = Matcher::new("^(unclosed$").unwrap_err();
        assert!(matches!(e, PatternError::Regex { .. }));
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn traits_expand() {
        let mut traits = BTreeMap::new();
        traits.insert(
            "mcp_tools".to_string(),
            vec!["a".to_string(), "b_*".to_string()],
        );
        assert_eq!(
            expand("{{internal.mcp_tools}}", &traits).unwrap(),
            vec!["a", "b_*"]
        );
        assert_eq!(
            expand("x_{{ external.mcp_tools }}", &traits).unwrap(),
            vec!["x_a", "x_b_*"]
        );
        assert!(expand("{{internal.missing}}", &traits).unwrap().is_empty());
        assert_eq!(expand("plain", &traits).unwrap(), vec!["plain"]);
        for bad in [
            "{{internal.}}",
            "{{foo.x}}",
            "{{internal.x",
            "{{internal.a}}{{internal.b}}",
        ] {
            assert!(expand(bad, &traits).is_err(), "{bad}");
        }
    }
}

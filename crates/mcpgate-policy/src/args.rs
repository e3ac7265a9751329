//! Argument rules: what a role says about the arguments of a tool call.
//!
//! A pattern is a literal, a glob or an anchored `^regex$`, as for names, except that in a
//! glob `*` stops at `/` and `**` crosses it. A pattern that begins with `/` (or `^/`) is
//! path-like: it matches the value's normal form (`.` and `..` resolved, repeated `/`
//! collapsed), and a value that is not an absolute path, or holds a NUL, never matches an
//! allow rule and always matches a deny rule: what cannot be checked is refused.

use std::borrow::Cow;
use std::fmt;

use regex::Regex;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::matcher::PatternError;

/// One compiled argument pattern.
#[derive(Debug, Clone)]
pub struct ArgMatcher {
    kind: Kind,
    /// Matches the normal form of an absolute path.
    path: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `*`: any value, of any type.
    Any,
    Literal(String),
    Regex(Regex),
}

/// How an argument value stands against a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Match,
    NoMatch,
    /// The value cannot be compared: why.
    Unchecked(Problem),
}

/// Why an argument value could not be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Absent or `null`.
    Missing,
    /// An object or an array where text was expected.
    NotText,
    /// A path-like pattern and a value that is not an absolute path.
    NotAbsolute,
    /// A NUL character in a path.
    Nul,
    /// A percent-encoded `.`, `/`, `\\`, `%` or NUL, or a `\\`, in a path, which a server
    /// that decodes it, or reads `\\` as a separator, would read as a traversal.
    Encoded,
    /// Control characters, or spaces at either end: parsers disagree on what they mean
    /// (a URL parser drops them, a pattern does not).
    Unclear,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Problem::Missing => "is missing",
            Problem::NotText => "is not a string, number or boolean",
            Problem::NotAbsolute => "is not an absolute path",
            Problem::Nul => "holds a NUL character",
            Problem::Encoded => "holds a backslash or a percent-encoded dot, slash or percent",
            Problem::Unclear => "holds control characters or spaces at its ends",
        })
    }
}

impl ArgMatcher {
    /// Compiles one argument pattern (after trait expansion).
    pub fn new(pattern: &str) -> Result<ArgMatcher, PatternError> {
        let path = pattern.starts_with('/') || pattern.starts_with("^/");
        if pattern == "*" {
            return Ok(ArgMatcher {
                kind: Kind::Any,
                path: false,
            });
        }
        let source = if pattern.starts_with('^') && pattern.ends_with('$') && pattern.len() > 1 {
            // `.` matches a newline too: a value cannot slip past with one.
            format!("(?s){pattern}")
        } else if pattern.contains('*') {
            let mut source = String::from("(?s)^");
            let mut rest = pattern;
            while let Some(i) = rest.find('*') {
                source.push_str(&regex::escape(&rest[..i]));
                if rest[i..].starts_with("**") {
                    source.push_str(".*");
                    rest = &rest[i + 2..];
                } else {
                    source.push_str("[^/]*");
                    rest = &rest[i + 1..];
                }
            }
            source.push_str(&regex::escape(rest));
            source.push('$');
            source
        } else {
            let literal = if path {
                normal_path(pattern).unwrap_or_else(|_| pattern.to_string())
            } else {
                pattern.to_string()
            };
            return Ok(ArgMatcher {
                kind: Kind::Literal(literal),
                path,
            });
        };
        let regex = crate::matcher::compile(pattern, &source)?;
        Ok(ArgMatcher {
            kind: Kind::Regex(regex),
            path,
        })
    }

    /// How `value` (an argument's JSON value, `None` when absent) stands against this pattern.
    pub fn fit(&self, value: Option<&Value>) -> Fit {
        let text: Cow<'_, str> = match value {
            None | Some(Value::Null) => return Fit::Unchecked(Problem::Missing),
            Some(_) if matches!(self.kind, Kind::Any) => return Fit::Match,
            Some(Value::String(s)) => Cow::Borrowed(s),
            Some(Value::Number(n)) => Cow::Owned(n.to_string()),
            Some(Value::Bool(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Some(_) => return Fit::Unchecked(Problem::NotText),
        };
        if text.chars().any(char::is_control) || text.trim() != text {
            return Fit::Unchecked(Problem::Unclear);
        }
        let text = if self.path {
            match normal_path(&text) {
                Ok(p) => Cow::Owned(p),
                Err(problem) => return Fit::Unchecked(problem),
            }
        } else {
            text
        };
        let hit = match &self.kind {
            Kind::Any => true,
            Kind::Literal(s) => *s == *text,
            Kind::Regex(r) => r.is_match(&text),
        };
        if hit { Fit::Match } else { Fit::NoMatch }
    }
}

/// The normal form of an absolute path: `.` and `..` resolved (never above `/`), repeated
/// and trailing `/` removed.
pub fn normal_path(path: &str) -> Result<String, Problem> {
    if path.contains('\0') {
        return Err(Problem::Nul);
    }
    if !path.starts_with('/') {
        return Err(Problem::NotAbsolute);
    }
    let lower = path.to_ascii_lowercase();
    if path.contains('\\')
        || ["%2e", "%2f", "%5c", "%00", "%25"]
            .iter()
            .any(|e| lower.contains(e))
    {
        return Err(Problem::Encoded);
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = String::with_capacity(path.len());
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// A key as a case-insensitive decoder compares it (Unicode lowercase; `ſ` is `s`, the
/// Kelvin sign `k`).
fn folded(key: &str) -> String {
    key.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == '\u{17f}' { 's' } else { c })
        .collect()
}

/// The arguments of a tool call: `params.arguments` as an object, its keys unique.
#[derive(Debug, Default, Clone, PartialEq)]
/// Keys are kept folded (see [`folded`]): a name is looked up the way a case-insensitive
/// decoder would.
pub struct Arguments(Vec<(String, Value)>);

impl Arguments {
    /// Reads `params.arguments` (absent: no arguments). An argument named twice — also in
    /// another case or spelling that folds to the same name, as Go's JSON decoder reads
    /// keys — is refused: servers disagree on which of the two they use.
    pub fn parse(raw: Option<&str>) -> Result<Arguments, String> {
        match raw {
            None => Ok(Arguments::default()),
            Some(raw) => serde_json::from_str(raw).map_err(|e| {
                let e = e.to_string();
                let e = e.split(" at line ").next().unwrap_or(&e).to_string();
                format!("\"params.arguments\" {e}")
            }),
        }
    }

    /// The value of argument `name`, under any spelling that folds to it (`Path`, `PATH`).
    pub fn get(&self, name: &str) -> Option<&Value> {
        let name = folded(name);
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

impl<'de> serde::Deserialize<'de> for Arguments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Args;
        impl<'de> Visitor<'de> for Args {
            type Value = Arguments;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("must be an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Arguments, M::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                // The keys as written, for the message.
                let mut written: Vec<String> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let f = folded(&key);
                    if let Some(i) = out.iter().position(|(k, _)| *k == f) {
                        let first = &written[i];
                        return Err(de::Error::custom(if *first == key {
                            format!("names {key:?} twice")
                        } else {
                            format!("names {first:?} twice (also as {key:?})")
                        }));
                    }
                    let value = map.next_value()?;
                    out.push((f, value));
                    written.push(key);
                }
                Ok(Arguments(out))
            }
        }
        d.deserialize_map(Args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fit(pattern: &str, value: Value) -> Fit {
        ArgMatcher::new(pattern).unwrap().fit(Some(&value))
    }

    #[test]
    fn globs_stop_at_slash_unless_doubled() {
        assert_eq!(fit("acme/*", json!("acme/widgets")), Fit::Match);
        assert_eq!(fit("acme/*", json!("acme/widgets/x")), Fit::NoMatch);
        assert_eq!(fit("acme/*", json!("acmex/widgets")), Fit::NoMatch);
        assert_eq!(fit("acme/**", json!("acme/a/b")), Fit::Match);
        assert_eq!(fit("/srv/docs/**", json!("/srv/docs/a/b.md")), Fit::Match);
        assert_eq!(
            fit("/srv/docs/*.md", json!("/srv/docs/a/b.md")),
            Fit::NoMatch
        );
        assert_eq!(fit("/srv/docs/*.md", json!("/srv/docs/b.md")), Fit::Match);
        // Metacharacters are literal in globs.
        assert_eq!(fit("a.b*", json!("axb")), Fit::NoMatch);
    }

    #[test]
    fn paths_are_normalised_before_matching() {
        let docs = "/srv/docs/**";
        assert_eq!(fit(docs, json!("/srv/docs/../../etc/passwd")), Fit::NoMatch);
        assert_eq!(fit(docs, json!("/srv//docs/./a")), Fit::Match);
        assert_eq!(fit(docs, json!("/srv/docs/a/../../docs/b")), Fit::Match);
        assert_eq!(fit(docs, json!("/../srv/docs/a")), Fit::Match);
        assert_eq!(
            fit(docs, json!("srv/docs/a")),
            Fit::Unchecked(Problem::NotAbsolute)
        );
        assert_eq!(
            fit(docs, json!("/srv/docs/a\0")),
            Fit::Unchecked(Problem::Unclear),
            "NUL, like every control character"
        );
        assert_eq!(normal_path("/a\0"), Err(Problem::Nul));
        for encoded in [
            "/srv/docs/%2e%2e/%2E%2E/etc/passwd",
            "/srv/docs/..%2fsecret",
            "/srv/docs/%2E./x",
            "/srv/docs/..\\..\\etc",
            "/srv/docs/%252e%252e/x",
        ] {
            assert_eq!(
                fit(docs, json!(encoded)),
                Fit::Unchecked(Problem::Encoded),
                "{encoded}"
            );
        }
        assert_eq!(
            fit(docs, json!("/srv/docs/")),
            Fit::NoMatch,
            "the directory itself"
        );
        assert_eq!(
            fit(docs, json!("/srv/docs/a/")),
            Fit::Match,
            "a trailing slash"
        );
        assert_eq!(fit("/etc/passwd", json!("/etc/./passwd")), Fit::Match);
        assert_eq!(fit("/etc//passwd", json!("/etc/passwd")), Fit::Match);
        assert_eq!(fit("^/etc/.*$", json!("/srv/../etc/x")), Fit::Match);
        assert_eq!(normal_path("/").unwrap(), "/");
        assert_eq!(normal_path("/a/b/").unwrap(), "/a/b");
        assert_eq!(normal_path("/a/../..").unwrap(), "/");
    }

    #[test]
    fn values_of_other_types() {
        assert_eq!(fit("42", json!(42)), Fit::Match);
        assert_eq!(fit("true", json!(true)), Fit::Match);
        assert_eq!(
            fit("acme/*", json!(["acme/x"])),
            Fit::Unchecked(Problem::NotText)
        );
        assert_eq!(fit("*", json!({"a": 1})), Fit::Match);
        let m = ArgMatcher::new("*").unwrap();
        assert_eq!(m.fit(None), Fit::Unchecked(Problem::Missing));
        assert_eq!(m.fit(Some(&Value::Null)), Fit::Unchecked(Problem::Missing));
    }

    #[test]
    fn regexes_are_anchored() {
        let ssrf = r"^https?://(169\.254|127\.|10\.|localhost).*$";
        assert_eq!(
            fit(ssrf, json!("http://169.254.169.254/latest")),
            Fit::Match
        );
        assert_eq!(
            fit(ssrf, json!("https://example.com/?u=http://127.0.0.1")),
            Fit::NoMatch
        );
        // What URL parsers strip or fold is not let past a deny rule.
        for sly in [
            "http://127.0.0.1/\n",
            " http://127.0.0.1",
            "http://127.0.0.1\t",
            "ht\ntp://10.0.0.1",
        ] {
            assert_eq!(
                fit(ssrf, json!(sly)),
                Fit::Unchecked(Problem::Unclear),
                "{sly:?}"
            );
        }
        assert_eq!(fit("*", json!("any\nthing")), Fit::Match);
        assert!(ArgMatcher::new("^(bad$").is_err());
    }

    #[test]
    fn arguments_refuse_duplicates_and_non_objects() {
        let a = Arguments::parse(Some(r#"{"path": "/a", "n": 1}"#)).unwrap();
        assert_eq!(a.get("path"), Some(&json!("/a")));
        assert_eq!(
            a.get("Path"),
            Some(&json!("/a")),
            "any spelling of the name"
        );
        let e = Arguments::parse(Some(r#"{"path": "/srv/docs/a", "path": "/etc/passwd"}"#))
            .unwrap_err();
        assert!(e.contains("names \"path\" twice"), "{e}");
        assert!(Arguments::parse(Some("[1]")).is_err());
        let e = Arguments::parse(Some(r#"{"path": "/srv/docs/a", "Path": "/etc/passwd"}"#))
            .unwrap_err();
        assert!(e.contains(r#"names "path" twice (also as "Path")"#), "{e}");
        assert!(Arguments::parse(Some(r#"{"url": "a", "\u0055RL": "b"}"#)).is_err());
        assert!(Arguments::parse(Some(r#"{"paſs": "a", "pass": "b"}"#)).is_err());
        let a = Arguments::parse(Some(r#"{"URL": "http://x"}"#)).unwrap();
        assert_eq!(
            a.get("url"),
            Some(&json!("http://x")),
            "a deny rule sees any spelling"
        );
        assert_eq!(Arguments::parse(None).unwrap(), Arguments::default());
    }
}

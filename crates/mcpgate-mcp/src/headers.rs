//! The HTTP headers that mirror a message's body (SEP-2243, required by 2026-07-28):
//! `Mcp-Method` (every message with a method) and `Mcp-Name` (`params.name` of `tools/call`
//! and `prompts/get`, `params.uri` of `resources/read`), and the protocol version a request
//! names in its `_meta`. The gateway decides on the body; these are checked against it where
//! a client sends them and written from it where the gateway sends a message on.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::borrow::Cow;

use crate::Envelope;
use crate::envelope::{pick, string};

/// `Mcp-Method`.
pub const METHOD: &str = "mcp-method";
/// `Mcp-Name`.
pub const NAME: &str = "mcp-name";
/// `MCP-Protocol-Version`.
pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// `Mcp-Session-Id` (the session-era revisions).
pub const SESSION_ID: &str = "mcp-session-id";
/// The `_meta` key of a 2026-07-28 request's protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The `_meta` key of a 2026-07-28 request's client capabilities.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// The first revision without sessions (versions are dates: they compare as text).
pub const STATELESS_SINCE: &str = "2026-07-28";

const SENTINEL: (&str, &str) = ("=?base64?", "?=");

/// The values a message's mirror headers must carry: its method, and the name or URI it
/// targets.
#[derive(Debug, PartialEq, Eq)]
pub struct Mirror<'a> {
    pub method: &'a str,
    pub name: Option<Cow<'a, str>>,
}

/// What a message's mirror headers say, from its body; `None` for answers.
pub fn mirror<'a>(env: &Envelope<'a>) -> Option<Mirror<'a>> {
    let method = env.method?;
    let name = match method {
        "tools/call" | "prompts/get" => env.name.map(Cow::Borrowed),
        "resources/read" => env.uri.and_then(string),
        _ => None,
    };
    Some(Mirror { method, name })
}

/// A header value for `value`: as is when it is plain printable ASCII, otherwise (non-ASCII,
/// control characters, edge whitespace, or text that looks like the escape itself)
/// `=?base64?…?=`.
pub fn encode(value: &str) -> Cow<'_, str> {
    let plain = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && value.trim() == value
        && !(value.starts_with(SENTINEL.0) && value.ends_with(SENTINEL.1));
    if plain {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!(
            "{}{}{}",
            SENTINEL.0,
            STANDARD.encode(value),
            SENTINEL.1
        ))
    }
}

/// The value a header carries (the escape undone); `None` if it is malformed.
pub fn decode(header: &[u8]) -> Option<Cow<'_, str>> {
    let text = std::str::from_utf8(header).ok()?;
    match text
        .strip_prefix(SENTINEL.0)
        .and_then(|t| t.strip_suffix(SENTINEL.1))
    {
        Some(b64) => {
            let bytes = STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok().map(Cow::Owned)
        }
        None => Some(Cow::Borrowed(text)),
    }
}

/// Checks the mirror headers a client sent against the body: each one present must agree
/// (after decoding); with `required` (2026-07-28), `Mcp-Method` and, where the body names a
/// target, `Mcp-Name` must be present. The error is a sentence for a 400 answer.
pub fn check(
    env: &Envelope<'_>,
    method: Option<&[u8]>,
    name: Option<&[u8]>,
    required: bool,
) -> Result<(), String> {
    let want = mirror(env);
    let want_method = want.as_ref().map(|m| m.method);
    let want_name = want.as_ref().and_then(|m| m.name.as_deref());
    match (method, want_method) {
        (Some(h), w) => {
            if decode(h).as_deref() != w {
                return Err("the Mcp-Method header does not match the body's method".into());
            }
        }
        (None, Some(_)) if required => return Err("the Mcp-Method header is missing".into()),
        (None, _) => {}
    }
    match (name, want_name) {
        (Some(h), w) => {
            if decode(h).as_deref() != w {
                return Err("the Mcp-Name header does not match the body".into());
            }
        }
        (None, Some(_)) if required => return Err("the Mcp-Name header is missing".into()),
        (None, _) => {}
    }
    Ok(())
}

/// The protocol version a request names in `params._meta` (2026-07-28), read strictly.
pub fn meta_protocol_version<'a>(env: &Envelope<'a>) -> Option<Cow<'a, str>> {
    let [meta] = pick(env.params?, ["_meta"], 8).ok()?;
    let [version] = pick(meta?, [META_PROTOCOL_VERSION], 8).ok()?;
    string(version?)
}

/// `Mcp-Param-`: the prefix of the headers that mirror a tool's arguments.
pub const PARAM_PREFIX: &str = "mcp-param-";

/// The arguments a tool asks clients to mirror as headers: `(argument, header name)` for each
/// top-level property of its `inputSchema` that carries `x-mcp-header` (a token name).
pub fn param_declarations(input_schema: &serde_json::Value) -> Vec<(String, String)> {
    let Some(props) = input_schema.get("properties").and_then(|p| p.as_object()) else {
        return Vec::new();
    };
    props
        .iter()
        .filter_map(|(arg, schema)| {
            let name = schema.get("x-mcp-header")?.as_str()?;
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            token.then(|| (arg.clone(), name.to_string()))
        })
        .collect()
}

/// For each tool of a `tools/list` result, the arguments it asks to mirror as headers (an
/// empty list for a tool that declares none, so a redefinition clears what it declared).
pub fn listed_params(result: &serde_json::value::RawValue) -> Vec<(String, Vec<(String, String)>)> {
    #[derive(serde::Deserialize)]
    struct Tools {
        tools: Vec<serde_json::Value>,
    }
    let Ok(list) = serde_json::from_str::<Tools>(result.get()) else {
        return Vec::new();
    };
    list.tools
        .iter()
        .filter_map(|tool| {
            let name = tool.get("name")?.as_str()?;
            let schema = tool.get("inputSchema")?;
            Some((name.to_string(), param_declarations(schema)))
        })
        .collect()
}

/// The header values a `tools/call`'s `arguments` give the declared parameters: strings,
/// integers and booleans, encoded for a header; absent and null arguments give none.
pub fn param_values(
    arguments: Option<&serde_json::value::RawValue>,
    declared: &[(String, String)],
) -> Vec<(String, String)> {
    let Some(args) = arguments.and_then(|a| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(a.get()).ok()
    }) else {
        return Vec::new();
    };
    declared
        .iter()
        .filter_map(|(arg, header)| {
            let text = match args.get(arg)? {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                _ => return None,
            };
            Some((
                format!("{PARAM_PREFIX}{}", header.to_ascii_lowercase()),
                encode(&text).into_owned(),
            ))
        })
        .collect()
}

/// Whether a request's `params._meta` holds the client's capabilities (an object).
pub fn meta_has_capabilities(env: &Envelope<'_>) -> bool {
    let Some(params) = env.params else {
        return false;
    };
    let Ok([Some(meta)]) = pick(params, ["_meta"], 8) else {
        return false;
    };
    matches!(pick(meta, [META_CLIENT_CAPABILITIES], 8), Ok([Some(c)]) if c.get().starts_with('{'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, parse};

    fn env(line: &str) -> Envelope<'_> {
        parse(line.as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn mirrors_what_the_body_targets() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
        assert_eq!(
            mirror(&env(call)),
            Some(Mirror {
                method: "tools/call",
                name: Some("echo".into())
            })
        );
        let read = r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a\u0062"}}"#;
        assert_eq!(
            mirror(&env(read)).unwrap().name.as_deref(),
            Some("file:///ab")
        );
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(mirror(&env(list)).unwrap().name, None);
        assert_eq!(
            mirror(&env(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)),
            None
        );
    }

    #[test]
    fn values_that_cannot_ride_plain_are_escaped_and_come_back() {
        for v in ["echo", "weather lookup"] {
            assert_eq!(encode(v), v);
        }
        for v in [
            "héllo",
            " lead",
            "a\r\nX-Evil: 1",
            "=?base64?Zm9v?=",
            "日本",
        ] {
            let e = encode(v);
            assert!(e.starts_with("=?base64?") && e.is_ascii(), "{e}");
            assert_eq!(decode(e.as_bytes()).as_deref(), Some(v));
        }
        assert_eq!(decode(b"=?base64?!!!?="), None);
    }

    #[test]
    fn headers_that_disagree_with_the_body_are_refused() {
        let call =
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all"}}"#;
        let e = env(call);
        assert!(check(&e, Some(b"tools/call"), Some(b"delete_all"), true).is_ok());
        assert!(
            check(
                &e,
                Some(b"tools/call"),
                Some(b"=?base64?ZGVsZXRlX2FsbA==?="),
                true
            )
            .is_ok()
        );
        assert!(check(&e, Some(b"tools/call"), Some(b"echo"), false).is_err());
        assert!(check(&e, Some(b"tools/list"), None, false).is_err());
        assert!(check(&e, None, None, false).is_ok());
        assert!(check(&e, None, Some(b"delete_all"), true).is_err());
        assert!(check(&e, Some(b"tools/call"), None, true).is_err());
        // A name header on a message that targets nothing is a mismatch too.
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert!(check(&env(list), Some(b"tools/list"), Some(b"x"), false).is_err());
    }

    #[test]
    fn declared_arguments_become_param_headers() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "count": {"type": "integer", "x-mcp-header": "Count"},
            "bad": {"type": "string", "x-mcp-header": "Bad Name"},
            "plain": {"type": "string"}}});
        let declared = param_declarations(&schema);
        assert_eq!(declared.len(), 2, "{declared:?}");
        let args = serde_json::value::RawValue::from_string(
            r#"{"region":"eu-west ü","count":3,"plain":"x"}"#.into(),
        )
        .unwrap();
        let mut values = param_values(Some(&args), &declared);
        values.sort();
        assert_eq!(values[0], ("mcp-param-count".into(), "3".into()));
        assert_eq!(values[1].0, "mcp-param-region");
        assert_eq!(decode(values[1].1.as_bytes()).as_deref(), Some("eu-west ü"));
    }

    #[test]
    fn the_protocol_version_of_a_stateless_request() {
        let r = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","other":1}}}"#;
        assert_eq!(
            meta_protocol_version(&env(r)).as_deref(),
            Some("2026-07-28")
        );
        let r = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
        assert_eq!(meta_protocol_version(&env(r)), None);
    }
}

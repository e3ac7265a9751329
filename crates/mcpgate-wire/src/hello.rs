//! The first exchange on an MCP stream between a bridge (`mcpgate mcp connect`) and the proxy:
//! one JSON line each way, then the stream carries the session's bytes untouched.

use serde::{Deserialize, Serialize};

/// The first line a bridge sends on an MCP stream: which app it wants.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub app: String,
}

/// The proxy's answer to [`Hello`]: `{"ok":true}` or `{"error":"..."}`, one line.
#[derive(Debug, Serialize, Deserialize)]
pub struct HelloReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HelloReply {
    /// `{"ok":true}` when `error` is `None`, else `{"error":...}`; one line, newline included.
    pub fn line(error: Option<String>) -> Vec<u8> {
        let reply = HelloReply {
            ok: error.is_none().then_some(true),
            error,
        };
        // Serializing two optional strings cannot fail; an empty line would read as refused.
        let mut v = serde_json::to_vec(&reply).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_shapes_stay_as_bridges_expect() {
        assert_eq!(
            serde_json::to_string(&Hello { app: "rec".into() }).unwrap(),
            r#"{"app":"rec"}"#
        );
        assert_eq!(HelloReply::line(None), b"{\"ok\":true}\n");
        assert_eq!(HelloReply::line(Some("no".into())), b"{\"error\":\"no\"}\n");
        let r: HelloReply = serde_json::from_str(r#"{"error":"x"}"#).unwrap();
        assert_eq!((r.ok, r.error.as_deref()), (None, Some("x")));
    }
}

//! What the gateway writes itself: error answers and filtered `tools/list` results.

use serde_json::Value;

/// A JSON-RPC error answer, one line with its newline. `id` is raw JSON (`null` if unknown).
pub fn error_line(id: Option<&str>, code: i64, message: &str) -> Vec<u8> {
    let msg = Value::String(message.to_string());
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":{code},\"message\":{msg}}}}}\n",
        id.unwrap_or("null")
    )
    .into_bytes()
}

/// Keeps only the tools `allowed` accepts in a `tools/list` response; returns the rewritten
/// line (with newline) and the names removed. `None` if the message has no tool list.
pub fn filter_tools(
    message: &[u8],
    mut allowed: impl FnMut(&str) -> bool,
) -> Option<(Vec<u8>, Vec<String>)> {
    let mut v: Value = serde_json::from_slice(message).ok()?;
    let tools = v.get_mut("result")?.get_mut("tools")?.as_array_mut()?;
    let mut removed = Vec::new();
    tools.retain(|t| {
        let keep = t
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(&mut allowed);
        if !keep {
            removed.push(
                t.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("<unnamed>")
                    .to_string(),
            );
        }
        keep
    });
    let mut out = serde_json::to_vec(&v).ok()?;
    out.push(b'\n');
    Some((out, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_valid_json_rpc() {
        let line = error_line(Some("\"a\""), -32602, "access denied: \"x\"");
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["id"], "a");
        assert_eq!(v["error"]["code"], -32602);
        assert_eq!(v["error"]["message"], "access denied: \"x\"");
        assert!(line.ends_with(b"\n"));
        let v: Value = serde_json::from_slice(&error_line(None, -32700, "parse error")).unwrap();
        assert!(v["id"].is_null());
    }

    #[test]
    fn filters_tools_keeping_everything_else() {
        let msg = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"echo","inputSchema":{}},{"name":"rm"},{"x":1}],"nextCursor":"c2","_meta":{"k":1}}}"#;
        let (out, removed) = filter_tools(msg, |n| n == "echo").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1);
        assert_eq!(v["result"]["nextCursor"], "c2");
        assert_eq!(v["result"]["_meta"]["k"], 1);
        assert_eq!(removed, vec!["rm", "<unnamed>"]);
        assert!(filter_tools(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#, |_| true).is_none());
    }
}

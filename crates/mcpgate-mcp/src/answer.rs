//! What the gateway writes itself: error answers.

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
}

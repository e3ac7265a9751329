//! `mcpgate start --demo`: a tiny built-in MCP server (three harmless read tools and one
//! write tool, so a deny can be seen) served as app `demo`, and a role `demo` for it.

use serde_json::{Value, json};
use std::io::{BufRead, Write};

use mcpgate_types::resource::{App, AppSpec, McpCommand, Metadata};

/// The demo role: read tools allowed, the write tool denied.
pub const ROLE: &str = "kind: role
version: v8
metadata: {name: demo, description: Try the built-in demo MCP server (preset of --demo)}
spec:
  allow:
    app_labels: {env: demo}
    mcp: {tools: ['get_*', 'list_*', 'read_*']}
    rules: [{resources: [cluster], verbs: [read]}]
  deny:
    mcp: {tools: ['delete_*']}
";

/// The demo app, run by this same binary.
pub fn app() -> anyhow::Result<App> {
    let exe = std::env::current_exe()?;
    Ok(App {
        kind: "app".into(),
        version: "v3".into(),
        metadata: Metadata {
            name: mcpgate_types::Name::new("demo")?,
            description: Some("Built-in demo MCP server".into()),
            labels: [("env".to_string(), "demo".to_string())].into(),
        },
        spec: AppSpec {
            uri: "mcp+stdio://".into(),
            mcp: Some(McpCommand {
                command: exe.display().to_string(),
                args: vec!["mcp".into(), "demo-server".into()],
                env: Default::default(),
                run_as_host_user: None,
            }),
            rewrite: None,
            tls: None,
            pin: Default::default(),
        },
    })
}

fn tools() -> Value {
    let tool = |name: &str, description: &str, props: Value| json!({"name": name, "description": description, "inputSchema": {"type": "object", "properties": props}});
    json!([
        tool("get_time", "The current time (UTC)", json!({})),
        tool("list_notes", "The titles of the demo notes", json!({})),
        tool(
            "read_note",
            "One note by title",
            json!({"title": {"type": "string"}})
        ),
        tool(
            "delete_note",
            "Delete a note (a write tool: the demo role denies it)",
            json!({"title": {"type": "string"}})
        ),
    ])
}

/// Serves the demo MCP server on stdin/stdout until stdin closes.
pub fn serve() -> anyhow::Result<()> {
    let mut notes = vec![
        (
            "welcome",
            "mcpgate checked your certificate, your roles and this tool before this reached me.",
        ),
        (
            "audit",
            "Every call you make is in `mcpgate admin audit search --since 1h`.",
        ),
    ];
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let (Some(id), Some(method)) = (msg.get("id"), msg.get("method").and_then(Value::as_str))
        else {
            continue;
        };
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let text = |t: String| json!({"content": [{"type": "text", "text": t}]});
        let result = match method {
            "initialize" => json!({
                "protocolVersion": params.get("protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcpgate-demo", "version": env!("CARGO_PKG_VERSION")},
            }),
            "ping" => json!({}),
            "tools/list" => json!({"tools": tools()}),
            "tools/call" => {
                let title = params
                    .pointer("/arguments/title")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match params
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                {
                    "get_time" => text(mcpgate_types::audit::rfc3339_micros::format(
                        std::time::SystemTime::now(),
                    )),
                    "list_notes" => text(notes.iter().map(|n| n.0).collect::<Vec<_>>().join("\n")),
                    "read_note" => match notes.iter().find(|n| n.0 == title) {
                        Some(n) => text(n.1.to_string()),
                        None => {
                            json!({"content": [{"type": "text", "text": format!("no note {title:?}")}], "isError": true})
                        }
                    },
                    "delete_note" => {
                        notes.retain(|n| n.0 != title);
                        text(format!("deleted {title:?}"))
                    }
                    other => {
                        json!({"content": [{"type": "text", "text": format!("unknown tool {other:?}")}], "isError": true})
                    }
                }
            }
            _ => {
                let err = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found"}});
                writeln!(out, "{err}")?;
                out.flush()?;
                continue;
            }
        };
        writeln!(
            out,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "result": result})
        )?;
        out.flush()?;
    }
    Ok(())
}

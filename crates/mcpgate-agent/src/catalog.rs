//! What each app's server offers: its tools as its `tools/list` answers them (name, title,
//! description, annotations — no schemas), kept by the agent and announced to the proxy, so
//! that `mcp ls` shows each caller the tools its roles allow, not patterns.
//!
//! The catalog fills from every `tools/list` answer a session sees, and, for an app no
//! session has listed yet, from a survey: the agent starts the app's server once, asks
//! `initialize` and `tools/list`, and stops it.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};

use mcpgate_types::resource::App;

use crate::lines::{Line, read_line};
use crate::upstream::Upstream;

/// Tools kept per app, the longest description and title kept, and the largest annotations.
const MAX_TOOLS: usize = 500;
const MAX_DESCRIPTION: usize = 1000;
const MAX_TITLE: usize = 200;
const MAX_ANNOTATIONS: usize = 2048;
/// How long a survey may take (an `npx` server may download itself first).
const SURVEY_TIMEOUT: Duration = Duration::from_secs(60);

/// The tools of each app, by name, and the apps already surveyed (once per agent).
#[derive(Debug, Default)]
pub struct Catalog(
    std::sync::Mutex<BTreeMap<String, BTreeMap<String, Value>>>,
    std::sync::Mutex<std::collections::BTreeSet<String>>,
);

impl Catalog {
    /// Adds what a `tools/list` answer of `app` named (later answers update entries).
    pub fn offer(&self, app: &str, tools: &[Value]) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let known = all.entry(app.to_string()).or_default();
        for tool in tools {
            let Some(name) = tool
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| n.len() <= MAX_TITLE)
            else {
                continue;
            };
            if known.len() >= MAX_TOOLS && !known.contains_key(name) {
                break;
            }
            known.insert(name.to_string(), summary(tool));
        }
    }

    /// Whether `app` still needs a survey: no `tools/list` of it seen, none tried yet.
    /// Marks it as tried.
    pub fn needs_survey(&self, app: &str) -> bool {
        !self.knows(app)
            && self
                .1
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(app.to_string())
    }

    /// Whether a `tools/list` of `app` has been seen.
    pub fn knows(&self, app: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(app)
    }

    /// The tools of the apps in `apps`, for the announcement.
    pub fn of(&self, apps: &[App]) -> BTreeMap<String, Vec<Value>> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        apps.iter()
            .filter_map(|a| {
                let name = a.metadata.name.as_str();
                all.get(name)
                    .map(|t| (name.to_string(), t.values().cloned().collect()))
            })
            .collect()
    }
}

/// A tool without its schemas: what a person choosing it reads.
fn summary(tool: &Value) -> Value {
    let mut out = Map::new();
    for key in ["name", "title", "description", "annotations"] {
        if let Some(v) = tool.get(key) {
            let cap = match key {
                "description" => MAX_DESCRIPTION,
                "title" => MAX_TITLE,
                _ => usize::MAX,
            };
            let v = match v {
                Value::String(s) if s.chars().count() > cap => {
                    Value::from(s.chars().take(cap).collect::<String>() + "…")
                }
                Value::String(_) => v.clone(),
                // Annotations are small hints; anything else or larger is left out.
                Value::Object(_) if key == "annotations" => {
                    if serde_json::to_vec(v).map_or(usize::MAX, |b| b.len()) > MAX_ANNOTATIONS {
                        continue;
                    }
                    v.clone()
                }
                _ => continue,
            };
            out.insert(key.to_string(), v);
        }
    }
    Value::Object(out)
}

/// Starts the server of `app` once and asks for its tools; `None` if it is not a stdio app
/// or does not answer in time.
pub async fn survey(app: &App) -> Option<Vec<Value>> {
    let cmd = app
        .spec
        .mcp
        .as_ref()
        .filter(|_| app.spec.uri.starts_with("mcp+stdio://"))?;
    let mut upstream = match Upstream::start(app.metadata.name.as_str(), cmd) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(app = %app.metadata.name, error = %e, "cannot start the server to list its tools");
            return None;
        }
    };
    let mut stdin = upstream.take_stdin();
    let mut stdout = BufReader::new(upstream.take_stdout());
    let ask = async {
        let lines = [
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"mcpgate-catalog","version":"1"}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        ];
        for line in lines {
            stdin.write_all(line.as_bytes()).await.ok()?;
            stdin.write_all(b"\n").await.ok()?;
        }
        stdin.flush().await.ok()?;
        let mut buf = Vec::new();
        loop {
            match read_line(&mut stdout, &mut buf, 64 << 20).await {
                Ok(Line::Ok) => {}
                Ok(Line::TooLong) => continue,
                Ok(Line::Eof) | Err(_) => return None,
            }
            let Ok(mut v) = serde_json::from_slice::<Value>(&buf) else {
                continue;
            };
            if v.get("id") == Some(&Value::from(2)) {
                return match v.pointer_mut("/result/tools").map(Value::take) {
                    Some(Value::Array(tools)) => Some(tools),
                    _ => None,
                };
            }
        }
    };
    let tools = tokio::time::timeout(SURVEY_TIMEOUT, ask)
        .await
        .ok()
        .flatten();
    drop(stdin);
    upstream.stop().await;
    tools
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on failure by design

    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_what_a_person_reads_and_merges_answers() {
        let c = Catalog::default();
        c.offer(
            "a",
            &[
                json!({"name": "echo", "description": "Echoes", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}}),
                json!({"description": "no name"}),
            ],
        );
        c.offer(
            "a",
            &[json!({"name": "sum", "description": "x".repeat(2000)})],
        );
        assert!(c.knows("a") && !c.knows("b"));
        let app: App = serde_json::from_value(json!({"kind": "app", "version": "v3",
            "metadata": {"name": "a"}, "spec": {"uri": "mcp+stdio://", "mcp": {"command": "x"}}}))
        .unwrap();
        let tools = &c.of(&[app])["a"];
        assert_eq!(tools.len(), 2);
        assert_eq!(
            tools[0],
            json!({"name": "echo", "description": "Echoes", "annotations": {"readOnlyHint": true}})
        );
        assert_eq!(
            tools[1]["description"].as_str().unwrap().chars().count(),
            MAX_DESCRIPTION + 1
        );
    }
}

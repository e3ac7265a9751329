//! `mcpgate mcp config`: the entry an MCP client needs to reach an app through mcpgate —
//! printed, or merged into the client's config file with the rest of the file kept.

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// Which client's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    Claude,
    Cursor,
    Vscode,
    ClaudeCode,
    Json,
}

impl Client {
    /// The key under which the client keeps its servers.
    fn servers_key(self) -> &'static str {
        match self {
            Client::Vscode => "servers",
            _ => "mcpServers",
        }
    }

    /// The client's config file.
    pub fn default_file(self) -> anyhow::Result<PathBuf> {
        let home = || {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .ok_or_else(|| anyhow!("HOME is not set"))
        };
        Ok(match self {
            Client::Claude => {
                if cfg!(target_os = "macos") {
                    home()?.join("Library/Application Support/Claude/claude_desktop_config.json")
                } else {
                    let base = std::env::var_os("XDG_CONFIG_HOME")
                        .map(PathBuf::from)
                        .map_or_else(|| home().map(|h| h.join(".config")), Ok)?;
                    base.join("Claude/claude_desktop_config.json")
                }
            }
            Client::Cursor => home()?.join(".cursor/mcp.json"),
            Client::Vscode => PathBuf::from(".vscode/mcp.json"),
            Client::ClaudeCode => home()?.join(".claude.json"),
            Client::Json => {
                bail!("--client json has no file of its own: pass --file PATH to write one")
            }
        })
    }
}

/// The server entry for `app`: run `mcpgate mcp connect APP` (with `-i`/`--proxy` for a bot).
pub fn entry(client: Client, app: &str, identity: Option<(&Path, &str)>) -> Value {
    let mut args = vec!["mcp".to_string(), "connect".to_string()];
    if let Some((path, proxy)) = identity {
        args.extend([
            "-i".to_string(),
            path.display().to_string(),
            "--proxy".to_string(),
            proxy.to_string(),
        ]);
    }
    args.push(app.to_string());
    // The binary's own path: clients start it without the user's PATH.
    let command = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .unwrap_or_else(|| "mcpgate".to_string());
    let mut e = json!({"command": command, "args": args});
    if matches!(client, Client::Vscode | Client::ClaudeCode)
        && let Some(obj) = e.as_object_mut()
    {
        obj.insert("type".into(), json!("stdio"));
    }
    e
}

/// The config document holding `entries`.
pub fn document(client: Client, entries: &[(String, Value)]) -> Value {
    let servers: Map<String, Value> = entries.iter().cloned().collect();
    json!({ client.servers_key(): servers })
}

/// Merges `entries` into the JSON file at `path`, keeping everything else; writes atomically.
pub fn merge(client: Client, path: &Path, entries: &[(String, Value)]) -> anyhow::Result<()> {
    let mut doc = match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => json!({}),
        Ok(text) => serde_json::from_str::<Value>(&text).with_context(|| {
            format!(
                "{} is not valid JSON; it was left unchanged",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let root = doc.as_object_mut().ok_or_else(|| {
        anyhow!(
            "{} does not hold a JSON object; it was left unchanged",
            path.display()
        )
    })?;
    let servers = root
        .entry(client.servers_key())
        .or_insert_with(|| json!({}));
    let servers = servers.as_object_mut().ok_or_else(|| {
        anyhow!(
            "\"{}\" in {} is not an object; it was left unchanged",
            client.servers_key(),
            path.display()
        )
    })?;
    for (name, e) in entries {
        servers.insert(name.clone(), e.clone());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut text = serde_json::to_vec_pretty(&doc)?;
    text.push(b'\n');
    crate::profile::write_private(path, &text)
}

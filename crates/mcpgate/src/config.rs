//! The daemon config file (`mcpgate start --config mcpgate.yaml`), DESIGN.md §4.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mcpgate_auth::SecondFactor;
use mcpgate_types::resource::{McpCommand, Rewrite};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: String,
    #[serde(default = "default_cluster")]
    pub cluster_name: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub proxy: Proxy,
    #[serde(default)]
    pub agent: Agent,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    #[serde(rename = "type", default)]
    pub kind: StorageKind,
    /// PostgreSQL URL, for `type: postgres`.
    pub url: Option<String>,
    /// SQLite durability: `normal` (survives a killed process) or `full` (also power loss).
    #[serde(default)]
    pub synchronous: mcpgate_store::sqlite::Sync,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Sqlite,
    Postgres,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub second_factor: SecondFactor,
    /// The key that seals the CA private keys in the storage (default: DATA_DIR/ca.key,
    /// created on first start). Every auth instance of a cluster needs the same file.
    pub ca_key_file: Option<PathBuf>,
    /// How often the head of the audit chain is signed (a checkpoint), e.g. `30s`, `5m`:
    /// at most this much of a log's tail could be cut off unnoticed. Default 30s.
    pub audit_checkpoint: Option<String>,
    /// OAuth clients known by a metadata document (an https client_id) are accepted only
    /// from these domains and their subdomains; unset: from any public host.
    pub client_metadata_domains: Option<Vec<String>>,
    /// Identity providers whose access tokens chosen apps accept at `/mcp/apps/NAME`.
    #[serde(default)]
    pub trusted_issuers: Vec<mcpgate_auth::idp::TrustedIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The address clients use; defaults to the address the proxy listens on.
    pub public_addr: Option<String>,
}

/// The agent section. Static apps and resource selectors are read and checked now; they are
/// served by the MCP access path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// This agent's name in the cluster (default: the host name).
    pub name: Option<String>,
    pub proxy_addr: Option<String>,
    pub join_token: Option<String>,
    pub ca_pin: Option<String>,
    #[serde(default)]
    pub apps: Vec<StaticApp>,
    #[serde(default)]
    pub resources: Vec<ResourceSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticApp {
    pub name: mcpgate_types::Name,
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub uri: String,
    pub mcp: Option<McpCommand>,
    pub rewrite: Option<Rewrite>,
    #[serde(default)]
    pub tls: Option<mcpgate_types::resource::UpstreamTls>,
    /// `strict`: new tools wait for an admin's approval too (see `admin apps approve`).
    #[serde(default)]
    pub pin: mcpgate_types::resource::PinMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSelector {
    pub labels: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn default_cluster() -> String {
    "mcpgate.local".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./mcpgate-data")
}
fn default_listen() -> String {
    "127.0.0.1:3080".into()
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            enabled: true,
            second_factor: SecondFactor::Otp,
            ca_key_file: None,
            audit_checkpoint: None,
            client_metadata_domains: None,
            trusted_issuers: Vec::new(),
        }
    }
}
impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            enabled: true,
            listen: default_listen(),
            public_addr: None,
        }
    }
}
impl Default for Agent {
    fn default() -> Self {
        Agent {
            enabled: true,
            name: None,
            proxy_addr: None,
            join_token: None,
            ca_pin: None,
            apps: vec![],
            resources: vec![],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: "v1".into(),
            cluster_name: default_cluster(),
            data_dir: default_data_dir(),
            storage: Storage::default(),
            auth: Auth::default(),
            proxy: Proxy::default(),
            agent: Agent {
                // Without a config file, the in-process agent serves every cluster app.
                resources: vec![ResourceSelector {
                    labels: [("*".to_string(), "*".to_string())].into(),
                }],
                ..Agent::default()
            },
        }
    }
}

impl Config {
    /// Reads and checks a config file; errors name the file and line.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: Config = serde_saphyr::from_str(&text).map_err(|e| {
            let line = e
                .location()
                .map(|l| format!(" line {}", l.line()))
                .unwrap_or_default();
            let msg = mcpgate_types::resource::yaml_message(&e);
            anyhow::anyhow!("{}:{line}: {msg}", path.display())
        })?;
        config.check().with_context(|| path.display().to_string())?;
        Ok(config)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        if self.version != "v1" {
            bail!(
                "config version {:?} is not supported (use v1)",
                self.version
            );
        }
        mcpgate_types::Name::new(&self.cluster_name).context("cluster_name")?;
        if self.storage.kind == StorageKind::Postgres && self.storage.url.is_none() {
            bail!("storage type postgres needs storage.url (postgres://user@host:5432/db)");
        }
        if self.auth.enabled != self.proxy.enabled {
            bail!(
                "the auth and proxy services run together in this version: enable both or neither"
            );
        }
        if !self.auth.enabled && !self.agent.enabled {
            bail!("no service is enabled");
        }
        let remote = !self.auth.enabled;
        if remote && self.agent.proxy_addr.is_none() {
            bail!(
                "an agent without the auth and proxy services needs agent.proxy_addr (the proxy it dials)"
            );
        }
        if !remote
            && (self.agent.proxy_addr.is_some()
                || self.agent.join_token.is_some()
                || self.agent.ca_pin.is_some())
        {
            bail!(
                "agent.proxy_addr, join_token and ca_pin are for agent-only daemons (auth and proxy disabled)"
            );
        }
        if let Some(name) = &self.agent.name {
            mcpgate_types::Name::new(name).context("agent.name")?;
        }
        for app in self.static_apps() {
            app.spec
                .check()
                .map_err(|e| anyhow::anyhow!("agent.apps {}: {e}", app.metadata.name))?;
        }
        for sel in &self.agent.resources {
            if sel.labels.is_empty() {
                bail!("agent.resources: a selector needs labels ({{\"*\": \"*\"}} for all)");
            }
        }
        Ok(())
    }
}

impl Config {
    /// The agent's static apps as cluster resources.
    pub fn static_apps(&self) -> Vec<mcpgate_types::resource::App> {
        use mcpgate_types::resource::{App, AppSpec, Metadata};
        self.agent
            .apps
            .iter()
            .map(|a| App {
                kind: "app".into(),
                version: "v3".into(),
                metadata: Metadata {
                    name: a.name.clone(),
                    description: a.description.clone(),
                    labels: a.labels.clone(),
                },
                spec: AppSpec {
                    uri: a.uri.clone(),
                    mcp: a.mcp.clone(),
                    rewrite: a.rewrite.clone(),
                    tls: a.tls.clone(),
                    pin: a.pin,
                },
            })
            .collect()
    }

    /// Label selectors of the cluster apps this agent serves.
    pub fn selectors(&self) -> Vec<BTreeMap<String, String>> {
        self.agent
            .resources
            .iter()
            .map(|r| r.labels.clone())
            .collect()
    }
}

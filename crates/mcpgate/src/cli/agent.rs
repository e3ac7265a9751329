//! An agent-only daemon (auth and proxy disabled): joins the cluster once with an agent
//! token (trusting it by its CA pin), holds a host certificate it renews, dials out to the
//! proxy, and serves its apps there. Audit events are written to a local spool first and
//! shipped to the auth service, so none is lost when either side stops.

use anyhow::{Context, anyhow, bail};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use mcpgate_agent::cluster::BoxFuture;
use mcpgate_agent::{Agent, Cluster, Journal, Sink};
use mcpgate_auth::wire::{CertResponse, JoinRequest, RenewRequest};
use mcpgate_pki::Identity;
use mcpgate_pki::tls;
use mcpgate_store::{AnyStore, SqliteStore};
use mcpgate_types::identity::Assertion;
use mcpgate_types::limits::{Counter, Limited};
use mcpgate_types::pins::Pin;
use mcpgate_types::resource::{App, Lock, Role};
use mcpgate_types::{AuditEvent, Clock, SystemClock};
use rustls::pki_types::CertificateDer;

use crate::client::{Api, KeepAlive, host_of};
use crate::config::Config;
use crate::profile;

const SHIP_EVERY: Duration = Duration::from_millis(200);

/// The cluster as an agent on another host sees it: the proxy's API. Answers are shared by
/// all sessions for up to [`FRESH`], so a busy agent asks once a second, not once per session.
struct Remote {
    proxy: String,
    cluster: String,
    clock: Arc<dyn Clock>,
    user_ca: CertificateDer<'static>,
    identity: RwLock<Arc<Identity>>,
    roles: Cache<Vec<Role>>,
    apps: Cache<Vec<App>>,
    locks: Cache<Vec<Lock>>,
    /// Tool pins by app: every session of an app reads them as often as its roles.
    pins: Cache<Vec<Pin>>,
    client: std::sync::Mutex<Option<(Arc<Identity>, Arc<KeepAlive>)>>,
}

/// How long an answer from the auth service is used before asking again.
const FRESH: Duration = Duration::from_secs(1);

/// Recent answers by key.
struct Cache<T>(std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, T)>>);

impl<T: Clone> Cache<T> {
    fn new() -> Self {
        Cache(std::sync::Mutex::new(std::collections::HashMap::new()))
    }

    async fn get<F: std::future::Future<Output = Result<T, String>>>(
        &self,
        key: &str,
        fetch: F,
    ) -> Result<T, String> {
        if let Some((at, v)) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key)
            && at.elapsed() < FRESH
        {
            return Ok(v.clone());
        }
        let v = fetch.await?;
        self.put(key, v.clone());
        Ok(v)
    }

    fn put(&self, key: &str, v: T) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 1024 {
            map.clear();
        }
        map.insert(key.to_string(), (std::time::Instant::now(), v));
    }
}

impl Remote {
    /// A client of the proxy's API with the current identity, over a kept-alive connection
    /// (a new one when the identity was renewed).
    fn api(&self) -> Result<Arc<KeepAlive>, String> {
        let id = self
            .identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((for_id, c)) = client.as_ref()
            && Arc::ptr_eq(for_id, &id)
        {
            return Ok(c.clone());
        }
        let c = Arc::new(KeepAlive::new(
            Api::with_identity(&self.proxy, &id).map_err(|e| e.to_string())?,
        ));
        *client = Some((id, c.clone()));
        Ok(c)
    }

    /// Ships the journal's outbox to the auth service.
    async fn ship(&self, journal: &Journal) -> Result<usize, String> {
        journal
            .ship(|events: Vec<AuditEvent>| async move {
                let _: serde_json::Value = self
                    .api()?
                    .post("/v1/agent/events", &events)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                Ok(())
            })
            .await
    }
}

impl Cluster for Remote {
    fn name(&self) -> &str {
        &self.cluster
    }
    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
    fn user_ca(&self) -> &CertificateDer<'static> {
        &self.user_ca
    }
    fn roles<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<Vec<Role>, String>> {
        Box::pin(async move {
            let fetch = async {
                self.api()?
                    .post("/v1/agent/roles", &names)
                    .await
                    .map_err(|e| format!("{e:#}"))
            };
            self.roles.get(&names.join("\n"), fetch).await
        })
    }
    fn apps(&self) -> BoxFuture<'_, Result<Vec<App>, String>> {
        Box::pin(async move {
            let fetch = async {
                self.api()?
                    .get("/v1/agent/apps")
                    .await
                    .map_err(|e| format!("{e:#}"))
            };
            self.apps.get("", fetch).await
        })
    }
    fn locks(&self) -> BoxFuture<'_, Result<Vec<Lock>, String>> {
        Box::pin(async move {
            let fetch = async {
                self.api()?
                    .get("/v1/agent/locks")
                    .await
                    .map_err(|e| format!("{e:#}"))
            };
            self.locks.get("", fetch).await
        })
    }
    fn pins<'a>(&'a self, app: &'a str) -> BoxFuture<'a, Result<Vec<Pin>, String>> {
        Box::pin(async move {
            let fetch = async {
                self.api()?
                    .get(&format!("/v1/agent/pins/{app}"))
                    .await
                    .map_err(|e| format!("{e:#}"))
            };
            self.pins.get(app, fetch).await
        })
    }
    fn tools_seen<'a>(
        &'a self,
        app: &'a str,
        strict: bool,
        tools: Vec<serde_json::Value>,
    ) -> BoxFuture<'a, Result<Vec<Pin>, String>> {
        Box::pin(async move {
            let req = mcpgate_auth::wire::ToolsSeen {
                app: app.to_string(),
                strict,
                tools,
            };
            let pins: Vec<Pin> = self
                .api()?
                .post("/v1/agent/pins", &req)
                .await
                .map_err(|e| format!("{e:#}"))?;
            // What the cluster answers is the newest: no session reads an older copy.
            self.pins.put(app, pins.clone());
            Ok(pins)
        })
    }
    fn count_call<'a>(
        &'a self,
        session: &'a str,
        call: &'a str,
        counters: Vec<Counter>,
    ) -> BoxFuture<'a, Result<Option<Limited>, String>> {
        Box::pin(async move {
            let req = mcpgate_types::limits::CountRequest {
                session: session.to_string(),
                call: call.to_string(),
                counters,
            };
            self.api()?
                .post("/v1/agent/count", &req)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }
    fn release_call<'a>(
        &'a self,
        session: &'a str,
        call: &'a str,
        counters: Vec<Counter>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let req = mcpgate_types::limits::CountRequest {
                session: session.to_string(),
                call: call.to_string(),
                counters,
            };
            let _: serde_json::Value = self
                .api()?
                .post("/v1/agent/release", &req)
                .await
                .map_err(|e| format!("{e:#}"))?;
            Ok(())
        })
    }
    fn assertion<'a>(
        &'a self,
        session: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Assertion, String>> {
        Box::pin(async move {
            let req = mcpgate_auth::wire::AssertionRequest {
                session: session.to_string(),
                audience: audience.to_string(),
            };
            self.api()?
                .post("/v1/agent/assertion", &req)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("identity")
}

fn save(data_dir: &Path, key: &rcgen::KeyPair, resp: &CertResponse) -> anyhow::Result<Identity> {
    let id = Identity::new(&key.serialize_pem(), &resp.cert, &resp.cas)
        .context("the proxy issued an unusable certificate")?;
    profile::private_dir(&data_dir.join("agent"))?;
    profile::write_private(&identity_path(data_dir), id.to_pem().as_bytes())?;
    Ok(id)
}

/// The stored host identity if still valid, else a new one from the join token.
async fn identity(config: &Config, data_dir: &Path, name: &str) -> anyhow::Result<Identity> {
    if let Ok(id) = profile::read_identity(&identity_path(data_dir))
        && id.info.valid_at(SystemTime::now())
    {
        return Ok(id);
    }
    let proxy = config.agent.proxy_addr.as_deref().unwrap_or_default();
    let token = config.agent.join_token.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
        anyhow!("this agent has not joined yet: set agent.join_token (from `mcpgate admin tokens add --type agent`)")
    })?;
    let pin = config
        .agent
        .ca_pin
        .as_deref()
        .ok_or_else(|| anyhow!("set agent.ca_pin (printed by `mcpgate start`) to join"))?;
    let key = rcgen::KeyPair::generate()?;
    let req = JoinRequest {
        token: token.to_string(),
        public_key: key.public_key_pem(),
        ttl_secs: None,
        name: Some(name.to_string()),
        // Claimed for this agent if the token names no scope and nobody else holds them.
        apps: config
            .static_apps()
            .iter()
            .map(|a| a.metadata.name.to_string())
            .collect(),
    };
    let resp: CertResponse = Api::pinned(proxy, pin)?
        .post("/v1/agent/join", &req)
        .await
        .context("joining the cluster failed")?;
    save(data_dir, &key, &resp)
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| mcpgate_types::Name::new(h).is_ok())
        .unwrap_or_else(|| "agent".to_string())
}

pub async fn run(config: Config, data_dir: PathBuf) -> anyhow::Result<()> {
    let proxy = config.agent.proxy_addr.clone().unwrap_or_default();
    let name = config.agent.name.clone().unwrap_or_else(default_name);
    let id = identity(&config, &data_dir, &name).await?;
    // The certificate names the agent (a token may bind the name).
    let name = id.info.claims.name.clone();
    let user_ca = id
        .ca_certs
        .iter()
        .find(|c| mcpgate_pki::CertInfo::issuer_cn(c).is_some_and(|cn| cn == "mcpgate user CA"))
        .cloned()
        .ok_or_else(|| anyhow!("the identity holds no user CA certificate"))?;
    let spool = SqliteStore::open_unindexed(&data_dir.join("agent").join("spool.db"))?;
    // Pending events are lines in journal files, final ones live in the local spool until
    // shipped: nothing is lost when the auth service or this agent stops.
    let journal = Journal::with_dir(
        Arc::new(AnyStore::Sqlite(spool)),
        Sink::Outbox,
        "agent",
        &data_dir.join("agent").join("journal"),
    )
    .map_err(|e| anyhow!("the audit journal: {e}"))?;
    let remote = Arc::new(Remote {
        proxy: proxy.clone(),
        cluster: id.info.claims.cluster.clone(),
        clock: Arc::new(SystemClock),
        user_ca,
        identity: RwLock::new(Arc::new(id)),
        roles: Cache::new(),
        apps: Cache::new(),
        locks: Cache::new(),
        pins: Cache::new(),
        client: std::sync::Mutex::new(None),
    });
    let agent = Agent::new(
        &name,
        remote.clone(),
        journal.clone(),
        config.static_apps(),
        config.selectors(),
        mcpgate_mcp::Limits::default(),
    )?;
    // Secrets in audit parameters are hashed with this agent's own key, so they can be
    // searched for; until it is known they are plain `[REDACTED]`.
    {
        let (remote, agent) = (remote.clone(), agent.clone());
        let fetch = async move {
            loop {
                let got: anyhow::Result<mcpgate_auth::wire::RedactionKey> = match remote.api() {
                    Ok(api) => api.get("/v1/agent/redaction-key").await,
                    Err(e) => Err(anyhow!(e)),
                };
                match got.ok().and_then(|k| unhex(&k.key)) {
                    Some(key) => return agent.set_redaction_key(key),
                    None => tokio::time::sleep(Duration::from_secs(5)).await,
                }
            }
        };
        // The first try before serving; retries in the background.
        let mut fetch = Box::pin(fetch);
        if tokio::time::timeout(Duration::from_secs(5), &mut fetch)
            .await
            .is_err()
        {
            tokio::spawn(fetch);
        }
    }
    agent.recover().await?;
    tokio::spawn(shipper(remote.clone(), journal.clone()));
    tokio::spawn(renewer(remote.clone(), data_dir.clone()));

    let host = host_of(&proxy)
        .ok_or_else(|| anyhow!("invalid agent.proxy_addr {proxy:?}: expected HOST:PORT"))?;
    let tunnel_identity = remote.clone();
    let dial = mcpgate_agent::tunnel::Dial {
        proxy: proxy.clone(),
        server_name: host,
        tls: Box::new(move || {
            let id = tunnel_identity
                .identity
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let config = tls::client_config(
                &id.ca_certs,
                Some(&id),
                tunnel_identity.clock.clone(),
                &[tls::ALPN_TUNNEL],
            )
            .map_err(|e| e.to_string())?;
            Ok((config, id.info.not_after))
        }),
    };
    let apps: Vec<String> = agent
        .apps()
        .await
        .map(|a| a.into_iter().map(|a| a.metadata.name.to_string()).collect())
        .unwrap_or_default();
    tokio::spawn(agent.clone().run_tunnel(name.clone(), dial));
    super::start::note_idle_polling();
    println!(
        "mcpgate {}: agent {name} of cluster {} is running",
        env!("CARGO_PKG_VERSION"),
        remote.cluster
    );
    println!("  proxy:    {proxy}");
    println!("  services: agent");
    println!(
        "  apps:     {}",
        if apps.is_empty() {
            "(none yet)".to_string()
        } else {
            apps.join(", ")
        }
    );
    println!("  identity: {}", identity_path(&data_dir).display());
    super::shutdown().await;
    let _ = super::stop_agent(&agent).await;
    // Ship what is left before stopping; whatever cannot be shipped stays in the spool.
    let _ = remote.ship(&journal).await;
    Ok(())
}

async fn shipper(remote: Arc<Remote>, journal: Arc<Journal>) {
    loop {
        tokio::time::sleep(SHIP_EVERY).await;
        if let Err(e) = remote.ship(&journal).await {
            tracing::warn!(error = %e, "shipping audit events failed; they stay in the spool");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Renews the host certificate at half its lifetime; the tunnel uses it on its next dial.
async fn renewer(remote: Arc<Remote>, data_dir: PathBuf) {
    loop {
        let (not_before, not_after) = {
            let id = remote
                .identity
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            (id.info.not_before, id.info.not_after)
        };
        let half = not_after.duration_since(not_before).unwrap_or_default() / 2;
        let due = (not_before + half)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(due).await;
        let renewed = async {
            let key = rcgen::KeyPair::generate()?;
            let api = remote.api().map_err(|e| anyhow!(e))?;
            let resp: CertResponse = api
                .post(
                    "/v1/agent/renew",
                    &RenewRequest {
                        public_key: key.public_key_pem(),
                        ttl_secs: None,
                    },
                )
                .await?;
            save(&data_dir, &key, &resp)
        }
        .await;
        match renewed {
            Ok(id) => *remote.identity.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(id),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "renewing the agent certificate failed; retrying in 30s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

/// Refuses to start an agent whose config cannot work.
pub fn check(config: &Config) -> anyhow::Result<()> {
    if config.agent.apps.is_empty() && config.agent.resources.is_empty() {
        bail!("this agent serves nothing: add agent.apps or agent.resources");
    }
    Ok(())
}

/// Bytes from lowercase or uppercase hex.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

//! `mcpgate start`: the auth service and the proxy (and, with the MCP path, the agent).

use anyhow::{Context, anyhow};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use mcpgate_agent::Agent;
use mcpgate_auth::{AuthConfig, AuthService};
use mcpgate_pki::tls::{self, CertSlot};
use mcpgate_store::{AnyStore, PostgresStore, SqliteStore};
use mcpgate_types::{Name, SystemClock};

use crate::config::{Config, StorageKind};
use crate::profile::{self, Profile};

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The daemon config file (YAML); without it, all services with SQLite in ./mcpgate-data.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Where state and the admin identity live (overrides the config's data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also serve a built-in demo MCP server (app `demo`, role `demo`) and print how to try it.
    #[arg(long)]
    demo: bool,
    /// Where the proxy listens, HOST:PORT (overrides the config's proxy.listen; port 0
    /// picks a free one).
    #[arg(long)]
    listen: Option<String>,
}

/// Lifetime of the proxy's own certificate; renewed at half-life.
const PROXY_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of the in-process agent's host certificate (a new one at every reconnection).
const AGENT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The name of the agent inside `mcpgate start`.
pub(crate) const LOCAL_AGENT: &str = "local";
/// Lifetime of the admin identity in the data dir; renewed at half-life.
const ADMIN_TTL: Duration = Duration::from_secs(12 * 3600);

/// `admin audit verify --offline`: the audit chain checked straight on the storage the
/// daemon's config names (the daemon may be stopped), the checkpoint by the host CA's
/// certificate the daemon keeps in its data dir.
pub async fn verify_offline(
    config: Option<&std::path::Path>,
    data_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<mcpgate_auth::integrity::Verification> {
    let mut config = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    let ca_file = config.data_dir.join("host-ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_file).with_context(|| {
        format!(
            "cannot read {} (written when the daemon starts)",
            ca_file.display()
        )
    })?;
    let ca = mcpgate_pki::identity::certs_from_pem(&ca_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} holds no certificate", ca_file.display()))?;
    let store = match config.storage.kind {
        StorageKind::Sqlite => {
            let path = config.data_dir.join("state.db");
            if !path.exists() {
                anyhow::bail!("no audit log at {}", path.display());
            }
            // Read only for the chain: no index of its own beside the daemon's.
            AnyStore::Sqlite(
                SqliteStore::open_unindexed(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            )
        }
        StorageKind::Postgres => AnyStore::Postgres(
            PostgresStore::connect(&config.storage.url.clone().unwrap_or_default())
                .await
                .context("cannot connect to PostgreSQL")?,
        ),
    };
    Ok(
        mcpgate_auth::integrity::verify_log(&store, &config.cluster_name, |msg, sig| {
            mcpgate_pki::cert::signed_by_cert(&ca, msg, sig)
        })
        .await?,
    )
}

pub async fn run(args: StartArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.proxy.listen = listen;
    }
    // A first start that fails leaves no half-made data directory behind — only where the
    // whole cluster lives in it (SQLite, and the CA key file in it): a shared PostgreSQL
    // store may already hold CA keys sealed with the key file, which must not be lost.
    // (An agent-only daemon keeps its directory: once it has joined, its identity is the
    // only way back in.)
    let self_contained = config.auth.enabled
        && config.storage.kind == crate::config::StorageKind::Sqlite
        && config
            .auth
            .ca_key_file
            .as_ref()
            .is_none_or(|f| f.starts_with(&config.data_dir));
    let mut fresh = Fresh {
        dir: (self_contained && !config.data_dir.exists()).then(|| config.data_dir.clone()),
    };
    profile::private_dir(&config.data_dir)?;
    if !config.auth.enabled {
        if args.demo {
            anyhow::bail!("--demo runs with the auth service, not on an agent-only daemon");
        }
        super::agent::check(&config)?;
        let data_dir = config
            .data_dir
            .canonicalize()
            .unwrap_or(config.data_dir.clone());
        return super::agent::run(config, data_dir).await;
    }
    let data_dir = config
        .data_dir
        .canonicalize()
        .unwrap_or(config.data_dir.clone());

    let (store, storage) = match config.storage.kind {
        StorageKind::Sqlite => {
            let path = data_dir.join("state.db");
            let store = SqliteStore::open_with(&path, config.storage.synchronous)
                .with_context(|| format!("cannot open {}", path.display()))?;
            (
                AnyStore::Sqlite(store),
                format!("sqlite ({})", path.display()),
            )
        }
        StorageKind::Postgres => {
            let url = config.storage.url.clone().unwrap_or_default();
            let store = PostgresStore::connect(&url)
                .await
                .context("cannot connect to PostgreSQL")?;
            (
                AnyStore::Postgres(store),
                format!("postgres ({})", redact_url(&url)),
            )
        }
    };
    let cluster = Name::new(&config.cluster_name)?;
    let auth = AuthService::open(
        Arc::new(store),
        Arc::new(SystemClock),
        AuthConfig {
            cluster,
            second_factor: config.auth.second_factor,
            storage: storage.clone(),
            ca_key: ca_key(
                &config
                    .auth
                    .ca_key_file
                    .clone()
                    .unwrap_or_else(|| data_dir.join("ca.key")),
            )?,
        },
    )
    .await?;
    auth.cimd
        .set_domains(config.auth.client_metadata_domains.clone());
    auth.idp
        .set(config.auth.trusted_issuers.clone())
        .map_err(|e| anyhow::anyhow!("auth.trusted_issuers: {e}"))?;
    let auth = Arc::new(auth);

    let listener = TcpListener::bind(&config.proxy.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.proxy.listen))?;
    let bound = listener.local_addr()?;
    let public = config
        .proxy
        .public_addr
        .clone()
        .unwrap_or_else(|| bound.to_string());
    let sans = sans(&public, &bound);
    let slot = CertSlot::new(&auth.host_identity("proxy", &sans, PROXY_CERT_TTL)?)?;
    // What a browser imports to trust the dashboard: the CA of the proxy's certificate.
    let host_ca_file = data_dir.join("host-ca.pem");
    crate::profile::write_private(&host_ca_file, auth.host_ca().cert_pem().as_bytes())?;
    let cas = [
        auth.user_ca().cert_der().clone(),
        auth.host_ca().cert_der().clone(),
    ];
    let tls = tls::server_config(
        slot.clone(),
        &cas,
        auth.clock().clone(),
        mcpgate_proxy::ALPN,
    )?;

    let admin_dir = data_dir.join("admin");
    let admin_profile = Profile {
        proxy: public.clone(),
        cluster: auth.cluster().into(),
        ca_pin: auth.ca_pin(),
        user: "admin".into(),
    };
    write_admin(&auth, &admin_dir, &admin_profile).await?;

    let mut static_apps = config.static_apps();
    if args.demo {
        if !config.agent.enabled {
            anyhow::bail!("--demo needs the agent service enabled");
        }
        static_apps.push(super::demo::app()?);
        let admin = auth.admin_identity(Duration::from_secs(60)).await?;
        let caller = auth.caller(Some(std::slice::from_ref(&admin.cert))).await?;
        if auth.roles(&["demo".to_string()]).await?.is_empty() {
            auth.create_resources(&caller, "demo role", super::demo::ROLE, false)
                .await?;
        }
    }
    // The audit chain's head is signed every `auth.audit_checkpoint`.
    let every = match config.auth.audit_checkpoint.as_deref() {
        Some(text) => mcpgate_types::duration::parse(text)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1))
            .with_context(|| {
                format!("auth.audit_checkpoint: {text:?} is not a duration of a second or more, e.g. 30s or 5m")
            })?,
        None => mcpgate_auth::findings::INTERVAL,
    };
    let signer = auth.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = signer.checkpoint_audit().await {
                tracing::warn!(error = %e, "the audit log's checkpoint could not be signed");
            }
        }
    });
    // The findings reader goes on through the log (one run counts when instances share it),
    // and dashboard sessions whose time is up are ended.
    let reader = auth.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(mcpgate_auth::findings::INTERVAL).await;
            if let Err(e) = reader.update_findings().await {
                tracing::warn!(error = %e, "findings: the audit log could not be read");
            }
            if let Err(e) = reader.sweep_web_sessions().await {
                tracing::warn!(error = %e, "dashboard sessions could not be swept");
            }
            if let Err(e) = reader.sweep_oauth().await {
                tracing::warn!(error = %e, "expired OAuth codes and tokens could not be swept");
            }
        }
    });
    let mut services = vec!["auth".to_string(), "proxy".to_string()];
    // Daemons sharing one PostgreSQL each name their agent (`agent.name`); one alone may
    // leave it `local`.
    let local_name = config
        .agent
        .name
        .clone()
        .unwrap_or_else(|| LOCAL_AGENT.to_string());
    let agent = if config.agent.enabled {
        // In-process, final audit events go straight to the audit log; pending ones are
        // lines in journal files in the data dir (one write each, batched commits after).
        let journal = mcpgate_agent::Journal::with_dir(
            auth.store().clone(),
            mcpgate_agent::Sink::Log(auth.store().clone()),
            &instance_id(&config.data_dir)?,
            &config.data_dir.join("journal"),
        )
        .map_err(|e| anyhow::anyhow!("the audit journal: {e}"))?;
        // The in-process agent is registered (as `local`) with every app in scope, and holds
        // the names of its static apps (an agent that joins later cannot claim them).
        let names: Vec<String> = static_apps
            .iter()
            .map(|a| a.metadata.name.to_string())
            .collect();
        auth.register_local_agent(&local_name, &names).await?;
        let agent = Agent::new(
            &local_name,
            Arc::new(super::local::Local(auth.clone(), local_name.clone())),
            journal,
            static_apps,
            config.selectors(),
            mcpgate_mcp::Limits::default(),
        )?;
        agent.set_redaction_key(auth.redaction_key_for(&local_name).await?);
        agent.recover().await?;
        services.push("agent".to_string());
        Some(agent)
    } else {
        None
    };
    let tunnels = Arc::new(mcpgate_proxy::Tunnels::new(Arc::new(
        mcpgate_proxy::admission::ByAuth(auth.clone()),
    )));
    let listed = tunnels.clone();
    let agents: mcpgate_auth::api::AgentList = Arc::new(move || {
        listed
            .agents()
            .into_iter()
            .map(|a| mcpgate_auth::wire::AgentStatus {
                name: a.name,
                apps: a.apps.into_iter().collect(),
                tunnels: a.tunnels,
                addrs: a.addrs.into_iter().collect(),
                version: a.version,
            })
            .collect()
    });
    let api = mcpgate_auth::api::router(auth.clone(), services.clone(), agents.clone())
        .merge(mcpgate_proxy::apps::router(auth.clone(), tunnels.clone()))
        .merge(mcpgate_web::router(
            auth.clone(),
            agents,
            {
                let tunnels = tunnels.clone();
                Arc::new(move || tunnels.announced_apps())
            },
            {
                let tunnels = tunnels.clone();
                Arc::new(move |app: &str| tunnels.tools(app))
            },
        ));
    // OAuth clients (Streamable HTTP, no bridge): the authorization server, and every app
    // at `https://PUBLIC/mcp/apps/NAME` behind its tokens, routed like a bridge's sessions.
    let issuer = format!("https://{public}");
    let in_memory = mcpgate_proxy::Routes {
        api: axum::Router::new(),
        tunnels: tunnels.clone(),
        auth: auth.clone(),
        cluster: auth.cluster().into(),
        clock: auth.clock().clone(),
    };
    let api = api
        .merge(mcpgate_web::oauth::router(auth.clone(), issuer.clone()))
        .merge(super::apps_http::router(auth.clone(), in_memory, issuer));
    let routes = mcpgate_proxy::Routes {
        api,
        tunnels: tunnels.clone(),
        auth: auth.clone(),
        cluster: auth.cluster().into(),
        clock: auth.clock().clone(),
    };
    tokio::spawn(mcpgate_proxy::serve(listener, tls, routes));
    let stopping = agent.clone();
    if let Some(agent) = agent {
        // The agent reaches the proxy through the same tunnel protocol, authentication and
        // checks as an agent on another host: over the proxy's own TLS port.
        let ip = if bound.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            bound.ip()
        };
        let proxy = std::net::SocketAddr::new(ip, bound.port());
        let issuer = auth.clone();
        let claims = auth
            .agent(&local_name)
            .await?
            .map(|record| auth.agent_claims(&record))
            .ok_or_else(|| anyhow::anyhow!("the local agent is not registered"))?;
        let dial = mcpgate_agent::tunnel::Dial {
            proxy: proxy.to_string(),
            server_name: ip.to_string(),
            tls: Box::new(move || {
                let id = issuer
                    .host_identity_with(&claims, AGENT_CERT_TTL)
                    .map_err(|e| e.to_string())?;
                let config = tls::client_config(
                    &[issuer.host_ca().cert_der().clone()],
                    Some(&id),
                    issuer.clock().clone(),
                    &[tls::ALPN_TUNNEL],
                )
                .map_err(|e| e.to_string())?;
                Ok((config, id.info.not_after))
            }),
        };
        tunnels.set_local(&local_name, Arc::new(InProcess(agent.clone())));
        tokio::spawn(agent.run_tunnel(local_name.clone(), dial));
        wait_for_agent(&tunnels).await;
    }
    tokio::spawn(renew(
        auth.clone(),
        slot,
        sans,
        admin_dir.clone(),
        admin_profile,
    ));

    note_idle_polling();
    println!(
        "mcpgate {}: cluster {} is running",
        env!("CARGO_PKG_VERSION"),
        auth.cluster()
    );
    println!("  proxy:    {public}");
    println!("  services: {}", services.join(", "));
    println!("  storage:  {storage}");
    println!("  CA pin:   {}", auth.ca_pin());
    println!(
        "  dashboard: https://{public}/  (a browser trusts it once {} is imported)",
        host_ca_file.display()
    );
    println!(
        "             (people of role editor or auditor see all of it, anyone else their own activity)"
    );
    println!();
    if args.demo {
        let dd = data_dir_flag(&config.data_dir);
        println!(
            "Demo: app \"demo\" (tools get_time, list_notes, read_note, delete_note) and role \"demo\""
        );
        println!("(read tools allowed, delete_note denied) are ready. Try them as user \"me\":");
        println!("  mcpgate admin users add me --roles demo{dd}");
        println!(
            "  mcpgate signup --proxy {public} --ca-pin {} --invite <token>",
            auth.ca_pin()
        );
        println!(
            "  mcpgate login --proxy {public} --ca-pin {} --user me",
            auth.ca_pin()
        );
        println!("  mcpgate mcp ls");
        println!(
            "  npx @modelcontextprotocol/inspector --cli mcpgate mcp connect demo --method tools/list"
        );
        println!(
            "  mcpgate mcp config demo --client claude --write     # then ask Claude for the time"
        );
        println!("  mcpgate admin audit search --since 1h{dd}");
        println!();
    }
    println!(
        "Next: invite a user (on this host the admin identity in {} is used):",
        admin_dir.display()
    );
    println!(
        "  mcpgate admin users add alice --roles access --traits 'mcp_tools=*'{}",
        data_dir_flag(&config.data_dir)
    );
    println!(
        "  (role \"access\" allows the tools named in the user's mcp_tools trait, '*' every tool;"
    );
    println!(
        "   name tools one by one, e.g. --traits mcp_tools=echo,mcp_tools=get-sum, to narrow it)"
    );
    println!(
        "  mcpgate signup --proxy {public} --ca-pin {} --invite <token>",
        auth.ca_pin()
    );

    fresh.dir = None; // started: the data directory is the cluster's now
    super::shutdown().await;
    tracing::info!("shutting down");
    if let Some(agent) = stopping {
        // Once they have ended, the proxy records their ends (and frees what they held
        // under limits): a few store writes.
        if super::stop_agent(&agent).await {
            tunnels.local_sessions_recorded(super::RECORD_GRACE).await;
        }
    }
    Ok(())
}

/// A data directory this start created, removed again if the start fails before the daemon
/// is up.
struct Fresh {
    dir: Option<PathBuf>,
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Waits (up to 5 s) for the in-process agent's tunnel, so `start` reports ready only when
/// MCP sessions can be served.
async fn wait_for_agent(tunnels: &mcpgate_proxy::Tunnels) {
    for _ in 0..100 {
        if !tunnels.agents().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!("the agent has not connected to the proxy yet");
}

/// Logs [`idle_polling_hint`]'s note, once the daemon runs (a start that fails says only
/// why).
pub(super) fn note_idle_polling() {
    if let Some(hint) = idle_polling_hint(Path::new("/sys")) {
        tracing::info!("{hint}");
    }
}

/// A note for the operator when this is a virtual machine whose idle vCPUs halt at once
/// (the `haltpoll` cpuidle governor with `guest_halt_poll_ns` at 0): every tool call hops
/// between processes (client, gateway, server), and each hop onto an idle vCPU then waits
/// for the hypervisor to run it again. `sys`: where sysfs is mounted.
fn idle_polling_hint(sys: &Path) -> Option<String> {
    let read = |p: &str| std::fs::read_to_string(sys.join(p)).ok();
    let governor = read("devices/system/cpu/cpuidle/current_governor")
        .or_else(|| read("devices/system/cpu/cpuidle/current_governor_ro"))?;
    let poll = read("module/haltpoll/parameters/guest_halt_poll_ns")?;
    (governor.trim() == "haltpoll" && poll.trim() == "0").then(|| {
        "this virtual machine halts an idle vCPU without polling first (haltpoll \
         guest_halt_poll_ns=0): each hop of a tool call between processes waits for the \
         hypervisor to wake one (tens of microseconds); set to 200000, it cut the latency the \
         gateway adds several-fold in our benchmark (README, Benchmarks)"
            .to_string()
    })
}

fn data_dir_flag(dir: &Path) -> String {
    if dir == Path::new("./mcpgate-data") {
        String::new()
    } else {
        format!(" --data-dir {}", dir.display())
    }
}

/// This instance's id (`DATA_DIR/instance-id`, created on first start): instances that share
/// a PostgreSQL store keep their calls in flight apart, and each recovers only its own.
fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(id.to_string());
        }
    }
    let id = mcpgate_types::audit::random_id();
    crate::profile::write_private(&path, id.as_bytes())?;
    Ok(id)
}

/// Reads the CA key file (64 hex digits), creating it (mode 0600) on first start.
fn ca_key(path: &Path) -> anyhow::Result<mcpgate_auth::CaKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let hex = text.trim();
            let mut bytes = [0u8; 32];
            if hex.len() != 64 {
                anyhow::bail!("{} is not a CA key file (64 hex digits)", path.display());
            }
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| {
                    anyhow!("{} is not a CA key file (64 hex digits)", path.display())
                })?;
            }
            Ok(mcpgate_auth::CaKey::from_bytes(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = mcpgate_auth::CaKey::generate()?;
            let hex = mcpgate_types::hex(key.as_bytes());
            profile::write_private(path, format!("{hex}\n").as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the CA key file {}", path.display())),
    }
}

/// Names the proxy certificate must carry: the public host, the bound address, loopback.
fn sans(public: &str, bound: &std::net::SocketAddr) -> Vec<String> {
    let mut out = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(h) = crate::client::host_of(public) {
        out.push(h);
    }
    if !bound.ip().is_unspecified() {
        out.push(bound.ip().to_string());
    }
    out.sort();
    out.dedup();
    out
}

async fn write_admin(auth: &AuthService, dir: &Path, profile: &Profile) -> anyhow::Result<()> {
    let identity = auth.admin_identity(ADMIN_TTL).await?;
    profile::save(dir, profile, &identity)
}

/// Renews the proxy certificate and the admin identity at half their lifetime.
async fn renew(
    auth: Arc<AuthService>,
    slot: Arc<CertSlot>,
    sans: Vec<String>,
    admin_dir: PathBuf,
    profile: Profile,
) {
    let mut proxy_due = tokio::time::Instant::now() + PROXY_CERT_TTL / 2;
    let mut admin_due = tokio::time::Instant::now() + ADMIN_TTL / 2;
    loop {
        let next = proxy_due.min(admin_due);
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        if now >= proxy_due {
            match auth
                .host_identity("proxy", &sans, PROXY_CERT_TTL)
                .map_err(|e| anyhow!(e))
                .and_then(|id| Ok(slot.replace(&id)?))
            {
                Ok(()) => proxy_due = now + PROXY_CERT_TTL / 2,
                Err(e) => {
                    tracing::error!(error = %e, "renewing the proxy certificate failed; retrying in a minute");
                    proxy_due = now + Duration::from_secs(60);
                }
            }
        }
        if now >= admin_due {
            match write_admin(&auth, &admin_dir, &profile).await {
                Ok(()) => admin_due = now + ADMIN_TTL / 2,
                Err(e) => {
                    tracing::error!(error = %e, "renewing the admin identity failed; retrying in a minute");
                    admin_due = now + Duration::from_secs(60);
                }
            }
        }
    }
}

/// A URL without its password, for display.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The agent of this process, as the proxy hands it sessions routed to its tunnel.
struct InProcess(Arc<Agent>);

impl mcpgate_proxy::LocalAgent for InProcess {
    fn serve<'a>(
        &'a self,
        open: mcpgate_proxy::LocalOpen,
        reader: &'a mut (dyn tokio::io::AsyncBufRead + Unpin + Send),
        writer: &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> mcpgate_proxy::tunnels::BoxFuture<'a, ()> {
        let conn = mcpgate_agent::ClientConn {
            certs: open.certs,
            addr: open.addr,
            app: open.app,
            session: Some(open.session),
        };
        Box::pin(self.0.serve_until(conn, reader, writer, open.cut))
    }
}

#[cfg(test)]
mod tests {
    use super::{idle_polling_hint, redact_url};

    #[test]
    fn a_vm_that_halts_idle_vcpus_without_polling_is_pointed_out() {
        let sys = tempfile::tempdir().unwrap();
        let at = |p: &str, text: &str| {
            let path = sys.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        assert_eq!(
            idle_polling_hint(sys.path()),
            None,
            "no cpuidle: nothing said"
        );
        at("devices/system/cpu/cpuidle/current_governor", "haltpoll\n");
        assert_eq!(
            idle_polling_hint(sys.path()),
            None,
            "no haltpoll parameters"
        );
        at("module/haltpoll/parameters/guest_halt_poll_ns", "200000\n");
        assert_eq!(
            idle_polling_hint(sys.path()),
            None,
            "it polls: nothing said"
        );
        at("module/haltpoll/parameters/guest_halt_poll_ns", "0\n");
        let hint = idle_polling_hint(sys.path()).expect("a hint");
        assert!(hint.contains("guest_halt_poll_ns=0"), "{hint}");
        at("devices/system/cpu/cpuidle/current_governor", "menu\n");
        assert_eq!(idle_polling_hint(sys.path()), None, "another governor");
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
    }
}

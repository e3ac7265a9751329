//! `mcpgate bot start`: the machine identity agent. Joins once with a single-use token
//! (trusting the cluster by its CA pin), then renews with its own certificate, writing the
//! identity file atomically with mode 0600 each time.

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mcpgate_auth::wire::{CertResponse, JoinRequest, RenewRequest};
use mcpgate_pki::Identity;

use crate::client::Api;
use crate::profile;

#[derive(Debug, clap::Args)]
pub struct BotArgs {
    #[command(subcommand)]
    command: BotCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BotCommand {
    /// Join (first run) or renew, write the outputs, and keep renewing (or exit: --oneshot).
    Start {
        #[arg(short = 'c', long, default_value = "bot.yaml")]
        config: PathBuf,
        /// Write the outputs once and exit.
        #[arg(long)]
        oneshot: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BotConfig {
    version: String,
    proxy_server: String,
    onboarding: Onboarding,
    storage: Directory,
    #[serde(default, with = "mcpgate_types::duration::serde_opt")]
    credential_ttl: Option<Duration>,
    #[serde(default, with = "mcpgate_types::duration::serde_opt")]
    renewal_interval: Option<Duration>,
    #[serde(default)]
    services: Vec<Service>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Onboarding {
    join_method: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    ca_pins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Directory {
    #[serde(rename = "type")]
    kind: String,
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    #[serde(rename = "type")]
    kind: String,
    destination: Directory,
}

const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_RENEWAL: Duration = Duration::from_secs(20 * 60);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Bot {
    config: BotConfig,
    ttl: Duration,
    renewal: Duration,
    outputs: Vec<PathBuf>,
}

impl BotConfig {
    fn load(path: &Path) -> anyhow::Result<BotConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| {
            let line = e
                .location()
                .map(|l| format!(" line {}", l.line()))
                .unwrap_or_default();
            anyhow!(
                "{}:{line}: {}",
                path.display(),
                mcpgate_types::resource::yaml_message(&e)
            )
        })
    }
}

impl Bot {
    fn new(config: BotConfig) -> anyhow::Result<Bot> {
        if config.version != "v1" {
            bail!(
                "bot config version {:?} is not supported (use v1)",
                config.version
            );
        }
        if config.onboarding.join_method != "token" {
            bail!(
                "join_method {:?} is not supported (use token)",
                config.onboarding.join_method
            );
        }
        for d in
            std::iter::once(&config.storage).chain(config.services.iter().map(|s| &s.destination))
        {
            if d.kind != "directory" {
                bail!(
                    "storage and destinations of type {:?} are not supported (use directory)",
                    d.kind
                );
            }
        }
        let mut outputs = Vec::new();
        for s in &config.services {
            if s.kind != "identity" {
                bail!("service type {:?} is not supported (use identity)", s.kind);
            }
            outputs.push(s.destination.path.join("identity"));
        }
        let ttl = config.credential_ttl.unwrap_or(DEFAULT_TTL);
        if ttl > MAX_TTL || ttl < Duration::from_secs(60) {
            bail!("credential_ttl must be between 1m and 24h");
        }
        let renewal = config
            .renewal_interval
            .unwrap_or(DEFAULT_RENEWAL.min(ttl / 3));
        if renewal >= ttl || renewal.is_zero() {
            bail!("renewal_interval must be shorter than credential_ttl");
        }
        Ok(Bot {
            config,
            ttl,
            renewal,
            outputs,
        })
    }

    fn state_file(&self) -> PathBuf {
        self.config.storage.path.join("identity")
    }

    /// The bot's current identity, if it has one that is still valid.
    fn current(&self) -> Option<Identity> {
        let id = profile::read_identity(&self.state_file()).ok()?;
        id.info.valid_at(SystemTime::now()).then_some(id)
    }

    /// Joins or renews once, and writes the identity everywhere.
    async fn refresh(&self) -> anyhow::Result<Identity> {
        let key = rcgen::KeyPair::generate()?;
        let public_key = key.public_key_pem();
        let ttl_secs = Some(self.ttl.as_secs());
        let resp: CertResponse = match self.current() {
            Some(id) => {
                let api = Api::with_identity(&self.config.proxy_server, &id)?;
                api.post(
                    "/v1/bot/renew",
                    &RenewRequest {
                        public_key,
                        ttl_secs,
                    },
                )
                .await?
            }
            None => {
                let token = self.config.onboarding.token.clone().filter(|t| !t.is_empty()).ok_or_else(|| {
                    anyhow!("the bot has no valid identity and no onboarding.token: ask an admin for one (mcpgate admin tokens add --type bot --bot NAME)")
                })?;
                let pin = self.config.onboarding.ca_pins.first().ok_or_else(|| {
                    anyhow!("onboarding.ca_pins is empty: add the pin `mcpgate start` printed")
                })?;
                let mut last = None;
                let mut resp = None;
                for pin in std::iter::once(pin).chain(self.config.onboarding.ca_pins.iter().skip(1))
                {
                    let api = Api::pinned(&self.config.proxy_server, pin)?;
                    match api
                        .post::<_, CertResponse>(
                            "/v1/bot/join",
                            &JoinRequest {
                                token: token.clone(),
                                public_key: public_key.clone(),
                                ttl_secs,
                                name: None,
                                apps: Vec::new(),
                            },
                        )
                        .await
                    {
                        Ok(r) => {
                            resp = Some(r);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match resp {
                    Some(r) => r,
                    None => return Err(last.unwrap_or_else(|| anyhow!("no CA pin matched"))),
                }
            }
        };
        let identity = Identity::new(&key.serialize_pem(), &resp.cert, &resp.cas)
            .context("the proxy issued an unusable certificate")?;
        let pem = identity.to_pem();
        profile::private_dir(&self.config.storage.path)?;
        profile::write_private(&self.state_file(), pem.as_bytes())?;
        for out in &self.outputs {
            if let Some(dir) = out.parent() {
                profile::private_dir(dir)?;
            }
            profile::write_private(out, pem.as_bytes())?;
        }
        tracing::info!(
            bot = %identity.info.claims.name,
            generation = identity.info.claims.generation,
            expires = %super::rfc3339(mcpgate_types::clock::unix_secs(identity.info.not_after)),
            "identity written"
        );
        Ok(identity)
    }
}

pub async fn run(args: BotArgs) -> anyhow::Result<()> {
    let BotCommand::Start { config, oneshot } = args.command;
    let bot = Bot::new(BotConfig::load(&config)?)?;
    let identity = bot.refresh().await?;
    for out in &bot.outputs {
        eprintln!(
            "bot {}: identity written to {}",
            identity.info.claims.name,
            out.display()
        );
    }
    if oneshot {
        return Ok(());
    }
    let mut backoff = Duration::from_secs(1);
    let mut next = tokio::time::Instant::now() + bot.renewal;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        match bot.refresh().await {
            Ok(_) => {
                backoff = Duration::from_secs(1);
                next = tokio::time::Instant::now() + bot.renewal;
            }
            Err(e) => {
                // The current identity stays in place and valid until it expires.
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "renewal failed");
                next = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

//! `mcpgate admin ...`: cluster administration over the proxy API, authenticated by an
//! admin certificate (the data dir's on the auth host, or `-i IDENTITY --proxy ADDR`).

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mcpgate_auth::wire::{AddUserRequest, CreateRequest, CreateResponse, Status, TokenResponse};
use mcpgate_types::resource::Kind;
use mcpgate_types::{AuditEvent, AuditQuery};

use super::user::parse_duration;
use super::{Format, Target, print_data, print_json, rfc3339};
use crate::client::Api;
use crate::profile;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Cluster name, CA pins and services.
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Create roles and apps from a YAML file (multi-document; `-` for standard input).
    Create {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Replace resources that already exist.
        #[arg(long)]
        force: bool,
    },
    /// Show resources: role, app, user, bot, token, lock, agent (plural accepted); one by
    /// name as `KIND NAME` or `KIND/NAME`.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a resource: KIND/NAME, e.g. role/dev.
    Rm {
        target: String,
        /// Remove a role even while users or bots hold it.
        #[arg(long)]
        force: bool,
    },
    /// Users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Bots: machine identities that renew their own short-lived certificates.
    Bots {
        #[command(subcommand)]
        command: BotsCommand,
    },
    /// Join tokens for bots and agents.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// The keys that sign the identity assertions HTTP upstreams receive
    /// (Mcpgate-Jwt-Assertion; published at /.well-known/jwks.json).
    Jwt {
        #[command(subcommand)]
        command: JwtCommand,
    },
    /// OAuth clients of the apps served at https://PROXY/mcp/apps/NAME (clients may also
    /// register themselves, RFC 7591).
    Oauth {
        #[command(subcommand)]
        command: OauthCommand,
    },
    /// Lock a user, bot, role or agent: no new certificates or sessions; live sessions end
    /// (a locked agent's tunnels close).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["user", "bot", "role", "agent"])))]
    Lock {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        bot: Option<String>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        /// Lift the lock after this long (e.g. 1h); without it, until `admin rm lock/ID`.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
        #[arg(long, default_value = "")]
        message: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Apps: the tool definitions pinned for each, and approving those held.
    Apps {
        #[command(subcommand)]
        command: super::pins::AppsCommand,
    },
    /// Roles at work.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Explain whether a user or bot may call a tool (with these arguments), read a resource
    /// or get a prompt on an app: the decision, the role and rule that made it, and why.
    Test(super::policy::TestArgs),
}

#[derive(Debug, Subcommand)]
enum BotsCommand {
    /// Create a bot and print its single-use join token (valid 30 min).
    Add {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// The longest certificate the bot may get (default 24h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Change a bot's roles.
    #[command(group(clap::ArgGroup::new("change").required(true).args(["add_roles", "set_roles"])))]
    Update {
        name: String,
        #[arg(long, value_delimiter = ',')]
        add_roles: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        set_roles: Option<Vec<String>>,
    },
    /// List bots.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a bot.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
enum JwtCommand {
    /// Sign new assertions with a new key; the old key stays published until what it signed
    /// has expired.
    Rotate {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
enum OauthCommand {
    /// Registered OAuth clients.
    Clients {
        #[command(subcommand)]
        command: OauthClientsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum OauthClientsCommand {
    /// Register a client (public, PKCE): prints its client_id.
    Add {
        /// The name people see on the consent page.
        #[arg(long)]
        name: String,
        /// Where the client receives the code: https, or http on a loopback address (any
        /// port then matches). Repeat for several.
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List registered clients.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a client; the tokens it holds are refused from now on.
    Rm { client_id: String },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a single-use join token (valid 30 min).
    Add {
        #[arg(long = "type", value_parser = ["bot", "agent"])]
        kind: String,
        /// The bot the token is for (type bot).
        #[arg(long)]
        bot: Option<String>,
        /// The name the agent must join under (type agent).
        #[arg(long)]
        name: Option<String>,
        /// The apps the agent may serve, by name (type agent). Without --apps and
        /// --app-labels: the static apps it declares at its first join that nobody holds.
        #[arg(long, value_delimiter = ',')]
        apps: Vec<String>,
        /// Cluster apps the agent may serve, by their labels: k=v,... (type agent).
        #[arg(long = "app-labels", value_delimiter = ',')]
        app_labels: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List unexpired tokens (by id: a hash, never the token).
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a token by id.
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create a user and print a single-use invite token (valid 1h) and the signup command for it.
    Add {
        name: String,
        /// Comma-separated role names.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Traits as key=value, comma-separated; repeat a key for several values.
        #[arg(long, value_delimiter = ',')]
        traits: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List users.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Change a user's roles and/or traits. Their current certificates are void: they log in
    /// again and get the new ones.
    Update {
        name: String,
        /// Comma-separated role names (replacing the current ones).
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<String>>,
        /// Traits as key=value (replacing the current ones).
        #[arg(long, value_delimiter = ',')]
        traits: Option<Vec<String>>,
    },
    /// Forget a user's password and second factor, end their sessions, and print a new
    /// single-use invite.
    Reset {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a user (their certificates are void at once).
    Rm { name: String },
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Search events, oldest first.
    Search {
        /// Only events newer than this (e.g. 1h, 30m, 2d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<std::time::Duration>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        app: Option<String>,
        /// A tool name or a glob (`read_*`).
        #[arg(long)]
        tool: Option<String>,
        /// Only identities holding this role.
        #[arg(long)]
        role: Option<String>,
        /// The MCP method, e.g. tools/call.
        #[arg(long)]
        method: Option<String>,
        /// Only events of this MCP session.
        #[arg(long)]
        session: Option<String>,
        /// Free text anywhere in the event, case-insensitive.
        #[arg(long = "query", short = 'q')]
        text: Option<String>,
        /// Event type, e.g. user.login.
        #[arg(long = "type")]
        kind: Option<String>,
        #[arg(long, value_parser = ["allow", "deny", "would_deny"])]
        decision: Option<String>,
        /// Only events that held this secret in a redacted parameter (`-`: read it from
        /// standard input). Matched by its keyed hash; the log never held the value.
        #[arg(long = "match-secret", value_name = "VALUE")]
        match_secret: Option<String>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// `json` and `jsonl` print one event per line (JSON Lines, for streaming).
        #[arg(long, value_enum, default_value_t)]
        format: AuditFormat,
    },
    /// What is unusual in the MCP requests: first use of a tool (and one rare for the
    /// identity's roles), call-volume spikes, denial bursts, new networks, new argument
    /// values, off-hours writes by people, a sensitive read followed by an outbound call.
    Findings {
        /// The window: findings newer than this (e.g. 1h, 2d).
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        since: std::time::Duration,
        /// `json` prints one finding per line.
        #[arg(long, value_enum, default_value_t)]
        format: AuditFormat,
    },
    /// Triage a finding: `acknowledged`, `expected` (its repeats are no longer reported) or
    /// `open` again.
    Triage {
        id: String,
        #[arg(value_parser = ["open", "acknowledged", "expected"])]
        state: String,
    },
    /// Check that the audit log is whole: every event linked to the one before it, and the
    /// log reaching as far as the cluster's last signed checkpoint. Exits 1 naming the first
    /// event altered, missing or out of place (by its seq), or a log cut short.
    Verify {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Read the storage directly (the daemon may be stopped): the data dir's state.db,
        /// or the storage `--config` names; its host-ca.pem checks the checkpoint.
        #[arg(long)]
        offline: bool,
        /// With --offline: the daemon's config file (cluster name, storage, data dir).
        #[arg(long, requires = "offline")]
        config: Option<std::path::PathBuf>,
    },
}

/// Output of `audit search`: the event stream is JSON Lines in both JSON spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
enum AuditFormat {
    #[default]
    Text,
    Json,
    Jsonl,
    Yaml,
}

/// Where the admin reached the cluster: what a person it invites needs to sign up there.
struct Reach {
    proxy: String,
    /// The CA pin, when the admin's profile holds it (not with `-i`).
    ca_pin: Option<String>,
}

/// Connects as an admin: `-i` with `--proxy`, else the data dir's admin identity, else the
/// logged-in user's profile.
fn connect(target: &Target) -> anyhow::Result<(Api, Reach)> {
    if let Some(path) = &target.identity {
        let proxy = target
            .proxy
            .as_deref()
            .ok_or_else(|| anyhow!("-i needs --proxy HOST:PORT"))?;
        let reach = Reach {
            proxy: proxy.to_string(),
            ca_pin: None,
        };
        return Ok((
            Api::with_identity(proxy, &profile::read_identity(path)?)?,
            reach,
        ));
    }
    let data_dir = target
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./mcpgate-data"));
    let admin_dir = data_dir.join("admin");
    let stored = match profile::load(&admin_dir)? {
        Some(s) => s,
        None if target.data_dir.is_some() => {
            bail!("no admin identity in {}: is `mcpgate start --data-dir {}` running here?", admin_dir.display(), data_dir.display())
        }
        None => profile::load(&profile::home()?)?.ok_or_else(|| {
            anyhow!("no admin identity: run on the auth host (--data-dir DIR), pass -i IDENTITY --proxy HOST:PORT, or log in")
        })?,
    };
    let proxy = target.proxy.clone().unwrap_or(stored.profile.proxy);
    let api = Api::with_identity(&proxy, &stored.identity)?;
    Ok((
        api,
        Reach {
            proxy,
            ca_pin: Some(stored.profile.ca_pin),
        },
    ))
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::Audit {
        command:
            AuditCommand::Verify {
                format,
                offline: true,
                config,
            },
    } = &args.command
    {
        let v =
            super::start::verify_offline(config.as_deref(), args.target.data_dir.clone()).await?;
        return report_verification(&v, *format);
    }
    let (api, reach) = connect(&args.target)?;
    match args.command {
        AdminCommand::Status { format } => status(&api, format).await,
        AdminCommand::Create { file, force } => create(&api, &file, force).await,
        AdminCommand::Get { kind, name, format } => {
            // `role/dev` as `rm` takes it, or `role dev`.
            let (kind, name) = match (kind.split_once('/'), name) {
                (Some((k, n)), None) => (k.to_string(), Some(n.to_string())),
                (_, name) => (kind, name),
            };
            get(&api, &kind, name.as_deref(), format).await
        }
        AdminCommand::Rm { target, force } => rm(&api, &target, force).await,
        AdminCommand::Bots { command } => bots(&api, command).await,
        AdminCommand::Tokens { command } => tokens(&api, command).await,
        AdminCommand::Oauth {
            command: OauthCommand::Clients { command },
        } => oauth_clients(&api, command).await,
        AdminCommand::Jwt {
            command: JwtCommand::Rotate { format },
        } => {
            let v: serde_json::Value = api
                .post("/v1/admin/jwt/rotate", &serde_json::json!({}))
                .await?;
            if format != Format::Text {
                return print_data(&v, format);
            }
            println!(
                "Identity assertions are now signed with key {}; the previous key stays published until its assertions expire.",
                v["kid"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        AdminCommand::Lock {
            user,
            bot,
            role,
            agent,
            ttl,
            message,
            format,
        } => {
            use mcpgate_types::resource::LockTarget;
            let target = match (user, bot, role, agent) {
                (Some(u), _, _, _) => LockTarget::User(u),
                (_, Some(b), _, _) => LockTarget::Bot(b),
                (_, _, Some(r), _) => LockTarget::Role(r),
                (_, _, _, Some(a)) => LockTarget::Agent(a),
                _ => bail!("name what to lock: --user, --bot, --role or --agent"),
            };
            let req = mcpgate_auth::wire::LockRequest {
                target,
                ttl_secs: ttl.map(|d| d.as_secs()),
                message,
            };
            let lock: mcpgate_types::resource::Lock = api.post("/v1/admin/locks", &req).await?;
            if format != Format::Text {
                return print_data(&lock, format);
            }
            println!(
                "Locked {} (lock {}{}).",
                lock.target,
                lock.id,
                lock.expires
                    .map(|e| format!(", until {}", rfc3339(e)))
                    .unwrap_or_default()
            );
            println!("Remove it with: mcpgate admin rm lock/{}", lock.id);
            Ok(())
        }
        AdminCommand::Users { command } => users(&api, &reach, command).await,
        AdminCommand::Policy {
            command: PolicyCommand::Test(a),
        } => super::policy::test(&api, a).await,
        AdminCommand::Apps { command } => super::pins::run(&api, command).await,
        AdminCommand::Audit {
            command:
                AuditCommand::Search {
                    since,
                    user,
                    app,
                    tool,
                    role,
                    method,
                    session,
                    text,
                    kind,
                    decision,
                    match_secret,
                    limit,
                    format,
                },
        } => {
            let since_micros = since.map(|d| {
                let t = std::time::SystemTime::now()
                    .checked_sub(d)
                    .unwrap_or(std::time::UNIX_EPOCH);
                mcpgate_types::clock::unix_micros(t)
            });
            let q = AuditQuery {
                since_micros,
                user,
                app,
                tool,
                role,
                method,
                session,
                text,
                kind,
                decision,
                limit: Some(limit),
                ..Default::default()
            };
            let secret = match match_secret.as_deref() {
                Some("-") => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("cannot read the secret from standard input")?;
                    Some(line.trim_end_matches(['\r', '\n']).to_string())
                }
                other => other.map(str::to_string),
            };
            audit(&api, &q, secret, format).await
        }
        AdminCommand::Audit {
            command: AuditCommand::Findings { since, format },
        } => findings(&api, since, format).await,
        AdminCommand::Audit {
            command: AuditCommand::Verify { format, .. },
        } => verify(&api, format).await,
        AdminCommand::Audit {
            command: AuditCommand::Triage { id, state },
        } => {
            let _: serde_json::Value = api
                .post(
                    &format!("/v1/admin/audit/findings/{id}"),
                    &serde_json::json!({ "triage": state }),
                )
                .await?;
            println!("Finding {id} is now {state}.");
            Ok(())
        }
    }
}

async fn verify(api: &Api, format: Format) -> anyhow::Result<()> {
    let v: mcpgate_auth::integrity::Verification = api.get("/v1/admin/audit/verify").await?;
    report_verification(&v, format)
}

/// Prints what verify found; a log that does not verify is an error (exit 1).
fn report_verification(
    v: &mcpgate_auth::integrity::Verification,
    format: Format,
) -> anyhow::Result<()> {
    if format != Format::Text {
        print_data(&v, format)?;
    }
    if let Some(problem) = &v.problem {
        anyhow::bail!("the audit log does not verify: {problem}");
    }
    if format == Format::Text {
        let span = match (v.chain_from, v.last_seq) {
            (Some(from), Some(last)) => format!(", chained from seq {from} to seq {last}"),
            _ => String::new(),
        };
        let checkpoint = match &v.checkpoint {
            Some(c) => format!(
                "; it reaches the checkpoint signed at {} (seq {})",
                mcpgate_types::audit::rfc3339_micros::format(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.time.max(0) as u64)
                ),
                c.seq
            ),
            None => "; no checkpoint signed yet".to_string(),
        };
        println!(
            "The audit log is intact: {} events{span}{checkpoint}.",
            v.events
        );
    }
    Ok(())
}

async fn findings(
    api: &Api,
    since: std::time::Duration,
    format: AuditFormat,
) -> anyhow::Result<()> {
    let t = std::time::SystemTime::now()
        .checked_sub(since)
        .unwrap_or(std::time::UNIX_EPOCH);
    let req = mcpgate_auth::wire::FindingsRequest {
        since_micros: mcpgate_types::clock::unix_micros(t),
    };
    let found: Vec<serde_json::Value> = api.post("/v1/admin/audit/findings", &req).await?;
    if format != AuditFormat::Text {
        for f in &found {
            println!("{f}");
        }
        return Ok(());
    }
    if found.is_empty() {
        println!("No findings.");
    }
    for f in &found {
        // Explanations quote tool names and arguments: attacker-chosen text, so no control
        // characters reach the terminal.
        let text = |k: &str| {
            f[k].as_str()
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect::<String>()
        };
        let micros = f["time"].as_i64().unwrap_or_default();
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64);
        println!(
            "{}  {:<6}  {:<18}  {}",
            mcpgate_types::audit::rfc3339_micros::format(time),
            text("severity").to_uppercase(),
            text("kind"),
            text("explanation")
        );
        let evidence = f["evidence"].as_array().map(Vec::len).unwrap_or_default();
        println!(
            "    {}  {}  evidence: {evidence} event(s), e.g. {}",
            text("id"),
            text("triage"),
            f["evidence"][0].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

async fn status(api: &Api, format: Format) -> anyhow::Result<()> {
    let s: Status = api.get("/v1/admin/status").await?;
    if format != Format::Text {
        return print_data(&s, format);
    }
    println!("Cluster:  {}", s.cluster);
    println!("Version:  {}", s.version);
    // One pin is the pin (what --ca-pin and ca_pins take); the user CA's only identifies it.
    if let Some(pin) = s.ca_pins.get("host") {
        println!("CA pin:   {pin}   (for --ca-pin)");
    }
    if let Some(user) = s.ca_pins.get("user") {
        println!("User CA:  {user}   (identifies the CA of user certificates; not a --ca-pin)");
    }
    println!("Services: {}", s.services.join(", "));
    println!("Storage:  {}", s.storage);
    if s.agents.is_empty() {
        println!("Agents:   none connected");
    }
    for a in &s.agents {
        println!(
            "Agent:    {} ({})",
            a.name,
            if a.apps.is_empty() {
                "no apps".to_string()
            } else {
                a.apps.join(", ")
            }
        );
    }
    Ok(())
}

async fn create(api: &Api, file: &Path, force: bool) -> anyhow::Result<()> {
    let (name, text) = if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read standard input")?;
        ("<stdin>".to_string(), s)
    } else {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        (file.display().to_string(), text)
    };
    let resp: CreateResponse = api
        .post(
            "/v1/admin/resources",
            &CreateRequest {
                file: name,
                text,
                force,
            },
        )
        .await?;
    for w in &resp.warnings {
        eprintln!("warning: {w}");
    }
    for c in &resp.created {
        println!("{c} created");
    }
    for u in &resp.updated {
        println!("{u} updated");
    }
    Ok(())
}

fn parse_kind(kind: &str) -> anyhow::Result<Kind> {
    Kind::parse(kind).ok_or_else(|| {
        anyhow!("unknown kind {kind:?} (expected one of: role, app, user, bot, token, lock, agent)")
    })
}

async fn get(api: &Api, kind: &str, name: Option<&str>, format: Format) -> anyhow::Result<()> {
    let k = parse_kind(kind)?;
    let path = match name {
        Some(n) => format!("/v1/admin/resources/{}/{}", k.as_str(), urlencode(n)),
        None => format!("/v1/admin/resources/{}", k.as_str()),
    };
    let items: Vec<Value> = api.get(&path).await?;
    match format {
        Format::Json => print_json(&if name.is_some() {
            items.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(items)
        }),
        Format::Yaml => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!(
                    "{}",
                    serde_saphyr::to_string(item)
                        .map_err(|e| anyhow!("cannot format YAML: {e}"))?
                );
            }
            Ok(())
        }
        Format::Text => {
            print_table(k, &items);
            Ok(())
        }
    }
}

fn print_table(kind: Kind, items: &[Value]) {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let (header, rows): (Vec<&str>, Vec<Vec<String>>) = match kind {
        Kind::Role => (
            vec!["NAME", "APPS", "ALLOWED TOOLS", "DENIED TOOLS"],
            items
                .iter()
                .map(|r| {
                    vec![
                        s(&r["metadata"]["name"]),
                        s(&r["spec"]["allow"]["app_labels"]),
                        s(&r["spec"]["allow"]["mcp"]["tools"]),
                        s(&r["spec"]["deny"]["mcp"]["tools"]),
                    ]
                })
                .collect(),
        ),
        Kind::App => (
            vec!["NAME", "LABELS", "URI", "DESCRIPTION"],
            items
                .iter()
                .map(|a| {
                    vec![
                        s(&a["metadata"]["name"]),
                        s(&a["metadata"]["labels"]),
                        s(&a["spec"]["uri"]),
                        s(&a["metadata"]["description"]),
                    ]
                })
                .collect(),
        ),
        Kind::User => (
            vec!["NAME", "ROLES", "PASSWORD", "OTP"],
            items
                .iter()
                .map(|u| {
                    let yes = |v: &Value| {
                        if v.as_bool() == Some(true) {
                            "yes".to_string()
                        } else {
                            "no".to_string()
                        }
                    };
                    vec![
                        s(&u["name"]),
                        s(&u["roles"]),
                        yes(&u["password_set"]),
                        yes(&u["otp_enrolled"]),
                    ]
                })
                .collect(),
        ),
        Kind::Bot => (
            vec!["NAME", "ROLES", "MAX TTL", "GENERATION"],
            items
                .iter()
                .map(|b| {
                    let ttl = b["max_ttl"]
                        .as_u64()
                        .map(|t| mcpgate_types::duration::format(std::time::Duration::from_secs(t)))
                        .unwrap_or_default();
                    vec![
                        s(&b["name"]),
                        s(&b["roles"]),
                        ttl,
                        b["generation"].to_string(),
                    ]
                })
                .collect(),
        ),
        Kind::Agent => (
            vec!["NAME", "APPS"],
            items
                .iter()
                .map(|a| vec![s(&a["name"]), s(&a["apps"])])
                .collect(),
        ),
        Kind::Lock => (
            vec!["ID", "TARGET", "MESSAGE", "EXPIRES", "BY"],
            items
                .iter()
                .map(|l| {
                    let target = l["target"]
                        .as_object()
                        .and_then(|o| o.iter().next())
                        .map(|(k, v)| format!("{k} {}", s(v)))
                        .unwrap_or_default();
                    let expires = l["expires"]
                        .as_i64()
                        .map(rfc3339)
                        .unwrap_or_else(|| "never".into());
                    vec![
                        s(&l["id"]),
                        target,
                        s(&l["message"]),
                        expires,
                        s(&l["created_by"]),
                    ]
                })
                .collect(),
        ),
        _ => (
            vec!["ID", "TYPE", "SUBJECT", "EXPIRES"],
            items
                .iter()
                .map(|t| {
                    vec![
                        s(&t["id"]).chars().take(16).collect(),
                        s(&t["type"]),
                        s(&t["subject"]),
                        t["expires"].as_i64().map(rfc3339).unwrap_or_default(),
                    ]
                })
                .collect(),
        ),
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let out: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

async fn rm(api: &Api, target: &str, force: bool) -> anyhow::Result<()> {
    let (kind, name) = target
        .split_once('/')
        .ok_or_else(|| anyhow!("expected KIND/NAME, e.g. role/dev"))?;
    let k = parse_kind(kind)?;
    if name.is_empty() {
        bail!("expected KIND/NAME, e.g. role/dev");
    }
    let _: Value = api
        .delete(&format!(
            "/v1/admin/resources/{}/{}{}",
            k.as_str(),
            urlencode(name),
            if force { "?force=true" } else { "" }
        ))
        .await?;
    println!("{} {name} removed", k.as_str());
    Ok(())
}

async fn users(api: &Api, reach: &Reach, command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Add {
            name,
            roles,
            traits,
            format,
        } => add_user(api, reach, name, roles, &traits, format).await,
        UsersCommand::Ls { format } => get(api, "users", None, format).await,
        UsersCommand::Rm { name } => rm(api, &format!("user/{name}"), false).await,
        UsersCommand::Update {
            name,
            roles,
            traits,
        } => {
            if roles.is_none() && traits.is_none() {
                bail!("say what changes: --roles and/or --traits");
            }
            let traits = traits.map(|t| parse_traits(&t)).transpose()?;
            let req = mcpgate_auth::wire::UpdateUserRequest { roles, traits };
            let _: Value = api
                .put(&format!("/v1/admin/users/{}", urlencode(&name)), &req)
                .await?;
            println!(
                "User {name} updated; their current certificates are void: they log in again."
            );
            Ok(())
        }
        UsersCommand::Reset { name, format } => {
            let resp: TokenResponse = api
                .post(
                    &format!("/v1/admin/users/{}/reset", urlencode(&name)),
                    &serde_json::json!({}),
                )
                .await?;
            print_token(
                &resp,
                format,
                &format!(
                    "User {name} reset: password and second factor forgotten, sessions ended. Invite token"
                ),
                "Give it to them: mcpgate signup --invite <token> (then they log in again).",
            )
        }
    }
}

/// `key=value` traits; a key repeated gives several values.
fn parse_traits(traits: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in traits {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid trait {t:?}: expected key=value"))?;
        map.entry(k.to_string()).or_default().push(v.to_string());
    }
    Ok(map)
}

async fn add_user(
    api: &Api,
    reach: &Reach,
    name: String,
    roles: Vec<String>,
    traits: &[String],
    format: Format,
) -> anyhow::Result<()> {
    let map = parse_traits(traits)?;
    let resp: TokenResponse = api
        .post(
            "/v1/admin/users",
            &AddUserRequest {
                name: name.clone(),
                roles,
                traits: map,
            },
        )
        .await?;
    // The command as they would type it: the address and pin this admin reached.
    let next = format!(
        "They set a password with: mcpgate signup --proxy {} --ca-pin {} --invite {}",
        reach.proxy,
        reach.ca_pin.as_deref().unwrap_or("PIN"),
        resp.token
    );
    print_token(
        &resp,
        format,
        &format!("User {name} created. Invite token"),
        &next,
    )
}

async fn audit(
    api: &Api,
    q: &AuditQuery,
    secret: Option<String>,
    format: AuditFormat,
) -> anyhow::Result<()> {
    let events: Vec<AuditEvent> = match secret {
        Some(secret) => {
            let req = mcpgate_auth::wire::MatchSecret {
                query: q.clone(),
                secret,
            };
            api.post("/v1/admin/audit/match", &req).await?
        }
        None => api.post("/v1/admin/audit/search", q).await?,
    };
    match format {
        // One JSON object per line (DESIGN §5): a stream a reader can take line by line.
        AuditFormat::Json | AuditFormat::Jsonl => {
            for e in &events {
                println!("{}", serde_json::to_string(e)?);
            }
            return Ok(());
        }
        AuditFormat::Yaml => return print_data(&events, Format::Yaml),
        AuditFormat::Text => {}
    }
    for e in &events {
        let mut extra: Vec<String> = e
            .fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect();
        extra.sort();
        println!(
            "{}  {:<22} {:<8} {:<4} {}",
            mcpgate_types::audit::rfc3339_micros::format(e.time),
            e.kind,
            e.code,
            if e.success { "ok" } else { "FAIL" },
            std::iter::once(format!("user={}", e.user))
                .chain(extra)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

/// Percent-encodes a path segment (names are validated, but input here is raw).
pub(super) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prints a new token: as `{"token", "expires"}` JSON, or with what it is and what next.
fn print_token(resp: &TokenResponse, format: Format, what: &str, next: &str) -> anyhow::Result<()> {
    if format != Format::Text {
        return print_data(
            &serde_json::json!({"token": resp.token, "expires": rfc3339(resp.expires)}),
            format,
        );
    }
    println!(
        "{what} (single use, valid until {}):",
        rfc3339(resp.expires)
    );
    println!("  {}", resp.token);
    println!("{next}");
    Ok(())
}

async fn bots(api: &Api, command: BotsCommand) -> anyhow::Result<()> {
    use mcpgate_auth::wire::{AddBotRequest, UpdateBotRequest};
    match command {
        BotsCommand::Add {
            name,
            roles,
            ttl,
            format,
        } => {
            let req = AddBotRequest {
                name: name.clone(),
                roles,
                ttl_secs: ttl.map(|d| d.as_secs()),
            };
            let resp: TokenResponse = api.post("/v1/admin/bots", &req).await?;
            print_token(
                &resp,
                format,
                &format!("Bot {name} created. Join token"),
                "Put it in bot.yaml (onboarding.token) and run: mcpgate bot start -c bot.yaml",
            )
        }
        BotsCommand::Update {
            name,
            add_roles,
            set_roles,
        } => {
            let bot: mcpgate_types::resource::Bot = api
                .post(
                    &format!("/v1/admin/bots/{}", urlencode(&name)),
                    &UpdateBotRequest {
                        add_roles,
                        set_roles,
                    },
                )
                .await?;
            println!("Bot {} now has roles: {}", bot.name, bot.roles.join(", "));
            Ok(())
        }
        BotsCommand::Ls { format } => get(api, "bots", None, format).await,
        BotsCommand::Rm { name } => rm(api, &format!("bot/{name}"), false).await,
    }
}

async fn tokens(api: &Api, command: TokensCommand) -> anyhow::Result<()> {
    use mcpgate_auth::wire::AddTokenRequest;
    use mcpgate_types::resource::TokenKind;
    match command {
        TokensCommand::Add {
            kind,
            bot,
            name,
            apps,
            app_labels,
            format,
        } => {
            let kind = if kind == "bot" {
                TokenKind::Bot
            } else {
                TokenKind::Agent
            };
            if kind == TokenKind::Bot
                && (name.is_some() || !apps.is_empty() || !app_labels.is_empty())
            {
                bail!("--name, --apps and --app-labels are for agent tokens");
            }
            let mut scope = mcpgate_types::resource::AgentScope {
                apps,
                ..Default::default()
            };
            for pair in app_labels {
                let (k, v) = pair
                    .split_once('=')
                    .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                    .ok_or_else(|| {
                        anyhow::anyhow!("--app-labels takes KEY=VALUE pairs, not {pair:?}")
                    })?;
                scope.app_labels.insert(k.to_string(), v.to_string());
            }
            let req = AddTokenRequest {
                kind,
                bot,
                agent: name,
                scope,
            };
            let resp: TokenResponse = api.post("/v1/admin/tokens", &req).await?;
            let next = match kind {
                TokenKind::Agent => {
                    "Give it to an agent: agent.join_token in its mcpgate.yaml, with agent.proxy_addr and agent.ca_pin."
                }
                _ => "Put it in bot.yaml (onboarding.token) and run: mcpgate bot start -c bot.yaml",
            };
            print_token(&resp, format, "Join token", next)
        }
        TokensCommand::Ls { format } => get(api, "tokens", None, format).await,
        TokensCommand::Rm { id } => rm(api, &format!("token/{id}"), false).await,
    }
}

async fn oauth_clients(api: &Api, command: OauthClientsCommand) -> anyhow::Result<()> {
    match command {
        OauthClientsCommand::Add {
            name,
            redirect_uris,
            format,
        } => {
            let v: serde_json::Value = api
                .post(
                    "/v1/admin/oauth/clients",
                    &serde_json::json!({"client_name": name, "redirect_uris": redirect_uris}),
                )
                .await?;
            if format != Format::Text {
                return print_data(&v, format);
            }
            println!(
                "OAuth client {:?} registered: client_id {}",
                name,
                v["client_id"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        OauthClientsCommand::Ls { format } => {
            let clients: Vec<mcpgate_auth::oauth::OAuthClient> =
                api.get("/v1/admin/oauth/clients").await?;
            if format != Format::Text {
                return print_data(&clients, format);
            }
            if clients.is_empty() {
                println!("No OAuth clients.");
            }
            for c in clients {
                let created = mcpgate_types::audit::rfc3339_micros::format(
                    mcpgate_types::clock::from_unix_secs(c.created),
                );
                println!(
                    "{}  {:?}  {}  via {}  registered {}  redirects: {}",
                    c.client_id,
                    c.display_name(),
                    c.application_type,
                    c.via,
                    created.get(..19).unwrap_or(&created),
                    c.redirect_uris.join(" ")
                );
            }
            Ok(())
        }
        OauthClientsCommand::Rm { client_id } => {
            let _: serde_json::Value = api
                .delete(&format!("/v1/admin/oauth/clients/{client_id}"))
                .await?;
            println!("OAuth client {client_id} removed; its tokens are refused from now on.");
            Ok(())
        }
    }
}

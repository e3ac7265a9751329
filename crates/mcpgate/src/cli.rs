//! Command-line definitions; each command's work is in its own module.

mod admin;
mod agent;
mod apps_http;
mod bench;
mod bot;
mod config;
mod demo;
mod endpoint;
mod local;
mod mcp;
mod pins;
mod policy;
mod start;
mod user;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// A failure already told on stderr when it happened: `main` only sets the exit code.
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reported")
    }
}

impl std::error::Error for Reported {}

/// How long a stopping daemon waits for its sessions to end (each client told why, what
/// waits answered, the server stopped within its own 3 s, the end audited), and then as
/// long at most for the audit journal; `mcpgate start` then gives its proxy
/// [`RECORD_GRACE`] to record the sessions' ends. Within 10 s in all, a container
/// runtime's usual wait before it kills.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(4);
pub const RECORD_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends the sessions of `agent` as the daemon stops (see [`STOP_GRACE`]); a second Ctrl-C
/// or SIGTERM stops at once. Whether every session ended in time (and nothing cut it
/// short).
pub async fn stop_agent(agent: &mcpgate_agent::Agent) -> bool {
    tokio::select! {
        left = agent.stop(STOP_GRACE) => {
            if left > 0 {
                tracing::warn!(sessions = left, "sessions had not ended when the daemon stopped");
            }
            left == 0
        }
        () = shutdown() => {
            tracing::warn!("asked again: stopping without waiting for the sessions");
            false
        }
    }
}

/// Returns on Ctrl-C or SIGTERM: how daemons are asked to stop.
pub async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// mcpgate: zero-trust access to MCP servers.
#[derive(Debug, Parser)]
#[command(name = "mcpgate", version, about, long_about = None, disable_help_subcommand = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Daemons log at info; one-shot commands only warn.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Start(_) | Command::Bot(_) => "info",
            // The bridge's stdout is the MCP stream: only errors, and only on stderr.
            Command::Mcp(_) => "error",
            _ => "warn",
        }
    }

    /// The MCP client commands (`mcp connect`, `mcp proxy`, ...) serve one person's client:
    /// one thread moves their messages without handing them between cores on the way.
    pub fn single_threaded(&self) -> bool {
        matches!(self.command, Command::Mcp(_))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the services: auth, proxy and agent (all by default).
    Start(start::StartArgs),
    /// Administer the cluster.
    Admin(admin::AdminArgs),
    /// Set your password (and enrol a second factor) with an invite.
    Signup(user::SignupArgs),
    /// Log in and get a short-lived certificate into ~/.mcpgate.
    Login(user::LoginArgs),
    /// Remove your credentials from ~/.mcpgate.
    Logout,
    /// Show who you are logged in as and until when.
    Status(user::StatusArgs),
    /// Use MCP servers: list them, bridge a client to one.
    Mcp(mcp::McpArgs),
    /// The machine identity agent for CI jobs and AI agents.
    Bot(bot::BotArgs),
    /// Print a shell completion script: `source <(mcpgate completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Output format of commands that print data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
    Yaml,
}

/// How a command reaches the proxy as an admin or a user.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The daemon's data dir, whose admin identity to use (on the auth host).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// An identity file to use instead (with --proxy).
    #[arg(short = 'i', long, global = true)]
    pub identity: Option<PathBuf>,
    /// The proxy address, HOST:PORT.
    #[arg(long, global = true)]
    pub proxy: Option<String>,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Start(a) => start::run(a).await,
        Command::Admin(a) => admin::run(a).await,
        Command::Signup(a) => user::signup(a).await,
        Command::Login(a) => user::login(a).await,
        Command::Logout => user::logout(),
        Command::Status(a) => user::status(a),
        Command::Mcp(a) => mcp::run(a).await,
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "mcpgate", &mut std::io::stdout());
            Ok(())
        }
        Command::Bot(a) => bot::run(a).await,
    }
}

/// Formats Unix seconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Prints `value` as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints data as `--format json` or `--format yaml` asked (the caller prints text itself).
pub fn print_data<T: serde::Serialize>(value: &T, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => {
            // Through JSON values: one shape for both formats.
            let value = serde_json::to_value(value)?;
            print!(
                "{}",
                serde_saphyr::to_string(&value)
                    .map_err(|e| anyhow::anyhow!("cannot format YAML: {e}"))?
            );
            Ok(())
        }
        _ => print_json(value),
    }
}

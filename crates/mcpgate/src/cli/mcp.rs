//! `mcpgate mcp ...`: what a user's MCP client runs. `connect` is the stdio bridge: JSON-RPC
//! on stdin/stdout, logs on stderr only, no secrets in any client config.

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use rustls::pki_types::ServerName;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use mcpgate_mcp::answer::error_line;
use mcpgate_mcp::code;
use mcpgate_pki::Identity;
use mcpgate_pki::tls::{self, ALPN_MCP};
use mcpgate_proxy::apps::AppView;
use mcpgate_types::SystemClock;
use mcpgate_wire::{Hello, HelloReply};

use super::{Format, print_data, print_json};
use crate::client::{Api, host_of};
use crate::profile;

#[derive(Debug, clap::Args)]
pub struct McpArgs {
    #[command(subcommand)]
    command: McpCommand,
}

#[derive(Debug, Subcommand)]
enum McpCommand {
    /// List the MCP servers (apps) you may use, with the tools your roles allow.
    Ls {
        #[command(flatten)]
        who: Who,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Bridge an MCP client on stdin/stdout to app NAME through the gateway.
    Connect {
        name: String,
        #[command(flatten)]
        who: Who,
    },
    /// Serve app NAME to HTTP-only MCP clients at http://LISTEN/mcp (Streamable HTTP, both
    /// protocol eras), through the gateway as your identity. Loopback only.
    Proxy {
        name: String,
        /// Loopback address to listen on: HOST:PORT, localhost:PORT or a port alone; port 0
        /// picks a free one (the URL is printed).
        #[arg(long, default_value = "127.0.0.1:0", value_parser = listen_addr)]
        listen: std::net::SocketAddr,
        /// Require `Authorization: Bearer TOKEN` with the token in this file (created, mode
        /// 0600, if missing): on a host other people use, only who can read it acts as you.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Also accept requests from web pages of this origin (repeatable), e.g.
        /// http://localhost:6274 for the MCP Inspector's web UI: such a page acts as you too.
        #[arg(long = "allow-origin", value_name = "ORIGIN")]
        allow_origins: Vec<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Print, or merge into the client's config file, the entry that reaches NAME (or --all).
    Config {
        name: Option<String>,
        /// Every app you may use.
        #[arg(long, conflicts_with = "name")]
        all: bool,
        #[arg(long, value_enum, default_value = "json")]
        client: super::config::Client,
        /// Merge into the client's config file (keeping the rest of it).
        #[arg(long)]
        write: bool,
        /// The file to merge into instead of the client's usual one.
        #[arg(long, requires = "write")]
        file: Option<PathBuf>,
        #[command(flatten)]
        who: Who,
    },
    /// Serve the built-in demo MCP server on stdin/stdout (used by `start --demo`).
    #[command(hide = true)]
    DemoServer,
    /// Call a tool through the gateway (or a server directly) as fast as the answers come,
    /// and print latency and throughput as JSON (`scripts/bench`'s load client).
    #[command(hide = true)]
    Bench(super::bench::BenchArgs),
}

/// `--listen`: `HOST:PORT`, `localhost:PORT`, `[::1]:PORT` or a port alone (on 127.0.0.1).
fn listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{port:?} is not a port"))?;
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        format!("{text:?} is not an address to listen on: use 127.0.0.1:PORT or a port alone")
    })
}

/// An identity file and proxy, or the logged-in profile.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct Who {
    /// Identity file (from `mcpgate bot` or a copy of ~/.mcpgate/identity).
    #[arg(short = 'i', long)]
    identity: Option<PathBuf>,
    /// Proxy address: HOST[:PORT] or https://HOST[:PORT] (default: $MCPGATE_PROXY, then the
    /// logged-in profile's).
    #[arg(long, env = "MCPGATE_PROXY", value_parser = crate::client::proxy_addr)]
    proxy: Option<String>,
}

impl Who {
    pub(super) fn resolve(&self) -> anyhow::Result<(Identity, String)> {
        let stored = match &self.identity {
            Some(path) => Some((profile::read_identity(path)?, None)),
            None => profile::load(&profile::home()?)?.map(|s| (s.identity, Some(s.profile.proxy))),
        };
        let (identity, proxy) = stored.ok_or_else(|| {
            anyhow!("not logged in: run `mcpgate login`, or pass -i IDENTITY --proxy HOST:PORT")
        })?;
        let proxy = self
            .proxy
            .clone()
            .or(proxy)
            .ok_or_else(|| anyhow!("pass --proxy HOST:PORT"))?;
        Ok((identity, proxy))
    }
}

pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    match args.command {
        McpCommand::Ls { who, format } => ls(&who, format).await,
        McpCommand::Connect { name, who } => connect(&name, &who).await,
        McpCommand::Proxy {
            name,
            listen,
            token_file,
            allow_origins,
            who,
        } => {
            super::endpoint::serve(&name, listen, token_file.as_deref(), &allow_origins, &who).await
        }
        McpCommand::Config {
            name,
            all,
            client,
            write,
            file,
            who,
        } => config(name, all, client, write, file, &who).await,
        McpCommand::DemoServer => super::demo::serve(),
        McpCommand::Bench(args) => super::bench::run(args).await,
    }
}

async fn ls(who: &Who, format: Format) -> anyhow::Result<()> {
    let (identity, proxy) = who.resolve()?;
    let apps: Vec<AppView> = Api::with_identity(&proxy, &identity)?
        .get("/v1/mcp/apps")
        .await?;
    if format != Format::Text {
        return print_data(&apps, format);
    }
    if apps.is_empty() {
        println!(
            "No MCP servers are available to {}.",
            identity.info.claims.name
        );
        return Ok(());
    }
    for (i, a) in apps.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match a.description.as_str() {
            "" => println!("{}", a.name),
            d => println!("{}  {d}", a.name),
        }
        match &a.tools {
            Some(tools) if tools.is_empty() => {
                println!("  (no tool of its server is allowed to you)")
            }
            Some(tools) => {
                let name = |t: &serde_json::Value| {
                    t.get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                let width = tools.iter().map(|t| name(t).len()).max().unwrap_or(0);
                for t in tools {
                    let read_only = t
                        .pointer("/annotations/readOnlyHint")
                        .and_then(|v| v.as_bool())
                        == Some(true);
                    let description = t
                        .get("description")
                        .and_then(|d| d.as_str())
                        .and_then(|d| d.lines().next())
                        .unwrap_or_default();
                    let mark = if read_only { " (read-only)" } else { "" };
                    println!("  {:<width$}  {description}{mark}", name(t));
                }
            }
            // A stdio server is asked when its agent starts; an HTTP one the first time a
            // session lists its tools (asking it needs a caller to assert).
            None => println!(
                "  (its tools are not listed yet: they are once a session has listed them)"
            ),
        }
        let allowed = if a.allowed_tools.is_empty() {
            "none".to_string()
        } else {
            a.allowed_tools.join(", ")
        };
        let denied = match a.denied_tools.is_empty() {
            true => String::new(),
            false => format!("; denied: {}", a.denied_tools.join(", ")),
        };
        println!("  your roles allow tools: {allowed}{denied}");
    }
    Ok(())
}

async fn config(
    name: Option<String>,
    all: bool,
    client: super::config::Client,
    write: bool,
    file: Option<PathBuf>,
    who: &Who,
) -> anyhow::Result<()> {
    use super::config as cfg;
    if name.is_none() && !all {
        bail!("name an app, or pass --all");
    }
    // The apps this identity may use: an entry for any other would only fail later.
    let (identity, proxy) = who.resolve()?;
    let mine: Vec<String> = Api::with_identity(&proxy, &identity)?
        .get::<Vec<AppView>>("/v1/mcp/apps")
        .await?
        .into_iter()
        .map(|a| a.name)
        .collect();
    let names = match name {
        Some(n) if mine.contains(&n) => vec![n],
        Some(n) => bail!(
            "app {n:?} is not available to {} (`mcpgate mcp ls` lists those that are)",
            identity.info.claims.name
        ),
        None => mine,
    };
    // A bot's entry names its identity file and proxy; a person's uses the login profile.
    let identity = match &who.identity {
        Some(path) => {
            let abs = std::path::absolute(path)
                .with_context(|| format!("cannot resolve {}", path.display()))?;
            let proxy = who
                .proxy
                .clone()
                .ok_or_else(|| anyhow!("-i needs --proxy HOST:PORT"))?;
            Some((abs, proxy))
        }
        None => None,
    };
    let entries: Vec<(String, serde_json::Value)> = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                cfg::entry(
                    client,
                    n,
                    identity.as_ref().map(|(p, x)| (p.as_path(), x.as_str())),
                ),
            )
        })
        .collect();
    if !write {
        return print_json(&cfg::document(client, &entries));
    }
    let path = match file {
        Some(f) => f,
        None => client.default_file()?,
    };
    cfg::merge(client, &path, &entries)?;
    println!("Added {} to {}", names.join(", "), path.display());
    Ok(())
}

async fn connect(name: &str, who: &Who) -> anyhow::Result<()> {
    let (stdin, stdout) = stdio();
    let mut stdout = stdout;
    let stream = match open(name, who).await {
        Ok(s) => s,
        Err(e) => {
            // Tell the MCP client in its own protocol, and the person on stderr.
            let message = format!("mcpgate: {e:#}");
            eprintln!("error: {}", message.replace('\n', " "));
            answer_errors(stdin, &mut stdout, &message).await;
            return Err(super::Reported.into());
        }
    };
    let (from_proxy, to_proxy) = tokio::io::split(stream);
    match bridge(stdin, stdout, from_proxy, to_proxy).await {
        Ended::Client => Ok(()),
        // Said on stderr when it happened.
        Ended::Session => Err(super::Reported.into()),
    }
}

/// How a bridged session ended.
enum Ended {
    /// The client closed its input and the gateway finished answering.
    Client,
    /// The gateway ended the session (the server exited, a lock, the connection was lost);
    /// the reason was said on stderr and to the client.
    Session,
}

/// What the bridge knows of a session: the requests the client waits for (ids as the client
/// wrote them: the gateway echoes them exactly), the last word from the gateway, and, once
/// the session is over, the error every later request gets.
#[derive(Default)]
struct Watch {
    pending: std::collections::HashSet<String>,
    why: Option<String>,
    ended: Option<String>,
    client_done: bool,
}

/// Copies lines both ways, noting requests and answers. When the gateway ends the session,
/// every request still waiting and every later one gets a JSON-RPC error saying why — no
/// client is left hanging — and the bridge ends (non-zero) once the client closes its input.
async fn bridge<R, W, PR, PW>(stdin: R, stdout: W, from_proxy: PR, mut to_proxy: PW) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    PR: AsyncRead + Unpin,
    PW: AsyncWrite + Unpin,
{
    use mcpgate_agent::lines::{Line, read_line};
    let watch = std::sync::Mutex::new(Watch::default());
    let watch = &watch;
    let lock = || watch.lock().unwrap_or_else(|p| p.into_inner());
    let limits = mcpgate_mcp::Limits::default();
    let stdout = tokio::sync::Mutex::new(stdout);
    let stdout = &stdout;
    let say = |line: Vec<u8>| async move {
        let mut out = stdout.lock().await;
        let _ = out.write_all(&line).await;
        let _ = out.flush().await;
    };
    let up = async {
        let mut input = BufReader::with_capacity(64 << 10, stdin);
        let mut buf = Vec::with_capacity(4096);
        let mut proxy_open = true;
        loop {
            match read_line(&mut input, &mut buf, limits.max_bytes).await {
                Ok(Line::Ok) => {}
                Ok(Line::TooLong) => {
                    // The gateway would refuse it: say so here, without carrying it.
                    let message = format!("message larger than {} bytes", limits.max_bytes);
                    say(error_line(None, code::INVALID_REQUEST, &message)).await;
                    continue;
                }
                Ok(Line::Eof) | Err(_) => break,
            }
            let id = Peek::of(&buf)
                .filter(|p| p.method.is_some())
                .and_then(|p| p.id)
                .map(|id| id.get().to_string());
            // Either the request waits for an answer that the end of the session will give,
            // or the session is over and it gets that answer now.
            let refused = {
                let mut w = lock();
                match (&w.ended, id) {
                    (Some(message), id) => Some(id.map(|id| (id, message.clone()))),
                    (None, Some(id)) => {
                        w.pending.insert(id);
                        None
                    }
                    (None, None) => None,
                }
            };
            match refused {
                Some(Some((id, message))) => {
                    say(error_line(Some(&id), code::INTERNAL_ERROR, &message)).await;
                    continue;
                }
                Some(None) => continue,
                None => {}
            }
            buf.push(b'\n');
            if proxy_open
                && (to_proxy.write_all(&buf).await.is_err() || to_proxy.flush().await.is_err())
            {
                // The connection is going: the reader below ends the session.
                proxy_open = false;
            }
        }
        lock().client_done = true;
        let _ = to_proxy.shutdown().await;
    };
    let down = async {
        let mut input = BufReader::with_capacity(64 << 10, from_proxy);
        let mut buf = Vec::with_capacity(4096);
        // The agent passes on server messages of up to 64 MiB.
        let max = 128 << 20;
        let ended = loop {
            match read_line(&mut input, &mut buf, max).await {
                Ok(Line::Ok | Line::TooLong) => {}
                Ok(Line::Eof) => break None,
                Err(e) => break Some(format!("the connection to the proxy failed: {e}")),
            }
            match Peek::of(&buf) {
                Some(Peek {
                    id: Some(id),
                    method: None,
                }) => {
                    lock().pending.remove(id.get());
                }
                Some(Peek {
                    id: None,
                    method: Some(m),
                }) if m == "notifications/message" => {
                    if let Some(why) = gateway_message(&buf) {
                        lock().why = Some(why);
                    }
                }
                _ => {}
            }
            buf.push(b'\n');
            let mut out = stdout.lock().await;
            if out.write_all(&buf).await.is_err() || out.flush().await.is_err() {
                // The client is gone.
                return Ended::Client;
            }
        };
        let (pending, why) = {
            let mut w = lock();
            let why = w.why.take();
            // The client finished and the gateway closed without a word: a normal end
            // (what the client still waited for gets an error below, if it still reads).
            let normal = w.client_done && ended.is_none() && why.is_none();
            if normal && w.pending.is_empty() {
                return Ended::Client;
            }
            let why = why
                .or(ended)
                .unwrap_or_else(|| "the gateway closed the connection".to_string());
            w.ended = Some(format!("mcpgate: the session ended: {why}"));
            (std::mem::take(&mut w.pending), why)
        };
        let message = format!("mcpgate: the session ended: {why}");
        let mut ids: Vec<String> = pending.into_iter().collect();
        ids.sort();
        for id in ids {
            say(error_line(Some(&id), code::INTERNAL_ERROR, &message)).await;
        }
        // Requests left unanswered are a failure even when the client had finished.
        eprintln!("error: the session ended: {why}");
        Ended::Session
    };
    tokio::pin!(up, down);
    tokio::select! {
        ended = &mut down => {
            if let Ended::Session = ended {
                // Later requests get the same answer until the client closes its input.
                up.await;
            }
            ended
        }
        // The client finished sending: the gateway's answers may still be coming.
        _ = &mut up => down.await,
    }
}

/// What the bridge reads of a message: its id and method, nothing else (the gateway checks
/// messages in full; the bridge only keeps account of what is waiting). Everything else is
/// skipped without being kept.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> Peek<'a> {
    fn of(line: &'a [u8]) -> Option<Peek<'a>> {
        serde_json::from_slice(line).ok()
    }
}

/// The text of a `notifications/message` from the gateway itself (logger `mcpgate`).
pub(super) fn gateway_message(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let p = v.get("params")?;
    if p.get("logger")?.as_str()? != "mcpgate" {
        return None;
    }
    p.get("data")?.as_str().map(str::to_string)
}

type Stream = tokio_rustls::client::TlsStream<TcpStream>;

pub(super) async fn open(name: &str, who: &Who) -> anyhow::Result<BufReader<Stream>> {
    hello(BufReader::new(dial(who).await?), name).await
}

/// A TLS connection to the proxy for MCP, with `who`'s certificate.
pub(super) async fn dial(who: &Who) -> anyhow::Result<Stream> {
    let (identity, proxy) = who.resolve()?;
    if !identity.info.valid_at(std::time::SystemTime::now()) {
        bail!("your certificate has expired; run `mcpgate login` again");
    }
    let config = tls::client_config(
        &identity.ca_certs,
        Some(&identity),
        Arc::new(SystemClock),
        &[ALPN_MCP],
    )?;
    let host = host_of(&proxy).ok_or_else(|| anyhow!("invalid proxy address {proxy:?}"))?;
    let tcp = TcpStream::connect(&proxy)
        .await
        .with_context(|| format!("cannot reach the proxy at {proxy}"))?;
    tcp.set_nodelay(true)?;
    let server = ServerName::try_from(host).map_err(|_| anyhow!("invalid proxy host"))?;
    let tls = TlsConnector::from(config)
        .connect(server, tcp)
        .await
        .with_context(|| format!("TLS with the proxy at {proxy} failed"))?;
    Ok(tls)
}

/// Asks the proxy on `stream` for a session with app `name` (the first line each way).
pub(super) async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: BufReader<S>,
    name: &str,
) -> anyhow::Result<BufReader<S>> {
    let mut hello = serde_json::to_vec(&Hello {
        app: name.to_string(),
    })?;
    hello.push(b'\n');
    stream.get_mut().write_all(&hello).await?;
    stream.get_mut().flush().await?;
    let mut line = String::new();
    stream.read_line(&mut line).await.map_err(|e| {
        anyhow!("the proxy refused the connection ({e}); is your certificate still valid?")
    })?;
    let reply: HelloReply = serde_json::from_str(&line).map_err(|_| {
        anyhow!("the proxy closed the connection; is your certificate still valid?")
    })?;
    if let Some(e) = reply.error {
        bail!(e);
    }
    Ok(stream)
}

/// Answers every request from the client with `message` until it closes stdin.
async fn answer_errors<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    stdin: R,
    stdout: &mut W,
    message: &str,
) {
    let mut lines = BufReader::new(stdin).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(env) = mcpgate_mcp::parse(line.as_bytes(), &Default::default()) else {
            continue;
        };
        if let (mcpgate_mcp::Kind::Request, Some(id)) = (env.kind, env.id) {
            let out = error_line(Some(id.get()), code::INVALID_REQUEST, message);
            if stdout.write_all(&out).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    }
}

type Input = Box<dyn AsyncRead + Unpin + Send>;
type Output = Box<dyn AsyncWrite + Unpin + Send>;

/// Standard input and output registered with the reactor when they are pipes (no blocking
/// thread pool on the hot path), or tokio's blocking wrappers otherwise.
fn stdio() -> (Input, Output) {
    use std::os::fd::AsFd;
    use tokio::net::unix::pipe;
    let input: Input = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| pipe::Receiver::from_file(std::fs::File::from(fd)).ok())
        .map(|r| Box::new(r) as Input)
        .unwrap_or_else(|| Box::new(tokio::io::stdin()));
    let output: Output = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| pipe::Sender::from_file(std::fs::File::from(fd)).ok())
        .map(|w| Box::new(w) as Output)
        .unwrap_or_else(|| Box::new(tokio::io::stdout()));
    (input, output)
}

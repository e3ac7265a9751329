//! `mcpgate mcp bench`: the project's own load client for `scripts/bench` (hidden). Raw
//! JSON lines, no SDK, so that what it measures is the gateway and not a client library.
//!
//! Opens `--sessions` MCP sessions — through the gateway to an app as the caller's identity,
//! the same connection `mcp connect` makes, or with `--direct`, to a server command run as a
//! child over stdio — initializes each, warms them up, then calls one tool on every session
//! as fast as the answers come (each session waits for its answer before its next call).
//! Prints one JSON object: calls, seconds, calls per second, latency percentiles, and with
//! `--direct` the CPU time its commands used over the timed calls, in clock ticks.

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::mcp::Who;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The app to call through the gateway.
    #[arg(required_unless_present_any = ["direct", "url"])]
    app: Option<String>,
    /// Run this server command directly instead (split on spaces): the path without mcpgate.
    #[arg(long, conflicts_with = "app")]
    direct: Option<String>,
    /// Or call a Streamable HTTP endpoint (http://HOST:PORT/PATH), such as `mcp proxy`'s or
    /// a peer gateway's.
    #[arg(long, conflicts_with_all = ["app", "direct"])]
    url: Option<String>,
    /// The tool to call.
    #[arg(long, default_value = "get_time")]
    tool: String,
    /// Its arguments (a JSON object).
    #[arg(long, default_value = "{}")]
    args: String,
    /// Sessions calling at once.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Calls per session (ignored with --seconds).
    #[arg(long, default_value_t = 300)]
    calls: usize,
    /// Call for this long instead of a number of calls.
    #[arg(long)]
    seconds: Option<f64>,
    /// Calls per session before measuring.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Open and warm the sessions, print `{"open": N, ...}`, then hold them idle until
    /// stdin ends, and call nothing (to measure memory per idle session).
    #[arg(long)]
    hold: bool,
    /// Also write each call as a line `START_US LATENCY_US` (start from the first call, one
    /// session's calls after another's) into this file, to see when the slow ones happen.
    #[arg(long)]
    dump: Option<std::path::PathBuf>,
    #[command(flatten)]
    who: Who,
}

/// One session: lines over a stream, or Streamable HTTP.
enum Session {
    Lines(Conn),
    Http(HttpConn),
}

impl Session {
    async fn open(args: &BenchArgs) -> anyhow::Result<Session> {
        match &args.url {
            Some(url) => Ok(Session::Http(HttpConn::open(url).await?)),
            None => Ok(Session::Lines(Conn::open(args).await?)),
        }
    }

    async fn request(&mut self, method: &str, params: &Value) -> anyhow::Result<()> {
        match self {
            Session::Lines(c) => c.request(method, params).await,
            Session::Http(c) => c.request(method, params).await.map(|_| ()),
        }
    }

    /// The process id of the `--direct` command the session runs.
    fn child_pid(&self) -> Option<u32> {
        match self {
            Session::Lines(c) => c.child.as_ref()?.id(),
            Session::Http(_) => None,
        }
    }
}

/// The CPU time process `pid` has used, user and system, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// A Streamable HTTP session over one kept-alive HTTP/1.1 connection.
struct HttpConn {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    uri: hyper::Uri,
    session: Option<String>,
    next: u64,
}

impl HttpConn {
    async fn open(url: &str) -> anyhow::Result<HttpConn> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--url takes http:// (a loopback endpoint)");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("{url:?} has no host"))?
            .to_string();
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("cannot reach {authority}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let mut conn = HttpConn {
            sender,
            uri,
            session: None,
            next: 0,
        };
        let init = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "mcpgate-bench", "version": "1"}});
        conn.request("initialize", &init).await?;
        conn.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(conn)
    }

    /// POSTs one message; the response's status, content type and body.
    async fn post(&mut self, message: &Value) -> anyhow::Result<(u16, String, bytes::Bytes)> {
        use http_body_util::BodyExt;
        // Origin form (`/mcp`), as HTTP/1.1 clients send to a server (not a proxy).
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = hyper::Request::post(path)
            .header("host", self.uri.authority().map_or("", |a| a.as_str()))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(s) = &self.session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-06-18");
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::to_vec(message)?,
        )))?;
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        if let Some(s) = res.headers().get("mcp-session-id")
            && let Ok(s) = s.to_str()
        {
            self.session = Some(s.to_string());
        }
        let status = res.status().as_u16();
        let kind = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, kind, body))
    }

    async fn request(&mut self, method: &str, params: &Value) -> anyhow::Result<Value> {
        self.next += 1;
        let id = self.next;
        let (status, kind, body) = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        if !(200..300).contains(&status) {
            bail!(
                "{method}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        // A JSON answer, or an event stream whose `data:` lines carry it.
        let messages: Vec<Value> = if kind.starts_with("text/event-stream") {
            String::from_utf8_lossy(&body)
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .collect()
        } else {
            vec![serde_json::from_slice(&body)?]
        };
        let answer = messages
            .into_iter()
            .find(|m| m.get("id").and_then(Value::as_u64) == Some(id))
            .ok_or_else(|| anyhow!("{method}: no answer in the response"))?;
        succeeded(method, &answer)?;
        Ok(answer)
    }
}

/// One session's two ends.
struct Conn {
    read: Box<dyn AsyncBufRead + Unpin + Send>,
    write: Box<dyn AsyncWrite + Unpin + Send>,
    /// A direct server, killed when the session ends.
    child: Option<tokio::process::Child>,
    line: Vec<u8>,
    next: u64,
}

impl Conn {
    async fn open(args: &BenchArgs) -> anyhow::Result<Conn> {
        let mut conn = match (&args.app, &args.direct) {
            (_, Some(command)) => {
                let mut words = command.split_whitespace();
                let program = words.next().ok_or_else(|| anyhow!("--direct is empty"))?;
                let mut child = tokio::process::Command::new(program)
                    .args(words)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("cannot run {program:?}"))?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    bail!("the server's pipes are missing");
                };
                Conn {
                    read: Box::new(BufReader::new(stdout)),
                    write: Box::new(stdin),
                    child: Some(child),
                    line: Vec::new(),
                    next: 0,
                }
            }
            (Some(app), None) => {
                let stream = super::mcp::open(app, &args.who).await?;
                let (read, write) = tokio::io::split(stream);
                Conn {
                    read: Box::new(BufReader::new(read)),
                    write: Box::new(write),
                    child: None,
                    line: Vec::new(),
                    next: 0,
                }
            }
            (None, None) => bail!("name an app, or a server with --direct"),
        };
        let init = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "mcpgate-bench", "version": "1"}});
        conn.request("initialize", &init).await?;
        conn.write
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
            .await?;
        Ok(conn)
    }

    /// Sends a request and reads until its answer; an error answer is an error.
    async fn request(&mut self, method: &str, params: &Value) -> anyhow::Result<()> {
        self.next += 1;
        let id = self.next;
        let mut out = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )?;
        out.push(b'\n');
        self.write.write_all(&out).await?;
        self.write.flush().await?;
        loop {
            self.line.clear();
            if self.read.read_until(b'\n', &mut self.line).await? == 0 {
                bail!("{method}: the server closed the session");
            }
            let msg: Value = match serde_json::from_slice(&self.line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            return succeeded(method, &msg);
        }
    }
}

/// An answer that is an error, or a tool's failure, is an error.
fn succeeded(method: &str, answer: &Value) -> anyhow::Result<()> {
    if let Some(e) = answer.get("error") {
        bail!("{method}: {e}");
    }
    if answer.pointer("/result/isError") == Some(&Value::Bool(true)) {
        bail!("{method}: the tool failed: {}", answer["result"]);
    }
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let params: Value = serde_json::from_str(&args.args)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| anyhow!("--args must be a JSON object"))?;
    let call = json!({"name": args.tool, "arguments": params});
    if !(1..=100_000).contains(&args.sessions) {
        bail!("--sessions must be from 1 to 100000");
    }
    if args.calls > 10_000_000 {
        bail!("--calls must be at most 10000000");
    }
    let length = match args.seconds {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => bail!("--seconds must be a number of seconds above 0, at most 86400"),
    };
    let mut conns = Vec::with_capacity(args.sessions);
    let opening = Instant::now();
    for _ in 0..args.sessions {
        conns.push(Session::open(&args).await?);
    }
    let opened_per_second = args.sessions as f64 / opening.elapsed().as_secs_f64();
    for conn in &mut conns {
        for _ in 0..args.warmup {
            conn.request("tools/call", &call).await?;
        }
    }
    if args.hold {
        println!(
            "{}",
            json!({"open": conns.len(), "opened_per_second": opened_per_second})
        );
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut rest).await?;
        return Ok(());
    }
    // The `--direct` commands' CPU over the timed calls (the `mcp connect` bridge's, say);
    // each session is kept, and its command alive, until it is read again.
    let pids: Vec<u32> = conns.iter().filter_map(Session::child_pid).collect();
    let child_cpu = || pids.iter().filter_map(|p| cpu_ticks(*p)).sum::<u64>();
    let cpu_before = child_cpu();
    let until = length.map(|d| Instant::now() + d);
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (call, calls) = (call.clone(), args.calls);
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(calls);
                loop {
                    match until {
                        Some(t) if Instant::now() >= t => break,
                        None if times.len() >= calls => break,
                        _ => {}
                    }
                    let t = Instant::now();
                    conn.request("tools/call", &call).await?;
                    times.push((
                        t.duration_since(started).as_micros() as u64,
                        t.elapsed().as_nanos() as u64,
                    ));
                }
                Ok::<_, anyhow::Error>((times, conn))
            })
        })
        .collect();
    let (mut calls, mut done) = (Vec::new(), Vec::new());
    for task in tasks {
        let (times, conn) = task.await??;
        calls.extend(times);
        done.push(conn);
    }
    let seconds = started.elapsed().as_secs_f64();
    let child_cpu_ticks = (!pids.is_empty()).then(|| child_cpu().saturating_sub(cpu_before));
    drop(done);
    if let Some(path) = &args.dump {
        let lines: String = calls
            .iter()
            .map(|(at, ns)| format!("{at} {}\n", ns / 1000))
            .collect();
        std::fs::write(path, lines).with_context(|| format!("--dump {}", path.display()))?;
    }
    let mut times: Vec<u64> = calls.into_iter().map(|(_, ns)| ns).collect();
    times.sort_unstable();
    let pct = |p: f64| {
        let i = ((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1));
        times.get(i).map_or(0.0, |ns| *ns as f64 / 1000.0)
    };
    let report = json!({
        "sessions": args.sessions,
        "opened_per_second": opened_per_second,
        "calls": times.len(),
        "seconds": seconds,
        "calls_per_second": times.len() as f64 / seconds,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "child_cpu_ticks": child_cpu_ticks,
    });
    println!("{report}");
    Ok(())
}

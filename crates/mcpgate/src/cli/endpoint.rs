//! `mcpgate mcp proxy NAME --listen 127.0.0.1:PORT`: a local Streamable HTTP endpoint at
//! `/mcp` for clients that speak only HTTP, in front of the same gateway session the stdio
//! bridge opens. Loopback only (whoever reaches it acts as the identity it holds), with `Host`
//! and `Origin` checked against DNS rebinding.
//!
//! - Session era (2025-03-26 … 2025-11-25): each `initialize` opens a gateway session of its
//!   own, named to the client by `Mcp-Session-Id`; `GET` opens its server stream, `DELETE`
//!   ends it.
//! - 2026-07-28 (no session; the version in each request's `_meta`): requests share one
//!   gateway session, where each is decided and audited on its own.
//!
//! A request's answer streams back as server-sent events (its progress and the server's
//! requests first); ids are the endpoint's own on the gateway side, so clients that reuse
//! ids never collide. Only the body crosses: no header of the client's — `Authorization`,
//! cookies — goes anywhere. `Mcp-Method`/`Mcp-Name` must agree with the body (400 if not).

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;

use mcpgate_agent::lines::{Line, read_line};
use mcpgate_mcp::answer::error_line;
use mcpgate_mcp::{Envelope, Kind, Limits, code, headers, sse};

use super::mcp::{Who, dial, gateway_message, hello};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A connection carrying one gateway session: a bridge's TLS connection to the proxy, or
/// (at the proxy) an in-memory stream to the session it routes.
pub(crate) trait GatewayStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin
{
}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> GatewayStream for S {}

type Tunnel = tokio::io::BufReader<Box<dyn GatewayStream>>;

/// The largest message a client may POST (under the gateway's 4 MiB by the room an id of the
/// endpoint's own may take).
const MAX_BODY: usize = (4 << 20) - 64;
/// Sessions one endpoint keeps open at most.
const MAX_SESSIONS: usize = 256;
/// A session-era session nobody used for this long (and with nothing waiting) is ended: a
/// client that never sends DELETE does not keep a gateway session and a server process alive.
const IDLE: std::time::Duration = std::time::Duration::from_secs(5 * 60);
/// Answers from the gateway may be larger (files, images).
const MAX_ANSWER: usize = 64 << 20;

/// Serves app `name` at `http://LISTEN/mcp` until interrupted.
pub async fn serve(
    name: &str,
    listen: SocketAddr,
    token_file: Option<&std::path::Path>,
    allow_origins: &[String],
    who: &Who,
) -> anyhow::Result<()> {
    for o in allow_origins {
        let scheme_ok = o.starts_with("http://") || o.starts_with("https://");
        if !scheme_ok || o.trim_end_matches('/').matches('/').count() != 2 {
            bail!(
                "--allow-origin {o:?}: an origin is SCHEME://HOST[:PORT], e.g. http://localhost:6274"
            );
        }
    }
    if !listen.ip().is_loopback() {
        bail!(
            "--listen {listen}: the endpoint acts as your identity for whoever reaches it, so it listens on loopback only (127.0.0.1 or [::1])"
        );
    }
    // Fail now, not at the first request, without an identity or an app it may use.
    let (identity, proxy) = who.resolve()?;
    let apps: Vec<mcpgate_proxy::apps::AppView> =
        crate::client::Api::with_identity(&proxy, &identity)?
            .get("/v1/mcp/apps")
            .await?;
    if !apps.iter().any(|a| a.name == name) {
        bail!(
            "app {name:?} is not available to {}: `mcpgate mcp ls` lists the apps you may use",
            identity.info.claims.name
        );
    }
    let token = token_file.map(bearer_token).transpose()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let endpoint = Arc::new(Endpoint::new(
        name,
        Opener::Bridge(who.clone()),
        Edge::Local {
            port: addr.port(),
            token,
            allowed: allow_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_string())
                .collect(),
        },
    ));
    tokio::spawn(reap(endpoint.sessions.clone()));
    println!("http://{addr}/mcp");
    eprintln!("mcpgate: serving app {name:?} at http://{addr}/mcp (Ctrl-C to stop)");
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: serve the connections we have.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(endpoint.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// The token in `path`, created (random, mode 0600) when the file does not exist.
fn bearer_token(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => bail!("--token-file {}: the file is empty", path.display()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("--token-file {}", path.display()));
        }
        Err(_) => {}
    }
    let token = format!(
        "{}{}",
        mcpgate_types::audit::random_id(),
        mcpgate_types::audit::random_id()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("--token-file {}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(token)
}

type Sessions = Arc<Mutex<HashMap<String, Arc<Session>>>>;
/// Per tool, the arguments its schema asks clients to mirror as `Mcp-Param-*` headers, as
/// the app's `tools/list` answers said.
type Params = Arc<Mutex<HashMap<String, Vec<(String, String)>>>>;

/// Ends session-era sessions idle for [`IDLE`] (no request, nothing waiting, no server
/// stream open), every half minute.
async fn reap(sessions: Sessions) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        reap_once(&sessions).await;
    }
}

/// Ends the sessions idle for [`IDLE`] now.
async fn reap_once(sessions: &Sessions) {
    {
        let idle: Vec<Arc<Session>> = {
            let mut map = sessions.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, s)| {
                    let routes = s.routes();
                    let listening = routes.listener.as_ref().is_some_and(|l| !l.is_closed());
                    s.idle() >= IDLE && routes.waiting.is_empty() && !listening
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for s in idle {
            tracing::info!(session = %s.id, "ending an idle session");
            let _ = s.to_gateway.lock().await.shutdown().await;
        }
    }
}

/// How an endpoint opens a gateway session.
pub(crate) enum Opener {
    /// Over TLS to the proxy, with the identity `mcpgate login` (or a bot) holds.
    Bridge(Who),
    /// At the proxy, in memory, for an OAuth grant: each session presents a certificate
    /// chain made for the grant (its claims, the client named), which the agent checks.
    Proxy {
        routes: mcpgate_proxy::Routes,
        /// The grant as its newest request showed it (an identity provider's token, say,
        /// is replaced by a later one that lasts longer).
        bearer: Mutex<Box<mcpgate_auth::oauth::Bearer>>,
        addr: SocketAddr,
    },
}

/// What the endpoint checks itself before a request reaches it.
pub(crate) enum Edge {
    /// The loopback endpoint of `mcp proxy`: DNS rebinding, its own bearer token, CORS.
    Local {
        port: u16,
        /// The bearer token every request must carry, when one is required.
        token: Option<String>,
        /// Origins of web pages allowed to use the endpoint besides its own.
        allowed: Vec<String>,
    },
    /// The proxy's `/mcp/apps/NAME`: the OAuth layer in front checked the token.
    Proxy,
}

pub(crate) struct Endpoint {
    app: String,
    opener: Opener,
    edge: Edge,
    /// Session-era sessions by their `Mcp-Session-Id`.
    sessions: Sessions,
    params: Params,
    /// The session 2026-07-28 requests share, opened at the first.
    stateless: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// One gateway session.
struct Session {
    id: String,
    to_gateway: tokio::sync::Mutex<WriteHalf<Tunnel>>,
    routes: Mutex<Routes>,
    last_used: Mutex<std::time::Instant>,
    params: Params,
}

#[derive(Default)]
struct Routes {
    next: u64,
    /// Requests waiting for their answer, by the id the gateway sees.
    waiting: HashMap<u64, Waiter>,
    /// The server stream a client opened with GET.
    listener: Option<mpsc::Sender<Bytes>>,
    /// Why the gateway ended the session, once it has.
    ended: Option<String>,
}

struct Waiter {
    /// The id as the client wrote it.
    client_id: String,
    /// Its `_meta.progressToken` as the client wrote it (the gateway sees one of the
    /// endpoint's own, so clients sharing a session never collide).
    progress: Option<String>,
    /// Progress and server requests on the way (dropped when the client does not read).
    tx: mpsc::Sender<Bytes>,
    /// The answer: never dropped.
    answer: tokio::sync::oneshot::Sender<Bytes>,
    /// A `tools/list`: its answer says which arguments are mirrored as headers.
    lists_tools: bool,
}

/// The progress token the gateway sees for request `gid`.
fn token_of(gid: u64) -> String {
    format!("\"mcpgate-progress-{gid}\"")
}

impl Session {
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle(&self) -> std::time::Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn used(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    async fn send(&self, line: &[u8]) -> std::io::Result<()> {
        let mut w = self.to_gateway.lock().await;
        w.write_all(line).await?;
        w.flush().await
    }

    /// Delivers one message from the gateway to the stream it belongs to.
    fn deliver(&self, line: &[u8]) {
        let limits = Limits {
            max_bytes: MAX_ANSWER,
            max_depth: 128,
        };
        let Ok(env) = mcpgate_mcp::parse(line, &limits) else {
            tracing::warn!("dropped a message from the gateway that does not parse");
            return;
        };
        if env.kind == Kind::Response {
            let gid = env.id.and_then(|i| i.get().parse::<u64>().ok());
            let Some(waiter) = gid.and_then(|g| self.routes().waiting.remove(&g)) else {
                return;
            };
            let Some(id) = env.id else { return };
            if waiter.lists_tools {
                self.learn_params(&env);
            }
            if let Some(restored) = mcpgate_mcp::gate::splice(line, id, &waiter.client_id) {
                let _ = waiter.answer.send(raw(&restored));
            }
            return;
        }
        if let Some(why) = gateway_message(line) {
            self.routes().ended = Some(why);
        }
        let token = progress_token(&env);
        let routes = self.routes();
        // Progress goes to its request, with the client's own token back.
        if let Some(t) = token
            && let Some((tx, original)) = routes
                .waiting
                .iter()
                .find(|(g, _)| token_of(**g) == t.get())
                .map(|(_, w)| (w.tx.clone(), w.progress.clone()))
        {
            drop(routes);
            let restored = original
                .and_then(|o| mcpgate_mcp::gate::splice(line, t, &o))
                .unwrap_or_else(|| line.to_vec());
            let _ = tx.try_send(raw(&restored));
            return;
        }
        let target = routes
            .listener
            .clone()
            .filter(|l| !l.is_closed())
            .or_else(|| {
                routes
                    .waiting
                    .iter()
                    .max_by_key(|(g, _)| **g)
                    .map(|(_, w)| w.tx.clone())
            });
        drop(routes);
        match target {
            Some(tx) => {
                if tx.try_send(raw(line)).is_err() {
                    tracing::debug!("a client is not reading: dropped a server message");
                }
            }
            None => tracing::debug!("no stream for a server message: dropped"),
        }
    }

    /// Notes which arguments each listed tool asks to see mirrored as headers.
    fn learn_params(&self, env: &Envelope<'_>) {
        let listed = env.result.map(headers::listed_params).unwrap_or_default();
        self.params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(listed);
    }

    /// The gateway closed the session: every waiting request gets an error saying why.
    fn close(&self) {
        let mut routes = self.routes();
        let why = routes
            .ended
            .clone()
            .unwrap_or_else(|| "the gateway closed the session".into());
        for (_, w) in routes.waiting.drain() {
            let line = error_line(Some(&w.client_id), code::INTERNAL_ERROR, &why);
            let _ = w.answer.send(raw(&line));
        }
        routes.listener = None;
        routes.ended.get_or_insert(why);
    }
}

/// A header's value as text, if it is some.
fn text<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A message as the endpoint passes it on: one JSON text, without its newline.
fn raw(line: &[u8]) -> Bytes {
    Bytes::copy_from_slice(line.strip_suffix(b"\n").unwrap_or(line))
}

/// One server-sent event carrying the message `json`.
fn event(json: &[u8]) -> Bytes {
    Bytes::from(sse::encode(None, json))
}

/// The HTTP status a 2026-07-28 answer travels with: what its error says about the request.
fn status_of(answer: &[u8]) -> StatusCode {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Option<Code>,
    }
    #[derive(serde::Deserialize)]
    struct Code {
        code: i64,
    }
    match serde_json::from_slice::<Answer>(answer) {
        Ok(Answer {
            error: Some(Code { code }),
        }) => match code {
            code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
            HEADER_MISMATCH | MISSING_CAPABILITY | UNSUPPORTED_VERSION => StatusCode::BAD_REQUEST,
            _ => StatusCode::OK,
        },
        _ => StatusCode::OK,
    }
}

/// Methods the 2026-07-28 revision removed.
const REMOVED: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// Checks a 2026-07-28 request before anything is forwarded: its `_meta` names the protocol
/// version (the one the header names, if it names one) and the client's capabilities, and
/// its method exists in this revision.
fn stateless_request(
    env: &Envelope<'_>,
    meta_version: Option<&str>,
    header_version: Option<&str>,
) -> Result<(), (StatusCode, i64, String)> {
    let method = env.method.unwrap_or_default();
    if REMOVED.contains(&method) {
        return Err((
            StatusCode::NOT_FOUND,
            code::METHOD_NOT_FOUND,
            format!("method not found: {method} does not exist since protocol 2026-07-28"),
        ));
    }
    let Some(meta) = meta_version else {
        return Err((
            StatusCode::BAD_REQUEST,
            code::INVALID_PARAMS,
            format!(
                "a request needs params._meta[\"{}\"]",
                headers::META_PROTOCOL_VERSION
            ),
        ));
    };
    if header_version.is_some_and(|h| h != meta) {
        return Err((
            StatusCode::BAD_REQUEST,
            HEADER_MISMATCH,
            "the MCP-Protocol-Version header does not match the request's _meta".into(),
        ));
    }
    if !headers::meta_has_capabilities(env) {
        return Err((
            StatusCode::BAD_REQUEST,
            code::INVALID_PARAMS,
            format!(
                "a request needs params._meta[\"{}\"]",
                headers::META_CLIENT_CAPABILITIES
            ),
        ));
    }
    Ok(())
}

/// 2026-07-28 error codes: a header that disagrees with the body, a capability the client did
/// not declare, a protocol version the server does not speak.
const HEADER_MISMATCH: i64 = -32020;
const MISSING_CAPABILITY: i64 = -32021;
const UNSUPPORTED_VERSION: i64 = -32022;

/// `body` with raw CR and LF as spaces: in valid JSON they can only be whitespace, and the
/// gateway reads one message per line.
fn one_line(body: &[u8]) -> Vec<u8> {
    body.iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
        .collect()
}

/// `params.progressToken` of a progress notification, raw.
fn progress_token<'a>(env: &Envelope<'a>) -> Option<&'a RawValue> {
    #[derive(serde::Deserialize)]
    struct P<'a> {
        #[serde(rename = "progressToken", borrow)]
        token: Option<&'a RawValue>,
    }
    let p: P<'a> = serde_json::from_str(env.params?.get()).ok()?;
    p.token
}

/// `params._meta.progressToken` of a request, raw.
fn request_progress_token<'a>(env: &Envelope<'a>) -> Option<&'a RawValue> {
    #[derive(serde::Deserialize)]
    struct P<'a> {
        #[serde(rename = "_meta", borrow)]
        meta: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct M<'a> {
        #[serde(rename = "progressToken", borrow)]
        token: Option<&'a RawValue>,
    }
    let p: P<'a> = serde_json::from_str(env.params?.get()).ok()?;
    let m: M<'a> = serde_json::from_str(p.meta?.get()).ok()?;
    m.token
}

/// A response body: the events of a request (progress, server requests) and then its
/// answer, or the events of a session's server stream. When a request's body is dropped
/// before its answer (the client went away), the request is cancelled at the gateway.
struct Events {
    /// A message already taken from `rx` (while deciding between JSON and a stream).
    first: Option<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    /// The answer of a request stream; `None` for a server stream, or once delivered.
    answer: Option<tokio::sync::oneshot::Receiver<Bytes>>,
    request: bool,
    pending: Option<(Arc<Session>, u64)>,
}

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(b) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(event(&b)))));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => return Poll::Ready(Some(Ok(Frame::data(event(&b))))),
            Poll::Ready(None) if !this.request => return Poll::Ready(None),
            _ => {}
        }
        if !this.request {
            return Poll::Pending;
        }
        let Some(answer) = this.answer.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(answer).poll(cx) {
            Poll::Ready(Ok(b)) => {
                this.answer = None;
                this.pending = None;
                Poll::Ready(Some(Ok(Frame::data(event(&b)))))
            }
            Poll::Ready(Err(_)) => {
                this.answer = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let Some((session, gid)) = self.pending.take() else {
            return;
        };
        if session.routes().waiting.remove(&gid).is_none() {
            return;
        }
        let note = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{{\"requestId\":{gid},\"reason\":\"the HTTP client went away\"}}}}\n"
        );
        tokio::spawn(async move {
            let _ = session.send(note.as_bytes()).await;
        });
    }
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

/// A JSON-RPC error with an HTTP status.
fn rpc_error(status: StatusCode, id: Option<&str>, code: i64, message: &str) -> Response<Body> {
    let mut r = plain(status, error_line(id, code, message));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A request named a session this endpoint does not have (never had, or ended).
struct Unknown;

impl Unknown {
    fn answer(self) -> Response<Body> {
        rpc_error(
            StatusCode::NOT_FOUND,
            None,
            code::INVALID_REQUEST,
            "unknown or ended session: initialize again",
        )
    }
}

impl Endpoint {
    pub(crate) fn new(app: &str, opener: Opener, edge: Edge) -> Endpoint {
        Endpoint {
            app: app.to_string(),
            opener,
            edge,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            params: Arc::new(Mutex::new(HashMap::new())),
            stateless: tokio::sync::Mutex::new(None),
        }
    }

    /// Origins of web pages allowed to use the endpoint besides its own.
    fn allowed(&self) -> &[String] {
        match &self.edge {
            Edge::Local { allowed, .. } => allowed,
            Edge::Proxy => &[],
        }
    }

    async fn handle(self: Arc<Self>, req: http::Request<Incoming>) -> Response<Body> {
        // A web page of an origin given with --allow-origin (the Inspector's web UI, say)
        // gets the CORS grant it needs; no other page gets any.
        let cross = req
            .headers()
            .get(ORIGIN)
            .filter(|o| {
                o.to_str()
                    .is_ok_and(|o| self.allowed().iter().any(|a| a.eq_ignore_ascii_case(o)))
            })
            .cloned();
        let preflight = req.method() == Method::OPTIONS;
        let mut r = if preflight && cross.is_some() && self.check_origin(req.headers()).is_ok() {
            let mut r = plain(StatusCode::NO_CONTENT, "");
            let h = r.headers_mut();
            h.insert(
                "access-control-allow-methods",
                HeaderValue::from_static("GET, POST, DELETE"),
            );
            h.insert(
                "access-control-allow-headers",
                HeaderValue::from_static(
                    "authorization, content-type, accept, last-event-id, mcp-session-id, mcp-protocol-version, mcp-method, mcp-name, mcp-param-*",
                ),
            );
            h.insert("access-control-max-age", HeaderValue::from_static("600"));
            r
        } else {
            self.route(req).await
        };
        if let Some(origin) = cross {
            let h = r.headers_mut();
            h.insert("access-control-allow-origin", origin);
            h.insert(
                "access-control-expose-headers",
                HeaderValue::from_static("mcp-session-id, www-authenticate"),
            );
            h.insert(http::header::VARY, HeaderValue::from_static("origin"));
        }
        r
    }

    async fn route(self: Arc<Self>, req: http::Request<Incoming>) -> Response<Body> {
        if let Err(why) = self.check_origin(req.headers()) {
            return rpc_error(StatusCode::FORBIDDEN, None, code::INVALID_REQUEST, &why);
        }
        if let Edge::Local {
            token: Some(token), ..
        } = &self.edge
        {
            let sent = text(req.headers(), http::header::AUTHORIZATION.as_str())
                .and_then(|v| v.strip_prefix("Bearer "));
            // Compared in constant time: the token is the key to an identity.
            let ok = sent.is_some_and(|s| {
                s.len() == token.len()
                    && s.bytes()
                        .zip(token.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            });
            if !ok {
                let mut r = rpc_error(
                    StatusCode::UNAUTHORIZED,
                    None,
                    code::INVALID_REQUEST,
                    "this endpoint needs Authorization: Bearer with the token of its --token-file",
                );
                r.headers_mut()
                    .insert("www-authenticate", HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        if req.uri().path() != "/mcp" {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: the MCP endpoint is /mcp\n",
            );
        }
        self.dispatch(req).await
    }

    /// A request that passed the edge's checks, by its method.
    pub(crate) async fn dispatch<B>(self: Arc<Self>, req: http::Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        match *req.method() {
            Method::POST => self.post(req).await,
            Method::GET => self.listen(req.headers()),
            Method::DELETE => self.delete(req.headers()).await,
            // A preflight from any origin not allowed gets no CORS grant.
            Method::OPTIONS => plain(StatusCode::FORBIDDEN, ""),
            _ => {
                let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "");
                r.headers_mut()
                    .insert("allow", HeaderValue::from_static("GET, POST, DELETE"));
                r
            }
        }
    }

    /// Refuses requests a web page could make through DNS rebinding: the `Host` must be this
    /// endpoint (a loopback name and its port), and an `Origin`, when sent, this endpoint's
    /// own.
    fn check_origin(&self, h: &HeaderMap) -> Result<(), String> {
        let Edge::Local { port, .. } = &self.edge else {
            return Ok(());
        };
        let ours = |authority: &str| {
            authority.rsplit_once(':').is_some_and(|(host, p)| {
                matches!(host, "127.0.0.1" | "localhost" | "[::1]") && p == port.to_string()
            })
        };
        let host = text(h, HOST.as_str()).unwrap_or("");
        if !ours(host) {
            return Err(format!("Host {host:?} is not this endpoint"));
        }
        if let Some(origin) = h.get(ORIGIN) {
            let o = origin.to_str().unwrap_or("");
            let authority = o.strip_prefix("http://").unwrap_or("");
            if !ours(authority) && !self.allowed().iter().any(|a| a.eq_ignore_ascii_case(o)) {
                return Err(format!("Origin {o:?} may not use this endpoint"));
            }
        }
        Ok(())
    }

    /// The session a request names, if it names one; `Err` if that session is unknown.
    fn session_of(&self, h: &HeaderMap) -> Result<Option<Arc<Session>>, Unknown> {
        let Some(id) = h.get(headers::SESSION_ID) else {
            return Ok(None);
        };
        let id = id.to_str().unwrap_or("");
        match self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            Some(s) => Ok(Some(s.clone())),
            None => Err(Unknown),
        }
    }

    async fn post<B>(self: Arc<Self>, req: http::Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = req.into_parts();
        let h = &parts.headers;
        let json =
            text(h, CONTENT_TYPE.as_str()).is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return rpc_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                code::INVALID_REQUEST,
                "Content-Type must be application/json",
            );
        }
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => one_line(&b.to_bytes()),
            Err(_) => {
                return rpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    None,
                    code::INVALID_REQUEST,
                    &format!("message larger than {MAX_BODY} bytes"),
                );
            }
        };
        let env = match mcpgate_mcp::parse(&body, &Limits::default()) {
            Ok(env) => env,
            Err(e) => {
                return rpc_error(StatusCode::BAD_REQUEST, e.id.as_deref(), e.code, &e.message);
            }
        };
        let id = env.id.map(RawValue::get);
        let meta_version = headers::meta_protocol_version(&env);
        let header_version = text(h, headers::PROTOCOL_VERSION);
        // 2026-07-28 and later: the version in each request's `_meta` (or announced by the
        // header); no initialize, no session.
        let stateless =
            meta_version.is_some() || header_version.is_some_and(|v| v >= headers::STATELESS_SINCE);
        let header = |name: &str| h.get(name).map(HeaderValue::as_bytes);
        if let Err(why) = headers::check(
            &env,
            header(headers::METHOD),
            header(headers::NAME),
            stateless,
        ) {
            return rpc_error(StatusCode::BAD_REQUEST, id, HEADER_MISMATCH, &why);
        }
        if stateless
            && env.kind == Kind::Request
            && let Err((status, code, why)) =
                stateless_request(&env, meta_version.as_deref(), header_version)
        {
            return rpc_error(status, id, code, &why);
        }
        if stateless && let Err(why) = self.check_params(&env, h) {
            return rpc_error(StatusCode::BAD_REQUEST, id, HEADER_MISMATCH, &why);
        }
        let is_init = env.method == Some("initialize");
        let session = match self.session_of(h) {
            Err(Unknown) => return Unknown.answer(),
            Ok(Some(s)) => s,
            Ok(None) if is_init && self.session_count() >= MAX_SESSIONS => {
                return rpc_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    id,
                    code::INTERNAL_ERROR,
                    &format!(
                        "this endpoint already has {MAX_SESSIONS} sessions open: end one (DELETE) first"
                    ),
                );
            }
            Ok(None) if is_init || stateless => {
                let opened = if is_init {
                    self.open().await.inspect(|s| {
                        self.sessions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(s.id.clone(), s.clone());
                    })
                } else {
                    self.shared().await
                };
                match opened {
                    Ok(s) => s,
                    Err(e) => {
                        let message = format!("mcpgate: {e:#}");
                        return rpc_error(StatusCode::OK, id, code::INVALID_REQUEST, &message);
                    }
                }
            }
            Ok(None) => {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    id,
                    code::INVALID_REQUEST,
                    "the Mcp-Session-Id header is required: initialize first",
                );
            }
        };
        if let Some(why) = session.routes().ended.clone() {
            self.forget(&session.id);
            return rpc_error(StatusCode::NOT_FOUND, id, code::INVALID_REQUEST, &why);
        }
        session.used();
        if env.kind != Kind::Request {
            let Some(line) = self.outgoing_note(&session, &env, &body) else {
                // A cancellation of nothing this client waits for goes nowhere.
                return plain(StatusCode::ACCEPTED, "");
            };
            return match session.send(&line).await {
                Ok(()) => plain(StatusCode::ACCEPTED, ""),
                Err(_) => rpc_error(
                    StatusCode::NOT_FOUND,
                    None,
                    code::INVALID_REQUEST,
                    "the gateway session ended",
                ),
            };
        }
        // A request: it gets an id of the endpoint's own, and its answer a stream.
        let Some(raw_id) = env.id else {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                code::INVALID_REQUEST,
                "a request needs an id",
            );
        };
        let (tx, rx) = mpsc::channel(64);
        let (answer, answered) = tokio::sync::oneshot::channel();
        let token = request_progress_token(&env);
        let gid = {
            let mut routes = session.routes();
            routes.next += 1;
            let gid = routes.next;
            routes.waiting.insert(
                gid,
                Waiter {
                    client_id: raw_id.get().to_string(),
                    progress: token.map(|t| t.get().to_string()),
                    tx,
                    answer,
                    lists_tools: env.method == Some("tools/list"),
                },
            );
            gid
        };
        // The gateway sees the endpoint's id, and the endpoint's progress token.
        let line = mcpgate_mcp::gate::splice(&body, raw_id, &gid.to_string()).and_then(|line| {
            if token.is_none() {
                return Some(line);
            }
            let again = mcpgate_mcp::parse(&line, &Limits::default()).ok()?;
            let t = request_progress_token(&again)?;
            mcpgate_mcp::gate::splice(&line, t, &token_of(gid))
        });
        let Some(line) = line else {
            session.routes().waiting.remove(&gid);
            return rpc_error(
                StatusCode::BAD_REQUEST,
                id,
                code::INVALID_REQUEST,
                "unreadable id or progress token",
            );
        };
        if session.send(&line).await.is_err() {
            session.routes().waiting.remove(&gid);
            return rpc_error(
                StatusCode::NOT_FOUND,
                id,
                code::INVALID_REQUEST,
                "the gateway session ended",
            );
        }
        let mut events = Events {
            first: None,
            rx,
            answer: Some(answered),
            request: true,
            pending: Some((session.clone(), gid)),
        };
        // The answer alone goes back as JSON, with the HTTP status that says what it is (for
        // 2026-07-28: 404 for an unknown method, 400 for a refused version or capability);
        // anything before it (progress, a server request) makes the answer a stream.
        let answered = {
            let Some(answer) = events.answer.as_mut() else {
                return rpc_error(
                    StatusCode::BAD_GATEWAY,
                    id,
                    code::INTERNAL_ERROR,
                    "no answer",
                );
            };
            let first = tokio::select! {
                biased;
                m = events.rx.recv() => Ok(m),
                a = &mut *answer => Err(a),
            };
            match first {
                Ok(Some(m)) => {
                    events.first = Some(m);
                    None
                }
                Ok(None) => Some(answer.await),
                Err(a) => Some(a),
            }
        };
        let mut r = match answered {
            None => {
                let mut r = Response::new(events.boxed());
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                r.headers_mut()
                    .insert("cache-control", HeaderValue::from_static("no-cache"));
                r
            }
            Some(Ok(answer)) => {
                events.answer = None;
                events.pending = None;
                let status = if stateless {
                    status_of(&answer)
                } else {
                    StatusCode::OK
                };
                let mut r = plain(status, answer);
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            Some(Err(_)) => {
                events.pending = None;
                return rpc_error(
                    StatusCode::BAD_GATEWAY,
                    id,
                    code::INTERNAL_ERROR,
                    "the gateway session ended before the answer",
                );
            }
        };
        if is_init && let Ok(v) = HeaderValue::from_str(&session.id) {
            r.headers_mut().insert(headers::SESSION_ID, v);
        }
        r
    }

    /// Checks the `Mcp-Param-*` headers of a 2026-07-28 `tools/call` against its arguments,
    /// for the tools whose schema declared them (as far as a `tools/list` through this endpoint said):
    /// each declared argument present must be mirrored exactly, and nothing else claimed.
    fn check_params(&self, env: &Envelope<'_>, h: &HeaderMap) -> Result<(), String> {
        let sent: Vec<(&str, &[u8])> = h
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(headers::PARAM_PREFIX))
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        if env.method != Some("tools/call") {
            return Ok(());
        }
        let Some(declared) = env.name.and_then(|n| {
            self.params
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(n)
                .cloned()
        }) else {
            return Ok(());
        };
        let want = headers::param_values(env.arguments, &declared);
        for (name, value) in &want {
            let got = sent.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
            let (Some(got), Some(want)) = (got, headers::decode(value.as_bytes())) else {
                return Err(format!("the {name} header is missing"));
            };
            if headers::decode(got) != Some(want) {
                return Err(format!("the {name} header does not match the body"));
            }
        }
        if let Some((k, _)) = sent.iter().find(|(k, _)| !want.iter().any(|(w, _)| w == k)) {
            return Err(format!("the {k} header names no argument of the call"));
        }
        Ok(())
    }

    /// A client notification or answer as the gateway gets it: a cancellation names the
    /// endpoint's id of the request; one of nothing this session waits for is `None`.
    fn outgoing_note(&self, session: &Session, env: &Envelope<'_>, body: &[u8]) -> Option<Vec<u8>> {
        if env.method == Some("notifications/cancelled") {
            let rid = env.request_id?;
            let gid = session
                .routes()
                .waiting
                .iter()
                .find(|(_, w)| w.client_id == rid.get())
                .map(|(g, _)| *g)?;
            return mcpgate_mcp::gate::splice(body, rid, &gid.to_string());
        }
        let mut line = body.to_vec();
        line.push(b'\n');
        Some(line)
    }

    /// The server stream of a session-era session.
    fn listen(&self, h: &HeaderMap) -> Response<Body> {
        let wants = text(h, ACCEPT.as_str()).is_some_and(|v| v.contains("text/event-stream"));
        if !wants {
            return plain(
                StatusCode::NOT_ACCEPTABLE,
                "Accept must include text/event-stream\n",
            );
        }
        let session = match self.session_of(h) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    code::INVALID_REQUEST,
                    "the Mcp-Session-Id header is required",
                );
            }
            Err(Unknown) => return Unknown.answer(),
        };
        let (tx, rx) = mpsc::channel(64);
        {
            let mut routes = session.routes();
            if routes.ended.is_some() {
                drop(routes);
                self.forget(&session.id);
                return Unknown.answer();
            }
            // The newest stream wins: a client reconnecting after a half-dead connection is
            // not locked out by it.
            routes.listener = Some(tx);
        }
        session.used();
        let events = Events {
            first: None,
            rx,
            answer: None,
            request: false,
            pending: None,
        };
        let mut r = Response::new(events.boxed());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        r
    }

    async fn delete(&self, h: &HeaderMap) -> Response<Body> {
        match self.session_of(h) {
            Ok(Some(s)) => {
                self.forget(&s.id);
                let _ = s.to_gateway.lock().await.shutdown().await;
                plain(StatusCode::OK, "")
            }
            Ok(None) => plain(
                StatusCode::BAD_REQUEST,
                "the Mcp-Session-Id header is required\n",
            ),
            Err(Unknown) => Unknown.answer(),
        }
    }

    pub(crate) fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn forget(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The session 2026-07-28 requests share (opened again if the gateway ended it).
    async fn shared(&self) -> anyhow::Result<Arc<Session>> {
        let mut slot = self.stateless.lock().await;
        if let Some(s) = slot.as_ref()
            && s.routes().ended.is_none()
        {
            return Ok(s.clone());
        }
        let s = self.open().await?;
        *slot = Some(s.clone());
        Ok(s)
    }

    /// The grant as the newest request showed it: sessions opened from now on present it.
    pub(crate) fn renew(&self, bearer: mcpgate_auth::oauth::Bearer) {
        if let Opener::Proxy { bearer: held, .. } = &self.opener {
            **held.lock().unwrap_or_else(|p| p.into_inner()) = bearer;
        }
    }

    /// Ends every session of this endpoint now (its grant was revoked): the gateway
    /// sessions close, and waiting requests and open streams are told so.
    pub(crate) async fn close_all(&self) {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        let shared = self.stateless.lock().await.take();
        for s in sessions.into_iter().chain(shared) {
            s.routes().ended = Some("the OAuth grant was revoked".into());
            let _ = s.to_gateway.lock().await.shutdown().await;
        }
    }

    /// Ends the sessions idle for too long (the proxy's sweep; `mcp proxy` has a task).
    pub(crate) async fn reap_idle(&self) {
        reap_once(&self.sessions).await;
    }

    /// Whether the endpoint holds no session (none open, no shared one alive).
    pub(crate) fn unused(&self) -> bool {
        self.session_count() == 0
            && self
                .stateless
                .try_lock()
                .is_ok_and(|s| s.as_ref().is_none_or(|s| s.routes().ended.is_some()))
    }

    /// Opens a gateway session and starts delivering what it sends.
    async fn open(&self) -> anyhow::Result<Arc<Session>> {
        let tunnel: Tunnel = match &self.opener {
            Opener::Bridge(who) => {
                let boxed: Box<dyn GatewayStream> = Box::new(dial(who).await?);
                hello(tokio::io::BufReader::new(boxed), &self.app).await?
            }
            Opener::Proxy {
                routes,
                bearer,
                addr,
            } => {
                let bearer = bearer.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let chain = routes.auth.oauth_chain(&bearer)?;
                let stream = mcpgate_proxy::open_in_memory(routes, chain, *addr);
                let boxed: Box<dyn GatewayStream> = Box::new(stream);
                hello(tokio::io::BufReader::new(boxed), &self.app).await?
            }
        };
        let (mut from_gateway, to_gateway) = tokio::io::split(tunnel);
        let session = Arc::new(Session {
            id: mcpgate_types::audit::random_id(),
            to_gateway: tokio::sync::Mutex::new(to_gateway),
            routes: Mutex::new(Routes::default()),
            last_used: Mutex::new(std::time::Instant::now()),
            params: self.params.clone(),
        });
        let s = session.clone();
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut from_gateway);
            let mut buf = Vec::new();
            loop {
                match read_line(&mut reader, &mut buf, MAX_ANSWER).await {
                    Ok(Line::Ok) => s.deliver(&buf),
                    Ok(Line::TooLong) => continue,
                    Ok(Line::Eof) | Err(_) => break,
                }
            }
            s.close();
            sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&s.id);
        });
        Ok(session)
    }
}

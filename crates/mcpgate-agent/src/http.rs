//! HTTP upstreams: Streamable HTTP (`mcp+http(s)://`) and the legacy HTTP+SSE transport
//! (`mcp+sse+http(s)://`), presented to the session as a stream of JSON lines, like a stdio
//! server's output, so the session shell and the gate treat every upstream alike.
//!
//! Every message the session forwards becomes one POST made from scratch by the agent: the
//! client's own headers never exist here, so its credentials cannot reach the upstream. The
//! POST carries the app's `rewrite.headers` (resolved on this host), the cluster-signed
//! `Mcpgate-Jwt-Assertion` naming the caller, the mirror headers written from the body
//! (`Mcp-Method`, `Mcp-Name`), and, for the session-era revisions, the upstream's
//! `Mcp-Session-Id` and `MCP-Protocol-Version` of *this* client session. Answers come back as
//! JSON or as server-sent events (resumed with `Last-Event-ID` when a stream breaks); a
//! server-initiated stream (GET) is opened after `initialize`. An upstream session that
//! expires (404) is initialised again with the client's own `initialize`, once, and the
//! message retried; an upstream that cannot answer gives the request a JSON-RPC error.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use mcpgate_mcp::sse::{Decoder, Event};
use mcpgate_mcp::{Kind, Limits, code, headers};
use mcpgate_types::identity::Assertion;
use mcpgate_types::resource::{App, UpstreamTls};

use crate::cluster::Cluster;
use crate::lines::{Line, read_line};
use crate::secrets;
use crate::upstream::StartError;

/// The header that carries the identity assertion.
pub const ASSERTION_HEADER: &str = "mcpgate-jwt-assertion";
/// How long connecting to the upstream may take, and a resumed or re-initialising request
/// to start answering. (A tool call itself may take as long as it takes: the client cancels.)
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight to the upstream per session, at most.
const IN_FLIGHT: usize = 32;
/// How often a broken event stream is resumed before its request fails.
const RESUMES: usize = 3;
/// Headers the app's `rewrite.headers` may not set: the gateway owns them.
const OWNED: [&str; 9] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    headers::SESSION_ID,
    headers::METHOD,
    headers::NAME,
    ASSERTION_HEADER,
];

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A running HTTP upstream: the session reads and writes lines on [`HttpUpstream::take_io`].
pub struct HttpUpstream {
    side: Option<DuplexStream>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    /// The secrets its headers carry, to take out of what it sends.
    scrubber: secrets::Scrubber,
}

/// What the transport's tasks share.
struct Shared {
    app: String,
    /// The secrets its headers carry: taken out of an error body before it is cut short
    /// for a message (a cut could leave part of one that no longer matches).
    scrubber: secrets::Scrubber,
    client: HttpClient,
    /// Where messages are POSTed (for the legacy transport: the SSE stream's URL until the
    /// `endpoint` event names the POST URL).
    url: Uri,
    legacy: bool,
    /// The app's `rewrite.headers`, resolved.
    extra: HeaderMap,
    cluster: Arc<dyn Cluster>,
    session: String,
    /// The app's URI: the assertion's audience.
    audience: String,
    state: Mutex<State>,
    /// Lines for the session.
    out: mpsc::Sender<Vec<u8>>,
    /// Set once: why the upstream can no longer be used.
    end: Mutex<Option<String>>,
    /// Held while an expired upstream session is initialised again.
    reinit: tokio::sync::Mutex<()>,
    /// The server-initiated stream's task.
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    ended: Notify,
    max: usize,
}

#[derive(Default)]
struct State {
    /// The upstream's session id (session-era revisions).
    session_id: Option<HeaderValue>,
    protocol: Option<HeaderValue>,
    /// The client's `initialize`, kept to start a new upstream session when one expires.
    initialize: Option<Vec<u8>>,
    assertion: Option<Assertion>,
    /// The legacy transport's POST URL.
    post_url: Option<Uri>,
    /// Whether the server-initiated stream was tried.
    listening: bool,
    /// Per tool, the arguments its schema asks to mirror as `Mcp-Param-*` headers.
    params: std::collections::HashMap<String, Vec<(String, String)>>,
}

impl HttpUpstream {
    /// Connects app `app` for session `session` (its assertions are asked of `cluster`).
    pub fn start(
        app: &App,
        cluster: Arc<dyn Cluster>,
        session: &str,
        max: usize,
    ) -> Result<HttpUpstream, StartError> {
        let name = app.metadata.name.as_str().to_string();
        let (legacy, rest) = if let Some(r) = app.spec.uri.strip_prefix("mcp+sse+") {
            (true, r)
        } else if let Some(r) = app.spec.uri.strip_prefix("mcp+") {
            (false, r)
        } else {
            return Err(StartError::Config(format!(
                "uri {:?} is not HTTP",
                app.spec.uri
            )));
        };
        let url: Uri = rest
            .parse()
            .map_err(|e| StartError::Config(format!("uri {:?}: {e}", app.spec.uri)))?;
        let mut extra = HeaderMap::new();
        let mut given = Vec::new();
        for h in app.spec.rewrite.iter().flat_map(|r| &r.headers) {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| StartError::Config(format!("rewrite header {h:?}: no ':'")))?;
            let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| {
                StartError::Config(format!("rewrite header {:?}: bad name", k.trim()))
            })?;
            if OWNED.contains(&name.as_str()) {
                return Err(StartError::Config(format!(
                    "rewrite header {name} is set by the gateway"
                )));
            }
            // Resolved on this host; an error names the reference, never a value.
            let value = secrets::resolve_into(v.trim(), &mut given)?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                StartError::Config(format!(
                    "rewrite header {name}: the value is not a valid header value"
                ))
            })?;
            extra.append(name, value);
        }
        let client = client(app.spec.tls.as_ref().unwrap_or(&UpstreamTls::default()))?;
        let (side, ours) = tokio::io::duplex(256 << 10);
        let (out, rx) = mpsc::channel(64);
        let scrubber = secrets::Scrubber::new(given.iter().map(String::as_str));
        let shared = Arc::new(Shared {
            app: name,
            client,
            url,
            legacy,
            extra,
            cluster,
            session: session.to_string(),
            audience: app.spec.uri.clone(),
            state: Mutex::new(State::default()),
            out,
            end: Mutex::new(None),
            reinit: tokio::sync::Mutex::new(()),
            listener: Mutex::new(None),
            ended: Notify::new(),
            max,
            scrubber: scrubber.clone(),
        });
        let (r, w) = tokio::io::split(ours);
        let task = tokio::spawn(run(shared.clone(), r, w, rx));
        Ok(HttpUpstream {
            side: Some(side),
            shared,
            task,
            scrubber,
        })
    }

    /// What takes the secrets its headers carry out of what it sends.
    pub fn scrubber(&self) -> secrets::Scrubber {
        self.scrubber.clone()
    }

    /// The session's end of the line stream (once).
    pub fn take_io(&mut self) -> DuplexStream {
        // Sound: set in `start`, taken once by the session.
        self.side
            .take()
            .unwrap_or_else(|| unreachable!("io taken twice"))
    }

    /// Why the upstream stopped answering, as the end of a sentence.
    pub fn exit_report(&self) -> String {
        self.shared
            .end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "closed the connection".into())
    }

    /// Ends the upstream session (DELETE, for the session-era revisions) and every request
    /// still in flight.
    pub async fn stop(self) {
        self.abort();
        if self.shared.state().session_id.is_none() {
            return;
        }
        let ended = async {
            let req = self
                .shared
                .request(Method::DELETE, &self.shared.url, Bytes::new())
                .await
                .ok()?;
            self.shared.client.request(req).await.ok()
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), ended).await;
    }
}

impl HttpUpstream {
    fn abort(&self) {
        self.task.abort();
        if let Some(l) = self
            .shared
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            l.abort();
        }
    }
}

impl Drop for HttpUpstream {
    /// Dropped without `stop` (the session's task aborted): nothing it started lives on.
    fn drop(&mut self) {
        self.abort();
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the upstream unusable (the first reason wins) and closes the session's stream.
    fn fail(&self, why: String) {
        let mut end = self.end.lock().unwrap_or_else(|p| p.into_inner());
        if end.is_none() {
            tracing::warn!(app = %self.app, "HTTP upstream: {why}");
            *end = Some(why);
        }
        self.ended.notify_one();
    }

    /// Gives the session a line (a server message, or an error answer of the gateway's).
    async fn send(&self, mut line: Vec<u8>) {
        // JSON text has no raw newline inside strings: any is whitespace, and a line must be
        // one message.
        for b in line.iter_mut() {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        let _ = self.out.send(line).await;
    }

    async fn answer_error(&self, id: Option<&str>, message: &str) {
        if let Some(id) = id {
            let mut line = mcpgate_mcp::answer::error_line(Some(id), code::INTERNAL_ERROR, message);
            line.pop();
            self.send(line).await;
        }
    }

    /// The assertion for this session, renewed a minute before it expires.
    async fn assertion(&self) -> Result<HeaderValue, String> {
        let now = mcpgate_types::clock::unix_secs(self.cluster.clock().now());
        let cached = self.state().assertion.clone();
        let a = match cached {
            Some(a) if a.expires - 60 > now => a,
            _ => {
                let a = self
                    .cluster
                    .assertion(&self.session, &self.audience)
                    .await?;
                self.state().assertion = Some(a.clone());
                a
            }
        };
        HeaderValue::from_str(&a.token).map_err(|e| e.to_string())
    }

    /// A request to the upstream with the headers every request carries.
    async fn request(
        &self,
        method: Method,
        url: &Uri,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, String> {
        let assertion = self.assertion().await.map_err(|e| {
            format!("was not called: the caller's identity assertion could not be made: {e}")
        })?;
        let mut req = Request::builder().method(method).uri(url.clone());
        let h = req.headers_mut().ok_or("bad request")?;
        h.extend(self.extra.clone());
        h.insert(ASSERTION_HEADER, assertion);
        let st = self.state();
        if let Some(sid) = &st.session_id {
            h.insert(headers::SESSION_ID, sid.clone());
        }
        if let Some(v) = &st.protocol {
            h.insert(headers::PROTOCOL_VERSION, v.clone());
        }
        drop(st);
        req.body(Full::new(body)).map_err(|e| e.to_string())
    }
}

/// The message-level facts a POST needs.
struct Msg {
    body: Bytes,
    /// The raw id of a request (to answer errors to, and to know its answer).
    id: Option<String>,
    method: Option<String>,
    name: Option<String>,
    /// The protocol version a 2026-07-28 request names in its `_meta`.
    meta_version: Option<String>,
    /// `params.arguments` of a `tools/call`.
    arguments: Option<Box<serde_json::value::RawValue>>,
}

impl Msg {
    fn read(line: &[u8]) -> Msg {
        let body = Bytes::copy_from_slice(line);
        let limits = Limits {
            max_bytes: usize::MAX,
            max_depth: 128,
        };
        // The gate checked everything it forwards; this only reads what routing needs.
        match mcpgate_mcp::parse(line, &limits) {
            Ok(env) => {
                let mirror = headers::mirror(&env);
                Msg {
                    id: (env.kind == Kind::Request)
                        .then(|| env.id.map(|i| i.get().to_string()))
                        .flatten(),
                    method: mirror.as_ref().map(|m| m.method.to_string()),
                    name: mirror.and_then(|m| m.name).map(|n| n.into_owned()),
                    meta_version: headers::meta_protocol_version(&env).map(|v| v.into_owned()),
                    arguments: env.arguments.map(|a| a.to_owned()),
                    body,
                }
            }
            Err(_) => Msg {
                body,
                id: None,
                method: None,
                name: None,
                meta_version: None,
                arguments: None,
            },
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    from_session: ReadHalf<DuplexStream>,
    mut to_session: WriteHalf<DuplexStream>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let mut posts = JoinSet::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let reader = async {
        if shared.legacy && !legacy_connect(&shared, &mut posts).await {
            return;
        }
        let mut from_session = BufReader::new(from_session);
        let mut buf = Vec::new();
        loop {
            match read_line(&mut from_session, &mut buf, shared.max).await {
                Ok(Line::Ok) => {}
                Ok(Line::TooLong) => continue,
                Ok(Line::Eof) | Err(_) => return,
            }
            let msg = Msg::read(&buf);
            if msg.method.as_deref() == Some("initialize") {
                shared.state().initialize = Some(buf.clone());
            }
            if msg.id.is_none() || msg.method.as_deref() == Some("initialize") {
                // In order: `initialize` completes (the upstream session exists) before
                // anything else is sent, `notifications/initialized` before the next request,
                // a cancellation after what it cancels.
                post(shared.clone(), msg).await;
            } else {
                // Requests run side by side, so a long call blocks nothing, up to a bound.
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let shared = shared.clone();
                posts.spawn(async move {
                    post(shared, msg).await;
                    drop(permit);
                });
            }
            // Reap what finished, so the set does not grow with the session.
            while posts.try_join_next().is_some() {}
        }
    };
    let writer = async {
        loop {
            tokio::select! {
                line = rx.recv() => {
                    let Some(mut line) = line else { break };
                    line.push(b'\n');
                    if to_session.write_all(&line).await.is_err() {
                        break;
                    }
                }
                _ = shared.ended.notified() => {
                    // Lines already queued go first.
                    while let Ok(mut line) = rx.try_recv() {
                        line.push(b'\n');
                        let _ = to_session.write_all(&line).await;
                    }
                    break;
                }
            }
        }
        // The session reads the end of the upstream.
        let _ = to_session.shutdown().await;
    };
    tokio::pin!(writer);
    tokio::select! {
        _ = reader => {
            // The session closed its side: nothing more to send; answers may still come.
            (&mut writer).await;
        }
        _ = &mut writer => {}
    }
}

/// Sends one message and delivers what comes back; a request that fails gets an error
/// answer saying why, and an upstream session that cannot be restored ends the transport.
async fn post(shared: Arc<Shared>, msg: Msg) {
    let mut retried = false;
    let (why, fatal) = loop {
        match post_once(&shared, &msg).await {
            Ok(()) => return,
            Err(PostError::Expired(sent))
                if !retried && msg.method.as_deref() != Some("initialize") =>
            {
                retried = true;
                if let Err(e) = reinitialise(&shared, &sent).await {
                    break (
                        format!(
                            "ended its session (HTTP 404) and could not be initialised again: {e}"
                        ),
                        true,
                    );
                }
            }
            Err(PostError::Expired(_)) => break ("ended its session (HTTP 404)".to_string(), true),
            Err(PostError::Failed(why)) => break (why, false),
        }
    };
    shared
        .answer_error(
            msg.id.as_deref(),
            &format!("the MCP server of app {:?} {why}", shared.app),
        )
        .await;
    if fatal {
        shared.fail(why);
    }
}

enum PostError {
    /// 404 on a request that carried this upstream session id.
    Expired(HeaderValue),
    /// Anything else, said as the end of a sentence about the server.
    Failed(String),
}

async fn post_once(shared: &Arc<Shared>, msg: &Msg) -> Result<(), PostError> {
    let url = match shared.legacy {
        true => shared
            .state()
            .post_url
            .clone()
            .unwrap_or_else(|| shared.url.clone()),
        false => shared.url.clone(),
    };
    let mut req = shared
        .request(Method::POST, &url, msg.body.clone())
        .await
        .map_err(PostError::Failed)?;
    let h = req.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    if let Some(m) = msg
        .method
        .as_deref()
        .and_then(|m| HeaderValue::from_str(&headers::encode(m)).ok())
    {
        h.insert(headers::METHOD, m);
    }
    if let Some(n) = msg
        .name
        .as_deref()
        .and_then(|n| HeaderValue::from_str(&headers::encode(n)).ok())
    {
        h.insert(headers::NAME, n);
    }
    if let Some(v) = msg
        .meta_version
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        h.insert(headers::PROTOCOL_VERSION, v);
    }
    // The arguments the tool's schema asks to see as headers, written from the body.
    if msg.method.as_deref() == Some("tools/call")
        && let Some(name) = msg.name.as_deref()
    {
        let declared = shared.state().params.get(name).cloned().unwrap_or_default();
        for (header, value) in headers::param_values(msg.arguments.as_deref(), &declared) {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(header.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                h.insert(k, v);
            }
        }
    }
    let sent_session = h.get(headers::SESSION_ID).cloned();
    let resp = shared
        .client
        .request(req)
        .await
        .map_err(|e| PostError::Failed(unreachable(&shared.url, &e)))?;
    let status = resp.status();
    if status == StatusCode::NOT_FOUND
        && let Some(sent) = sent_session
    {
        return Err(PostError::Expired(sent));
    }
    if msg.method.as_deref() == Some("initialize") && status.is_success() {
        let mut st = shared.state();
        st.session_id = resp.headers().get(headers::SESSION_ID).cloned();
    }
    let is_sse = content_type(resp.headers()).starts_with("text/event-stream");
    if !status.is_success() {
        // A JSON-RPC error the server gave for this request goes to the client as it is.
        let body = read_body(resp.into_body(), shared.max)
            .await
            .unwrap_or_default();
        if msg.id.is_some() && answers(&body, msg.id.as_deref()) {
            shared.send(body).await;
            return Ok(());
        }
        let body = shared
            .scrubber
            .scrub(&body)
            .unwrap_or_else(|| body.to_vec());
        let said = excerpt(&body);
        let hint = if status == StatusCode::NOT_FOUND {
            format!(
                " (is {} the server's MCP endpoint? check the app's uri)",
                shared.url
            )
        } else {
            String::new()
        };
        return Err(PostError::Failed(format!(
            "answered HTTP {}{said}{hint}",
            status.as_u16()
        )));
    }
    if status == StatusCode::ACCEPTED && msg.id.is_some() && !shared.legacy {
        return Err(PostError::Failed(
            "accepted a request (HTTP 202) without answering it".into(),
        ));
    }
    if shared.legacy || status == StatusCode::ACCEPTED {
        // Legacy answers arrive on the event stream.
        return Ok(());
    }
    if is_sse {
        let mut last_id = None;
        let answered = stream(shared, resp.into_body(), Some(msg), &mut last_id).await;
        if !answered && msg.id.is_some() {
            resume(shared, msg, last_id).await?;
        }
    } else {
        let body = read_body(resp.into_body(), shared.max)
            .await
            .map_err(PostError::Failed)?;
        if body.iter().all(u8::is_ascii_whitespace) {
            if msg.id.is_some() {
                return Err(PostError::Failed("answered with an empty body".into()));
            }
            return Ok(());
        }
        learn(shared, msg, &body);
        shared.send(body).await;
    }
    if msg.method.as_deref() == Some("initialize") {
        listen(shared.clone());
    }
    Ok(())
}

/// Resumes a broken event stream of request `msg` with `Last-Event-ID`, a few times.
async fn resume(
    shared: &Arc<Shared>,
    msg: &Msg,
    mut last_id: Option<String>,
) -> Result<(), PostError> {
    for _ in 0..RESUMES {
        let Some(id) = last_id.clone() else { break };
        let mut req = shared
            .request(Method::GET, &shared.url, Bytes::new())
            .await
            .map_err(PostError::Failed)?;
        req.headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if let Ok(v) = HeaderValue::from_str(&id) {
            req.headers_mut().insert("last-event-id", v);
        }
        let Ok(Ok(resp)) = tokio::time::timeout(CONNECT_TIMEOUT, shared.client.request(req)).await
        else {
            continue;
        };
        if !resp.status().is_success() {
            break;
        }
        if stream(shared, resp.into_body(), Some(msg), &mut last_id).await {
            return Ok(());
        }
    }
    Err(PostError::Failed(
        "closed its event stream before answering".into(),
    ))
}

/// Delivers the messages of an event stream; whether the answer to `msg` (when one is
/// awaited) was among them.
async fn stream(
    shared: &Arc<Shared>,
    mut body: hyper::body::Incoming,
    msg: Option<&Msg>,
    last_id: &mut Option<String>,
) -> bool {
    let id = msg.and_then(|m| m.id.as_deref());
    let mut decoder = Decoder::new(shared.max);
    let mut events: Vec<Event> = Vec::new();
    let mut answered = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if decoder.feed(&data, &mut events).is_err() {
            tracing::warn!(app = %shared.app, "an upstream event over {} bytes ended its stream", shared.max);
            break;
        }
        if let Some(id) = decoder.last_id() {
            *last_id = Some(id.to_string());
        }
        for ev in events.drain(..) {
            if ev.event.as_deref().is_some_and(|e| e != "message") || ev.data.trim().is_empty() {
                continue;
            }
            let line = ev.data.into_bytes();
            if id.is_some() && answers(&line, id) {
                answered = true;
                if let Some(msg) = msg {
                    learn(shared, msg, &line);
                }
            }
            shared.send(line).await;
        }
        if answered {
            break;
        }
    }
    answered
}

/// Opens the server-initiated stream (GET) once, after `initialize`; a server without one
/// answers 405.
fn listen(shared: Arc<Shared>) {
    {
        let mut st = shared.state();
        if st.listening || shared.legacy {
            return;
        }
        st.listening = true;
    }
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        let shared = task_shared;
        let mut last_id: Option<String> = None;
        for _ in 0..=RESUMES {
            let Ok(mut req) = shared.request(Method::GET, &shared.url, Bytes::new()).await else {
                return;
            };
            req.headers_mut()
                .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
            if let Some(v) = last_id
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                req.headers_mut().insert("last-event-id", v);
            }
            let Ok(resp) = shared.client.request(req).await else {
                return;
            };
            if !resp.status().is_success()
                || !content_type(resp.headers()).starts_with("text/event-stream")
            {
                return;
            }
            stream(&shared, resp.into_body(), None, &mut last_id).await;
        }
    });
    if let Some(old) = shared
        .listener
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(task)
    {
        old.abort();
    }
}

/// Starts a new upstream session with the client's own `initialize` (its answer is not
/// passed on: the client is already initialised) and `notifications/initialized` — unless
/// the session that expired (`expired`) was already replaced by a concurrent request.
async fn reinitialise(shared: &Arc<Shared>, expired: &HeaderValue) -> Result<(), String> {
    let _one_at_a_time = shared.reinit.lock().await;
    let init = {
        let st = shared.state();
        if st.session_id.as_ref() != Some(expired) {
            return Ok(());
        }
        st.initialize
            .clone()
            .ok_or("the client never initialised")?
    };
    tracing::info!(app = %shared.app, "the upstream session expired: initialising again");
    let call = |body: Bytes, session: Option<HeaderValue>| async move {
        let mut req = shared.request(Method::POST, &shared.url, body).await?;
        let h = req.headers_mut();
        h.remove(headers::SESSION_ID);
        if let Some(sid) = session {
            h.insert(headers::SESSION_ID, sid);
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let resp = tokio::time::timeout(CONNECT_TIMEOUT, shared.client.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| error_chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        Ok(resp)
    };
    let resp = call(Bytes::from(init), None).await?;
    let sid = resp.headers().get(headers::SESSION_ID).cloned();
    // Read the answer to its end (the connection is then reused); it is not passed on.
    if let Ok(answer) = read_body(resp.into_body(), shared.max).await {
        learn_version(shared, &answer);
    }
    let note = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    call(note, sid.clone()).await?;
    {
        let mut st = shared.state();
        st.session_id = sid;
        st.listening = false;
    }
    listen(shared.clone());
    Ok(())
}

/// The legacy transport: opens the event stream, waits for its `endpoint` event, and keeps
/// delivering its messages. Whether the transport can be used.
async fn legacy_connect(shared: &Arc<Shared>, tasks: &mut JoinSet<()>) -> bool {
    let fail = |why: String| {
        shared.fail(why);
        false
    };
    let mut req = match shared.request(Method::GET, &shared.url, Bytes::new()).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let resp = match tokio::time::timeout(CONNECT_TIMEOUT, shared.client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail(unreachable(&shared.url, &e)),
        Err(_) => return fail("did not answer".into()),
    };
    if !resp.status().is_success() {
        return fail(format!(
            "answered HTTP {} to its event stream",
            resp.status().as_u16()
        ));
    }
    let mut body = resp.into_body();
    let mut decoder = Decoder::new(shared.max);
    let mut events = Vec::new();
    // The first event names where to POST.
    let endpoint = loop {
        if let Some(ev) = events
            .iter()
            .position(|e: &Event| e.event.as_deref() == Some("endpoint"))
        {
            break events.remove(ev).data;
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && decoder.feed(&data, &mut events).is_err()
                {
                    return fail("sent an oversized event".into());
                }
            }
            _ => return fail("closed its event stream before naming its endpoint".into()),
        }
    };
    let Some(post_url) = join(&shared.url, endpoint.trim()) else {
        return fail(format!("named an endpoint on another origin: {endpoint:?}"));
    };
    shared.state().post_url = Some(post_url);
    let s = shared.clone();
    tasks.spawn(async move {
        let mut events = events;
        loop {
            for ev in events.drain(..) {
                if ev.event.as_deref().is_none_or(|e| e == "message") && !ev.data.trim().is_empty()
                {
                    s.send(ev.data.into_bytes()).await;
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && decoder.feed(&data, &mut events).is_err()
                    {
                        s.fail("sent an oversized event".into());
                        return;
                    }
                }
                _ => {
                    s.fail("closed its event stream".into());
                    return;
                }
            }
        }
    });
    true
}

/// `endpoint` resolved against `base`, on the same origin only (a server may not send the
/// agent, its credentials and the caller's assertion elsewhere).
fn join(base: &Uri, endpoint: &str) -> Option<Uri> {
    if endpoint.starts_with('/') && !endpoint.starts_with("//") {
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(endpoint.parse().ok()?);
        return Uri::from_parts(parts).ok();
    }
    let uri: Uri = endpoint.parse().ok()?;
    (uri.scheme() == base.scheme() && uri.authority() == base.authority()).then_some(uri)
}

/// Whether `line` is the answer to the request of raw id `id`.
fn answers(line: &[u8], id: Option<&str>) -> bool {
    let Some(id) = id else { return false };
    let limits = Limits {
        max_bytes: usize::MAX,
        max_depth: 128,
    };
    mcpgate_mcp::parse(line, &limits)
        .is_ok_and(|e| e.kind == Kind::Response && e.id.map(|i| i.get()) == Some(id))
}

/// What an answer teaches the transport: the protocol version `initialize` negotiated, and
/// the arguments each tool of a `tools/list` asks to see mirrored as `Mcp-Param-*` headers.
fn learn(shared: &Shared, msg: &Msg, answer: &[u8]) {
    match msg.method.as_deref() {
        Some("initialize") => learn_version(shared, answer),
        Some("tools/list") => {
            let Ok(env) = mcpgate_mcp::parse(
                answer,
                &Limits {
                    max_bytes: usize::MAX,
                    max_depth: 128,
                },
            ) else {
                return;
            };
            let mut st = shared.state();
            for (tool, declared) in env.result.map(headers::listed_params).unwrap_or_default() {
                st.params.insert(tool, declared);
            }
        }
        _ => {}
    }
}

/// Takes the negotiated protocol version from an `initialize` answer.
fn learn_version(shared: &Shared, body: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Option<InitResult>,
    }
    #[derive(serde::Deserialize)]
    struct InitResult {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    if let Ok(Answer {
        result: Some(InitResult {
            protocol_version: Some(v),
        }),
    }) = serde_json::from_slice(body)
        && let Ok(v) = HeaderValue::from_str(&v)
    {
        shared.state().protocol = Some(v);
    }
}

fn content_type(h: &HeaderMap) -> &str {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn read_body(mut body: hyper::body::Incoming, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("broke off its answer: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(format!("sent an answer over {max} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Why the upstream at `url` could not be reached, as the end of a sentence, with what to do
/// about a certificate it was refused for.
fn unreachable(url: &Uri, e: &dyn std::error::Error) -> String {
    let chain = error_chain(e);
    let hint = if chain.contains("CaUsedAsEndEntity") {
        ": the server presents a CA certificate as its own; give it a certificate issued by a CA and name that CA in the app's tls.ca_file"
    } else if chain.contains("UnknownIssuer") || chain.contains("invalid peer certificate") {
        ": its certificate is not issued by a CA this agent trusts; name its CA in the app's tls.ca_file"
    } else if chain.contains("NotValidForName") {
        ": its certificate does not name this host; use the name it was issued for in the app's uri"
    } else {
        ""
    };
    format!("cannot be reached at {url}: {chain}{hint}")
}

/// A short, printable excerpt of an error body, for a message.
fn excerpt(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// An error and its causes, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The HTTP client for an app: HTTP/1.1, TLS verified against the system's CAs or the app's
/// `tls.ca_file`, or not at all with `tls.insecure_skip_verify`.
fn client(tls: &UpstreamTls) -> Result<HttpClient, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let config = if tls.insecure_skip_verify {
        tracing::warn!("tls.insecure_skip_verify: the upstream's certificate is not verified");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(danger::AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let roots = match &tls.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| StartError::Config(format!("tls.ca_file {path:?}: {e}")))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    let cert: rustls_pki_types::CertificateDer<'static> =
                        cert.map_err(|e| StartError::Config(format!("tls.ca_file {path:?}: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| StartError::Config(format!("tls.ca_file {path:?}: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(StartError::Config(format!(
                        "tls.ca_file {path:?} holds no certificate"
                    )));
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The system's CA certificates, read once.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found: HTTPS upstreams need tls.ca_file");
            }
            Arc::new(roots)
        })
        .clone()
}

mod danger {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::sync::Arc;

    /// Accepts any server certificate (signatures are still checked): the app asked for
    /// `insecure_skip_verify`.
    #[derive(Debug)]
    pub struct AnyCertificate(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_endpoint_stays_on_the_same_origin() {
        let base: Uri = "http://127.0.0.1:8080/sse".parse().unwrap();
        assert_eq!(
            join(&base, "/messages?sessionId=abc").unwrap().to_string(),
            "http://127.0.0.1:8080/messages?sessionId=abc"
        );
        assert!(join(&base, "http://127.0.0.1:8080/m").is_some());
        assert!(join(&base, "http://evil.example/m").is_none());
        assert!(join(&base, "//evil.example/m").is_none());
        assert!(join(&base, "https://127.0.0.1:8080/m").is_none());
    }

    #[test]
    fn only_the_answer_to_the_request_counts() {
        assert!(answers(
            br#"{"jsonrpc":"2.0","id":7,"result":{}}"#,
            Some("7")
        ));
        assert!(!answers(
            br#"{"jsonrpc":"2.0","id":8,"result":{}}"#,
            Some("7")
        ));
        assert!(!answers(
            br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
            Some("7")
        ));
    }
}

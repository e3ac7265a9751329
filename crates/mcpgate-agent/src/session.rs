//! One MCP session: client ⇄ agent ⇄ upstream. Every client message is parsed (envelope
//! only) and checked; `tools/list` answers are filtered and `tools/call` requests gated by the
//! caller's roles as they are at that moment; every request is audited, a forwarded call
//! durably before it is forwarded.

use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use mcpgate_auth::service::new_event;
use mcpgate_mcp::answer::{error_line, filter_tools};
use mcpgate_mcp::{Envelope, Kind, code};
use mcpgate_pki::CertInfo;
use mcpgate_policy::{AppDecision, Decision, Policy};
use mcpgate_store::Store;
use mcpgate_types::audit::codes;
use mcpgate_types::resource::App;
use mcpgate_types::{AuditEvent, Claims};

use crate::lines::{Line, read_line};
use crate::redact::audit_params;
use crate::upstream::Upstream;
use crate::{Agent, PENDING};

/// Who is connecting, as the proxy saw it. The agent verifies the certificate again itself.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub certs: Vec<CertificateDer<'static>>,
    pub addr: SocketAddr,
    pub app: String,
}

/// Messages from the upstream may be larger than client messages (images, files).
const UPSTREAM_MAX: usize = 64 << 20;
/// How long a cached policy may be used before the roles are read again, for changes made
/// by another auth instance (changes in this process reload at once).
const POLICY_MAX_AGE: Duration = Duration::from_secs(1);
/// Requests one session may have waiting for the server; more are refused (memory bound).
const MAX_IN_FLIGHT: usize = 1024;
/// How often a live session checks for locks (a lock ends sessions well within 5 s).
const LOCK_CHECK: Duration = Duration::from_secs(1);

struct Pending {
    method: String,
    tool: Option<String>,
    params: Value,
    start: Instant,
    event_id: String,
    durable: bool,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    client_info: Value,
    started: bool,
}

struct CachedPolicy {
    epoch: u64,
    at: Instant,
    policy: Arc<Policy>,
}

struct Session<'a> {
    agent: &'a Agent,
    info: CertInfo,
    app: App,
    labels: BTreeMap<String, String>,
    id: String,
    addr: String,
    state: Mutex<State>,
    policy: Mutex<Option<CachedPolicy>>,
}

impl Agent {
    /// Serves one client session until either side closes.
    pub async fn serve<R, W>(&self, conn: ClientConn, reader: R, writer: W)
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let writer = tokio::sync::Mutex::new(writer);
        let mut reader = BufReader::with_capacity(64 << 10, reader);
        self.serve_inner(conn, &mut reader, &writer).await;
        // Close the client's stream cleanly (TLS close_notify) whatever happened.
        let _ = writer.lock().await.shutdown().await;
    }

    async fn serve_inner<R, W>(
        &self,
        conn: ClientConn,
        reader: &mut BufReader<R>,
        writer: &tokio::sync::Mutex<W>,
    ) where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let info = match self.verify(&conn.certs) {
            Ok(info) => info,
            Err(e) => {
                refuse_all(
                    reader,
                    writer,
                    &format!("access denied: {e}"),
                    self.limits.max_bytes,
                )
                .await;
                return;
            }
        };
        let app = match self.app(&conn.app).await {
            Ok(Some(app)) => app,
            Ok(None) => {
                refuse_all(
                    reader,
                    writer,
                    &format!("app {:?} not found", conn.app),
                    self.limits.max_bytes,
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "app lookup failed");
                refuse_all(
                    reader,
                    writer,
                    "the gateway cannot read its apps",
                    self.limits.max_bytes,
                )
                .await;
                return;
            }
        };
        let session = Session {
            agent: self,
            labels: app.metadata.labels.clone(),
            app,
            info,
            id: mcpgate_auth::service::random_id(),
            addr: conn.addr.to_string(),
            state: Mutex::new(State::default()),
            policy: Mutex::new(None),
        };
        session.run(reader, writer).await;
    }

    /// Verifies a client certificate chain against the user CA now, and reads its claims.
    fn verify(&self, certs: &[CertificateDer<'static>]) -> Result<CertInfo, String> {
        let (leaf, rest) = certs.split_first().ok_or("no client certificate")?;
        let now = UnixTime::since_unix_epoch(
            self.cluster
                .clock()
                .now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        self.verifier
            .verify_client_cert(leaf, rest, now)
            .map_err(|e| format!("client certificate refused: {e}"))?;
        mcpgate_pki::tls::peer_identity(
            Some(certs),
            self.cluster.name(),
            self.cluster.clock().now(),
        )
        .map_err(|e| e.to_string())
    }
}

/// Answers every request with `message` until the client leaves (no upstream is started).
async fn refuse_all<R, W>(
    reader: &mut BufReader<R>,
    writer: &tokio::sync::Mutex<W>,
    message: &str,
    max: usize,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    while let Ok(Line::Ok | Line::TooLong) = read_line(reader, &mut buf, max).await {
        let id = mcpgate_mcp::parse(&buf, &Default::default())
            .ok()
            .filter(|e| e.kind == Kind::Request)
            .and_then(|e| e.id);
        if let Some(id) = id {
            let line = error_line(Some(id.get()), code::INVALID_REQUEST, message);
            if write(writer, &line).await.is_err() {
                return;
            }
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(
    writer: &tokio::sync::Mutex<W>,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut w = writer.lock().await;
    w.write_all(bytes).await?;
    w.flush().await
}

impl Session<'_> {
    fn claims(&self) -> &Claims {
        &self.info.claims
    }

    fn app_name(&self) -> &str {
        self.app.metadata.name.as_str()
    }

    /// The caller's policy now: reloaded when roles changed in this process, or at least
    /// every [`POLICY_MAX_AGE`].
    async fn policy(&self) -> Result<Arc<Policy>, String> {
        let epoch = self.agent.cluster.epoch();
        if let Some(c) = self
            .policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && c.epoch == epoch
            && c.at.elapsed() < POLICY_MAX_AGE
        {
            return Ok(c.policy.clone());
        }
        let roles = self.agent.cluster.roles(&self.claims().roles).await?;
        let policy =
            Arc::new(Policy::compile(&roles, &self.claims().traits).map_err(|e| e.to_string())?);
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = Some(CachedPolicy {
            epoch,
            at: Instant::now(),
            policy: policy.clone(),
        });
        Ok(policy)
    }

    fn event(
        &self,
        (kind, code): (&str, &str),
        success: bool,
        extra: Map<String, Value>,
    ) -> AuditEvent {
        let mut fields = Map::new();
        fields.insert("session_id".into(), Value::from(self.id.as_str()));
        fields.insert("app".into(), Value::from(self.app_name()));
        fields.insert("client_addr".into(), Value::from(self.addr.as_str()));
        fields.extend(extra);
        let cluster = &self.agent.cluster;
        new_event(
            cluster.name(),
            cluster.clock().now(),
            (kind, code),
            self.claims(),
            success,
            fields,
        )
    }

    async fn emit(&self, ev: AuditEvent) {
        if let Err(e) = self.agent.cluster.record(std::slice::from_ref(&ev)).await {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    async fn run<R, W>(&self, reader: &mut BufReader<R>, writer: &tokio::sync::Mutex<W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // A locked identity starts nothing.
        if let Some(reason) = self.lock_reason().await {
            self.refuse_session(reader, writer, &format!("access denied: {reason}"))
                .await;
            return;
        }
        // An app the roles cannot reach: every request is refused and audited; nothing starts.
        let app_denied = match self.policy().await {
            Ok(p) => match p.app(&self.labels) {
                AppDecision::Allow { .. } => None,
                AppDecision::Deny(reason) => Some(reason.to_string()),
            },
            Err(e) => Some(format!("roles cannot be evaluated: {e}")),
        };
        if let Some(reason) = app_denied {
            self.refuse_session(
                reader,
                writer,
                &format!("access denied: app {:?}: {reason}", self.app_name()),
            )
            .await;
            return;
        }
        let Some(cmd) = self
            .app
            .spec
            .mcp
            .as_ref()
            .filter(|_| self.app.spec.uri.starts_with("mcp+stdio://"))
        else {
            self.refuse_session(
                reader,
                writer,
                &format!(
                    "app {:?}: only stdio apps are served by this version",
                    self.app_name()
                ),
            )
            .await;
            return;
        };
        let upstream = match Upstream::start(cmd) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(app = self.app_name(), error = %e, "upstream did not start");
                self.refuse_session(
                    reader,
                    writer,
                    &format!(
                        "the MCP server of app {:?} could not be started: {e}",
                        self.app_name()
                    ),
                )
                .await;
                return;
            }
        };
        let mut upstream = upstream;
        let mut up_out = BufReader::with_capacity(64 << 10, upstream.take_stdout());
        let mut cut = None;
        {
            let mut up_in = upstream.take_stdin();
            tokio::select! {
                _ = self.client_loop(reader, writer, &mut up_in) => {}
                _ = self.upstream_loop(&mut up_out, writer) => {}
                reason = self.watch_locks() => {
                    self.cut(writer, &reason).await;
                    cut = Some(reason);
                }
            }
        }
        upstream.stop().await;
        self.end(cut).await;
    }

    /// Why this identity is locked now, if it is (a lock that cannot be read counts as one:
    /// fail closed).
    async fn lock_reason(&self) -> Option<String> {
        let now = mcpgate_types::clock::unix_secs(self.agent.cluster.clock().now());
        let c = self.claims();
        match self.agent.cluster.locks().await {
            Ok(locks) => locks
                .into_iter()
                .find(|l| l.applies(c.kind, &c.name, &c.roles, now))
                .map(|lock| format!("{} is locked: {}", lock.target, lock.message)),
            Err(e) => Some(format!("locks cannot be checked: {e}")),
        }
    }

    /// Returns once the identity is locked (checked every [`LOCK_CHECK`]).
    async fn watch_locks(&self) -> String {
        loop {
            tokio::time::sleep(LOCK_CHECK).await;
            if let Some(reason) = self.lock_reason().await {
                return reason;
            }
        }
    }

    /// Ends a live session for `reason`: open requests get an error, the client a log
    /// message, the audit log the reason.
    async fn cut<W: AsyncWrite + Unpin>(&self, writer: &tokio::sync::Mutex<W>, reason: &str) {
        let message = format!("access denied: {reason}; the session was ended");
        let ids: Vec<String> = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let _ = write(
                writer,
                &error_line(Some(&id), code::INVALID_REQUEST, &message),
            )
            .await;
        }
        let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "error", "logger": "mcpgate", "data": message}});
        let _ = write(writer, format!("{note}\n").as_bytes()).await;
    }

    /// Refuses every request of a session that may not proceed, auditing each.
    async fn refuse_session<R, W>(
        &self,
        reader: &mut BufReader<R>,
        writer: &tokio::sync::Mutex<W>,
        message: &str,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        while let Ok(Line::Ok | Line::TooLong) =
            read_line(reader, &mut buf, self.agent.limits.max_bytes).await
        {
            let Ok(env) = mcpgate_mcp::parse(&buf, &self.agent.limits) else {
                continue;
            };
            if env.kind != Kind::Request {
                continue;
            }
            let id = env.id.map(|i| i.get());
            self.audit_denied(&env, message).await;
            if write(writer, &error_line(id, code::INVALID_PARAMS, message))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn audit_denied(&self, env: &Envelope<'_>, reason: &str) {
        let mut f = Map::new();
        f.insert("method".into(), Value::from(env.method.unwrap_or_default()));
        f.insert(
            "jsonrpc_id".into(),
            env.id.map(|i| Value::from(i.get())).unwrap_or(Value::Null),
        );
        if let Some(t) = env.name.filter(|_| env.method == Some("tools/call")) {
            f.insert("tool".into(), Value::from(t));
        }
        f.insert("params".into(), audit_params(env.params.map(|p| p.get())));
        f.insert("decision".into(), Value::from("deny"));
        f.insert("reason".into(), Value::from(reason));
        self.emit(self.event(codes::MCP_REQUEST_DENIED, false, f))
            .await;
    }

    async fn client_loop<R, W>(
        &self,
        reader: &mut BufReader<R>,
        writer: &tokio::sync::Mutex<W>,
        up: &mut tokio::process::ChildStdin,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let limits = self.agent.limits;
        let mut buf = Vec::with_capacity(4096);
        loop {
            match read_line(reader, &mut buf, limits.max_bytes).await {
                Ok(Line::Ok) => {}
                Ok(Line::TooLong) => {
                    let msg = format!("message larger than {} bytes", limits.max_bytes);
                    if write(writer, &error_line(None, code::INVALID_REQUEST, &msg))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                Ok(Line::Eof) | Err(_) => return,
            }
            let env = match mcpgate_mcp::parse(&buf, &limits) {
                Ok(env) => env,
                Err(e) => {
                    if write(writer, &error_line(e.id.as_deref(), e.code, &e.message))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            if !self.info.valid_at(self.agent.cluster.clock().now()) {
                let id = env.id.map(|i| i.get());
                let _ = write(
                    writer,
                    &error_line(
                        id,
                        code::INVALID_REQUEST,
                        "access denied: your certificate has expired; log in again",
                    ),
                )
                .await;
                return;
            }
            match env.kind {
                Kind::Request => match self.request(&env).await {
                    Forward::Yes => {}
                    Forward::Answer(line) => {
                        if write(writer, &line).await.is_err() {
                            return;
                        }
                        continue;
                    }
                },
                Kind::Notification => {
                    let mut f = Map::new();
                    f.insert("method".into(), Value::from(env.method.unwrap_or_default()));
                    f.insert("params".into(), audit_params(env.params.map(|p| p.get())));
                    self.emit(self.event(codes::MCP_NOTIFICATION, true, f))
                        .await;
                }
                Kind::Response => {}
            }
            buf.push(b'\n');
            if up.write_all(&buf).await.is_err() || up.flush().await.is_err() {
                return;
            }
        }
    }

    /// Decides about one client request: forward it, or answer it here.
    async fn request(&self, env: &Envelope<'_>) -> Forward {
        let method = env.method.unwrap_or_default();
        let id = env.id.map(|i| i.get()).unwrap_or("null");
        let in_flight = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .len();
        if in_flight >= MAX_IN_FLIGHT {
            let msg = format!(
                "more than {MAX_IN_FLIGHT} requests are waiting for the server; wait for answers"
            );
            return Forward::Answer(error_line(Some(id), code::INTERNAL_ERROR, &msg));
        }
        if method == "initialize"
            && let Some(p) = env.params
            && let Ok(v) = serde_json::from_str::<Value>(p.get())
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.client_info = v.get("clientInfo").cloned().unwrap_or(Value::Null);
        }
        let mut tool = None;
        if method == "tools/call" {
            let name = env.name.unwrap_or_default();
            let policy = match self.policy().await {
                Ok(p) => p,
                Err(e) => {
                    return Forward::Answer(error_line(
                        Some(id),
                        code::INTERNAL_ERROR,
                        &format!("roles cannot be evaluated: {e}"),
                    ));
                }
            };
            match policy.tool(&self.labels, name) {
                Decision::Allow { .. } => tool = Some(name.to_string()),
                Decision::Deny(reason) => {
                    let message = format!(
                        "access denied: tool {name:?} is not allowed on app {:?} ({reason})",
                        self.app_name()
                    );
                    self.audit_denied(env, &reason.to_string()).await;
                    return Forward::Answer(error_line(Some(id), code::INVALID_PARAMS, &message));
                }
            }
        }
        let params = audit_params(env.params.map(|p| p.get()));
        let mut pending = Pending {
            method: method.to_string(),
            tool,
            params,
            start: Instant::now(),
            event_id: String::new(),
            durable: false,
        };
        if pending.tool.is_some() {
            // Fail closed: the call is forwarded only once its event is durably stored.
            let ev = self.request_event(&pending, id, true, None);
            pending.event_id = ev.id.clone();
            let stored = match serde_json::to_vec(&ev) {
                Ok(bytes) => self
                    .agent
                    .cluster
                    .spool()
                    .put(&format!("{PENDING}{}", ev.id), &bytes)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if !stored {
                tracing::error!("audit log unavailable: refusing tools/call");
                return Forward::Answer(error_line(
                    Some(id),
                    code::INTERNAL_ERROR,
                    "the audit log is unavailable: the call was not forwarded",
                ));
            }
            pending.durable = true;
        }
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .insert(id.to_string(), pending);
        Forward::Yes
    }

    fn request_event(
        &self,
        p: &Pending,
        id: &str,
        success: bool,
        error: Option<String>,
    ) -> AuditEvent {
        let mut f = Map::new();
        f.insert("method".into(), Value::from(p.method.as_str()));
        f.insert("jsonrpc_id".into(), Value::from(id));
        if let Some(t) = &p.tool {
            f.insert("tool".into(), Value::from(t.as_str()));
        }
        f.insert("params".into(), p.params.clone());
        f.insert("decision".into(), Value::from("allow"));
        f.insert(
            "duration_ms".into(),
            Value::from(p.start.elapsed().as_secs_f64() * 1000.0),
        );
        if let Some(e) = error {
            f.insert("error".into(), Value::from(e));
        }
        let code = if success {
            codes::MCP_REQUEST
        } else {
            codes::MCP_REQUEST_FAILED
        };
        let mut ev = self.event(code, success, f);
        if !p.event_id.is_empty() {
            ev.id = p.event_id.clone();
        }
        ev
    }

    async fn upstream_loop<W: AsyncWrite + Unpin>(
        &self,
        up: &mut BufReader<tokio::process::ChildStdout>,
        writer: &tokio::sync::Mutex<W>,
    ) {
        let mut buf = Vec::with_capacity(4096);
        loop {
            match read_line(up, &mut buf, UPSTREAM_MAX).await {
                Ok(Line::Ok) => {}
                Ok(Line::TooLong) => {
                    tracing::warn!(
                        app = self.app_name(),
                        "dropped an upstream message over {UPSTREAM_MAX} bytes"
                    );
                    continue;
                }
                Ok(Line::Eof) | Err(_) => return,
            }
            let lenient = mcpgate_mcp::Limits {
                max_bytes: UPSTREAM_MAX,
                max_depth: 128,
            };
            let env = match mcpgate_mcp::parse(&buf, &lenient) {
                Ok(env) => env,
                Err(e) => {
                    tracing::warn!(app = self.app_name(), error = %e, "dropped an invalid upstream message");
                    continue;
                }
            };
            let (mut rewritten, mut deferred) = (None, None);
            if env.kind == Kind::Response
                && let Some(id) = env.id
            {
                let pending = self
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pending
                    .remove(id.get());
                if let Some(p) = pending {
                    (rewritten, deferred) = self.response(&env, id.get(), p, &buf).await;
                }
            }
            let out: &[u8] = match &rewritten {
                Some(line) => line,
                None => {
                    buf.push(b'\n');
                    &buf
                }
            };
            if write(writer, out).await.is_err() {
                return;
            }
            if let Some(ev) = deferred.take() {
                self.complete(ev).await;
            }
        }
    }

    /// Hands the final event of a call whose pending event is already durable to the batch
    /// writer. Done after the answer went out: if the process dies before it is stored, the
    /// pending event is recovered at the next start, so nothing is lost.
    async fn complete(&self, ev: AuditEvent) {
        if self
            .agent
            .completions
            .send(crate::Completion::Event(Box::new(ev)))
            .await
            .is_err()
        {
            tracing::error!("the audit batch writer stopped; the pending event will be recovered");
        }
    }

    /// Handles the answer to a client request: session start, `tools/list` filter, audit.
    async fn response(
        &self,
        env: &Envelope<'_>,
        id: &str,
        p: Pending,
        line: &[u8],
    ) -> (Option<Vec<u8>>, Option<AuditEvent>) {
        let error = env.error.map(|e| {
            serde_json::from_str::<Value>(e.get())
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| "error".to_string())
        });
        let is_tool_error = env
            .result
            .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
            .and_then(|v| v.get("isError").and_then(Value::as_bool))
            .unwrap_or(false);
        if matches!(p.method.as_str(), "initialize" | "server/discover")
            && let Some(r) = env.result
        {
            self.start(r.get()).await;
        }
        let mut out = None;
        if p.method == "tools/list" && env.result.is_some() {
            match self.policy().await {
                Ok(policy) => {
                    out = filter_tools(line, |name| policy.tool(&self.labels, name).is_allow())
                        .map(|(l, _)| l);
                }
                Err(e) => {
                    // Fail closed: without a policy, no tool is shown.
                    out = Some(error_line(
                        Some(id),
                        code::INTERNAL_ERROR,
                        &format!("roles cannot be evaluated: {e}"),
                    ));
                }
            }
        }
        let quiet = matches!(
            p.method.as_str(),
            "ping" | "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list"
        ) && error.is_none();
        if !quiet {
            let failed = error.is_some() || is_tool_error;
            let err = error.or(is_tool_error.then(|| "the tool reported an error".to_string()));
            let ev = self.request_event(&p, id, !failed, err);
            if p.durable {
                return (out, Some(ev));
            }
            self.emit(ev).await;
        }
        (out, None)
    }

    async fn start(&self, result: &str) {
        let already = std::mem::replace(
            &mut self.state.lock().unwrap_or_else(|p| p.into_inner()).started,
            true,
        );
        if already {
            return;
        }
        let v: Value = serde_json::from_str(result).unwrap_or(Value::Null);
        let client_info = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .client_info
            .clone();
        let mut f = Map::new();
        f.insert("client_info".into(), client_info);
        f.insert(
            "server_info".into(),
            v.get("serverInfo").cloned().unwrap_or(Value::Null),
        );
        f.insert(
            "protocol_version".into(),
            v.get("protocolVersion").cloned().unwrap_or(Value::Null),
        );
        self.emit(self.event(codes::MCP_SESSION_START, true, f))
            .await;
    }

    async fn end(&self, cut: Option<String>) {
        // The session's calls are in the audit log before its end is.
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self
            .agent
            .completions
            .send(crate::Completion::Flush(done))
            .await
            .is_ok()
        {
            let _ = flushed.await;
        }
        let pending: Vec<(String, Pending)> = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .drain()
            .collect();
        let store = self.agent.cluster.spool();
        for (id, p) in pending {
            if p.tool.is_none() {
                continue;
            }
            let ev = self.request_event(
                &p,
                &id,
                false,
                Some("the session ended before the answer".into()),
            );
            if self
                .agent
                .cluster
                .record(std::slice::from_ref(&ev))
                .await
                .is_ok()
                && p.durable
            {
                let _ = store.delete(&format!("{PENDING}{}", ev.id)).await;
            }
        }
        let mut f = Map::new();
        let code = match cut {
            Some(reason) => {
                f.insert("reason".into(), Value::from(reason));
                codes::MCP_SESSION_TERMINATED
            }
            None => codes::MCP_SESSION_END,
        };
        self.emit(self.event(code, code == codes::MCP_SESSION_END, f))
            .await;
    }
}

enum Forward {
    Yes,
    Answer(Vec<u8>),
}

//! One MCP session: client ⇄ agent ⇄ upstream, the I/O shell around the gate.
//!
//! The shell reads lines, asks [`Gate`] what to do with each (with the caller's rules as
//! they are at that moment), writes the audit events the gate's step calls for through the
//! [`Journal`](crate::journal::Journal) — a request that must be durable before it is
//! forwarded is begun first, and not forwarded if that fails — and moves the bytes. It
//! decides nothing about messages itself.

use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use mcpgate_mcp::answer::error_line;
use mcpgate_mcp::gate::{AppRules, Audit, Done, Out, Outcome, Pending, Verdict};
use mcpgate_mcp::{Envelope, Gate, Kind, Rules, code};

use crate::pins::PinBook;
use mcpgate_pki::CertInfo;
use mcpgate_policy::Scope;
use mcpgate_policy::{AppDecision, Policy, Subject};
use mcpgate_types::audit::codes;
use mcpgate_types::limits::Counter;
use mcpgate_types::resource::App;
use mcpgate_types::{AuditEvent, Claims};

use crate::Agent;
use crate::http::HttpUpstream;
use crate::lines::{Line, read_line};
use crate::redact::audit_params;
use crate::upstream::{StartError, Upstream};

/// Who is connecting, as the proxy saw it. The agent verifies the certificate again itself.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub certs: Vec<CertificateDer<'static>>,
    pub addr: SocketAddr,
    pub app: String,
    /// The session id the proxy recorded for this stream (the auth service accepts this
    /// agent's events of this session only); a new one if the proxy gave none.
    pub session: Option<String>,
}

/// Messages from the upstream may be larger than client messages (images, files).
const UPSTREAM_MAX: usize = 64 << 20;
/// The read buffer for the upstream's output, one per session (a larger message is read in
/// several steps into the line buffer, which grows as needed).
const UPSTREAM_BUFFER: usize = 8 << 10;
/// How long a cached policy may be used before the roles are read again, for changes made
/// by another auth instance (changes in this process reload at once).
const POLICY_MAX_AGE: Duration = Duration::from_secs(1);
/// How long answers are awaited after the client finished sending.
const DRAIN: Duration = Duration::from_secs(10);

/// The gate and the draft audit events of the requests it forwarded, by gateway id.
struct State {
    gate: Gate,
    drafts: HashMap<u64, AuditEvent>,
    /// The limits on calls at once under which each request waiting for its answer holds
    /// a place (a lease in the cluster), given back when it ends.
    leases: HashMap<u64, Vec<Counter>>,
}

struct CachedPolicy {
    epoch: u64,
    at: Instant,
    book: Rulebook,
}

/// What a session's steps are decided with: the caller's compiled roles and the app's
/// tool-definition pins.
#[derive(Clone)]
struct Rulebook {
    policy: Arc<Policy>,
    pins: Arc<PinBook>,
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
    /// The key of the caller's compiled policy among the agent's shared ones: their roles
    /// and traits.
    policy_key: String,
    /// The key of the app's pins among the agent's shared ones.
    pins_key: String,
    /// The hash of the definition this session's server last offered, by tool name.
    seen: Mutex<HashMap<String, (String, bool)>>,
    /// Takes the secrets the server was given (its env, its headers) out of what it sends.
    scrub: std::sync::OnceLock<crate::secrets::Scrubber>,
    /// Resolves, with a reason, when the session must end as a lock ends it (taken by the
    /// loop that moves its messages).
    cut: Mutex<Option<Cut>>,
}

/// The line that tells a client why its session ends.
fn note(why: &str) -> String {
    let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "error", "logger": "mcpgate", "data": why}});
    format!("{note}\n")
}

/// Why a session ends when the gateway stops.
const STOPPED: &str =
    "the gateway is shutting down; the session was ended (reconnect once it is back)";

/// A signal that ends a session, with its reason.
type Cut = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// The upstream of a session.
enum Running {
    Stdio(Box<Upstream>),
    Http(HttpUpstream),
}

/// Why a session ended.
enum End {
    /// The client closed its side.
    Client,
    /// The upstream closed its output (it exited): how, and its last words.
    Upstream(String),
    /// The gateway ended it (a lock).
    Cut(String),
    /// The gateway is stopping.
    Stopped,
    /// The client finished sending, and answers it waited for did not come in time.
    Unanswered,
}

impl Agent {
    /// Serves one client session until either side closes. The reader is the stream's own
    /// buffer (a tunnel stream's frames, the proxy's TLS reader): no second one per session.
    pub async fn serve<R, W>(&self, conn: ClientConn, reader: R, writer: W)
    where
        R: AsyncBufRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        self.serve_until(conn, reader, writer, std::future::pending())
            .await;
    }

    /// [`Agent::serve`], and when `cut` resolves the session ends as a lock ends it, with
    /// its reason: the client is told, what waits is answered and audited, the end is
    /// audited (the proxy's signal that the agent lost its standing, for sessions it hands
    /// over in memory).
    pub async fn serve_until<R, W, C>(&self, conn: ClientConn, mut reader: R, writer: W, cut: C)
    where
        R: AsyncBufRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
        C: std::future::Future<Output = String> + Send + 'static,
    {
        let _serving = self.serving();
        let writer = tokio::sync::Mutex::new(writer);
        if self.stopping() {
            // Nothing is started for a session that arrives as the gateway stops.
            let _ = write(&writer, note(STOPPED).as_bytes()).await;
        } else {
            self.serve_inner(conn, &mut reader, &writer, Box::pin(cut))
                .await;
        }
        // Close the client's stream cleanly (TLS close_notify) whatever happened.
        let _ = writer.lock().await.shutdown().await;
    }

    async fn serve_inner<R, W>(
        &self,
        conn: ClientConn,
        reader: &mut R,
        writer: &tokio::sync::Mutex<W>,
        cut: Cut,
    ) where
        R: AsyncBufRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let max = self.limits.max_bytes;
        let info = match self.verify(&conn.certs) {
            Ok(info) => info,
            Err(e) => {
                refuse_all(self, reader, writer, &format!("access denied: {e}"), max).await;
                return;
            }
        };
        let app = match self.app(&conn.app).await {
            Ok(Some(app)) => app,
            Ok(None) => {
                let message = format!("app {:?} not found", conn.app);
                refuse_all(self, reader, writer, &message, max).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "app lookup failed");
                refuse_all(
                    self,
                    reader,
                    writer,
                    "the gateway cannot read its apps",
                    max,
                )
                .await;
                return;
            }
        };
        let upstream_limits = mcpgate_mcp::Limits {
            max_bytes: UPSTREAM_MAX,
            max_depth: 128,
        };
        // Sessions share a compiled policy only under exactly the same roles and traits
        // (a key that cannot be made shares nothing).
        let policy_key = serde_json::to_string(&(&info.claims.roles, &info.claims.traits))
            .unwrap_or_else(|_| mcpgate_types::audit::random_id());
        let pins_key = format!("{}\n{:?}", app.metadata.name, app.spec.pin);
        let session = Session {
            agent: self,
            labels: app.metadata.labels.clone(),
            app,
            info,
            id: conn
                .session
                .clone()
                .filter(|s| !s.is_empty() && s.len() <= 64)
                .unwrap_or_else(mcpgate_types::audit::random_id),
            addr: conn.addr.to_string(),
            state: Mutex::new(State {
                gate: Gate::new(self.limits, upstream_limits),
                drafts: HashMap::new(),
                leases: HashMap::new(),
            }),
            policy: Mutex::new(None),
            policy_key,
            pins_key,
            seen: Mutex::new(HashMap::new()),
            scrub: std::sync::OnceLock::new(),
            cut: Mutex::new(Some(cut)),
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
    agent: &Agent,
    reader: &mut R,
    writer: &tokio::sync::Mutex<W>,
    message: &str,
    max: usize,
) where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    while let Some(Ok(Line::Ok | Line::TooLong)) =
        agent.unless_stopped(read_line(reader, &mut buf, max)).await
    {
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
    if agent.stopping() {
        let _ = write(writer, note(STOPPED).as_bytes()).await;
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

/// The rules a step is decided with: the caller's roles on this app, or nothing at all when
/// they cannot be evaluated (fail closed).
enum SessionRules<'p> {
    App {
        roles: AppRules<'p>,
        pins: &'p PinBook,
        seen: &'p Mutex<HashMap<String, (String, bool)>>,
        /// Tools offered that the cluster has not seen yet, to report after the step.
        report: Mutex<Vec<Value>>,
    },
    Nothing(String),
}

impl SessionRules<'_> {
    /// Judges a definition the server offers (a tool, or its instructions) against the
    /// pins, keeping what the cluster has not seen for the report.
    fn judge(&self, definition: &Value) -> Result<crate::pins::Offered, String> {
        match self {
            SessionRules::App { pins, report, .. } => {
                let o = pins
                    .offered(definition)
                    .ok_or("a definition without a name")?;
                if o.report {
                    report
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(definition.clone());
                }
                Ok(o)
            }
            SessionRules::Nothing(reason) => Err(reason.clone()),
        }
    }

    fn take_report(&self) -> Vec<Value> {
        match self {
            SessionRules::App { report, .. } => {
                std::mem::take(&mut *report.lock().unwrap_or_else(|p| p.into_inner()))
            }
            SessionRules::Nothing(_) => Vec::new(),
        }
    }
}

impl Rules for SessionRules<'_> {
    fn decide(&self, subject: Subject, value: &str) -> Result<(), String> {
        match self {
            SessionRules::App { roles, .. } => roles.decide(subject, value),
            // Allows nothing: fail closed.
            SessionRules::Nothing(reason) => Err(reason.clone()),
        }
    }

    fn decide_request(
        &self,
        subject: Subject,
        value: &str,
        arguments: Option<&RawValue>,
    ) -> Result<Option<String>, String> {
        match self {
            SessionRules::App {
                roles, pins, seen, ..
            } => {
                let would = roles.decide_request(subject, value, arguments)?;
                if subject == Subject::Tool {
                    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    pins.callable(
                        value,
                        seen.get(value).map(|(h, hidden)| (h.as_str(), *hidden)),
                    )?;
                }
                Ok(would)
            }
            SessionRules::Nothing(reason) => Err(reason.clone()),
        }
    }

    fn offered_tool(&self, tool: &Value) -> Result<(), String> {
        let o = self.judge(tool)?;
        if let SessionRules::App { seen, .. } = self {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(o.name, (o.hash, o.hidden));
        }
        o.verdict
    }

    fn offered_instructions(&self, text: &str) -> Result<(), String> {
        self.judge(&mcpgate_types::pins::instructions(text))?
            .verdict
    }
}

impl Session<'_> {
    fn claims(&self) -> &Claims {
        &self.info.claims
    }

    fn app_name(&self) -> &str {
        self.app.metadata.name.as_str()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rules a step is decided with, from the policy as it could be read now.
    fn rules<'p>(&'p self, book: &'p Result<Rulebook, String>) -> SessionRules<'p> {
        match book {
            Ok(b) => SessionRules::App {
                roles: AppRules {
                    policy: &b.policy,
                    labels: &self.labels,
                },
                pins: &b.pins,
                seen: &self.seen,
                report: Mutex::new(Vec::new()),
            },
            Err(e) => SessionRules::Nothing(format!("roles cannot be evaluated: {e}")),
        }
    }

    fn strict(&self) -> bool {
        self.app.spec.pin == mcpgate_types::resource::PinMode::Strict
    }

    /// The caller's policy and the app's pins now: reloaded when they changed in this
    /// process, or at least every [`POLICY_MAX_AGE`].
    async fn policy(&self) -> Result<Rulebook, String> {
        let epoch = self.agent.cluster.epoch();
        if let Some(c) = self
            .policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && c.epoch == epoch
            && c.at.elapsed() < POLICY_MAX_AGE
        {
            return Ok(c.book.clone());
        }
        let agent = self.agent;
        let (policy, policy_at) = agent
            .policies
            .get_or_read(&self.policy_key, epoch, POLICY_MAX_AGE, || async {
                let roles = agent.cluster.roles(&self.claims().roles).await?;
                Policy::compile(&roles, &self.claims().traits).map_err(|e| e.to_string())
            })
            .await?;
        let (pins, pins_at) = agent
            .pin_books
            .get_or_read(&self.pins_key, epoch, POLICY_MAX_AGE, || async {
                let pins = agent
                    .cluster
                    .pins(self.app_name())
                    .await
                    .map_err(|e| format!("the app's tool pins cannot be read: {e}"))?;
                Ok(PinBook::new(self.app_name(), pins, self.strict()))
            })
            .await?;
        let book = Rulebook { policy, pins };
        // As old as the older of the two: never kept longer than the limit from its read.
        self.remember(epoch, policy_at.min(pins_at), book.clone());
        Ok(book)
    }

    fn remember(&self, epoch: u64, at: Instant, book: Rulebook) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(CachedPolicy { epoch, at, book });
    }

    /// Reports tools the cluster has not seen; the pins it answers with apply at once.
    /// Returns the pins to judge the catalog's entries with.
    async fn report_tools(&self, book: &Rulebook, tools: Vec<Value>) -> Arc<PinBook> {
        let epoch = self.agent.cluster.epoch();
        match self
            .agent
            .cluster
            .tools_seen(self.app_name(), self.strict(), tools)
            .await
        {
            Ok(pins) => {
                let pins = Arc::new(PinBook::new(self.app_name(), pins, self.strict()));
                self.agent
                    .pin_books
                    .put(&self.pins_key, epoch, Instant::now(), pins.clone());
                // The roles are as old as they were: the new pins do not renew them.
                let at = self
                    .policy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map_or_else(Instant::now, |c| c.at);
                self.remember(
                    epoch,
                    at,
                    Rulebook {
                        policy: book.policy.clone(),
                        pins: pins.clone(),
                    },
                );
                pins
            }
            Err(e) => {
                tracing::warn!(app = self.app_name(), error = %e, "cannot report the tools the server offers");
                book.pins.clone()
            }
        }
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
        fields.insert("agent".into(), Value::from(self.agent.name.as_str()));
        fields.extend(extra);
        let cluster = &self.agent.cluster;
        AuditEvent::new(
            cluster.name(),
            cluster.clock().now(),
            (kind, code),
            self.claims(),
            success,
            fields,
        )
    }

    async fn emit(&self, ev: AuditEvent) {
        if let Err(e) = self.agent.journal.record(std::slice::from_ref(&ev)).await {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    async fn run<R, W>(&self, reader: &mut R, writer: &tokio::sync::Mutex<W>)
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // A locked identity starts nothing.
        if let Some(reason) = self.lock_reason().await {
            self.refuse_session(
                reader,
                writer,
                code::INVALID_PARAMS,
                &format!("access denied: {reason}"),
            )
            .await;
            return;
        }
        // An app the roles cannot reach: every request is refused and audited; nothing starts.
        let app_denied = match self.policy().await {
            Ok(b) => match b.policy.app(&self.labels) {
                AppDecision::Allow { .. } => None,
                AppDecision::Deny(reason) => Some(reason.to_string()),
            },
            Err(e) => Some(format!("roles cannot be evaluated: {e}")),
        };
        if let Some(reason) = app_denied {
            self.refuse_session(
                reader,
                writer,
                code::INVALID_PARAMS,
                &format!("access denied: app {:?}: {reason}", self.app_name()),
            )
            .await;
            return;
        }
        let started = if self.app.spec.uri.starts_with("mcp+stdio://") {
            match self.app.spec.mcp.as_ref() {
                Some(cmd) => {
                    Upstream::start(self.app_name(), cmd).map(|u| Running::Stdio(Box::new(u)))
                }
                None => Err(StartError::Config("a stdio app needs mcp.command".into())),
            }
        } else {
            HttpUpstream::start(
                &self.app,
                self.agent.cluster.clone(),
                &self.id,
                UPSTREAM_MAX,
            )
            .map(Running::Http)
        };
        let mut upstream = match started {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(app = self.app_name(), error = %e, "upstream did not start");
                let verb = if self.app.spec.uri.starts_with("mcp+stdio://") {
                    "could not be started"
                } else {
                    "cannot be used as configured"
                };
                self.refuse_session(
                    reader,
                    writer,
                    code::INTERNAL_ERROR,
                    &format!("the MCP server of app {:?} {verb}: {e}", self.app_name()),
                )
                .await;
                return;
            }
        };
        let end = match &mut upstream {
            Running::Stdio(u) => {
                let _ = self.scrub.set(u.scrubber());
                let mut up_out = BufReader::with_capacity(UPSTREAM_BUFFER, u.take_stdout());
                self.pump(reader, writer, &mut u.take_stdin(), &mut up_out)
                    .await
            }
            Running::Http(u) => {
                let _ = self.scrub.set(u.scrubber());
                let (up_out, mut up_in) = tokio::io::split(u.take_io());
                let mut up_out = BufReader::with_capacity(UPSTREAM_BUFFER, up_out);
                self.pump(reader, writer, &mut up_in, &mut up_out).await
            }
        };
        let end = match end {
            End::Upstream(_) => {
                let report = match &mut upstream {
                    Running::Stdio(u) => u.exit_report(Duration::from_millis(500)).await,
                    Running::Http(u) => u.exit_report(),
                };
                tracing::warn!(app = self.app_name(), session = %self.id, "the MCP server {report}");
                End::Upstream(report)
            }
            other => other,
        };
        // The client hears first and is let go; the server then gets its grace period.
        self.end(writer, end).await;
        let _ = writer.lock().await.shutdown().await;
        match upstream {
            Running::Stdio(u) => u.stop().await,
            Running::Http(u) => u.stop().await,
        }
    }

    /// Moves messages both ways until the session ends, and says why it did.
    async fn pump<R, W, UI, UO>(
        &self,
        reader: &mut R,
        writer: &tokio::sync::Mutex<W>,
        up_in: &mut UI,
        up_out: &mut BufReader<UO>,
    ) -> End
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
        UI: AsyncWrite + Unpin,
        UO: AsyncRead + Unpin,
    {
        let answers = self.upstream_loop(up_out, writer);
        let locks = self.watch_locks();
        let taken = self.cut.lock().unwrap_or_else(|p| p.into_inner()).take();
        let cut = async move {
            match taken {
                Some(cut) => cut.await,
                None => std::future::pending().await,
            }
        };
        let stopped = self.agent.stopped();
        tokio::pin!(answers, locks, cut, stopped);
        let end = tokio::select! {
            end = self.client_loop(reader, writer, up_in) => end,
            end = &mut answers => end,
            reason = &mut locks => End::Cut(reason),
            reason = &mut cut => End::Cut(reason),
            () = &mut stopped => End::Stopped,
        };
        // A client that finished sending (`printf '...' | mcpgate mcp connect`) still
        // gets the answers it waits for, for a while; the server's input stays open.
        if matches!(end, End::Client) && self.state().gate.in_flight() > 0 {
            let drained = async {
                while self.state().gate.in_flight() > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::select! {
                _ = drained => End::Client,
                end = &mut answers => end,
                reason = &mut locks => End::Cut(reason),
                reason = &mut cut => End::Cut(reason),
                () = &mut stopped => End::Stopped,
                _ = tokio::time::sleep(DRAIN) => End::Unanswered,
            }
        } else {
            end
        }
    }

    /// Why this identity is locked now, if it is (a lock that cannot be read counts as one:
    /// fail closed).
    async fn lock_reason(&self) -> Option<String> {
        let locks = self.agent.cluster.locks().await;
        self.locked_by(locks.as_deref())
    }

    /// Why one of `locks` bans this identity, if one does.
    fn locked_by(
        &self,
        locks: Result<&[mcpgate_types::resource::Lock], &String>,
    ) -> Option<String> {
        let now = mcpgate_types::clock::unix_secs(self.agent.cluster.clock().now());
        let c = self.claims();
        match locks {
            Ok(locks) => locks
                .iter()
                .find(|l| l.applies(c.kind, &c.name, &c.roles, now, Some(self.info.issued())))
                .map(|lock| format!("{} is locked: {}", lock.target, lock.message)),
            Err(e) => Some(format!("locks cannot be checked: {e}")),
        }
    }

    /// Returns once the identity is locked, checked each time the agent's view of the
    /// locks changes.
    async fn watch_locks(&self) -> String {
        let mut view = self.agent.locks.watch(&self.agent.cluster);
        loop {
            if view.changed().await.is_err() {
                return "locks cannot be checked: the agent is stopping".into();
            }
            let locks = view.borrow_and_update().clone();
            if let Some(reason) = self.locked_by(locks.as_deref().map(Vec::as_slice)) {
                return reason;
            }
        }
    }

    /// Counts a call against the caller's `mcp_limits` (calls at once and calls per minute,
    /// both in the cluster's store, so they hold across agents); `Err` says which limit it
    /// would exceed and when to retry.
    async fn limit(
        &self,
        policy: &Policy,
        gid: u64,
        env: &Envelope<'_>,
        subject: Option<&(Subject, String)>,
    ) -> Result<(), String> {
        if !matches!(
            env.method,
            Some("tools/call" | "resources/read" | "prompts/get")
        ) {
            return Ok(());
        }
        let tool = subject
            .filter(|(k, _)| *k == Subject::Tool)
            .map(|(_, t)| t.as_str());
        let app = self.app_name();
        let of = |scope: &str| match scope {
            "app" => format!("on app {app}"),
            "tool" => format!("of tool {:?} on app {app}", tool.unwrap_or_default()),
            _ => format!("by {}", self.claims().name),
        };
        let mut counters = Vec::new();
        for b in policy.limits(app, tool) {
            let scope = match b.scope {
                Scope::Identity => "identity",
                Scope::App => "app",
                Scope::Tool => "tool",
            };
            let counter = |(limit, role): (u32, &str), concurrent| Counter {
                scope: scope.into(),
                tool: tool.filter(|_| b.scope == Scope::Tool).map(str::to_string),
                limit,
                role: role.to_string(),
                concurrent,
            };
            counters.extend(b.concurrent.map(|l| counter(l, true)));
            counters.extend(b.per_minute.map(|l| counter(l, false)));
        }
        if counters.is_empty() {
            return Ok(());
        }
        let call = gid.to_string();
        match self
            .agent
            .cluster
            .count_call(&self.id, &call, counters.clone())
            .await
        {
            Ok(None) => {}
            Ok(Some(l)) if l.counter.concurrent => {
                return Err(format!(
                    "concurrency limit reached: at most {} calls {} at once (role {}); retry when one of them has been answered",
                    l.counter.limit,
                    of(&l.counter.scope),
                    l.counter.role
                ));
            }
            Ok(Some(l)) => {
                return Err(format!(
                    "rate limit reached: at most {} calls per minute {} (role {}); retry in {} s",
                    l.counter.limit,
                    of(&l.counter.scope),
                    l.counter.role,
                    l.retry_after
                ));
            }
            // Fail closed: a limit that cannot be counted is not skipped.
            Err(e) => return Err(format!("rate limits cannot be checked now: {e}")),
        }
        counters.retain(|c| c.concurrent);
        if !counters.is_empty() {
            self.state().leases.insert(gid, counters);
        }
        Ok(())
    }

    /// Gives back the places request `gid` held under limits on calls at once.
    async fn release(&self, gid: u64) {
        let held = self.state().leases.remove(&gid);
        if let Some(counters) = held
            && let Err(e) = self
                .agent
                .cluster
                .release_call(&self.id, &gid.to_string(), counters)
                .await
        {
            tracing::warn!(session = %self.id, error = %e, "cannot give back a call's place under a limit (it expires)");
        }
    }

    /// Refuses every request of a session that may not proceed, auditing each.
    async fn refuse_session<R, W>(
        &self,
        reader: &mut R,
        writer: &tokio::sync::Mutex<W>,
        code: i64,
        message: &str,
    ) where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        while let Some(Ok(Line::Ok | Line::TooLong)) = self
            .agent
            .unless_stopped(read_line(reader, &mut buf, self.agent.limits.max_bytes))
            .await
        {
            let Ok(env) = mcpgate_mcp::parse(&buf, &self.agent.limits) else {
                continue;
            };
            if env.kind != Kind::Request {
                continue;
            }
            let id = env.id.map(|i| i.get());
            self.emit(self.denied_event(&env, None, message)).await;
            if write(writer, &error_line(id, code, message)).await.is_err() {
                return;
            }
        }
        if self.agent.stopping() {
            let _ = write(writer, note(STOPPED).as_bytes()).await;
        }
    }

    /// The event of a request or notification the gateway refused.
    fn denied_event(
        &self,
        env: &Envelope<'_>,
        subject: Option<&(Subject, String)>,
        reason: &str,
    ) -> AuditEvent {
        let mut f = Map::new();
        f.insert("method".into(), Value::from(env.method.unwrap_or_default()));
        if let Some(id) = env.id {
            f.insert("jsonrpc_id".into(), Value::from(id.get()));
        }
        insert_subject(&mut f, subject);
        f.insert(
            "params".into(),
            audit_params(env.params.map(|p| p.get()), self.agent.redaction_key()),
        );
        f.insert("decision".into(), Value::from("deny"));
        f.insert("outcome".into(), Value::from("denied"));
        f.insert("reason".into(), Value::from(reason));
        let code = match env.kind {
            Kind::Notification => codes::MCP_NOTIFICATION_DENIED,
            _ => codes::MCP_REQUEST_DENIED,
        };
        self.event(code, false, f)
    }

    /// The draft event of an allowed request, completed when its answer comes.
    /// `would_deny`: why a role in dry-run mode would have denied it.
    fn request_event(
        &self,
        env: &Envelope<'_>,
        subject: Option<&(Subject, String)>,
        would_deny: Option<String>,
    ) -> AuditEvent {
        let mut f = Map::new();
        f.insert("method".into(), Value::from(env.method.unwrap_or_default()));
        f.insert(
            "jsonrpc_id".into(),
            Value::from(env.id.map(|i| i.get()).unwrap_or("null")),
        );
        insert_subject(&mut f, subject);
        f.insert(
            "params".into(),
            audit_params(env.params.map(|p| p.get()), self.agent.redaction_key()),
        );
        match would_deny {
            Some(reason) => {
                f.insert("decision".into(), Value::from("would_deny"));
                f.insert("reason".into(), Value::from(reason));
            }
            None => {
                f.insert("decision".into(), Value::from("allow"));
            }
        }
        self.event(codes::MCP_REQUEST, true, f)
    }

    /// Fills in how a request ended: outcome, error, duration.
    fn finish(ev: &mut AuditEvent, outcome: &Outcome, duration: Duration) {
        let (code, outcome, error) = match outcome {
            Outcome::Ok => (codes::MCP_REQUEST, "ok", None),
            Outcome::ToolError => (
                codes::MCP_REQUEST_FAILED,
                "tool_error",
                Some("the tool reported an error"),
            ),
            Outcome::Error(message) => (codes::MCP_REQUEST_FAILED, "error", Some(message.as_str())),
        };
        ev.code = code.1.to_string();
        ev.success = error.is_none();
        ev.fields.insert("outcome".into(), Value::from(outcome));
        if let Some(e) = error {
            ev.fields.insert("error".into(), Value::from(e));
        }
        // To the microsecond: what is measured, without a binary fraction's noise digits.
        ev.fields.insert(
            "duration_ms".into(),
            Value::from(duration.as_micros() as f64 / 1000.0),
        );
    }

    async fn client_loop<R, W, U>(
        &self,
        reader: &mut R,
        writer: &tokio::sync::Mutex<W>,
        up: &mut U,
    ) -> End
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
        U: AsyncWrite + Unpin,
    {
        let limits = self.agent.limits;
        let mut buf = Vec::new();
        loop {
            match read_line(reader, &mut buf, limits.max_bytes).await {
                Ok(Line::Ok) => {}
                Ok(Line::TooLong) => {
                    let msg = format!("message larger than {} bytes", limits.max_bytes);
                    if write(writer, &error_line(None, code::INVALID_REQUEST, &msg))
                        .await
                        .is_err()
                    {
                        return End::Client;
                    }
                    continue;
                }
                Ok(Line::Eof) | Err(_) => return End::Client,
            }
            if !self.info.valid_at(self.agent.cluster.clock().now()) {
                let id = mcpgate_mcp::parse(&buf, &limits).ok().and_then(|e| e.id);
                let _ = write(
                    writer,
                    &error_line(
                        id.map(|i| i.get()),
                        code::INVALID_REQUEST,
                        "access denied: your certificate has expired; log in again",
                    ),
                )
                .await;
                return End::Client;
            }
            let book = self.policy().await;
            let rules = self.rules(&book);
            let step = self.state().gate.on_client(&buf, &rules, Instant::now());
            // Audit first: a request that must be durable is begun before it is forwarded.
            let mut verdict = step.verdict;
            let mut forwarded = None;
            match step.audit {
                Audit::None => {}
                Audit::Invalid { id, reason } => {
                    let mut f = Map::new();
                    if let Some(id) = id {
                        f.insert("jsonrpc_id".into(), Value::from(id));
                    }
                    f.insert("decision".into(), Value::from("deny"));
                    f.insert("outcome".into(), Value::from("invalid"));
                    f.insert("reason".into(), Value::from(reason));
                    // What was sent, redacted and size-capped like any parameters: the
                    // refused message is evidence too.
                    f.insert(
                        "message".into(),
                        audit_params(std::str::from_utf8(&buf).ok(), self.agent.redaction_key()),
                    );
                    self.emit(self.event(codes::MCP_REQUEST_DENIED, false, f))
                        .await;
                }
                Audit::Notification(env) => self.notified(&env).await,
                Audit::Cancelled { env, gid, request } => {
                    self.notified(&env).await;
                    // The request it cancels ends here for the client; the server may still
                    // be working on it (cancelling is advisory), so a place it holds under a
                    // limit on calls at once stays taken until the session ends.
                    let draft = self.state().drafts.remove(&gid);
                    if let Some(mut ev) = draft {
                        Self::finish(
                            &mut ev,
                            &Outcome::Error("cancelled by the client".into()),
                            request.started.elapsed(),
                        );
                        ev.fields.insert("outcome".into(), Value::from("cancelled"));
                        self.close(ev, request.durable).await;
                    }
                }
                Audit::Denied {
                    env,
                    subject,
                    reason,
                } => {
                    self.emit(self.denied_event(&env, subject.as_ref(), &reason))
                        .await;
                }
                Audit::Begin {
                    gid,
                    env,
                    subject,
                    durable,
                    quiet,
                    would_deny,
                } => {
                    let limited = match &book {
                        Ok(b) if b.policy.has_limits() => {
                            self.limit(&b.policy, gid, &env, subject.as_ref()).await
                        }
                        _ => Ok(()),
                    };
                    if let Err(message) = limited {
                        self.state().gate.abandon(gid);
                        verdict = Verdict::Answer(error_line(
                            env.id.map(|i| i.get()),
                            code::RATE_LIMITED,
                            &message,
                        ));
                        let mut ev = self.denied_event(&env, subject.as_ref(), &message);
                        ev.fields
                            .insert("outcome".into(), Value::from("rate_limited"));
                        self.emit(ev).await;
                    } else if !quiet || durable || would_deny.is_some() {
                        let ev = self.request_event(&env, subject.as_ref(), would_deny);
                        if durable && let Err(e) = self.agent.journal.begin(&ev).await {
                            // Fail closed: a request that cannot be recorded is not forwarded.
                            tracing::error!(error = %e, "audit log unavailable: refusing a request");
                            self.state().gate.abandon(gid);
                            self.release(gid).await;
                            verdict = Verdict::Answer(error_line(
                                env.id.map(|i| i.get()),
                                code::INTERNAL_ERROR,
                                "the audit log is unavailable: the request was not forwarded",
                            ));
                        } else {
                            self.state().drafts.insert(gid, ev);
                            forwarded = Some(gid);
                        }
                    } else {
                        forwarded = Some(gid);
                    }
                }
            }
            if let Some(gid) = forwarded {
                // From now on an answer to it is one.
                self.state().gate.confirm(gid);
            }
            let result = match verdict {
                Verdict::Forward(Out::Original) => {
                    buf.push(b'\n');
                    up.write_all(&buf).await
                }
                Verdict::Forward(Out::Bytes(bytes)) => up.write_all(&bytes).await,
                Verdict::Answer(line) => {
                    if write(writer, &line).await.is_err() {
                        return End::Client;
                    }
                    continue;
                }
                Verdict::Drop => continue,
            };
            if result.is_err() || up.flush().await.is_err() {
                // The server is gone: that, not the client, ends the session.
                return End::Upstream(String::new());
            }
        }
    }

    /// Moves the server's messages to the client until the server closes its output
    /// (`End::Upstream`) or the client cannot be written to (`End::Client`).
    async fn upstream_loop<U: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        up: &mut BufReader<U>,
        writer: &tokio::sync::Mutex<W>,
    ) -> End {
        let mut buf = Vec::new();
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
                Ok(Line::Eof) | Err(_) => return End::Upstream(String::new()),
            }
            if let Some(clean) = self.scrub.get().and_then(|s| s.scrub(&buf)) {
                buf = clean;
            }
            // Only list answers need the roles; everything else is decided without them.
            let book = self.policy().await;
            let rules = self.rules(&book);
            let step = self.state().gate.on_server(&buf, &rules, Instant::now());
            let report = rules.take_report();
            drop(rules);
            if let Some(started) = step.started {
                let mut f = Map::new();
                f.insert("client_info".into(), started.client_info);
                f.insert("server_info".into(), started.server_info);
                f.insert("protocol_version".into(), started.protocol_version);
                self.emit(self.event(codes::MCP_SESSION_START, true, f))
                    .await;
            }
            let reported = match &book {
                Ok(b) if !report.is_empty() => Some(self.report_tools(b, report).await),
                _ => None,
            };
            if let Some(tools) = &step.offered
                && let Ok(book) = &book
            {
                let pins = reported.unwrap_or_else(|| book.pins.clone());
                self.agent
                    .catalog
                    .offer(self.app_name(), &pins.admitted(tools));
            }
            if let Some(why) = step.dropped {
                tracing::warn!(app = self.app_name(), session = %self.id, "dropped {why}");
            }
            // A place held under a limit on calls at once is given back before the answer
            // goes out: a client that calls again on hearing it finds the place free.
            if let Some(done) = &step.done {
                self.release(done.gid).await;
            }
            // How it ended is in the journal before the client hears the answer: a crash
            // from here on keeps the outcome (one `write()`).
            let finished = step.done.map(|done| self.finished(done));
            let sent = match step.verdict {
                Verdict::Forward(Out::Original) => {
                    buf.push(b'\n');
                    write(writer, &buf).await
                }
                Verdict::Forward(Out::Bytes(bytes)) => write(writer, &bytes).await,
                Verdict::Answer(_) | Verdict::Drop => Ok(()),
            };
            // The answer went out first; its event is stored after (its lines in the
            // journal cover a crash in between) — also when the client has just gone: the
            // server did answer.
            match finished {
                Some(Finished::Journaled(answered)) => self.agent.journal.complete(answered).await,
                Some(Finished::Record(Some(ev))) => self.emit(ev).await,
                Some(Finished::Record(None)) | None => {}
            }
            if sent.is_err() {
                return End::Client;
            }
        }
    }

    /// Records a client notification (`mcp.notification`).
    async fn notified(&self, env: &Envelope<'_>) {
        let mut f = Map::new();
        f.insert("method".into(), Value::from(env.method.unwrap_or_default()));
        f.insert(
            "params".into(),
            audit_params(env.params.map(|p| p.get()), self.agent.redaction_key()),
        );
        self.emit(self.event(codes::MCP_NOTIFICATION, true, f))
            .await;
    }

    /// Ends a request's event: through the journal when its pending event was begun there.
    async fn close(&self, ev: AuditEvent, durable: bool) {
        if durable {
            let journal = &self.agent.journal;
            journal.complete(journal.answered(&ev)).await;
        } else {
            self.emit(ev).await;
        }
    }

    /// The event of how an answered request ended (its place under a limit is already
    /// given back), and where it goes: one begun in the journal has its final line
    /// appended there now.
    fn finished(&self, done: Done) -> Finished {
        let draft = self.state().drafts.remove(&done.gid);
        match draft {
            Some(mut ev) => {
                Self::finish(&mut ev, &done.outcome, done.duration);
                if done.request.durable {
                    Finished::Journaled(self.agent.journal.answered(&ev))
                } else {
                    Finished::Record(Some(ev))
                }
            }
            // A quiet request (ping, lists): only a failure is recorded.
            None => Finished::Record(match done.outcome {
                Outcome::Error(_) => {
                    let mut ev = self.pending_event(&done.request);
                    Self::finish(&mut ev, &done.outcome, done.duration);
                    Some(ev)
                }
                _ => None,
            }),
        }
    }

    /// The event of a request known only from the gate's table.
    fn pending_event(&self, p: &Pending) -> AuditEvent {
        let mut f = Map::new();
        f.insert("method".into(), Value::from(p.method.as_str()));
        f.insert("jsonrpc_id".into(), Value::from(p.client_id.as_str()));
        insert_subject(&mut f, p.subject.as_ref());
        f.insert("decision".into(), Value::from("allow"));
        self.event(codes::MCP_REQUEST, true, f)
    }

    /// Ends the session: every request still waiting gets an error answer and an event
    /// saying so, the session's calls are stored, then its end.
    async fn end<W: AsyncWrite + Unpin>(&self, writer: &tokio::sync::Mutex<W>, end: End) {
        let why = match &end {
            End::Client => "the client closed the session".to_string(),
            End::Upstream(report) => {
                format!("the MCP server of app {:?} {report}", self.app_name())
            }
            End::Cut(reason) => format!("access denied: {reason}; the session was ended"),
            End::Stopped => STOPPED.to_string(),
            End::Unanswered => format!(
                "the client finished sending and the MCP server of app {:?} did not answer within {}s",
                self.app_name(),
                DRAIN.as_secs()
            ),
        };
        if !matches!(end, End::Client) {
            // The client hears why first (a client may stop reading once its requests are
            // answered); the bridge answers what it still waits for with it.
            let _ = write(writer, note(&why).as_bytes()).await;
        }
        let (left, mut drafts) = {
            let mut st = self.state();
            let left = st.gate.drain(&why);
            (left, std::mem::take(&mut st.drafts))
        };
        for (gid, p, line) in left {
            let _ = write(writer, &line).await;
            let mut ev = drafts
                .remove(&gid)
                .unwrap_or_else(|| self.pending_event(&p));
            Self::finish(
                &mut ev,
                &Outcome::Error(format!("the session ended before the answer: {why}")),
                p.started.elapsed(),
            );
            ev.fields
                .insert("outcome".into(), Value::from("unanswered"));
            let stored = if p.durable {
                self.agent.journal.complete_now(ev).await
            } else {
                self.agent.journal.record(std::slice::from_ref(&ev)).await
            };
            if let Err(e) = stored {
                tracing::error!(error = %e, "audit write failed");
            }
        }
        // Places held under limits on calls at once (cancelled calls' too) are given back.
        let held: Vec<u64> = self.state().leases.keys().copied().collect();
        for gid in held {
            self.release(gid).await;
        }
        // The session's calls are in the audit log before its end is.
        self.agent.journal.flush().await;
        let mut f = Map::new();
        let code = match end {
            End::Cut(reason) => {
                f.insert("reason".into(), Value::from(reason));
                codes::MCP_SESSION_TERMINATED
            }
            End::Stopped => {
                f.insert("reason".into(), Value::from(STOPPED));
                codes::MCP_SESSION_TERMINATED
            }
            End::Upstream(_) => {
                f.insert("reason".into(), Value::from(why));
                codes::MCP_SESSION_FAILED
            }
            End::Unanswered => {
                f.insert("reason".into(), Value::from(why));
                codes::MCP_SESSION_END
            }
            End::Client => codes::MCP_SESSION_END,
        };
        self.emit(self.event(code, code == codes::MCP_SESSION_END, f))
            .await;
    }
}

/// Names what a request is about in its event: `tool`, `resource` or `prompt`.
/// How an answered request's event is stored.
enum Finished {
    /// Begun in the journal, its final line written: the batch writer's.
    Journaled(crate::journal::Answered),
    /// Recorded as it is (a quiet request's failure), or not at all.
    Record(Option<AuditEvent>),
}

fn insert_subject(f: &mut Map<String, Value>, subject: Option<&(Subject, String)>) {
    if let Some((kind, value)) = subject {
        f.insert(kind.noun().into(), Value::from(value.as_str()));
    }
}

//! The gate: every message of one MCP session, in both directions, decided without I/O.
//!
//! The session shell reads a message, hands it to [`Gate::on_client`] or [`Gate::on_server`]
//! with the caller's [`Rules`] as they are now and the time, and does what the returned
//! [`Step`] says. The gate owns the tables of pending requests:
//!
//! - Every client request that is forwarded gets an id of the gateway's own (1, 2, 3 …), and
//!   the answer is mapped back to the client's id as the client wrote it. No spelling of an
//!   id (`-0`, `"\u0061"`, a reused id) can make an answer match the wrong request, so a
//!   filtered answer cannot arrive unfiltered.
//! - Requests from the server (sampling, elicitation, roots, ping) get gateway ids of their
//!   own too, in a second table; a client answer is forwarded only if it matches one.
//! - A message that a server could act on and that is not a well-formed request of an allowed
//!   tool, resource or prompt is never forwarded: request methods sent as notifications, ids
//!   already pending, answers to nothing.
//!
//! What is allowed is decided by [`Rules`] (in the agent: the caller's compiled roles and the
//! app's labels), the same function for the gate, the list filters and `mcp ls`.

use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use mcpgate_policy::{Arguments, Decision, Policy, Subject};

use crate::answer::error_line;
use crate::code;
use crate::envelope::{self, Envelope, EnvelopeError, Kind, Limits, Reference};

/// What the caller may use on this app.
pub trait Rules {
    /// `Ok` if the tool, resource or prompt `value` is allowed, else why not.
    fn decide(&self, subject: Subject, value: &str) -> Result<(), String>;

    /// The decision about one request: `arguments` are a `tools/call`'s (argument rules
    /// apply to them). `Ok(None)`: allowed; `Ok(Some(why))`: allowed, but a role in dry-run
    /// mode would have denied it, for the record; `Err(why)`: denied.
    fn decide_request(
        &self,
        subject: Subject,
        value: &str,
        arguments: Option<&RawValue>,
    ) -> Result<Option<String>, String>;

    /// Whether a `tools/list` entry (its whole definition) may be shown, beyond its name:
    /// tool-definition pins hide a definition that changed since it was approved.
    fn offered_tool(&self, tool: &Value) -> Result<(), String>;

    /// Whether the `instructions` of the server's handshake answer may reach the client
    /// (pinned like a tool's definition); withheld when not.
    fn offered_instructions(&self, text: &str) -> Result<(), String>;
}

/// A compiled role set applied to one app.
pub struct AppRules<'a> {
    pub policy: &'a Policy,
    pub labels: &'a std::collections::BTreeMap<String, String>,
}

impl Rules for AppRules<'_> {
    fn decide(&self, subject: Subject, value: &str) -> Result<(), String> {
        match self.policy.decide(self.labels, subject, value) {
            Decision::Allow { .. } => Ok(()),
            Decision::Deny(reason) => Err(reason.to_string()),
        }
    }

    fn decide_request(
        &self,
        subject: Subject,
        value: &str,
        arguments: Option<&RawValue>,
    ) -> Result<Option<String>, String> {
        // Arguments are read only when some role has rules for them.
        let parsed;
        let args = if subject == Subject::Tool && self.policy.has_argument_rules() {
            parsed = Arguments::parse(arguments.map(RawValue::get))
                .map_err(|e| format!("its arguments cannot be checked: {e}"))?;
            Some(&parsed)
        } else {
            None
        };
        let d = self.policy.decide_call(self.labels, subject, value, args);
        match d.decision {
            Decision::Allow { .. } => Ok(d.would_deny.map(|r| r.to_string())),
            Decision::Deny(reason) => Err(reason.to_string()),
        }
    }

    /// Roles judge names only.
    fn offered_tool(&self, _: &Value) -> Result<(), String> {
        Ok(())
    }

    fn offered_instructions(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Requests one session may have waiting for the server; more are refused (memory bound).
pub const MAX_IN_FLIGHT: usize = 1024;

/// Methods whose successful answers are not audited (they change nothing and are frequent).
const QUIET: [&str; 5] = [
    "ping",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
];

/// What the shell sends on.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// The message as it was read (the shell adds the newline).
    Original,
    /// A rewritten message, with its newline.
    Bytes(Vec<u8>),
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it on to the other side.
    Forward(Out),
    /// Send this line back to the side it came from; forward nothing.
    Answer(Vec<u8>),
    /// Forward nothing, answer nothing.
    Drop,
}

/// What to record about a client message.
#[derive(Debug)]
pub enum Audit<'m> {
    /// Nothing (pings, lists, answers to the server, unparseable bytes).
    None,
    /// An allowed request, forwarded under gateway id `gid`. When `durable`, its event must be
    /// stored before the message is forwarded; if that fails, call [`Gate::abandon`] and
    /// answer the client with an error instead. `subject` is the tool, resource or prompt.
    /// A `quiet` request (ping, lists) is recorded only if it fails.
    Begin {
        gid: u64,
        env: Envelope<'m>,
        subject: Option<(Subject, String)>,
        durable: bool,
        quiet: bool,
        /// Allowed, but a role in dry-run mode would have denied it: why.
        would_deny: Option<String>,
    },
    /// A notification, forwarded.
    Notification(Envelope<'m>),
    /// The client cancelled request `gid` (forwarded, with the gateway's id): it is no
    /// longer pending, and its answer, if the server still sends one, is dropped.
    Cancelled {
        env: Envelope<'m>,
        gid: u64,
        request: Pending,
    },
    /// A message that could not be read as JSON-RPC: why, and its id if it had a readable
    /// one (raw JSON).
    Invalid { id: Option<String>, reason: String },
    /// A request or notification that was refused: why, and the tool it named, if any.
    Denied {
        env: Envelope<'m>,
        subject: Option<(Subject, String)>,
        reason: String,
    },
}

/// The gate's decision about one client message.
#[derive(Debug)]
pub struct Step<'m> {
    pub verdict: Verdict,
    pub audit: Audit<'m>,
}

/// A client request waiting for the server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The method, as the client sent it.
    pub method: String,
    /// The client's id, as raw JSON exactly as the client wrote it.
    pub client_id: String,
    /// The tool, resource or prompt it is about.
    pub subject: Option<(Subject, String)>,
    pub started: Instant,
    /// Whether its event was stored before forwarding.
    pub durable: bool,
    /// Set by [`Gate::confirm`] when the shell forwards it: an "answer" that comes before
    /// is not one (only a server guessing the next id could send it).
    confirmed: bool,
    filter: Filter,
    /// The client's id as the value it denotes (its key in the by-client table).
    key: IdKey,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A result.
    Ok,
    /// A `tools/call` result with `isError: true`.
    ToolError,
    /// A JSON-RPC error, with its message.
    Error(String),
}

/// A request answered by the server.
#[derive(Debug)]
pub struct Done {
    pub gid: u64,
    pub request: Pending,
    pub outcome: Outcome,
    pub duration: Duration,
}

/// What the first `initialize` (or `server/discover`) exchange said: the session's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub client_info: Value,
    pub server_info: Value,
    pub protocol_version: Value,
}

/// The gate's decision about one server message.
#[derive(Debug)]
pub struct ServerStep {
    pub verdict: Verdict,
    /// The client request this message answers.
    pub done: Option<Done>,
    /// Set once, when the session's first handshake is answered.
    pub started: Option<Started>,
    /// Why a message was dropped, for the log.
    pub dropped: Option<&'static str>,
    /// The tools a `tools/list` answer named, before filtering: what the server offers,
    /// for the agent's catalog (each caller sees it filtered by its own roles).
    pub offered: Option<Vec<Value>>,
}

/// Which answers the gateway rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    None,
    /// A list answer: `result.<list>` must be there; every list the gateway knows
    /// (tools, resources, templates, prompts) keeps only allowed entries.
    List(&'static str),
    /// The session handshake: its answer starts the session.
    Handshake,
}

/// A JSON-RPC id, compared as the JSON value it denotes (`-0` is `0`, `"\u0061"` is `"a"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdKey {
    Int(String),
    Str(String),
}

impl IdKey {
    fn of(raw: &RawValue) -> Option<IdKey> {
        let t = raw.get();
        if t.starts_with('"') {
            return envelope::string(raw).map(|s| IdKey::Str(s.into_owned()));
        }
        let (neg, digits) = match t.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, t),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = digits.trim_start_matches('0');
        Some(IdKey::Int(match (neg, digits.is_empty()) {
            (_, true) => "0".to_string(),
            (true, false) => format!("-{digits}"),
            (false, false) => digits.to_string(),
        }))
    }
}

/// A request from the server waiting for the client's answer.
#[derive(Debug)]
struct ServerPending {
    /// The server's id, raw.
    server_id: String,
    key: IdKey,
}

/// One session's gate.
#[derive(Debug)]
pub struct Gate {
    client_limits: Limits,
    server_limits: Limits,
    next: u64,
    pending: HashMap<u64, Pending>,
    /// Client ids of pending requests → gateway ids.
    by_client: HashMap<IdKey, u64>,
    next_server: u64,
    server_pending: HashMap<u64, ServerPending>,
    /// Server ids of its pending requests → gateway ids.
    by_server: HashMap<IdKey, u64>,
    client_info: Option<Value>,
    started: bool,
}

impl Gate {
    /// A gate for a new session; messages from the server may be larger and deeper.
    pub fn new(client_limits: Limits, server_limits: Limits) -> Gate {
        Gate {
            client_limits,
            server_limits,
            next: 1,
            pending: HashMap::new(),
            by_client: HashMap::new(),
            next_server: 1,
            server_pending: HashMap::new(),
            by_server: HashMap::new(),
            client_info: None,
            started: false,
        }
    }

    /// Requests waiting for the server.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Decides about one message from the client (one line, without its newline).
    pub fn on_client<'m>(&mut self, line: &'m [u8], rules: &dyn Rules, now: Instant) -> Step<'m> {
        let env = match envelope::parse(line, &self.client_limits) {
            Ok(env) => env,
            Err(e) => {
                return Step {
                    verdict: Verdict::Answer(refusal(&e)),
                    audit: Audit::Invalid {
                        id: e.id.clone(),
                        reason: e.message,
                    },
                };
            }
        };
        match env.kind {
            Kind::Request => self.client_request(line, env, rules, now),
            Kind::Notification => self.client_notification(line, env),
            Kind::Response => Step {
                verdict: self.client_response(line, &env),
                audit: Audit::None,
            },
        }
    }

    fn client_request<'m>(
        &mut self,
        line: &'m [u8],
        env: Envelope<'m>,
        rules: &dyn Rules,
        now: Instant,
    ) -> Step<'m> {
        let (Some(id), Some(method)) = (env.id, env.method) else {
            return invalid(env, "a request needs an id and a method");
        };
        let Some(key) = IdKey::of(id) else {
            return invalid(env, "\"id\" must be a string or an integer");
        };
        if self.by_client.contains_key(&key) {
            return deny(
                env,
                None,
                code::INVALID_REQUEST,
                "id already in use by a request waiting for its answer".into(),
            );
        }
        if self.pending.len() >= MAX_IN_FLIGHT {
            return deny(
                env,
                None,
                code::INTERNAL_ERROR,
                format!(
                    "more than {MAX_IN_FLIGHT} requests are waiting for the server; wait for answers"
                ),
            );
        }
        let subject = match subject_of(&env, method) {
            Ok(s) => s,
            Err(message) => return deny(env, None, code::INVALID_PARAMS, message),
        };
        let listened = match subscribed(&env, method) {
            Ok(uris) => uris,
            Err(message) => return deny(env, None, code::INVALID_PARAMS, message),
        };
        let mut would_deny = None;
        for uri in listened {
            match rules.decide_request(Subject::Resource, &uri, None) {
                Ok(would) => would_deny = would_deny.or(would),
                Err(reason) => {
                    let message =
                        format!("access denied: resource {uri:?} is not allowed ({reason})");
                    return deny(
                        env,
                        Some((Subject::Resource, uri)),
                        code::INVALID_PARAMS,
                        message,
                    );
                }
            }
        }
        if let Some((kind, value)) = &subject {
            let arguments = env.arguments.filter(|_| method == "tools/call");
            match rules.decide_request(*kind, value, arguments) {
                Ok(would) => would_deny = would_deny.or(would),
                Err(reason) => {
                    let message = format!(
                        "access denied: {} {value:?} is not allowed ({reason})",
                        kind.noun()
                    );
                    return deny(env, subject, code::INVALID_PARAMS, message);
                }
            }
        }
        let filter = match method {
            "tools/list" => Filter::List("tools"),
            "prompts/list" => Filter::List("prompts"),
            "resources/list" => Filter::List("resources"),
            "resources/templates/list" => Filter::List("resourceTemplates"),
            "initialize" | "server/discover" => Filter::Handshake,
            _ => Filter::None,
        };
        if method == "initialize" && self.client_info.is_none() {
            self.client_info = Some(
                env.params
                    .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
                    .and_then(|mut v| v.get_mut("clientInfo").map(Value::take))
                    .unwrap_or(Value::Null),
            );
        }
        let Some(bytes) = splice(line, id, &self.next.to_string()) else {
            return invalid(env, "the message cannot be forwarded");
        };
        let gid = self.next;
        self.next += 1;
        let durable = matches!(
            method,
            "tools/call"
                | "resources/read"
                | "resources/subscribe"
                | "subscriptions/listen"
                | "prompts/get"
                | "completion/complete"
        );
        let quiet = QUIET.contains(&method);
        self.by_client.insert(key.clone(), gid);
        self.pending.insert(
            gid,
            Pending {
                method: method.to_string(),
                client_id: id.get().to_string(),
                subject: subject.clone(),
                started: now,
                durable,
                confirmed: false,
                filter,
                key,
            },
        );
        Step {
            verdict: Verdict::Forward(Out::Bytes(bytes)),
            audit: Audit::Begin {
                gid,
                env,
                subject,
                durable,
                quiet,
                would_deny,
            },
        }
    }

    fn client_notification<'m>(&mut self, line: &'m [u8], env: Envelope<'m>) -> Step<'m> {
        let method = env.method.unwrap_or_default();
        if !method.starts_with("notifications/") {
            // A request method without an id: many servers would still act on it.
            return Step {
                verdict: Verdict::Drop,
                audit: Audit::Denied {
                    env,
                    subject: subject_of(&env, method).ok().flatten(),
                    reason: format!(
                        "{method:?} sent as a notification (without an id) is not forwarded"
                    ),
                },
            };
        }
        if method == "notifications/cancelled" {
            // Cancels name the client's id: map it to the gateway's, or drop it.
            let gid = env
                .request_id
                .and_then(IdKey::of)
                .and_then(|k| self.by_client.get(&k).copied());
            let rewritten = match (gid, env.request_id) {
                (Some(gid), Some(rid)) => splice(line, rid, &gid.to_string()),
                _ => None,
            };
            return match (rewritten, gid) {
                (Some(bytes), Some(gid)) => {
                    let request = self.pending.remove(&gid);
                    if let Some(r) = &request {
                        self.by_client.remove(&r.key);
                    }
                    Step {
                        verdict: Verdict::Forward(Out::Bytes(bytes)),
                        audit: match request {
                            Some(request) => Audit::Cancelled { env, gid, request },
                            None => Audit::Notification(env),
                        },
                    }
                }
                _ => Step {
                    verdict: Verdict::Drop,
                    audit: Audit::Denied {
                        env,
                        subject: None,
                        reason: "cancels no request waiting for an answer".into(),
                    },
                },
            };
        }
        Step {
            verdict: Verdict::Forward(Out::Original),
            audit: Audit::Notification(env),
        }
    }

    /// A client's answer to a server request: forwarded with the server's id, or dropped.
    fn client_response(&mut self, line: &[u8], env: &Envelope<'_>) -> Verdict {
        let Some(id) = env.id else {
            return Verdict::Drop;
        };
        let gid = match IdKey::of(id) {
            Some(IdKey::Int(n)) => n.parse::<u64>().ok(),
            _ => None,
        };
        let Some(sp) = gid.and_then(|g| self.server_pending.remove(&g)) else {
            return Verdict::Drop;
        };
        self.by_server.remove(&sp.key);
        match splice(line, id, &sp.server_id) {
            Some(bytes) => Verdict::Forward(Out::Bytes(bytes)),
            None => Verdict::Drop,
        }
    }

    /// Marks a request as forwarded: call it just before writing the forwarded bytes (after
    /// its audit event is begun). Answers are matched only to confirmed requests.
    pub fn confirm(&mut self, gid: u64) {
        if let Some(p) = self.pending.get_mut(&gid) {
            p.confirmed = true;
        }
    }

    /// Forgets a request whose event could not be stored: it was not forwarded.
    pub fn abandon(&mut self, gid: u64) -> Option<Pending> {
        let p = self.pending.remove(&gid)?;
        self.by_client.remove(&p.key);
        Some(p)
    }

    /// Decides about one message from the server (one line, without its newline).
    pub fn on_server(&mut self, line: &[u8], rules: &dyn Rules, now: Instant) -> ServerStep {
        let mut step = ServerStep {
            verdict: Verdict::Drop,
            done: None,
            started: None,
            dropped: None,
            offered: None,
        };
        let env = match envelope::parse(line, &self.server_limits) {
            Ok(env) => env,
            Err(_) => {
                step.dropped = Some("an invalid message from the server");
                return step;
            }
        };
        match env.kind {
            Kind::Response => self.server_response(line, &env, rules, now, &mut step),
            Kind::Request => self.server_request(line, &env, &mut step),
            Kind::Notification => self.server_notification(line, &env, rules, &mut step),
        }
        step
    }

    fn server_response(
        &mut self,
        line: &[u8],
        env: &Envelope<'_>,
        rules: &dyn Rules,
        now: Instant,
        step: &mut ServerStep,
    ) {
        let gid = match env.id.and_then(IdKey::of) {
            Some(IdKey::Int(n)) => n.parse::<u64>().ok(),
            _ => None,
        };
        let Some(request) = gid
            .filter(|g| self.pending.get(g).is_some_and(|p| p.confirmed))
            .and_then(|g| self.pending.remove(&g))
        else {
            step.dropped = Some("an answer to no pending request");
            return;
        };
        self.by_client.remove(&request.key);
        let outcome = match (env.error, env.result) {
            (Some(e), _) => Outcome::Error(
                fields::<ErrorObject>(e)
                    .and_then(|e| e.message)
                    .unwrap_or_else(|| "error".to_string()),
            ),
            (None, Some(r))
                if request.method == "tools/call"
                    && fields::<ToolResult>(r).is_some_and(|r| r.is_error == Some(true)) =>
            {
                Outcome::ToolError
            }
            _ => Outcome::Ok,
        };
        step.verdict = match (request.filter, env.result) {
            (Filter::List(list), Some(result)) => {
                let tree = serde_json::from_str::<Value>(result.get()).ok();
                if list == "tools" {
                    step.offered = tree
                        .as_ref()
                        .and_then(|v| v.get("tools")?.as_array().cloned());
                }
                match tree.and_then(|v| filter_lists(v, list, rules)) {
                    Some(filtered) => Verdict::Forward(Out::Bytes(
                        format!(
                            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":{filtered}}}\n",
                            request.client_id
                        )
                        .into_bytes(),
                    )),
                    // Fail closed: what cannot be filtered is not shown.
                    None => Verdict::Forward(Out::Bytes(error_line(
                        Some(&request.client_id),
                        code::INTERNAL_ERROR,
                        &format!("the server's {} answer cannot be filtered", request.method),
                    ))),
                }
            }
            (Filter::Handshake, Some(result)) => match withheld_instructions(result.get(), rules) {
                Some(result) => Verdict::Forward(Out::Bytes(
                    format!(
                        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":{result}}}\n",
                        request.client_id
                    )
                    .into_bytes(),
                )),
                None => match env.id.and_then(|id| splice(line, id, &request.client_id)) {
                    Some(bytes) => Verdict::Forward(Out::Bytes(bytes)),
                    None => Verdict::Drop,
                },
            },
            _ => match env.id.and_then(|id| splice(line, id, &request.client_id)) {
                Some(bytes) => Verdict::Forward(Out::Bytes(bytes)),
                None => Verdict::Drop,
            },
        };
        if request.filter == Filter::Handshake
            && !self.started
            && let Some(result) = env.result
        {
            self.started = true;
            let mut v = serde_json::from_str::<Value>(result.get()).unwrap_or(Value::Null);
            step.started = Some(Started {
                client_info: self.client_info.take().unwrap_or(Value::Null),
                server_info: v
                    .get_mut("serverInfo")
                    .map(Value::take)
                    .unwrap_or(Value::Null),
                protocol_version: v
                    .get_mut("protocolVersion")
                    .map(Value::take)
                    .unwrap_or(Value::Null),
            });
        }
        step.done = Some(Done {
            gid: gid.unwrap_or_default(),
            duration: now.saturating_duration_since(request.started),
            request,
            outcome,
        });
    }

    /// A request from the server to the client: forwarded under a gateway id.
    fn server_request(&mut self, line: &[u8], env: &Envelope<'_>, step: &mut ServerStep) {
        let Some((id, key)) = env.id.and_then(|id| IdKey::of(id).map(|k| (id, k))) else {
            step.dropped = Some("a server request without a usable id");
            return;
        };
        if self.by_server.contains_key(&key) || self.server_pending.len() >= MAX_IN_FLIGHT {
            step.dropped = Some("a server request with an id in use, or too many");
            return;
        }
        let gid = self.next_server;
        let Some(bytes) = splice(line, id, &gid.to_string()) else {
            step.dropped = Some("a server request that cannot be forwarded");
            return;
        };
        self.next_server += 1;
        self.by_server.insert(key.clone(), gid);
        self.server_pending.insert(
            gid,
            ServerPending {
                server_id: id.get().to_string(),
                key,
            },
        );
        step.verdict = Verdict::Forward(Out::Bytes(bytes));
    }

    fn server_notification(
        &mut self,
        line: &[u8],
        env: &Envelope<'_>,
        rules: &dyn Rules,
        step: &mut ServerStep,
    ) {
        match env.method.unwrap_or_default() {
            "notifications/cancelled" => {
                // The server cancels its own request to the client: map to the gateway's id.
                let gid = env
                    .request_id
                    .and_then(IdKey::of)
                    .and_then(|k| self.by_server.get(&k).copied());
                step.verdict = match (gid, env.request_id) {
                    (Some(gid), Some(rid)) => splice(line, rid, &gid.to_string())
                        .map(|b| Verdict::Forward(Out::Bytes(b)))
                        .unwrap_or(Verdict::Drop),
                    _ => Verdict::Drop,
                };
            }
            "notifications/message" if poses_as_gateway(env) => {
                step.dropped = Some("a server log message posing as the gateway's");
            }
            "notifications/resources/updated" => {
                // Only about resources the caller may read.
                let allowed = env
                    .uri
                    .and_then(envelope::string)
                    .is_some_and(|uri| rules.decide(Subject::Resource, &uri).is_ok());
                if allowed {
                    step.verdict = Verdict::Forward(Out::Original);
                } else {
                    step.dropped = Some("an update of a resource the caller may not read");
                }
            }
            _ => step.verdict = Verdict::Forward(Out::Original),
        }
    }

    /// Ends the session: every request still waiting, with the error line its client
    /// should get. Server requests are forgotten.
    pub fn drain(&mut self, message: &str) -> Vec<(u64, Pending, Vec<u8>)> {
        self.by_client.clear();
        self.by_server.clear();
        self.server_pending.clear();
        let mut out: Vec<(u64, Pending, Vec<u8>)> = self
            .pending
            .drain()
            .map(|(gid, p)| {
                let line = error_line(Some(&p.client_id), code::INTERNAL_ERROR, message);
                (gid, p, line)
            })
            .collect();
        out.sort_by_key(|(gid, _, _)| *gid);
        out
    }
}

/// Whether a `notifications/message` names the gateway's own logger, `mcpgate`: clients and
/// the bridge take those as the gateway's word (why a session ended).
fn poses_as_gateway(env: &Envelope<'_>) -> bool {
    env.params
        .and_then(fields::<LogParams>)
        .and_then(|p| p.logger)
        .is_some_and(|l| l == "mcpgate")
}

/// The tool, resource or prompt a request is about, if its method is one the gate decides.
fn subject_of(env: &Envelope<'_>, method: &str) -> Result<Option<(Subject, String)>, String> {
    let uri = || {
        let uri = env
            .uri
            .and_then(envelope::string)
            .ok_or_else(|| format!("{method} needs \"params.uri\" as a string"))?;
        canonical_uri(&uri)?;
        Ok(Some((Subject::Resource, uri.into_owned())))
    };
    match method {
        "tools/call" => env
            .name
            .map(|n| Some((Subject::Tool, n.to_string())))
            .ok_or_else(|| "tools/call needs \"params.name\"".to_string()),
        "prompts/get" => env
            .name
            .map(|n| Some((Subject::Prompt, n.to_string())))
            .ok_or_else(|| "prompts/get needs \"params.name\" as a string".to_string()),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => uri(),
        "completion/complete" => match env.reference.and_then(envelope::reference) {
            Some(Reference::Prompt(n)) => Ok(Some((Subject::Prompt, n.into_owned()))),
            Some(Reference::Resource(u)) => {
                canonical_uri(&u)?;
                Ok(Some((Subject::Resource, u.into_owned())))
            }
            None => {
                Err("completion/complete needs \"params.ref\" naming a prompt or a resource".into())
            }
        },
        _ => Ok(None),
    }
}

/// The resource URIs a `subscriptions/listen` request subscribes to (none for other
/// methods), each in normal form.
fn subscribed(env: &Envelope<'_>, method: &str) -> Result<Vec<String>, String> {
    let Some(raw) = env
        .notifications
        .filter(|_| method == "subscriptions/listen")
    else {
        return Ok(Vec::new());
    };
    let uris = envelope::subscriptions(raw).ok_or_else(|| {
        "subscriptions/listen needs \"params.notifications.resourceSubscriptions\" as a list of URIs"
            .to_string()
    })?;
    uris.into_iter()
        .map(|u| canonical_uri(&u).map(|()| u.into_owned()))
        .collect()
}

/// Refuses a resource URI that is not in normal form, so that the URI the roles are matched
/// against is the one every server reads: servers normalise (the Python SDK parses URIs with
/// pydantic, which lowercases schemes and hosts, resolves `.` and `..`, decodes `%2E`, drops
/// `localhost` from `file:` URIs and trims spaces), and a denied `file:///etc/passwd` must
/// not pass as `file:///public/../etc/passwd`.
fn canonical_uri(uri: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("resource URI {uri:?} refused: {why}"));
    if uri.is_empty() {
        return refuse("it is empty");
    }
    if uri
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return refuse("it holds whitespace, control characters or a backslash");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return refuse("it has no scheme");
    };
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_lowercase())
        || !scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
    {
        return refuse("its scheme is not in lower case");
    }
    // Percent-encoded unreserved characters (and `/`) are decoded by normalisers.
    let bytes = uri.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(c) if c.is_ascii_alphanumeric() || b"-._~/".contains(&c) => {
                    return refuse("it percent-encodes a character that needs no encoding");
                }
                Some(_) => {}
                None => return refuse("it has a malformed percent escape"),
            }
        }
    }
    let (authority, path) = match rest.strip_prefix("//") {
        Some(r) => match r.find(['/', '?', '#']) {
            Some(i) => (Some(&r[..i]), &r[i..]),
            None => (Some(r), ""),
        },
        None => (None, rest),
    };
    if let Some(authority) = authority {
        if authority.chars().any(|c| c.is_ascii_uppercase()) {
            return refuse("its host is not in lower case");
        }
        if scheme == "file" && !authority.is_empty() {
            return refuse("a file URI names no host (file:///path)");
        }
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return refuse("its path has . or .. segments");
    }
    Ok(())
}

/// An error answer for a message that could not be parsed (with its id, if it had one).
fn refusal(e: &EnvelopeError) -> Vec<u8> {
    error_line(e.id.as_deref(), e.code, &e.message)
}

fn invalid<'m>(env: Envelope<'m>, message: &str) -> Step<'m> {
    deny(env, None, code::INVALID_REQUEST, message.to_string())
}

fn deny<'m>(
    env: Envelope<'m>,
    subject: Option<(Subject, String)>,
    code: i64,
    message: String,
) -> Step<'m> {
    let answer = error_line(env.id.map(RawValue::get), code, &message);
    Step {
        verdict: Verdict::Answer(answer),
        audit: Audit::Denied {
            env,
            subject,
            reason: message,
        },
    }
}

/// `line` with the raw JSON `value` in place of `part` (a slice of `line`, such as a parsed
/// envelope's `id`), plus a newline.
pub fn splice(line: &[u8], part: &RawValue, value: &str) -> Option<Vec<u8>> {
    let start = (part.get().as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
    let end = start.checked_add(part.get().len())?;
    if line.get(start..end)? != part.get().as_bytes() {
        return None;
    }
    let mut out = Vec::with_capacity(line.len() + value.len() + 1);
    out.extend_from_slice(&line[..start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&line[end..]);
    out.push(b'\n');
    Some(out)
}

/// The fields `T` names, read from a JSON object without building a tree of the rest (serde
/// skips it). What that read refuses (a duplicate key) is read into a tree first, the last
/// key winning, as a client reads it. `None` if the value is not such an object.
fn fields<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Option<T> {
    // A struct would also read an array, by position.
    if !raw.get().starts_with('{') {
        return None;
    }
    serde_json::from_str(raw.get()).ok().or_else(|| {
        let tree: Value = serde_json::from_str(raw.get()).ok()?;
        serde_json::from_value(tree).ok()
    })
}

/// The one field of a `tools/call` result the audit reads.
#[derive(serde::Deserialize)]
struct ToolResult {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
}

#[derive(serde::Deserialize)]
struct ErrorObject {
    message: Option<String>,
}

#[derive(serde::Deserialize)]
struct LogParams {
    logger: Option<String>,
}

/// The lists the gateway filters: where in a result, the key that names an entry, and what
/// kind of thing it names.
const LISTS: [(&str, &str, Subject); 4] = [
    ("tools", "name", Subject::Tool),
    ("prompts", "name", Subject::Prompt),
    ("resources", "uri", Subject::Resource),
    ("resourceTemplates", "uriTemplate", Subject::Resource),
];

/// `result` with only the allowed entries of every list it holds, as JSON; `None` if
/// `result[required]` is not a list, or another list is not one. Entries without a string
/// name are removed.
/// The handshake result as the client may see it: without its `instructions` when the
/// rules withhold them, and never with another spelling of that key (`Instructions`, which
/// a case-insensitive client would read). `None`: forward it as it is.
fn withheld_instructions(result: &str, rules: &dyn Rules) -> Option<String> {
    let mut v: Value = serde_json::from_str(result).ok()?;
    let map = v.as_object_mut()?;
    let spelled = map.len();
    map.retain(|k, _| k == "instructions" || !envelope::folds_to(k, "instructions"));
    let mut changed = map.len() != spelled;
    if let Some(text) = map
        .get("instructions")
        .map(|t| t.as_str().map(str::to_string))
    {
        let allowed = match text {
            Some(text) => rules.offered_instructions(&text).is_ok(),
            // Instructions that are not text are not the client's to read.
            None => false,
        };
        if !allowed {
            map.remove("instructions");
            changed = true;
        }
    }
    if changed {
        serde_json::to_string(&v).ok()
    } else {
        None
    }
}

fn filter_lists(mut v: Value, required: &str, rules: &dyn Rules) -> Option<String> {
    v.get(required)?.as_array()?;
    // A list under a key a case-insensitive client would read as one (`Tools`, `tooľs`…)
    // is not the gateway's to pass unfiltered.
    v.as_object_mut()?.retain(|k, _| {
        !LISTS
            .iter()
            .any(|(list, _, _)| k != list && envelope::folds_to(k, list))
    });
    for (list, key, subject) in LISTS {
        let Some(entries) = v.get_mut(list) else {
            continue;
        };
        entries.as_array_mut()?.retain(|e| {
            e.get(key)
                .and_then(Value::as_str)
                .is_some_and(|name| rules.decide(subject, name).is_ok())
                && (subject != Subject::Tool || rules.offered_tool(e).is_ok())
        });
    }
    // Filtered for one caller, the list is no longer everyone's (2026-07-28 caching): a
    // shared cache must not serve it to another identity.
    if let Some(scope) = v.get_mut("cacheScope")
        && scope != "private"
    {
        *scope = Value::from("private");
    }
    serde_json::to_string(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Allows exactly the listed names.
    struct Toy(&'static [(Subject, &'static str)]);

    impl Rules for Toy {
        fn decide(&self, subject: Subject, value: &str) -> Result<(), String> {
            if self.0.iter().any(|(s, v)| *s == subject && *v == value) {
                Ok(())
            } else {
                Err(format!("no role allows this {}", subject.noun()))
            }
        }

        fn decide_request(
            &self,
            subject: Subject,
            value: &str,
            _: Option<&RawValue>,
        ) -> Result<Option<String>, String> {
            self.decide(subject, value).map(|()| None)
        }

        fn offered_tool(&self, _: &Value) -> Result<(), String> {
            Ok(())
        }

        fn offered_instructions(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
    }

    const RULES: Toy = Toy(&[
        (Subject::Tool, "echo"),
        (Subject::Resource, "file:///public/a"),
        (Subject::Resource, "file:///public/{name}"),
        (Subject::Prompt, "greet"),
    ]);

    fn gate() -> Gate {
        Gate::new(Limits::default(), Limits::default())
    }

    fn json_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("not JSON: {}: {e}", String::from_utf8_lossy(bytes)))
    }

    /// Sends a client line; returns what reaches the server (if anything) and the answer.
    fn client(g: &mut Gate, line: &str) -> (Option<Value>, Option<Value>) {
        let step = g.on_client(line.as_bytes(), &RULES, Instant::now());
        if let Audit::Begin { gid, .. } = step.audit {
            g.confirm(gid);
        }
        match step.verdict {
            Verdict::Forward(Out::Original) => (Some(json_of(line.as_bytes())), None),
            Verdict::Forward(Out::Bytes(b)) => (Some(json_of(&b)), None),
            Verdict::Answer(b) => (None, Some(json_of(&b))),
            Verdict::Drop => (None, None),
        }
    }

    /// Sends a server line; returns what reaches the client.
    fn server(g: &mut Gate, line: &str) -> Option<Value> {
        match g.on_server(line.as_bytes(), &RULES, Instant::now()).verdict {
            Verdict::Forward(Out::Original) => Some(json_of(line.as_bytes())),
            Verdict::Forward(Out::Bytes(b)) => Some(json_of(&b)),
            Verdict::Answer(_) => panic!("the gate never answers the server"),
            Verdict::Drop => None,
        }
    }

    const TOOLS: &str =
        r#"{"tools":[{"name":"echo","inputSchema":{}},{"name":"delete_all","inputSchema":{}}]}"#;

    #[test]
    fn a_request_method_without_an_id_is_never_forwarded() {
        let mut g = gate();
        for line in [
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_all","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#,
            r#"{"jsonrpc":"2.0","method":"prompts/get","params":{"name":"greet"}}"#,
            r#"{"jsonrpc":"2.0","method":"initialize","params":{}}"#,
        ] {
            let step = g.on_client(line.as_bytes(), &RULES, Instant::now());
            assert_eq!(step.verdict, Verdict::Drop, "{line}");
            assert!(matches!(step.audit, Audit::Denied { .. }), "{line}");
        }
        // Real notifications pass untouched.
        let line = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let step = g.on_client(line.as_bytes(), &RULES, Instant::now());
        assert_eq!(step.verdict, Verdict::Forward(Out::Original));
        assert!(matches!(step.audit, Audit::Notification(_)));
    }

    #[test]
    fn argument_rules_gate_calls_and_dry_run_roles_are_recorded() {
        use mcpgate_types::resource::{Resource, parse_resources};
        let yaml = "kind: role
version: v8
metadata: {name: docs}
spec:
  allow:
    app_labels: {'*': '*'}
    mcp:
      tools: [read_file, fetch]
      arguments: {read_file: {path: /srv/docs/**}}
---
kind: role
version: v8
metadata: {name: audit-only}
spec:
  options: {mcp_dry_run: true}
  deny:
    mcp:
      arguments: {fetch: {url: 'http://127.**'}}
";
        let roles: Vec<_> = parse_resources("t.yaml", yaml)
            .unwrap()
            .0
            .into_iter()
            .filter_map(|r| match r {
                Resource::Role(r) => Some(r),
                _ => None,
            })
            .collect();
        let policy = Policy::compile(&roles, &Default::default()).unwrap();
        let labels = Default::default();
        let rules = AppRules {
            policy: &policy,
            labels: &labels,
        };
        let mut g = gate();
        let call = |g: &mut Gate, line: &str| {
            let step = g.on_client(line.as_bytes(), &rules, Instant::now());
            let would = match &step.audit {
                Audit::Begin { would_deny, .. } => Some(would_deny.clone()),
                _ => None,
            };
            (step.verdict, would)
        };
        let (verdict, _) = call(
            &mut g,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/srv/docs/../secret"}}}"#,
        );
        let Verdict::Answer(answer) = verdict else {
            panic!("forwarded: {verdict:?}")
        };
        let answer = json_of(&answer);
        assert_eq!(answer["error"]["code"], code::INVALID_PARAMS);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(r#"access denied: tool "read_file" is not allowed (argument "path" does not match "/srv/docs/**"; role docs"#),
            "{message}"
        );
        // A duplicate argument cannot smuggle a second path past the rule.
        let (verdict, _) = call(
            &mut g,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/srv/docs/a","path":"/etc/passwd"}}}"#,
        );
        assert!(matches!(verdict, Verdict::Answer(_)));
        let (verdict, would) = call(
            &mut g,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/srv/docs/a"}}}"#,
        );
        assert!(matches!(verdict, Verdict::Forward(_)));
        assert_eq!(would, Some(None));
        let (verdict, would) = call(
            &mut g,
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"fetch","arguments":{"url":"http://127.0.0.1/"}}}"#,
        );
        assert!(
            matches!(verdict, Verdict::Forward(_)),
            "dry-run: not enforced"
        );
        let would = would.flatten().expect("the would-be denial is reported");
        assert!(would.contains("denied by role audit-only"), "{would}");
    }

    #[test]
    fn a_reused_id_cannot_skip_the_filter() {
        let mut g = gate();
        let (fwd, _) = client(&mut g, r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#);
        let gid = fwd.unwrap()["id"].clone();
        assert_eq!(gid, json!(1));
        let (fwd, answer) = client(&mut g, r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#);
        assert!(fwd.is_none());
        let answer = answer.unwrap();
        assert_eq!(answer["id"], 5);
        assert_eq!(answer["error"]["code"], code::INVALID_REQUEST);
        let out = server(
            &mut g,
            &format!(r#"{{"jsonrpc":"2.0","id":{gid},"result":{TOOLS}}}"#),
        )
        .unwrap();
        assert_eq!(out["id"], 5);
        assert_eq!(out["result"]["tools"].as_array().unwrap().len(), 1);
        assert_eq!(out["result"]["tools"][0]["name"], "echo");
        // Once answered, the id is free again.
        let (fwd, _) = client(&mut g, r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#);
        assert_eq!(fwd.unwrap()["id"], 2);
    }

    #[test]
    fn odd_spellings_of_ids_are_answered_filtered_and_echoed_as_written() {
        for (id, same) in [
            ("-0", "0"),
            (r#""\u0061""#, r#""a""#),
            (r#""a\/b""#, r#""a/b""#),
            ("007", "7"),
        ] {
            let mut g = gate();
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
            let step = g.on_client(line.as_bytes(), &RULES, Instant::now());
            if let Audit::Begin { gid, .. } = step.audit {
                g.confirm(gid);
            }
            let Verdict::Forward(Out::Bytes(fwd)) = step.verdict else {
                // "007" is not JSON: refused, never forwarded.
                assert_eq!(id, "007");
                continue;
            };
            assert_eq!(json_of(&fwd)["id"], 1);
            // The same id spelled another way is the same id: refused while pending.
            let (f, a) = client(
                &mut g,
                &format!(r#"{{"jsonrpc":"2.0","id":{same},"method":"ping"}}"#),
            );
            assert!(f.is_none() && a.is_some(), "{id} vs {same}");
            // The server answers the gateway's id; the client gets its own id back, filtered.
            let out = g.on_server(
                format!(r#"{{"jsonrpc":"2.0","id":1,"result":{TOOLS}}}"#).as_bytes(),
                &RULES,
                Instant::now(),
            );
            let Verdict::Forward(Out::Bytes(bytes)) = out.verdict else {
                panic!("not forwarded")
            };
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains(&format!(r#""id":{id},"#)), "{text}");
            assert_eq!(
                json_of(text.as_bytes())["result"]["tools"]
                    .as_array()
                    .unwrap()
                    .len(),
                1
            );
            // An answer spelled as the client's id matches nothing and is dropped.
            assert_eq!(
                server(
                    &mut g,
                    &format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{TOOLS}}}"#)
                ),
                None
            );
        }
    }

    #[test]
    fn tools_resources_and_prompts_are_gated() {
        let mut g = gate();
        for (line, allowed) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_all"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///public/a"}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"file:\/\/\/etc\/passwd"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":6,"method":"resources/read","params":{}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"resources/subscribe","params":{"uri":"file:///x"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":8,"method":"prompts/get","params":{"name":"greet"}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":9,"method":"prompts/get","params":{"name":"secret"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":10,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"secret"},"argument":{"name":"a","value":""}}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":11,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet"},"argument":{"name":"a","value":""}}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":12,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///public/{name}"},"argument":{"name":"a","value":""}}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":13,"method":"completion/complete","params":{"argument":{"name":"a","value":""}}}"#,
                false,
            ),
        ] {
            let (fwd, answer) = client(&mut g, line);
            assert_eq!(fwd.is_some(), allowed, "{line}");
            if !allowed {
                let answer = answer.unwrap();
                assert_eq!(answer["id"], json_of(line.as_bytes())["id"], "{line}");
                assert_eq!(answer["error"]["code"], code::INVALID_PARAMS, "{line}");
            }
        }
        let (_, a) = client(
            &mut g,
            r#"{"jsonrpc":"2.0","id":20,"method":"prompts/get","params":{"name":"secret"}}"#,
        );
        assert!(
            a.unwrap()["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("access denied: prompt \"secret\" is not allowed"),
        );
    }

    #[test]
    fn lists_of_resources_templates_and_prompts_are_filtered() {
        let mut g = gate();
        for (method, result, list, kept) in [
            (
                "resources/list",
                r#"{"resources":[{"uri":"file:///public/a","name":"a"},{"uri":"file:///etc/passwd","name":"p"},{"name":"no-uri"}],"nextCursor":"c"}"#,
                "resources",
                1,
            ),
            (
                "resources/templates/list",
                r#"{"resourceTemplates":[{"uriTemplate":"file:///public/{name}"},{"uriTemplate":"file:///{path}"}]}"#,
                "resourceTemplates",
                1,
            ),
            (
                "prompts/list",
                r#"{"prompts":[{"name":"greet"},{"name":"secret"}]}"#,
                "prompts",
                1,
            ),
        ] {
            let (fwd, _) = client(
                &mut g,
                &format!(r#"{{"jsonrpc":"2.0","id":"x","method":"{method}"}}"#),
            );
            let gid = fwd.unwrap()["id"].clone();
            let out = server(
                &mut g,
                &format!(r#"{{"jsonrpc":"2.0","id":{gid},"result":{result}}}"#),
            )
            .unwrap();
            assert_eq!(out["id"], "x");
            assert_eq!(
                out["result"][list].as_array().unwrap().len(),
                kept,
                "{method}: {out}"
            );
        }
        // An answer without the list is not shown: fail closed.
        let (fwd, _) = client(&mut g, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        let gid = fwd.unwrap()["id"].clone();
        let out = server(
            &mut g,
            &format!(r#"{{"jsonrpc":"2.0","id":{gid},"result":{{"tools":"all"}}}}"#),
        )
        .unwrap();
        assert_eq!(out["error"]["code"], code::INTERNAL_ERROR);
        // Updates of resources the caller may not read are dropped.
        assert!(server(&mut g, r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///etc/passwd"}}"#).is_none());
        assert!(server(&mut g, r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///public/a"}}"#).is_some());
    }

    #[test]
    fn server_requests_and_cancellations_use_their_own_ids() {
        let mut g = gate();
        let out = server(
            &mut g,
            r#"{"jsonrpc":"2.0","id":"s-1","method":"sampling/createMessage","params":{}}"#,
        )
        .unwrap();
        let sid = out["id"].clone();
        assert_eq!(sid, json!(1));
        // A client answer to an id the server never used is dropped; the right one is mapped.
        assert_eq!(
            client(&mut g, r#"{"jsonrpc":"2.0","id":99,"result":{}}"#),
            (None, None)
        );
        let (fwd, _) = client(
            &mut g,
            &format!(r#"{{"jsonrpc":"2.0","id":{sid},"result":{{"content":1}}}}"#),
        );
        assert_eq!(fwd.unwrap()["id"], "s-1");
        // Answered once: a second answer is dropped.
        assert_eq!(
            client(
                &mut g,
                &format!(r#"{{"jsonrpc":"2.0","id":{sid},"result":{{}}}}"#)
            ),
            (None, None)
        );
        // The client cancels its own request by its own id; the server hears the gateway's.
        let (fwd, _) = client(
            &mut g,
            r#"{"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"echo"}}"#,
        );
        let gid = fwd.unwrap()["id"].clone();
        let (fwd, _) = client(
            &mut g,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"c"}}"#,
        );
        assert_eq!(fwd.unwrap()["params"]["requestId"], gid);
        let (fwd, _) = client(
            &mut g,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"zz"}}"#,
        );
        assert!(fwd.is_none());
        // A cancelled request is no longer pending: its late answer is dropped.
        assert_eq!(g.in_flight(), 0);
        assert!(
            server(
                &mut g,
                &format!(r#"{{"jsonrpc":"2.0","id":{gid},"result":{{}}}}"#)
            )
            .is_none()
        );
        // A server cannot speak as the gateway.
        assert!(server(&mut g, r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"error","logger":"mcpgate","data":"fake"}}"#).is_none());
        assert!(server(&mut g, r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","logger":"srv","data":"ok"}}"#).is_some());
        // Nor by naming the logger twice (a client reads the last) or with escapes.
        assert!(server(&mut g, r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","logger":"srv","logger":"mcpgate","data":"fake"}}"#).is_none());
        assert!(server(&mut g, r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","logger":"mcp\u0067ate","data":"fake"}}"#).is_none());
        // An answer to nothing from the server is dropped.
        assert!(server(&mut g, r#"{"jsonrpc":"2.0","id":77,"result":{}}"#).is_none());
    }

    #[test]
    fn other_spellings_of_instructions_never_reach_the_client() {
        let mut g = gate();
        client(
            &mut g,
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#,
        );
        let out = server(
            &mut g,
            r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","instructions":"pinned","Instructions":"new orders","serverInfo":{"name":"s"}}}"#,
        )
        .unwrap();
        assert_eq!(out["id"], 0);
        assert_eq!(out["result"]["instructions"], "pinned");
        assert!(out["result"].get("Instructions").is_none(), "{out}");
        assert_eq!(out["result"]["serverInfo"]["name"], "s");
    }

    #[test]
    fn the_handshake_starts_the_session_once_and_outcomes_are_reported() {
        let mut g = gate();
        client(
            &mut g,
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","clientInfo":{"name":"c","version":"1"}}}"#,
        );
        let step = g.on_server(br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","serverInfo":{"name":"s"}}}"#, &RULES, Instant::now());
        let started = step.started.unwrap();
        assert_eq!(started.client_info["name"], "c");
        assert_eq!(started.server_info["name"], "s");
        assert_eq!(started.protocol_version, "2025-06-18");
        client(
            &mut g,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
        );
        client(
            &mut g,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}"#,
        );
        let step = g.on_server(
            br#"{"jsonrpc":"2.0","id":2,"result":{"isError":true,"content":[]}}"#,
            &RULES,
            Instant::now(),
        );
        let done = step.done.unwrap();
        assert_eq!(
            (done.outcome, done.request.client_id.as_str()),
            (Outcome::ToolError, "1")
        );
        assert!(done.request.durable);
        let step = g.on_server(
            br#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"boom"}}"#,
            &RULES,
            Instant::now(),
        );
        assert_eq!(step.done.unwrap().outcome, Outcome::Error("boom".into()));
        // Whatever is left is answered when the session ends.
        client(
            &mut g,
            r#"{"jsonrpc":"2.0","id":"w","method":"tools/call","params":{"name":"echo"}}"#,
        );
        let left = g.drain("the session ended");
        assert_eq!(left.len(), 1);
        let answer = json_of(&left[0].2);
        assert_eq!(answer["id"], "w");
        assert_eq!(answer["error"]["message"], "the session ended");
        assert_eq!(g.in_flight(), 0);
    }

    #[test]
    fn abandoned_requests_free_their_id() {
        let mut g = gate();
        let step = g.on_client(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
            &RULES,
            Instant::now(),
        );
        let Audit::Begin { gid, durable, .. } = step.audit else {
            panic!()
        };
        assert!(durable);
        assert!(g.abandon(gid).is_some());
        assert_eq!(g.in_flight(), 0);
        assert!(server(&mut g, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#).is_none());
        let (fwd, _) = client(&mut g, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        assert!(fwd.is_some());
    }

    #[test]
    fn resource_uris_must_be_in_normal_form() {
        let mut g = gate();
        for uri in [
            "file:///public/../etc/passwd",
            "file:///public/./a",
            "file:///public/%2E%2E/etc/passwd",
            "file:///public/%61",
            "file://localhost/public/a",
            "FILE:///public/a",
            " file:///public/a",
            "file:///public/a\n",
            "file:///public\\a",
            "http://EXAMPLE.com/x",
            "file:///public/a%zz",
            "no-scheme",
        ] {
            let line = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}}).to_string();
            let (fwd, answer) = client(&mut g, &line);
            assert!(fwd.is_none(), "{uri:?} was forwarded");
            assert_eq!(
                answer.unwrap()["error"]["code"],
                code::INVALID_PARAMS,
                "{uri:?}"
            );
        }
        let (fwd, _) = client(
            &mut g,
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///public/a"}}"#,
        );
        assert!(fwd.is_some());
    }

    #[test]
    fn subscriptions_listen_is_gated_per_resource() {
        let mut g = gate();
        for (params, allowed) in [
            (
                json!({"notifications": {"resourceSubscriptions": ["file:///public/a"], "toolsListChanged": true}}),
                true,
            ),
            (json!({"notifications": {"toolsListChanged": true}}), true),
            (
                json!({"notifications": {"resourceSubscriptions": ["file:///public/a", "file:///etc/passwd"]}}),
                false,
            ),
            (
                json!({"notifications": {"resourceSubscriptions": "file:///public/a"}}),
                false,
            ),
            (
                json!({"notifications": {"resourceSubscriptions": [1]}}),
                false,
            ),
            (
                json!({"notifications": {"resourceSubscriptions": ["file:///public/../etc/passwd"]}}),
                false,
            ),
            (
                json!({"notifications": {"resourcesubscriptions": ["file:///etc/passwd"]}}),
                false,
            ),
        ] {
            let line = json!({"jsonrpc": "2.0", "id": "l", "method": "subscriptions/listen", "params": params}).to_string();
            let (fwd, _) = client(&mut g, &line);
            assert_eq!(fwd.is_some(), allowed, "{line}");
            g.drain("reset");
        }
    }

    #[test]
    fn an_answer_before_the_request_is_forwarded_is_not_one() {
        let mut g = gate();
        let step = g.on_client(
            br#"{"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"echo"}}"#,
            &RULES,
            Instant::now(),
        );
        let Audit::Begin { gid, .. } = step.audit else {
            panic!()
        };
        // The server guesses the gateway's next id while the request's event is being stored.
        assert!(
            server(
                &mut g,
                &format!(r#"{{"jsonrpc":"2.0","id":{gid},"result":{{"forged":true}}}}"#)
            )
            .is_none()
        );
        g.confirm(gid);
        let out = server(
            &mut g,
            &format!(r#"{{"jsonrpc":"2.0","id":{gid},"result":{{}}}}"#),
        )
        .unwrap();
        assert_eq!(out["id"], "c");
    }

    #[test]
    fn lists_under_folded_keys_are_removed() {
        let mut g = gate();
        let (fwd, _) = client(&mut g, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        let gid = fwd.unwrap()["id"].clone();
        let out = server(&mut g, &format!(r#"{{"jsonrpc":"2.0","id":{gid},"result":{{"tools":[{{"name":"echo"}}],"Tools":[{{"name":"delete_all"}}],"prompt\u017f":[{{"name":"secret"}}],"nextCursor":"n"}}}}"#)).unwrap();
        let result = out["result"].as_object().unwrap();
        let keys: Vec<&str> = result.keys().map(String::as_str).collect();
        assert_eq!(keys, ["tools", "nextCursor"], "{out}");
    }

    #[test]
    fn a_filtered_list_is_never_passed_on_as_public() {
        let mut g = gate();
        let (fwd, _) = client(&mut g, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        let gid = fwd.unwrap()["id"].clone();
        let out = server(&mut g, &format!(r#"{{"jsonrpc":"2.0","id":{gid},"result":{{"tools":[{{"name":"echo"}}],"ttlMs":60000,"cacheScope":"public","resultType":"complete"}}}}"#)).unwrap();
        assert_eq!(out["result"]["cacheScope"], "private", "{out}");
        assert_eq!(out["result"]["ttlMs"], 60000, "the rest is kept");
        assert_eq!(out["result"]["resultType"], "complete");
    }

    #[test]
    fn unreadable_messages_are_answered_and_audited() {
        let mut g = gate();
        let step = g.on_client(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"Name":"x","name":"echo"}}"#, &RULES, Instant::now());
        assert!(matches!(step.verdict, Verdict::Answer(_)));
        let Audit::Invalid { id, reason } = step.audit else {
            panic!("not audited")
        };
        assert_eq!(id.as_deref(), Some("3"));
        assert!(reason.contains("Name"), "{reason}");
    }
}

//! Findings: what is unusual in the audit log, found as it is read in time order.
//!
//! Pure, like `mcpgate-policy`: audit events in, findings out, no I/O and no clock (each
//! event's own time is the time). The [`Engine`]'s state is plain data (serde), so a reader
//! of the log can save it with its cursor and go on after a restart, and a replay of the same
//! events gives the same findings.
//!
//! Each detector learns what is usual per identity while the identity is young (its first
//! [`Config::warmup`]) and reports only what departs from it afterwards:
//! - [`Kind::FirstToolUse`]: an identity calls a tool it never called (with how many other
//!   identities use it);
//! - [`Kind::RareToolForRole`]: … and hardly anyone with the same roles uses that tool;
//! - [`Kind::VolumeSpike`]: far more calls in an hour than the identity makes in that hour of
//!   the week;
//! - [`Kind::DenialBurst`]: many denials over several tools within minutes;
//! - [`Kind::NewNetwork`]: calls from a network the identity never used;
//! - [`Kind::NewArgumentValue`]: a new value of a key argument (path's folder, repo, URL host);
//! - [`Kind::OffHoursWrite`]: a person's write call in an hour of the day they are never active;
//! - [`Kind::ReadThenSend`]: a sensitive read, then an outbound call, in one session.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use mcpgate_types::AuditEvent;
use mcpgate_types::IdentityKind;

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;
const MINUTE: i64 = 60_000_000;

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    FirstToolUse,
    RareToolForRole,
    VolumeSpike,
    DenialBurst,
    NewNetwork,
    NewArgumentValue,
    OffHoursWrite,
    ReadThenSend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
}

/// One finding: who, what, why (observed against usual), and the events that show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable: the same events give the same id on any replay.
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    /// `user/NAME` or `bot/NAME`.
    pub identity: String,
    /// What it is about — the tool, network or argument value — so that a person who marks
    /// it as expected can have its repeats suppressed.
    pub subject: String,
    /// Unix microseconds of the event that raised it.
    pub time: i64,
    /// A sentence a person on call can act on.
    pub explanation: String,
    /// Ids of the audit events it rests on.
    pub evidence: Vec<String>,
}

/// Thresholds. The defaults are what the product ships with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// How long an identity's behaviour is only learned from (µs).
    pub warmup: i64,
    /// Denials that make a burst, over at least `burst_tools` tools within `burst_window`.
    pub burst_denials: usize,
    pub burst_tools: usize,
    pub burst_window: i64,
    /// Calls of an identity before its active hours are known.
    pub hours_after: u32,
    /// How long after a sensitive read an outbound call in the same session is reported.
    pub send_window: i64,
    /// A tool used by fewer than this share of an identity's role peers (at least
    /// `rare_peers` of them) is rare for the role.
    pub rare_share: f64,
    pub rare_peers: usize,
    /// An hour with more calls than `spike_factor` × the identity's usual for that hour of the
    /// week, plus `spike_margin`, is a spike.
    pub spike_factor: u32,
    pub spike_margin: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            warmup: 7 * DAY,
            burst_denials: 10,
            burst_tools: 3,
            burst_window: 5 * MINUTE,
            hours_after: 100,
            send_window: 30 * MINUTE,
            rare_share: 0.1,
            rare_peers: 5,
            spike_factor: 3,
            spike_margin: 20,
        }
    }
}

/// What the detectors have learned, per identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    first_seen: i64,
    tools: BTreeSet<String>,
    networks: BTreeSet<String>,
    /// `tool\u{0}argument` → values seen.
    values: BTreeMap<String, BTreeSet<String>>,
    /// Calls per hour of the day (UTC).
    hours: [u32; 24],
    /// Recent denials: (time, tool, event id).
    denials: VecDeque<(i64, String, String)>,
    /// When the last burst was reported.
    burst_at: Option<i64>,
    /// Its roles, sorted: who its peers are.
    roles: Vec<String>,
    /// Calls per hour of the week, summed over the weeks seen (hours before the current).
    #[serde(with = "week")]
    week: [u32; 168],
    /// The hour being counted (hours since the epoch), its calls, whether it was reported.
    hour_now: (i64, u32, bool),
}

/// `[u32; 168]` as a list (serde derives arrays up to 32 only).
mod week {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u32; 168], s: S) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u32; 168], D::Error> {
        let v = Vec::<u32>::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 168 hourly counts"))
    }
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            first_seen: 0,
            tools: Default::default(),
            networks: Default::default(),
            values: Default::default(),
            hours: [0; 24],
            denials: Default::default(),
            burst_at: None,
            roles: Vec::new(),
            week: [0; 168],
            hour_now: (0, 0, false),
        }
    }
}

/// The engine's whole state: save it with the cursor of the last event read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    identities: BTreeMap<String, Identity>,
    /// Per tool, the identities that call it.
    users: BTreeMap<String, BTreeSet<String>>,
    /// Per session, its last sensitive read: (time, event id, what).
    reads: BTreeMap<String, (i64, String, String)>,
}

/// The detectors, fed events in time order.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub config: Config,
    pub state: State,
}

impl Engine {
    pub fn new(config: Config) -> Engine {
        Engine {
            config,
            state: State::default(),
        }
    }

    /// Resumes from a saved state.
    pub fn resume(config: Config, state: State) -> Engine {
        Engine { config, state }
    }

    /// Reads one event; returns what it shows that is unusual.
    pub fn observe(&mut self, ev: &AuditEvent) -> Vec<Finding> {
        let mut out = Vec::new();
        if ev.kind != "mcp.session.request" {
            return out;
        }
        let Some(call) = Call::of(ev) else {
            return out;
        };
        let cfg = &self.config;
        let who = call.identity.clone();
        let known = self.state.identities.contains_key(&who);
        let id = self
            .state
            .identities
            .entry(who.clone())
            .or_insert_with(|| Identity {
                first_seen: call.time,
                ..Default::default()
            });
        let learning = !known || call.time - id.first_seen < cfg.warmup;
        id.roles = call.roles.clone();
        let finding =
            |kind, severity, subject: String, explanation: String, evidence: Vec<String>| Finding {
                id: finding_id(kind, &who, &evidence),
                kind,
                severity,
                identity: who.clone(),
                subject,
                time: call.time,
                explanation,
                evidence,
            };

        if call.denied {
            id.denials
                .push_back((call.time, call.tool.clone(), ev.id.clone()));
            while id
                .denials
                .front()
                .is_some_and(|(t, _, _)| call.time - t > cfg.burst_window)
            {
                id.denials.pop_front();
            }
            let tools: BTreeSet<&str> = id.denials.iter().map(|(_, t, _)| t.as_str()).collect();
            let quiet = id
                .burst_at
                .is_none_or(|at| call.time - at > cfg.burst_window);
            if id.denials.len() >= cfg.burst_denials && tools.len() >= cfg.burst_tools && quiet {
                id.burst_at = Some(call.time);
                let evidence = id.denials.iter().map(|(_, _, e)| e.clone()).collect();
                out.push(finding(
                    Kind::DenialBurst,
                    Severity::High,
                    format!("denials of {}", tools.iter().copied().collect::<Vec<_>>().join(",")),
                    format!(
                        "{who} was denied {} times over {} tools in {} minutes ({}): someone may be probing what this identity can reach",
                        id.denials.len(),
                        tools.len(),
                        cfg.burst_window / MINUTE,
                        tools.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                    evidence,
                ));
            }
            return out;
        }

        // Allowed calls teach and are judged.
        let evidence = vec![ev.id.clone()];
        let hour = ((call.time.rem_euclid(DAY)) / HOUR) as usize;
        let total_hours: u32 = id.hours.iter().sum();
        if !learning
            && call.person
            && call.writes
            && total_hours >= cfg.hours_after
            && id.hours[hour] == 0
        {
            out.push(finding(
                Kind::OffHoursWrite,
                Severity::Medium,
                call.tool.clone(),
                format!(
                    "{who} called {} at {hour:02}:00 UTC, an hour in which they have made none of their {total_hours} calls",
                    call.tool
                ),
                evidence.clone(),
            ));
        }
        id.hours[hour] = id.hours[hour].saturating_add(1);

        // This hour's calls against the identity's usual for this hour of the week.
        let hour_index = call.time.div_euclid(HOUR);
        if id.hour_now.0 != hour_index {
            let (previous, count, _) = id.hour_now;
            if count > 0 {
                let bin = week_bin(previous);
                id.week[bin] = id.week[bin].saturating_add(count);
            }
            id.hour_now = (hour_index, 0, false);
        }
        id.hour_now.1 += 1;
        // How many times this hour of the week has come round since the identity appeared.
        let weeks = ((call.time - id.first_seen + 7 * DAY - 1) / (7 * DAY)).clamp(1, 10_000) as u32;
        let usual = id.week[week_bin(hour_index)] / weeks;
        let limit = usual
            .saturating_mul(cfg.spike_factor)
            .saturating_add(cfg.spike_margin);
        if !learning && !id.hour_now.2 && id.hour_now.1 > limit {
            id.hour_now.2 = true;
            out.push(finding(
                Kind::VolumeSpike,
                Severity::Medium,
                format!("calls in hour {} of the week", week_bin(hour_index)),
                format!(
                    "{who} made {} calls this hour; in this hour of the week it usually makes {usual}",
                    id.hour_now.1
                ),
                evidence.clone(),
            ));
        }

        if let Some(net) = &call.network
            && id.networks.insert(net.clone())
            && !learning
        {
            out.push(finding(
                Kind::NewNetwork,
                Severity::Medium,
                net.clone(),
                format!(
                    "{who} called {} from {net}, a network it never used (it used {})",
                    call.tool,
                    id.networks
                        .iter()
                        .filter(|n| *n != net)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                evidence.clone(),
            ));
        }

        let first_use = id.tools.insert(call.tool.clone());
        let roles = id.roles.clone();
        let users = self.state.users.entry(call.tool.clone()).or_default();
        let others = users.iter().filter(|p| **p != who).count();
        users.insert(who.clone());
        if first_use && !learning {
            let total = self.state.identities.len();
            // Its peers: the other identities with the same roles.
            let peers: Vec<&String> = self
                .state
                .identities
                .iter()
                .filter(|(name, other)| **name != who && other.roles == roles)
                .map(|(name, _)| name)
                .collect();
            let peers_using = peers
                .iter()
                .filter(|p| {
                    self.state
                        .users
                        .get(&call.tool)
                        .is_some_and(|u| u.contains(**p))
                })
                .count();
            let rare = peers.len() >= cfg.rare_peers
                && (peers_using as f64) < cfg.rare_share * peers.len() as f64;
            out.push(if rare {
                finding(
                    Kind::RareToolForRole,
                    Severity::Medium,
                    call.tool.clone(),
                    format!(
                        "{who} called {} for the first time; {peers_using} of the {} identities with its roles ({}) use it",
                        call.tool,
                        peers.len(),
                        roles.join(", ")
                    ),
                    evidence.clone(),
                )
            } else {
                finding(
                    Kind::FirstToolUse,
                    Severity::Low,
                    call.tool.clone(),
                    format!(
                        "{who} called {} for the first time; {others} of the other {} identities use it",
                        call.tool,
                        total.saturating_sub(1)
                    ),
                    evidence.clone(),
                )
            });
        }
        // Re-borrow: the maps above are done with.
        let id = self
            .state
            .identities
            .get_mut(&who)
            .unwrap_or_else(|| unreachable!("inserted above"));

        for (arg, value) in &call.key_values {
            let seen = id
                .values
                .entry(format!("{}\u{0}{arg}", call.tool))
                .or_default();
            // Judged once the tool is no longer new to this identity.
            let judged = !learning && !first_use && !seen.is_empty();
            if seen.insert(value.clone()) && judged {
                out.push(finding(
                    Kind::NewArgumentValue,
                    Severity::Low,
                    format!("{} {arg}={value}", call.tool),
                    format!(
                        "{who} called {} with {arg} {value}, a value it never used (it used {})",
                        call.tool,
                        seen.iter()
                            .filter(|v| *v != value)
                            .take(5)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    evidence.clone(),
                ));
            }
        }

        if let Some(session) = &call.session {
            if let Some(what) = &call.sensitive_read {
                // Reads too old to pair with a send are forgotten as new ones come.
                let window = cfg.send_window;
                self.state
                    .reads
                    .retain(|_, (at, _, _)| call.time - *at <= window);
                self.state
                    .reads
                    .insert(session.clone(), (call.time, ev.id.clone(), what.clone()));
            } else if call.sends
                && let Some((at, read_id, what)) = self.state.reads.get(session)
                && (0..=cfg.send_window).contains(&(call.time - at))
            {
                out.push(finding(
                    Kind::ReadThenSend,
                    Severity::High,
                    call.tool.clone(),
                    format!(
                        "{who} read {what} and then called {}, which sends data out, in the same session",
                        call.tool
                    ),
                    vec![read_id.clone(), ev.id.clone()],
                ));
                self.state.reads.remove(session);
            }
        }
        out
    }
}

/// What the detectors read of a request event.
struct Call {
    identity: String,
    roles: Vec<String>,
    person: bool,
    time: i64,
    /// `app/tool` (or `app/resource:URI` for reads).
    tool: String,
    denied: bool,
    writes: bool,
    sends: bool,
    sensitive_read: Option<String>,
    network: Option<String>,
    session: Option<String>,
    key_values: Vec<(String, String)>,
}

impl Call {
    fn of(ev: &AuditEvent) -> Option<Call> {
        let f = &ev.fields;
        let text = |k: &str| f.get(k).and_then(Value::as_str);
        let app = text("app")?;
        // A resource counts by where it lives (scheme and host), not by each URI, so the
        // state does not grow with every document read.
        let (name, resource) = match (text("tool"), text("resource")) {
            (Some(t), _) => (t.to_string(), None),
            (None, Some(r)) => (format!("resource:{}", resource_place(r)), Some(r)),
            _ => return None,
        };
        let words = words_of(&name);
        let has = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
        let args = f
            .get("params")
            .and_then(|p| p.get("arguments"))
            .and_then(Value::as_object);
        // A path under any argument name that says it is one (`path`, `file_path`, `file`…).
        let path_arg = args.and_then(|a| {
            a.iter()
                .filter(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    k.ends_with("path") || k.ends_with("file") || k == "filename"
                })
                .find_map(|(_, v)| v.as_str())
        });
        let url_arg = args.is_some_and(|a| {
            a.iter().any(|(k, v)| {
                let k = k.to_ascii_lowercase();
                (k.contains("url") || k == "endpoint" || k == "webhook")
                    && v.as_str().is_some_and(|v| v.contains("://"))
            })
        });
        let sensitive_read = match resource {
            Some(r) => sensitive_path(r).then(|| r.to_string()),
            None => has(&["read", "get", "cat", "show", "download", "open", "view"])
                .then(|| path_arg.filter(|p| sensitive_path(p)).map(str::to_string))
                .flatten(),
        };
        let time = ev
            .time
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default();
        let mut roles = ev.roles.clone();
        roles.sort();
        Some(Call {
            roles,
            identity: format!(
                "{}/{}",
                ev.user_kind.unwrap_or(IdentityKind::User).as_str(),
                ev.user
            ),
            person: ev.user_kind.unwrap_or(IdentityKind::User) == IdentityKind::User,
            time,
            tool: format!("{app}/{name}"),
            denied: text("decision") == Some("deny"),
            writes: has(&[
                "write", "create", "delete", "update", "remove", "push", "merge", "commit", "exec",
                "execute", "run", "set", "move", "edit", "deploy", "drop", "insert", "put",
            ]),
            sends: has(&[
                "fetch", "http", "send", "post", "upload", "webhook", "email", "mail", "curl",
            ]) || url_arg,
            sensitive_read,
            network: text("client_addr").and_then(network),
            session: text("session_id").map(str::to_string),
            key_values: key_values(args),
        })
    }
}

/// The hour of the week (0 = Thursday 00:00 UTC, the epoch's weekday; any fixed origin does).
fn week_bin(hour_index: i64) -> usize {
    hour_index.rem_euclid(168) as usize
}

/// The words of a tool name: `list_pull_requests`, `getSettings`, `read-file` → their words,
/// lower case (so `post` is not found in `postgres`, nor `set` in `get_settings`).
fn words_of(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        word.extend(c.to_lowercase());
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Where a resource lives: its scheme and host (`file://`, `github://acme`).
fn resource_place(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            format!("{scheme}://{host}")
        }
        None => uri.chars().take(64).collect(),
    }
}

/// Whether a path (or URI) names a file that holds secrets: by its file name (`.env`,
/// `id_rsa`, `credentials`, a key or certificate) or a secrets folder (`.ssh`, `.aws`).
fn sensitive_path(p: &str) -> bool {
    let p = p.to_ascii_lowercase();
    let name = p.rsplit('/').next().unwrap_or(&p);
    let by_name = [
        ".env",
        ".netrc",
        ".npmrc",
        ".pypirc",
        "id_rsa",
        "id_ed25519",
        "credentials",
        "shadow",
        "passwd",
        ".htpasswd",
    ]
    .contains(&name)
        || name.starts_with(".env.")
        || name.starts_with("secret")
        || [".pem", ".key", ".p12", ".pfx", ".kdbx"]
            .iter()
            .any(|ext| name.ends_with(ext));
    by_name
        || ["/.ssh/", "/.aws/", "/.gnupg/", "/.kube/", "/secrets/"]
            .iter()
            .any(|d| p.contains(d))
}

/// The network of a client address: its /24 (IPv4) or /48 (IPv6).
fn network(addr: &str) -> Option<String> {
    let ip: std::net::IpAddr = addr
        .parse::<std::net::SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| addr.parse())
        .ok()?;
    Some(match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    })
}

/// The key arguments of a call, reduced to what is worth comparing: a path's folder, a
/// repository, a URL's host.
fn key_values(args: Option<&serde_json::Map<String, Value>>) -> Vec<(String, String)> {
    let Some(args) = args else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in args {
        let Some(v) = v.as_str() else { continue };
        let key = k.to_ascii_lowercase();
        let value = match key.as_str() {
            k if k.ends_with("path")
                || k.ends_with("file")
                || k == "filename"
                || k == "directory"
                || k == "dir" =>
            {
                match v.rsplit_once('/') {
                    Some(("", _)) => "/".to_string(),
                    Some((dir, _)) => dir.to_string(),
                    None => v.to_string(),
                }
            }
            "repo" | "repository" | "owner" | "project" => v.to_string(),
            "url" | "uri" | "endpoint" => match v.split_once("://") {
                Some((_, rest)) => rest.split(['/', '?', '#']).next().unwrap_or("").to_string(),
                None => continue,
            },
            _ => continue,
        };
        out.push((k.clone(), value));
    }
    out
}

/// A stable id: a digest of the kind, the identity and the evidence.
fn finding_id(kind: Kind, who: &str, evidence: &[String]) -> String {
    let kind = format!("{kind:?}");
    let mut parts = vec![kind.as_str(), who];
    parts.extend(evidence.iter().map(String::as_str));
    digest(&parts)
}

impl Finding {
    /// What makes another finding a repeat of this one (same kind, identity and subject), as
    /// a plain token: names and subjects may hold any character.
    pub fn repeat_key(&self) -> String {
        digest(&[&format!("{:?}", self.kind), &self.identity, &self.subject])
    }
}

/// FNV-1a (64-bit) over the parts, each ended by a NUL, as hex: stable across runs and builds.
fn digest(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_bytes().iter().chain(&[0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_not_substrings_say_what_a_tool_does() {
        assert_eq!(words_of("list_pull_requests"), ["list", "pull", "requests"]);
        assert_eq!(words_of("getSettings"), ["get", "settings"]);
        assert_eq!(words_of("postgres-query"), ["postgres", "query"]);
        let call = |tool: &str, args: Value| {
            let mut f = serde_json::Map::new();
            f.insert("app".into(), "a".into());
            f.insert("tool".into(), tool.into());
            f.insert("params".into(), serde_json::json!({ "arguments": args }));
            let ev = AuditEvent {
                id: "e".into(),
                time: std::time::SystemTime::UNIX_EPOCH,
                kind: "mcp.session.request".into(),
                code: String::new(),
                cluster: String::new(),
                user: "u".into(),
                user_kind: None,
                roles: vec![],
                success: true,
                fields: f,
            };
            Call::of(&ev).unwrap()
        };
        let c = call("list_pull_requests", serde_json::json!({}));
        assert!(!c.sends && !c.writes);
        assert!(!call("postgres_query", serde_json::json!({})).sends);
        assert!(!call("get_settings", serde_json::json!({})).writes);
        assert!(call("post_message", serde_json::json!({})).sends);
        assert!(
            call(
                "search",
                serde_json::json!({"callback_url": "https://x.example/h"})
            )
            .sends
        );
        assert!(
            call(
                "read_file",
                serde_json::json!({"file_path": "/home/a/.env"})
            )
            .sensitive_read
            .is_some()
        );
        for harmless in [
            "/srv/models/tokenizer.json",
            "/docs/password-policy.md",
            "/app/keys.md",
        ] {
            assert!(!sensitive_path(harmless), "{harmless}");
        }
        for secret in [
            "/home/a/.ssh/config",
            "/etc/shadow",
            "/x/server.key",
            "/srv/.env.prod",
        ] {
            assert!(sensitive_path(secret), "{secret}");
        }
    }

    #[test]
    fn networks_and_key_values() {
        assert_eq!(network("10.1.2.3:5555").as_deref(), Some("10.1.2.0/24"));
        assert_eq!(
            network("[2001:db8:1:2::5]:443").as_deref(),
            Some("2001:db8:1::/48")
        );
        let args =
            serde_json::json!({"path": "/srv/docs/a.md", "url": "https://evil.example/x", "n": 3});
        let mut kv = key_values(args.as_object());
        kv.sort();
        assert_eq!(
            kv,
            vec![
                ("path".into(), "/srv/docs".into()),
                ("url".into(), "evil.example".into())
            ]
        );
    }
}

//! Resources an admin manages — roles, apps, users, bots, tokens, locks — and the parser of
//! `admin create -f` files (multi-document YAML in Teleport's shapes).
//!
//! A misspelled field under `deny` is an error (ignoring a deny would grant access); one under
//! `allow` is a warning. Errors name the file, the document, the line and the field.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::name::Name;

/// The kinds an admin can name on the command line (`admin get KIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Role,
    App,
    User,
    Bot,
    Token,
    Lock,
    Agent,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Role,
        Kind::App,
        Kind::User,
        Kind::Bot,
        Kind::Token,
        Kind::Lock,
        Kind::Agent,
    ];

    /// Parses `role`, `roles`, `app`, `apps`, ...
    pub fn parse(s: &str) -> Option<Kind> {
        let s = s.strip_suffix('s').unwrap_or(s);
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Role => "role",
            Kind::App => "app",
            Kind::User => "user",
            Kind::Bot => "bot",
            Kind::Token => "token",
            Kind::Lock => "lock",
            Kind::Agent => "agent",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A label value: one string or a list of them (any may match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// Label selector: every key must match one of its values.
pub type LabelSelector = BTreeMap<String, OneOrMany>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Metadata {
    pub name: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Default for Name {
    fn default() -> Self {
        // Sound: "unnamed" is a valid name literal.
        Name::new("unnamed").unwrap_or_else(|_| unreachable!())
    }
}

/// `kind: role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub kind: String,
    pub version: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: RoleSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    #[serde(default)]
    pub options: RoleOptions,
    #[serde(default)]
    pub allow: Allow,
    #[serde(default)]
    pub deny: Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RoleOptions {
    #[serde(
        default,
        with = "crate::duration::serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_session_ttl: Option<Duration>,
    /// Record what this role's denials and argument rules would refuse
    /// (`decision: would_deny`) without enforcing them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mcp_dry_run: bool,
    /// Rate and concurrency limits on MCP calls; of an identity's roles the strictest wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_limits: Option<Box<McpLimits>>,
    /// Teleport options mcpgate does not use yet; kept so files round-trip.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `options.mcp_limits`: for the identity as a whole, and per app or tool (name patterns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct McpLimits {
    /// Calls per calendar minute, of the identity on every app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_per_minute: Option<u32>,
    /// Calls waiting for their answers at once, of the identity on every app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_calls: Option<u32>,
    /// App name pattern → limits counted per identity and app.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apps: BTreeMap<String, Limit>,
    /// Tool name pattern → limits counted per identity, app and tool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, Limit>,
}

impl McpLimits {
    /// The limits on the identity as a whole.
    pub fn all(&self) -> Limit {
        Limit {
            calls_per_minute: self.calls_per_minute,
            concurrent_calls: self.concurrent_calls,
        }
    }
}

/// One set of limits on `tools/call`, `resources/read` and `prompts/get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Calls per calendar minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_per_minute: Option<u32>,
    /// Calls waiting for their answers at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_calls: Option<u32>,
}

/// MCP conditions of a role: patterns of tool names, resource URIs and prompt names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct McpCondition {
    #[serde(default)]
    pub tools: Vec<String>,
    /// Resource URIs (`resources/read`, `subscribe`, the `resources/list` filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Prompt names (`prompts/get`, the `prompts/list` filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// Tool pattern → {argument name: pattern(s)}: in `allow`, every named argument must be
    /// present and match; in `deny`, any named argument that matches denies the call.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, BTreeMap<String, OneOrMany>>,
}

/// Admin API rule: which verbs on which resource kinds (`*` for all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
}

/// What a role allows. Unknown fields are kept aside and reported as warnings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Allow {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_labels: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(flatten, default, skip_serializing)]
    pub unknown: BTreeMap<String, IgnoredAnyEq>,
}

/// What a role denies. Any unknown field is an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Deny {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_labels: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// A placeholder for a field whose value is ignored (comparable, so `Allow` stays `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IgnoredAnyEq;

impl<'de> Deserialize<'de> for IgnoredAnyEq {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| IgnoredAnyEq)
    }
}

/// `kind: app` — an MCP server registered in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub kind: String,
    pub version: String,
    pub metadata: Metadata,
    pub spec: AppSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// `mcp+stdio://`, `mcp+http://host/mcp`, `mcp+https://...`, `mcp+sse+http://...`.
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpCommand>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// How an `https` upstream's certificate is verified (the system's CAs by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Tool-definition pinning: `first_use` (the default) pins what is first seen and holds
    /// changes; `strict` holds new tools too until an admin approves them.
    #[serde(default, skip_serializing_if = "PinMode::is_default")]
    pub pin: PinMode,
}

/// How an app's tool definitions are pinned (see [`crate::pins`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    #[default]
    FirstUse,
    Strict,
}

impl PinMode {
    fn is_default(&self) -> bool {
        *self == PinMode::FirstUse
    }
}

impl AppSpec {
    /// URI schemes an app may use.
    pub const SCHEMES: [&'static str; 5] = [
        "mcp+stdio://",
        "mcp+http://",
        "mcp+https://",
        "mcp+sse+http://",
        "mcp+sse+https://",
    ];

    /// A literal secret in the definition, which the cluster's storage would then hold:
    /// an `env` value or a rewrite header that is secret by its name or shaped like a known
    /// secret, other than through `${env:..}`/`${file:..}` references (resolved on the
    /// agent's host). The message shows the reference to write instead.
    pub fn literal_secret(&self) -> Option<String> {
        use crate::secrets::{literal_part, secret_name, secret_shaped};
        for (name, value) in self.mcp.iter().flat_map(|m| &m.env) {
            let literal = literal_part(value);
            // `TOKEN_FILE: /run/secrets/t` names where a secret is, not the secret.
            let names_a_place = ["_FILE", "_PATH", "_DIR"]
                .iter()
                .any(|s| name.to_ascii_uppercase().ends_with(s));
            if secret_shaped(&literal)
                || (secret_name(name) && !names_a_place && !literal.trim().is_empty())
            {
                return Some(format!(
                    "env {name} holds a literal secret; write {name}: \"${{env:{name}}}\" (set on the agent's host) or \"${{file:/path/to/it}}\""
                ));
            }
        }
        for h in self.rewrite.iter().flat_map(|r| &r.headers) {
            let Some((name, value)) = h.split_once(':') else {
                continue;
            };
            if header_secret(name, value) {
                return Some(format!(
                    "rewrite header {} holds a literal secret; write \"{}: Bearer ${{env:NAME}}\" (NAME set on the agent's host) or ${{file:/path/to/it}}",
                    name.trim(),
                    name.trim()
                ));
            }
        }
        None
    }

    /// The definition as shown to people (`admin get app`, the dashboard): literal `env`
    /// values and literal secrets in rewrite headers are hidden; references, which hold no
    /// secret, are shown.
    pub fn shown(mut self) -> Self {
        use crate::secrets::literal_part;
        for v in self.mcp.iter_mut().flat_map(|m| m.env.values_mut()) {
            if !literal_part(v).trim().is_empty() {
                *v = "[hidden]".into();
            }
        }
        for h in self.rewrite.iter_mut().flat_map(|r| r.headers.iter_mut()) {
            if let Some((name, value)) = h.split_once(':')
                && header_secret(name, value)
            {
                *h = format!("{}: [hidden]", name.trim());
            }
        }
        self
    }

    /// Checks what serde cannot: a known scheme, and a command for a stdio app.
    pub fn check(&self) -> Result<(), String> {
        if !Self::SCHEMES.iter().any(|p| self.uri.starts_with(p)) {
            return Err(format!(
                "uri {:?} must start with one of {}",
                self.uri,
                Self::SCHEMES.join(", ")
            ));
        }
        let has_command = self
            .mcp
            .as_ref()
            .is_some_and(|m| !m.command.trim().is_empty());
        if self.uri.starts_with("mcp+stdio://") {
            if !has_command {
                return Err("a stdio app needs mcp.command".into());
            }
            return Ok(());
        }
        // An HTTP app: a host, no credentials in the URI (they belong in rewrite.headers,
        // which stay on the agent), and no command.
        let rest = self
            .uri
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or_default();
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains(char::is_whitespace) {
            return Err(format!("uri {:?} has no host", self.uri));
        }
        if authority.contains('@') {
            return Err(format!(
                "uri {:?} holds credentials: put them in rewrite.headers as ${{env:..}} or ${{file:..}} references",
                self.uri
            ));
        }
        let port = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((_, "")) => None,
                Some((_, rest)) => Some(rest.strip_prefix(':').unwrap_or(rest)),
                None => return Err(format!("uri {:?} has an unclosed [", self.uri)),
            },
            None => authority.rsplit_once(':').map(|(_, p)| p),
        };
        if let Some(port) = port
            && !port.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return Err(format!(
                "uri {:?}: {port:?} is not a port (1-65535)",
                self.uri
            ));
        }
        if self.mcp.is_some() {
            return Err("an HTTP app takes no mcp command: the agent connects to its uri".into());
        }
        for h in self.rewrite.iter().flat_map(|r| &r.headers) {
            let Some((name, _)) = h.split_once(':') else {
                return Err(format!("rewrite header {h:?} must be \"Name: value\""));
            };
            let name = name.trim();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                return Err(format!("rewrite header {h:?} has an invalid name"));
            }
        }
        Ok(())
    }
}

/// Whether a rewrite header holds a literal secret: one shaped like a known secret, or any
/// literal beyond a scheme word (`Bearer ${env:T}` is fine) in a header that carries one.
fn header_secret(name: &str, value: &str) -> bool {
    use crate::secrets::{literal_part, secret_name, secret_shaped};
    let literal = literal_part(value);
    let words: Vec<&str> = literal.split_whitespace().collect();
    let scheme_only = matches!(
        words[..],
        [] | ["Bearer" | "bearer" | "Basic" | "basic" | "token" | "Token"]
    );
    let carries_secret = secret_name(name) || name.trim().eq_ignore_ascii_case("x-api-key");
    secret_shaped(&literal) || (carries_secret && !scheme_only)
}

/// How the agent starts a stdio MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpCommand {
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Values may reference agent-side secrets: `${env:NAME}`, `${file:PATH}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_host_user: Option<String>,
}

/// Headers the agent adds to requests to an HTTP upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default)]
    pub headers: Vec<String>,
}

/// How the agent verifies an HTTPS upstream's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// A PEM file of CA certificates, on the agent's host, trusted for this upstream instead
    /// of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Accept any certificate: anyone on the network path can then read and change the
    /// traffic, credentials included. Never outside a test.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// A resource read from a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    Role(Role),
    App(App),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Role(_) => Kind::Role,
            Resource::App(_) => Kind::App,
        }
    }

    pub fn name(&self) -> &Name {
        match self {
            Resource::Role(r) => &r.metadata.name,
            Resource::App(a) => &a.metadata.name,
        }
    }
}

/// Where in a file something was found: 1-based document and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub document: usize,
    pub line: Option<u64>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        Ok(())
    }
}

/// A resource file that cannot be applied; nothing of the file is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct ParseError {
    pub place: Place,
    pub message: String,
}

/// Something in a resource file that was accepted but is probably a mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub place: Place,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

#[derive(Deserialize)]
struct Header {
    kind: Option<String>,
    version: Option<String>,
}

const MAX_FILE_BYTES: usize = 4 << 20;

/// Parses a multi-document resource file. Either every document is valid, or nothing is
/// returned but the first error.
pub fn parse_resources(
    file: &str,
    text: &str,
) -> Result<(Vec<Resource>, Vec<Warning>), ParseError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ParseError {
            place: Place {
                file: file.into(),
                document: 1,
                line: None,
            },
            message: format!("file is larger than {} MiB", MAX_FILE_BYTES >> 20),
        });
    }
    let mut resources = Vec::new();
    let mut warnings = Vec::new();
    for (index, (first_line, doc)) in split_documents(text).into_iter().enumerate() {
        // `line` is 1-based within the document.
        let place = |line: Option<u64>| Place {
            file: file.to_string(),
            document: index + 1,
            line: line.map(|l| l + first_line as u64),
        };
        let fail = |e: serde_saphyr::Error| ParseError {
            place: place(e.location().map(|l| l.line()).filter(|l| *l > 0)),
            message: yaml_message(&e),
        };
        let header: Option<Header> = serde_saphyr::from_str(doc).map_err(fail)?;
        let Some(header) = header else { continue }; // an empty document
        let kind = header.kind.ok_or_else(|| ParseError {
            place: place(None),
            message: "missing field `kind`".into(),
        })?;
        let version = header.version.unwrap_or_default();
        let bad_version = |accepted: &str| ParseError {
            place: place(None),
            message: format!("{kind} version {version:?} is not supported (use {accepted})"),
        };
        let resource = match kind.as_str() {
            "role" => {
                if !matches!(version.as_str(), "v6" | "v7" | "v8") {
                    return Err(bad_version("v6, v7 or v8"));
                }
                let role: Role = serde_saphyr::from_str(doc).map_err(fail)?;
                for field in role.spec.allow.unknown.keys() {
                    warnings.push(Warning {
                        place: place(line_of(doc, field)),
                        message: format!(
                            "role {}: unknown field `spec.allow.{field}` is ignored",
                            role.metadata.name
                        ),
                    });
                }
                Resource::Role(role)
            }
            "app" => {
                if version != "v3" {
                    return Err(bad_version("v3"));
                }
                Resource::App(serde_saphyr::from_str(doc).map_err(fail)?)
            }
            other => {
                return Err(ParseError {
                    place: place(None),
                    message: match Kind::parse(other) {
                        Some(k) => format!(
                            "kind {k:?} cannot be created from a file; use `mcpgate admin {k}s add`"
                        ),
                        None => format!("unknown kind {other:?} (expected role or app)"),
                    },
                });
            }
        };
        resources.push(resource);
    }
    Ok((resources, warnings))
}

/// The one-line message of a YAML error, without its snippet or position.
pub fn yaml_message(e: &serde_saphyr::Error) -> String {
    match e {
        serde_saphyr::Error::WithSnippet { error, .. } => yaml_message(error),
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => {
            format!(
                "unknown field `{field}` (expected one of: {})",
                expected.join(", ")
            )
        }
        serde_saphyr::Error::SerdeMissingField { field, .. } => format!("missing field `{field}`"),
        other => {
            let text = other.to_string();
            let first = text.lines().next().unwrap_or("invalid YAML").trim();
            // Drop a trailing "at line X column Y": the place is reported separately.
            match first.find(" at line ") {
                Some(i) => first[..i].to_string(),
                None => first.to_string(),
            }
        }
    }
}

/// The 1-based line (within `doc`) where `key:` first appears, for warnings.
fn line_of(doc: &str, key: &str) -> Option<u64> {
    doc.lines()
        .position(|l| {
            let t = l.trim_start();
            t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i as u64 + 1)
}

/// Splits a YAML stream on `---` document markers, keeping each document's first line
/// number (0-based) so errors point into the file. A column-0 `---` cannot occur inside a
/// block scalar, whose content is indented.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 0;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare.starts_with("--- ") || bare == "..." {
            if offset > start || i > 0 {
                docs.push((start_line, &text[start..offset]));
            }
            start = offset + line.len();
            start_line = i + 1;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs.retain(|(_, d)| !d.trim().is_empty());
    docs
}

/// A user as stored by the auth service. Secrets never leave the auth service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: Name,
    pub roles: Vec<String>,
    #[serde(default)]
    pub traits: BTreeMap<String, Vec<String>>,
    /// argon2id PHC string; `None` until signup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// TOTP secret (raw bytes, base32) once enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
    /// The last TOTP time step accepted, so a code cannot be replayed.
    #[serde(default)]
    pub last_otp_step: u64,
    pub created: i64,
    /// The store key of the one invite that may sign this user up (the newest), cleared
    /// when used: an older or leaked invite cannot replace their credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
}

/// What `admin get users` shows: never a hash or a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub name: Name,
    pub roles: Vec<String>,
    pub traits: BTreeMap<String, Vec<String>>,
    pub password_set: bool,
    pub otp_enrolled: bool,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            name: u.name.clone(),
            roles: u.roles.clone(),
            traits: u.traits.clone(),
            password_set: u.password_hash.is_some(),
            otp_enrolled: u.totp_secret.is_some(),
        }
    }
}

/// A single-use token: a signup invite, or a bot or agent join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    #[serde(rename = "type")]
    pub kind: TokenKind,
    /// The user or bot the token is for; for an agent token, the agent's name if the
    /// admin bound one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Name>,
    /// Unix seconds.
    pub expires: i64,
    /// For an agent token: what the agent may serve. Empty: the static apps it declares at
    /// its first join that nobody else holds.
    #[serde(default, skip_serializing_if = "AgentScope::is_empty")]
    pub scope: AgentScope,
}

/// The apps an agent may serve: these names, and cluster apps (`admin create`) whose labels
/// all match `app_labels` (`*` as a value matches any; `"*": "*"` matches every app).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AgentScope {
    /// Apps the admin admitted it for, by name (static or cluster apps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_labels: BTreeMap<String, String>,
    /// Static apps it declared at its first join and holds (no one else may): these
    /// names never admit a cluster app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claimed: Vec<String>,
}

impl AgentScope {
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.app_labels.is_empty() && self.claimed.is_empty()
    }

    /// Every app: the scope of the agent inside `mcpgate start`.
    pub fn everything() -> AgentScope {
        AgentScope {
            apps: Vec::new(),
            app_labels: [("*".to_string(), "*".to_string())].into(),
            claimed: Vec::new(),
        }
    }

    /// Whether an agent with this scope may serve the app `name`, given the cluster's app
    /// of that name if there is one. A cluster app's labels are the admin's, so they count;
    /// an app the agent defines itself is in scope by name only (its labels are its own
    /// word), and a name it claimed for itself never reaches a cluster app.
    pub fn admits(&self, name: &str, cluster_app: Option<&App>) -> bool {
        if self.apps.iter().any(|a| a == name) {
            return true;
        }
        let Some(app) = cluster_app else {
            return self.claimed.iter().any(|a| a == name);
        };
        !self.app_labels.is_empty() && labels_match(&self.app_labels, &app.metadata.labels)
    }
}

/// Whether every `key: value` of `selector` is among `labels` (`*` as a value matches any;
/// `"*": "*"` matches everything, labelled or not).
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| {
        (k == "*" && v == "*") || labels.get(k).is_some_and(|have| v == "*" || have == v)
    })
}

/// An agent admitted to the cluster (`agents/NAME`): one name, one registration. Its
/// certificate names it; renewals must present the newest generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: Name,
    pub scope: AgentScope,
    /// A random id of this registration, in its certificates: a certificate of a removed
    /// registration is no use to one admitted later under the same name.
    #[serde(default)]
    pub id: String,
    /// The generation of the newest certificate issued; a renewal must present it.
    pub generation: u64,
    /// Unix seconds.
    pub joined: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Invite,
    Bot,
    Agent,
}

/// A machine identity: renews its own certificate, each renewal one generation later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bot {
    pub name: Name,
    pub roles: Vec<String>,
    /// The longest certificate it may get, in seconds.
    pub max_ttl: u64,
    /// The generation of the newest certificate issued; a renewal must present it.
    pub generation: u64,
    pub created: i64,
}

/// What a lock bans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockTarget {
    User(String),
    Bot(String),
    Role(String),
    Agent(String),
}

impl fmt::Display for LockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockTarget::User(n) => write!(f, "user {n}"),
            LockTarget::Bot(n) => write!(f, "bot {n}"),
            LockTarget::Role(n) => write!(f, "role {n}"),
            LockTarget::Agent(n) => write!(f, "agent {n}"),
        }
    }
}

/// A ban on a user, bot, role or agent: no new certificates, no new sessions, live sessions
/// end (an agent's tunnels close).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub id: String,
    pub target: LockTarget,
    #[serde(default)]
    pub message: String,
    /// Unix seconds; `None` until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    pub created: i64,
    pub created_by: String,
    /// Unix seconds: the lock applies only to certificates issued before then (a user
    /// reset or removed: their old certificates are void, a new login is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<i64>,
}

impl Lock {
    /// Whether this lock applies, at `now`, to an identity with this kind, name and roles
    /// holding a certificate issued at `issued` (`None`: one about to be issued now).
    pub fn applies(
        &self,
        kind: crate::IdentityKind,
        name: &str,
        roles: &[String],
        now: i64,
        issued: Option<i64>,
    ) -> bool {
        if self.expires.is_some_and(|e| e <= now) {
            return false;
        }
        if let Some(before) = self.issued_before
            && issued.is_none_or(|i| i >= before)
        {
            return false;
        }
        match &self.target {
            LockTarget::User(u) => kind == crate::IdentityKind::User && u == name,
            LockTarget::Bot(b) => kind == crate::IdentityKind::Bot && b == name,
            LockTarget::Role(r) => roles.iter().any(|x| x == r),
            LockTarget::Agent(a) => kind == crate::IdentityKind::Host && a == name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_apply_to_their_target_until_they_expire() {
        use crate::IdentityKind::{Bot as B, User as U};
        let lock = |target, expires| Lock {
            id: "l".into(),
            target,
            message: String::new(),
            expires,
            created: 0,
            created_by: "a".into(),
            issued_before: None,
        };
        let roles = vec!["dev".to_string()];
        let n = Some(5);
        assert!(lock(LockTarget::User("alice".into()), None).applies(U, "alice", &roles, 10, n));
        assert!(
            !lock(LockTarget::User("alice".into()), None).applies(B, "alice", &roles, 10, n),
            "a bot named like a user is another identity"
        );
        assert!(lock(LockTarget::Bot("ci".into()), Some(20)).applies(B, "ci", &[], 10, n));
        assert!(
            !lock(LockTarget::Bot("ci".into()), Some(20)).applies(B, "ci", &[], 20, n),
            "expired"
        );
        assert!(lock(LockTarget::Role("dev".into()), None).applies(B, "ci", &roles, 10, n));
        assert!(!lock(LockTarget::Role("ops".into()), None).applies(U, "alice", &roles, 10, n));
        // A lock on certificates issued before a time: older ones, not newer or new ones.
        let reset = Lock {
            issued_before: Some(8),
            ..lock(LockTarget::User("alice".into()), None)
        };
        assert!(reset.applies(U, "alice", &roles, 10, Some(7)));
        assert!(!reset.applies(U, "alice", &roles, 10, Some(8)));
        assert!(
            !reset.applies(U, "alice", &roles, 10, None),
            "a login after the reset"
        );
        assert!(lock(LockTarget::User("alice".into()), None).applies(U, "alice", &roles, 10, None));
    }

    const GOOD: &str = "kind: role
version: v8
metadata: {name: dev-readonly}
spec:
  options: {max_session_ttl: 8h}
  allow:
    app_labels: {env: dev}
    mcp:
      tools: [\"read_*\", \"^(get|list)_.*$\", echo]
  deny:
    mcp:
      tools: [\"*delete*\"]
---
kind: app
version: v3
metadata: {name: github, labels: {env: dev}, description: GitHub}
spec:
  uri: mcp+stdio://
  mcp: {command: github-mcp-server, args: [stdio], env: {GITHUB_TOKEN: \"${env:GITHUB_TOKEN}\"}}
";

    #[test]
    fn parses_the_design_example() {
        let (res, warnings) = parse_resources("r.yaml", GOOD).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(res.len(), 2);
        let Resource::Role(role) = &res[0] else {
            panic!("not a role")
        };
        assert_eq!(role.metadata.name.as_str(), "dev-readonly");
        assert_eq!(
            role.spec.options.max_session_ttl,
            Some(Duration::from_secs(8 * 3600))
        );
        assert_eq!(role.spec.allow.mcp.as_ref().unwrap().tools.len(), 3);
        assert_eq!(role.spec.deny.mcp.as_ref().unwrap().tools, vec!["*delete*"]);
        let Resource::App(app) = &res[1] else {
            panic!("not an app")
        };
        assert_eq!(
            app.spec.mcp.as_ref().unwrap().env["GITHUB_TOKEN"],
            "${env:GITHUB_TOKEN}"
        );
    }

    #[test]
    fn unknown_deny_field_is_an_error_with_place() {
        let text = GOOD.replace("  deny:\n    mcp:", "  deny:\n    mpc:");
        let err = parse_resources("r.yaml", &text).unwrap_err();
        assert_eq!(err.place.document, 1);
        assert_eq!(err.place.line, Some(11), "{err}");
        assert!(err.message.contains("unknown field `mpc`"), "{err}");
        assert!(
            err.to_string().starts_with("r.yaml: document 1, line 11: "),
            "{err}"
        );
    }

    #[test]
    fn unknown_allow_field_is_a_warning() {
        let text = GOOD.replace(
            "    app_labels: {env: dev}",
            "    app_labels: {env: dev}\n    logins: [root]",
        );
        let (res, warnings) = parse_resources("r.yaml", &text).unwrap();
        assert_eq!(res.len(), 2);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].message.contains("spec.allow.logins"));
        assert_eq!(warnings[0].place.line, Some(8));
    }

    #[test]
    fn errors_in_the_second_document_name_it() {
        let text = GOOD.replace("version: v3", "version: v9");
        let err = parse_resources("r.yaml", &text).unwrap_err();
        assert_eq!(err.place.document, 2);
        assert!(err.message.contains("version \"v9\""), "{err}");
        let text = GOOD.replace("uri: mcp+stdio://", "uri: mcp+stdio://\n  bogus: 1");
        let err = parse_resources("r.yaml", &text).unwrap_err();
        assert_eq!((err.place.document, err.place.line), (2, Some(19)), "{err}");
    }

    #[test]
    fn malformed_yaml_and_wrong_kinds_are_one_line_errors() {
        for (text, want) in [
            ("kind: role\nversion: v8\nmetadata: {name: [\n", ""),
            ("kind: widget\nversion: v1\n", "unknown kind"),
            ("kind: user\nversion: v2\n", "cannot be created from a file"),
            ("version: v8\n", "missing field `kind`"),
            (
                "kind: role\nversion: v8\nmetadata: {name: \"a b\"}\n",
                "invalid name",
            ),
            (
                "kind: role\nversion: v8\nmetadata: {name: x}\nmetadata: {name: y}\n",
                "",
            ),
        ] {
            let err = parse_resources("f.yaml", text).unwrap_err();
            let s = err.to_string();
            assert!(!s.contains('\n'), "multi-line error: {s}");
            assert!(s.contains(want), "{s} should contain {want}");
        }
    }

    #[test]
    fn kinds_parse_singular_and_plural() {
        assert_eq!(Kind::parse("roles"), Some(Kind::Role));
        assert_eq!(Kind::parse("app"), Some(Kind::App));
        assert_eq!(Kind::parse("locks"), Some(Kind::Lock));
        assert_eq!(Kind::parse("widgets"), None);
    }
    #[test]
    fn http_app_uris_are_checked() {
        let spec = |uri: &str| AppSpec {
            uri: uri.into(),
            mcp: None,
            rewrite: None,
            tls: None,
            pin: Default::default(),
        };
        for ok in [
            "mcp+http://127.0.0.1:8080/mcp",
            "mcp+https://api.example.com/mcp/",
            "mcp+sse+http://[::1]:9000/sse",
            "mcp+https://[::1]/mcp",
        ] {
            assert_eq!(spec(ok).check(), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("mcp+http://127.0.0.1:99999/mcp", "not a port"),
            ("mcp+https://127.0.0.1:/mcp", "not a port"),
            ("mcp+https:///mcp", "no host"),
            ("mcp+https://user:pw@api.example.com/mcp", "credentials"),
            ("http://api.example.com/mcp", "must start with"),
        ] {
            let err = spec(bad).check().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn literal_secrets_are_refused_and_hidden_references_are_not() {
        let app = |env: &str, header: &str| {
            let yaml = format!(
                "kind: app\nversion: v3\nmetadata: {{name: a}}\nspec:\n  uri: mcp+stdio://\n  mcp: {{command: x, env: {{{env}}}}}\n{header}"
            );
            match parse_resources("a.yaml", &yaml).unwrap().0.remove(0) {
                Resource::App(a) => a.spec,
                _ => unreachable!(),
            }
        };
        for (env, refused) in [
            ("GITHUB_TOKEN: '${env:GITHUB_TOKEN}'", false),
            ("GITHUB_TOKEN: '${file:/run/secrets/gh}'", false),
            ("TOKEN_FILE: /run/secrets/gh", false),
            ("LOG_LEVEL: debug", false),
            ("GITHUB_TOKEN: abc123", true),
            ("DB_PASSWORD: hunter2", true),
            ("OPTIONS: 'ghp_0123456789abcdefghij0123'", true),
            ("DATABASE_URL: 'postgres://app:hunter2@db/x'", true),
        ] {
            assert_eq!(app(env, "").literal_secret().is_some(), refused, "{env}");
        }
        let http = |header: &str| AppSpec {
            uri: "mcp+https://example.com/mcp".into(),
            mcp: None,
            rewrite: Some(Rewrite {
                headers: vec![header.into()],
            }),
            ..app("X: y", "")
        };
        for (h, refused) in [
            ("Authorization: Bearer ${env:GITHUB_TOKEN}", false),
            ("X-Api-Key: ${file:/run/key}", false),
            ("X-Trace: on", false),
            ("Authorization: Bearer abc123", true),
            ("X-Api-Key: abc123", true),
            ("X-Other: ghp_0123456789abcdefghij0123", true),
        ] {
            assert_eq!(http(h).literal_secret().is_some(), refused, "{h}");
        }
        // Shown to people: literal values hidden, references kept.
        let shown = app("A: '${env:A}', B: plain", "").shown();
        let env = &shown.mcp.as_ref().unwrap().env;
        assert_eq!(env["A"], "${env:A}");
        assert_eq!(env["B"], "[hidden]");
        let shown = http("Authorization: Bearer abc123").shown();
        assert_eq!(shown.rewrite.unwrap().headers, ["Authorization: [hidden]"]);
    }
}

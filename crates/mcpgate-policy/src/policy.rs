//! A compiled role set and its decisions.
//!
//! Semantics (DESIGN.md §4): nothing is allowed unless some role allows it; any matching deny
//! wins. A role applies to an app only if all of its `allow.app_labels` match the app's
//! labels; an app matched by any role's `deny.app_labels` is unreachable. Tool, resource and
//! prompt denies of every role apply to every app. Tools are matched by name, resources by
//! URI (`resources/list` entries, `resources/read`, subscriptions; a template by its
//! `uriTemplate` text), prompts by name — all with the same patterns.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use mcpgate_types::resource::{LabelSelector, Limit, Role, Rule};

use crate::args::{ArgMatcher, Arguments, Fit, Problem};
use crate::matcher::{Matcher, PatternError, expand};

/// A role that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role {role}: {field}: {source}")]
pub struct PolicyError {
    pub role: String,
    /// Where in the role, e.g. `allow.mcp.tools[2]`.
    pub field: String,
    pub source: PatternError,
}

#[derive(Debug, Clone)]
struct Selector(Vec<(Matcher, Vec<Matcher>)>);

impl Selector {
    /// All keys must be present with a matching value. Empty selectors match nothing.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.0.is_empty()
            && self.0.iter().all(|(key, values)| {
                if matches!(key, Matcher::Any) && values.iter().any(|v| matches!(v, Matcher::Any)) {
                    return true; // '*': '*' matches every app, labelled or not
                }
                labels
                    .iter()
                    .any(|(k, v)| key.matches(k) && values.iter().any(|m| m.matches(v)))
            })
    }
}

#[derive(Debug, Clone)]
struct Patterns(Vec<(String, Matcher)>);

impl Patterns {
    fn find(&self, value: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, m)| m.matches(value))
            .map(|(p, _)| p.as_str())
    }
}

/// What an MCP decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A tool, by name.
    Tool,
    /// A resource, by URI (or a resource template, by its URI template).
    Resource,
    /// A prompt, by name.
    Prompt,
}

impl Subject {
    pub const ALL: [Subject; 3] = [Subject::Tool, Subject::Resource, Subject::Prompt];

    /// The word for it in messages: `tool`, `resource`, `prompt`.
    pub fn noun(self) -> &'static str {
        match self {
            Subject::Tool => "tool",
            Subject::Resource => "resource",
            Subject::Prompt => "prompt",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One argument a rule names, with its patterns (any may match).
#[derive(Debug, Clone)]
struct ArgConstraint {
    name: String,
    patterns: Vec<ArgMatcher>,
    /// The patterns as written, for messages: `"/srv/docs/**"` or `one of ["a", "b"]`.
    shown: String,
}

/// A role's `options.mcp_limits`, compiled.
#[derive(Debug, Clone)]
struct Limits {
    all: Limit,
    apps: Vec<(Matcher, Limit)>,
    tools: Vec<(Matcher, Limit)>,
}

/// `allow.mcp.arguments` or `deny.mcp.arguments`: one tool pattern and what it says.
#[derive(Debug, Clone)]
struct ArgRule {
    tool_pattern: String,
    tool: Matcher,
    args: Vec<ArgConstraint>,
}

#[derive(Debug, Clone)]
struct CompiledRole {
    name: String,
    allow_apps: Selector,
    deny_apps: Selector,
    /// Allowed and denied patterns, indexed by [`Subject`].
    allow: [Patterns; 3],
    deny: [Patterns; 3],
    allow_args: Vec<ArgRule>,
    deny_args: Vec<ArgRule>,
    /// `options.mcp_dry_run`: its MCP denials are recorded, not enforced.
    dry_run: bool,
    /// `options.mcp_limits`: on the identity, per app pattern, per tool pattern.
    limits: Option<Limits>,
    allow_rules: Vec<Rule>,
    deny_rules: Vec<Rule>,
    max_session_ttl: Option<Duration>,
}

impl CompiledRole {
    /// The first argument of `args` that a deny rule for `tool` matches (or cannot check).
    fn denied_argument(&self, tool: &str, args: &Arguments) -> Option<DenyReason<'_>> {
        for rule in self.deny_args.iter().filter(|r| r.tool.matches(tool)) {
            for c in &rule.args {
                let value = args.get(&c.name);
                if value.is_none_or(serde_json::Value::is_null) {
                    continue;
                }
                for m in &c.patterns {
                    let problem = match m.fit(value) {
                        Fit::NoMatch => continue,
                        Fit::Match => None,
                        Fit::Unchecked(p) => Some(p),
                    };
                    return Some(DenyReason::ArgumentDenied {
                        role: &self.name,
                        tool_pattern: &rule.tool_pattern,
                        argument: &c.name,
                        patterns: &c.shown,
                        problem,
                    });
                }
            }
        }
        None
    }

    /// The first argument of `args` that an allow rule for `tool` requires and does not get.
    fn unmet_argument(&self, tool: &str, args: &Arguments) -> Option<DenyReason<'_>> {
        for rule in self.allow_args.iter().filter(|r| r.tool.matches(tool)) {
            for c in &rule.args {
                let value = args.get(&c.name);
                let mut problem = None;
                let mut met = false;
                for m in &c.patterns {
                    match m.fit(value) {
                        Fit::Match => {
                            met = true;
                            break;
                        }
                        Fit::NoMatch => {}
                        Fit::Unchecked(p) => problem = Some(p),
                    }
                }
                if !met {
                    return Some(DenyReason::ArgumentNotAllowed {
                        role: &self.name,
                        tool_pattern: &rule.tool_pattern,
                        argument: &c.name,
                        patterns: &c.shown,
                        problem,
                    });
                }
            }
        }
        None
    }
}

/// Why something was denied. Borrowed from the policy: deciding allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason<'a> {
    /// A role's `deny.app_labels` match the app.
    AppDeniedBy { role: &'a str },
    /// No role's `allow.app_labels` match the app.
    AppNotAllowed,
    /// A role's `deny.mcp.{tools,resources,prompts}` pattern matches.
    DeniedBy {
        subject: Subject,
        role: &'a str,
        pattern: &'a str,
    },
    /// No role that applies to the app allows it.
    NotAllowed(Subject),
    /// The tool is allowed, but an argument does not meet the allowing role's
    /// `allow.mcp.arguments` rule: missing, unreadable (`problem`) or not matching.
    ArgumentNotAllowed {
        role: &'a str,
        tool_pattern: &'a str,
        argument: &'a str,
        patterns: &'a str,
        problem: Option<Problem>,
    },
    /// A `deny.mcp.arguments` rule matches an argument, or cannot check it (`problem`).
    ArgumentDenied {
        role: &'a str,
        tool_pattern: &'a str,
        argument: &'a str,
        patterns: &'a str,
        problem: Option<Problem>,
    },
}

impl<'a> DenyReason<'a> {
    /// The role that decided, if one did.
    pub fn role(&self) -> Option<&'a str> {
        match *self {
            DenyReason::AppDeniedBy { role }
            | DenyReason::DeniedBy { role, .. }
            | DenyReason::ArgumentNotAllowed { role, .. }
            | DenyReason::ArgumentDenied { role, .. } => Some(role),
            DenyReason::AppNotAllowed | DenyReason::NotAllowed(_) => None,
        }
    }

    /// Where in the role the deciding rule is, e.g. `deny.mcp.arguments["*"].url`.
    pub fn rule(&self) -> String {
        match self {
            DenyReason::AppDeniedBy { .. } => "deny.app_labels".into(),
            DenyReason::AppNotAllowed => "allow.app_labels".into(),
            DenyReason::DeniedBy {
                subject, pattern, ..
            } => format!("deny.mcp.{}s {pattern:?}", subject.noun()),
            DenyReason::NotAllowed(subject) => format!("allow.mcp.{}s", subject.noun()),
            DenyReason::ArgumentNotAllowed {
                tool_pattern,
                argument,
                ..
            } => format!("allow.mcp.arguments[{tool_pattern:?}].{argument}"),
            DenyReason::ArgumentDenied {
                tool_pattern,
                argument,
                ..
            } => format!("deny.mcp.arguments[{tool_pattern:?}].{argument}"),
        }
    }
}

impl fmt::Display for DenyReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::AppDeniedBy { role } => write!(f, "app denied by role {role}"),
            DenyReason::AppNotAllowed => f.write_str("no role allows this app"),
            DenyReason::DeniedBy {
                subject,
                role,
                pattern,
            } => write!(
                f,
                "{} denied by role {role} (pattern {pattern:?})",
                subject.noun()
            ),
            DenyReason::NotAllowed(subject) => {
                write!(f, "no role allows this {}", subject.noun())
            }
            DenyReason::ArgumentNotAllowed {
                role,
                tool_pattern,
                argument,
                patterns,
                problem,
            } => {
                match problem {
                    Some(p) => write!(f, "argument {argument:?} {p}")?,
                    None => write!(f, "argument {argument:?} does not match {patterns}")?,
                }
                write!(
                    f,
                    "; role {role} allows it only matching {patterns} (allow.mcp.arguments[{tool_pattern:?}])"
                )
            }
            DenyReason::ArgumentDenied {
                role,
                tool_pattern,
                argument,
                patterns,
                problem,
            } => {
                match problem {
                    Some(p) => write!(
                        f,
                        "argument {argument:?} {p}, so it cannot be checked against {patterns}"
                    )?,
                    None => write!(f, "argument {argument:?} matches {patterns}")?,
                }
                write!(
                    f,
                    ", denied by role {role} (deny.mcp.arguments[{tool_pattern:?}])"
                )
            }
        }
    }
}

/// The decision about one tool, resource or prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Allowed by this role and pattern.
    Allow {
        role: &'a str,
        pattern: &'a str,
    },
    Deny(DenyReason<'a>),
}

impl Decision<'_> {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// The decision about one request: what is enforced and, when a role in dry-run mode
/// (`options.mcp_dry_run`) would have refused it, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDecision<'a> {
    pub decision: Decision<'a>,
    /// Set only when `decision` allows: the denial that is recorded, not enforced.
    pub would_deny: Option<DenyReason<'a>>,
}

/// What a limit counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every call of the identity.
    Identity,
    /// Its calls on one app.
    App,
    /// Its calls of one tool on one app.
    Tool,
}

/// The strictest limits of one scope that apply to a call, with the roles that set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound<'a> {
    pub scope: Scope,
    pub per_minute: Option<(u32, &'a str)>,
    pub concurrent: Option<(u32, &'a str)>,
}

/// The decision about one app: which roles apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppDecision<'a> {
    Allow { roles: Vec<&'a str> },
    Deny(DenyReason<'a>),
}

/// A user's or bot's roles, compiled with its traits.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: Vec<CompiledRole>,
    /// Some role has argument rules: calls' arguments must be read.
    arguments: bool,
    /// Some role is in dry-run mode: denials are evaluated twice.
    dry_run: bool,
}

impl Policy {
    /// Compiles `roles` for an identity with `traits`. Templates expand to one pattern per
    /// trait value, or to none when the trait is missing.
    pub fn compile(
        roles: &[Role],
        traits: &BTreeMap<String, Vec<String>>,
    ) -> Result<Policy, PolicyError> {
        let roles: Vec<CompiledRole> = roles
            .iter()
            .map(|r| compile_role(r, traits))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            arguments: roles
                .iter()
                .any(|r| !r.allow_args.is_empty() || !r.deny_args.is_empty()),
            dry_run: roles.iter().any(|r| r.dry_run),
            roles,
        })
    }

    /// Validates a role as `admin create` does: every pattern compiles.
    pub fn check(role: &Role) -> Result<(), PolicyError> {
        compile_role(role, &BTreeMap::new()).map(|_| ())
    }

    /// Names of the roles in this policy.
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(|r| r.name.as_str())
    }

    /// May this identity reach an app with these labels, and through which roles?
    pub fn app(&self, labels: &BTreeMap<String, String>) -> AppDecision<'_> {
        if let Some(r) = self.roles.iter().find(|r| r.deny_apps.matches(labels)) {
            return AppDecision::Deny(DenyReason::AppDeniedBy { role: &r.name });
        }
        let roles: Vec<&str> = self
            .roles
            .iter()
            .filter(|r| r.allow_apps.matches(labels))
            .map(|r| r.name.as_str())
            .collect();
        if roles.is_empty() {
            AppDecision::Deny(DenyReason::AppNotAllowed)
        } else {
            AppDecision::Allow { roles }
        }
    }

    /// Whether some role sets `mcp_limits`.
    pub fn has_limits(&self) -> bool {
        self.roles.iter().any(|r| r.limits.is_some())
    }

    /// The limits on a call to `app` (of `tool`, for `tools/call`): for each scope that has
    /// any, the strictest of every role's.
    pub fn limits(&self, app: &str, tool: Option<&str>) -> Vec<Bound<'_>> {
        fn add<'a>(out: &mut Vec<Bound<'a>>, scope: Scope, limit: &Limit, role: &'a str) {
            let i = match out.iter().position(|b| b.scope == scope) {
                Some(i) => i,
                None => {
                    out.push(Bound {
                        scope,
                        per_minute: None,
                        concurrent: None,
                    });
                    out.len() - 1
                }
            };
            let b = &mut out[i];
            if let Some(n) = limit.calls_per_minute
                && b.per_minute.is_none_or(|(m, _)| n < m)
            {
                b.per_minute = Some((n, role));
            }
            if let Some(n) = limit.concurrent_calls
                && b.concurrent.is_none_or(|(m, _)| n < m)
            {
                b.concurrent = Some((n, role));
            }
        }
        let mut out: Vec<Bound<'_>> = Vec::new();
        for r in &self.roles {
            let Some(Limits { all, apps, tools }) = &r.limits else {
                continue;
            };
            add(&mut out, Scope::Identity, all, &r.name);
            for (_, l) in apps.iter().filter(|(m, _)| m.matches(app)) {
                add(&mut out, Scope::App, l, &r.name);
            }
            if let Some(tool) = tool {
                for (_, l) in tools.iter().filter(|(m, _)| m.matches(tool)) {
                    add(&mut out, Scope::Tool, l, &r.name);
                }
            }
        }
        out.retain(|b| b.per_minute.is_some() || b.concurrent.is_some());
        out
    }

    /// Whether some role has argument rules (a call's arguments must then be read).
    pub fn has_argument_rules(&self) -> bool {
        self.arguments
    }

    /// May this identity use the tool, resource or prompt `value` on an app with these
    /// labels, whatever the arguments? Any matching deny wins; otherwise a role that applies
    /// to the app must allow it. Argument rules are not applied (the tool lists and `mcp ls`
    /// ask this); the rules of roles in dry-run mode are not enforced. Allocation-free.
    pub fn decide(
        &self,
        labels: &BTreeMap<String, String>,
        subject: Subject,
        value: &str,
    ) -> Decision<'_> {
        self.evaluate(labels, subject, value, None, false)
    }

    /// The decision about one request: a `tools/call` with its `args` (argument rules
    /// apply), or a resource or prompt (`args` is `None`). What a role in dry-run mode would
    /// have denied is allowed, with the reason in [`CallDecision::would_deny`].
    pub fn decide_call<'p>(
        &'p self,
        labels: &BTreeMap<String, String>,
        subject: Subject,
        value: &str,
        args: Option<&Arguments>,
    ) -> CallDecision<'p> {
        let decision = self.evaluate(labels, subject, value, args, false);
        let would_deny = if self.dry_run && decision.is_allow() {
            match self.evaluate(labels, subject, value, args, true) {
                Decision::Deny(reason) => Some(reason),
                Decision::Allow { .. } => None,
            }
        } else {
            None
        };
        CallDecision {
            decision,
            would_deny,
        }
    }

    /// The decision, with the MCP rules of dry-run roles enforced (`strict`) or not.
    fn evaluate<'p>(
        &'p self,
        labels: &BTreeMap<String, String>,
        subject: Subject,
        value: &str,
        args: Option<&Arguments>,
        strict: bool,
    ) -> Decision<'p> {
        if let Some(r) = self.roles.iter().find(|r| r.deny_apps.matches(labels)) {
            return Decision::Deny(DenyReason::AppDeniedBy { role: &r.name });
        }
        let i = subject.index();
        let args = args.filter(|_| subject == Subject::Tool);
        for r in self.roles.iter().filter(|r| strict || !r.dry_run) {
            if let Some(pattern) = r.deny[i].find(value) {
                return Decision::Deny(DenyReason::DeniedBy {
                    subject,
                    role: &r.name,
                    pattern,
                });
            }
            if let Some(reason) = args.and_then(|a| r.denied_argument(value, a)) {
                return Decision::Deny(reason);
            }
        }
        let mut any_app = false;
        let mut unmet = None;
        for r in self.roles.iter().filter(|r| r.allow_apps.matches(labels)) {
            any_app = true;
            if let Some(pattern) = r.allow[i].find(value) {
                if let Some(args) = args.filter(|_| strict || !r.dry_run)
                    && let Some(reason) = r.unmet_argument(value, args)
                {
                    // Another role may allow it with other (or no) argument rules.
                    unmet.get_or_insert(reason);
                    continue;
                }
                return Decision::Allow {
                    role: &r.name,
                    pattern,
                };
            }
        }
        Decision::Deny(match (unmet, any_app) {
            (Some(reason), _) => reason,
            (None, true) => DenyReason::NotAllowed(subject),
            (None, false) => DenyReason::AppNotAllowed,
        })
    }

    /// May this identity call `tool` on an app with these labels?
    pub fn tool(&self, labels: &BTreeMap<String, String>, tool: &str) -> Decision<'_> {
        self.decide(labels, Subject::Tool, tool)
    }

    /// May this identity read or subscribe to the resource at `uri`?
    pub fn resource(&self, labels: &BTreeMap<String, String>, uri: &str) -> Decision<'_> {
        self.decide(labels, Subject::Resource, uri)
    }

    /// May this identity get the prompt `name`?
    pub fn prompt(&self, labels: &BTreeMap<String, String>, name: &str) -> Decision<'_> {
        self.decide(labels, Subject::Prompt, name)
    }

    /// The allowed and denied patterns of one kind for an app, for `mcp ls`.
    pub fn patterns(
        &self,
        labels: &BTreeMap<String, String>,
        subject: Subject,
    ) -> (Vec<&str>, Vec<&str>) {
        let mut allow = Vec::new();
        let mut deny = Vec::new();
        if !self.app(labels).is_allow() {
            return (allow, deny);
        }
        let i = subject.index();
        for r in &self.roles {
            if !r.dry_run {
                deny.extend(r.deny[i].0.iter().map(|(p, _)| p.as_str()));
            }
            if r.allow_apps.matches(labels) {
                allow.extend(r.allow[i].0.iter().map(|(p, _)| p.as_str()));
            }
        }
        allow.dedup();
        deny.dedup();
        (allow, deny)
    }

    /// The allowed and denied tool patterns for an app, for `mcp ls`.
    pub fn tool_patterns(&self, labels: &BTreeMap<String, String>) -> (Vec<&str>, Vec<&str>) {
        self.patterns(labels, Subject::Tool)
    }

    /// May this identity use `verb` on resources of `kind` through the admin API?
    pub fn admin(&self, kind: &str, verb: &str) -> bool {
        let hit = |rules: &[Rule]| {
            rules.iter().any(|rule| {
                rule.resources
                    .iter()
                    .any(|r| r == "*" || r == kind || r.strip_suffix('s') == Some(kind))
                    && rule.verbs.iter().any(|v| v == "*" || v == verb)
            })
        };
        !self.roles.iter().any(|r| hit(&r.deny_rules))
            && self.roles.iter().any(|r| hit(&r.allow_rules))
    }

    /// The longest certificate these roles permit: the smallest `max_session_ttl` set.
    pub fn max_session_ttl(&self) -> Option<Duration> {
        self.roles.iter().filter_map(|r| r.max_session_ttl).min()
    }
}

impl AppDecision<'_> {
    pub fn is_allow(&self) -> bool {
        matches!(self, AppDecision::Allow { .. })
    }
}

fn compile_role(
    role: &Role,
    traits: &BTreeMap<String, Vec<String>>,
) -> Result<CompiledRole, PolicyError> {
    let name = role.metadata.name.to_string();
    let err = |field: String, source| PolicyError {
        role: name.clone(),
        field,
        source,
    };
    let patterns = |field: &str, list: &[String]| -> Result<Patterns, PolicyError> {
        let mut out = Vec::new();
        for (i, p) in list.iter().enumerate() {
            let field = || format!("{field}[{i}]");
            for expanded in expand(p, traits).map_err(|e| err(field(), e))? {
                let m = Matcher::new(&expanded).map_err(|e| err(field(), e))?;
                out.push((expanded, m));
            }
        }
        Ok(Patterns(out))
    };
    let selector = |field: &str, sel: &LabelSelector| -> Result<Selector, PolicyError> {
        let mut out = Vec::new();
        for (key, values) in sel {
            let field = format!("{field}.{key}");
            let key = Matcher::new(key).map_err(|e| err(field.clone(), e))?;
            let values = patterns(&field, values.values())?
                .0
                .into_iter()
                .map(|(_, m)| m)
                .collect();
            out.push((key, values));
        }
        Ok(Selector(out))
    };
    let spec = &role.spec;
    let mcp = |side: &str,
               c: &Option<mcpgate_types::resource::McpCondition>|
     -> Result<[Patterns; 3], PolicyError> {
        let empty = Vec::new();
        let list = |s: Subject| match (c, s) {
            (None, _) => &empty,
            (Some(c), Subject::Tool) => &c.tools,
            (Some(c), Subject::Resource) => &c.resources,
            (Some(c), Subject::Prompt) => &c.prompts,
        };
        Ok([
            patterns(&format!("{side}.mcp.tools"), list(Subject::Tool))?,
            patterns(&format!("{side}.mcp.resources"), list(Subject::Resource))?,
            patterns(&format!("{side}.mcp.prompts"), list(Subject::Prompt))?,
        ])
    };
    let arguments = |side: &str,
                     c: &Option<mcpgate_types::resource::McpCondition>|
     -> Result<Vec<ArgRule>, PolicyError> {
        let mut out = Vec::new();
        let Some(c) = c else { return Ok(out) };
        for (tool_pattern, named) in &c.arguments {
            let field = format!("{side}.mcp.arguments[{tool_pattern:?}]");
            let mut args = Vec::new();
            for (name, patterns) in named {
                let field = format!("{field}.{name}");
                let mut compiled = Vec::new();
                let mut shown = Vec::new();
                for (i, p) in patterns.values().iter().enumerate() {
                    let field = || format!("{field}[{i}]");
                    for expanded in expand(p, traits).map_err(|e| err(field(), e))? {
                        compiled.push(ArgMatcher::new(&expanded).map_err(|e| err(field(), e))?);
                        shown.push(expanded);
                    }
                }
                let shown = match shown.as_slice() {
                    [one] => format!("{one:?}"),
                    _ => format!("one of {shown:?}"),
                };
                args.push(ArgConstraint {
                    name: name.clone(),
                    patterns: compiled,
                    shown,
                });
            }
            for tool in expand(tool_pattern, traits).map_err(|e| err(field.clone(), e))? {
                out.push(ArgRule {
                    tool: Matcher::new(&tool).map_err(|e| err(field.clone(), e))?,
                    tool_pattern: tool,
                    args: args.clone(),
                });
            }
        }
        Ok(out)
    };
    Ok(CompiledRole {
        allow_apps: selector("allow.app_labels", &spec.allow.app_labels)?,
        deny_apps: selector("deny.app_labels", &spec.deny.app_labels)?,
        allow: mcp("allow", &spec.allow.mcp)?,
        deny: mcp("deny", &spec.deny.mcp)?,
        allow_args: arguments("allow", &spec.allow.mcp)?,
        deny_args: arguments("deny", &spec.deny.mcp)?,
        dry_run: spec.options.mcp_dry_run,
        limits: match &spec.options.mcp_limits {
            None => None,
            Some(l) => {
                let named = |field: &str, map: &BTreeMap<String, Limit>| {
                    map.iter()
                        .map(|(p, l)| {
                            Matcher::new(p)
                                .map(|m| (m, *l))
                                .map_err(|e| err(format!("options.mcp_limits.{field}.{p}"), e))
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                Some(Limits {
                    all: l.all(),
                    apps: named("apps", &l.apps)?,
                    tools: named("tools", &l.tools)?,
                })
            }
        },
        allow_rules: spec.allow.rules.clone(),
        deny_rules: spec.deny.rules.clone(),
        max_session_ttl: spec.options.max_session_ttl,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgate_types::resource::{Resource, parse_resources};

    fn roles(yaml: &str) -> Vec<Role> {
        parse_resources("t.yaml", yaml)
            .unwrap()
            .0
            .into_iter()
            .filter_map(|r| match r {
                Resource::Role(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const DEV: &str = "kind: role
version: v8
metadata: {name: dev}
spec:
  options: {max_session_ttl: 2h}
  allow:
    app_labels: {env: [dev, 'stag*']}
    mcp: {tools: ['read_*', '^(get|list)_.*$', echo, '{{internal.mcp_tools}}']}
    rules: [{resources: [role, app], verbs: [list, read]}]
  deny:
    mcp: {tools: ['*delete*']}
";

    fn dev(traits: &[(&str, &[&str])]) -> Policy {
        let traits = traits
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        Policy::compile(&roles(DEV), &traits).unwrap()
    }

    #[test]
    fn allows_only_listed_tools_on_matching_apps() {
        let p = dev(&[("mcp_tools", &["write_note"])]);
        let app = labels(&[("env", "dev")]);
        assert!(p.tool(&app, "read_file").is_allow());
        assert!(p.tool(&app, "list_issues").is_allow());
        assert!(p.tool(&app, "echo").is_allow());
        assert!(p.tool(&app, "write_note").is_allow(), "trait-granted tool");
        assert_eq!(
            p.tool(&app, "write_file"),
            Decision::Deny(DenyReason::NotAllowed(Subject::Tool))
        );
        assert_eq!(
            p.tool(&app, "read_delete"),
            Decision::Deny(DenyReason::DeniedBy {
                subject: Subject::Tool,
                role: "dev",
                pattern: "*delete*"
            })
        );
        assert!(p.tool(&labels(&[("env", "staging")]), "echo").is_allow());
        assert_eq!(
            p.tool(&labels(&[("env", "prod")]), "echo"),
            Decision::Deny(DenyReason::AppNotAllowed)
        );
        assert_eq!(
            p.tool(&labels(&[]), "echo"),
            Decision::Deny(DenyReason::AppNotAllowed)
        );
    }

    #[test]
    fn no_roles_means_nothing() {
        let p = Policy::default();
        assert!(!p.tool(&labels(&[("env", "dev")]), "echo").is_allow());
        assert!(!p.app(&labels(&[("env", "dev")])).is_allow());
        assert!(!p.admin("role", "list"));
    }

    #[test]
    fn deny_app_labels_win_over_allow() {
        let mut rs = roles(DEV);
        rs.extend(roles(
            "kind: role\nversion: v8\nmetadata: {name: no-dev}\nspec:\n  deny:\n    app_labels: {env: dev}\n",
        ));
        let p = Policy::compile(&rs, &BTreeMap::new()).unwrap();
        assert_eq!(
            p.app(&labels(&[("env", "dev")])),
            AppDecision::Deny(DenyReason::AppDeniedBy { role: "no-dev" })
        );
        assert!(!p.tool(&labels(&[("env", "dev")]), "echo").is_allow());
        assert!(p.tool(&labels(&[("env", "staging")]), "echo").is_allow());
    }

    #[test]
    fn wildcard_selector_matches_every_app() {
        let rs = roles(
            "kind: role\nversion: v8\nmetadata: {name: all}\nspec:\n  allow:\n    app_labels: {'*': '*'}\n    mcp: {tools: ['*']}\n",
        );
        let p = Policy::compile(&rs, &BTreeMap::new()).unwrap();
        assert!(p.tool(&labels(&[]), "anything").is_allow());
        assert!(p.tool(&labels(&[("a", "b")]), "x").is_allow());
    }

    #[test]
    fn admin_rules() {
        let p = dev(&[]);
        assert!(p.admin("role", "list"));
        assert!(p.admin("app", "read"));
        assert!(!p.admin("role", "create"));
        assert!(!p.admin("user", "list"));
        let rs = roles(
            "kind: role\nversion: v8\nmetadata: {name: editor}\nspec:\n  allow:\n    rules: [{resources: ['*'], verbs: ['*']}]\n  deny:\n    rules: [{resources: [user], verbs: [delete]}]\n",
        );
        let p = Policy::compile(&rs, &BTreeMap::new()).unwrap();
        assert!(p.admin("role", "create"));
        assert!(!p.admin("user", "delete"));
    }

    #[test]
    fn max_ttl_is_the_smallest() {
        let mut rs = roles(DEV);
        rs.extend(roles("kind: role\nversion: v8\nmetadata: {name: short}\nspec:\n  options: {max_session_ttl: 30m}\n"));
        let p = Policy::compile(&rs, &BTreeMap::new()).unwrap();
        assert_eq!(p.max_session_ttl(), Some(Duration::from_secs(1800)));
        assert_eq!(Policy::default().max_session_ttl(), None);
    }

    #[test]
    fn bad_pattern_names_role_and_field() {
        let rs = roles(&DEV.replace("echo,", "'^(bad$',"));
        let e = Policy::check(&rs[0]).unwrap_err();
        assert_eq!(e.role, "dev");
        assert_eq!(e.field, "allow.mcp.tools[2]");
    }

    #[test]
    fn resources_and_prompts_have_their_own_patterns() {
        let rs = roles(
            "kind: role
version: v8
metadata: {name: docs}
spec:
  allow:
    app_labels: {env: dev}
    mcp:
      tools: [echo]
      resources: ['file:///public/*', '^mem://notes/[0-9]+$', '{{internal.mcp_resources}}']
      prompts: [greet, '{{internal.mcp_prompts}}']
  deny:
    mcp:
      resources: ['*secret*']
      prompts: ['admin_*']
",
        );
        let traits = [
            (
                "mcp_resources".to_string(),
                vec!["test://static/1".to_string()],
            ),
            ("mcp_prompts".to_string(), vec!["admin_reset".to_string()]),
        ]
        .into_iter()
        .collect();
        let p = Policy::compile(&rs, &traits).unwrap();
        let app = labels(&[("env", "dev")]);
        assert!(p.resource(&app, "file:///public/a/b.txt").is_allow());
        assert!(p.resource(&app, "mem://notes/42").is_allow());
        assert!(p.resource(&app, "test://static/1").is_allow(), "trait");
        assert_eq!(
            p.resource(&app, "file:///etc/passwd"),
            Decision::Deny(DenyReason::NotAllowed(Subject::Resource))
        );
        assert_eq!(
            p.resource(&app, "file:///public/secret.txt"),
            Decision::Deny(DenyReason::DeniedBy {
                subject: Subject::Resource,
                role: "docs",
                pattern: "*secret*"
            })
        );
        assert!(p.prompt(&app, "greet").is_allow());
        // Deny wins even over a trait-granted prompt.
        assert!(!p.prompt(&app, "admin_reset").is_allow());
        // A tool pattern grants no resource or prompt, and the other way round.
        assert!(!p.resource(&app, "echo").is_allow());
        assert!(!p.prompt(&app, "echo").is_allow());
        assert!(!p.tool(&app, "greet").is_allow());
        let Decision::Deny(reason) = p.resource(&app, "file:///x") else {
            panic!("allowed")
        };
        assert_eq!(reason.to_string(), "no role allows this resource");
        assert!(!p.prompt(&labels(&[("env", "prod")]), "greet").is_allow());
        let (allow, deny) = p.patterns(&app, Subject::Prompt);
        assert_eq!(allow, vec!["greet", "admin_reset"]);
        assert_eq!(deny, vec!["admin_*"]);
    }

    const DOCS: &str = "kind: role
version: v8
metadata: {name: docs}
spec:
  allow:
    app_labels: {env: dev}
    mcp:
      tools: [read_file, create_issue, search]
      arguments:
        read_file: {path: /srv/docs/**}
        create_issue: {repo: ['acme/*', '{{internal.orgs}}/*']}
  deny:
    mcp:
      arguments:
        '*': {url: '^https?://(169\\.254|127\\.|10\\.|localhost).*$'}
";

    fn args(json: &str) -> Arguments {
        Arguments::parse(Some(json)).unwrap()
    }

    #[test]
    fn argument_rules_allow_only_matching_calls() {
        let traits = [("orgs".to_string(), vec!["umbrella".to_string()])]
            .into_iter()
            .collect();
        let p = Policy::compile(&roles(DOCS), &traits).unwrap();
        assert!(p.has_argument_rules());
        let app = labels(&[("env", "dev")]);
        let call = |tool: &str, a: &str| p.decide_call(&app, Subject::Tool, tool, Some(&args(a)));
        assert!(
            call("read_file", r#"{"path": "/srv/docs/a/b.md"}"#)
                .decision
                .is_allow()
        );
        let d = call("read_file", r#"{"path": "/srv/docs/../../etc/passwd"}"#).decision;
        let Decision::Deny(reason) = d else {
            panic!("allowed: {d:?}")
        };
        assert_eq!(reason.role(), Some("docs"));
        assert_eq!(reason.rule(), r#"allow.mcp.arguments["read_file"].path"#);
        assert_eq!(
            reason.to_string(),
            r#"argument "path" does not match "/srv/docs/**"; role docs allows it only matching "/srv/docs/**" (allow.mcp.arguments["read_file"])"#
        );
        let Decision::Deny(reason) = call("read_file", "{}").decision else {
            panic!("a missing argument was allowed")
        };
        assert!(
            reason
                .to_string()
                .starts_with(r#"argument "path" is missing"#)
        );
        assert!(
            !call("read_file", r#"{"path": ["/srv/docs/a"]}"#)
                .decision
                .is_allow()
        );
        assert!(
            !call("read_file", r#"{"path": "docs/a"}"#)
                .decision
                .is_allow()
        );
        assert!(
            call("create_issue", r#"{"repo": "acme/widgets"}"#)
                .decision
                .is_allow()
        );
        assert!(
            call("create_issue", r#"{"repo": "umbrella/x"}"#)
                .decision
                .is_allow(),
            "trait"
        );
        assert!(
            !call("create_issue", r#"{"repo": "evil/x"}"#)
                .decision
                .is_allow()
        );
        assert!(
            !call("create_issue", r#"{"repo": "acme/x/y"}"#)
                .decision
                .is_allow()
        );
        // A tool without argument rules takes any arguments, except what a deny rule names.
        assert!(
            call("search", r#"{"url": "https://example.com/"}"#)
                .decision
                .is_allow()
        );
        let Decision::Deny(reason) =
            call("search", r#"{"url": "http://169.254.169.254/"}"#).decision
        else {
            panic!("a denied argument was allowed")
        };
        assert_eq!(reason.rule(), r#"deny.mcp.arguments["*"].url"#);
        assert!(
            reason.to_string().contains("denied by role docs"),
            "{reason}"
        );
        // A deny rule that cannot read its argument denies.
        assert!(
            !call("search", r#"{"url": {"host": "127.0.0.1"}}"#)
                .decision
                .is_allow()
        );
        // Names alone: the lists still offer the tools.
        assert!(p.tool(&app, "read_file").is_allow());
        // Another role allowing the tool without argument rules allows the call.
        let mut rs = roles(DOCS);
        rs.extend(roles("kind: role\nversion: v8\nmetadata: {name: reader}\nspec:\n  allow:\n    app_labels: {env: dev}\n    mcp: {tools: [read_file]}\n"));
        let p = Policy::compile(&rs, &traits).unwrap();
        let d = p.decide_call(
            &app,
            Subject::Tool,
            "read_file",
            Some(&args(r#"{"path": "/etc/passwd"}"#)),
        );
        assert_eq!(
            d.decision,
            Decision::Allow {
                role: "reader",
                pattern: "read_file"
            }
        );
    }

    #[test]
    fn dry_run_roles_record_without_enforcing() {
        let yaml = DOCS.replace("spec:\n", "spec:\n  options: {mcp_dry_run: true}\n");
        let mut rs = roles(&yaml);
        rs.extend(roles("kind: role\nversion: v8\nmetadata: {name: strict}\nspec:\n  deny:\n    mcp: {tools: [search]}\n"));
        let p = Policy::compile(&rs, &BTreeMap::new()).unwrap();
        let app = labels(&[("env", "dev")]);
        let d = p.decide_call(
            &app,
            Subject::Tool,
            "read_file",
            Some(&args(r#"{"path": "/etc/passwd"}"#)),
        );
        assert!(d.decision.is_allow());
        let reason = d.would_deny.expect("recorded");
        assert_eq!(reason.role(), Some("docs"));
        let d = p.decide_call(
            &app,
            Subject::Tool,
            "read_file",
            Some(&args(r#"{"path": "/srv/docs/x"}"#)),
        );
        assert_eq!(d.would_deny, None);
        // Other roles' denials are still enforced.
        let d = p.decide_call(&app, Subject::Tool, "search", Some(&args("{}")));
        assert!(!d.decision.is_allow());
        assert_eq!(d.would_deny, None);
        // What the role does not allow stays denied: dry-run only relaxes its restrictions.
        assert!(
            !p.decide_call(&app, Subject::Tool, "write_file", None)
                .decision
                .is_allow()
        );
    }

    #[test]
    fn bad_argument_patterns_name_the_field() {
        let rs = roles(&DOCS.replace("/srv/docs/**", "'^(bad$'"));
        let e = Policy::check(&rs[0]).unwrap_err();
        assert_eq!(e.field, r#"allow.mcp.arguments["read_file"].path[0]"#);
    }

    #[test]
    fn the_strictest_limits_win() {
        let rs = roles(
            "kind: role
version: v8
metadata: {name: a}
spec:
  options:
    mcp_limits:
      calls_per_minute: 60
      concurrent_calls: 4
      tools: {'create_*': {calls_per_minute: 5}}
---
kind: role
version: v8
metadata: {name: b}
spec:
  options:
    mcp_limits:
      calls_per_minute: 30
      apps: {github: {concurrent_calls: 1}}
",
        );
        let p = Policy::compile(&rs, &BTreeMap::new()).unwrap();
        assert!(p.has_limits());
        let b = p.limits("github", Some("create_issue"));
        assert_eq!(
            b,
            vec![
                Bound {
                    scope: Scope::Identity,
                    per_minute: Some((30, "b")),
                    concurrent: Some((4, "a"))
                },
                Bound {
                    scope: Scope::Tool,
                    per_minute: Some((5, "a")),
                    concurrent: None
                },
                Bound {
                    scope: Scope::App,
                    per_minute: None,
                    concurrent: Some((1, "b"))
                },
            ]
        );
        assert_eq!(p.limits("docs", Some("read")).len(), 1);
        assert!(!dev(&[]).has_limits());
        assert!(dev(&[]).limits("x", None).is_empty());
    }

    #[test]
    fn patterns_for_ls() {
        let p = dev(&[]);
        let (allow, deny) = p.tool_patterns(&labels(&[("env", "dev")]));
        assert_eq!(allow, vec!["read_*", "^(get|list)_.*$", "echo"]);
        assert_eq!(deny, vec!["*delete*"]);
        let (allow, _) = p.tool_patterns(&labels(&[("env", "prod")]));
        assert!(allow.is_empty());
    }
}

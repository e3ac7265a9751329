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

use mcpgate_types::resource::{LabelSelector, Role, Rule};

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

#[derive(Debug, Clone)]
struct CompiledRole {
    name: String,
    allow_apps: Selector,
    deny_apps: Selector,
    /// Allowed and denied patterns, indexed by [`Subject`].
    allow: [Patterns; 3],
    deny: [Patterns; 3],
    allow_rules: Vec<Rule>,
    deny_rules: Vec<Rule>,
    max_session_ttl: Option<Duration>,
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
}

impl Policy {
    /// Compiles `roles` for an identity with `traits`. Templates expand to one pattern per
    /// trait value, or to none when the trait is missing.
    pub fn compile(
        roles: &[Role],
        traits: &BTreeMap<String, Vec<String>>,
    ) -> Result<Policy, PolicyError> {
        let roles = roles
            .iter()
            .map(|r| compile_role(r, traits))
            .collect::<Result<_, _>>()?;
        Ok(Policy { roles })
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

    /// May this identity use the tool, resource or prompt `value` on an app with these
    /// labels? Any matching deny wins; otherwise a role that applies to the app must allow
    /// it. Allocation-free.
    pub fn decide(
        &self,
        labels: &BTreeMap<String, String>,
        subject: Subject,
        value: &str,
    ) -> Decision<'_> {
        if let Some(r) = self.roles.iter().find(|r| r.deny_apps.matches(labels)) {
            return Decision::Deny(DenyReason::AppDeniedBy { role: &r.name });
        }
        let i = subject.index();
        for r in &self.roles {
            if let Some(pattern) = r.deny[i].find(value) {
                return Decision::Deny(DenyReason::DeniedBy {
                    subject,
                    role: &r.name,
                    pattern,
                });
            }
        }
        let mut any_app = false;
        for r in self.roles.iter().filter(|r| r.allow_apps.matches(labels)) {
            any_app = true;
            if let Some(pattern) = r.allow[i].find(value) {
                return Decision::Allow {
                    role: &r.name,
                    pattern,
                };
            }
        }
        Decision::Deny(if any_app {
            DenyReason::NotAllowed(subject)
        } else {
            DenyReason::AppNotAllowed
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
            deny.extend(r.deny[i].0.iter().map(|(p, _)| p.as_str()));
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
    Ok(CompiledRole {
        allow_apps: selector("allow.app_labels", &spec.allow.app_labels)?,
        deny_apps: selector("deny.app_labels", &spec.deny.app_labels)?,
        allow: mcp("allow", &spec.allow.mcp)?,
        deny: mcp("deny", &spec.deny.mcp)?,
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

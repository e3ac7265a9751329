//! `mcpgate admin policy test`: why a call would be allowed or denied, decided by the
//! gateway's own function ([`Policy::decide_call`]) over the cluster's roles, the identity's
//! traits, the app's labels and the locks in force.

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

use mcpgate_policy::{Arguments, Decision, Policy, Subject};
use mcpgate_types::IdentityKind;
use mcpgate_types::resource::{App, Lock, Role};

use super::{Format, print_data};
use crate::client::Api;

/// Who, where and what to decide about.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["user", "bot"])))]
#[command(group(clap::ArgGroup::new("what").required(true).args(["tool", "resource", "prompt"])))]
pub struct TestArgs {
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    bot: Option<String>,
    #[arg(long)]
    app: String,
    #[arg(long)]
    tool: Option<String>,
    /// A resource URI (resources/read).
    #[arg(long)]
    resource: Option<String>,
    /// A prompt name (prompts/get).
    #[arg(long)]
    prompt: Option<String>,
    /// The tool call's arguments, a JSON object (default: none).
    #[arg(long, requires = "tool")]
    args: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// The answer, as `--format json` prints it.
#[derive(Debug, Serialize)]
struct Explained {
    /// `allow`, `deny` or `would_deny` (allowed: a role in dry-run mode would deny it).
    decision: &'static str,
    role: Option<String>,
    rule: Option<String>,
    reason: String,
}

pub async fn test(api: &Api, a: TestArgs) -> anyhow::Result<()> {
    let (kind, name) = match (&a.user, &a.bot) {
        (Some(u), _) => (IdentityKind::User, u.as_str()),
        (_, Some(b)) => (IdentityKind::Bot, b.as_str()),
        _ => bail!("name the identity: --user or --bot"),
    };
    let (subject, value) = match (&a.tool, &a.resource, &a.prompt) {
        (Some(t), _, _) => (Subject::Tool, t.as_str()),
        (_, Some(r), _) => (Subject::Resource, r.as_str()),
        (_, _, Some(p)) => (Subject::Prompt, p.as_str()),
        _ => bail!("name what is called: --tool, --resource or --prompt"),
    };
    let args = match (&a.args, subject) {
        (Some(json), _) => Some(Arguments::parse(Some(json)).map_err(|e| anyhow!("--args: {e}"))?),
        (None, Subject::Tool) => Some(Arguments::default()),
        (None, _) => None,
    };
    let kind_word = if kind == IdentityKind::User {
        "user"
    } else {
        "bot"
    };
    let identity: Value = one(api, kind_word, name).await?;
    let role_names: Vec<String> = serde_json::from_value(identity["roles"].clone())
        .with_context(|| format!("the {kind_word}'s roles cannot be read"))?;
    let traits: BTreeMap<String, Vec<String>> =
        serde_json::from_value(identity["traits"].clone()).unwrap_or_default();
    // Created in the cluster or announced by an agent: the proxy knows both.
    let app: App = api
        .get(&format!(
            "/v1/admin/apps/{}",
            super::admin::urlencode(&a.app)
        ))
        .await?;
    let all: Vec<Role> = serde_json::from_value(api.get("/v1/admin/resources/role").await?)
        .context("the roles cannot be read")?;
    let roles: Vec<Role> = all
        .into_iter()
        .filter(|r| role_names.iter().any(|n| n == r.metadata.name.as_str()))
        .collect();
    let locks: Vec<Lock> = serde_json::from_value(api.get("/v1/admin/resources/lock").await?)
        .context("the locks cannot be read")?;
    let now = mcpgate_types::clock::unix_secs(std::time::SystemTime::now());
    let noun = subject.noun();
    let out = if let Some(lock) = locks
        .iter()
        .find(|l| l.applies(kind, name, &role_names, now, None))
    {
        Explained {
            decision: "deny",
            role: None,
            rule: Some(format!("lock {}", lock.id)),
            reason: format!(
                "{} is locked{}",
                lock.target,
                if lock.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", lock.message)
                }
            ),
        }
    } else {
        let policy = Policy::compile(&roles, &traits).map_err(|e| anyhow!("{e}"))?;
        let d = policy.decide_call(&app.metadata.labels, subject, value, args.as_ref());
        match (d.decision, d.would_deny) {
            (Decision::Deny(reason), _) => Explained {
                decision: "deny",
                role: reason.role().map(str::to_string),
                rule: Some(reason.rule()),
                reason: format!("{noun} {value:?} is not allowed ({reason})"),
            },
            (Decision::Allow { role, .. }, Some(reason)) => Explained {
                decision: "would_deny",
                role: reason.role().map(str::to_string),
                rule: Some(reason.rule()),
                reason: format!(
                    "{noun} {value:?} would be denied ({reason}), but role {} is in dry-run mode (mcp_dry_run); role {role} allows it",
                    reason.role().unwrap_or("?")
                ),
            },
            (Decision::Allow { role, pattern }, None) => Explained {
                decision: "allow",
                role: Some(role.to_string()),
                rule: Some(format!("allow.mcp.{noun}s {pattern:?}")),
                reason: format!("{noun} {value:?} is allowed by role {role} (pattern {pattern:?})"),
            },
        }
    };
    if a.format != Format::Text {
        return print_data(&out, a.format);
    }
    println!("{}: {}", out.decision, out.reason);
    if let Some(role) = &out.role {
        println!("  role: {role}");
    }
    if let Some(rule) = &out.rule {
        println!("  rule: {rule}");
    }
    Ok(())
}

/// One resource by kind and name, or a clear error when there is none.
async fn one(api: &Api, kind: &str, name: &str) -> anyhow::Result<Value> {
    let items: Vec<Value> = api
        .get(&format!(
            "/v1/admin/resources/{kind}/{}",
            super::admin::urlencode(name)
        ))
        .await?;
    items
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no {kind} named {name:?}"))
}

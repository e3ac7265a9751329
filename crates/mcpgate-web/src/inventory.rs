//! The cluster's inventory: apps, users, bots, tokens, locks (lock and unlock here), roles
//! (with an editor that validates and shows a diff before saving), and "who can call this
//! tool?", answered by the gateway's own decision function.

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mcpgate_policy::{Decision, Policy, Subject};
use mcpgate_types::resource::{Kind, LockTarget, Resource, parse_resources};

use crate::session::{Viewer, viewer};
use crate::{Web, WebError, WebResult, overview, page};

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Unix seconds as a time, for the fields that hold one.
fn field_text(key: &str, v: &Value) -> String {
    match (key, v.as_i64()) {
        ("expires" | "created" | "joined" | "issued_before", Some(secs)) => {
            page::time(mcpgate_types::clock::from_unix_secs(secs))
        }
        _ => text(v),
    }
}

/// A table of resources, one column per field.
fn table(items: &[Value], columns: &[&str], id: &str) -> Markup {
    html! {
        @if items.is_empty() {
            p.muted { "None." }
        } @else {
            table id=(id) {
                thead { tr { @for c in columns { th { (c) } } } }
                tbody {
                    @for item in items {
                        tr data-name=(text(item.pointer("/metadata/name").or(item.get("name")).or(item.get("id")).unwrap_or(&Value::Null))) {
                            @for c in columns {
                                td { (field_text(c, item.pointer(&format!("/{}", c.replace('.', "/"))).unwrap_or(&Value::Null))) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The cluster's apps, and those agents serve on their own (as announced), as JSON.
async fn known_apps(web: &Web, v: &Viewer) -> Result<Vec<Value>, WebError> {
    let mut apps = list(web, v, Kind::App).await?;
    for a in (web.announced)() {
        let name = a.metadata.name.as_str();
        if !apps
            .iter()
            .any(|x| x.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
        {
            apps.push(serde_json::to_value(&a).unwrap_or_default());
        }
    }
    Ok(apps)
}

async fn list(web: &Web, v: &Viewer, kind: Kind) -> Result<Vec<Value>, WebError> {
    Ok(web.auth.get_resources(&v.caller, kind, None).await?)
}

/// `mcp+stdio://` → `stdio`, and so on.
fn transport(uri: &str) -> &'static str {
    if uri.starts_with("mcp+stdio://") {
        "stdio"
    } else if uri.starts_with("mcp+sse+") {
        "SSE (legacy)"
    } else if uri.starts_with("mcp+http") {
        "Streamable HTTP"
    } else {
        "?"
    }
}

/// `GET /apps`.
pub(crate) async fn apps(State(web): State<Arc<Web>>, headers: HeaderMap) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let apps = known_apps(&web, &v).await?;
    let agents = (web.agents)();
    let day = overview::stats(
        &web,
        &v,
        SystemTime::now() - Duration::from_secs(86_400),
        Duration::from_secs(3600),
    )
    .await?;
    let mut names: Vec<String> = apps
        .iter()
        .filter_map(|a| a.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    names.sort();
    let body = html! {
        table id="apps" {
            thead { tr {
                th { "App" } th { "Transport" } th { "URI" } th { "Labels" } th { "Served by" }
                th.num { "Calls, 24 h" } th.num { "Deny rate" } th { "" }
            } }
            tbody {
                @for name in &names {
                    @let spec = apps.iter().find(|a| a.pointer("/metadata/name").and_then(Value::as_str) == Some(name.as_str()));
                    @let uri = spec.and_then(|a| a.pointer("/spec/uri")).and_then(Value::as_str).unwrap_or("(the agent's own)");
                    @let labels = spec.and_then(|a| a.pointer("/metadata/labels")).and_then(Value::as_object).map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                    @let serving: Vec<&str> = agents.iter().filter(|a| a.apps.contains(name)).map(|a| a.name.as_str()).collect();
                    @let c = day.apps.get(name).copied().unwrap_or_default();
                    tr data-name=(name) {
                        td { a href={ "/apps/" (page::encode(name)) } { (name) } }
                        td { (transport(uri)) }
                        td { code { (uri) } }
                        td { (labels) }
                        td { @if serving.is_empty() { span.muted { "no agent" } } @else { (serving.join(", ")) } }
                        td.num { (c.total()) }
                        td.num { (c.deny_rate()) }
                        td { a href={ "/audit?app=" (page::encode(name)) } { "audit" } }
                    }
                }
            }
        }
        @if v.can("role", "list") && v.can("user", "list") {
            h2 { "Who can call a tool?" }
            form.filters method="get" action="/roles/who" {
                label { "App" input name="app" required; }
                label { "Tool" input name="tool" required; }
                button type="submit" { "Ask" }
            }
        }
    };
    Ok(page::shell(&v, "Apps", body))
}

/// The MCP tool annotations, as a person reads them.
const HINTS: [(&str, &str); 4] = [
    ("readOnlyHint", "read-only"),
    ("destructiveHint", "destructive"),
    ("idempotentHint", "idempotent"),
    ("openWorldHint", "open world"),
];

/// `GET /apps/NAME`: the tools its server offers (as its agent listed them), each with its
/// MCP annotations and the roles that allow it, decided by the gateway's own function.
pub(crate) async fn app(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let apps = known_apps(&web, &v).await?;
    let spec = apps
        .iter()
        .find(|a| a.pointer("/metadata/name").and_then(Value::as_str) == Some(name.as_str()))
        .ok_or_else(|| WebError::NotFound(format!("app {name} not found")))?;
    let labels: BTreeMap<String, String> = spec
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    // Each role on its own, without a user's traits: a role whose tools come from traits
    // allows per user (the who-can page answers for each identity).
    let mut roles = Vec::new();
    if v.can("role", "list") {
        for r in list(&web, &v, Kind::Role).await? {
            let Some(role) = r.pointer("/metadata/name").and_then(Value::as_str) else {
                continue;
            };
            let compiled = web.auth.roles(&[role.to_string()]).await?;
            if let Ok(p) = Policy::compile(&compiled, &BTreeMap::new()) {
                let by_traits = r
                    .pointer("/spec")
                    .is_some_and(|s| s.to_string().contains("{{"));
                roles.push((role.to_string(), p, by_traits));
            }
        }
    }
    let tools = (web.tools)(&name);
    let body = html! {
        p { "Transport " (transport(spec.pointer("/spec/uri").and_then(Value::as_str).unwrap_or(""))) ". "
            a href={ "/audit?app=" (page::encode(&name)) } { "Its audit log" } "." }
        @match &tools {
            None => p.muted { "Its tools are not listed yet: an agent lists them when it starts (stdio) or when a session first lists them (HTTP)." },
            Some(tools) => {
                table id="tools" {
                    thead { tr { th { "Tool" } th { "Description" } th { "Annotations" } th { "Allowed by roles" } th { "" } } }
                    tbody {
                        @for t in tools {
                            @let tool = t.get("name").and_then(Value::as_str).unwrap_or("");
                            @let hints: Vec<&str> = HINTS.iter().filter(|(k, _)| t.pointer(&format!("/annotations/{k}")).and_then(Value::as_bool) == Some(true)).map(|(_, h)| *h).collect();
                            @let allowing: Vec<&str> = roles.iter().filter(|(_, p, _)| p.tool(&labels, tool).is_allow()).map(|(r, _, _)| r.as_str()).collect();
                            @let per_user: Vec<&str> = roles.iter().filter(|(_, p, t)| *t && !p.tool(&labels, tool).is_allow()).map(|(r, _, _)| r.as_str()).collect();
                            tr data-name=(tool) {
                                td { code { (tool) } }
                                td { (t.get("description").and_then(Value::as_str).and_then(|d| d.lines().next()).unwrap_or("")) }
                                td.hints { (hints.join(", ")) }
                                td.roles {
                                    @if allowing.is_empty() { span.muted { "none" } } @else { (allowing.join(", ")) }
                                    @if !per_user.is_empty() { br; span.muted { "by the user's traits: " (per_user.join(", ")) } }
                                }
                                td { a href={ "/roles/who?app=" (page::encode(&name)) "&tool=" (page::encode(tool)) } { "who?" } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page::shell(&v, &format!("App {name}"), body))
}

/// `GET /users`.
pub(crate) async fn users(State(web): State<Arc<Web>>, headers: HeaderMap) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let items = list(&web, &v, Kind::User).await?;
    let body = table(
        &items,
        &["name", "roles", "password_set", "otp_enrolled"],
        "users",
    );
    Ok(page::shell(&v, "Users", body))
}

/// `GET /bots`.
pub(crate) async fn bots(State(web): State<Arc<Web>>, headers: HeaderMap) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let items = list(&web, &v, Kind::Bot).await?;
    let body = table(
        &items,
        &["name", "roles", "max_ttl", "generation", "created"],
        "bots",
    );
    Ok(page::shell(&v, "Bots", body))
}

/// `GET /tokens`: join and invite tokens by id (a hash), never the tokens themselves.
pub(crate) async fn tokens(State(web): State<Arc<Web>>, headers: HeaderMap) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let items = list(&web, &v, Kind::Token).await?;
    let body = table(&items, &["id", "type", "subject", "expires"], "tokens");
    Ok(page::shell(&v, "Tokens", body))
}

/// `GET /locks`.
pub(crate) async fn locks(State(web): State<Arc<Web>>, headers: HeaderMap) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let items = list(&web, &v, Kind::Lock).await?;
    let may_lock = v.can("lock", "create");
    let may_unlock = v.can("lock", "delete");
    let body = html! {
        @if items.is_empty() {
            p.muted { "No locks in force." }
        } @else {
            table id="locks" {
                thead { tr { th { "Target" } th { "Message" } th { "Expires" } th { "Created" } th { "By" } th { "" } } }
                tbody {
                    @for l in &items {
                        @let id = l.get("id").and_then(Value::as_str).unwrap_or("");
                        tr data-name=(id) {
                            td { (text(l.get("target").unwrap_or(&Value::Null))) }
                            td { (text(l.get("message").unwrap_or(&Value::Null))) }
                            td { (field_text("expires", l.get("expires").unwrap_or(&Value::Null))) }
                            td { (field_text("created", l.get("created").unwrap_or(&Value::Null))) }
                            td { (text(l.get("created_by").unwrap_or(&Value::Null))) }
                            td {
                                @if may_unlock {
                                    form.inline method="post" action={ "/locks/" (page::encode(id)) "/delete" } {
                                        input type="hidden" name="csrf" value=(v.csrf());
                                        button.secondary type="submit" { "Unlock" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if may_lock {
            h2 { "Lock" }
            form.filters method="post" action="/locks" {
                input type="hidden" name="csrf" value=(v.csrf());
                label { "Kind"
                    select name="kind" {
                        option value="user" { "user" } option value="bot" { "bot" }
                        option value="role" { "role" } option value="agent" { "agent" }
                    }
                }
                label { "Name" input name="name" required; }
                label { "Message" input name="message" placeholder="why"; }
                label { "For" input name="ttl" placeholder="1h (empty: until unlocked)"; }
                button type="submit" { "Lock" }
            }
        }
    };
    Ok(page::shell(&v, "Locks", body))
}

#[derive(Deserialize)]
pub(crate) struct LockForm {
    #[serde(default)]
    csrf: String,
    kind: String,
    name: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    ttl: String,
}

/// `POST /locks`.
pub(crate) async fn lock(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(f): Form<LockForm>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    v.check_csrf(&f.csrf)?;
    let name = f.name.trim().to_string();
    let target = match f.kind.as_str() {
        "user" => LockTarget::User(name),
        "bot" => LockTarget::Bot(name),
        "role" => LockTarget::Role(name),
        "agent" => LockTarget::Agent(name),
        other => return Err(WebError::BadRequest(format!("unknown lock kind {other:?}"))),
    };
    let ttl = match f.ttl.trim() {
        "" => None,
        t => Some(
            mcpgate_types::duration::parse(t)
                .map_err(|e| WebError::BadRequest(format!("for: {e}")))?,
        ),
    };
    web.auth
        .lock(&v.caller, target, ttl, f.message.trim())
        .await?;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/locks")]).into_response())
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /locks/ID/delete`.
pub(crate) async fn unlock(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    v.check_csrf(&f.csrf)?;
    web.auth
        .remove_resource(&v.caller, Kind::Lock, &id, false)
        .await?;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/locks")]).into_response())
}

fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot show as YAML: {e}"))
}

/// `GET /roles`.
pub(crate) async fn roles(State(web): State<Arc<Web>>, headers: HeaderMap) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let items = list(&web, &v, Kind::Role).await?;
    let may_edit = v.can("role", "update");
    let body = html! {
        @for r in &items {
            @let name = r.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            section.role data-name=(name) {
                h2 { (name) }
                @if may_edit {
                    p { a href={ "/roles/" (page::encode(name)) "/edit" } { "Edit" } }
                }
                pre { (yaml(r)) }
            }
        }
    };
    Ok(page::shell(&v, "Roles", body))
}

fn may_edit_roles(v: &Viewer) -> Result<(), WebError> {
    if v.can("role", "update") {
        Ok(())
    } else {
        Err(WebError::Forbidden(format!(
            "{} may not edit roles",
            v.name()
        )))
    }
}

fn editor(v: &Viewer, name: &str, yaml_text: &str, note: Markup) -> Markup {
    html! {
        (note)
        form.stack method="post" action={ "/roles/" (page::encode(name)) "/edit" } {
            input type="hidden" name="csrf" value=(v.csrf());
            label { "Role " (name) " (YAML)" textarea name="yaml" spellcheck="false" { (yaml_text) } }
            div.toolbar {
                button type="submit" name="action" value="preview" { "Check and show the changes" }
            }
        }
    }
}

/// `GET /roles/NAME/edit`.
pub(crate) async fn edit_role(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    may_edit_roles(&v)?;
    let current = web
        .auth
        .get_resources(&v.caller, Kind::Role, Some(&name))
        .await?;
    let text = current.first().map(yaml).unwrap_or_default();
    Ok(page::shell(
        &v,
        &format!("Edit role {name}"),
        editor(&v, &name, &text, html! {}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct RoleForm {
    #[serde(default)]
    csrf: String,
    yaml: String,
    action: String,
}

/// Lines removed and added between two texts (longest common subsequence).
fn diff(old: &str, new: &str) -> Vec<(char, String)> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', a[i].to_string()));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j].to_string()));
            j += 1;
        } else {
            out.push(('-', a[i].to_string()));
            i += 1;
        }
    }
    out
}

/// `POST /roles/NAME/edit`: `preview` validates and shows the diff; `save` writes it.
pub(crate) async fn save_role(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<RoleForm>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    may_edit_roles(&v)?;
    v.check_csrf(&f.csrf)?;
    let title = format!("Edit role {name}");
    // The same parsing and checks as `admin create`, and it must be this one role.
    let checked = parse_resources("dashboard", &f.yaml)
        .map_err(|e| e.to_string())
        .and_then(|(res, _)| match res.as_slice() {
            [Resource::Role(r)] if r.metadata.name.as_str() == name => {
                Policy::check(r).map_err(|e| e.to_string())
            }
            _ => Err(format!("the text must hold exactly one role, named {name}")),
        });
    if let Err(e) = checked {
        let note = html! { p.error role="alert" id="role-error" { (e) } };
        let mut r = page::shell(&v, &title, editor(&v, &name, &f.yaml, note));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(r);
    }
    if f.action == "save" {
        web.auth
            .create_resources(&v.caller, "dashboard", &f.yaml, true)
            .await?;
        return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/roles")]).into_response());
    }
    let current = web
        .auth
        .get_resources(&v.caller, Kind::Role, Some(&name))
        .await
        .ok()
        .and_then(|c| c.first().map(yaml))
        .unwrap_or_default();
    let changes = diff(&current, &f.yaml);
    let body = html! {
        h2 { "Changes" }
        pre.diff id="role-diff" {
            @for (op, line) in &changes {
                @match op {
                    '+' => { span.add { "+ " (line) } "\n" }
                    '-' => { span.del { "- " (line) } "\n" }
                    _ => { "  " (line) "\n" }
                }
            }
        }
        form.stack method="post" action={ "/roles/" (page::encode(&name)) "/edit" } {
            input type="hidden" name="csrf" value=(v.csrf());
            input type="hidden" name="yaml" value=(f.yaml);
            div.toolbar {
                button type="submit" name="action" value="save" { "Save role " (name) }
                a href={ "/roles/" (page::encode(&name)) "/edit" } { "Start over" }
            }
        }
    };
    Ok(page::shell(&v, &title, body))
}

#[derive(Deserialize)]
pub(crate) struct WhoQuery {
    app: String,
    tool: String,
}

/// `GET /roles/who?app=A&tool=T`: every user and bot, and whether the gateway would let
/// them call the tool, with the role and pattern that decide.
pub(crate) async fn who(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<WhoQuery>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    // The answer shows which role allows what: for those who may read roles.
    if !v.can("role", "list") {
        return Err(WebError::Forbidden(format!(
            "{} may not read roles",
            v.name()
        )));
    }
    let apps = known_apps(&web, &v).await?;
    let app = apps
        .iter()
        .find(|a| a.pointer("/metadata/name").and_then(Value::as_str) == Some(q.app.as_str()))
        .ok_or_else(|| WebError::NotFound(format!("app {} not found", q.app)))?;
    let labels: BTreeMap<String, String> = app
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    // (identity, its roles, its traits)
    type Traits = BTreeMap<String, Vec<String>>;
    let mut identities: Vec<(String, Vec<String>, Traits)> = Vec::new();
    for u in list(&web, &v, Kind::User).await? {
        let name = format!("user {}", text(u.get("name").unwrap_or(&Value::Null)));
        let roles =
            serde_json::from_value(u.get("roles").cloned().unwrap_or_default()).unwrap_or_default();
        let traits = serde_json::from_value(u.get("traits").cloned().unwrap_or_default())
            .unwrap_or_default();
        identities.push((name, roles, traits));
    }
    for b in list(&web, &v, Kind::Bot).await? {
        let name = format!("bot {}", text(b.get("name").unwrap_or(&Value::Null)));
        let roles =
            serde_json::from_value(b.get("roles").cloned().unwrap_or_default()).unwrap_or_default();
        identities.push((name, roles, BTreeMap::new()));
    }
    let mut rows = Vec::new();
    for (name, role_names, traits) in identities {
        let roles = web.auth.roles(&role_names).await?;
        let answer = match Policy::compile(&roles, &traits) {
            Ok(p) => match p.decide(&labels, Subject::Tool, &q.tool) {
                Decision::Allow { role, pattern } => {
                    (true, format!("allowed by role {role} (tools: {pattern})"))
                }
                Decision::Deny(reason) => (false, reason.to_string()),
            },
            Err(e) => (false, format!("roles do not compile: {e}")),
        };
        rows.push((name, role_names.join(", "), answer));
    }
    let body = html! {
        p { "Answered by the gateway's own decision function, for app " code { (q.app) } " and tool " code { (q.tool) } "." }
        table id="who" {
            thead { tr { th { "Identity" } th { "Roles" } th { "May call" } th { "Why" } } }
            tbody {
                @for (name, roles, (allowed, why)) in &rows {
                    tr data-name=(name) data-allowed=(allowed) {
                        td { (name) } td { (roles) }
                        td class=(if *allowed { "allow" } else { "deny" }) { (if *allowed { "yes" } else { "no" }) }
                        td { (why) }
                    }
                }
            }
        }
    };
    Ok(page::shell(&v, "Who can call this tool?", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_show_removed_and_added_lines() {
        let d = diff("a\nb\nc\n", "a\nB\nc\nd\n");
        let ops: String = d.iter().map(|(o, _)| *o).collect();
        assert_eq!(ops, " +- +");
        assert_eq!(d[1], ('+', "B".into()));
        assert_eq!(d[2], ('-', "b".into()));
        assert_eq!(d[4], ('+', "d".into()));
    }
}

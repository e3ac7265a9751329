//! The audit explorer, one event with its session, export and the live tail.
//!
//! Every filter lives in the query string (reload and back restore it) and is applied by
//! the store, indexed; pages continue from a cursor (keyset paging), never an offset. A
//! viewer whose roles may not list events sees their own activity only.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use mcpgate_store::Store;
use mcpgate_types::audit::codes;
use mcpgate_types::clock::unix_micros;
use mcpgate_types::{AuditEvent, AuditQuery, Cursor, Page};

use crate::session::{Viewer, viewer};
use crate::{Web, WebError, WebResult, page};

/// Rows on a page of the explorer.
const PAGE: u32 = 50;
/// Rows read per store query when exporting.
const EXPORT_BATCH: u32 = 1000;
/// How often the live tail looks for new events, and re-checks the viewer's session.
const TAIL_POLL: Duration = Duration::from_millis(400);
const TAIL_RECHECK: Duration = Duration::from_secs(2);

/// The explorer's filters, as they appear in the query string.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Filter {
    since: String,
    until: String,
    user: String,
    role: String,
    app: String,
    tool: String,
    method: String,
    decision: String,
    session: String,
    q: String,
    #[serde(rename = "type")]
    kind: String,
    after: String,
    before: String,
    format: String,
}

impl Filter {
    /// The filters (not the page position) as query-string pairs.
    fn pairs(&self) -> [(&'static str, &str); 11] {
        [
            ("since", &self.since),
            ("until", &self.until),
            ("user", &self.user),
            ("role", &self.role),
            ("app", &self.app),
            ("tool", &self.tool),
            ("method", &self.method),
            ("decision", &self.decision),
            ("session", &self.session),
            ("q", &self.q),
            ("type", &self.kind),
        ]
    }

    fn href(&self, base: &str, extra: Option<(&'static str, &str)>) -> String {
        let mut pairs: Vec<(&str, &str)> = self.pairs().to_vec();
        pairs.extend(extra);
        format!("{base}{}", page::query(&pairs))
    }

    /// The store query these filters ask for, as this viewer may see it.
    fn to_query(&self, v: &Viewer, limit: u32) -> Result<AuditQuery, WebError> {
        let now = SystemTime::now();
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let decision = opt(&self.decision);
        if let Some(d) = &decision
            && !["allow", "deny", "would_deny"].contains(&d.as_str())
        {
            return Err(WebError::BadRequest(format!(
                "decision must be allow, deny or would_deny, not {d:?}"
            )));
        }
        let (user, user_kind) = match v.own_filter() {
            (None, _) => (opt(&self.user), None),
            own => own,
        };
        Ok(AuditQuery {
            since_micros: when(&self.since, now)?,
            until_micros: when(&self.until, now)?,
            user,
            user_kind,
            role: opt(&self.role),
            app: opt(&self.app),
            tool: opt(&self.tool),
            method: opt(&self.method),
            kind: opt(&self.kind),
            decision,
            session: opt(&self.session),
            text: opt(&self.q),
            limit: Some(limit),
            ..Default::default()
        })
    }

    fn page(&self) -> Result<Page, WebError> {
        let cursor = |s: &str| {
            Cursor::decode(s).ok_or_else(|| WebError::BadRequest(format!("bad page cursor {s:?}")))
        };
        Ok(match (self.after.as_str(), self.before.as_str()) {
            ("", "") => Page::Newest,
            (a, _) if !a.is_empty() => Page::Older(cursor(a)?),
            (_, b) => Page::Newer(cursor(b)?),
        })
    }

    /// The filters as JSON, for the audit event that records the viewing.
    fn recorded(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in self.pairs() {
            if !v.is_empty() {
                m.insert(k.into(), Value::from(v));
            }
        }
        Value::Object(m)
    }
}

/// A time bound: empty, a duration ago (`24h`, `7d`), RFC 3339, or a UTC date and time as a
/// browser's date-time input sends it (`2026-12-02T18:00`).
fn when(s: &str, now: SystemTime) -> Result<Option<i64>, WebError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(d) = mcpgate_types::duration::parse(s) {
        return Ok(Some(unix_micros(
            now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
        )));
    }
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(Some(unix_micros(t.into())));
    }
    let formats: [&[time::format_description::FormatItem<'_>]; 3] = [
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]"),
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    ];
    for f in formats {
        if let Ok(t) = time::PrimitiveDateTime::parse(s, f) {
            return Ok(Some(unix_micros(t.assume_utc().into())));
        }
    }
    if let Ok(d) = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")) {
        return Ok(Some(unix_micros(d.midnight().assume_utc().into())));
    }
    Err(WebError::BadRequest(format!(
        "{s:?} is not a time: use a duration ago (24h, 7d), RFC 3339 or 2026-12-02T18:00 (UTC)"
    )))
}

fn cursor_of(pos: i64, e: &AuditEvent) -> String {
    Cursor {
        time_us: unix_micros(e.time),
        pos,
    }
    .encode()
}

/// Records that someone read the audit log (and how), before showing it.
async fn record(web: &Web, v: &Viewer, code: (&str, &str), fields: Value) -> Result<(), WebError> {
    let mut ev = web
        .auth
        .event(code.0, code.1, &v.caller.info.claims, true, []);
    if let Value::Object(m) = fields {
        // Never a field that would stand for the event's own (its user, its time...).
        ev.fields.extend(
            m.into_iter()
                .filter(|(k, _)| !AuditEvent::OWN_FIELDS.contains(&k.as_str())),
        );
    }
    web.auth.emit(ev).await?;
    Ok(())
}

fn filter_form(f: &Filter, v: &Viewer, action: &str) -> Markup {
    let field = |name: &str, label: &str, value: &str, hint: &str| {
        html! {
            label { (label) input name=(name) value=(value) placeholder=(hint); }
        }
    };
    html! {
        form.filters method="get" action=(action) {
            (field("since", "Since", &f.since, "24h or 2026-12-01T00:00"))
            (field("until", "Until", &f.until, "UTC"))
            @if v.can("event", "list") {
                (field("user", "User", &f.user, "alice"))
            }
            (field("role", "Role", &f.role, "dev"))
            (field("app", "App", &f.app, "github"))
            (field("tool", "Tool", &f.tool, "read_* (glob)"))
            (field("method", "Method", &f.method, "tools/call"))
            label { "Decision"
                select name="decision" {
                    option value="" selected[f.decision.is_empty()] { "any" }
                    option value="allow" selected[f.decision == "allow"] { "allow" }
                    option value="deny" selected[f.decision == "deny"] { "deny" }
                    option value="would_deny" selected[f.decision == "would_deny"] { "would deny (dry run)" }
                }
            }
            (field("session", "Session", &f.session, "session id"))
            (field("type", "Type", &f.kind, "mcp.session.request"))
            (field("q", "Text", &f.q, "anything in the event"))
            button type="submit" { "Search" }
        }
    }
}

fn rows_table(rows: &[(i64, AuditEvent)], current: Option<&str>, tbody_id: Option<&str>) -> Markup {
    html! {
        table.events {
            thead { tr {
                th { "Time (UTC)" } th { "User" } th { "Type" } th { "App" } th { "Method" }
                th { "Tool" } th { "Decision" } th { "Outcome" }
            } }
            tbody id=[tbody_id] {
                @for (_, e) in rows {
                    @let decision = e.field("decision").unwrap_or("");
                    tr data-event-id=(e.id) class=[(current == Some(e.id.as_str())).then_some("current")] {
                        td { a href={ "/audit/events/" (page::encode(&e.id)) } { (page::time(e.time)) } }
                        td { (e.user) }
                        td { (e.kind) }
                        td { (e.field("app").unwrap_or("")) }
                        td { (e.field("method").unwrap_or("")) }
                        td { (e.field("tool").unwrap_or("")) }
                        td class=[match decision { "deny" | "would_deny" => Some("deny"), "allow" => Some("allow"), _ => None }] { (decision) }
                        td { (e.field("outcome").unwrap_or(if e.success { "" } else { "failed" })) }
                    }
                }
            }
        }
    }
}

/// `GET /audit`.
pub(crate) async fn explorer(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let page_at = f.page()?;
    let q = f.to_query(&v, PAGE + 1)?;
    let mut rows = web.auth.store().page_events(&q, page_at).await?;
    // One row more than a page says whether there is more beyond it.
    let more = rows.len() > PAGE as usize;
    if more {
        match page_at {
            Page::Newer(_) => {
                rows.remove(0);
            }
            _ => {
                rows.pop();
            }
        }
    }
    let (has_newer, has_older) = match page_at {
        Page::Newest | Page::After(_) => (false, more),
        Page::Older(_) => (true, more),
        Page::Newer(_) => (more, true),
    };
    record(
        &web,
        &v,
        codes::AUDIT_VIEW,
        json!({"view": "explorer", "filter": f.recorded()}),
    )
    .await?;
    let newer = rows
        .first()
        .filter(|_| has_newer)
        .map(|(p, e)| f.href("/audit", Some(("before", &cursor_of(*p, e)))));
    let older = rows
        .last()
        .filter(|_| has_older && !rows.is_empty())
        .map(|(p, e)| f.href("/audit", Some(("after", &cursor_of(*p, e)))));
    let body = html! {
        (filter_form(&f, &v, "/audit"))
        @if !v.can("event", "list") {
            p.hint { "Your roles show you your own activity." }
        }
        div.toolbar {
            a href=(f.href("/audit/export", Some(("format", "csv")))) hx-boost="false" download { "Export CSV" }
            a href=(f.href("/audit/export", Some(("format", "ndjson")))) hx-boost="false" download { "Export NDJSON" }
            a href=(f.href("/audit/live", None)) hx-boost="false" { "Live tail with these filters" }
        }
        @if rows.is_empty() {
            p.muted id="no-events" { "No events match." }
        } @else {
            (rows_table(&rows, None, Some("rows")))
        }
        nav.pager {
            @if let Some(h) = &newer { a rel="prev" href=(h) { "← Newer" } }
            @if let Some(h) = &older { a rel="next" href=(h) { "Older →" } }
        }
    };
    Ok(page::shell(&v, "Audit log", body))
}

/// `GET /audit/events/ID`: the whole event, why it was decided so, and its session.
pub(crate) async fn event(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let store = web.auth.store();
    let found = store
        .page_events(
            &AuditQuery {
                id: Some(id.clone()),
                limit: Some(1),
                ..Default::default()
            },
            Page::Newest,
        )
        .await?;
    let Some((_, e)) = found
        .into_iter()
        .next()
        .filter(|(_, e)| v.can("event", "read") || v.owns(e))
    else {
        return Err(WebError::NotFound(format!("event {id} not found")));
    };
    record(
        &web,
        &v,
        codes::AUDIT_VIEW,
        json!({"view": "event", "event": id}),
    )
    .await?;
    let session = e.field("session_id").map(str::to_string);
    let timeline = match &session {
        Some(s) => {
            let mut rows = store
                .page_events(
                    &AuditQuery {
                        session: Some(s.clone()),
                        user: v.own_filter().0,
                        user_kind: v.own_filter().1,
                        limit: Some(500),
                        ..Default::default()
                    },
                    Page::Newest,
                )
                .await?;
            rows.reverse();
            rows
        }
        None => Vec::new(),
    };
    let json = serde_json::to_value(&e).unwrap_or(Value::Null);
    let decision = e.field("decision");
    let why = match (decision, e.field("reason")) {
        (_, Some(reason)) => reason.to_string(),
        (Some("allow"), None) => format!(
            "allowed by the roles of {} ({})",
            e.user,
            e.roles.join(", ")
        ),
        _ => String::new(),
    };
    let body = html! {
        table.detail {
            tbody {
                tr { th { "Time (UTC)" } td { (page::time(e.time)) } }
                tr { th { "Type" } td { (e.kind) " " span.muted { (e.code) } } }
                tr { th { "Identity" } td { (e.user) " " span.muted { (e.roles.join(", ")) } } }
                @if let Some(app) = e.field("app") { tr { th { "App" } td { (app) } } }
                @if let Some(m) = e.field("method") { tr { th { "Method" } td { (m) } } }
                @if let Some(t) = e.field("tool") { tr { th { "Tool" } td { (t) } } }
                @if let Some(d) = decision {
                    tr { th { "Decision" } td class=(if d == "deny" { "deny" } else { "allow" }) { (d) } }
                }
                @if !why.is_empty() { tr { th { "Why" } td id="why" { (why) } } }
                @if let Some(o) = e.field("outcome") { tr { th { "Outcome" } td { (o) } } }
                @if let Some(s) = &session {
                    tr { th { "Session" } td { a href={ "/audit?session=" (page::encode(s)) } { (s) } } }
                }
            }
        }
        h2 { "The event" }
        pre id="event-json" { (page::pretty(&json)) }
        @if session.is_some() {
            h2 { "Its session, in order" }
            (rows_table(&timeline, Some(&e.id), Some("timeline")))
        }
    };
    Ok(page::shell(&v, "Audit event", body))
}

/// A response body fed from a channel: what is sent is streamed to the client as it comes.
struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A CSV cell: quoted, and never read by a spreadsheet as a formula.
fn csv_cell(out: &mut String, s: &str) {
    out.push('"');
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        out.push('\'');
    }
    out.push_str(&s.replace('"', "\"\""));
    out.push('"');
}

const CSV_COLUMNS: [&str; 15] = [
    "time",
    "id",
    "type",
    "code",
    "user",
    "roles",
    "app",
    "tool",
    "method",
    "decision",
    "outcome",
    "session",
    "client_addr",
    "reason",
    "params",
];

fn csv_row(e: &AuditEvent) -> String {
    let params = e
        .fields
        .get("params")
        .map(Value::to_string)
        .unwrap_or_default();
    let time = mcpgate_types::audit::rfc3339_micros::format(e.time);
    let roles = e.roles.join(" ");
    let f = |k: &str| e.field(k).unwrap_or("").to_string();
    let cells = [
        time,
        e.id.clone(),
        e.kind.clone(),
        e.code.clone(),
        e.user.clone(),
        roles,
        f("app"),
        f("tool"),
        f("method"),
        f("decision"),
        f("outcome"),
        f("session_id"),
        f("client_addr"),
        // Why: a denial's reason, or a failure's error (a refused login).
        e.field("reason")
            .or(e.field("error"))
            .unwrap_or("")
            .to_string(),
        params,
    ];
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_cell(&mut out, c);
    }
    out.push_str("\r\n");
    out
}

/// `GET /audit/export?format=csv|ndjson&…`: the filtered set, newest first, streamed.
pub(crate) async fn export(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let csv = match f.format.as_str() {
        "csv" => true,
        "ndjson" => false,
        other => {
            return Err(WebError::BadRequest(format!(
                "format must be csv or ndjson, not {other:?}"
            )));
        }
    };
    let q = f.to_query(&v, EXPORT_BATCH)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let session = headers.clone();
    let claims = v.caller.info.claims.clone();
    let filter = f.recorded();
    let format = f.format.clone();
    tokio::spawn(async move {
        let mut rows = 0u64;
        let mut complete = true;
        let mut at = Page::Newest;
        if csv {
            let header = CSV_COLUMNS.join(",") + "\r\n";
            complete = tx.send(Bytes::from(header)).await.is_ok();
        }
        while complete {
            // A lock or a logout stops an export under way, like any page.
            if viewer(&web, &session).await.is_err() {
                complete = false;
                break;
            }
            let batch = match web.auth.store().page_events(&q, at).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "audit export failed");
                    complete = false;
                    break;
                }
            };
            let Some((pos, last)) = batch.last() else {
                break;
            };
            at = Page::Older(Cursor {
                time_us: unix_micros(last.time),
                pos: *pos,
            });
            let mut chunk = String::new();
            for (_, e) in &batch {
                if csv {
                    chunk.push_str(&csv_row(e));
                } else {
                    chunk.push_str(&serde_json::to_string(e).unwrap_or_default());
                    chunk.push('\n');
                }
            }
            rows += batch.len() as u64;
            if tx.send(Bytes::from(chunk)).await.is_err() {
                complete = false;
            }
            if batch.len() < EXPORT_BATCH as usize {
                break;
            }
        }
        let mut ev = web.auth.event(
            codes::AUDIT_EXPORT.0,
            codes::AUDIT_EXPORT.1,
            &claims,
            complete,
            [
                ("format", Value::from(format)),
                ("filter", filter),
                ("rows", Value::from(rows)),
            ],
        );
        ev.fields.insert("complete".into(), Value::from(complete));
        if let Err(e) = web.auth.emit(ev).await {
            tracing::error!(error = %e, "could not record an audit export");
        }
    });
    let (ctype, ext) = if csv {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/x-ndjson", "ndjson")
    };
    let name = format!(
        "attachment; filename=\"mcpgate-audit-{}.{ext}\"",
        unix_micros(SystemTime::now()) / 1_000_000
    );
    let mut r = Body::new(Channel(rx)).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(n) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, n);
    }
    Ok(r)
}

/// The newest position in the log: a live tail starts after it.
async fn newest_position(web: &Web) -> Result<i64, WebError> {
    let newest = web
        .auth
        .store()
        .page_events(
            &AuditQuery {
                limit: Some(1),
                ..Default::default()
            },
            Page::Newest,
        )
        .await?;
    Ok(newest.first().map(|(p, _)| *p).unwrap_or(0))
}

/// `GET /audit/live`: the newest matching events, then new ones as they are stored.
pub(crate) async fn live(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let after = newest_position(&web).await?;
    let q = f.to_query(&v, 20)?;
    let recent = web.auth.store().page_events(&q, Page::Newest).await?;
    record(
        &web,
        &v,
        codes::AUDIT_VIEW,
        json!({"view": "live", "filter": f.recorded()}),
    )
    .await?;
    let stream = f.href("/audit/live/events", None);
    let body = html! {
        (filter_form(&f, &v, "/audit/live"))
        div.toolbar {
            button type="button" id="live-toggle" { "Pause" }
            span id="live-status" { "Connecting…" }
        }
        div id="live" data-stream=(stream) data-after=(after) data-state="connecting" {
            (rows_table(&recent, None, Some("live-rows")))
        }
        noscript { p { "The live tail needs JavaScript; " a href=(f.href("/audit", None)) { "the explorer" } " does not." } }
    };
    Ok(page::shell_with(
        &v,
        "Live audit",
        &[crate::assets::LIVE.path],
        body,
    ))
}

/// What the live tail shows of an event.
fn tail_json(e: &AuditEvent) -> String {
    json!({
        "id": e.id,
        "time": page::time(e.time),
        "user": e.user,
        "type": e.kind,
        "app": e.field("app"),
        "method": e.field("method"),
        "tool": e.field("tool"),
        "decision": e.field("decision"),
        "outcome": e.field("outcome"),
    })
    .to_string()
}

/// `GET /audit/live/events`: server-sent events, each with its position as its id, from
/// after `Last-Event-ID` (a reconnect) or `after` (a new tail). Ends when the session does.
pub(crate) async fn stream(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let q = f.to_query(&v, 200)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .or(Some(f.after.as_str()).filter(|a| !a.is_empty()));
    let mut pos = match resume {
        Some(p) => p
            .parse::<i64>()
            .map_err(|_| WebError::BadRequest(format!("bad event id {p:?}")))?,
        None => newest_position(&web).await?,
    };
    // A tail is a view of the log like any page (a reconnect goes on with the same one);
    // one started far back reads what an export would, and is recorded with where it began.
    if !headers.contains_key("last-event-id") {
        let fields = json!({"view": "live", "filter": f.recorded(), "after": pos});
        record(&web, &v, codes::AUDIT_VIEW, fields).await?;
    }
    let token = headers.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let mut checked = tokio::time::Instant::now();
        let mut quiet = tokio::time::Instant::now();
        if tx
            .send(Bytes::from_static(b"retry: 1000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            if checked.elapsed() >= TAIL_RECHECK {
                checked = tokio::time::Instant::now();
                if let Err(e) = viewer(&web, &token).await {
                    let why = match e {
                        // One `data:` line: a lock's message may hold line breaks.
                        WebError::Locked(m) => m.replace(['\r', '\n'], " "),
                        _ => "the session ended; log in again".into(),
                    };
                    let _ = tx
                        .send(Bytes::from(format!("event: end\ndata: {why}\n\n")))
                        .await;
                    return;
                }
            }
            let rows = match web.auth.store().page_events(&q, Page::After(pos)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "live tail read failed");
                    Vec::new()
                }
            };
            if rows.is_empty() {
                if quiet.elapsed() >= Duration::from_secs(15) {
                    quiet = tokio::time::Instant::now();
                    if tx.send(Bytes::from_static(b": idle\n\n")).await.is_err() {
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(TAIL_POLL).await;
                continue;
            }
            let mut chunk = String::new();
            for (p, e) in &rows {
                pos = pos.max(*p);
                chunk.push_str(&format!(
                    "id: {p}\nevent: audit\ndata: {}\n\n",
                    tail_json(e)
                ));
            }
            quiet = tokio::time::Instant::now();
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    });
    let mut r = Body::new(Channel(rx)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_never_formulas() {
        let mut out = String::new();
        for s in [
            "=HYPERLINK(\"x\")",
            "+1",
            "-2",
            "@SUM(A1)",
            "plain",
            "a,\"b\"",
        ] {
            csv_cell(&mut out, s);
            out.push('|');
        }
        assert_eq!(
            out,
            "\"'=HYPERLINK(\"\"x\"\")\"|\"'+1\"|\"'-2\"|\"'@SUM(A1)\"|\"plain\"|\"a,\"\"b\"\"\"|"
        );
    }

    #[test]
    fn times_parse_as_people_write_them() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(when("", now).unwrap(), None);
        assert_eq!(
            when("1h", now).unwrap(),
            Some((1_000_000 - 3600) * 1_000_000)
        );
        assert_eq!(
            when("1970-01-12T13:46", now).unwrap(),
            Some((11 * 86400 + 13 * 3600 + 46 * 60) * 1_000_000)
        );
        assert_eq!(
            when("1970-01-12T13:46:40Z", now).unwrap(),
            Some(1_000_000 * 1_000_000)
        );
        assert!(when("yesterday", now).is_err());
    }
}

//! `/findings`: what the detectors found, with its evidence, and its triage.

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mcpgate_auth::findings::Triage;
use mcpgate_types::clock::{from_unix_secs, unix_micros};

use crate::session::viewer;
use crate::{Web, WebError, WebResult, page};

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Since {
    since: String,
}

fn triage_name(t: Triage) -> &'static str {
    match t {
        Triage::Open => "open",
        Triage::Acknowledged => "acknowledged",
        Triage::Expected => "expected",
    }
}

/// `GET /findings`.
pub(crate) async fn page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(s): Query<Since>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let window = if s.since.is_empty() {
        Duration::from_secs(7 * 86_400)
    } else {
        mcpgate_types::duration::parse(&s.since)
            .map_err(|e| WebError::BadRequest(format!("since: {e}")))?
    };
    let since = unix_micros(
        SystemTime::now()
            .checked_sub(window)
            .unwrap_or(std::time::UNIX_EPOCH),
    );
    let mut items = web.auth.findings(&v.caller, since).await?;
    items.sort_by(|a, b| {
        (b.triage == Triage::Open)
            .cmp(&(a.triage == Triage::Open))
            .then(b.finding.severity.cmp(&a.finding.severity))
            .then(b.finding.time.cmp(&a.finding.time))
    });
    let body = html! {
        form.filters method="get" action="/findings" {
            label { "Since" input name="since" value=(s.since) placeholder="7d"; }
            button type="submit" { "Show" }
        }
        @if items.is_empty() {
            p.muted { "Nothing unusual found in this window." }
        } @else {
            table.findings {
                thead { tr {
                    th { "Time (UTC)" } th { "Severity" } th { "Kind" } th { "Identity" }
                    th { "What was seen" } th { "Evidence" } th { "Triage" }
                } }
                tbody {
                    @for f in &items {
                        @let sev = serde_json::to_value(f.finding.severity).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                        @let kind = serde_json::to_value(f.finding.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                        tr data-finding-id=(f.finding.id) data-kind=(kind) {
                            td { (page::time(from_unix_secs(f.finding.time / 1_000_000))) }
                            td class={ "sev-" (sev) } { (sev) }
                            td { (kind) }
                            td { (f.finding.identity) }
                            td { (f.finding.explanation) }
                            td {
                                @for (i, id) in f.finding.evidence.iter().enumerate() {
                                    a href={ "/audit/events/" (page::encode(id)) } { "event " (i + 1) } " "
                                }
                            }
                            td {
                                span.triage { (triage_name(f.triage)) }
                                @if let Some(by) = &f.triaged_by { span.muted { " by " (by) } }
                                @for (state, label) in [("acknowledged", "Acknowledge"), ("expected", "Expected"), ("open", "Reopen")] {
                                    @if state != triage_name(f.triage) {
                                        form.inline method="post" action={ "/findings/" (page::encode(&f.finding.id)) } {
                                            input type="hidden" name="csrf" value=(v.csrf());
                                            input type="hidden" name="state" value=(state);
                                            button.secondary type="submit" { (label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page::shell(&v, "Findings", body))
}

#[derive(Deserialize)]
pub(crate) struct TriageForm {
    #[serde(default)]
    csrf: String,
    state: String,
}

/// `POST /findings/ID`.
pub(crate) async fn triage(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<TriageForm>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    v.check_csrf(&f.csrf)?;
    let state = match f.state.as_str() {
        "open" => Triage::Open,
        "acknowledged" => Triage::Acknowledged,
        "expected" => Triage::Expected,
        other => return Err(WebError::BadRequest(format!("unknown triage {other:?}"))),
    };
    web.auth.triage(&v.caller, &id, state).await?;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/findings")]).into_response())
}

//! `/`: what went through the gateway over a range — calls over time (allowed and denied),
//! the deny rate, the top tools, apps and identities, and how long calls took. Each chart
//! has its numbers in a table beside it, from the same figures.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use maud::{Markup, html};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mcpgate_store::Store;
use mcpgate_types::AuditQuery;
use mcpgate_types::clock::unix_micros;

use crate::session::{Viewer, viewer};
use crate::{Web, WebError, WebResult, page};

/// Durations are taken from at most this many of the newest requests of the range.
const DURATIONS: u32 = 100_000;

/// Calls of one thing (a bucket of time, a tool, an app, an identity).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Count {
    pub allowed: u64,
    pub denied: u64,
}

impl Count {
    pub fn total(&self) -> u64 {
        self.allowed + self.denied
    }

    /// Denied calls per hundred, as text.
    pub fn deny_rate(&self) -> String {
        match self.total() {
            0 => "–".into(),
            n => format!("{:.1}%", self.denied as f64 * 100.0 / n as f64),
        }
    }
}

/// What the MCP requests of a range add up to.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub all: Count,
    /// By bucket start (µs).
    pub buckets: BTreeMap<i64, Count>,
    pub tools: BTreeMap<String, Count>,
    pub apps: BTreeMap<String, Count>,
    pub identities: BTreeMap<String, Count>,
    pub durations: Vec<f64>,
    /// The durations are those of the newest [`DURATIONS`] requests only.
    pub sampled: bool,
}

/// Reads the MCP requests since `since` (the viewer's own, unless they may list events).
pub(crate) async fn stats(
    web: &Web,
    v: &Viewer,
    since: SystemTime,
    bucket: Duration,
) -> Result<Stats, WebError> {
    let since_us = unix_micros(since);
    let width = bucket.as_micros() as i64;
    let q = AuditQuery {
        kind: Some("mcp.session.request".into()),
        since_micros: Some(since_us),
        user: v.own_filter().0,
        user_kind: v.own_filter().1,
        ..Default::default()
    };
    let mut s = Stats::default();
    // Every bucket of the range, empty ones too.
    let now = unix_micros(SystemTime::now());
    let mut b = since_us - since_us.rem_euclid(width);
    while b <= now {
        s.buckets.insert(b, Count::default());
        b += width;
    }
    // Counted by the store over the whole range, however many requests it holds.
    let store = web.auth.store();
    for t in store.tally_events(&q, width).await? {
        let add = |c: &mut Count| {
            if t.denied {
                c.denied += t.calls
            } else {
                c.allowed += t.calls
            }
        };
        add(&mut s.all);
        add(s.buckets.entry(t.bucket_us).or_default());
        if let Some(tool) = &t.tool {
            add(s.tools.entry(tool.clone()).or_default());
        }
        if let Some(app) = &t.app {
            add(s.apps.entry(app.clone()).or_default());
        }
        add(s.identities.entry(t.user.clone()).or_default());
    }
    s.durations = store.durations(&q, DURATIONS).await?;
    s.sampled = s.durations.len() >= DURATIONS as usize;
    s.durations.sort_by(f64::total_cmp);
    Ok(s)
}

/// The `p`th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} ms"))
        .unwrap_or_else(|| "–".into())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Range {
    range: String,
}

const RANGES: [(&str, &str, u64, u64); 3] = [
    ("1h", "last hour", 3600, 300),
    ("24h", "last 24 hours", 86_400, 3600),
    ("7d", "last 7 days", 7 * 86_400, 6 * 3600),
];

/// A bar chart of allowed and denied calls per bucket, each bar carrying its numbers.
fn time_chart(s: &Stats) -> Markup {
    let n = s.buckets.len().max(1);
    let max = s
        .buckets
        .values()
        .map(Count::total)
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h) = (720.0, 160.0);
    let bw = w / n as f64;
    html! {
        svg.bars id="calls-chart" viewBox={ "0 0 " (w) " " (h + 14.0) } role="img" aria-label="Calls over time, allowed and denied" {
            line.axis x1="0" y1=(h) x2=(w) y2=(h) {}
            @for (i, (start, c)) in s.buckets.iter().enumerate() {
                @let x = i as f64 * bw;
                @let ha = c.allowed as f64 / max as f64 * h;
                @let hd = c.denied as f64 / max as f64 * h;
                g.bucket data-bucket=(page::time(mcpgate_types::clock::from_unix_secs(start / 1_000_000))) data-allowed=(c.allowed) data-denied=(c.denied) {
                    title { (page::time(mcpgate_types::clock::from_unix_secs(start / 1_000_000))) ": " (c.allowed) " allowed, " (c.denied) " denied" }
                    rect.bar-allow x=(format!("{x:.2}")) y=(format!("{:.2}", h - ha)) width=(format!("{:.2}", (bw - 1.0).max(0.5))) height=(format!("{ha:.2}")) {}
                    rect.bar-deny x=(format!("{x:.2}")) y=(format!("{:.2}", h - ha - hd)) width=(format!("{:.2}", (bw - 1.0).max(0.5))) height=(format!("{hd:.2}")) {}
                }
            }
            text x="0" y=(h + 12.0) { (s.buckets.keys().next().map(|b| page::time(mcpgate_types::clock::from_unix_secs(b / 1_000_000))).unwrap_or_default()) }
            text x=(w) y=(h + 12.0) text-anchor="end" { "now" }
        }
    }
}

fn top(title: &str, id: &str, counts: &BTreeMap<String, Count>) -> Markup {
    let mut v: Vec<_> = counts.iter().collect();
    v.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(b.0)));
    v.truncate(10);
    let max = v.first().map(|(_, c)| c.total()).unwrap_or(0).max(1);
    html! {
        section {
            h2 { (title) }
            div.chart {
                svg.bars id={ (id) "-chart" } viewBox={ "0 0 300 " (v.len().max(1) * 18) } role="img" aria-label=(title) {
                    @for (i, (name, c)) in v.iter().enumerate() {
                        @let wa = c.allowed as f64 / max as f64 * 300.0;
                        @let wd = c.denied as f64 / max as f64 * 300.0;
                        g data-name=(name) data-allowed=(c.allowed) data-denied=(c.denied) {
                            title { (name) ": " (c.allowed) " allowed, " (c.denied) " denied" }
                            rect.bar-allow x="0" y=(i * 18 + 2) width=(format!("{wa:.2}")) height="14" {}
                            rect.bar-deny x=(format!("{wa:.2}")) y=(i * 18 + 2) width=(format!("{wd:.2}")) height="14" {}
                        }
                    }
                }
                table id={ (id) "-table" } {
                    thead { tr { th { "Name" } th.num { "Calls" } th.num { "Denied" } th.num { "Deny rate" } } }
                    tbody {
                        @for (name, c) in &v {
                            tr data-name=(name) { td { (name) } td.num { (c.total()) } td.num { (c.denied) } td.num { (c.deny_rate()) } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /`.
pub(crate) async fn page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(r): Query<Range>,
) -> WebResult {
    let v = viewer(&web, &headers).await?;
    let (key, label, secs, bucket) = RANGES
        .iter()
        .find(|(k, ..)| *k == r.range)
        .copied()
        .unwrap_or(RANGES[1]);
    let since = SystemTime::now() - Duration::from_secs(secs);
    let s = stats(&web, &v, since, Duration::from_secs(bucket)).await?;
    let body = html! {
        form.filters method="get" action="/" {
            label { "Range"
                select name="range" {
                    @for (k, l, ..) in RANGES { option value=(k) selected[k == key] { (l) } }
                }
            }
            button type="submit" { "Show" }
        }
        @if !v.can("event", "list") { p.hint { "Your own activity." } }
        @if s.sampled { p.hint { "Durations are those of the newest " (DURATIONS) " requests of the range." } }
        div.cards {
            div.card { div.muted { "Calls, " (label) } div.value id="calls" { (s.all.total()) } }
            div.card { div.muted { "Denied" } div.value id="denied" { (s.all.denied) } }
            div.card { div.muted { "Deny rate" } div.value id="deny-rate" { (s.all.deny_rate()) } }
            div.card { div.muted { "p50 duration" } div.value id="p50" { (ms(percentile(&s.durations, 50.0))) } }
            div.card { div.muted { "p95 duration" } div.value id="p95" { (ms(percentile(&s.durations, 95.0))) } }
        }
        section {
            h2 { "Calls per " (if bucket == 3600 { "hour".to_string() } else { mcpgate_types::duration::format(Duration::from_secs(bucket)) }) ", allowed and denied" }
            div.chart {
                (time_chart(&s))
                table id="calls-table" {
                    thead { tr { th { "From (UTC)" } th.num { "Allowed" } th.num { "Denied" } } }
                    tbody {
                        @for (start, c) in s.buckets.iter().rev().filter(|(_, c)| c.total() > 0) {
                            tr data-bucket=(page::time(mcpgate_types::clock::from_unix_secs(start / 1_000_000))) {
                                td { (page::time(mcpgate_types::clock::from_unix_secs(start / 1_000_000))) }
                                td.num { (c.allowed) } td.num { (c.denied) }
                            }
                        }
                    }
                }
            }
        }
        (top("Top tools", "tools", &s.tools))
        (top("Top apps", "apps", &s.apps))
        (top("Top identities", "identities", &s.identities))
    };
    Ok(page::shell(&v, "Overview", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}

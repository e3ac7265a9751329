//! How long one page of the audit explorer takes over a large log: fills a fresh SQLite
//! store (and PostgreSQL, with `MCPGATE_TEST_POSTGRES_URL`) with synthetic MCP traffic, then
//! times the queries the dashboard runs, newest page and deep pages, with each filter.
//!
//! `cargo bench -p mcpgate-store --bench audit_pages -- [EVENTS]` (default 1,000,000);
//! `scripts/bench` runs it; the tables go to `target/audit-bench-report.md`, the same
//! figures to `target/audit-bench-report.json`.

use std::time::{Duration, Instant, SystemTime};

use mcpgate_store::{PostgresStore, SqliteStore, Store};
use mcpgate_types::{AuditEvent, AuditQuery, Cursor, IdentityKind, Page};
use serde_json::{Map, Value, json};

const PAGE: u32 = 51;
const BATCH: usize = 10_000;
/// Timed runs of each query (after one warm-up).
const RUNS: usize = 20;

/// A small deterministic generator (xorshift), so every run fills the same log.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const TOOLS: [&str; 8] = [
    "create_issue",
    "get_file_contents",
    "list_issues",
    "search_code",
    "read_file",
    "write_file",
    "list_directory",
    "git_log",
];

fn event(n: usize, r: &mut Rng) -> AuditEvent {
    let user = format!("user{:03}", r.below(200));
    let tool = TOOLS[r.below(TOOLS.len() as u64) as usize];
    let denied = r.below(20) == 0;
    let mut fields = Map::new();
    fields.insert("app".into(), json!(["github", "filesystem", "git"][n % 3]));
    fields.insert("tool".into(), json!(tool));
    fields.insert("method".into(), json!("tools/call"));
    fields.insert("session_id".into(), json!(format!("s{}", n / 40)));
    fields.insert(
        "decision".into(),
        json!(if denied { "deny" } else { "allow" }),
    );
    fields.insert(
        "message".into(),
        json!({"params": {"name": tool, "arguments": {"path": format!("/srv/repo/{}.rs", r.below(5000))}}}),
    );
    // One call every 50 ms: a million events span about 14 hours.
    let time = SystemTime::UNIX_EPOCH
        + Duration::from_secs(1_800_000_000)
        + Duration::from_millis(50 * n as u64);
    AuditEvent {
        // Ids as the gateway makes them (time first, then random).
        id: mcpgate_types::audit::event_id(time),
        time,
        kind: "mcp.session.request".into(),
        code: "MG3003I".into(),
        cluster: "bench".into(),
        user,
        user_kind: Some(IdentityKind::User),
        roles: vec![["dev", "ops", "auditor"][r.below(3) as usize].into()],
        success: !denied,
        fields,
    }
}

async fn fill<S: Store>(s: &S, events: usize) -> Duration {
    store_all(s, 0..events, BATCH, 0x9e37_79b9_7f4a_7c15).await
}

/// Stores events `range` in batches of `batch`, timed. The events are made on a thread of
/// their own a batch ahead — as sessions make them while the journal's writer stores the
/// batch before — so what is timed is storing, not this benchmark making JSON.
async fn store_all<S: Store>(
    s: &S,
    range: std::ops::Range<usize>,
    batch: usize,
    seed: u64,
) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<AuditEvent>>(2);
    let maker = std::thread::spawn(move || {
        let mut r = Rng(seed);
        let mut n = range.start;
        while n < range.end {
            let next = (n + batch).min(range.end);
            let events: Vec<AuditEvent> = (n..next).map(|i| event(i, &mut r)).collect();
            n = next;
            if tx.blocking_send(events).is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    while let Some(events) = rx.recv().await {
        s.append_events(&events).await.expect("append");
    }
    let took = start.elapsed();
    maker.join().expect("the events are made");
    took
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ms(d: Duration) -> String {
    format!("{:.1}", millis(d))
}

/// Times a newest page and the page 200 pages deep (reached by keyset), p50 and max: a row
/// of the table, and the same as JSON.
async fn measure<S: Store>(s: &S, name: &str, q: &AuditQuery) -> (String, Value) {
    let q = AuditQuery {
        limit: Some(PAGE),
        ..q.clone()
    };
    let time = |page: Page| {
        let q = q.clone();
        async move {
            s.page_events(&q, page).await.expect("page");
            let mut runs = Vec::with_capacity(RUNS);
            let mut rows = 0;
            for _ in 0..RUNS {
                let t = Instant::now();
                rows = s.page_events(&q, page).await.expect("page").len();
                runs.push(t.elapsed());
            }
            runs.sort();
            (runs[RUNS / 2], runs[RUNS - 1], rows)
        }
    };
    let (p50, max, rows) = time(Page::Newest).await;
    // Walk down by the pages' cursors, up to 200 pages or the last full one, and time it.
    let mut at = Page::Newest;
    let mut depth = 0;
    while depth < 200 {
        let page = s.page_events(&q, at).await.expect("page");
        let Some((pos, last)) = page.last() else {
            break;
        };
        if page.len() < PAGE as usize {
            break;
        }
        let time_us = last
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch")
            .as_micros() as i64;
        let next = Page::Older(Cursor { time_us, pos: *pos });
        if s.page_events(&q, next).await.expect("page").is_empty() {
            break;
        }
        at = next;
        depth += 1;
    }
    let (deep50, deepmax, deeprows) = time(at).await;
    let row = format!(
        "| {name} | {rows} | {} | {} | {depth} | {deeprows} | {} | {} |\n",
        ms(p50),
        ms(max),
        ms(deep50),
        ms(deepmax)
    );
    let figures = json!({
        "query": name, "rows": rows, "newest_p50_ms": millis(p50), "newest_max_ms": millis(max),
        "pages_down": depth, "deep_rows": deeprows, "deep_p50_ms": millis(deep50),
        "deep_max_ms": millis(deepmax),
    });
    (row, figures)
}

/// A store whose free-text index may follow its writes (SQLite's, on a thread of its own).
trait Behind {
    async fn behind(&self) -> u64;
}

impl Behind for SqliteStore {
    async fn behind(&self) -> u64 {
        self.text_index_behind().await.expect("index state")
    }
}

impl Behind for PostgresStore {
    /// Its trigram index is written with each event.
    async fn behind(&self) -> u64 {
        0
    }
}

/// How long until the free-text index holds every stored event.
async fn caught_up<S: Behind>(s: &S) -> Duration {
    let start = Instant::now();
    while s.behind().await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

async fn report<S: Store + Behind>(s: &S, backend: &str, events: usize) -> (String, Value) {
    let filled = fill(s, events).await;
    let indexed = caught_up(s).await;
    let mut out = format!(
        "\n### {backend}: {events} events (filled in {:.1} s: {:.0} events stored per second, batches of {BATCH}; \
         the free-text index held them all {:.1} s later)\n\n\
         | query | rows | newest page p50 ms | max ms | pages down | rows | that page p50 ms | max ms |\n\
         |---|---|---|---|---|---|---|---|\n",
        filled.as_secs_f64(),
        events as f64 / filled.as_secs_f64(),
        indexed.as_secs_f64()
    );
    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery::default();
        f(&mut q);
        q
    };
    // The middle of the log (one event every 50 ms), and a session there.
    let middle = 1_800_000_000_000_000i64 + events as i64 * 25_000;
    let session = format!("s{}", events / 80);
    let cases: Vec<(&str, AuditQuery)> = vec![
        ("no filter", q(&|_| {})),
        ("user", q(&|q| q.user = Some("user042".into()))),
        ("app", q(&|q| q.app = Some("github".into()))),
        (
            "tool glob `write_*`",
            q(&|q| q.tool = Some("write_*".into())),
        ),
        ("decision deny", q(&|q| q.decision = Some("deny".into()))),
        ("role", q(&|q| q.role = Some("ops".into()))),
        ("session", q(&|q| q.session = Some(session.clone()))),
        (
            "time range (1 h)",
            q(&|q| {
                q.since_micros = Some(middle);
                q.until_micros = Some(middle + 3_600_000_000);
            }),
        ),
        (
            "user + deny",
            q(&|q| {
                q.user = Some("user042".into());
                q.decision = Some("deny".into());
            }),
        ),
        (
            "free text `repo/4999.rs`",
            q(&|q| q.text = Some("repo/4999.rs".into())),
        ),
        (
            "free text found nowhere",
            q(&|q| q.text = Some("no-such-value".into())),
        ),
    ];
    let mut queries = Vec::with_capacity(cases.len());
    for (name, query) in &cases {
        let (row, figures) = measure(s, name, query).await;
        out.push_str(&row);
        queries.push(figures);
    }
    // What the agent's journal writer does under load: batches of 512 events (its most),
    // into a log that already holds the million.
    let extra: usize = 50_000;
    let stored = store_all(s, events..events + extra, 512, 0x2545_f491_4f6c_dd1d).await;
    let appended = caught_up(s).await;
    out.push_str(&format!(
        "\nAppending {extra} more in batches of 512 (the agent's journal writer under load): {:.0} events stored per second; \
         the free-text index held them all {:.1} s later.\n",
        extra as f64 / stored.as_secs_f64(),
        appended.as_secs_f64()
    ));
    let figures = json!({
        "backend": backend,
        "events": events,
        "filled_events_per_second": events as f64 / filled.as_secs_f64(),
        "index_caught_up_s": indexed.as_secs_f64(),
        "queries": queries,
        "appended": extra,
        "appended_events_per_second": extra as f64 / stored.as_secs_f64(),
        "appended_index_caught_up_s": appended.as_secs_f64(),
    });
    (out, figures)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStore::open(&dir.path().join("bench.db")).expect("open sqlite");
    let mut out = String::from("## Audit pages (the dashboard's explorer)\n");
    let mut backends = Vec::new();
    let (text, figures) = report(&sqlite, "SQLite", events).await;
    out.push_str(&text);
    backends.push(figures);
    if let Ok(url) = std::env::var("MCPGATE_TEST_POSTGRES_URL") {
        let (db_url, drop_db) = mcpgate_store::compliance::fresh_postgres(&url).await;
        {
            let pg = PostgresStore::connect(&db_url)
                .await
                .expect("connect postgres");
            let (text, figures) = report(&pg, "PostgreSQL", events).await;
            out.push_str(&text);
            backends.push(figures);
        }
        drop_db.await;
    }
    print!("{out}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::write(target.join("audit-bench-report.md"), &out).expect("write report");
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    let json = json!({"unix_time": seconds, "cores": std::thread::available_parallelism().map_or(0, |n| n.get()), "backends": backends});
    std::fs::write(
        target.join("audit-bench-report.json"),
        serde_json::to_string_pretty(&json).expect("JSON"),
    )
    .expect("write report");
}

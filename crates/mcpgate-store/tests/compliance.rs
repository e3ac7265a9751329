//! The storage compliance suite against SQLite and PostgreSQL.
//!
//! PostgreSQL runs when `MCPGATE_TEST_POSTGRES_URL` is set (the test script sets it); each
//! run gets a database of its own, dropped afterwards.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use serde_json::json;
use std::sync::Arc;

use mcpgate_store::{PostgresStore, SqliteStore, Store, compliance};

/// An event of `user`, `secs` after a fixed start, with one field.
fn request(
    id: String,
    user: &str,
    secs: u64,
    (k, v): (&str, serde_json::Value),
) -> mcpgate_types::AuditEvent {
    mcpgate_types::AuditEvent {
        id,
        time: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + secs),
        kind: "mcp.session.request".into(),
        code: "MG0000I".into(),
        cluster: "c".into(),
        user: user.into(),
        user_kind: Some(mcpgate_types::IdentityKind::User),
        roles: vec![],
        success: true,
        fields: [(k.to_string(), v)].into_iter().collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    compliance::run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_with_full_sync_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Arc::new(SqliteStore::open_with(&path, mcpgate_store::sqlite::Sync::Full).unwrap());
    compliance::run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_state_across_reopen_and_is_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.put("ca/user", b"pem").await.unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.get("ca/user").await.unwrap().as_deref(),
        Some(&b"pem"[..])
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_suite() {
    let Ok(url) = std::env::var("MCPGATE_TEST_POSTGRES_URL") else {
        eprintln!("SKIPPED: PostgreSQL compliance suite (set MCPGATE_TEST_POSTGRES_URL to run it)");
        return;
    };
    let (db_url, drop_db) = mcpgate_store::compliance::fresh_postgres(&url).await;
    {
        let store = Arc::new(PostgresStore::connect(&db_url).await.unwrap());
        compliance::run(store.clone()).await;
        // A second instance on the same database sees the same state (HA).
        let other = PostgresStore::connect(&db_url).await.unwrap();
        assert_eq!(
            other.get("roles/dev").await.unwrap().as_deref(),
            Some(&b"z"[..])
        );
    }
    drop_db.await;
}

/// A log written before the session, method and roles columns existed is brought up to
/// date when opened: its old events are found by the new filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrates_an_older_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE audit (
               id TEXT PRIMARY KEY, time_us INTEGER NOT NULL, type TEXT NOT NULL,
               user_name TEXT NOT NULL, app TEXT, tool TEXT, decision TEXT, data TEXT NOT NULL);
             INSERT INTO audit VALUES ('old1', 1, 'mcp.session.request', 'ann', 'fs', 'read', 'allow',
               '{\"id\":\"old1\",\"time\":\"1970-01-01T00:00:00.000001Z\",\"type\":\"mcp.session.request\",\"code\":\"MG5002I\",\"cluster\":\"c\",\"user\":\"ann\",\"roles\":[\"dev\",\"ops\"],\"success\":true,\"session_id\":\"s1\",\"method\":\"tools/call\"}');",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    for q in [
        mcpgate_types::AuditQuery {
            session: Some("s1".into()),
            ..Default::default()
        },
        mcpgate_types::AuditQuery {
            method: Some("tools/call".into()),
            role: Some("ops".into()),
            ..Default::default()
        },
    ] {
        let found = s.search_events(&q).await.unwrap();
        assert_eq!(found.len(), 1, "{q:?}");
        assert_eq!(found[0].id, "old1");
    }
    drop(s);
    // Opening again does not migrate twice.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.search_events(&Default::default()).await.unwrap().len(), 1);
}

/// Several writers on one PostgreSQL (the journal, the auth service's own events, other
/// instances) while a reader follows the log by position, as the live tail and the findings
/// reader do: the reader sees every event, none skipped because a lower position was
/// committed after a higher one was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_positions_are_never_overtaken() {
    let Ok(url) = std::env::var("MCPGATE_TEST_POSTGRES_URL") else {
        eprintln!("SKIPPED: PostgreSQL positions (set MCPGATE_TEST_POSTGRES_URL to run it)");
        return;
    };
    use mcpgate_types::AuditEvent;
    use std::time::Duration;
    const WRITERS: usize = 4;
    const BATCHES: usize = 150;
    let (db_url, drop_db) = mcpgate_store::compliance::fresh_postgres(&url).await;
    {
        let reader = PostgresStore::connect(&db_url).await.unwrap();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let store = PostgresStore::connect(&db_url).await.unwrap();
            writers.push(tokio::spawn(async move {
                for b in 0..BATCHES {
                    let batch: Vec<AuditEvent> = (0..3)
                        .map(|i| request(format!("w{w}-{b}-{i}"), "writer", i, ("n", json!(i))))
                        .collect();
                    store.append_events(&batch).await.unwrap();
                }
            }));
        }
        let mut seen = std::collections::HashSet::new();
        let mut last = 0;
        let follow = async |last: &mut i64, seen: &mut std::collections::HashSet<String>| {
            for (pos, e) in reader.events_after(*last, 10_000).await.unwrap() {
                assert!(seen.insert(e.id), "read twice");
                *last = pos;
            }
        };
        while !writers.iter().all(|w| w.is_finished()) {
            follow(&mut last, &mut seen).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for w in writers {
            w.await.unwrap();
        }
        follow(&mut last, &mut seen).await;
        assert_eq!(
            seen.len(),
            WRITERS * BATCHES * 3,
            "an event was overtaken and skipped"
        );
    }
    drop_db.await;
}

/// Free text has an index of its own, in a file beside the store's: a log from when the
/// index lived in the store's own file is found at once (by a scan of what is not indexed
/// yet) and, once the index has been filled from the newest back, through it; an index
/// from another log or unreadable is made anew, never trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_its_free_text_index_beside_the_store() {
    use mcpgate_types::{AuditEvent, AuditQuery, Page};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let text = dir.path().join("state.db-text2");
    let events = |tag: &str| -> Vec<AuditEvent> {
        (0..2_500)
            .map(|i| {
                request(
                    format!("{tag}{i:04}"),
                    "ann",
                    i,
                    ("note", json!(format!("{tag}-needle-{i:04} abcxbcd"))),
                )
            })
            .collect()
    };
    let remove_text = || {
        for f in ["state.db-text2", "state.db-text2-wal", "state.db-text2-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
    };
    {
        let store = SqliteStore::open(&path).unwrap();
        store.append_events(&events("old")).await.unwrap();
    }
    // As a log of a version that kept the index in the store's own file.
    remove_text();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE VIRTUAL TABLE audit_text USING fts5(data, content='audit',
               content_rowid='rowid', tokenize='trigram', detail='none');
             CREATE TABLE audit_text_state (indexed_from INTEGER NOT NULL, indexed_to INTEGER NOT NULL);
             INSERT INTO audit_text_state VALUES (1, 0);",
        )
        .unwrap();
    let find = async |store: &SqliteStore, text: &str| {
        let q = AuditQuery {
            text: Some(text.into()),
            ..AuditQuery::default()
        };
        let page = store.page_events(&q, Page::Newest).await.unwrap();
        page.into_iter().map(|(_, e)| e.id).collect::<Vec<_>>()
    };
    let indexed = async |store: &SqliteStore| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.text_index_behind().await.unwrap() > 0 {
            assert!(std::time::Instant::now() < deadline, "never indexed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let store = SqliteStore::open(&path).unwrap();
    let left: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'audit_text%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the old index is gone from the store's file");
    assert_eq!(
        find(&store, "OLD-NEEDLE-0007").await,
        ["old0007"],
        "found before it is indexed"
    );
    indexed(&store).await;
    // The oldest events are in the index (the eighth stored is `old0007`).
    let in_index: i64 = rusqlite::Connection::open(&text)
        .unwrap()
        .query_row(
            // The trigrams `-00` and `007`, as the index spells them.
            r#"SELECT count(*) FROM audit_text WHERE audit_text MATCH '"2d3030" AND "303037"' AND rowid = 8"#,
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(in_index, 1, "the oldest events are in the index");
    assert_eq!(find(&store, "old-needle-0007").await, ["old0007"]);
    assert_eq!(find(&store, "old-needle-2499").await, ["old2499"]);
    // Each trigram of `abcd` is in every event, the word in none: the index's candidates
    // are confirmed.
    assert!(find(&store, "abcd").await.is_empty());
    assert_eq!(find(&store, "needle-1234 ABCX").await, ["old1234"]);
    assert!(
        find(&store, "needle-9999").await.is_empty(),
        "a trigram in none"
    );
    drop(store);

    // The store replaced by another log, its index left over: made anew.
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    {
        let store = SqliteStore::open(&path).unwrap();
        store.append_events(&events("new")).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    indexed(&store).await;
    assert!(find(&store, "old-needle-0007").await.is_empty());
    assert_eq!(find(&store, "new-needle-0007").await, ["new0007"]);
    assert_eq!(find(&store, "new-needle-1234").await, ["new1234"]);
    drop(store);

    // An index of the earlier format, where it was kept (`state.db-text`): removed.
    let legacy = dir.path().join("state.db-text");
    std::fs::write(&legacy, b"an index of an earlier format").unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert!(!legacy.exists(), "the earlier format's file is removed");
    assert_eq!(find(&store, "new-needle-1998").await, ["new1998"]);
    drop(store);

    // A file of another format where this one keeps its index (the whole JSON through FTS5's
    // trigram tokenizer, say), in step with the log: made anew, never asked in its own
    // spelling.
    {
        let c = rusqlite::Connection::open(&text).unwrap();
        // The index's thread may still be finishing its last step.
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c.execute_batch(
            "DROP TABLE audit_text; DROP TABLE audit_text_common;
             CREATE VIRTUAL TABLE audit_text USING fts5(data, content='', tokenize='trigram',
               detail='none', columnsize=0);
             PRAGMA user_version = 0;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    indexed(&store).await;
    let format: i64 = rusqlite::Connection::open(&text)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(format, 3, "the index is made anew in its format");
    assert_eq!(find(&store, "new-needle-1999").await, ["new1999"]);
    drop(store);

    // An unreadable index: made anew.
    std::fs::write(
        &text,
        b"not a database, not at all, not a single page of one",
    )
    .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    indexed(&store).await;
    assert_eq!(find(&store, "new-needle-2000").await, ["new2000"]);
}

mod tampering {
    //! The audit chain names each kind of tampering by its position, on both backends:
    //! an edited event, a removed one, two swapped, one written around the store.

    use mcpgate_store::chain::{self, Break};
    use mcpgate_store::{PostgresStore, SqliteStore, Store};
    use mcpgate_types::AuditEvent;

    fn events(from: u64, n: u64) -> Vec<AuditEvent> {
        (from..from + n)
            .map(|i| super::request(format!("ev{i:03}"), "ann", i, ("n", serde_json::json!(i))))
            .collect()
    }

    /// Ten events in four batches (one shipped twice, one partly shipped before), then the
    /// chain as it verifies.
    async fn fill<S: Store>(s: &S) -> (Vec<i64>, Result<chain::Verifier, Break>) {
        s.append_events(&events(1, 4)).await.unwrap();
        s.append_events(&events(5, 3)).await.unwrap();
        s.append_events(&events(5, 3)).await.unwrap();
        s.append_events(&events(6, 3)).await.unwrap();
        s.append_events(&events(9, 2)).await.unwrap();
        let mut seqs = Vec::new();
        let v = chain::walk(s, |r| seqs.push(r.seq)).await.unwrap();
        (seqs, v)
    }

    const SCENARIOS: [&str; 4] = ["edit", "delete", "swap", "unchained"];

    /// What `verify` must say after `scenario`, given the positions in order.
    fn expected(scenario: &str, p: &[i64]) -> Break {
        match scenario {
            "edit" => Break::Altered { seq: p[3] },
            "delete" => Break::Missing {
                seq: p[5],
                after: p[3],
            },
            "swap" => Break::Altered { seq: p[5] },
            _ => Break::Unchained { seq: p[8] },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        for scenario in SCENARIOS {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let s = SqliteStore::open(&path).unwrap();
            let (p, v) = fill(&s).await;
            assert_eq!(v.unwrap().checked, 10, "intact");
            let c = rusqlite::Connection::open(&path).unwrap();
            let sql = match scenario {
                "edit" => format!(
                    "UPDATE audit SET data = replace(data, '\"ann\"', '\"bob\"') WHERE rowid = {}",
                    p[3]
                ),
                "delete" => format!("DELETE FROM audit WHERE rowid = {}", p[4]),
                "swap" => format!(
                    "UPDATE audit SET data = CASE rowid WHEN {a} THEN (SELECT data FROM audit WHERE rowid = {b}) ELSE (SELECT data FROM audit WHERE rowid = {a}) END WHERE rowid IN ({a}, {b})",
                    a = p[5],
                    b = p[6]
                ),
                _ => format!("UPDATE audit SET hash = NULL WHERE rowid = {}", p[8]),
            };
            c.execute_batch(&sql).unwrap();
            let got = chain::walk(&s, |_| {}).await.unwrap().unwrap_err();
            assert_eq!(got, expected(scenario, &p), "{scenario}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Ok(url) = std::env::var("MCPGATE_TEST_POSTGRES_URL") else {
            eprintln!("SKIPPED: chain tampering on PostgreSQL (set MCPGATE_TEST_POSTGRES_URL)");
            return;
        };
        for scenario in SCENARIOS {
            let (db_url, drop_db) = mcpgate_store::compliance::fresh_postgres(&url).await;
            {
                let s = PostgresStore::connect(&db_url).await.unwrap();
                let (p, v) = fill(&s).await;
                assert_eq!(v.unwrap().checked, 10, "intact");
                let (c, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let sql = match scenario {
                    "edit" => format!(
                        "UPDATE mcpgate_audit SET data = replace(data, '\"ann\"', '\"bob\"') WHERE seq = {}",
                        p[3]
                    ),
                    "delete" => format!("DELETE FROM mcpgate_audit WHERE seq = {}", p[4]),
                    "swap" => format!(
                        "UPDATE mcpgate_audit a SET data = b.data FROM mcpgate_audit b WHERE (a.seq, b.seq) IN (({x}, {y}), ({y}, {x}))",
                        x = p[5],
                        y = p[6]
                    ),
                    _ => format!("UPDATE mcpgate_audit SET hash = NULL WHERE seq = {}", p[8]),
                };
                c.batch_execute(&sql).await.unwrap();
                let got = chain::walk(&s, |_| {}).await.unwrap().unwrap_err();
                assert_eq!(got, expected(scenario, &p), "{scenario}");
            }
            drop_db.await;
        }
    }
}

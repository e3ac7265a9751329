//! The storage compliance suite against SQLite and PostgreSQL.
//!
//! PostgreSQL runs when `MCPGATE_TEST_POSTGRES_URL` is set (the test script sets it); each
//! run gets a database of its own, dropped afterwards.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::sync::Arc;

use mcpgate_store::{PostgresStore, SqliteStore, Store, compliance};

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

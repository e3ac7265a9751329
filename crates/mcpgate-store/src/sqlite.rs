//! The embedded SQLite backend: one file, WAL journal. With [`Sync::Normal`] (the default) a
//! committed write survives the process being killed; with [`Sync::Full`] it also survives
//! the machine losing power, at the cost of an fsync (≈ 250 µs here) per commit.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

use mcpgate_types::{AuditEvent, AuditQuery, Page};

use crate::chain;
use crate::query::{self, Arg, Dialect};
use crate::{EventRow, Result, Store, decode_rows, prefix_end};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate (key TEXT NOT NULL, win INTEGER NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (key, win)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (key TEXT NOT NULL, id TEXT NOT NULL, expires INTEGER NOT NULL,
  PRIMARY KEY (key, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
  id TEXT PRIMARY KEY, time_us INTEGER NOT NULL, type TEXT NOT NULL, user_name TEXT NOT NULL,
  app TEXT, tool TEXT, decision TEXT, data TEXT NOT NULL,
  session TEXT, method TEXT, roles TEXT);
";

/// Indexes, made after [`migrate`] has added the columns they cover.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS audit_time ON audit (time_us);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user_name, time_us);
CREATE INDEX IF NOT EXISTS audit_type ON audit (type, time_us);
CREATE INDEX IF NOT EXISTS audit_app ON audit (app, time_us);
CREATE INDEX IF NOT EXISTS audit_session ON audit (session, time_us);
CREATE INDEX IF NOT EXISTS audit_decision ON audit (decision, time_us);
";

/// Brings a log written before the `session`, `method` and `roles` columns up to date,
/// once: the columns are added and filled from each event's JSON.
fn migrate(c: &Connection) -> rusqlite::Result<()> {
    let chained = c
        .prepare("SELECT 1 FROM pragma_table_info('audit') WHERE name = 'hash'")?
        .exists([])?;
    if !chained {
        // Events stored before the chain keep no links; it begins with the next one.
        c.execute_batch(
            "ALTER TABLE audit ADD COLUMN prev BLOB; ALTER TABLE audit ADD COLUMN hash BLOB;",
        )?;
    }
    let has: bool = c
        .prepare("SELECT 1 FROM pragma_table_info('audit') WHERE name = 'roles'")?
        .exists([])?;
    if has {
        return Ok(());
    }
    c.execute_batch(
        "BEGIN;
         ALTER TABLE audit ADD COLUMN session TEXT;
         ALTER TABLE audit ADD COLUMN method TEXT;
         ALTER TABLE audit ADD COLUMN roles TEXT;
         UPDATE audit SET session = json_extract(data, '$.session_id'),
           method = json_extract(data, '$.method'),
           roles = ',' || COALESCE((SELECT group_concat(value, ',') FROM json_each(data, '$.roles')) || ',', '');
         COMMIT;",
    )
}

/// Free text over the events' JSON: a trigram index (FTS5, external content: the text stays
/// in `audit` only). `audit_text_state` says which positions it holds, `indexed_from` to
/// `indexed_to`; free text scans the events on either side. New events are indexed in
/// steps of [`TEXT_INDEX_LAG`] after they are stored (one index update for many events, off
/// the path of each call); a log from before the index is indexed from its newest events
/// back, in the background.
const TEXT_INDEX: &str = "
BEGIN;
CREATE VIRTUAL TABLE audit_text USING fts5(data, content='audit', content_rowid='rowid',
  tokenize='trigram', detail='none');
CREATE TABLE audit_text_state (indexed_from INTEGER NOT NULL, indexed_to INTEGER NOT NULL);
INSERT INTO audit_text_state SELECT COALESCE(MAX(rowid), 0) + 1, COALESCE(MAX(rowid), 0) FROM audit;
COMMIT;";

/// New events are indexed once this many wait (free text scans those meanwhile).
const TEXT_INDEX_LAG: i64 = 2_048;

/// Events indexed per step of the background fill (the store is held for one step, some
/// 100 ms), and the pause between steps that lets the store's other users in.
const TEXT_FILL_STEP: i64 = 1_000;
const TEXT_FILL_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Free text is looked up in the index when it names at most this many events; a needle
/// found in more is found as fast by reading the newest events.
const TEXT_INDEX_MAX: i64 = 5_000;

fn create_text_index(c: &Connection) -> rusqlite::Result<()> {
    let exists = c
        .prepare("SELECT 1 FROM sqlite_master WHERE name = 'audit_text'")?
        .exists([])?;
    if !exists {
        c.execute_batch(TEXT_INDEX)?;
    }
    // A store whose index was kept by a trigger: everything up to its newest event is in.
    let upper = c
        .prepare("SELECT 1 FROM pragma_table_info('audit_text_state') WHERE name = 'indexed_to'")?
        .exists([])?;
    if !upper {
        c.execute_batch(
            "BEGIN;
             DROP TRIGGER IF EXISTS audit_text_insert;
             ALTER TABLE audit_text_state ADD COLUMN indexed_to INTEGER NOT NULL DEFAULT 0;
             UPDATE audit_text_state SET indexed_to = (SELECT COALESCE(MAX(rowid), 0) FROM audit);
             COMMIT;",
        )?;
    }
    Ok(())
}

/// The highest position the text index holds.
fn indexed_to(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("SELECT indexed_to FROM audit_text_state", [], |r| r.get(0))
}

/// Indexes the events stored since the index was last brought up to date, up to `head`
/// (the newest position), if at least `lag` wait (in one transaction: the index's cost is
/// paid once for all of them).
fn index_new(c: &mut Connection, head: i64, lag: i64) -> rusqlite::Result<()> {
    let to = indexed_to(c)?;
    if head - to < lag.max(1) {
        return Ok(());
    }
    let tx = c.transaction()?;
    tx.execute(
        "INSERT INTO audit_text(rowid, data) SELECT rowid, data FROM audit
         WHERE rowid > ?1 AND rowid <= ?2",
        params![to, head],
    )?;
    tx.execute("UPDATE audit_text_state SET indexed_to = ?1", [head])?;
    tx.commit()
}

/// The lowest position the text index holds.
fn indexed_from(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("SELECT indexed_from FROM audit_text_state", [], |r| {
        r.get(0)
    })
}

/// Indexes the next older step of a log from before the index; false once all is indexed.
fn fill_text_index(c: &mut Connection) -> rusqlite::Result<bool> {
    let from = indexed_from(c)?;
    if from <= 1 {
        return Ok(false);
    }
    let low = (from - TEXT_FILL_STEP).max(1);
    let tx = c.transaction()?;
    tx.execute(
        "INSERT INTO audit_text(rowid, data) SELECT rowid, data FROM audit
         WHERE rowid >= ?1 AND rowid < ?2",
        params![low, from],
    )?;
    tx.execute("UPDATE audit_text_state SET indexed_from = ?1", [low])?;
    tx.commit()?;
    Ok(low > 1)
}

/// How to find `needle`: through the index when it can be used and the needle is rare.
fn text_plan(c: &Connection, needle: Option<&str>) -> rusqlite::Result<query::Text> {
    let Some(needle) = needle else {
        return Ok(query::Text::Scan);
    };
    // Trigrams need three characters; the index's LIKE takes no ESCAPE.
    if needle.chars().count() < 3 || needle.contains(['%', '_', '\\']) {
        return Ok(query::Text::Scan);
    }
    let found: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM (SELECT rowid FROM audit_text WHERE data LIKE ?1 LIMIT ?2)",
        )?
        .query_row(params![format!("%{needle}%"), TEXT_INDEX_MAX + 1], |r| {
            r.get(0)
        })?;
    if found > TEXT_INDEX_MAX {
        return Ok(query::Text::Scan);
    }
    Ok(query::Text::Indexed {
        from: indexed_from(c)?,
        to: indexed_to(c)?,
    })
}

/// Bound values as SQLite takes them.
fn values(args: Vec<Arg>) -> impl Iterator<Item = rusqlite::types::Value> {
    args.into_iter().map(|a| match a {
        Arg::Int(i) => rusqlite::types::Value::Integer(i),
        Arg::Text(t) => rusqlite::types::Value::Text(t),
    })
}

/// How durable a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// Survives the process being killed (WAL `synchronous=NORMAL`).
    #[default]
    Normal,
    /// Also survives power loss: an fsync per commit (`synchronous=FULL`).
    Full,
}

/// SQLite storage. Calls run on tokio's blocking pool, one at a time.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, readable by its owner only.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Sync::Normal)
    }

    /// Opens with the given durability.
    pub fn open_with(path: &Path, sync: Sync) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        restrict(path)?;
        let level = match sync {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={level}; PRAGMA busy_timeout=5000;"
        ))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        conn.execute_batch(INDEXES)?;
        create_text_index(&conn)?;
        let filling = indexed_from(&conn)? > 1;
        let conn = Arc::new(Mutex::new(conn));
        if filling {
            // A step at a time, letting every other use of the store in between; it stops
            // when the store is dropped.
            let weak = Arc::downgrade(&conn);
            std::thread::spawn(move || {
                while let Some(conn) = weak.upgrade() {
                    let step = fill_text_index(&mut conn.lock().unwrap_or_else(|p| p.into_inner()));
                    drop(conn);
                    match step {
                        Ok(true) => std::thread::sleep(TEXT_FILL_PAUSE),
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "the audit text index could not be filled; free text scans the older events");
                            break;
                        }
                    }
                }
            });
        }
        Ok(Self { conn })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard).map_err(crate::StoreError::from)
        })
        .await
        .map_err(|e| crate::StoreError::Task(e.to_string()))?
    }
}

#[cfg(unix)]
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict(_: &Path) -> std::io::Result<()> {
    Ok(())
}

impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_string();
        self.run(move |c| {
            c.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |c| {
            c.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
        })
        .await
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<bool> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |c| {
            c.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![key, value],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn compare_and_swap(&self, key: &str, expected: &[u8], new: &[u8]) -> Result<bool> {
        let (key, expected, new) = (key.to_string(), expected.to_vec(), new.to_vec());
        self.run(move |c| {
            c.execute(
                "UPDATE kv SET value = ?3 WHERE key = ?1 AND value = ?2",
                params![key, expected, new],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn hit(&self, key: &str, window: i64, limit: u64) -> Result<Option<u64>> {
        let key = key.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            let tx = c.transaction()?;
            let n: Option<i64> = tx
                .query_row(
                    "INSERT INTO rate (key, win, n) SELECT ?1, ?2, 1 WHERE ?3 > 0
                     ON CONFLICT (key, win) DO UPDATE SET n = n + 1 WHERE n < ?3
                     RETURNING n",
                    params![key, window, limit],
                    |r| r.get(0),
                )
                .optional()?;
            if n == Some(1) {
                tx.execute(
                    "DELETE FROM rate WHERE key = ?1 AND win < ?2",
                    params![key, window],
                )?;
            }
            tx.commit()?;
            Ok(n.map(|n| n.unsigned_abs()))
        })
        .await
    }

    async fn lease(&self, key: &str, id: &str, limit: u64, now: i64, expires: i64) -> Result<bool> {
        let (key, id) = (key.to_string(), id.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM leases WHERE key = ?1 AND expires <= ?2",
                params![key, now],
            )?;
            let held: i64 =
                tx.query_row("SELECT count(*) FROM leases WHERE key = ?1", [&key], |r| {
                    r.get(0)
                })?;
            let taken = held < limit
                && tx.execute(
                    "INSERT OR REPLACE INTO leases (key, id, expires) VALUES (?1, ?2, ?3)",
                    params![key, id, expires],
                )? == 1;
            tx.commit()?;
            Ok(taken)
        })
        .await
    }

    async fn release(&self, key: &str, id: &str) -> Result<()> {
        let (key, id) = (key.to_string(), id.to_string());
        self.run(move |c| {
            c.execute(
                "DELETE FROM leases WHERE key = ?1 AND id = ?2",
                params![key, id],
            )
            .map(|_| ())
        })
        .await
    }

    async fn release_all(&self, prefix: &str) -> Result<()> {
        let (low, high) = (prefix.to_string(), prefix_end(prefix));
        self.run(move |c| {
            c.execute(
                "DELETE FROM leases WHERE id >= ?1 AND id < ?2",
                params![low, high],
            )
            .map(|_| ())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        self.run(move |c| {
            c.execute("DELETE FROM kv WHERE key = ?1", [key])
                .map(|n| n == 1)
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys = keys.to_vec();
        self.run(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
                for k in &keys {
                    stmt.execute([k])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_string();
        self.run(move |c| {
            c.query_row(
                "DELETE FROM kv WHERE key = ?1 RETURNING value",
                [key],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let (start, end) = (prefix.to_string(), prefix_end(prefix));
        self.run(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
            )?;
            let rows = stmt.query_map([start, end], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn append_events(&self, events: &[AuditEvent]) -> Result<()> {
        let rows: Vec<OwnedRow> = events
            .iter()
            .map(|e| {
                let r = EventRow::new(e)?;
                let own = |v: Option<&str>| v.map(str::to_string);
                Ok(OwnedRow {
                    id: r.id.to_string(),
                    time_us: r.time_us,
                    kind: r.kind.to_string(),
                    user: r.user.to_string(),
                    app: own(r.app),
                    tool: own(r.tool),
                    decision: own(r.decision),
                    session: own(r.session),
                    method: own(r.method),
                    roles: r.roles,
                    data: r.data,
                })
            })
            .collect::<Result<_>>()?;
        self.run(move |c| {
            let tx = c.transaction()?;
            let head = {
                // Each event is linked to the one before it: its position is the next one,
                // and its hash covers the position, the previous hash and its JSON.
                let head: Option<(i64, Option<Vec<u8>>)> = tx
                    .query_row(
                        "SELECT rowid, hash FROM audit ORDER BY rowid DESC LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let (mut seq, mut prev) = match head {
                    Some((seq, hash)) => (seq, chain::hash_of(hash.as_deref())),
                    None => (0, None),
                };
                let mut stored = tx.prepare_cached("SELECT 1 FROM audit WHERE id = ?1")?;
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO audit
                       (rowid, id, time_us, type, user_name, app, tool, decision, session,
                        method, roles, data, prev, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )?;
                for r in &rows {
                    // Shipped twice: stored once.
                    if stored.exists([&r.id])? {
                        continue;
                    }
                    seq += 1;
                    let hash = chain::link(seq, prev.as_ref(), &r.data);
                    stmt.execute(params![
                        seq,
                        r.id,
                        r.time_us,
                        r.kind,
                        r.user,
                        r.app,
                        r.tool,
                        r.decision,
                        r.session,
                        r.method,
                        r.roles,
                        r.data,
                        prev.map(|p| p.to_vec()),
                        hash.to_vec()
                    ])?;
                    prev = Some(hash);
                }
                seq
            };
            tx.commit()?;
            // The text index follows in steps, after the events are safely stored: an
            // error there costs a free-text scan, never an event.
            if let Err(e) = index_new(c, head, TEXT_INDEX_LAG) {
                tracing::warn!(error = %e, "the audit text index is behind; free text scans the newest events");
            }
            Ok(())
        })
        .await
    }

    async fn search_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let mut page = self.page_events(query, Page::Newest).await?;
        page.reverse();
        Ok(page.into_iter().map(|(_, e)| e).collect())
    }

    async fn page_events(&self, query: &AuditQuery, page: Page) -> Result<Vec<(i64, AuditEvent)>> {
        let query = query.clone();
        let rows: Vec<(i64, String)> = self
            .run(move |c| {
                let plan = text_plan(c, query.text.as_deref().filter(|t| !t.is_empty()))?;
                let sql = query::select_with(Dialect::Sqlite, &query, page, plan);
                let args = values(sql.args);
                let mut stmt = c.prepare_cached(&sql.text)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                let mut rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
                if sql.reverse {
                    rows.reverse();
                }
                Ok(rows)
            })
            .await?;
        Ok(decode_rows(rows))
    }

    async fn tally_events(&self, query: &AuditQuery, width_us: i64) -> Result<Vec<crate::Tally>> {
        let query = query.clone();
        self.run(move |c| {
            let plan = text_plan(c, query.text.as_deref().filter(|t| !t.is_empty()))?;
            let sql = query::tally(Dialect::Sqlite, &query, width_us, plan);
            let mut stmt = c.prepare_cached(&sql.text)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values(sql.args)), |r| {
                Ok(crate::Tally {
                    bucket_us: r.get(0)?,
                    tool: r.get(1)?,
                    app: r.get(2)?,
                    user: r.get(3)?,
                    denied: r.get(4)?,
                    calls: r.get::<_, i64>(5)?.max(0) as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn durations(&self, query: &AuditQuery, limit: u32) -> Result<Vec<f64>> {
        let query = query.clone();
        self.run(move |c| {
            let plan = text_plan(c, query.text.as_deref().filter(|t| !t.is_empty()))?;
            let sql = query::durations(Dialect::Sqlite, &query, limit, plan);
            let mut stmt = c.prepare_cached(&sql.text)?;
            let rows =
                stmt.query_map(rusqlite::params_from_iter(values(sql.args)), |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn chain_rows(&self, after: i64, limit: u32) -> Result<Vec<chain::ChainRow>> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT rowid, prev, hash, data FROM audit WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |r| {
                Ok(chain::ChainRow {
                    seq: r.get(0)?,
                    prev: r.get(1)?,
                    hash: r.get(2)?,
                    data: r.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn chain_head(&self) -> Result<Option<(i64, Option<chain::Hash>)>> {
        self.run(|c| {
            c.query_row(
                "SELECT rowid, hash FROM audit ORDER BY rowid DESC LIMIT 1",
                [],
                |r| {
                    let hash: Option<Vec<u8>> = r.get(1)?;
                    Ok((r.get(0)?, chain::hash_of(hash.as_deref())))
                },
            )
            .optional()
        })
        .await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, AuditEvent)>> {
        let rows: Vec<(i64, String)> = self
            .run(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT rowid, data FROM audit WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                )?;
                let rows = stmt.query_map(rusqlite::params![after, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                rows.collect()
            })
            .await?;
        Ok(decode_rows(rows))
    }
}

/// An event's columns, owned, to move into the blocking task.
struct OwnedRow {
    id: String,
    time_us: i64,
    kind: String,
    user: String,
    app: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    session: Option<String>,
    method: Option<String>,
    roles: String,
    data: String,
}

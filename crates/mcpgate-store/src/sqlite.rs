//! The embedded SQLite backend: one file, WAL journal. With [`Sync::Normal`] (the default) a
//! committed write survives the process being killed; with [`Sync::Full`] it also survives
//! the machine losing power, at the cost of an fsync (≈ 250 µs here) per commit.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

use mcpgate_types::{AuditEvent, AuditQuery};

use crate::{DEFAULT_LIMIT, EventRow, Result, Store, StoreError, prefix_end};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
  id TEXT PRIMARY KEY, time_us INTEGER NOT NULL, type TEXT NOT NULL, user_name TEXT NOT NULL,
  app TEXT, tool TEXT, decision TEXT, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time_us);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user_name, time_us);
CREATE INDEX IF NOT EXISTS audit_type ON audit (type, time_us);
CREATE INDEX IF NOT EXISTS audit_app ON audit (app, time_us);
";

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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard).map_err(StoreError::from)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
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
                Ok((
                    r.id.to_string(),
                    r.time_us,
                    r.kind.to_string(),
                    r.user.to_string(),
                    r.app.map(str::to_string),
                    r.tool.map(str::to_string),
                    r.decision.map(str::to_string),
                    r.data,
                ))
            })
            .collect::<Result<_>>()?;
        self.run(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO audit (id, time_us, type, user_name, app, tool, decision, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
                )?;
                for r in &rows {
                    stmt.execute(params![r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn search_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let q = query.clone();
        let rows: Vec<String> = self
            .run(move |c| {
                let mut sql = String::from("SELECT data FROM audit WHERE 1=1");
                let mut args: Vec<rusqlite::types::Value> = Vec::new();
                let mut add = |col: &str, v: rusqlite::types::Value| {
                    args.push(v);
                    sql.push_str(&format!(" AND {col} ?{}", args.len()));
                };
                if let Some(t) = q.since_micros {
                    add("time_us >=", t.into());
                }
                for (col, v) in [
                    ("user_name =", &q.user),
                    ("app =", &q.app),
                    ("tool =", &q.tool),
                    ("type =", &q.kind),
                    ("decision =", &q.decision),
                ] {
                    if let Some(v) = v {
                        add(col, v.clone().into());
                    }
                }
                sql.push_str(&format!(
                    " ORDER BY time_us DESC, rowid DESC LIMIT {}",
                    q.limit.unwrap_or(DEFAULT_LIMIT)
                ));
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        decode_events(rows)
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
        // A row that does not decode is skipped (and said), not a reason to stop reading.
        Ok(rows
            .into_iter()
            .filter_map(|(seq, d)| match serde_json::from_str(&d) {
                Ok(e) => Some((seq, e)),
                Err(e) => {
                    tracing::warn!(error = %e, "an audit row does not decode: skipped");
                    None
                }
            })
            .collect())
    }
}

/// An event's columns, owned, to move into the blocking task.
type OwnedRow = (
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

/// Decodes stored event JSON, newest-first rows into oldest-first events.
/// Events from their stored JSON (rows newest first), oldest first.
pub(crate) fn decode_events(mut rows: Vec<String>) -> Result<Vec<AuditEvent>> {
    rows.reverse();
    rows.iter()
        .map(|d| serde_json::from_str(d).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect()
}

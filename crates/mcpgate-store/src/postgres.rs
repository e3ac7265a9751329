//! The PostgreSQL backend, for several auth/proxy instances sharing one state.

use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, types::ToSql};

use mcpgate_types::{AuditEvent, AuditQuery, Page};

use crate::chain;
use crate::query::{self, Arg, Dialect};
use crate::{Encoded, Result, Store, decode_rows};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mcpgate_kv (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS mcpgate_rate (key TEXT NOT NULL, window_start BIGINT NOT NULL,
  n BIGINT NOT NULL, PRIMARY KEY (key, window_start));
CREATE TABLE IF NOT EXISTS mcpgate_leases (key TEXT NOT NULL, id TEXT NOT NULL,
  expires BIGINT NOT NULL, PRIMARY KEY (key, id));
CREATE TABLE IF NOT EXISTS mcpgate_audit (
  seq BIGSERIAL,
  id TEXT PRIMARY KEY, time_us BIGINT NOT NULL, type TEXT NOT NULL, user_name TEXT NOT NULL,
  app TEXT, tool TEXT, decision TEXT, data TEXT NOT NULL,
  session TEXT, method TEXT, roles TEXT);
CREATE INDEX IF NOT EXISTS mcpgate_audit_time ON mcpgate_audit (time_us);
CREATE INDEX IF NOT EXISTS mcpgate_audit_user ON mcpgate_audit (user_name, time_us);
CREATE INDEX IF NOT EXISTS mcpgate_audit_type ON mcpgate_audit (type, time_us);
CREATE INDEX IF NOT EXISTS mcpgate_audit_app ON mcpgate_audit (app, time_us);
CREATE INDEX IF NOT EXISTS mcpgate_audit_seq ON mcpgate_audit (seq);
";

/// Indexes, made after [`MIGRATE`] has added the columns they cover. Positions are unique:
/// the audit chain is walked by them.
const INDEXES: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS mcpgate_audit_seq_unique ON mcpgate_audit (seq);
CREATE INDEX IF NOT EXISTS mcpgate_audit_session ON mcpgate_audit (session, time_us);
CREATE INDEX IF NOT EXISTS mcpgate_audit_decision ON mcpgate_audit (decision, time_us);
";

/// Free text (`q`) over the events' JSON through a trigram index, where the server has
/// pg_trgm and lets this user create it (a trusted extension since PostgreSQL 13); without
/// it the search still works, by a scan.
const TEXT_INDEX: &str = "mcpgate_audit_text";

/// Advisory lock keys: schema set-up, the free-text index build, and the audit writers'
/// turn (see [`Store::append_encoded`]).
const SETUP_LOCK: i64 = 7_165_064_574_117_131_570;
const BUILD_LOCK: i64 = 7_165_064_574_117_131_571;
const WRITE_LOCK: i64 = 7_165_064_574_117_131_569;

/// Brings a log written before the `session`, `method` and `roles` columns up to date:
/// the columns are added and filled from each event's JSON (in one transaction, so
/// instances starting together do it once).
const MIGRATE: &str = "
BEGIN;
LOCK TABLE mcpgate_audit IN SHARE ROW EXCLUSIVE MODE;
ALTER TABLE mcpgate_audit ADD COLUMN IF NOT EXISTS session TEXT,
  ADD COLUMN IF NOT EXISTS method TEXT, ADD COLUMN IF NOT EXISTS roles TEXT;
UPDATE mcpgate_audit SET session = data::jsonb->>'session_id', method = data::jsonb->>'method',
  roles = ',' || COALESCE((SELECT string_agg(r, ',') FROM jsonb_array_elements_text(data::jsonb->'roles') r) || ',', '')
  WHERE roles IS NULL;
COMMIT;
";

/// PostgreSQL storage over one pipelined connection, reopened when it drops.
#[derive(Clone)]
pub struct PostgresStore {
    url: String,
    client: Arc<Mutex<Arc<Client>>>,
    /// A connection of its own for appending events: each append is a transaction.
    writer: Arc<Mutex<Option<Client>>>,
    /// A connection of its own for leases: each is a transaction, apart from the audit's.
    leaser: Arc<Mutex<Option<Client>>>,
}

impl PostgresStore {
    /// Connects to `url` and creates the tables if needed.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = Self::open(url).await?;
        if !Self::schema_complete(&client).await? {
            // Instances starting together set the schema up one at a time (concurrent
            // `CREATE ... IF NOT EXISTS` can fail, and deadlock with an index build).
            client
                .batch_execute(&format!("SELECT pg_advisory_lock({SETUP_LOCK})"))
                .await?;
            let setup = Self::set_up(&client).await;
            client
                .batch_execute(&format!("SELECT pg_advisory_unlock({SETUP_LOCK})"))
                .await?;
            setup?;
        }
        Self::index_text(&client, url).await?;
        Ok(Self {
            url: url.to_string(),
            client: Arc::new(Mutex::new(client)),
            writer: Arc::new(Mutex::new(None)),
            leaser: Arc::new(Mutex::new(None)),
        })
    }

    /// Whether the tables and their indexes are all there (read from the catalog, taking no
    /// lock on the tables: a starting instance never waits on a running index build).
    async fn schema_complete(client: &Client) -> Result<bool> {
        let names = [
            "mcpgate_audit_time",
            "mcpgate_audit_user",
            "mcpgate_audit_type",
            "mcpgate_audit_app",
            "mcpgate_audit_seq",
            "mcpgate_audit_session",
            "mcpgate_audit_decision",
            "mcpgate_audit_seq_unique",
        ];
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_indexes
                 WHERE schemaname = current_schema() AND indexname = ANY($1)",
                &[&&names[..]],
            )
            .await?
            .get(0);
        let kv = client
            .query_opt(
                "SELECT count(*) = 3 FROM pg_tables WHERE schemaname = current_schema()
                   AND tablename IN ('mcpgate_kv', 'mcpgate_rate', 'mcpgate_leases')
                   HAVING count(*) = 3",
                &[],
            )
            .await?
            .is_some();
        Ok(kv && Self::has_column(client, "hash").await? && n == names.len() as i64)
    }

    /// Whether the audit table has column `name` (a log from an older version may not).
    async fn has_column(client: &Client, name: &str) -> Result<bool> {
        Ok(client
            .query_opt(
                "SELECT 1 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = 'mcpgate_audit'
                   AND column_name = $1",
                &[&name],
            )
            .await?
            .is_some())
    }

    async fn set_up(client: &Client) -> Result<()> {
        client.batch_execute(SCHEMA).await?;
        if !Self::has_column(client, "roles").await? {
            client.batch_execute(MIGRATE).await?;
        }
        // Events stored before the chain keep no links; it begins with the next one.
        client
            .batch_execute(
                "ALTER TABLE mcpgate_audit ADD COLUMN IF NOT EXISTS prev BYTEA,
                   ADD COLUMN IF NOT EXISTS hash BYTEA",
            )
            .await?;
        client.batch_execute(INDEXES).await?;
        Ok(())
    }

    /// Whether the free-text index is there and usable (`Some(false)`: a build was cut off).
    async fn text_index_valid(client: &Client) -> Result<Option<bool>> {
        Ok(client
            .query_opt(
                "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
                 WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
                &[&TEXT_INDEX],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Starts building the free-text index if it is missing (or a build was cut off):
    /// concurrently, on a connection of its own, so a large log keeps taking writes and
    /// the daemon starts at once. A server that cannot build it is told once, in the log.
    async fn index_text(client: &Client, url: &str) -> Result<()> {
        if Self::text_index_valid(client).await? == Some(true) {
            return Ok(());
        }
        let url = url.to_string();
        tokio::spawn(async move {
            let build = async {
                let c = Self::open(&url).await?;
                // One builder at a time; another instance already building it finishes it.
                let mine: bool = c
                    .query_one(&format!("SELECT pg_try_advisory_lock({BUILD_LOCK})"), &[])
                    .await?
                    .get(0);
                if !mine {
                    return Ok(());
                }
                let valid = Self::text_index_valid(&c).await?;
                if valid == Some(true) {
                    return Ok(());
                }
                if valid == Some(false) {
                    c.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {TEXT_INDEX}"))
                        .await?;
                }
                c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                    .await?;
                c.batch_execute(&format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {TEXT_INDEX}
                     ON mcpgate_audit USING gin (data gin_trgm_ops)"
                ))
                .await?;
                Ok::<_, crate::StoreError>(())
            };
            if let Err(e) = build.await {
                tracing::warn!(
                    error = %e,
                    "no trigram index for free-text audit search (it works, by a scan); \
                     `CREATE EXTENSION pg_trgm` as a superuser to have it"
                );
            }
        });
        Ok(())
    }

    async fn open(url: &str) -> Result<Arc<Client>> {
        Ok(Arc::new(Self::open_client(url).await?))
    }

    async fn open_client(url: &str) -> Result<Client> {
        let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "postgres connection closed");
            }
        });
        Ok(client)
    }

    async fn client(&self) -> Result<Arc<Client>> {
        let mut guard = self.client.lock().await;
        if guard.is_closed() {
            *guard = Self::open(&self.url).await?;
        }
        Ok(guard.clone())
    }
}

impl PostgresStore {
    /// Runs a built query with its bound values.
    async fn query(&self, sql: &query::Sql) -> Result<Vec<tokio_postgres::Row>> {
        let args: Vec<Box<dyn ToSql + Sync + Send>> = sql
            .args
            .iter()
            .map(|a| -> Box<dyn ToSql + Sync + Send> {
                match a {
                    Arg::Int(i) => Box::new(*i),
                    Arg::Text(t) => Box::new(t.clone()),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let c = self.client().await?;
        Ok(c.query(sql.text.as_str(), &refs).await?)
    }
}

impl Store for PostgresStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(
            c.query_opt("SELECT value FROM mcpgate_kv WHERE key = $1", &[&key])
                .await?
                .map(|r| r.get(0)),
        )
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO mcpgate_kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await?;
        Ok(())
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO mcpgate_kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .await?;
        Ok(n == 1)
    }

    async fn compare_and_swap(&self, key: &str, expected: &[u8], new: &[u8]) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE mcpgate_kv SET value = $3 WHERE key = $1 AND value = $2",
                &[&key, &expected, &new],
            )
            .await?;
        Ok(n == 1)
    }

    async fn hit(&self, key: &str, window: i64, limit: u64) -> Result<Option<u64>> {
        let c = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let n: Option<i64> = c
            .query_opt(
                "INSERT INTO mcpgate_rate AS r (key, window_start, n)
                 SELECT $1, $2, 1 WHERE $3::BIGINT > 0
                 ON CONFLICT (key, window_start) DO UPDATE SET n = r.n + 1 WHERE r.n < $3
                 RETURNING n",
                &[&key, &window, &limit],
            )
            .await?
            .map(|r| r.get(0));
        if n == Some(1) {
            c.execute(
                "DELETE FROM mcpgate_rate WHERE key = $1 AND window_start < $2",
                &[&key, &window],
            )
            .await?;
        }
        Ok(n.map(|n| n.unsigned_abs()))
    }

    async fn lease(&self, key: &str, id: &str, limit: u64, now: i64, expires: i64) -> Result<bool> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut leaser = self.leaser.lock().await;
        if leaser.as_ref().is_none_or(|c| c.is_closed()) {
            *leaser = Some(Self::open_client(&self.url).await?);
        }
        let Some(client) = leaser.as_mut() else {
            return Err(crate::StoreError::Task("no connection for leases".into()));
        };
        let tx = client.transaction().await?;
        // One key at a time across every instance; each statement after the lock sees
        // what the holder before committed (READ COMMITTED).
        tx.query(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&key],
        )
        .await?;
        tx.execute(
            "DELETE FROM mcpgate_leases WHERE key = $1 AND expires <= $2",
            &[&key, &now],
        )
        .await?;
        let held: i64 = tx
            .query_one(
                "SELECT count(*) FROM mcpgate_leases WHERE key = $1",
                &[&key],
            )
            .await?
            .get(0);
        let taken = held < limit
            && tx
                .execute(
                    "INSERT INTO mcpgate_leases (key, id, expires) VALUES ($1, $2, $3)
                     ON CONFLICT (key, id) DO UPDATE SET expires = EXCLUDED.expires",
                    &[&key, &id, &expires],
                )
                .await?
                == 1;
        tx.commit().await?;
        Ok(taken)
    }

    async fn release(&self, key: &str, id: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM mcpgate_leases WHERE key = $1 AND id = $2",
            &[&key, &id],
        )
        .await?;
        Ok(())
    }

    async fn release_all(&self, prefix: &str) -> Result<()> {
        let c = self.client().await?;
        let high = crate::prefix_end(prefix);
        c.execute(
            "DELETE FROM mcpgate_leases WHERE id >= $1 AND id < $2",
            &[&prefix, &high],
        )
        .await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(c.execute("DELETE FROM mcpgate_kv WHERE key = $1", &[&key])
            .await?
            == 1)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let c = self.client().await?;
        c.execute("DELETE FROM mcpgate_kv WHERE key = ANY($1)", &[&keys])
            .await?;
        Ok(())
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "DELETE FROM mcpgate_kv WHERE key = $1 RETURNING value",
            &[&key],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let c = self.client().await?;
        let end = crate::prefix_end(prefix);
        let rows = c
            .query(
                "SELECT key, value FROM mcpgate_kv WHERE key >= $1 AND key < $2 ORDER BY key COLLATE \"C\"",
                &[&prefix, &end],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn append_encoded(&self, rows: Arc<Vec<Encoded>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock().await;
        if writer.as_ref().is_none_or(|c| c.is_closed()) {
            *writer = Some(Self::open_client(&self.url).await?);
        }
        let Some(client) = writer.as_mut() else {
            return Err(crate::StoreError::Task("no connection for writing".into()));
        };
        let tx = client.transaction().await?;
        // Writers take turns (a transaction-scoped advisory lock, taken before a position
        // is drawn): positions commit in order, so a reader following the log by position
        // never sees a higher one before a lower one still to commit, and each event links
        // to the one committed before it — one chain, whatever the number of instances.
        tx.query("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .await?;
        let head = tx
            .query_opt(
                "SELECT hash FROM mcpgate_audit ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .await?;
        let mut prev = head.and_then(|r| chain::hash_of(r.get::<_, Option<&[u8]>>(0)));
        // Shipped twice (or twice in one batch): stored once.
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let mut stored: std::collections::HashSet<String> = tx
            .query("SELECT id FROM mcpgate_audit WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let fresh: Vec<&Encoded> = rows
            .iter()
            .filter(|r| stored.insert(r.id.clone()))
            .collect();
        if fresh.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        let mut seqs: Vec<i64> = tx
            .query(
                "SELECT nextval(pg_get_serial_sequence('mcpgate_audit', 'seq'))
                   FROM generate_series(1, $1::int4)",
                &[&(fresh.len() as i32)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        seqs.sort_unstable();
        let mut prevs: Vec<Option<Vec<u8>>> = Vec::with_capacity(fresh.len());
        let mut hashes: Vec<Vec<u8>> = Vec::with_capacity(fresh.len());
        for (r, seq) in fresh.iter().zip(&seqs) {
            let hash = chain::link(*seq, prev.as_ref(), &r.data);
            prevs.push(prev.map(|p| p.to_vec()));
            hashes.push(hash.to_vec());
            prev = Some(hash);
        }
        // One statement of array parameters, whatever the batch's size (a VALUES list
        // meets the protocol's limit of 65,535 parameters at 5,958 events).
        macro_rules! column {
            ($f:ident) => {
                fresh.iter().map(|r| r.$f.as_deref()).collect::<Vec<_>>()
            };
        }
        let id: Vec<&str> = fresh.iter().map(|r| r.id.as_str()).collect();
        let time_us: Vec<i64> = fresh.iter().map(|r| r.time_us).collect();
        let kind: Vec<&str> = fresh.iter().map(|r| r.kind.as_str()).collect();
        let user: Vec<&str> = fresh.iter().map(|r| r.user.as_str()).collect();
        let (app, tool, decision) = (column!(app), column!(tool), column!(decision));
        let (session, method) = (column!(session), column!(method));
        let roles: Vec<&str> = fresh.iter().map(|r| r.roles.as_str()).collect();
        let data: Vec<&str> = fresh.iter().map(|r| r.data.as_str()).collect();
        tx.execute(
            "INSERT INTO mcpgate_audit
               (seq, id, time_us, type, user_name, app, tool, decision, session, method, roles,
                data, prev, hash)
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                  $11::text[], $12::text[], $13::bytea[], $14::bytea[])",
            &[
                &seqs, &id, &time_us, &kind, &user, &app, &tool, &decision, &session, &method,
                &roles, &data, &prevs, &hashes,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn search_events(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let mut page = self.page_events(q, Page::Newest).await?;
        page.reverse();
        Ok(page.into_iter().map(|(_, e)| e).collect())
    }

    async fn page_events(&self, q: &AuditQuery, page: Page) -> Result<Vec<(i64, AuditEvent)>> {
        let sql = query::select(Dialect::Postgres, q, page);
        let mut rows: Vec<(i64, String)> = self
            .query(&sql)
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if sql.reverse {
            rows.reverse();
        }
        Ok(decode_rows(rows))
    }

    async fn tally_events(&self, q: &AuditQuery, width_us: i64) -> Result<Vec<crate::Tally>> {
        let sql = query::tally(Dialect::Postgres, q, width_us, query::Text::Scan);
        Ok(self
            .query(&sql)
            .await?
            .into_iter()
            .map(|r| crate::Tally {
                bucket_us: r.get(0),
                tool: r.get(1),
                app: r.get(2),
                user: r.get(3),
                denied: r.get(4),
                calls: r.get::<_, i64>(5).max(0) as u64,
            })
            .collect())
    }

    async fn durations(&self, q: &AuditQuery, limit: u32) -> Result<Vec<f64>> {
        let sql = query::durations(Dialect::Postgres, q, limit, query::Text::Scan);
        Ok(self
            .query(&sql)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn chain_rows(&self, after: i64, limit: u32) -> Result<Vec<chain::ChainRow>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT seq, prev, hash, data FROM mcpgate_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &i64::from(limit)],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| chain::ChainRow {
                seq: r.get(0),
                prev: r.get(1),
                hash: r.get(2),
                data: r.get(3),
            })
            .collect())
    }

    async fn chain_head(&self) -> Result<Option<(i64, Option<chain::Hash>)>> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT seq, hash FROM mcpgate_audit ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|r| (r.get(0), chain::hash_of(r.get::<_, Option<&[u8]>>(1)))))
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, AuditEvent)>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT seq, data FROM mcpgate_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &i64::from(limit)],
            )
            .await?;
        Ok(decode_rows(
            rows.into_iter().map(|r| (r.get(0), r.get(1))).collect(),
        ))
    }
}

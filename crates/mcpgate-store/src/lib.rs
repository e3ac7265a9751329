//! Storage behind one trait, two backends, one compliance suite.
//!
//! - [`Store`]: a small key-value interface with atomic create, compare-and-swap and take
//!   (single-use tokens), plus an append-only, searchable audit log.
//! - [`sqlite`]: the embedded default (one file in the data dir, WAL, owner-only).
//! - [`postgres`]: shared state for several auth/proxy instances.
//! - [`AnyStore`]: the backend chosen by the daemon config.
//! - [`compliance`]: the suite every backend must pass.

pub mod chain;
pub mod compliance;
pub mod postgres;
mod query;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;

use mcpgate_types::{AuditEvent, AuditQuery, Page};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite database failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The PostgreSQL server failed or is unreachable.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A stored value or event that does not decode.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database file or directory could not be prepared.
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A blocking task failed.
    #[error("storage task failed: {0}")]
    Task(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The storage interface. Keys are ASCII paths like `roles/dev`; values are opaque bytes.
pub trait Store: Send + Sync + 'static {
    /// The value under `key`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// Sets `key` to `value`, whether or not it existed.
    fn put(&self, key: &str, value: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Sets `key` only if absent; false if it existed.
    fn create(&self, key: &str, value: &[u8]) -> impl Future<Output = Result<bool>> + Send;
    /// Replaces `expected` by `new` atomically; false if the value was not `expected`.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: &[u8],
        new: &[u8],
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes `key`; false if it did not exist.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes every key in `keys` in one transaction (missing ones are skipped).
    fn delete_many(&self, keys: &[String]) -> impl Future<Output = Result<()>> + Send;
    /// Deletes `key` and returns its value, atomically: of two concurrent takes, one wins.
    fn take(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// All entries whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>>> + Send;
    /// Counts one hit on `key` in time window `window` if fewer than `limit` were counted
    /// there: the new count, or `None` when the limit is reached (nothing counted).
    /// Atomic across every process sharing the store; older windows of `key` are dropped.
    fn hit(
        &self,
        key: &str,
        window: i64,
        limit: u64,
    ) -> impl Future<Output = Result<Option<u64>>> + Send;
    /// Takes lease `id` on `key`, expiring at `expires` (Unix seconds), if fewer than
    /// `limit` leases on `key` are unexpired at `now`; false if not. Atomic across every
    /// process sharing the store; expired leases of `key` are dropped.
    fn lease(
        &self,
        key: &str,
        id: &str,
        limit: u64,
        now: i64,
        expires: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Gives lease `id` on `key` back (nothing if it is gone).
    fn release(&self, key: &str, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Gives back every lease, on any key, whose id starts with `prefix`.
    fn release_all(&self, prefix: &str) -> impl Future<Output = Result<()>> + Send;
    /// Appends audit events durably. An event whose id is already stored is skipped, so
    /// shipping the same batch twice keeps one copy.
    fn append_events(&self, events: &[AuditEvent]) -> impl Future<Output = Result<()>> + Send {
        let encoded = Encoded::all(events);
        async move { self.append_encoded(encoded?).await }
    }
    /// The same, for events encoded already ([`Encoded`]); the batch is shared with the
    /// store's blocking thread, not copied.
    fn append_encoded(&self, events: Arc<Vec<Encoded>>) -> impl Future<Output = Result<()>> + Send;
    /// Events matching `query`, oldest first (the newest `limit` of them).
    fn search_events(
        &self,
        query: &AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditEvent>>> + Send;
    /// One page of the events matching `query` (at most `query.limit`), newest first, each
    /// with its position: keyset paging, as fast at the millionth event as at the first.
    /// [`Page::After`] pages come in the order the events were stored instead.
    fn page_events(
        &self,
        query: &AuditQuery,
        page: Page,
    ) -> impl Future<Output = Result<Vec<(i64, AuditEvent)>>> + Send;
    /// Up to `limit` events in the order they were written, each with its position, from
    /// after position `after` (0: from the start): for reading the log forward. Positions
    /// grow; one written in a transaction still open may appear after a higher one.
    fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(i64, AuditEvent)>>> + Send;
    /// What the events matching `query` add up to, counted by bucket of `width_us` (its
    /// start), tool, app, user and decision: the whole set, however large.
    fn tally_events(
        &self,
        query: &AuditQuery,
        width_us: i64,
    ) -> impl Future<Output = Result<Vec<Tally>>> + Send;
    /// The durations (ms) of the newest `limit` events matching `query` that have one.
    fn durations(
        &self,
        query: &AuditQuery,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<f64>>> + Send;
    /// Up to `limit` stored events with their chain links, in position order, from after
    /// position `after`: what [`chain::Verifier`] walks.
    fn chain_rows(
        &self,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<chain::ChainRow>>> + Send;
    /// The last stored event's position and hash (`None` for the hash: it predates the
    /// chain), if any event is stored.
    fn chain_head(&self)
    -> impl Future<Output = Result<Option<(i64, Option<chain::Hash>)>>> + Send;
}

/// Events of one bucket of time, tool, app, user and decision, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The bucket's start (µs since the epoch).
    pub bucket_us: i64,
    pub tool: Option<String>,
    pub app: Option<String>,
    pub user: String,
    pub denied: bool,
    pub calls: u64,
}

/// The exclusive upper bound of keys starting with `prefix` (keys are ASCII).
pub(crate) fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).unwrap_or_else(|_| "\u{7f}".into());
        }
    }
    "\u{7f}".into()
}

/// An event ready to be stored: its indexed columns and the JSON it is stored as, made
/// once. The audit journal makes it when it writes an answered request's final line (that
/// line is this JSON), so the batch writer stores it without serializing it again: a batch
/// serialized on the writer's path took the calls' core for milliseconds.
#[derive(Debug, Clone)]
pub struct Encoded {
    id: String,
    time_us: i64,
    kind: String,
    user: String,
    app: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    session: Option<String>,
    method: Option<String>,
    /// The identity's roles as `,a,b,` (see [`query::roles_column`]).
    roles: String,
    data: String,
}

impl Encoded {
    /// The event's columns and stored JSON.
    pub fn new(e: &AuditEvent) -> Result<Self> {
        let own = |k: &str| e.field(k).map(str::to_string);
        Ok(Encoded {
            id: e.id.clone(),
            time_us: mcpgate_types::clock::unix_micros(e.time),
            kind: e.kind.clone(),
            user: e.user.clone(),
            app: own("app"),
            tool: own("tool"),
            decision: own("decision"),
            session: own("session_id"),
            method: own("method"),
            roles: query::roles_column(&e.roles),
            data: stored_json(e)?,
        })
    }

    /// Each of `events`, as a batch to hand to [`Store::append_encoded`].
    pub fn all(events: &[AuditEvent]) -> Result<Arc<Vec<Self>>> {
        Ok(Arc::new(
            events.iter().map(Self::new).collect::<Result<_>>()?,
        ))
    }

    /// The event's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When it happened, in microseconds since the Unix epoch.
    pub fn time_us(&self) -> i64 {
        self.time_us
    }

    /// The JSON it is stored as: the event, with a field named like one of the event's own
    /// kept under `field.NAME` (it reads back as the event the log holds).
    pub fn json(&self) -> &str {
        &self.data
    }
}

/// The JSON an event is stored as; a field named like one of the event's own is kept under
/// `field.NAME` instead.
fn stored_json(e: &AuditEvent) -> Result<String> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    if !AuditEvent::OWN_FIELDS
        .iter()
        .any(|k| e.fields.contains_key(*k))
    {
        return serde_json::to_string(e).map_err(corrupt);
    }
    let mut e = e.clone();
    for k in AuditEvent::OWN_FIELDS {
        if let Some(v) = e.fields.remove(k) {
            e.fields.insert(format!("field.{k}"), v);
        }
    }
    serde_json::to_string(&e).map_err(corrupt)
}

pub(crate) const DEFAULT_LIMIT: u32 = 1000;

/// The backend chosen at start-up.
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e.await,
            AnyStore::Postgres($s) => $e.await,
        }
    };
}

impl Store for AnyStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        delegate!(self, s => s.get(key))
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        delegate!(self, s => s.put(key, value))
    }
    async fn create(&self, key: &str, value: &[u8]) -> Result<bool> {
        delegate!(self, s => s.create(key, value))
    }
    async fn compare_and_swap(&self, key: &str, expected: &[u8], new: &[u8]) -> Result<bool> {
        delegate!(self, s => s.compare_and_swap(key, expected, new))
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        delegate!(self, s => s.delete(key))
    }
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        delegate!(self, s => s.take(key))
    }
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        delegate!(self, s => s.delete_many(keys))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        delegate!(self, s => s.list(prefix))
    }
    async fn hit(&self, key: &str, window: i64, limit: u64) -> Result<Option<u64>> {
        delegate!(self, s => s.hit(key, window, limit))
    }
    async fn lease(&self, key: &str, id: &str, limit: u64, now: i64, expires: i64) -> Result<bool> {
        delegate!(self, s => s.lease(key, id, limit, now, expires))
    }
    async fn release(&self, key: &str, id: &str) -> Result<()> {
        delegate!(self, s => s.release(key, id))
    }
    async fn release_all(&self, prefix: &str) -> Result<()> {
        delegate!(self, s => s.release_all(prefix))
    }
    async fn append_encoded(&self, events: Arc<Vec<Encoded>>) -> Result<()> {
        delegate!(self, s => s.append_encoded(events))
    }
    async fn search_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        delegate!(self, s => s.search_events(query))
    }
    async fn page_events(&self, query: &AuditQuery, page: Page) -> Result<Vec<(i64, AuditEvent)>> {
        delegate!(self, s => s.page_events(query, page))
    }
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, AuditEvent)>> {
        delegate!(self, s => s.events_after(after, limit))
    }
    async fn chain_rows(&self, after: i64, limit: u32) -> Result<Vec<chain::ChainRow>> {
        delegate!(self, s => s.chain_rows(after, limit))
    }
    async fn tally_events(&self, query: &AuditQuery, width_us: i64) -> Result<Vec<Tally>> {
        delegate!(self, s => s.tally_events(query, width_us))
    }
    async fn durations(&self, query: &AuditQuery, limit: u32) -> Result<Vec<f64>> {
        delegate!(self, s => s.durations(query, limit))
    }
    async fn chain_head(&self) -> Result<Option<(i64, Option<chain::Hash>)>> {
        delegate!(self, s => s.chain_head())
    }
}

/// Stored rows `(position, JSON)` as events; a row that does not decode is skipped (and
/// said), not a reason to stop reading the log.
pub(crate) fn decode_rows(rows: Vec<(i64, String)>) -> Vec<(i64, AuditEvent)> {
    rows.into_iter()
        .filter_map(|(pos, d)| match serde_json::from_str(&d) {
            Ok(e) => Some((pos, e)),
            Err(e) => {
                tracing::warn!(error = %e, "an audit row does not decode: skipped");
                None
            }
        })
        .collect()
}

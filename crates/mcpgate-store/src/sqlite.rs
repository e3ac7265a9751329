//! The embedded SQLite backend: one file, WAL journal. With [`Sync::Normal`] (the default) a
//! committed write survives the process being killed; with [`Sync::Full`] it also survives
//! the machine losing power, at the cost of an fsync (≈ 250 µs here) per commit.

use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpgate_types::{AuditEvent, AuditQuery, Page};

use crate::chain;
use crate::query::{self, Arg, Dialect};
use crate::{Encoded, Result, Store, decode_rows, prefix_end};

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

/// What SQLite's query planner is told about the audit log: rows per value of each index's
/// leading column, as in a log of a million calls (200 users, a few apps and kinds, 5 %
/// denied, 40 calls a session). Written, not learnt by `ANALYZE`, which would teach
/// nothing on a fresh log and cost a scan on a large one; without it the planner reads a
/// user's denials through the index of every denial (16 ms over a million events instead
/// of 1).
const PLANNER_STATS: &str = "
BEGIN;
ANALYZE sqlite_schema;
DELETE FROM sqlite_stat1 WHERE tbl = 'audit';
INSERT INTO sqlite_stat1 VALUES
  ('audit', 'sqlite_autoindex_audit_1', '1000000 1'),
  ('audit', 'audit_time', '1000000 1'),
  ('audit', 'audit_user', '1000000 5000 1'),
  ('audit', 'audit_type', '1000000 50000 1'),
  ('audit', 'audit_app', '1000000 100000 1'),
  ('audit', 'audit_session', '1000000 40 1'),
  ('audit', 'audit_decision', '1000000 500000 1');
COMMIT;
ANALYZE sqlite_schema;";

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

/// Free text over the events' JSON: a trigram index (FTS5, contentless: the text stays in
/// `audit` only) in a file of its own beside the store, `PATH-text2`, written by a thread
/// with its own connection. Each event is indexed as the set of its distinct trigrams
/// (folded as `LIKE` folds them), each a word of FTS5's `ascii` tokenizer; a trigram found
/// in nearly every event is "common" (`audit_text_common`), and three in four of random
/// hex's are left out by design ([`query::indexed`]): neither is indexed, nor ever looked
/// up. Storing an event never waits for the index and the index never
/// holds the store: events are stored at the rate SQLite inserts rows and indexed on
/// another core. `audit_text_state` says which positions it holds, `indexed_from` to
/// `indexed_to`; free text scans the events on either side, so an answer never depends on
/// how far the index has come. The file is derived data: one that is missing, unreadable
/// or from another log is made anew and filled from the newest events back.
const TEXT_SCHEMA: &str = "
CREATE VIRTUAL TABLE IF NOT EXISTS audit_text USING fts5(grams, content='', tokenize='ascii',
  detail='none', columnsize=0);
CREATE TABLE IF NOT EXISTS audit_text_state (indexed_from INTEGER NOT NULL,
  indexed_to INTEGER NOT NULL, anchor TEXT);
CREATE TABLE IF NOT EXISTS audit_text_common (gram INTEGER PRIMARY KEY);
PRAGMA user_version = 3;";

/// The index's format (its file's `user_version`); a file of another is made anew. 0: the
/// FTS5 `trigram` tokenizer over each event's whole JSON, in `PATH-text` (a name this
/// format does not use, so that an older build never reads it as its own). 2: every
/// trigram not common. 3: hex ones sampled ([`query::indexed`]).
const TEXT_FORMAT: i64 = 3;

/// A trigram becomes common when it is in more than nine in ten of this many events
/// indexed one after another: so common that it narrows nothing, and too many for a burst
/// of one client's calls to pass for the whole log. In a typical log that is three
/// quarters of an event's distinct trigrams and most of what indexing one costs (the JSON
/// keys, the constant values); a needle made of common trigrams alone is found by reading
/// the events.
const COMMON_WINDOW: u32 = if cfg!(test) { 1_000 } else { 50_000 };

/// New events are indexed once this many wait, or once the store has been quiet for
/// [`TEXT_IDLE`] (free text scans those meanwhile): one index update for many events.
const TEXT_INDEX_LAG: i64 = 2_048;
const TEXT_IDLE: Duration = Duration::from_secs(1);

/// Segments of the index merged at once (FTS5's `automerge`; its default is 4).
const TEXT_AUTOMERGE: i64 = 16;

/// How much lower the index thread's scheduling priority is than the process's.
const TEXT_NICE: i32 = 10;

/// Events indexed per transaction of the index's own file.
const TEXT_INDEX_STEP: i64 = 8_192;

/// Events of a log older than its index indexed per step, and the pause between steps
/// that leaves the machine to the calls.
const TEXT_FILL_STEP: i64 = 2_000;
const TEXT_FILL_PAUSE: Duration = Duration::from_millis(20);

/// Free text is looked up in the index when it names at most this many events; a needle
/// found in more is found as fast by reading the newest events.
const TEXT_INDEX_MAX: i64 = 5_000;

/// Trigrams of a needle whose counts are asked for, and how many of the rarest are looked
/// up together (first three: the fewest lists to walk; then six: fewer events that hold
/// them all apart, not as the needle).
const TEXT_PROBES: usize = 16;
const TEXT_TERMS: [usize; 2] = [3, 6];

/// The file named as `path` with `suffix` appended.
fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    p.into()
}

/// The file of the free-text index of the store at `path`.
fn text_path(path: &Path) -> std::path::PathBuf {
    beside(path, "-text2")
}

/// Removes the SQLite file `file` and its log.
fn remove_db_files(file: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(beside(file, suffix));
    }
}

/// Whether `e` says the file is not a database, or a damaged one (rather than busy, say).
fn unreadable(e: &crate::StoreError) -> bool {
    matches!(
        e,
        crate::StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Opens the free-text index of the store at `path` (attached as `m`), making it anew when
/// it cannot be read or was built from another log.
fn open_text_index(path: &Path) -> Result<Connection> {
    let legacy = beside(path, "-text");
    if legacy.exists() {
        tracing::info!("the audit text index of an earlier format is removed: made anew");
        remove_db_files(&legacy);
    }
    let file = text_path(path);
    match open_text_file(&file, path) {
        Ok(Ok(c)) => return Ok(c),
        Ok(Err(why)) => tracing::info!("the audit text index is {why}: made anew"),
        Err(e) if unreadable(&e) => {
            tracing::warn!(error = %e, "the audit text index cannot be read: made anew")
        }
        // Busy past the timeout, say: the file is left to whoever holds it.
        Err(e) => return Err(e),
    }
    remove_db_files(&file);
    open_text_file(&file, path)?
        .map_err(|why| crate::StoreError::Corrupt(format!("a new audit text index is {why}")))
}

/// The index's connection, or why it cannot be used: it is of another format, or its
/// newest position holds another event than the one it indexed there (the store was
/// replaced, say by an older copy).
fn open_text_file(
    file: &Path,
    store: &Path,
) -> Result<std::result::Result<Connection, &'static str>> {
    let mut c = Connection::open(file)?;
    restrict(file)?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
    )?;
    {
        // Under the file's write lock (waiting for another connection's step): a file of
        // another format is never stamped as this one's.
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let format: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        if tables == 0 {
            tx.execute_batch(TEXT_SCHEMA)?;
        } else if format != TEXT_FORMAT {
            return Ok(Err("of another format"));
        }
        tx.commit()?;
    }
    // Segments merged 16 at a time rather than FTS5's 4: each indexed trigram is rewritten
    // at fewer levels as the index grows (measured: 40% less of the index thread's CPU per
    // event), and a lookup reads a few more segments (still milliseconds at ten million).
    c.execute(
        "INSERT INTO audit_text(audit_text, rank) VALUES ('automerge', ?1)",
        [TEXT_AUTOMERGE],
    )?;
    c.execute("ATTACH DATABASE ?1 AS m", [store.to_string_lossy()])?;
    let state: Option<(i64, Option<String>)> = c
        .query_row("SELECT indexed_to, anchor FROM audit_text_state", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match state {
        None => {
            // Everything older than the newest event is filled in the background.
            c.execute(
                "INSERT INTO audit_text_state
                 SELECT COALESCE(MAX(rowid), 0) + 1, COALESCE(MAX(rowid), 0),
                   (SELECT id FROM m.audit ORDER BY rowid DESC LIMIT 1) FROM m.audit",
                [],
            )?;
        }
        Some((to, anchor)) => {
            if id_at(&c, to)? != anchor {
                return Ok(Err("from another log"));
            }
        }
    }
    Ok(Ok(c))
}

/// The positions the index holds, `indexed_from` to `indexed_to`.
fn index_state(c: &Connection) -> rusqlite::Result<(i64, i64)> {
    c.query_row(
        "SELECT indexed_from, indexed_to FROM audit_text_state",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// The id of the store's event at `pos`, if there is one.
fn id_at(c: &Connection, pos: i64) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT id FROM m.audit WHERE rowid = ?1", [pos], |r| {
        r.get(0)
    })
    .optional()
}

/// What the index thread does next.
enum Next {
    /// More new events wait: at once.
    Now,
    /// Older events wait: after [`TEXT_FILL_PAUSE`].
    Fill,
    /// All is indexed, or too few new events wait: when the store says or is quiet.
    Wait,
    /// The CPUs are contended and what waits is few enough to scan: after
    /// [`PRESSURE_WINDOW`], when the pressure is looked at again.
    Defer,
}

/// One step of the index thread: none while fewer events than `leave` are not indexed (the
/// CPUs are contended: [`TEXT_DEFER_MAX`], else 0), else new events first (when enough
/// wait, or the store has been quiet), else a step of older ones.
fn index_step(
    c: &mut Connection,
    tally: &mut Tally,
    woken: bool,
    leave: i64,
) -> rusqlite::Result<Next> {
    let head: i64 = c.query_row("SELECT COALESCE(MAX(rowid), 0) FROM m.audit", [], |r| {
        r.get(0)
    })?;
    let (from, to) = index_state(c)?;
    let waiting = head - to;
    let behind = waiting.max(0) + from - 1;
    if behind > 0 && behind < leave {
        return Ok(Next::Defer);
    }
    if waiting > 0 && (waiting >= TEXT_INDEX_LAG || !woken) {
        let upto = (to + TEXT_INDEX_STEP).min(head);
        let anchor = id_at(c, upto)?;
        let Some(tx) = index_range(c, (from, to), to + 1, upto, Some(tally))? else {
            return Ok(Next::Now);
        };
        tx.execute(
            "UPDATE audit_text_state SET indexed_to = ?1, anchor = ?2",
            params![upto, anchor],
        )?;
        tx.commit()?;
        return Ok(if upto < head {
            Next::Now
        } else if from > 1 {
            Next::Fill
        } else {
            Next::Wait
        });
    }
    if from <= 1 {
        return Ok(Next::Wait);
    }
    let low = (from - TEXT_FILL_STEP).max(1);
    let Some(tx) = index_range(c, (from, to), low, from - 1, None)? else {
        return Ok(Next::Now);
    };
    tx.execute("UPDATE audit_text_state SET indexed_from = ?1", [low])?;
    tx.commit()?;
    Ok(if low > 1 { Next::Fill } else { Next::Wait })
}

/// The store's events at positions `lo` to `hi` added to the index, in its write
/// transaction (for the caller to record and commit) if the index still holds the
/// positions `seen`: another process with the same store open may have indexed them
/// meanwhile, and then nothing is indexed twice, the step is taken again. New events are
/// counted in `tally`, which may find trigrams common.
fn index_range<'c>(
    c: &'c mut Connection,
    seen: (i64, i64),
    lo: i64,
    hi: i64,
    mut tally: Option<&mut Tally>,
) -> rusqlite::Result<Option<rusqlite::Transaction<'c>>> {
    let rows = read_events(c, lo, hi)?;
    // A write to the index's file first takes its lock and no other: `BEGIN IMMEDIATE`
    // would lock every attached file, the store's too, and hold its writer for the step.
    let tx = c.transaction()?;
    tx.execute(
        "UPDATE audit_text_state SET indexed_from = indexed_from",
        [],
    )?;
    if index_state(&tx)? != seen {
        return Ok(None);
    }
    let common = common_grams(&tx, "main")?;
    {
        let mut add = tx.prepare_cached("INSERT INTO audit_text(rowid, grams) VALUES (?1, ?2)")?;
        let (mut set, mut words) = (Vec::new(), String::new());
        for (n, (pos, data)) in rows.iter().enumerate() {
            // The index's own connection and file: nothing waits for them.
            yield_between(n, usize::MAX);
            set.clear();
            set.extend(query::grams(data).filter(|g| !left_out(&common, *g)));
            set.sort_unstable();
            set.dedup();
            if let Some(t) = tally.as_deref_mut()
                && sampled(*pos)
            {
                t.count(&set);
            }
            words.clear();
            for g in &set {
                query::push_word(*g, &mut words);
                words.push(' ');
            }
            add.execute(params![pos, words])?;
        }
    }
    if let Some(t) = tally {
        let mut add = tx.prepare_cached("INSERT OR IGNORE INTO audit_text_common VALUES (?1)")?;
        for g in t.common() {
            add.execute([g])?;
        }
    }
    Ok(Some(tx))
}

/// Rows a long write of the audit log handles between offering its core to whatever waits
/// for it. A batch of a few hundred events takes a millisecond or two, and the scheduler
/// lets a thread that has just woken run that long before a call's process, woken behind
/// it on the same core, gets its turn: that wait was most of the calls slower than 1 ms.
/// Offered every 16 rows (a tenth of a millisecond), a sequential stream of calls had
/// fewer such calls, at the same calls per second (ARCHITECTURE.md, Where the time goes).
const YIELD_EVERY: usize = 16;

/// Rows of an audit batch past which its transaction stops offering its core: a longer
/// batch means the writer is behind, and it holds the store's connection (which rate-limit
/// counts wait for) and its write lock; on busy cores each offer can cost it a slice.
const YIELD_UNTIL: usize = 512;

/// Offers the core to a thread waiting for it every [`YIELD_EVERY`] rows, up to row
/// `until` (nothing when none waits).
fn yield_between(n: usize, until: usize) {
    if n > 0 && n < until && n.is_multiple_of(YIELD_EVERY) {
        std::thread::yield_now();
    }
}

type Grams = HashSet<query::Gram, foldhash::fast::RandomState>;

/// Whether the index leaves trigram `g` out of every entry, and so never looks it up: it is
/// `common`, or one the index's format never keeps ([`query::indexed`]).
fn left_out(common: &Grams, g: query::Gram) -> bool {
    !query::indexed(g) || common.contains(&g)
}

/// The trigrams the index no longer keeps; `schema`: the index's file as the connection
/// names it.
fn common_grams(c: &Connection, schema: &str) -> rusqlite::Result<Grams> {
    let mut stmt = c.prepare_cached(&format!("SELECT gram FROM {schema}.audit_text_common"))?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// One event in this many is counted to find the common trigrams: the share of a trigram
/// among thousands is as well known from an eighth of them, at an eighth of the cost.
const TALLY_EVERY: i64 = 8;

/// Whether the event at `pos` is counted: one in [`TALLY_EVERY`], picked by a hash of the
/// position so that events that repeat in a pattern (a request, its answer) are all counted
/// alike.
fn sampled(pos: i64) -> bool {
    (pos as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - TALLY_EVERY.ilog2()) == 0
}

/// How many of the events counted since the last decision hold each trigram not yet
/// common.
#[derive(Default)]
struct Tally {
    events: u32,
    counts: HashMap<query::Gram, u32, foldhash::fast::RandomState>,
}

impl Tally {
    /// Counts an event's trigrams not yet common.
    fn count(&mut self, set: &[query::Gram]) {
        self.events += 1;
        for g in set {
            *self.counts.entry(*g).or_default() += 1;
        }
    }

    /// Once the events of a [`COMMON_WINDOW`] are counted, the trigrams in more than nine
    /// in ten of them (and counting starts over); until then none.
    fn common(&mut self) -> Vec<query::Gram> {
        if i64::from(self.events) < i64::from(COMMON_WINDOW) / TALLY_EVERY {
            return Vec::new();
        }
        let events = u64::from(std::mem::take(&mut self.events));
        std::mem::take(&mut self.counts)
            .into_iter()
            .filter(|(_, n)| u64::from(*n) * 10 > events * 9)
            .map(|(g, _)| g)
            .collect()
    }
}

/// The events at positions `from` to `to`, read in one short read of the store: a read
/// held while they are indexed would keep the store's write-ahead log from starting over,
/// and it would grow for as long as events keep coming.
fn read_events(c: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<(i64, String)>> {
    let mut stmt =
        c.prepare_cached("SELECT rowid, data FROM m.audit WHERE rowid >= ?1 AND rowid <= ?2")?;
    let rows = stmt.query_map([from, to], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Events the index leaves for later while the machine's CPUs are contended (new ones and
/// those of a log older than the index, together): free text scans them meanwhile (this
/// many took 30–38 ms on a 2-core machine, twice that with its cores busy), and the calls
/// contending for the CPUs get the time indexing them would take (an eighth of the machine
/// at 9,000 calls a second, 25 µs an event). Past this many the index takes its share
/// again, contended or not, so the scan stays bounded under any load.
const TEXT_DEFER_MAX: i64 = if cfg!(test) { 0 } else { 65_536 };

/// How long a look at the CPUs' pressure stands, and how long a deferred step waits.
const PRESSURE_WINDOW: Duration = Duration::from_millis(100);

/// The CPUs are contended when, over the last [`PRESSURE_WINDOW`] or more, some runnable
/// task waited for one at least this share of the time (Linux's pressure stall
/// information, `/proc/pressure/cpu`).
const CONTENDED_SHARE: f64 = 0.5;

/// The CPUs' pressure, looked at no more than once per [`PRESSURE_WINDOW`]: whether they
/// were contended since the last look. Never, where the kernel does not say.
#[derive(Default)]
struct Pressure {
    last: Option<(std::time::Instant, u64)>,
    contended: bool,
}

impl Pressure {
    fn contended(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|(at, _)| now - at < PRESSURE_WINDOW) {
            return self.contended;
        }
        let Some(total) = std::fs::read_to_string("/proc/pressure/cpu")
            .ok()
            .and_then(|text| some_waited_us(&text))
        else {
            self.contended = false;
            return false;
        };
        if let Some((at, before)) = self.last.replace((now, total)) {
            let waited = total.saturating_sub(before) as f64;
            self.contended = waited > (now - at).as_micros() as f64 * CONTENDED_SHARE;
        }
        self.contended
    }
}

/// From `/proc/pressure/cpu`, the microseconds some task has waited for a CPU.
fn some_waited_us(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Keeps the index until the store is dropped, woken by each batch the store commits.
fn run_text_index(mut c: Connection, wake: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    // Indexing can wait; the calls cannot: on Linux a thread's nice value is its own, so
    // this thread yields the cores to the sessions (and whatever else runs) when they want
    // them.
    let _ = rustix::process::nice(TEXT_NICE);
    let mut next = Next::Now;
    let mut tally = Tally::default();
    let mut pressure = Pressure::default();
    loop {
        let wait = match next {
            Next::Now => Duration::ZERO,
            Next::Fill => TEXT_FILL_PAUSE,
            Next::Wait => TEXT_IDLE,
            Next::Defer => PRESSURE_WINDOW,
        };
        let woken = match wake.recv_timeout(wait) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Never under the unit tests, which wait for the index on busy cores.
        let leave = if TEXT_DEFER_MAX > 0 && pressure.contended() {
            TEXT_DEFER_MAX
        } else {
            0
        };
        next = match index_step(&mut c, &mut tally, woken, leave) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "the audit text index is behind; free text scans the events it lacks");
                Next::Wait
            }
        };
    }
}

/// How to find `needle`: through the index when there is one and the needle is rare in it.
/// The index is asked for each trigram's first [`TEXT_INDEX_MAX`] events: their number, and
/// for a trigram in more, how far into the log they reach, which estimates how many events
/// hold it (a trigram in every event reaches 5,000 events in, one in 1 % of them half a
/// million). The rarest few are then looked up together, and the rarest several when those
/// are held apart by too many events: the work follows the rare trigrams, not the common
/// ones (`"`, `.rs`, `repo`) that every event holds; the index's common trigrams are not
/// asked for at all, and a needle of them alone is scanned for. An index that cannot be
/// read costs a scan, never an answer.
fn text_plan(c: &Connection, indexed: bool, needle: Option<&str>) -> query::Text {
    let grams = match needle {
        Some(n) if indexed => query::trigrams(n),
        _ => Vec::new(),
    };
    if grams.is_empty() {
        return query::Text::Scan;
    }
    let plan = || -> rusqlite::Result<query::Text> {
        // One read of the index's file: the positions it holds and the trigrams it keeps
        // there are of the same moment.
        let read = c.unchecked_transaction()?;
        let (from, to): (i64, i64) = read.query_row(
            "SELECT indexed_from, indexed_to FROM text.audit_text_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let common = common_grams(&read, "text")?;
        let grams: Vec<query::Gram> = grams
            .into_iter()
            .filter(|g| !left_out(&common, *g))
            .collect();
        if grams.is_empty() {
            return Ok(query::Text::Scan);
        }
        let span = (to - from + 1).max(1) as f64;
        let mut probe = read.prepare_cached(
            "SELECT count(*), COALESCE(max(rowid), 0) FROM
               (SELECT rowid FROM text.audit_text WHERE audit_text MATCH ?1 LIMIT ?2)",
        )?;
        // Spread over a long needle.
        let step = grams.len().div_ceil(TEXT_PROBES);
        let mut counted: Vec<(f64, String)> = Vec::new();
        for g in grams.iter().step_by(step) {
            let term = query::term(*g);
            let (n, reach): (i64, i64) = probe
                .query_row(params![term, TEXT_INDEX_MAX + 1], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let estimate = if n <= TEXT_INDEX_MAX {
                n as f64
            } else {
                n as f64 * span / (reach - from + 1).max(1) as f64
            };
            counted.push((estimate, term));
        }
        counted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut hits = read.prepare_cached(
            "SELECT json_group_array(rowid), count(*) FROM
               (SELECT rowid FROM text.audit_text WHERE audit_text MATCH ?1 LIMIT ?2)",
        )?;
        for take in TEXT_TERMS {
            let terms: Vec<&str> = counted.iter().take(take).map(|(_, g)| g.as_str()).collect();
            let (found_at, found): (String, i64) = hits
                .query_row(params![terms.join(" AND "), TEXT_INDEX_MAX + 1], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            if found <= TEXT_INDEX_MAX {
                return Ok(query::Text::Indexed {
                    from,
                    to,
                    hits: found_at,
                });
            }
            if take >= counted.len() {
                break;
            }
        }
        Ok(query::Text::Scan)
    };
    plan().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the audit text index cannot be read; free text scans");
        query::Text::Scan
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

/// SQLite storage. Calls run on tokio's blocking pool, one at a time; the free-text index
/// is kept beside it by a thread of its own, and the write-ahead log copied into the
/// store's file by another.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Wakes the index thread after a batch of events is stored (`None`: no index); the
    /// thread ends when the last copy of the store is dropped.
    text: Option<std::sync::mpsc::SyncSender<()>>,
    /// Wakes the checkpoint thread after each call; it ends with the store likewise.
    checkpoint: std::sync::mpsc::SyncSender<()>,
}

/// The write-ahead log is copied into the store's file (a passive checkpoint: it never
/// holds up a write) at most this often, by a thread with its own connection: copying it
/// was a third of what the store's one connection spent storing events, and every other
/// call waited behind it.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// Pages of log after which the store's own connection checkpoints after a commit (SQLite's
/// default is 1,000). Writes that keep coming keep the thread's checkpoints from ever
/// copying the whole log, and the log starts over only once one has; the writer's own,
/// between its transactions, copies what the thread has not (little: the thread copies as
/// it goes) and lets it start over.
const CHECKPOINT_FALLBACK: i64 = 4_096;

/// Copies the log at `path` into the store when woken, until the store is dropped.
fn run_checkpoints(path: std::path::PathBuf, wake: std::sync::mpsc::Receiver<()>) {
    let c = match Connection::open(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the store's log is copied by its writer");
            return;
        }
    };
    let _ = c.busy_timeout(Duration::from_secs(5));
    while wake.recv().is_ok() {
        if let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint");
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, readable by its owner only.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Sync::Normal)
    }

    /// Opens with the given durability.
    pub fn open_with(path: &Path, sync: Sync) -> Result<Self> {
        Self::open_inner(path, sync, true)
    }

    /// Opens a store that is never searched by free text (the agent's spool): no index.
    pub fn open_unindexed(path: &Path) -> Result<Self> {
        Self::open_inner(path, Sync::Normal, false)
    }

    fn open_inner(path: &Path, sync: Sync, indexed: bool) -> Result<Self> {
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
        conn.execute_batch(PLANNER_STATS)?;
        // The index once lived in the store's own file (and held it while indexing): it is
        // dropped there and made anew in its own.
        if conn
            .prepare("SELECT 1 FROM sqlite_master WHERE name = 'audit_text_state'")?
            .exists([])?
        {
            conn.execute_batch(
                "BEGIN;
                 DROP TRIGGER IF EXISTS audit_text_insert;
                 DROP TABLE IF EXISTS audit_text;
                 DROP TABLE audit_text_state;
                 COMMIT;",
            )?;
        }
        let index = match indexed.then(|| open_text_index(path)) {
            Some(Ok(index)) => Some(index),
            Some(Err(e)) => {
                // Derived data: free text scans the events meanwhile.
                tracing::warn!(error = %e, "the audit text index cannot be opened; free text scans");
                None
            }
            None => None,
        };
        let text = if let Some(index) = index {
            conn.execute(
                "ATTACH DATABASE ?1 AS text",
                [text_path(path).to_string_lossy()],
            )?;
            let (wake, woken) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name("audit-text-index".into())
                .spawn(move || run_text_index(index, woken))?;
            Some(wake)
        } else {
            None
        };
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {CHECKPOINT_FALLBACK}; PRAGMA journal_size_limit = {};",
            // A log that grew in a burst is cut back to twice its usual most.
            CHECKPOINT_FALLBACK * 4096 * 2
        ))?;
        let (checkpoint, woken) = std::sync::mpsc::sync_channel(1);
        let file = path.to_path_buf();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run_checkpoints(file, woken))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            text,
            checkpoint,
        })
    }

    /// How many stored events the free-text index does not hold yet (free text scans
    /// them); 0 for a store without one.
    pub async fn text_index_behind(&self) -> Result<u64> {
        if self.text.is_none() {
            return Ok(0);
        }
        self.run(|c| {
            c.query_row(
                "SELECT (SELECT COALESCE(MAX(rowid), 0) FROM audit) - indexed_to + indexed_from - 1
                 FROM text.audit_text_state",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n.max(0) as u64)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard).map_err(crate::StoreError::from)
        })
        .await
        .map_err(|e| crate::StoreError::Task(e.to_string()))?;
        // A wake already pending is enough.
        let _ = self.checkpoint.try_send(());
        done
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

    async fn append_encoded(&self, rows: Arc<Vec<Encoded>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.run(move |c| {
            let tx = c.transaction()?;
            // The store's write lock first, and its alone: a transaction that has read
            // cannot wait for it (SQLite answers "busy" at once when another connection
            // writes the file), and `BEGIN IMMEDIATE` would take the text index's file too
            // and hold its thread for the whole batch. No row is at position 0.
            tx.execute("UPDATE audit SET id = id WHERE rowid = 0", [])?;
            {
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
                // Shipped twice: stored once (an id already stored inserts nothing, and
                // the chain goes on from the event before).
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO audit
                       (rowid, id, time_us, type, user_name, app, tool, decision, session,
                        method, roles, data, prev, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (id) DO NOTHING",
                )?;
                for (n, r) in rows.iter().enumerate() {
                    yield_between(n, YIELD_UNTIL);
                    let hash = chain::link(seq + 1, prev.as_ref(), &r.data);
                    let inserted = stmt.execute(params![
                        seq + 1,
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
                    if inserted == 1 {
                        seq += 1;
                        prev = Some(hash);
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        // The index follows on its own thread (a wake already pending is enough).
        if let Some(wake) = &self.text {
            let _ = wake.try_send(());
        }
        Ok(())
    }

    async fn search_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let mut page = self.page_events(query, Page::Newest).await?;
        page.reverse();
        Ok(page.into_iter().map(|(_, e)| e).collect())
    }

    async fn page_events(&self, query: &AuditQuery, page: Page) -> Result<Vec<(i64, AuditEvent)>> {
        let query = query.clone();
        let indexed = self.text.is_some();
        let rows: Vec<(i64, String)> = self
            .run(move |c| {
                let plan = text_plan(c, indexed, query.text.as_deref().filter(|t| !t.is_empty()));
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
        let indexed = self.text.is_some();
        self.run(move |c| {
            let plan = text_plan(c, indexed, query.text.as_deref().filter(|t| !t.is_empty()));
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
        let indexed = self.text.is_some();
        self.run(move |c| {
            let plan = text_plan(c, indexed, query.text.as_deref().filter(|t| !t.is_empty()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgate_types::{AuditQuery, Page};

    fn event(i: u32) -> AuditEvent {
        let mut fields = serde_json::Map::new();
        fields.insert("note".into(), format!("needle-{i:05} always-here").into());
        AuditEvent {
            id: format!("ev{i:05}"),
            time: std::time::SystemTime::UNIX_EPOCH
                + Duration::from_secs(1_800_000_000 + u64::from(i)),
            kind: "mcp.session.request".into(),
            code: "MG3003I".into(),
            cluster: "test".into(),
            user: "ann".into(),
            user_kind: None,
            roles: Vec::new(),
            success: true,
            fields,
        }
    }

    /// The ids of the events free text `text` finds, newest first.
    async fn found(store: &SqliteStore, text: &str) -> Vec<String> {
        let q = AuditQuery {
            text: Some(text.into()),
            limit: Some(5_000),
            ..AuditQuery::default()
        };
        let page = store.page_events(&q, Page::Newest).await.unwrap();
        page.into_iter().map(|(_, e)| e.id).collect()
    }

    /// Waits until the store's text index holds every event.
    async fn wait_indexed(store: &SqliteStore) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while store.text_index_behind().await.unwrap() > 0 {
            assert!(std::time::Instant::now() < deadline, "never indexed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The positions the index finds for `needle`, or `None` when it is scanned for.
    fn plan(c: &Connection, needle: &str) -> Option<String> {
        match text_plan(c, true, Some(needle)) {
            query::Text::Scan => None,
            query::Text::Indexed { hits, .. } => Some(hits),
        }
    }

    /// A busy store's write-ahead log is copied into its file as events keep coming, by a
    /// thread of its own (the store's connection would copy it only past 16 MiB).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_copied_into_the_store_while_events_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let wal = dir.path().join("spool.db-wal");
        // Without the thread the events would all be in the log (about 7 MiB of it).
        let store = SqliteStore::open_unindexed(&path).unwrap();
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let events: Vec<AuditEvent> = (0..10_000).map(event).collect();
        for batch in events.chunks(500) {
            store.append_events(batch).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while size(&path) < 4 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log is never copied: {} bytes in the store, {} in its log",
                size(&path),
                size(&wal)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Another connection writing the store's file (a second process, a checkpoint that
    /// holds writers) makes an append wait, not fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_waits_for_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open_unindexed(&path).unwrap();
        store.append_events(&[event(0)]).await.unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let append = {
            let store = store.clone();
            tokio::spawn(async move { store.append_events(&[event(1)]).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.execute_batch("COMMIT").unwrap();
        append
            .await
            .unwrap()
            .expect("the append waited for the other writer");
        let q = AuditQuery::default();
        assert_eq!(store.search_events(&q).await.unwrap().len(), 2);
    }

    /// The time some task waited for a CPU, as Linux's pressure file says it.
    #[test]
    fn cpu_pressure_is_read_from_the_kernels_file() {
        let text = "some avg10=1.23 avg60=0.40 avg300=4.91 total=217451193\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_waited_us(text), Some(217_451_193));
        assert_eq!(some_waited_us("full avg10=0.00 total=5\n"), None);
        assert_eq!(some_waited_us("some avg10=0.00 avg60=0.00\n"), None);
        assert_eq!(some_waited_us("some total=many\n"), None);
        assert_eq!(some_waited_us(""), None);
    }

    /// Indexing gives way to contended CPUs only while what it leaves is few enough for
    /// free text to scan — new events and those of a log older than the index together —
    /// and takes them up once the CPUs are free or too many wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn indexing_gives_way_to_contended_cpus_while_few_events_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open_unindexed(&path).unwrap();
        let events: Vec<AuditEvent> = (0..110).map(event).collect();
        store.append_events(&events[..100]).await.unwrap();
        // An index made after 100 events, then 10 new ones.
        let mut c = open_text_index(&path).unwrap();
        store.append_events(&events[100..]).await.unwrap();
        let mut tally = Tally::default();
        let mut step = |woken, leave| index_step(&mut c, &mut tally, woken, leave).unwrap();
        assert!(matches!(step(true, 65_536), Next::Defer));
        assert!(
            matches!(step(false, 111), Next::Defer),
            "110 wait, fewer than 111"
        );
        assert_eq!(index_state(&c).unwrap(), (101, 100), "nothing indexed");
        let mut step = |woken, leave| index_step(&mut c, &mut tally, woken, leave).unwrap();
        // Too many to leave: the older events first (too few new ones), then the new ones.
        assert!(matches!(step(true, 110), Next::Wait));
        assert!(
            matches!(step(false, 65_536), Next::Defer),
            "10 new ones wait"
        );
        assert!(matches!(step(false, 0), Next::Wait), "free CPUs: indexed");
        assert_eq!(index_state(&c).unwrap(), (1, 110));
        assert!(matches!(
            index_step(&mut c, &mut tally, false, 65_536).unwrap(),
            Next::Wait
        ));
    }

    /// Random ids are found by free text as before though three in four of their trigrams
    /// with a letter are not indexed: a whole id through the trigrams that are, a piece of
    /// one made of left-out trigrams alone by reading the events. A left-out trigram is in
    /// no event's entry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_ids_are_found_though_most_of_their_hex_trigrams_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let sessions: Vec<String> = (0..50).map(|_| mcpgate_types::audit::random_id()).collect();
        let events: Vec<AuditEvent> = (0..2_000u32)
            .map(|i| {
                let mut e = event(i);
                e.id = mcpgate_types::audit::event_id(e.time);
                let session = sessions[i as usize % sessions.len()].clone();
                e.fields.insert("session_id".into(), session.into());
                e
            })
            .collect();
        store.append_events(&events).await.unwrap();
        wait_indexed(&store).await;
        // A piece of an id, four digits, whose two trigrams are both left out.
        let piece = sessions
            .iter()
            .chain(events.iter().map(|e| &e.id))
            .flat_map(|id| (0..id.len() - 3).map(move |at| &id[at..at + 4]))
            .find(|p| query::trigrams(p).iter().all(|g| !query::indexed(*g)))
            .expect("a quarter of 4-digit pieces are")
            .to_owned();
        let (plans, postings) = {
            let c = store.conn.lock().unwrap();
            let left_out = query::trigrams(&piece)[0];
            let postings: i64 = c
                .query_row(
                    "SELECT count(*) FROM text.audit_text WHERE audit_text MATCH ?1",
                    [query::term(left_out)],
                    |r| r.get(0),
                )
                .unwrap();
            ([plan(&c, &sessions[7]), plan(&c, &piece)], postings)
        };
        assert_eq!(postings, 0, "{piece}: its trigrams are in no entry");
        assert!(plans[0].is_some(), "a whole session id, through the index");
        assert_eq!(plans[1], None, "{piece}: read the events");
        let find = async |text: &str| {
            let mut ids = found(&store, text).await;
            ids.sort();
            ids
        };
        let holding = |needle: &str| {
            let needle = needle.to_lowercase();
            let mut ids: Vec<String> = events
                .iter()
                .filter(|e| serde_json::to_string(e).unwrap().contains(&needle))
                .map(|e| e.id.clone())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(find(&sessions[7]).await, holding(&sessions[7]));
        assert_eq!(find(&sessions[7]).await.len(), 40);
        assert_eq!(find(&sessions[7].to_uppercase()).await.len(), 40);
        let hits = find(&piece).await;
        assert!(!hits.is_empty());
        assert_eq!(hits, holding(&piece), "{piece}");
    }

    /// The trigrams of what every event holds stop being indexed once a window of events
    /// shows it; searches give the same answers, through the index where a needle has a
    /// rarer trigram, by reading the events where it has none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trigrams_in_nearly_every_event_stop_being_indexed_and_free_text_still_finds() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let events: Vec<AuditEvent> = (0..3 * COMMON_WINDOW).map(event).collect();
        for batch in events.chunks(500) {
            store.append_events(batch).await.unwrap();
        }
        wait_indexed(&store).await;
        let one = |t: &str| query::trigrams(t)[0];
        let (common, plans) = {
            let c = store.conn.lock().unwrap();
            (
                common_grams(&c, "text").unwrap(),
                [
                    plan(&c, "always-here"),
                    plan(&c, "NEEDLE-02999 always"),
                    plan(&c, "needle-1"),
                ],
            )
        };
        assert!(common.contains(&one("alw")) && common.contains(&one("-he")));
        assert!(
            common.contains(&one("mcp")),
            "the event's own constant fields too"
        );
        assert!(
            !common.contains(&one("999")),
            "a trigram of one event in ten is kept"
        );
        assert_eq!(plans[0], None, "common trigrams alone: read the events");
        assert_eq!(
            plans[1].as_deref(),
            Some("[3000]"),
            "the rare ones, looked up"
        );
        assert!(plans[2].is_some(), "{:?}", plans[2]);
        let find = async |text: &str| found(&store, text).await;
        assert_eq!(find("NEEDLE-02999 always").await, ["ev02999"]);
        assert_eq!(find("always-here").await.len(), events.len());
        assert!(find("always-herE!").await.is_empty());
        assert_eq!(find("needle-0100").await.len(), 10);
    }
}

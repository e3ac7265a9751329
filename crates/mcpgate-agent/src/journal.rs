//! The audit journal: the one owner of store-before-forward.
//!
//! - [`Journal::begin`]: a request's event is stored durably (a *pending* entry) before the
//!   request is forwarded; if that fails, the request is not forwarded (fail closed). With a
//!   journal directory ([`Journal::with_dir`], what the daemons use) the entry is one line
//!   appended to a file with a single `write()`: in the page cache it survives the process
//!   being killed (`kill -9`), and it costs microseconds, not a database transaction.
//!   Without one, it is a key in the spool.
//! - [`Journal::answered`], then [`Journal::complete`]: the final event (outcome, duration)
//!   is serialized once and appended to the journal too (a second line of the same id)
//!   before the client hears the answer, then stored by one writer task in batches (group
//!   commit), off every session's path; it carries the pending event's id, and storing is
//!   idempotent by id. A batch that cannot be stored is kept and tried again;
//!   while the audit log refuses writes, [`Journal::begin`] refuses too, so what waits is
//!   bounded by the requests in flight.
//! - [`Journal::recover`]: at start, an entry left by a killed process with its final line is
//!   stored as it was answered; one without becomes a final event with `outcome:
//!   interrupted` — never a success: the gateway cannot know whether the server acted. One
//!   whose final event was stored stays as it was (same id).
//! - [`Journal::record`]: events that need no pending step (session start and end, denials).
//! - [`Journal::ship`]: an agent on another host keeps final events in an outbox in its spool
//!   and ships them to the auth service; storing is idempotent by event id, so a batch
//!   shipped twice is stored once.

use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpgate_store::{AnyStore, Encoded, Store};
use mcpgate_types::AuditEvent;
use mcpgate_types::audit::codes;

/// Key prefix of events stored before a request is forwarded and completed after.
pub const PENDING: &str = "audit-pending/";
/// Key prefix of final events waiting to be shipped (agents on other hosts).
pub const OUTBOX: &str = "outbox/";
/// Events per shipped batch.
const SHIP_BATCH: usize = 500;
/// A journal file is closed for new entries past this size, and removed once every entry
/// in it has its final event stored.
const ROTATE_AT: u64 = 4 << 20;
/// How long the batch writer waits before trying a refused batch again.
const RETRY: Duration = Duration::from_millis(500);
/// How long the batch writer gathers completed events into one transaction at most, while
/// calls keep completing: a final event waits at most this long more to be searchable (its
/// lines in the journal cover a crash meanwhile). Each commit disturbs the calls running
/// into it: committing every 5 ms under a stream of calls added 0.6 ms to their p99,
/// every 50 ms 0.24 ms (same binary, same runs). From 50 ms to 200 the p99 of a stream of
/// calls through the bridge went from 457 to 324 µs (two daemons of one binary, eight
/// pairs, lower in each), and at 512 sessions calls per second rose 11% and the daemon's
/// CPU per call fell 6% (medians of four pairs): a commit writes each page it changed, and
/// the session index changes one page per session however many events it gains (dropping
/// that index gained as much). 500 ms measured the same as 200.
const GATHER: Duration = Duration::from_millis(200);
/// The batch is stored once no call has completed for this long: a call on its own is
/// searchable within a few milliseconds. A session's end flushes at once.
const QUIET: Duration = Duration::from_millis(5);
/// Ids a batch's stored entries are dropped for per hold of the files' lock.
const STORED_STEP: usize = 256;
/// Completions waiting before the batch writer is told to stop gathering. A transaction
/// holds the store's connection, which the counts of `mcp_limits` wait for; 4,096 here
/// measured the same as 1,024 at 512 sessions.
const NUDGE_AT: usize = 1_024;
/// Final events per transaction at most. Under load a batch grows while the one before is
/// being written (a transaction of SQLite's costs much the same for 500 events as for 50),
/// so the log keeps up: a cap of 512 held the store near 40,000 events a second.
const BATCH_MAX: usize = 4_096;

/// Where final events go.
pub enum Sink {
    /// The cluster's audit log itself (the auth service runs in this process).
    Log(Arc<AnyStore>),
    /// The outbox in the spool, shipped with [`Journal::ship`].
    Outbox,
}

/// The audit journal of an agent, shared by its sessions.
pub struct Journal {
    spool: Arc<AnyStore>,
    /// Where this journal's pending entries live in the spool (`audit-pending/INSTANCE/`),
    /// without a journal directory: several gateway instances may share one store, and
    /// each recovers only its own.
    pending: String,
    /// The journal files, when there is a directory for them.
    files: Option<Files>,
    sink: Sink,
    completions: tokio::sync::mpsc::Sender<Completion>,
    /// Tells the batch writer to stop gathering: someone waits for a flush, or many
    /// completions wait.
    urgent: Arc<tokio::sync::Notify>,
    /// The last batch of final events could not be stored: new requests are refused.
    failing: AtomicBool,
}

/// Entries as lines in files `DIR/INSTANCE-GENERATION.log`: an entry's pending event, then
/// (once answered) its final event.
struct Files {
    dir: PathBuf,
    instance: String,
    /// [`ROTATE_AT`], smaller in tests.
    rotate_at: u64,
    state: Mutex<FilesState>,
}

struct FilesState {
    generation: u64,
    file: Option<std::fs::File>,
    size: u64,
    /// Lines of each generation whose final event is not stored yet.
    open: HashMap<u64, u64>,
    /// The generations of each entry's pending line and of its final line (once
    /// answered), by event id, until its final event is stored.
    of: HashMap<String, (u64, Option<u64>)>,
}

/// What the batch writer is told.
enum Completion {
    Event(Box<Encoded>),
    /// Answer once everything sent before is stored (or was tried).
    Flush(Flushed),
}

/// Told once a flush is done.
type Flushed = tokio::sync::oneshot::Sender<()>;

impl Files {
    fn path(&self, generation: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{generation:020}.log", self.instance))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FilesState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This instance's journal files, oldest first, with their generations.
    fn existing(&self) -> Result<Vec<(u64, PathBuf)>, String> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(format!("{}: {e}", self.dir.display())),
        };
        let prefix = format!("{}-", self.instance);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(generation) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".log"))
                .and_then(|g| g.parse::<u64>().ok())
            {
                out.push((generation, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Appends one pending entry (one `write()`), opening a new file past [`ROTATE_AT`].
    fn append(&self, id: &str, json: &[u8]) -> std::io::Result<()> {
        let mut st = self.state();
        let generation = self.write_line(&mut st, json)?;
        *st.open.entry(generation).or_insert(0) += 1;
        st.of.insert(id.to_string(), (generation, None));
        Ok(())
    }

    /// Whether `id` is pending without its final line.
    fn awaits_final(&self, id: &str) -> bool {
        self.state().of.get(id).is_some_and(|(_, f)| f.is_none())
    }

    /// Appends the final event of an entry still pending: after a crash it is recovered as
    /// it was, not as interrupted. Its file is kept until that event is stored.
    fn append_final(&self, id: &str, json: &[u8]) -> std::io::Result<()> {
        let mut st = self.state();
        if !st.of.get(id).is_some_and(|(_, f)| f.is_none()) {
            return Ok(());
        }
        let generation = self.write_line(&mut st, json)?;
        *st.open.entry(generation).or_insert(0) += 1;
        if let Some(entry) = st.of.get_mut(id) {
            entry.1 = Some(generation);
        }
        Ok(())
    }

    /// Writes `json` and a newline to the current file in one `write()`; returns its
    /// generation.
    fn write_line(&self, st: &mut FilesState, json: &[u8]) -> std::io::Result<u64> {
        let mut line = Vec::with_capacity(json.len() + 1);
        line.extend_from_slice(json);
        line.push(b'\n');
        if st.file.is_none() || st.size >= self.rotate_at {
            if st.file.is_some() {
                st.generation += 1;
            }
            let generation = st.generation;
            let mut options = std::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            st.file = Some(options.open(self.path(generation))?);
            st.size = 0;
            // The previous generation may have nothing open any more.
            let done: Vec<u64> = st
                .open
                .iter()
                .filter(|(g, n)| **g < generation && **n == 0)
                .map(|(g, _)| *g)
                .collect();
            for g in done {
                st.open.remove(&g);
                let _ = std::fs::remove_file(self.path(g));
            }
            st.open.entry(generation).or_insert(0);
        }
        let generation = st.generation;
        if let Some(f) = st.file.as_mut()
            && let Err(e) = f.write_all(&line)
        {
            // Part of the line may be in the file: the next entry goes to a new one, so it
            // is not glued to a fragment (which recovery skips: it was never forwarded).
            st.file = None;
            st.generation += 1;
            return Err(e);
        }
        st.size += line.len() as u64;
        Ok(generation)
    }

    /// The final events of these ids are stored: a closed file with nothing open goes. The
    /// lock is taken for a few hundred ids at a time and files are removed outside it:
    /// `begin` on the other core waits for it before forwarding.
    fn stored<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut ids = ids.peekable();
        while ids.peek().is_some() {
            let mut gone = Vec::new();
            {
                let mut st = self.state();
                for id in ids.by_ref().take(STORED_STEP) {
                    let Some((pending, last)) = st.of.remove(id) else {
                        continue;
                    };
                    for g in std::iter::once(pending).chain(last) {
                        let left = st.open.get_mut(&g).map(|n| {
                            *n = n.saturating_sub(1);
                            *n
                        });
                        if left == Some(0) && g != st.generation {
                            st.open.remove(&g);
                            gone.push(g);
                        }
                    }
                }
            }
            for g in gone {
                let _ = std::fs::remove_file(self.path(g));
            }
        }
    }

    /// Removes every file whose entries are all stored, the current one too (the next entry
    /// opens another): what a clean stop leaves is only what the next start must recover.
    fn close(&self) {
        let gone: Vec<u64> = {
            let mut st = self.state();
            let gone: Vec<u64> = st
                .open
                .iter()
                .filter(|(_, n)| **n == 0)
                .map(|(g, _)| *g)
                .collect();
            for g in &gone {
                st.open.remove(g);
                if *g == st.generation {
                    // The next entry opens another file, never this one again.
                    st.file = None;
                    st.generation += 1;
                }
            }
            gone
        };
        for g in gone {
            let _ = std::fs::remove_file(self.path(g));
        }
    }
}

impl Journal {
    /// A journal keeping pending events in `spool` under `instance` (stable across restarts
    /// of this gateway, distinct from other instances sharing the store) and final events in
    /// `sink`. Starts the batch writer (call within a tokio runtime).
    pub fn new(spool: Arc<AnyStore>, sink: Sink, instance: &str) -> Arc<Journal> {
        Self::build(spool, sink, instance, None)
    }

    /// The same, with pending events appended to files in `dir` (created if needed, owner
    /// only) instead of the spool. Call [`Journal::recover`] before the first request.
    pub fn with_dir(
        spool: Arc<AnyStore>,
        sink: Sink,
        instance: &str,
        dir: &Path,
    ) -> Result<Arc<Journal>, String> {
        Self::with_files(spool, sink, instance, dir, ROTATE_AT)
    }

    fn with_files(
        spool: Arc<AnyStore>,
        sink: Sink,
        instance: &str,
        dir: &Path,
        rotate_at: u64,
    ) -> Result<Arc<Journal>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let files = Files {
            dir: dir.to_path_buf(),
            instance: instance.to_string(),
            rotate_at,
            state: Mutex::new(FilesState {
                generation: 0,
                file: None,
                size: 0,
                open: HashMap::new(),
                of: HashMap::new(),
            }),
        };
        Ok(Self::build(spool, sink, instance, Some(files)))
    }

    fn build(
        spool: Arc<AnyStore>,
        sink: Sink,
        instance: &str,
        files: Option<Files>,
    ) -> Arc<Journal> {
        let (completions, rx) = tokio::sync::mpsc::channel(2 * BATCH_MAX);
        let urgent = Arc::new(tokio::sync::Notify::new());
        let journal = Arc::new(Journal {
            spool,
            pending: format!("{PENDING}{instance}/"),
            files,
            sink,
            completions,
            urgent: urgent.clone(),
            failing: AtomicBool::new(false),
        });
        tokio::spawn(complete_in_batches(Arc::downgrade(&journal), rx, urgent));
        journal
    }

    /// Stores final events durably.
    pub async fn record(&self, events: &[AuditEvent]) -> Result<(), String> {
        self.store_final(encode(events)?, false).await
    }

    /// Stores final events; with `only_new`, an event whose id is stored already keeps what
    /// it was (the audit log keeps the first of an id anyway; the outbox, keyed by time and
    /// id, must not be overwritten by a recovered `interrupted` before it is shipped).
    async fn store_final(&self, events: Arc<Vec<Encoded>>, only_new: bool) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        match &self.sink {
            Sink::Log(store) => store
                .append_encoded(events)
                .await
                .map_err(|e| e.to_string()),
            Sink::Outbox => {
                for e in events.iter() {
                    let key = format!("{OUTBOX}{:020}-{}", e.time_us(), e.id());
                    let bytes = e.json().as_bytes();
                    if only_new {
                        self.spool.create(&key, bytes).await.map(|_| ())
                    } else {
                        self.spool.put(&key, bytes).await
                    }
                    .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }

    /// Stores `event` as pending: durable before its request is forwarded. Refused while
    /// the audit log refuses final events.
    pub async fn begin(&self, event: &AuditEvent) -> Result<(), String> {
        if self.failing.load(Ordering::Acquire) {
            return Err("the audit log refuses writes".into());
        }
        let bytes = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        match &self.files {
            Some(files) => files
                .append(&event.id, &bytes)
                .map_err(|e| format!("the audit journal cannot be written: {e}")),
            None => self
                .spool
                .put(&self.pending_key(&event.id), &bytes)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    fn pending_key(&self, id: &str) -> String {
        format!("{}{id}", self.pending)
    }

    /// The final events of these ids are stored: their pending entries go.
    async fn stored<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        match &self.files {
            Some(files) => files.stored(ids),
            None => {
                let keys: Vec<String> = ids.map(|id| self.pending_key(id)).collect();
                if let Err(e) = self.spool.delete_many(&keys).await {
                    tracing::warn!(error = %e, "pending audit events stay until the next start");
                }
            }
        }
    }

    /// Appends the final event of a begun request (same id) to the journal: a crash before
    /// the batch writer stores it keeps the outcome. Call it before the client hears the
    /// answer, then hand what it returns to [`Journal::complete`]. The event is serialized
    /// here once, for its line and for the store.
    pub fn answered(&self, event: &AuditEvent) -> Answered {
        let encoded = match Encoded::new(event) {
            Ok(encoded) => encoded,
            Err(e) => {
                // Never seen (an event is strings and JSON values): its pending entry stays
                // and is recorded as interrupted at the next start.
                tracing::error!(error = %e, id = %event.id, "an answered request's event cannot be serialized");
                return Answered(None);
            }
        };
        if let Some(files) = &self.files
            && files.awaits_final(&event.id)
            && let Err(e) = files.append_final(&event.id, encoded.json().as_bytes())
        {
            tracing::warn!(error = %e, "an answered request's outcome is not in the journal: a crash before it is stored would record it as interrupted");
        }
        Answered(Some(encoded))
    }

    /// Hands an answered request's final event to the batch writer.
    pub async fn complete(&self, answered: Answered) {
        let Answered(Some(event)) = answered else {
            return;
        };
        if self
            .completions
            .send(Completion::Event(Box::new(event)))
            .await
            .is_err()
        {
            tracing::error!("the audit batch writer stopped; the pending event will be recovered");
        } else if self.completions.max_capacity() - self.completions.capacity() >= NUDGE_AT {
            self.urgent.notify_one();
        }
    }

    /// Stores the final event of a begun request now, and drops its pending entry.
    pub async fn complete_now(&self, event: AuditEvent) -> Result<(), String> {
        self.record(std::slice::from_ref(&event)).await?;
        self.stored(std::iter::once(event.id.as_str())).await;
        Ok(())
    }

    /// Removes the journal files whose entries are all stored (a stopping agent's last
    /// step, after [`Journal::flush`]).
    pub fn close(&self) {
        if let Some(files) = &self.files {
            files.close();
        }
    }

    /// Returns once every completion handed over before is stored (or was tried).
    pub async fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.completions.send(Completion::Flush(done)).await.is_ok() {
            self.urgent.notify_one();
            let _ = flushed.await;
        }
    }

    /// Completes the events of requests that were forwarded when a process was killed:
    /// one whose final line is in the journal is stored as it was answered; the others
    /// become `outcome: interrupted`, not a success (stored once: storing is idempotent by
    /// id, and one whose final event was stored keeps it). Returns how many pending
    /// entries there were.
    pub async fn recover(&self) -> Result<usize, String> {
        let mut recovered = 0;
        if let Some(files) = &self.files {
            // Every file first: an entry's final line may be in a later file than its
            // pending one.
            let (mut found, mut order, mut paths) = (HashMap::new(), Vec::new(), Vec::new());
            for (_, path) in files.existing()? {
                let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                // A line cut short by the kill was never written in full: it is skipped
                // (a pending line: never forwarded; a final one: its pending line stays).
                for event in text
                    .split(|b| *b == b'\n')
                    .filter_map(|l| serde_json::from_slice::<AuditEvent>(l).ok())
                {
                    // A final line says how the request ended; a pending one does not.
                    let answered = event.fields.contains_key("outcome");
                    match found.get_mut(&event.id) {
                        Some((first, pending, done)) => {
                            if answered {
                                (*first, *done) = (event, true);
                            } else {
                                *pending = true;
                            }
                        }
                        None => {
                            order.push(event.id.clone());
                            found.insert(event.id.clone(), (event, !answered, answered));
                        }
                    }
                }
                paths.push(path);
            }
            // Answered: as it was; else interrupted. A final line whose pending one is gone
            // was stored already (its pending line's file went only then): stored again,
            // which changes nothing, and not counted.
            let mut events = Vec::with_capacity(order.len());
            for (event, pending, answered) in order.iter().filter_map(|id| found.remove(id)) {
                recovered += usize::from(pending);
                events.push(if answered { event } else { interrupted(event) });
            }
            for chunk in events.chunks(500) {
                self.store_final(encode(chunk)?, true).await?;
            }
            for path in paths {
                std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        // Its own in the spool, and those of versions that kept them unscoped
        // (`audit-pending/ID`).
        let pending: Vec<(String, Vec<u8>)> = self
            .spool
            .list(PENDING)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|(k, _)| k.starts_with(&self.pending) || !k[PENDING.len()..].contains('/'))
            .collect();
        for (key, bytes) in &pending {
            if let Ok(event) = serde_json::from_slice::<AuditEvent>(bytes) {
                self.store_final(encode(&[interrupted(event)])?, true)
                    .await?;
            }
            self.spool.delete(key).await.map_err(|e| e.to_string())?;
        }
        recovered += pending.len();
        if recovered > 0 {
            tracing::warn!(
                pending = recovered,
                "requests forwarded before the last stop were recovered from the journal: each whose answer was not recorded is now recorded as interrupted (one that was answered keeps its outcome)"
            );
        }
        Ok(recovered)
    }

    /// Ships the outbox oldest first in batches through `upload`, deleting each batch once
    /// stored. Returns how many events were shipped.
    pub async fn ship<F, Fut>(&self, upload: F) -> Result<usize, String>
    where
        F: Fn(Vec<AuditEvent>) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let entries = self.spool.list(OUTBOX).await.map_err(|e| e.to_string())?;
        let mut shipped = 0;
        for chunk in entries.chunks(SHIP_BATCH) {
            let events: Vec<AuditEvent> = chunk
                .iter()
                .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                .collect();
            upload(events).await?;
            let keys: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
            self.spool
                .delete_many(&keys)
                .await
                .map_err(|e| e.to_string())?;
            shipped += chunk.len();
        }
        Ok(shipped)
    }
}

/// A begun request's final event, serialized by [`Journal::answered`]; nothing if it could
/// not be.
pub struct Answered(Option<Encoded>);

/// Events as the store takes them.
fn encode(events: &[AuditEvent]) -> Result<Arc<Vec<Encoded>>, String> {
    Encoded::all(events).map_err(|e| e.to_string())
}

/// A pending event as it is recorded when its answer is unknown.
fn interrupted(mut event: AuditEvent) -> AuditEvent {
    let (_, code) = codes::MCP_REQUEST_INTERRUPTED;
    event.code = code.to_string();
    event.success = false;
    event
        .fields
        .insert("outcome".into(), Value::from("interrupted"));
    event.fields.insert(
        "error".into(),
        Value::from("the gateway stopped before the answer was recorded"),
    );
    event
}

/// Stores completed events in batches (one transaction for many requests), then drops
/// their pending entries. A batch the audit log refuses is kept and tried again; meanwhile
/// the journal refuses new requests.
///
/// The first completion wakes the writer; then it gathers on a timer, looking at the
/// channel every [`QUIET`] without waiting on it, so the completions that arrive meanwhile
/// wake nothing (a channel wakes only a receiver waiting on it): a wake-up of the writer
/// per few milliseconds, not one per call on the other core. A flush, or many waiting,
/// cuts the window short (`urgent`).
async fn complete_in_batches(
    journal: std::sync::Weak<Journal>,
    mut rx: tokio::sync::mpsc::Receiver<Completion>,
    urgent: Arc<tokio::sync::Notify>,
) {
    let mut batch: Vec<Encoded> = Vec::with_capacity(BATCH_MAX);
    let mut flushed = Vec::new();
    // The last batch was full: the next one is already waiting.
    let mut behind = false;
    loop {
        let retrying = !batch.is_empty();
        let first = if !retrying {
            match rx.recv().await {
                Some(m) => Some(m),
                None => return,
            }
        } else {
            // Retrying: take what comes meanwhile, then try again.
            match tokio::time::timeout(RETRY, rx.recv()).await {
                Ok(Some(m)) => Some(m),
                Ok(None) | Err(_) => None,
            }
        };
        if let Some(msg) = first {
            take(msg, &mut batch, &mut flushed);
        }
        // A nudge left over from what was already taken (a flush found by `recv`) would cut
        // this gathering short: dropped, then what is waiting is taken; a flush sent after
        // this still wakes the gathering.
        tokio::select! {
            biased;
            _ = urgent.notified() => {}
            _ = std::future::ready(()) => {}
        }
        drain(&mut rx, &mut batch, &mut flushed);
        // Group commit: the calls that complete while others keep completing, up to
        // [`GATHER`], go into the same transaction — unless someone waits for a flush, many
        // wait already, the writer is behind, or it is a refused batch being tried again.
        if !(retrying || behind || !flushed.is_empty()) {
            let until = tokio::time::Instant::now() + GATHER;
            loop {
                let seen = rx.len();
                let next = (tokio::time::Instant::now() + QUIET).min(until);
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = urgent.notified() => break,
                }
                if next >= until || rx.len() == seen {
                    break;
                }
            }
        }
        drain(&mut rx, &mut batch, &mut flushed);
        behind = batch.len() >= BATCH_MAX;
        let Some(journal) = journal.upgrade() else {
            return;
        };
        // Shared with the store's thread, not copied, and back once it is done (kept for
        // another try if refused; else emptied, its room kept for the next).
        let shared = Arc::new(std::mem::take(&mut batch));
        let result = journal.store_final(shared.clone(), false).await;
        batch = Arc::unwrap_or_clone(shared);
        match result {
            Ok(()) => {
                journal.stored(batch.iter().map(Encoded::id)).await;
                if journal.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("the audit log accepts writes again");
                }
                batch.clear();
            }
            Err(e) => {
                if !journal.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "audit write failed: new requests are refused until it succeeds; retrying");
                }
            }
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// One message for the batch writer: an event into the batch, a flush into those waiting.
fn take(msg: Completion, batch: &mut Vec<Encoded>, flushed: &mut Vec<Flushed>) {
    match msg {
        Completion::Event(ev) => batch.push(*ev),
        Completion::Flush(done) => flushed.push(done),
    }
}

/// Takes what waits in the channel, without waiting, while the batch has room.
fn drain(
    rx: &mut tokio::sync::mpsc::Receiver<Completion>,
    batch: &mut Vec<Encoded>,
    flushed: &mut Vec<Flushed>,
) {
    while batch.len() < BATCH_MAX {
        match rx.try_recv() {
            Ok(msg) => take(msg, batch, flushed),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on failure by design

    use super::*;
    use mcpgate_store::SqliteStore;
    use mcpgate_types::{AuditQuery, Claims, IdentityKind};

    fn event() -> AuditEvent {
        let who = Claims {
            name: "alice".into(),
            kind: IdentityKind::User,
            roles: vec!["dev".into()],
            traits: Default::default(),
            generation: 0,
            cluster: "c".into(),
            oauth_client: None,
        };
        let mut f = serde_json::Map::new();
        f.insert("method".into(), Value::from("tools/call"));
        AuditEvent::new(
            "c",
            std::time::SystemTime::now(),
            codes::MCP_REQUEST,
            &who,
            true,
            f,
        )
    }

    fn store(dir: &tempfile::TempDir, name: &str) -> Arc<AnyStore> {
        Arc::new(AnyStore::Sqlite(
            SqliteStore::open(&dir.path().join(name)).unwrap(),
        ))
    }

    fn journal_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[tokio::test]
    async fn journal_files_survive_a_crash_and_answered_requests_keep_their_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let log = store(&dir, "log.db");
        let jdir = dir.path().join("journal");
        let (answered, cut) = (event(), event());
        {
            let j = Journal::with_dir(log.clone(), Sink::Log(log.clone()), "a", &jdir).unwrap();
            j.begin(&answered).await.unwrap();
            j.begin(&cut).await.unwrap();
            j.complete(j.answered(&answered)).await;
            j.flush().await;
            // Killed here: `cut` was forwarded and never answered. Nothing was flushed to
            // disk by the journal itself: the page cache outlives the process.
        }
        assert_eq!(journal_files(&jdir), ["a-00000000000000000000.log"]);
        let j = Journal::with_dir(log.clone(), Sink::Log(log.clone()), "a", &jdir).unwrap();
        assert_eq!(
            j.recover().await.unwrap(),
            2,
            "both entries were still in the file"
        );
        assert!(journal_files(&jdir).is_empty());
        let found = log.search_events(&AuditQuery::default()).await.unwrap();
        assert_eq!(found.len(), 2);
        let by_id = |id: &str| found.iter().find(|e| e.id == id).unwrap();
        assert!(
            by_id(&answered.id).success,
            "an answered request keeps its outcome"
        );
        assert_eq!(by_id(&cut.id).field("outcome"), Some("interrupted"));
        // A line cut short by the kill is skipped.
        std::fs::write(jdir.join("a-00000000000000000007.log"), b"{\"id\": \"trunc").unwrap();
        assert_eq!(j.recover().await.unwrap(), 0);
        // Another instance's files are its own.
        let other = Journal::with_dir(log.clone(), Sink::Log(log.clone()), "b", &jdir).unwrap();
        other.begin(&event()).await.unwrap();
        assert_eq!(j.recover().await.unwrap(), 0);
        assert_eq!(journal_files(&jdir).len(), 1);
    }

    #[tokio::test]
    async fn an_answered_request_keeps_its_outcome_when_killed_before_its_batch_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let log = store(&dir, "log.db");
        let jdir = dir.path().join("journal");
        let (answered, cut) = (event(), event());
        {
            // Files of one line each: the final line lands in another file than its
            // pending one.
            let j =
                Journal::with_files(log.clone(), Sink::Log(log.clone()), "a", &jdir, 1).unwrap();
            j.begin(&answered).await.unwrap();
            j.begin(&cut).await.unwrap();
            let mut done = answered.clone();
            done.fields.insert("outcome".into(), Value::from("ok"));
            done.fields.insert("duration_ms".into(), Value::from(1.5));
            // A field named like one of the event's own: its final line is the JSON the
            // log stores, which keeps such a field aside.
            done.fields.insert("user".into(), Value::from("mallory"));
            j.complete(j.answered(&done)).await;
            // Killed here, before the batch writer stored anything.
        }
        assert!(
            log.search_events(&AuditQuery::default())
                .await
                .unwrap()
                .is_empty(),
            "nothing was stored before the kill"
        );
        assert_eq!(journal_files(&jdir).len(), 3);
        let j = Journal::with_dir(log.clone(), Sink::Log(log.clone()), "a", &jdir).unwrap();
        assert_eq!(j.recover().await.unwrap(), 2, "two requests were forwarded");
        assert!(journal_files(&jdir).is_empty());
        let found = log.search_events(&AuditQuery::default()).await.unwrap();
        assert_eq!(found.len(), 2);
        let by_id = |id: &str| found.iter().find(|e| e.id == id).unwrap();
        let kept = by_id(&answered.id);
        assert!(kept.success);
        assert_eq!(
            kept.field("outcome"),
            Some("ok"),
            "stored as it was answered"
        );
        assert_eq!(kept.fields.get("duration_ms"), Some(&Value::from(1.5)));
        assert_eq!(kept.user, "alice");
        assert_eq!(kept.field("field.user"), Some("mallory"));
        assert_eq!(by_id(&cut.id).field("outcome"), Some("interrupted"));
    }

    #[tokio::test]
    async fn a_file_holding_final_lines_stays_until_their_events_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let log = store(&dir, "log.db");
        let jdir = dir.path().join("journal");
        let j = Journal::with_files(log.clone(), Sink::Log(log.clone()), "a", &jdir, 1).unwrap();
        let (a, b) = (event(), event());
        j.begin(&a).await.unwrap(); // file 0
        j.begin(&b).await.unwrap(); // file 1
        j.complete(j.answered(&b)).await; // file 2
        j.complete(j.answered(&a)).await; // file 3
        j.flush().await;
        assert_eq!(
            journal_files(&jdir),
            ["a-00000000000000000003.log"],
            "every earlier file went once its lines' events were stored; the current stays"
        );
        assert_eq!(
            log.search_events(&AuditQuery::default())
                .await
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_final_line_left_alone_is_not_recovered_as_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let log = store(&dir, "log.db");
        let jdir = dir.path().join("journal");
        let ev = event();
        {
            let j =
                Journal::with_files(log.clone(), Sink::Log(log.clone()), "a", &jdir, 1).unwrap();
            j.begin(&ev).await.unwrap();
            let mut done = ev.clone();
            done.fields.insert("outcome".into(), Value::from("ok"));
            j.complete(j.answered(&done)).await;
            j.flush().await;
            // Stored: the pending line's file went, the current one (the final line) stays.
        }
        assert_eq!(journal_files(&jdir), ["a-00000000000000000001.log"]);
        let j = Journal::with_dir(log.clone(), Sink::Log(log.clone()), "a", &jdir).unwrap();
        assert_eq!(j.recover().await.unwrap(), 0, "nothing was left pending");
        assert!(journal_files(&jdir).is_empty());
        let found = log.search_events(&AuditQuery::default()).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field("outcome"), Some("ok"));
    }

    #[tokio::test]
    async fn recovery_keeps_an_answered_event_in_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let spool = store(&dir, "spool.db");
        let jdir = dir.path().join("journal");
        let ev = event();
        {
            let j = Journal::with_dir(spool.clone(), Sink::Outbox, "agent", &jdir).unwrap();
            j.begin(&ev).await.unwrap();
            j.complete(j.answered(&ev)).await;
            j.flush().await;
            // Stopped before the outbox was shipped.
        }
        let j = Journal::with_dir(spool.clone(), Sink::Outbox, "agent", &jdir).unwrap();
        assert_eq!(j.recover().await.unwrap(), 1);
        let outbox = spool.list(OUTBOX).await.unwrap();
        assert_eq!(outbox.len(), 1);
        let stored: AuditEvent = serde_json::from_slice(&outbox[0].1).unwrap();
        assert!(stored.success, "the answered event is shipped as it was");
    }

    #[tokio::test]
    async fn a_journal_file_goes_once_its_entries_are_final() {
        let dir = tempfile::tempdir().unwrap();
        let log = store(&dir, "log.db");
        let jdir = dir.path().join("journal");
        // Files of one entry each, to see them rotate.
        let j = Journal::with_files(log.clone(), Sink::Log(log.clone()), "a", &jdir, 1).unwrap();
        let (a, b, c) = (event(), event(), event());
        j.begin(&a).await.unwrap();
        j.begin(&b).await.unwrap(); // a second file: the first holds one entry
        assert_eq!(journal_files(&jdir).len(), 2);
        j.complete(j.answered(&a)).await; // its final line: a third file
        j.flush().await;
        assert_eq!(
            journal_files(&jdir),
            ["a-00000000000000000001.log", "a-00000000000000000002.log"],
            "the first file went; b's is open, the current one stays"
        );
        j.begin(&c).await.unwrap();
        j.complete(j.answered(&b)).await;
        j.complete(j.answered(&c)).await;
        j.flush().await;
        assert_eq!(
            journal_files(&jdir),
            ["a-00000000000000000005.log"],
            "only the current stays"
        );
    }

    #[tokio::test]
    async fn a_begun_request_left_by_a_crash_is_recovered_as_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let log = store(&dir, "log.db");
        let ev = event();
        {
            let j = Journal::new(log.clone(), Sink::Log(log.clone()), "a");
            j.begin(&ev).await.unwrap();
            // The process dies here: no completion.
        }
        let j = Journal::new(log.clone(), Sink::Log(log.clone()), "a");
        assert_eq!(j.recover().await.unwrap(), 1);
        let found = log.search_events(&AuditQuery::default()).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, ev.id);
        assert!(!found[0].success);
        assert_eq!(found[0].code, "MG5005E");
        assert_eq!(found[0].field("outcome"), Some("interrupted"));
        assert_eq!(j.recover().await.unwrap(), 0, "recovered once");
        // Another instance sharing the store: its calls in flight are its own to recover.
        let other = Journal::new(log.clone(), Sink::Log(log.clone()), "b");
        other.begin(&event()).await.unwrap();
        assert_eq!(j.recover().await.unwrap(), 0);
        assert_eq!(other.recover().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn completions_replace_pending_events_and_the_outbox_ships_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool = store(&dir, "spool.db");
        let log = store(&dir, "log.db");
        let j = Journal::new(spool.clone(), Sink::Outbox, "a");
        let ev = event();
        j.begin(&ev).await.unwrap();
        j.complete(j.answered(&ev)).await;
        j.flush().await;
        assert!(spool.list(PENDING).await.unwrap().is_empty());
        let shipped = j
            .ship(|events| {
                let log = log.clone();
                async move { log.append_events(&events).await.map_err(|e| e.to_string()) }
            })
            .await
            .unwrap();
        assert_eq!(shipped, 1);
        assert_eq!(j.ship(|_| async { Ok(()) }).await.unwrap(), 0);
        let found = log.search_events(&AuditQuery::default()).await.unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].success);
        // A failed upload keeps the events.
        j.record(&[event()]).await.unwrap();
        assert!(j.ship(|_| async { Err("down".to_string()) }).await.is_err());
        assert_eq!(spool.list(OUTBOX).await.unwrap().len(), 1);
    }
}

//! The audit journal: the one owner of store-before-forward.
//!
//! - [`Journal::begin`]: a request's event is stored durably (a *pending* entry in the
//!   agent's spool) before the request is forwarded; if that fails, the request is not
//!   forwarded (fail closed).
//! - [`Journal::complete`]: the final event (outcome, duration) replaces the pending entry;
//!   completions are stored in batches by one writer task (group commit), off every
//!   session's path. A crash in between only leaves the pending entry.
//! - [`Journal::recover`]: at start, every pending entry left by a killed process becomes a
//!   final event with `outcome: interrupted` — never a success: the gateway cannot know
//!   whether the server acted.
//! - [`Journal::record`]: events that need no pending step (session start and end, denials).
//! - [`Journal::ship`]: an agent on another host keeps final events in an outbox in its spool
//!   and ships them to the auth service; storing is idempotent by event id, so a batch
//!   shipped twice is stored once.

use serde_json::Value;
use std::future::Future;
use std::sync::Arc;

use mcpgate_store::{AnyStore, Store};
use mcpgate_types::AuditEvent;
use mcpgate_types::audit::codes;

/// Key prefix of events stored before a request is forwarded and completed after.
pub const PENDING: &str = "audit-pending/";
/// Key prefix of final events waiting to be shipped (agents on other hosts).
pub const OUTBOX: &str = "outbox/";
/// Events per shipped batch.
const SHIP_BATCH: usize = 500;

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
    /// Where this journal's pending entries live (`audit-pending/INSTANCE/`): several
    /// gateway instances may share one store, and each recovers only its own.
    pending: String,
    sink: Sink,
    completions: tokio::sync::mpsc::Sender<Completion>,
}

/// What the batch writer is told.
enum Completion {
    Event(Box<AuditEvent>),
    /// Answer once everything sent before is stored.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Journal {
    /// A journal keeping pending events in `spool` under `instance` (stable across restarts
    /// of this gateway, distinct from other instances sharing the store) and final events in
    /// `sink`. Starts the batch writer (call within a tokio runtime).
    pub fn new(spool: Arc<AnyStore>, sink: Sink, instance: &str) -> Arc<Journal> {
        let (completions, rx) = tokio::sync::mpsc::channel(4096);
        let journal = Arc::new(Journal {
            spool,
            pending: format!("{PENDING}{instance}/"),
            sink,
            completions,
        });
        tokio::spawn(complete_in_batches(Arc::downgrade(&journal), rx));
        journal
    }

    /// Stores final events durably.
    pub async fn record(&self, events: &[AuditEvent]) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        match &self.sink {
            Sink::Log(store) => store.append_events(events).await.map_err(|e| e.to_string()),
            Sink::Outbox => {
                for e in events {
                    let key = format!(
                        "{OUTBOX}{:020}-{}",
                        mcpgate_types::clock::unix_micros(e.time),
                        e.id
                    );
                    let bytes = serde_json::to_vec(e).map_err(|e| e.to_string())?;
                    self.spool
                        .put(&key, &bytes)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }

    /// Stores `event` as pending: durable before its request is forwarded.
    pub async fn begin(&self, event: &AuditEvent) -> Result<(), String> {
        let bytes = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        self.spool
            .put(&self.pending_key(&event.id), &bytes)
            .await
            .map_err(|e| e.to_string())
    }

    fn pending_key(&self, id: &str) -> String {
        format!("{}{id}", self.pending)
    }

    /// Hands the final event of a begun request (same id) to the batch writer.
    pub async fn complete(&self, event: AuditEvent) {
        if self
            .completions
            .send(Completion::Event(Box::new(event)))
            .await
            .is_err()
        {
            tracing::error!("the audit batch writer stopped; the pending event will be recovered");
        }
    }

    /// Stores the final event of a begun request now, and drops its pending entry.
    pub async fn complete_now(&self, event: AuditEvent) -> Result<(), String> {
        self.record(std::slice::from_ref(&event)).await?;
        if let Err(e) = self.spool.delete(&self.pending_key(&event.id)).await {
            tracing::warn!(error = %e, "a pending audit event stays until the next start");
        }
        Ok(())
    }

    /// Returns once every completion handed over before is stored (or failed).
    pub async fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.completions.send(Completion::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }

    /// Completes the events of requests that were forwarded when a process was killed:
    /// each becomes `outcome: interrupted`, not a success (stored once: storing is
    /// idempotent by id). Returns how many.
    pub async fn recover(&self) -> Result<usize, String> {
        // Its own, and those of versions that kept them unscoped (`audit-pending/ID`).
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
                self.record(&[interrupted(event)]).await?;
            }
            self.spool.delete(key).await.map_err(|e| e.to_string())?;
        }
        if !pending.is_empty() {
            tracing::warn!(
                recovered = pending.len(),
                "recorded requests forwarded before the last stop as interrupted"
            );
        }
        Ok(pending.len())
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
/// their pending entries.
async fn complete_in_batches(
    journal: std::sync::Weak<Journal>,
    mut rx: tokio::sync::mpsc::Receiver<Completion>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut flushed = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Completion::Event(ev) => batch.push(*ev),
                Completion::Flush(done) => flushed.push(done),
            }
            if batch.len() < 512 {
                next = rx.try_recv().ok();
            }
        }
        let Some(journal) = journal.upgrade() else {
            return;
        };
        match journal.record(&batch).await {
            Ok(()) => {
                let keys: Vec<String> = batch.iter().map(|e| journal.pending_key(&e.id)).collect();
                if let Err(e) = journal.spool.delete_many(&keys).await {
                    tracing::warn!(error = %e, "pending audit events stay until the next start");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit write failed; the pending events will be recovered")
            }
        }
        batch.clear();
        for done in flushed.drain(..) {
            let _ = done.send(());
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
        j.complete(ev.clone()).await;
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

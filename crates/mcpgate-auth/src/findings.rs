//! Findings kept with the cluster: the detectors of `mcpgate-findings` read the audit log
//! forward in the order it was written, from a stored position, so each event is read once
//! (also one stored late, like a remote agent's shipped batch or a long call's final event,
//! whatever its time), a restart goes on where the last run stopped, and several auth
//! instances on one PostgreSQL share one reader (a compare-and-swap decides whose run
//! counts). Findings are stored with their triage: open,
//! acknowledged, or expected — which suppresses its repeats (same kind, identity and subject).

use serde::{Deserialize, Serialize};
use std::time::Duration;

use mcpgate_findings::{Engine, Finding, State};
use mcpgate_store::Store;
use mcpgate_types::audit::codes;

use crate::service::{AuthService, Caller, from_json, to_json};
use crate::{AuthError, Result};

const READER: &str = "findings/reader";
const ITEMS: &str = "findings/items/";
const EXPECTED: &str = "findings/expected/";
/// Events read per batch.
const BATCH: u32 = 5_000;
/// How often the auth service reads on (`mcpgate start` runs it).
pub const INTERVAL: Duration = Duration::from_secs(30);

/// How far back each run reads again, in positions: an event committed after a higher
/// position was read (concurrent writers on PostgreSQL) is still found, once.
const REREAD: i64 = 5_000;

/// Where the reader is in the log, and what its detectors have learned.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Reader {
    /// The highest position read.
    cursor: i64,
    /// The ids of the last events read (at most [`REREAD`]): what a re-read skips.
    recent: std::collections::VecDeque<String>,
    engine: State,
}

/// What a person made of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Triage {
    #[default]
    Open,
    Acknowledged,
    /// Fine, and so are its repeats.
    Expected,
}

/// A finding as stored, with its triage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    #[serde(flatten)]
    pub finding: Finding,
    pub triage: Triage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triaged_by: Option<String>,
}

fn expectation_key(f: &Finding) -> String {
    format!("{EXPECTED}{}", f.repeat_key())
}

impl AuthService {
    /// Reads the log forward from the stored cursor and stores what the detectors find (but
    /// not repeats of what was marked expected). Returns how many findings it stored; 0 also
    /// when another instance read concurrently (its run counts).
    pub async fn update_findings(&self) -> Result<usize> {
        let old = self.store.get(READER).await?;
        let mut reader: Reader = match &old {
            Some(bytes) => from_json(bytes)?,
            None => Reader::default(),
        };
        let mut engine = Engine::resume(Default::default(), std::mem::take(&mut reader.engine));
        let mut found = Vec::new();
        let mut recent: std::collections::HashSet<String> = reader.recent.iter().cloned().collect();
        let mut from = (reader.cursor - REREAD).max(0);
        let mut read_any = false;
        loop {
            let events = self.store.events_after(from, BATCH).await?;
            let full = events.len() == BATCH as usize;
            for (position, ev) in &events {
                from = from.max(*position);
                if !recent.insert(ev.id.clone()) {
                    continue;
                }
                // Every event moves the position on, requests or not.
                read_any = true;
                reader.cursor = reader.cursor.max(*position);
                reader.recent.push_back(ev.id.clone());
                if reader.recent.len() > REREAD as usize
                    && let Some(old) = reader.recent.pop_front()
                {
                    recent.remove(&old);
                }
                found.extend(engine.observe(ev));
            }
            if !full {
                break;
            }
        }
        if !read_any {
            // Nothing new: nothing to write.
            return Ok(0);
        }
        // The findings are stored before the position moves past their events: a crash in
        // between reads them again, and their ids (a hash of their evidence) make that a no-op.
        let mut stored = 0;
        for f in found {
            if self.store.get(&expectation_key(&f)).await?.is_some() {
                continue;
            }
            let item = Stored {
                finding: f,
                triage: Triage::Open,
                triaged_by: None,
            };
            if self
                .store
                .create(&format!("{ITEMS}{}", item.finding.id), &to_json(&item)?)
                .await?
            {
                stored += 1;
            }
        }
        reader.engine = engine.state;
        let new = to_json(&reader)?;
        let won = match &old {
            Some(old) => self.store.compare_and_swap(READER, old, &new).await?,
            None => self.store.create(READER, &new).await?,
        };
        Ok(if won { stored } else { 0 })
    }

    /// `admin audit findings`: the findings since `since_micros` (read up to now first),
    /// oldest first.
    pub async fn findings(&self, caller: &Caller, since_micros: i64) -> Result<Vec<Stored>> {
        caller.require("event", "list")?;
        self.update_findings().await?;
        let mut out = Vec::new();
        for (_, bytes) in self.store.list(ITEMS).await? {
            let item: Stored = from_json(&bytes)?;
            if item.finding.time >= since_micros {
                out.push(item);
            }
        }
        out.sort_by(|a, b| (a.finding.time, &a.finding.id).cmp(&(b.finding.time, &b.finding.id)));
        Ok(out)
    }

    /// `admin audit triage ID acknowledged|expected|open`; `expected` also suppresses the
    /// finding's repeats. Audited.
    pub async fn triage(&self, caller: &Caller, id: &str, triage: Triage) -> Result<Stored> {
        caller.require("event", "update")?;
        let key = format!("{ITEMS}{id}");
        let mut item: Stored = match self.store.get(&key).await? {
            Some(bytes) => from_json(&bytes)?,
            None => return Err(AuthError::NotFound(format!("finding {id:?}"))),
        };
        // Nobody clears findings about themselves.
        let me = format!(
            "{}/{}",
            caller.info.claims.kind.as_str(),
            caller.info.claims.name
        );
        if item.finding.identity == me {
            return Err(AuthError::AccessDenied(
                "a finding about you is triaged by someone else".into(),
            ));
        }
        item.triage = triage;
        item.triaged_by = Some(caller.name().to_string());
        self.store.put(&key, &to_json(&item)?).await?;
        let expectation = expectation_key(&item.finding);
        if triage == Triage::Expected {
            self.store.put(&expectation, id.as_bytes()).await?;
        } else {
            self.store.delete(&expectation).await?;
        }
        self.emit(self.event(
            codes::RESOURCE_UPDATE.0,
            codes::RESOURCE_UPDATE.1,
            &caller.info.claims,
            true,
            [
                ("kind", serde_json::Value::from("finding")),
                ("name", serde_json::Value::from(id)),
                ("triage", serde_json::to_value(triage).unwrap_or_default()),
            ],
        ))
        .await?;
        Ok(item)
    }
}

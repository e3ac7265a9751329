//! The audit log's integrity. The store links every event to the one before it (a hash
//! chain, `mcpgate_store::chain`); here the cluster signs checkpoints of the chain's head
//! with its host CA, and `admin audit verify` walks the chain and holds it against the last
//! checkpoint: an edited, removed, swapped or unchained event is named by its position, and
//! a log cut short of what a checkpoint vouched for is named too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use mcpgate_store::{Store, chain};
use mcpgate_types::clock::unix_secs;

use crate::Result;
use mcpgate_types::audit::codes;

use crate::service::{AuthService, Caller, from_json, hex, to_json};

const CHECKPOINT: &str = "audit/checkpoint";
/// The position of the last break told (as `audit.chain.broken`).
const BROKEN: &str = "audit/broken";

/// The chain's head as the cluster vouched for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The cluster whose CA signed it (part of what is signed).
    #[serde(default)]
    pub cluster: String,
    pub seq: i64,
    /// The head's hash, hex.
    pub hash: String,
    /// Unix seconds.
    pub time: i64,
    /// The host CA's signature of [`Checkpoint::text`], base64.
    pub signature: String,
}

impl Checkpoint {
    fn text(cluster: &str, seq: i64, hash: &str, time: i64) -> String {
        format!("mcpgate audit checkpoint v1\n{cluster}\n{seq}\n{hash}\n{time}\n")
    }
}

/// What `admin audit verify` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub intact: bool,
    /// Events checked along the chain.
    pub events: u64,
    /// Where the chain begins (events before it were stored before the chain existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_from: Option<i64>,
    /// The last event's position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSeen>,
    /// What is wrong, and at which position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
}

/// The checkpoint the log was held against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointSeen {
    pub seq: i64,
    /// Unix seconds.
    pub time: i64,
}

impl AuthService {
    async fn checkpoint(&self) -> Result<Option<(Vec<u8>, Checkpoint)>> {
        match self.store.get(CHECKPOINT).await? {
            Some(b) => {
                let c = from_json(&b)?;
                Ok(Some((b, c)))
            }
            None => Ok(None),
        }
    }

    /// Signs a checkpoint of the chain's head if it moved on since the last one; returns
    /// its position. `mcpgate start` runs it every 30 s; of instances doing it at once, the
    /// highest head stays.
    pub async fn checkpoint_audit(&self) -> Result<Option<i64>> {
        let Some((seq, Some(_))) = self.store.chain_head().await? else {
            return Ok(None);
        };
        let old = self.checkpoint().await?;
        if old.as_ref().is_some_and(|(_, c)| c.seq >= seq) {
            return Ok(None);
        }
        // The chain is only extended from a checkpoint that is the cluster's, still there,
        // and not behind one this instance signed: else a rewritten log would get signed.
        if let Some(problem) = self
            .checkpoint_problem(old.as_ref().map(|(_, c)| c))
            .await?
        {
            return self.tell_break(problem.1, &problem.0).await;
        }
        // What was added since the last checkpoint must link to it before it is vouched
        // for: a break there is told at once (the log, an audit event), not at the next
        // verify, and no checkpoint is signed over it.
        let (from, start) = match &old {
            Some((_, c)) => match decode_hash(&c.hash) {
                Some(h) => (c.seq, chain::Verifier::resume(c.seq, h)),
                None => (0, chain::Verifier::default()),
            },
            None => (0, chain::Verifier::default()),
        };
        let (walked, broken) = chain::walk_from(&*self.store, start, from, |_| {}).await?;
        if let Some(b) = broken {
            return self.tell_break(b.seq(), &b.to_string()).await;
        }
        let Some((seq, hash)) = walked.head() else {
            return Ok(None);
        };
        let hash = hex(&hash);
        let signed_hash = hash.clone();
        let time = unix_secs(self.now());
        let signature = self
            .host_ca
            .sign(Checkpoint::text(self.cluster(), seq, &hash, time).as_bytes())?;
        let new = to_json(&Checkpoint {
            cluster: self.cluster().to_string(),
            seq,
            hash,
            time,
            signature: B64.encode(signature),
        })?;
        *self.last_signed.lock().unwrap_or_else(|p| p.into_inner()) = Some((seq, signed_hash));
        let stored = match old {
            Some((bytes, _)) => {
                self.store
                    .compare_and_swap(CHECKPOINT, &bytes, &new)
                    .await?
            }
            None => self.store.create(CHECKPOINT, &new).await?,
        };
        Ok(stored.then_some(seq))
    }

    /// What is wrong with the stored checkpoint, if anything: (problem, position).
    async fn checkpoint_problem(&self, c: Option<&Checkpoint>) -> Result<Option<(String, i64)>> {
        let signed = self
            .last_signed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(c) = c else {
            return Ok(signed.map(|(seq, _)| {
                (
                    format!("the checkpoint at seq {seq} this instance signed was removed"),
                    seq,
                )
            }));
        };
        if let Some((seq, _)) = signed.filter(|(seq, _)| c.seq < *seq) {
            return Ok(Some((
                format!(
                    "the checkpoint went back from seq {seq}, which this instance signed, to seq {}",
                    c.seq
                ),
                seq,
            )));
        }
        let named = if c.cluster.is_empty() {
            self.cluster()
        } else {
            &c.cluster
        };
        let text = Checkpoint::text(named, c.seq, &c.hash, c.time);
        let valid = B64
            .decode(&c.signature)
            .is_ok_and(|s| self.host_ca.verify(text.as_bytes(), &s));
        if !valid {
            return Ok(Some((
                format!(
                    "the checkpoint at seq {} is not signed by this cluster",
                    c.seq
                ),
                c.seq,
            )));
        }
        let at = self.store.chain_rows(c.seq - 1, 1).await?;
        if at
            .first()
            .and_then(|r| r.hash.as_deref())
            .map(hex)
            .as_deref()
            != Some(c.hash.as_str())
            || at.first().map(|r| r.seq) != Some(c.seq)
        {
            return Ok(Some((
                format!(
                    "the event at seq {} is not the one the checkpoint vouches for",
                    c.seq
                ),
                c.seq,
            )));
        }
        Ok(None)
    }

    /// Logs and audits a break of the chain, once per position; nothing is signed.
    async fn tell_break(&self, seq: i64, problem: &str) -> Result<Option<i64>> {
        let told = seq.to_string().into_bytes();
        if self.store.get(BROKEN).await?.as_deref() == Some(told.as_slice()) {
            return Ok(None);
        }
        tracing::error!(seq, "the audit log does not verify: {problem}");
        self.store.put(BROKEN, &told).await?;
        let who = self.claims("mcpgate", mcpgate_types::IdentityKind::Host, &[]);
        self.emit(self.event(
            codes::AUDIT_CHAIN_BROKEN.0,
            codes::AUDIT_CHAIN_BROKEN.1,
            &who,
            false,
            [
                ("seq", serde_json::Value::from(seq)),
                ("problem", serde_json::Value::from(problem)),
            ],
        ))
        .await?;
        Ok(None)
    }

    /// `admin audit verify`: walks the chain from its start and holds it against the last
    /// checkpoint.
    pub async fn verify_audit(&self, caller: &Caller) -> Result<Verification> {
        caller.require("event", "list")?;
        let v = verify_log(&*self.store, self.cluster(), |msg, sig| {
            self.host_ca.verify(msg, sig)
        })
        .await?;
        if let Some(problem) = &v.problem {
            tracing::error!("the audit log does not verify: {problem}");
        }
        Ok(v)
    }
}

/// Walks the chain of `store` from its start and holds it against the last checkpoint,
/// whose signature `signed` checks (the cluster `cluster`'s host CA): what `admin audit
/// verify` does through the auth service, and with `--offline` straight on the storage.
pub async fn verify_log<S: Store>(
    store: &S,
    cluster: &str,
    signed: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<Verification> {
    let checkpoint: Option<Checkpoint> = match store.get(CHECKPOINT).await? {
        Some(b) => Some(from_json(&b)?),
        None => None,
    };
    let at = checkpoint.as_ref().map(|c| c.seq);
    let mut at_checkpoint = None;
    let mut last_seq = None;
    let (walked, broken_at) = chain::walk_from(store, chain::Verifier::default(), 0, |r| {
        last_seq = Some(r.seq);
        if Some(r.seq) == at {
            at_checkpoint = r.hash.as_deref().map(hex);
        }
    })
    .await?;
    let mut v = Verification {
        intact: true,
        events: walked.checked,
        chain_from: walked.chain_from,
        last_seq,
        checkpoint: checkpoint.as_ref().map(|c| CheckpointSeen {
            seq: c.seq,
            time: c.time,
        }),
        problem: None,
        seq: None,
    };
    let mut broken = |problem: String, seq: i64| {
        v.intact = false;
        v.problem = Some(problem);
        v.seq = Some(seq);
    };
    match (broken_at, &checkpoint) {
        (Some(b), _) => broken(b.to_string(), b.seq()),
        (None, None) => {}
        (None, Some(c)) => {
            // The cluster it names is signed with it (`cluster`: for a checkpoint that names
            // none).
            let named = if c.cluster.is_empty() {
                cluster
            } else {
                &c.cluster
            };
            let text = Checkpoint::text(named, c.seq, &c.hash, c.time);
            let valid = B64
                .decode(&c.signature)
                .is_ok_and(|s| signed(text.as_bytes(), &s));
            if !valid {
                broken(
                    format!(
                        "the checkpoint at seq {} is not signed by this cluster",
                        c.seq
                    ),
                    c.seq,
                );
            } else if at_checkpoint.as_deref() != Some(c.hash.as_str()) {
                let ends = last_seq.map_or("is empty".to_string(), |s| format!("ends at seq {s}"));
                broken(
                    format!(
                        "the log was cut short: it {ends}, but the checkpoint signed at {} vouches for events up to seq {}",
                        mcpgate_types::audit::rfc3339_micros::format(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_secs(c.time.max(0) as u64)
                        ),
                        c.seq
                    ),
                    c.seq,
                );
            }
        }
    }
    Ok(v)
}

/// A hash from its hex form.
fn decode_hash(hex: &str) -> Option<chain::Hash> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    bytes.and_then(|b| b.try_into().ok())
}

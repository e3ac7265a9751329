//! The audit log as a hash chain. Every event is stored with the hash of the event before it
//! and its own hash, over its position and its stored JSON; so an event edited, removed or
//! moved breaks the chain where it happened, and [`Verifier`] names that position. Both
//! backends link events as they append them, one writer at a time.

use ring::digest;
use serde::Serialize;

/// A SHA-256 link.
pub type Hash = [u8; 32];

/// The hash of the event stored at `seq` as `data`, after the event whose hash is `prev`
/// (`None`: the first event of the chain).
pub fn link(seq: i64, prev: Option<&Hash>, data: &str) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"mcpgate audit chain v1\0");
    ctx.update(&seq.to_be_bytes());
    ctx.update(prev.map_or(&[0u8; 32][..], |p| &p[..]));
    ctx.update(data.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A stored hash, if it is one.
pub fn hash_of(bytes: Option<&[u8]>) -> Option<Hash> {
    bytes.and_then(|b| b.try_into().ok())
}

/// One stored event as the chain sees it.
#[derive(Debug, Clone)]
pub struct ChainRow {
    pub seq: i64,
    pub prev: Option<Vec<u8>>,
    pub hash: Option<Vec<u8>>,
    pub data: String,
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Break {
    /// The event's JSON or position is not what was hashed: it was changed, or moved.
    Altered { seq: i64 },
    /// The event does not follow the one before it (`after`, 0: none): events between
    /// them were removed.
    Missing { seq: i64, after: i64 },
    /// An event without a hash after the chain began: written around the store.
    Unchained { seq: i64 },
}

impl Break {
    /// The position named.
    pub fn seq(&self) -> i64 {
        match self {
            Break::Altered { seq } | Break::Missing { seq, .. } | Break::Unchained { seq } => *seq,
        }
    }
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Altered { seq } => write!(
                f,
                "the event at seq {seq} was altered or moved (it is not what was stored there)"
            ),
            Break::Missing { seq, after: 0 } => {
                write!(f, "events before seq {seq}, the first one, are missing")
            }
            Break::Missing { seq, after } => {
                write!(f, "events between seq {after} and seq {seq} are missing")
            }
            Break::Unchained { seq } => write!(
                f,
                "the event at seq {seq} has no hash: it was written around mcpgate"
            ),
        }
    }
}

/// Checks events fed in position order; the first break is an error.
#[derive(Debug, Default)]
pub struct Verifier {
    last: Option<(i64, Hash)>,
    /// The position of the last event fed (chained or not).
    last_seq: i64,
    /// Where the chain begins (events before it predate it).
    pub chain_from: Option<i64>,
    /// Events checked.
    pub checked: u64,
}

impl Verifier {
    pub fn feed(&mut self, row: &ChainRow) -> Result<(), Break> {
        let seq = row.seq;
        // Positions only grow: a repeated or lower one is an event put in out of place.
        if self.last_seq != 0 && seq <= self.last_seq {
            return Err(Break::Altered { seq });
        }
        let after = std::mem::replace(&mut self.last_seq, seq);
        let Some(hash) = hash_of(row.hash.as_deref()) else {
            // Events from before the chain are read, not checked.
            return match self.last {
                None => Ok(()),
                Some(_) => Err(Break::Unchained { seq }),
            };
        };
        let prev = hash_of(row.prev.as_deref());
        if row.prev.is_some() && prev.is_none() {
            return Err(Break::Altered { seq });
        }
        if link(seq, prev.as_ref(), &row.data) != hash {
            return Err(Break::Altered { seq });
        }
        match (self.last, prev) {
            // The chain begins with an event that follows nothing.
            (None, None) => self.chain_from = Some(seq),
            (Some((_, last)), Some(prev)) if prev == last => {}
            _ => return Err(Break::Missing { seq, after }),
        }
        self.last = Some((seq, hash));
        self.checked += 1;
        Ok(())
    }

    /// The last event checked: its position and hash.
    pub fn head(&self) -> Option<(i64, Hash)> {
        self.last
    }

    /// A verifier that goes on from an event already checked (a checkpoint's).
    pub fn resume(seq: i64, hash: Hash) -> Verifier {
        Verifier {
            last: Some((seq, hash)),
            last_seq: seq,
            chain_from: None,
            checked: 0,
        }
    }
}

/// Walks the log of `store` in position order through `v` from after position `after`
/// (0: from the start, with a new verifier), calling `each` on every row: the verifier as
/// far as it got, and the first break if there is one.
pub async fn walk_from<S: crate::Store>(
    store: &S,
    mut v: Verifier,
    mut after: i64,
    mut each: impl FnMut(&ChainRow),
) -> crate::Result<(Verifier, Option<Break>)> {
    loop {
        let rows = store.chain_rows(after, 10_000).await?;
        let Some(last) = rows.last() else {
            return Ok((v, None));
        };
        after = last.seq;
        for row in &rows {
            each(row);
            if let Err(b) = v.feed(row) {
                return Ok((v, Some(b)));
            }
        }
    }
}

/// Walks the whole log: the verifier at the end, or the first break.
pub async fn walk<S: crate::Store>(
    store: &S,
    each: impl FnMut(&ChainRow),
) -> crate::Result<Result<Verifier, Break>> {
    let (v, broken) = walk_from(store, Verifier::default(), 0, each).await?;
    Ok(match broken {
        None => Ok(v),
        Some(b) => Err(b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<ChainRow> {
        let mut prev: Option<Hash> = None;
        (1..=n)
            .map(|seq| {
                let data = format!("{{\"n\":{seq}}}");
                let hash = link(seq, prev.as_ref(), &data);
                let row = ChainRow {
                    seq,
                    prev: prev.map(|p| p.to_vec()),
                    hash: Some(hash.to_vec()),
                    data,
                };
                prev = Some(hash);
                row
            })
            .collect()
    }

    fn verify(rows: &[ChainRow]) -> Result<Verifier, Break> {
        let mut v = Verifier::default();
        for r in rows {
            v.feed(r)?;
        }
        Ok(v)
    }

    #[test]
    fn each_kind_of_tampering_is_named_by_its_position() {
        let rows = chain(6);
        assert_eq!(verify(&rows).unwrap().checked, 6);
        let mut edited = rows.clone();
        edited[2].data = "{\"n\":99}".into();
        assert_eq!(verify(&edited).unwrap_err(), Break::Altered { seq: 3 });
        let mut removed = rows.clone();
        removed.remove(3);
        assert_eq!(
            verify(&removed).unwrap_err(),
            Break::Missing { seq: 5, after: 3 }
        );
        let mut first_removed = rows.clone();
        first_removed.remove(0);
        assert_eq!(
            verify(&first_removed).unwrap_err(),
            Break::Missing { seq: 2, after: 0 }
        );
        // Swapping two events (their positions stay): both no longer match their place.
        let mut swapped = rows.clone();
        let (a, b) = (swapped[1].data.clone(), swapped[2].data.clone());
        swapped[1].data = b;
        swapped[2].data = a;
        assert_eq!(verify(&swapped).unwrap_err(), Break::Altered { seq: 2 });
        let mut unchained = rows.clone();
        unchained[4].hash = None;
        assert_eq!(verify(&unchained).unwrap_err(), Break::Unchained { seq: 5 });
        // Events from before the chain are read and not checked.
        let mut older = vec![ChainRow {
            seq: 1,
            prev: None,
            hash: None,
            data: "{}".into(),
        }];
        older.extend(chain(3).into_iter().map(|mut r| {
            r.seq += 1;
            r
        }));
        // (re-linked for their new positions)
        let mut prev: Option<Hash> = None;
        for r in older.iter_mut().skip(1) {
            let h = link(r.seq, prev.as_ref(), &r.data);
            r.prev = prev.map(|p| p.to_vec());
            r.hash = Some(h.to_vec());
            prev = Some(h);
        }
        let v = verify(&older).unwrap();
        assert_eq!((v.chain_from, v.checked), (Some(2), 3));
    }
}

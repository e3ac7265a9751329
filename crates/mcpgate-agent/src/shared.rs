//! What every session of the agent decides with, compiled once and shared: the policy of
//! each set of roles and traits, the tool pins of each app. A session takes the shared
//! entry while it is current — nothing changed in this process since (the cluster's epoch)
//! and it is younger than the session's own limit — and otherwise reads and compiles anew
//! and shares the result. A thousand sessions of one identity hold one compiled policy, and
//! compile it once a second between them, not once each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries kept at most; past that the cache starts over (each entry is rebuilt on use).
const MAX_ENTRIES: usize = 4_096;

/// A shared value: the epoch and time it was read at, and the value.
type Entry<T> = (u64, Instant, Arc<T>);

/// Shared values by key.
pub(crate) struct Shared<T> {
    entries: Mutex<HashMap<String, Entry<T>>>,
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Shared {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Shared<T> {
    /// The value under `key`, and when it was made, if it was made at `epoch` less than
    /// `max_age` ago.
    pub(crate) fn current(
        &self,
        key: &str,
        epoch: u64,
        max_age: Duration,
    ) -> Option<(Arc<T>, Instant)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(e, at, _)| *e == epoch && at.elapsed() < max_age)
            .map(|(_, at, v)| (v.clone(), *at))
    }

    /// The current value under `key` and when it was read; else `read` reads it now, and
    /// it is shared.
    pub(crate) async fn get_or_read<F, Fut>(
        &self,
        key: &str,
        epoch: u64,
        max_age: Duration,
        read: F,
    ) -> Result<(Arc<T>, Instant), String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        if let Some(current) = self.current(key, epoch, max_age) {
            return Ok(current);
        }
        let at = Instant::now();
        let value = Arc::new(read().await?);
        self.put(key, epoch, at, value.clone());
        Ok((value, at))
    }

    /// Shares `value`, read at `epoch` and time `at` (unless a newer epoch's value is there
    /// already).
    pub(crate) fn put(&self, key: &str, epoch: u64, at: Instant, value: Arc<T>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(key).is_some_and(|(e, _, _)| *e > epoch) {
            return;
        }
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(key) {
            entries.clear();
        }
        entries.insert(key.to_string(), (epoch, at, value));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on failure by design
    use super::*;

    #[test]
    fn an_entry_is_current_only_at_its_epoch_and_age() {
        let s: Shared<u32> = Shared::default();
        let age = Duration::from_secs(60);
        assert!(s.current("k", 1, age).is_none());
        s.put("k", 1, Instant::now(), Arc::new(7));
        assert_eq!(*s.current("k", 1, age).unwrap().0, 7);
        assert!(s.current("k", 2, age).is_none(), "a newer epoch misses");
        assert!(
            s.current("k", 1, Duration::ZERO).is_none(),
            "too old misses"
        );
        s.put("k", 0, Instant::now(), Arc::new(8));
        assert_eq!(
            *s.current("k", 1, age).unwrap().0,
            7,
            "an older epoch never replaces"
        );
        s.put("k", 2, Instant::now(), Arc::new(9));
        assert_eq!(*s.current("k", 2, age).unwrap().0, 9);
    }

    #[test]
    fn the_cache_is_bounded() {
        let s: Shared<usize> = Shared::default();
        for i in 0..MAX_ENTRIES + 10 {
            s.put(&i.to_string(), 1, Instant::now(), Arc::new(i));
        }
        assert!(s.entries.lock().unwrap().len() <= MAX_ENTRIES);
        let last = (MAX_ENTRIES + 9).to_string();
        assert!(s.current(&last, 1, Duration::from_secs(60)).is_some());
    }
}

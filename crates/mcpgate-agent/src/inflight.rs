//! Concurrency limits (`mcp_limits.concurrent_calls`): calls waiting for their answers, per
//! identity (and app, and tool), counted in this agent. A [`Permit`] is held while its call
//! is pending and released when dropped, so no path that ends a call can leak one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The calls in flight, by what they are counted against.
#[derive(Debug, Default, Clone)]
pub struct InFlight(Arc<Mutex<HashMap<String, u32>>>);

/// One call counted; dropping it releases it.
#[derive(Debug)]
pub struct Permit {
    counts: InFlight,
    key: String,
}

impl InFlight {
    /// Counts a call against `key` if fewer than `limit` are in flight.
    pub fn acquire(&self, key: String, limit: u32) -> Option<Permit> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Permit {
            counts: self.clone(),
            key,
        })
    }

    /// Calls in flight against `key`.
    pub fn count(&self, key: &str) -> u32 {
        let counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_and_release() {
        let f = InFlight::default();
        let a = f.acquire("u".into(), 2).unwrap();
        let b = f.acquire("u".into(), 2).unwrap();
        assert!(f.acquire("u".into(), 2).is_none());
        assert!(f.acquire("v".into(), 2).is_some(), "keys are apart");
        drop(a);
        let c = f.acquire("u".into(), 2).unwrap();
        drop((b, c));
        assert_eq!(f.count("u"), 0);
        assert!(f.acquire("z".into(), 0).is_none());
        assert_eq!(f.count("z"), 0);
    }
}

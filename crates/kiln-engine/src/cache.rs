//! [`TtlCache`]: the small expiring map behind the engine's caches of verified credentials
//! and compiled project profiles.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A small map whose entries expire after `ttl`; cleared whole when it reaches `max` entries.
pub(crate) struct TtlCache<V> {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    pub(crate) fn new(ttl: Duration, max: usize) -> TtlCache<V> {
        TtlCache { ttl, max, entries: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, v)| v.clone())
    }

    pub(crate) fn put(&self, key: String, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }

    /// Keeps only the entries whose key `keep` accepts.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| keep(k));
    }

    pub(crate) fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

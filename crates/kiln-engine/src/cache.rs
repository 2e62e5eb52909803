//! [`TtlCache`]: the small expiring map behind the engine's caches (verified credentials,
//! compiled project profiles, search parameter registries, resolved accesses).

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
        self.get_within(key, self.ttl)
    }

    /// The entry of `key` if it was put less than `ttl` ago (a lifetime that is a setting,
    /// which may change while the cache lives).
    pub(crate) fn get_within(&self, key: &str, ttl: Duration) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(at, _)| at.elapsed() < ttl).map(|(_, v)| v.clone())
    }

    pub(crate) fn put(&self, key: String, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }

    pub(crate) fn remove(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Keeps only the entries whose key `keep` accepts.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| keep(k));
    }

    pub(crate) fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_are_removed_and_the_size_is_bounded() {
        let cache = TtlCache::new(Duration::from_millis(50), 3);
        cache.put("a".into(), 1);
        cache.put("b".into(), 2);
        assert_eq!(cache.get("a"), Some(1));
        // A lifetime given on the read wins over the cache's own.
        assert_eq!(cache.get_within("a", Duration::ZERO), None);
        assert_eq!(cache.get_within("a", Duration::from_secs(60)), Some(1));
        cache.remove("a");
        assert_eq!(cache.get("a"), None);
        cache.retain(|k| k != "b");
        assert_eq!(cache.get("b"), None);
        for (i, k) in ["c", "d", "e"].into_iter().enumerate() {
            cache.put(k.into(), i);
        }
        // Full at three: the fourth starts the map again.
        cache.put("f".into(), 9);
        assert_eq!((cache.get("c"), cache.get("f")), (None, Some(9)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get("f"), None, "expired");
    }
}

//! In-memory login throttling: per-key failure counting with exponential
//! back-off.
//!
//! Keys are whatever the caller wants to rate-limit independently, typically
//! both `email:<normalized address>` and `ip:<client address>`; check every
//! key before attempting a login and record the outcome on all of them.
//!
//! After `free_failures` failures inside `window`, each further failure
//! locks the key for `base_delay * 2^(failures - free_failures)`, capped at
//! `max_delay`. A success clears the key; a key with no failure for a whole
//! `window` is forgotten. The table is bounded: when full, stale entries are
//! purged and then the least recently failed entry is evicted.
//!
//! Every method has an `_at` variant taking the current [`Instant`] so tests
//! (and callers with their own clock) are deterministic.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tuning for [`LoginThrottle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures tolerated within `window` before any delay applies.
    pub free_failures: u32,
    /// A key whose last failure is older than this is reset.
    pub window: Duration,
    /// Delay imposed by the first failure past `free_failures`.
    pub base_delay: Duration,
    /// Upper bound of the delay.
    pub max_delay: Duration,
    /// Maximum number of keys tracked at once.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 5,
            window: Duration::from_secs(15 * 60),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
}

/// Thread-safe failure tracker; share it behind an `Arc`.
#[derive(Debug)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle::new(ThrottleConfig::default())
    }
}

impl LoginThrottle {
    /// Creates an empty throttle.
    pub fn new(config: ThrottleConfig) -> LoginThrottle {
        LoginThrottle { config, entries: Mutex::new(HashMap::new()) }
    }

    /// The configuration in use.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // The map holds plain counters; a panic elsewhere cannot leave it
        // logically inconsistent, so recover from poisoning.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_stale(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_failure) >= self.config.window
    }

    fn delay_for_count(&self, failures: u32) -> Duration {
        if failures <= self.config.free_failures {
            return Duration::ZERO;
        }
        let exponent = (failures - self.config.free_failures - 1).min(31);
        self.config
            .base_delay
            .checked_mul(1u32 << exponent)
            .unwrap_or(Duration::MAX)
            .min(self.config.max_delay)
    }

    /// Records a failed attempt for `key`.
    pub fn record_failure(&self, key: &str) {
        self.record_failure_at(key, Instant::now());
    }

    /// [`LoginThrottle::record_failure`] at `now`.
    pub fn record_failure_at(&self, key: &str, now: Instant) {
        let mut map = self.lock();
        if let Some(entry) = map.get_mut(key) {
            if self.is_stale(entry, now) {
                entry.failures = 0;
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            return;
        }
        if self.config.max_entries == 0 {
            return;
        }
        if map.len() >= self.config.max_entries {
            map.retain(|_, e| !self.is_stale(e, now));
        }
        if map.len() >= self.config.max_entries
            && let Some(oldest) =
                map.iter().min_by_key(|(_, e)| e.last_failure).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(key.to_owned(), Entry { failures: 1, last_failure: now });
    }

    /// Records a successful login: forgets all failures of `key`.
    pub fn record_success(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Number of failures currently counted for `key`.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures_at(key, Instant::now())
    }

    /// [`LoginThrottle::failures`] at `now`.
    pub fn failures_at(&self, key: &str, now: Instant) -> u32 {
        match self.lock().get(key) {
            Some(e) if !self.is_stale(e, now) => e.failures,
            _ => 0,
        }
    }

    /// The back-off `key` has earned: zero while within `free_failures`,
    /// then doubling per failure up to `max_delay`. The key is locked for
    /// this long after its most recent failure.
    pub fn delay_for(&self, key: &str) -> Duration {
        self.delay_for_at(key, Instant::now())
    }

    /// [`LoginThrottle::delay_for`] at `now`.
    pub fn delay_for_at(&self, key: &str, now: Instant) -> Duration {
        self.delay_for_count(self.failures_at(key, now))
    }

    /// How long until `key` may try again, or `None` if it may try now.
    /// Suitable for a `Retry-After` header (round up to whole seconds).
    pub fn retry_after(&self, key: &str) -> Option<Duration> {
        self.retry_after_at(key, Instant::now())
    }

    /// [`LoginThrottle::retry_after`] at `now`.
    pub fn retry_after_at(&self, key: &str, now: Instant) -> Option<Duration> {
        let entry = match self.lock().get(key) {
            Some(e) if !self.is_stale(e, now) => *e,
            _ => return None,
        };
        let unlock = entry.last_failure.checked_add(self.delay_for_count(entry.failures))?;
        let remaining = unlock.saturating_duration_since(now);
        (!remaining.is_zero()).then_some(remaining)
    }

    /// Whether attempts for `key` must currently be refused.
    pub fn is_locked(&self, key: &str) -> bool {
        self.is_locked_at(key, Instant::now())
    }

    /// [`LoginThrottle::is_locked`] at `now`.
    pub fn is_locked_at(&self, key: &str, now: Instant) -> bool {
        self.retry_after_at(key, now).is_some()
    }

    /// Drops every entry that has aged out; call occasionally to free
    /// memory (entries are also purged lazily when the table fills).
    pub fn purge_stale(&self) {
        self.purge_stale_at(Instant::now());
    }

    /// [`LoginThrottle::purge_stale`] at `now`.
    pub fn purge_stale_at(&self, now: Instant) {
        self.lock().retain(|_, e| !self.is_stale(e, now));
    }

    /// Number of keys currently tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn fail_n(t: &LoginThrottle, key: &str, n: u32, now: Instant) {
        for _ in 0..n {
            t.record_failure_at(key, now);
        }
    }

    #[test]
    fn free_failures_do_not_lock() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        fail_n(&t, "a", 5, now);
        assert_eq!(t.failures_at("a", now), 5);
        assert_eq!(t.delay_for_at("a", now), Duration::ZERO);
        assert!(!t.is_locked_at("a", now));
    }

    #[test]
    fn delay_grows_exponentially_and_caps() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        fail_n(&t, "a", 5, now);
        let expected = [1, 2, 4, 8, 16, 30, 30, 30];
        for secs in expected {
            t.record_failure_at("a", now);
            assert_eq!(t.delay_for_at("a", now), S * secs);
        }
        // Huge counts neither overflow nor exceed the cap.
        fail_n(&t, "a", 100, now);
        assert_eq!(t.delay_for_at("a", now), S * 30);
    }

    #[test]
    fn lock_expires_after_delay() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        fail_n(&t, "a", 7, t0); // two past the free ones: 2 s
        assert!(t.is_locked_at("a", t0));
        assert_eq!(t.retry_after_at("a", t0), Some(S * 2));
        assert_eq!(t.retry_after_at("a", t0 + S), Some(S));
        assert!(!t.is_locked_at("a", t0 + S * 2));
        // Failures still count until the window passes.
        assert_eq!(t.failures_at("a", t0 + S * 2), 7);
    }

    #[test]
    fn window_resets_count() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        fail_n(&t, "a", 8, t0);
        let later = t0 + t.config().window;
        assert_eq!(t.failures_at("a", later), 0);
        assert!(!t.is_locked_at("a", later));
        t.record_failure_at("a", later);
        assert_eq!(t.failures_at("a", later), 1);
    }

    #[test]
    fn success_clears_only_that_key() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        fail_n(&t, "email:a@example.org", 9, now);
        fail_n(&t, "ip:10.0.0.1", 9, now);
        t.record_success("email:a@example.org");
        assert_eq!(t.failures_at("email:a@example.org", now), 0);
        assert!(!t.is_locked_at("email:a@example.org", now));
        assert!(t.is_locked_at("ip:10.0.0.1", now));
    }

    #[test]
    fn table_is_bounded() {
        let config = ThrottleConfig { max_entries: 3, ..ThrottleConfig::default() };
        let t = LoginThrottle::new(config);
        let t0 = Instant::now();
        t.record_failure_at("k0", t0);
        t.record_failure_at("k1", t0 + S);
        t.record_failure_at("k2", t0 + S * 2);
        t.record_failure_at("k3", t0 + S * 3);
        assert_eq!(t.len(), 3);
        // The least recently failed key was evicted.
        assert_eq!(t.failures_at("k0", t0 + S * 3), 0);
        assert_eq!(t.failures_at("k3", t0 + S * 3), 1);
        // Stale entries are purged first, keeping fresher ones.
        let late = t0 + config.window + S * 2;
        t.record_failure_at("k4", late);
        assert_eq!(t.len(), 2);
        assert_eq!(t.failures_at("k3", late), 1);
    }

    #[test]
    fn purge_removes_stale_entries() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        t.record_failure_at("a", t0);
        t.record_failure_at("b", t0 + S * 10);
        t.purge_stale_at(t0 + t.config().window + S);
        assert_eq!(t.len(), 1);
        t.purge_stale_at(t0 + t.config().window + S * 10);
        assert!(t.is_empty());
    }

    #[test]
    fn custom_thresholds() {
        let config = ThrottleConfig {
            free_failures: 0,
            base_delay: Duration::from_millis(500),
            max_delay: S * 5,
            ..ThrottleConfig::default()
        };
        let t = LoginThrottle::new(config);
        let now = Instant::now();
        t.record_failure_at("a", now);
        assert_eq!(t.delay_for_at("a", now), Duration::from_millis(500));
        fail_n(&t, "a", 10, now);
        assert_eq!(t.delay_for_at("a", now), S * 5);
    }
}

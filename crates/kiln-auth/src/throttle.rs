//! Login throttling policy: how long to wait before the next attempt of a key (an email, a
//! client address) after so many failures.
//!
//! The counting itself is shared by every node (the engine counts failures with the store's
//! or Redis's event counters, which forget a key after `window` without a failure); this
//! module only says what a count means. After `free_failures` failures, each further failure
//! makes the key wait `base_delay * 2^(failures - free_failures - 1)`, capped at `max_delay`.

use std::time::Duration;

/// Tuning for login throttling.
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
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 5,
            window: Duration::from_secs(15 * 60),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl ThrottleConfig {
    /// The wait a key has earned with `failures` failures in its window: zero while within
    /// `free_failures`, then doubling per failure up to `max_delay`.
    pub fn delay_after(&self, failures: u64) -> Duration {
        let free = u64::from(self.free_failures);
        if failures <= free {
            return Duration::ZERO;
        }
        let exponent = u32::try_from(failures - free - 1).unwrap_or(u32::MAX).min(31);
        self.base_delay.checked_mul(1u32 << exponent).unwrap_or(Duration::MAX).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn free_failures_do_not_delay() {
        let t = ThrottleConfig::default();
        for n in 0..=5 {
            assert_eq!(t.delay_after(n), Duration::ZERO);
        }
    }

    #[test]
    fn delay_grows_exponentially_and_caps() {
        let t = ThrottleConfig::default();
        let expected = [1, 2, 4, 8, 16, 30, 30, 30];
        for (i, secs) in expected.into_iter().enumerate() {
            assert_eq!(t.delay_after(6 + i as u64), S * secs);
        }
        // Huge counts neither overflow nor exceed the cap.
        assert_eq!(t.delay_after(10_000), S * 30);
        assert_eq!(t.delay_after(u64::MAX), S * 30);
    }

    #[test]
    fn custom_thresholds() {
        let t = ThrottleConfig {
            free_failures: 0,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
            ..ThrottleConfig::default()
        };
        assert_eq!(t.delay_after(0), Duration::ZERO);
        assert_eq!(t.delay_after(1), Duration::from_millis(100));
        assert_eq!(t.delay_after(2), Duration::from_millis(200));
        assert_eq!(t.delay_after(3), Duration::from_millis(250));
    }
}

//! [`RetryPolicy`]: which failures are retried, and how long the client waits in between.

use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};

/// How the client retries a request that failed in a way that may pass.
///
/// A request is sent again, at most `max_retries` times, when:
///
/// * the server answered **429 Too Many Requests**: it refused the request without processing
///   it, so any method is retried, `POST` and `PATCH` included;
/// * the server answered **502, 503 or 504**, and the method is idempotent (`GET`, `HEAD`,
///   `PUT`, `DELETE`, `OPTIONS`): the request may or may not have been processed, so a
///   `POST` (create, search by POST, a transaction…) or a `PATCH` is *not* retried;
/// * the connection could not be established (the request never left the client), for any
///   method; other network errors (a reset mid-answer, a timeout) only for idempotent methods.
///
/// The wait before retry *n* (counting from 0) is the server's `Retry-After` when it sent one
/// (in seconds or as an HTTP date), else `initial_backoff × 2ⁿ` capped at `max_backoff`, with
/// jitter (a random value between half and all of it). When `Retry-After` asks for longer than
/// `max_backoff`, the client does not come back early: it stops and returns the error.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// How many times a request may be sent again after its first attempt (0: never retry).
    pub max_retries: u32,
    /// The base of the exponential backoff.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts; a longer `Retry-After` ends the retries.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three retries, starting at 250 ms, waiting at most 30 s.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> RetryPolicy {
        RetryPolicy { max_retries: 0, ..RetryPolicy::default() }
    }

    /// Whether an answer with `status` to a `method` request may be retried.
    pub(crate) fn retries_status(method: &Method, status: StatusCode) -> bool {
        match status.as_u16() {
            429 => true,
            502..=504 => is_idempotent(method),
            _ => false,
        }
    }

    /// Whether a network error on a `method` request may be retried.
    pub(crate) fn retries_error(method: &Method, error: &reqwest::Error) -> bool {
        error.is_connect() || (is_idempotent(method) && (error.is_timeout() || error.is_request()))
    }

    /// The wait before retry `attempt` (0-based), given the answer's `Retry-After`; `None`
    /// when the server asks for a longer wait than `max_backoff` (the client then gives up
    /// rather than come back early).
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<&str>) -> Option<Duration> {
        match retry_after.and_then(parse_retry_after) {
            Some(wait) if wait > self.max_backoff => None,
            Some(wait) => Some(wait),
            None => Some(self.backoff(attempt)),
        }
    }

    /// The exponential backoff before retry `attempt` (0-based), with jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.initial_backoff.saturating_mul(2u32.saturating_pow(attempt));
        let exp = exp.min(self.max_backoff);
        // Jitter: between half and all of the exponential delay.
        let fraction = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        exp / 2 + (exp / 2) * fraction / 1000
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS)
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let wait = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120), "{wait:?}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let policy = RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let d0 = policy.delay(0, None).unwrap();
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100), "{d0:?}");
        let d2 = policy.delay(2, None).unwrap();
        assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400), "{d2:?}");
        assert!(policy.delay(10, None).unwrap() <= Duration::from_secs(1));
        assert_eq!(policy.delay(0, Some("60")), None, "not back before the server asked");
        assert_eq!(policy.delay(0, Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay(3, Some("0")), Some(Duration::ZERO));
    }

    #[test]
    fn only_safe_requests_are_retried_after_a_gateway_error() {
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        assert!(RetryPolicy::retries_status(&Method::GET, unavailable));
        assert!(RetryPolicy::retries_status(&Method::PUT, unavailable));
        assert!(!RetryPolicy::retries_status(&Method::POST, unavailable));
        assert!(!RetryPolicy::retries_status(&Method::PATCH, unavailable));
        assert!(RetryPolicy::retries_status(&Method::POST, StatusCode::TOO_MANY_REQUESTS));
        assert!(!RetryPolicy::retries_status(&Method::GET, StatusCode::INTERNAL_SERVER_ERROR));
    }
}

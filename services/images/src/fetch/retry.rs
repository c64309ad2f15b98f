//! Retrying transient fetch failures: [`RetryPolicy`] (bounded exponential backoff with jitter)
//! and [`ImageFetcher::fetch_with_retry`], which reports how many attempts were made.

use std::time::Duration;

use rand::RngExt;
use serde::Deserialize;

use super::config::deserialize_duration;
use super::error::FetchError;
use super::fetcher::{FetchedImage, ImageFetcher};

/// How often and how patiently to retry a transient failure.
///
/// The delay after attempt `n` (1-based) is `initial_backoff × 2^(n-1)`, capped at `max_backoff`,
/// then scaled by a random factor in `[1 - jitter, 1 + jitter]` and capped again.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use images::RetryPolicy;
///
/// let policy = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
/// assert_eq!(policy.backoff(1), Duration::from_millis(200));
/// assert_eq!(policy.backoff(2), Duration::from_millis(400));
/// assert_eq!(policy.backoff(30), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1. Default 4.
    pub max_attempts: u32,
    /// Delay after the first failed attempt. Default 200 ms.
    #[serde(deserialize_with = "deserialize_duration")]
    pub initial_backoff: Duration,
    /// Largest delay between two attempts. Default 5 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub max_backoff: Duration,
    /// Relative random spread of each delay, 0.0 (none) to 1.0. Default 0.2.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The delay to wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return base;
        }
        let factor = rand::rng().random_range((1.0 - jitter)..=(1.0 + jitter));
        base.mul_f64(factor).min(self.max_backoff)
    }
}

/// A successful [`ImageFetcher::fetch_with_retry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The image.
    pub image: FetchedImage,
    /// Attempts made, the successful one included.
    pub attempts: u32,
}

/// A failed [`ImageFetcher::fetch_with_retry`]: the last error and how many attempts were made.
///
/// Its `Display` is the reason a product's status shows, e.g. `timed out after 3 attempts` or
/// `not found (HTTP 404)`.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.reason())]
pub struct FetchFailure {
    /// The error of the last attempt.
    #[source]
    pub error: FetchError,
    /// Attempts made.
    pub attempts: u32,
}

impl FetchFailure {
    /// The human-readable reason, with the attempt count when there was more than one.
    pub fn reason(&self) -> String {
        let n = self.attempts;
        let plural = if n == 1 { "attempt" } else { "attempts" };
        match &self.error {
            FetchError::Timeout { .. } => format!("timed out after {n} {plural}"),
            error if n > 1 => format!("{error} (after {n} {plural})"),
            error => error.to_string(),
        }
    }

    /// The machine reason code of the last error (see [`FetchError::code`]).
    pub fn code(&self) -> &'static str {
        self.error.code()
    }
}

impl ImageFetcher {
    /// Fetches `url`, retrying transient failures (5xx, 408, 429, timeouts, connection errors)
    /// under `policy`; permanent failures are returned at once.
    pub async fn fetch_with_retry(
        &self,
        url: &str,
        policy: &RetryPolicy,
    ) -> Result<Fetched, FetchFailure> {
        let max_attempts = policy.max_attempts.max(1);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.fetch(url).await {
                Ok(image) => return Ok(Fetched { image, attempts }),
                Err(error) if error.is_transient() && attempts < max_attempts => {
                    let delay = policy.backoff(attempts);
                    tracing::debug!(url, attempts, ?delay, %error, "transient image fetch failure, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(FetchFailure { error, attempts }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_exponential_bounded_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            jitter: 0.5,
        };
        for attempt in 1..=40 {
            let delay = policy.backoff(attempt);
            let base = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(31))
                .min(Duration::from_secs(1));
            assert!(delay >= base.mul_f64(0.5) && delay <= Duration::from_secs(1));
        }
        let distinct: std::collections::HashSet<Duration> =
            (0..20).map(|_| policy.backoff(3)).collect();
        assert!(distinct.len() > 1, "jitter makes delays differ");
    }

    #[test]
    fn failure_reasons() {
        let timeout = FetchFailure {
            error: FetchError::Timeout {
                after: Duration::from_secs(30),
            },
            attempts: 3,
        };
        assert_eq!(timeout.to_string(), "timed out after 3 attempts");
        assert_eq!(timeout.code(), "timeout");
        let not_found = FetchFailure {
            error: FetchError::NotFound { status: 404 },
            attempts: 1,
        };
        assert_eq!(not_found.to_string(), "not found (HTTP 404)");
        let policy: RetryPolicy =
            serde_json::from_str(r#"{"max_attempts": 2, "initial_backoff": "10ms"}"#)
                .expect("policy");
        assert_eq!(policy.initial_backoff, Duration::from_millis(10));
    }
}

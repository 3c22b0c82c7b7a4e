//! Opening a connection to a backing server (ZooKeeper, etcd, Redis, PostgreSQL), retried
//! with jittered exponential backoff until a **connect deadline**, then reported with an
//! error that names the backend, the address and the deadline.
//!
//! Why: a server that is still starting, briefly overloaded, or restarting answers the
//! first attempt late or not at all; one attempt with a sub-second timeout turns that into
//! a hard failure on a busy host. The deadline is process-wide: [`deadline`] is
//! [`DEFAULT_DEADLINE`] unless the embedding program called [`set_deadline`] (the
//! `mainstay` binary does, from `[server] connect_timeout` / `MAINSTAY_CONNECT_TIMEOUT`).
//!
//! Only failures that retrying can cure are retried (the caller classifies them); a wrong
//! password or a malformed address fails at once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The connect deadline when none was set: 10 s.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// First pause between attempts; doubles up to [`MAX_PAUSE`], each jittered to 50–100%.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Milliseconds; 0 means "not set".
static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);

/// Sets the process-wide connect deadline (at least 1 ms).
pub fn set_deadline(deadline: Duration) {
    DEADLINE_MS.store(
        (deadline.as_millis() as u64).clamp(1, u64::MAX),
        Ordering::Relaxed,
    );
}

/// The process-wide connect deadline. Default: [`DEFAULT_DEADLINE`].
pub fn deadline() -> Duration {
    match DEADLINE_MS.load(Ordering::Relaxed) {
        0 => DEFAULT_DEADLINE,
        ms => Duration::from_millis(ms),
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError<E> {
    /// A failure retrying cannot cure (authentication, a malformed address).
    #[error("{backend} at {address}: {error}")]
    Refused {
        /// The backend kind (`zookeeper`, `etcd`, `redis`, `postgres`).
        backend: &'static str,
        /// The address that was tried.
        address: String,
        /// What the server or client library said.
        error: E,
    },
    /// Every attempt failed until the deadline passed.
    #[error("{backend} at {address}: not reachable within the connect deadline of {deadline:?} ({attempts} attempts); last error: {last}")]
    Deadline {
        /// The backend kind.
        backend: &'static str,
        /// The address that was tried.
        address: String,
        /// The deadline that passed.
        deadline: Duration,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's failure, as text.
        last: String,
        /// The last attempt's error, unless that attempt was cut off without one.
        last_error: Option<E>,
    },
}

/// Runs `attempt` until it succeeds, fails with an error `retryable` rejects, or
/// [`deadline`] passes. Each attempt is given the time left and is cut off when it runs out.
pub async fn with_retry<T, E, F, Fut>(
    backend: &'static str,
    address: &str,
    retryable: impl Fn(&E) -> bool,
    attempt: F,
) -> Result<T, ConnectError<E>>
where
    E: std::fmt::Display,
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    with_retry_until(backend, address, deadline(), retryable, attempt).await
}

/// [`with_retry`] with an explicit deadline.
pub async fn with_retry_until<T, E, F, Fut>(
    backend: &'static str,
    address: &str,
    deadline: Duration,
    retryable: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, ConnectError<E>>
where
    E: std::fmt::Display,
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(deadline);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = backoff.left();
        let (last, last_error) = match tokio::time::timeout(left, attempt(left)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if !retryable(&error) => {
                return Err(ConnectError::Refused {
                    backend,
                    address: address.to_string(),
                    error,
                })
            }
            Ok(Err(error)) => (error.to_string(), Some(error)),
            Err(_) => (format!("no answer within the {left:?} left"), None),
        };
        if !backoff.pause().await {
            return Err(ConnectError::Deadline {
                backend,
                address: address.to_string(),
                deadline,
                attempts,
                last,
                last_error,
            });
        }
    }
}

/// The pauses between connection attempts: jittered, doubling from 50 ms to 1 s, never
/// past the deadline. For loops that cannot use [`with_retry`] (a callback that must
/// return the client library's own error type).
#[derive(Debug)]
pub struct Backoff {
    end: Instant,
    pause: Duration,
}

impl Backoff {
    /// Pauses that end `deadline` from now.
    pub fn new(deadline: Duration) -> Self {
        Backoff {
            end: Instant::now() + deadline,
            pause: FIRST_PAUSE,
        }
    }

    /// Time left before the deadline.
    pub fn left(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    /// Sleeps before the next attempt; `false` (at once) when the deadline has passed.
    pub async fn pause(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.end {
            return false;
        }
        let jittered = self.pause.mul_f64(0.5 + 0.5 * unit_random());
        tokio::time::sleep_until((now + jittered).min(self.end)).await;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        true
    }
}

/// `url` with any password replaced by `***`, fit for an error message.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// A number in [0, 1): retries from many clients after one server restart spread out.
fn unit_random() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("redis://app:pw@h:1"), "redis://app:***@h:1");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact("h:1"), "h:1");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_an_attempt_succeeds() {
        let calls = AtomicU32::new(0);
        let got = with_retry_until(
            "redis",
            "127.0.0.1:1",
            Duration::from_secs(10),
            |_: &String| true,
            |_| async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=3 => Err("connection refused".to_string()),
                    n => Ok(n),
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(got, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_naming_backend_address_and_deadline() {
        let start = Instant::now();
        let err = with_retry_until(
            "zookeeper",
            "127.0.0.1:2181",
            Duration::from_secs(3),
            |_: &String| true,
            |_| async { Err::<(), _>("connection refused".to_string()) },
        )
        .await
        .unwrap_err();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(3), "{waited:?}");
        assert!(waited < Duration::from_millis(3100), "{waited:?}");
        let text = err.to_string();
        for part in ["zookeeper", "127.0.0.1:2181", "3s", "connection refused"] {
            assert!(text.contains(part), "{text:?} lacks {part:?}");
        }
        assert!(matches!(err, ConnectError::Deadline { attempts, .. } if attempts > 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_is_cut_off_at_the_deadline() {
        let err = with_retry_until(
            "etcd",
            "127.0.0.1:2379",
            Duration::from_secs(2),
            |_: &String| true,
            |_| std::future::pending::<Result<(), String>>(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_retrying_cannot_cure_is_not_retried() {
        let calls = AtomicU32::new(0);
        let err = with_retry_until(
            "postgres",
            "db:5432",
            Duration::from_secs(10),
            |e: &String| !e.contains("password"),
            |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("password authentication failed".to_string())
            },
        )
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
    }
}

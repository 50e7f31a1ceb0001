//! Wall-clock time and waiting, the two helpers almost every test needs.
//!
//! [`now_ms`] is the event-time clock tests stamp events and rows with; [`eventually`] is the
//! one "poll until true" loop, and [`wait_for`] the same loop for tests that fail at once
//! when the condition never holds. Waits that must show what differed (an oracle diff:
//! [`crate::chat::Collector::wait_for`], [`crate::pipeline::wait_for_hbase`]) keep their own
//! loops, since their panic message needs the last value polled.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a condition is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Milliseconds since the Unix epoch (event time, `sent_at`, `ingested_at_ms`).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_millis() as i64
}

/// Polls `f` every 100 ms until it holds (`true`) or `timeout` has passed (`false`); `f` is
/// polled at least once, and once more after the deadline.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`eventually`], panicking with `what` when `f` has not held within `timeout`.
pub async fn wait_for(timeout: Duration, what: &str, f: impl AsyncFnMut() -> bool) {
    assert!(eventually(timeout, f).await, "timed out after {timeout:?} waiting for {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_ms_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }

    #[tokio::test]
    async fn eventually_polls_until_the_condition_holds() {
        let mut calls = 0;
        assert!(
            eventually(Duration::from_secs(5), async || {
                calls += 1;
                calls == 3
            })
            .await
        );
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn eventually_gives_up_after_the_timeout() {
        assert!(!eventually(Duration::from_millis(50), async || false).await);
    }
}

//! The one retry backoff: exponential from an initial delay, capped, with jitter in [½, 1]
//! of each step so that many partitions or pods retrying the same failure do not retry in
//! lockstep.
//!
//! [`delay`] is the delay before retry number `attempt`; [`Backoff`] keeps the attempt count
//! for a retry loop (`next` after a failure, `reset` after a success).

use std::time::Duration;

use rand::Rng;

/// The delay before retry number `attempt` (1-based; 0 counts as 1): `initial × 2^(attempt−1)`
/// capped at `max`, then a random point in the upper half of that step.
pub fn delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let step = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    let half = step / 2;
    half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

/// The attempts of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A loop whose first retry waits about `initial` and no retry more than `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, attempt: 0 }
    }

    /// The delay before the next retry (each call counts one more attempt).
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        delay(self.initial, self.max, self.attempt)
    }

    /// After a success: the next failure waits about `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_with_jitter_and_a_cap() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..100 {
            let b1 = delay(i, m, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100), "{b1:?}");
            let b4 = delay(i, m, 4);
            assert!(b4 >= Duration::from_millis(400) && b4 <= Duration::from_millis(800), "{b4:?}");
            let b30 = delay(i, m, 30);
            assert!(b30 >= Duration::from_secs(5) && b30 <= Duration::from_secs(10), "{b30:?}");
        }
    }

    #[test]
    fn a_loop_counts_its_attempts_and_starts_over_after_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let first = b.next_delay();
        b.next_delay();
        let third = b.next_delay();
        assert!(first <= Duration::from_millis(100) && third >= Duration::from_millis(200), "{first:?} {third:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let (i, m) = (Duration::from_millis(1000), Duration::from_secs(10));
        let distinct: std::collections::BTreeSet<Duration> = (0..50).map(|_| delay(i, m, 1)).collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }
}

//! Snowflake message ids: 41 bits of milliseconds since 2020-01-01T00:00:00Z, 10 bits of
//! worker id, 12 bits of sequence; the top bit is always 0, so ids fit an `i64` and
//! `i64::MAX − id` is a valid reversed key.
//!
//! Guarantee: one [`Snowflake`] never returns the same id twice, and ids increase
//! across calls (so per thread too). Distinct workers never collide. When the clock steps
//! back by at most `max_backwards`, the generator waits until it has caught up; further
//! back, it returns [`SnowflakeError::ClockBackwards`] instead of risking a repeat.

use std::sync::Mutex;
use std::time::Duration;

/// 2020-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: i64 = 1_577_836_800_000;
/// Bits of worker id.
pub const WORKER_BITS: u32 = 10;
/// Bits of sequence per millisecond.
pub const SEQUENCE_BITS: u32 = 12;
/// Largest worker id.
pub const MAX_WORKER: u16 = (1 << WORKER_BITS) - 1;
const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;
const MAX_TIME: i64 = (1 << 41) - 1;

/// A source of wall-clock time. Injected so tests can step it.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;
    /// Blocks for about `d`.
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// Why no id was produced.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SnowflakeError {
    /// The clock is further behind the last id's time than the configured bound.
    #[error("clock moved backwards by {behind_ms} ms (more than the {max_ms} ms we wait out)")]
    ClockBackwards {
        /// How far behind.
        behind_ms: i64,
        /// The configured bound.
        max_ms: i64,
    },
    /// The worker id does not fit in 10 bits.
    #[error("worker id {0} is larger than {MAX_WORKER}")]
    BadWorker(u32),
    /// The clock is before 2020 or after the 41-bit range (year 2089).
    #[error("clock reads {0} ms, outside the snowflake epoch range")]
    OutOfRange(i64),
}

impl SnowflakeError {
    /// A clock that went backwards may recover; the others will not.
    pub const fn is_retriable(&self) -> bool {
        matches!(self, SnowflakeError::ClockBackwards { .. })
    }
}

#[derive(Debug)]
struct State {
    last_ms: i64,
    sequence: u64,
}

/// A thread-safe snowflake generator for one worker id.
pub struct Snowflake<C: Clock = SystemClock> {
    worker: u64,
    max_backwards_ms: i64,
    clock: C,
    state: Mutex<State>,
}

impl<C: Clock> std::fmt::Debug for Snowflake<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snowflake").field("worker", &self.worker).finish_non_exhaustive()
    }
}

impl Snowflake<SystemClock> {
    /// A generator on the system clock.
    pub fn new(worker: u32, max_backwards: Duration) -> Result<Self, SnowflakeError> {
        Self::with_clock(worker, max_backwards, SystemClock)
    }
}

impl<C: Clock> Snowflake<C> {
    /// A generator on the given clock.
    pub fn with_clock(worker: u32, max_backwards: Duration, clock: C) -> Result<Self, SnowflakeError> {
        if worker > u32::from(MAX_WORKER) {
            return Err(SnowflakeError::BadWorker(worker));
        }
        Ok(Snowflake {
            worker: u64::from(worker),
            max_backwards_ms: i64::try_from(max_backwards.as_millis()).unwrap_or(i64::MAX),
            clock,
            state: Mutex::new(State { last_ms: -1, sequence: 0 }),
        })
    }

    /// The next id.
    pub fn next_id(&self) -> Result<u64, SnowflakeError> {
        let mut id = 0;
        self.issue(1, |next| id = next)?;
        Ok(id)
    }

    /// `n` ids at once, appended to `out` in increasing order: one lock for all, and one
    /// clock reading per millisecond they span (a request's events are numbered together).
    pub fn next_ids(&self, n: usize, out: &mut Vec<u64>) -> Result<(), SnowflakeError> {
        out.reserve(n);
        self.issue(n, |id| out.push(id))
    }

    /// Issues `n` ids to `sink`. On an error, the ids issued so far stay used.
    fn issue(&self, n: usize, mut sink: impl FnMut(u64)) -> Result<(), SnowflakeError> {
        // A std Mutex: the critical section is a few instructions, except while waiting
        // out the clock, when every caller must wait anyway.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut left = n as u64;
        while left > 0 {
            let now = self.clock.now_ms() - EPOCH_MS;
            if !(0..=MAX_TIME).contains(&now) {
                return Err(SnowflakeError::OutOfRange(now + EPOCH_MS));
            }
            if now < st.last_ms {
                let behind = st.last_ms - now;
                if behind > self.max_backwards_ms {
                    return Err(SnowflakeError::ClockBackwards { behind_ms: behind, max_ms: self.max_backwards_ms });
                }
                self.clock.sleep(Duration::from_millis(behind.unsigned_abs().min(5)));
                continue;
            }
            let first = if now == st.last_ms {
                if st.sequence >= MAX_SEQUENCE {
                    // 4096 ids in this millisecond: wait for the next one.
                    self.clock.sleep(Duration::from_micros(100));
                    continue;
                }
                st.sequence + 1
            } else {
                0
            };
            let last = (first + left - 1).min(MAX_SEQUENCE);
            for seq in first..=last {
                sink(compose(now as u64, self.worker, seq));
            }
            left -= last - first + 1;
            st.last_ms = now;
            st.sequence = last;
        }
        Ok(())
    }
}

const fn compose(ms: u64, worker: u64, seq: u64) -> u64 {
    (ms << (WORKER_BITS + SEQUENCE_BITS)) | (worker << SEQUENCE_BITS) | seq
}

/// Unix milliseconds at which an id was generated.
pub const fn timestamp_ms(id: u64) -> i64 {
    (id >> (WORKER_BITS + SEQUENCE_BITS)) as i64 + EPOCH_MS
}

/// The worker id an id was generated by.
pub const fn worker_of(id: u64) -> u16 {
    ((id >> SEQUENCE_BITS) & MAX_WORKER as u64) as u16
}

/// The smallest id that could be generated at Unix time `ms` (for range queries).
pub const fn min_id_at(ms: i64) -> u64 {
    let t = ms - EPOCH_MS;
    if t <= 0 {
        0
    } else {
        compose(t as u64, 0, 0)
    }
}

/// Derives a worker id from a StatefulSet-style host name (`name-3` → 3).
pub fn worker_from_hostname(host: &str) -> Option<u32> {
    let (_, ordinal) = host.rsplit_once('-')?;
    let n: u32 = ordinal.parse().ok()?;
    (n <= u32::from(MAX_WORKER)).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A clock that only moves when told or when someone sleeps on it.
    #[derive(Default)]
    struct StepClock {
        now: AtomicI64,
        sleeps: AtomicUsize,
    }
    impl Clock for Arc<StepClock> {
        fn now_ms(&self) -> i64 {
            self.now.load(Ordering::SeqCst)
        }
        fn sleep(&self, _d: Duration) {
            self.sleeps.fetch_add(1, Ordering::SeqCst);
            self.now.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn four_threads_get_distinct_increasing_ids() {
        let gen = Arc::new(Snowflake::new(5, Duration::from_millis(100)).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let gen = gen.clone();
                std::thread::spawn(move || {
                    let mut ids = Vec::with_capacity(250_000);
                    for _ in 0..250_000 {
                        ids.push(gen.next_id().unwrap());
                    }
                    ids
                })
            })
            .collect();
        let mut all = HashSet::with_capacity(1_000_000);
        for h in handles {
            let ids = h.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must increase within a thread");
            for id in ids {
                assert_eq!(worker_of(id), 5);
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 1_000_000);
    }

    #[test]
    fn clock_stepped_back_is_waited_out() {
        let clock = Arc::new(StepClock::default());
        clock.now.store(EPOCH_MS + 10_000, Ordering::SeqCst);
        let gen = Snowflake::with_clock(1, Duration::from_millis(50), clock.clone()).unwrap();
        let before = gen.next_id().unwrap();
        clock.now.store(EPOCH_MS + 10_000 - 20, Ordering::SeqCst); // 20 ms back
        let after = gen.next_id().unwrap();
        assert!(after > before);
        assert!(clock.sleeps.load(Ordering::SeqCst) >= 20, "the generator must wait, not jump");
        assert_eq!(timestamp_ms(after), EPOCH_MS + 10_000);
    }

    #[test]
    fn clock_far_back_is_refused() {
        let clock = Arc::new(StepClock::default());
        clock.now.store(EPOCH_MS + 10_000, Ordering::SeqCst);
        let gen = Snowflake::with_clock(1, Duration::from_millis(50), clock.clone()).unwrap();
        gen.next_id().unwrap();
        clock.now.store(EPOCH_MS + 5_000, Ordering::SeqCst);
        assert_eq!(gen.next_id(), Err(SnowflakeError::ClockBackwards { behind_ms: 5_000, max_ms: 50 }));
    }

    #[test]
    fn sequence_overflow_waits_for_next_millisecond() {
        let clock = Arc::new(StepClock::default());
        clock.now.store(EPOCH_MS + 1, Ordering::SeqCst);
        let gen = Snowflake::with_clock(0, Duration::ZERO, clock.clone()).unwrap();
        let ids: Vec<u64> = (0..5000).map(|_| gen.next_id().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(timestamp_ms(ids[4095]), EPOCH_MS + 1);
        assert_eq!(timestamp_ms(ids[4096]), EPOCH_MS + 2);
    }

    #[test]
    fn batches_continue_the_sequence_and_span_milliseconds() {
        let clock = Arc::new(StepClock::default());
        clock.now.store(EPOCH_MS + 1, Ordering::SeqCst);
        let gen = Snowflake::with_clock(3, Duration::ZERO, clock.clone()).unwrap();
        let mut ids = vec![gen.next_id().unwrap()];
        gen.next_ids(4000, &mut ids).unwrap();
        ids.push(gen.next_id().unwrap());
        gen.next_ids(1000, &mut ids).unwrap();
        assert_eq!(ids.len(), 5002);
        assert!(ids.windows(2).all(|w| w[0] + 1 == w[1] || timestamp_ms(w[1]) > timestamp_ms(w[0])));
        assert!(ids.iter().all(|id| worker_of(*id) == 3));
        assert_eq!(timestamp_ms(ids[4095]), EPOCH_MS + 1, "a millisecond holds 4096 ids");
        assert_eq!(timestamp_ms(ids[4096]), EPOCH_MS + 2);
        assert_eq!(ids[4096] & MAX_SEQUENCE, 0);
        assert_eq!(clock.sleeps.load(Ordering::SeqCst), 1);
        gen.next_ids(0, &mut ids).unwrap();
        assert_eq!(ids.len(), 5002);
    }

    #[test]
    fn batches_from_four_threads_are_distinct() {
        let gen = Arc::new(Snowflake::new(9, Duration::from_millis(100)).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let gen = gen.clone();
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    for _ in 0..2_500 {
                        gen.next_ids(100, &mut ids).unwrap();
                    }
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            let ids = h.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must increase within a thread");
            assert!(ids.into_iter().all(|id| all.insert(id)), "duplicate id");
        }
        assert_eq!(all.len(), 1_000_000);
    }

    #[test]
    fn worker_bounds_and_hostnames() {
        assert!(Snowflake::new(1024, Duration::ZERO).is_err());
        assert_eq!(worker_from_hostname("chatpipe-ingest-7"), Some(7));
        assert_eq!(worker_from_hostname("laptop"), None);
        assert_eq!(worker_from_hostname("x-5000"), None);
    }
}

//! Freeze detection: after the process was frozen (SIGSTOP, a stalled VM, a long GC pause
//! of the host), partition tasks hold their writes until the consumer has had time to learn
//! whether the group still counts this member.
//!
//! A frozen process cannot tell by itself that its partitions went elsewhere: on waking,
//! its tasks would go on writing batches while librdkafka's next heartbeat is still on its
//! way to report the lost membership. The changelog is fenced against that (`changelog.rs`),
//! but output topics are not. So a clock thread ticks every [`TICK`]; a tick that comes more
//! than [`GAP`] late, or a task that sees the last tick that old, means the process was
//! frozen, and every task then holds its next delivery for a session timeout. Within it the
//! consumer either reports the partitions lost (the tasks are stopped, nothing is written)
//! or confirms them (the tasks go on). What the broker had already been handed before the
//! freeze can still land once afterwards: at most the batch in flight (DESIGN §7).
//!
//! Failure behaviour: none of its own; a clock thread that is starved longer than [`GAP`]
//! (2 busy cores) only makes tasks hold once, harmlessly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the clock ticks.
pub const TICK: Duration = Duration::from_millis(100);
/// A tick this late means the process was frozen.
pub const GAP: Duration = Duration::from_secs(2);

/// The shared clock.
#[derive(Debug)]
pub struct FreezeGuard {
    start: Instant,
    /// Milliseconds since `start` of the last tick.
    last_tick: AtomicU64,
    /// Milliseconds since `start` until which writes are held.
    hold_until: AtomicU64,
    hold: Duration,
}

impl FreezeGuard {
    /// A guard that holds writes for `hold` (the session timeout) after a freeze, with its
    /// clock thread running until the guard is dropped by everyone else.
    pub fn start(hold: Duration) -> std::io::Result<Arc<Self>> {
        let guard = Arc::new(FreezeGuard {
            start: Instant::now(),
            last_tick: AtomicU64::new(0),
            hold_until: AtomicU64::new(0),
            hold,
        });
        let weak = Arc::downgrade(&guard);
        std::thread::Builder::new().name("processor-clock".into()).spawn(move || {
            while let Some(g) = weak.upgrade() {
                g.tick();
                drop(g);
                std::thread::sleep(TICK);
            }
        })?;
        Ok(guard)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One tick of the clock thread.
    fn tick(&self) {
        let now = self.now_ms();
        self.observe(now);
        self.last_tick.store(now, Ordering::SeqCst);
    }

    /// Starts a hold when the last tick is older than [`GAP`].
    fn observe(&self, now: u64) -> bool {
        let last = self.last_tick.load(Ordering::SeqCst);
        let frozen = now.saturating_sub(last) > GAP.as_millis() as u64;
        if frozen {
            let until = now + self.hold.as_millis() as u64;
            if self.hold_until.fetch_max(until, Ordering::SeqCst) < now {
                tracing::warn!(
                    frozen_for = ?Duration::from_millis(now - last),
                    hold = ?self.hold,
                    "the process was frozen; holding writes until the group has confirmed its partitions"
                );
            }
        }
        frozen
    }

    /// Whether writes must wait now.
    pub fn holding(&self) -> bool {
        let now = self.now_ms();
        self.observe(now);
        now < self.hold_until.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_tick_starts_a_hold_and_the_hold_ends() {
        let g = FreezeGuard {
            start: Instant::now(),
            last_tick: AtomicU64::new(10_000),
            hold_until: AtomicU64::new(0),
            hold: Duration::from_secs(10),
        };
        assert!(!g.observe(10_500), "half a second late is not a freeze");
        assert!(g.observe(20_000), "ten seconds late is");
        assert_eq!(g.hold_until.load(Ordering::SeqCst), 30_000);
        g.last_tick.store(29_000, Ordering::SeqCst);
        assert!(!g.observe(29_100));
        assert!(g.hold_until.load(Ordering::SeqCst) > 29_100, "still holding");
    }
}

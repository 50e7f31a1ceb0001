//! Which batch, and which HBase call, may write for a partition — and the revocation that
//! takes a partition away.
//!
//! # Guarantee: no write of a revoked partition lands after the partition is released
//!
//! A revocation (librdkafka's rebalance callback, which must return before the partition
//! can go to its next owner) and shutdown end in three steps:
//!
//! 1. **Drain**: the revoked partitions' workers stop, and their in-flight batches get up to
//!    `--drain-timeout` to finish (each stores its offset; the callback then commits).
//! 2. **Fence**: batches still running are cancelled. Under the same lock, every HBase call
//!    of a batch is admitted by [`Ownership::enter_call`] on the connection thread right before
//!    it goes on the wire; a cancelled batch's calls are refused there, so a call that was
//!    queued for a connection never starts, and the batch makes no new call.
//! 3. **Wait for running calls**: calls already on a connection when the batch was cancelled
//!    cannot be taken back (a Thrift request on the wire may still be applied), so the
//!    revocation waits for each to return. A call returns within the Thrift call timeout
//!    (`--hbase-timeout`: every socket wait of a call is bounded by it, and a call that
//!    exceeds it drops its connection), so this step is bounded by `--hbase-timeout` plus
//!    [`CALL_MARGIN`].
//!
//! Only then does the callback return, so the new owner's first write for the partition
//! starts after every write the old owner sent for it has been answered or has failed.
//! While step 3 waits, `chatpipe_sink_revocation_waiting_calls` counts the calls and a
//! warning names them; `chatpipe_sink_revocation_wait_seconds` records how long every
//! revocation blocked.
//!
//! # Limits (failure behaviour)
//!
//! * A call still running after the bound (a server that trickles a reply, so no single
//!   socket wait times out) is left running: the partition is released anyway, an ERROR
//!   log and `chatpipe_sink_errors_total{kind="revoked_call_outlived"}` report it, and its
//!   write may land after the new owner's. Keep `--hbase-timeout` plus `--drain-timeout`
//!   below the group's rebalance timeout (`max.poll.interval.ms`, 300 s by default), or the
//!   group expels the member while it waits.
//! * A call that *timed out* has returned, but its request may still be executing on the
//!   server (or, on a network that delays segments longer than the timeout, not yet have
//!   arrived). HBase offers no fencing over Thrift1, so this is the residual risk; a shorter
//!   `--hbase-timeout` narrows it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

/// Added to the Thrift call timeout when waiting for a revoked partition's running calls:
/// a call that timed out still needs a moment to drop its connection and report.
pub(crate) const CALL_MARGIN: Duration = Duration::from_secs(1);

#[derive(Default)]
struct PartitionOwnership {
    /// Bumped on every revocation: a worker of an older generation must stop.
    generation: u64,
    /// The running batch, if any (cancelled when a revocation times out).
    in_flight: Option<CancellationToken>,
    /// Stops the partition's worker (revocation).
    worker: Option<CancellationToken>,
    /// HBase calls of the partition on a connection now (admitted by `enter_call`).
    calls: usize,
}

/// Which batch and which call may write for each partition: what the workers, the batch
/// tasks, the connection threads and the rebalance callback share (std locks: the callback runs inside librdkafka's poll, outside any async context).
#[derive(Default)]
pub(crate) struct Ownership {
    parts: Mutex<HashMap<i32, PartitionOwnership>>,
    /// Notified when a batch ends or a call returns.
    idle: Condvar,
    next_generation: AtomicU64,
}

/// Whether a worker may start a batch.
pub(crate) enum Begin {
    Started,
    /// The worker is from before a revocation.
    Stale,
    /// An older batch (maybe cancelled) is still running.
    Busy,
}

/// How a revocation (or shutdown) ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Released {
    /// Batches still running at the drain timeout, and cancelled.
    pub(crate) cancelled: usize,
    /// HBase calls of cancelled batches that were running then, and waited for.
    pub(crate) waited_calls: usize,
    /// Calls still running after the bound: their writes may land after the release.
    pub(crate) outlived: usize,
}

/// Holds a partition's call count up while one HBase call runs.
pub(crate) struct CallGuard {
    ownership: Arc<Ownership>,
    partition: i32,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(p) = self.ownership.lock().get_mut(&self.partition) {
            p.calls = p.calls.saturating_sub(1);
        }
        self.ownership.idle.notify_all();
    }
}

impl Ownership {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, PartitionOwnership>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, HashMap<i32, PartitionOwnership>>,
        timeout: Duration,
    ) -> MutexGuard<'a, HashMap<i32, PartitionOwnership>> {
        match self.idle.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    pub(crate) fn generation(&self, partition: i32) -> u64 {
        self.lock().entry(partition).or_default().generation
    }

    /// Registers a worker's stop token; false when the worker is already stale.
    pub(crate) fn register_worker(&self, partition: i32, generation: u64, stop: CancellationToken) -> bool {
        let mut parts = self.lock();
        let p = parts.entry(partition).or_default();
        if p.generation != generation {
            return false;
        }
        p.worker = Some(stop);
        true
    }

    pub(crate) fn begin(&self, partition: i32, generation: u64, token: CancellationToken) -> Begin {
        let mut parts = self.lock();
        let p = parts.entry(partition).or_default();
        if p.generation != generation {
            Begin::Stale
        } else if p.in_flight.is_some() {
            Begin::Busy
        } else {
            p.in_flight = Some(token);
            Begin::Started
        }
    }

    pub(crate) fn finish(&self, partition: i32) {
        if let Some(p) = self.lock().get_mut(&partition) {
            p.in_flight = None;
        }
        self.idle.notify_all();
    }

    /// Admits one HBase call of a batch of `partition` (called on the connection thread,
    /// right before the call goes on the wire): `None` when the batch was cancelled — the
    /// call must not be made. The check and the count are under the lock a revocation
    /// cancels under, so a revocation either sees the call counted or the call sees the
    /// cancellation.
    pub(crate) fn enter_call(self: &Arc<Self>, partition: i32, batch: &CancellationToken) -> Option<CallGuard> {
        let mut parts = self.lock();
        if batch.is_cancelled() {
            return None;
        }
        parts.entry(partition).or_default().calls += 1;
        Some(CallGuard { ownership: Arc::clone(self), partition })
    }

    /// Marks `partitions` revoked and stops their workers; waits up to `drain` for their
    /// batches; cancels the ones still running and waits up to `call_bound` for the HBase
    /// calls they have on a connection (see the module doc). Blocking.
    pub(crate) fn revoke(
        &self,
        partitions: &[i32],
        drain: Duration,
        call_bound: Duration,
        waiting: &IntGauge,
    ) -> Released {
        let deadline = Instant::now() + drain;
        let mut parts = self.lock();
        for p in partitions {
            let g = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
            let part = parts.entry(*p).or_default();
            part.generation = g;
            if let Some(w) = part.worker.take() {
                w.cancel();
            }
        }
        loop {
            let busy = partitions.iter().filter(|p| parts.get(p).is_some_and(|s| s.in_flight.is_some())).count();
            let now = Instant::now();
            if busy == 0 {
                return Released::default();
            }
            if now >= deadline {
                break;
            }
            parts = self.wait(parts, deadline - now);
        }
        drop(parts);
        self.fence(partitions, call_bound, waiting)
    }

    /// Shutdown after the drain timeout: fences every partition's running batch.
    pub(crate) fn fence_all(&self, call_bound: Duration, waiting: &IntGauge) -> Released {
        let partitions: Vec<i32> = self.lock().keys().copied().collect();
        self.fence(&partitions, call_bound, waiting)
    }

    /// Cancels the batches of `partitions` (their calls not yet on a connection are
    /// refused from now on) and waits up to `call_bound` for their running calls.
    fn fence(&self, partitions: &[i32], call_bound: Duration, waiting: &IntGauge) -> Released {
        let mut parts = self.lock();
        let mut released = Released::default();
        for p in partitions {
            if let Some(token) = parts.get(p).and_then(|s| s.in_flight.as_ref()) {
                token.cancel();
                released.cancelled += 1;
            }
        }
        let running = |parts: &HashMap<i32, PartitionOwnership>| -> usize {
            partitions.iter().filter_map(|p| parts.get(p)).map(|s| s.calls).sum()
        };
        released.waited_calls = running(&parts);
        if released.cancelled > 0 {
            tracing::warn!(
                batches = released.cancelled,
                calls = released.waited_calls,
                bound = ?call_bound,
                "in-flight batches not done after the drain timeout: cancelled (their rows are written again by the \
                 next owner); waiting for their HBase calls already sent before releasing the partitions"
            );
        }
        let deadline = Instant::now() + call_bound;
        loop {
            let n = running(&parts);
            waiting.set(n as i64);
            let now = Instant::now();
            if n == 0 {
                break;
            }
            if now >= deadline {
                released.outlived = n;
                tracing::error!(
                    calls = n,
                    bound = ?call_bound,
                    "HBase calls of released partitions still running after the bound: their writes may land after \
                     the next owner's"
                );
                break;
            }
            parts = self.wait(parts, deadline - now);
        }
        waiting.set(0);
        released
    }
}

/// Clears a partition's in-flight mark when its batch task ends, however it ends.
pub(crate) struct FinishGuard {
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) partition: i32,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.ownership.finish(self.partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGauge {
        IntGauge::new("g", "g").unwrap()
    }

    #[test]
    fn revocation_stops_the_worker_waits_for_in_flight_batches_then_cancels() {
        let ownership = Arc::new(Ownership::default());
        let g = ownership.generation(3);
        let worker = CancellationToken::new();
        assert!(ownership.register_worker(3, g, worker.clone()));
        let token = CancellationToken::new();
        assert!(matches!(ownership.begin(3, g, token.clone()), Begin::Started));
        assert!(matches!(ownership.begin(3, g, CancellationToken::new()), Begin::Busy));
        // a batch that finishes within the drain timeout is waited for
        let s2 = Arc::clone(&ownership);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.finish(3);
        });
        let released = ownership.revoke(&[3], Duration::from_secs(10), Duration::from_secs(10), &gauge());
        t.join().unwrap();
        assert_eq!(released, Released::default());
        assert!(worker.is_cancelled());
        assert!(!token.is_cancelled());
        assert!(matches!(ownership.begin(3, g, CancellationToken::new()), Begin::Stale));
        assert!(!ownership.register_worker(3, g, CancellationToken::new()));
        // one that does not is cancelled
        let g = ownership.generation(3);
        let token = CancellationToken::new();
        assert!(matches!(ownership.begin(3, g, token.clone()), Begin::Started));
        let released = ownership.revoke(&[3], Duration::from_millis(20), Duration::from_secs(10), &gauge());
        assert!(token.is_cancelled());
        assert_eq!(released, Released { cancelled: 1, waited_calls: 0, outlived: 0 });
    }

    #[test]
    fn a_revocation_returns_only_after_the_running_call_and_refuses_new_ones() {
        let ownership = Arc::new(Ownership::default());
        let g = ownership.generation(1);
        let token = CancellationToken::new();
        assert!(matches!(ownership.begin(1, g, token.clone()), Begin::Started));
        let call = ownership.enter_call(1, &token).unwrap();
        let returned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, r2) = (Arc::clone(&ownership), Arc::clone(&returned));
        let waiting = gauge();
        let w2 = waiting.clone();
        let revoker = std::thread::spawn(move || {
            let released = s2.revoke(&[1], Duration::ZERO, Duration::from_secs(60), &w2);
            r2.store(true, Ordering::SeqCst);
            released
        });
        // the revocation cancels the batch, then waits for the call on the wire
        while !token.is_cancelled() {
            std::thread::yield_now();
        }
        assert!(ownership.enter_call(1, &token).is_none(), "a cancelled batch makes no new call");
        while waiting.get() != 1 {
            std::thread::yield_now();
        }
        assert!(!returned.load(Ordering::SeqCst), "released while a call of the partition was running");
        drop(call);
        let released = revoker.join().unwrap();
        assert_eq!(released, Released { cancelled: 1, waited_calls: 1, outlived: 0 });
        assert_eq!(waiting.get(), 0);
    }

    #[test]
    fn a_call_outliving_the_bound_is_reported() {
        let ownership = Arc::new(Ownership::default());
        let g = ownership.generation(2);
        let token = CancellationToken::new();
        assert!(matches!(ownership.begin(2, g, token.clone()), Begin::Started));
        let _call = ownership.enter_call(2, &token).unwrap();
        let released = ownership.fence_all(Duration::from_millis(10), &gauge());
        assert_eq!(released, Released { cancelled: 1, waited_calls: 1, outlived: 1 });
    }
}

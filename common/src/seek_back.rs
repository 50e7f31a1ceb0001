//! The seek-back schedule of a fetch that started past its expected offset.
//!
//! tansu 0.6 answers a fetch from inside a record batch with the *next* batch (DESIGN §2),
//! so a consumer that finds its first record past the offset it expected fetches again from
//! further back: 16 records before the expected offset, then four times further each time,
//! down to offset 0 — a few round trips whatever the batch size, and on Apache Kafka never
//! needed. The processor's poller (`processor/src/fetch_start.rs`) and the sink's partition
//! workers (`sink/src/worker.rs`) both follow this schedule; each decides itself when a
//! fetch counts as skipped and how it seeks.

/// The first step back, in records.
const FIRST_STEP: i64 = 16;
/// Each further step is this many times the previous one.
const GROWTH: i64 = 4;

/// Where a partition's fetch goes next while its start is not verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeekBack {
    /// How far before the expected offset the last seek went (0: no seek yet).
    back: i64,
}

impl SeekBack {
    /// The offset to fetch from next for a fetch expected to start at `expected`, or `None`
    /// once a seek already reached offset 0: whatever came first then is the start (the
    /// earlier records are gone by retention or compaction).
    pub fn next_target(&mut self, expected: i64) -> Option<i64> {
        if self.back > 0 && expected - self.back <= 0 {
            return None;
        }
        self.back = if self.back == 0 { FIRST_STEP } else { self.back.saturating_mul(GROWTH) };
        Some(expected.saturating_sub(self.back).max(0))
    }

    /// How far before the expected offset the last seek went (0: none yet).
    pub fn back(&self) -> i64 {
        self.back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_16_then_four_times_further_down_to_zero_then_none() {
        let mut s = SeekBack::default();
        let targets: Vec<Option<i64>> = (0..6).map(|_| s.next_target(1_000)).collect();
        assert_eq!(targets, [Some(984), Some(936), Some(744), Some(0), None, None]);
    }

    #[test]
    fn an_expected_offset_near_the_start_goes_to_zero_at_once() {
        let mut s = SeekBack::default();
        assert_eq!(s.next_target(5), Some(0));
        assert_eq!(s.back(), 16);
        assert_eq!(s.next_target(5), None);
    }
}

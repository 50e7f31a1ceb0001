//! A client's position in the push feed, which is also each event's SSE `id`:
//! `partition:offset:index:f0,f1,…` — the record the event was made at, its index among the
//! user's events of that record, and the next offset of every partition when it was made.
//!
//! Guarantee: event `e` was delivered to a client at position `p` exactly when `e` is not
//! [`Position::before`] `p`, for events of the same feed (same partitions). Pure; a string
//! of another shape does not parse.

/// Feed position of a client: the last event it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) partition: usize,
    pub(super) offset: i64,
    pub(super) index: u32,
    pub(super) frontier: Vec<i64>,
}

impl Position {
    pub(super) fn id(&self) -> String {
        let f: Vec<String> = self.frontier.iter().map(i64::to_string).collect();
        format!("{}:{}:{}:{}", self.partition, self.offset, self.index, f.join(","))
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().splitn(4, ':');
        let partition = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let index = parts.next()?.parse().ok()?;
        let frontier: Option<Vec<i64>> = parts.next()?.split(',').map(|x| x.parse().ok()).collect();
        let frontier = frontier?;
        (partition < frontier.len()).then_some(Position { partition, offset, index, frontier })
    }

    /// The first offset of partition `q` with events not delivered (the position's own
    /// record counts as not delivered unless its index is `u32::MAX`).
    pub(super) fn first_undelivered(&self, q: usize) -> Option<i64> {
        if q == self.partition {
            Some(if self.index == u32::MAX { self.offset + 1 } else { self.offset })
        } else {
            self.frontier.get(q).copied()
        }
    }

    /// Whether event `(p, o, k)` comes after this position (was not delivered).
    pub(super) fn before(&self, p: usize, o: i64, k: u32) -> bool {
        if p == self.partition {
            (o, k) > (self.offset, self.index)
        } else {
            self.frontier.get(p).is_some_and(|f| o >= *f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_order_events() {
        let p = Position { partition: 1, offset: 7, index: 2, frontier: vec![4, 7, 9] };
        assert_eq!(Position::parse(&p.id()), Some(p.clone()));
        assert!(Position::parse("1:7:2").is_none());
        assert!(Position::parse("3:7:2:4,7,9").is_none(), "partition outside the frontier");
        assert!(p.before(1, 7, 3) && !p.before(1, 7, 2) && p.before(1, 8, 0));
        assert!(p.before(0, 4, 0) && !p.before(0, 3, 5));
    }
}

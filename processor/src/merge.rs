//! The global window merge: per-partition partials in, `chat.agg.global.1m` records out.
//!
//! A global window is emitted once every input partition's watermark has passed its end
//! (partitions report their watermark with every [`Progress`]; idle partitions advance on
//! wall time). `active_senders` is exact: partials carry sender sets, merged by union.
//! A partial with a higher revision (its message count, `windows.rs`) for an emitted window re-emits it with the global
//! revision + 1. The merge is idempotent: replaying the partials topic from its start
//! rebuilds the same state and re-emits the same records (same key, revision and value).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::json;

use chatpipe_common::event::rfc3339_ms;

use crate::core::{Progress, WindowPartial};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Emitted {
    revision: u32,
    value: serde_json::Value,
}

/// The merge state.
#[derive(Debug)]
pub struct Merger {
    partitions: i32,
    window_ms: i64,
    horizon_ms: i64,
    watermarks: HashMap<i32, i64>,
    partials: BTreeMap<i64, HashMap<i32, WindowPartial>>,
    emitted: BTreeMap<i64, Emitted>,
}

impl Merger {
    /// A merge over `partitions` input partitions.
    pub fn new(partitions: i32, window_ms: i64, horizon_ms: i64) -> Self {
        Merger {
            partitions,
            window_ms,
            horizon_ms,
            watermarks: HashMap::new(),
            partials: BTreeMap::new(),
            emitted: BTreeMap::new(),
        }
    }

    /// The smallest watermark over all partitions, once all have reported.
    fn min_watermark(&self) -> Option<i64> {
        if (0..self.partitions).all(|p| self.watermarks.contains_key(&p)) {
            self.watermarks.values().copied().min()
        } else {
            None
        }
    }

    fn merged(&self, start: i64) -> serde_json::Value {
        let mut messages = 0u64;
        let mut sessions = 0u64;
        let mut senders = BTreeSet::new();
        let mut by_session_kind: BTreeMap<&str, u64> = BTreeMap::new();
        let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
        if let Some(parts) = self.partials.get(&start) {
            for p in parts.values() {
                messages += p.messages;
                sessions += p.active_sessions;
                senders.extend(p.senders.iter().copied());
                for (k, n) in &p.by_session_kind {
                    *by_session_kind.entry(k.as_str()).or_default() += n;
                }
                for (k, n) in &p.by_kind {
                    *by_kind.entry(k.as_str()).or_default() += n;
                }
            }
        }
        json!({
            "window_start": rfc3339_ms(start),
            "window_end": rfc3339_ms(start + self.window_ms),
            "messages": messages,
            "active_sessions": sessions,
            "active_senders": senders.len(),
            "by_session_kind": by_session_kind,
            "by_kind": by_kind,
        })
    }

    fn emit(&mut self, start: i64, out: &mut Vec<(String, String)>) {
        let value = self.merged(start);
        let revision = match self.emitted.get(&start) {
            Some(e) if e.value == value => return,
            Some(e) => e.revision + 1,
            None => 1,
        };
        let mut record = value.clone();
        record["revision"] = json!(revision);
        out.push((format!("global|{}", rfc3339_ms(start)), record.to_string()));
        self.emitted.insert(start, Emitted { revision, value });
    }

    /// Applies one progress report; returns `(key, JSON)` records to emit, in order.
    pub fn on_progress(&mut self, p: Progress) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let wm = self.watermarks.entry(p.partition).or_insert(p.watermark_ms);
        *wm = (*wm).max(p.watermark_ms);
        for part in p.partials {
            let start = part.window_start_ms;
            let slot = self.partials.entry(start).or_default();
            let newer = slot.get(&p.partition).is_none_or(|old| part.revision >= old.revision);
            if newer {
                slot.insert(p.partition, part);
                if self.emitted.contains_key(&start) {
                    self.emit(start, &mut out); // a correction
                }
            }
        }
        if let Some(min_wm) = self.min_watermark() {
            let due: Vec<i64> = self
                .partials
                .range(..=min_wm - self.window_ms)
                .map(|(s, _)| *s)
                .filter(|s| !self.emitted.contains_key(s))
                .collect();
            for start in due {
                self.emit(start, &mut out);
            }
            let floor = min_wm - self.horizon_ms - self.window_ms;
            self.partials = self.partials.split_off(&floor);
            self.emitted = self.emitted.split_off(&floor);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_common::event::{MessageKind, SessionKind};

    fn partial(start: i64, rev: u32, msgs: u64, senders: &[u64]) -> WindowPartial {
        WindowPartial {
            window_start_ms: start,
            revision: rev,
            messages: msgs,
            active_sessions: 1,
            senders: senders.iter().copied().collect(),
            by_session_kind: [(SessionKind::Group, msgs)].into(),
            by_kind: [(MessageKind::Text, msgs)].into(),
        }
    }

    #[test]
    fn waits_for_every_partition_then_merges_exactly() {
        let mut m = Merger::new(2, 60_000, 3_600_000);
        let out =
            m.on_progress(Progress { partition: 0, watermark_ms: 60_000, partials: vec![partial(0, 1, 3, &[1, 2])] });
        assert!(out.is_empty(), "partition 1 has not reported");
        let out = m.on_progress(Progress { partition: 1, watermark_ms: 30_000, partials: vec![] });
        assert!(out.is_empty(), "partition 1 is behind the window end");
        let out =
            m.on_progress(Progress { partition: 1, watermark_ms: 61_000, partials: vec![partial(0, 1, 2, &[2, 3])] });
        assert_eq!(out.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&out[0].1).unwrap();
        assert_eq!(v["messages"], 5);
        assert_eq!(v["active_senders"], 3, "sender 2 is counted once across partitions");
        assert_eq!(v["active_sessions"], 2);
        assert_eq!(v["revision"], 1);
        // a replayed partial changes nothing
        assert!(m
            .on_progress(Progress { partition: 1, watermark_ms: 61_000, partials: vec![partial(0, 1, 2, &[2, 3])] })
            .is_empty());
        // a correction re-emits with revision 2
        let out = m.on_progress(Progress {
            partition: 0,
            watermark_ms: 62_000,
            partials: vec![partial(0, 2, 4, &[1, 2, 9])],
        });
        let v: serde_json::Value = serde_json::from_str(&out[0].1).unwrap();
        assert_eq!(
            (v["messages"].as_u64(), v["active_senders"].as_u64(), v["revision"].as_u64()),
            (Some(6), Some(4), Some(2))
        );
    }
}

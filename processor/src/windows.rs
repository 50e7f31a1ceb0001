//! Window counts: tumbling windows on event time per session, closed by the watermark
//! (max event time − grace, or wall time while a partition is idle), corrected with a
//! higher revision by late events within the correction horizon, and the per-partition
//! partials the global merge combines. Emitted windows are written to `chat:counts` (one
//! `chat.rows` record keyed by the session per emission) and `chat.agg.session.1m`.
//! Windows are evicted once they fall behind the correction horizon.

use std::collections::{BTreeMap, BTreeSet};

use chatpipe_common::event::{rfc3339_ms, ChatEvent, MessageKind, SessionKind};
use chatpipe_common::rows::tables;

use crate::core::{reason, Outcome, PartitionCore, Progress, WindowPartial};
use crate::records::{to_json, SessionWindowRecord};
use crate::rows::{RowBuilder, RowKey};
use crate::state::WindowAgg;

impl PartitionCore {
    pub(crate) fn window_of(&self, t: i64) -> i64 {
        t.div_euclid(self.rules.window_ms) * self.rules.window_ms
    }

    pub(crate) fn count_in_window(
        &mut self,
        offset: i64,
        ev: &ChatEvent,
        skind: SessionKind,
        mkind: MessageKind,
    ) -> Outcome {
        let start = self.window_of(ev.sent_at_ms);
        let end = start + self.rules.window_ms;
        let closed = self.state.meta.watermark_ms.is_some_and(|wm| end <= wm);
        let max_t = self.state.meta.max_event_time_ms.unwrap_or(ev.sent_at_ms);
        if closed && ev.sent_at_ms < max_t - self.rules.correction_horizon_ms {
            self.out.dlq.push(crate::core::DlqEntry {
                offset,
                reason: reason::LATE,
                detail: format!(
                    "event time {} is more than the correction horizon behind {}; applied to timelines, not counted",
                    rfc3339_ms(ev.sent_at_ms),
                    rfc3339_ms(max_t)
                ),
            });
            return Outcome::Late;
        }
        // updated in place: a clone of the window (its sender set) per message was most of
        // the counting path's cost
        let new_window = self.state.windows.get(&(start, ev.session_id)).is_none();
        let w = self.state.windows.entry_or((start, ev.session_id), || WindowAgg {
            session_kind: skind,
            messages: 0,
            by_kind: BTreeMap::new(),
            senders: BTreeSet::new(),
            revision: 0,
        });
        w.messages += 1;
        *w.by_kind.entry(mkind).or_default() += 1;
        w.senders.insert(ev.sender_id);
        if closed {
            w.revision += 1;
        }
        if new_window {
            self.state.window_index.entry(start).or_default().insert(ev.session_id);
            if !closed {
                self.state.open_windows.insert((start, ev.session_id));
            }
        }
        if closed {
            self.state.open_windows.remove(&(start, ev.session_id));
            if let Some(w) = self.state.windows.get(&(start, ev.session_id)).cloned() {
                self.emit_session_window(start, ev.session_id, &w, ev.ingested_at_ms);
            }
            let partial = self.partial(start);
            self.push_progress(vec![partial]);
            Outcome::Corrected
        } else {
            Outcome::Processed
        }
    }

    pub(crate) fn observe_event_time(&mut self, t: i64) {
        let max_t = self.state.meta.max_event_time_ms.map_or(t, |m| m.max(t));
        self.state.meta.max_event_time_ms = Some(max_t);
        self.advance_watermark(max_t - self.rules.grace_ms, 0);
    }

    /// Advances the watermark of an idle partition to `now_ms − grace` (wall clock), so
    /// its windows close and the global merge is not held back.
    pub fn advance_idle(&mut self, now_ms: i64) {
        self.advance_watermark(now_ms - self.rules.grace_ms, now_ms);
    }

    fn advance_watermark(&mut self, wm: i64, ingested_at_ms: i64) {
        let old = self.state.meta.watermark_ms;
        if old.is_some_and(|o| wm <= o) {
            return;
        }
        self.state.meta.watermark_ms = Some(wm);
        let crossed = old.is_none_or(|o| self.window_of(o) != self.window_of(wm));
        if !crossed {
            return;
        }
        // emit every window that ended at or before the watermark and is not emitted yet
        let limit = (wm - self.rules.window_ms).saturating_add(1);
        let due: Vec<(i64, u64)> = self.state.open_windows.range(..(limit, 0)).copied().collect();
        let mut partials = Vec::new();
        let mut last_start = None;
        for (start, session) in due {
            if last_start.is_some_and(|s| s != start) {
                partials.extend(last_start.map(|s| self.partial(s)));
            }
            last_start = Some(start);
            let Some(w) = self.state.windows.get_mut(&(start, session)) else { continue };
            w.revision = 1;
            let w = w.clone();
            self.state.open_windows.remove(&(start, session));
            self.emit_session_window(start, session, &w, ingested_at_ms);
        }
        partials.extend(last_start.map(|s| self.partial(s)));
        self.evict(wm);
        self.push_progress(partials);
    }

    fn partial(&mut self, start: i64) -> WindowPartial {
        *self.state.meta.partial_revisions.entry(start).or_insert(0) += 1;
        let mut p = WindowPartial {
            window_start_ms: start,
            revision: 0, // set from the content below
            messages: 0,
            active_sessions: 0,
            senders: BTreeSet::new(),
            by_session_kind: BTreeMap::new(),
            by_kind: BTreeMap::new(),
        };
        if let Some(sessions) = self.state.window_index.get(&start) {
            for s in sessions {
                if let Some(w) = self.state.windows.get(&(start, *s)) {
                    p.messages += w.messages;
                    p.active_sessions += 1;
                    p.senders.extend(w.senders.iter().copied());
                    *p.by_session_kind.entry(w.session_kind).or_default() += w.messages;
                    for (k, n) in &w.by_kind {
                        *p.by_kind.entry(*k).or_default() += n;
                    }
                }
            }
        }
        p.revision = published_revision(p.messages);
        p
    }

    fn push_progress(&mut self, partials: Vec<WindowPartial>) {
        let wm = self.state.meta.watermark_ms.unwrap_or(i64::MIN);
        let p = self.out.progress.get_or_insert_with(|| Progress {
            partition: self.partition,
            watermark_ms: wm,
            partials: Vec::new(),
        });
        p.watermark_ms = wm;
        p.partials.extend(partials);
    }

    fn emit_session_window(&mut self, start: i64, session: u64, w: &WindowAgg, ingested_at_ms: i64) {
        let end = start + self.rules.window_ms;
        let window_start = rfc3339_ms(start);
        let rec = SessionWindowRecord {
            session_id: session,
            session_kind: w.session_kind.as_str(),
            window_start: window_start.clone(),
            window_end: rfc3339_ms(end),
            messages: w.messages,
            by_kind: w.by_kind.iter().map(|(k, n)| (k.as_str(), *n)).collect(),
            senders: w.senders.len(),
            revision: published_revision(w.messages),
        };
        match to_json(&rec) {
            Ok(json) => self.out.session_aggs.push((format!("{session}|{window_start}"), json)),
            Err(_) => self.out.encode_errors += 1,
        }
        // its own record (an emission is not part of the event being applied)
        let mut b = RowBuilder::default();
        let m = b.put(tables::COUNTS, RowKey::Message(session, start.max(0) as u64), ingested_at_ms);
        m.num("c:window_start", start)
            .num("c:messages", w.messages)
            .num("c:senders", w.senders.len())
            .num("c:revision", published_revision(w.messages));
        for (k, n) in &w.by_kind {
            m.num(&format!("c:{}", k.as_str()), *n);
        }
        self.out.rows.push(b.finish(session));
        self.out.windows_emitted += 1;
    }

    fn evict(&mut self, wm: i64) {
        let Some(max_t) = self.state.meta.max_event_time_ms.or(Some(wm)) else { return };
        let horizon = max_t.max(wm) - self.rules.correction_horizon_ms;
        let old: Vec<i64> = self.state.window_index.range(..horizon - self.rules.window_ms).map(|(s, _)| *s).collect();
        for start in old {
            let sessions: Vec<u64> =
                self.state.window_index.get(&start).map(|s| s.iter().copied().collect()).unwrap_or_default();
            for s in sessions {
                self.state.remove_window(start, s);
            }
            self.state.meta.partial_revisions.remove(&start);
        }
        self.state.meta.partial_revisions.retain(|s, _| *s >= horizon - self.rules.window_ms);
    }
}

/// The revision a window's value is published with: the number of messages it counts. A
/// correction adds a message, so it grows by one per correction; and it depends only on the
/// input applied, not on when a watermark closed the window (idle partitions advance on
/// wall time), so the value a processor emits after a failover never carries a lower
/// revision than an earlier owner's value with less in it — consumers (the global merge,
/// analysts) keep the highest revision, and equal revisions have equal values.
fn published_revision(messages: u64) -> u32 {
    u32::try_from(messages).unwrap_or(u32::MAX)
}

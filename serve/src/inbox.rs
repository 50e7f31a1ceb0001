//! Read fan-out: an inbox page is the user's `chat:inbox` rows merged with the timelines of
//! the user's large groups (above `--fanout-max-members`, which get no inbox rows).
//!
//! Guarantee: given lists that are each newest first (one prefix scan each, each cut at the
//! page size), [`merge_newest_first`] returns the newest `limit` distinct messages of their
//! union, newest first — a k-way merge over a heap, so `O(limit · log k)`. A message present
//! in several lists (a group that grew past the threshold has its older messages in inboxes
//! and in its timeline) appears once; the inbox row wins, since it is what the user was sent.
//! Pure: no I/O, no failure.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use serde_json::{json, Value};

use crate::store::{InboxRow, Message};

/// Where an inbox entry was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A `chat:inbox` row (fan-out on write).
    Inbox,
    /// A large group's timeline (fan-out on read).
    Timeline,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Inbox => "inbox",
            Source::Timeline => "timeline",
        }
    }
}

/// One inbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The message.
    pub message_id: u64,
    /// Its session.
    pub session_id: Option<u64>,
    /// Its sender.
    pub sender_id: Option<u64>,
    /// Its kind.
    pub kind: Option<String>,
    /// The preview (absent when recalled).
    pub preview: Option<String>,
    /// Its seq in the session.
    pub seq: Option<u64>,
    /// Recalled.
    pub recalled: bool,
    /// Where it was read.
    pub source: Source,
}

impl Entry {
    /// From an inbox row.
    pub fn from_inbox(r: &InboxRow) -> Self {
        Entry {
            message_id: r.e.message_id,
            session_id: r.e.session_id,
            sender_id: r.e.sender_id,
            kind: r.e.kind.clone(),
            preview: if r.recalled { None } else { r.e.preview.clone() },
            seq: r.seq,
            recalled: r.recalled,
            source: Source::Inbox,
        }
    }

    /// From a timeline message, with the processor's preview rule.
    pub fn from_message(m: &Message, preview_chars: usize) -> Self {
        Entry {
            message_id: m.m.message_id,
            session_id: Some(m.m.session_id),
            sender_id: m.m.sender_id,
            kind: m.m.kind.clone(),
            preview: if m.m.recalled { None } else { crate::api::preview(m.m.body.as_deref(), preview_chars) },
            seq: m.m.seq,
            recalled: m.m.recalled,
            source: Source::Timeline,
        }
    }

    /// The API object.
    pub fn to_json(&self) -> Value {
        json!({
            "message_id": self.message_id.to_string(),
            "session_id": self.session_id.map(|s| s.to_string()),
            "sender_id": self.sender_id.map(|s| s.to_string()),
            "kind": self.kind,
            "preview": self.preview,
            "seq": self.seq,
            "recalled": self.recalled,
            "source": self.source.as_str(),
        })
    }
}

/// The newest `limit` distinct entries of `lists` (each newest first), newest first.
pub fn merge_newest_first(lists: Vec<Vec<Entry>>, limit: usize) -> Vec<Entry> {
    // heap of (message id, inbox before timeline for equal ids, list, position)
    let mut heap: BinaryHeap<(u64, Reverse<Source>, usize, usize)> = BinaryHeap::with_capacity(lists.len());
    for (i, l) in lists.iter().enumerate() {
        if let Some(e) = l.first() {
            heap.push((e.message_id, Reverse(e.source), i, 0));
        }
    }
    let mut out = Vec::with_capacity(limit);
    let mut seen = HashSet::with_capacity(limit);
    while let Some((_, _, i, pos)) = heap.pop() {
        if out.len() == limit {
            break;
        }
        let Some(list) = lists.get(i) else { continue };
        if let Some(e) = list.get(pos) {
            if seen.insert(e.message_id) {
                out.push(e.clone());
            }
        }
        if let Some(next) = list.get(pos + 1) {
            heap.push((next.message_id, Reverse(next.source), i, pos + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(id: u64, source: Source) -> Entry {
        Entry {
            message_id: id,
            session_id: Some(id % 7),
            sender_id: None,
            kind: None,
            preview: None,
            seq: None,
            recalled: false,
            source,
        }
    }

    #[test]
    fn duplicates_appear_once_and_the_inbox_row_wins() {
        let inbox = vec![e(9, Source::Inbox), e(5, Source::Inbox), e(2, Source::Inbox)];
        let group = vec![e(8, Source::Timeline), e(5, Source::Timeline), e(1, Source::Timeline)];
        let m = merge_newest_first(vec![group, inbox], 4);
        assert_eq!(m.iter().map(|x| x.message_id).collect::<Vec<_>>(), vec![9, 8, 5, 2]);
        assert_eq!(m[2].source, Source::Inbox);
    }

    proptest! {
        #[test]
        fn merge_equals_sort_and_dedupe(lists in prop::collection::vec(prop::collection::btree_set(0u64..200, 0..30), 0..6), limit in 1usize..50) {
            let lists: Vec<Vec<Entry>> = lists.iter().enumerate().map(|(i, s)| {
                let src = if i == 0 { Source::Inbox } else { Source::Timeline };
                s.iter().rev().map(|id| e(*id, src)).collect()
            }).collect();
            let mut expected: Vec<u64> = lists.iter().flatten().map(|x| x.message_id).collect::<std::collections::BTreeSet<_>>().into_iter().rev().collect();
            expected.truncate(limit);
            let got: Vec<u64> = merge_newest_first(lists, limit).iter().map(|x| x.message_id).collect();
            prop_assert_eq!(got, expected);
        }
    }
}

//! Unit tests of the pure core: rows, fan-out, marks, unread emission, dedupe and aliases,
//! edit and recall rules, windows, records per event, and row ownership.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chatpipe_common::event::{rfc3339_ms, ChatEvent, EventType, MessageContent, MessageKind, SessionKind};
use chatpipe_common::row_key;
use chatpipe_common::rows::{tables, RowMutation};
use proptest::prelude::*;

use crate::core::{reason, Outcome, Outputs, PartitionCore, Rules};
use crate::state::PartitionState;

const T0: i64 = 1_790_000_080_000; // a minute boundary (…040_000) + 40 s

struct Script {
    core: PartitionCore,
    offset: i64,
    next_id: u64,
    now: i64,
}

fn event(id: u64, t: EventType, session: u64, kind: SessionKind, sender: u64, at: i64) -> ChatEvent {
    ChatEvent::bare(id, at, t, session, kind, sender)
}

fn body(text: &str) -> Option<MessageContent> {
    Some(MessageContent { kind: MessageKind::Text, body: text.into(), mentions: vec![] })
}

impl Script {
    fn new(rules: Rules) -> Self {
        Script { core: PartitionCore::new(0, rules, PartitionState::default()), offset: 0, next_id: 1_000, now: T0 }
    }
    fn ev(&mut self, t: EventType, session: u64, kind: SessionKind, sender: u64, at: i64) -> ChatEvent {
        self.next_id += 1;
        event(self.next_id, t, session, kind, sender, at)
    }
    fn push(&mut self, ev: ChatEvent) -> u64 {
        self.push_outcome(&ev);
        ev.message_id
    }
    fn push_outcome(&mut self, ev: &ChatEvent) -> Outcome {
        self.offset += 1;
        self.core.apply(self.offset, ev).unwrap_or_else(|| unreachable!("fresh offsets are applied"))
    }
    fn msg(&mut self, session: u64, kind: SessionKind, sender: u64, at: i64, text: &str) -> u64 {
        let mut e = self.ev(EventType::Message, session, kind, sender, at);
        e.message = body(text);
        if kind == SessionKind::Direct {
            e.recipient_id = Some(sender + 1);
        }
        self.push(e)
    }
    fn join(&mut self, session: u64, user: u64, at: i64) {
        let mut e = self.ev(EventType::Join, session, SessionKind::Group, user, at);
        e.user_id = Some(user);
        self.push(e);
    }
    fn leave(&mut self, session: u64, user: u64, at: i64) {
        let mut e = self.ev(EventType::Leave, session, SessionKind::Group, user, at);
        e.user_id = Some(user);
        self.push(e);
    }
    fn read(&mut self, session: u64, user: u64, upto: u64, at: i64) {
        let mut e = self.ev(EventType::Read, session, SessionKind::Group, user, at);
        e.target_id = Some(upto);
        self.push(e);
    }
    fn edit(&mut self, session: u64, sender: u64, target: u64, text: &str) -> Outcome {
        let mut e = self.ev(EventType::Edit, session, SessionKind::Group, sender, T0);
        e.target_id = Some(target);
        e.message = body(text);
        self.push_outcome(&e)
    }
    /// Ends a batch at a wall time past the unread emit interval.
    fn finish(&mut self) -> Outputs {
        self.now += 10_000;
        self.core.finish_batch(self.now).0
    }
}

fn rows(o: &Outputs, table: &str) -> Vec<RowMutation> {
    o.mutations().into_iter().filter(|r| r.table == table).collect()
}

fn cell_str(r: &RowMutation, col: &str) -> Option<String> {
    r.cells.iter().find(|c| c.column == col).map(|c| String::from_utf8_lossy(&c.value).into_owned())
}

fn unread_of(o: &Outputs) -> HashMap<String, Option<serde_json::Value>> {
    o.unread.iter().map(|(k, v)| (k.clone(), v.as_ref().map(|v| serde_json::from_str(v).unwrap()))).collect()
}

#[test]
fn seq_is_dense_per_session_and_rows_are_keyed_newest_first() {
    let mut s = Script::new(Rules::default());
    let a = s.msg(7, SessionKind::Group, 1, T0, "a");
    s.msg(8, SessionKind::Group, 1, T0, "x");
    let b = s.msg(7, SessionKind::Group, 2, T0 + 1, "b");
    let o = s.finish();
    let m = rows(&o, tables::MESSAGES);
    let seqs: Vec<_> = m.iter().map(|r| (row_key::decode(&r.row).unwrap(), cell_str(r, "m:seq").unwrap())).collect();
    assert_eq!(seqs, vec![((7, a), "1".into()), ((8, a + 1), "1".into()), ((7, b), "2".into())]);
    assert_eq!(cell_str(&m[0], "m:body").as_deref(), Some("a"));
    assert_eq!(cell_str(&m[0], "m:enc"), None);
    assert_eq!(cell_str(&m[0], "m:mentions"), None);
}

#[test]
fn one_rows_record_per_event_keyed_by_its_session_and_profiles_by_their_user() {
    let mut s = Script::new(Rules::default());
    s.join(7, 1, T0);
    s.join(7, 2, T0);
    s.msg(7, SessionKind::Group, 1, T0, "a");
    let mut p = s.ev(EventType::Profile, 42, SessionKind::Direct, 42, T0);
    p.user_id = Some(42);
    p.name = Some("Ann".into());
    p.avatar_url = Some("https://a.example/ann.png".into());
    s.push(p);
    let o = s.finish();
    assert_eq!(o.rows.iter().map(|r| r.key).collect::<Vec<_>>(), vec![7, 7, 7, 42]);
    let users = rows(&o, tables::USERS);
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].row, row_key::encode_id(42).into_bytes());
    assert_eq!(cell_str(&users[0], "u:name").as_deref(), Some("Ann"));
    assert_eq!(cell_str(&users[0], "u:avatar").as_deref(), Some("https://a.example/ann.png"));
    assert_eq!(cell_str(&users[0], "u:updated_at"), Some(T0.to_string()));
}

#[test]
fn sessions_row_tracks_kind_name_members_and_last_message() {
    let mut s = Script::new(Rules::default());
    s.join(7, 1, T0);
    s.join(7, 2, T0);
    let mut e = s.ev(EventType::Session, 7, SessionKind::Group, 1, T0);
    e.name = Some("lunch".into());
    s.push(e);
    let id = s.msg(7, SessionKind::Group, 2, T0 + 5, "hi");
    s.leave(7, 1, T0 + 6);
    let o = s.finish();
    let mut row: BTreeMap<String, String> = BTreeMap::new();
    for m in rows(&o, tables::SESSIONS) {
        assert_eq!(m.row, row_key::encode_id(7).into_bytes());
        for c in &m.cells {
            row.insert(c.column.clone(), String::from_utf8_lossy(&c.value).into_owned());
        }
    }
    let expected: BTreeMap<String, String> = [
        ("s:kind", "group".to_string()),
        ("s:created_at", T0.to_string()),
        ("s:name", "lunch".into()),
        ("s:members", "1".into()),
        ("s:last_seq", "1".into()),
        ("s:last_message_id", id.to_string()),
        ("s:last_sent_at", (T0 + 5).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(row, expected);
}

#[test]
fn large_bodies_are_lz4_compressed_and_mentions_stored() {
    let mut s = Script::new(Rules::default());
    let mut e = s.ev(EventType::Message, 7, SessionKind::Group, 1, T0);
    let text = "z".repeat(600);
    e.message = Some(MessageContent { kind: MessageKind::Text, body: text.clone(), mentions: vec![5, 9] });
    s.push(e);
    let o = s.finish();
    let r = rows(&o, tables::MESSAGES)[0].clone();
    assert_eq!(cell_str(&r, "m:enc").as_deref(), Some("lz4"));
    assert_eq!(cell_str(&r, "m:mentions").as_deref(), Some("5,9"));
    let stored = &r.cells.iter().find(|c| c.column == "m:body").unwrap().value;
    assert_eq!(lz4_flex::decompress_size_prepended(stored).unwrap(), text.as_bytes());
}

#[test]
fn fan_out_includes_sender_and_stops_above_threshold() {
    let mut s = Script::new(Rules { fanout_max_members: 3, ..Rules::default() });
    for u in [1, 2, 3] {
        s.join(10, u, T0);
    }
    for u in [1, 2, 3, 4] {
        s.join(11, u, T0);
    }
    s.msg(10, SessionKind::Group, 9, T0, "small group, sender not a member");
    s.msg(11, SessionKind::Group, 1, T0, "large group");
    s.msg(12, SessionKind::Channel, 1, T0, "channel");
    s.msg(13, SessionKind::Direct, 5, T0, "dm");
    let o = s.finish();
    let inbox: BTreeSet<(u64, u64)> = rows(&o, tables::INBOX)
        .iter()
        .map(|r| (row_key::decode(&r.row).unwrap().0, cell_str(r, "i:session").unwrap().parse().unwrap()))
        .collect();
    let expected: BTreeSet<(u64, u64)> = [(1, 10), (2, 10), (3, 10), (9, 10), (5, 13), (6, 13)].into();
    assert_eq!(inbox, expected);
    assert!(rows(&o, tables::INBOX).iter().all(|r| cell_str(r, "i:seq").as_deref() == Some("1")));
    assert_eq!(rows(&o, tables::CHANNEL_MESSAGES).len(), 1);
}

#[test]
fn duplicates_are_dropped_and_a_retry_id_acts_on_the_original() {
    let mut s = Script::new(Rules::default());
    let mut e = s.ev(EventType::Message, 7, SessionKind::Group, 1, T0);
    e.message = body("hi");
    e.client_msg_id = Some("c1".into());
    let mut retry = e.clone();
    retry.message_id += 100;
    let original = s.push(e);
    let alias = s.push(retry);
    let o = s.finish();
    assert_eq!(rows(&o, tables::MESSAGES).len(), 1);
    assert_eq!(o.outcomes.get(&Outcome::Duplicate), Some(&1));
    // an edit naming the retry's id edits the original row
    assert_eq!(s.edit(7, 1, alias, "fixed"), Outcome::Processed);
    let o = s.finish();
    let edited: Vec<_> = rows(&o, tables::MESSAGES).into_iter().filter(|r| !r.delete).collect();
    assert_eq!(edited.len(), 1);
    assert_eq!(row_key::decode(&edited[0].row).unwrap(), (7, original));
    assert_eq!(cell_str(&edited[0], "m:edited").as_deref(), Some("1"));
    assert!(o.dlq.is_empty());
}

#[test]
fn only_the_sender_may_edit_or_recall_and_unknown_targets_create_nothing() {
    let mut s = Script::new(Rules::default());
    s.join(7, 1, T0);
    s.join(7, 2, T0);
    let m = s.msg(7, SessionKind::Group, 1, T0, "original");
    s.finish();
    s.edit(7, 2, m, "not yours");
    let mut r = s.ev(EventType::Recall, 7, SessionKind::Group, 2, T0);
    r.target_id = Some(m);
    s.push(r);
    s.edit(7, 1, 999_999, "no such message");
    s.edit(8, 1, m, "other session");
    let o = s.finish();
    assert!(o.rows.is_empty(), "refused edits and recalls write nothing: {:?}", o.rows);
    let reasons: Vec<_> = o.dlq.iter().map(|d| d.reason).collect();
    assert_eq!(reasons, vec![reason::FORBIDDEN, reason::FORBIDDEN, reason::UNKNOWN_TARGET, reason::UNKNOWN_TARGET]);
    // the sender's recall marks the timeline row and the inbox rows of the fan-out
    let mut r = s.ev(EventType::Recall, 7, SessionKind::Group, 1, T0);
    r.target_id = Some(m);
    s.push(r);
    let o = s.finish();
    assert_eq!(cell_str(&rows(&o, tables::MESSAGES)[0], "m:recalled").as_deref(), Some("1"));
    let inbox: BTreeSet<u64> = rows(&o, tables::INBOX).iter().map(|r| row_key::decode(&r.row).unwrap().0).collect();
    assert_eq!(inbox, [1, 2].into());
    assert!(rows(&o, tables::INBOX).iter().all(|r| cell_str(r, "i:recalled").as_deref() == Some("1")));
}

#[test]
fn edits_update_the_inbox_previews_of_members_who_got_the_message() {
    let mut s = Script::new(Rules::default());
    s.join(7, 1, T0);
    s.join(7, 2, T0);
    let m = s.msg(7, SessionKind::Group, 1, T0, "typo");
    s.join(7, 3, T0); // joined after the message: no inbox row to update
    s.finish();
    s.edit(7, 1, m, "fixed");
    let o = s.finish();
    let inbox: BTreeMap<u64, String> = rows(&o, tables::INBOX)
        .iter()
        .map(|r| (row_key::decode(&r.row).unwrap().0, cell_str(r, "i:preview").unwrap()))
        .collect();
    assert_eq!(inbox, [(1, "fixed".to_string()), (2, "fixed".to_string())].into());
}

#[test]
fn unread_is_last_seq_minus_read_seq_and_sending_implies_reading() {
    let mut s = Script::new(Rules::default());
    s.join(7, 1, T0);
    s.join(7, 2, T0);
    let m1 = s.msg(7, SessionKind::Group, 1, T0, "1");
    s.msg(7, SessionKind::Group, 1, T0, "2");
    let o = s.finish();
    let u = unread_of(&o);
    assert_eq!(u["2|7"].as_ref().unwrap()["unread"], 2);
    assert_eq!(u["1|7"].as_ref().unwrap()["unread"], 0);
    s.msg(7, SessionKind::Group, 2, T0, "own message: 2 has read everything");
    let o = s.finish();
    let u = unread_of(&o);
    assert_eq!(u["2|7"].as_ref().unwrap()["unread"], 0);
    assert_eq!(u["1|7"].as_ref().unwrap()["unread"], 1);
    assert_eq!(u["1|7"].as_ref().unwrap()["read_seq"], 2);
    assert_eq!(u["1|7"].as_ref().unwrap()["last_seq"], 3);
    s.read(7, 1, m1, T0); // behind the mark: nothing moves
    let o = s.finish();
    assert!(o.unread.is_empty() && o.rows.is_empty(), "{:?}", o.unread);
    let mut r = s.ev(EventType::Read, 7, SessionKind::Group, 1, T0);
    r.read_seq = Some(3);
    s.push(r);
    let o = s.finish();
    let u = unread_of(&o);
    assert_eq!(u.len(), 1);
    assert_eq!(u["1|7"].as_ref().unwrap()["unread"], 0);
    let us = rows(&o, tables::USER_SESSIONS);
    assert_eq!(cell_str(&us[0], "f:read_seq").as_deref(), Some("3"));
}

#[test]
fn a_joiner_starts_at_the_current_seq_and_a_leaver_gets_a_tombstone() {
    let mut s = Script::new(Rules::default());
    s.join(7, 1, T0);
    s.msg(7, SessionKind::Group, 1, T0, "before 2 joined");
    s.join(7, 2, T0);
    s.msg(7, SessionKind::Group, 1, T0, "after");
    let o = s.finish();
    let u = unread_of(&o);
    assert_eq!(u["2|7"].as_ref().unwrap()["unread"], 1);
    let joined = rows(&o, tables::USER_SESSIONS)
        .into_iter()
        .find(|r| r.row == row_key::encode_pair(2, 7).into_bytes() && cell_str(r, "f:joined_seq").is_some())
        .unwrap();
    assert_eq!(cell_str(&joined, "f:joined_seq").as_deref(), Some("1"));
    assert_eq!(cell_str(&joined, "f:read_seq").as_deref(), Some("1"));
    s.leave(7, 2, T0);
    let o = s.finish();
    assert_eq!(o.unread, vec![("2|7".to_string(), None)]);
    let deletes: Vec<_> = o.mutations().into_iter().filter(|r| r.delete).map(|r| r.table).collect();
    assert_eq!(deletes, vec![tables::MEMBERS, tables::USER_SESSIONS]);
}

#[test]
fn unread_is_emitted_at_most_once_per_interval_with_its_latest_value() {
    let mut s = Script::new(Rules { unread_emit_interval_ms: 1_000, ..Rules::default() });
    s.join(7, 1, T0);
    s.join(7, 2, T0);
    s.finish(); // emits the joins at `now`
    let now = s.now;
    s.msg(7, SessionKind::Group, 1, T0, "a");
    assert!(s.core.finish_batch(now + 500).0.unread.is_empty(), "within the interval");
    s.msg(7, SessionKind::Group, 1, T0, "b");
    assert!(s.core.finish_batch(now + 900).0.unread.is_empty());
    assert_eq!(s.core.unread_due_at(), Some(now + 1_000));
    let o = s.core.finish_batch(now + 1_000).0;
    let u = unread_of(&o);
    assert_eq!(u.len(), 2, "each changed pair once");
    assert_eq!(u["2|7"].as_ref().unwrap()["unread"], 2, "its value at emission time");
    assert_eq!(s.core.unread_due_at(), None);
}

#[test]
fn broker_and_changelog_records_per_message_do_not_grow_with_the_group() {
    // 500 members (at the fan-out threshold) and 5,000 (above it): one chat.rows record and
    // the same number of changelog records per message
    let per_message = |members: u64| {
        let mut s = Script::new(Rules::default());
        for u in 0..members {
            s.join(7, 1_000 + u, T0);
        }
        s.finish();
        let mut counts = Vec::new();
        for i in 0..5 {
            s.msg(7, SessionKind::Group, 1_000 + i, T0 + i as i64, "hello");
            let (o, changes) = s.core.finish_batch(s.now); // unread not yet due
            counts.push((o.rows.len(), o.unread.len(), changes.len()));
        }
        counts
    };
    let small = per_message(500);
    let large = per_message(5_000);
    assert_eq!(small, large);
    assert!(small.iter().all(|(rows, unread, _)| *rows == 1 && *unread == 0), "{small:?}");
    // session, sender's mark, message entry, window, Meta
    assert!(small.iter().all(|(_, _, changes)| *changes == 5), "{small:?}");
}

#[test]
fn windows_emit_once_the_watermark_passes_and_late_events_correct_them() {
    let rules = Rules { window_ms: 60_000, grace_ms: 10_000, correction_horizon_ms: 600_000, ..Rules::default() };
    let w0 = T0 - 40_000; // window start
    let mut s = Script::new(rules);
    s.msg(7, SessionKind::Group, 1, T0, "a");
    s.msg(7, SessionKind::Group, 2, T0 + 5_000, "b");
    assert!(s.finish().session_aggs.is_empty(), "watermark has not passed the window end");
    s.msg(8, SessionKind::Group, 1, w0 + 60_000 + 10_000, "moves the watermark to the window end");
    let o = s.finish();
    assert_eq!(o.session_aggs.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&o.session_aggs[0].1).unwrap();
    assert_eq!((v["messages"].as_u64(), v["senders"].as_u64(), v["revision"].as_u64()), (Some(2), Some(2), Some(2)));
    assert_eq!(v["session_id"], "7");
    assert_eq!(o.session_aggs[0].0, format!("7|{}", rfc3339_ms(w0)));
    let counts: Vec<_> = o.rows.iter().filter(|r| r.decode().unwrap()[0].table == tables::COUNTS).collect();
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].key, 7, "a window's counts row is keyed by its session");
    let p = o.progress.unwrap();
    assert_eq!(p.partials.len(), 1);
    assert_eq!(p.partials[0].messages, 2);
    // a late event inside the horizon corrects the window
    s.msg(7, SessionKind::Group, 3, T0 + 1, "late");
    let o = s.finish();
    let v: serde_json::Value = serde_json::from_str(&o.session_aggs[0].1).unwrap();
    assert_eq!((v["messages"].as_u64(), v["senders"].as_u64(), v["revision"].as_u64()), (Some(3), Some(3), Some(3)));
    assert_eq!(o.outcomes.get(&Outcome::Corrected), Some(&1));
    assert_eq!(o.progress.unwrap().partials[0].revision, 3, "a partial's revision is its message count");
    // beyond the horizon: timeline yes, count no, DLQ copy with reason late
    s.msg(9, SessionKind::Group, 1, T0 + 2_000_000, "far ahead");
    s.finish();
    s.msg(7, SessionKind::Group, 4, T0 + 2, "too late");
    let o = s.finish();
    assert!(o.session_aggs.is_empty());
    assert_eq!(rows(&o, tables::MESSAGES).len(), 1);
    assert_eq!(o.dlq.iter().map(|d| d.reason).collect::<Vec<_>>(), vec!["late"]);
}

#[test]
fn idle_partition_advances_its_watermark_on_wall_time() {
    let rules = Rules { window_ms: 60_000, grace_ms: 10_000, ..Rules::default() };
    let mut s = Script::new(rules);
    s.msg(7, SessionKind::Group, 1, T0, "a");
    assert!(s.finish().session_aggs.is_empty());
    s.core.advance_idle(T0 + 120_000);
    let o = s.finish();
    assert_eq!(o.session_aggs.len(), 1);
    assert_eq!(o.progress.unwrap().watermark_ms, T0 + 110_000);
}

#[test]
fn replay_of_applied_offsets_is_skipped_and_outputs_are_deterministic() {
    let run = || {
        let mut s = Script::new(Rules::default());
        s.join(7, 1, T0);
        s.msg(7, SessionKind::Group, 2, T0, "x");
        let o = s.finish();
        (o.rows, o.unread, s.core.state.meta.applied_offset)
    };
    assert_eq!(run(), run());
    let mut s = Script::new(Rules::default());
    s.msg(7, SessionKind::Group, 2, T0, "x");
    s.finish();
    let again = s.ev(EventType::Message, 7, SessionKind::Group, 2, T0);
    s.core.apply(1, &again); // offset 1 was applied already
    assert!(s.finish().rows.is_empty());
}

#[test]
fn the_dedupe_horizon_runs_on_ingest_time_not_on_sent_at() {
    let mut s = Script::new(Rules { dedupe_horizon_ms: 60_000, ..Rules::default() });
    let mut e = s.ev(EventType::Message, 7, SessionKind::Group, 1, T0);
    e.message = body("hi");
    e.client_msg_id = Some("c1".into());
    e.sent_at_ms = T0 - 10 * 86_400_000; // a producer clock days behind
    let mut retry = e.clone();
    retry.message_id += 1;
    retry.ingested_at_ms += 1_000;
    s.push(e);
    s.push(retry.clone());
    assert_eq!(s.finish().outcomes.get(&Outcome::Duplicate), Some(&1));
    // a retry after the horizon (ingest time) is a new message
    retry.message_id += 1;
    retry.ingested_at_ms += 120_000;
    s.push(retry);
    assert_eq!(rows(&s.finish(), tables::MESSAGES).len(), 1);
}

/// Random events over a few sessions (and profiles over a few users).
fn arb_events() -> impl Strategy<Value = Vec<ChatEvent>> {
    let one = (0u8..9, 1u64..5, 1u64..8, 0u64..40, any::<bool>());
    prop::collection::vec(one, 1..120).prop_map(|specs| {
        let mut out = Vec::new();
        for (i, (t, session, user, target, flag)) in specs.into_iter().enumerate() {
            let id = 10_000 + i as u64;
            let at = T0 + i as i64 * 1_000;
            let kind = if session == 1 { SessionKind::Direct } else { SessionKind::Group };
            let mut e = event(id, EventType::Message, session, kind, user, at);
            match t {
                0..=2 => {
                    e.message = body("m");
                    e.recipient_id = Some(user + 1);
                    if flag {
                        e.client_msg_id = Some(format!("c{}", target % 5));
                    }
                }
                3 => {
                    e.event_type = EventType::Join;
                    e.user_id = Some(user);
                }
                4 => {
                    e.event_type = EventType::Leave;
                    e.user_id = Some(user);
                }
                5 => {
                    e.event_type = if flag { EventType::Edit } else { EventType::Recall };
                    e.target_id = Some(10_000 + target);
                    e.message = body("e");
                }
                6 => {
                    e.event_type = EventType::Read;
                    e.target_id = Some(10_000 + target);
                }
                7 => {
                    e.event_type = EventType::Session;
                    e.name = Some("n".into());
                }
                _ => {
                    e.event_type = EventType::Profile;
                    e.user_id = Some(user);
                    e.session_id = user;
                    e.name = Some("u".into());
                }
            }
            out.push(e);
        }
        out
    })
}

proptest! {
    /// Row ownership: no (table, row) is written by events of two keys, and every record's
    /// key is the owner of its rows — so keying chat.rows by it keeps each row in order.
    #[test]
    fn no_row_is_written_by_events_of_two_keys(events in arb_events(), batch in 1usize..20) {
        let mut core = PartitionCore::new(0, Rules { fanout_max_members: 3, ..Rules::default() }, PartitionState::default());
        let mut owners: HashMap<(String, Vec<u8>), u64> = HashMap::new();
        let mut now = T0;
        for (i, chunk) in events.chunks(batch).enumerate() {
            for (j, e) in chunk.iter().enumerate() {
                core.apply((i * batch + j) as i64, e);
            }
            now += 5_000;
            let (o, _) = core.finish_batch(now);
            for r in &o.rows {
                for m in &r.decode().unwrap() {
                    let owner = *owners.entry((m.table.clone(), m.row.clone())).or_insert(r.key);
                    prop_assert_eq!(owner, r.key, "{} {:?} written under two keys", m.table, String::from_utf8_lossy(&m.row));
                }
            }
        }
    }
}

/// A changelog as the broker keeps it, in order: `(offset, key, writer's epoch, value)`,
/// `None` a tombstone (or a fence's value, which restore does not read).
#[derive(Default, Clone)]
struct Changelog {
    next: i64,
    records: Vec<(i64, crate::state::StateKey, i64, Option<crate::state::ChangeRecord>)>,
}

impl Changelog {
    /// Appends a batch's records written under `epoch`.
    fn append(&mut self, epoch: i64, changes: Vec<(crate::state::StateKey, crate::state::ChangeRecord)>) {
        for (k, r) in changes {
            let v = if r.prev.is_none() && r.new.is_none() { None } else { Some(r) };
            self.records.push((self.next, k, epoch, v));
            self.next += 1;
        }
    }

    /// A new owner's fence: its offset is the owner's epoch.
    fn fence(&mut self) -> i64 {
        let at = self.next;
        self.records.push((at, crate::state::StateKey::Fence(at as u64), -1, None));
        self.next += 1;
        at
    }

    /// Restore as the runner does (`changelog::Fold`).
    fn restore(&self) -> PartitionState {
        let mut f = crate::changelog::Fold::new();
        for (o, k, e, v) in &self.records {
            f.push(*o, k.clone(), *e, v.clone());
        }
        f.finish()
    }

    /// What compaction leaves: the latest record per key (offsets kept), tombstoned keys gone.
    fn compact(&self) -> Changelog {
        let mut last: HashMap<crate::state::StateKey, i64> = HashMap::new();
        for (o, k, _, _) in &self.records {
            last.insert(k.clone(), *o);
        }
        let records = self
            .records
            .iter()
            .filter(|(o, k, _, v)| last[k] == *o && (v.is_some() || matches!(k, crate::state::StateKey::Fence(_))))
            .cloned()
            .collect();
        Changelog { next: self.next, records }
    }
}

/// State without what depends on wall time (when unread emissions fell due).
fn comparable(st: &PartitionState) -> BTreeMap<String, crate::state::StateValue> {
    let mut snap = st.snapshot();
    for v in snap.values_mut() {
        if let crate::state::StateValue::Session(s) = v {
            s.unread_pending = Default::default();
        }
    }
    snap
}

#[test]
fn a_key_written_by_an_aborted_batch_does_not_come_back() {
    use crate::state::{Member, StateKey};
    let member = Member { joined_at_ms: 0, joined_seq: 0, read_seq: 0, read_message_id: 0 };
    let mut st = PartitionState::default();
    st.meta.applied_offset = 100;
    let mut log = Changelog::default();
    log.append(-1, st.drain_changes());
    // batch 101..200 adds a member, its entries land, its Meta does not (crash)
    st.add_member(7, 1, member.clone());
    st.meta.applied_offset = 200;
    let mut aborted = st.drain_changes();
    aborted.retain(|(k, _)| *k != StateKey::Meta);
    log.append(-1, aborted);
    // the replay cuts 101..300 as one batch that adds and removes the member (no net change)
    let mut st = log.restore();
    assert_eq!(st.meta.applied_offset, 100);
    assert!(st.members.get(&(7, 1)).is_none());
    st.add_member(7, 1, member);
    st.remove_member(7, 1);
    st.meta.applied_offset = 300;
    log.append(-1, st.drain_changes());
    let restored = log.restore();
    assert_eq!(restored.meta.applied_offset, 300);
    assert!(restored.members.get(&(7, 1)).is_none(), "a deleted key came back");
    assert!(log.compact().restore().members.get(&(7, 1)).is_none(), "after compaction too");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random events cut into random batches, a crash after any subset of a batch's entries
    /// (its Meta not written), a new owner's fence and restore (after a compaction or not),
    /// the old owner — only frozen, a zombie — finishing its batch after that fence, Meta
    /// included, and a replay with other batch boundaries: the state ends equal to an
    /// uncrashed run's.
    #[test]
    fn restore_after_any_crash_and_any_batching_equals_an_uncrashed_run(
        events in arb_events(),
        reference_batch in 1usize..30,
        crash_batch in 1usize..30,
        replay_batch in 1usize..30,
        crash_at in 0usize..200,
        written in prop::collection::vec(any::<bool>(), 64),
        compacted in any::<bool>(),
        second_crash in any::<bool>(),
        zombie in any::<bool>(),
    ) {
        use crate::state::{ChangeRecord, StateKey};
        let rules = || Rules { fanout_max_members: 3, dedupe_horizon_ms: 20_000, ..Rules::default() };
        let run = |core: &mut PartitionCore, log: &mut Changelog, epoch: i64, from: usize, batch: usize, stop: Option<usize>| -> Option<Vec<(StateKey, ChangeRecord)>> {
            let mut now = T0;
            let mut i = from;
            let mut n = 0;
            while i < events.len() {
                let end = (i + batch).min(events.len());
                for (off, e) in events.iter().enumerate().take(end).skip(i) {
                    core.apply(off as i64, e);
                }
                now += 700;
                let (_, changes) = core.finish_batch(now);
                if stop == Some(n) {
                    return Some(changes); // crash while writing this batch
                }
                log.append(epoch, changes);
                i = end;
                n += 1;
            }
            None
        };
        let fresh = || PartitionState::restore(HashMap::new()); // nothing applied: offset −1
        let mut reference = PartitionCore::new(0, rules(), fresh());
        run(&mut reference, &mut Changelog::default(), -1, 0, reference_batch, None);

        let mut log = Changelog::default();
        let mut epoch = log.fence();
        let mut core = PartitionCore::new(0, rules(), fresh());
        let batches = events.len().div_ceil(crash_batch);
        let mut crashes = vec![crash_at % batches.max(1)];
        if second_crash {
            crashes.push((crash_at / 2) % batches.max(1));
        }
        let mut from = 0;
        let mut batch = crash_batch;
        let mut zombie_wrote = false;
        for stop in crashes {
            let crashed = run(&mut core, &mut log, epoch, from, batch, Some(stop));
            let mut unwritten = Vec::new();
            if let Some(changes) = crashed {
                // any subset of the entries lands, never the Meta
                let mut landed = Vec::new();
                for (j, c) in changes.into_iter().enumerate() {
                    if c.0 != StateKey::Meta && written[j % written.len()] {
                        landed.push(c);
                    } else {
                        unwritten.push(c);
                    }
                }
                log.append(epoch, landed);
            }
            let old_epoch = std::mem::replace(&mut epoch, log.fence());
            // compaction never reaches a zombie's record before its keys were logged again
            // (the changelog's min.compaction.lag.ms is 24 h): here, not until the end
            if compacted && !zombie_wrote {
                log = log.compact();
            }
            // the new owner reads the log up to its fence
            let mut st = log.restore();
            if zombie {
                // the old owner was frozen, not dead: it writes the rest of its batch after
                // the new owner's fence, a stale Meta included; the new owner finds these
                // records after its first Meta (`changelog::foreign_records`) and logs their
                // keys again. (Compaction is not run in between: the changelog's
                // min.compaction.lag.ms keeps a zombie's record uncompacted far longer.)
                let keys: Vec<StateKey> = unwritten.iter().map(|(k, _)| k.clone()).collect();
                log.append(old_epoch, unwritten);
                st.relog_keys(keys);
                zombie_wrote = true;
            }
            from = usize::try_from(st.meta.applied_offset + 1).unwrap_or(0);
            core = PartitionCore::new(0, rules(), st);
            batch = replay_batch;
        }
        run(&mut core, &mut log, epoch, from, batch, None);
        prop_assert_eq!(comparable(&core.state), comparable(&reference.state));
        let restored = log.restore();
        prop_assert_eq!(comparable(&restored), comparable(&reference.state), "restored from the final changelog");
        let restored = log.compact().restore();
        prop_assert_eq!(comparable(&restored), comparable(&reference.state), "restored after compaction");
    }
}

#[test]
fn a_leave_after_a_message_in_one_interval_still_gets_its_tombstone() {
    let mut s = Script::new(Rules::default());
    s.join(7, 1, T0);
    s.join(7, 2, T0);
    s.finish();
    s.msg(7, SessionKind::Group, 1, T0, "everyone's unread changes");
    s.leave(7, 2, T0);
    let o = s.finish();
    let u = unread_of(&o);
    assert_eq!(u.get("2|7"), Some(&None), "{u:?}");
    assert_eq!(u["1|7"].as_ref().unwrap()["unread"], 0);
}

//! Session routes: `GET /v1/sessions/{session}`, `/messages` (a timeline page newest first,
//! or the catch-up after a seq oldest first) and `/members`.
//!
//! A timeline page is one HBase scan once the session's kind is cached (its table depends on
//! it); a catch-up never has a hole (it stops at the first seq not yet written). An unknown
//! session is a 404; HBase errors are 503 (retriable) or 500.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use serde_json::json;

use super::errors::{bad, ok, ApiError, ApiResult};
use super::params::{self, limit_of, opt_id, opt_seq, parse_id, parse_query};
use super::views::{id_str, message_json, session_json, time};
use super::{AppState, MAX_CATCH_UP_ROWS};
use crate::store::{Calls, Message, SessionInfo, Start, Store};

pub(super) async fn get_session(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let session = parse_id("session", &raw)?;
    parse_query(q.as_deref(), params::NONE)?;
    let info = st.known_session(&calls, session).await?;
    ok(session_json(&info))
}

pub(super) async fn get_messages(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let session = parse_id("session", &raw)?;
    let q = parse_query(q.as_deref(), params::MESSAGES)?;
    let limit = limit_of(&q)?;
    let before = opt_id(&q, "before")?;
    let after_seq = opt_seq(&q, "after_seq")?;
    let Some(after) = after_seq else {
        let table = st.timeline_table(&calls, session).await?;
        let from = before.map_or(Start::Newest, Start::Before);
        let (messages, _) = st.store.timeline(&calls, table, session, from, None, limit).await?;
        let next_before = (messages.len() == limit).then(|| messages.last().map(|m| id_str(m.m.message_id))).flatten();
        return ok(json!({
            "session_id": id_str(session),
            "order": "newest_first",
            "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
            "next_before": next_before,
        }));
    };
    if before.is_some() {
        return Err(bad("after_seq", "cannot be combined with `before`"));
    }
    let info = st.known_session(&calls, session).await?;
    let (messages, next) = catch_up(&st.store, &calls, &info, after, limit).await?;
    ok(json!({
        "session_id": id_str(session),
        "order": "oldest_first",
        "last_seq": info.last_seq,
        "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
        "next_after_seq": next,
    }))
}

/// Messages with `seq` in `after+1 ..= after+limit`, oldest first, stopping at the first seq
/// not (yet) in HBase so that the answer never has a hole. The seq is dense but the rows are
/// ordered by message id, so this scans from whichever end of the timeline is closer to
/// `after` (newest first when fewer than `after` messages follow it, oldest first otherwise)
/// until every wanted seq was seen: the cost is
/// `O(min(after, last_seq − after) + limit)` rows, capped at [`MAX_CATCH_UP_ROWS`].
/// Returns the messages and the `after_seq` to ask next (`None`: caught up with `last_seq`).
async fn catch_up(
    store: &Store,
    calls: &Calls,
    info: &SessionInfo,
    after: u64,
    limit: usize,
) -> Result<(Vec<Message>, Option<u64>), ApiError> {
    let last = info.last_seq;
    if after >= last {
        return Ok((Vec::new(), None));
    }
    let hi = last.min(after.saturating_add(limit as u64));
    let want = (hi - after) as usize;
    let from_newest = last - after <= after;
    let skip = if from_newest { last - hi } else { after };
    let mut chunk = usize::try_from(skip).unwrap_or(usize::MAX).saturating_add(want).saturating_add(16).min(1000);
    let mut key = None;
    let mut found: BTreeMap<u64, Message> = BTreeMap::new();
    let mut examined = 0usize;
    loop {
        let from = if from_newest { Start::Key } else { Start::Oldest };
        let (rows, next) = store.timeline(calls, info.timeline_table(), info.session_id, from, key, chunk).await?;
        examined += rows.len();
        let exhausted = rows.len() < chunk;
        for m in rows {
            if let Some(s) = m.m.seq.filter(|s| *s > after && *s <= hi) {
                found.insert(s, m);
            }
        }
        if found.len() == want || exhausted || examined >= MAX_CATCH_UP_ROWS {
            break;
        }
        key = next;
        chunk = 1000;
    }
    let mut out = Vec::with_capacity(found.len());
    let mut expect = after + 1;
    for (s, m) in found {
        if s != expect {
            break;
        }
        out.push(m);
        expect += 1;
    }
    let reached = expect - 1;
    Ok((out, (reached < last).then_some(reached)))
}

pub(super) async fn get_members(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let session = parse_id("session", &raw)?;
    let q = parse_query(q.as_deref(), params::MEMBERS)?;
    let limit = limit_of(&q)?;
    let after = opt_id(&q, "after")?;
    st.timeline_table(&calls, session).await?; // 404 for an unknown session
    let members = st.store.members(&calls, session, after, limit).await?;
    let next_after = (members.len() == limit).then(|| members.last().map(|m| id_str(m.user_id))).flatten();
    ok(json!({
        "session_id": id_str(session),
        "members": members.iter().map(|m| json!({
            "user_id": id_str(m.user_id),
            "joined_at": time(m.joined_at_ms),
        })).collect::<Vec<_>>(),
        "next_after": next_after,
    }))
}

//! `GET /v1/users/{user}/inbox`: the user's `chat:inbox` rows merged with the timelines of
//! their large groups (read fan-out, merged by `crate::inbox`).
//!
//! HBase operations: the inbox scan and one timeline scan per large group, run at once, when
//! the user's large groups are cached (`crate::large_groups`, whose doc states how stale
//! that list may be); otherwise also a `chat:user_sessions` scan and a `chat:sessions`
//! multi-get, which refill the cache. A user with no inbox row, no session and no profile is
//! a 404; HBase errors are 503 (retriable) or 500.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use chatpipe_sink::hbase::HbaseError;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use super::errors::{ok, ApiResult};
use super::params::{self, limit_of, opt_id, parse_id, parse_query};
use super::views::id_str;
use super::AppState;
use crate::inbox::{merge_newest_first, Entry};
use crate::store::{self, Calls, Start};

/// Large-group timelines scanned at once for one inbox page.
const MERGE_CONCURRENCY: usize = 8;

/// One timeline page of each large group `(session, joined_seq)`, as inbox entries: only the
/// messages after the user joined.
async fn timelines(
    st: &AppState,
    calls: &Calls,
    large: &[(u64, u64)],
    from: Start,
    limit: usize,
) -> Result<Vec<Vec<Entry>>, HbaseError> {
    let preview_chars = st.preview_chars;
    futures::stream::iter(large.iter().copied())
        .map(|(session, joined_seq)| async move {
            let (messages, _) =
                st.store.timeline(calls, store::timeline_table("group"), session, from, None, limit).await?;
            Ok::<_, HbaseError>(
                messages
                    .into_iter()
                    .filter(|m| m.m.seq.is_none_or(|s| s > joined_seq))
                    .map(|m| Entry::from_message(&m, preview_chars))
                    .collect(),
            )
        })
        .buffer_unordered(MERGE_CONCURRENCY)
        .try_collect()
        .await
}

pub(super) async fn get_inbox(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let user = parse_id("user", &raw)?;
    let q = parse_query(q.as_deref(), params::INBOX)?;
    let limit = limit_of(&q)?;
    let before = opt_id(&q, "before")?;
    let from = before.map_or(Start::Newest, Start::Before);
    let (rows, groups, mut lists) = match st.large_groups.get(user, Instant::now()) {
        Some(groups) => {
            let (rows, lists) = futures::try_join!(
                st.store.inbox(&calls, user, before, limit),
                timelines(&st, &calls, &groups.large, from, limit)
            )?;
            (rows, groups, lists)
        }
        None => {
            let started = Instant::now();
            let (rows, memberships) = futures::try_join!(
                st.store.inbox(&calls, user, before, limit),
                st.store.user_sessions(&calls, user, store::MAX_USER_SESSIONS)
            )?;
            let ids: Vec<u64> = memberships.iter().map(|m| m.session_id).collect();
            let infos = if ids.is_empty() { Default::default() } else { st.store.sessions(&calls, &ids).await? };
            for info in infos.values() {
                st.remember_kind(info.session_id, &info.kind);
            }
            let groups = st.large_groups.insert(user, started, &memberships, &infos, Instant::now());
            let lists = timelines(&st, &calls, &groups.large, from, limit).await?;
            (rows, groups, lists)
        }
    };
    if rows.is_empty() && !groups.any_session {
        st.require_user(&calls, user).await?;
    }
    lists.push(rows.iter().map(Entry::from_inbox).collect());
    let merged = merge_newest_first(lists, limit);
    let next_before = (merged.len() == limit).then(|| merged.last().map(|e| id_str(e.message_id))).flatten();
    ok(json!({
        "user_id": id_str(user),
        "entries": merged.iter().map(Entry::to_json).collect::<Vec<_>>(),
        "next_before": next_before,
    }))
}

//! User routes: `GET /v1/users/{user}/sessions` (the user's sessions with `unread` and the
//! last message, newest activity first) and `GET /v1/users/{user}` (the profile).
//!
//! A sessions page reads the user's memberships (one scan), their sessions (one multi-get)
//! and the last messages of the page (one multi-get per timeline table); nothing is cached,
//! so `unread` is as fresh as HBase. A user with neither a profile nor a session is a 404.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use serde_json::{json, Value};

use super::errors::{ok, ApiError, ApiResult};
use super::params::{self, limit_of, parse_id, parse_query, parse_session_cursor};
use super::views::{id_str, preview, time};
use super::AppState;
use crate::store::{self, Calls, Message, SessionInfo};

pub(super) async fn get_user_sessions(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let user = parse_id("user", &raw)?;
    let q = parse_query(q.as_deref(), params::USER_SESSIONS)?;
    let limit = limit_of(&q)?;
    let cursor = q.get("before").map(|v| parse_session_cursor(v)).transpose()?;
    let memberships = st.store.user_sessions(&calls, user, store::MAX_USER_SESSIONS).await?;
    if memberships.is_empty() {
        st.require_user(&calls, user).await?;
        return ok(json!({ "user_id": id_str(user), "sessions": [], "next_before": null }));
    }
    let ids: Vec<u64> = memberships.iter().map(|m| m.session_id).collect();
    let infos = st.store.sessions(&calls, &ids).await?;
    let mut items: Vec<(i64, u64, &store::Membership, &SessionInfo)> = memberships
        .iter()
        .filter_map(|m| {
            let info = infos.get(&m.session_id)?;
            let activity = info.last_sent_at_ms.or(info.created_at_ms).or(m.joined_at_ms).unwrap_or(0);
            Some((activity, m.session_id, m, info))
        })
        .collect();
    items.sort_by_key(|i| std::cmp::Reverse((i.0, i.1)));
    if let Some(c) = cursor {
        items.retain(|i| (i.0, i.1) < c);
    }
    let more = items.len() > limit;
    items.truncate(limit);
    // the last messages of the page, one multi-get per timeline table
    let mut wanted: BTreeMap<&'static str, Vec<(u64, u64)>> = BTreeMap::new();
    for (_, session, _, info) in &items {
        if let Some(mid) = info.last_message_id {
            wanted.entry(info.timeline_table()).or_default().push((*session, mid));
        }
    }
    let mut last: HashMap<(u64, u64), Message> = HashMap::new();
    for (table, keys) in wanted {
        for m in st.store.messages(&calls, table, &keys).await? {
            last.insert((m.m.session_id, m.m.message_id), m);
        }
    }
    let sessions: Vec<Value> = items
        .iter()
        .map(|(activity, session, m, info)| {
            let last_message = info.last_message_id.and_then(|mid| last.get(&(*session, mid))).map(|msg| {
                json!({
                    "message_id": id_str(msg.m.message_id),
                    "sender_id": msg.m.sender_id.map(id_str),
                    "kind": msg.m.kind,
                    "preview": if msg.m.recalled { None } else { preview(msg.m.body.as_deref(), st.preview_chars) },
                    "sent_at": time(msg.m.sent_at_ms),
                    "seq": msg.m.seq,
                    "recalled": msg.m.recalled,
                })
            });
            json!({
                "session_id": id_str(*session),
                "kind": info.kind,
                "name": info.name,
                "members": info.members,
                "last_seq": info.last_seq,
                "read_seq": m.read_seq,
                "unread": info.last_seq.saturating_sub(m.read_seq),
                "joined_at": time(m.joined_at_ms),
                "last_activity_at": time(Some(*activity)),
                "last_message": last_message,
                "cursor": format!("{activity}.{session}"),
            })
        })
        .collect();
    let next_before = if more { items.last().map(|(a, s, _, _)| json!(format!("{a}.{s}"))) } else { None };
    ok(json!({ "user_id": id_str(user), "sessions": sessions, "next_before": next_before }))
}

pub(super) async fn get_user(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let user = parse_id("user", &raw)?;
    parse_query(q.as_deref(), params::NONE)?;
    let profile = match st.store.profile(&calls, user).await? {
        Some(p) => p,
        None if !st.store.user_sessions(&calls, user, 1).await?.is_empty() => {
            store::Profile { user_id: user, name: None, avatar: None, updated_at_ms: None }
        }
        None => return Err(ApiError::NotFound("user".into())),
    };
    ok(json!({
        "user_id": id_str(profile.user_id),
        "name": profile.name,
        "avatar_url": profile.avatar,
        "updated_at": time(profile.updated_at_ms),
    }))
}

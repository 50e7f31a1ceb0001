//! Which of a user's sessions an inbox page merges (read fan-out), remembered per user so a
//! warm inbox page costs the inbox scan and one timeline scan per large group — not also a
//! `chat:user_sessions` scan and a `chat:sessions` multi-get.
//!
//! A user's entry is their large groups (kind `group`, more than `--fanout-max-members`
//! members) with the seq they joined at, and whether they are in any session at all (for the
//! 404 of an unknown user). It is built from the same two reads an uncached page makes.
//!
//! **Staleness (the guarantee)**: an entry is used for at most `--inbox-cache-ttl` (default
//! 30 s; `0s` turns the cache off and every page reads both tables). With live push on, the
//! `chat.rows` feed every instance reads also drops entries early, when the feed carries:
//! a `chat:user_sessions` row of the user naming `joined_seq` or `joined_at` (a join) or
//! deleting the row (a leave) — that user's entry; a `chat:sessions` row whose `members`
//! count takes a group cached here across the threshold — every entry. Because the feed can
//! run ahead of the sink's HBase write, a page read within [`GRACE`] of such a change is
//! answered from HBase and not cached. So: after a join, a leave or a group crossing the
//! threshold, an inbox page may miss (or still show) that group's merged messages for as
//! long as the sink takes to write the change plus up to the feed's lag — at most the TTL,
//! which alone bounds it with `--no-push` or when the feed lags more than [`GRACE`] behind
//! the sink. Inbox rows, timelines and message contents are never cached.
//!
//! **Bounds**: at most [`MAX_USERS`] entries and [`MAX_SIZES`] remembered group sizes; when
//! full, expired entries are dropped, then everything. Pure: the clock is a parameter; no
//! I/O, no failure.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::rows::{tables, RowMutation};
use parking_lot::Mutex;

use crate::store::{decode_pair, Membership, SessionInfo, SESSIONS};

/// Users with an entry at most.
pub const MAX_USERS: usize = 100_000;
/// Group sizes remembered at most (the groups of cached users, to see a crossing).
pub const MAX_SIZES: usize = 1_000_000;
/// After a change seen on the feed, how long reads of the affected users are not cached
/// (the sink may not have written the change to HBase yet).
pub const GRACE: Duration = Duration::from_secs(5);

/// What an inbox page merges for one user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserGroups {
    /// `(session, joined_seq)` of the user's large groups, by session id.
    pub large: Vec<(u64, u64)>,
    /// The user is in at least one session.
    pub any_session: bool,
}

impl UserGroups {
    /// The large groups among `memberships`, by the member counts of `infos`.
    pub fn of(memberships: &[Membership], infos: &BTreeMap<u64, SessionInfo>, fanout_max_members: u64) -> Self {
        let mut large: Vec<(u64, u64)> = memberships
            .iter()
            .filter(|m| infos.get(&m.session_id).is_some_and(|i| is_large(i, fanout_max_members)))
            .map(|m| (m.session_id, m.joined_seq))
            .collect();
        large.sort_unstable();
        UserGroups { large, any_session: !memberships.is_empty() }
    }
}

fn is_large(info: &SessionInfo, fanout_max_members: u64) -> bool {
    info.kind == "group" && info.members > fanout_max_members
}

struct Cached {
    groups: Arc<UserGroups>,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    users: HashMap<u64, Cached>,
    /// Member counts of the groups of cached users.
    sizes: HashMap<u64, u64>,
    /// When a change of each user was last seen on the feed.
    changed: HashMap<u64, Instant>,
    /// When a change affecting every user was last seen.
    all_changed: Option<Instant>,
}

/// The cache; shared by the inbox handler and the push feed.
pub struct LargeGroups {
    inner: Mutex<Inner>,
    ttl: Duration,
    fanout_max_members: u64,
}

impl LargeGroups {
    /// A cache whose entries live `ttl` (zero: nothing is cached).
    pub fn new(ttl: Duration, fanout_max_members: u64) -> Self {
        LargeGroups { inner: Mutex::new(Inner::default()), ttl, fanout_max_members }
    }

    /// The user's entry if younger than the TTL.
    pub fn get(&self, user: u64, now: Instant) -> Option<Arc<UserGroups>> {
        let inner = self.inner.lock();
        let c = inner.users.get(&user)?;
        (now.saturating_duration_since(c.at) < self.ttl).then(|| c.groups.clone())
    }

    /// The entry built from reads that started at `started`; remembered unless a change of
    /// the user was seen less than [`GRACE`] before `started` (or after it).
    pub fn insert(
        &self,
        user: u64,
        started: Instant,
        memberships: &[Membership],
        infos: &BTreeMap<u64, SessionInfo>,
        now: Instant,
    ) -> Arc<UserGroups> {
        let groups = Arc::new(UserGroups::of(memberships, infos, self.fanout_max_members));
        if self.ttl.is_zero() {
            return groups;
        }
        let mut inner = self.inner.lock();
        let settled = |t: Option<&Instant>| t.is_none_or(|t| started >= *t + GRACE);
        if !settled(inner.changed.get(&user)) || !settled(inner.all_changed.as_ref()) {
            return groups;
        }
        if inner.users.len() >= MAX_USERS {
            let ttl = self.ttl;
            inner.users.retain(|_, c| now.saturating_duration_since(c.at) < ttl);
            if inner.users.len() >= MAX_USERS {
                inner.users.clear();
                inner.sizes.clear();
            }
        }
        let groups_in = infos.values().filter(|i| i.kind == "group");
        if inner.sizes.len() + infos.len() > MAX_SIZES {
            inner.users.clear();
            inner.sizes.clear();
        }
        for info in groups_in {
            // a size the feed already updated is newer than this read
            inner.sizes.entry(info.session_id).or_insert(info.members);
        }
        inner.users.insert(user, Cached { groups: groups.clone(), at: now });
        groups
    }

    /// Applies one `chat.rows` record: drops the entries a membership change or a group
    /// crossing the threshold makes stale.
    pub fn observe(&self, mutations: &[RowMutation], now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut inner = None;
        for m in mutations {
            match m.table.as_str() {
                tables::USER_SESSIONS => {
                    let joined = m.cells.iter().any(|c| c.column == "f:joined_seq" || c.column == "f:joined_at");
                    if !(joined || m.delete) {
                        continue; // a read mark
                    }
                    let Some((user, _)) = decode_pair(&m.row) else { continue };
                    let inner = inner.get_or_insert_with(|| self.inner.lock());
                    inner.users.remove(&user);
                    if inner.changed.len() >= MAX_USERS {
                        inner.changed.retain(|_, t| now.saturating_duration_since(*t) < GRACE);
                        if inner.changed.len() >= MAX_USERS {
                            inner.changed.clear();
                            inner.all_changed = Some(now);
                            inner.users.clear();
                        }
                    }
                    inner.changed.insert(user, now);
                }
                SESSIONS if !m.delete => {
                    let Some(members) = m
                        .cells
                        .iter()
                        .rev()
                        .find(|c| c.column == "s:members")
                        .and_then(|c| std::str::from_utf8(&c.value).ok()?.trim().parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let Some(session) = session_of_key(&m.row) else { continue };
                    let inner = inner.get_or_insert_with(|| self.inner.lock());
                    let Some(old) = inner.sizes.get_mut(&session) else { continue };
                    let crossed = (*old > self.fanout_max_members) != (members > self.fanout_max_members);
                    *old = members;
                    if crossed {
                        inner.users.clear();
                        inner.sizes.clear();
                        inner.all_changed = Some(now);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The session id of a `chat:sessions` key (`SALT|ID`).
fn session_of_key(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key).ok()?.split('|').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_common::row_key;
    use chatpipe_common::rows::Cell;

    const T: u64 = 3;

    fn membership(session: u64, joined_seq: u64) -> Membership {
        Membership { session_id: session, joined_at_ms: None, joined_seq, read_seq: 0 }
    }

    fn info(session: u64, kind: &str, members: u64) -> SessionInfo {
        SessionInfo {
            session_id: session,
            kind: kind.into(),
            name: None,
            created_at_ms: None,
            members,
            last_seq: 0,
            last_message_id: None,
            last_sent_at_ms: None,
        }
    }

    fn put(table: &str, row: String, cells: &[(&str, &str)]) -> RowMutation {
        RowMutation {
            table: table.into(),
            row: row.into_bytes(),
            cells: cells.iter().map(|(c, v)| Cell::new(*c, v.as_bytes().to_vec())).collect(),
            delete: false,
            ingested_at_ms: 0,
        }
    }

    /// User 1 in a large group 10 (joined at seq 4), a small group 11, a big channel 12.
    fn load(cache: &LargeGroups, started: Instant, now: Instant) -> Arc<UserGroups> {
        let ms = [membership(10, 4), membership(11, 0), membership(12, 0)];
        let infos: BTreeMap<u64, SessionInfo> =
            [info(10, "group", T + 1), info(11, "group", T), info(12, "channel", 100)]
                .into_iter()
                .map(|i| (i.session_id, i))
                .collect();
        cache.insert(1, started, &ms, &infos, now)
    }

    #[test]
    fn only_groups_above_the_threshold_are_large() {
        let t0 = Instant::now();
        let cache = LargeGroups::new(Duration::from_secs(30), T);
        let g = load(&cache, t0, t0);
        assert_eq!(*g, UserGroups { large: vec![(10, 4)], any_session: true });
        assert_eq!(UserGroups::of(&[], &BTreeMap::new(), T), UserGroups::default());
    }

    #[test]
    fn entries_expire_after_the_ttl_and_a_zero_ttl_caches_nothing() {
        let t0 = Instant::now();
        let cache = LargeGroups::new(Duration::from_secs(30), T);
        load(&cache, t0, t0);
        assert!(cache.get(1, t0 + Duration::from_secs(29)).is_some());
        assert!(cache.get(1, t0 + Duration::from_secs(30)).is_none());
        let off = LargeGroups::new(Duration::ZERO, T);
        load(&off, t0, t0);
        assert!(off.get(1, t0).is_none());
    }

    #[test]
    fn a_join_or_leave_on_the_feed_drops_the_users_entry_and_defers_caching() {
        let t0 = Instant::now();
        let cache = LargeGroups::new(Duration::from_secs(30), T);
        load(&cache, t0, t0);
        // a read mark changes nothing
        cache.observe(&[put(tables::USER_SESSIONS, row_key::encode_pair(1, 10), &[("f:read_seq", "9")])], t0);
        assert!(cache.get(1, t0).is_some());
        // another user's join does not touch user 1
        cache.observe(&[put(tables::USER_SESSIONS, row_key::encode_pair(2, 10), &[("f:joined_seq", "9")])], t0);
        assert!(cache.get(1, t0).is_some());
        let t1 = t0 + Duration::from_secs(1);
        let join =
            put(tables::USER_SESSIONS, row_key::encode_pair(1, 13), &[("f:joined_seq", "2"), ("f:joined_at", "5")]);
        cache.observe(&[join], t1);
        assert!(cache.get(1, t1).is_none());
        // a read that started before the change plus the grace is answered, not kept
        load(&cache, t1 + GRACE - Duration::from_millis(1), t1 + GRACE);
        assert!(cache.get(1, t1 + GRACE).is_none());
        load(&cache, t1 + GRACE, t1 + GRACE);
        assert!(cache.get(1, t1 + GRACE).is_some());
        // a leave (the row deleted)
        let mut leave = put(tables::USER_SESSIONS, row_key::encode_pair(1, 10), &[]);
        leave.delete = true;
        cache.observe(&[leave], t1 + GRACE);
        assert!(cache.get(1, t1 + GRACE).is_none());
    }

    #[test]
    fn a_group_crossing_the_threshold_drops_every_entry() {
        let t0 = Instant::now();
        let cache = LargeGroups::new(Duration::from_secs(30), T);
        load(&cache, t0, t0);
        let members = |s: u64, n: u64| put(SESSIONS, crate::store::encode_id(s), &[("s:members", &n.to_string())]);
        // 10 grows, 11 stays small, 99 is nobody's here: no crossing
        cache.observe(&[members(10, T + 5), members(11, T), members(99, 1)], t0);
        assert!(cache.get(1, t0).is_some());
        // 11 grows past the threshold
        cache.observe(&[members(11, T + 1)], t0);
        assert!(cache.get(1, t0).is_none());
        load(&cache, t0, t0);
        assert!(cache.get(1, t0).is_none(), "not cached within the grace");
    }
}

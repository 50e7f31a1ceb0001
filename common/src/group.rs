//! Consumer-group liveness: a watchdog for a member left without partitions by a group
//! coordinator that formed the group wrongly.
//!
//! tansu 0.6's coordinator (DESIGN §2) can store an empty assignment as the formed group
//! when a dead leader expires during a follower's SyncGroup; every member then holds no
//! partitions, and a rejoin with the same member id is answered with the stored state, so
//! nothing is consumed until an operator restarts the members. Kafka does not do this, but
//! a member holding nothing while partitions are unowned is a fault on any broker, and the
//! repair is the same: the member leaves the group and joins again with a new member id
//! (unsubscribe, subscribe), which makes the coordinator form a new generation.
//!
//! **Rule.** [`GroupWatchdog::check`] is called about once a second by the thread that owns
//! the consumer. When this member's assignment has been empty for `after` (a session
//! timeout), it describes the group: if the members' assignments (Kafka fills them in) cover
//! fewer than the topic's partitions, or — where the broker leaves them empty (tansu) — the
//! group has no more members than the topic has partitions (then every assignor gives every
//! member at least one partition, so an empty one is a fault), it answers [`Verdict::Rejoin`].
//! Where members outnumber partitions an idle member is normal and the watchdog does nothing,
//! so on a healthy Kafka cluster it never acts. Rejoins are at most one per `after`.
//!
//! **Failure behaviour.** A describe that fails (broker down, no rights to describe) is
//! logged at debug and retried at the next check; the watchdog never panics and never
//! rejoins on a guess.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::groups::GroupList;

/// What [`GroupWatchdog::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Healthy,
    /// Leave and rejoin the group ([`rejoin`]).
    Rejoin,
}

/// What a group description says about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Members listed.
    pub members: usize,
    /// The topic's partitions the members' assignments name; `None` when the broker left
    /// every assignment empty (it does not report them).
    pub owned: Option<BTreeSet<i32>>,
}

impl GroupView {
    /// Whether a member with an empty assignment points at a fault: some partition of the
    /// topic's `partitions` has no owner.
    pub fn has_unowned(&self, partitions: usize) -> bool {
        match &self.owned {
            Some(owned) => owned.len() < partitions,
            None => self.members <= partitions,
        }
    }
}

/// Watches one member of one group, subscribed to one topic.
#[derive(Debug)]
pub struct GroupWatchdog {
    group: String,
    topic: String,
    after: Duration,
    empty_since: Option<Instant>,
    last_rejoin: Option<Instant>,
}

/// How long a group description may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

impl GroupWatchdog {
    /// A watchdog for `group` consuming `topic` that acts after `after` (the consumer's
    /// session timeout) of an empty assignment.
    pub fn new(group: &str, topic: &str, after: Duration) -> Self {
        GroupWatchdog { group: group.to_owned(), topic: topic.to_owned(), after, empty_since: None, last_rejoin: None }
    }

    /// Looks at the consumer's assignment and, after `after` of an empty one, at the topic
    /// and the group. Blocks for at most two metadata round trips (only then).
    pub fn check<X: ConsumerContext, C: Consumer<X>>(&mut self, consumer: &C, now: Instant) -> Verdict {
        let assigned = consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().filter(|e| e.topic() == self.topic).count())
            .unwrap_or(0);
        if !self.due(assigned, now) {
            return Verdict::Healthy;
        }
        let described = consumer.fetch_metadata(Some(&self.topic), DESCRIBE_TIMEOUT).and_then(|md| {
            let partitions = md.topics().iter().find(|t| t.name() == self.topic).map_or(0, |t| t.partitions().len());
            Ok((partitions, consumer.fetch_group_list(Some(&self.group), DESCRIBE_TIMEOUT)?))
        });
        match described {
            Ok((partitions, list)) => self.decide(&view_of(&list, &self.group, &self.topic), partitions, now),
            Err(e) => {
                tracing::debug!(error = %e, "describing the consumer group failed; checking again later");
                Verdict::Healthy
            }
        }
    }

    /// Whether the assignment has been empty long enough to look at the group.
    fn due(&mut self, assigned: usize, now: Instant) -> bool {
        if assigned > 0 {
            self.empty_since = None;
            return false;
        }
        let since = *self.empty_since.get_or_insert(now);
        let rested = self.last_rejoin.is_none_or(|t| now.duration_since(t) >= self.after);
        now.duration_since(since) >= self.after && rested
    }

    /// The verdict on a group description (the assignment was empty long enough).
    fn decide(&mut self, view: &GroupView, partitions: usize, now: Instant) -> Verdict {
        if partitions == 0 || !view.has_unowned(partitions) {
            return Verdict::Healthy;
        }
        tracing::warn!(
            members = view.members,
            partitions,
            empty_for = ?self.empty_since.map(|t| now.duration_since(t)),
            "this member has held no partitions for a session timeout while partitions are unowned; rejoining the group"
        );
        self.last_rejoin = Some(now);
        self.empty_since = None;
        Verdict::Rejoin
    }
}

/// Leaves the group and joins it again with a new member id.
pub fn rejoin<X: ConsumerContext, C: Consumer<X>>(consumer: &C, topic: &str) -> rdkafka::error::KafkaResult<()> {
    consumer.unsubscribe();
    consumer.subscribe(&[topic])
}

/// The view of `topic` in `group`'s description.
fn view_of(list: &GroupList, group: &str, topic: &str) -> GroupView {
    let Some(g) = list.groups().iter().find(|g| g.name() == group) else {
        return GroupView { members: 0, owned: None };
    };
    let mut owned = BTreeSet::new();
    let mut reported = false;
    for m in g.members() {
        if let Some(assigned) = m.assignment().filter(|a| !a.is_empty()).and_then(parse_assignment) {
            reported = true;
            owned.extend(assigned.into_iter().filter(|(t, _)| t == topic).flat_map(|(_, ps)| ps));
        }
    }
    GroupView { members: g.members().len(), owned: reported.then_some(owned) }
}

/// Decodes a consumer protocol assignment (`version: i16`, then `[topic: string,
/// [partition: i32]]`; user data after it is ignored). `None` when malformed.
pub fn parse_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut r = bytes;
    let _version = take_i16(&mut r)?;
    let topics = take_i32(&mut r)?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(take_i16(&mut r)?).ok()?;
        let name = std::str::from_utf8(r.get(..len)?).ok()?.to_owned();
        r = &r[len..];
        let n = take_i32(&mut r)?;
        let mut parts = Vec::with_capacity(usize::try_from(n).ok()?.min(r.len() / 4));
        for _ in 0..n.max(0) {
            parts.push(take_i32(&mut r)?);
        }
        out.push((name, parts));
    }
    Some(out)
}

fn take_i16(r: &mut &[u8]) -> Option<i16> {
    let (head, rest) = r.split_first_chunk::<2>()?;
    *r = rest;
    Some(i16::from_be_bytes(*head))
}

fn take_i32(r: &mut &[u8]) -> Option<i32> {
    let (head, rest) = r.split_first_chunk::<4>()?;
    *r = rest;
    Some(i32::from_be_bytes(*head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = 1i16.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // null user data
        b
    }

    #[test]
    fn assignments_decode_and_garbage_does_not() {
        let b = assignment(&[("chat.events", &[0, 3]), ("other", &[1])]);
        assert_eq!(
            parse_assignment(&b),
            Some(vec![("chat.events".to_owned(), vec![0, 3]), ("other".to_owned(), vec![1])])
        );
        assert_eq!(parse_assignment(&b[..b.len() - 9]), None, "truncated inside the partitions");
        assert_eq!(parse_assignment(&[0, 1, 0x7f, 0xff, 0xff, 0xff]), None, "2^31 topics, no bytes");
        assert_eq!(parse_assignment(&[]), None);
    }

    #[test]
    fn unowned_partitions_from_assignments_or_from_the_member_count() {
        let reported = |ps: &[i32]| GroupView { members: 2, owned: Some(ps.iter().copied().collect()) };
        assert!(reported(&[0, 1, 2]).has_unowned(4));
        assert!(!reported(&[0, 1, 2, 3]).has_unowned(4));
        // the broker does not report assignments: members ≤ partitions means someone lacks one
        assert!(GroupView { members: 3, owned: None }.has_unowned(4));
        assert!(GroupView { members: 4, owned: None }.has_unowned(4));
        assert!(!GroupView { members: 5, owned: None }.has_unowned(4), "more members than partitions: idle is normal");
    }

    #[test]
    fn acts_only_after_a_session_timeout_of_emptiness_and_at_most_once_per_timeout() {
        let after = Duration::from_secs(10);
        let mut w = GroupWatchdog::new("g", "t", after);
        let t0 = Instant::now();
        let stuck = GroupView { members: 2, owned: None };
        assert!(!w.due(0, t0));
        assert!(!w.due(0, t0 + Duration::from_secs(9)));
        assert!(!w.due(1, t0 + Duration::from_secs(9)), "an assignment resets the clock");
        assert!(!w.due(0, t0 + Duration::from_secs(12)));
        let t1 = t0 + Duration::from_secs(22);
        assert!(w.due(0, t1));
        assert_eq!(w.decide(&stuck, 4, t1), Verdict::Rejoin);
        assert!(!w.due(0, t1 + Duration::from_secs(9)), "rested for a timeout after a rejoin");
        assert!(w.due(0, t1 + Duration::from_secs(20)));
        let healthy = GroupView { members: 9, owned: None };
        assert_eq!(w.decide(&healthy, 4, t1 + Duration::from_secs(20)), Verdict::Healthy);
    }
}

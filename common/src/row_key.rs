//! HBase row keys (DESIGN §5): `SALT|ID|REVERSE_ID`.
//!
//! * `SALT` = xxh3_64(id as 8 big-endian bytes) mod [`SALT_BUCKETS`], three decimal digits.
//!   Hashing (not `id mod 128`) matters: snowflake ids have mostly-zero low bits.
//! * `ID` = the session id (user id for inbox rows), decimal, unpadded.
//! * `REVERSE_ID` = `i64::MAX − message_id`, zero-padded to 19 digits, so a forward scan of
//!   the prefix `SALT|ID|` returns the newest message first.
//!
//! The salt count is part of every table's identity: changing it is a migration. The HBase
//! pre-split list ([`split_points`]) derives from the same constant. [`MAX_ROW_LENGTH`] is
//! HBase's limit on any row key, which the sink and the emulator both enforce.

use xxhash_rust::xxh3::xxh3_64;

/// Number of salt buckets (and pre-split regions). Part of the tables' identity.
pub const SALT_BUCKETS: u64 = 128;
/// Width of the reversed id.
pub const REVERSE_WIDTH: usize = 19;
/// Separator between key parts.
pub const SEP: char = '|';
/// The longest row key HBase accepts (`HConstants.MAX_ROW_LENGTH`, `Short.MAX_VALUE`): the
/// sink refuses a longer row before writing (`sink::batch::validate`) and the emulator
/// answers it with HBase's `IllegalArgument`. chatpipe's own keys are far shorter.
pub const MAX_ROW_LENGTH: usize = i16::MAX as usize;

/// Why a row key does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid row key {key:?}: {reason}")]
pub struct RowKeyError {
    /// The offending key (lossy UTF-8).
    pub key: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// The salt bucket of an id.
#[inline]
pub fn salt(id: u64) -> u16 {
    (xxh3_64(&id.to_be_bytes()) % SALT_BUCKETS) as u16
}

/// `i64::MAX − message_id`; ids above `i64::MAX` (never produced by snowflake) map to 0.
#[inline]
pub const fn reverse(message_id: u64) -> u64 {
    (i64::MAX as u64).saturating_sub(message_id)
}

/// The row key of a message (or inbox entry, or window start) under `id`.
pub fn encode(id: u64, message_id: u64) -> String {
    let mut out = String::with_capacity(4 + 20 + 1 + REVERSE_WIDTH);
    encode_into(id, message_id, &mut out);
    out
}

/// Appends `SALT|ID|` (the salt as three digits).
#[inline]
fn push_prefix(id: u64, out: &mut String) {
    let s = salt(id);
    out.push(char::from(b'0' + (s / 100) as u8));
    out.push(char::from(b'0' + (s / 10 % 10) as u8));
    out.push(char::from(b'0' + (s % 10) as u8));
    out.push(SEP);
    out.push_str(itoa::Buffer::new().format(id));
    out.push(SEP);
}

/// Appends the row key to `out` (no allocation if `out` has room).
#[inline]
pub fn encode_into(id: u64, message_id: u64, out: &mut String) {
    push_prefix(id, out);
    let mut buf = itoa::Buffer::new();
    let rev = buf.format(reverse(message_id));
    for _ in rev.len()..REVERSE_WIDTH {
        out.push('0');
    }
    out.push_str(rev);
}

/// The key of a pair row (`chat:members` `salt|session|user`, `chat:user_sessions`
/// `salt|user|session`): salted by the first id, the second decimal and unpadded.
pub fn encode_pair(id: u64, other: u64) -> String {
    let mut out = String::with_capacity(48);
    encode_pair_into(id, other, &mut out);
    out
}

/// Appends the pair key of [`encode_pair`] to `out`.
#[inline]
pub fn encode_pair_into(id: u64, other: u64, out: &mut String) {
    push_prefix(id, out);
    out.push_str(itoa::Buffer::new().format(other));
}

/// The key of a row owned by one id (`chat:sessions`, `chat:users`): `SALT|ID`.
pub fn encode_id(id: u64) -> String {
    let mut out = String::with_capacity(24);
    encode_id_into(id, &mut out);
    out
}

/// Appends the key of [`encode_id`] to `out`.
#[inline]
pub fn encode_id_into(id: u64, out: &mut String) {
    push_prefix(id, out);
    out.pop(); // the trailing separator
}

/// The scan prefix of everything under `id`: `SALT|ID|`.
pub fn prefix(id: u64) -> String {
    let mut out = String::with_capacity(28);
    push_prefix(id, &mut out);
    out
}

/// The first row of messages strictly older than `message_id` under `id` ("load older"),
/// or `None` when nothing can be older.
pub fn older_than_start(id: u64, message_id: u64) -> Option<String> {
    if message_id == 0 {
        return None;
    }
    Some(encode(id, message_id.min(i64::MAX as u64) - 1))
}

/// Decodes a message key into `(id, message_id)`, checking the salt.
pub fn decode(key: &[u8]) -> Result<(u64, u64), RowKeyError> {
    let err = |reason| RowKeyError { key: String::from_utf8_lossy(key).into_owned(), reason };
    let s = std::str::from_utf8(key).map_err(|_| err("not UTF-8"))?;
    let mut parts = s.split(SEP);
    let (Some(salt_s), Some(id_s), Some(rev_s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(err("expected three parts separated by '|'"));
    };
    if salt_s.len() != 3 || rev_s.len() != REVERSE_WIDTH {
        return Err(err("salt must be 3 digits and the reversed id 19"));
    }
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(salt_s) || !digits(id_s) || !digits(rev_s) || (id_s.len() > 1 && id_s.starts_with('0')) {
        return Err(err("parts must be decimal digits"));
    }
    let id: u64 = id_s.parse().map_err(|_| err("id out of range"))?;
    let rev: u64 = rev_s.parse().map_err(|_| err("reversed id out of range"))?;
    if rev > i64::MAX as u64 {
        return Err(err("reversed id out of range"));
    }
    if salt_s.parse::<u16>().ok() != Some(salt(id)) {
        return Err(err("salt does not match the id"));
    }
    Ok((id, i64::MAX as u64 - rev))
}

/// The 127 HBase split points (`"001"` … `"127"`) for [`SALT_BUCKETS`] regions.
pub fn split_points() -> Vec<String> {
    (1..SALT_BUCKETS).map(|s| format!("{s:03}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snowflake::{EPOCH_MS, SEQUENCE_BITS, WORKER_BITS};
    use proptest::prelude::*;

    const MAX_ID: u64 = i64::MAX as u64;

    proptest! {
        #[test]
        fn decode_inverts_encode(id in any::<u64>(), mid in 0..=MAX_ID) {
            prop_assert_eq!(decode(encode(id, mid).as_bytes()).unwrap(), (id, mid));
        }

        #[test]
        fn byte_order_is_newest_first(id in any::<u64>(), mut ids in prop::collection::vec(0..=MAX_ID, 2..50)) {
            let mut keys: Vec<String> = ids.iter().map(|m| encode(id, *m)).collect();
            keys.sort();
            ids.sort_by(|a, b| b.cmp(a));
            let decoded: Vec<u64> = keys.iter().map(|k| decode(k.as_bytes()).unwrap().1).collect();
            prop_assert_eq!(decoded, ids);
        }

        #[test]
        fn older_than_start_returns_exactly_older(id in any::<u64>(), ids in prop::collection::btree_set(1..=MAX_ID, 1..40), pick in any::<prop::sample::Index>()) {
            let ids: Vec<u64> = ids.into_iter().collect();
            let x = ids[pick.index(ids.len())];
            let start = older_than_start(id, x).unwrap();
            let pfx = prefix(id);
            // a forward scan from `start` within the prefix, as HBase would do it
            let mut keys: Vec<String> = ids.iter().map(|m| encode(id, *m)).collect();
            // rows of a neighbouring id must never leak into the scan
            keys.push(encode(id.wrapping_add(1), x));
            keys.sort();
            let scanned: Vec<u64> = keys.iter().filter(|k| k.as_str() >= start.as_str() && k.starts_with(&pfx)).map(|k| decode(k.as_bytes()).unwrap().1).collect();
            let mut expected: Vec<u64> = ids.iter().copied().filter(|m| *m < x).collect();
            expected.sort_by(|a, b| b.cmp(a));
            prop_assert_eq!(scanned, expected);
        }

        #[test]
        fn decode_of_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn decode_rejects_wrong_salt_and_shape() {
        let k = encode(42, 7);
        let mut bad = k.clone().into_bytes();
        bad[2] = if bad[2] == b'9' { b'8' } else { b'9' };
        assert!(decode(&bad).is_err());
        assert!(decode(b"001|2").is_err());
        assert!(decode(format!("{}|x", k).as_bytes()).is_err());
    }

    #[test]
    fn key_shape_matches_design() {
        let k = encode(12345, 1);
        assert_eq!(k.len(), 3 + 1 + 5 + 1 + 19);
        assert!(k.ends_with("|12345|9223372036854775806"));
        assert_eq!(prefix(12345), k[..10].to_string());
        assert_eq!(split_points().len(), 127);
        assert_eq!(split_points().first().map(String::as_str), Some("001"));
        assert_eq!(split_points().last().map(String::as_str), Some("127"));
    }

    fn assert_even(ids: impl Iterator<Item = u64>, what: &str) {
        let mut buckets = [0u64; SALT_BUCKETS as usize];
        let mut n = 0u64;
        for id in ids {
            buckets[salt(id) as usize] += 1;
            n += 1;
        }
        let mean = n as f64 / SALT_BUCKETS as f64;
        for (b, c) in buckets.iter().enumerate() {
            let dev = (*c as f64 - mean).abs() / mean;
            assert!(dev <= 0.05, "{what}: bucket {b} holds {c}, mean {mean:.1} ({:.1}% off)", dev * 100.0);
        }
    }

    fn snowflake(ms: u64, worker: u64, seq: u64) -> u64 {
        (ms << (WORKER_BITS + SEQUENCE_BITS)) | (worker << SEQUENCE_BITS) | seq
    }

    #[test]
    fn salt_spreads_snowflake_ids_generated_in_bursts() {
        // many per millisecond: 1,000,000 ids, 200 per ms, from 4 workers
        let start = (1_767_225_600_000 - EPOCH_MS) as u64;
        assert_even((0..1_000_000u64).map(|i| snowflake(start + i / 200, (i % 4) + 1, (i % 200) / 4)), "bursty");
    }

    #[test]
    fn salt_spreads_snowflake_ids_generated_once_a_second() {
        // one per second: every id has sequence 0 and one worker
        let start = (1_767_225_600_000 - EPOCH_MS) as u64;
        assert_even((0..1_000_000u64).map(|i| snowflake(start + i * 1000, 3, 0)), "sparse");
    }

    #[test]
    fn modulo_would_not_spread() {
        // the reason for hashing: `id mod 128` of once-a-second ids hits one bucket
        let start = (1_767_225_600_000 - EPOCH_MS) as u64;
        let distinct: std::collections::HashSet<u64> =
            (0..10_000u64).map(|i| snowflake(start + i * 1000, 3, 0) % SALT_BUCKETS).collect();
        assert_eq!(distinct.len(), 1);
    }
}

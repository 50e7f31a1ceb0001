//! Keys of the row store. A row is a run of *edits* (see `store/edit.rs`), each its own
//! engine entry, keyed
//!
//! `id(table) ‖ escape(row) ‖ 0x00 0x01 ‖ !seq (u64, big-endian)`
//!
//! where `id` is the table id in an order-preserving variable-length form (one byte below
//! 128), `escape` writes a `0x00` byte of the row as `0x00 0xFF` and `seq` is the commit
//! sequence number of the edit. The short table id matters for speed: the engine compares
//! keys by their first 4 bytes before it reads the rest from the heap, so they had better
//! hold the row's first bytes rather than a 4-byte id every key shares. So the bytewise order of keys is HBase's row order within a
//! table, a row's edits are adjacent (newest first), and a row range or row prefix of a
//! table is one key range. Pure functions, no I/O.

/// Bytes after the escaped row: the terminator and the inverted sequence number.
const TERMINATOR: [u8; 2] = [0x00, 0x01];
const SEQ_BYTES: usize = 8;

/// Appends the table id: 1 byte below 2^7, 2 below 2^14, 3 below 2^21, else 5; bytewise
/// order is numeric order and no id's form is a prefix of another's.
fn push_table_id(k: &mut Vec<u8>, id: u32) {
    match id {
        0..0x80 => k.push(id as u8),
        0x80..0x4000 => k.extend_from_slice(&[0x80 | (id >> 8) as u8, id as u8]),
        0x4000..0x20_0000 => k.extend_from_slice(&[0xC0 | (id >> 16) as u8, (id >> 8) as u8, id as u8]),
        _ => {
            k.push(0xE0);
            k.extend_from_slice(&id.to_be_bytes());
        }
    }
}

/// Bytes of the table id that starts `key`.
fn table_id_len(key: &[u8]) -> usize {
    match key.first() {
        Some(0..0x80) | None => 1,
        Some(0x80..0xC0) => 2,
        Some(0xC0..0xE0) => 3,
        Some(_) => 5,
    }
}

fn push_escaped(k: &mut Vec<u8>, row: &[u8]) {
    for &b in row {
        k.push(b);
        if b == 0 {
            k.push(0xFF);
        }
    }
}

/// `table id ‖ escape(row)`: every key of the row and of rows that start with `row` sorts
/// at or above it, every key of a smaller row below it.
pub(crate) fn row_bound(table_id: u32, row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + row.len() + 2 + SEQ_BYTES);
    push_table_id(&mut k, table_id);
    push_escaped(&mut k, row);
    k
}

/// The common prefix of every edit key of a row.
pub(crate) fn row_prefix(table_id: u32, row: &[u8]) -> Vec<u8> {
    let mut k = row_bound(table_id, row);
    k.extend_from_slice(&TERMINATOR);
    k
}

/// The key of an edit of the row whose [`row_prefix`] is `prefix`.
pub(crate) fn edit_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + SEQ_BYTES);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&(!seq).to_be_bytes());
    k
}

/// The smallest key above every edit of the row whose prefix is `prefix`.
pub(crate) fn after_row(prefix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    if let Some(last) = k.last_mut() {
        *last += 1;
    }
    k
}

/// The row prefix of an edit key (`None` if `key` is not one).
pub(crate) fn prefix_of(key: &[u8]) -> Option<&[u8]> {
    let cut = key.len().checked_sub(SEQ_BYTES)?;
    (cut >= table_id_len(key) + TERMINATOR.len() && key[cut - 2..cut] == TERMINATOR).then(|| &key[..cut])
}

/// The row of a row prefix (unescaped).
pub(crate) fn row_of(prefix: &[u8]) -> Vec<u8> {
    let start = table_id_len(prefix).min(prefix.len());
    let escaped = &prefix[start..prefix.len().saturating_sub(TERMINATOR.len()).max(start)];
    let mut row = Vec::with_capacity(escaped.len());
    let mut bytes = escaped.iter();
    while let Some(&b) = bytes.next() {
        row.push(b);
        if b == 0 {
            bytes.next();
        }
    }
    row
}

/// The first key of a table.
pub(crate) fn table_start(table_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5);
    push_table_id(&mut k, table_id);
    k
}

/// The end (exclusive) of a table's keys; `None` for the last possible table id.
pub(crate) fn table_end(table_id: u32) -> Option<Vec<u8>> {
    table_id.checked_add(1).map(table_start)
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: [&[u8]; 10] =
        [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00", b"ab", b"b", b"\xff", b"\xff\xff"];

    #[test]
    fn edit_keys_sort_by_row_then_newest_first_and_tables_do_not_mix() {
        for a in ROWS {
            for b in ROWS {
                let (ka, kb) = (edit_key(&row_prefix(7, a), 5), edit_key(&row_prefix(7, b), 9));
                assert_eq!(a.cmp(b).then(std::cmp::Ordering::Greater), ka.cmp(&kb), "{a:?} vs {b:?}");
                // A bound of b: at or above every key of rows ≥ b, below every key of rows < b.
                assert_eq!(ka >= row_bound(7, b), a >= b, "{a:?} vs bound {b:?}");
            }
            let p = row_prefix(7, a);
            assert!(edit_key(&p, 9) < edit_key(&p, 5), "newer edits first");
            assert!(edit_key(&p, 0) < after_row(&p) && after_row(&p) <= row_bound(7, &[a, b"\x00"].concat()));
            assert_eq!(prefix_of(&edit_key(&p, 3)), Some(p.as_slice()));
            assert_eq!(row_of(&p), a.to_vec());
            assert!(row_prefix(7, a) >= table_start(7));
            assert!(Some(row_prefix(7, a)) < table_end(7));
            assert!(edit_key(&row_prefix(6, b"\xff\xff\xff"), 0) < row_prefix(7, a));
        }
        assert_eq!(table_end(u32::MAX), None);
    }

    #[test]
    fn table_ids_sort_numerically_and_each_table_is_one_key_range() {
        let ids = [0u32, 1, 0x7F, 0x80, 0x81, 0x3FFF, 0x4000, 0x1F_FFFF, 0x20_0000, u32::MAX - 1, u32::MAX];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                let (ka, kb) = (edit_key(&row_prefix(*a, b"\xff\xff"), 0), edit_key(&row_prefix(*b, b""), 0));
                assert!(ka < kb && ka < table_end(*a).unwrap() && table_end(*a).unwrap() <= table_start(*b));
            }
            let p = row_prefix(*a, b"r\x00w");
            assert_eq!(row_of(&p), b"r\x00w".to_vec());
            assert_eq!(prefix_of(&edit_key(&p, 1)), Some(p.as_slice()));
        }
    }

    #[test]
    fn a_row_prefix_is_one_key_range() {
        for prefix in [&b"a"[..], b"\x00", b"a\xff"] {
            let lo = row_bound(1, prefix);
            let hi = prefix_end(prefix).map(|e| row_bound(1, &e));
            for row in ROWS {
                let k = edit_key(&row_prefix(1, row), 1);
                let inside = k >= lo && hi.as_ref().is_none_or(|h| k < *h);
                assert_eq!(inside, row.starts_with(prefix), "{row:?} under {prefix:?}");
            }
        }
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}

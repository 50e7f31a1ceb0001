//! The order-preserving key codec of the cell store.
//!
//! Every cell, and every delete marker, is one entry of a single redb table whose keys sort
//! bytewise in HBase's order, so that a row, a row range or a prefix is one range read:
//!
//! ```text
//! put            = table_id(u32 BE) ‖ esc(row) ‖ esc(family) ‖ 0x01 ‖ esc(qualifier) ‖ 0x01 ‖ !ts(8 B)
//! column marker  = table_id(u32 BE) ‖ esc(row) ‖ esc(family) ‖ 0x01 ‖ esc(qualifier) ‖ 0x00
//! family marker  = table_id(u32 BE) ‖ esc(row) ‖ esc(family) ‖ 0x00
//! ```
//!
//! `esc` escapes `0x00` as `0x00 0xFF` and terminates with `0x00 0x01`; it is prefix-free and
//! keeps the bytewise order of its input, so rows, families and qualifiers sort as HBase sorts
//! them. `!ts` is the timestamp with its sign bit flipped and then inverted, so versions come
//! newest first. A marker's value is the timestamp up to which it deletes (8 bytes BE); a
//! put's value is the cell value. Markers sort before the cells they mask.

use std::ops::Bound;

/// Tag after the family: a family delete marker.
const TAG_FAMILY_MARKER: u8 = 0x00;
/// Tag after the family: a column (followed by the qualifier).
const TAG_COLUMN: u8 = 0x01;
/// Tag after the qualifier: a column delete marker.
const TAG_COLUMN_MARKER: u8 = 0x00;
/// Tag after the qualifier: a put, followed by the inverted timestamp.
const TAG_PUT: u8 = 0x01;

/// Appends the escaped, terminated form of `bytes`.
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Reads one escaped component from the front of `input`; returns it and the rest.
fn take_escaped(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::with_capacity(input.len().min(64));
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match input.get(i + 1)? {
            0xFF => {
                out.push(0);
                i += 2;
            }
            0x01 => return Some((out, &input[i + 2..])),
            _ => return None,
        }
    }
    None
}

/// Maps a timestamp to 8 bytes that sort newest first.
pub(crate) fn encode_ts(ts: i64) -> [u8; 8] {
    (!((ts as u64) ^ (1 << 63))).to_be_bytes()
}

fn decode_ts(bytes: [u8; 8]) -> i64 {
    ((!u64::from_be_bytes(bytes)) ^ (1 << 63)) as i64
}

/// The prefix shared by every entry of a table.
pub(crate) fn table_prefix(table_id: u32) -> Vec<u8> {
    table_id.to_be_bytes().to_vec()
}

/// The exclusive end of a table's key space.
pub(crate) fn table_end(table_id: u32) -> Bound<Vec<u8>> {
    match table_id.checked_add(1) {
        Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    }
}

/// The prefix of every entry of one row.
pub(crate) fn row_prefix(table_id: u32, row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + row.len() + 2);
    k.extend_from_slice(&table_id.to_be_bytes());
    push_escaped(&mut k, row);
    k
}

/// The smallest key strictly after every entry of `row` (the start of the next rows).
pub(crate) fn after_row(table_id: u32, row: &[u8]) -> Vec<u8> {
    let mut k = row_prefix(table_id, row);
    // row_prefix ends with the terminator 0x00 0x01; 0x00 0x02 is greater than every key of
    // this row and smaller than every key of a greater row (whose escape continues with a
    // byte ≥ 0x01, or with 0x00 0xFF).
    if let Some(last) = k.last_mut() {
        *last = 0x02;
    }
    k
}

/// The prefix of every entry of one family in one row (its family marker included).
pub(crate) fn family_prefix(table_id: u32, row: &[u8], family: &[u8]) -> Vec<u8> {
    let mut k = row_prefix(table_id, row);
    push_escaped(&mut k, family);
    k
}

/// The key of a family delete marker.
pub(crate) fn family_marker_key(table_id: u32, row: &[u8], family: &[u8]) -> Vec<u8> {
    let mut k = family_prefix(table_id, row, family);
    k.push(TAG_FAMILY_MARKER);
    k
}

/// The prefix of every entry of one column (its marker and all its versions).
pub(crate) fn column_prefix(table_id: u32, row: &[u8], family: &[u8], qualifier: &[u8]) -> Vec<u8> {
    let mut k = family_prefix(table_id, row, family);
    k.push(TAG_COLUMN);
    push_escaped(&mut k, qualifier);
    k
}

/// The key of a column delete marker.
pub(crate) fn column_marker_key(table_id: u32, row: &[u8], family: &[u8], qualifier: &[u8]) -> Vec<u8> {
    let mut k = column_prefix(table_id, row, family, qualifier);
    k.push(TAG_COLUMN_MARKER);
    k
}

/// The key of one version of a cell.
pub(crate) fn put_key(table_id: u32, row: &[u8], family: &[u8], qualifier: &[u8], ts: i64) -> Vec<u8> {
    let mut k = column_prefix(table_id, row, family, qualifier);
    k.push(TAG_PUT);
    k.extend_from_slice(&encode_ts(ts));
    k
}

/// The smallest key after every entry that starts with `prefix`, if any.
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

/// What one store key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// Deletes every cell of the family with a timestamp ≤ the value.
    FamilyMarker,
    /// Deletes every version of the column with a timestamp ≤ the value.
    ColumnMarker { qualifier: Vec<u8> },
    /// One version of a cell.
    Put { qualifier: Vec<u8>, ts: i64 },
}

/// A decoded store key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedKey {
    pub table_id: u32,
    pub row: Vec<u8>,
    pub family: Vec<u8>,
    pub kind: EntryKind,
}

/// Decodes a key written by this module; `None` if it is malformed.
pub(crate) fn decode(key: &[u8]) -> Option<DecodedKey> {
    let table_id = u32::from_be_bytes(key.get(..4)?.try_into().ok()?);
    let (row, rest) = take_escaped(&key[4..])?;
    let (family, rest) = take_escaped(rest)?;
    let (&tag, rest) = rest.split_first()?;
    let kind = match tag {
        TAG_FAMILY_MARKER if rest.is_empty() => EntryKind::FamilyMarker,
        TAG_COLUMN => {
            let (qualifier, rest) = take_escaped(rest)?;
            let (&tag, rest) = rest.split_first()?;
            match tag {
                TAG_COLUMN_MARKER if rest.is_empty() => EntryKind::ColumnMarker { qualifier },
                TAG_PUT => EntryKind::Put { qualifier, ts: decode_ts(rest.try_into().ok()?) },
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(DecodedKey { table_id, row, family, kind })
}

/// Reads only the row of a key (cheaper than [`decode`] when grouping by row).
pub(crate) fn decode_row(key: &[u8]) -> Option<Vec<u8>> {
    take_escaped(key.get(4..)?).map(|(row, _)| row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_preserves_bytewise_order_and_is_prefix_free() {
        let rows: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"\x00\xff",
            b"\x01",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"ab",
            b"b",
            b"\xff",
            b"\xff\xff",
        ];
        for a in &rows {
            for b in &rows {
                let ka = put_key(7, a, b"f", b"q", 1);
                let kb = put_key(7, b, b"f", b"q", 1);
                assert_eq!(a.cmp(b), ka.cmp(&kb), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn versions_sort_newest_first_and_markers_first() {
        let marker = column_marker_key(1, b"r", b"f", b"q");
        let new = put_key(1, b"r", b"f", b"q", 200);
        let old = put_key(1, b"r", b"f", b"q", 100);
        let negative = put_key(1, b"r", b"f", b"q", -5);
        let fam = family_marker_key(1, b"r", b"f");
        assert!(fam < marker && marker < new && new < old && old < negative);
        assert!(put_key(1, b"r", b"f", b"q", i64::MAX) < put_key(1, b"r", b"f", b"q", 0));
    }

    #[test]
    fn decode_round_trips() {
        let k = put_key(3, b"r\x00w", b"cf", b"q\x00", 42);
        let d = decode(&k).expect("decodes");
        assert_eq!(d.table_id, 3);
        assert_eq!(d.row, b"r\x00w");
        assert_eq!(d.family, b"cf");
        assert_eq!(d.kind, EntryKind::Put { qualifier: b"q\x00".to_vec(), ts: 42 });
        assert_eq!(decode_row(&k).as_deref(), Some(&b"r\x00w"[..]));
        let m = decode(&column_marker_key(3, b"r", b"cf", b"")).expect("decodes");
        assert_eq!(m.kind, EntryKind::ColumnMarker { qualifier: vec![] });
        let f = decode(&family_marker_key(3, b"r", b"cf")).expect("decodes");
        assert_eq!(f.kind, EntryKind::FamilyMarker);
        assert_eq!(decode(b"\x00\x00\x00\x01garbage"), None);
    }

    #[test]
    fn after_row_bounds_exactly_one_row() {
        let r = b"row";
        let end = after_row(1, r);
        assert!(put_key(1, r, b"\xff", b"\xff", i64::MIN) < end);
        assert!(end <= row_prefix(1, b"row\x00"));
        assert!(end <= row_prefix(1, b"rowa"));
        assert!(end > row_prefix(1, b"ro"));
    }

    #[test]
    fn prefix_end_skips_trailing_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}

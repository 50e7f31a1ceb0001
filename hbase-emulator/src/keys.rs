//! Keys of the row store: `table_id (u32, big-endian) ‖ row`. A row is one entry (see
//! `row.rs`), so the bytewise order of keys is HBase's row order within a table and a row
//! range or prefix of a table is one key range.

/// The key of a row.
pub(crate) fn row_key(table_id: u32, row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + row.len());
    k.extend_from_slice(&table_id.to_be_bytes());
    k.extend_from_slice(row);
    k
}

/// The first key of a table.
pub(crate) fn table_start(table_id: u32) -> Vec<u8> {
    table_id.to_be_bytes().to_vec()
}

/// The end (exclusive) of a table's keys; `None` for the last possible table id.
pub(crate) fn table_end(table_id: u32) -> Option<Vec<u8>> {
    table_id.checked_add(1).map(|next| next.to_be_bytes().to_vec())
}

/// The smallest key greater than `key`.
pub(crate) fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
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

    #[test]
    fn row_keys_sort_as_rows_within_a_table_and_tables_do_not_mix() {
        let rows: Vec<&[u8]> = vec![b"", b"\x00", b"\x00\x00", b"a", b"a\x00", b"ab", b"b", b"\xff", b"\xff\xff"];
        for a in &rows {
            for b in &rows {
                assert_eq!(a.cmp(b), row_key(7, a).cmp(&row_key(7, b)), "{a:?} vs {b:?}");
            }
            assert!(row_key(7, a) >= table_start(7));
            assert!(Some(row_key(7, a)) < table_end(7));
            assert!(row_key(6, b"\xff\xff\xff") < row_key(7, a));
        }
        assert_eq!(table_end(u32::MAX), None);
    }

    #[test]
    fn successor_and_prefix_end_bound_what_they_should() {
        assert!(successor(b"a") > b"a".to_vec() && successor(b"a") < b"a\x00\x00".to_vec());
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}

//! Region boundaries. The emulator keeps every table in one store, but reports regions the
//! way HBase would after the table was pre-split, so that code computing its own region
//! layout (salted row keys, DESIGN §5) sees what it would see against a real cluster.

use chatpipe_common::row_key;

/// Number of salt buckets of chatpipe's row keys (DESIGN §5): salts are "000".."127".
///
/// It is `chatpipe_common::row_key::SALT_BUCKETS` (the one salt constant), as the `u32`
/// that [`salt_split_points`] takes; the assertion below refuses, at compile time, a salt
/// count the three-digit split points cannot express.
pub const SALT_BUCKETS: u32 = row_key::SALT_BUCKETS as u32;
const _: () = assert!(row_key::SALT_BUCKETS <= 1000, "salt split points have three decimal digits");

/// Tables in this namespace are pre-split into [`SALT_BUCKETS`] regions by default.
pub const SALTED_NAMESPACE: &str = "chat";

/// The split points of `buckets` salt regions: "001", "002", …, up to `buckets - 1`,
/// three decimal digits each (`buckets` ≤ 1000). One bucket means no split.
pub fn salt_split_points(buckets: u32) -> Vec<Vec<u8>> {
    (1..buckets.min(1000)).map(|salt| format!("{salt:03}").into_bytes()).collect()
}

/// The split points a new table gets: every table is pre-split into `presplit_salt` regions
/// when it is set; otherwise tables in the `chat` namespace get [`SALT_BUCKETS`] regions and
/// all others one region.
pub fn split_points_for(table: &[u8], presplit_salt: Option<u32>) -> Vec<Vec<u8>> {
    match presplit_salt {
        Some(buckets) => salt_split_points(buckets),
        None if namespace_of(table) == SALTED_NAMESPACE.as_bytes() => salt_split_points(SALT_BUCKETS),
        None => Vec::new(),
    }
}

/// The namespace of a table name (`default` when it has none).
pub fn namespace_of(table: &[u8]) -> &[u8] {
    match table.iter().position(|&b| b == b':') {
        Some(i) => &table[..i],
        None => b"default",
    }
}

/// One region: `[start, end)`, empty meaning unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start_key: Vec<u8>,
    pub end_key: Vec<u8>,
    /// HBase's region name: `table,start_key,region_id.`
    pub name: Vec<u8>,
    pub id: i64,
}

/// The regions delimited by `split_points` (sorted, distinct), named as HBase names them.
pub fn regions(table: &[u8], split_points: &[Vec<u8>], region_id: i64) -> Vec<Region> {
    let mut bounds: Vec<&[u8]> = Vec::with_capacity(split_points.len() + 2);
    bounds.push(b"");
    bounds.extend(split_points.iter().map(Vec::as_slice));
    bounds.push(b"");
    bounds
        .windows(2)
        .map(|w| {
            let mut name = table.to_vec();
            name.push(b',');
            name.extend_from_slice(w[0]);
            name.extend_from_slice(format!(",{region_id}.").as_bytes());
            Region { start_key: w[0].to_vec(), end_key: w[1].to_vec(), name, id: region_id }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_split_points_are_the_row_key_codecs() {
        let ours: Vec<String> =
            salt_split_points(SALT_BUCKETS).into_iter().map(|p| String::from_utf8(p).unwrap()).collect();
        assert_eq!(ours, row_key::split_points());
    }

    #[test]
    fn salt_split_points_are_three_digit_and_cover_all_buckets() {
        let points = salt_split_points(SALT_BUCKETS);
        assert_eq!(points.len(), 127);
        assert_eq!(points[0], b"001");
        assert_eq!(points[126], b"127");
        let regions = regions(b"chat:messages", &points, 5);
        assert_eq!(regions.len(), 128);
        assert_eq!(regions[0].start_key, b"");
        assert_eq!(regions[0].end_key, b"001");
        assert_eq!(regions[127].start_key, b"127");
        assert_eq!(regions[127].end_key, b"");
        assert_eq!(regions[1].name, b"chat:messages,001,5.");
    }

    #[test]
    fn chat_namespace_is_presplit_by_default_and_others_are_not() {
        assert_eq!(split_points_for(b"chat:inbox", None).len(), 127);
        assert!(split_points_for(b"other", None).is_empty());
        assert!(split_points_for(b"chatty:x", None).is_empty());
        assert_eq!(split_points_for(b"other", Some(4)).len(), 3);
        assert!(split_points_for(b"chat:inbox", Some(1)).is_empty());
    }
}

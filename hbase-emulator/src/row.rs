//! One row as a read sees it: its families, columns, versions and delete markers, put
//! together from the row's edits (`store/edit.rs`), and its encoding as a snapshot edit.
//! Pure data and HBase's write semantics; no I/O.
//!
//! * Families and qualifiers are sorted bytewise; versions newest first.
//! * A delete marker ("every version with a timestamp ≤ T") is kept on its family or
//!   column, so it also masks puts with an older timestamp that arrive later, as in HBase
//!   before a major compaction; the versions it masks are dropped at once.
//! * A put masked by a marker is not stored; a column keeps at most `maxVersions` versions
//!   (older ones are dropped on write, as a flush or compaction does).

/// One version of a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub ts: i64,
    pub value: Vec<u8>,
}

/// A column of a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub qualifier: Vec<u8>,
    /// Deletes every version with a timestamp ≤ this.
    pub marker: Option<i64>,
    /// Newest first.
    pub versions: Vec<Version>,
}

/// A family of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub name: Vec<u8>,
    /// Deletes every cell of the family with a timestamp ≤ this.
    pub marker: Option<i64>,
    /// Sorted by qualifier.
    pub columns: Vec<Column>,
}

impl Family {
    /// The column `qualifier`, created empty (no marker, no version) where it is missing.
    fn column_mut(&mut self, qualifier: &[u8]) -> &mut Column {
        let i = match self.columns.binary_search_by(|c| c.qualifier.as_slice().cmp(qualifier)) {
            Ok(i) => i,
            Err(i) => {
                self.columns
                    .insert(i, Column { qualifier: qualifier.to_vec(), marker: None, versions: Vec::with_capacity(1) });
                i
            }
        };
        &mut self.columns[i]
    }
}

/// A row: its families, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub families: Vec<Family>,
}

const ENCODING_VERSION: u8 = 1;

fn masks(marker: Option<i64>, ts: i64) -> bool {
    marker.is_some_and(|m| ts <= m)
}

impl Row {
    /// Whether the row holds nothing at all (no cell, no marker): it can be removed.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    fn family_mut(&mut self, name: &[u8]) -> &mut Family {
        let i = match self.families.binary_search_by(|f| f.name.as_slice().cmp(name)) {
            Ok(i) => i,
            Err(i) => {
                self.families.insert(i, Family { name: name.to_vec(), marker: None, columns: Vec::new() });
                i
            }
        };
        &mut self.families[i]
    }

    /// The family, if the row has anything in it.
    pub fn family(&self, name: &[u8]) -> Option<&Family> {
        self.families.binary_search_by(|f| f.name.as_slice().cmp(name)).ok().map(|i| &self.families[i])
    }

    /// Writes one version (replacing one with the same timestamp) unless a marker masks it,
    /// then keeps the newest `max_versions`.
    pub fn put(&mut self, family: &[u8], qualifier: &[u8], value: &[u8], ts: i64, max_versions: usize) {
        // Nothing here can leave a family or column empty: a family that masks the put has
        // a marker, a column is only created to hold the version.
        let fam = self.family_mut(family);
        if masks(fam.marker, ts) {
            return;
        }
        let col = fam.column_mut(qualifier);
        if !masks(col.marker, ts) {
            match col.versions.binary_search_by(|v| ts.cmp(&v.ts)) {
                Ok(j) => col.versions[j].value = value.to_vec(),
                Err(j) => col.versions.insert(j, Version { ts, value: value.to_vec() }),
            }
            col.versions.truncate(max_versions.max(1));
        }
    }

    /// Deletes every version ≤ `ts` of a column (HBase `Delete.addColumns`).
    pub fn delete_column(&mut self, family: &[u8], qualifier: &[u8], ts: i64) {
        let fam = self.family_mut(family);
        if masks(fam.marker, ts) {
            // The family marker already covers everything this one would.
            return;
        }
        let col = fam.column_mut(qualifier);
        col.marker = Some(col.marker.map_or(ts, |m| m.max(ts)));
        col.versions.retain(|v| v.ts > ts);
    }

    /// Deletes every cell ≤ `ts` of a family (HBase `Delete.addFamily`).
    pub fn delete_family(&mut self, family: &[u8], ts: i64) {
        let fam = self.family_mut(family);
        let marker = fam.marker.map_or(ts, |m| m.max(ts));
        fam.marker = Some(marker);
        for col in &mut fam.columns {
            col.versions.retain(|v| v.ts > marker);
            // A column marker at or below the family's adds nothing.
            if col.marker.is_some_and(|m| m <= marker) {
                col.marker = None;
            }
        }
        fam.columns.retain(|c| c.marker.is_some() || !c.versions.is_empty());
    }

    /// Serialises the row (see [`Row::decode`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut size = 3;
        for f in &self.families {
            size += 2 + f.name.len() + 9 + 4;
            for c in &f.columns {
                size += 4 + c.qualifier.len() + 9 + 4;
                size += c.versions.iter().map(|v| 12 + v.value.len()).sum::<usize>();
            }
        }
        let mut w = Vec::with_capacity(size);
        w.push(ENCODING_VERSION);
        w.extend_from_slice(&(self.families.len() as u16).to_be_bytes());
        for f in &self.families {
            w.extend_from_slice(&(f.name.len() as u16).to_be_bytes());
            w.extend_from_slice(&f.name);
            put_marker(&mut w, f.marker);
            w.extend_from_slice(&(f.columns.len() as u32).to_be_bytes());
            for c in &f.columns {
                w.extend_from_slice(&(c.qualifier.len() as u32).to_be_bytes());
                w.extend_from_slice(&c.qualifier);
                put_marker(&mut w, c.marker);
                w.extend_from_slice(&(c.versions.len() as u32).to_be_bytes());
                for v in &c.versions {
                    w.extend_from_slice(&v.ts.to_be_bytes());
                    w.extend_from_slice(&(v.value.len() as u32).to_be_bytes());
                    w.extend_from_slice(&v.value);
                }
            }
        }
        w
    }

    /// Reads a row written by [`Row::encode`]; `None` if the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Row> {
        let mut r = Reader(bytes);
        if r.u8()? != ENCODING_VERSION {
            return None;
        }
        let nf = r.u16()?;
        let mut families = Vec::with_capacity(usize::from(nf).min(64));
        for _ in 0..nf {
            let len = usize::from(r.u16()?);
            let name = r.take(len)?.to_vec();
            let marker = r.marker()?;
            let nc = r.u32()?;
            let mut columns = Vec::with_capacity((nc as usize).min(1024));
            for _ in 0..nc {
                let len = r.u32()? as usize;
                let qualifier = r.take(len)?.to_vec();
                let marker = r.marker()?;
                let nv = r.u32()?;
                let mut versions = Vec::with_capacity((nv as usize).min(16));
                for _ in 0..nv {
                    let ts = r.i64()?;
                    let len = r.u32()? as usize;
                    versions.push(Version { ts, value: r.take(len)?.to_vec() });
                }
                columns.push(Column { qualifier, marker, versions });
            }
            families.push(Family { name, marker, columns });
        }
        r.0.is_empty().then_some(Row { families })
    }
}

fn put_marker(w: &mut Vec<u8>, marker: Option<i64>) {
    match marker {
        None => w.push(0),
        Some(m) => {
            w.push(1);
            w.extend_from_slice(&m.to_be_bytes());
        }
    }
}

/// A cursor over big-endian encoded bytes (rows here, table metadata in `store.rs`);
/// every read is bounds-checked and returns `None` on truncation.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A u32 length followed by that many bytes, borrowed.
    pub(crate) fn sized(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A u32 length followed by that many bytes.
    pub(crate) fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn marker(&mut self) -> Option<Option<i64>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.i64().map(Some),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(row: &Row, f: &str, q: &str) -> Vec<(i64, String)> {
        row.family(f.as_bytes())
            .and_then(|fam| fam.columns.iter().find(|c| c.qualifier == q.as_bytes()))
            .map(|c| c.versions.iter().map(|v| (v.ts, String::from_utf8_lossy(&v.value).into_owned())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn puts_keep_newest_versions_first_up_to_max() {
        let mut r = Row::default();
        for (ts, v) in [(10, "a"), (30, "c"), (20, "b"), (5, "z")] {
            r.put(b"f", b"q", v.as_bytes(), ts, 2);
        }
        assert_eq!(versions(&r, "f", "q"), vec![(30, "c".into()), (20, "b".into())]);
        r.put(b"f", b"q", b"C", 30, 2);
        assert_eq!(versions(&r, "f", "q")[0], (30, "C".into()));
    }

    #[test]
    fn markers_mask_older_puts_including_later_ones() {
        let mut r = Row::default();
        r.put(b"f", b"q", b"old", 100, 3);
        r.delete_column(b"f", b"q", 150);
        assert!(versions(&r, "f", "q").is_empty());
        r.put(b"f", b"q", b"late-but-old", 120, 3);
        assert!(versions(&r, "f", "q").is_empty());
        r.put(b"f", b"q", b"new", 151, 3);
        assert_eq!(versions(&r, "f", "q"), vec![(151, "new".into())]);
        r.delete_family(b"f", 200);
        assert!(versions(&r, "f", "q").is_empty());
        r.put(b"f", b"other", b"x", 200, 3);
        assert!(versions(&r, "f", "other").is_empty(), "a put at the marker's timestamp is masked");
        assert!(!r.is_empty(), "the family marker is kept");
    }

    #[test]
    fn encoding_round_trips() {
        let mut r = Row::default();
        r.put(b"a", b"", b"empty qualifier", 1, 3);
        r.put(b"a", b"q\x00", b"\x00\xff", -7, 3);
        r.put(b"b", b"q", &[7u8; 300], i64::MAX, 3);
        r.delete_column(b"b", b"gone", 5);
        r.delete_family(b"c", 9);
        let bytes = r.encode();
        assert_eq!(Row::decode(&bytes), Some(r));
        assert_eq!(Row::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Row::decode(b""), None);
    }
}

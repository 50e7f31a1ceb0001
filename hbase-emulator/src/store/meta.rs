//! Table descriptors: a table's families and their settings (versions, TTL, …), its
//! enabled flag and its region boundaries, checked as HBase's `HColumnDescriptor` and
//! `TableName` check them, and their encoding in the store's metadata.

use super::StoreError;
use crate::row::Reader;

/// HBase's `HConstants.FOREVER`: a TTL that never expires.
pub const TTL_FOREVER: i32 = i32::MAX;
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A column family's settings, as Thrift1's `ColumnDescriptor` carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyDescriptor {
    /// The family name, without the trailing `:`.
    pub name: Vec<u8>,
    pub max_versions: i32,
    /// Upper-case algorithm name (`NONE`, `GZ`, `SNAPPY`, …): recorded, not applied.
    pub compression: String,
    pub in_memory: bool,
    /// `NONE`, `ROW`, `ROWCOL`, …: recorded, not applied.
    pub bloom_filter_type: String,
    pub block_cache_enabled: bool,
    /// Seconds; [`TTL_FOREVER`] means no expiry.
    pub time_to_live: i32,
}

impl FamilyDescriptor {
    /// A family with Thrift1's defaults (3 versions, no TTL, no compression).
    pub fn new(name: impl Into<Vec<u8>>) -> Self {
        FamilyDescriptor {
            name: name.into(),
            max_versions: 3,
            compression: "NONE".into(),
            in_memory: false,
            bloom_filter_type: "NONE".into(),
            block_cache_enabled: false,
            time_to_live: TTL_FOREVER,
        }
    }

    /// Checks the descriptor as HBase's `HColumnDescriptor` does; normalises names.
    pub fn validate(mut self) -> Result<Self, StoreError> {
        let bad = |m: String| Err(StoreError::IllegalArgument(m));
        if self.name.is_empty() {
            return bad("Column Family name can not be empty".into());
        }
        if self.name[0] == b'.' {
            return bad(format!("Column Family names cannot start with a period: {}", show(&self.name)));
        }
        if self.name.iter().any(|&b| b == b':' || b.is_ascii_control()) {
            return bad(format!(
                "Column Family names cannot contain control characters or colons: {}",
                show(&self.name)
            ));
        }
        if self.max_versions <= 0 {
            return bad(format!("Maximum versions must be positive: {}", self.max_versions));
        }
        let compression = self.compression.to_ascii_lowercase();
        self.compression = match compression.as_str() {
            "none" | "gz" | "lzo" | "snappy" | "lz4" | "bzip2" | "zstd" | "lzma" | "brotli" => {
                compression.to_ascii_uppercase()
            }
            _ => return bad(format!("Unsupported compression algorithm: {}", self.compression)),
        };
        match self.bloom_filter_type.as_str() {
            "NONE" | "ROW" | "ROWCOL" | "ROWPREFIX_FIXED_LENGTH" | "ROWPREFIX_DELIMITED" => {}
            other => return bad(format!("No enum constant org.apache.hadoop.hbase.regionserver.BloomType.{other}")),
        }
        if self.time_to_live <= 0 {
            self.time_to_live = TTL_FOREVER;
        }
        Ok(self)
    }
}

/// A table's descriptor and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    /// Key prefix of the table's cells; never reused.
    pub id: u32,
    pub name: Vec<u8>,
    /// Sorted by name.
    pub families: Vec<FamilyDescriptor>,
    pub enabled: bool,
    /// The region boundaries reported by `getTableRegions`.
    pub split_points: Vec<Vec<u8>>,
    /// Creation time (ms), used as the region id.
    pub created_ms: i64,
}

impl TableMeta {
    pub fn family(&self, name: &[u8]) -> Option<&FamilyDescriptor> {
        self.families.binary_search_by(|f| f.name.as_slice().cmp(name)).ok().map(|i| &self.families[i])
    }

    pub fn require_family(&self, name: &[u8]) -> Result<&FamilyDescriptor, StoreError> {
        self.family(name).ok_or_else(|| StoreError::NoSuchFamily { table: show(&self.name), family: show(name) })
    }

    pub fn require_enabled(&self) -> Result<(), StoreError> {
        if self.enabled {
            Ok(())
        } else {
            Err(StoreError::TableDisabled(show(&self.name)))
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(128);
        w.push(1u8); // encoding version
        w.extend_from_slice(&self.id.to_be_bytes());
        put_bytes(&mut w, &self.name);
        w.push(u8::from(self.enabled));
        w.extend_from_slice(&self.created_ms.to_be_bytes());
        w.extend_from_slice(&(self.families.len() as u32).to_be_bytes());
        for f in &self.families {
            put_bytes(&mut w, &f.name);
            w.extend_from_slice(&f.max_versions.to_be_bytes());
            put_bytes(&mut w, f.compression.as_bytes());
            w.push(u8::from(f.in_memory));
            put_bytes(&mut w, f.bloom_filter_type.as_bytes());
            w.push(u8::from(f.block_cache_enabled));
            w.extend_from_slice(&f.time_to_live.to_be_bytes());
        }
        w.extend_from_slice(&(self.split_points.len() as u32).to_be_bytes());
        for s in &self.split_points {
            put_bytes(&mut w, s);
        }
        w
    }

    pub fn decode(bytes: &[u8]) -> Option<TableMeta> {
        let mut r = Reader(bytes);
        if r.u8()? != 1 {
            return None;
        }
        let id = r.u32()?;
        let name = r.bytes()?;
        let enabled = r.u8()? != 0;
        let created_ms = r.u64()? as i64;
        let n = r.u32()?;
        let mut families = Vec::new();
        for _ in 0..n {
            families.push(FamilyDescriptor {
                name: r.bytes()?,
                max_versions: r.u32()? as i32,
                compression: String::from_utf8(r.bytes()?).ok()?,
                in_memory: r.u8()? != 0,
                bloom_filter_type: String::from_utf8(r.bytes()?).ok()?,
                block_cache_enabled: r.u8()? != 0,
                time_to_live: r.u32()? as i32,
            });
        }
        let n = r.u32()?;
        let mut split_points = Vec::new();
        for _ in 0..n {
            split_points.push(r.bytes()?);
        }
        Some(TableMeta { id, name, families, enabled, split_points, created_ms })
    }
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_be_bytes());
    w.extend_from_slice(b);
}

/// Checks a table name as HBase's `TableName` does: `[namespace:]qualifier`, namespace of
/// `[A-Za-z0-9_]`, qualifier of `[A-Za-z0-9_.-]` not starting with `.` or `-`.
pub fn validate_table_name(name: &[u8]) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::IllegalArgument(format!("Illegal table name {:?}: {why}", show(name))));
    let (namespace, qualifier) = match name.iter().position(|&b| b == b':') {
        Some(i) => (Some(&name[..i]), &name[i + 1..]),
        None => (None, name),
    };
    if let Some(ns) = namespace {
        if ns.is_empty() || !ns.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            return bad("namespace must be [A-Za-z0-9_]+");
        }
    }
    if qualifier.is_empty() {
        return bad("qualifier is empty");
    }
    if qualifier[0] == b'.' || qualifier[0] == b'-' {
        return bad("qualifier must not start with '.' or '-'");
    }
    if !qualifier.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return bad("qualifier must be [A-Za-z0-9_.-]+");
    }
    Ok(())
}

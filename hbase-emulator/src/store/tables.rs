//! Tables: creating, enabling, disabling and deleting them, as HBase's `Admin` does. DDL
//! holds the tables lock exclusively, so no write runs against a table being changed; a
//! descriptor is written to the engine (durably) before the in-memory map changes, and a
//! deleted table's id is never reused, so a crash midway through a delete leaves only
//! invisible edits (as may a background fold of one of its rows that races the delete: its
//! snapshot is written under the dead id, and never read).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::meta::show;
use super::{
    keys, storage, validate_table_name, FamilyDescriptor, Store, StoreError, TableMeta, DELETE_CHUNK_ROWS,
    NEXT_TABLE_ID, TABLE_PREFIX,
};

impl Store {
    /// The descriptor of a table, enabled or not.
    pub fn table(&self, name: &[u8]) -> Result<Arc<TableMeta>, StoreError> {
        self.tables.read().get(name).cloned().ok_or_else(|| StoreError::TableNotFound(show(name)))
    }

    /// Every table with its enabled flag, sorted by name.
    pub fn tables(&self) -> Vec<(Vec<u8>, bool)> {
        self.tables.read().values().map(|m| (m.name.clone(), m.enabled)).collect()
    }

    fn write_meta(&self, meta: &TableMeta, next_id: Option<u64>) -> Result<(), StoreError> {
        let mut batch = self.engine.batch();
        batch.insert(&self.engine.meta, [TABLE_PREFIX, meta.name.as_slice()].concat(), meta.encode());
        if let Some(id) = next_id {
            batch.insert(&self.engine.meta, NEXT_TABLE_ID, id.to_be_bytes().to_vec());
        }
        self.engine.commit(batch, true)
    }

    /// Creates a table (enabled).
    pub fn create_table(
        &self,
        name: &[u8],
        families: Vec<FamilyDescriptor>,
        split_points: Vec<Vec<u8>>,
        now: i64,
    ) -> Result<(), StoreError> {
        validate_table_name(name)?;
        let mut tables = self.tables.write();
        if tables.contains_key(name) {
            return Err(StoreError::TableExists(show(name)));
        }
        if families.is_empty() {
            return Err(StoreError::Refused(format!("Table should have at least one column family: {}", show(name))));
        }
        let mut by_name: BTreeMap<Vec<u8>, FamilyDescriptor> = BTreeMap::new();
        for f in families {
            let f = f.validate()?;
            if by_name.contains_key(&f.name) {
                return Err(StoreError::IllegalArgument(format!(
                    "Family '{}' already exists so cannot be added",
                    show(&f.name)
                )));
            }
            by_name.insert(f.name.clone(), f);
        }
        let id = match self.engine.meta.get(NEXT_TABLE_ID).map_err(|e| storage("reading the table ids failed", e))? {
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Storage("corrupt table id counter".into()))?,
            None => 1,
        };
        let id32 = u32::try_from(id).map_err(|_| StoreError::Refused("table ids exhausted".into()))?;
        let meta = TableMeta {
            id: id32,
            name: name.to_vec(),
            families: by_name.into_values().collect(),
            enabled: true,
            split_points,
            created_ms: now,
        };
        self.write_meta(&meta, Some(id + 1))?;
        tables.insert(name.to_vec(), Arc::new(meta));
        Ok(())
    }

    /// Enables or disables a table; HBase refuses to enable an enabled table and vice versa.
    pub fn set_enabled(&self, name: &[u8], enabled: bool) -> Result<(), StoreError> {
        let mut tables = self.tables.write();
        let meta = tables.get(name).ok_or_else(|| StoreError::TableNotFound(show(name)))?;
        match (meta.enabled, enabled) {
            (true, true) => return Err(StoreError::TableNotDisabled(show(name))),
            (false, false) => return Err(StoreError::TableDisabled(show(name))),
            _ => {}
        }
        let mut meta = TableMeta::clone(meta);
        meta.enabled = enabled;
        self.write_meta(&meta, None)?;
        tables.insert(name.to_vec(), Arc::new(meta));
        Ok(())
    }

    /// Deletes a disabled table and all its cells. The descriptor goes first, so a crash
    /// midway leaves only rows of a table id that is never used again (invisible).
    pub fn delete_table(&self, name: &[u8]) -> Result<(), StoreError> {
        let mut tables = self.tables.write();
        let meta = tables.get(name).ok_or_else(|| StoreError::TableNotFound(show(name)))?;
        if meta.enabled {
            return Err(StoreError::TableNotDisabled(show(name)));
        }
        let start = keys::table_start(meta.id);
        let end = keys::table_end(meta.id);
        let mut batch = self.engine.batch();
        batch.remove(&self.engine.meta, [TABLE_PREFIX, name].concat());
        self.engine.commit(batch, true)?;
        tables.remove(name);
        let range: (std::ops::Bound<Vec<u8>>, std::ops::Bound<Vec<u8>>) =
            (std::ops::Bound::Included(start), end.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded));
        let mut batch = self.engine.batch();
        for key in self.engine.rows.range(range).map(|kv| kv.map(|(k, _)| k)) {
            let key = key.map_err(|e| storage("reading the rows to delete failed", e))?;
            batch.remove(&self.engine.rows, key);
            if batch.len() >= DELETE_CHUNK_ROWS {
                self.engine.commit(std::mem::replace(&mut batch, self.engine.batch()), true)?;
            }
        }
        self.engine.commit(batch, true)
    }
}

//! The Thrift1 `Hbase` service on top of the [`Store`]: argument parsing as HBase's
//! `ThriftHBaseServiceHandler` does it (`family:qualifier` columns, `LATEST_TIMESTAMP`,
//! `setTimeRange(0, ts)`), conversion to the generated structs, and errors raised as the
//! exceptions each method declares (`IOError`, `IllegalArgument`, `AlreadyExists`).
//!
//! Methods the emulator does not implement (`grant`, `revoke`) answer an `IOError` naming
//! the method.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chatpipe_common::row_key::MAX_ROW_LENGTH;
use hbase_thrift::hbase::{
    AlreadyExists, BatchMutation, Bytes, ColumnDescriptor, HbaseSyncHandler, IOError, IllegalArgument, Mutation,
    ScannerID, TAccessControlEntity, TAppend, TCell, TColumn, TIncrement, TRegionInfo, TRowResult, TScan,
    TThriftServerType, Text,
};

use crate::filter::{self, Filter};
use crate::regions;
use crate::scanner::{Scanner, Scanners};
use crate::store::{
    ColumnSel, FamilyDescriptor, Increment, Op, ReadSpec, RowCells, RowEdit, ScanSpec, Store, StoreError, StoredCell,
    LATEST_TIMESTAMP,
};

type Attributes = BTreeMap<Text, Text>;

/// Rows read from the store per step while filling a `scannerGetList`.
const SCAN_STEP_ROWS: usize = 1024;

/// Which exceptions a method declares; an undeclared one would reach the client as an
/// `ApplicationException`, so it is narrowed to `IOError` instead.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Declares {
    Io,
    IoIllegal,
    IoIllegalExists,
}

fn io_error(message: String, can_retry: bool) -> thrift::Error {
    thrift::Error::User(Box::new(IOError { message: Some(message), can_retry: Some(can_retry) }))
}

fn to_thrift(e: StoreError, declares: Declares) -> thrift::Error {
    match e {
        StoreError::TableExists(_) if declares == Declares::IoIllegalExists => {
            thrift::Error::User(Box::new(AlreadyExists { message: Some(e.to_string()) }))
        }
        StoreError::IllegalArgument(_) if declares != Declares::Io => {
            thrift::Error::User(Box::new(IllegalArgument { message: Some(e.to_string()) }))
        }
        e => {
            let retry = e.is_retriable();
            io_error(e.to_string(), retry)
        }
    }
}

fn not_implemented(method: &str) -> thrift::Error {
    io_error(format!("{method} is not implemented by the chatpipe HBase emulator"), false)
}

fn illegal(message: impl Into<String>) -> StoreError {
    StoreError::IllegalArgument(message.into())
}

/// Splits `family[:qualifier]` as HBase's `CellUtil.parseColumn`: no colon is a whole
/// family; `family:` is the empty qualifier.
fn parse_column(column: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match column.iter().position(|&b| b == b':') {
        None => (column.to_vec(), None),
        Some(i) => (column[..i].to_vec(), Some(column[i + 1..].to_vec())),
    }
}

fn selector(column: &[u8]) -> ColumnSel {
    match parse_column(column) {
        (family, None) => ColumnSel::Family(family),
        (family, Some(q)) => ColumnSel::Column(family, q),
    }
}

fn column_name(cell: &StoredCell) -> Vec<u8> {
    let mut name = Vec::with_capacity(cell.family.len() + 1 + cell.qualifier.len());
    name.extend_from_slice(&cell.family);
    name.push(b':');
    name.extend_from_slice(&cell.qualifier);
    name
}

fn tcell(cell: StoredCell) -> TCell {
    TCell { value: Some(cell.value), timestamp: Some(cell.ts) }
}

/// One `TRowResult`, as HBase's `ThriftUtilities.rowResultFromHBase` builds it.
fn row_result(row: Vec<u8>, cells: Vec<StoredCell>, sort_columns: bool) -> TRowResult {
    if sort_columns {
        TRowResult {
            row: Some(row),
            columns: None,
            sorted_columns: Some(
                cells
                    .into_iter()
                    .map(|c| TColumn { column_name: Some(column_name(&c)), cell: Some(tcell(c)) })
                    .collect(),
            ),
        }
    } else {
        let mut columns = BTreeMap::new();
        for c in cells {
            // Versions are newest first; HBase's TreeMap.put keeps the last one written, but
            // row reads return one version per column, so there is nothing to choose.
            columns.entry(column_name(&c)).or_insert_with(|| tcell(c));
        }
        TRowResult { row: Some(row), columns: Some(columns), sorted_columns: None }
    }
}

pub(crate) fn check_row(row: &[u8]) -> Result<(), StoreError> {
    if row.is_empty() {
        return Err(illegal("Row length is 0"));
    }
    if row.len() > MAX_ROW_LENGTH {
        return Err(illegal(format!("Row length {} is > {MAX_ROW_LENGTH}", row.len())));
    }
    Ok(())
}

/// HBase's `setTimeRange(0, ts)`: refuses a negative bound.
fn time_range(ts: i64) -> Result<Option<i64>, StoreError> {
    if ts < 0 {
        return Err(StoreError::Refused(format!("java.io.IOException: maxStamp is smaller than minStamp: {ts}")));
    }
    Ok(Some(ts))
}

fn family_from_thrift(cd: ColumnDescriptor) -> Result<FamilyDescriptor, StoreError> {
    let name = cd.name.unwrap_or_default();
    if name.is_empty() {
        return Err(illegal("column name is empty"));
    }
    // HBase keeps what precedes the first ':' (`KeyValue.parseColumn(name)[0]`).
    let (family, _) = parse_column(&name);
    // Absent fields take the IDL's defaults.
    let defaults = FamilyDescriptor::new(family);
    Ok(FamilyDescriptor {
        max_versions: cd.max_versions.unwrap_or(defaults.max_versions),
        compression: cd.compression.unwrap_or_else(|| defaults.compression.clone()),
        in_memory: cd.in_memory.unwrap_or(defaults.in_memory),
        bloom_filter_type: cd.bloom_filter_type.unwrap_or_else(|| defaults.bloom_filter_type.clone()),
        block_cache_enabled: cd.block_cache_enabled.unwrap_or(defaults.block_cache_enabled),
        time_to_live: cd.time_to_live.unwrap_or(defaults.time_to_live),
        ..defaults
    })
}

fn family_to_thrift(f: &FamilyDescriptor) -> ColumnDescriptor {
    let mut name = f.name.clone();
    name.push(b':');
    ColumnDescriptor {
        name: Some(name),
        max_versions: Some(f.max_versions),
        compression: Some(f.compression.clone()),
        in_memory: Some(f.in_memory),
        bloom_filter_type: Some(f.bloom_filter_type.clone()),
        bloom_filter_vector_size: Some(0),
        bloom_filter_nb_hashes: Some(0),
        block_cache_enabled: Some(f.block_cache_enabled),
        time_to_live: Some(f.time_to_live),
    }
}

/// The server's clock, in milliseconds since the epoch (HBase's cell timestamps).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Where mutations come from: `mutateRow*` ignores a put without a qualifier (HBase logs a
/// warning); `mutateRows*` refuses it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PutWithoutQualifier {
    Ignore,
    Refuse,
}

fn ops_from_thrift(mutations: Vec<Mutation>, no_qualifier: PutWithoutQualifier) -> Result<Vec<Op>, StoreError> {
    let mut ops = Vec::with_capacity(mutations.len());
    for m in mutations {
        let column = m.column.ok_or_else(|| illegal("Mutation without a column"))?;
        let (family, qualifier) = parse_column(&column);
        match (m.is_delete.unwrap_or(false), qualifier) {
            (true, None) => ops.push(Op::DeleteFamily { family }),
            (true, Some(qualifier)) => ops.push(Op::DeleteColumn { family, qualifier }),
            (false, Some(qualifier)) => ops.push(Op::Put { family, qualifier, value: m.value.unwrap_or_default() }),
            (false, None) => {
                if no_qualifier == PutWithoutQualifier::Refuse {
                    return Err(illegal("Invalid famAndQf provided."));
                }
            }
        }
    }
    Ok(ops)
}

/// The service implementation shared by every connection.
#[derive(Debug)]
pub struct Handler {
    store: Arc<Store>,
    scanners: Scanners,
    presplit_salt: Option<u32>,
    /// Reported as the region server of every region.
    server_host: Vec<u8>,
    server_port: i32,
}

impl Handler {
    pub fn new(store: Arc<Store>, presplit_salt: Option<u32>, server_host: String, server_port: u16) -> Self {
        Handler {
            store,
            scanners: Scanners::default(),
            presplit_salt,
            server_host: server_host.into_bytes(),
            server_port: i32::from(server_port),
        }
    }

    fn now() -> i64 {
        now_ms()
    }

    fn mutate(&self, table: &[u8], rows: Vec<RowEdit>, ts: Option<i64>) -> Result<(), StoreError> {
        for r in &rows {
            if !r.ops.is_empty() {
                check_row(&r.row)?;
            }
        }
        self.store.mutate(table, rows, ts, Self::now())
    }

    fn read_cells(
        &self,
        table: &[u8],
        row: &[u8],
        column: &[u8],
        versions: i32,
        max_ts: Option<i64>,
    ) -> thrift::Result<Vec<TCell>> {
        let run = || {
            check_row(row)?;
            if versions <= 0 {
                return Err(StoreError::Refused(format!("java.io.IOException: versions must be positive: {versions}")));
            }
            let spec =
                ReadSpec { columns: vec![selector(column)], max_ts_exclusive: max_ts, versions: versions as u32 };
            self.store.get(table, row, &spec, Self::now())
        };
        run().map(|cells| cells.into_iter().map(tcell).collect()).map_err(|e| to_thrift(e, Declares::Io))
    }

    fn read_rows(
        &self,
        table: &[u8],
        rows: Vec<Vec<u8>>,
        columns: Option<Vec<Text>>,
        ts: i64,
    ) -> thrift::Result<Vec<TRowResult>> {
        let run = || {
            let spec = ReadSpec {
                columns: columns.iter().flatten().map(|c| selector(c)).collect(),
                max_ts_exclusive: time_range(ts)?,
                versions: 1,
            };
            let now = Self::now();
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                check_row(&row)?;
                let cells = self.store.get(table, &row, &spec, now)?;
                if !cells.is_empty() {
                    out.push(row_result(row, cells, false));
                }
            }
            Ok(out)
        };
        run().map_err(|e| to_thrift(e, Declares::Io))
    }

    fn open_scanner(
        &self,
        table: &[u8],
        spec: ScanSpec,
        batch_size: Option<usize>,
        sort_columns: bool,
    ) -> thrift::Result<ScannerID> {
        let run = || {
            let (cursor, prepared) = self.store.open_scan(table, spec)?;
            self.scanners.open(Scanner::new(cursor, prepared, batch_size, sort_columns))
        };
        run().map_err(|e| to_thrift(e, Declares::Io))
    }

    fn simple_scan(
        &self,
        table: Text,
        start_row: Text,
        stop_row: Text,
        columns: Vec<Text>,
        max_ts: Option<i64>,
        filter: Filter,
    ) -> thrift::Result<ScannerID> {
        let spec = ScanSpec {
            start_row,
            stop_row,
            reversed: false,
            read: ReadSpec {
                columns: columns.iter().map(|c| selector(c)).collect(),
                max_ts_exclusive: max_ts,
                versions: 1,
            },
            filter,
        };
        self.open_scanner(&table, spec, None, false)
    }

    fn delete(&self, table: &[u8], row: Vec<u8>, op: Op, ts: Option<i64>) -> thrift::Result<()> {
        self.mutate(table, vec![RowEdit { row, ops: vec![op] }], ts).map_err(|e| to_thrift(e, Declares::Io))
    }
}

fn scanner_id_invalid() -> thrift::Error {
    thrift::Error::User(Box::new(IllegalArgument { message: Some("scanner ID is invalid".into()) }))
}

fn split_into_results(
    rows: Vec<RowCells>,
    batch_size: Option<usize>,
    sort_columns: bool,
    out: &mut std::collections::VecDeque<TRowResult>,
) {
    for RowCells { row, cells } in rows {
        match batch_size {
            Some(n) if n > 0 && cells.len() > n => {
                let mut cells = cells;
                while !cells.is_empty() {
                    let rest = cells.split_off(n.min(cells.len()));
                    out.push_back(row_result(row.clone(), cells, sort_columns));
                    cells = rest;
                }
            }
            _ => out.push_back(row_result(row, cells, sort_columns)),
        }
    }
}

impl HbaseSyncHandler for Handler {
    fn handle_enable_table(&self, table_name: Bytes) -> thrift::Result<()> {
        self.store.set_enabled(&table_name, true).map_err(|e| to_thrift(e, Declares::Io))
    }

    fn handle_disable_table(&self, table_name: Bytes) -> thrift::Result<()> {
        self.store.set_enabled(&table_name, false).map_err(|e| to_thrift(e, Declares::Io))
    }

    fn handle_is_table_enabled(&self, table_name: Bytes) -> thrift::Result<bool> {
        self.store.table(&table_name).map(|m| m.enabled).map_err(|e| to_thrift(e, Declares::Io))
    }

    fn handle_compact(&self, table_name_or_region_name: Bytes) -> thrift::Result<()> {
        // The engine is shared by every table: flushing its memstore to a sorted file is what
        // a (minor) compaction request can start here; returns when the file is written.
        let run = || {
            self.store.table(&table_name_or_region_name)?;
            self.store.flush()?;
            tracing::debug!(stats = ?self.store.stats(), "memstore flushed");
            Ok(())
        };
        run().map_err(|e| to_thrift(e, Declares::Io))
    }

    fn handle_major_compact(&self, table_name_or_region_name: Bytes) -> thrift::Result<()> {
        // Flush, then merge every sorted file into one; returns when done (HBase queues it).
        let run = || {
            self.store.table(&table_name_or_region_name)?;
            self.store.major_compact()?;
            tracing::debug!(stats = ?self.store.stats(), "major compaction done");
            Ok(())
        };
        run().map_err(|e| to_thrift(e, Declares::Io))
    }

    fn handle_get_table_names(&self) -> thrift::Result<Vec<Text>> {
        Ok(self.store.tables().into_iter().map(|(n, _)| n).collect())
    }

    fn handle_get_table_names_with_is_table_enabled(&self) -> thrift::Result<BTreeMap<Text, bool>> {
        Ok(self.store.tables().into_iter().collect())
    }

    fn handle_get_column_descriptors(&self, table_name: Text) -> thrift::Result<BTreeMap<Text, ColumnDescriptor>> {
        let meta = self.store.table(&table_name).map_err(|e| to_thrift(e, Declares::Io))?;
        Ok(meta.families.iter().map(family_to_thrift).map(|cd| (cd.name.clone().unwrap_or_default(), cd)).collect())
    }

    fn handle_get_table_regions(&self, table_name: Text) -> thrift::Result<Vec<TRegionInfo>> {
        // HBase answers an empty list for a table that does not exist.
        let Ok(meta) = self.store.table(&table_name) else {
            return Ok(Vec::new());
        };
        Ok(regions::regions(&meta.name, &meta.split_points, meta.created_ms)
            .into_iter()
            .map(|r| TRegionInfo {
                start_key: Some(r.start_key),
                end_key: Some(r.end_key),
                id: Some(r.id),
                name: Some(r.name),
                version: Some(1),
                server_name: Some(self.server_host.clone()),
                port: Some(self.server_port),
            })
            .collect())
    }

    fn handle_create_table(&self, table_name: Text, column_families: Vec<ColumnDescriptor>) -> thrift::Result<()> {
        let run = || {
            let families = column_families.into_iter().map(family_from_thrift).collect::<Result<Vec<_>, _>>()?;
            let splits = regions::split_points_for(&table_name, self.presplit_salt);
            self.store.create_table(&table_name, families, splits, Self::now())
        };
        run().map_err(|e| to_thrift(e, Declares::IoIllegalExists))
    }

    fn handle_delete_table(&self, table_name: Text) -> thrift::Result<()> {
        self.store.delete_table(&table_name).map_err(|e| to_thrift(e, Declares::Io))
    }

    fn handle_get(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TCell>> {
        self.read_cells(&table_name, &row, &column, 1, None)
    }

    fn handle_get_ver(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        num_versions: i32,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TCell>> {
        self.read_cells(&table_name, &row, &column, num_versions, None)
    }

    fn handle_get_ver_ts(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        timestamp: i64,
        num_versions: i32,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TCell>> {
        let max_ts = time_range(timestamp).map_err(|e| to_thrift(e, Declares::Io))?;
        self.read_cells(&table_name, &row, &column, num_versions, max_ts)
    }

    fn handle_get_row(&self, table_name: Text, row: Text, _attributes: Attributes) -> thrift::Result<Vec<TRowResult>> {
        self.read_rows(&table_name, vec![row], None, LATEST_TIMESTAMP)
    }

    fn handle_get_row_with_columns(
        &self,
        table_name: Text,
        row: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.read_rows(&table_name, vec![row], Some(columns), LATEST_TIMESTAMP)
    }

    fn handle_get_row_ts(
        &self,
        table_name: Text,
        row: Text,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.read_rows(&table_name, vec![row], None, timestamp)
    }

    fn handle_get_row_with_columns_ts(
        &self,
        table_name: Text,
        row: Text,
        columns: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.read_rows(&table_name, vec![row], Some(columns), timestamp)
    }

    fn handle_get_rows(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.read_rows(&table_name, rows, None, LATEST_TIMESTAMP)
    }

    fn handle_get_rows_with_columns(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.read_rows(&table_name, rows, Some(columns), LATEST_TIMESTAMP)
    }

    fn handle_get_rows_ts(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.read_rows(&table_name, rows, None, timestamp)
    }

    fn handle_get_rows_with_columns_ts(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        columns: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.read_rows(&table_name, rows, Some(columns), timestamp)
    }

    fn handle_mutate_row(
        &self,
        table_name: Text,
        row: Text,
        mutations: Vec<Mutation>,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.handle_mutate_row_ts(table_name, row, mutations, LATEST_TIMESTAMP, _attributes)
    }

    fn handle_mutate_row_ts(
        &self,
        table_name: Text,
        row: Text,
        mutations: Vec<Mutation>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        let run = || {
            let ops = ops_from_thrift(mutations, PutWithoutQualifier::Ignore)?;
            self.mutate(&table_name, vec![RowEdit { row, ops }], Some(timestamp))
        };
        run().map_err(|e| to_thrift(e, Declares::IoIllegal))
    }

    fn handle_mutate_rows(
        &self,
        table_name: Text,
        row_batches: Vec<BatchMutation>,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.handle_mutate_rows_ts(table_name, row_batches, LATEST_TIMESTAMP, _attributes)
    }

    fn handle_mutate_rows_ts(
        &self,
        table_name: Text,
        row_batches: Vec<BatchMutation>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        let run = || {
            let rows = row_batches
                .into_iter()
                .map(|b| {
                    let row = b.row.ok_or_else(|| illegal("BatchMutation without a row"))?;
                    let ops = ops_from_thrift(b.mutations.unwrap_or_default(), PutWithoutQualifier::Refuse)?;
                    Ok(RowEdit { row, ops })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.mutate(&table_name, rows, Some(timestamp))
        };
        run().map_err(|e| to_thrift(e, Declares::IoIllegal))
    }

    fn handle_atomic_increment(&self, table_name: Text, row: Text, column: Text, value: i64) -> thrift::Result<i64> {
        let run = || {
            check_row(&row)?;
            let (family, qualifier) = parse_column(&column);
            let values = self.store.increment(
                &table_name,
                &[Increment { row, family, qualifier: qualifier.unwrap_or_default(), amount: value }],
                Self::now(),
            )?;
            values.first().copied().ok_or_else(|| StoreError::Storage("increment returned nothing".into()))
        };
        run().map_err(|e| to_thrift(e, Declares::IoIllegal))
    }

    fn handle_delete_all(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.handle_delete_all_ts(table_name, row, column, LATEST_TIMESTAMP, _attributes)
    }

    fn handle_delete_all_ts(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        let op = match parse_column(&column) {
            (family, None) => Op::DeleteFamily { family },
            (family, Some(qualifier)) => Op::DeleteColumn { family, qualifier },
        };
        self.delete(&table_name, row, op, Some(timestamp))
    }

    fn handle_delete_all_row(&self, table_name: Text, row: Text, _attributes: Attributes) -> thrift::Result<()> {
        self.delete(&table_name, row, Op::DeleteRow, None)
    }

    fn handle_increment(&self, increment: TIncrement) -> thrift::Result<()> {
        self.handle_increment_rows(vec![increment])
    }

    fn handle_increment_rows(&self, increments: Vec<TIncrement>) -> thrift::Result<()> {
        let run = || {
            let now = Self::now();
            for inc in increments {
                let table = inc.table.unwrap_or_default();
                let row = inc.row.unwrap_or_default();
                if table.is_empty() || row.is_empty() {
                    return Err(illegal("Must supply a table and a row key; can't increment"));
                }
                let (family, qualifier) = parse_column(&inc.column.unwrap_or_default());
                let qualifier = qualifier.ok_or_else(|| illegal("increment needs a family:qualifier column"))?;
                self.store.increment(
                    &table,
                    &[Increment { row, family, qualifier, amount: inc.ammount.unwrap_or(0) }],
                    now,
                )?;
            }
            Ok(())
        };
        run().map_err(|e| to_thrift(e, Declares::Io))
    }

    fn handle_delete_all_row_ts(
        &self,
        table_name: Text,
        row: Text,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.delete(&table_name, row, Op::DeleteRow, Some(timestamp))
    }

    fn handle_scanner_open_with_scan(
        &self,
        table_name: Text,
        scan: TScan,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        let filter = match &scan.filter_string {
            Some(f) => {
                filter::parse(f).map_err(|m| io_error(format!("java.lang.IllegalArgumentException: {m}"), false))?
            }
            None => Filter::default(),
        };
        let max_ts = match scan.timestamp {
            Some(ts) => time_range(ts).map_err(|e| to_thrift(e, Declares::Io))?,
            None => None,
        };
        let spec = ScanSpec {
            start_row: scan.start_row.unwrap_or_default(),
            stop_row: scan.stop_row.unwrap_or_default(),
            reversed: scan.reversed.unwrap_or(false),
            read: ReadSpec {
                columns: scan.columns.iter().flatten().map(|c| selector(c)).collect(),
                max_ts_exclusive: max_ts,
                versions: 1,
            },
            filter,
        };
        let batch = scan.batch_size.filter(|n| *n > 0).and_then(|n| usize::try_from(n).ok());
        self.open_scanner(&table_name, spec, batch, scan.sort_columns.unwrap_or(false))
    }

    fn handle_scanner_open(
        &self,
        table_name: Text,
        start_row: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        self.simple_scan(table_name, start_row, Vec::new(), columns, None, Filter::default())
    }

    fn handle_scanner_open_with_stop(
        &self,
        table_name: Text,
        start_row: Text,
        stop_row: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        self.simple_scan(table_name, start_row, stop_row, columns, None, Filter::default())
    }

    fn handle_scanner_open_with_prefix(
        &self,
        table_name: Text,
        start_and_prefix: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        let filter = Filter::prefix(start_and_prefix.clone());
        self.simple_scan(table_name, start_and_prefix, Vec::new(), columns, None, filter)
    }

    fn handle_scanner_open_ts(
        &self,
        table_name: Text,
        start_row: Text,
        columns: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        let max_ts = time_range(timestamp).map_err(|e| to_thrift(e, Declares::Io))?;
        self.simple_scan(table_name, start_row, Vec::new(), columns, max_ts, Filter::default())
    }

    fn handle_scanner_open_with_stop_ts(
        &self,
        table_name: Text,
        start_row: Text,
        stop_row: Text,
        columns: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        let max_ts = time_range(timestamp).map_err(|e| to_thrift(e, Declares::Io))?;
        self.simple_scan(table_name, start_row, stop_row, columns, max_ts, Filter::default())
    }

    fn handle_scanner_get(&self, id: ScannerID) -> thrift::Result<Vec<TRowResult>> {
        self.handle_scanner_get_list(id, 1)
    }

    fn handle_scanner_get_list(&self, id: ScannerID, nb_rows: i32) -> thrift::Result<Vec<TRowResult>> {
        let wanted = usize::try_from(nb_rows).unwrap_or(0);
        let store = &self.store;
        let result = self.scanners.with(id, |s| {
            let mut out = Vec::with_capacity(wanted.min(SCAN_STEP_ROWS));
            while out.len() < wanted {
                if let Some(r) = s.pending.pop_front() {
                    out.push(r);
                    continue;
                }
                if s.cursor.is_exhausted() {
                    break;
                }
                let step = (wanted - out.len()).min(SCAN_STEP_ROWS);
                let rows = store.scan_next(&mut s.cursor, &s.prepared, step, Self::now())?;
                split_into_results(rows, s.batch_size, s.sort_columns, &mut s.pending);
            }
            Ok(out)
        });
        match result {
            None => Err(scanner_id_invalid()),
            Some(r) => r.map_err(|e| to_thrift(e, Declares::IoIllegal)),
        }
    }

    fn handle_scanner_close(&self, id: ScannerID) -> thrift::Result<()> {
        if self.scanners.close(id) {
            Ok(())
        } else {
            Err(scanner_id_invalid())
        }
    }

    fn handle_get_region_info(&self, row: Text) -> thrift::Result<TRegionInfo> {
        // HBase looks the row up in `hbase:meta`, whose keys are `table,row,regionid`: the
        // region of `table` holding `row` (what follows the last comma is the region id that
        // clients append, e.g. `,99999999999999`).
        let run = || {
            let comma = row.iter().position(|&b| b == b',').ok_or_else(|| {
                StoreError::Refused(format!(
                    "getRegionInfo needs a meta row key 'table,row,…', got {:?}",
                    String::from_utf8_lossy(&row)
                ))
            })?;
            let (table, rest) = (&row[..comma], &row[comma + 1..]);
            let key = match rest.iter().rposition(|&b| b == b',') {
                Some(i) => &rest[..i],
                None => rest,
            };
            let meta = self.store.table(table)?;
            let region = regions::regions(&meta.name, &meta.split_points, meta.created_ms)
                .into_iter()
                .rfind(|r| r.start_key.as_slice() <= key)
                .ok_or_else(|| StoreError::Storage("the table has no region".into()))?;
            Ok::<_, StoreError>(TRegionInfo {
                start_key: Some(region.start_key),
                end_key: Some(region.end_key),
                id: Some(region.id),
                name: Some(region.name),
                version: Some(1),
                server_name: Some(self.server_host.clone()),
                port: Some(self.server_port),
            })
        };
        run().map_err(|e| to_thrift(e, Declares::Io))
    }

    fn handle_append(&self, append: TAppend) -> thrift::Result<Vec<TCell>> {
        let run = || {
            let table = append.table.unwrap_or_default();
            let row = append.row.unwrap_or_default();
            if table.is_empty() || row.is_empty() {
                return Err(illegal("Must supply a table and a row key; can't append"));
            }
            let columns = append.columns.unwrap_or_default();
            let values = append.values.unwrap_or_default();
            if columns.len() != values.len() {
                return Err(illegal("Sizes of columns and values in tappend object are not matching"));
            }
            let cols = columns
                .into_iter()
                .zip(values)
                .map(|(c, v)| {
                    let (family, qualifier) = parse_column(&c);
                    (family, qualifier.unwrap_or_default(), v)
                })
                .collect::<Vec<_>>();
            self.store.append(&table, &row, &cols, Self::now())
        };
        run().map(|cells| cells.into_iter().map(tcell).collect()).map_err(|e| to_thrift(e, Declares::Io))
    }

    fn handle_check_and_put(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        value: Text,
        mput: Mutation,
        _attributes: Attributes,
    ) -> thrift::Result<bool> {
        let run = || {
            check_row(&row)?;
            let (family, qualifier) = parse_column(&column);
            let (put_family, put_qualifier) = parse_column(&mput.column.clone().unwrap_or_default());
            let put_qualifier = put_qualifier.ok_or_else(|| illegal("checkAndPut needs a family:qualifier put"))?;
            let put_value = mput.value.clone().unwrap_or_default();
            self.store.check_and_put(
                &table_name,
                &row,
                (&family, &qualifier.unwrap_or_default()),
                Some(&value),
                (&put_family, &put_qualifier, &put_value),
                Self::now(),
            )
        };
        run().map_err(|e| to_thrift(e, Declares::IoIllegal))
    }

    fn handle_get_thrift_server_type(&self) -> thrift::Result<TThriftServerType> {
        Ok(TThriftServerType::ONE)
    }

    fn handle_get_cluster_id(&self) -> thrift::Result<String> {
        Ok("chatpipe-hbase-emulator".into())
    }

    fn handle_grant(&self, _info: TAccessControlEntity) -> thrift::Result<bool> {
        Err(not_implemented("grant"))
    }

    fn handle_revoke(&self, _info: TAccessControlEntity) -> thrift::Result<bool> {
        Err(not_implemented("revoke"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_parse_like_hbase() {
        assert_eq!(parse_column(b"cf"), (b"cf".to_vec(), None));
        assert_eq!(parse_column(b"cf:"), (b"cf".to_vec(), Some(Vec::new())));
        assert_eq!(parse_column(b"cf:a:b"), (b"cf".to_vec(), Some(b"a:b".to_vec())));
    }

    #[test]
    fn undeclared_exceptions_are_narrowed_to_io_error() {
        let e = to_thrift(illegal("x"), Declares::Io);
        match e {
            thrift::Error::User(u) => assert!(u.downcast_ref::<IOError>().is_some()),
            other => panic!("{other:?}"),
        }
        let e = to_thrift(illegal("x"), Declares::IoIllegal);
        match e {
            thrift::Error::User(u) => assert!(u.downcast_ref::<IllegalArgument>().is_some()),
            other => panic!("{other:?}"),
        }
        let e = to_thrift(StoreError::TableExists("t".into()), Declares::IoIllegalExists);
        match e {
            thrift::Error::User(u) => assert!(u.downcast_ref::<AlreadyExists>().is_some()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batch_size_splits_wide_rows() {
        let cell =
            |q: &str| StoredCell { family: b"f".to_vec(), qualifier: q.as_bytes().to_vec(), ts: 1, value: Vec::new() };
        let rows = vec![RowCells { row: b"r".to_vec(), cells: vec![cell("a"), cell("b"), cell("c")] }];
        let mut out = std::collections::VecDeque::new();
        split_into_results(rows, Some(2), true, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].sorted_columns.as_ref().map(Vec::len), Some(2));
        assert_eq!(out[1].sorted_columns.as_ref().map(Vec::len), Some(1));
    }
}

//! Open scanners. As in HBase's Thrift server, scanner ids are server-wide `i32`s (a client
//! may use one from any connection) and a scanner lives until `scannerClose`. To bound
//! memory, at most [`MAX_OPEN_SCANNERS`] are open at once and a scanner idle for
//! [`SCANNER_IDLE_TIMEOUT`] is dropped (HBase's region servers expire idle scanner leases too).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbase_thrift::hbase::TRowResult;
use parking_lot::Mutex;

use crate::store::{PreparedScan, ScanCursor, StoreError};

/// Most scanners open at once, server-wide.
pub const MAX_OPEN_SCANNERS: usize = 10_000;
/// A scanner not used for this long is closed.
pub const SCANNER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// One open scan.
#[derive(Debug)]
pub struct Scanner {
    pub cursor: ScanCursor,
    pub prepared: PreparedScan,
    /// Results read but not yet returned (a wide row split by `batchSize`).
    pub pending: VecDeque<TRowResult>,
    /// `TScan.batchSize`: most cells per result.
    pub batch_size: Option<usize>,
    /// `TScan.sortColumns`: return `sortedColumns` instead of the `columns` map.
    pub sort_columns: bool,
    last_used: Instant,
}

impl Scanner {
    pub fn new(cursor: ScanCursor, prepared: PreparedScan, batch_size: Option<usize>, sort_columns: bool) -> Self {
        Scanner { cursor, prepared, pending: VecDeque::new(), batch_size, sort_columns, last_used: Instant::now() }
    }
}

/// The server-wide scanner table.
#[derive(Debug, Default)]
pub struct Scanners {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: i32,
    open: HashMap<i32, Arc<Mutex<Scanner>>>,
}

impl Scanners {
    /// Registers a scanner and returns its id.
    pub fn open(&self, scanner: Scanner) -> Result<i32, StoreError> {
        let mut inner = self.inner.lock();
        if inner.open.len() >= MAX_OPEN_SCANNERS {
            let now = Instant::now();
            // A scanner in use is locked; it is not idle.
            inner
                .open
                .retain(|_, s| s.try_lock().is_none_or(|s| now.duration_since(s.last_used) < SCANNER_IDLE_TIMEOUT));
        }
        if inner.open.len() >= MAX_OPEN_SCANNERS {
            return Err(StoreError::Refused(format!(
                "too many open scanners ({MAX_OPEN_SCANNERS}); close scanners after use"
            )));
        }
        let mut id = inner.next_id;
        while inner.open.contains_key(&id) {
            id = id.wrapping_add(1).max(0);
        }
        inner.next_id = id.wrapping_add(1).max(0);
        inner.open.insert(id, Arc::new(Mutex::new(scanner)));
        Ok(id)
    }

    /// Runs `f` on an open scanner; `None` if the id is unknown or closed.
    pub fn with<T>(&self, id: i32, f: impl FnOnce(&mut Scanner) -> T) -> Option<T> {
        let scanner = self.inner.lock().open.get(&id).cloned()?;
        let mut s = scanner.lock();
        s.last_used = Instant::now();
        Some(f(&mut s))
    }

    /// Closes a scanner; false if the id is unknown or closed.
    pub fn close(&self, id: i32) -> bool {
        self.inner.lock().open.remove(&id).is_some()
    }
}

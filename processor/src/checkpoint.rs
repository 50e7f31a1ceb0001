//! Checkpoint files: a partition's state at a committed `Meta`, written under `--state-dir`
//! so that a restart folds only the changelog written after it (the protocol and why a
//! checkpoint is a compacted prefix of the log: `changelog.rs`).
//!
//! **Format**: frames of `u32` little-endian length + envelope — a [`CheckpointHeader`], then
//! its `entries` × `(StateKey, ChangeRecord)`. Written to a temporary file named by process
//! and fence, synced, and renamed over the old one, so a crash leaves the old or the new file.
//!
//! **Failure behaviour**: a file that is missing, truncated, garbage or another partition's
//! is not used (logged; the restore reads the whole changelog); `changelog.rs` also refuses a
//! checkpoint whose fence is not in this changelog at its offset, or older than
//! [`MAX_CHECKPOINT_AGE`].

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chatpipe_common::envelope;

use crate::changelog::Fold;
use crate::state::{ChangeRecord, PartitionState, StateKey};

/// A checkpoint older than this is not used (Kafka's default `delete.retention.ms`, 24 h,
/// halved: tombstones compacted away after the checkpoint would be missed by a tail read).
pub const MAX_CHECKPOINT_AGE: Duration = Duration::from_secs(12 * 3600);

/// The first part of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct CheckpointHeader {
    /// The changelog topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Changelog offset of the `Meta` record the state reflects.
    pub offset: i64,
    /// The fence the writer ran under (its offset)...
    pub fence: i64,
    /// ... and its id.
    pub fence_id: u64,
    /// When it was written (epoch ms).
    pub written_at_ms: i64,
    /// Entries that follow.
    pub entries: u64,
}

impl CheckpointHeader {
    /// How long ago it was written.
    pub fn age(&self) -> Duration {
        let now = chrono::Utc::now().timestamp_millis();
        Duration::from_millis(now.saturating_sub(self.written_at_ms).max(0) as u64)
    }
}

fn checkpoint_path(dir: &Path, topic: &str, partition: i32) -> PathBuf {
    dir.join(format!("{topic}-{partition}.checkpoint"))
}

/// Writes `state` as the checkpoint of `partition` at changelog `offset` (atomically: a
/// temporary file renamed over the old one).
pub fn write_checkpoint(
    dir: &Path,
    topic: &str,
    partition: i32,
    offset: i64,
    (fence, fence_id): (i64, u64),
    state: &PartitionState,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = checkpoint_path(dir, topic, partition);
    // instances sharing a directory never write the same temporary file
    let tmp = path.with_extension(format!("{}-{fence}.tmp", std::process::id()));
    let records = state.committed_records();
    let header = CheckpointHeader {
        topic: topic.to_owned(),
        partition,
        offset,
        fence,
        fence_id,
        written_at_ms: chrono::Utc::now().timestamp_millis(),
        entries: records.len() as u64,
    };
    let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
    let frame = |w: &mut BufWriter<std::fs::File>, bytes: Vec<u8>| -> std::io::Result<()> {
        w.write_all(&(bytes.len() as u32).to_le_bytes())?;
        w.write_all(&bytes)
    };
    let invalid = |e: envelope::EnvelopeError| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    frame(&mut w, envelope::encode(&header).map_err(invalid)?)?;
    for r in &records {
        frame(&mut w, envelope::encode(r).map_err(invalid)?)?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_data()?;
    std::fs::rename(&tmp, &path)
}

/// The checkpoint of `partition`, as a fold to continue; `None` when there is none or it
/// does not read back (logged).
pub fn read_checkpoint(dir: &Path, topic: &str, partition: i32) -> Option<(CheckpointHeader, Fold)> {
    let path = checkpoint_path(dir, topic, partition);
    let bytes = std::fs::read(&path).ok()?;
    match parse_checkpoint(&bytes) {
        Ok((h, fold)) if h.topic == topic && h.partition == partition => Some((h, fold)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(partition, error = %e, "checkpoint unreadable; restoring from the changelog");
            None
        }
    }
}

/// Parses a checkpoint file read whole (one read, entries decoded in place).
fn parse_checkpoint(mut r: &[u8]) -> Result<(CheckpointHeader, Fold), String> {
    let mut frame = || -> Result<&[u8], String> {
        let (len, rest) = r.split_first_chunk::<4>().ok_or("truncated")?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(format!("a {len}-byte entry past the end"));
        }
        let (body, rest) = rest.split_at(len);
        r = rest;
        Ok(body)
    };
    let header: CheckpointHeader = envelope::decode(frame()?).map_err(|e| e.to_string())?;
    let mut latest = HashMap::with_capacity(usize::try_from(header.entries).unwrap_or(0).min(1 << 24));
    for _ in 0..header.entries {
        let (k, v): (StateKey, ChangeRecord) = envelope::decode(frame()?).map_err(|e| e.to_string())?;
        latest.insert(k, v);
    }
    let fence = header.fence;
    Ok((header, Fold::resume(fence, latest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changelog::tests::{append, fence, fold, Log};
    use crate::state::{Member, Meta};

    fn member(read_seq: u64) -> Member {
        Member { joined_at_ms: 0, joined_seq: 0, read_seq, read_message_id: 0 }
    }

    #[test]
    fn a_checkpoint_plus_the_tail_equals_the_whole_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log: Log = Vec::new();
        let e = fence(&mut log);
        let mut st = PartitionState::default();
        st.meta = Meta { applied_offset: -1, ..Meta::default() };
        st.add_member(1, 1, member(1));
        st.add_member(1, 2, member(1));
        st.meta.applied_offset = 10;
        append(&mut log, e, st.drain_changes());
        let at = log.len() as i64 - 1; // the Meta record
        write_checkpoint(dir.path(), "cl", 3, at, (e, 77), &st).unwrap();
        st.remove_member(1, 1);
        st.add_member(1, 3, member(0));
        st.meta.applied_offset = 20;
        append(&mut log, e, st.drain_changes());
        st.meta.applied_offset = 30;
        append(&mut log, e, st.drain_changes()); // the tombstone of (1, 1)
        let (h, mut f) = read_checkpoint(dir.path(), "cl", 3).unwrap();
        assert_eq!((h.offset, h.fence, h.fence_id), (at, e, 77));
        for (o, k, ep, v) in log.iter().filter(|(o, _, _, _)| *o > at) {
            f.push(*o, k.clone(), *ep, v.clone());
        }
        assert!(f.read < log.len() as u64, "only the tail was read");
        assert_eq!(f.finish().snapshot(), fold(&log).snapshot());
        assert!(read_checkpoint(dir.path(), "cl", 4).is_none());
        assert!(read_checkpoint(dir.path(), "other", 3).is_none());
        std::fs::write(checkpoint_path(dir.path(), "cl", 3), b"\x05\x00\x00\x00garbage").unwrap();
        assert!(read_checkpoint(dir.path(), "cl", 3).is_none(), "garbage is not a checkpoint");
    }
}

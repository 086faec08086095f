//! Durable state of table-service: table definitions and item envelopes,
//! behind one trait so engines can stand side by side and pass one
//! conformance suite. Writes from concurrent requests are group-committed
//! (one transaction and one fsync for many) and never acknowledged before
//! they are durable. **Invariant:** only envelopes are stored for item
//! contents; key attributes are stored in clear for lookup and ordering.

mod commit;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::ops::Bound;

use serde::{Deserialize, Serialize};

pub use commit::GroupCommit;

use crate::model::{ItemKey, KeySchema};

/// A key change in progress: data keys are being re-wrapped under `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrap {
    pub target_key_id: String,
    /// Items done so far; the job resumes after `resume_after`.
    pub items_done: u64,
    pub resume_after: Option<(Vec<u8>, Vec<u8>)>,
    /// The key items were under before the change.
    #[serde(default)]
    pub source_key_id: String,
    /// (key id, grant id) of the grants that let table-service re-wrap;
    /// retired when the job ends.
    #[serde(default)]
    pub grants: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRecord {
    pub name: String,
    /// Random id bound into every item's encryption context and AAD, so a
    /// re-created table with the same name cannot read old envelopes.
    pub table_id: String,
    pub schema: KeySchema,
    /// Canonical key id (UUID) of the table's CMK.
    pub kms_key_id: String,
    pub service_managed: bool,
    pub created: i64,
    pub rewrap: Option<Rewrap>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    PutTable(TableRecord),
    /// Removes the table at once; its items are left for
    /// [`Mutation::PurgeDropped`] (a table id is never used again, and
    /// nothing reads a table without its record), so deleting a large
    /// table is not one long transaction that every write waits behind.
    DeleteTable {
        table_id: String,
    },
    /// Deletes up to `limit` items of a deleted table; once none is left,
    /// the table is no longer among [`TableStore::dropped_tables`].
    PurgeDropped {
        table_id: String,
        limit: usize,
    },
    PutItem {
        table_id: String,
        key: ItemKey,
        envelope: Vec<u8>,
    },
    DeleteItem {
        table_id: String,
        key: ItemKey,
    },
}

/// A stored item: clear key bytes and the sealed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    pub key: ItemKey,
    pub envelope: Vec<u8>,
}

/// Items of one partition whose sort key lies within bounds.
#[derive(Debug, Clone)]
pub struct RangeQuery {
    pub table_id: String,
    pub partition: Vec<u8>,
    pub lower: Bound<Vec<u8>>,
    pub upper: Bound<Vec<u8>>,
    pub descending: bool,
    pub limit: usize,
    /// Stop reading once the items read hold more than this many bytes
    /// (key and envelope), the item that crosses it included, so a page
    /// of large items is not read whole only to be cut.
    pub max_bytes: usize,
}

/// A page of a table in (partition, sort) order; a page of one segment of
/// a parallel scan in (segment hash, partition, sort) order, so that a
/// segment is one contiguous run of an index, not a filter over the table.
#[derive(Debug, Clone)]
pub struct ScanQuery {
    pub table_id: String,
    pub after: Option<ItemKey>,
    /// (segment, total segments) of a parallel scan; `after` must then be
    /// a key of that segment.
    pub segment: Option<(u32, u32)>,
    pub limit: usize,
    /// As [`RangeQuery::max_bytes`].
    pub max_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage engine failed: {0}")]
    Engine(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("storage is unavailable after an earlier write failed; restart the service")]
    Poisoned,
}

/// A storage engine. `commit` is atomic and durable when it returns.
pub trait TableStore: Send + Sync + 'static {
    fn load_tables(&self) -> Result<Vec<TableRecord>, StoreError>;
    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError>;
    fn get_item(&self, table_id: &str, key: &ItemKey) -> Result<Option<Vec<u8>>, StoreError>;
    fn query(&self, query: &RangeQuery) -> Result<Vec<StoredItem>, StoreError>;
    fn scan(&self, query: &ScanQuery) -> Result<Vec<StoredItem>, StoreError>;
    fn count_items(&self, table_id: &str) -> Result<u64, StoreError>;
    /// Deleted tables whose items are not all purged yet.
    fn dropped_tables(&self) -> Result<Vec<String>, StoreError>;
}

/// The parallel-scan hash of a partition key: stable, so every item of a
/// partition is in one segment.
pub fn segment_hash(partition: &[u8]) -> u32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(partition);
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The segment (of `total`, at least 1) a segment hash falls in: segment
/// `i` holds the hashes of [`segment_hashes`]`(i, total)`, one contiguous
/// `total`-th of the hash space.
pub fn segment_of(hash: u32, total: u32) -> u32 {
    ((u64::from(hash) * u64::from(total)) >> 32) as u32
}

/// The hashes of segment `segment` of `total`: from the first (inclusive)
/// to the second (exclusive; up to 2³²).
pub fn segment_hashes(segment: u32, total: u32) -> (u64, u64) {
    let start = |i: u32| (u64::from(i) << 32).div_ceil(u64::from(total));
    (start(segment), start(segment + 1))
}

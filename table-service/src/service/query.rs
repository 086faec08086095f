//! Query (one partition, optional sort-key condition, either order) and Scan
//! (whole table, optionally one segment of a parallel scan). Pages stop at
//! `limit` items or 1 MiB of item data, whichever comes first (and, with a
//! small `--max-message-bytes`, before the response would be too large to
//! send), and every page's data keys are unwrapped concurrently.

use std::ops::Bound;
use std::sync::Arc;

use super::{Call, Tables, store_error};
use crate::error::TableError;
use crate::expression::Operator;
use crate::model::{self, AttributeValue, Item, ItemKey, KeySchema, ScalarType};
use crate::store::{RangeQuery, ScanQuery, StoredItem, TableRecord, segment_hash, segment_of};

pub const MAX_PAGE_ITEMS: u32 = 1000;
pub const DEFAULT_PAGE_ITEMS: usize = 100;
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
pub const MAX_SEGMENTS: u32 = 1_000_000;
/// Room a page's response keeps beside its items, for
/// `last_evaluated_key` (a key is at most 3 KiB of values and names).
const PAGE_KEY_ROOM: usize = 16 * 1024;

/// The size an item takes in a response (the transport's encoding).
pub type EncodedSize = dyn Fn(&Item) -> usize + Sync;

#[derive(Debug, Clone, PartialEq)]
pub struct SortCondition {
    pub operator: Operator,
    pub value: AttributeValue,
    pub upper: Option<AttributeValue>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// Where the next page starts; `None` when this page is the last.
    pub last_evaluated_key: Option<Item>,
}

/// Encodes a sort-key condition value, held to the rules of a sort key
/// value (its type, not empty, at most 1024 bytes) as DynamoDB holds it.
fn encode_sort_operand(schema: &KeySchema, value: &AttributeValue) -> Result<Vec<u8>, TableError> {
    let Some((name, kind)) = &schema.sort else {
        return Err(TableError::Internal(
            "sort-key condition on a table without a sort key".to_owned(),
        ));
    };
    match (kind, value) {
        (ScalarType::S, AttributeValue::S(_))
        | (ScalarType::B, AttributeValue::B(_))
        | (ScalarType::N, AttributeValue::N(_)) => Ok(schema.encode_sort_value(value)?),
        (kind, other) => Err(TableError::validation(format!(
            "One or more parameter values were invalid: Condition parameter type does not match schema type for {name}: expected {kind}, got {}",
            other.type_name()
        ))),
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

fn page_limit(limit: u32) -> Result<usize, TableError> {
    match limit {
        0 => Ok(DEFAULT_PAGE_ITEMS),
        1..=MAX_PAGE_ITEMS => Ok(limit as usize),
        _ => Err(TableError::validation(format!(
            "limit {limit} is out of range; use 1–{MAX_PAGE_ITEMS}"
        ))),
    }
}

impl Tables {
    /// Opens a fetched page, cuts it at 1 MiB (and where its items'
    /// `encoded_size` would no longer fit the largest response), and
    /// computes where the next page starts.
    async fn finish_page(
        self: &Arc<Self>,
        call: &mut Call,
        table: &TableRecord,
        mut stored: Vec<StoredItem>,
        limit: usize,
        encoded_size: &EncodedSize,
    ) -> Result<Page, TableError> {
        let mut full = stored.len() >= limit;
        // Cut on stored size before decrypting, so a page seldom unwraps
        // data keys of items it will not return (the envelope is about the
        // size of the item's non-key attributes; an item of many small
        // attributes takes more in the response, so the cut below may still
        // drop some).
        let budget = self.max_response_bytes.saturating_sub(PAGE_KEY_ROOM);
        let stored_cap = MAX_PAGE_BYTES.min(budget);
        let mut stored_bytes = 0usize;
        if let Some(cut) = stored.iter().position(|s| {
            stored_bytes += s.envelope.len() + s.key.partition.len() + s.key.sort.len();
            stored_bytes > stored_cap
        }) {
            stored.truncate(cut.max(1));
            full = true;
        }
        let keys: Vec<ItemKey> = stored.iter().map(|s| s.key.clone()).collect();
        let items = self.open_all(call, table, stored).await?;
        let mut page = Page::default();
        let mut bytes = 0usize;
        let mut encoded = 0usize;
        let mut cut = false;
        for item in items {
            let size = model::item_size(&item);
            let item_encoded = encoded_size(&item);
            if !page.items.is_empty()
                && (bytes + size > MAX_PAGE_BYTES || encoded + item_encoded > budget)
            {
                cut = true;
                break;
            }
            bytes += size;
            encoded += item_encoded;
            page.items.push(item);
        }
        if (full || cut) && !page.items.is_empty() {
            let last = &keys[page.items.len() - 1];
            page.last_evaluated_key = Some(table.schema.key_attributes(last)?);
        }
        Ok(page)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn query(
        self: &Arc<Self>,
        call: &mut Call,
        table_name: &str,
        partition_value: &AttributeValue,
        sort: Option<&SortCondition>,
        descending: bool,
        limit: u32,
        exclusive_start_key: Option<&Item>,
        encoded_size: &EncodedSize,
    ) -> Result<Page, TableError> {
        self.authorize(call, "table:Query", &format!("table/{table_name}"))
            .await?;
        let table = self.table(table_name)?;
        let limit = page_limit(limit)?;
        let partition = table.schema.encode_partition_value(partition_value)?;
        let (mut lower, mut upper) = (Bound::Unbounded, Bound::Unbounded);
        if let Some(cond) = sort {
            let Some((_, sk_type)) = &table.schema.sort else {
                return Err(TableError::validation(format!(
                    "table {table_name} has no sort key, so a sort key condition cannot be used"
                )));
            };
            cond.operator
                .check_value2("sort_key_condition", cond.upper.as_ref())?;
            let v = encode_sort_operand(&table.schema, &cond.value)?;
            match cond.operator {
                Operator::Eq => (lower, upper) = (Bound::Included(v.clone()), Bound::Included(v)),
                Operator::Lt => upper = Bound::Excluded(v),
                Operator::Le => upper = Bound::Included(v),
                Operator::Gt => lower = Bound::Excluded(v),
                Operator::Ge => lower = Bound::Included(v),
                Operator::Between => {
                    let hi = cond
                        .upper
                        .as_ref()
                        .ok_or_else(|| TableError::validation("BETWEEN needs value2"))?;
                    let hi = encode_sort_operand(&table.schema, hi)?;
                    if hi < v {
                        return Err(TableError::validation(
                            "Invalid KeyConditionExpression: the BETWEEN bounds are in the wrong order (value must be ≤ value2)",
                        ));
                    }
                    (lower, upper) = (Bound::Included(v), Bound::Included(hi));
                }
                Operator::BeginsWith => {
                    if *sk_type == ScalarType::N {
                        return Err(TableError::validation(
                            "BEGINS_WITH works on S and B sort keys, not N",
                        ));
                    }
                    upper = prefix_end(&v);
                    lower = Bound::Included(v);
                }
                Operator::Ne => {
                    return Err(TableError::validation(
                        "a sort key condition uses EQ, LT, LE, GT, GE, BETWEEN or BEGINS_WITH",
                    ));
                }
            }
        }
        if let Some(start) = exclusive_start_key {
            let start = table.schema.validate_key_map(start)?;
            if start.partition != partition {
                return Err(TableError::validation(
                    "exclusive_start_key is not in the queried partition",
                ));
            }
            // A start key outside the condition's range would start the
            // range over (or skip it); inside it, the start is always the
            // tighter bound on its side.
            if !within(&lower, &upper, &start.sort) {
                return Err(TableError::validation(
                    "The provided starting key does not match the range key predicate: the sort key of exclusive_start_key is outside the sort key condition; start from a last_evaluated_key of the same query, or a key within the condition",
                ));
            }
            let after = Bound::Excluded(start.sort);
            if descending {
                upper = after;
            } else {
                lower = after;
            }
        }
        let request = RangeQuery {
            table_id: table.table_id.clone(),
            partition,
            lower,
            upper,
            descending,
            limit,
            max_bytes: MAX_PAGE_BYTES,
        };
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.query(&request))
            .await
            .map_err(|e| TableError::Internal(e.to_string()))?
            .map_err(store_error)?;
        self.finish_page(call, &table, stored, limit, encoded_size)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn scan(
        self: &Arc<Self>,
        call: &mut Call,
        table_name: &str,
        limit: u32,
        exclusive_start_key: Option<&Item>,
        segment: u32,
        total_segments: u32,
        encoded_size: &EncodedSize,
    ) -> Result<Page, TableError> {
        self.authorize(call, "table:Scan", &format!("table/{table_name}"))
            .await?;
        let table = self.table(table_name)?;
        let limit = page_limit(limit)?;
        let segment = match total_segments {
            0 if segment == 0 => None,
            1..=MAX_SEGMENTS if segment < total_segments => Some((segment, total_segments)),
            _ => {
                return Err(TableError::validation(format!(
                    "segment {segment} of total_segments {total_segments} is invalid: total_segments is 1–{MAX_SEGMENTS} and segment is below it"
                )));
            }
        };
        let after = exclusive_start_key
            .map(|k| table.schema.validate_key_map(k))
            .transpose()?;
        // The store finds a segment's items after the start key among those
        // of the segment: a start key of another segment would skip some.
        if let (Some(after), Some((segment, total))) = (&after, segment)
            && segment_of(segment_hash(&after.partition), total) != segment
        {
            return Err(TableError::validation(format!(
                "The provided starting key is invalid: Invalid ExclusiveStartKey. Please use ExclusiveStartKey with correct Segment. exclusive_start_key belongs to segment {} of total_segments {total}, not segment {segment}; continue a segment's scan with that segment's last_evaluated_key",
                segment_of(segment_hash(&after.partition), total)
            )));
        }
        let request = ScanQuery {
            table_id: table.table_id.clone(),
            after,
            segment,
            limit,
            max_bytes: MAX_PAGE_BYTES,
        };
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.scan(&request))
            .await
            .map_err(|e| TableError::Internal(e.to_string()))?
            .map_err(store_error)?;
        self.finish_page(call, &table, stored, limit, encoded_size)
            .await
    }
}

/// Whether `value` lies between the two bounds.
fn within(lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>, value: &[u8]) -> bool {
    let above = match lower {
        Bound::Included(v) => value >= v.as_slice(),
        Bound::Excluded(v) => value > v.as_slice(),
        Bound::Unbounded => true,
    };
    let below = match upper {
        Bound::Included(v) => value <= v.as_slice(),
        Bound::Excluded(v) => value < v.as_slice(),
        Bound::Unbounded => true,
    };
    above && below
}

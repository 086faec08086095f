//! PutItem, GetItem, UpdateItem, DeleteItem, BatchGetItem, BatchWriteItem.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::query::EncodedSize;
use super::{Call, Tables, integrity, open_envelope, store_error};
use crate::envelope;
use crate::error::TableError;
use crate::expression::{self, Condition, UpdateAction};
use crate::model::{self, Item, ItemKey, abbreviate};
use crate::store::{Mutation, StoredItem, TableRecord};

pub const MAX_BATCH_GET_KEYS: usize = 100;
pub const MAX_BATCH_WRITES: usize = 25;
/// BatchGetItem answers at most this many bytes of items; the rest come
/// back as unprocessed keys.
pub const MAX_BATCH_GET_BYTES: usize = 16 * 1024 * 1024;
/// Room a BatchGetItem response keeps for its unprocessed keys and framing:
/// 100 keys of at most 2048 + 1024 bytes, with their names and tags.
const BATCH_GET_KEY_ROOM: usize = 512 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnValues {
    #[default]
    None,
    AllOld,
    AllNew,
    /// UpdateItem only: the attributes its actions named, as they were.
    UpdatedOld,
    /// UpdateItem only: the attributes its actions named, as they are now.
    UpdatedNew,
}

impl ReturnValues {
    fn name(self) -> &'static str {
        match self {
            ReturnValues::None => "NONE",
            ReturnValues::AllOld => "ALL_OLD",
            ReturnValues::AllNew => "ALL_NEW",
            ReturnValues::UpdatedOld => "UPDATED_OLD",
            ReturnValues::UpdatedNew => "UPDATED_NEW",
        }
    }

    /// What PutItem and DeleteItem offer: NONE or ALL_OLD, as in DynamoDB.
    fn check_for(self, operation: &str) -> Result<(), TableError> {
        match self {
            ReturnValues::None | ReturnValues::AllOld => Ok(()),
            _ => Err(TableError::validation(format!(
                "{operation} supports return_values NONE or ALL_OLD"
            ))),
        }
    }
}

/// The table (its id; `None`: there was none) whose key attributes told
/// [`Tables::authorize_write`] which conditions read the item, and so
/// whether `table:GetItem` was needed.
pub(super) struct Judged(Option<String>);

impl Judged {
    /// Refuses the write when the table under the write lock is another
    /// one of the same name (deleted and created again meanwhile, with
    /// other key attributes, perhaps): a condition judged to name a key
    /// attribute might now read the item, for a caller who may not.
    /// (Judged against no table, every condition was taken to read.)
    fn check(&self, name: &str, now: &TableRecord) -> Result<(), TableError> {
        match &self.0 {
            Some(judged) if *judged != now.table_id => Err(TableError::ConcurrentChange(format!(
                "table {name} was deleted and created again while this request was being authorized; retry it"
            ))),
            _ => Ok(()),
        }
    }
}

/// The attributes of `item` that `actions` name.
fn named_by(item: Option<Item>, actions: &[UpdateAction]) -> Option<Item> {
    let mut item = item?;
    let named: std::collections::HashSet<&str> = actions.iter().map(|a| a.attribute()).collect();
    item.retain(|name, _| named.contains(name.as_str()));
    Some(item)
}

fn resource(name: &str) -> String {
    format!("table/{name}")
}

impl Tables {
    /// Commits an item's new envelope (durable when this returns).
    async fn put_sealed(
        &self,
        table: &TableRecord,
        key: ItemKey,
        envelope: Vec<u8>,
    ) -> Result<(), TableError> {
        self.commit
            .commit(vec![Mutation::PutItem {
                table_id: table.table_id.clone(),
                key,
                envelope,
            }])
            .await
            .map_err(store_error)
    }

    /// Authorizes a write's `action` (when given: PutItem may have it
    /// decided already) and, when the write reads the item for its caller,
    /// `table:GetItem` too, in one `Authorize`. It reads when
    /// `return_values` hands back item contents (even UPDATED_NEW: a
    /// number's new value after ADD tells its old one), or when a condition
    /// names an attribute that is not part of the key (its answer, checked
    /// or not, tells that attribute's value, a condition at a time), or
    /// when the write's own work reads (`reads`, the reason: UpdateItem's
    /// ADD and DELETE succeed or fail by the value stored): a caller who
    /// may only write must not read items through its writes. Returns
    /// whether `table:GetItem` was asked for (and so allowed), and the
    /// table whose key attributes told which conditions read the item
    /// (see [`Judged::check`]).
    async fn authorize_write(
        &self,
        call: &mut Call,
        action: Option<&str>,
        table_name: &str,
        return_values: ReturnValues,
        conditions: &[Condition],
        reads: Option<String>,
    ) -> Result<(bool, Judged), TableError> {
        // One look at the table: the one judged is the one recorded.
        let table = self.table(table_name).ok();
        let judged = Judged(table.as_ref().map(|t| t.table_id.clone()));
        let resource = resource(table_name);
        let reads = if return_values != ReturnValues::None {
            Some(format!(
                "return_values {} returns the item",
                return_values.name()
            ))
        } else if reads.is_some() {
            reads
        } else if conditions.is_empty() {
            None
        } else {
            // A table that does not exist (reported after the decision)
            // has no key attributes to tell apart: any condition reads.
            conditions
                .iter()
                .map(Condition::attribute)
                .find(|name| {
                    table
                        .as_ref()
                        .is_none_or(|t| !t.schema.is_key_attribute(name))
                })
                .map(|name| format!("a condition on {} reads the item", abbreviate(name)))
        };
        let asked: Vec<(&str, &str)> = action
            .into_iter()
            .chain(reads.is_some().then_some("table:GetItem"))
            .map(|action| (action, resource.as_str()))
            .collect();
        let reads_item = reads.is_some();
        match self.authorize_each(call, &asked).await? {
            None => Ok((reads_item, judged)),
            Some((
                i,
                TableError::Kms {
                    code,
                    reason,
                    message,
                },
            )) if asked[i].0 == "table:GetItem" => Err(TableError::Kms {
                code,
                reason,
                message: format!(
                    "{message} ({}, which needs table:GetItem)",
                    reads.unwrap_or_default()
                ),
            }),
            Some((_, error)) => Err(error),
        }
    }

    /// Reads and opens the current item at `key`, if any.
    async fn current(
        &self,
        call: &mut Call,
        table: &TableRecord,
        key: &ItemKey,
    ) -> Result<Option<Item>, TableError> {
        // A point read by primary key takes microseconds; a hop to the
        // blocking pool would cost more than it saves.
        let stored = self
            .store
            .get_item(&table.table_id, key)
            .map_err(store_error)?;
        let Some(envelope) = stored else {
            return Ok(None);
        };
        let stored = StoredItem {
            key: key.clone(),
            envelope,
        };
        match self.open_item(call, table, &stored).await {
            Ok(item) => Ok(Some(item)),
            Err(e) => Err(self.unwrap_error(call, table, &stored.key, e).await),
        }
    }

    /// Refuses a write whose answer (the item contents `return_values`
    /// asked for) would be too large to send, before anything is written:
    /// a write reported as failed must not have happened.
    fn answer_fits(
        &self,
        answer: Option<&Item>,
        encoded_size: &EncodedSize,
    ) -> Result<(), TableError> {
        let Some(size) = answer.map(encoded_size) else {
            return Ok(());
        };
        if size <= self.max_response_bytes {
            return Ok(());
        }
        Err(TableError::ResponseTooLarge(format!(
            "the answer would be {size} bytes, more than the {} table-service sends (--max-message-bytes / TABLE_MAX_MESSAGE_BYTES), so nothing was written: ask for return_values NONE, or raise that setting to read this item",
            self.max_response_bytes
        )))
    }

    /// Checks a PutItem's or DeleteItem's conditions against the current
    /// item and returns that item when ALL_OLD asks for it. Conditions that
    /// name only key attributes (the usual "create only if absent",
    /// `attribute_not_exists(<partition key>)`) are answered by whether
    /// the item exists, without unwrapping its data key: a principal that
    /// may write but not decrypt can still use them.
    async fn check_before_write(
        &self,
        call: &mut Call,
        table: &TableRecord,
        key: &ItemKey,
        conditions: &[Condition],
        return_values: ReturnValues,
    ) -> Result<Option<Item>, TableError> {
        if conditions.is_empty() && return_values != ReturnValues::AllOld {
            return Ok(None);
        }
        let on_keys_only = conditions
            .iter()
            .all(|c| table.schema.is_key_attribute(c.attribute()));
        if on_keys_only && return_values != ReturnValues::AllOld {
            let exists = self
                .store
                .get_item(&table.table_id, key)
                .map_err(store_error)?
                .is_some();
            let keys = exists
                .then(|| table.schema.key_attributes(key))
                .transpose()?;
            expression::check_all(conditions, keys.as_ref())?;
            return Ok(None);
        }
        let old = self.current(call, table, key).await?;
        expression::check_all(conditions, old.as_ref())?;
        Ok(old)
    }

    pub async fn put_item(
        &self,
        call: &mut Call,
        table_name: &str,
        item: Item,
        conditions: &[Condition],
        return_values: ReturnValues,
        encoded_size: &EncodedSize,
    ) -> Result<Option<Item>, TableError> {
        const ACTION: &str = "table:PutItem";
        // A return_values PutItem does not offer is a bad request, not a
        // question of rights.
        return_values.check_for("PutItem")?;
        let resource = resource(table_name);
        // Unless the decision is cached, or conditions must be checked
        // against the current item first (and only for a caller who may
        // write), the data key is asked for conditional on the decision
        // (`x-authorize`): one kms-service call instead of two.
        let cached = self.cached_allow(call, ACTION, &resource);
        let deciding = !cached && conditions.is_empty() && return_values == ReturnValues::None;
        let mut judged = Judged(None);
        if !deciding {
            let action = (!cached).then_some(ACTION);
            judged = self
                .authorize_write(call, action, table_name, return_values, conditions, None)
                .await?
                .1;
        }
        let _writes = self.table_lock(table_name).read().await;
        let prepared = self.table(table_name).and_then(|table| {
            let (key, attributes) = model::split_item(&table.schema, item)?;
            Ok((table, key, attributes))
        });
        let (table, key, attributes) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                // Reported after a decision of its own, as on the path
                // that decides first.
                if deciding {
                    drop(_writes);
                    self.authorize_uncached(call, ACTION, &resource).await?;
                }
                return Err(e);
            }
        };
        judged.check(table_name, &table)?;
        let (envelope, _guard, old) = if deciding {
            // Nothing to read first: the data key (and the decision) before
            // the item's lock, so a caller who may not write never holds
            // it; the lock still orders this write against a conditional
            // one's read, check and write.
            let envelope = self
                .seal_deciding(call, &table, &key, &attributes, Some((ACTION, &resource)))
                .await?;
            (envelope, self.stripe(&table, &key).lock().await, None)
        } else {
            let guard = self.stripe(&table, &key).lock().await;
            let old = self
                .check_before_write(call, &table, &key, conditions, return_values)
                .await?;
            let old = old.filter(|_| return_values == ReturnValues::AllOld);
            self.answer_fits(old.as_ref(), encoded_size)?;
            let envelope = self.seal(call, &table, &key, &attributes).await?;
            (envelope, guard, old)
        };
        self.put_sealed(&table, key, envelope).await?;
        Ok(old)
    }

    pub async fn get_item(
        &self,
        call: &mut Call,
        table_name: &str,
        key: &Item,
    ) -> Result<Option<Item>, TableError> {
        const ACTION: &str = "table:GetItem";
        let resource = resource(table_name);
        let cached = self.cached_allow(call, ACTION, &resource);
        if cached || self.data_keys.enabled() {
            // Either the decision is cached, or the item's data key may be
            // (which only the caller's principal, known after the decision,
            // can tell): one after the other.
            if !cached {
                self.authorize_uncached(call, ACTION, &resource).await?;
            }
            let table = self.table(table_name)?;
            let key = table.schema.validate_key_map(key)?;
            return self.current(call, &table, &key).await;
        }
        // One kms-service call: the unwrapping of the item's data key (on
        // behalf of the caller, like every unwrapping), made conditional on
        // the caller's `table:GetItem` (`x-authorize`), so kms-service
        // decides the table action and the key use together, the table
        // action first. Anything that fails before there is a key to unwrap
        // (no such table, a bad key, no item, an envelope that does not
        // parse) is reported after a decision of its own, as on the
        // sequential path: a caller who may not read the table learns
        // nothing about it.
        let local = self.table(table_name).and_then(|table| {
            let key = table.schema.validate_key_map(key)?;
            // A point read by primary key takes microseconds; a hop to the
            // blocking pool would cost more than it saves.
            let envelope = self
                .store
                .get_item(&table.table_id, &key)
                .map_err(store_error)?;
            Ok((table, envelope.map(|envelope| StoredItem { key, envelope })))
        });
        if let Ok((table, Some(stored))) = &local
            && let Ok(parsed) = envelope::parse(&stored.envelope)
        {
            call.outcome.kms_calls += 1;
            let answer = self
                .kms
                .decrypt_authorized(
                    &call.caller,
                    (ACTION, &resource),
                    parsed.wrapped_key,
                    envelope::data_key_context(&table.table_id, &stored.key),
                )
                .await;
            let data_key = match self.settle(call, ACTION, &resource, answer).await {
                Ok(data_key) => data_key,
                Err(e) => return Err(self.unwrap_error(call, table, &stored.key, e).await),
            };
            return open_envelope(table, stored, &data_key).map(Some);
        }
        self.authorize_uncached(call, ACTION, &resource).await?;
        match local? {
            (_, None) => Ok(None),
            (table, Some(stored)) => Err(integrity(&table, &stored.key)),
        }
    }

    pub async fn delete_item(
        &self,
        call: &mut Call,
        table_name: &str,
        key: &Item,
        conditions: &[Condition],
        return_values: ReturnValues,
        encoded_size: &EncodedSize,
    ) -> Result<Option<Item>, TableError> {
        return_values.check_for("DeleteItem")?;
        let (_, judged) = self
            .authorize_write(
                call,
                Some("table:DeleteItem"),
                table_name,
                return_values,
                conditions,
                None,
            )
            .await?;
        let _writes = self.table_lock(table_name).read().await;
        let table = self.table(table_name)?;
        judged.check(table_name, &table)?;
        let key = table.schema.validate_key_map(key)?;
        let _guard = self.stripe(&table, &key).lock().await;
        let old = self
            .check_before_write(call, &table, &key, conditions, return_values)
            .await?
            .filter(|_| return_values == ReturnValues::AllOld);
        self.answer_fits(old.as_ref(), encoded_size)?;
        self.commit
            .commit(vec![Mutation::DeleteItem {
                table_id: table.table_id.clone(),
                key,
            }])
            .await
            .map_err(store_error)?;
        Ok(old)
    }

    // The request's parts, each its own argument as for the other writes.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_item(
        &self,
        call: &mut Call,
        table_name: &str,
        key_map: &Item,
        actions: &[UpdateAction],
        conditions: &[Condition],
        return_values: ReturnValues,
        encoded_size: &EncodedSize,
    ) -> Result<Option<Item>, TableError> {
        // ADD and DELETE succeed or fail by what is stored (a number's
        // digits, an attribute's type): their outcome reads the item.
        let reads = actions
            .iter()
            .find_map(|a| match a {
                UpdateAction::Add(name, _) => Some(("ADD to", name)),
                UpdateAction::Delete(name, _) => Some(("DELETE from", name)),
                _ => None,
            })
            .map(|(what, name)| format!("{what} {} reads the item", abbreviate(name)));
        let (may_read, judged) = self
            .authorize_write(
                call,
                Some("table:UpdateItem"),
                table_name,
                return_values,
                conditions,
                reads,
            )
            .await?;
        let _writes = self.table_lock(table_name).read().await;
        let table = self.table(table_name)?;
        judged.check(table_name, &table)?;
        let key = table.schema.validate_key_map(key_map)?;
        // A request that cannot succeed whatever the item holds is refused
        // before the item is read: no data key is unwrapped for it.
        expression::validate_actions(&table.schema, actions)?;
        let _guard = self.stripe(&table, &key).lock().await;
        let old = self.current(call, &table, &key).await?;
        expression::check_all(conditions, old.as_ref())?;
        let mut new = old.clone().unwrap_or_else(|| key_map.clone());
        expression::apply(&table.schema, &mut new, actions)?;
        // As in DynamoDB, removing attributes from (or deleting set members
        // of) an item that does not exist does not create it; an update
        // with no actions does, holding just the key.
        let only_removes = !actions.is_empty()
            && actions
                .iter()
                .all(|a| matches!(a, UpdateAction::Remove(_) | UpdateAction::Delete(..)));
        if old.is_none() && only_removes {
            return Ok(None);
        }
        // An update with no actions leaves an existing item as it is:
        // nothing to seal or write.
        let attributes = if old.is_none() || !actions.is_empty() {
            let (new_key, attributes) = model::split_item(&table.schema, new.clone())
                .map_err(|e| match e {
                    // The exact size would tell a caller who may not read
                    // the item how large the stored part is.
                    model::ModelError::ItemTooLarge { .. } if !may_read && old.is_some() => {
                        TableError::validation(
                            "Item size has exceeded the maximum allowed size: the updated item would be larger than 409600 bytes (400 KiB); move large values elsewhere",
                        )
                    }
                    other => other.into(),
                })?;
            debug_assert_eq!(new_key, key);
            Some(attributes)
        } else {
            None
        };
        let answer = match return_values {
            ReturnValues::None => None,
            ReturnValues::AllOld => old,
            ReturnValues::AllNew => Some(new),
            ReturnValues::UpdatedOld => named_by(old, actions),
            ReturnValues::UpdatedNew => named_by(Some(new), actions),
        };
        self.answer_fits(answer.as_ref(), encoded_size)?;
        if let Some(attributes) = attributes {
            let envelope = self.seal(call, &table, &key, &attributes).await?;
            self.put_sealed(&table, key, envelope).await?;
        }
        Ok(answer)
    }

    /// Reads up to 100 keys across tables. Keys beyond the response size cap
    /// come back unprocessed rather than dropped. `encoded_size` is the size
    /// an item takes in the response: the items answered fit the smaller of
    /// [`MAX_BATCH_GET_BYTES`] and the largest message the server sends
    /// (less room for the unprocessed keys), so a large batch is answered in
    /// part instead of failing as too large to send.
    pub async fn batch_get_item(
        self: &Arc<Self>,
        call: &mut Call,
        requests: &BTreeMap<String, Vec<Item>>,
        encoded_size: &(dyn Fn(&Item) -> usize + Sync),
    ) -> Result<(BTreeMap<String, Vec<Item>>, BTreeMap<String, Vec<Item>>), TableError> {
        let total: usize = requests.values().map(Vec::len).sum();
        if total == 0 || total > MAX_BATCH_GET_KEYS {
            return Err(TableError::validation(format!(
                "BatchGetItem takes 1–{MAX_BATCH_GET_KEYS} keys; this request has {total}"
            )));
        }
        if let Some((name, _)) = requests.iter().find(|(_, keys)| keys.is_empty()) {
            return Err(TableError::validation(format!(
                "BatchGetItem names table {name} with no keys; give each table 1 or more keys"
            )));
        }
        let budget =
            MAX_BATCH_GET_BYTES.min(self.max_response_bytes.saturating_sub(BATCH_GET_KEY_ROOM));
        let mut responses = BTreeMap::new();
        let mut unprocessed: BTreeMap<String, Vec<Item>> = BTreeMap::new();
        let mut unreachable = None;
        // The items' response bytes. Every item found is opened (its data
        // key unwrapped for the caller) before its size counts: a cut by
        // stored size before that would tell a caller without kms:Decrypt
        // how large an item is (fits: refused; does not: handed back).
        let mut answered = 0usize;
        // The whole request is checked (each table allowed and existing,
        // each key valid and unique) before anything is read or unwrapped,
        // so a refusal costs no key use and names the first problem.
        let resources: Vec<String> = requests.keys().map(|name| resource(name)).collect();
        let asked: Vec<(&str, &str)> = resources
            .iter()
            .map(|r| ("table:BatchGetItem", r.as_str()))
            .collect();
        self.authorize_all(call, &asked).await?;
        let mut checked = Vec::with_capacity(requests.len());
        for (name, keys) in requests {
            let table = self.table(name)?;
            let mut seen = std::collections::BTreeSet::new();
            let mut valid = Vec::with_capacity(keys.len());
            for key_map in keys {
                let key = table.schema.validate_key_map(key_map)?;
                if !seen.insert(key.clone()) {
                    return Err(TableError::validation(format!(
                        "Provided list of item keys contains duplicates: item {} of table {name} is asked for twice; ask for each item once",
                        table.schema.describe_key(&key)
                    )));
                }
                valid.push((key, key_map));
            }
            checked.push((name, table, valid));
        }
        // Once the budget is spent, the keys left are handed back unread.
        let mut full = false;
        for (name, table, valid) in checked {
            let mut fitting = Vec::new();
            let mut left: Vec<&Item> = Vec::new();
            let mut kept_back = false;
            // A chunk of keys at a time, each chunk's items unwrapped in
            // parallel: once the answer is full the rest are not read, so
            // a large batch costs one chunk of unwraps more than it answers,
            // not every item it names. Whether to go on depends only on
            // items the caller could open.
            for chunk in valid.chunks(self.unwrap_concurrency) {
                if full {
                    left.extend(chunk.iter().map(|(_, key_map)| *key_map));
                    continue;
                }
                let mut stored = Vec::new();
                let mut stored_keys = Vec::new();
                for (key, key_map) in chunk {
                    let store = self.store.clone();
                    let (table_id, lookup) = (table.table_id.clone(), key.clone());
                    let found =
                        tokio::task::spawn_blocking(move || store.get_item(&table_id, &lookup))
                            .await
                            .map_err(|e| TableError::Internal(e.to_string()))?
                            .map_err(store_error)?;
                    if let Some(envelope) = found {
                        stored.push(StoredItem {
                            key: key.clone(),
                            envelope,
                        });
                        stored_keys.push(*key_map);
                    }
                }
                if stored.is_empty() {
                    continue;
                }
                // As for BatchWriteItem: with kms-service unreachable these
                // keys come back unprocessed, and the other tables' items
                // are still answered; once it was found unreachable it is
                // not waited for again.
                let opened = match &unreachable {
                    Some(_) => None,
                    None => match self.open_all(call, &table, stored).await {
                        Ok(items) => Some(items),
                        Err(e @ TableError::KmsUnavailable { .. }) => {
                            unreachable.get_or_insert(e);
                            None
                        }
                        Err(e) => return Err(e),
                    },
                };
                let Some(items) = opened else {
                    kept_back = true;
                    left.extend(stored_keys);
                    continue;
                };
                for (item, key_map) in items.into_iter().zip(stored_keys) {
                    let size = encoded_size(&item);
                    // The first item is always answered, so a batch makes
                    // progress (or fails on that item, naming the limit).
                    if full || (answered > 0 && answered + size > budget) {
                        full = true;
                        left.push(key_map);
                    } else {
                        answered += size;
                        fitting.push(item);
                    }
                }
            }
            if !left.is_empty() {
                unprocessed
                    .entry(name.clone())
                    .or_default()
                    .extend(left.into_iter().cloned());
            }
            // A table none of whose items could be unwrapped (kms-service
            // unreachable) has no answer, only its keys handed back.
            if !(kept_back && fitting.is_empty()) {
                responses.insert(name.clone(), fitting);
            }
        }
        // Nothing could be read: the caller learns why, rather than being
        // handed everything back to retry at once.
        if responses.is_empty()
            && let Some(e) = unreachable
        {
            return Err(e);
        }
        Ok((responses, unprocessed))
    }

    /// Up to 25 puts and deletes across tables, committed together; the
    /// puts' data keys are generated concurrently. Items
    /// whose data key could not be obtained because kms-service was
    /// unavailable come back unprocessed (and if that leaves nothing to
    /// write, the batch fails with that error); every other error fails the
    /// whole batch, and nothing of it is written.
    pub async fn batch_write_item(
        self: &Arc<Self>,
        call: &mut Call,
        requests: &BTreeMap<String, Vec<BatchWrite>>,
    ) -> Result<BTreeMap<String, Vec<usize>>, TableError> {
        let total: usize = requests.values().map(Vec::len).sum();
        if total == 0 || total > MAX_BATCH_WRITES {
            return Err(TableError::validation(format!(
                "BatchWriteItem takes 1–{MAX_BATCH_WRITES} requests; this request has {total}"
            )));
        }
        if let Some((name, _)) = requests.iter().find(|(_, writes)| writes.is_empty()) {
            return Err(TableError::validation(format!(
                "BatchWriteItem names table {name} with no requests; give each table 1 or more"
            )));
        }
        // Decide and validate everything first, then lock every item of the
        // batch (its stripes in one global order, as the re-wrap does), so
        // that no other writer of these items, conditional or not, can
        // interleave between their reads and this commit.
        let resources: Vec<String> = requests.keys().map(|name| resource(name)).collect();
        let asked: Vec<(&str, &str)> = resources
            .iter()
            .map(|r| ("table:BatchWriteItem", r.as_str()))
            .collect();
        self.authorize_all(call, &asked).await?;
        let _writes = self.table_locks_shared(requests.keys()).await;
        let mut planned: Vec<(&String, usize, TableRecord, ItemKey, &BatchWrite)> = Vec::new();
        for (name, writes) in requests {
            let table = self.table(name)?;
            let mut seen = std::collections::BTreeSet::new();
            for (index, write) in writes.iter().enumerate() {
                let key = match write {
                    BatchWrite::Put(item) => table.schema.extract_key(item)?,
                    BatchWrite::Delete(key) => table.schema.validate_key_map(key)?,
                };
                if !seen.insert(key.clone()) {
                    return Err(TableError::validation(format!(
                        "Provided list of item keys contains duplicates: item {} of table {name} is written twice; put or delete each item once per batch",
                        table.schema.describe_key(&key)
                    )));
                }
                planned.push((name, index, table.clone(), key, write));
            }
        }
        let stripes: std::collections::BTreeSet<usize> = planned
            .iter()
            .map(|(_, _, table, key, _)| self.stripe_index(table, key))
            .collect();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.stripes[i].lock().await);
        }
        // Every put's data key is generated at the same time (as a page's
        // are unwrapped), not one round trip after another.
        let mut mutations = Vec::new();
        let mut puts: Vec<(&String, usize)> = Vec::new();
        let mut seals = Vec::new();
        for (name, index, table, key, write) in planned {
            match write {
                BatchWrite::Put(item) => {
                    let (key, attributes) = model::split_item(&table.schema, item.clone())?;
                    let this = self.clone();
                    let mut sub = call.sub();
                    puts.push((name, index));
                    seals.push(async move {
                        let sealed = this.seal(&mut sub, &table, &key, &attributes).await;
                        let mutation = sealed.map(|envelope| Mutation::PutItem {
                            table_id: table.table_id.clone(),
                            key,
                            envelope,
                        });
                        (mutation, sub.outcome)
                    });
                }
                BatchWrite::Delete(_) => mutations.push(Mutation::DeleteItem {
                    table_id: table.table_id.clone(),
                    key,
                }),
            }
        }
        // Once one put finds kms-service unreachable (or fails), no more
        // are tried: the rest come back unprocessed without waiting for it.
        let sealed = super::spawn_bounded(self.unwrap_concurrency, seals, |(m, _)| m.is_err())
            .await
            .map_err(|e| TableError::Internal(format!("seal task: {e}")))?;
        // Each table's unprocessed writes, by their place in its request
        // list: the caller hands back its own requests, as it sent them.
        let mut unprocessed: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut unreachable = None;
        for ((name, index), sealed) in puts.into_iter().zip(sealed) {
            let Some((mutation, outcome)) = sealed else {
                unprocessed.entry(name.clone()).or_default().push(index);
                continue;
            };
            call.absorb(&outcome);
            match mutation {
                Ok(mutation) => mutations.push(mutation),
                Err(e @ TableError::KmsUnavailable { .. }) => {
                    unprocessed.entry(name.clone()).or_default().push(index);
                    unreachable.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        // As DynamoDB: when nothing at all could be written the call fails
        // (naming kms-service) instead of handing every request back.
        if mutations.is_empty()
            && let Some(e) = unreachable
        {
            return Err(e);
        }
        if !mutations.is_empty() {
            self.commit.commit(mutations).await.map_err(store_error)?;
        }
        Ok(unprocessed)
    }
}

/// One request of BatchWriteItem.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchWrite {
    Put(Item),
    Delete(Item),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KeySchema, ScalarType};

    fn record(table_id: &str) -> TableRecord {
        TableRecord {
            name: "t".into(),
            table_id: table_id.into(),
            schema: KeySchema {
                partition: ("id".into(), ScalarType::S),
                sort: None,
            },
            kms_key_id: "k".into(),
            service_managed: false,
            created: 0,
            rewrap: None,
        }
    }

    /// A write is refused (ABORTED, retry) when the table it was authorized
    /// against was deleted and created again before its write lock: which
    /// conditions read the item was judged on the old table's keys.
    #[test]
    fn a_write_judged_on_another_table_of_the_name_is_refused() {
        let judged = Judged(Some("one".into()));
        assert!(judged.check("t", &record("one")).is_ok());
        let refused = judged.check("t", &record("two")).unwrap_err();
        assert!(
            matches!(refused, TableError::ConcurrentChange(_)),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("deleted and created again"));
        // Judged with no table, every condition counted as reading.
        assert!(Judged(None).check("t", &record("two")).is_ok());
    }
}

//! CreateTable, DescribeTable, ListTables, UpdateTable, DeleteTable.

use std::sync::Arc;

use super::{Call, SERVICE_MANAGED_ALIAS, Tables, store_error};
use crate::error::TableError;
use crate::kms::KeyInfo;
use crate::model::KeySchema;
use crate::store::{Mutation, TableRecord};

/// A table as DescribeTable shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableView {
    pub record: TableRecord,
    /// State of the table's key as kms-service reports it to the caller.
    pub key_state: String,
    pub item_count: u64,
    /// While a key change runs: the latest failure of its re-wrap, if its
    /// last page failed ("<reason>: <message>").
    pub rewrap_failure: Option<String>,
}

/// DynamoDB's table-name rule: 3–255 of `[a-zA-Z0-9_.-]`.
pub fn validate_table_name(name: &str) -> Result<(), TableError> {
    if !(3..=255).contains(&name.len())
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        let shown = if name.len() > 255 {
            format!("of {} bytes", name.len())
        } else {
            format!("{name:?}")
        };
        return Err(TableError::validation(format!(
            "table name {shown} must have 3–255 characters of a–z, A–Z, 0–9, '_', '.' and '-'"
        )));
    }
    Ok(())
}

/// A table is put only under an enabled encryption key: an HMAC key cannot
/// make data keys, and a disabled one, or one pending deletion, is refused
/// as kms-service would refuse its use.
fn require_enabled(key: &KeyInfo) -> Result<(), TableError> {
    if !key.encrypts {
        return Err(TableError::Kms {
            code: tonic::Code::InvalidArgument,
            reason: "InvalidKeyUsageException".into(),
            message: format!(
                "key {} is not an encryption key (its usage is not ENCRYPT_DECRYPT), so it cannot protect a table's data keys; use a SYMMETRIC_DEFAULT key",
                key.key_id
            ),
        });
    }
    if key.state == "Enabled" {
        return Ok(());
    }
    Err(TableError::Kms {
        code: tonic::Code::FailedPrecondition,
        reason: if key.state == "Disabled" {
            "DisabledException"
        } else {
            "KMSInvalidStateException"
        }
        .into(),
        message: format!(
            "key {} is {}; a table needs an enabled key",
            key.key_id, key.state
        ),
    })
}

fn resource(name: &str) -> String {
    format!("table/{name}")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Tables {
    pub async fn create_table(
        &self,
        call: &mut Call,
        name: &str,
        schema: KeySchema,
        kms_key_id: &str,
    ) -> Result<TableView, TableError> {
        validate_table_name(name)?;
        schema.validate()?;
        self.authorize(call, "table:CreateTable", &resource(name))
            .await?;
        let requested = if kms_key_id.is_empty() {
            SERVICE_MANAGED_ALIAS
        } else {
            kms_key_id
        };
        // The caller must be able to see the key: this resolves aliases and
        // refuses keys the caller has no business naming.
        call.outcome.kms_calls += 1;
        let key = self.kms.describe_key(&call.caller, requested).await?;
        let service_managed = self
            .is_service_managed(call, requested, &key.key_id)
            .await?;
        require_enabled(&key)?;
        let _ddl = self.ddl.lock().await;
        if self
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
        {
            return Err(TableError::TableExists(format!(
                "Table already exists: {name}"
            )));
        }
        let record = TableRecord {
            name: name.to_string(),
            table_id: lockbox_proto::random::random_uuid().to_string(),
            schema,
            kms_key_id: key.key_id,
            service_managed,
            created: now(),
            rewrap: None,
        };
        self.commit
            .commit(vec![Mutation::PutTable(record.clone())])
            .await
            .map_err(store_error)?;
        self.tables
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), record.clone());
        Ok(TableView {
            record,
            key_state: key.state,
            item_count: 0,
            rewrap_failure: None,
        })
    }

    pub async fn describe_table(
        &self,
        call: &mut Call,
        name: &str,
    ) -> Result<TableView, TableError> {
        self.authorize(call, "table:DescribeTable", &resource(name))
            .await?;
        let record = self.table(name)?;
        call.outcome.kms_calls += 1;
        let key_state = match self
            .kms
            .describe_key(&call.caller, &record.kms_key_id)
            .await
        {
            Ok(k) => k.state,
            Err(TableError::KmsUnavailable { .. }) => "Unknown (kms-service unavailable)".into(),
            Err(e) => format!("Unknown ({})", e.reason()),
        };
        let store = self.store.clone();
        let table_id = record.table_id.clone();
        let item_count = tokio::task::spawn_blocking(move || store.count_items(&table_id))
            .await
            .map_err(|e| TableError::Internal(e.to_string()))?
            .map_err(store_error)?;
        let rewrap_failure = record
            .rewrap
            .as_ref()
            .and_then(|_| self.rewrap_failure(&record.table_id));
        Ok(TableView {
            record,
            key_state,
            item_count,
            rewrap_failure,
        })
    }

    pub async fn list_tables(
        &self,
        call: &mut Call,
        limit: u32,
        exclusive_start: &str,
    ) -> Result<(Vec<String>, Option<String>), TableError> {
        let limit = match limit {
            0 => 100,
            1..=100 => limit as usize,
            _ => {
                return Err(TableError::validation(format!(
                    "limit {limit} is out of range; use 1–100"
                )));
            }
        };
        if !exclusive_start.is_empty() {
            validate_table_name(exclusive_start)
                .map_err(|e| TableError::validation(format!("exclusive_start_table_name: {e}")))?;
        }
        self.authorize(call, "table:ListTables", "*").await?;
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = tables
            .keys()
            .filter(|n| exclusive_start.is_empty() || n.as_str() > exclusive_start)
            .take(limit + 1)
            .cloned()
            .collect();
        let more = names.len() > limit;
        names.truncate(limit);
        let last = more.then(|| names.last().cloned()).flatten();
        Ok((names, last))
    }

    pub async fn delete_table(&self, call: &mut Call, name: &str) -> Result<TableView, TableError> {
        self.authorize(call, "table:DeleteTable", &resource(name))
            .await?;
        let record = {
            let _ddl = self.ddl.lock().await;
            // Waits for writes in progress, so none lands after the delete.
            let _writes = self.table_lock(name).write().await;
            let record = self.table(name)?;
            self.commit
                .commit(vec![Mutation::DeleteTable {
                    table_id: record.table_id.clone(),
                }])
                .await
                .map_err(store_error)?;
            self.tables
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            record
        };
        // A key change in progress stops with the table; so do its grants.
        if let Some(rewrap) = &record.rewrap {
            self.retire_rewrap_grants(&rewrap.grants).await;
        }
        Ok(TableView {
            record,
            key_state: String::new(),
            item_count: 0,
            rewrap_failure: None,
        })
    }

    /// Whether a resolved key is the service-managed key, however it was
    /// named (alias, key id or ARN-like `key/<id>`).
    async fn is_service_managed(
        &self,
        call: &mut Call,
        requested: &str,
        key_id: &str,
    ) -> Result<bool, TableError> {
        if requested == SERVICE_MANAGED_ALIAS {
            return Ok(true);
        }
        if let Some(id) = self.service_managed_key_id.get() {
            return Ok(id == key_id);
        }
        call.outcome.kms_calls += 1;
        match self
            .kms
            .describe_key(&call.caller, SERVICE_MANAGED_ALIAS)
            .await
        {
            Ok(managed) => {
                let _ = self.service_managed_key_id.set(managed.key_id.clone());
                Ok(managed.key_id == key_id)
            }
            // A kms-service without table-service's key.
            Err(TableError::Kms { reason, .. }) if reason == "NotFoundException" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Switches the table to another key: a customer managed key, or the
    /// service-managed key (`alias/table-service`). New writes use the
    /// new key at once; existing items' data keys are re-wrapped with
    /// ReEncrypt in the background (see `rewrap.rs`), resumably, while the
    /// table stays online. The caller must be allowed to create grants on
    /// both keys (on the service-managed key anyone may, through
    /// table-service, for table-service and re-wrapping only): the grants
    /// let table-service re-wrap, and nothing else.
    pub async fn update_table(
        self: &Arc<Self>,
        call: &mut Call,
        name: &str,
        kms_key_id: &str,
    ) -> Result<TableView, TableError> {
        self.authorize(call, "table:UpdateTable", &resource(name))
            .await?;
        if kms_key_id.is_empty() {
            return Err(TableError::validation(format!(
                "sse_specification.kms_key_id is required: the key to switch to (a key id or alias; {SERVICE_MANAGED_ALIAS} for the service-managed key)"
            )));
        }
        let current = self.table(name)?;
        if let Some(rewrap) = &current.rewrap {
            let failing = self
                .rewrap_failure(&current.table_id)
                .map(|f| {
                    format!(
                        ", and its re-wrap is stalled (latest failure: {f}; it resumes by itself once that is fixed)"
                    )
                })
                .unwrap_or_default();
            return Err(TableError::ResourceInUse(format!(
                "table {name} is already changing its key to {}{failing}; DescribeTable shows the re-wrap's progress and any error (rewrap_progress.last_error); wait until it shows the table ACTIVE",
                rewrap.target_key_id
            )));
        }
        call.outcome.kms_calls += 1;
        let key = self.kms.describe_key(&call.caller, kms_key_id).await?;
        require_enabled(&key)?;
        if key.key_id == current.kms_key_id {
            return Err(TableError::validation(format!(
                "table {name} already uses key {}",
                key.key_id
            )));
        }
        let target_service_managed = self
            .is_service_managed(call, kms_key_id, &key.key_id)
            .await?;
        let grants = self
            .create_rewrap_grants(call, &current, &key.key_id)
            .await?;
        let switched = self
            .switch_key(name, &current, key, target_service_managed, grants.clone())
            .await;
        if switched.is_err() {
            // Nothing changed: the grants must not outlive the attempt.
            self.retire_rewrap_grants(&grants).await;
        }
        switched
    }

    /// The second half of [`Self::update_table`]: records the new key and
    /// the pending re-wrap, and starts it.
    pub(super) async fn switch_key(
        self: &Arc<Self>,
        name: &str,
        current: &TableRecord,
        key: crate::kms::KeyInfo,
        target_service_managed: bool,
        grants: Vec<(String, String)>,
    ) -> Result<TableView, TableError> {
        let _ddl = self.ddl.lock().await;
        // Waits for writes that may have sealed under the old key.
        let _writes = self.table_lock(name).write().await;
        let mut record = self.table(name)?;
        // The grants were made for `current`'s key: another switch that
        // came and finished meanwhile moved the table to a key they do not
        // cover, and a re-wrap from there would be refused for ever.
        if record.table_id != current.table_id
            || record.rewrap.is_some()
            || record.kms_key_id != current.kms_key_id
        {
            return Err(TableError::ConcurrentChange(format!(
                "table {name} changed while its key was being switched (another UpdateTable or a DeleteTable came first); call DescribeTable and retry"
            )));
        }
        record.rewrap = Some(crate::store::Rewrap {
            target_key_id: key.key_id.clone(),
            items_done: 0,
            resume_after: None,
            source_key_id: record.kms_key_id.clone(),
            grants,
        });
        record.kms_key_id = key.key_id;
        record.service_managed = target_service_managed;
        self.commit
            .commit(vec![Mutation::PutTable(record.clone())])
            .await
            .map_err(store_error)?;
        self.tables
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), record.clone());
        self.spawn_rewrap(name.to_string());
        Ok(TableView {
            record,
            key_state: key.state,
            item_count: 0,
            rewrap_failure: None,
        })
    }
}

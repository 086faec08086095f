//! The background re-wrap after UpdateTable changed a table's key: every
//! item's data key is moved under the new key with ReEncrypt (the plaintext
//! data key never leaves kms-service), page by page, with the progress stored
//! in the table record so the job resumes after a restart. Reads and writes
//! continue meanwhile: a blob names its own key, and each item is re-wrapped
//! under its item lock. An item whose data key is already under the target
//! key (written since the change began) is left as it is, and counted as
//! done. A page that fails is retried with back-off for as
//! long as the table changes its key (the old key may be enabled again,
//! kms-service may come back); the latest failure is kept in memory for
//! DescribeTable until a page succeeds.

use std::sync::Arc;
use std::time::Duration;

use lockbox_proto::kms::v1::GrantOperation;

use super::{Call, Tables, store_error};
use crate::envelope;
use crate::error::TableError;
use crate::store::{Mutation, ScanQuery, TableRecord};

const PAGE: usize = 100;
/// The principal the grants are for.
pub const SELF_PRINCIPAL: &str = "service/table-service";
/// How long re-wrap grants that kms-service could not retire (or could
/// not say whether it made) are retried in the background, and the waits
/// between tries.
const CLEANUP_FOR: Duration = Duration::from_secs(600);
const CLEANUP_FIRST_WAIT: Duration = Duration::from_millis(250);
const CLEANUP_MAX_WAIT: Duration = Duration::from_secs(30);
/// How long a grant whose CreateGrant answer was lost is asked for again,
/// on behalf of the caller whose credential that needs (held no longer).
const UNSURE_FOR: Duration = Duration::from_secs(60);

/// Whether a failed kms-service call may have taken effect all the same:
/// its answer was lost (a timeout, a reset connection) or kms-service
/// failed inside.
fn may_have_happened(error: &TableError) -> bool {
    matches!(
        error,
        TableError::KmsUnavailable { .. }
            | TableError::Kms {
                code: tonic::Code::Internal | tonic::Code::Unknown,
                ..
            }
    )
}

/// Whether a failed kms-service call is worth trying again later.
fn retryable(error: &TableError) -> bool {
    may_have_happened(error)
        || matches!(
            error,
            TableError::Kms {
                code: tonic::Code::Unavailable | tonic::Code::ResourceExhausted,
                ..
            }
        )
}

/// A CreateGrant whose answer was lost: asked again (same name and
/// parameters, so kms-service answers with the grant if it made it), its
/// grant can be retired. Asked on behalf of the caller (with a request id
/// of its own, derived from the caller's), for [`UNSURE_FOR`] at most.
struct UnsureGrant {
    caller: crate::kms::CallerCredential,
    key: String,
    operations: Vec<GrantOperation>,
    subset: std::collections::HashMap<String, String>,
    name: String,
    until: tokio::time::Instant,
}

impl UnsureGrant {
    fn new(
        caller: &crate::kms::CallerCredential,
        key: &str,
        operations: &[GrantOperation],
        subset: &std::collections::HashMap<String, String>,
        name: &str,
    ) -> UnsureGrant {
        let mut caller = caller.clone();
        caller.request_id = format!("{}.grant-cleanup", caller.request_id);
        UnsureGrant {
            caller,
            key: key.to_string(),
            operations: operations.to_vec(),
            subset: subset.clone(),
            name: name.to_string(),
            until: tokio::time::Instant::now() + UNSURE_FOR,
        }
    }

    fn warn_unknown(&self, why: &dyn std::fmt::Display) {
        tracing::warn!(
            %why,
            key = %self.key,
            name = %self.name,
            "cannot find out whether kms-service made a re-wrap grant whose answer was lost; if ListGrants shows a grant of this name, revoke it with RevokeGrant"
        );
    }
}

/// Re-wrap grants that must go: the grants to retire, by key and id, and
/// a grant that may have been made. Whatever is left when it is dropped
/// (its time ran out, or table-service stopped) is logged.
struct GrantCleanup {
    kms: crate::kms::KmsClient,
    retire: Vec<(String, String)>,
    unsure: Option<UnsureGrant>,
    /// Whether a failure to retire was logged already.
    warned: bool,
}

impl Drop for GrantCleanup {
    fn drop(&mut self) {
        for (key, grant) in &self.retire {
            tracing::warn!(%grant, %key, "a re-wrap grant was not retired (kms-service could not be reached in time, or table-service stopped); revoke it with RevokeGrant");
        }
        if let Some(unsure) = &self.unsure {
            unsure.warn_unknown(
                &"kms-service could not be reached in time, or table-service stopped",
            );
        }
    }
}

impl GrantCleanup {
    /// One try at everything left; whether nothing is.
    async fn attempt(&mut self) -> bool {
        if self
            .unsure
            .as_ref()
            .is_some_and(|u| tokio::time::Instant::now() >= u.until)
            && let Some(unsure) = self.unsure.take()
        {
            unsure.warn_unknown(&"its owner's request ended too long ago");
        }
        if let Some(unsure) = &self.unsure {
            match self
                .kms
                .create_grant(
                    &unsure.caller,
                    &unsure.key,
                    SELF_PRINCIPAL,
                    &unsure.operations,
                    unsure.subset.clone(),
                    &unsure.name,
                )
                .await
            {
                Ok(grant) => {
                    self.retire.push((unsure.key.clone(), grant));
                    self.unsure = None;
                }
                Err(error) if retryable(&error) => {}
                Err(error) => {
                    unsure.warn_unknown(&error);
                    self.unsure = None;
                }
            }
        }
        let mut left = Vec::new();
        for (key, grant) in std::mem::take(&mut self.retire) {
            match self.kms.retire_grant(&key, &grant).await {
                Ok(()) => {}
                // Retired or revoked already.
                Err(TableError::Kms {
                    code: tonic::Code::NotFound,
                    ..
                }) => {}
                Err(error) if retryable(&error) => {
                    if !self.warned {
                        tracing::warn!(%error, %grant, %key, "could not retire a re-wrap grant yet; retrying in the background");
                    }
                    left.push((key, grant));
                }
                Err(error) => {
                    tracing::warn!(%error, %grant, %key, "could not retire a re-wrap grant; revoke it with RevokeGrant");
                }
            }
        }
        self.warned |= !left.is_empty();
        self.retire = left;
        self.retire.is_empty() && self.unsure.is_none()
    }
}

/// A failed page as DescribeTable shows it: the reason and the message, as
/// the caller of a request would see them (an internal error's details stay
/// in the log).
fn failure_text(error: &TableError) -> String {
    let message = match error {
        TableError::Internal(_) => "internal error; see the table-service log".to_string(),
        // Which item stays in the log: DescribeTable's callers may not read
        // items (key values are often personal data).
        TableError::ItemIntegrity { table, .. } => format!(
            "item integrity check failed for table {table}: a stored item was altered or moved; the table-service log names it"
        ),
        other => other.to_string(),
    };
    format!("{}: {message}", error.reason())
}

impl Tables {
    /// Grants (made on behalf of the caller) that let table-service re-wrap
    /// this table's data keys, limited to its encryption context.
    pub(super) async fn create_rewrap_grants(
        &self,
        call: &mut Call,
        table: &TableRecord,
        target_key_id: &str,
    ) -> Result<Vec<(String, String)>, TableError> {
        let subset =
            std::collections::HashMap::from([("table_id".to_string(), table.table_id.clone())]);
        // One name per key change: two changes of the same table racing
        // (or a retried one) must not be answered with each other's grant,
        // which the loser would then retire.
        // (At most 256 characters whatever the table's and key's names.)
        let name = format!(
            "table-service key change of table {} ({})",
            table.table_id,
            lockbox_proto::random::random_uuid()
        );
        let mut grants = Vec::new();
        for (key, ops) in [
            (
                table.kms_key_id.as_str(),
                &[GrantOperation::ReEncryptFrom, GrantOperation::RetireGrant][..],
            ),
            (
                target_key_id,
                &[
                    GrantOperation::ReEncryptFrom,
                    GrantOperation::ReEncryptTo,
                    GrantOperation::RetireGrant,
                ][..],
            ),
        ] {
            call.outcome.kms_calls += 1;
            match self
                .kms
                .create_grant(
                    &call.caller,
                    key,
                    SELF_PRINCIPAL,
                    ops,
                    subset.clone(),
                    &name,
                )
                .await
            {
                Ok(grant) => grants.push((key.to_string(), grant)),
                Err(e) => {
                    // An answer lost on the way (a timeout, a reset) may
                    // hide a grant that was made: asking again with the
                    // same name finds it (CreateGrant is idempotent), and
                    // it goes with the others.
                    let unsure = may_have_happened(&e)
                        .then(|| UnsureGrant::new(&call.caller, key, ops, &subset, &name));
                    self.settle_grants(grants, unsure).await;
                    return Err(e);
                }
            }
        }
        Ok(grants)
    }

    /// Retires re-wrap grants (as table-service, their grantee). Those
    /// kms-service cannot retire now (unreachable, failing) are retried in
    /// the background with back-off, for about [`CLEANUP_FOR`]; a grant
    /// that still cannot be retired is logged. Such a grant allows nothing
    /// but re-wrapping this table's data keys for table-service.
    pub(super) async fn retire_rewrap_grants(&self, grants: &[(String, String)]) {
        self.settle_grants(grants.to_vec(), None).await;
    }

    /// Retires `grants` at once if kms-service answers, and in the
    /// background what is left, with the grant `unsure` may have made (a
    /// kms-service that just lost an answer is not asked again while the
    /// caller waits).
    async fn settle_grants(&self, grants: Vec<(String, String)>, unsure: Option<UnsureGrant>) {
        let mut cleanup = GrantCleanup {
            kms: self.kms.clone(),
            retire: grants,
            unsure,
            warned: false,
        };
        if cleanup.unsure.is_none() && cleanup.attempt().await {
            return;
        }
        let job = tokio::spawn(async move {
            let mut wait = CLEANUP_FIRST_WAIT;
            let until = tokio::time::Instant::now() + CLEANUP_FOR;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(wait).await;
                if cleanup.attempt().await {
                    return;
                }
                wait = (wait * 2).min(CLEANUP_MAX_WAIT);
            }
            // Dropped here: what is left is logged.
        });
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|j| !j.is_finished());
        jobs.push(job);
    }

    /// Starts the re-wrap of every table that has one pending (at start-up).
    pub fn resume_rewraps(self: &Arc<Self>) {
        let pending: Vec<String> = self
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| t.rewrap.is_some())
            .map(|t| t.name.clone())
            .collect();
        for name in pending {
            self.spawn_rewrap(name);
        }
    }

    /// Starts the re-wrap of table `name` (as it is now: a table created
    /// later under the same name is not this job's).
    pub(super) fn spawn_rewrap(self: &Arc<Self>, name: String) {
        let Ok(table_id) = self.table(&name).map(|t| t.table_id) else {
            return;
        };
        let this = self.clone();
        let job = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match this.rewrap_page(&name, &table_id).await {
                    Ok(true) => backoff = Duration::from_millis(200),
                    Ok(false) => {
                        this.record_rewrap_failure(&table_id, None);
                        return;
                    }
                    Err(error) => {
                        this.record_rewrap_failure(&table_id, Some(&error));
                        tracing::warn!(table = %name, %error, reason = error.reason(), "re-wrap paused; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|j| !j.is_finished());
        jobs.push(job);
    }

    /// Keeps the latest failure of table `table_id`'s re-wrap for
    /// DescribeTable, or forgets it (`None`: a page succeeded or the job
    /// ended).
    fn record_rewrap_failure(&self, table_id: &str, error: Option<&TableError>) {
        let mut failures = self
            .rewrap_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match error {
            Some(error) => {
                failures.insert(table_id.to_string(), failure_text(error));
            }
            None => {
                failures.remove(table_id);
            }
        }
    }

    /// The latest failure of table `table_id`'s re-wrap, if its last page
    /// failed.
    pub(super) fn rewrap_failure(&self, table_id: &str) -> Option<String> {
        self.rewrap_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(table_id)
            .cloned()
    }

    /// Re-wraps one page of table `name` whose id is `table_id`; returns
    /// whether there may be more work.
    async fn rewrap_page(&self, name: &str, table_id: &str) -> Result<bool, TableError> {
        // Held while the page is read and written, and let go before
        // `save_progress` (which takes `ddl`): DeleteTable and key switches
        // take `ddl` first, then the table's lock.
        let writes = self.table_lock(name).read().await;
        let Ok(table) = self.table(name) else {
            return Ok(false);
        };
        if table.table_id != table_id {
            // Deleted and created again: the new table's changes are not
            // this job's.
            return Ok(false);
        }
        let Some(rewrap) = table.rewrap.clone() else {
            return Ok(false);
        };
        let store = self.store.clone();
        let query = ScanQuery {
            table_id: table.table_id.clone(),
            after: rewrap
                .resume_after
                .clone()
                .map(|(partition, sort)| crate::model::ItemKey { partition, sort }),
            segment: None,
            limit: PAGE,
            // The page's items are read again under their locks anyway.
            max_bytes: super::query::MAX_PAGE_BYTES,
        };
        let page = tokio::task::spawn_blocking(move || store.scan(&query))
            .await
            .map_err(|e| TableError::Internal(e.to_string()))?
            .map_err(store_error)?;
        if page.is_empty() {
            drop(writes);
            // Done first, then the grants go: a crash or a shutdown in
            // between leaves grants to retire by hand (RevokeGrant; the
            // warning names them), never a job that resumes without them
            // and is refused for ever.
            self.save_progress(&table, None).await?;
            self.retire_rewrap_grants(&rewrap.grants).await;
            tracing::info!(table = %name, items = rewrap.items_done, "re-wrap finished");
            return Ok(false);
        }
        // Lock the page's items (in one global order), re-read them, re-wrap
        // their data keys concurrently, and commit the page at once.
        let stripes: std::collections::BTreeSet<usize> = page
            .iter()
            .map(|i| self.stripe_index(&table, &i.key))
            .collect();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.stripes[i].lock().await);
        }
        let store = self.store.clone();
        let (table_id, keys) = (
            table.table_id.clone(),
            page.iter().map(|i| i.key.clone()).collect::<Vec<_>>(),
        );
        let current = tokio::task::spawn_blocking(move || {
            keys.into_iter()
                .map(|k| store.get_item(&table_id, &k).map(|e| (k, e)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| TableError::Internal(e.to_string()))?
        .map_err(store_error)?;
        let mut set = tokio::task::JoinSet::new();
        let mut already = 0u64;
        for (key, bytes) in current {
            // Deleted meanwhile: nothing to re-wrap.
            let Some(bytes) = bytes else { continue };
            // Written under the target key since the change began (or
            // re-wrapped before a restart lost the page's progress):
            // nothing to move, but counted as done.
            let under_target = envelope::parse(&bytes).is_ok_and(|parsed| {
                crate::kms::blob_key_id(parsed.wrapped_key).as_deref()
                    == Some(rewrap.target_key_id.as_str())
            });
            if under_target {
                already += 1;
                continue;
            }
            let kms = self.kms.clone();
            let (table_id, target, name, schema) = (
                table.table_id.clone(),
                rewrap.target_key_id.clone(),
                table.name.clone(),
                table.schema.clone(),
            );
            set.spawn(async move {
                let parsed = envelope::parse(&bytes).map_err(|_| TableError::ItemIntegrity {
                    table: name,
                    key: schema.describe_key(&key),
                })?;
                let wrapped = kms
                    .re_encrypt_under_grant(
                        parsed.wrapped_key,
                        envelope::data_key_context(&table_id, &key),
                        &target,
                    )
                    .await?;
                let rewrapped = envelope::with_wrapped_key(&bytes, &wrapped).map_err(|_| {
                    TableError::Internal("re-wrapped data key does not fit an envelope".into())
                })?;
                Ok::<_, TableError>(Mutation::PutItem {
                    table_id,
                    key,
                    envelope: rewrapped,
                })
            });
        }
        // Every call is let finish, even after one failed: dropping the set
        // would cancel the rest, a burst of stream resets on kms-service's
        // connection for nothing.
        let mut mutations = Vec::new();
        let mut failed = None;
        while let Some(joined) = set.join_next().await {
            match joined.map_err(|e| TableError::Internal(e.to_string())) {
                Ok(Ok(mutation)) => mutations.push(mutation),
                Ok(Err(e)) | Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let done = mutations.len() as u64 + already;
        if !mutations.is_empty() {
            self.commit.commit(mutations).await.map_err(store_error)?;
        }
        drop(guards);
        drop(writes);
        // Progressing again: forgotten before the new count shows.
        self.record_rewrap_failure(&table.table_id, None);
        let last = page.last().map(|i| i.key.clone());
        let mut progress = rewrap;
        progress.items_done += done;
        progress.resume_after = last.map(|k| (k.partition, k.sort));
        self.save_progress(&table, Some(progress)).await?;
        Ok(true)
    }

    async fn save_progress(
        &self,
        table: &TableRecord,
        rewrap: Option<crate::store::Rewrap>,
    ) -> Result<(), TableError> {
        let _ddl = self.ddl.lock().await;
        let Ok(mut record) = self.table(&table.name) else {
            return Ok(());
        };
        if record.table_id != table.table_id {
            return Ok(());
        }
        record.rewrap = rewrap;
        self.commit
            .commit(vec![Mutation::PutTable(record.clone())])
            .await
            .map_err(store_error)?;
        self.tables
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.name.clone(), record);
        Ok(())
    }
}

//! The table service as a domain object: one method per RPC, taking plain
//! Rust types. Every method first asks kms-service whether the caller may do
//! `table:<Action>` on `table/<name>`; every key use goes to kms-service on
//! behalf of the caller. **Invariant:** nothing is ever stored unencrypted:
//! an item is written only after its envelope is sealed under a data key
//! kms-service generated for that item.

mod items;
mod query;
mod rewrap;
mod tables;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::cache::{AuthzCache, CacheConfig, DataKeyCache};
use crate::envelope;
use crate::error::TableError;
use crate::kms::{CallerCredential, Conditional, KmsClient};
use crate::model::{self, Item, ItemKey};
use crate::store::{GroupCommit, Mutation, StoreError, StoredItem, TableRecord, TableStore};

pub use items::{BatchWrite, ReturnValues};
pub use query::{Page, SortCondition};
pub use rewrap::SELF_PRINCIPAL;
pub use tables::{TableView, validate_table_name};

/// The alias of the key tables use when the creator names none.
pub const SERVICE_MANAGED_ALIAS: &str = "alias/table-service";
const STRIPES: usize = 1024;
/// How many table locks the tables' names are spread over.
const TABLE_WRITE_LOCKS: usize = 64;

/// How long shutdown waits for writes still running (each bounded by its
/// kms-service calls' timeout and its commit).
pub const WRITES_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// Items of a deleted table purged per commit (see
/// [`Tables::purge_dropped_tables`]).
pub const PURGE_BATCH: usize = 1000;
/// How often deleted tables are looked for while none is being purged.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct TablesConfig {
    pub data_key_cache: CacheConfig,
    pub authz_cache: CacheConfig,
    /// Most data keys one request (a Query, Scan or BatchGetItem page)
    /// has kms-service unwrap at the same time.
    pub unwrap_concurrency: usize,
    /// The largest message the server sends (BatchGetItem answers within it).
    pub max_response_bytes: usize,
}

pub struct Tables {
    store: Arc<dyn TableStore>,
    commit: GroupCommit,
    kms: KmsClient,
    tables: RwLock<BTreeMap<String, TableRecord>>,
    data_keys: DataKeyCache,
    authz: AuthzCache,
    unwrap_concurrency: usize,
    max_response_bytes: usize,
    /// Per-item locks (striped) so a conditional write's read, check and
    /// write are atomic with respect to other writers of the same item.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Serializes table creation and deletion.
    ddl: tokio::sync::Mutex<()>,
    /// Item writes (and re-wrap pages) hold their table's lock (one of
    /// these, by the table's name) shared from reading its record to
    /// committing; switching a table's key and deleting a table hold it
    /// exclusively. So no item sealed under a table's old key is committed
    /// after the switch (the re-wrap, which starts after it, would miss a
    /// new one), and no write lands in a deleted table; and a delete or a
    /// switch waiting for a slow write pauses only the writes of tables
    /// that share its lock.
    table_writes: Vec<tokio::sync::RwLock<()>>,
    /// Background jobs (key-change re-wraps), stopped at shutdown.
    jobs: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Writes running as tasks of their own ([`Tables::spawn_write`]),
    /// waited for at shutdown.
    writes: tokio_util::task::TaskTracker,
    /// The latest failure of each re-wrap whose last page failed, by table
    /// id ("<reason>: <message>"); DescribeTable shows it.
    rewrap_failures: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// The key id behind `alias/table-service`, once looked up.
    service_managed_key_id: std::sync::OnceLock<String>,
}

/// What one request did, for its structured event.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub principal: Option<String>,
    pub kms_calls: u32,
    pub cache_hits: u32,
}

/// A request in progress: who is calling and what it cost.
pub struct Call {
    pub caller: CallerCredential,
    pub outcome: Outcome,
}

impl Call {
    pub fn new(caller: CallerCredential) -> Self {
        Call {
            caller,
            outcome: Outcome::default(),
        }
    }

    /// A call for one part of this request (run as its own task): the same
    /// caller and principal, its own counts; [`Call::absorb`] adds them back.
    fn sub(&self) -> Call {
        Call {
            caller: self.caller.clone(),
            outcome: Outcome {
                principal: self.outcome.principal.clone(),
                ..Outcome::default()
            },
        }
    }

    fn absorb(&mut self, part: &Outcome) {
        self.outcome.kms_calls += part.kms_calls;
        self.outcome.cache_hits += part.cache_hits;
    }
}

fn store_error(e: StoreError) -> TableError {
    TableError::Unavailable(format!("item store unavailable: {e}"))
}

/// The integrity error of item `key` of `table`.
fn integrity(table: &TableRecord, key: &crate::model::ItemKey) -> TableError {
    TableError::ItemIntegrity {
        table: table.name.clone(),
        key: table.schema.describe_key(key),
    }
}

/// Whether kms-service refused to unwrap a data key as not its own:
/// `InvalidCiphertextException`, its answer both for a wrapped key that
/// does not belong to the item (copied from elsewhere) and for one whose
/// key no longer exists.
fn unwrap_refused(error: &TableError) -> bool {
    matches!(error, TableError::Kms { reason, .. } if reason == "InvalidCiphertextException")
}

/// Authenticates and decrypts a stored item with its data key.
fn open_envelope(
    table: &TableRecord,
    stored: &StoredItem,
    data_key: &[u8],
) -> Result<Item, TableError> {
    let broken = || integrity(table, &stored.key);
    let parsed = envelope::parse(&stored.envelope).map_err(|_| broken())?;
    let plain = parsed
        .open(&table.table_id, &stored.key, data_key)
        .map_err(|_| broken())?;
    let attributes = model::decode_attributes(&plain).map_err(|_| broken())?;
    model::join_item(&table.schema, &stored.key, attributes).map_err(|_| broken())
}

impl Tables {
    pub fn open(
        store: Arc<dyn TableStore>,
        kms: KmsClient,
        config: TablesConfig,
    ) -> Result<Arc<Tables>, TableError> {
        let tables = store
            .load_tables()
            .map_err(store_error)?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        Ok(Arc::new(Tables {
            commit: GroupCommit::start(store.clone()),
            store,
            kms,
            tables: RwLock::new(tables),
            data_keys: DataKeyCache::new(config.data_key_cache),
            authz: AuthzCache::new(config.authz_cache),
            unwrap_concurrency: config.unwrap_concurrency.max(1),
            max_response_bytes: config.max_response_bytes,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            ddl: tokio::sync::Mutex::new(()),
            table_writes: (0..TABLE_WRITE_LOCKS)
                .map(|_| tokio::sync::RwLock::new(()))
                .collect(),
            jobs: std::sync::Mutex::new(Vec::new()),
            writes: tokio_util::task::TaskTracker::new(),
            rewrap_failures: std::sync::Mutex::new(std::collections::HashMap::new()),
            service_managed_key_id: std::sync::OnceLock::new(),
        }))
    }

    /// Starts the background job that drops expired cache entries every
    /// [`crate::cache::SWEEP_EVERY`], zeroizing data keys nobody looks up
    /// again. It holds no strong reference: it ends with the service.
    pub fn sweep_caches(self: &Arc<Self>) {
        if !self.data_keys.enabled() && !self.authz.enabled() {
            return;
        }
        let this = Arc::downgrade(self);
        let job = tokio::spawn(async move {
            let mut every = tokio::time::interval(crate::cache::SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(tables) = this.upgrade() else {
                    return;
                };
                tables.data_keys.purge_expired();
                tables.authz.purge_expired();
            }
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job);
    }

    /// Purges the items of deleted tables in the background,
    /// [`PURGE_BATCH`] at a time per table and commit, so the writes queued
    /// behind one wait milliseconds, not the whole deletion; a restart goes
    /// on with what is left. Runs until the service stops, or a commit
    /// fails (the store then refuses every write until restarted anyway).
    pub fn purge_dropped_tables(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        let job = tokio::spawn(async move {
            let mut purging = std::collections::BTreeSet::new();
            loop {
                let Some(tables) = this.upgrade() else {
                    return;
                };
                let store = tables.store.clone();
                let dropped = match tokio::task::spawn_blocking(move || store.dropped_tables())
                    .await
                {
                    Ok(Ok(dropped)) => dropped,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot list deleted tables to purge; trying again");
                        Vec::new()
                    }
                    Err(_) => return,
                };
                for done in purging.iter().filter(|id| !dropped.contains(*id)) {
                    tracing::info!(table_id = %done, "the items of a deleted table are purged");
                }
                purging.retain(|id| dropped.contains(id));
                for table_id in &dropped {
                    if purging.insert(table_id.clone()) {
                        tracing::info!(table_id = %table_id, "purging the items of a deleted table");
                    }
                    let purge = Mutation::PurgeDropped {
                        table_id: table_id.clone(),
                        limit: PURGE_BATCH,
                    };
                    if let Err(e) = tables.commit.commit(vec![purge]).await {
                        tracing::error!(error = %e, table_id = %table_id, "purging a deleted table's items failed; the rest are purged after a restart");
                        return;
                    }
                }
                drop(tables);
                if dropped.is_empty() {
                    tokio::time::sleep(PURGE_EVERY).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job);
    }

    /// Why the service refuses writes until it is restarted, if it does (a
    /// failed store commit). Health checks report it.
    pub fn fault(&self) -> Option<String> {
        self.commit.is_poisoned().then(|| {
            "a table store commit failed; every write is refused until table-service is restarted"
                .to_string()
        })
    }

    /// Stops background jobs; they resume from their saved progress at the
    /// next start.
    /// Runs a write request's work as a task of its own (see the gRPC
    /// layer's `handle!`), which [`Tables::stop_jobs`] waits for.
    pub fn spawn_write<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.writes.spawn(work)
    }

    /// Stops the background jobs, and waits (at most [`WRITES_DEADLINE`])
    /// for the writes still running, whose callers may have gone: each
    /// holds the service until it ends.
    pub async fn stop_jobs(&self) {
        self.writes.close();
        if tokio::time::timeout(WRITES_DEADLINE, self.writes.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                writes = self.writes.len(),
                "writes still running at shutdown were left behind"
            );
        }
        let jobs: Vec<_> = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for job in &jobs {
            job.abort();
        }
        // Once they are gone, so are their handles on the service (a
        // blocking store read they started may hold the store a little
        // longer).
        for job in jobs {
            let _ = job.await;
        }
    }

    /// How many plaintext data keys the cache holds (live or expired but
    /// not yet swept).
    pub fn cached_data_keys(&self) -> usize {
        self.data_keys.len()
    }

    /// The largest response message the server sends.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    pub fn kms_endpoint(&self) -> &str {
        self.kms.endpoint()
    }

    /// Asks kms-service (or the allow cache) whether the caller may do
    /// `action` on `resource`; records the caller's principal.
    async fn authorize(
        &self,
        call: &mut Call,
        action: &str,
        resource: &str,
    ) -> Result<(), TableError> {
        if self.cached_allow(call, action, resource) {
            return Ok(());
        }
        self.authorize_uncached(call, action, resource).await
    }

    /// Asks several `(action, resource)` questions at once: those the
    /// allow cache holds are not asked again, the rest go to kms-service in
    /// one `Authorize`. On refusal: the index of the first refused
    /// question, in order, and the error.
    async fn authorize_each(
        &self,
        call: &mut Call,
        asked: &[(&str, &str)],
    ) -> Result<Option<(usize, TableError)>, TableError> {
        let open: Vec<(usize, &str, &str)> = asked
            .iter()
            .enumerate()
            .filter(|(_, (action, resource))| !self.cached_allow(call, action, resource))
            .map(|(i, (action, resource))| (i, *action, *resource))
            .collect();
        if open.is_empty() {
            return Ok(None);
        }
        call.outcome.kms_calls += 1;
        let questions: Vec<(String, String)> = open
            .iter()
            .map(|(_, action, resource)| (action.to_string(), resource.to_string()))
            .collect();
        let (principal, answers) = self.kms.authorize(&call.caller, &questions).await?;
        if answers.len() != questions.len() {
            return Err(TableError::Internal(format!(
                "Authorize answered {} of {} questions",
                answers.len(),
                questions.len()
            )));
        }
        let mut refused = None;
        for ((i, action, resource), answer) in open.iter().zip(answers) {
            if answer.allowed {
                self.authz.record_allow(
                    call.caller.authorization.as_str(),
                    action,
                    resource,
                    &principal,
                );
            } else if refused.is_none() {
                refused = Some((
                    *i,
                    TableError::Kms {
                        code: tonic::Code::PermissionDenied,
                        reason: "AccessDeniedException".into(),
                        message: answer.message,
                    },
                ));
            }
        }
        call.outcome.principal = Some(principal);
        Ok(refused)
    }

    /// [`Tables::authorize_each`] where any refusal is the error.
    async fn authorize_all(
        &self,
        call: &mut Call,
        asked: &[(&str, &str)],
    ) -> Result<(), TableError> {
        match self.authorize_each(call, asked).await? {
            None => Ok(()),
            Some((_, refusal)) => Err(refusal),
        }
    }

    /// Whether the allow cache holds an allow of `action` on `resource` for
    /// the caller; if so, records the caller's principal.
    fn cached_allow(&self, call: &mut Call, action: &str, resource: &str) -> bool {
        let credential = call.caller.authorization.as_str();
        match self.authz.allowed(credential, action, resource) {
            Some(principal) => {
                call.outcome.principal = Some(principal);
                call.outcome.cache_hits += 1;
                true
            }
            None => false,
        }
    }

    /// [`Tables::authorize`] without looking at the allow cache.
    async fn authorize_uncached(
        &self,
        call: &mut Call,
        action: &str,
        resource: &str,
    ) -> Result<(), TableError> {
        call.outcome.kms_calls += 1;
        let (principal, decision) = self.ask(&call.caller, action, resource, true).await?;
        call.outcome.principal = Some(principal);
        decision
    }

    /// Asks kms-service whether the caller may do `action` on `resource`:
    /// the caller's principal and the decision. With `remember`, an allow
    /// is remembered in the allow cache.
    async fn ask(
        &self,
        caller: &CallerCredential,
        action: &str,
        resource: &str,
        remember: bool,
    ) -> Result<(String, Result<(), TableError>), TableError> {
        let (principal, answers) = self
            .kms
            .authorize(caller, &[(action.to_string(), resource.to_string())])
            .await?;
        let decision = match answers.first() {
            Some(a) if a.allowed => {
                if remember {
                    self.authz.record_allow(
                        caller.authorization.as_str(),
                        action,
                        resource,
                        &principal,
                    );
                }
                Ok(())
            }
            Some(a) => Err(TableError::Kms {
                code: tonic::Code::PermissionDenied,
                reason: "AccessDeniedException".into(),
                message: a.message.clone(),
            }),
            None => Err(TableError::Internal("Authorize returned no answer".into())),
        };
        Ok((principal, decision))
    }

    /// The table `name`; a name no table could have is a bad request, as
    /// in DynamoDB, not a missing table.
    fn table(&self, name: &str) -> Result<TableRecord, TableError> {
        tables::validate_table_name(name)?;
        self.tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| TableError::ResourceNotFound(format!("Table: {name} not found")))
    }

    fn stripe_index(&self, table: &TableRecord, key: &ItemKey) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&table.table_id, key).hash(&mut h);
        (h.finish() as usize) % STRIPES
    }

    fn stripe(&self, table: &TableRecord, key: &ItemKey) -> &tokio::sync::Mutex<()> {
        &self.stripes[self.stripe_index(table, key)]
    }

    /// Which of `table_writes` is table `name`'s: 64-bit FNV-1a of the
    /// name, fixed (unlike std's `DefaultHasher`, which may change between
    /// Rust releases), so which names share a lock is the same everywhere.
    fn table_lock_index(name: &str) -> usize {
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        (hash % TABLE_WRITE_LOCKS as u64) as usize
    }

    /// Table `name`'s lock (see `table_writes`).
    fn table_lock(&self, name: &str) -> &tokio::sync::RwLock<()> {
        &self.table_writes[Self::table_lock_index(name)]
    }

    /// The locks of tables `names`, shared, taken in one global order (so
    /// two batches never wait for each other crosswise).
    async fn table_locks_shared<'a>(
        &self,
        names: impl Iterator<Item = &'a String>,
    ) -> Vec<tokio::sync::RwLockReadGuard<'_, ()>> {
        let locks: std::collections::BTreeSet<usize> =
            names.map(|n| Self::table_lock_index(n)).collect();
        let mut guards = Vec::with_capacity(locks.len());
        for i in locks {
            guards.push(self.table_writes[i].read().await);
        }
        guards
    }

    /// Seals `attributes` for the item at `key` under a fresh data key.
    async fn seal(
        &self,
        call: &mut Call,
        table: &TableRecord,
        key: &ItemKey,
        attributes: &Item,
    ) -> Result<Vec<u8>, TableError> {
        self.seal_deciding(call, table, key, attributes, None).await
    }

    /// [`Tables::seal`]; with `required`, the data key is asked for
    /// conditional on the caller being allowed that action on that
    /// resource (`x-authorize`), so kms-service decides both in one call
    /// and names the caller's principal.
    async fn seal_deciding(
        &self,
        call: &mut Call,
        table: &TableRecord,
        key: &ItemKey,
        attributes: &Item,
        required: Option<(&str, &str)>,
    ) -> Result<Vec<u8>, TableError> {
        let encoded = zeroize::Zeroizing::new(model::encode_attributes(attributes));
        call.outcome.kms_calls += 1;
        let context = envelope::data_key_context(&table.table_id, key);
        let data_key = match required {
            None => {
                self.kms
                    .generate_data_key(&call.caller, &table.kms_key_id, context)
                    .await?
            }
            Some((action, resource)) => {
                let answer = self
                    .kms
                    .generate_data_key_authorized(
                        &call.caller,
                        (action, resource),
                        &table.kms_key_id,
                        context,
                    )
                    .await;
                self.settle(call, action, resource, answer).await?
            }
        };
        let mut iv = [0u8; 12];
        getrandom::fill(&mut iv).map_err(|e| TableError::Internal(format!("random IV: {e}")))?;
        envelope::seal(
            &table.table_id,
            key,
            &data_key.plaintext,
            &data_key.wrapped,
            iv,
            &encoded,
        )
        .map_err(|_| TableError::Internal("sealing an item failed".into()))
    }

    /// Settles a call made conditional on `action` on `resource`: records
    /// the principal kms-service decided for and, on success, an allow for
    /// the allow cache. A failure that names no principal may come from a
    /// kms-service that never decided `action` (one older than
    /// `x-authorize`), so the decision is asked for on its own first: a
    /// caller who may not do `action` learns nothing from the call's own
    /// error (whether the item exists, say). That decision is not cached:
    /// such a kms-service keeps failing the conditional call, rather than
    /// failing it once and then letting the cached allow through. Not when
    /// kms-service is unreachable (a second call would only wait as long
    /// again) or the caller is not authenticated (which says nothing about
    /// the table, and `Authorize` would refuse the same way).
    async fn settle<T>(
        &self,
        call: &mut Call,
        action: &str,
        resource: &str,
        answer: Conditional<T>,
    ) -> Result<T, TableError> {
        match answer {
            Ok((principal, value)) => {
                self.authz.record_allow(
                    call.caller.authorization.as_str(),
                    action,
                    resource,
                    &principal,
                );
                call.outcome.principal = Some(principal);
                Ok(value)
            }
            Err((Some(principal), e)) => {
                call.outcome.principal = Some(principal);
                Err(e)
            }
            Err((None, e @ TableError::KmsUnavailable { .. })) => Err(e),
            Err((
                None,
                e @ TableError::Kms {
                    code: tonic::Code::Unauthenticated,
                    ..
                },
            )) => Err(e),
            Err((None, e)) => {
                call.outcome.kms_calls += 1;
                let (principal, decision) = self.ask(&call.caller, action, resource, false).await?;
                call.outcome.principal = Some(principal);
                decision?;
                Err(e)
            }
        }
    }

    /// An error of unwrapping an item's data key of `table`, as the caller
    /// sees it. kms-service refuses a wrapped key that does not belong to
    /// the item and one whose key was deleted alike (it does not say which
    /// keys existed), so on such a refusal the table's key, and during a
    /// key change the key it is moving from, are looked up with
    /// DescribeKey on behalf of the caller (which answers
    /// `NotFoundException` for a key that does not exist to any caller): a
    /// key that no longer exists is [`TableError::KeyDeleted`]; otherwise
    /// the stored item was altered or moved, an integrity error of the
    /// table. Other errors pass through.
    async fn unwrap_error(
        &self,
        call: &mut Call,
        table: &TableRecord,
        key: &crate::model::ItemKey,
        error: TableError,
    ) -> TableError {
        if !unwrap_refused(&error) {
            return error;
        }
        let source = table
            .rewrap
            .as_ref()
            .map(|r| r.source_key_id.as_str())
            .filter(|k| !k.is_empty());
        let name = &table.name;
        for (key_id, moving_from) in
            std::iter::once((table.kms_key_id.as_str(), false)).chain(source.map(|k| (k, true)))
        {
            call.outcome.kms_calls += 1;
            match self.kms.describe_key(&call.caller, key_id).await {
                Err(TableError::Kms { reason, .. }) if reason == "NotFoundException" => {
                    let item = table.schema.describe_key(key);
                    return TableError::KeyDeleted(if moving_from {
                        format!(
                            "key {key_id}, which table {name} is moving its items from, no longer exists (it was deleted); the items not yet moved, such as item {item}, cannot be decrypted: delete or overwrite them (the key change then goes on)"
                        )
                    } else {
                        format!(
                            "key {key_id} of table {name} no longer exists (it was deleted); its items, such as item {item}, cannot be decrypted, and none can be written under it: delete the items or the table"
                        )
                    });
                }
                // It exists, or cannot be told now: nothing explains the
                // refusal but the item itself.
                _ => {}
            }
        }
        integrity(table, key)
    }

    /// Opens a stored item for the caller: unwraps its data key through
    /// kms-service (or the caller's own cache entry) and authenticates it.
    /// A refused unwrap comes back as kms-service said it; callers turn it
    /// into the table's error with [`Tables::unwrap_error`], once per
    /// request.
    async fn open_item(
        &self,
        call: &mut Call,
        table: &TableRecord,
        stored: &StoredItem,
    ) -> Result<Item, TableError> {
        let parsed =
            envelope::parse(&stored.envelope).map_err(|_| integrity(table, &stored.key))?;
        // Entries are the principal's own; a call whose principal is not
        // known (not yet authorized) neither reads nor fills the cache.
        let principal = call.outcome.principal.as_deref();
        let credential = call.caller.authorization.as_str();
        let cached = principal.and_then(|p| self.data_keys.get(p, credential, parsed.wrapped_key));
        let data_key = match cached {
            Some(k) => {
                call.outcome.cache_hits += 1;
                k
            }
            None => {
                call.outcome.kms_calls += 1;
                let k = self
                    .unwrap_data_key(&call.caller, table, stored, parsed.wrapped_key)
                    .await?;
                if let Some(p) = principal {
                    self.data_keys.insert(p, credential, parsed.wrapped_key, &k);
                }
                k
            }
        };
        open_envelope(table, stored, &data_key)
    }

    /// Asks kms-service to unwrap an item's data key on behalf of the
    /// caller.
    async fn unwrap_data_key(
        &self,
        caller: &CallerCredential,
        table: &TableRecord,
        stored: &StoredItem,
        wrapped_key: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, TableError> {
        self.kms
            .decrypt(
                caller,
                "",
                wrapped_key,
                envelope::data_key_context(&table.table_id, &stored.key),
            )
            .await
    }

    /// Opens many items with their data keys unwrapped concurrently, in
    /// order. Each item is one kms-service round trip unless cached; they
    /// overlap instead of following one another, at most
    /// `unwrap_concurrency` at a time, so one large page cannot flood
    /// kms-service (or queue thousands of calls on table-service's one
    /// connection to it) while other requests wait behind it.
    async fn open_all(
        self: &Arc<Self>,
        call: &mut Call,
        table: &TableRecord,
        stored: Vec<StoredItem>,
    ) -> Result<Vec<Item>, TableError> {
        let tasks = stored.into_iter().map(|item| {
            let this = self.clone();
            let table = table.clone();
            let mut sub = call.sub();
            async move {
                // A failure keeps the item's key, for the error to name.
                let r = this
                    .open_item(&mut sub, &table, &item)
                    .await
                    .map_err(|e| (e, item.key));
                (r, sub.outcome)
            }
        });
        // Any failure fails the page: no item is opened after one.
        let opened = spawn_bounded(self.unwrap_concurrency, tasks, |(r, _)| r.is_err())
            .await
            .map_err(|e| TableError::Internal(format!("item task: {e}")))?;
        let mut items = Vec::with_capacity(opened.len());
        let mut first_error = None;
        for (result, outcome) in opened.into_iter().flatten() {
            call.absorb(&outcome);
            match result {
                Ok(item) => items.push(item),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some((e, key)) => Err(self.unwrap_error(call, table, &key, e).await),
            None => Ok(items),
        }
    }
}

/// Runs `tasks` as tasks of the runtime (so they also use the other cores),
/// at most `width` (at least 1) at a time, starting each as an earlier one
/// finishes, and returns their outputs in the order of `tasks`. Once an
/// output satisfies `stop` (a failure that fails them all, such as
/// kms-service not answering), no further task is started: those already
/// running are seen to their end, and the rest are `None`, so a page does
/// not wait for kms-service once per wave. Dropping the returned future
/// aborts the tasks still running.
async fn spawn_bounded<T, F>(
    width: usize,
    tasks: impl IntoIterator<Item = F>,
    stop: impl Fn(&T) -> bool,
) -> Result<Vec<Option<T>>, tokio::task::JoinError>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let width = width.max(1);
    let mut set = tokio::task::JoinSet::new();
    let mut out: Vec<Option<T>> = Vec::new();
    let mut stopped = false;
    let mut tasks = tasks.into_iter();
    for (i, task) in tasks.by_ref().enumerate() {
        if set.len() >= width
            && let Some(joined) = set.join_next().await
        {
            let (j, value) = joined?;
            stopped |= stop(&value);
            out[j] = Some(value);
        }
        out.push(None);
        if stopped {
            break;
        }
        set.spawn(async move { (i, task.await) });
    }
    while let Some(joined) = set.join_next().await {
        let (j, value) = joined?;
        out[j] = Some(value);
    }
    // The tasks never started, for the caller to account for.
    out.extend(tasks.map(|_| None));
    Ok(out)
}

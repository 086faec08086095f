//! The key management service as a domain object: every RPC of `kms.v1` and
//! `iam.v1` is a method here, taking plain Rust types. This is the single
//! policy decision point and the only code that asks the root key for
//! backing keys.
//!
//! Every method follows one shape, enforced by [`Kms::run`]: authenticate,
//! do the work under the state lock (authorize first, then check key state,
//! then act), then — before anything is returned — make the audit record and
//! every state change the answer depends on durable.
//! **Invariant:** no answer leaves this module without a durable audit
//! record, but for failed authentications past the per-address rate
//! ([`throttle`]), which are counted and recorded together within seconds.

mod crypto_ops;
mod grant_ops;
mod iam_ops;
pub(crate) mod key_ops;
pub use key_ops::service_managed_policy;
mod maintenance;
#[cfg(test)]
mod tests;
pub mod throttle;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::audit::{AuditEvent, AuditLog};
use crate::clock::Clock;
use crate::crypto::SecretBytes;
use crate::crypto::context::EncryptionContext;
use crate::crypto::root_key::{RootKey, UnwrapError};
use crate::error::{AuthFailure, CredentialOf, KmsError};
use crate::grants::GrantRecord;
use crate::identity::{PrincipalKind, token_digest};
use crate::keys::{KeyRecord, KeyState, KeyUsage, wrap_label};
use crate::policy::{
    self, AllowedBy, ConditionContext, Decision, Evaluation, PolicyDocument, PolicyKind, Request,
};
use crate::state::{KeyEntry, State};
use crate::store::{GroupCommitter, Mutation, Store};

pub use crypto_ops::{DataKey, DataKeyLength, Decrypted, Encrypted, data_key_length};
pub use grant_ops::CreateGrantInput;
pub use iam_ops::{AuthorizationAnswer, BootstrapToken};
pub use key_ops::{CreateKeyInput, Page, RotationStatus};
pub use maintenance::MaintenanceReport;

/// The principal name used for work the service does by itself (rotation,
/// deletion), in audit records.
pub const SERVICE_PRINCIPAL: &str = "service/kms-service";
const ROOT_CHECK_META: &str = "root_key_check";
/// The newest audit checkpoint the store has seen: 8 bytes, big-endian
/// sequence number.
const AUDIT_ANCHOR_META: &str = "audit_checkpoint";
const ROOT_CHECK_LABEL: &[u8] = b"root-key-check";
/// The `eventName` of a record of failed authentications counted together.
pub const UNRECORDED_FAILURES_EVENT: &str = "UnauthenticatedCallsCounted";
const ROOT_CHECK_VALUE: &[u8] = b"lockbox root key check v1";

/// What the transport layer knows about a request before anything is
/// checked. Its `Debug` never shows the credentials themselves.
#[derive(Default)]
pub struct Credentials {
    /// The `authorization` metadata value, e.g. `Bearer lbx_…`.
    pub authorization: Option<String>,
    /// The `x-on-behalf-of` metadata value a service forwards.
    pub on_behalf_of: Option<String>,
    pub request_id: String,
    pub source_address: Option<String>,
    /// The `x-forwarded-for` value a service sent with a forwarded
    /// credential: where the end caller's call came from.
    pub forwarded_for: Option<String>,
    /// The `x-authorize` metadata values a service sent: `<action>
    /// <resource>` pairs the call is conditional on (see
    /// [`Ctx::require`]), unparsed.
    pub required: Vec<String>,
    /// Set once the caller is authenticated: the principal decisions are
    /// made for (the end caller, when a service forwards one).
    pub principal: std::sync::OnceLock<String>,
}

/// A clone is of the request only: the principal a call decided is not
/// carried over, so a clone used for another call starts unauthenticated.
impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            authorization: self.authorization.clone(),
            on_behalf_of: self.on_behalf_of.clone(),
            request_id: self.request_id.clone(),
            source_address: self.source_address.clone(),
            forwarded_for: self.forwarded_for.clone(),
            required: self.required.clone(),
            principal: std::sync::OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("Credentials")
            .field("authorization", &shown(&self.authorization))
            .field("on_behalf_of", &shown(&self.on_behalf_of))
            .field("request_id", &self.request_id)
            .field("source_address", &self.source_address)
            .field("forwarded_for", &self.forwarded_for)
            .field("required", &self.required)
            .field("principal", &self.principal.get())
            .finish()
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal decisions are made for: the end caller when a service
    /// forwards one.
    pub principal: String,
    pub token_id: String,
    /// The service that forwarded the call, if any.
    pub via_service: Option<String>,
}

pub struct Kms {
    state: RwLock<State>,
    committer: Arc<GroupCommitter>,
    root: Arc<dyn RootKey>,
    audit: AuditLog,
    clock: Arc<dyn Clock>,
    managed: BTreeMap<String, Arc<PolicyDocument>>,
    quotas: Quotas,
    /// Which failed authentications get a record of their own.
    throttle: throttle::FailureThrottle,
    /// Most bytes (approximately) of items one list page holds, so that
    /// its answer fits in a response; see [`Kms::set_response_limit`].
    page_bytes: std::sync::atomic::AtomicUsize,
    /// Largest answer the server sends; see [`Kms::set_response_limit`].
    response_bytes: std::sync::atomic::AtomicUsize,
}

/// Most bytes (approximately) of items one list page holds at the default
/// response limit and above.
pub const LIST_PAGE_BYTES: usize = 128 * 1024;

/// How many keys and principals may exist at once; CreateKey and
/// CreateUser past them fail with `LimitExceededException`. Keys count in
/// every state until destroyed, as AWS counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub keys: usize,
    pub principals: usize,
}

/// AWS's default quota of customer managed keys per account and region
/// (here the service-managed key counts too).
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Principals (users and services).
pub const DEFAULT_MAX_PRINCIPALS: usize = 10_000;

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            keys: DEFAULT_MAX_KEYS,
            principals: DEFAULT_MAX_PRINCIPALS,
        }
    }
}

/// Work done under the state lock for one request.
pub struct Ctx<'a> {
    kms: &'a Kms,
    pub event: AuditEvent,
    caller: Option<Caller>,
    /// The newest batch of changes this call could have observed.
    seen: u64,
    /// The batches of changes this call queued, held until its record is
    /// durable.
    own: Vec<u64>,
    /// The alias the request named its key by, for `kms:RequestAlias`.
    request_alias: Option<String>,
}

impl Kms {
    /// Loads the store into memory and checks that `root` is the root key
    /// this store's material was wrapped with.
    pub fn open(
        store: Arc<dyn Store>,
        root: Arc<dyn RootKey>,
        audit: AuditLog,
        clock: Arc<dyn Clock>,
    ) -> Result<Kms, KmsError> {
        Self::open_then(store, root, clock, || Ok(audit))
    }

    /// [`Kms::open`] that opens the audit log (`audit`) only once the store
    /// is loaded and the root key found to be its own: a wrong root key is
    /// named as such, not as audit checkpoints that do not verify (they are
    /// keyed from the root key too).
    pub fn open_then<E: From<KmsError>>(
        store: Arc<dyn Store>,
        root: Arc<dyn RootKey>,
        clock: Arc<dyn Clock>,
        audit: impl FnOnce() -> Result<AuditLog, E>,
    ) -> Result<Kms, E> {
        let snapshot = store.load().map_err(KmsError::from)?;
        let mut state = State::default();
        for mutation in snapshot.into_mutations() {
            state.apply(&mutation).map_err(KmsError::from)?;
        }
        let mut managed = BTreeMap::new();
        for (name, text) in policy::managed_policies() {
            let doc = PolicyDocument::parse(text, PolicyKind::Identity)
                .map_err(|e| KmsError::Internal(format!("managed policy {name}: {e}")))?;
            managed.insert(name.to_string(), Arc::new(doc));
        }
        match state.meta.get(ROOT_CHECK_META) {
            Some(wrapped) => {
                let check = root
                    .unwrap(ROOT_CHECK_LABEL, wrapped)
                    .map_err(|e| match e {
                        UnwrapError::Invalid => KmsError::Internal(
                            "the root key does not match this data directory: its key material \
                         was wrapped with a different root key"
                                .into(),
                        ),
                        UnwrapError::Unavailable(e) => KmsError::Internal(format!(
                            "cannot check the root key against this data directory: {e}"
                        )),
                    })?;
                if check.as_slice() != ROOT_CHECK_VALUE {
                    return Err(KmsError::Internal("root key check value mismatch".into()).into());
                }
            }
            None => {
                if !state.keys.is_empty() {
                    return Err(KmsError::Internal(
                        "store holds keys but no root key check value".into(),
                    )
                    .into());
                }
            }
        }
        let audit = audit()?;
        let committer = Arc::new(GroupCommitter::start(store));
        if !state.meta.contains_key(ROOT_CHECK_META) {
            let m = Mutation::PutMeta {
                name: ROOT_CHECK_META.into(),
                value: root
                    .wrap(ROOT_CHECK_LABEL, ROOT_CHECK_VALUE)
                    .map_err(|e| KmsError::Internal(format!("cannot use the root key: {e}")))?,
            };
            state.apply(&m).map_err(KmsError::from)?;
            committer.enqueue(vec![m]).map_err(KmsError::from)?;
        }
        Ok(Kms {
            state: RwLock::new(state),
            committer,
            root,
            audit,
            clock,
            managed,
            quotas: Quotas::default(),
            throttle: throttle::FailureThrottle::new(throttle::DEFAULT_AUTH_FAILURES_PER_MINUTE),
            page_bytes: std::sync::atomic::AtomicUsize::new(LIST_PAGE_BYTES),
            response_bytes: std::sync::atomic::AtomicUsize::new(usize::MAX),
        })
    }

    /// Makes list pages end before their items pass half of
    /// `max_message_bytes` (the largest answer the server sends), or
    /// [`LIST_PAGE_BYTES`] if that is smaller: a page is cut short, with a
    /// marker for the rest, rather than fail to be sent. A page always
    /// holds one item.
    pub fn set_response_limit(&self, max_message_bytes: usize) {
        self.page_bytes.store(
            (max_message_bytes / 2).min(LIST_PAGE_BYTES),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.response_bytes
            .store(max_message_bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The largest answer the server sends (`--max-message-bytes`): a
    /// larger one is refused as `LimitExceededException` naming the
    /// setting (a policy stored under a larger setting, many long
    /// `Authorize` answers), rather than fail in the transport.
    pub fn response_limit(&self) -> usize {
        self.response_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn page_bytes(&self) -> usize {
        self.page_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same service with other [`Quotas`] (those already exceeded stay
    /// as they are; only new keys and principals are refused).
    pub fn with_quotas(mut self, quotas: Quotas) -> Kms {
        self.quotas = quotas;
        self
    }

    /// The same service recording at most `per_minute` failed
    /// authentications a minute one by one per source address (0: every
    /// one); see [`throttle`].
    pub fn with_auth_failure_limit(mut self, per_minute: u32) -> Kms {
        self.throttle = throttle::FailureThrottle::new(per_minute);
        self
    }

    /// Writes one audit record per source address for the failed
    /// authentications counted since the last time (see [`throttle`]),
    /// and waits until they are durable. Run by the server every few
    /// seconds and when it stops.
    pub async fn record_unrecorded_failures(&self) -> Result<usize, KmsError> {
        if self.audit.fault().is_some() {
            // Nothing can be recorded until a restart; the counts stay
            // (bounded) and the service log has why.
            return Ok(0);
        }
        let counts = self.throttle.take();
        if counts.is_empty() {
            return Ok(0);
        }
        let rate = self.throttle.per_minute();
        let events: Vec<AuditEvent> = counts
            .iter()
            .map(|(source, u)| {
                let (first, last) = (throttle::utc(u.first), throttle::utc(u.last));
                AuditEvent {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    event_name: UNRECORDED_FAILURES_EVENT.into(),
                    source_address: Some(source.describe()),
                    decision: "Unauthenticated".into(),
                    error_code: Some("ThrottlingException".into()),
                    error_message: Some(format!(
                        "{} call(s) from {} failed authentication between {first} and {last}, \
                         past {rate} a minute, and were refused without a record each",
                        u.calls,
                        source.describe()
                    )),
                    ..AuditEvent::default()
                }
            })
            .collect();
        let n = events.len();
        if let Err(e) = self.settle(events, vec![]).await {
            // The log failed: the service refuses everything from now on.
            // The counts go to the service log instead.
            for (source, u) in &counts {
                tracing::error!(
                    source = %source.describe(),
                    calls = u.calls,
                    first = %throttle::utc(u.first),
                    last = %throttle::utc(u.last),
                    "failed authentications counted but not recorded: the audit log failed"
                );
            }
            return Err(e);
        }
        Ok(n)
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Why the service refuses calls until it is restarted, if it does:
    /// its audit log or its key store failed to make something durable.
    /// (Health checks report it.)
    pub fn fault(&self) -> Option<String> {
        self.audit.fault().or_else(|| {
            self.committer.is_poisoned().then(|| {
                "a key store commit failed (or a change lost its audit record); every change is refused until kms-service is restarted".to_string()
            })
        })
    }

    /// The newest audit checkpoint the store has recorded (0: none), and
    /// the record hash it gave (not known for an anchor stored before
    /// hashes were).
    fn audit_anchor(&self) -> (u64, Option<[u8; 32]>) {
        let state = self.read_state();
        let Some(value) = state.meta.get(AUDIT_ANCHOR_META) else {
            return (0, None);
        };
        let sequence = value
            .get(..8)
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_be_bytes);
        let hash = value.get(8..).and_then(|v| <[u8; 32]>::try_from(v).ok());
        (sequence, hash)
    }

    /// The record hash the audit log's checkpoint file gives `sequence`.
    async fn checkpointed_hash(&self, sequence: u64) -> Result<Option<[u8; 32]>, KmsError> {
        let audit = self.audit.clone();
        tokio::task::spawn_blocking(move || audit.checkpointed_hash(sequence))
            .await
            .map_err(|e| KmsError::Internal(format!("reading the audit checkpoints failed: {e}")))?
            .map_err(|e| KmsError::Internal(format!("cannot read the audit checkpoints: {e}")))
    }

    /// Refuses an audit log that is not the one this key store follows: it
    /// ends before the newest checkpoint the store recorded
    /// ([`Kms::anchor_audit`]), or its checkpoints give that record another
    /// hash, or none (another log: an older copy put back, or another
    /// deployment's). Either the log or its checkpoint file was cut short,
    /// replaced, moved or deleted, which a log that verifies on its own
    /// cannot show. With `accept_new_log`, the gap is recorded as the log's
    /// next record and the store follows the log from now on.
    pub async fn check_audit_anchor(&self, accept_new_log: bool) -> Result<(), KmsError> {
        let ((anchor, anchor_hash), have) = (self.audit_anchor(), self.audit.last_checkpoint());
        let problem = if have < anchor {
            Some(format!(
                "the audit log's newest checkpoint is record {have}, but this key store saw a checkpoint of record {anchor}"
            ))
        } else {
            match anchor_hash {
                Some(expected) if anchor > 0 => match self.checkpointed_hash(anchor).await? {
                    Some(found) if found == expected => None,
                    Some(_) => Some(format!(
                        "the audit log's checkpoint of record {anchor} names another record than the one this key store saw checkpointed there: this is another log"
                    )),
                    None => Some(format!(
                        "the audit log has no checkpoint of record {anchor}, which this key store saw checkpointed: this is another log"
                    )),
                },
                _ => None,
            }
        };
        let Some(problem) = problem else {
            return Ok(());
        };
        if !accept_new_log {
            return Err(KmsError::InvalidState(format!(
                "{problem}: the audit log or its checkpoint file (in the audit directory, --audit-dir / KMS_AUDIT_DIR) was cut short, \
                 replaced, moved or deleted; restore both from backup, \
                 or (only if that is impossible) start with --audit-accept-new-log (KMS_AUDIT_ACCEPT_NEW_LOG=true) to record the gap and go on"
            )));
        }
        let event = AuditEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            event_name: "AcceptAuditLog".into(),
            principal: Some(SERVICE_PRINCIPAL.into()),
            decision: "Allow".into(),
            error_message: Some(format!(
                "the key store saw a checkpoint of record {anchor}; this log's newest checkpoint was record {have} ({problem})"
            )),
            ..AuditEvent::default()
        };
        tracing::warn!(
            anchor,
            have,
            problem,
            "accepting an audit log that is not the one the store follows"
        );
        self.settle(vec![event], vec![]).await?;
        self.set_audit_anchor(have).await
    }

    /// Records the audit log's newest checkpoint (its sequence and record
    /// hash) in the store, when it moved, so that a later start can tell a
    /// log cut short or replaced. Called at start-up, by maintenance and
    /// after the log is closed.
    pub async fn anchor_audit(&self) -> Result<(), KmsError> {
        let have = self.audit.last_checkpoint();
        if have <= self.audit_anchor().0 {
            return Ok(());
        }
        self.set_audit_anchor(have).await
    }

    async fn set_audit_anchor(&self, sequence: u64) -> Result<(), KmsError> {
        let mut value = sequence.to_be_bytes().to_vec();
        if sequence > 0 {
            match self.checkpointed_hash(sequence).await? {
                Some(hash) => value.extend_from_slice(&hash),
                // Not readable yet (written as this looked): anchored on
                // a later pass.
                None => return Ok(()),
            }
        }
        let seq = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let m = Mutation::PutMeta {
                name: AUDIT_ANCHOR_META.into(),
                value,
            };
            state.apply(&m)?;
            self.committer.enqueue(vec![m])?
        };
        Ok(self.committer.wait_durable(seq).await?)
    }

    fn now(&self) -> i64 {
        self.clock.now()
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers a request that could not even be read (an unknown enum
    /// value, contradictory fields) like any other: the caller is
    /// authenticated first (a missing or bad credential is reported as
    /// such), the call is audited, and `error` is the answer.
    pub async fn refuse<T>(
        &self,
        creds: &Credentials,
        event_name: &str,
        error: KmsError,
    ) -> Result<T, KmsError> {
        self.run(creds, event_name, |_| Err(error)).await
    }

    /// Runs one request: authenticates the caller, decides what the call
    /// was made conditional on (`x-authorize`), calls `work`, then writes
    /// the audit record and waits for durability of everything the answer
    /// depends on.
    async fn run<T>(
        &self,
        creds: &Credentials,
        event_name: &str,
        work: impl FnOnce(&mut Ctx<'_>) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let mut ctx = Ctx {
            kms: self,
            event: AuditEvent {
                request_id: creds.request_id.clone(),
                event_name: event_name.to_string(),
                source_address: creds.source_address.clone(),
                ..AuditEvent::default()
            },
            caller: None,
            seen: 0,
            own: Vec::new(),
            request_alias: None,
        };
        let result = {
            let auth = {
                let state = self.read_state();
                ctx.seen = self.committer.last_enqueued();
                authenticate(&state, creds)
            };
            match auth {
                Ok(caller) => {
                    ctx.event.principal = Some(caller.principal.clone());
                    ctx.event.via_service = caller.via_service.clone();
                    let _ = creds.principal.set(caller.principal.clone());
                    ctx.caller = Some(caller);
                    let result = ctx.require(&creds.required).and_then(|()| work(&mut ctx));
                    ctx.event.put_condition_resources_first();
                    result
                }
                Err((e, established)) => {
                    // Whoever did authenticate is named, so a refused
                    // forwarding is attributed to the service (or the
                    // caller) that attempted it.
                    ctx.event.principal = established.principal;
                    ctx.event.via_service = established.via_service;
                    Err(e)
                }
            }
        };
        let event = std::mem::take(&mut ctx.event);
        let own = std::mem::take(&mut ctx.own);
        if ctx.caller.is_none()
            && own.is_empty()
            && let Err(KmsError::Unauthenticated { of, .. }) = &result
            && !self.throttle.record(
                throttle::Source::of(creds, *of == CredentialOf::Forwarded),
                self.now(),
            )
        {
            // Past the rate for its address: counted, recorded with the
            // others by `record_unrecorded_failures`. It saw nothing.
            return result;
        }
        self.finish(event, ctx.seen, own, result).await
    }

    /// Completes a call: makes its audit record durable, then lets the
    /// changes it queued (`own`, held until now) be committed, and answers
    /// once everything it could have observed (`seen`) is durable. A record
    /// that cannot be made durable refuses the call and abandons every
    /// change not yet committed, so no change is ever stored without its
    /// record.
    async fn finish<T>(
        &self,
        mut event: AuditEvent,
        seen: u64,
        own: Vec<u64>,
        result: Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        complete(&mut event, result.as_ref().map(drop));
        self.settle(vec![event], own).await?;
        self.committer.wait_durable(seen).await?;
        result
    }

    /// Makes `events` durable, in order, then releases the held batches
    /// `own`. With batches to release, this runs as a task of its own, so
    /// it ends the same way when the caller goes away (a cancelled
    /// request): held batches are always either released or abandoned.
    async fn settle(&self, events: Vec<AuditEvent>, own: Vec<u64>) -> Result<(), KmsError> {
        let holds = !own.is_empty();
        let (audit, committer) = (self.audit.clone(), self.committer.clone());
        let job = async move {
            let recorded = if let [_] = events.as_slice() {
                let event = events.into_iter().next().expect("one event");
                audit.append(event).await.map(drop)
            } else {
                audit.append_all(events).await.map(drop)
            };
            if let Err(e) = recorded {
                // Changes without their records must never be stored.
                if holds {
                    committer.abandon();
                }
                tracing::error!(error = %e, "audit record could not be made durable; refusing request");
                return Err(KmsError::Unavailable(
                    "the audit log cannot record this request, so it was refused; see the service log"
                        .into(),
                ));
            }
            for seq in own {
                committer.release(seq);
            }
            Ok(())
        };
        if !holds {
            return job.await;
        }
        match tokio::spawn(job).await {
            Ok(settled) => settled,
            Err(e) => {
                // Neither released nor known to be recorded: abandoned.
                self.committer.abandon();
                Err(KmsError::Internal(format!(
                    "recording the call failed: {e}"
                )))
            }
        }
    }
}

/// Completes a call's record with its outcome.
fn complete(event: &mut AuditEvent, result: Result<(), &KmsError>) {
    match result {
        Ok(()) => {
            if event.decision.is_empty() {
                event.decision = "Allow".into();
            }
        }
        Err(e) => {
            event.error_code = Some(e.reason().to_string());
            // The message the caller gets: bounded, since many quote what
            // the request sent, which would otherwise make a record as
            // large as the request.
            event.error_message = Some(lockbox_proto::status_message::bounded(e.to_string()));
            if event.decision.is_empty() {
                event.decision = match e {
                    KmsError::Unauthenticated { .. } => "Unauthenticated",
                    KmsError::AccessDenied(_) => "Deny",
                    _ => "Error",
                }
                .into();
            }
        }
    }
}

impl Drop for Ctx<'_> {
    /// Changes queued by a call that never reached [`Kms::finish`] (its
    /// work panicked) have no record and never will: they are abandoned,
    /// and the service refuses everything until restarted, since memory is
    /// ahead of what may be stored.
    fn drop(&mut self) {
        if !self.own.is_empty() {
            tracing::error!(
                event = %self.event.event_name,
                "a call ended without its audit record; refusing all further requests"
            );
            self.kms.committer.abandon();
        }
    }
}

/// Parses `Bearer <token>`.
fn bearer(value: &str) -> Result<&str, AuthFailure> {
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthFailure::Malformed)?
        .trim();
    if token.is_empty() || token.len() > 256 {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

fn auth_error(failure: AuthFailure, of: CredentialOf) -> KmsError {
    let whose = match of {
        CredentialOf::Caller => "credential",
        CredentialOf::Service => "service's own credential (authorization)",
        CredentialOf::Forwarded => "caller's credential (forwarded in x-on-behalf-of)",
    };
    let message = match failure {
        AuthFailure::Missing => {
            format!("missing {whose}: send metadata \"authorization: Bearer <token>\"")
        }
        AuthFailure::Malformed => format!(
            "malformed {whose}: expected \"Bearer <token>\", sent once, with a token of 1 to 256 visible ASCII characters"
        ),
        AuthFailure::Unknown => format!("the {whose} is not a valid access token"),
        AuthFailure::Revoked => format!("the {whose} has been revoked"),
    };
    KmsError::Unauthenticated {
        failure,
        of,
        message,
    }
}

/// Resolves a token to its principal; `of` names it in errors.
fn token_principal(
    state: &State,
    header: &str,
    of: CredentialOf,
) -> Result<(String, String, PrincipalKind), KmsError> {
    let token = bearer(header).map_err(|f| auth_error(f, of))?;
    let record = state
        .tokens
        .get(&token_digest(token))
        .ok_or_else(|| auth_error(AuthFailure::Unknown, of))?;
    if record.revoked.is_some() {
        return Err(auth_error(AuthFailure::Revoked, of));
    }
    let principal = state
        .principals
        .get(&record.principal)
        .ok_or_else(|| auth_error(AuthFailure::Unknown, of))?;
    Ok((
        record.principal.clone(),
        record.token_id.clone(),
        principal.record.kind,
    ))
}

fn authenticate(state: &State, creds: &Credentials) -> Result<Caller, (KmsError, Established)> {
    let own = if creds.on_behalf_of.is_some() {
        CredentialOf::Service
    } else {
        CredentialOf::Caller
    };
    let nobody = |e| (e, Established::default());
    let header = creds
        .authorization
        .as_deref()
        .ok_or_else(|| nobody(auth_error(AuthFailure::Missing, own)))?;
    let (principal, token_id, kind) = token_principal(state, header, own).map_err(nobody)?;
    let Some(forwarded) = creds.on_behalf_of.as_deref() else {
        return Ok(Caller {
            principal,
            token_id,
            via_service: None,
        });
    };
    if kind != PrincipalKind::Service {
        let error = KmsError::AccessDenied(format!(
            "User: {principal} is not a service principal and may not act on behalf of another principal (x-on-behalf-of)"
        ));
        return Err((
            error,
            Established {
                principal: Some(principal),
                via_service: None,
            },
        ));
    }
    let service = || Established {
        principal: None,
        via_service: Some(principal.clone()),
    };
    let (end_principal, end_token, _) =
        token_principal(state, forwarded, CredentialOf::Forwarded).map_err(|e| (e, service()))?;
    // A service may not forward its own credential: that would be decided
    // as "<service> via <service>", which an "any principal, only via the
    // service" statement allows, so one leaked service token would be
    // enough to use customer keys with no caller behind it. (Another
    // service calling through it, with its own token, is a caller like any
    // other.)
    if end_principal == principal {
        let error = KmsError::AccessDenied(format!(
            "User: {principal} may not act on behalf of itself; x-on-behalf-of must carry the credential of the caller it serves"
        ));
        return Err((
            error,
            Established {
                principal: Some(end_principal),
                via_service: Some(principal),
            },
        ));
    }
    Ok(Caller {
        principal: end_principal,
        token_id: end_token,
        via_service: Some(principal),
    })
}

/// What a refused authentication did establish, for its record: the
/// service whose forwarded credential was refused (`via_service`), or the
/// caller that may not forward one (`principal`).
#[derive(Default)]
struct Established {
    principal: Option<String>,
    via_service: Option<String>,
}

/// A refused authorization: the error to answer with, and whether a Deny
/// statement matched (as opposed to nothing allowing).
struct Denial {
    error: KmsError,
    explicit: bool,
}

/// What a request is about, for authorization.
enum Target<'a> {
    Key(&'a KeyEntry),
    /// A non-key resource (`*`, `table/orders`, `user/bob`): identity
    /// policies alone decide.
    Resource(&'a str),
}

impl<'a> Ctx<'a> {
    fn caller(&self) -> &Caller {
        self.caller
            .as_ref()
            .expect("work runs only after authentication")
    }

    pub fn principal(&self) -> &str {
        &self.caller().principal
    }

    fn state(&mut self) -> RwLockReadGuard<'a, State> {
        let guard = self.kms.read_state();
        self.seen = self.seen.max(self.kms.committer.last_enqueued());
        guard
    }

    /// Applies mutations built by `work` from the current state, atomically
    /// with respect to other writers, and queues them for commit.
    fn write<T>(
        &mut self,
        work: impl FnOnce(&mut Self, &State) -> Result<(T, Vec<Mutation>), KmsError>,
    ) -> Result<T, KmsError> {
        let mut state = self.kms.state.write().unwrap_or_else(|e| e.into_inner());
        let (value, mutations) = work(self, &state)?;
        if mutations.is_empty() {
            self.seen = self.seen.max(self.kms.committer.last_enqueued());
            return Ok(value);
        }
        for m in &mutations {
            state
                .apply(m)
                .map_err(|e| KmsError::Internal(e.to_string()))?;
        }
        self.seen = self.kms.committer.enqueue_held(mutations)?;
        self.own.push(self.seen);
        Ok(value)
    }

    fn condition_context(&self, context: &EncryptionContext) -> ConditionContext {
        let caller = self.caller();
        let mut c = ConditionContext::new();
        c.set("kms:CallerPrincipal", caller.principal.clone());
        if let Some(via) = &caller.via_service {
            c.set("kms:ViaService", via.clone());
        }
        // Condition keys ignore case, so context keys that differ only by
        // case (possible in a ciphertext made before such contexts were
        // refused) all count: a Deny on any of their values applies.
        for (k, v) in context {
            c.add(&format!("kms:EncryptionContext:{k}"), v.clone());
        }
        c.set_multi(
            "kms:EncryptionContextKeys",
            context.keys().cloned().collect(),
        );
        if let Some(alias) = &self.request_alias {
            c.set("kms:RequestAlias", alias.clone());
        }
        c
    }

    /// [`resolve_key`], remembering whether the key was named by an alias
    /// (`kms:RequestAlias` of the decisions that follow).
    fn resolve<'s>(&mut self, state: &'s State, key_id: &str) -> Result<&'s KeyEntry, KmsError> {
        self.request_alias = key_id.starts_with("alias/").then(|| key_id.to_string());
        resolve_key(state, key_id)
    }

    /// Decides `action` on `target` for the caller and records the decision
    /// in the audit event. Denial is an error naming the action, the
    /// resource and why, in AWS's words.
    fn authorize(
        &mut self,
        state: &State,
        action: &str,
        target: Target<'_>,
        context: &EncryptionContext,
        extra: &[(&str, Vec<String>)],
    ) -> Result<(), KmsError> {
        self.decide(state, action, target, context, extra)
            .map_err(|denial| denial.error)
    }

    /// [`Ctx::authorize`], keeping whether a denial was explicit.
    fn decide(
        &mut self,
        state: &State,
        action: &str,
        target: Target<'_>,
        context: &EncryptionContext,
        extra: &[(&str, Vec<String>)],
    ) -> Result<(), Denial> {
        self.decide_with(
            state,
            action,
            target,
            context,
            extra,
            &|grant, principal| grant.allows(principal, action, context),
        )
    }

    /// [`Ctx::decide`] where `grant_allows(grant, principal)` says which of
    /// the key's grants, if any, allow the call.
    fn decide_with(
        &mut self,
        state: &State,
        action: &str,
        target: Target<'_>,
        context: &EncryptionContext,
        extra: &[(&str, Vec<String>)],
        grant_allows: &dyn Fn(&GrantRecord, &str) -> bool,
    ) -> Result<(), Denial> {
        let mut conditions = self.condition_context(context);
        if let Target::Key(entry) = &target {
            conditions.set("kms:KeySpec", entry.record.spec.name().to_string());
        }
        for (key, values) in extra {
            conditions.set_multi(key, values.clone());
        }
        let principal = self.caller().principal.clone();
        let mut identity: Vec<(String, Arc<PolicyDocument>)> = Vec::new();
        if let Some(entry) = state.principals.get(&principal) {
            for name in &entry.record.attached {
                if let Some(doc) = self.kms.managed.get(name) {
                    identity.push((name.clone(), doc.clone()));
                }
            }
            identity.extend(entry.inline.iter().cloned());
        }
        let identity_refs: Vec<(&str, &PolicyDocument)> = identity
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_ref()))
            .collect();
        let (resource, key_policy, grant) = match &target {
            Target::Key(entry) => {
                let grant = entry
                    .grants_of(&principal)
                    .filter_map(|id| state.grants.get(id))
                    .find(|g| grant_allows(g, &principal))
                    .map(|g| g.grant_id.clone());
                (entry.record.resource(), Some(entry.policy.as_ref()), grant)
            }
            Target::Resource(r) => (r.to_string(), None, None),
        };
        let request = Request {
            principal: &principal,
            action,
            resource: &resource,
            context: &conditions,
        };
        let decision = policy::evaluate(
            &request,
            &Evaluation {
                key_policy,
                identity_policies: &identity_refs,
                grant: grant.as_deref(),
            },
        );
        match decision {
            Decision::Allow { via, matched } => {
                self.event.decision = "Allow".into();
                self.event.matched_statements = matched;
                if via == AllowedBy::Grant {
                    self.event.grant_id = grant;
                }
                Ok(())
            }
            Decision::ExplicitDeny { matched } => {
                self.event.decision = "Deny".into();
                self.event.matched_statements = matched;
                Err(Denial {
                    explicit: true,
                    error: KmsError::AccessDenied(format!(
                        "User: {principal} is not authorized to perform: {action} on resource: {resource} with an explicit deny in a policy"
                    )),
                })
            }
            Decision::ImplicitDeny { reason } => {
                self.event.decision = "Deny".into();
                self.event.matched_statements.clear();
                Err(Denial {
                    explicit: false,
                    error: KmsError::AccessDenied(format!(
                        "User: {principal} is not authorized to perform: {action} on resource: {resource} {}",
                        reason.explain(action)
                    )),
                })
            }
        }
    }

    /// Validates grant tokens: each must be well-formed and name a grant
    /// that exists.
    fn check_grant_tokens(&self, state: &State, tokens: &[String]) -> Result<(), KmsError> {
        if tokens.len() > crate::grants::MAX_GRANT_TOKENS {
            return Err(KmsError::validation(format!(
                "at most {} grant tokens may be sent",
                crate::grants::MAX_GRANT_TOKENS
            )));
        }
        for token in tokens {
            let known = crate::grants::grant_id_from_token(token)
                .is_some_and(|id| state.grants.contains_key(id));
            if !known {
                return Err(KmsError::InvalidGrantToken(
                    "a grant token is malformed or names a grant that does not exist".into(),
                ));
            }
        }
        Ok(())
    }

    /// Unwraps the backing key of one version.
    fn backing_key(&self, entry: &KeyEntry, version: u32) -> Result<SecretBytes, KmsError> {
        let v = entry.versions.get(&version).ok_or_else(|| {
            KmsError::Internal(format!(
                "key {} has no version {version}",
                entry.record.key_id
            ))
        })?;
        self.kms
            .root
            .unwrap(&wrap_label(&entry.record.key_id, version), &v.wrapped)
            .map_err(|e| match e {
                UnwrapError::Unavailable(e) => KmsError::from(e),
                UnwrapError::Invalid => KmsError::Internal(format!(
                    "backing key of {} version {version} failed to unwrap",
                    entry.record.key_id
                )),
            })
    }
}

/// Finds a key by id, `key/<id>` or `alias/<name>`.
fn resolve_key<'s>(state: &'s State, key_id: &str) -> Result<&'s KeyEntry, KmsError> {
    if key_id.is_empty() {
        return Err(KmsError::validation(
            "key_id is required: a key id, key/<id> or alias/<name>",
        ));
    }
    if key_id.len() > 2048 {
        return Err(KmsError::validation(
            "key_id is longer than 2048 characters",
        ));
    }
    if key_id.starts_with("alias/") {
        let alias = state
            .aliases
            .get(key_id)
            .ok_or_else(|| KmsError::NotFound(format!("Alias {key_id} is not found.")))?;
        return state
            .keys
            .get(&alias.key_id)
            .ok_or_else(|| KmsError::NotFound(format!("Alias {key_id} is not found.")));
    }
    let id = key_id.strip_prefix("key/").unwrap_or(key_id);
    state
        .keys
        .get(id)
        .ok_or_else(|| KmsError::NotFound(format!("Key '{id}' does not exist")))
}

/// Refuses cryptographic use of a key that is not enabled.
fn require_enabled(record: &KeyRecord) -> Result<(), KmsError> {
    match record.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KmsError::Disabled {
            key_id: record.key_id.clone(),
        }),
        KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
            "key {} is pending deletion, so it cannot be used",
            record.key_id
        ))),
    }
}

fn require_usage(record: &KeyRecord, usage: KeyUsage, operation: &str) -> Result<(), KmsError> {
    if record.spec.usage() == usage {
        Ok(())
    } else {
        Err(KmsError::InvalidKeyUsage(format!(
            "{operation} needs a key with usage {}, but key {} has usage {} (key spec {})",
            usage.name(),
            record.key_id,
            record.spec.usage().name(),
            record.spec.name()
        )))
    }
}

/// The most items a page of most list calls holds.
const MAX_PAGE: u32 = 1000;
/// The most items a page of ListGrants or ListAliases holds, as in AWS: a
/// grant may carry 8 KiB of constraints.
const MAX_SMALL_PAGE: u32 = 100;

/// Validates a `limit` of a list call whose pages hold at most `max`
/// items: 0 means the default, 100.
fn page_limit(limit: u32, max: u32) -> Result<usize, KmsError> {
    match limit {
        0 => Ok(100.min(max) as usize),
        _ if limit <= max => Ok(limit as usize),
        _ => Err(KmsError::validation(format!(
            "limit {limit} is out of range; use 1–{max}"
        ))),
    }
}

/// A list call's `marker` (`None` for the first page), refused with
/// InvalidMarkerException unless it has the shape of what that call
/// returns (`what` names it), so a mistyped marker is an error rather than
/// a silently empty page.
fn marker<'m>(
    marker: &'m str,
    what: &str,
    shape: impl Fn(&str) -> bool,
) -> Result<Option<&'m str>, KmsError> {
    if marker.is_empty() {
        return Ok(None);
    }
    if shape(marker) {
        Ok(Some(marker))
    } else {
        Err(invalid_marker(marker, what))
    }
}

/// The refusal of a `marker` no call returning `what` could have made.
fn invalid_marker(marker: &str, what: &str) -> KmsError {
    KmsError::InvalidMarker(format!(
        "marker {marker:?} is not one this call returned (it returns {what}); pass the next_marker of the previous page, or none for the first"
    ))
}

/// The range of a map (or set) keyed by strings after `marker` (all of it
/// without one), so a page's start is found through the tree rather than by
/// walking past the entries before it (a filtered listing still walks past
/// the entries after it that the filter leaves out).
fn after(marker: Option<&str>) -> (std::ops::Bound<&str>, std::ops::Bound<&str>) {
    (
        marker.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
        std::ops::Bound::Unbounded,
    )
}

/// Ends `page` before its items (as `size` counts them) pass `budget`,
/// keeping at least one, and sets `truncated` if it dropped any.
fn fit_page<T>(page: &mut Vec<T>, truncated: &mut bool, budget: usize, size: impl Fn(&T) -> usize) {
    let mut bytes = 0;
    if let Some(over) = page.iter().position(|item| {
        bytes += size(item);
        bytes > budget
    }) {
        let kept = over.max(1);
        *truncated |= kept < page.len();
        page.truncate(kept);
    }
}

/// One page of `items` after `marker` (exclusive), by `key`.
fn paginate<T, K: Ord>(
    items: impl Iterator<Item = T>,
    key: impl Fn(&T) -> K,
    marker: Option<K>,
    limit: usize,
) -> (Vec<T>, bool) {
    let mut page: Vec<T> = items
        .filter(|item| marker.as_ref().is_none_or(|m| key(item) > *m))
        .take(limit + 1)
        .collect();
    let truncated = page.len() > limit;
    page.truncate(limit);
    (page, truncated)
}

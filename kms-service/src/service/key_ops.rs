//! Key management: create, describe, list, enable/disable, deletion
//! windows, aliases, key policies, rotation and tags.

use std::collections::BTreeMap;

use super::{Credentials, Ctx, Kms, MAX_PAGE, MAX_SMALL_PAGE, Target, page_limit, paginate};
use crate::crypto::context::EncryptionContext;
use crate::crypto::random_bytes;
use crate::error::KmsError;
use crate::keys::{
    AliasRecord, DEFAULT_PENDING_WINDOW_DAYS, DEFAULT_ROTATION_PERIOD_DAYS, KeyRecord, KeySpec,
    KeyState, KeyUsage, KeyVersionRecord, MAX_DESCRIPTION_LEN, MAX_ON_DEMAND_ROTATIONS, MAX_TAGS,
    PENDING_WINDOW_DAYS, ROTATION_PERIOD_DAYS, SECONDS_PER_DAY, VersionOrigin,
    refuse_service_managed_alias, validate_alias_name, wrap_label,
};
use crate::policy::{self, PolicyDocument, PolicyKind};
use crate::state::State;
use crate::store::Mutation;

/// What `CreateKey` asks for.
#[derive(Debug, Clone)]
pub struct CreateKeyInput {
    pub description: String,
    pub spec: KeySpec,
    pub usage: Option<KeyUsage>,
    pub policy: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// One page of a list call.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_marker: Option<String>,
}

/// The rotation settings of a key.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationStatus {
    pub key_id: String,
    pub enabled: bool,
    pub period_days: u32,
    pub next_rotation: Option<i64>,
}

const NO_CONTEXT: &EncryptionContext = &BTreeMap::new();

pub(super) fn validate_policy(text: &str) -> Result<PolicyDocument, KmsError> {
    PolicyDocument::parse(text, PolicyKind::Key)
        .map_err(|e| KmsError::MalformedPolicy(format!("key policy: {e}")))
}

/// Room in an answer for a key's metadata besides its description.
const METADATA_ROOM: usize = 2048;

/// A description of at most [`MAX_DESCRIPTION_LEN`] characters (counted as
/// AWS and this service's tag checks count them, not bytes), and short
/// enough in bytes that the key's metadata fits the answers the server
/// sends (`response_limit`): one that did not would be stored, and then
/// every answer carrying it refused.
fn validate_description(description: &str, response_limit: usize) -> Result<(), KmsError> {
    let chars = description.chars().count();
    if chars > MAX_DESCRIPTION_LEN {
        return Err(KmsError::validation(format!(
            "description is {chars} characters; at most {MAX_DESCRIPTION_LEN} are allowed"
        )));
    }
    let most = response_limit.saturating_sub(METADATA_ROOM);
    if description.len() > most {
        return Err(KmsError::LimitExceeded(format!(
            "description is {} bytes; the key's metadata must fit the {response_limit}-byte answers kms-service sends (--max-message-bytes / KMS_MAX_MESSAGE_BYTES), which leaves {most} bytes for it: shorten it or raise that setting",
            description.len()
        )));
    }
    Ok(())
}

fn apply_tags(
    tags: &mut BTreeMap<String, String>,
    new: &[(String, String)],
) -> Result<(), KmsError> {
    for (k, v) in new {
        // Counted in characters, as AWS does (a key of 128 non-ASCII
        // characters is more than 128 bytes).
        if k.is_empty() || k.chars().count() > 128 {
            return Err(KmsError::Tag(format!(
                "tag key {k:?} must have 1–128 characters"
            )));
        }
        reserved_tag_key(k)?;
        if v.chars().count() > 256 {
            return Err(KmsError::Tag(format!(
                "tag value for {k:?} must have at most 256 characters"
            )));
        }
        tags.insert(k.clone(), v.clone());
    }
    if tags.len() > MAX_TAGS {
        return Err(KmsError::LimitExceeded(format!(
            "a key may have at most {MAX_TAGS} tags"
        )));
    }
    Ok(())
}

/// Tag keys beginning with `aws:` are reserved, as in AWS (any case).
fn reserved_tag_key(key: &str) -> Result<(), KmsError> {
    if key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:")) {
        return Err(KmsError::Tag(format!(
            "tag key {key:?} begins with the reserved prefix \"aws:\"; choose another key"
        )));
    }
    Ok(())
}

pub(super) fn new_version_for(
    kms: &Kms,
    record: &KeyRecord,
    version: u32,
    origin: VersionOrigin,
    now: i64,
) -> Result<KeyVersionRecord, KmsError> {
    let material = random_bytes(record.spec.material_len());
    Ok(KeyVersionRecord {
        key_id: record.key_id.clone(),
        version,
        wrapped: kms
            .root
            .wrap(&wrap_label(&record.key_id, version), &material)?,
        created: now,
        origin,
    })
}

impl<'a> Ctx<'a> {
    /// Resolves a key and authorizes `action` on it; returns a copy of its
    /// record.
    fn key_for(
        &mut self,
        state: &State,
        key_id: &str,
        action: &str,
    ) -> Result<KeyRecord, KmsError> {
        let entry = self.resolve(state, key_id)?;
        self.event.key_id = Some(entry.record.key_id.clone());
        self.event.resources = vec![entry.record.resource()];
        self.authorize(state, action, Target::Key(entry), NO_CONTEXT, &[])?;
        Ok(entry.record.clone())
    }

    /// Authorizes `action`, then lets `change` edit the key record, and
    /// stores it.
    fn update_key(
        &mut self,
        key_id: &str,
        action: &str,
        change: impl FnOnce(&mut KeyRecord, i64) -> Result<(), KmsError>,
    ) -> Result<KeyRecord, KmsError> {
        let now = self.kms.now();
        self.write(|ctx, state| {
            let mut record = ctx.key_for(state, key_id, action)?;
            change(&mut record, now)?;
            Ok((record.clone(), vec![Mutation::PutKey(record)]))
        })
    }
}

pub(super) fn not_pending(record: &KeyRecord, what: &str) -> Result<(), KmsError> {
    if record.state == KeyState::PendingDeletion {
        return Err(KmsError::InvalidState(format!(
            "key {} is pending deletion; cancel the deletion before you {what}",
            record.key_id
        )));
    }
    Ok(())
}

/// The key policy of a service-managed key: anyone may use it, but only
/// through `service`; identity policies may only read its metadata. Like an
/// AWS managed key, nobody can change this policy. Through `service`, anyone
/// may also give `service` itself a grant for re-wrapping (ReEncrypt and
/// retiring the grant, never Decrypt), which is how a table moves from or
/// to this key.
pub fn service_managed_policy(service: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AllowReadViaIdentityPolicies", "Effect": "Allow", "Principal": {"AWS": "account"},
             "Action": ["kms:Describe*", "kms:Get*", "kms:List*"], "Resource": "*"},
            {"Sid": "AllowUseOnlyViaService", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
             "Resource": "*",
             "Condition": {"StringEquals": {"kms:ViaService": service}}},
            {"Sid": "AllowRewrapGrantsToTheServiceViaService", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": "kms:CreateGrant", "Resource": "*",
             "Condition": {
                 "StringEquals": {"kms:ViaService": service, "kms:GranteePrincipal": service},
                 "ForAllValues:StringEquals": {"kms:GrantOperations": ["ReEncryptFrom", "ReEncryptTo", "RetireGrant"]}}}
        ]
    })
    .to_string()
}

impl Kms {
    /// Creates the service-managed key behind `alias` unless the alias
    /// exists. Audited as the service itself.
    /// Brings the policy of an existing service-managed key up to the one
    /// this version writes (nobody can change it through the API). Only a
    /// key that kms-service created itself is touched. Audited as
    /// PutKeyPolicy by kms-service.
    async fn upgrade_service_managed_policy(
        &self,
        key_id: &str,
        service: &str,
    ) -> Result<(), KmsError> {
        let wanted = service_managed_policy(service);
        let seq = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = state.keys.get(key_id) else {
                return Ok(());
            };
            if entry.record.policy == wanted || entry.record.creator != super::SERVICE_PRINCIPAL {
                return Ok(());
            }
            validate_policy(&wanted)?;
            let mut record = entry.record.clone();
            record.policy = wanted;
            let mutations = vec![Mutation::PutKey(record)];
            for m in &mutations {
                state.apply(m)?;
            }
            self.committer.enqueue_held(mutations)?
        };
        let event = crate::audit::AuditEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            event_name: "PutKeyPolicy".into(),
            principal: Some(super::SERVICE_PRINCIPAL.into()),
            key_id: Some(key_id.to_string()),
            resources: vec![format!("key/{key_id}")],
            ..crate::audit::AuditEvent::default()
        };
        self.finish(event, seq, vec![seq], Ok(())).await?;
        tracing::info!(%key_id, "service-managed key policy brought up to date");
        Ok(())
    }

    pub async fn bootstrap_service_managed_key(
        &self,
        alias: &str,
        service: &str,
    ) -> Result<Option<String>, KmsError> {
        validate_alias_name(alias).map_err(KmsError::Validation)?;
        let now = self.now();
        let existing = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            state.aliases.get(alias).map(|a| a.key_id.clone())
        };
        if let Some(key_id) = existing {
            let creator = {
                let state = self.state.read().unwrap_or_else(|e| e.into_inner());
                state.keys.get(&key_id).map(|k| k.record.creator.clone())
            };
            if creator.as_deref() != Some(super::SERVICE_PRINCIPAL) {
                return Err(KmsError::InvalidState(format!(
                    "{alias} names key {key_id}, which kms-service did not create, so it cannot be {service}'s service-managed key; delete the alias (DeleteAlias) and start again to have kms-service create that key"
                )));
            }
            self.upgrade_service_managed_policy(&key_id, service)
                .await?;
            return Ok(None);
        }
        let (key_id, seq) = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if state.aliases.contains_key(alias) {
                return Ok(None);
            }
            let record = KeyRecord {
                key_id: uuid::Uuid::new_v4().to_string(),
                created: now,
                creator: super::SERVICE_PRINCIPAL.into(),
                description: format!("Service-managed key of {service}"),
                spec: KeySpec::SymmetricDefault,
                state: KeyState::Enabled,
                deletion_date: None,
                pending_window_days: 0,
                policy: service_managed_policy(service),
                tags: BTreeMap::new(),
                rotation_period_days: Some(DEFAULT_ROTATION_PERIOD_DAYS),
                next_rotation: Some(
                    now + i64::from(DEFAULT_ROTATION_PERIOD_DAYS) * SECONDS_PER_DAY,
                ),
                current_version: 1,
            };
            validate_policy(&record.policy)?;
            let version = new_version_for(self, &record, 1, VersionOrigin::Created, now)?;
            let mutations = vec![
                Mutation::PutKey(record.clone()),
                Mutation::PutKeyVersion(version),
                Mutation::PutAlias(AliasRecord {
                    alias_name: alias.to_string(),
                    key_id: record.key_id.clone(),
                    created: now,
                }),
            ];
            for m in &mutations {
                state.apply(m)?;
            }
            (record.key_id, self.committer.enqueue_held(mutations)?)
        };
        let event = crate::audit::AuditEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            event_name: "CreateKey".into(),
            principal: Some(super::SERVICE_PRINCIPAL.into()),
            key_id: Some(key_id.clone()),
            key_version: Some(1),
            resources: vec![format!("key/{key_id}"), alias.to_string()],
            ..crate::audit::AuditEvent::default()
        };
        self.finish(event, seq, vec![seq], Ok(())).await?;
        Ok(Some(key_id))
    }

    pub async fn create_key(
        &self,
        creds: &Credentials,
        input: CreateKeyInput,
    ) -> Result<KeyRecord, KmsError> {
        self.run(creds, "CreateKey", |ctx| {
            validate_description(&input.description, ctx.kms.response_limit())?;
            if let Some(usage) = input.usage
                && usage != input.spec.usage()
            {
                return Err(KmsError::validation(format!(
                    "key spec {} only supports key usage {}, not {}",
                    input.spec.name(),
                    input.spec.usage().name(),
                    usage.name()
                )));
            }
            let mut tags = BTreeMap::new();
            apply_tags(&mut tags, &input.tags)?;
            let principal = ctx.principal().to_string();
            let policy = match &input.policy {
                Some(text) if !text.is_empty() => text.clone(),
                _ => policy::default_key_policy(&principal),
            };
            let document = validate_policy(&policy)?;
            let key_id = uuid::Uuid::new_v4().to_string();
            let now = ctx.kms.now();
            ctx.write(|ctx, state| {
                // The spec asked for, as kms:KeySpec, so a policy may limit
                // which keys a principal creates.
                ctx.authorize(
                    state,
                    "kms:CreateKey",
                    Target::Resource("*"),
                    NO_CONTEXT,
                    &[("kms:KeySpec", vec![input.spec.name().to_string()])],
                )?;
                check_lockout(&document, &principal, &format!("key/{key_id}"), input.spec)?;
                let most = ctx.kms.quotas.keys;
                if state.keys.len() >= most {
                    return Err(KmsError::LimitExceeded(format!(
                        "this service already holds {} keys, the most it allows (--max-keys {most}); \
                         keys count until they are destroyed: schedule unused ones for deletion \
                         (ScheduleKeyDeletion; each frees its place once its pending window has \
                         passed) or raise --max-keys",
                        state.keys.len()
                    )));
                }
                let record = KeyRecord {
                    key_id,
                    created: now,
                    creator: principal,
                    description: input.description,
                    spec: input.spec,
                    state: KeyState::Enabled,
                    deletion_date: None,
                    pending_window_days: 0,
                    policy,
                    tags,
                    rotation_period_days: None,
                    next_rotation: None,
                    current_version: 1,
                };
                ctx.event.key_id = Some(record.key_id.clone());
                ctx.event.key_version = Some(1);
                ctx.event.resources = vec![record.resource()];
                let version = new_version_for(ctx.kms, &record, 1, VersionOrigin::Created, now)?;
                Ok((
                    record.clone(),
                    vec![Mutation::PutKey(record), Mutation::PutKeyVersion(version)],
                ))
            })
        })
        .await
    }

    pub async fn describe_key(
        &self,
        creds: &Credentials,
        key_id: &str,
        grant_tokens: &[String],
    ) -> Result<KeyRecord, KmsError> {
        self.run(creds, "DescribeKey", |ctx| {
            let state = ctx.state();
            ctx.check_grant_tokens(&state, grant_tokens)?;
            ctx.key_for(&state, key_id, "kms:DescribeKey")
        })
        .await
    }

    pub async fn list_keys(
        &self,
        creds: &Credentials,
        limit: u32,
        marker: &str,
    ) -> Result<Page<String>, KmsError> {
        self.run(creds, "ListKeys", |ctx| {
            let limit = page_limit(limit, MAX_PAGE)?;
            let state = ctx.state();
            ctx.authorize(
                &state,
                "kms:ListKeys",
                Target::Resource("*"),
                NO_CONTEXT,
                &[],
            )?;
            let marker = super::marker(marker, "key ids", |m| {
                uuid::Uuid::parse_str(m).is_ok_and(|u| u.hyphenated().to_string() == m)
            })?;
            let (mut items, mut truncated) = paginate(
                state
                    .keys
                    .range::<str, _>(super::after(marker))
                    .map(|(k, _)| k.as_str()),
                |k| *k,
                marker,
                limit,
            );
            // Each entry: the id, and the resource (`key/<id>`).
            super::fit_page(&mut items, &mut truncated, ctx.kms.page_bytes(), |k| {
                2 * k.len() + 16
            });
            let next_marker = truncated
                .then(|| items.last().map(|s| s.to_string()))
                .flatten();
            Ok(Page {
                items: items.into_iter().map(str::to_string).collect(),
                next_marker,
            })
        })
        .await
    }

    pub async fn update_key_description(
        &self,
        creds: &Credentials,
        key_id: &str,
        description: &str,
    ) -> Result<(), KmsError> {
        self.run(creds, "UpdateKeyDescription", |ctx| {
            validate_description(description, ctx.kms.response_limit())?;
            ctx.update_key(key_id, "kms:UpdateKeyDescription", |r, _| {
                not_pending(r, "change its description")?;
                r.description = description.to_string();
                Ok(())
            })
            .map(drop)
        })
        .await
    }

    pub async fn enable_key(&self, creds: &Credentials, key_id: &str) -> Result<(), KmsError> {
        self.run(creds, "EnableKey", |ctx| {
            ctx.update_key(key_id, "kms:EnableKey", |r, _| {
                not_pending(r, "enable it")?;
                r.state = KeyState::Enabled;
                Ok(())
            })
            .map(drop)
        })
        .await
    }

    pub async fn disable_key(&self, creds: &Credentials, key_id: &str) -> Result<(), KmsError> {
        self.run(creds, "DisableKey", |ctx| {
            ctx.update_key(key_id, "kms:DisableKey", |r, _| {
                not_pending(r, "disable it")?;
                r.state = KeyState::Disabled;
                Ok(())
            })
            .map(drop)
        })
        .await
    }

    pub async fn schedule_key_deletion(
        &self,
        creds: &Credentials,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> Result<KeyRecord, KmsError> {
        self.run(creds, "ScheduleKeyDeletion", |ctx| {
            let days = pending_window_in_days.unwrap_or(DEFAULT_PENDING_WINDOW_DAYS);
            if !PENDING_WINDOW_DAYS.contains(&days) {
                return Err(KmsError::validation(format!(
                    "pending_window_in_days {days} is out of range; use 7–30 (default 30)"
                )));
            }
            ctx.update_key(key_id, "kms:ScheduleKeyDeletion", |r, now| {
                if r.state == KeyState::PendingDeletion {
                    return Err(KmsError::InvalidState(format!(
                        "key {} is already pending deletion",
                        r.key_id
                    )));
                }
                r.state = KeyState::PendingDeletion;
                r.pending_window_days = days;
                r.deletion_date = Some(now + i64::from(days) * SECONDS_PER_DAY);
                Ok(())
            })
        })
        .await
    }

    pub async fn cancel_key_deletion(
        &self,
        creds: &Credentials,
        key_id: &str,
    ) -> Result<String, KmsError> {
        self.run(creds, "CancelKeyDeletion", |ctx| {
            ctx.update_key(key_id, "kms:CancelKeyDeletion", |r, _| {
                if r.state != KeyState::PendingDeletion {
                    return Err(KmsError::InvalidState(format!(
                        "key {} is not pending deletion",
                        r.key_id
                    )));
                }
                r.state = KeyState::Disabled;
                r.deletion_date = None;
                r.pending_window_days = 0;
                Ok(())
            })
            .map(|r| r.key_id)
        })
        .await
    }

    pub async fn create_alias(
        &self,
        creds: &Credentials,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), KmsError> {
        self.run(creds, "CreateAlias", |ctx| {
            validate_alias_name(alias_name).map_err(KmsError::Validation)?;
            refuse_service_managed_alias(alias_name, "created through the API")
                .map_err(KmsError::Validation)?;
            let now = ctx.kms.now();
            ctx.write(|ctx, state| {
                if target_key_id.starts_with("alias/") {
                    return Err(KmsError::validation(
                        "target_key_id must be a key id, not an alias",
                    ));
                }
                ctx.decide_condition(state, "kms:CreateAlias", alias_name)?;
                let key = ctx.key_for(state, target_key_id, "kms:CreateAlias")?;
                not_pending(&key, "give it an alias")?;
                if state.aliases.contains_key(alias_name) {
                    return Err(KmsError::AlreadyExists(format!(
                        "alias {alias_name} already exists"
                    )));
                }
                room_for_an_alias(state, &key.key_id)?;
                Ok((
                    (),
                    vec![Mutation::PutAlias(AliasRecord {
                        alias_name: alias_name.to_string(),
                        key_id: key.key_id,
                        created: now,
                    })],
                ))
            })
        })
        .await
    }

    pub async fn update_alias(
        &self,
        creds: &Credentials,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), KmsError> {
        self.run(creds, "UpdateAlias", |ctx| {
            refuse_service_managed_alias(alias_name, "pointed at another key")
                .map_err(KmsError::Validation)?;
            validate_alias_name(alias_name).map_err(KmsError::Validation)?;
            ctx.write(|ctx, state| {
                if target_key_id.starts_with("alias/") {
                    return Err(KmsError::validation(
                        "target_key_id must be a key id, not an alias",
                    ));
                }
                ctx.decide_condition(state, "kms:UpdateAlias", alias_name)?;
                let alias = state
                    .aliases
                    .get(alias_name)
                    .ok_or_else(|| KmsError::NotFound(format!("Alias {alias_name} is not found.")))?
                    .clone();
                let current = ctx.key_for(state, &alias.key_id, "kms:UpdateAlias")?;
                let key = ctx.key_for(state, target_key_id, "kms:UpdateAlias");
                // The record names both keys, whichever was refused.
                let new_resource = ctx.event.resources.pop();
                ctx.event.resources = vec![current.resource()];
                if let Some(resource) = new_resource.filter(|r| *r != current.resource()) {
                    ctx.event.resources.push(resource);
                }
                let key = key?;
                not_pending(&key, "point an alias at it")?;
                // As in AWS: an alias moves only between keys of one usage,
                // so what works through it keeps working.
                if key.spec.usage() != current.spec.usage() {
                    return Err(KmsError::validation(format!(
                        "{alias_name} points at key {}, whose usage is {}; key {} has usage {}. An alias can only move to a key of the same usage: delete it and create it again instead",
                        current.key_id,
                        current.spec.usage().name(),
                        key.key_id,
                        key.spec.usage().name()
                    )));
                }
                if key.key_id != current.key_id {
                    room_for_an_alias(state, &key.key_id)?;
                }
                Ok((
                    (),
                    vec![Mutation::PutAlias(AliasRecord {
                        key_id: key.key_id,
                        ..alias
                    })],
                ))
            })
        })
        .await
    }

    pub async fn delete_alias(
        &self,
        creds: &Credentials,
        alias_name: &str,
    ) -> Result<(), KmsError> {
        self.run(creds, "DeleteAlias", |ctx| {
            validate_alias_name(alias_name).map_err(KmsError::Validation)?;
            ctx.write(|ctx, state| {
                ctx.decide_condition(state, "kms:DeleteAlias", alias_name)?;
                let alias = state.aliases.get(alias_name).ok_or_else(|| {
                    KmsError::NotFound(format!("Alias {alias_name} is not found."))
                })?;
                // A service-managed key's policy lets nobody delete its
                // alias; one of that name on someone else's key may go.
                ctx.key_for(state, &alias.key_id, "kms:DeleteAlias")?;
                Ok((
                    (),
                    vec![Mutation::DeleteAlias {
                        alias_name: alias_name.to_string(),
                    }],
                ))
            })
        })
        .await
    }

    pub async fn list_aliases(
        &self,
        creds: &Credentials,
        key_id: &str,
        limit: u32,
        marker: &str,
    ) -> Result<Page<AliasRecord>, KmsError> {
        self.run(creds, "ListAliases", |ctx| {
            let limit = page_limit(limit, MAX_SMALL_PAGE)?;
            let state = ctx.state();
            let only = if key_id.is_empty() {
                ctx.authorize(
                    &state,
                    "kms:ListAliases",
                    Target::Resource("*"),
                    NO_CONTEXT,
                    &[],
                )?;
                None
            } else {
                Some(ctx.key_for(&state, key_id, "kms:ListAliases")?.key_id)
            };
            let marker = super::marker(marker, "alias names", |m| {
                m.starts_with("alias/") && m.len() <= 256
            })?;
            let (mut items, mut truncated) = paginate(
                state
                    .aliases
                    .range::<str, _>(super::after(marker))
                    .map(|(_, a)| a)
                    .filter(|a| only.as_ref().is_none_or(|k| &a.key_id == k)),
                |a| a.alias_name.as_str(),
                marker,
                limit,
            );
            super::fit_page(&mut items, &mut truncated, ctx.kms.page_bytes(), |a| {
                a.alias_name.len() + a.key_id.len() + 32
            });
            let next_marker = truncated
                .then(|| items.last().map(|a| a.alias_name.clone()))
                .flatten();
            Ok(Page {
                items: items.into_iter().cloned().collect(),
                next_marker,
            })
        })
        .await
    }

    pub async fn get_key_policy(
        &self,
        creds: &Credentials,
        key_id: &str,
        policy_name: &str,
    ) -> Result<String, KmsError> {
        self.run(creds, "GetKeyPolicy", |ctx| {
            check_policy_name(policy_name)?;
            let state = ctx.state();
            Ok(ctx.key_for(&state, key_id, "kms:GetKeyPolicy")?.policy)
        })
        .await
    }

    pub async fn put_key_policy(
        &self,
        creds: &Credentials,
        key_id: &str,
        policy_name: &str,
        policy: &str,
    ) -> Result<(), KmsError> {
        self.run(creds, "PutKeyPolicy", |ctx| {
            check_policy_name(policy_name)?;
            let document = validate_policy(policy)?;
            let principal = ctx.principal().to_string();
            ctx.update_key(key_id, "kms:PutKeyPolicy", |r, _| {
                check_lockout(&document, &principal, &r.resource(), r.spec)?;
                r.policy = policy.to_string();
                Ok(())
            })
            .map(drop)
        })
        .await
    }

    pub async fn enable_key_rotation(
        &self,
        creds: &Credentials,
        key_id: &str,
        period_days: Option<u32>,
    ) -> Result<(), KmsError> {
        self.run(creds, "EnableKeyRotation", |ctx| {
            let days = period_days.unwrap_or(DEFAULT_ROTATION_PERIOD_DAYS);
            if !ROTATION_PERIOD_DAYS.contains(&days) {
                return Err(KmsError::validation(format!(
                    "rotation_period_in_days {days} is out of range; use 90–2560 (default 365)"
                )));
            }
            ctx.update_key(key_id, "kms:EnableKeyRotation", |r, now| {
                symmetric_only(r, "automatic rotation")?;
                super::require_enabled(r)?;
                // Enabling it again keeps the schedule: the next rotation is
                // still counted from the last one (or from when rotation was
                // enabled), with the new period; one already due happens at
                // the next maintenance pass.
                let anchor = match (r.rotation_period_days, r.next_rotation) {
                    (Some(old), Some(next)) => next - i64::from(old) * SECONDS_PER_DAY,
                    _ => now,
                };
                r.rotation_period_days = Some(days);
                r.next_rotation = Some((anchor + i64::from(days) * SECONDS_PER_DAY).max(now));
                Ok(())
            })
            .map(drop)
        })
        .await
    }

    pub async fn disable_key_rotation(
        &self,
        creds: &Credentials,
        key_id: &str,
    ) -> Result<(), KmsError> {
        self.run(creds, "DisableKeyRotation", |ctx| {
            ctx.update_key(key_id, "kms:DisableKeyRotation", |r, _| {
                symmetric_only(r, "automatic rotation")?;
                super::require_enabled(r)?;
                r.rotation_period_days = None;
                r.next_rotation = None;
                Ok(())
            })
            .map(drop)
        })
        .await
    }

    pub async fn get_key_rotation_status(
        &self,
        creds: &Credentials,
        key_id: &str,
    ) -> Result<RotationStatus, KmsError> {
        self.run(creds, "GetKeyRotationStatus", |ctx| {
            let state = ctx.state();
            let r = ctx.key_for(&state, key_id, "kms:GetKeyRotationStatus")?;
            Ok(RotationStatus {
                key_id: r.key_id,
                enabled: r.rotation_period_days.is_some(),
                period_days: r.rotation_period_days.unwrap_or(0),
                next_rotation: r.next_rotation,
            })
        })
        .await
    }

    pub async fn rotate_key_on_demand(
        &self,
        creds: &Credentials,
        key_id: &str,
    ) -> Result<(String, u32), KmsError> {
        self.run(creds, "RotateKeyOnDemand", |ctx| {
            let now = ctx.kms.now();
            ctx.write(|ctx, state| {
                let mut r = ctx.key_for(state, key_id, "kms:RotateKeyOnDemand")?;
                symmetric_only(&r, "rotation")?;
                super::require_enabled(&r)?;
                let on_demand = state.keys[&r.key_id]
                    .versions
                    .values()
                    .filter(|v| v.origin == VersionOrigin::OnDemandRotation)
                    .count();
                if on_demand >= MAX_ON_DEMAND_ROTATIONS {
                    return Err(KmsError::LimitExceeded(format!(
                        "key {} has been rotated on demand {on_demand} times, the most allowed; automatic rotation still applies",
                        r.key_id
                    )));
                }
                r.current_version += 1;
                let version = new_version_for(
                    ctx.kms,
                    &r,
                    r.current_version,
                    VersionOrigin::OnDemandRotation,
                    now,
                )?;
                ctx.event.key_version = Some(r.current_version);
                Ok((
                    (r.key_id.clone(), r.current_version),
                    vec![Mutation::PutKeyVersion(version), Mutation::PutKey(r)],
                ))
            })
        })
        .await
    }

    pub async fn list_key_rotations(
        &self,
        creds: &Credentials,
        key_id: &str,
        limit: u32,
        marker: &str,
    ) -> Result<Page<KeyVersionRecord>, KmsError> {
        self.run(creds, "ListKeyRotations", |ctx| {
            let limit = page_limit(limit, MAX_PAGE)?;
            let marker = if marker.is_empty() {
                None
            } else {
                Some(
                    marker
                        .parse::<u32>()
                        .map_err(|_| super::invalid_marker(marker, "version numbers"))?,
                )
            };
            let state = ctx.state();
            let r = ctx.key_for(&state, key_id, "kms:ListKeyRotations")?;
            symmetric_only(&r, "rotation")?;
            let entry = &state.keys[&r.key_id];
            let (mut items, mut truncated) = paginate(
                entry.versions.values().filter(|v| v.version > 1),
                |v| v.version,
                marker,
                limit,
            );
            super::fit_page(&mut items, &mut truncated, ctx.kms.page_bytes(), |_| 96);
            let next_marker = truncated
                .then(|| items.last().map(|v| v.version.to_string()))
                .flatten();
            Ok(Page {
                items: items.into_iter().cloned().collect(),
                next_marker,
            })
        })
        .await
    }

    pub async fn tag_resource(
        &self,
        creds: &Credentials,
        key_id: &str,
        tags: &[(String, String)],
    ) -> Result<(), KmsError> {
        self.run(creds, "TagResource", |ctx| {
            if tags.is_empty() {
                return Err(KmsError::validation("tags must not be empty"));
            }
            ctx.update_key(key_id, "kms:TagResource", |r, _| {
                not_pending(r, "tag it")?;
                apply_tags(&mut r.tags, tags)
            })
            .map(drop)
        })
        .await
    }

    pub async fn untag_resource(
        &self,
        creds: &Credentials,
        key_id: &str,
        tag_keys: &[String],
    ) -> Result<(), KmsError> {
        self.run(creds, "UntagResource", |ctx| {
            if tag_keys.is_empty() {
                return Err(KmsError::validation("tag_keys must not be empty"));
            }
            for k in tag_keys {
                reserved_tag_key(k)?;
            }
            ctx.update_key(key_id, "kms:UntagResource", |r, _| {
                not_pending(r, "untag it")?;
                for k in tag_keys {
                    r.tags.remove(k);
                }
                Ok(())
            })
            .map(drop)
        })
        .await
    }

    pub async fn list_resource_tags(
        &self,
        creds: &Credentials,
        key_id: &str,
        limit: u32,
        marker: &str,
    ) -> Result<Page<(String, String)>, KmsError> {
        self.run(creds, "ListResourceTags", |ctx| {
            let limit = page_limit(limit, MAX_PAGE)?;
            let state = ctx.state();
            let r = ctx.key_for(&state, key_id, "kms:ListResourceTags")?;
            let marker = super::marker(marker, "tag keys", |m| m.chars().count() <= 128)?;
            let (mut items, mut truncated) =
                paginate(r.tags.iter(), |(k, _)| k.as_str(), marker, limit);
            super::fit_page(
                &mut items,
                &mut truncated,
                ctx.kms.page_bytes(),
                |(k, v)| k.len() + v.len() + 8,
            );
            let next_marker = truncated
                .then(|| items.last().map(|(k, _)| k.to_string()))
                .flatten();
            Ok(Page {
                items: items
                    .into_iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                next_marker,
            })
        })
        .await
    }
}

fn check_policy_name(name: &str) -> Result<(), KmsError> {
    if name.is_empty() || name == "default" {
        Ok(())
    } else {
        Err(KmsError::validation(format!(
            "policy_name {name:?} is not valid; the only key policy is \"default\""
        )))
    }
}

fn symmetric_only(record: &KeyRecord, what: &str) -> Result<(), KmsError> {
    if record.spec == KeySpec::SymmetricDefault {
        Ok(())
    } else {
        Err(KmsError::UnsupportedOperation(format!(
            "{what} is only supported for SYMMETRIC_DEFAULT keys; key {} is {}",
            record.key_id,
            record.spec.name()
        )))
    }
}

/// Lockout safety check, as AWS makes on CreateKey and PutKeyPolicy: a key
/// policy must still let `principal` (who is setting it) change the policy,
/// directly or by delegating to identity policies, or nobody could ever
/// repair it, disable the key or schedule its deletion. Decided with the
/// condition keys such a call of `principal`'s would carry (its
/// `kms:CallerPrincipal`, the key's `kms:KeySpec`), so a condition on them
/// is judged as it will be then.
fn check_lockout(
    document: &PolicyDocument,
    principal: &str,
    resource: &str,
    spec: KeySpec,
) -> Result<(), KmsError> {
    let mut context = policy::ConditionContext::new();
    context.set("kms:CallerPrincipal", principal.to_string());
    context.set("kms:KeySpec", spec.name().to_string());
    let request = policy::Request {
        principal,
        action: "kms:PutKeyPolicy",
        resource,
        context: &context,
    };
    let allowed = matches!(
        policy::evaluate(
            &request,
            &policy::Evaluation {
                key_policy: Some(document),
                identity_policies: &[],
                grant: None,
            }
        ),
        policy::Decision::Allow { .. }
    ) || document_delegates(document, &request);
    if allowed {
        return Ok(());
    }
    Err(KmsError::MalformedPolicy(format!(
        "the key policy will not allow {principal} to update the key policy in the future; \
         include a statement that allows kms:PutKeyPolicy for {principal} or for \"account\""
    )))
}

/// Whether the policy delegates kms:PutKeyPolicy to identity policies (the
/// `account` principal), which also keeps an administrator able to repair it.
fn document_delegates(document: &PolicyDocument, request: &policy::Request<'_>) -> bool {
    let allow_all = PolicyDocument::parse(
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        PolicyKind::Identity,
    );
    match allow_all {
        Ok(identity) => matches!(
            policy::evaluate(
                request,
                &policy::Evaluation {
                    key_policy: Some(document),
                    identity_policies: &[("lockout-check", &identity)],
                    grant: None,
                }
            ),
            policy::Decision::Allow { .. }
        ),
        Err(_) => false,
    }
}

/// The most aliases one key may have, as in AWS.
pub const MAX_ALIASES_PER_KEY: usize = 50;

/// Refuses one more alias for `key_id` when it has [`MAX_ALIASES_PER_KEY`].
fn room_for_an_alias(state: &crate::state::State, key_id: &str) -> Result<(), KmsError> {
    let aliases = state
        .aliases
        .values()
        .filter(|a| a.key_id == key_id)
        .count();
    if aliases >= MAX_ALIASES_PER_KEY {
        return Err(KmsError::LimitExceeded(format!(
            "key {key_id} already has {MAX_ALIASES_PER_KEY} aliases, the most a key may have; delete one (DeleteAlias) first"
        )));
    }
    Ok(())
}

//! CreateGrant, ListGrants, RetireGrant, RevokeGrant.

use std::collections::BTreeSet;

use super::key_ops::Page;
use super::{Credentials, Kms, MAX_SMALL_PAGE, Target, page_limit, paginate, resolve_key};
use crate::crypto::context::EncryptionContext;
use crate::crypto::random_array;
use crate::error::KmsError;
use crate::grants::{GrantConstraints, GrantOperation, GrantRecord, MAX_GRANTS_PER_KEY};
use crate::identity::principal_from_request;
use crate::store::Mutation;

/// What `CreateGrant` asks for.
#[derive(Debug, Clone)]
pub struct CreateGrantInput {
    pub key_id: String,
    pub grantee: String,
    pub retiring: Option<String>,
    pub operations: Vec<GrantOperation>,
    pub constraints: GrantConstraints,
    pub name: String,
    pub grant_tokens: Vec<String>,
}

fn grant_principal(value: &str, field: &str) -> Result<String, KmsError> {
    if !value.contains('/') {
        return Err(KmsError::validation(format!(
            "{field} {value:?} must be a principal such as user/alice or service/table-service"
        )));
    }
    principal_from_request(value).map_err(|e| KmsError::validation(format!("{field}: {e}")))
}

impl Kms {
    pub async fn create_grant(
        &self,
        creds: &Credentials,
        input: CreateGrantInput,
    ) -> Result<GrantRecord, KmsError> {
        self.run(creds, "CreateGrant", |ctx| {
            let grantee = grant_principal(&input.grantee, "grantee_principal")?;
            let retiring = input
                .retiring
                .as_deref()
                .filter(|r| !r.is_empty())
                .map(|r| grant_principal(r, "retiring_principal"))
                .transpose()?;
            let operations: BTreeSet<GrantOperation> = input.operations.iter().copied().collect();
            if operations.is_empty() {
                return Err(KmsError::validation("operations must name at least one operation"));
            }
            if input.name.len() > 256 {
                return Err(KmsError::validation("name must have at most 256 characters"));
            }
            let c = &input.constraints;
            if c.equals.is_some() && c.subset.is_some() {
                return Err(KmsError::validation(
                    "constraints: use encryption_context_equals or encryption_context_subset, not both",
                ));
            }
            // As in AWS: constraints go with operations that take an
            // encryption context, and may also list CreateGrant (they bound
            // the grants it makes), RetireGrant and DescribeKey (which they
            // do not constrain); a grant of only the last two would
            // constrain nothing, so it is refused as a mistake.
            if (c.equals.is_some() || c.subset.is_some())
                && (!operations.iter().all(|op| {
                    op.uses_context()
                        || matches!(
                            op,
                            GrantOperation::CreateGrant
                                | GrantOperation::RetireGrant
                                | GrantOperation::DescribeKey
                        )
                }) || !operations
                    .iter()
                    .any(|op| op.uses_context() || *op == GrantOperation::CreateGrant))
            {
                return Err(KmsError::validation(
                    "encryption context constraints are only allowed with operations that take an encryption context (optionally with CreateGrant, RetireGrant and DescribeKey)",
                ));
            }
            for m in [&c.equals, &c.subset].into_iter().flatten() {
                // As for a new ciphertext: conditions on CreateGrant and
                // RetireGrant see these pairs, and could not tell apart keys
                // that differ only by case.
                crate::crypto::context::validate_new(m)
                    .map_err(|e| KmsError::validation(format!("constraints: {e}")))?;
            }
            let now = ctx.kms.now();
            let issuing = ctx.principal().to_string();
            ctx.write(|ctx, state| {
                ctx.check_grant_tokens(state, &input.grant_tokens)?;
                let entry = ctx.resolve(state, &input.key_id)?;
                ctx.event.key_id = Some(entry.record.key_id.clone());
                ctx.event.resources = vec![entry.record.resource()];
                let ops: Vec<String> = operations.iter().map(|o| o.action()[4..].to_string()).collect();
                // A grant allows this only for a grant no wider than itself.
                // As in AWS, kms:EncryptionContext:<k> and
                // kms:EncryptionContextKeys are the new grant's constraint
                // pairs.
                ctx.decide_with(
                    state,
                    "kms:CreateGrant",
                    Target::Key(entry),
                    &input.constraints.pairs(),
                    &[
                        ("kms:GranteePrincipal", vec![grantee.clone()]),
                        ("kms:RetiringPrincipal", retiring.iter().cloned().collect()),
                        ("kms:GrantOperations", ops),
                        // No grant here is for an AWS resource.
                        ("kms:GrantIsForAWSResource", vec!["false".into()]),
                    ],
                    &|parent, principal| {
                        parent.allows_child(principal, &operations, &input.constraints)
                    },
                )
                .map_err(|denial| denial.error)?;
                super::key_ops::not_pending(&entry.record, "grant its use")?;
                let usage = entry.record.spec.usage();
                if let Some(op) = operations.iter().find(|op| !op.applies_to(usage)) {
                    return Err(KmsError::validation(format!(
                        "operation {} does not apply to key {}, whose usage is {}",
                        &op.action()[4..],
                        entry.record.key_id,
                        usage.name()
                    )));
                }
                // A retried named CreateGrant (same name and parameters)
                // answers with the grant it made, as AWS does, instead of
                // adding another.
                if !input.name.is_empty()
                    && let Some(same) = entry
                        .grants_of(&grantee)
                        .filter_map(|id| state.grants.get(id))
                        .find(|g| {
                            g.name == input.name
                                && g.grantee == grantee
                                && g.retiring == retiring
                                && g.operations == operations
                                && g.constraints == input.constraints
                        })
                {
                    ctx.event.grant_id = Some(same.grant_id.clone());
                    return Ok((same.clone(), vec![]));
                }
                if entry.grants.len() >= MAX_GRANTS_PER_KEY {
                    return Err(KmsError::LimitExceeded(format!(
                        "key {} already has {MAX_GRANTS_PER_KEY} grants",
                        entry.record.key_id
                    )));
                }
                let grant = GrantRecord {
                    grant_id: hex::encode(random_array::<32>()),
                    key_id: entry.record.key_id.clone(),
                    name: input.name.clone(),
                    grantee,
                    retiring,
                    issuing,
                    operations,
                    constraints: input.constraints.clone(),
                    created: now,
                };
                ctx.event.grant_id = Some(grant.grant_id.clone());
                Ok((grant.clone(), vec![Mutation::PutGrant(grant)]))
            })
        })
        .await
    }

    pub async fn list_grants(
        &self,
        creds: &Credentials,
        key_id: &str,
        grant_id: &str,
        grantee: &str,
        limit: u32,
        marker: &str,
    ) -> Result<Page<GrantRecord>, KmsError> {
        self.run(creds, "ListGrants", |ctx| {
            let limit = page_limit(limit, MAX_SMALL_PAGE)?;
            // Held to CreateGrant's rules, so a filter that could match no
            // grant (`alice` for `user/alice`) is refused, not silently empty.
            let grantee = match grantee {
                "" => None,
                given => Some(grant_principal(given, "grantee_principal")?),
            };
            let state = ctx.state();
            let entry = ctx.resolve(&state, key_id)?;
            ctx.event.key_id = Some(entry.record.key_id.clone());
            ctx.authorize(
                &state,
                "kms:ListGrants",
                Target::Key(entry),
                &EncryptionContext::new(),
                &[],
            )?;
            let marker = super::marker(marker, "grant ids", |m| {
                m.len() == 64
                    && m.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })?;
            let (mut items, mut truncated) = paginate(
                entry
                    .grants
                    .range::<str, _>(super::after(marker))
                    .filter_map(|id| state.grants.get(id))
                    .filter(|g| grant_id.is_empty() || g.grant_id == grant_id)
                    .filter(|g| grantee.as_ref().is_none_or(|p| g.grantee == *p)),
                |g| g.grant_id.as_str(),
                marker,
                limit,
            );
            // A page also ends before its grants pass the page byte budget
            // (always holding one), so it fits in an answer whatever the
            // grants' constraints.
            super::fit_page(&mut items, &mut truncated, ctx.kms.page_bytes(), |g| {
                g.approximate_size()
            });
            let next_marker = truncated
                .then(|| items.last().map(|g| g.grant_id.clone()))
                .flatten();
            Ok(Page {
                items: items.into_iter().cloned().collect(),
                next_marker,
            })
        })
        .await
    }

    /// Retires a grant named by its token or by key id and grant id. Allowed
    /// for the retiring principal, for the grantee when the grant includes
    /// RetireGrant, and for whoever a policy allows kms:RetireGrant.
    pub async fn retire_grant(
        &self,
        creds: &Credentials,
        grant_token: &str,
        key_id: &str,
        grant_id: &str,
    ) -> Result<(), KmsError> {
        self.run(creds, "RetireGrant", |ctx| {
            ctx.write(|ctx, state| {
                let id = if !grant_token.is_empty() {
                    crate::grants::grant_id_from_token(grant_token).ok_or_else(|| {
                        KmsError::InvalidGrantToken("grant_token is malformed".into())
                    })?
                } else if !key_id.is_empty() && !grant_id.is_empty() {
                    grant_id
                } else {
                    return Err(KmsError::validation(
                        "give grant_token, or both key_id and grant_id",
                    ));
                };
                let grant = state
                    .grants
                    .get(id)
                    .ok_or_else(|| KmsError::NotFound(format!("grant {id} does not exist")))?;
                if !key_id.is_empty() && resolve_key(state, key_id)?.record.key_id != grant.key_id {
                    return Err(KmsError::InvalidGrantId(format!(
                        "grant {id} is not a grant of key {key_id}"
                    )));
                }
                ctx.event.key_id = Some(grant.key_id.clone());
                ctx.event.grant_id = Some(grant.grant_id.clone());
                let me = ctx.principal();
                let self_service = grant.retiring.as_deref() == Some(me)
                    || (grant.grantee == me
                        && grant.operations.contains(&GrantOperation::RetireGrant));
                if self_service {
                    ctx.event.decision = "Allow".into();
                } else {
                    // Policies alone: a grant's RetireGrant lets its grantee
                    // retire that grant (above), never another one.
                    let entry = &state.keys[&grant.key_id];
                    ctx.decide_with(
                        state,
                        "kms:RetireGrant",
                        Target::Key(entry),
                        &grant.constraints.pairs(),
                        &[],
                        &|_, _| false,
                    )
                    .map_err(|denial| denial.error)?;
                }
                Ok((
                    (),
                    vec![Mutation::DeleteGrant {
                        grant_id: grant.grant_id.clone(),
                    }],
                ))
            })
        })
        .await
    }

    pub async fn revoke_grant(
        &self,
        creds: &Credentials,
        key_id: &str,
        grant_id: &str,
    ) -> Result<(), KmsError> {
        self.run(creds, "RevokeGrant", |ctx| {
            ctx.write(|ctx, state| {
                let entry = ctx.resolve(state, key_id)?;
                ctx.event.key_id = Some(entry.record.key_id.clone());
                // What was asked for, shortened when it cannot be a grant
                // id, so a request cannot make its record as large as
                // itself.
                ctx.event.grant_id = Some(lockbox_proto::status_message::abbreviate(grant_id));
                ctx.authorize(
                    state,
                    "kms:RevokeGrant",
                    Target::Key(entry),
                    &EncryptionContext::new(),
                    &[],
                )?;
                if !entry.grants.contains(grant_id) {
                    return Err(KmsError::NotFound(format!(
                        "grant {grant_id} does not exist on key {}",
                        entry.record.key_id
                    )));
                }
                Ok((
                    (),
                    vec![Mutation::DeleteGrant {
                        grant_id: grant_id.to_string(),
                    }],
                ))
            })
        })
        .await
    }
}

//! `iam.v1`: principals, access tokens, identity policies, caller identity,
//! and `Authorize`, the policy decision point for other services.

use std::collections::{BTreeMap, BTreeSet};
use zeroize::Zeroizing;

use super::key_ops::Page;
use super::{Caller, Credentials, Ctx, Kms, MAX_PAGE, Target, page_limit, paginate};
use crate::audit::AuditEvent;
use crate::crypto::context::EncryptionContext;
use crate::error::KmsError;
use crate::identity::{
    PrincipalKind, PrincipalRecord, TokenRecord, mint_token, principal_from_request,
};
use crate::policy::{PolicyDocument, PolicyKind};
use crate::state::State;
use crate::store::Mutation;

pub const MAX_INLINE_POLICIES: usize = 10;
pub const MAX_TOKENS_PER_PRINCIPAL: usize = 10;
/// The most revoked tokens kept per principal (so that their use is
/// reported as revoked, and ListAccessTokens lists them as revoked):
/// revoking another forgets the longest revoked, whose use is then refused
/// as unknown.
pub const MAX_REVOKED_TOKENS_KEPT: usize = 10;
pub const MAX_AUTHORIZE_QUESTIONS: usize = 100;

/// A token minted without a caller, at first start.
pub struct BootstrapToken {
    pub principal: String,
    pub token_id: String,
    pub token: zeroize::Zeroizing<String>,
}

/// One answer of `Authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationAnswer {
    pub action: String,
    pub resource: String,
    pub allowed: bool,
    pub explicit_deny: bool,
    pub message: String,
}

fn principal_arg(user_name: &str) -> Result<String, KmsError> {
    principal_from_request(user_name).map_err(KmsError::Validation)
}

/// Refuses a new token for `principal` at the limit of active tokens;
/// `then` says what to do after deleting one.
fn room_for_a_token(state: &State, principal: &str, then: &str) -> Result<(), KmsError> {
    let live = state
        .tokens
        .values()
        .filter(|t| t.principal == principal && t.revoked.is_none())
        .count();
    if live >= MAX_TOKENS_PER_PRINCIPAL {
        return Err(KmsError::LimitExceeded(format!(
            "{principal} already has {MAX_TOKENS_PER_PRINCIPAL} active tokens, so no new one can be issued; \
             delete one (DeleteAccessToken) and {then}"
        )));
    }
    Ok(())
}

fn existing<'s>(state: &'s State, principal: &str) -> Result<&'s PrincipalRecord, KmsError> {
    state
        .principals
        .get(principal)
        .map(|e| &e.record)
        .ok_or_else(|| KmsError::NotFound(format!("principal {principal} does not exist")))
}

fn validate_policy_name(name: &str) -> Result<(), KmsError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        return Err(KmsError::validation(format!(
            "policy_name {name:?} must have 1–128 characters of A–Z a–z 0–9 +=,.@_-"
        )));
    }
    Ok(())
}

impl Kms {
    /// Creates `principal` with the given managed policies and a token,
    /// unless it exists. Used for service credentials the configuration
    /// asks for; audited as the service itself.
    pub async fn bootstrap_principal(
        &self,
        principal: &str,
        kind: PrincipalKind,
        policies: &[&str],
    ) -> Result<Option<BootstrapToken>, KmsError> {
        self.bootstrap(principal, kind, policies, false, None).await
    }

    /// Creates the bootstrap administrator, only into a store with no
    /// principal at all (the first start): an administrator deleted later
    /// on purpose (its token leaked, named administrators replace it) is
    /// not brought back by a restart.
    pub async fn bootstrap_administrator(
        &self,
        principal: &str,
        policies: &[&str],
    ) -> Result<Option<BootstrapToken>, KmsError> {
        self.bootstrap(principal, PrincipalKind::User, policies, true, None)
            .await
    }

    /// [`Kms::bootstrap_administrator`] with a token the deployment chose
    /// (`--admin-token-secret-file`) instead of a new one.
    pub async fn bootstrap_administrator_with(
        &self,
        principal: &str,
        policies: &[&str],
        secret: Zeroizing<String>,
    ) -> Result<Option<BootstrapToken>, KmsError> {
        crate::identity::check_chosen_token(&secret).map_err(KmsError::Validation)?;
        self.bootstrap(principal, PrincipalKind::User, policies, true, Some(secret))
            .await
    }

    async fn bootstrap(
        &self,
        principal: &str,
        kind: PrincipalKind,
        policies: &[&str],
        first_only: bool,
        chosen: Option<Zeroizing<String>>,
    ) -> Result<Option<BootstrapToken>, KmsError> {
        let now = self.now();
        let minted = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if state.principals.contains_key(principal)
                || (first_only && !state.principals.is_empty())
            {
                return Ok(None);
            }
            let minted = match chosen {
                Some(secret) => crate::identity::chosen_token(principal, now, secret),
                None => mint_token(principal, now),
            };
            let mutations = vec![
                Mutation::PutPrincipal(PrincipalRecord {
                    principal: principal.to_string(),
                    kind,
                    created: now,
                    attached: policies.iter().map(|p| p.to_string()).collect(),
                    inline: BTreeMap::new(),
                }),
                Mutation::PutToken(minted.record.clone()),
            ];
            for m in &mutations {
                state.apply(m)?;
            }
            let seq = self.committer.enqueue_held(mutations)?;
            (minted, seq)
        };
        let (token, seq) = minted;
        self.finish_own_token("BootstrapPrincipal", principal, token, seq)
            .await
            .map(Some)
    }

    /// Completes an action of kms-service's own that minted `token` for
    /// `principal`: audited as the service, answered once durable.
    async fn finish_own_token(
        &self,
        event_name: &str,
        principal: &str,
        token: crate::identity::NewToken,
        seq: u64,
    ) -> Result<BootstrapToken, KmsError> {
        let event = AuditEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            event_name: event_name.into(),
            principal: Some(super::SERVICE_PRINCIPAL.into()),
            resources: vec![
                principal.to_string(),
                format!("token/{}", token.record.token_id),
            ],
            ..AuditEvent::default()
        };
        self.finish(event, seq, vec![seq], Ok(())).await?;
        Ok(BootstrapToken {
            principal: principal.to_string(),
            token_id: token.record.token_id,
            token: token.secret,
        })
    }

    /// Whether no principal exists yet (the first start).
    pub fn has_no_principals(&self) -> bool {
        self.read_state().principals.is_empty()
    }

    /// Whether `principal` exists.
    pub fn has_principal(&self, principal: &str) -> bool {
        self.read_state().principals.contains_key(principal)
    }

    /// Gives an existing principal a new token, as the service itself (for
    /// a service credential file that went missing): audited as
    /// `CreateAccessToken` by kms-service. The principal's other tokens stay
    /// valid; the per-principal limit holds.
    pub async fn reissue_token(&self, principal: &str) -> Result<BootstrapToken, KmsError> {
        let now = self.now();
        let (minted, seq) = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            existing(&state, principal)?;
            room_for_a_token(&state, principal, "start again")?;
            let minted = mint_token(principal, now);
            let mutations = vec![Mutation::PutToken(minted.record.clone())];
            for m in &mutations {
                state.apply(m)?;
            }
            (minted, self.committer.enqueue_held(mutations)?)
        };
        self.finish_own_token("CreateAccessToken", principal, minted, seq)
            .await
    }

    pub async fn create_user(
        &self,
        creds: &Credentials,
        user_name: &str,
        kind: Option<PrincipalKind>,
    ) -> Result<PrincipalRecord, KmsError> {
        self.run(creds, "CreateUser", |ctx| {
            let principal = if user_name.contains('/') {
                principal_arg(user_name)?
            } else {
                crate::identity::validate_name(user_name).map_err(KmsError::Validation)?;
                let prefix = kind.unwrap_or(PrincipalKind::User).prefix();
                format!("{prefix}/{user_name}")
            };
            let named = if principal.starts_with("service/") {
                PrincipalKind::Service
            } else {
                PrincipalKind::User
            };
            if let Some(kind) = kind.filter(|k| *k != named) {
                return Err(KmsError::validation(format!(
                    "user_name {principal} names a {} principal but kind asks for a {} one; \
                     leave kind unset or make the two agree",
                    named.prefix(),
                    kind.prefix()
                )));
            }
            let kind = named;
            if principal == super::SERVICE_PRINCIPAL {
                return Err(KmsError::validation(format!(
                    "{principal} is the name kms-service itself acts under (its records of \
                     rotations, deletions and start-up); choose another name"
                )));
            }
            ctx.event.resources = vec![principal.clone()];
            let now = ctx.kms.now();
            ctx.write(|ctx, state| {
                ctx.authorize(
                    state,
                    "iam:CreateUser",
                    Target::Resource(&principal),
                    &EncryptionContext::new(),
                    &[],
                )?;
                if state.principals.contains_key(&principal) {
                    return Err(KmsError::AlreadyExists(format!(
                        "principal {principal} already exists"
                    )));
                }
                // Key policies name principals by name: a new principal of
                // a deleted one's name would silently inherit what those
                // statements gave the old one (a key's creator has full
                // control of it by default). A name never used before may
                // be named by a policy ahead of its creation.
                let retired = state.meta.contains_key(&retired_meta(&principal));
                let naming: Vec<&str> = state
                    .keys
                    .values()
                    .filter(|entry| retired && entry.policy.names_principal(&principal))
                    .map(|entry| entry.record.key_id.as_str())
                    .collect();
                if !naming.is_empty() {
                    const SHOWN: usize = 5;
                    let more = naming.len().saturating_sub(SHOWN);
                    return Err(KmsError::AlreadyExists(format!(
                        "a deleted {principal} is still named in the key policy of {} key(s) ({}{}); \
                         a new principal of that name would inherit what those statements give: \
                         remove it from those policies (PutKeyPolicy) or choose another name",
                        naming.len(),
                        naming[..naming.len().min(SHOWN)].join(", "),
                        if more > 0 { format!(" and {more} more") } else { String::new() }
                    )));
                }
                // Grants too: one made to the deleted name, or naming it as
                // the principal that may retire the grant.
                let granted: Vec<&str> = state
                    .grants
                    .values()
                    .filter(|g| {
                        retired
                            && (g.grantee == principal
                                || g.retiring.as_deref() == Some(principal.as_str()))
                    })
                    .map(|g| g.grant_id.as_str())
                    .collect();
                if !granted.is_empty() {
                    const SHOWN: usize = 5;
                    let more = granted.len().saturating_sub(SHOWN);
                    return Err(KmsError::AlreadyExists(format!(
                        "a deleted {principal} is still named as grantee or retiring principal of {} grant(s) ({}{}); \
                         a new principal of that name would inherit them: retire or revoke those grants \
                         (RetireGrant, RevokeGrant) or choose another name",
                        granted.len(),
                        granted[..granted.len().min(SHOWN)].join(", "),
                        if more > 0 { format!(" and {more} more") } else { String::new() }
                    )));
                }
                let most = ctx.kms.quotas.principals;
                if state.principals.len() >= most {
                    return Err(KmsError::LimitExceeded(format!(
                        "this service already has {} principals, the most it allows \
                         (--max-principals {most}); delete unused ones (DeleteUser) or raise \
                         --max-principals",
                        state.principals.len()
                    )));
                }
                let record = PrincipalRecord {
                    principal: principal.clone(),
                    kind,
                    created: now,
                    attached: BTreeSet::new(),
                    inline: BTreeMap::new(),
                };
                Ok((record.clone(), vec![Mutation::PutPrincipal(record)]))
            })
        })
        .await
    }

    pub async fn get_user(
        &self,
        creds: &Credentials,
        user_name: &str,
    ) -> Result<PrincipalRecord, KmsError> {
        self.run(creds, "GetUser", |ctx| {
            let principal = principal_arg(user_name)?;
            ctx.event.resources = vec![principal.clone()];
            let state = ctx.state();
            ctx.authorize(
                &state,
                "iam:GetUser",
                Target::Resource(&principal),
                &EncryptionContext::new(),
                &[],
            )?;
            existing(&state, &principal).cloned()
        })
        .await
    }

    pub async fn list_users(
        &self,
        creds: &Credentials,
        limit: u32,
        marker: &str,
    ) -> Result<Page<PrincipalRecord>, KmsError> {
        self.run(creds, "ListUsers", |ctx| {
            let limit = page_limit(limit, MAX_PAGE)?;
            let state = ctx.state();
            ctx.authorize(
                &state,
                "iam:ListUsers",
                Target::Resource("*"),
                &EncryptionContext::new(),
                &[],
            )?;
            let marker = super::marker(marker, "principal names", |m| {
                m.starts_with("user/") || m.starts_with("service/")
            })?;
            let (mut items, mut truncated) = paginate(
                state
                    .principals
                    .range::<str, _>(super::after(marker))
                    .map(|(_, e)| &e.record),
                |p| p.principal.as_str(),
                marker,
                limit,
            );
            // Each entry: the principal, its name, kind and creation time.
            super::fit_page(&mut items, &mut truncated, ctx.kms.page_bytes(), |p| {
                2 * p.principal.len() + 24
            });
            let next_marker = truncated
                .then(|| items.last().map(|p| p.principal.clone()))
                .flatten();
            Ok(Page {
                items: items.into_iter().cloned().collect(),
                next_marker,
            })
        })
        .await
    }

    pub async fn delete_user(&self, creds: &Credentials, user_name: &str) -> Result<(), KmsError> {
        self.run(creds, "DeleteUser", |ctx| {
            let principal = principal_arg(user_name)?;
            if principal == ctx.principal() {
                return Err(KmsError::validation(
                    "you cannot delete the principal you are signed in as",
                ));
            }
            ctx.event.resources = vec![principal.clone()];
            let now = ctx.kms.now();
            ctx.write(|ctx, state| {
                ctx.authorize(
                    state,
                    "iam:DeleteUser",
                    Target::Resource(&principal),
                    &EncryptionContext::new(),
                    &[],
                )?;
                existing(state, &principal)?;
                // Its grants go with it: a later principal of the same name
                // must not inherit them.
                let mut mutations: Vec<Mutation> = state
                    .grants
                    .values()
                    .filter(|g| g.grantee == principal)
                    .map(|g| Mutation::DeleteGrant {
                        grant_id: g.grant_id.clone(),
                    })
                    .collect();
                mutations.push(Mutation::DeletePrincipal {
                    principal: principal.clone(),
                });
                // Remembered, so a principal of the same name is not
                // created while a key policy still names this one.
                mutations.push(Mutation::PutMeta {
                    name: retired_meta(&principal),
                    value: now.to_string().into_bytes(),
                });
                Ok(((), mutations))
            })
        })
        .await
    }

    pub async fn create_access_token(
        &self,
        creds: &Credentials,
        user_name: &str,
    ) -> Result<BootstrapToken, KmsError> {
        self.run(creds, "CreateAccessToken", |ctx| {
            let principal = principal_arg(user_name)?;
            ctx.event.resources = vec![principal.clone()];
            let now = ctx.kms.now();
            ctx.write(|ctx, state| {
                ctx.authorize(
                    state,
                    "iam:CreateAccessToken",
                    Target::Resource(&principal),
                    &EncryptionContext::new(),
                    &[],
                )?;
                existing(state, &principal)?;
                room_for_a_token(state, &principal, "try again")?;
                let minted = mint_token(&principal, now);
                let record = minted.record.clone();
                // The record names the token made (its id, never the secret).
                ctx.event
                    .resources
                    .push(format!("token/{}", record.token_id));
                Ok((
                    BootstrapToken {
                        principal: principal.clone(),
                        token_id: record.token_id.clone(),
                        token: minted.secret,
                    },
                    vec![Mutation::PutToken(record)],
                ))
            })
        })
        .await
    }

    pub async fn list_access_tokens(
        &self,
        creds: &Credentials,
        user_name: &str,
    ) -> Result<Vec<TokenRecord>, KmsError> {
        self.run(creds, "ListAccessTokens", |ctx| {
            let principal = principal_arg(user_name)?;
            ctx.event.resources = vec![principal.clone()];
            let state = ctx.state();
            ctx.authorize(
                &state,
                "iam:ListAccessTokens",
                Target::Resource(&principal),
                &EncryptionContext::new(),
                &[],
            )?;
            existing(&state, &principal)?;
            let mut tokens: Vec<TokenRecord> = state
                .tokens
                .values()
                .filter(|t| t.principal == principal)
                .cloned()
                .collect();
            tokens.sort_by(|a, b| (a.created, &a.token_id).cmp(&(b.created, &b.token_id)));
            Ok(tokens)
        })
        .await
    }

    /// Revokes a token. The record stays (marked revoked) so that a later
    /// use is reported as revoked rather than unknown, for the principal's
    /// [`MAX_REVOKED_TOKENS_KEPT`] most recently revoked tokens; older
    /// ones are forgotten, so tokens made and deleted again and again do
    /// not pile up.
    pub async fn delete_access_token(
        &self,
        creds: &Credentials,
        user_name: &str,
        token_id: &str,
    ) -> Result<(), KmsError> {
        self.run(creds, "DeleteAccessToken", |ctx| {
            let principal = principal_arg(user_name)?;
            ctx.event.resources = vec![principal.clone()];
            // Named in the record when it could be a token id (`tok-` and
            // hex), so a request cannot put anything else there.
            if token_id.len() <= 64
                && token_id
                    .strip_prefix("tok-")
                    .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                ctx.event.resources.push(format!("token/{token_id}"));
            }
            let now = ctx.kms.now();
            ctx.write(|ctx, state| {
                ctx.authorize(
                    state,
                    "iam:DeleteAccessToken",
                    Target::Resource(&principal),
                    &EncryptionContext::new(),
                    &[],
                )?;
                let token = state
                    .tokens
                    .values()
                    .find(|t| {
                        t.token_id == token_id && t.principal == principal && t.revoked.is_none()
                    })
                    .ok_or_else(|| {
                        KmsError::NotFound(format!("{principal} has no active token {token_id}"))
                    })?;
                let mut revoked = token.clone();
                revoked.revoked = Some(now);
                let mut earlier: Vec<&TokenRecord> = state
                    .tokens
                    .values()
                    .filter(|t| t.principal == principal && t.revoked.is_some())
                    .collect();
                // Newest first: those past the ones kept are forgotten.
                earlier.sort_by(|a, b| (b.revoked, &b.token_id).cmp(&(a.revoked, &a.token_id)));
                let mut changes = vec![Mutation::PutToken(revoked)];
                changes.extend(
                    earlier
                        .into_iter()
                        .skip(MAX_REVOKED_TOKENS_KEPT - 1)
                        .map(|t| Mutation::DeleteToken {
                            token_id: t.token_id.clone(),
                        }),
                );
                Ok(((), changes))
            })
        })
        .await
    }

    /// Edits a principal's record after authorizing `action` on it.
    async fn edit_principal(
        &self,
        creds: &Credentials,
        event: &str,
        action: &str,
        user_name: &str,
        edit: impl FnOnce(&mut PrincipalRecord) -> Result<(), KmsError>,
    ) -> Result<(), KmsError> {
        self.run(creds, event, |ctx| {
            let principal = principal_arg(user_name)?;
            ctx.event.resources = vec![principal.clone()];
            ctx.write(|ctx, state| {
                ctx.authorize(
                    state,
                    action,
                    Target::Resource(&principal),
                    &EncryptionContext::new(),
                    &[],
                )?;
                let mut record = existing(state, &principal)?.clone();
                edit(&mut record)?;
                Ok(((), vec![Mutation::PutPrincipal(record)]))
            })
        })
        .await
    }

    pub async fn attach_user_policy(
        &self,
        creds: &Credentials,
        user_name: &str,
        policy_name: &str,
    ) -> Result<(), KmsError> {
        if !self.managed.contains_key(policy_name) {
            let known: Vec<&str> = self.managed.keys().map(String::as_str).collect();
            let err = KmsError::NotFound(format!(
                "managed policy {policy_name:?} does not exist; choose one of {}",
                known.join(", ")
            ));
            return self
                .run(creds, "AttachUserPolicy", |_| Err::<(), _>(err))
                .await;
        }
        self.edit_principal(
            creds,
            "AttachUserPolicy",
            "iam:AttachUserPolicy",
            user_name,
            |r| {
                r.attached.insert(policy_name.to_string());
                Ok(())
            },
        )
        .await
    }

    pub async fn detach_user_policy(
        &self,
        creds: &Credentials,
        user_name: &str,
        policy_name: &str,
    ) -> Result<(), KmsError> {
        self.edit_principal(
            creds,
            "DetachUserPolicy",
            "iam:DetachUserPolicy",
            user_name,
            |r| {
                if r.attached.remove(policy_name) {
                    Ok(())
                } else {
                    Err(KmsError::NotFound(format!(
                        "policy {policy_name} is not attached to {}",
                        r.principal
                    )))
                }
            },
        )
        .await
    }

    pub async fn put_user_policy(
        &self,
        creds: &Credentials,
        user_name: &str,
        policy_name: &str,
        document: &str,
    ) -> Result<(), KmsError> {
        let checked = validate_policy_name(policy_name).and_then(|_| {
            PolicyDocument::parse(document, PolicyKind::Identity)
                .map(drop)
                .map_err(|e| KmsError::MalformedPolicy(format!("identity policy: {e}")))
        });
        if let Err(e) = checked {
            return self.run(creds, "PutUserPolicy", |_| Err::<(), _>(e)).await;
        }
        self.edit_principal(
            creds,
            "PutUserPolicy",
            "iam:PutUserPolicy",
            user_name,
            |r| {
                if !r.inline.contains_key(policy_name) && r.inline.len() >= MAX_INLINE_POLICIES {
                    return Err(KmsError::LimitExceeded(format!(
                        "{} already has {MAX_INLINE_POLICIES} inline policies, the most a principal may have; delete one (DeleteUserPolicy) first",
                        r.principal
                    )));
                }
                r.inline
                    .insert(policy_name.to_string(), document.to_string());
                Ok(())
            },
        )
        .await
    }

    pub async fn delete_user_policy(
        &self,
        creds: &Credentials,
        user_name: &str,
        policy_name: &str,
    ) -> Result<(), KmsError> {
        self.edit_principal(
            creds,
            "DeleteUserPolicy",
            "iam:DeleteUserPolicy",
            user_name,
            |r| {
                r.inline.remove(policy_name).map(drop).ok_or_else(|| {
                    KmsError::NotFound(format!(
                        "{} has no inline policy {policy_name}",
                        r.principal
                    ))
                })
            },
        )
        .await
    }

    pub async fn list_user_policies(
        &self,
        creds: &Credentials,
        user_name: &str,
    ) -> Result<PrincipalRecord, KmsError> {
        self.run(creds, "ListUserPolicies", |ctx| {
            let principal = principal_arg(user_name)?;
            ctx.event.resources = vec![principal.clone()];
            let state = ctx.state();
            ctx.authorize(
                &state,
                "iam:ListUserPolicies",
                Target::Resource(&principal),
                &EncryptionContext::new(),
                &[],
            )?;
            existing(&state, &principal).cloned()
        })
        .await
    }

    /// The managed policies that ship with the product.
    pub async fn list_policies(
        &self,
        creds: &Credentials,
    ) -> Result<Vec<(&'static str, &'static str)>, KmsError> {
        self.run(creds, "ListPolicies", |ctx| {
            let state = ctx.state();
            ctx.authorize(
                &state,
                "iam:ListPolicies",
                Target::Resource("*"),
                &EncryptionContext::new(),
                &[],
            )?;
            Ok(crate::policy::managed_policies().to_vec())
        })
        .await
    }

    pub async fn get_caller_identity(&self, creds: &Credentials) -> Result<Caller, KmsError> {
        self.run(creds, "GetCallerIdentity", |ctx| Ok(ctx.caller().clone()))
            .await
    }

    /// Answers, for the end caller a service forwards, whether each
    /// action/resource pair is allowed. Only services may ask, only on behalf
    /// of someone, and only about non-key resources (key use is decided by
    /// the cryptographic call itself).
    pub async fn authorize_questions(
        &self,
        creds: &Credentials,
        questions: &[(String, String)],
    ) -> Result<(String, Vec<AuthorizationAnswer>), KmsError> {
        self.run(creds, "Authorize", |ctx| {
            if ctx.caller().via_service.is_none() {
                return Err(KmsError::validation(
                    "Authorize is for services: call it as a service principal with the end caller's token in x-on-behalf-of",
                ));
            }
            if questions.is_empty() || questions.len() > MAX_AUTHORIZE_QUESTIONS {
                return Err(KmsError::validation(format!(
                    "questions must have 1–{MAX_AUTHORIZE_QUESTIONS} entries"
                )));
            }
            for (action, resource) in questions {
                check_question(action, resource, "Authorize")?;
            }
            let state = ctx.state();
            let principal = ctx.principal().to_string();
            let mut answers = Vec::with_capacity(questions.len());
            let mut any_allowed = false;
            for (action, resource) in questions {
                let outcome = ctx.decide(&state, action, Target::Resource(resource), &EncryptionContext::new(), &[]);
                any_allowed |= outcome.is_ok();
                // Each question, as answered, in the record.
                ctx.event.conditions.push(crate::audit::AuditCondition {
                    action: action.clone(),
                    resource: resource.clone(),
                    decision: if outcome.is_ok() { "Allow" } else { "Deny" }.into(),
                    matched_statements: std::mem::take(&mut ctx.event.matched_statements),
                });
                answers.push(AuthorizationAnswer {
                    action: action.clone(),
                    resource: resource.clone(),
                    allowed: outcome.is_ok(),
                    explicit_deny: outcome.as_ref().is_err_and(|d| d.explicit),
                    message: outcome.err().map(|d| d.error.to_string()).unwrap_or_default(),
                });
            }
            ctx.event.resources = questions.iter().map(|(_, r)| r.clone()).collect();
            ctx.event.matched_statements.clear();
            ctx.event.decision = if answers.iter().all(|a| a.allowed) {
                "Allow"
            } else if any_allowed {
                "Partial"
            } else {
                "Deny"
            }
            .into();
            Ok((principal, answers))
        })
        .await
    }
}

/// The store's note that `principal` was deleted (the value: when, in
/// seconds since the epoch).
fn retired_meta(principal: &str) -> String {
    format!("retired-principal:{principal}")
}

/// Refuses a question `Authorize` or `x-authorize` may not ask: an empty
/// action or resource, or one about key use, which only the cryptographic
/// call itself decides.
fn check_question(action: &str, resource: &str, asker: &str) -> Result<(), KmsError> {
    if resource.starts_with("key/") || resource.starts_with("alias/") {
        return Err(KmsError::validation(format!(
            "{asker} does not decide key use ({resource}); call the key operation itself"
        )));
    }
    if action.is_empty() || resource.is_empty() {
        return Err(KmsError::validation(
            "every question needs an action and a resource",
        ));
    }
    Ok(())
}

impl Ctx<'_> {
    /// Decides, for the end caller, the `<action> <resource>` pairs a
    /// service made this call conditional on (`x-authorize` metadata), in
    /// order, before the call's own work: the first one refused refuses the
    /// call with its AccessDeniedException. This saves a service the
    /// separate `Authorize` round trip (and audit record) when its own
    /// permission check and a key use belong to one request: table-service
    /// reads an item with one Decrypt that also decides `table:GetItem`.
    /// Each condition's decision is in the call's audit record, in its
    /// `conditions` (see [`AuditEvent::put_condition_resources_first`]).
    pub(super) fn require(&mut self, required: &[String]) -> Result<(), KmsError> {
        if required.is_empty() {
            return Ok(());
        }
        if self.caller().via_service.is_none() {
            return Err(KmsError::validation(
                "x-authorize is for services: send it as a service principal with the end caller's token in x-on-behalf-of",
            ));
        }
        if required.len() > MAX_AUTHORIZE_QUESTIONS {
            return Err(KmsError::validation(format!(
                "x-authorize may be given at most {MAX_AUTHORIZE_QUESTIONS} times, not {}",
                required.len()
            )));
        }
        let mut questions = Vec::with_capacity(required.len());
        for value in required {
            let parsed = value
                .split_once(' ')
                .filter(|(a, r)| !a.is_empty() && !r.is_empty() && !r.contains(' '))
                .ok_or_else(|| {
                    KmsError::validation(format!(
                        "x-authorize value {value:?} is not \"<action> <resource>\" (e.g. \"table:GetItem table/orders\")"
                    ))
                })?;
            check_question(parsed.0, parsed.1, "x-authorize")?;
            questions.push(parsed);
        }
        let state = self.state();
        for (action, resource) in questions {
            self.decide_condition(&state, action, resource)?;
        }
        Ok(())
    }

    /// Decides `action` on a resource that identity policies alone govern,
    /// as one of the decisions a call needs before (or besides) its own:
    /// an `x-authorize` pair, or the alias of an alias operation. The
    /// decision goes into the record's `conditions`; a refusal is also the
    /// record's own decision and the call's error.
    pub(super) fn decide_condition(
        &mut self,
        state: &State,
        action: &str,
        resource: &str,
    ) -> Result<(), KmsError> {
        let outcome = self.authorize(
            state,
            action,
            Target::Resource(resource),
            &EncryptionContext::new(),
            &[],
        );
        let allowed = outcome.is_ok();
        self.event.conditions.push(crate::audit::AuditCondition {
            action: action.to_string(),
            resource: resource.to_string(),
            decision: if allowed { "Allow" } else { "Deny" }.into(),
            matched_statements: if allowed {
                std::mem::take(&mut self.event.matched_statements)
            } else {
                // A refusal is also the record's own decision.
                self.event.matched_statements.clone()
            },
        });
        outcome?;
        // The record's own decision is the call's.
        self.event.decision.clear();
        Ok(())
    }
}

impl AuditEvent {
    /// Lists the resources the call's conditions were decided on first
    /// among its resources, before (and whatever) the call's own work
    /// recorded.
    pub(super) fn put_condition_resources_first(&mut self) {
        if self.conditions.is_empty() {
            return;
        }
        let mut merged = Vec::with_capacity(self.resources.len() + self.conditions.len());
        for condition in &self.conditions {
            push_new(&mut merged, &condition.resource);
        }
        for value in self.resources.drain(..) {
            push_new(&mut merged, &value);
        }
        self.resources = merged;
    }
}

/// Appends `value` unless `list` holds it already.
fn push_new(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_string());
    }
}

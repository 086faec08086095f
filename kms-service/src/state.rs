//! The working state of kms-service, in memory, rebuilt from the store at
//! start-up. [`State::apply`] is the single path by which it changes, both
//! when loading and when serving, so memory and disk cannot drift apart.
//! Policies are parsed once here, not on every request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::grants::GrantRecord;
use crate::identity::{PrincipalRecord, TokenRecord};
use crate::keys::{AliasRecord, KeyRecord, KeyVersionRecord};
use crate::policy::{PolicyDocument, PolicyKind};
use crate::store::{Mutation, StoreError};

pub struct KeyEntry {
    pub record: KeyRecord,
    pub policy: Arc<PolicyDocument>,
    pub versions: BTreeMap<u32, KeyVersionRecord>,
    pub grants: BTreeSet<String>,
}

pub struct PrincipalEntry {
    pub record: PrincipalRecord,
    pub inline: Vec<(String, Arc<PolicyDocument>)>,
}

#[derive(Default)]
pub struct State {
    pub meta: BTreeMap<String, Vec<u8>>,
    pub keys: BTreeMap<String, KeyEntry>,
    pub aliases: BTreeMap<String, AliasRecord>,
    pub principals: BTreeMap<String, PrincipalEntry>,
    pub tokens: HashMap<[u8; 32], TokenRecord>,
    pub grants: BTreeMap<String, GrantRecord>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A stored policy, read with the rules it was stored under; one that a
/// rule added since would refuse is kept as it is, with a warning that says
/// what to change.
fn load_policy(
    text: &str,
    kind: PolicyKind,
    what: impl Fn() -> String,
) -> Result<PolicyDocument, StoreError> {
    let (doc, newer) = PolicyDocument::load(text, kind).map_err(|e| corrupt(&what(), e))?;
    if let Some(rule) = newer {
        tracing::warn!(
            policy = %what(),
            "a stored policy breaks a rule added since it was stored; it still applies as written, \
             but put a corrected version: {rule}"
        );
    }
    Ok(doc)
}

impl State {
    /// Applies one change. Callers validate before they build mutations, so
    /// a failure here means stored data is inconsistent.
    pub fn apply(&mut self, mutation: &Mutation) -> Result<(), StoreError> {
        match mutation {
            Mutation::PutMeta { name, value } => {
                self.meta.insert(name.clone(), value.clone());
            }
            Mutation::PutKey(record) => {
                let policy = Arc::new(load_policy(&record.policy, PolicyKind::Key, || {
                    format!("key {} policy", record.key_id)
                })?);
                match self.keys.get_mut(&record.key_id) {
                    Some(entry) => {
                        entry.record = record.clone();
                        entry.policy = policy;
                    }
                    None => {
                        self.keys.insert(
                            record.key_id.clone(),
                            KeyEntry {
                                record: record.clone(),
                                policy,
                                versions: BTreeMap::new(),
                                grants: BTreeSet::new(),
                            },
                        );
                    }
                }
            }
            Mutation::DeleteKey { key_id } => {
                if let Some(entry) = self.keys.remove(key_id) {
                    for grant in entry.grants {
                        self.grants.remove(&grant);
                    }
                }
                self.aliases.retain(|_, a| &a.key_id != key_id);
            }
            Mutation::PutKeyVersion(version) => {
                let entry = self
                    .keys
                    .get_mut(&version.key_id)
                    .ok_or_else(|| corrupt("key version", "version of an unknown key"))?;
                entry.versions.insert(version.version, version.clone());
            }
            Mutation::PutAlias(alias) => {
                self.aliases.insert(alias.alias_name.clone(), alias.clone());
            }
            Mutation::DeleteAlias { alias_name } => {
                self.aliases.remove(alias_name);
            }
            Mutation::PutPrincipal(record) => {
                let mut inline = Vec::with_capacity(record.inline.len());
                for (name, doc) in &record.inline {
                    let parsed = load_policy(doc, PolicyKind::Identity, || {
                        format!("inline policy {name} of {}", record.principal)
                    })?;
                    inline.push((name.clone(), Arc::new(parsed)));
                }
                self.principals.insert(
                    record.principal.clone(),
                    PrincipalEntry {
                        record: record.clone(),
                        inline,
                    },
                );
            }
            Mutation::DeletePrincipal { principal } => {
                self.principals.remove(principal);
                self.tokens.retain(|_, t| &t.principal != principal);
            }
            Mutation::PutToken(token) => {
                self.tokens.insert(token.digest, token.clone());
            }
            Mutation::PutGrant(grant) => {
                let entry = self
                    .keys
                    .get_mut(&grant.key_id)
                    .ok_or_else(|| corrupt("grant", "grant on an unknown key"))?;
                entry.grants.insert(grant.grant_id.clone());
                self.grants.insert(grant.grant_id.clone(), grant.clone());
            }
            Mutation::DeleteGrant { grant_id } => {
                if let Some(grant) = self.grants.remove(grant_id)
                    && let Some(entry) = self.keys.get_mut(&grant.key_id)
                {
                    entry.grants.remove(grant_id);
                }
            }
        }
        Ok(())
    }
}

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
    /// The same grants by grantee, so a decision looks only at the caller's
    /// (a key may have 50,000 grants, and every call on it decides).
    grantees: BTreeMap<String, BTreeSet<String>>,
}

impl KeyEntry {
    /// The ids of the grants on this key whose grantee is `principal`.
    pub fn grants_of<'a>(&'a self, principal: &str) -> impl Iterator<Item = &'a String> + 'a {
        self.grantees.get(principal).into_iter().flatten()
    }
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

/// Takes `grant` out of `entry`'s grantee index.
fn forget_grantee(entry: &mut KeyEntry, grant: &GrantRecord) {
    if let Some(ids) = entry.grantees.get_mut(&grant.grantee) {
        ids.remove(&grant.grant_id);
        if ids.is_empty() {
            entry.grantees.remove(&grant.grantee);
        }
    }
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
                                grantees: BTreeMap::new(),
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
            Mutation::DeleteToken { token_id } => {
                // Rare (a revocation past the ones kept), so a scan.
                self.tokens.retain(|_, t| t.token_id != *token_id);
            }
            Mutation::PutGrant(grant) => {
                let entry = self
                    .keys
                    .get_mut(&grant.key_id)
                    .ok_or_else(|| corrupt("grant", "grant on an unknown key"))?;
                entry.grants.insert(grant.grant_id.clone());
                entry
                    .grantees
                    .entry(grant.grantee.clone())
                    .or_default()
                    .insert(grant.grant_id.clone());
                if let Some(old) = self.grants.insert(grant.grant_id.clone(), grant.clone())
                    && old.grantee != grant.grantee
                {
                    forget_grantee(entry, &old);
                }
            }
            Mutation::DeleteGrant { grant_id } => {
                if let Some(grant) = self.grants.remove(grant_id)
                    && let Some(entry) = self.keys.get_mut(&grant.key_id)
                {
                    entry.grants.remove(grant_id);
                    forget_grantee(entry, &grant);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::{GrantConstraints, GrantOperation};
    use crate::keys::{KeySpec, KeyState};

    fn grant(id: &str, grantee: &str) -> GrantRecord {
        GrantRecord {
            grant_id: id.into(),
            key_id: "key-1".into(),
            name: String::new(),
            grantee: grantee.into(),
            retiring: None,
            issuing: "user/admin".into(),
            operations: BTreeSet::from([GrantOperation::Decrypt]),
            constraints: GrantConstraints::default(),
            created: 1_700_000_000,
        }
    }

    fn grants_of(state: &State, principal: &str) -> Vec<String> {
        state.keys["key-1"].grants_of(principal).cloned().collect()
    }

    /// Decisions look only at the caller's grants on a key: the index by
    /// grantee follows every grant made, changed and deleted.
    #[test]
    fn a_keys_grants_are_found_by_grantee() {
        let mut state = State::default();
        let key = KeyRecord {
            key_id: "key-1".into(),
            created: 1_700_000_000,
            creator: "user/admin".into(),
            description: String::new(),
            spec: KeySpec::SymmetricDefault,
            state: KeyState::Enabled,
            deletion_date: None,
            pending_window_days: 30,
            policy: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"}]}"#.into(),
            tags: BTreeMap::new(),
            rotation_period_days: None,
            next_rotation: None,
            current_version: 1,
        };
        let apply = |state: &mut State, mutation: Mutation| state.apply(&mutation).unwrap();
        apply(&mut state, Mutation::PutKey(key.clone()));
        for (id, grantee) in [
            ("g1", "user/alice"),
            ("g2", "user/bob"),
            ("g3", "user/alice"),
        ] {
            apply(&mut state, Mutation::PutGrant(grant(id, grantee)));
        }
        assert_eq!(grants_of(&state, "user/alice"), ["g1", "g3"]);
        assert_eq!(grants_of(&state, "user/bob"), ["g2"]);
        assert!(grants_of(&state, "user/carol").is_empty());

        // A grant stored again under another grantee moves.
        apply(&mut state, Mutation::PutGrant(grant("g3", "user/carol")));
        assert_eq!(grants_of(&state, "user/alice"), ["g1"]);
        assert_eq!(grants_of(&state, "user/carol"), ["g3"]);

        apply(
            &mut state,
            Mutation::DeleteGrant {
                grant_id: "g1".into(),
            },
        );
        assert!(grants_of(&state, "user/alice").is_empty());
        assert!(!state.keys["key-1"].grantees.contains_key("user/alice"));
        assert_eq!(state.keys["key-1"].grants.len(), 2);

        // A key stored again keeps its grants and their index.
        apply(&mut state, Mutation::PutKey(key));
        assert_eq!(grants_of(&state, "user/bob"), ["g2"]);
    }
}

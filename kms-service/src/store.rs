//! Durable state of kms-service behind one small trait, so that engines can
//! stand side by side and pass one conformance suite.
//!
//! The service keeps its working state in memory (`state.rs`) and sends every
//! change here as a batch of [`Mutation`]s; [`GroupCommitter`] merges the
//! batches of concurrent requests into one transaction, so many requests share
//! one fsync, and no request is answered before its batch is durable.
//! **Invariant:** key material reaches a store only wrapped by the root key.

mod commit;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use commit::GroupCommitter;

use crate::grants::GrantRecord;
use crate::identity::{PrincipalRecord, TokenRecord};
use crate::keys::{AliasRecord, KeyRecord, KeyVersionRecord};

/// One change to the durable state. Puts are upserts of whole records.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    PutMeta {
        name: String,
        value: Vec<u8>,
    },
    PutKey(KeyRecord),
    /// Destroys a key: its record, every version's material, its aliases and
    /// grants.
    DeleteKey {
        key_id: String,
    },
    PutKeyVersion(KeyVersionRecord),
    PutAlias(AliasRecord),
    DeleteAlias {
        alias_name: String,
    },
    PutPrincipal(PrincipalRecord),
    /// Removes a principal and its tokens.
    DeletePrincipal {
        principal: String,
    },
    PutToken(TokenRecord),
    /// Forgets a (revoked) token.
    DeleteToken {
        token_id: String,
    },
    PutGrant(GrantRecord),
    DeleteGrant {
        grant_id: String,
    },
}

/// Everything a store holds, as loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub meta: BTreeMap<String, Vec<u8>>,
    pub keys: Vec<KeyRecord>,
    pub versions: Vec<KeyVersionRecord>,
    pub aliases: Vec<AliasRecord>,
    pub principals: Vec<PrincipalRecord>,
    pub tokens: Vec<TokenRecord>,
    pub grants: Vec<GrantRecord>,
}

impl Snapshot {
    /// The snapshot as the mutations that would rebuild it, in dependency
    /// order (keys before their versions, principals before their tokens).
    pub fn into_mutations(self) -> Vec<Mutation> {
        let mut out = Vec::new();
        out.extend(
            self.meta
                .into_iter()
                .map(|(name, value)| Mutation::PutMeta { name, value }),
        );
        out.extend(self.keys.into_iter().map(Mutation::PutKey));
        out.extend(self.versions.into_iter().map(Mutation::PutKeyVersion));
        out.extend(self.aliases.into_iter().map(Mutation::PutAlias));
        out.extend(self.principals.into_iter().map(Mutation::PutPrincipal));
        out.extend(self.tokens.into_iter().map(Mutation::PutToken));
        out.extend(self.grants.into_iter().map(Mutation::PutGrant));
        out
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage engine failed: {0}")]
    Engine(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("storage is unavailable after an earlier write failed; restart the service")]
    Poisoned,
}

/// A storage engine. Implementations must make `commit` atomic (all of the
/// batch or none of it) and durable before returning.
pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<Snapshot, StoreError>;
    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError>;
}

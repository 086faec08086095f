//! Grants: delegations of specific key operations to a grantee, optionally
//! limited by encryption-context constraints. A grant is an allow that the
//! policy evaluator consults beside the key policy.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::crypto::context::EncryptionContext;

pub const MAX_GRANTS_PER_KEY: usize = 50_000;
/// Grant tokens are `gt-<grant id>`; they only let a grant be named in a
/// request, they confer nothing by themselves.
pub const TOKEN_PREFIX: &str = "gt-";
pub const MAX_GRANT_TOKENS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GrantOperation {
    Decrypt,
    Encrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    ReEncryptFrom,
    ReEncryptTo,
    DescribeKey,
    CreateGrant,
    RetireGrant,
    GenerateMac,
    VerifyMac,
}

impl GrantOperation {
    /// The policy action this operation corresponds to.
    pub fn action(self) -> &'static str {
        match self {
            GrantOperation::Decrypt => "kms:Decrypt",
            GrantOperation::Encrypt => "kms:Encrypt",
            GrantOperation::GenerateDataKey => "kms:GenerateDataKey",
            GrantOperation::GenerateDataKeyWithoutPlaintext => {
                "kms:GenerateDataKeyWithoutPlaintext"
            }
            GrantOperation::ReEncryptFrom => "kms:ReEncryptFrom",
            GrantOperation::ReEncryptTo => "kms:ReEncryptTo",
            GrantOperation::DescribeKey => "kms:DescribeKey",
            GrantOperation::CreateGrant => "kms:CreateGrant",
            GrantOperation::RetireGrant => "kms:RetireGrant",
            GrantOperation::GenerateMac => "kms:GenerateMac",
            GrantOperation::VerifyMac => "kms:VerifyMac",
        }
    }

    /// Operations whose requests carry an encryption context; constraints
    /// only make sense for these.
    pub fn uses_context(self) -> bool {
        matches!(
            self,
            GrantOperation::Decrypt
                | GrantOperation::Encrypt
                | GrantOperation::GenerateDataKey
                | GrantOperation::GenerateDataKeyWithoutPlaintext
                | GrantOperation::ReEncryptFrom
                | GrantOperation::ReEncryptTo
        )
    }

    /// Whether a key of `usage` can perform this operation at all.
    pub fn applies_to(self, usage: crate::keys::KeyUsage) -> bool {
        use crate::keys::KeyUsage;
        match self {
            GrantOperation::DescribeKey
            | GrantOperation::CreateGrant
            | GrantOperation::RetireGrant => true,
            GrantOperation::GenerateMac | GrantOperation::VerifyMac => {
                usage == KeyUsage::GenerateVerifyMac
            }
            _ => usage == KeyUsage::EncryptDecrypt,
        }
    }

    pub const ALL: [GrantOperation; 11] = [
        GrantOperation::Decrypt,
        GrantOperation::Encrypt,
        GrantOperation::GenerateDataKey,
        GrantOperation::GenerateDataKeyWithoutPlaintext,
        GrantOperation::ReEncryptFrom,
        GrantOperation::ReEncryptTo,
        GrantOperation::DescribeKey,
        GrantOperation::CreateGrant,
        GrantOperation::RetireGrant,
        GrantOperation::GenerateMac,
        GrantOperation::VerifyMac,
    ];

    pub fn from_action(action: &str) -> Option<GrantOperation> {
        Self::ALL.into_iter().find(|op| op.action() == action)
    }
}

/// Encryption-context limits of a grant. At most one of the two is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantConstraints {
    pub equals: Option<EncryptionContext>,
    pub subset: Option<EncryptionContext>,
}

impl GrantConstraints {
    /// Whether every context these constraints allow is also allowed by
    /// `other`: an `EncryptionContextEquals` must be the same one; an
    /// `EncryptionContextSubset` must be kept by a subset (or an equals)
    /// that holds each of its pairs.
    pub fn at_least_as_strict_as(&self, other: &GrantConstraints) -> bool {
        let holds_all = |outer: &EncryptionContext, inner: &EncryptionContext| {
            inner.iter().all(|(k, v)| outer.get(k) == Some(v))
        };
        let equals_ok = match &other.equals {
            None => true,
            Some(required) => self.equals.as_ref() == Some(required),
        };
        let subset_ok = match &other.subset {
            None => true,
            Some(required) => match (&self.equals, &self.subset) {
                (Some(equals), _) if holds_all(equals, required) => true,
                (_, Some(subset)) => holds_all(subset, required),
                _ => false,
            },
        };
        equals_ok && subset_ok
    }

    /// Whether a request with this context satisfies the constraints.
    /// The constraint's pairs (of whichever is set; none when neither is):
    /// the encryption context that conditions on CreateGrant and
    /// RetireGrant see, as in AWS.
    pub fn pairs(&self) -> EncryptionContext {
        self.equals
            .as_ref()
            .or(self.subset.as_ref())
            .cloned()
            .unwrap_or_default()
    }

    pub fn allows(&self, context: &EncryptionContext) -> bool {
        if let Some(equals) = &self.equals
            && equals != context
        {
            return false;
        }
        if let Some(subset) = &self.subset
            && !subset.iter().all(|(k, v)| context.get(k) == Some(v))
        {
            return false;
        }
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub grant_id: String,
    pub key_id: String,
    pub name: String,
    pub grantee: String,
    pub retiring: Option<String>,
    pub issuing: String,
    pub operations: BTreeSet<GrantOperation>,
    pub constraints: GrantConstraints,
    pub created: i64,
}

impl GrantRecord {
    /// About how many bytes this grant takes in a ListGrants answer (its
    /// text, plus room for the key's ARN, the operations and the framing).
    pub fn approximate_size(&self) -> usize {
        let context = |c: &Option<EncryptionContext>| {
            c.iter()
                .flatten()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
        };
        self.grant_id.len()
            + self.key_id.len()
            + self.name.len()
            + self.grantee.len()
            + self.retiring.as_ref().map_or(0, String::len)
            + self.issuing.len()
            + self.operations.len() * 40
            + context(&self.constraints.equals)
            + context(&self.constraints.subset)
            + 256
    }

    /// Whether this grant allows `principal` to do `action` with `context`.
    pub fn allows(&self, principal: &str, action: &str, context: &EncryptionContext) -> bool {
        self.grantee == principal
            && GrantOperation::from_action(action).is_some_and(|op| {
                // Constraints bound only the operations that take an
                // encryption context (DescribeKey is not one).
                self.operations.contains(&op)
                    && (!op.uses_context() || self.constraints.allows(context))
            })
    }

    /// Whether this grant lets `principal` create a grant for
    /// `operations` under `constraints`: it allows CreateGrant, the new
    /// grant's operations are among its own, and the new grant's
    /// constraints are at least as strict as its own (AWS's rules for a
    /// grant made with a grant), so a grant can never be used to widen
    /// itself.
    pub fn allows_child(
        &self,
        principal: &str,
        operations: &BTreeSet<GrantOperation>,
        constraints: &GrantConstraints,
    ) -> bool {
        self.grantee == principal
            && self.operations.contains(&GrantOperation::CreateGrant)
            && operations.is_subset(&self.operations)
            && constraints.at_least_as_strict_as(&self.constraints)
    }

    pub fn token(&self) -> String {
        format!("{TOKEN_PREFIX}{}", self.grant_id)
    }
}

/// The grant id a grant token names, if it is well-formed.
pub fn grant_id_from_token(token: &str) -> Option<&str> {
    token
        .strip_prefix(TOKEN_PREFIX)
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

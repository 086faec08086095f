//! IAM-style JSON authorization policies for keys, tables and users.
//!
//! This module parses key policies and identity policies with strict validation
//! (every mistake is rejected with a message that names the statement and the
//! field to fix) and evaluates one request against them with AWS KMS semantics:
//! everything is denied by default, any matching `Deny` wins regardless of
//! order, and identity policies only count for a key when its key policy
//! delegates to them through the `account` principal.

use std::collections::BTreeMap;
use std::fmt;

mod condition;
mod document;
mod evaluate;
mod managed;
#[cfg(test)]
mod tests;
mod wildcard;

pub use managed::{default_key_policy, managed_policies};
pub use wildcard::{wildcard_match, wildcard_match_ignore_ascii_case};

/// Largest accepted policy, measured in bytes of JSON text (as AWS KMS).
pub const MAX_POLICY_BYTES: usize = 32 * 1024;

/// Largest accepted number of statements in one policy.
pub const MAX_STATEMENTS: usize = 100;

/// The only policy language version understood by the parser.
pub const POLICY_VERSION: &str = "2012-10-17";

/// Where a policy is attached, which decides whether `Principal` is required.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Attached to a key: every statement must name a `Principal`.
    Key,
    /// Attached to a user or service: `Principal` is forbidden because the
    /// principal is whoever the policy is attached to.
    Identity,
}

/// Whether a policy is being stored now or was stored earlier. Rules added
/// to the language refuse new policies only: a policy a previous version
/// accepted still loads (with a warning), so an upgrade never leaves a
/// key's or a principal's stored policy unreadable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Being put now (CreateKey, PutKeyPolicy, PutUserPolicy): every rule.
    New,
    /// Read back from the store: the rules of the first version only.
    Stored,
}

/// A validated policy, ready to be evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDocument {
    kind: PolicyKind,
    id: Option<String>,
    statements: Vec<document::Statement>,
}

impl PolicyDocument {
    /// Whether a statement names `principal` itself in its `Principal`
    /// (`*` and `account` name no one in particular).
    pub fn names_principal(&self, principal: &str) -> bool {
        self.statements.iter().any(|statement| {
            statement.principals.as_ref().is_some_and(|named| {
                named
                    .iter()
                    .any(|p| matches!(p, document::Principal::Named(n) if n == principal))
            })
        })
    }

    /// Parses and validates a policy. Nothing that could silently change the
    /// meaning of the policy (unknown fields, duplicate JSON keys, unknown
    /// operators or condition keys) is tolerated.
    pub fn parse(json: &str, kind: PolicyKind) -> Result<PolicyDocument, PolicyError> {
        document::parse(json, kind, Origin::New)
    }

    /// Parses a stored policy: [`PolicyDocument::parse`] without the rules
    /// added since policies were first stored. When the stored text breaks
    /// one of them, the document comes with that rule's refusal, for a
    /// warning.
    pub fn load(
        json: &str,
        kind: PolicyKind,
    ) -> Result<(PolicyDocument, Option<PolicyError>), PolicyError> {
        match document::parse(json, kind, Origin::New) {
            Ok(doc) => Ok((doc, None)),
            Err(newer) => document::parse(json, kind, Origin::Stored).map(|doc| (doc, Some(newer))),
        }
    }

    pub fn statement_count(&self) -> usize {
        self.statements.len()
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// The optional top-level `Id`.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

/// Values of condition keys for one request. Keys are matched
/// case-insensitively, as in AWS: the `<k>` of `kms:EncryptionContext:<k>`
/// too (the values compare as the operator says). An empty value list counts
/// as an absent key. When `kms:CallerPrincipal` is not set, conditions on it see
/// [`Request::principal`], so a caller cannot dodge a condition by omission.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConditionContext {
    values: BTreeMap<String, Vec<String>>,
}

impl ConditionContext {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a single-valued key, replacing any previous value.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.values
            .insert(condition::canonical_key(key), vec![value.into()]);
    }

    /// Adds a value to a key (after any it has): the values of context keys
    /// that differ only by case all count for `kms:EncryptionContext:<k>`.
    pub fn add(&mut self, key: &str, value: impl Into<String>) {
        self.values
            .entry(condition::canonical_key(key))
            .or_default()
            .push(value.into());
    }

    /// Sets a multi-valued key such as `kms:EncryptionContextKeys`, replacing
    /// any previous values. An empty list is allowed.
    pub fn set_multi(&mut self, key: &str, values: Vec<String>) {
        self.values.insert(condition::canonical_key(key), values);
    }

    /// The values stored for `key`, looked up case-insensitively.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.values
            .get(&condition::canonical_key(key))
            .map(Vec::as_slice)
    }
}

/// One authorization question: may `principal` perform `action` on `resource`?
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The end caller, e.g. `"user/bob"`.
    pub principal: &'a str,
    /// e.g. `"kms:Decrypt"`, `"table:GetItem"`.
    pub action: &'a str,
    /// e.g. `"key/1234abcd"`, `"table/orders"`.
    pub resource: &'a str,
    pub context: &'a ConditionContext,
}

/// The outcome of [`evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `matched` names the allowing statements, prefixed by their policy:
    /// `"key-policy:<Sid>"`, `"identity:<policy name>:<Sid>"` or `"grant:<id>"`;
    /// statements without a Sid are named `Statement[<index>]`.
    Allow {
        via: AllowedBy,
        matched: Vec<String>,
    },
    /// `matched` names every matching `Deny` statement, named as for `Allow`.
    ExplicitDeny {
        matched: Vec<String>,
    },
    ImplicitDeny {
        reason: DenyReason,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Which mechanism allowed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowedBy {
    KeyPolicy,
    Grant,
    IdentityPolicy,
}

/// Why a request was denied when no statement denied it explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// No identity policy statement allows the request (and, for keys,
    /// neither the key policy nor a grant does).
    NoIdentityPolicyAllows,
    /// An identity policy allows the request, but the key policy does not
    /// delegate to identity policies (no matching `account` statement).
    NoKeyPolicyAllows,
}

impl DenyReason {
    /// The AWS-style phrase that precedes the action name, e.g.
    /// `"no identity-based policy allows the"`.
    pub fn phrase(&self) -> &'static str {
        match self {
            DenyReason::NoIdentityPolicyAllows => "no identity-based policy allows the",
            DenyReason::NoKeyPolicyAllows => "no resource-based policy allows the",
        }
    }

    /// The AWS-style explanation, e.g.
    /// `"because no identity-based policy allows the kms:Decrypt action"`.
    pub fn explain(&self, action: &str) -> String {
        format!("because {} {action} action", self.phrase())
    }
}

/// The policies that apply to one request.
#[derive(Clone, Copy, Debug)]
pub struct Evaluation<'a> {
    /// `None` for resources that are not keys (tables, users).
    pub key_policy: Option<&'a PolicyDocument>,
    /// `(policy name, document)` for every identity policy attached to the caller.
    pub identity_policies: &'a [(&'a str, &'a PolicyDocument)],
    /// `Some(grant_id)` when the caller already found a grant that allows this
    /// request; grant matching happens elsewhere.
    pub grant: Option<&'a str>,
}

/// Decides a request: explicit deny beats every allow; otherwise the key
/// policy, a grant, or an identity policy (when the key policy delegates to
/// identity policies, or the resource is not a key) can allow it.
pub fn evaluate(request: &Request<'_>, policies: &Evaluation<'_>) -> Decision {
    evaluate::decide(request, policies)
}

/// Where in a policy a [`PolicyError`] was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Document,
    Statement { index: usize, sid: Option<String> },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Document => f.write_str("policy document"),
            Location::Statement { index, sid: None } => write!(f, "Statement[{index}]"),
            Location::Statement {
                index,
                sid: Some(sid),
            } => write!(f, "Statement[{index}] (Sid \"{sid}\")"),
        }
    }
}

/// Why a policy was rejected. Every message names what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error(
        "policy document is {size} bytes but the limit is {max} bytes of JSON text; split it into several policies or remove statements"
    )]
    TooLarge { size: usize, max: usize },

    #[error("policy is not valid JSON: {detail}")]
    InvalidJson { detail: String },

    #[error(
        "policy document must be a JSON object like {{\"Version\": \"2012-10-17\", \"Statement\": [...]}}, found {found}"
    )]
    NotAnObject { found: &'static str },

    #[error("{at}: unknown field \"{field}\"; allowed fields are {allowed}")]
    UnknownField {
        at: Location,
        field: String,
        allowed: &'static str,
    },

    #[error("{at}: missing \"{field}\"; {hint}")]
    MissingField {
        at: Location,
        field: &'static str,
        hint: &'static str,
    },

    #[error("{at}: \"{field}\" must be {expected}, found {found}")]
    WrongType {
        at: Location,
        field: String,
        expected: &'static str,
        found: &'static str,
    },

    #[error("{at}: \"{field}\" must not be empty")]
    Empty { at: Location, field: String },

    #[error("unsupported policy \"Version\" \"{found}\"; use \"Version\": \"2012-10-17\"")]
    UnsupportedVersion { found: String },

    #[error(
        "{at}: {field} value \"{value}\" contains a policy variable (\"${{...}}\"), which this service does not substitute: it would be compared as plain text. Name the value itself, or for the caller use the kms:CallerPrincipal condition key"
    )]
    PolicyVariable {
        at: Location,
        field: String,
        value: String,
    },

    #[error(
        "{at}: \"{operator}\" on \"{key}\", which holds one value per request: ForAllValues is true whenever the key is absent, so this would allow (or deny nothing) without the value it names; use \"{plain}\" instead"
    )]
    SetOperatorOnSingleValuedKey {
        at: Location,
        operator: String,
        key: String,
        plain: String,
    },

    #[error("\"Statement\" is empty; add at least one statement")]
    NoStatements,

    #[error("policy has {count} statements but the limit is {max}; split it into several policies")]
    TooManyStatements { count: usize, max: usize },

    #[error(
        "{at}: Sid \"{sid}\" is already used by Statement[{first}]; Sids must be unique within a policy"
    )]
    DuplicateSid {
        at: Location,
        sid: String,
        first: usize,
    },

    #[error("{at}: \"Effect\" must be \"Allow\" or \"Deny\", found \"{found}\"")]
    InvalidEffect { at: Location, found: String },

    #[error("{at}: use either \"{field}\" or \"Not{field}\", not both")]
    ConflictingFields { at: Location, field: &'static str },

    #[error(
        "{at}: \"Principal\" is not allowed in an identity policy; remove it, because the policy applies to the user or service it is attached to"
    )]
    PrincipalInIdentityPolicy { at: Location },

    #[error(
        "{at}: key policy statements must name a \"Principal\", e.g. \"Principal\": {{\"AWS\": \"user/alice\"}}"
    )]
    MissingPrincipal { at: Location },

    #[error(
        "{at}: \"NotPrincipal\" is not supported; list the principals in \"Principal\" instead, or use a Deny statement with a kms:CallerPrincipal condition"
    )]
    NotPrincipalUnsupported { at: Location },

    #[error(
        "{at}: a principal given as a plain string must be \"*\"; write \"Principal\": {{\"AWS\": \"{found}\"}} instead"
    )]
    BarePrincipal { at: Location, found: String },

    #[error(
        "{at}: unsupported principal type \"{found}\"; only \"AWS\" is supported, e.g. {{\"AWS\": \"user/alice\"}}"
    )]
    UnsupportedPrincipalType { at: Location, found: String },

    #[error(
        "{at}: invalid principal \"{principal}\"; use \"*\", \"account\", \"user/<name>\" or \"service/<name>\", where <name> is 1 to 64 characters from A-Z a-z 0-9 + = , . @ _ -"
    )]
    InvalidPrincipal { at: Location, principal: String },

    #[error(
        "{at}: invalid action \"{action}\"; write \"*\" or \"<service>:<name>\" such as \"kms:Decrypt\" or \"kms:Generate*\" (name: letters, digits, * and ? only)"
    )]
    InvalidAction { at: Location, action: String },

    #[error(
        "{at}: unknown service prefix \"{prefix}\" in action \"{action}\"; use kms, table or iam"
    )]
    UnknownServicePrefix {
        at: Location,
        action: String,
        prefix: String,
    },

    #[error(
        "{at}: invalid resource \"{resource}\"; use \"*\" or key/<id>, alias/<name>, table/<name> or user/<name> (* and ? wildcards are allowed after the slash)"
    )]
    InvalidResource { at: Location, resource: String },

    #[error(
        "{at}: unknown condition operator \"{operator}\"; use StringEquals, StringNotEquals, StringEqualsIgnoreCase, StringNotEqualsIgnoreCase, StringLike, StringNotLike, Bool or Null, optionally with a ForAnyValue:/ForAllValues: prefix or an IfExists suffix (not on Null)"
    )]
    UnknownConditionOperator { at: Location, operator: String },

    #[error(
        "{at}: unknown condition key \"{key}\" under {operator}; supported keys are kms:EncryptionContext:<key>, kms:EncryptionContextKeys, kms:ViaService, kms:GrantOperations, kms:CallerPrincipal, kms:GranteePrincipal, kms:RetiringPrincipal, kms:GrantIsForAWSResource, kms:KeySpec and kms:RequestAlias"
    )]
    UnknownConditionKey {
        at: Location,
        operator: String,
        key: String,
    },

    #[error(
        "{at}: condition operator {operator} cannot test \"{key}\", which holds {holds}; use {use_instead}"
    )]
    OperatorKeyMismatch {
        at: Location,
        operator: String,
        key: String,
        holds: &'static str,
        use_instead: &'static str,
    },

    #[error("{at}: {operator} condition on \"{key}\": {detail}")]
    InvalidConditionValue {
        at: Location,
        operator: String,
        key: String,
        detail: String,
    },
}

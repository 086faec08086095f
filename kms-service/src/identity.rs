//! Principals (users and services), their access tokens and their identity
//! policies. Tokens are random, shown once and stored only as a SHA-256
//! digest; lookups compare digests, so a stolen database yields no token.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::random_array;

/// Prefix that makes our tokens recognisable to secret scanners.
pub const TOKEN_PREFIX: &str = "lbx_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrincipalKind {
    User,
    Service,
}

impl PrincipalKind {
    pub fn prefix(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Service => "service",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    /// `user/alice` or `service/table-service`.
    pub principal: String,
    pub kind: PrincipalKind,
    pub created: i64,
    /// Names of managed policies attached.
    pub attached: BTreeSet<String>,
    /// Inline policy name → JSON document.
    pub inline: BTreeMap<String, String>,
}

impl PrincipalRecord {
    pub fn name(&self) -> &str {
        self.principal
            .split_once('/')
            .map_or(self.principal.as_str(), |(_, n)| n)
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub token_id: String,
    pub principal: String,
    pub digest: [u8; 32],
    pub created: i64,
    pub revoked: Option<i64>,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("token_id", &self.token_id)
            .field("principal", &self.principal)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// A freshly minted token: the secret goes to the caller once, the record to
/// the store.
pub struct NewToken {
    pub secret: zeroize::Zeroizing<String>,
    pub record: TokenRecord,
}

/// Mints a 256-bit random token for `principal`.
pub fn mint_token(principal: &str, now: i64) -> NewToken {
    use base64::Engine;
    let raw: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(random_array());
    let secret = zeroize::Zeroizing::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    ));
    chosen_token(principal, now, secret)
}

/// Shortest and longest token a deployment may choose
/// (`--admin-token-secret-file`): 32 characters of base64 carry 192 bits.
pub const SECRET_TOKEN_CHARS: std::ops::RangeInclusive<usize> = 32..=256;

/// Checks a token a deployment chose: 32–256 characters of A–Z a–z 0–9
/// and `-._~+/=` (base64 of either alphabet, hex, or our own tokens).
pub fn check_chosen_token(secret: &str) -> Result<(), String> {
    let chars = secret.chars().count();
    if !SECRET_TOKEN_CHARS.contains(&chars) {
        return Err(format!(
            "the token has {chars} characters; it must have {}–{} (e.g. `openssl rand -base64 32`)",
            SECRET_TOKEN_CHARS.start(),
            SECRET_TOKEN_CHARS.end()
        ));
    }
    // The offending character is not shown: it is part of a secret.
    if let Some(at) = secret
        .chars()
        .position(|c| !(c.is_ascii_alphanumeric() || "-._~+/=".contains(c)))
    {
        return Err(format!(
            "character {} of the token is not allowed; a token may only contain A–Z, a–z, 0–9 and -._~+/=",
            at + 1
        ));
    }
    Ok(())
}

/// A token record for `secret`: one just minted, or one the deployment
/// chose (checked with [`check_chosen_token`]).
pub fn chosen_token(principal: &str, now: i64, secret: zeroize::Zeroizing<String>) -> NewToken {
    let id: [u8; 8] = random_array();
    NewToken {
        record: TokenRecord {
            token_id: format!("tok-{}", hex::encode(id)),
            principal: principal.to_string(),
            digest: token_digest(&secret),
            created: now,
            revoked: None,
        },
        secret,
    }
}

/// SHA-256 of the token text, the only form we store.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks a user name: 1–64 of `A–Z a–z 0–9 + = , . @ _ -`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("user name {name:?} must have 1–64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        return Err(format!(
            "user name {name:?} may only contain A–Z, a–z, 0–9 and +=,.@_-"
        ));
    }
    Ok(())
}

/// Turns what a request says (`alice`, `user/alice`, `service/x`) into a
/// principal name.
pub fn principal_from_request(user_name: &str) -> Result<String, String> {
    let (kind, name) = match user_name.split_once('/') {
        Some(("user", n)) => ("user", n),
        Some(("service", n)) => ("service", n),
        Some((other, _)) => {
            return Err(format!(
                "principal {user_name:?} has unknown kind {other:?}; use user/NAME or service/NAME"
            ));
        }
        None => ("user", user_name),
    };
    validate_name(name)?;
    Ok(format!("{kind}/{name}"))
}

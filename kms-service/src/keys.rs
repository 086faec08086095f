//! Customer master keys: their metadata, life-cycle states and versions.
//! Plain data; the operations on keys live in `service/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::mac::MacAlgorithm;

/// Deletion windows AWS allows, in days.
pub const PENDING_WINDOW_DAYS: std::ops::RangeInclusive<u32> = 7..=30;
pub const DEFAULT_PENDING_WINDOW_DAYS: u32 = 30;
/// Automatic rotation periods AWS allows, in days.
pub const ROTATION_PERIOD_DAYS: std::ops::RangeInclusive<u32> = 90..=2560;
pub const DEFAULT_ROTATION_PERIOD_DAYS: u32 = 365;
pub const MAX_DESCRIPTION_LEN: usize = 8192;
pub const MAX_TAGS: usize = 50;
/// On-demand rotations allowed per key (AWS's quota too); automatic
/// rotation is not counted, its period bounds it.
pub const MAX_ON_DEMAND_ROTATIONS: usize = 25;
pub const SECONDS_PER_DAY: i64 = 86_400;

/// What a key's material is and so what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeySpec {
    SymmetricDefault,
    Hmac256,
    Hmac384,
    Hmac512,
}

impl KeySpec {
    pub fn usage(self) -> KeyUsage {
        match self {
            KeySpec::SymmetricDefault => KeyUsage::EncryptDecrypt,
            _ => KeyUsage::GenerateVerifyMac,
        }
    }

    /// Bytes of backing key material per version.
    pub fn material_len(self) -> usize {
        match self.mac_algorithm() {
            Some(alg) => alg.key_len(),
            None => 32,
        }
    }

    pub fn mac_algorithm(self) -> Option<MacAlgorithm> {
        match self {
            KeySpec::SymmetricDefault => None,
            KeySpec::Hmac256 => Some(MacAlgorithm::HmacSha256),
            KeySpec::Hmac384 => Some(MacAlgorithm::HmacSha384),
            KeySpec::Hmac512 => Some(MacAlgorithm::HmacSha512),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeySpec::SymmetricDefault => "SYMMETRIC_DEFAULT",
            KeySpec::Hmac256 => "HMAC_256",
            KeySpec::Hmac384 => "HMAC_384",
            KeySpec::Hmac512 => "HMAC_512",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyUsage {
    EncryptDecrypt,
    GenerateVerifyMac,
}

impl KeyUsage {
    pub fn name(self) -> &'static str {
        match self {
            KeyUsage::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyUsage::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
        }
    }
}

/// How a key version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionOrigin {
    Created,
    AutomaticRotation,
    OnDemandRotation,
}

/// Everything about a key except its versions' material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// UUID, lower-case hyphenated.
    pub key_id: String,
    pub created: i64,
    pub creator: String,
    pub description: String,
    pub spec: KeySpec,
    pub state: KeyState,
    /// Set while pending deletion: when the material is destroyed.
    pub deletion_date: Option<i64>,
    pub pending_window_days: u32,
    /// Key policy JSON as the user stored it.
    pub policy: String,
    pub tags: BTreeMap<String, String>,
    /// Set when automatic rotation is enabled.
    pub rotation_period_days: Option<u32>,
    pub next_rotation: Option<i64>,
    /// The version new ciphertexts use; versions are numbered from 1.
    pub current_version: u32,
}

impl KeyRecord {
    /// The resource name policies use for this key.
    pub fn resource(&self) -> String {
        format!("key/{}", self.key_id)
    }
}

/// One version of a key's backing material, wrapped by the root key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersionRecord {
    pub key_id: String,
    pub version: u32,
    pub wrapped: Vec<u8>,
    pub created: i64,
    pub origin: VersionOrigin,
}

impl std::fmt::Debug for KeyVersionRecord {
    // Wrapped material is not secret, but it is noise in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersionRecord")
            .field("key_id", &self.key_id)
            .field("version", &self.version)
            .field("created", &self.created)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Label binding a wrapped backing key to its key id and version, so a
/// wrapped key copied to another row does not unwrap.
pub fn wrap_label(key_id: &str, version: u32) -> Vec<u8> {
    format!("{key_id}/{version}").into_bytes()
}

/// `alias/name` → key id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub alias_name: String,
    pub key_id: String,
    pub created: i64,
}

/// Checks an alias name as AWS does: `alias/` then 1–250 of `[A-Za-z0-9/_-]`,
/// and not in the reserved `alias/aws/` space.
/// Aliases of the service-managed keys kms-service creates itself (the
/// counterpart of AWS managed keys' `alias/aws/…`): nobody may create or
/// re-point them through the API.
pub const SERVICE_MANAGED_ALIASES: [&str; 1] = ["alias/table-service"];

/// Refuses an alias reserved for a service-managed key.
pub fn refuse_service_managed_alias(name: &str, what: &str) -> Result<(), String> {
    if SERVICE_MANAGED_ALIASES.contains(&name) {
        return Err(format!(
            "alias {name} is reserved for the service-managed key kms-service creates; it cannot be {what}"
        ));
    }
    Ok(())
}

pub fn validate_alias_name(name: &str) -> Result<(), String> {
    let Some(rest) = name.strip_prefix("alias/") else {
        return Err(format!("alias name {name:?} must start with \"alias/\""));
    };
    if rest.is_empty() || rest.len() > 250 {
        return Err(format!(
            "alias name {name:?} must have 1–250 characters after \"alias/\""
        ));
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        return Err(format!(
            "alias name {name:?} may only contain A–Z, a–z, 0–9, '/', '_' and '-'"
        ));
    }
    if rest.starts_with("aws/") {
        return Err(format!("alias name {name:?} is reserved (alias/aws/…)"));
    }
    Ok(())
}

//! Conversions between protobuf messages and domain types.

use std::collections::HashMap;

use lockbox_proto::kms::v1 as pb;

use crate::crypto::context::EncryptionContext;
use crate::crypto::mac::MacAlgorithm;
use crate::error::KmsError;
use crate::grants::{GrantConstraints, GrantOperation, GrantRecord};
use crate::keys::{KeyRecord, KeySpec, KeyState, KeyUsage, VersionOrigin};

pub fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

pub fn context(map: HashMap<String, String>) -> EncryptionContext {
    map.into_iter().collect()
}

pub fn key_spec(value: i32) -> Result<KeySpec, KmsError> {
    match pb::KeySpec::try_from(value) {
        Ok(pb::KeySpec::Unspecified | pb::KeySpec::SymmetricDefault) => {
            Ok(KeySpec::SymmetricDefault)
        }
        Ok(pb::KeySpec::Hmac256) => Ok(KeySpec::Hmac256),
        Ok(pb::KeySpec::Hmac384) => Ok(KeySpec::Hmac384),
        Ok(pb::KeySpec::Hmac512) => Ok(KeySpec::Hmac512),
        Err(_) => Err(KmsError::validation(format!(
            "key_spec {value} is not a known KeySpec"
        ))),
    }
}

pub fn key_usage(value: i32) -> Result<Option<KeyUsage>, KmsError> {
    match pb::KeyUsage::try_from(value) {
        Ok(pb::KeyUsage::Unspecified) => Ok(None),
        Ok(pb::KeyUsage::EncryptDecrypt) => Ok(Some(KeyUsage::EncryptDecrypt)),
        Ok(pb::KeyUsage::GenerateVerifyMac) => Ok(Some(KeyUsage::GenerateVerifyMac)),
        Err(_) => Err(KmsError::validation(format!(
            "key_usage {value} is not a known KeyUsage"
        ))),
    }
}

pub fn mac_algorithm(value: i32) -> Result<MacAlgorithm, KmsError> {
    match pb::MacAlgorithm::try_from(value) {
        Ok(pb::MacAlgorithm::HmacSha256) => Ok(MacAlgorithm::HmacSha256),
        Ok(pb::MacAlgorithm::HmacSha384) => Ok(MacAlgorithm::HmacSha384),
        Ok(pb::MacAlgorithm::HmacSha512) => Ok(MacAlgorithm::HmacSha512),
        Ok(pb::MacAlgorithm::Unspecified) => Err(KmsError::validation(
            "mac_algorithm is required: MAC_ALGORITHM_HMAC_SHA_256, _384 or _512, matching the key spec",
        )),
        Err(_) => Err(KmsError::validation(format!(
            "mac_algorithm {value} is not a known MacAlgorithm: use MAC_ALGORITHM_HMAC_SHA_256, _384 or _512, matching the key spec"
        ))),
    }
}

pub fn mac_algorithm_out(alg: MacAlgorithm) -> i32 {
    match alg {
        MacAlgorithm::HmacSha256 => pb::MacAlgorithm::HmacSha256,
        MacAlgorithm::HmacSha384 => pb::MacAlgorithm::HmacSha384,
        MacAlgorithm::HmacSha512 => pb::MacAlgorithm::HmacSha512,
    }
    .into()
}

fn key_state(state: KeyState) -> pb::KeyState {
    match state {
        KeyState::Enabled => pb::KeyState::Enabled,
        KeyState::Disabled => pb::KeyState::Disabled,
        KeyState::PendingDeletion => pb::KeyState::PendingDeletion,
    }
}

pub fn key_state_out(state: KeyState) -> i32 {
    key_state(state).into()
}

pub fn key_metadata(r: &KeyRecord) -> pb::KeyMetadata {
    pb::KeyMetadata {
        key_id: r.key_id.clone(),
        resource: r.resource(),
        creation_date: timestamp(r.created),
        description: r.description.clone(),
        enabled: r.state == KeyState::Enabled,
        key_state: key_state(r.state).into(),
        key_usage: match r.spec.usage() {
            KeyUsage::EncryptDecrypt => pb::KeyUsage::EncryptDecrypt,
            KeyUsage::GenerateVerifyMac => pb::KeyUsage::GenerateVerifyMac,
        }
        .into(),
        key_spec: match r.spec {
            KeySpec::SymmetricDefault => pb::KeySpec::SymmetricDefault,
            KeySpec::Hmac256 => pb::KeySpec::Hmac256,
            KeySpec::Hmac384 => pb::KeySpec::Hmac384,
            KeySpec::Hmac512 => pb::KeySpec::Hmac512,
        }
        .into(),
        deletion_date: r.deletion_date.and_then(timestamp),
        pending_deletion_window_in_days: r.pending_window_days,
        mac_algorithms: r
            .spec
            .mac_algorithm()
            .map(mac_algorithm_out)
            .into_iter()
            .collect(),
        current_key_version: r.current_version,
        creator: r.creator.clone(),
    }
}

pub fn rotation_type(origin: VersionOrigin) -> i32 {
    match origin {
        VersionOrigin::Created => pb::RotationType::Unspecified,
        VersionOrigin::AutomaticRotation => pb::RotationType::Automatic,
        VersionOrigin::OnDemandRotation => pb::RotationType::OnDemand,
    }
    .into()
}

pub fn grant_operation(value: i32) -> Result<GrantOperation, KmsError> {
    use pb::GrantOperation as G;
    Ok(match G::try_from(value) {
        Ok(G::Decrypt) => GrantOperation::Decrypt,
        Ok(G::Encrypt) => GrantOperation::Encrypt,
        Ok(G::GenerateDataKey) => GrantOperation::GenerateDataKey,
        Ok(G::GenerateDataKeyWithoutPlaintext) => GrantOperation::GenerateDataKeyWithoutPlaintext,
        Ok(G::ReEncryptFrom) => GrantOperation::ReEncryptFrom,
        Ok(G::ReEncryptTo) => GrantOperation::ReEncryptTo,
        Ok(G::DescribeKey) => GrantOperation::DescribeKey,
        Ok(G::CreateGrant) => GrantOperation::CreateGrant,
        Ok(G::RetireGrant) => GrantOperation::RetireGrant,
        Ok(G::GenerateMac) => GrantOperation::GenerateMac,
        Ok(G::VerifyMac) => GrantOperation::VerifyMac,
        _ => {
            return Err(KmsError::validation(format!(
                "operations: {value} is not a known GrantOperation"
            )));
        }
    })
}

fn grant_operation_out(op: GrantOperation) -> i32 {
    use pb::GrantOperation as G;
    match op {
        GrantOperation::Decrypt => G::Decrypt,
        GrantOperation::Encrypt => G::Encrypt,
        GrantOperation::GenerateDataKey => G::GenerateDataKey,
        GrantOperation::GenerateDataKeyWithoutPlaintext => G::GenerateDataKeyWithoutPlaintext,
        GrantOperation::ReEncryptFrom => G::ReEncryptFrom,
        GrantOperation::ReEncryptTo => G::ReEncryptTo,
        GrantOperation::DescribeKey => G::DescribeKey,
        GrantOperation::CreateGrant => G::CreateGrant,
        GrantOperation::RetireGrant => G::RetireGrant,
        GrantOperation::GenerateMac => G::GenerateMac,
        GrantOperation::VerifyMac => G::VerifyMac,
    }
    .into()
}

pub fn constraints(c: Option<pb::GrantConstraints>) -> GrantConstraints {
    let c = c.unwrap_or_default();
    GrantConstraints {
        equals: (!c.encryption_context_equals.is_empty())
            .then(|| context(c.encryption_context_equals)),
        subset: (!c.encryption_context_subset.is_empty())
            .then(|| context(c.encryption_context_subset)),
    }
}

pub fn grant_entry(g: &GrantRecord) -> pb::GrantListEntry {
    pb::GrantListEntry {
        key_id: g.key_id.clone(),
        grant_id: g.grant_id.clone(),
        name: g.name.clone(),
        creation_date: timestamp(g.created),
        grantee_principal: g.grantee.clone(),
        retiring_principal: g.retiring.clone().unwrap_or_default(),
        issuing_principal: g.issuing.clone(),
        operations: g
            .operations
            .iter()
            .copied()
            .map(grant_operation_out)
            .collect(),
        constraints: (g.constraints != GrantConstraints::default()).then(|| pb::GrantConstraints {
            encryption_context_equals: g
                .constraints
                .equals
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            encryption_context_subset: g
                .constraints
                .subset
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }),
    }
}

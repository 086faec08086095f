//! Cryptographic operations with a CMK. Order of checks, always: resolve the
//! key, authorize, then key state and usage, then the cryptography. Any
//! failure to authenticate a ciphertext is one opaque error.

use super::{Credentials, Ctx, Kms, Target, require_enabled, require_usage};
use crate::crypto::blob::{self, BlobHeader};
use crate::crypto::context::{self, EncryptionContext};
use crate::crypto::mac::{self, MacAlgorithm};
use crate::crypto::{SecretBytes, public_random, random_bytes};
use crate::error::KmsError;
use crate::keys::KeyUsage;
use crate::state::State;

pub const MAX_PLAINTEXT: usize = 4096;
pub const MAX_DATA_KEY_BYTES: u32 = 1024;
pub const MAX_CIPHERTEXT: usize = 6144;
pub const MAX_MAC_MESSAGE: usize = 4096;

/// Length of a data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKeyLength {
    Aes128,
    Aes256,
    Bytes(u32),
}

/// A fresh data key: plaintext (zeroized on drop) and the blob that wraps it.
pub struct DataKey {
    pub key_id: String,
    pub key_version: u32,
    pub ciphertext_blob: Vec<u8>,
    pub plaintext: SecretBytes,
}

/// The result of a Decrypt.
pub struct Decrypted {
    pub key_id: String,
    pub key_version: u32,
    pub plaintext: SecretBytes,
}

/// The result of an Encrypt or ReEncrypt.
#[derive(Debug, Clone)]
pub struct Encrypted {
    pub key_id: String,
    pub key_version: u32,
    pub ciphertext_blob: Vec<u8>,
    /// For ReEncrypt: where the blob came from.
    pub source: Option<(String, u32)>,
}

/// Validates a data-key length request: exactly one of spec and bytes.
pub fn data_key_length(
    spec: Option<DataKeyLength>,
    number_of_bytes: Option<u32>,
) -> Result<DataKeyLength, KmsError> {
    match (spec, number_of_bytes) {
        (Some(_), Some(_)) => Err(KmsError::validation(
            "specify either key_spec or number_of_bytes, not both",
        )),
        (None, None) => Err(KmsError::validation(
            "specify key_spec (DATA_KEY_SPEC_AES_128 or DATA_KEY_SPEC_AES_256) or number_of_bytes (1–1024)",
        )),
        (Some(spec), None) => Ok(spec),
        (None, Some(n)) if (1..=MAX_DATA_KEY_BYTES).contains(&n) => Ok(DataKeyLength::Bytes(n)),
        (None, Some(n)) => Err(KmsError::validation(format!(
            "number_of_bytes {n} is out of range; use 1–1024"
        ))),
    }
}

impl DataKeyLength {
    fn bytes(self) -> usize {
        match self {
            DataKeyLength::Aes128 => 16,
            DataKeyLength::Aes256 => 32,
            DataKeyLength::Bytes(n) => n as usize,
        }
    }
}

fn check_context(ctx: &EncryptionContext) -> Result<(), KmsError> {
    context::validate(ctx).map_err(|e| KmsError::validation(e.to_string()))
}

/// [`check_context`] for the context a new ciphertext is bound to.
fn check_new_context(ctx: &EncryptionContext) -> Result<(), KmsError> {
    context::validate_new(ctx).map_err(|e| KmsError::validation(e.to_string()))
}

fn key_uuid(key_id: &str) -> Result<[u8; 16], KmsError> {
    uuid::Uuid::parse_str(key_id)
        .map(|u| *u.as_bytes())
        .map_err(|_| KmsError::Internal(format!("stored key id {key_id:?} is not a UUID")))
}

impl<'a> Ctx<'a> {
    /// Authorizes and seals `plaintext` under the key's current version.
    fn seal_with(
        &mut self,
        state: &State,
        key_id: &str,
        action: &str,
        context: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<Encrypted, KmsError> {
        let entry = self.resolve(state, key_id)?;
        let record = &entry.record;
        let version = record.current_version;
        self.event.key_id = Some(record.key_id.clone());
        self.event.key_version = Some(version);
        self.event.resources.push(record.resource());
        self.authorize(state, action, Target::Key(entry), context, &[])?;
        require_enabled(record)?;
        require_usage(record, KeyUsage::EncryptDecrypt, action)?;
        let backing = self.backing_key(entry, version)?;
        let header = BlobHeader {
            key_id: key_uuid(&record.key_id)?,
            key_version: version,
            salt: public_random(),
            iv: public_random(),
        };
        let blob = blob::seal(&header, &backing, &context::canonical(context), plaintext);
        Ok(Encrypted {
            key_id: record.key_id.clone(),
            key_version: version,
            ciphertext_blob: blob,
            source: None,
        })
    }

    /// Authorizes and opens a blob. `expected_key` is the optional key id
    /// of the request.
    fn open_with(
        &mut self,
        state: &State,
        blob_bytes: &[u8],
        expected_key: &str,
        action: &str,
        context: &EncryptionContext,
    ) -> Result<Decrypted, KmsError> {
        if blob_bytes.is_empty() || blob_bytes.len() > MAX_CIPHERTEXT {
            return Err(KmsError::validation(format!(
                "ciphertext_blob must have 1–{MAX_CIPHERTEXT} bytes"
            )));
        }
        let header = blob::parse_header(blob_bytes).map_err(|_| KmsError::InvalidCiphertext)?;
        let blob_key = uuid::Uuid::from_bytes(header.key_id).to_string();
        let entry = state
            .keys
            .get(&blob_key)
            .ok_or(KmsError::InvalidCiphertext)?;
        // The key named by the request, if any: only then is there an alias
        // the request used.
        self.request_alias = None;
        if !expected_key.is_empty() {
            let named = self.resolve(state, expected_key)?;
            if named.record.key_id != blob_key {
                self.event.key_id = Some(named.record.key_id.clone());
                return Err(KmsError::IncorrectKey(format!(
                    "the ciphertext was not encrypted under key {expected_key}"
                )));
            }
        }
        let record = &entry.record;
        self.event.key_id = Some(record.key_id.clone());
        self.event.key_version = Some(header.key_version);
        self.event.resources.push(record.resource());
        self.authorize(state, action, Target::Key(entry), context, &[])?;
        require_enabled(record)?;
        if record.spec.usage() != KeyUsage::EncryptDecrypt
            || !entry.versions.contains_key(&header.key_version)
        {
            return Err(KmsError::InvalidCiphertext);
        }
        let backing = self.backing_key(entry, header.key_version)?;
        let plaintext = blob::open(blob_bytes, &backing, &context::canonical(context))
            .map_err(|_| KmsError::InvalidCiphertext)?;
        Ok(Decrypted {
            key_id: record.key_id.clone(),
            key_version: header.key_version,
            plaintext,
        })
    }

    fn data_key(
        &mut self,
        key_id: &str,
        context: &EncryptionContext,
        length: DataKeyLength,
        grant_tokens: &[String],
        action: &str,
    ) -> Result<DataKey, KmsError> {
        check_new_context(context)?;
        if let DataKeyLength::Bytes(n) = length {
            data_key_length(None, Some(n))?;
        }
        self.event.encryption_context = Some(context.clone());
        let state = self.state();
        self.check_grant_tokens(&state, grant_tokens)?;
        let plaintext = random_bytes(length.bytes());
        let sealed = self.seal_with(&state, key_id, action, context, &plaintext)?;
        Ok(DataKey {
            key_id: sealed.key_id,
            key_version: sealed.key_version,
            ciphertext_blob: sealed.ciphertext_blob,
            plaintext,
        })
    }

    fn mac_key(
        &mut self,
        state: &State,
        key_id: &str,
        algorithm: MacAlgorithm,
        action: &str,
        message: &[u8],
    ) -> Result<(String, SecretBytes), KmsError> {
        if message.is_empty() || message.len() > MAX_MAC_MESSAGE {
            return Err(KmsError::validation(format!(
                "message must have 1–{MAX_MAC_MESSAGE} bytes; it has {}",
                message.len()
            )));
        }
        let entry = self.resolve(state, key_id)?;
        let record = &entry.record;
        self.event.key_id = Some(record.key_id.clone());
        self.event.resources.push(record.resource());
        self.authorize(
            state,
            action,
            Target::Key(entry),
            &EncryptionContext::new(),
            &[],
        )?;
        require_enabled(record)?;
        require_usage(record, KeyUsage::GenerateVerifyMac, action)?;
        if record.spec.mac_algorithm() != Some(algorithm) {
            return Err(KmsError::InvalidKeyUsage(format!(
                "key {} has key spec {} and does not support {}",
                record.key_id,
                record.spec.name(),
                algorithm.name()
            )));
        }
        self.event.key_version = Some(record.current_version);
        let backing = self.backing_key(entry, record.current_version)?;
        Ok((record.key_id.clone(), backing))
    }
}

impl Kms {
    pub async fn encrypt(
        &self,
        creds: &Credentials,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
        grant_tokens: &[String],
    ) -> Result<Encrypted, KmsError> {
        self.run(creds, "Encrypt", |ctx| {
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
                return Err(KmsError::validation(format!(
                    "plaintext must have 1–{MAX_PLAINTEXT} bytes; it has {}",
                    plaintext.len()
                )));
            }
            check_new_context(context)?;
            ctx.event.encryption_context = Some(context.clone());
            let state = ctx.state();
            ctx.check_grant_tokens(&state, grant_tokens)?;
            ctx.seal_with(&state, key_id, "kms:Encrypt", context, plaintext)
        })
        .await
    }

    pub async fn decrypt(
        &self,
        creds: &Credentials,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key_id: &str,
        grant_tokens: &[String],
    ) -> Result<Decrypted, KmsError> {
        self.run(creds, "Decrypt", |ctx| {
            check_context(context)?;
            ctx.event.encryption_context = Some(context.clone());
            let state = ctx.state();
            ctx.check_grant_tokens(&state, grant_tokens)?;
            ctx.open_with(&state, ciphertext_blob, key_id, "kms:Decrypt", context)
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn re_encrypt(
        &self,
        creds: &Credentials,
        ciphertext_blob: &[u8],
        source_context: &EncryptionContext,
        source_key_id: &str,
        destination_key_id: &str,
        destination_context: &EncryptionContext,
        grant_tokens: &[String],
    ) -> Result<Encrypted, KmsError> {
        self.run(creds, "ReEncrypt", |ctx| {
            check_context(source_context)?;
            check_new_context(destination_context)?;
            if destination_key_id.is_empty() {
                return Err(KmsError::validation(
                    "destination_key_id is required (it may be the source key, to move to its newest version)",
                ));
            }
            let state = ctx.state();
            ctx.check_grant_tokens(&state, grant_tokens)?;
            // The source side goes in the record's `source`: the key and
            // version the ciphertext names (when it can be read) and the
            // context given for it. The record's own key, version and
            // context are the destination's alone, left empty when the
            // call ends before the destination.
            let header = blob::parse_header(ciphertext_blob).ok();
            ctx.event.source = Some(crate::audit::AuditSource {
                key_id: header.map(|h| uuid::Uuid::from_bytes(h.key_id).to_string()),
                key_version: header.map(|h| h.key_version),
                encryption_context: source_context.clone(),
            });
            let opened = ctx.open_with(
                &state,
                ciphertext_blob,
                source_key_id,
                "kms:ReEncryptFrom",
                source_context,
            );
            ctx.event.key_id = None;
            ctx.event.key_version = None;
            let opened = opened?;
            ctx.event.encryption_context = Some(destination_context.clone());
            let mut sealed = ctx.seal_with(
                &state,
                destination_key_id,
                "kms:ReEncryptTo",
                destination_context,
                &opened.plaintext,
            )?;
            sealed.source = Some((opened.key_id, opened.key_version));
            Ok(sealed)
        })
        .await
    }

    pub async fn generate_data_key(
        &self,
        creds: &Credentials,
        key_id: &str,
        context: &EncryptionContext,
        length: DataKeyLength,
        grant_tokens: &[String],
    ) -> Result<DataKey, KmsError> {
        self.run(creds, "GenerateDataKey", |ctx| {
            ctx.data_key(key_id, context, length, grant_tokens, "kms:GenerateDataKey")
        })
        .await
    }

    pub async fn generate_data_key_without_plaintext(
        &self,
        creds: &Credentials,
        key_id: &str,
        context: &EncryptionContext,
        length: DataKeyLength,
        grant_tokens: &[String],
    ) -> Result<Encrypted, KmsError> {
        self.run(creds, "GenerateDataKeyWithoutPlaintext", |ctx| {
            let key = ctx.data_key(
                key_id,
                context,
                length,
                grant_tokens,
                "kms:GenerateDataKeyWithoutPlaintext",
            )?;
            Ok(Encrypted {
                key_id: key.key_id,
                key_version: key.key_version,
                ciphertext_blob: key.ciphertext_blob,
                source: None,
            })
        })
        .await
    }

    pub async fn generate_mac(
        &self,
        creds: &Credentials,
        key_id: &str,
        message: &[u8],
        algorithm: MacAlgorithm,
        grant_tokens: &[String],
    ) -> Result<(String, Vec<u8>), KmsError> {
        self.run(creds, "GenerateMac", |ctx| {
            let state = ctx.state();
            ctx.check_grant_tokens(&state, grant_tokens)?;
            let (id, key) = ctx.mac_key(&state, key_id, algorithm, "kms:GenerateMac", message)?;
            Ok((id, mac::generate(algorithm, &key, message)))
        })
        .await
    }

    pub async fn verify_mac(
        &self,
        creds: &Credentials,
        key_id: &str,
        message: &[u8],
        tag: &[u8],
        algorithm: MacAlgorithm,
        grant_tokens: &[String],
    ) -> Result<String, KmsError> {
        self.run(creds, "VerifyMac", |ctx| {
            let state = ctx.state();
            ctx.check_grant_tokens(&state, grant_tokens)?;
            let (id, key) = ctx.mac_key(&state, key_id, algorithm, "kms:VerifyMac", message)?;
            if mac::verify(algorithm, &key, message, tag) {
                Ok(id)
            } else {
                Err(KmsError::InvalidMac)
            }
        })
        .await
    }

    pub async fn generate_random(
        &self,
        creds: &Credentials,
        number_of_bytes: Option<u32>,
    ) -> Result<SecretBytes, KmsError> {
        self.run(creds, "GenerateRandom", |ctx| {
            let n = match number_of_bytes {
                Some(n @ 1..=MAX_DATA_KEY_BYTES) => n as usize,
                Some(n) => {
                    return Err(KmsError::validation(format!(
                        "number_of_bytes {n} is out of range; use 1–1024"
                    )));
                }
                None => return Err(KmsError::validation("number_of_bytes (1–1024) is required")),
            };
            let state = ctx.state();
            ctx.authorize(
                &state,
                "kms:GenerateRandom",
                Target::Resource("*"),
                &EncryptionContext::new(),
                &[],
            )?;
            Ok(random_bytes(n))
        })
        .await
    }
}

//! The ciphertext blob that `Encrypt` and `GenerateDataKey` return and
//! `Decrypt` accepts. Self-describing and versioned, so `Decrypt` needs no key
//! id and an old blob still names the key version that made it.
//!
//! ```text
//! offset  size  field
//!      0     1  format version (1)
//!      1    16  key id (UUID bytes)
//!     17     4  key version (big-endian)
//!     21    32  HKDF salt
//!     53    12  AES-GCM IV
//!     65     n  ciphertext
//!   65+n    16  GCM tag
//! ```
//!
//! The per-blob key is `HKDF-SHA256(backing key, salt, INFO)`; the AAD is the
//! 65-byte header followed by the canonical encryption context, so changing
//! any header byte or the context makes decryption fail.

use super::SecretBytes;
use super::aead::{self, IV_LEN, TAG_LEN};

pub const FORMAT_VERSION: u8 = 1;
pub const SALT_LEN: usize = 32;
pub const HEADER_LEN: usize = 1 + 16 + 4 + SALT_LEN + IV_LEN;
/// Domain separation for the per-blob key derivation.
pub const INFO: &[u8] = b"lockbox kms v1 symmetric-default encrypt";

/// The clear header of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    pub key_id: [u8; 16],
    pub key_version: u32,
    pub salt: [u8; SALT_LEN],
    pub iv: [u8; IV_LEN],
}

impl BlobHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = FORMAT_VERSION;
        out[1..17].copy_from_slice(&self.key_id);
        out[17..21].copy_from_slice(&self.key_version.to_be_bytes());
        out[21..53].copy_from_slice(&self.salt);
        out[53..65].copy_from_slice(&self.iv);
        out
    }
}

/// A blob that could not be parsed or authenticated. Opaque on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidBlob;

/// Reads the header without authenticating anything: only to find the key.
pub fn parse_header(blob: &[u8]) -> Result<BlobHeader, InvalidBlob> {
    if blob.len() < HEADER_LEN + TAG_LEN || blob[0] != FORMAT_VERSION {
        return Err(InvalidBlob);
    }
    let mut header = BlobHeader {
        key_id: [0; 16],
        key_version: u32::from_be_bytes(blob[17..21].try_into().map_err(|_| InvalidBlob)?),
        salt: [0; SALT_LEN],
        iv: [0; IV_LEN],
    };
    header.key_id.copy_from_slice(&blob[1..17]);
    header.salt.copy_from_slice(&blob[21..53]);
    header.iv.copy_from_slice(&blob[53..65]);
    Ok(header)
}

fn aad(header: &[u8; HEADER_LEN], canonical_context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + canonical_context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(canonical_context);
    aad
}

/// Seals `plaintext` under `backing_key` with the given header fields.
pub fn seal(
    header: &BlobHeader,
    backing_key: &[u8],
    canonical_context: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let encoded = header.encode();
    let key = aead::derive_key(backing_key, &header.salt, INFO);
    let sealed = aead::seal(
        &key,
        &header.iv,
        &aad(&encoded, canonical_context),
        plaintext,
    );
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&sealed);
    out
}

/// Authenticates and decrypts a whole blob whose header was parsed already.
pub fn open(
    blob: &[u8],
    backing_key: &[u8],
    canonical_context: &[u8],
) -> Result<SecretBytes, InvalidBlob> {
    let header = parse_header(blob)?;
    let encoded = header.encode();
    let key = aead::derive_key(backing_key, &header.salt, INFO);
    aead::open(
        key.as_ref(),
        &header.iv,
        &aad(&encoded, canonical_context),
        &blob[HEADER_LEN..],
    )
    .map_err(|_| InvalidBlob)
}

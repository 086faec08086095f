//! AES-256-GCM and HKDF-SHA256, as the product uses them: a 96-bit IV, a
//! 128-bit tag appended to the ciphertext, and a per-message key derived from
//! a backing key and a random salt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::SecretBytes;

pub const KEY_LEN: usize = 32;
pub const IV_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// Authentication failed, or the inputs had the wrong shape. Deliberately
/// carries no detail: callers turn it into one opaque error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

/// Encrypts `plaintext` and returns `ciphertext || tag`.
pub fn seal(key: &[u8; KEY_LEN], iv: &[u8; IV_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .encrypt(
            &Nonce::from(*iv),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // Only fails for inputs over 2^36 bytes, which every caller caps far below.
        .expect("AES-GCM input within limits")
}

/// Decrypts `ciphertext || tag`.
pub fn open(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<SecretBytes, OpenError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| OpenError)?;
    let iv: [u8; IV_LEN] = iv.try_into().map_err(|_| OpenError)?;
    if ciphertext_and_tag.len() < TAG_LEN {
        return Err(OpenError);
    }
    cipher
        .decrypt(
            &Nonce::from(iv),
            Payload {
                msg: ciphertext_and_tag,
                aad,
            },
        )
        .map(SecretBytes::new)
        .map_err(|_| OpenError)
}

/// `HKDF-SHA256(ikm, salt, info)` expanded to `len` bytes.
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> SecretBytes {
    let mut okm = SecretBytes::zeroed(len);
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut okm)
        // Only fails above 255 * 32 bytes; our lengths are constants.
        .expect("HKDF output length within limits");
    okm
}

/// Derives a 256-bit AES key for one message.
pub fn derive_key(backing_key: &[u8], salt: &[u8], info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let okm = hkdf_sha256(backing_key, salt, info, KEY_LEN);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&okm);
    key
}

//! HMAC-SHA-256/384/512 for `GenerateMac` and `VerifyMac`; verification is
//! constant-time (the `hmac` crate compares with `subtle`).

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha384, Sha512};

/// The three HMAC algorithms, one per HMAC key spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl MacAlgorithm {
    /// Length of the backing key we generate: the hash's output size, as AWS.
    pub fn key_len(self) -> usize {
        match self {
            MacAlgorithm::HmacSha256 => 32,
            MacAlgorithm::HmacSha384 => 48,
            MacAlgorithm::HmacSha512 => 64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MacAlgorithm::HmacSha256 => "HMAC_SHA_256",
            MacAlgorithm::HmacSha384 => "HMAC_SHA_384",
            MacAlgorithm::HmacSha512 => "HMAC_SHA_512",
        }
    }
}

fn compute<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn check<M: Mac + KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}

/// The full-length MAC of `message`.
pub fn generate(algorithm: MacAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    match algorithm {
        MacAlgorithm::HmacSha256 => compute::<Hmac<Sha256>>(key, message),
        MacAlgorithm::HmacSha384 => compute::<Hmac<Sha384>>(key, message),
        MacAlgorithm::HmacSha512 => compute::<Hmac<Sha512>>(key, message),
    }
}

/// Constant-time check of a full-length MAC; truncated tags are refused.
pub fn verify(algorithm: MacAlgorithm, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    match algorithm {
        MacAlgorithm::HmacSha256 => check::<Hmac<Sha256>>(key, message, tag),
        MacAlgorithm::HmacSha384 => check::<Hmac<Sha384>>(key, message, tag),
        MacAlgorithm::HmacSha512 => check::<Hmac<Sha512>>(key, message, tag),
    }
}

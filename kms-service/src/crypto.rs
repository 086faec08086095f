//! Cryptographic building blocks of the key hierarchy: root key → CMK version
//! backing key → per-request derived key.
//!
//! Everything here works on bytes and zeroizing buffers; nothing here knows
//! about principals, policies, storage or protobuf. The RustCrypto crates do
//! the primitives; these modules fix how the product combines them (formats,
//! domain-separation labels, limits) and are pinned by known-answer vectors.

pub mod aead;
pub mod blob;
pub mod context;
pub mod mac;
pub mod pkcs11;
pub mod root_key;

use zeroize::Zeroizing;

/// A buffer of secret bytes that is wiped when dropped. Deliberately
/// neither `Clone` nor `Debug` (`Zeroizing` alone is both), so a secret is
/// neither copied nor printed by accident: read it as `&[u8]`.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes` (wiped when this is dropped).
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// `n` zero bytes, to be filled in place.
    pub fn zeroed(n: usize) -> Self {
        SecretBytes::new(vec![0u8; n])
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for SecretBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for SecretBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// Fills a fresh buffer of `n` bytes from the operating system's CSPRNG.
pub fn random_bytes(n: usize) -> SecretBytes {
    let mut buf = SecretBytes::zeroed(n);
    // The OS RNG failing is not recoverable and must never fall back to
    // anything weaker.
    getrandom::fill(&mut buf).expect("operating system random number generator failed");
    buf
}

/// Fixed-size random array straight from the operating system's CSPRNG
/// (fit for secrets).
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("operating system random number generator failed");
    buf
}

pub use lockbox_proto::random::{public_random, random_uuid};

#[cfg(test)]
mod tests;

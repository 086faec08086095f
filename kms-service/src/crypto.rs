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
pub mod root_key;

use zeroize::Zeroizing;

/// A buffer of secret bytes that is wiped when dropped. Deliberately neither
/// `Clone` nor `Debug`.
pub type SecretBytes = Zeroizing<Vec<u8>>;

/// Fills a fresh buffer of `n` bytes from the operating system's CSPRNG.
pub fn random_bytes(n: usize) -> SecretBytes {
    let mut buf = Zeroizing::new(vec![0u8; n]);
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

/// Fixed-size random array for values that are *not* secret (salts, IVs,
/// identifiers): the same operating-system CSPRNG output as
/// [`random_array`], but fetched in blocks into a per-thread pool instead of
/// with one system call per value. Each byte is handed out once and wiped
/// from the pool. Never use it for key material.
pub fn public_random<const N: usize>() -> [u8; N] {
    use std::cell::RefCell;
    const POOL: usize = 1024;
    thread_local! {
        static BYTES: RefCell<([u8; POOL], usize)> = const { RefCell::new(([0; POOL], POOL)) };
    }
    if N > POOL / 4 {
        return random_array();
    }
    let mut out = [0u8; N];
    BYTES.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if POOL - *used < N {
            getrandom::fill(bytes).expect("operating system random number generator failed");
            *used = 0;
        }
        let taken = &mut bytes[*used..*used + N];
        out.copy_from_slice(taken);
        taken.fill(0);
        *used += N;
    });
    out
}

/// A random (version 4) UUID from [`public_random`], for identifiers.
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(public_random()).into_uuid()
}

#[cfg(test)]
mod tests;

//! The root of the key hierarchy. Only this module ever holds the root key;
//! everyone else asks it to wrap or unwrap CMK backing keys.
//!
//! `RootKey` is a trait so that a hardware backend (PKCS#11) can stand beside
//! the software one, chosen by configuration at start-up.

use std::io::Write;
use std::path::Path;

use zeroize::Zeroizing;

use super::aead::{self, IV_LEN, KEY_LEN};
use super::{SecretBytes, random_array};

/// Domain separation for wrapped backing keys.
const WRAP_AAD_PREFIX: &[u8] = b"lockbox kms v1 root-wrap ";
/// Domain separation for keys derived from the root key for other purposes.
const DERIVE_SALT: &[u8] = b"lockbox kms v1 root-derive";

/// Why wrapped material could not be unwrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnwrapError {
    /// Wrapping failed to authenticate: the wrapped bytes were altered, or
    /// this is not the root key that wrapped them.
    Invalid,
    /// The root key could not be used at all.
    Unavailable(RootKeyUnavailable),
}

/// The root key could not be used at all: a hardware token failed, went
/// away or refused the operation. (The software root key never fails.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the root key is unavailable: {0}")]
pub struct RootKeyUnavailable(pub String);

/// Something that protects backing keys. Implementations keep the root key
/// out of reach of the rest of the program.
pub trait RootKey: Send + Sync + 'static {
    /// Encrypts `material`, bound to `label` (e.g. key id and version).
    fn wrap(&self, label: &[u8], material: &[u8]) -> Result<Vec<u8>, RootKeyUnavailable>;
    /// Reverses [`RootKey::wrap`] for the same label.
    fn unwrap(&self, label: &[u8], wrapped: &[u8]) -> Result<SecretBytes, UnwrapError>;
    /// A 256-bit key for another purpose (e.g. signing audit checkpoints),
    /// derived one-way so that it reveals nothing about the root key, and
    /// the same every time for the same root key and purpose.
    fn derive(&self, purpose: &[u8]) -> Result<Zeroizing<[u8; 32]>, RootKeyUnavailable>;
    /// Drops anything kept of the material wrapped under `label` (its key
    /// was destroyed). Nothing to do for a root key that keeps nothing.
    fn forget(&self, _label: &[u8]) {}
}

/// A root key held in process memory, loaded from a file or a secret.
pub struct SoftwareRootKey {
    key: Zeroizing<[u8; KEY_LEN]>,
}

/// Why a root key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    #[error("root key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("root key {origin} must be 64 hexadecimal characters (32 bytes)")]
    Malformed { origin: String },
}

impl SoftwareRootKey {
    /// A fresh random root key.
    pub fn generate() -> Self {
        SoftwareRootKey {
            key: Zeroizing::new(random_array()),
        }
    }

    /// Parses 64 hex characters (surrounding white space ignored).
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, RootKeyError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text.trim(), key.as_mut()).map_err(|_| RootKeyError::Malformed {
            origin: origin.to_string(),
        })?;
        Ok(SoftwareRootKey { key })
    }

    /// Reads a root key file written by [`SoftwareRootKey::create_file`] or by
    /// an operator.
    pub fn read_file(path: &Path) -> Result<Self, RootKeyError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| RootKeyError::Io {
                    path: path.display().to_string(),
                    source,
                })?,
            );
        Self::from_hex(&text, &format!("file {}", path.display()))
    }

    /// Generates a key and writes it to a new file with mode 0600; refuses to
    /// overwrite an existing file.
    pub fn create_file(path: &Path) -> Result<Self, RootKeyError> {
        let key = Self::generate();
        let io = |source| RootKeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        let text = Zeroizing::new(hex::encode(key.key.as_ref()));
        file.write_all(text.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(key)
    }
}

/// The additional authenticated data of a wrapped backing key: what binds it
/// to its label. Every root key uses it, so that the wrapping is the same
/// AES-256-GCM whatever holds the key.
pub(crate) fn wrap_aad(label: &[u8]) -> Vec<u8> {
    [WRAP_AAD_PREFIX, label].concat()
}

impl RootKey for SoftwareRootKey {
    fn wrap(&self, label: &[u8], material: &[u8]) -> Result<Vec<u8>, RootKeyUnavailable> {
        let iv: [u8; IV_LEN] = random_array();
        let sealed = aead::seal(&self.key, &iv, &wrap_aad(label), material);
        Ok([iv.as_slice(), &sealed].concat())
    }

    fn unwrap(&self, label: &[u8], wrapped: &[u8]) -> Result<SecretBytes, UnwrapError> {
        if wrapped.len() < IV_LEN {
            return Err(UnwrapError::Invalid);
        }
        let (iv, sealed) = wrapped.split_at(IV_LEN);
        aead::open(self.key.as_ref(), iv, &wrap_aad(label), sealed)
            .map_err(|_| UnwrapError::Invalid)
    }

    fn derive(&self, purpose: &[u8]) -> Result<Zeroizing<[u8; 32]>, RootKeyUnavailable> {
        Ok(aead::derive_key(self.key.as_ref(), DERIVE_SALT, purpose))
    }
}

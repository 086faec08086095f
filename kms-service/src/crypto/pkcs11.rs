//! A root key held in a PKCS#11 token: a hardware security module, a cloud
//! HSM's PKCS#11 library, or SoftHSM2 for testing.
//!
//! The key is an AES-256 secret key object on the token, found by its label.
//! The service creates it there on the first start of a new data directory
//! (sensitive, not extractable, so it never leaves the token), or uses one an
//! operator put there. Everything the software root key does, the token does
//! with that key:
//!
//! * **wrap / unwrap**: `CKM_AES_GCM` with a random 96-bit IV from the
//!   service and the same additional data as the software root key; the
//!   stored form is the same too (IV, ciphertext, 128-bit tag).
//! * **derive**: the NIST SP 800-108 KDF in counter mode with `CKM_AES_CMAC`
//!   as the PRF (two blocks make the 256-bit key).
//!
//! Backing keys are unwrapped on the token the first time a call needs them
//! and then kept, zeroized when dropped, for later calls: a token answers in
//! tens of microseconds (a network HSM in milliseconds), which every
//! Decrypt would otherwise wait for, one at a time. At most
//! [`CACHE_ENTRIES`] are kept; when that many are, the cache is emptied and
//! refills as calls come.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::SecretBytes;
use super::aead::{IV_LEN, KEY_LEN, TAG_LEN};
use super::random_array;
use super::root_key::{RootKey, RootKeyUnavailable, UnwrapError, wrap_aad};

/// The label of the root key object when none is configured.
pub const DEFAULT_KEY_LABEL: &str = "lockbox-root-key";

/// Most unwrapped backing keys kept in memory.
pub const CACHE_ENTRIES: usize = 4096;

/// SP 800-108 label of derived keys (the context is the purpose).
const DERIVE_LABEL: &[u8] = b"lockbox kms v1 root-derive";

/// Where the root key is and how to reach it.
pub struct Pkcs11Settings<'a> {
    /// The token's PKCS#11 library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: &'a Path,
    /// The token's label.
    pub token: &'a str,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// The label of the AES key object.
    pub key_label: &'a str,
}

/// Why the token's root key could not be opened. Each message says what to
/// check.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Pkcs11OpenError {
    message: String,
    /// The token refused the PIN, or says it is locked: logging in again
    /// with it would only bring the token nearer to locking it.
    pin_refused: bool,
}

impl Pkcs11OpenError {
    fn new(message: String) -> Pkcs11OpenError {
        Pkcs11OpenError {
            message,
            pin_refused: false,
        }
    }

    fn pin_refused(message: String) -> Pkcs11OpenError {
        Pkcs11OpenError {
            message,
            pin_refused: true,
        }
    }
}

/// The root key on a PKCS#11 token. See the module documentation.
pub struct Pkcs11RootKey {
    /// The session and the key's handle in it; `None` once the session
    /// was lost, until the next call opens another.
    connection: Mutex<Option<Connection>>,
    context: Pkcs11,
    slot: Slot,
    pin: Zeroizing<String>,
    token: String,
    key_label: String,
    cache: Mutex<UnwrapCache>,
    /// Set when the token refused the PIN on a reconnect: no further login
    /// is tried until the service restarts, so a changed PIN cannot use up
    /// the token's wrong-PIN allowance and lock it.
    blocked: Mutex<Option<String>>,
    /// When a reconnect last failed: the next waits a second.
    last_failed: Mutex<Option<std::time::Instant>>,
}

/// Why an operation on the token failed.
enum Failure {
    /// The token ran it and answered with an error.
    Refused(CkError),
    /// No session could be had.
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(e) => e.fmt(f),
            Failure::Unreachable(why) => f.write_str(why),
        }
    }
}

/// Least time after a failed reconnect before the next is tried.
const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Unwrapped backing keys by label (a key id and version names one backing
/// key), with the wrapped form they came from: only that form is answered
/// from memory.
type UnwrapCache = HashMap<Vec<u8>, (Vec<u8>, SecretBytes)>;

/// A logged-in session and the root key's handle in it.
struct Connection {
    session: Session,
    key: ObjectHandle,
}

fn failed(what: &str) -> impl FnOnce(CkError) -> Pkcs11OpenError {
    move |e| Pkcs11OpenError::new(format!("{what}: {e}"))
}

/// Errors after which the session is not worth keeping: a new one (logged
/// in again, the key found again) may work, so the call is tried once more.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::DeviceError,
            _
        )
    )
}

/// Errors with which a token says the ciphertext did not authenticate.
fn says_invalid(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
            _
        )
    )
}

impl Pkcs11RootKey {
    /// Opens the token, logs in and finds the key. When there is no such
    /// key and `create` is set (a new data directory), generates it on the
    /// token; the answer says whether it did.
    pub fn open(
        settings: &Pkcs11Settings<'_>,
        create: bool,
    ) -> Result<(Pkcs11RootKey, bool), Pkcs11OpenError> {
        let module = settings.module.display();
        let context = Pkcs11::new(settings.module)
            .map_err(failed(&format!("cannot load the PKCS#11 library {module}")))?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(failed(&format!("cannot initialize {module}"))(e)),
        }
        let slots = context
            .get_slots_with_initialized_token()
            .map_err(failed("cannot list the PKCS#11 slots"))?;
        let mut labels = Vec::new();
        let mut found = None;
        for slot in slots {
            let info = context
                .get_token_info(slot)
                .map_err(failed("cannot read a token's information"))?;
            let label = info.label().trim_end().to_string();
            if label == settings.token {
                found = Some(slot);
                break;
            }
            labels.push(label);
        }
        let slot = found.ok_or_else(|| {
            Pkcs11OpenError::new(format!(
                "no initialized token labelled {:?} in {module} (tokens there: {}); \
                 check --root-key-pkcs11-token",
                settings.token,
                if labels.is_empty() {
                    "none".to_string()
                } else {
                    format!("{labels:?}")
                }
            ))
        })?;
        for needed in [MechanismType::AES_GCM, MechanismType::AES_CMAC] {
            if context.get_mechanism_info(slot, needed).is_err() {
                return Err(Pkcs11OpenError::new(format!(
                    "token {:?} does not offer {needed}, which the root key needs \
                     (CKM_AES_GCM to wrap backing keys, CKM_AES_CMAC to derive keys)",
                    settings.token
                )));
            }
        }
        let root = Pkcs11RootKey {
            connection: Mutex::new(None),
            context,
            slot,
            pin: settings.pin.clone(),
            token: settings.token.to_string(),
            key_label: settings.key_label.to_string(),
            cache: Mutex::new(HashMap::new()),
            blocked: Mutex::new(None),
            last_failed: Mutex::new(None),
        };
        let (connection, created) = root.connect(create)?;
        *root.lock() = Some(connection);
        Ok((root, created))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session, logs in and finds (or, with `create`, makes) the key.
    fn connect(&self, create: bool) -> Result<(Connection, bool), Pkcs11OpenError> {
        let session = self
            .context
            .open_rw_session(self.slot)
            .map_err(failed("cannot open a session on the token"))?;
        let pin = AuthPin::new(self.pin.as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(Pkcs11OpenError::pin_refused(format!(
                    "the token {:?} refused the PIN (check --root-key-pkcs11-pin-file; \
                     tokens lock after several wrong PINs)",
                    self.token
                )));
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(Pkcs11OpenError::pin_refused(format!(
                    "the token {:?} says its user PIN is locked (the token's security officer \
                     must unlock it)",
                    self.token
                )));
            }
            Err(e) => return Err(failed("cannot log in to the token")(e)),
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(self.key_label.as_bytes().to_vec()),
        ];
        let objects = session
            .find_objects(&template)
            .map_err(failed("cannot search the token"))?;
        let (key, created) = match objects.as_slice() {
            [] if create => {
                let key = session
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &[
                            Attribute::Token(true),
                            Attribute::Private(true),
                            Attribute::Sensitive(true),
                            Attribute::Extractable(false),
                            Attribute::Modifiable(false),
                            Attribute::Label(self.key_label.as_bytes().to_vec()),
                            Attribute::ValueLen((KEY_LEN as u64).into()),
                            Attribute::Encrypt(true),
                            Attribute::Decrypt(true),
                            Attribute::Sign(true),
                        ],
                    )
                    .map_err(failed("cannot generate the root key on the token"))?;
                // Another process starting on a new data directory at the
                // same moment may have made one too: one of them must go.
                let now = session
                    .find_objects(&template)
                    .map_err(failed("cannot search the token"))?;
                if now.len() > 1 {
                    session
                        .destroy_object(key)
                        .map_err(failed("cannot remove a duplicate root key"))?;
                    return Err(Pkcs11OpenError::new(format!(
                        "another process generated a root key labelled {:?} on token {:?} at \
                         the same time; start again (one process per data directory)",
                        self.key_label, self.token
                    )));
                }
                (key, true)
            }
            [] => {
                return Err(Pkcs11OpenError::new(format!(
                    "token {:?} holds no secret key labelled {:?}, and this data directory \
                     already has keys wrapped by one: use the token that holds it (or check \
                     --root-key-pkcs11-key)",
                    self.token, self.key_label
                )));
            }
            [key] => (*key, false),
            _ => {
                return Err(Pkcs11OpenError::new(format!(
                    "token {:?} holds {} secret keys labelled {:?}; the root key must be \
                     the only one",
                    self.token,
                    objects.len(),
                    self.key_label
                )));
            }
        };
        self.check_key(&session, key)?;
        Ok((Connection { session, key }, created))
    }

    /// Runs `operation` with the key; a session found lost is replaced by a
    /// new one and the operation tried once more. A failed reconnect is not
    /// tried again for a second, and never again once the token refused the
    /// PIN.
    fn with_key<T>(
        &self,
        operation: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, Failure> {
        let mut connection = self.lock();
        for attempt in 0..2 {
            if connection.is_none() {
                *connection = Some(self.reconnect()?);
            }
            let Some(current) = connection.as_ref() else {
                continue;
            };
            match operation(&current.session, current.key) {
                Err(e) if attempt == 0 && session_lost(&e) => {
                    tracing::warn!(error = %e, "the root key's token session was lost; opening another");
                    *connection = None;
                }
                other => return other.map_err(Failure::Refused),
            }
        }
        Err(Failure::Unreachable(
            "the token lost the new session at once".into(),
        ))
    }

    fn reconnect(&self) -> Result<Connection, Failure> {
        if let Some(why) = &*self.blocked.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(Failure::Unreachable(why.clone()));
        }
        let now = std::time::Instant::now();
        let last_failed = *self.last_failed.lock().unwrap_or_else(|e| e.into_inner());
        if last_failed.is_some_and(|at| now.duration_since(at) < RECONNECT_EVERY) {
            return Err(Failure::Unreachable(
                "the token could not be reached a moment ago; trying again shortly".into(),
            ));
        }
        let connected = self.connect(false).map(|(c, _)| c).map_err(|e| {
            let why = e.to_string();
            tracing::error!(error = %why, "cannot reconnect to the root key's token");
            if e.pin_refused {
                *self.blocked.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "{why}; no further login is tried until kms-service restarts"
                ));
            }
            Failure::Unreachable(why)
        });
        *self.last_failed.lock().unwrap_or_else(|e| e.into_inner()) =
            connected.is_err().then_some(now);
        connected
    }

    /// Whether the token works: wraps and unwraps a fresh value. Tells a
    /// token that refuses everything from one that refused one input.
    fn works(&self) -> bool {
        let probe: [u8; 16] = random_array();
        self.wrap(b"probe", &probe)
            .ok()
            .and_then(|wrapped| self.open_on_token(b"probe", &wrapped).ok())
            .is_some_and(|opened| opened == probe)
    }

    /// How many unwrapped backing keys are kept (for tests).
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// AES-GCM decryption on the token.
    fn open_on_token(&self, label: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, Failure> {
        let (iv, sealed) = wrapped.split_at(IV_LEN.min(wrapped.len()));
        let aad = wrap_aad(label);
        self.with_key(|session, key| {
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, &aad, ((TAG_LEN * 8) as u64).into())?;
            session.decrypt(&Mechanism::AesGcm(params), key, sealed)
        })
    }

    fn unwrap_on_token(&self, label: &[u8], wrapped: &[u8]) -> Result<SecretBytes, UnwrapError> {
        if wrapped.len() < IV_LEN + TAG_LEN {
            return Err(UnwrapError::Invalid);
        }
        match self.open_on_token(label, wrapped) {
            Ok(material) => Ok(SecretBytes::new(material)),
            Err(Failure::Refused(e)) if says_invalid(&e) => Err(UnwrapError::Invalid),
            // Tokens differ in what they answer for a tag that does not
            // verify (SoftHSM2: CKR_GENERAL_ERROR): if the token works
            // otherwise, it was the input (altered, or another key's).
            Err(Failure::Refused(e)) => {
                if self.works() {
                    Err(UnwrapError::Invalid)
                } else {
                    Err(UnwrapError::Unavailable(unavailable(
                        "unwrapping",
                        Failure::Refused(e),
                    )))
                }
            }
            Err(failure) => Err(UnwrapError::Unavailable(unavailable("unwrapping", failure))),
        }
    }

    /// One SP 800-108 counter-mode block: CMAC over
    /// `[i]₃₂ ‖ label ‖ 0x00 ‖ purpose ‖ [256]₃₂`.
    fn derive_block(&self, i: u32, purpose: &[u8]) -> Result<Vec<u8>, RootKeyUnavailable> {
        let input = [
            i.to_be_bytes().as_slice(),
            DERIVE_LABEL,
            &[0],
            purpose,
            &256u32.to_be_bytes(),
        ]
        .concat();
        let block = self
            .with_key(|session, key| session.sign(&Mechanism::AesCMac, key, &input))
            .map_err(|e| unavailable("deriving a key", e))?;
        if block.len() != 16 {
            return Err(RootKeyUnavailable(format!(
                "the token's CMAC is {} bytes, not 16",
                block.len()
            )));
        }
        Ok(block)
    }

    /// The key must be an AES-256 key the service may use as the root key.
    fn check_key(&self, session: &Session, key: ObjectHandle) -> Result<(), Pkcs11OpenError> {
        let attributes = session
            .get_attributes(
                key,
                &[
                    AttributeType::KeyType,
                    AttributeType::ValueLen,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::Sign,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .map_err(failed("cannot read the root key's attributes"))?;
        if attributes.contains(&Attribute::Extractable(true))
            || attributes.contains(&Attribute::Sensitive(false))
        {
            tracing::warn!(
                key = %self.key_label,
                token = %self.token,
                "the root key on the token may be read out of it (extractable or not sensitive)"
            );
        }
        let mut problems = Vec::new();
        for attribute in &attributes {
            match attribute {
                Attribute::KeyType(t) if *t != KeyType::AES => {
                    problems.push(format!("it is a {t} key, not AES"));
                }
                Attribute::ValueLen(n) if u64::from(*n) != KEY_LEN as u64 => {
                    problems.push(format!("it is {} bytes long, not {KEY_LEN}", u64::from(*n)));
                }
                Attribute::Encrypt(false) => problems.push("it may not encrypt".into()),
                Attribute::Decrypt(false) => problems.push("it may not decrypt".into()),
                Attribute::Sign(false) => problems.push("it may not sign (CMAC)".into()),
                _ => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Pkcs11OpenError::new(format!(
                "the key labelled {:?} on token {:?} cannot be the root key: {}",
                self.key_label,
                self.token,
                problems.join("; ")
            )))
        }
    }
}

fn unavailable(what: &str, e: Failure) -> RootKeyUnavailable {
    RootKeyUnavailable(format!("PKCS#11 token, {what}: {e}"))
}

impl RootKey for Pkcs11RootKey {
    fn wrap(&self, label: &[u8], material: &[u8]) -> Result<Vec<u8>, RootKeyUnavailable> {
        let fresh: [u8; IV_LEN] = random_array();
        let aad = wrap_aad(label);
        let (iv, sealed) = self
            .with_key(|session, key| {
                let mut iv = fresh;
                let sealed = {
                    let params = GcmParams::new(&mut iv, &aad, ((TAG_LEN * 8) as u64).into())?;
                    session.encrypt(&Mechanism::AesGcm(params), key, material)?
                };
                // A token that makes its own IVs writes the one it used
                // back: that is the one to keep.
                Ok((iv, sealed))
            })
            .map_err(|e| unavailable("wrapping", e))?;
        if sealed.len() != material.len() + TAG_LEN {
            return Err(RootKeyUnavailable(format!(
                "the token's AES-GCM answered {} bytes for {} (expected a 16-byte tag)",
                sealed.len(),
                material.len()
            )));
        }
        Ok([iv.as_slice(), &sealed].concat())
    }

    fn unwrap(&self, label: &[u8], wrapped: &[u8]) -> Result<SecretBytes, UnwrapError> {
        if let Some((kept, material)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(label)
            && kept.as_slice() == wrapped
        {
            return Ok(SecretBytes::new(material.to_vec()));
        }
        let material = self.unwrap_on_token(label, wrapped)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(
            label.to_vec(),
            (wrapped.to_vec(), SecretBytes::new(material.to_vec())),
        );
        Ok(material)
    }

    fn forget(&self, label: &[u8]) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(label);
    }

    fn derive(&self, purpose: &[u8]) -> Result<Zeroizing<[u8; 32]>, RootKeyUnavailable> {
        let mut key = Zeroizing::new([0u8; 32]);
        key[..16].copy_from_slice(&Zeroizing::new(self.derive_block(1, purpose)?));
        key[16..].copy_from_slice(&Zeroizing::new(self.derive_block(2, purpose)?));
        Ok(key)
    }
}

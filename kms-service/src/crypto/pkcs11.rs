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
//!
//! A PKCS#11 call cannot be interrupted, and a token can hang (a network HSM
//! that lost its link, a device that stopped answering). So the token is
//! used from a thread of its own, one call at a time, and a caller waits for
//! it at most the configured timeout: then the call fails as unavailable,
//! and while the token has not answered that call, every later one that
//! needs the token fails at once instead of waiting too. Kept backing keys
//! go on answering; once the token answers, calls reach it again.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

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
    /// How long a call waits for the token before it fails as unavailable
    /// (see the module documentation).
    pub timeout: Duration,
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
    token: Arc<Token>,
    /// The token thread's work; it ends when this is dropped.
    jobs: mpsc::Sender<Job>,
    timeout: Duration,
    cache: Mutex<UnwrapCache>,
}

/// A call for the token thread to make, unless its caller stopped waiting
/// before it came to it.
struct Job {
    run: Box<dyn FnOnce(&Token) + Send>,
    give_up_at: Instant,
}

/// The token, as the token thread uses it.
struct Token {
    /// The session and the key's handle in it; `None` once the session
    /// was lost, until the next call opens another.
    connection: Mutex<Option<Connection>>,
    context: Pkcs11,
    slot: Slot,
    pin: Zeroizing<String>,
    token: String,
    key_label: String,
    /// Set when the token refused the PIN on a reconnect: no further login
    /// is tried until the service restarts, so a changed PIN cannot use up
    /// the token's wrong-PIN allowance and lock it.
    blocked: Mutex<Option<String>>,
    /// When a reconnect last failed: the next waits a second.
    last_failed: Mutex<Option<Instant>>,
    /// Since when the token thread has been in the call it is making.
    busy_since: Mutex<Option<Instant>>,
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
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

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
        let token = Arc::new(Token {
            connection: Mutex::new(None),
            context,
            slot,
            pin: settings.pin.clone(),
            token: settings.token.to_string(),
            key_label: settings.key_label.to_string(),
            blocked: Mutex::new(None),
            last_failed: Mutex::new(None),
            busy_since: Mutex::new(None),
        });
        let (connection, created) = token.connect(create)?;
        *token.lock() = Some(connection);
        let (jobs, queue) = mpsc::channel();
        let for_thread = Arc::clone(&token);
        std::thread::Builder::new()
            .name("pkcs11-token".into())
            .spawn(move || serve(&for_thread, &queue))
            .map_err(|e| Pkcs11OpenError::new(format!("cannot start the token's thread: {e}")))?;
        let root = Pkcs11RootKey {
            token,
            jobs,
            timeout: settings.timeout,
            cache: Mutex::new(HashMap::new()),
        };
        Ok((root, created))
    }

    /// Has the token thread make `operation`, and waits for it at most the
    /// timeout. While the thread has been in one call for longer than
    /// that, fails at once: the token is not answering.
    fn call<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&Token) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        let busy_since = *lock(&self.token.busy_since);
        if let Some(since) = busy_since
            && since.elapsed() >= self.timeout
        {
            return Err(Failure::Unreachable(format!(
                "the token has not answered a call made {:.1} s ago; calls that need it fail at once until it does",
                since.elapsed().as_secs_f64()
            )));
        }
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            run: Box::new(move |token| {
                let _ = reply.send(operation(token));
            }),
            give_up_at: Instant::now() + self.timeout,
        };
        if self.jobs.send(job).is_err() {
            return Err(Failure::Unreachable(
                "the token's thread has stopped".into(),
            ));
        }
        match answer.recv_timeout(self.timeout) {
            Ok(answered) => answered,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Failure::Unreachable(format!(
                "the token did not answer within {} ms (--root-key-pkcs11-timeout-ms)",
                self.timeout.as_millis()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Failure::Unreachable(
                "the call to the token failed unexpectedly; see the service log".into(),
            )),
        }
    }

    /// Occupies the token thread for `time`, as a token that stops
    /// answering would: for tests of the timeout.
    #[doc(hidden)]
    pub fn hold_token_thread(&self, time: Duration) {
        let job = Job {
            run: Box::new(move |_| std::thread::sleep(time)),
            give_up_at: Instant::now() + time + self.timeout,
        };
        let _ = self.jobs.send(job);
    }
}

/// The token thread: makes the calls it is given, one at a time, except
/// those whose callers stopped waiting before it came to them.
fn serve(token: &Token, queue: &mpsc::Receiver<Job>) {
    for job in queue {
        let now = Instant::now();
        if now >= job.give_up_at {
            continue;
        }
        *lock(&token.busy_since) = Some(now);
        // A panic loses only its own call (its caller hears of it).
        if std::panic::catch_unwind(AssertUnwindSafe(|| (job.run)(token))).is_err() {
            tracing::error!("a call to the root key's token panicked");
        }
        *lock(&token.busy_since) = None;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Token {
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
}

impl Pkcs11RootKey {
    /// Whether the token works: wraps and unwraps a fresh value. Tells a
    /// token that refuses everything from one that refused one input.
    fn works(&self) -> bool {
        let probe: [u8; 16] = random_array();
        self.wrap(b"probe", &probe)
            .ok()
            .and_then(|wrapped| self.open_on_token(b"probe", &wrapped).ok())
            .is_some_and(|opened| opened.as_slice() == probe)
    }

    /// How many unwrapped backing keys are kept (for tests).
    pub fn cached(&self) -> usize {
        lock(&self.cache).len()
    }

    /// AES-GCM decryption on the token.
    fn open_on_token(&self, label: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let (iv, sealed) = wrapped.split_at(IV_LEN.min(wrapped.len()));
        let (iv, sealed, aad) = (iv.to_vec(), sealed.to_vec(), wrap_aad(label));
        self.call(move |token| {
            token
                .with_key(|session, key| {
                    let mut iv = iv.clone();
                    let params = GcmParams::new(&mut iv, &aad, ((TAG_LEN * 8) as u64).into())?;
                    session.decrypt(&Mechanism::AesGcm(params), key, &sealed)
                })
                .map(Zeroizing::new)
        })
    }

    fn unwrap_on_token(&self, label: &[u8], wrapped: &[u8]) -> Result<SecretBytes, UnwrapError> {
        if wrapped.len() < IV_LEN + TAG_LEN {
            return Err(UnwrapError::Invalid);
        }
        match self.open_on_token(label, wrapped) {
            Ok(material) => Ok(SecretBytes::new(material.to_vec())),
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
    fn derive_block(
        &self,
        i: u32,
        purpose: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RootKeyUnavailable> {
        let input = [
            i.to_be_bytes().as_slice(),
            DERIVE_LABEL,
            &[0],
            purpose,
            &256u32.to_be_bytes(),
        ]
        .concat();
        let block = self
            .call(move |token| {
                token
                    .with_key(|session, key| session.sign(&Mechanism::AesCMac, key, &input))
                    .map(Zeroizing::new)
            })
            .map_err(|e| unavailable("deriving a key", e))?;
        if block.len() != 16 {
            return Err(RootKeyUnavailable(format!(
                "the token's CMAC is {} bytes, not 16",
                block.len()
            )));
        }
        Ok(block)
    }
}

impl Token {
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
        let plain = Zeroizing::new(material.to_vec());
        let (iv, sealed) = self
            .call(move |token| {
                token.with_key(|session, key| {
                    let mut iv = fresh;
                    let sealed = {
                        let params = GcmParams::new(&mut iv, &aad, ((TAG_LEN * 8) as u64).into())?;
                        session.encrypt(&Mechanism::AesGcm(params), key, &plain)?
                    };
                    // A token that makes its own IVs writes the one it used
                    // back: that is the one to keep.
                    Ok((iv, sealed))
                })
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
        if let Some((kept, material)) = lock(&self.cache).get(label)
            && kept.as_slice() == wrapped
        {
            return Ok(SecretBytes::new(material.to_vec()));
        }
        let material = self.unwrap_on_token(label, wrapped)?;
        let mut cache = lock(&self.cache);
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
        lock(&self.cache).remove(label);
    }

    fn derive(&self, purpose: &[u8]) -> Result<Zeroizing<[u8; 32]>, RootKeyUnavailable> {
        let mut key = Zeroizing::new([0u8; 32]);
        key[..16].copy_from_slice(&self.derive_block(1, purpose)?);
        key[16..].copy_from_slice(&self.derive_block(2, purpose)?);
        Ok(key)
    }
}

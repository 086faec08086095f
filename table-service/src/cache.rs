//! Two optional caches that save round trips to kms-service.
//!
//! - [`DataKeyCache`]: plaintext data keys, keyed by *(principal, wrapped
//!   key)* (as one SHA-256 digest of both). **Invariant:** an entry earned by one principal never
//!   serves another; each principal earns its own entry through its own
//!   kms:Decrypt. Values are zeroized when evicted, or when expired: on
//!   the next lookup, or by the sweep every [`SWEEP_EVERY`], whichever
//!   comes first.
//! - [`AuthzCache`]: allow decisions (of `Authorize`, or of a kms-service
//!   call made conditional on one with `x-authorize`), keyed by *(the caller's
//!   credential, action, resource)* (as one SHA-256 digest of the three). Denials are never cached, so a
//!   new permission works at once; a revoked one stops within the TTL.
//!
//! Both are bounded in size and time; a TTL or size of 0 disables them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Size and lifetime of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub capacity: usize,
}

impl CacheConfig {
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }
}

struct Bounded<K, V> {
    config: CacheConfig,
    entries: Mutex<Entries<K, V>>,
}

/// The entries, and their keys in the order they were stored: every entry
/// lives as long (the TTL), so that is also the order they expire in, and
/// eviction and sweeps take from the front instead of searching the map.
/// An entry stored again or removed early leaves a stale record in `order`
/// (its time no longer the entry's), skipped when reached.
struct Entries<K, V> {
    map: HashMap<K, (V, Instant)>,
    order: VecDeque<(K, Instant)>,
}

impl<K: std::hash::Hash + Eq + Clone, V> Entries<K, V> {
    /// Removes the entry `record` stands for, if it is still that entry.
    fn remove_if_current(&mut self, (key, expires): &(K, Instant)) -> bool {
        if self.map.get(key).is_some_and(|(_, e)| e == expires) {
            self.map.remove(key);
            true
        } else {
            false
        }
    }

    /// Drops the expired entries (the front of `order`); returns how many.
    fn drop_expired(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some(front) = self.order.front() {
            if front.1 > now {
                break;
            }
            let record = self.order.pop_front().expect("a front record");
            dropped += usize::from(self.remove_if_current(&record));
        }
        dropped
    }

    /// Drops the entry that expires first.
    fn drop_oldest(&mut self) {
        while let Some(record) = self.order.pop_front() {
            if self.remove_if_current(&record) {
                return;
            }
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(config: CacheConfig) -> Self {
        Bounded {
            config,
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get<R>(&self, key: &K, read: impl FnOnce(&V) -> R) -> Option<R> {
        if !self.config.enabled() {
            return None;
        }
        let mut entries = self.lock();
        match entries.map.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Some(read(value)),
            Some(_) => {
                entries.map.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: K, value: V) {
        if !self.config.enabled() {
            return;
        }
        let now = Instant::now();
        let expires = now + self.config.ttl;
        let mut entries = self.lock();
        if entries.map.len() >= self.config.capacity && !entries.map.contains_key(&key) {
            entries.drop_expired(now);
            if entries.map.len() >= self.config.capacity {
                // Full of live entries: drop the one closest to expiry.
                entries.drop_oldest();
            }
        }
        entries.map.insert(key.clone(), (value, expires));
        entries.order.push_back((key, expires));
        // Stale records (entries stored again, or removed by a lookup
        // after they expired) are bounded too.
        if entries.order.len() > 2 * self.config.capacity.max(8) {
            let Entries { map, order } = &mut *entries;
            order.retain(|(k, e)| map.get(k).is_some_and(|(_, me)| me == e));
        }
    }

    fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Drops (and so, for secrets, zeroizes) every expired entry; returns
    /// how many.
    fn purge_expired(&self) -> usize {
        self.lock().drop_expired(Instant::now())
    }
}

/// How often [`crate::service::Tables::sweep_caches`] drops expired
/// entries, so a plaintext data key outlives its TTL by at most this long
/// even when nothing looks it up again.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// SHA-256 of length-prefixed parts: a fixed-size cache key that two
/// different lists of parts cannot share.
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Plaintext data keys per principal and credential, keyed by the digest
/// of (principal, credential, wrapped key). The credential is part of the
/// key because a principal is known by name: a principal deleted and made
/// again under its name (with new tokens) must not be served what the old
/// one unwrapped.
pub struct DataKeyCache(Bounded<[u8; 32], Zeroizing<Vec<u8>>>);

impl DataKeyCache {
    pub fn new(config: CacheConfig) -> Self {
        DataKeyCache(Bounded::new(config))
    }

    fn key(principal: &str, credential: &str, wrapped: &[u8]) -> [u8; 32] {
        digest(&[principal.as_bytes(), credential.as_bytes(), wrapped])
    }

    /// Whether entries are kept at all (a TTL or size of 0 disables it).
    pub fn enabled(&self) -> bool {
        self.0.config.enabled()
    }

    /// The data key `principal`, calling with `credential`, unwrapped
    /// earlier from `wrapped`, if live.
    pub fn get(
        &self,
        principal: &str,
        credential: &str,
        wrapped: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        self.0.get(&Self::key(principal, credential, wrapped), |k| {
            Zeroizing::new(k.to_vec())
        })
    }

    pub fn insert(&self, principal: &str, credential: &str, wrapped: &[u8], plaintext: &[u8]) {
        self.0.insert(
            Self::key(principal, credential, wrapped),
            Zeroizing::new(plaintext.to_vec()),
        );
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops and zeroizes the expired entries; returns how many.
    pub fn purge_expired(&self) -> usize {
        self.0.purge_expired()
    }
}

/// Allow decisions per credential, keyed by the digest of (credential,
/// action, resource).
pub struct AuthzCache(Bounded<[u8; 32], String>);

impl AuthzCache {
    pub fn new(config: CacheConfig) -> Self {
        AuthzCache(Bounded::new(config))
    }

    /// Whether allows are kept at all (a TTL or size of 0 disables it).
    pub fn enabled(&self) -> bool {
        self.0.config.enabled()
    }

    fn key(credential: &str, action: &str, resource: &str) -> [u8; 32] {
        digest(&[
            credential.as_bytes(),
            action.as_bytes(),
            resource.as_bytes(),
        ])
    }

    /// The principal a live allow was recorded for.
    pub fn allowed(&self, credential: &str, action: &str, resource: &str) -> Option<String> {
        self.0
            .get(&Self::key(credential, action, resource), String::clone)
    }

    pub fn record_allow(&self, credential: &str, action: &str, resource: &str, principal: &str) {
        self.0.insert(
            Self::key(credential, action, resource),
            principal.to_string(),
        );
    }

    /// Drops the expired allows; returns how many.
    pub fn purge_expired(&self) -> usize {
        self.0.purge_expired()
    }
}

#[cfg(test)]
mod tests;

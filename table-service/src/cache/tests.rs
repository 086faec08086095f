//! Cache invariants: per-principal isolation, expiry, bounds, disabling.

use std::time::Duration;

use super::*;

fn config(ttl_ms: u64, capacity: usize) -> CacheConfig {
    CacheConfig {
        ttl: Duration::from_millis(ttl_ms),
        capacity,
    }
}

#[test]
fn an_entry_of_one_principal_never_serves_another() {
    let cache = DataKeyCache::new(config(60_000, 10));
    cache.insert("user/alice", "Bearer t", b"wrapped", b"data key");
    assert_eq!(
        cache
            .get("user/alice", "Bearer t", b"wrapped")
            .as_deref()
            .map(Vec::as_slice),
        Some(&b"data key"[..])
    );
    assert!(cache.get("user/bob", "Bearer t", b"wrapped").is_none());
    assert!(
        cache
            .get("user/alice", "Bearer t", b"other wrapped")
            .is_none()
    );
    // Nor another credential of a principal of the same name (one deleted
    // and made again has new tokens).
    assert!(cache.get("user/alice", "Bearer u", b"wrapped").is_none());
}

#[test]
fn entries_expire() {
    let cache = DataKeyCache::new(config(30, 10));
    cache.insert("user/alice", "Bearer t", b"w", b"k");
    assert!(cache.get("user/alice", "Bearer t", b"w").is_some());
    std::thread::sleep(Duration::from_millis(60));
    assert!(cache.get("user/alice", "Bearer t", b"w").is_none());
}

#[test]
fn size_is_bounded() {
    let cache = DataKeyCache::new(config(60_000, 3));
    for i in 0..10u8 {
        cache.insert("user/a", "Bearer t", &[i], b"k");
    }
    assert_eq!(cache.len(), 3);
    assert!(
        cache.get("user/a", "Bearer t", &[9]).is_some(),
        "the newest entry stays"
    );
}

#[test]
fn zero_ttl_or_size_disables() {
    for (ttl, capacity) in [(0, 10), (60_000, 0)] {
        let cache = DataKeyCache::new(config(ttl, capacity));
        cache.insert("user/a", "Bearer t", b"w", b"k");
        assert!(cache.get("user/a", "Bearer t", b"w").is_none());
        assert!(cache.is_empty());
    }
}

#[test]
fn authz_allows_are_per_credential_action_and_resource() {
    let cache = AuthzCache::new(config(60_000, 10));
    cache.record_allow("Bearer a", "table:GetItem", "table/t", "user/a");
    assert_eq!(
        cache
            .allowed("Bearer a", "table:GetItem", "table/t")
            .as_deref(),
        Some("user/a")
    );
    for (cred, action, resource) in [
        ("Bearer b", "table:GetItem", "table/t"),
        ("Bearer a", "table:PutItem", "table/t"),
        ("Bearer a", "table:GetItem", "table/u"),
    ] {
        assert!(cache.allowed(cred, action, resource).is_none());
    }
}

#[test]
fn key_parts_do_not_run_into_each_other() {
    let keys = DataKeyCache::new(config(60_000, 10));
    keys.insert("user/a", "Bearer t", b"bc", b"k");
    assert!(keys.get("user/ab", "Bearer t", b"c").is_none());
    let allows = AuthzCache::new(config(60_000, 10));
    allows.record_allow("Bearer a", "table:GetItem", "table/t", "user/a");
    assert!(
        allows
            .allowed("Bearer a", "table:GetItemtable/t", "")
            .is_none()
    );
    assert!(
        allows
            .allowed("Bearer atable:GetItem", "", "table/t")
            .is_none()
    );
}

#[test]
fn a_sweep_drops_expired_entries_that_nobody_looks_up() {
    let keys = DataKeyCache::new(config(40, 10));
    let allows = AuthzCache::new(config(40, 10));
    keys.insert("user/alice", "Bearer t", b"old", b"k");
    allows.record_allow("Bearer a", "table:GetItem", "table/t", "user/a");
    assert_eq!((keys.purge_expired(), allows.purge_expired()), (0, 0));
    std::thread::sleep(Duration::from_millis(60));
    keys.insert("user/alice", "Bearer t", b"new", b"k");
    assert_eq!(keys.len(), 2, "nothing looked the old entry up");
    assert_eq!((keys.purge_expired(), allows.purge_expired()), (1, 1));
    assert_eq!(keys.len(), 1);
    assert!(
        keys.get("user/alice", "Bearer t", b"new").is_some(),
        "a live entry stays"
    );
}

/// A full cache drops the entry that expires first, and an entry stored
/// again lives from its new store (its earlier place in line is stale).
#[test]
fn a_full_cache_drops_the_entry_closest_to_expiry() {
    let cache = DataKeyCache::new(config(60_000, 3));
    for i in 0..3u8 {
        cache.insert("user/a", "Bearer t", &[i], &[i]);
        std::thread::sleep(Duration::from_millis(2));
    }
    // 0 stored again: now the newest.
    cache.insert("user/a", "Bearer t", &[0], b"again");
    cache.insert("user/a", "Bearer t", &[3], &[3]);
    assert_eq!(cache.len(), 3);
    assert!(
        cache.get("user/a", "Bearer t", &[1]).is_none(),
        "1 was oldest"
    );
    for i in [0u8, 2, 3] {
        assert!(cache.get("user/a", "Bearer t", &[i]).is_some(), "{i} stays");
    }
    cache.insert("user/a", "Bearer t", &[4], &[4]);
    assert!(cache.get("user/a", "Bearer t", &[2]).is_none(), "then 2");
    assert_eq!(
        cache
            .get("user/a", "Bearer t", &[0])
            .as_deref()
            .map(Vec::as_slice),
        Some(&b"again"[..])
    );
}

/// A large full cache takes many inserts (each drops the entry first in
/// line, rather than searching every entry for it), and entries stored
/// again and again do not grow its bookkeeping past its bound.
#[test]
fn a_large_full_cache_keeps_its_bound_under_many_inserts() {
    let cache = AuthzCache::new(config(60_000, 20_000));
    for i in 0..60_000u32 {
        cache.record_allow(&format!("Bearer {i}"), "table:GetItem", "table/t", "user/a");
    }
    assert_eq!(cache.0.len(), 20_000);
    assert!(
        cache
            .allowed("Bearer 59999", "table:GetItem", "table/t")
            .is_some()
    );
    assert!(
        cache
            .allowed("Bearer 39999", "table:GetItem", "table/t")
            .is_none()
    );
    assert!(
        cache
            .allowed("Bearer 40000", "table:GetItem", "table/t")
            .is_some()
    );
    for _ in 0..5 {
        for i in 40_000..60_000u32 {
            cache.record_allow(&format!("Bearer {i}"), "table:GetItem", "table/t", "user/a");
        }
    }
    let entries = cache.0.lock();
    assert_eq!(entries.map.len(), 20_000);
    assert!(
        entries.order.len() <= 2 * 20_000 + 1,
        "{}",
        entries.order.len()
    );
}

//! Store conformance suite.
//!
//! Every case is written once, as a function taking a factory of fresh,
//! empty engine instances ([`Fixture`]), and [`engines!`] turns each case
//! into one `#[test]` per engine. Adding an engine (say PostgreSQL) is one
//! line in the `engines!` invocation at the bottom of this file plus a
//! factory function; the cases do not change.
//!
//! Cases are grouped by what they need from the engine:
//!
//! * `conformance`: the [`Store`] contract (round trips, upserts, deletes,
//!   load order, rebuilding from [`Snapshot::into_mutations`]);
//! * `committer`: [`GroupCommitter`] on top of the engine;
//! * `durability`: the engine keeps its data across close and reopen;
//! * `fault_injection`: the test can make one mutation fail *inside* the
//!   engine, from outside it, to check that a batch is all or nothing.
//!
//! Each case commits batches, loads, and compares the whole snapshot with a
//! hand-written expectation, in the documented order (every list sorted by
//! its identifier, in byte order; versions by key id, then version number).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::sqlite::SqliteStore;
use super::{GroupCommitter, Mutation, Snapshot, Store, StoreError};
use crate::grants::{GrantConstraints, GrantOperation, GrantRecord};
use crate::identity::{PrincipalKind, PrincipalRecord, TokenRecord};
use crate::keys::{AliasRecord, KeyRecord, KeySpec, KeyState, KeyVersionRecord, VersionOrigin};

// ---------------------------------------------------------------------------
// Engines under test
// ---------------------------------------------------------------------------

type Reopen = Box<dyn Fn() -> Box<dyn Store>>;
type InjectFailure = Box<dyn Fn()>;

/// A fresh, empty instance of one engine, with the engine-specific hooks
/// that some groups of cases need. Fields drop in order: the store closes
/// before the guard removes its storage.
struct Fixture {
    store: Box<dyn Store>,
    /// Opens the same storage again, as a restart would (`durability`).
    reopen: Option<Reopen>,
    /// Makes every later write of a version of [`FAILING_KEY_ID`] fail
    /// inside the engine (`fault_injection`).
    inject_failure: Option<InjectFailure>,
    /// Keeps the storage (e.g. a temporary directory) alive.
    _guard: Box<dyn std::any::Any>,
}

/// Key id whose versions the engine rejects once `inject_failure` has run.
const FAILING_KEY_ID: &str = "key-that-fails";

fn sqlite_in_memory() -> Fixture {
    Fixture {
        store: Box::new(SqliteStore::in_memory().expect("open in-memory SQLite")),
        reopen: None,
        // The in-memory database is private to the engine's connection, so
        // nothing outside the engine can make one of its statements fail:
        // batch atomicity is checked on the file-backed engine only.
        inject_failure: None,
        _guard: Box::new(()),
    }
}

fn sqlite_file() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("kms.sqlite3");
    let store = SqliteStore::open(&path).expect("open SQLite file");
    let reopen_path = path.clone();
    Fixture {
        store: Box::new(store),
        reopen: Some(Box::new(move || {
            Box::new(SqliteStore::open(&reopen_path).expect("reopen SQLite file"))
        })),
        // A trigger, installed through a second connection, makes SQLite
        // abort the statement that writes a version of FAILING_KEY_ID. The
        // engine's code is untouched: this is what a full disk or a
        // constraint violation would look like to it.
        inject_failure: Some(Box::new(move || {
            let conn = rusqlite::Connection::open(&path).expect("second connection");
            conn.execute_batch(&format!(
                "CREATE TRIGGER inject_failure BEFORE INSERT ON key_versions
                 WHEN NEW.key_id = '{FAILING_KEY_ID}'
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
            ))
            .expect("install failure trigger");
        })),
        _guard: Box::new(dir),
    }
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

const KEY_A: &str = "key-a";
const KEY_B: &str = "key-b";
const ALICE: &str = "user/alice";
const TABLE_SERVICE: &str = "service/table-service";
const KEY_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Lockbox":"user/alice"},"Action":"kms:*","Resource":"*"}]}"#;

/// A key with every optional field set: tags (one empty, one non-ASCII),
/// rotation, a deletion date, and text that needs escaping.
fn key_a() -> KeyRecord {
    KeyRecord {
        key_id: KEY_A.into(),
        created: 1_700_000_000,
        creator: ALICE.into(),
        description: "Ünïcödé \"quoted\"\nsecond line\ttab \\ backslash".into(),
        spec: KeySpec::SymmetricDefault,
        state: KeyState::PendingDeletion,
        deletion_date: Some(1_702_592_000),
        pending_window_days: 7,
        policy: KEY_POLICY.into(),
        tags: BTreeMap::from([
            ("env".into(), "prod".into()),
            ("empty".into(), String::new()),
            ("owner".into(), "équipe €".into()),
        ]),
        rotation_period_days: Some(90),
        next_rotation: Some(1_707_776_000),
        current_version: 10,
    }
}

/// The same key, changed in every field but its id.
fn key_a_changed() -> KeyRecord {
    KeyRecord {
        key_id: KEY_A.into(),
        created: 1_700_000_001,
        creator: TABLE_SERVICE.into(),
        description: String::new(),
        spec: KeySpec::SymmetricDefault,
        state: KeyState::Disabled,
        deletion_date: None,
        pending_window_days: 30,
        policy: "{}".into(),
        tags: BTreeMap::from([("env".into(), "staging".into())]),
        rotation_period_days: None,
        next_rotation: None,
        current_version: 11,
    }
}

/// A key with every optional field empty.
fn key_b() -> KeyRecord {
    KeyRecord {
        key_id: KEY_B.into(),
        created: -1,
        creator: TABLE_SERVICE.into(),
        description: String::new(),
        spec: KeySpec::Hmac512,
        state: KeyState::Enabled,
        deletion_date: None,
        pending_window_days: 30,
        policy: "{}".into(),
        tags: BTreeMap::new(),
        rotation_period_days: None,
        next_rotation: None,
        current_version: 1,
    }
}

fn version(key_id: &str, version: u32, origin: VersionOrigin, wrapped: &[u8]) -> KeyVersionRecord {
    KeyVersionRecord {
        key_id: key_id.into(),
        version,
        wrapped: wrapped.to_vec(),
        created: 1_700_000_000 + i64::from(version),
        origin,
    }
}

/// Wrapped material as binary as it gets: zeros, 0xff, a lone NUL at the end.
fn a_v1() -> KeyVersionRecord {
    version(KEY_A, 1, VersionOrigin::Created, &[0; 60])
}
fn a_v2() -> KeyVersionRecord {
    version(
        KEY_A,
        2,
        VersionOrigin::AutomaticRotation,
        &[0xff, 0, 0, 1, 0x80, 0x7f, b'\'', b'"', 0],
    )
}
fn a_v2_changed() -> KeyVersionRecord {
    KeyVersionRecord {
        created: i64::MAX,
        ..version(KEY_A, 2, VersionOrigin::OnDemandRotation, &[0, 2])
    }
}
/// Version 10 sorts after 2 only if versions are ordered as numbers.
fn a_v10() -> KeyVersionRecord {
    version(KEY_A, 10, VersionOrigin::OnDemandRotation, &[10; 44])
}
fn b_v1() -> KeyVersionRecord {
    KeyVersionRecord {
        created: i64::MIN,
        ..version(
            KEY_B,
            1,
            VersionOrigin::Created,
            &(0..=255).collect::<Vec<u8>>(),
        )
    }
}
fn b_vmax() -> KeyVersionRecord {
    version(KEY_B, u32::MAX, VersionOrigin::AutomaticRotation, &[0xb])
}

fn alias(alias_name: &str, key_id: &str) -> AliasRecord {
    AliasRecord {
        alias_name: alias_name.into(),
        key_id: key_id.into(),
        created: 1_700_000_100,
    }
}

fn alice() -> PrincipalRecord {
    PrincipalRecord {
        principal: ALICE.into(),
        kind: PrincipalKind::User,
        created: 1_600_000_000,
        attached: BTreeSet::from(["KmsAdmin".into(), "ReadOnly".into()]),
        inline: BTreeMap::from([
            (
                "decrypt-only".into(),
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"key/*"}]}"#.into(),
            ),
            (
                "deny-delete".into(),
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kms:ScheduleKeyDeletion","Resource":"*"}]}"#.into(),
            ),
        ]),
    }
}

fn alice_changed() -> PrincipalRecord {
    PrincipalRecord {
        created: 1_600_000_001,
        attached: BTreeSet::from(["Auditor".into()]),
        inline: BTreeMap::new(),
        ..alice()
    }
}

fn table_service() -> PrincipalRecord {
    PrincipalRecord {
        principal: TABLE_SERVICE.into(),
        kind: PrincipalKind::Service,
        created: 1_600_000_002,
        attached: BTreeSet::new(),
        inline: BTreeMap::new(),
    }
}

fn token(token_id: &str, principal: &str, fill: u8, revoked: Option<i64>) -> TokenRecord {
    let mut digest = [fill; 32];
    digest[0] = 0;
    TokenRecord {
        token_id: token_id.into(),
        principal: principal.into(),
        digest,
        created: 1_650_000_000,
        revoked,
    }
}

fn tok_1() -> TokenRecord {
    token("tok-1", ALICE, 1, None)
}
fn tok_1_revoked() -> TokenRecord {
    token("tok-1", ALICE, 1, Some(1_650_000_500))
}
fn tok_2() -> TokenRecord {
    token("tok-2", ALICE, 2, Some(1_650_000_100))
}
fn tok_3() -> TokenRecord {
    token("tok-3", TABLE_SERVICE, 0xff, None)
}

fn context(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A grant with an `equals` constraint and a retiring principal.
fn grant_1() -> GrantRecord {
    GrantRecord {
        grant_id: "grant-1".into(),
        key_id: KEY_A.into(),
        name: "table encryption".into(),
        grantee: TABLE_SERVICE.into(),
        retiring: Some(ALICE.into()),
        issuing: ALICE.into(),
        operations: BTreeSet::from([GrantOperation::Encrypt, GrantOperation::Decrypt]),
        constraints: GrantConstraints {
            equals: Some(context(&[("table", "orders"), ("tenant", "ünï")])),
            subset: None,
        },
        created: 1_700_000_200,
    }
}

fn grant_1_changed() -> GrantRecord {
    GrantRecord {
        name: String::new(),
        retiring: None,
        operations: BTreeSet::from([GrantOperation::GenerateDataKey]),
        constraints: GrantConstraints {
            equals: None,
            subset: Some(context(&[("table", "orders")])),
        },
        created: 1_700_000_201,
        ..grant_1()
    }
}

/// A grant of every operation with a `subset` constraint.
fn grant_2() -> GrantRecord {
    GrantRecord {
        grant_id: "grant-2".into(),
        key_id: KEY_A.into(),
        name: String::new(),
        grantee: ALICE.into(),
        retiring: None,
        issuing: TABLE_SERVICE.into(),
        operations: GrantOperation::ALL.into_iter().collect(),
        constraints: GrantConstraints {
            equals: None,
            subset: Some(context(&[("purpose", "backup"), ("", "")])),
        },
        created: 1_700_000_300,
    }
}

/// A grant without constraints.
fn grant_3() -> GrantRecord {
    GrantRecord {
        grant_id: "grant-3".into(),
        key_id: KEY_B.into(),
        name: "mac".into(),
        grantee: TABLE_SERVICE.into(),
        retiring: None,
        issuing: ALICE.into(),
        operations: BTreeSet::from([GrantOperation::GenerateMac, GrantOperation::VerifyMac]),
        constraints: GrantConstraints::default(),
        created: 1_700_000_400,
    }
}

fn all_bytes() -> Vec<u8> {
    (0..=255).rev().collect()
}

fn meta(name: &str, value: &[u8]) -> Mutation {
    Mutation::PutMeta {
        name: name.into(),
        value: value.to_vec(),
    }
}

/// Puts of one of every record, parents before children but otherwise in
/// no particular order, so that a sorted load is not a coincidence.
fn world_puts() -> Vec<Mutation> {
    vec![
        meta("root-check", &all_bytes()),
        meta("format", b"1"),
        meta("empty", b""),
        Mutation::PutKey(key_b()),
        Mutation::PutKey(key_a()),
        Mutation::PutKeyVersion(b_vmax()),
        Mutation::PutKeyVersion(a_v10()),
        Mutation::PutKeyVersion(a_v2()),
        Mutation::PutKeyVersion(b_v1()),
        Mutation::PutKeyVersion(a_v1()),
        Mutation::PutAlias(alias("alias/b", KEY_B)),
        Mutation::PutAlias(alias("alias/alpha", KEY_A)),
        Mutation::PutAlias(alias("alias/Zeta", KEY_A)),
        Mutation::PutPrincipal(alice()),
        Mutation::PutPrincipal(table_service()),
        Mutation::PutToken(tok_3()),
        Mutation::PutToken(tok_2()),
        Mutation::PutToken(tok_1()),
        Mutation::PutGrant(grant_3()),
        Mutation::PutGrant(grant_1()),
        Mutation::PutGrant(grant_2()),
    ]
}

/// What loading [`world_puts`] must give, written out in load order.
fn world() -> Snapshot {
    Snapshot {
        meta: BTreeMap::from([
            ("empty".into(), Vec::new()),
            ("format".into(), b"1".to_vec()),
            ("root-check".into(), all_bytes()),
        ]),
        keys: vec![key_a(), key_b()],
        versions: vec![a_v1(), a_v2(), a_v10(), b_v1(), b_vmax()],
        // Byte order: upper case sorts before lower case.
        aliases: vec![
            alias("alias/Zeta", KEY_A),
            alias("alias/alpha", KEY_A),
            alias("alias/b", KEY_B),
        ],
        principals: vec![table_service(), alice()],
        tokens: vec![tok_1(), tok_2(), tok_3()],
        grants: vec![grant_1(), grant_2(), grant_3()],
    }
}

/// A change to the world snapshot: what a row of a table expects.
type Edit = fn(&mut Snapshot);

fn edited(edit: impl FnOnce(&mut Snapshot)) -> Snapshot {
    let mut snapshot = world();
    edit(&mut snapshot);
    snapshot
}

/// Replaces the record that `same` picks with `new`.
fn replace<T>(list: &mut [T], same: impl Fn(&T) -> bool, new: T) {
    let slot = list
        .iter_mut()
        .find(|r| same(r))
        .expect("record to replace");
    *slot = new;
}

// ---------------------------------------------------------------------------
// The check
// ---------------------------------------------------------------------------

/// Commits `batches` in order, then loads and compares with `expected`
/// exactly. Lists are compared one by one first, with the fields the
/// records' `Debug` hides (wrapped material, token digests) spelled out, so
/// a failure says what differs.
fn check(store: &dyn Store, what: &str, batches: &[Vec<Mutation>], expected: &Snapshot) {
    for (i, batch) in batches.iter().enumerate() {
        if let Err(e) = store.commit(batch) {
            panic!("{what}: batch {i} failed: {e}");
        }
    }
    let loaded = store
        .load()
        .unwrap_or_else(|e| panic!("{what}: load failed: {e}"));
    assert_same(&loaded, expected, what);
}

fn assert_same(loaded: &Snapshot, expected: &Snapshot, what: &str) {
    let versions = |s: &Snapshot| -> Vec<_> {
        s.versions
            .iter()
            .map(|v| {
                (
                    v.key_id.clone(),
                    v.version,
                    v.created,
                    v.origin,
                    hex::encode(&v.wrapped),
                )
            })
            .collect()
    };
    let tokens = |s: &Snapshot| -> Vec<_> {
        s.tokens
            .iter()
            .map(|t| {
                (
                    t.token_id.clone(),
                    t.principal.clone(),
                    hex::encode(t.digest),
                    t.created,
                    t.revoked,
                )
            })
            .collect()
    };
    assert_eq!(loaded.meta, expected.meta, "{what}: meta");
    assert_eq!(loaded.keys, expected.keys, "{what}: keys");
    assert_eq!(versions(loaded), versions(expected), "{what}: versions");
    assert_eq!(loaded.aliases, expected.aliases, "{what}: aliases");
    assert_eq!(loaded.principals, expected.principals, "{what}: principals");
    assert_eq!(tokens(loaded), tokens(expected), "{what}: tokens");
    assert_eq!(loaded.grants, expected.grants, "{what}: grants");
    assert_eq!(loaded, expected, "{what}");
}

// ---------------------------------------------------------------------------
// conformance
// ---------------------------------------------------------------------------

fn empty_store_loads_empty_snapshot(make: &dyn Fn() -> Fixture) {
    let fx = make();
    check(&*fx.store, "fresh store", &[], &Snapshot::default());
    check(
        &*fx.store,
        "after an empty batch",
        &[vec![]],
        &Snapshot::default(),
    );
}

fn put_round_trips_every_record_type(make: &dyn Fn() -> Fixture) {
    let only = |edit: Edit| {
        let mut s = Snapshot::default();
        edit(&mut s);
        s
    };
    let rows: Vec<(&str, Vec<Mutation>, Snapshot)> = vec![
        (
            "meta, binary values and an empty one",
            vec![meta("root-check", &all_bytes()), meta("empty", b"")],
            only(|s| {
                s.meta.insert("root-check".into(), all_bytes());
                s.meta.insert("empty".into(), Vec::new());
            }),
        ),
        (
            "key with tags, rotation and deletion date",
            vec![Mutation::PutKey(key_a())],
            only(|s| s.keys = vec![key_a()]),
        ),
        (
            "key with no optional fields",
            vec![Mutation::PutKey(key_b())],
            only(|s| s.keys = vec![key_b()]),
        ),
        (
            "versions of every origin with binary material",
            vec![
                Mutation::PutKey(key_a()),
                Mutation::PutKeyVersion(a_v1()),
                Mutation::PutKeyVersion(a_v2()),
                Mutation::PutKeyVersion(a_v10()),
            ],
            only(|s| {
                s.keys = vec![key_a()];
                s.versions = vec![a_v1(), a_v2(), a_v10()];
            }),
        ),
        (
            "versions at the ends of the integer ranges",
            vec![
                Mutation::PutKey(key_b()),
                Mutation::PutKeyVersion(b_v1()),
                Mutation::PutKeyVersion(b_vmax()),
            ],
            only(|s| {
                s.keys = vec![key_b()];
                s.versions = vec![b_v1(), b_vmax()];
            }),
        ),
        (
            "alias",
            vec![
                Mutation::PutKey(key_b()),
                Mutation::PutAlias(alias("alias/b", KEY_B)),
            ],
            only(|s| {
                s.keys = vec![key_b()];
                s.aliases = vec![alias("alias/b", KEY_B)];
            }),
        ),
        (
            "principal with attached and inline policies",
            vec![Mutation::PutPrincipal(alice())],
            only(|s| s.principals = vec![alice()]),
        ),
        (
            "principal with no policies",
            vec![Mutation::PutPrincipal(table_service())],
            only(|s| s.principals = vec![table_service()]),
        ),
        (
            "tokens with and without revocation",
            vec![
                Mutation::PutPrincipal(alice()),
                Mutation::PutToken(tok_1()),
                Mutation::PutToken(tok_2()),
            ],
            only(|s| {
                s.principals = vec![alice()];
                s.tokens = vec![tok_1(), tok_2()];
            }),
        ),
        (
            "grants with equals, subset and no constraints",
            vec![
                Mutation::PutKey(key_a()),
                Mutation::PutKey(key_b()),
                Mutation::PutGrant(grant_1()),
                Mutation::PutGrant(grant_2()),
                Mutation::PutGrant(grant_3()),
            ],
            only(|s| {
                s.keys = vec![key_a(), key_b()];
                s.grants = vec![grant_1(), grant_2(), grant_3()];
            }),
        ),
        ("everything in one batch", world_puts(), world()),
    ];
    for (what, batch, expected) in rows {
        let fx = make();
        check(&*fx.store, what, &[batch], &expected);
    }
}

fn put_twice_is_an_upsert(make: &dyn Fn() -> Fixture) {
    // Each row: the second version of a record already in the world, and
    // the world as it must load after it.
    let rows: Vec<(&str, Mutation, Edit)> = vec![
        ("meta", meta("format", &[0, 2]), |s| {
            s.meta.insert("format".into(), vec![0, 2]);
        }),
        ("key", Mutation::PutKey(key_a_changed()), |s| {
            replace(&mut s.keys, |k| k.key_id == KEY_A, key_a_changed());
        }),
        (
            "key version",
            Mutation::PutKeyVersion(a_v2_changed()),
            |s| {
                replace(
                    &mut s.versions,
                    |v| v.key_id == KEY_A && v.version == 2,
                    a_v2_changed(),
                );
            },
        ),
        (
            "alias pointed at another key",
            Mutation::PutAlias(alias("alias/alpha", KEY_B)),
            |s| {
                replace(
                    &mut s.aliases,
                    |a| a.alias_name == "alias/alpha",
                    alias("alias/alpha", KEY_B),
                );
            },
        ),
        ("principal", Mutation::PutPrincipal(alice_changed()), |s| {
            replace(&mut s.principals, |p| p.principal == ALICE, alice_changed());
        }),
        ("token revoked", Mutation::PutToken(tok_1_revoked()), |s| {
            replace(&mut s.tokens, |t| t.token_id == "tok-1", tok_1_revoked());
        }),
        ("grant", Mutation::PutGrant(grant_1_changed()), |s| {
            replace(
                &mut s.grants,
                |g| g.grant_id == "grant-1",
                grant_1_changed(),
            );
        }),
    ];
    for (what, second, edit) in rows {
        let after = edited(edit);

        let fx = make();
        check(
            &*fx.store,
            &format!("{what}: second put in a later batch"),
            &[world_puts(), vec![second.clone()]],
            &after,
        );
        // Last wins, not newest or largest: putting the first one back
        // restores it.
        check(
            &*fx.store,
            &format!("{what}: first put again"),
            &[world_puts()],
            &world(),
        );

        let fx = make();
        let mut batch = world_puts();
        batch.push(second);
        check(
            &*fx.store,
            &format!("{what}: both puts in one batch"),
            &[batch],
            &after,
        );
    }
}

fn deletes_remove_exactly_their_rows(make: &dyn Fn() -> Fixture) {
    let delete_key = |key_id: &str| Mutation::DeleteKey {
        key_id: key_id.into(),
    };
    let delete_alias = |alias_name: &str| Mutation::DeleteAlias {
        alias_name: alias_name.into(),
    };
    let delete_principal = |principal: &str| Mutation::DeletePrincipal {
        principal: principal.into(),
    };
    let delete_grant = |grant_id: &str| Mutation::DeleteGrant {
        grant_id: grant_id.into(),
    };
    fn drop_key(s: &mut Snapshot, key_id: &str) {
        s.keys.retain(|k| k.key_id != key_id);
        s.versions.retain(|v| v.key_id != key_id);
        s.aliases.retain(|a| a.key_id != key_id);
        s.grants.retain(|g| g.key_id != key_id);
    }
    // Each row: a batch committed on top of the world, and the world as it
    // must load after it.
    let rows: Vec<(&str, Vec<Mutation>, Edit)> = vec![
        (
            "DeleteKey takes versions, aliases and grants",
            vec![delete_key(KEY_A)],
            |s| {
                drop_key(s, KEY_A);
            },
        ),
        ("DeleteKey of the other key", vec![delete_key(KEY_B)], |s| {
            drop_key(s, KEY_B);
        }),
        (
            "DeleteKey of an absent key",
            vec![delete_key("key-absent")],
            |_| {},
        ),
        (
            "DeleteKey spares an alias pointed away from it",
            vec![
                Mutation::PutAlias(alias("alias/alpha", KEY_B)),
                delete_key(KEY_A),
            ],
            |s| {
                drop_key(s, KEY_A);
                s.aliases.insert(0, alias("alias/alpha", KEY_B));
            },
        ),
        (
            "DeleteKey then PutKey of the same id starts empty",
            vec![delete_key(KEY_A), Mutation::PutKey(key_a_changed())],
            |s| {
                drop_key(s, KEY_A);
                s.keys.insert(0, key_a_changed());
            },
        ),
        ("DeleteAlias", vec![delete_alias("alias/alpha")], |s| {
            s.aliases.retain(|a| a.alias_name != "alias/alpha");
        }),
        (
            "DeleteAlias of an absent alias",
            vec![delete_alias("alias/absent")],
            |_| {},
        ),
        (
            "PutAlias then DeleteAlias in one batch",
            vec![
                Mutation::PutAlias(alias("alias/new", KEY_A)),
                delete_alias("alias/new"),
            ],
            |_| {},
        ),
        ("DeleteGrant", vec![delete_grant("grant-2")], |s| {
            s.grants.retain(|g| g.grant_id != "grant-2");
        }),
        (
            "DeleteGrant of an absent grant",
            vec![delete_grant("grant-absent")],
            |_| {},
        ),
        (
            "DeleteToken",
            vec![Mutation::DeleteToken {
                token_id: "tok-2".into(),
            }],
            |s| {
                s.tokens.retain(|t| t.token_id != "tok-2");
            },
        ),
        (
            "DeleteToken of an absent token",
            vec![Mutation::DeleteToken {
                token_id: "tok-absent".into(),
            }],
            |_| {},
        ),
        (
            "DeletePrincipal takes its tokens, not others' nor grants to it",
            vec![delete_principal(ALICE)],
            |s| {
                s.principals.retain(|p| p.principal != ALICE);
                s.tokens.retain(|t| t.principal != ALICE);
            },
        ),
        (
            "DeletePrincipal of the other principal",
            vec![delete_principal(TABLE_SERVICE)],
            |s| {
                s.principals.retain(|p| p.principal != TABLE_SERVICE);
                s.tokens.retain(|t| t.principal != TABLE_SERVICE);
            },
        ),
        (
            "DeletePrincipal of an absent principal",
            vec![delete_principal("user/absent")],
            |_| {},
        ),
    ];
    for (what, batch, edit) in rows {
        let fx = make();
        check(&*fx.store, what, &[world_puts(), batch], &edited(edit));
    }
}

fn load_order_is_deterministic(make: &dyn Fn() -> Fixture) {
    /// Position of a mutation's kind in dependency order.
    fn rank(m: &Mutation) -> usize {
        match m {
            Mutation::PutMeta { .. } => 0,
            Mutation::PutKey(_) => 1,
            Mutation::PutKeyVersion(_) => 2,
            Mutation::PutAlias(_) => 3,
            Mutation::PutPrincipal(_) => 4,
            Mutation::PutToken(_) => 5,
            Mutation::PutGrant(_) => 6,
            _ => 7,
        }
    }
    let mut reversed = world_puts();
    reversed.reverse();
    // Reversed within each kind, parents still first.
    reversed.sort_by_key(rank);
    let sorted = world().into_mutations();
    let one_each =
        |puts: Vec<Mutation>| -> Vec<Vec<Mutation>> { puts.into_iter().map(|m| vec![m]).collect() };
    let rows: Vec<(&str, Vec<Vec<Mutation>>)> = vec![
        ("one batch", vec![world_puts()]),
        ("one batch, each kind reversed", vec![reversed.clone()]),
        ("one batch, already sorted", vec![sorted.clone()]),
        ("one mutation per batch", one_each(world_puts())),
        (
            "one mutation per batch, each kind reversed",
            one_each(reversed.clone()),
        ),
        (
            "sorted, then everything again reversed",
            vec![sorted, reversed],
        ),
    ];
    for (what, batches) in rows {
        let fx = make();
        check(&*fx.store, what, &batches, &world());
        let again = fx.store.load().expect("second load");
        assert_same(&again, &world(), &format!("{what}: second load"));
    }
}

fn into_mutations_rebuilds_the_snapshot(make: &dyn Fn() -> Fixture) {
    let sources: Vec<(&str, Vec<Vec<Mutation>>)> = vec![
        ("empty", vec![]),
        ("world", vec![world_puts()]),
        (
            "world after upserts and deletes",
            vec![
                world_puts(),
                vec![
                    Mutation::PutKey(key_a_changed()),
                    Mutation::PutToken(tok_1_revoked()),
                    Mutation::DeleteKey {
                        key_id: KEY_B.into(),
                    },
                    Mutation::DeletePrincipal {
                        principal: TABLE_SERVICE.into(),
                    },
                ],
            ],
        ),
    ];
    for (what, batches) in sources {
        let source = make();
        for batch in &batches {
            source.store.commit(batch).expect("commit to source");
        }
        let snapshot = source.store.load().expect("load source");
        let target = make();
        check(
            &*target.store,
            &format!("{what}: rebuilt from into_mutations"),
            &[snapshot.clone().into_mutations()],
            &snapshot,
        );
    }
    // And from the hand-written world, not only from what the engine loaded.
    let target = make();
    check(
        &*target.store,
        "world() rebuilt",
        &[world().into_mutations()],
        &world(),
    );
}

// ---------------------------------------------------------------------------
// durability
// ---------------------------------------------------------------------------

fn reopened_store_loads_the_same_snapshot(make: &dyn Fn() -> Fixture) {
    let fx = make();
    let reopen = fx
        .reopen
        .as_ref()
        .expect("engine in `durability` must set reopen");
    let after_deletes = edited(|s| {
        s.aliases.retain(|a| a.alias_name != "alias/b");
        s.principals.retain(|p| p.principal != TABLE_SERVICE);
        s.tokens.retain(|t| t.principal != TABLE_SERVICE);
        replace(&mut s.keys, |k| k.key_id == KEY_A, key_a_changed());
    });
    check(
        &*fx.store,
        "before close",
        &[
            world_puts(),
            vec![
                Mutation::DeleteAlias {
                    alias_name: "alias/b".into(),
                },
                Mutation::DeletePrincipal {
                    principal: TABLE_SERVICE.into(),
                },
                Mutation::PutKey(key_a_changed()),
            ],
        ],
        &after_deletes,
    );
    drop(fx.store);

    let store = reopen();
    check(&*store, "after reopen", &[], &after_deletes);
    // The reopened store takes writes, and they persist too.
    check(
        &*store,
        "written after reopen",
        &[vec![Mutation::DeleteKey {
            key_id: KEY_A.into(),
        }]],
        &edited(|s| {
            s.aliases
                .retain(|a| a.alias_name != "alias/b" && a.key_id != KEY_A);
            s.principals.retain(|p| p.principal != TABLE_SERVICE);
            s.tokens.retain(|t| t.principal != TABLE_SERVICE);
            s.keys.retain(|k| k.key_id != KEY_A);
            s.versions.retain(|v| v.key_id != KEY_A);
            s.grants.retain(|g| g.key_id != KEY_A);
        }),
    );
    let expected = store.load().expect("load");
    drop(store);
    check(&*reopen(), "after second reopen", &[], &expected);
}

// ---------------------------------------------------------------------------
// fault_injection
// ---------------------------------------------------------------------------

fn failed_batch_leaves_nothing(make: &dyn Fn() -> Fixture) {
    let failing =
        || Mutation::PutKeyVersion(version(FAILING_KEY_ID, 1, VersionOrigin::Created, &[1; 32]));
    // One mutation of every kind, ahead of the one that fails.
    let everything_then_failure = vec![
        meta("format", b"2"),
        meta("new", b"\0"),
        Mutation::PutKey(KeyRecord {
            key_id: FAILING_KEY_ID.into(),
            ..key_b()
        }),
        Mutation::PutKey(key_a_changed()),
        Mutation::PutKeyVersion(a_v2_changed()),
        Mutation::DeleteKey {
            key_id: KEY_B.into(),
        },
        Mutation::PutAlias(alias("alias/new", KEY_A)),
        Mutation::DeleteAlias {
            alias_name: "alias/alpha".into(),
        },
        Mutation::PutPrincipal(alice_changed()),
        Mutation::DeletePrincipal {
            principal: TABLE_SERVICE.into(),
        },
        Mutation::PutToken(tok_1_revoked()),
        Mutation::PutGrant(grant_1_changed()),
        Mutation::DeleteGrant {
            grant_id: "grant-2".into(),
        },
        failing(),
    ];
    let rows: Vec<(&str, Vec<Mutation>)> = vec![
        (
            "a batch of every kind whose last mutation fails",
            everything_then_failure,
        ),
        ("a batch whose only mutation fails", vec![failing()]),
    ];
    for (what, batch) in rows {
        let fx = make();
        let inject = fx
            .inject_failure
            .as_ref()
            .expect("engine in `fault_injection` must set inject_failure");
        check(&*fx.store, "world", &[world_puts()], &world());
        inject();
        let result = fx.store.commit(&batch);
        assert!(
            result.is_err(),
            "{what}: commit succeeded despite the injected failure"
        );
        check(
            &*fx.store,
            &format!("{what}: nothing of it stays"),
            &[],
            &world(),
        );
        // The store is still usable after a failed batch.
        check(
            &*fx.store,
            &format!("{what}: next batch"),
            &[vec![meta("format", b"3")]],
            &edited(|s| {
                s.meta.insert("format".into(), b"3".to_vec());
            }),
        );
    }
}

// ---------------------------------------------------------------------------
// committer
// ---------------------------------------------------------------------------

/// Wraps an engine: counts commit calls, records the batches it committed
/// (under one lock with the commit itself, so "recorded" means "in the
/// store"), and can slow commits down, hold them at a gate, or fail them.
struct Recording {
    inner: Box<dyn Store>,
    delay: Duration,
    /// Each commit waits for one message, or for the sender to be dropped.
    gate: Option<Mutex<mpsc::Receiver<()>>>,
    /// Commit calls from this one on (counting from 0) fail.
    fail_from: Option<usize>,
    attempts: AtomicUsize,
    committed: Mutex<Vec<Vec<Mutation>>>,
}

impl Recording {
    fn new(inner: Box<dyn Store>) -> Self {
        Recording {
            inner,
            delay: Duration::ZERO,
            gate: None,
            fail_from: None,
            attempts: AtomicUsize::new(0),
            committed: Mutex::new(Vec::new()),
        }
    }

    fn gated(mut self) -> (Self, mpsc::Sender<()>) {
        let (open, gate) = mpsc::channel();
        self.gate = Some(Mutex::new(gate));
        (self, open)
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    fn commits(&self) -> Vec<Vec<Mutation>> {
        self.committed.lock().expect("recording lock").clone()
    }

    fn flattened(&self) -> Vec<Mutation> {
        self.commits().concat()
    }
}

impl Store for Recording {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            // An error only means the gate is open for good.
            gate.lock().expect("gate lock").recv().ok();
        }
        std::thread::sleep(self.delay);
        if self.fail_from.is_some_and(|n| attempt >= n) {
            return Err(StoreError::Engine("injected failure".into()));
        }
        let mut committed = self.committed.lock().expect("recording lock");
        self.inner.commit(batch)?;
        committed.push(batch.to_vec());
        Ok(())
    }
}

const PATIENCE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A one-mutation batch, distinct for each `i`.
fn numbered(i: usize) -> Vec<Mutation> {
    vec![meta(&format!("batch-{i:04}"), &i.to_be_bytes())]
}

fn meta_of(batches: &[Vec<Mutation>]) -> BTreeMap<String, Vec<u8>> {
    batches
        .iter()
        .flatten()
        .map(|m| match m {
            Mutation::PutMeta { name, value } => (name.clone(), value.clone()),
            other => panic!("unexpected mutation {other:?}"),
        })
        .collect()
}

/// Polls until `done` holds; fails the test after [`PATIENCE`].
async fn until(what: &str, done: impl Fn() -> bool) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn durable(committer: &GroupCommitter, seq: u64) -> Result<(), StoreError> {
    tokio::time::timeout(PATIENCE, committer.wait_durable(seq))
        .await
        .unwrap_or_else(|_| panic!("wait_durable({seq}) hung"))
}

fn committer_makes_concurrent_batches_durable(make: &dyn Fn() -> Fixture) {
    const BATCHES: usize = 200;
    let fx = make();
    // Slow commits, so that batches queue up behind each one.
    let store = Arc::new(Recording {
        delay: Duration::from_millis(5),
        ..Recording::new(fx.store)
    });
    let committer = Arc::new(GroupCommitter::start(store.clone()));
    // `enqueue` must be called under the lock that orders state changes.
    let order = Arc::new(Mutex::new(()));
    let mut done: Vec<(u64, Vec<Mutation>)> = runtime().block_on(async {
        let tasks: Vec<_> = (0..BATCHES)
            .map(|i| {
                let (store, committer, order) = (store.clone(), committer.clone(), order.clone());
                tokio::spawn(async move {
                    let batch = numbered(i);
                    let seq = {
                        let _ordered = order.lock().expect("order lock");
                        committer.enqueue(batch.clone()).expect("enqueue")
                    };
                    durable(&committer, seq).await.expect("wait_durable");
                    // Durable means in the store: this batch and every one
                    // queued before it (one mutation per batch).
                    let committed = store.flattened();
                    assert!(committed.contains(&batch[0]), "batch {seq} not committed");
                    assert!(
                        committed.len() as u64 >= seq,
                        "batch {seq} before earlier ones"
                    );
                    let Mutation::PutMeta { name, value } = &batch[0] else {
                        unreachable!()
                    };
                    let loaded = store.load().expect("load");
                    assert_eq!(
                        loaded.meta.get(name),
                        Some(value),
                        "batch {seq} not loadable"
                    );
                    (seq, batch)
                })
            })
            .collect();
        let mut done = Vec::new();
        for task in tasks {
            done.push(task.await.expect("task"));
        }
        done
    });
    done.sort_by_key(|(seq, _)| *seq);
    let seqs: Vec<u64> = done.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=BATCHES as u64).collect::<Vec<_>>(),
        "sequence numbers"
    );
    assert_eq!(committer.last_enqueued(), BATCHES as u64);
    let in_seq_order: Vec<Vec<Mutation>> = done.into_iter().map(|(_, b)| b).collect();
    assert_eq!(
        store.flattened(),
        in_seq_order.concat(),
        "commit order is enqueue order"
    );
    let commits = store.attempts();
    assert!(
        commits < BATCHES,
        "{commits} commits for {BATCHES} batches: nothing was grouped"
    );
    check(
        &*store,
        "after group commit",
        &[],
        &Snapshot {
            meta: meta_of(&in_seq_order),
            ..Snapshot::default()
        },
    );
}

fn committer_merges_queued_batches_into_one_commit(make: &dyn Fn() -> Fixture) {
    const BATCHES: usize = 200;
    let fx = make();
    let (store, open) = Recording::new(fx.store).gated();
    let store = Arc::new(store);
    let committer = GroupCommitter::start(store.clone());
    runtime().block_on(async {
        assert_eq!(committer.enqueue(numbered(0)).expect("enqueue"), 1);
        // The commit thread has taken batch 1 and is held at the gate, so
        // every later batch queues behind it.
        until("first commit to start", || store.attempts() == 1).await;
        for i in 1..BATCHES {
            assert_eq!(
                committer.enqueue(numbered(i)).expect("enqueue"),
                i as u64 + 1
            );
        }
        drop(open);
        durable(&committer, BATCHES as u64)
            .await
            .expect("wait_durable");
    });
    let all: Vec<Vec<Mutation>> = (0..BATCHES).map(numbered).collect();
    assert_eq!(
        store.commits(),
        vec![all[0].clone(), all[1..].concat()],
        "one commit for the first batch, one for all that queued behind it"
    );
    assert_eq!(store.attempts(), 2);
    check(
        &*store,
        "after merged commit",
        &[],
        &Snapshot {
            meta: meta_of(&all),
            ..Snapshot::default()
        },
    );
}

fn wait_durable_returns_only_after_commit(make: &dyn Fn() -> Fixture) {
    let fx = make();
    let (store, open) = Recording::new(fx.store).gated();
    let store = Arc::new(store);
    let committer = Arc::new(GroupCommitter::start(store.clone()));
    let has = |i: usize| {
        let Mutation::PutMeta { name, .. } = &numbered(i)[0] else {
            unreachable!()
        };
        store.load().expect("load").meta.contains_key(name)
    };
    runtime().block_on(async {
        durable(&committer, 0)
            .await
            .expect("nothing queued is durable");

        let first = committer.enqueue(numbered(1)).expect("enqueue");
        let waiter = {
            let committer = committer.clone();
            tokio::spawn(async move { durable(&committer, first).await })
        };
        until("first commit to start", || store.attempts() == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "wait_durable returned before the commit"
        );
        assert!(!has(1), "batch committed while held at the gate");
        open.send(()).expect("open gate once");
        waiter.await.expect("waiter").expect("wait_durable");
        assert!(
            has(1),
            "wait_durable returned but the batch is not in the store"
        );

        let second = committer.enqueue(numbered(2)).expect("enqueue");
        let third = committer.enqueue(numbered(3)).expect("enqueue");
        let waiter = {
            let committer = committer.clone();
            tokio::spawn(async move { durable(&committer, third).await })
        };
        until("second commit to start", || store.attempts() == 2).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "wait_durable returned before the commit"
        );
        drop(open);
        waiter.await.expect("waiter").expect("wait_durable");
        assert!(
            has(2) && has(3),
            "wait_durable({third}) returned before batches 2 and 3"
        );
        // Earlier numbers are durable too, at once.
        durable(&committer, second).await.expect("earlier batch");
        durable(&committer, first).await.expect("earlier batch");
    });
}

/// A held batch is not committed, nor is anything queued after it, until
/// it is released; releases out of order commit in queue order; an
/// abandoned committer drops what it held and refuses everything.
fn held_batches_commit_only_when_released(make: &dyn Fn() -> Fixture) {
    let fx = make();
    let store = Arc::new(Recording::new(fx.store));
    let committer = Arc::new(GroupCommitter::start(store.clone()));
    let settle = || std::thread::sleep(Duration::from_millis(50));
    runtime().block_on(async {
        let first = committer.enqueue_held(numbered(1)).expect("enqueue");
        let second = committer.enqueue(numbered(2)).expect("enqueue");
        let third = committer.enqueue_held(numbered(3)).expect("enqueue");
        let waiter = {
            let committer = committer.clone();
            tokio::spawn(async move { durable(&committer, second).await })
        };
        settle();
        assert_eq!(
            store.attempts(),
            0,
            "a held batch, or one behind it, was committed"
        );
        assert!(
            !waiter.is_finished(),
            "wait_durable returned for a held batch"
        );
        // Released out of order: still committed in queue order.
        committer.release(third);
        settle();
        assert_eq!(
            store.attempts(),
            0,
            "a batch behind a held one was committed"
        );
        committer.release(first);
        durable(&committer, third).await.expect("wait_durable");
        waiter.await.expect("waiter").expect("wait_durable");
        assert_eq!(
            store.flattened(),
            [numbered(1), numbered(2), numbered(3)].concat(),
            "commit order is queue order"
        );
        committer.release(first);

        let fourth = committer.enqueue_held(numbered(4)).expect("enqueue");
        let waiter = {
            let committer = committer.clone();
            tokio::spawn(async move { durable(&committer, fourth).await })
        };
        committer.abandon();
        let result = waiter.await.expect("waiter");
        assert!(
            matches!(result, Err(StoreError::Poisoned)),
            "waiter for an abandoned batch got {result:?}"
        );
        committer.release(fourth);
        let later = committer.enqueue(numbered(5));
        assert!(
            matches!(later, Err(StoreError::Poisoned)),
            "enqueue after abandon gave {later:?}"
        );
        let result = durable(&committer, third).await;
        assert!(
            matches!(result, Err(StoreError::Poisoned)),
            "wait_durable after abandon gave {result:?}"
        );
    });
    drop(committer);
    assert_eq!(
        store.flattened(),
        [numbered(1), numbered(2), numbered(3)].concat(),
        "an abandoned batch was committed"
    );
}

fn failed_commit_poisons_committer(make: &dyn Fn() -> Fixture) {
    let fx = make();
    let (store, open) = Recording {
        fail_from: Some(1),
        ..Recording::new(fx.store)
    }
    .gated();
    let store = Arc::new(store);
    let committer = Arc::new(GroupCommitter::start(store.clone()));
    runtime().block_on(async {
        open.send(()).expect("let the first commit through");
        let first = committer.enqueue(numbered(1)).expect("enqueue");
        durable(&committer, first)
            .await
            .expect("first commit succeeds");

        // The second commit fails while waiters are blocked on it and on a
        // batch queued behind it.
        let second = committer.enqueue(numbered(2)).expect("enqueue");
        until("second commit to start", || store.attempts() == 2).await;
        let third = committer.enqueue(numbered(3)).expect("enqueue");
        let waiters: Vec<_> = [second, third]
            .into_iter()
            .map(|seq| {
                let committer = committer.clone();
                (
                    seq,
                    tokio::spawn(async move { durable(&committer, seq).await }),
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(open);
        for (seq, waiter) in waiters {
            let result = waiter.await.expect("waiter");
            assert!(
                matches!(result, Err(StoreError::Poisoned)),
                "waiter for {seq} got {result:?}"
            );
        }
        let later = committer.enqueue(numbered(4));
        assert!(
            matches!(later, Err(StoreError::Poisoned)),
            "enqueue after a failed commit gave {later:?}"
        );
        // Fail closed: not even what was durable before is acknowledged.
        for seq in [0, first] {
            let result = durable(&committer, seq).await;
            assert!(
                matches!(result, Err(StoreError::Poisoned)),
                "wait_durable({seq}) after poisoning gave {result:?}"
            );
        }
    });
    assert_eq!(
        store.attempts(),
        2,
        "the committer kept committing after a failure"
    );
    // The store (for SQLite, the data directory's lock with it) is kept
    // until the committer is dropped, not let go at the failure: the
    // process still writes its audit log.
    assert_eq!(
        Arc::strong_count(&store),
        2,
        "the committer let the store go when a commit failed"
    );
    drop(committer);
    assert_eq!(Arc::strong_count(&store), 1);
    check(
        &*store,
        "after poisoning",
        &[],
        &Snapshot {
            meta: meta_of(&[numbered(1)]),
            ..Snapshot::default()
        },
    );
}

// ---------------------------------------------------------------------------
// One #[test] per case per engine
// ---------------------------------------------------------------------------

macro_rules! cases {
    ($make:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                super::$case(&$make);
            }
        )*
    };
}

macro_rules! conformance {
    ($make:path) => {
        cases!($make;
            empty_store_loads_empty_snapshot,
            put_round_trips_every_record_type,
            put_twice_is_an_upsert,
            deletes_remove_exactly_their_rows,
            load_order_is_deterministic,
            into_mutations_rebuilds_the_snapshot,
        );
    };
}

macro_rules! committer {
    ($make:path) => {
        cases!($make;
            committer_makes_concurrent_batches_durable,
            committer_merges_queued_batches_into_one_commit,
            wait_durable_returns_only_after_commit,
            failed_commit_poisons_committer,
            held_batches_commit_only_when_released,
        );
    };
}

macro_rules! durability {
    ($make:path) => {
        cases!($make; reopened_store_loads_the_same_snapshot);
    };
}

macro_rules! fault_injection {
    ($make:path) => {
        cases!($make; failed_batch_leaves_nothing);
    };
}

/// `engine => [groups]`: a module named after the engine's factory
/// function, with one test per case of each group.
macro_rules! engines {
    ($($engine:ident => [$($group:ident),* $(,)?]),* $(,)?) => {
        $(
            mod $engine {
                $( $group!(super::$engine); )*
            }
        )*
    };
}

engines! {
    sqlite_in_memory => [conformance, committer],
    sqlite_file => [conformance, committer, durability, fault_injection],
}

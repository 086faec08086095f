//! Envelope format and binding tests. The known-answer vector pins the byte
//! layout documented in `envelope.rs`: changing the format must be a
//! deliberate act that edits the constants below (and bumps `VERSION`), since
//! every stored item was sealed in this format.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hex_literal::hex;

use super::*;

// ------------------------------------------------------------ the vector

const TABLE_ID: &str = "2f1c6d0e-8b7a-4c35-9e21-5a4f3b2c1d0e";
const PARTITION: &[u8] = b"user#42";
const SORT: &[u8] = b"order#0007";
const DATA_KEY: [u8; 32] = hex!("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
/// Stands in for a kms-service ciphertext blob: the envelope treats it as opaque.
const WRAPPED_KEY: [u8; 24] = hex!("a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7");
const IV: [u8; 12] = hex!("f0f1f2f3f4f5f6f7f8f9fafb");
const PLAINTEXT: &[u8] = b"encoded attributes v1";

/// `"lockbox table item v1"`, then table id, partition and sort key, each
/// behind a 4-byte big-endian length.
const EXPECTED_AAD: [u8; 86] = hex!(
    "6c6f636b626f78207461626c65206974656d207631"
    "00000024" "32663163366430652d386237612d346333352d396532312d356134663362326331643065"
    "00000007" "75736572233432"
    "0000000a" "6f726465722330303037"
);

/// Computed once (and cross-checked with Python's `cryptography` AESGCM) and
/// pasted here. A FORMAT CHANGE: editing this constant means every stored
/// envelope changes meaning.
const EXPECTED_ENVELOPE: [u8; 76] = hex!(
    "01"                                                 // version
    "0018"                                               // W = 24
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7"   // wrapped data key
    "f0f1f2f3f4f5f6f7f8f9fafb"                           // IV
    "0c68206f185fb654fe8383e8e72817c2759279b409"         // ciphertext (21 bytes)
    "415f7975fc222308a52db8efd0cb5229"                   // GCM tag
);

const WRAPPED_RANGE: std::ops::Range<usize> = 3..3 + WRAPPED_KEY.len();

fn key(partition: &[u8], sort: &[u8]) -> ItemKey {
    ItemKey {
        partition: partition.to_vec(),
        sort: sort.to_vec(),
    }
}

fn vector_key() -> ItemKey {
    key(PARTITION, SORT)
}

fn sealed_vector() -> Vec<u8> {
    seal(
        TABLE_ID,
        &vector_key(),
        &DATA_KEY,
        &WRAPPED_KEY,
        IV,
        PLAINTEXT,
    )
    .expect("the vector seals")
}

/// The one helper of the tampering area: `bytes` must not yield any plaintext
/// when parsed and opened as the item (`table_id`, `key`) with `data_key`.
fn check_rejected(bytes: &[u8], table_id: &str, key: &ItemKey, data_key: &[u8], case: &str) {
    if let Ok(envelope) = parse(bytes)
        && let Ok(plain) = envelope.open(table_id, key, data_key)
    {
        panic!("{case}: opened to {}", hex::encode(&*plain));
    }
}

// ------------------------------------------------------- known answers

#[test]
fn seal_produces_the_known_answer_vector() {
    assert_eq!(hex::encode(sealed_vector()), hex::encode(EXPECTED_ENVELOPE));
}

#[test]
fn the_vector_is_rebuilt_from_the_documented_layout() {
    // AAD from the module documentation, not from `aad()`.
    let mut aad = b"lockbox table item v1".to_vec();
    for part in [TABLE_ID.as_bytes(), PARTITION, SORT] {
        aad.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
        aad.extend_from_slice(part);
    }
    assert_eq!(hex::encode(&aad), hex::encode(EXPECTED_AAD));

    let cipher = Aes256Gcm::new_from_slice(&DATA_KEY).unwrap();
    let ciphertext_and_tag = cipher
        .encrypt(
            &Nonce::from(IV),
            Payload {
                msg: PLAINTEXT,
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(ciphertext_and_tag.len(), PLAINTEXT.len() + 16);

    let mut rebuilt = vec![1u8];
    rebuilt.extend_from_slice(&u16::try_from(WRAPPED_KEY.len()).unwrap().to_be_bytes());
    rebuilt.extend_from_slice(&WRAPPED_KEY);
    rebuilt.extend_from_slice(&IV);
    rebuilt.extend_from_slice(&ciphertext_and_tag);
    assert_eq!(hex::encode(&rebuilt), hex::encode(EXPECTED_ENVELOPE));
    assert_eq!(VERSION, 1, "a new version needs new vectors");
}

#[test]
fn the_vector_parses_and_opens() {
    let envelope = parse(&EXPECTED_ENVELOPE).expect("parses");
    assert_eq!(envelope.wrapped_key, WRAPPED_KEY);
    let plain = envelope
        .open(TABLE_ID, &vector_key(), &DATA_KEY)
        .expect("opens");
    assert_eq!(&plain[..], PLAINTEXT);
}

// --------------------------------------------------------- round trips

/// (case, table id, key, wrapped key, plaintext)
type RoundTrip<'a> = (&'a str, &'a str, ItemKey, &'a [u8], &'a [u8]);

#[test]
fn seal_parse_open_round_trips() {
    let big_wrapped = vec![0x5a; usize::from(u16::MAX)];
    let big_plain: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let cases: &[RoundTrip] = &[
        ("vector", TABLE_ID, vector_key(), &WRAPPED_KEY, PLAINTEXT),
        ("empty plaintext", TABLE_ID, vector_key(), &WRAPPED_KEY, b""),
        (
            "no sort key",
            TABLE_ID,
            key(PARTITION, b""),
            &WRAPPED_KEY,
            PLAINTEXT,
        ),
        ("empty wrapped key", TABLE_ID, vector_key(), b"", PLAINTEXT),
        (
            "longest wrapped key",
            TABLE_ID,
            vector_key(),
            &big_wrapped,
            PLAINTEXT,
        ),
        (
            "binary keys",
            "t",
            key(&[0, 0xff], &[0x80]),
            &WRAPPED_KEY,
            &[0u8; 3],
        ),
        (
            "large plaintext",
            TABLE_ID,
            vector_key(),
            &WRAPPED_KEY,
            &big_plain,
        ),
    ];
    for (case, table_id, item, wrapped, plaintext) in cases {
        let bytes = seal(table_id, item, &DATA_KEY, wrapped, IV, plaintext)
            .unwrap_or_else(|_| panic!("{case}: seal failed"));
        assert_eq!(
            bytes.len(),
            3 + wrapped.len() + 12 + plaintext.len() + 16,
            "{case}: length"
        );
        let envelope = parse(&bytes).unwrap_or_else(|_| panic!("{case}: parse failed"));
        assert_eq!(envelope.wrapped_key, *wrapped, "{case}: wrapped key");
        let plain = envelope
            .open(table_id, item, &DATA_KEY)
            .unwrap_or_else(|_| panic!("{case}: open failed"));
        assert_eq!(&plain[..], *plaintext, "{case}: plaintext");
    }
}

#[test]
fn seal_refuses_bad_keys_and_oversized_wrapped_keys() {
    let too_long = vec![0u8; usize::from(u16::MAX) + 1];
    let cases: &[(&str, &[u8], &[u8])] = &[
        ("empty data key", b"", &WRAPPED_KEY),
        ("128-bit data key", &DATA_KEY[..16], &WRAPPED_KEY),
        ("31-byte data key", &DATA_KEY[..31], &WRAPPED_KEY),
        ("33-byte data key", &[7u8; 33], &WRAPPED_KEY),
        ("wrapped key over 65535 bytes", &DATA_KEY, &too_long),
    ];
    for (case, data_key, wrapped) in cases {
        assert_eq!(
            seal(TABLE_ID, &vector_key(), data_key, wrapped, IV, PLAINTEXT),
            Err(EnvelopeError),
            "{case}"
        );
    }
}

#[test]
fn parse_rejects_malformed_envelopes() {
    let mut wrong_version = EXPECTED_ENVELOPE.to_vec();
    let mut version_zero = EXPECTED_ENVELOPE.to_vec();
    wrong_version[0] = 2;
    version_zero[0] = 0;
    // W = 0, no ciphertext: 1 + 2 + 12 + 16 = 31 bytes is the shortest envelope.
    let minimal = [&[1u8, 0, 0][..], &[0u8; 28]].concat();
    assert!(parse(&minimal).is_ok(), "the shortest envelope parses");
    let cases: &[(&str, &[u8])] = &[
        ("empty", b""),
        ("version only", &[1]),
        ("half a length", &[1, 0]),
        ("length only", &[1, 0, 0]),
        ("one byte short of IV and tag", &minimal[..30]),
        ("version 2", &wrong_version),
        ("version 0", &version_zero),
        ("W larger than the rest", &hex!("01ffff00")),
        (
            "W leaves no room for IV and tag",
            &[&[1u8, 0, 4][..], &[0u8; 31]].concat(),
        ),
    ];
    for (case, bytes) in cases {
        assert!(parse(bytes).is_err(), "{case}: {}", hex::encode(bytes));
    }
}

// ------------------------------------------------------------ tampering

#[test]
fn every_single_bit_flip_is_rejected() {
    let original = sealed_vector();
    for byte in 0..original.len() {
        for bit in 0..8 {
            let mut tampered = original.clone();
            tampered[byte] ^= 1 << bit;
            let case = format!("bit {bit} of byte {byte}");
            if WRAPPED_RANGE.contains(&byte) {
                // The wrapped key is not in the GCM AAD: it is authenticated by
                // kms-service, which unwraps it under `data_key_context`. So a
                // flip there must at least change the blob handed to
                // kms-service, and the envelope may never open to other plaintext.
                let envelope = parse(&tampered).expect("only the key blob changed");
                assert_ne!(envelope.wrapped_key, WRAPPED_KEY, "{case}");
                if let Ok(plain) = envelope.open(TABLE_ID, &vector_key(), &DATA_KEY) {
                    assert_eq!(&plain[..], PLAINTEXT, "{case}: other plaintext");
                }
            } else {
                check_rejected(&tampered, TABLE_ID, &vector_key(), &DATA_KEY, &case);
            }
        }
    }
}

#[test]
fn every_truncation_and_extension_is_rejected() {
    let original = sealed_vector();
    for len in 0..original.len() {
        check_rejected(
            &original[..len],
            TABLE_ID,
            &vector_key(),
            &DATA_KEY,
            &format!("truncated to {len} bytes"),
        );
        check_rejected(
            &original[original.len() - len..],
            TABLE_ID,
            &vector_key(),
            &DATA_KEY,
            &format!("last {len} bytes only"),
        );
    }
    for extra in [&[0u8][..], &[0xff], &[0; 16]] {
        check_rejected(
            &[&original[..], extra].concat(),
            TABLE_ID,
            &vector_key(),
            &DATA_KEY,
            &format!("extended by {}", hex::encode(extra)),
        );
    }
}

#[test]
fn an_envelope_does_not_open_for_another_item() {
    let original = sealed_vector();
    let other_table = "2f1c6d0e-8b7a-4c35-9e21-5a4f3b2c1d0f";
    let cases: &[(&str, &str, ItemKey)] = &[
        ("another table id", other_table, vector_key()),
        ("empty table id", "", vector_key()),
        ("another partition", TABLE_ID, key(b"user#43", SORT)),
        ("another sort key", TABLE_ID, key(PARTITION, b"order#0008")),
        ("no sort key", TABLE_ID, key(PARTITION, b"")),
        ("keys swapped", TABLE_ID, key(SORT, PARTITION)),
        (
            "byte moved into sort",
            TABLE_ID,
            key(b"user#4", b"2order#0007"),
        ),
        (
            "byte moved into partition",
            TABLE_ID,
            key(b"user#42o", b"rder#0007"),
        ),
        (
            "partition concatenated with sort",
            TABLE_ID,
            key(b"user#42order#0007", b""),
        ),
    ];
    for (case, table_id, item) in cases {
        check_rejected(&original, table_id, item, &DATA_KEY, case);
    }

    // The boundary between partition and sort (and table id) is bound: the
    // same concatenated bytes split differently is another item.
    let splits: &[(&str, &[u8], &[u8])] = &[
        ("t", b"ab", b"c"),
        ("t", b"a", b"bc"),
        ("t", b"abc", b""),
        ("ta", b"b", b"c"),
        ("", b"tab", b"c"),
    ];
    for (i, (table_id, partition, sort)) in splits.iter().enumerate() {
        let bytes = seal(
            table_id,
            &key(partition, sort),
            &DATA_KEY,
            &WRAPPED_KEY,
            IV,
            PLAINTEXT,
        )
        .unwrap();
        for (j, (other_table, other_partition, other_sort)) in splits.iter().enumerate() {
            let item = key(other_partition, other_sort);
            if i == j {
                let opened = parse(&bytes).unwrap().open(other_table, &item, &DATA_KEY);
                assert_eq!(
                    opened.map(|p| p.to_vec()),
                    Ok(PLAINTEXT.to_vec()),
                    "split {i}"
                );
            } else {
                check_rejected(
                    &bytes,
                    other_table,
                    &item,
                    &DATA_KEY,
                    &format!("sealed for split {i}, opened as split {j}"),
                );
            }
        }
    }
}

#[test]
fn a_wrong_data_key_is_rejected() {
    let original = sealed_vector();
    for byte in 0..DATA_KEY.len() {
        for bit in 0..8 {
            let mut wrong = DATA_KEY;
            wrong[byte] ^= 1 << bit;
            check_rejected(
                &original,
                TABLE_ID,
                &vector_key(),
                &wrong,
                &format!("data key bit {bit} of byte {byte} flipped"),
            );
        }
    }
    let cases: &[(&str, &[u8])] = &[
        ("zero key", &[0u8; 32]),
        ("empty key", b""),
        ("first 16 bytes", &DATA_KEY[..16]),
        ("the wrapped key as data key", &WRAPPED_KEY),
        ("64-byte key", &[DATA_KEY, DATA_KEY].concat()),
    ];
    for (case, data_key) in cases {
        check_rejected(&original, TABLE_ID, &vector_key(), data_key, case);
    }
}

// ---------------------------------------------------- data key context

fn context(entries: [(&str, &str); 3]) -> HashMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn data_key_context_is_exact() {
    let cases: &[(&str, ItemKey, HashMap<String, String>)] = &[
        (
            TABLE_ID,
            vector_key(),
            context([
                ("table_id", TABLE_ID),
                ("partition_key", "dXNlciM0Mg=="),
                ("sort_key", "b3JkZXIjMDAwNw=="),
            ]),
        ),
        // Standard alphabet with padding, and an empty sort key.
        (
            "t",
            key(&hex!("fbff"), b""),
            context([
                ("table_id", "t"),
                ("partition_key", "+/8="),
                ("sort_key", ""),
            ]),
        ),
    ];
    for (table_id, item, expected) in cases {
        assert_eq!(&data_key_context(table_id, item), expected, "{table_id}");
    }
}

#[test]
fn data_key_context_differs_between_items() {
    let items: &[(&str, &[u8], &[u8])] = &[
        ("t", b"ab", b"c"),
        ("t", b"a", b"bc"),
        ("t", b"abc", b""),
        ("u", b"ab", b"c"),
        ("t", b"ab", b"d"),
        ("t", b"ac", b"c"),
        ("ta", b"b", b"c"),
    ];
    for (i, (t1, p1, s1)) in items.iter().enumerate() {
        for (t2, p2, s2) in &items[i + 1..] {
            assert_ne!(
                data_key_context(t1, &key(p1, s1)),
                data_key_context(t2, &key(p2, s2)),
                "{t1}/{p1:?}/{s1:?} vs {t2}/{p2:?}/{s2:?}"
            );
        }
    }
}

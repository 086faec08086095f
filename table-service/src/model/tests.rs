//! Unit tests for the model, grouped by area. Each area drives a table of cases
//! through one small `check_*` helper; encodings are pinned with `hex!` vectors
//! so that any format change shows up here as a deliberate edit.

use std::collections::BTreeSet;

use hex_literal::hex;

use super::*;

// ---------------------------------------------------------------- helpers

fn num(text: &str) -> Number {
    match text.parse() {
        Ok(n) => n,
        Err(e) => panic!("test number {text:?} must parse: {e}"),
    }
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(text: &str) -> AttributeValue {
    AttributeValue::N(num(text))
}

fn b(bytes: &[u8]) -> AttributeValue {
    AttributeValue::B(bytes.to_vec())
}

fn ss(members: &[&str]) -> AttributeValue {
    AttributeValue::Ss(Set::from(
        members
            .iter()
            .map(|m| m.to_string())
            .collect::<BTreeSet<_>>(),
    ))
}

fn ns(members: &[&str]) -> AttributeValue {
    AttributeValue::Ns(Set::from(
        members.iter().map(|m| num(m)).collect::<BTreeSet<_>>(),
    ))
}

fn bs(members: &[&[u8]]) -> AttributeValue {
    AttributeValue::Bs(Set::from(
        members.iter().map(|m| m.to_vec()).collect::<BTreeSet<_>>(),
    ))
}

fn m(entries: &[(&str, AttributeValue)]) -> AttributeValue {
    AttributeValue::M(item(entries))
}

fn item(entries: &[(&str, AttributeValue)]) -> Item {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// `depth` containers nested inside each other, alternating M and L.
fn nested(depth: usize) -> AttributeValue {
    let mut value = s("leaf");
    for level in 0..depth {
        value = if level % 2 == 0 {
            AttributeValue::L(vec![value])
        } else {
            // Moved, not cloned: `m` clones, which recurses.
            AttributeValue::M(Item::from([("k".to_owned(), value)]))
        };
    }
    value
}

/// Asserts `result` is Ok(expected) or an error whose message contains the
/// given fragment. Shared by every area's `check_*`.
fn expect<T: PartialEq + std::fmt::Debug>(
    case: &str,
    result: Result<T, ModelError>,
    expected: Result<T, &str>,
) {
    match (result, expected) {
        (Ok(got), Ok(want)) => assert_eq!(got, want, "case {case}"),
        (Err(got), Err(fragment)) => assert!(
            got.to_string().contains(fragment),
            "case {case}: error {got:?} ({got}) does not contain {fragment:?}"
        ),
        (got, want) => panic!("case {case}: got {got:?}, want {want:?}"),
    }
}

const NINES_38: &str = "99999999999999999999999999999999999999";

// ---------------------------------------------------------------- numbers: parsing and text

fn check_parse(cases: &[(&str, Result<&str, &str>)]) {
    for (input, want) in cases {
        let got = input.parse::<Number>().map(|n| n.to_string());
        expect(input, got, want.map(str::to_owned));
    }
}

#[test]
fn number_parses_and_prints_canonically() {
    let tiny_plain = format!("0.{}1", "0".repeat(37)); // 1e-38
    let big_plain = format!("1{}", "0".repeat(38)); // 1e38
    check_parse(&[
        ("7.5", Ok("7.5")),
        ("-0.001", Ok("-0.001")),
        ("1e10", Ok("10000000000")),
        ("+3", Ok("3")),
        ("00012.500", Ok("12.5")),
        ("0", Ok("0")),
        ("-0", Ok("0")),
        ("+0.000e-7", Ok("0")),
        ("0e999999999999999999999", Ok("0")),
        (".5", Ok("0.5")),
        ("5.", Ok("5")),
        ("1E+2", Ok("100")),
        ("1.50E-2", Ok("0.015")),
        ("123.456e1", Ok("1234.56")),
        ("-98765e-3", Ok("-98.765")),
        ("1e38", Ok(&big_plain)),
        ("1e39", Ok("1E+39")),
        ("1e-38", Ok(&tiny_plain)),
        ("1e-39", Ok("1E-39")),
        ("-1.5e100", Ok("-1.5E+100")),
        ("12345e-50", Ok("1.2345E-46")),
        ("1E-130", Ok("1E-130")),
        (
            &format!("9.{}E+125", &NINES_38[1..]),
            Ok(&format!("9.{}E+125", &NINES_38[1..])),
        ),
        (NINES_38, Ok(NINES_38)),
        (&format!("000{NINES_38}0"), Ok(&format!("{NINES_38}0"))),
        (&format!("0.{NINES_38}"), Ok(&format!("0.{NINES_38}"))),
    ]);
}

#[test]
fn number_rejects_invalid_text_and_limits() {
    let too_precise = format!("1{}1", "0".repeat(37)); // 39 significant digits
    check_parse(&[
        ("", Err("is not a valid number")),
        ("NaN", Err("is not a valid number")),
        ("Inf", Err("is not a valid number")),
        ("-Infinity", Err("is not a valid number")),
        ("1.2.3", Err("is not a valid number")),
        ("1e", Err("is not a valid number")),
        ("1e+", Err("is not a valid number")),
        ("e5", Err("is not a valid number")),
        (".", Err("is not a valid number")),
        ("-", Err("is not a valid number")),
        ("--1", Err("is not a valid number")),
        (" 1", Err("is not a valid number")),
        ("1 ", Err("is not a valid number")),
        ("0x10", Err("is not a valid number")),
        ("1_000", Err("is not a valid number")),
        ("1e5.5", Err("is not a valid number")),
        ("١", Err("is not a valid number")), // Arabic-Indic digit one
        (&too_precise, Err("has 39 significant digits: at most 38")),
        ("1e126", Err("out of range")),
        ("-1e126", Err("out of range")),
        ("9.9e-131", Err("out of range")),
        ("1e-999999999999999999999", Err("out of range")),
        ("1e999999999999999999999", Err("out of range")),
    ]);
}

#[test]
fn number_error_messages_say_what_to_fix() {
    let cases: [(&str, &str); 3] = [
        (
            "1e126",
            "Number 1e126 is out of range: magnitude must be below 1E+126 and at least 1E-130",
        ),
        (
            "1.2.3",
            "Number \"1.2.3\" is not a valid number: write it as [+|-]digits[.digits][e[+|-]digits], e.g. 7.5, -0.001 or 1e10",
        ),
        (
            "1234567890123456789012345678901234567890",
            "Number 1234567890123456789012345678901234567890 has 39 significant digits: at most 38 are supported, round it to 38 digits",
        ),
    ];
    for (input, message) in cases {
        expect(input, input.parse::<Number>().map(|_| ()), Err(message));
    }
    // Huge inputs are abbreviated, not echoed whole.
    let long = "x".repeat(10_000);
    let message = long
        .parse::<Number>()
        .map(|_| ())
        .err()
        .map(|e| e.to_string());
    assert!(message.is_some_and(|m| m.len() < 300 && m.contains("(10000 bytes)")));
}

#[test]
fn number_equality_and_hash_are_numeric() {
    use std::collections::HashSet;
    let groups: [&[&str]; 4] = [
        &["1", "1.00", "+1e0", "0.1e1", "10e-1", "001"],
        &["0", "-0", "0.000", "0e50"],
        &["-12.5", "-1.25e1", "-0012.50"],
        &[
            "1E+50",
            "100000000000000000000000000000000000000000000000000",
        ],
    ];
    for group in groups {
        let set: HashSet<Number> = group.iter().map(|t| num(t)).collect();
        assert_eq!(set.len(), 1, "group {group:?}");
        for t in group {
            assert_eq!(num(t), num(group[0]), "{t} vs {}", group[0]);
            assert_eq!(num(t).cmp(&num(group[0])), std::cmp::Ordering::Equal);
        }
    }
    assert_ne!(num("1"), num("-1"));
    assert_ne!(num("1"), num("1.0000000000000000000000000000000000001"));
}

#[test]
fn number_from_i64_matches_parsing() {
    for value in [0i64, 1, -1, 10, -100, 123_456_789, i64::MAX, i64::MIN] {
        assert_eq!(Number::from(value), num(&value.to_string()), "{value}");
    }
}

// ---------------------------------------------------------------- numbers: order and key encoding

/// Positive numbers in strictly ascending order; the full list mirrors them.
fn ascending_positives() -> Vec<String> {
    let z36 = "0".repeat(36);
    let mut list: Vec<String> = [
        "1E-130",
        "1.5E-130",
        "1E-129",
        "1.2345678901234567890123456789012345678E-100",
        "1E-39",
        "0.001",
        "0.0011",
        "0.01",
        "0.1",
        "0.5",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    list.extend([
        format!("0.{NINES_38}"),
        "1".to_owned(),
        format!("1.{z36}1"),
        format!("1.{z36}2"),
        "1.01".to_owned(),
        "1.5".to_owned(),
        "9".to_owned(),
        "10".to_owned(),
        "10.5".to_owned(),
        "99".to_owned(),
        "99.5".to_owned(),
        "100".to_owned(),
        "12345678901234567890123456789012345678".to_owned(),
        "12345678901234567890123456789012345679".to_owned(),
        "1E+38".to_owned(),
        "1E+125".to_owned(),
        format!("1.{z36}1E+125"),
        format!("9.{}E+125", &NINES_38[1..]),
    ]);
    list
}

fn ascending_all() -> Vec<Number> {
    let positives: Vec<Number> = ascending_positives().iter().map(|t| num(t)).collect();
    let mut all: Vec<Number> = positives
        .iter()
        .rev()
        .map(|p| num(&format!("-{p}")))
        .collect();
    all.push(Number::zero());
    all.extend(positives);
    all
}

#[test]
fn number_order_equals_key_encoding_order_exhaustively() {
    let all = ascending_all();
    assert!(all.len() >= 57, "list has {} numbers", all.len());
    for (i, a) in all.iter().enumerate() {
        for (j, b) in all.iter().enumerate() {
            assert_eq!(a.cmp(b), i.cmp(&j), "Ord of {a} vs {b}");
            assert_eq!(
                a.encode_key().cmp(&b.encode_key()),
                i.cmp(&j),
                "bytes of {a} vs {b}"
            );
        }
    }
    // Sorting a scrambled copy both ways gives the same, expected order.
    let mut scrambled = all.clone();
    scrambled.reverse();
    scrambled.rotate_left(17);
    let mut by_value = scrambled.clone();
    by_value.sort();
    let mut by_bytes = scrambled;
    by_bytes.sort_by_key(Number::encode_key);
    assert_eq!(by_value, all);
    assert_eq!(by_bytes, all);
}

fn check_key_encoding(cases: &[(&str, &[u8])]) {
    for (text, want) in cases {
        let number = num(text);
        assert_eq!(number.encode_key(), want.to_vec(), "encode {text}");
        expect(text, Number::decode_key(want), Ok(number));
    }
}

#[test]
fn number_key_encoding_vectors() {
    check_key_encoding(&[
        ("0", &hex!("02")),
        ("1", &hex!("03 82 0b 00")),
        ("-1", &hex!("01 7d f4 ff")),
        ("1.5", &hex!("03 82 10 00")),
        ("100", &hex!("03 84 0b 00")),
        ("0.001", &hex!("03 7f 0b 00")),
        ("12345", &hex!("03 86 0d 23 33 00")),
        ("-12345", &hex!("01 79 f2 dc cc ff")),
        ("1E-130", &hex!("03 00 0b 00")),
        ("-1E-130", &hex!("01 ff f4 ff")),
        (
            &format!("9.{}E+125", &NINES_38[1..]),
            &hex!("03 ff 64 64 64 64 64 64 64 64 64 64 64 64 64 64 64 64 64 64 64 00"),
        ),
    ]);
}

#[test]
fn number_decode_key_roundtrips_and_rejects_non_canonical_bytes() {
    for number in ascending_all() {
        expect(
            &number.to_string(),
            Number::decode_key(&number.encode_key()),
            Ok(number.clone()),
        );
    }
    let rejects: [&[u8]; 12] = [
        &hex!(""),
        &hex!("00"),
        &hex!("04 82 0b 00"),    // unknown sign tag
        &hex!("02 00"),          // zero with stray bytes
        &hex!("03"),             // no exponent
        &hex!("03 82"),          // no terminator
        &hex!("03 82 00"),       // no digits
        &hex!("03 82 0b"),       // terminator missing
        &hex!("03 82 01 0b 00"), // leading zero digit pair "00"
        &hex!("03 82 0b 01 00"), // trailing "00" pair
        &hex!("03 82 65 00"),    // pair byte 101 is not two digits
        &hex!("03 82 0b 00 00"), // bytes after the terminator
    ];
    for bytes in rejects {
        expect(
            &format!("{bytes:02x?}"),
            Number::decode_key(bytes),
            Err("number key encoding"),
        );
    }
    // 20 digit pairs would be 39+ digits.
    let mut long = vec![0x03, 0x82];
    long.extend([0x0c; 20]);
    long.push(0);
    expect(
        "20 pairs",
        Number::decode_key(&long),
        Err("wrong digit count"),
    );
}

// ---------------------------------------------------------------- numbers: addition

fn check_add(cases: &[(&str, &str, Result<&str, &str>)]) {
    for (a, b, want) in cases {
        let got = num(a).checked_add(&num(b)).map(|n| n.to_string());
        expect(&format!("{a} + {b}"), got, want.map(str::to_owned));
        // Addition commutes, including its errors.
        let swapped = num(b).checked_add(&num(a)).map(|n| n.to_string());
        expect(&format!("{b} + {a}"), swapped, want.map(str::to_owned));
    }
}

#[test]
fn number_checked_add_is_exact() {
    let max = format!("9.{}E+125", &NINES_38[1..]);
    check_add(&[
        ("1", "2", Ok("3")),
        ("0", "-7.5", Ok("-7.5")),
        ("0.1", "0.2", Ok("0.3")),
        ("9.99", "0.01", Ok("10")),
        ("99", "1", Ok("100")),
        ("-5", "3", Ok("-2")),
        ("5", "-5", Ok("0")),
        ("-1.5", "-2.25", Ok("-3.75")),
        ("1000", "-0.001", Ok("999.999")),
        ("1E+50", "1", Err("has 51 significant digits")),
        (NINES_38, "1", Ok("100000000000000000000000000000000000000")),
        (NINES_38, "-1", Ok("99999999999999999999999999999999999998")),
        ("1E-130", "1E-130", Ok("2E-130")),
        ("1E-130", "-1E-130", Ok("0")),
        ("2E-130", "-1.5E-130", Err("out of range")),
        (&max, "1E+88", Err("out of range")),
        (&max, "1E+50", Err("has 76 significant digits")),
        (
            "12345678901234567890123456789012345678",
            "0.5",
            Err("39 significant digits"),
        ),
    ]);
    // The error names the exact result so a client sees what did not fit.
    expect(
        "max + 1e88",
        num(&max).checked_add(&num("1E+88")),
        Err("Number 1E+126 is out of range"),
    );
}

// ---------------------------------------------------------------- sets

#[test]
fn sets_reject_duplicates_on_input() {
    type Case<'a> = (&'a str, Result<(), ModelError>, Result<(), &'a str>);
    let cases: [Case; 6] = [
        (
            "SS ok",
            Set::try_from_members(["b".to_owned(), "a".to_owned()]).map(|_| ()),
            Ok(()),
        ),
        (
            "SS dup",
            Set::try_from_members(["a".to_owned(), "a".to_owned()]).map(|_| ()),
            Err("\"a\" appears more than once"),
        ),
        (
            "NS ok",
            Set::try_from_members([num("1"), num("1.5")]).map(|_| ()),
            Ok(()),
        ),
        (
            "NS numeric dup",
            Set::try_from_members([num("1"), num("1.0")]).map(|_| ()),
            Err("1 appears more than once"),
        ),
        (
            "BS ok",
            Set::try_from_members([vec![1u8], vec![1, 0]]).map(|_| ()),
            Ok(()),
        ),
        (
            "BS dup",
            Set::try_from_members([vec![0xab_u8], vec![0xab]]).map(|_| ()),
            Err("0xab appears more than once"),
        ),
    ];
    for (case, got, want) in cases {
        expect(case, got, want);
    }
}

#[test]
fn sets_iterate_in_canonical_order() {
    let numbers = NumberSet::try_from_members(["10", "9", "-1", "0.5", "1e2"].map(num));
    let order: Vec<String> = numbers.iter().flatten().map(Number::to_string).collect();
    assert_eq!(order, ["-1", "0.5", "9", "10", "100"]);
    let strings = StringSet::try_from_members(["é", "z", "Z", "a"].map(str::to_owned));
    let order: Vec<&String> = strings.iter().flatten().collect();
    assert_eq!(order, ["Z", "a", "z", "é"]); // UTF-8 byte order
    let mut set = NumberSet::new();
    assert!(set.insert(num("1")));
    assert!(!set.insert(num("1.00")));
    assert!(set.remove(&num("1.0")));
    assert!(set.is_empty());
}

// ---------------------------------------------------------------- validation and size

fn check_validate(cases: &[(&str, Item, Result<(), &str>)]) {
    for (case, item, want) in cases {
        expect(case, validate_item(item), *want);
    }
}

#[test]
fn validate_item_enforces_dynamodb_rules() {
    let long_name = "n".repeat(MAX_ATTRIBUTE_NAME_BYTES + 1);
    check_validate(&[
        ("empty item", item(&[]), Ok(())),
        (
            "all types",
            item(&[
                ("s", s("")),
                ("b", b(&[])),
                ("n", n("-1")),
                ("t", AttributeValue::Bool(true)),
                ("z", AttributeValue::Null),
                ("m", m(&[])),
                ("l", AttributeValue::L(vec![])),
                ("ss", ss(&["x"])),
                ("ns", ns(&["1"])),
                ("bs", bs(&[b"x"])),
            ]),
            Ok(()),
        ),
        (
            "empty name",
            item(&[("", s("x"))]),
            Err("attribute name \"\" is 0 bytes long"),
        ),
        (
            "long name",
            item(&[(&long_name, s("x"))]),
            Err("is 65536 bytes long: names must be 1 to 65535 bytes"),
        ),
        (
            "nested empty name",
            item(&[("m", m(&[("", n("1"))]))]),
            Err("is 0 bytes long"),
        ),
        (
            "empty SS",
            item(&[("tags", ss(&[]))]),
            Err("empty set is not allowed for attribute tags"),
        ),
        (
            "empty NS",
            item(&[("ns", ns(&[]))]),
            Err("empty set is not allowed for attribute ns"),
        ),
        (
            "nested empty BS",
            item(&[(
                "doc",
                m(&[("list", AttributeValue::L(vec![s("x"), bs(&[])]))]),
            )]),
            Err("empty set is not allowed for attribute doc.list[1]"),
        ),
        // Empty strings and binaries are members like any other.
        ("empty SS member", item(&[("tags", ss(&["", "a"]))]), Ok(())),
        ("empty BS member", item(&[("bin", bs(&[b""]))]), Ok(())),
        ("depth 32", item(&[("deep", nested(32))]), Ok(())),
        (
            "depth 33",
            item(&[("deep", nested(33))]),
            Err("attribute deep[0].k[0]"),
        ),
        (
            "depth 33 message",
            item(&[("deep", nested(33))]),
            Err("nested more than 32 levels deep"),
        ),
        (
            "too large",
            item(&[("big", b(&vec![0; MAX_ITEM_BYTES]))]),
            Err("the item is 409603 bytes, the limit is 409600 bytes"),
        ),
        (
            "exactly the limit",
            item(&[("big", b(&vec![0; MAX_ITEM_BYTES - 3]))]),
            Ok(()),
        ),
    ]);
}

#[test]
fn validate_item_survives_absurd_nesting() {
    // Built in memory, far deeper than any decoder would accept: validation
    // and sizing must not recurse all the way down.
    // (Inserted directly: cloning or dropping it would recurse in std.)
    let mut it = Item::new();
    it.insert("deep".to_owned(), nested(50_000));
    expect(
        "deep",
        validate_item(&it),
        Err("nested more than 32 levels"),
    );
    assert!(item_size(&it) > 50_000);
    std::mem::forget(it);
}

fn check_size(cases: &[(&str, Item, usize)]) {
    for (case, item, want) in cases {
        assert_eq!(item_size(item), *want, "case {case}");
    }
}

#[test]
fn item_size_follows_dynamodb_rules() {
    check_size(&[
        ("empty", item(&[]), 0),
        ("string", item(&[("name", s("héllo"))]), 4 + 6),
        ("binary", item(&[("b", b(&[1, 2, 3]))]), 1 + 3),
        ("bool", item(&[("ok", AttributeValue::Bool(false))]), 2 + 1),
        ("null", item(&[("x", AttributeValue::Null)]), 1 + 1),
        ("number 1", item(&[("n", n("1"))]), 1 + 2),
        ("number 12345", item(&[("n", n("12345"))]), 1 + 4),
        ("number 0", item(&[("n", n("0"))]), 1 + 1),
        ("negative", item(&[("n", n("-12"))]), 1 + 3),
        ("38 digits", item(&[("n", n(NINES_38))]), 1 + 20),
        ("trailing zeros free", item(&[("n", n("1000000"))]), 1 + 2),
        ("empty map", item(&[("m", m(&[]))]), 1 + 3),
        (
            "map",
            item(&[("m", m(&[("ab", s("xyz")), ("c", n("1"))]))]),
            1 + 3 + (2 + 1 + 3) + (1 + 1 + 2),
        ),
        (
            "list",
            item(&[("l", AttributeValue::L(vec![s("ab"), AttributeValue::Null]))]),
            1 + 3 + (1 + 2) + (1 + 1),
        ),
        ("SS", item(&[("t", ss(&["a", "bc"]))]), 1 + 3),
        ("NS", item(&[("t", ns(&["1", "-12345"]))]), 1 + 2 + 5),
        ("BS", item(&[("t", bs(&[b"ab", b"c"]))]), 1 + 3),
        (
            "two attributes",
            item(&[("a", s("x")), ("bb", s("yy"))]),
            2 + 4,
        ),
    ]);
    assert_eq!(nested(2).size(), 3 + 1 + 1 + (3 + 1 + 4));
}

// ---------------------------------------------------------------- keys

fn schema(partition: (&str, ScalarType), sort: Option<(&str, ScalarType)>) -> KeySchema {
    match KeySchema::new(
        (partition.0.to_owned(), partition.1),
        sort.map(|(n, t)| (n.to_owned(), t)),
    ) {
        Ok(schema) => schema,
        Err(e) => panic!("test schema must be valid: {e}"),
    }
}

/// Expected (partition bytes, sort bytes), or an error fragment.
type KeyWant<'a> = Result<(&'a [u8], &'a [u8]), &'a str>;

fn check_extract(schema: &KeySchema, cases: &[(&str, Item, KeyWant)]) {
    for (case, item, want) in cases {
        let want = want.map(|(p, s)| ItemKey {
            partition: p.to_vec(),
            sort: s.to_vec(),
        });
        expect(case, schema.extract_key(item), want.clone());
        if let Ok(key) = want {
            // Every valid key decodes back to exactly its key attributes.
            let back = schema.key_attributes(&key);
            let expected: Item = schema
                .key_names()
                .filter_map(|k| item.get(k).map(|v| (k.to_owned(), v.clone())))
                .collect();
            expect(case, back, Ok(expected));
        }
    }
}

#[test]
fn extract_key_with_partition_and_sort() {
    let sch = schema(("id", ScalarType::S), Some(("ts", ScalarType::N)));
    check_extract(
        &sch,
        &[
            (
                "ok",
                item(&[("id", s("user#1")), ("ts", n("100")), ("body", s("x"))]),
                Ok((b"user#1", &hex!("03 84 0b 00"))),
            ),
            (
                "negative sort",
                item(&[("id", s("é")), ("ts", n("-1"))]),
                Ok((&hex!("c3 a9"), &hex!("01 7d f4 ff"))),
            ),
            (
                "missing partition",
                item(&[("ts", n("1"))]),
                Err("Missing the key id in the item"),
            ),
            (
                "missing sort",
                item(&[("id", s("a"))]),
                Err("Missing the key ts in the item"),
            ),
            (
                "partition type",
                item(&[("id", n("1")), ("ts", n("1"))]),
                Err(
                    "One or more parameter values were invalid: Type mismatch for key id expected: S actual: N",
                ),
            ),
            (
                "sort type",
                item(&[("id", s("a")), ("ts", ss(&["1"]))]),
                Err("Type mismatch for key ts expected: N actual: SS"),
            ),
            (
                "empty partition",
                item(&[("id", s("")), ("ts", n("1"))]),
                Err("cannot contain an empty string value. Key: id"),
            ),
            (
                "partition at limit",
                item(&[("id", s(&"p".repeat(2048))), ("ts", n("0"))]),
                Ok((&[b'p'; 2048], &hex!("02"))),
            ),
            (
                "partition too long",
                item(&[("id", s(&"p".repeat(2049))), ("ts", n("0"))]),
                Err(
                    "Size of partition key id is 2049 bytes, which exceeds the maximum size limit of 2048 bytes",
                ),
            ),
        ],
    );
}

#[test]
fn extract_key_binary_sort_limits() {
    let sch = schema(("pk", ScalarType::B), Some(("sk", ScalarType::S)));
    check_extract(
        &sch,
        &[
            (
                "ok",
                item(&[("pk", b(&[0, 255])), ("sk", s("a"))]),
                Ok((&hex!("00 ff"), b"a")),
            ),
            (
                "empty binary",
                item(&[("pk", b(&[])), ("sk", s("a"))]),
                Err("empty binary value. Key: pk"),
            ),
            (
                "bool partition",
                item(&[("pk", AttributeValue::Bool(true)), ("sk", s("a"))]),
                Err("expected: B actual: BOOL"),
            ),
            (
                "sort at limit",
                item(&[("pk", b(&[1])), ("sk", s(&"s".repeat(1024)))]),
                Ok((&[1], &[b's'; 1024])),
            ),
            (
                "sort too long",
                item(&[("pk", b(&[1])), ("sk", s(&"s".repeat(1025)))]),
                Err(
                    "Size of sort key sk is 1025 bytes, which exceeds the maximum size limit of 1024 bytes",
                ),
            ),
        ],
    );
    let hash_only = schema(("n", ScalarType::N), None);
    check_extract(
        &hash_only,
        &[(
            "number partition",
            item(&[("n", n("1.5")), ("x", s("y"))]),
            Ok((&hex!("03 82 10 00"), &[])),
        )],
    );
}

#[test]
fn key_bytes_sort_in_dynamodb_order() {
    let sch = schema(("p", ScalarType::S), Some(("s", ScalarType::B)));
    let keys_in_order = [
        item(&[("p", s("A")), ("s", b(&[0xff]))]),
        item(&[("p", s("a")), ("s", b(&[0x00]))]),
        item(&[("p", s("a")), ("s", b(&[0x00, 0x00]))]),
        item(&[("p", s("a")), ("s", b(&[0x01]))]),
        item(&[("p", s("ab")), ("s", b(&[0x00]))]),
        item(&[("p", s("é")), ("s", b(&[0x00]))]),
    ];
    let encoded: Vec<ItemKey> = keys_in_order
        .iter()
        .map(|it| sch.extract_key(it))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    assert_eq!(encoded.len(), keys_in_order.len());
    assert!(encoded.windows(2).all(|w| w[0] < w[1]), "{encoded:?}");
}

#[test]
fn validate_key_map_requires_exactly_the_key() {
    let sch = schema(("id", ScalarType::S), Some(("ts", ScalarType::N)));
    let mismatch = "The provided key element does not match the schema";
    let cases: [(&str, Item, Result<ItemKey, &str>); 6] = [
        (
            "exact",
            item(&[("id", s("a")), ("ts", n("2"))]),
            // 2 = 0.2e1: exponent byte 0x82, digit pair "20" -> 0x15.
            Ok(ItemKey {
                partition: b"a".to_vec(),
                sort: hex!("03 82 15 00").to_vec(),
            }),
        ),
        (
            "extra attribute",
            item(&[("id", s("a")), ("ts", n("2")), ("x", s("y"))]),
            Err(mismatch),
        ),
        (
            "missing sort",
            item(&[("id", s("a"))]),
            Err("give exactly the key attributes [id, ts], got [id]"),
        ),
        (
            "wrong name",
            item(&[("id", s("a")), ("TS", n("2"))]),
            Err(mismatch),
        ),
        ("empty", item(&[]), Err(mismatch)),
        (
            "wrong type",
            item(&[("id", s("a")), ("ts", s("2"))]),
            Err("Type mismatch for key ts expected: N actual: S"),
        ),
    ];
    for (case, key_map, want) in cases {
        expect(case, sch.validate_key_map(&key_map), want);
    }
}

#[test]
fn key_schema_and_stored_key_checks() {
    let bad = [
        (
            KeySchema::new((String::new(), ScalarType::S), None),
            "key names must be 1 to 255 bytes",
        ),
        (
            KeySchema::new(("k".repeat(256), ScalarType::S), None),
            "is 256 bytes",
        ),
        (
            KeySchema::new(
                ("id".to_owned(), ScalarType::S),
                Some(("id".to_owned(), ScalarType::N)),
            ),
            "partition and sort key are both named \"id\"",
        ),
    ];
    for (i, (got, fragment)) in bad.into_iter().enumerate() {
        expect(&format!("schema {i}"), got.map(|_| ()), Err(fragment));
    }
    let with_sort = schema(("id", ScalarType::S), Some(("ts", ScalarType::N)));
    let hash_only = schema(("id", ScalarType::S), None);
    let key = |p: &[u8], s: &[u8]| ItemKey {
        partition: p.to_vec(),
        sort: s.to_vec(),
    };
    let cases: [(&str, &KeySchema, ItemKey, &str); 5] = [
        (
            "bad utf-8",
            &hash_only,
            key(&[0xff], &[]),
            "stored value of key id is not valid UTF-8",
        ),
        (
            "empty partition",
            &hash_only,
            key(&[], &[]),
            "stored value of key id is empty",
        ),
        (
            "missing sort",
            &with_sort,
            key(b"a", &[]),
            "no value for sort key ts",
        ),
        (
            "unexpected sort",
            &hash_only,
            key(b"a", &[2]),
            "the table has no sort key",
        ),
        (
            "bad number",
            &with_sort,
            key(b"a", &[9]),
            "number key encoding 09",
        ),
    ];
    for (case, sch, stored, fragment) in cases {
        expect(case, sch.key_attributes(&stored), Err(fragment));
    }
}

#[test]
fn split_and_join_round_trip() {
    let sch = schema(("id", ScalarType::S), Some(("ts", ScalarType::N)));
    let full = item(&[
        ("id", s("k")),
        ("ts", n("1.50")),
        ("body", s("hello")),
        ("tags", ss(&["a"])),
    ]);
    let split = split_item(&sch, full.clone());
    let Ok((key, rest)) = split else {
        panic!("split failed: {split:?}")
    };
    assert_eq!(
        key,
        ItemKey {
            partition: b"k".to_vec(),
            sort: hex!("03 82 10 00").to_vec()
        }
    );
    assert_eq!(rest, item(&[("body", s("hello")), ("tags", ss(&["a"]))]));
    let stored = encode_attributes(&rest);
    let decoded = decode_attributes(&stored);
    expect("decode", decoded.clone(), Ok(rest));
    expect(
        "join",
        decoded.and_then(|d| join_item(&sch, &key, d)),
        Ok(full),
    );

    // split validates the whole item first, then the key.
    expect(
        "invalid item",
        split_item(
            &sch,
            item(&[("id", s("k")), ("ts", n("1")), ("e", ns(&[]))]),
        )
        .map(|_| ()),
        Err("empty set is not allowed for attribute e"),
    );
    expect(
        "missing key",
        split_item(&sch, item(&[("id", s("k"))])).map(|_| ()),
        Err("Missing the key ts"),
    );
    // Stored attributes that repeat a key attribute are corrupt.
    expect(
        "join dup",
        join_item(&sch, &key, item(&[("id", s("other"))])),
        Err("repeat key attribute id"),
    );
}

// ---------------------------------------------------------------- codec

fn check_codec(cases: &[(&str, Item, &[u8])]) {
    for (case, attributes, want) in cases {
        assert_eq!(
            encode_attributes(attributes),
            want.to_vec(),
            "encode {case}"
        );
        expect(case, decode_attributes(want), Ok(attributes.clone()));
    }
}

#[test]
fn codec_vectors_are_fixed() {
    check_codec(&[
        ("empty", item(&[]), &hex!("01 00")),
        (
            "simple",
            item(&[("a", s("hi")), ("n", n("1"))]),
            &hex!("01 02 01 61 01 02 68 69 01 6e 02 04 03 82 0b 00"),
        ),
        (
            "every type",
            item(&[
                ("b", b(&[0xde, 0xad])),
                ("bs", bs(&[&[1], &[0]])),
                ("f", AttributeValue::Bool(true)),
                (
                    "l",
                    AttributeValue::L(vec![AttributeValue::Null, AttributeValue::Bool(false)]),
                ),
                ("m", m(&[("x", n("-1"))])),
                ("ns", ns(&["1.5", "1"])),
                ("s", s("")),
                ("ss", ss(&["b", "a"])),
            ]),
            &hex!(
                "01 08"
                "01 62 03 02 de ad"
                "02 62 73 0a 02 01 00 01 01"
                "01 66 04 01"
                "01 6c 07 02 05 04 00"
                "01 6d 06 01 01 78 02 04 01 7d f4 ff"
                "02 6e 73 09 02 04 03 82 0b 00 04 03 82 10 00"
                "01 73 01 00"
                "02 73 73 08 02 01 61 01 62"
            ),
        ),
        (
            "two-byte length",
            item(&[("s", s(&"x".repeat(200)))]),
            &[&hex!("01 01 01 73 01 c8 01")[..], &[b'x'; 200]].concat(),
        ),
    ]);
}

#[test]
fn codec_is_deterministic_for_equal_items() {
    let a = item(&[
        ("z", ns(&["1.0", "2"])),
        ("a", m(&[("y", n("10")), ("x", n("0.10"))])),
    ]);
    let b = item(&[
        ("a", m(&[("x", n("0.1")), ("y", n("1e1"))])),
        ("z", ns(&["2", "1"])),
    ]);
    assert_eq!(a, b);
    assert_eq!(encode_attributes(&a), encode_attributes(&b));
}

fn rich_item() -> Item {
    item(&[
        ("name", s("Ada ✓")),
        ("age", n("36")),
        ("score", n("-0.000125")),
        ("avatar", b(&[0, 1, 2, 0xff])),
        ("active", AttributeValue::Bool(true)),
        ("nothing", AttributeValue::Null),
        ("tags", ss(&["x", "yy"])),
        ("lucky", ns(&["7", "-3", "1E+100"])),
        ("blobs", bs(&[b"\x00", b"\x00\x01"])),
        (
            "address",
            m(&[
                ("city", s("Oslo")),
                ("zip", n("150")),
                ("geo", AttributeValue::L(vec![n("59.9"), n("10.7")])),
            ]),
        ),
        ("deep", nested(MAX_DEPTH)),
    ])
}

fn check_decode_rejects(cases: &[(&str, Vec<u8>, &str)]) {
    for (case, bytes, fragment) in cases {
        expect(case, decode_attributes(bytes), Err(fragment));
    }
}

#[test]
fn codec_rejects_malformed_input() {
    let deeper = item(&[("deep", nested(MAX_DEPTH + 1))]);
    check_decode_rejects(&[
        ("empty", vec![], "truncated"),
        (
            "version 0",
            hex!("00 00").to_vec(),
            "unsupported codec version 0 (this build reads version 1)",
        ),
        (
            "version 2",
            hex!("02 00").to_vec(),
            "unsupported codec version 2",
        ),
        ("trailing", hex!("01 00 00").to_vec(), "1 trailing bytes"),
        ("truncated map", hex!("01 01 01 61").to_vec(), "truncated"),
        (
            "bad tag",
            hex!("01 01 01 61 0b").to_vec(),
            "unknown value tag 0x0b",
        ),
        (
            "tag zero",
            hex!("01 01 01 61 00").to_vec(),
            "unknown value tag 0x00",
        ),
        (
            "bad utf-8 name",
            hex!("01 01 01 ff 05").to_vec(),
            "not valid UTF-8",
        ),
        (
            "bad utf-8 value",
            hex!("01 01 01 61 01 02 c3 28").to_vec(),
            "not valid UTF-8",
        ),
        (
            "duplicate names",
            hex!("01 02 01 61 05 01 61 05").to_vec(),
            "duplicated or out of order",
        ),
        (
            "unordered names",
            hex!("01 02 01 62 05 01 61 05").to_vec(),
            "duplicated or out of order",
        ),
        (
            "bool byte",
            hex!("01 01 01 61 04 02").to_vec(),
            "boolean byte 0x02",
        ),
        (
            "non-minimal varint",
            hex!("01 01 01 61 01 80 00").to_vec(),
            "non-minimal length",
        ),
        (
            "varint too long",
            hex!("01 01 01 61 01 80 80 80 80 80 01").to_vec(),
            "longer than 5 bytes",
        ),
        (
            "varint above u32",
            hex!("01 01 01 61 01 ff ff ff ff 7f").to_vec(),
            "above u32::MAX",
        ),
        (
            "length past end",
            hex!("01 01 01 61 01 05 61").to_vec(),
            "runs past the end",
        ),
        (
            "huge count",
            hex!("01 ff ff ff ff 0f").to_vec(),
            "exceeds the bytes left",
        ),
        (
            "bad number",
            hex!("01 01 01 61 02 01 03").to_vec(),
            "number key encoding 03",
        ),
        (
            "unordered SS",
            hex!("01 01 01 61 08 02 01 62 01 61").to_vec(),
            "set members duplicated or out of order",
        ),
        (
            "duplicate NS",
            hex!("01 01 01 61 09 02 01 02 01 02").to_vec(),
            "set members duplicated",
        ),
        // "a" (0x61) sorts after "\x00\x00" but its encoding "01 61" would sort
        // before "02 00 00" if length prefixes were compared: check the body.
        (
            "BS by body",
            hex!("01 01 01 61 0a 02 01 61 02 00 00").to_vec(),
            "set members duplicated or out of order",
        ),
        (
            "too deep",
            encode_attributes(&deeper),
            "nesting deeper than 32 levels",
        ),
    ]);
    let ok_bs = hex!("01 01 01 61 0a 02 02 00 00 01 61");
    expect(
        "BS by body ok",
        decode_attributes(&ok_bs),
        Ok(item(&[("a", bs(&[b"a", b"\x00\x00"]))])),
    );
}

#[test]
fn codec_round_trips_and_decoder_never_panics() {
    let original = rich_item();
    expect("validate rich", validate_item(&original), Ok(()));
    let encoded = encode_attributes(&original);
    expect("round trip", decode_attributes(&encoded), Ok(original));

    // Whatever the decoder accepts must be canonical: re-encoding gives back
    // the exact input, so no two blobs decode to the same item.
    let accepts_only_canonical = |bytes: &[u8]| {
        if let Ok(decoded) = decode_attributes(bytes) {
            assert_eq!(
                encode_attributes(&decoded),
                bytes,
                "accepted non-canonical {bytes:02x?}"
            );
        }
    };
    for len in 0..encoded.len() {
        assert!(
            decode_attributes(&encoded[..len]).is_err(),
            "truncation to {len} accepted"
        );
    }
    let mut mutated = encoded.clone();
    for i in 0..encoded.len() {
        for bit in 0..8 {
            mutated[i] ^= 1 << bit;
            accepts_only_canonical(&mutated);
            mutated[i] ^= 1 << bit;
        }
        for byte in [0x00, 0x7f, 0x80, 0xff] {
            mutated[i] = byte;
            accepts_only_canonical(&mutated);
            mutated[i] = encoded[i];
        }
    }
    // Pseudo-random garbage behind a valid version byte (xorshift, fixed seed).
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..20_000 {
        let mut bytes = vec![CODEC_VERSION];
        for _ in 0..(round % 40) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Bias towards small values so tags and lengths are often plausible.
            bytes.push(if state.is_multiple_of(3) {
                (state >> 8) as u8
            } else {
                (state >> 8) as u8 % 12
            });
        }
        accepts_only_canonical(&bytes);
    }
}

#[test]
fn a_key_is_described_by_its_names_types_and_values() {
    let item = |pairs: Vec<(&str, AttributeValue)>| -> Item {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    let pk_sk = schema(("pk", ScalarType::B), Some(("sk", ScalarType::N)));
    let key = pk_sk
        .extract_key(&item(vec![
            ("pk", AttributeValue::B(vec![0xfb, 0xff])),
            ("sk", n("-1.50")),
        ]))
        .unwrap();
    assert_eq!(pk_sk.describe_key(&key), "pk (B) +/8=, sk (N) -1.5");
    let long = schema(("id", ScalarType::S), None);
    let key = long
        .extract_key(&item(vec![("id", AttributeValue::S("\"é\"".repeat(40)))]))
        .unwrap();
    let described = long.describe_key(&key);
    assert!(
        described.starts_with(r#"id (S) "\"é\"\"é\""#) && described.ends_with(r#"… (160 bytes)""#),
        "{described}"
    );
}

//! Conditions and update actions, driven through one `check_*` helper per
//! area: `check_holds` for `Condition::holds`, `check_conditions` for
//! `check_all` and `check_apply` for `apply`.

use std::collections::BTreeSet;

use hex_literal::hex;

use super::*;
use crate::model::{Number, ScalarType, Set};

// ---------------------------------------------------------------- helpers

fn num(text: &str) -> Number {
    text.parse()
        .unwrap_or_else(|e| panic!("test number {text:?} must parse: {e}"))
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

fn item(entries: &[(&str, AttributeValue)]) -> Item {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn cmp(attribute: &str, operator: Operator, value: AttributeValue) -> Condition {
    Condition::Compare {
        attribute: attribute.to_owned(),
        operator,
        value,
        upper: None,
    }
}

fn between(attribute: &str, low: AttributeValue, high: AttributeValue) -> Condition {
    Condition::Compare {
        attribute: attribute.to_owned(),
        operator: Operator::Between,
        value: low,
        upper: Some(high),
    }
}

fn exists(name: &str) -> Condition {
    Condition::Exists(name.to_owned())
}

fn not_exists(name: &str) -> Condition {
    Condition::NotExists(name.to_owned())
}

const ALL_OPERATORS: [Operator; 8] = [
    Operator::Eq,
    Operator::Ne,
    Operator::Lt,
    Operator::Le,
    Operator::Gt,
    Operator::Ge,
    Operator::BeginsWith,
    Operator::Between,
];

/// The item every `holds` case is evaluated on.
fn fixture() -> Item {
    item(&[
        ("s", s("apple")),
        ("accented", s("é")),
        ("emoji", s("😀")),
        ("n", n("10")),
        ("neg", n("-2.5")),
        ("b", b(&hex!("1080"))),
        ("bool", AttributeValue::Bool(true)),
        ("null", AttributeValue::Null),
        ("ss", ss(&["a", "b"])),
        ("ns", ns(&["1", "2"])),
        ("list", AttributeValue::L(vec![n("1")])),
    ])
}

// ------------------------------------------------------------- holds

fn check_holds(item: Option<&Item>, condition: &Condition, expected: bool) {
    assert_eq!(
        condition.holds(item),
        expected,
        "{condition:?} on {}",
        if item.is_some() {
            "the fixture"
        } else {
            "no item"
        }
    );
}

#[test]
fn comparisons_on_strings_use_utf8_byte_order() {
    use Operator::*;
    let fixture = fixture();
    let cases = [
        (cmp("s", Eq, s("apple")), true),
        (cmp("s", Eq, s("Apple")), false),
        (cmp("s", Ne, s("apple")), false),
        (cmp("s", Ne, s("pear")), true),
        (cmp("s", Lt, s("banana")), true),
        (cmp("s", Lt, s("apple")), false),
        (cmp("s", Lt, s("apples")), true),
        (cmp("s", Le, s("apple")), true),
        (cmp("s", Le, s("apple ")), true),
        (cmp("s", Le, s("appl")), false),
        (cmp("s", Gt, s("Zebra")), true), // 'Z' (0x5a) sorts before 'a'
        (cmp("s", Gt, s("apple")), false),
        (cmp("s", Gt, s("appl")), true),
        (cmp("s", Ge, s("apple")), true),
        (cmp("s", Ge, s("apples")), false),
        (cmp("accented", Gt, s("z")), true), // c3 a9 > 7a
        // UTF-8 order, not UTF-16 order: U+1F600 (f0 9f 98 80) is above
        // U+FF61 (ef bd a1) although its UTF-16 surrogate d83d is below ff61.
        (cmp("emoji", Gt, s("\u{ff61}")), true),
        (cmp("s", BeginsWith, s("app")), true),
        (cmp("s", BeginsWith, s("apple")), true),
        (cmp("s", BeginsWith, s("")), true),
        (cmp("s", BeginsWith, s("apples")), false),
        (cmp("s", BeginsWith, s("pple")), false),
        (cmp("s", BeginsWith, s("A")), false),
        (between("s", s("a"), s("b")), true),
        (between("s", s("apple"), s("apple")), true),
        (between("s", s("apple"), s("b")), true),
        (between("s", s("a"), s("apple")), true),
        (between("s", s("apples"), s("b")), false),
        (between("s", s("a"), s("appl")), false),
        (between("s", s("b"), s("a")), false),
    ];
    for (condition, expected) in &cases {
        check_holds(Some(&fixture), condition, *expected);
    }
}

#[test]
fn comparisons_on_numbers_are_numeric() {
    use Operator::*;
    let fixture = fixture();
    let cases = [
        (cmp("n", Eq, n("10")), true),
        (cmp("n", Eq, n("10.00")), true),
        (cmp("n", Eq, n("1e1")), true),
        (cmp("n", Eq, n("1")), false),
        (cmp("n", Ne, n("10.0")), false),
        (cmp("n", Ne, n("9")), true),
        (cmp("n", Gt, n("9")), true), // as text "10" < "9"
        (cmp("n", Lt, n("9")), false),
        (cmp("n", Lt, n("100")), true),
        (
            cmp("n", Lt, n("10.000000000000000000000000000000000001")),
            true,
        ),
        (cmp("n", Le, n("9.999")), false),
        (cmp("n", Le, n("10")), true),
        (cmp("n", Ge, n("10.00")), true),
        (cmp("n", Ge, n("11")), false),
        (cmp("n", Gt, n("-11")), true),
        (cmp("neg", Lt, n("-2.4")), true),
        (cmp("neg", Gt, n("-10")), true),
        (cmp("neg", Lt, n("0")), true),
        (between("n", n("9"), n("10")), true),
        (between("n", n("10"), n("11")), true),
        (between("n", n("10"), n("10")), true),
        (between("n", n("-1e2"), n("1e2")), true),
        (between("n", n("10.0001"), n("11")), false),
        (between("n", n("1"), n("9.9999")), false),
        (between("n", n("11"), n("9")), false),
        (cmp("n", BeginsWith, n("1")), false), // BEGINS_WITH is for S and B only
    ];
    for (condition, expected) in &cases {
        check_holds(Some(&fixture), condition, *expected);
    }
}

#[test]
fn comparisons_on_binaries_use_unsigned_byte_order() {
    use Operator::*;
    let fixture = fixture();
    let cases = [
        (cmp("b", Eq, b(&hex!("1080"))), true),
        (cmp("b", Eq, b(&hex!("108000"))), false),
        (cmp("b", Ne, b(&hex!("1081"))), true),
        (cmp("b", Lt, b(&hex!("1081"))), true),
        (cmp("b", Gt, b(&hex!("107f"))), true), // 0x80 is above 0x7f
        (cmp("b", Gt, b(&hex!("10"))), true),   // a proper prefix sorts first
        (cmp("b", Lt, b(&hex!("11"))), true),
        (cmp("b", Le, b(&hex!("1080"))), true),
        (cmp("b", Ge, b(&hex!("108000"))), false),
        (cmp("b", BeginsWith, b(&hex!("10"))), true),
        (cmp("b", BeginsWith, b(&hex!("1080"))), true),
        (cmp("b", BeginsWith, b(&hex!("80"))), false),
        (cmp("b", BeginsWith, b(&hex!("108000"))), false),
        (between("b", b(&hex!("10")), b(&hex!("1080"))), true),
        (between("b", b(&hex!("1080")), b(&hex!("ff"))), true),
        (between("b", b(&hex!("108000")), b(&hex!("ff"))), false),
    ];
    for (condition, expected) in &cases {
        check_holds(Some(&fixture), condition, *expected);
    }
}

#[test]
fn a_missing_attribute_is_only_not_equal() {
    let fixture = fixture();
    for item in [Some(&fixture), None] {
        for operator in ALL_OPERATORS {
            for value in [s("x"), n("1"), b(b"x")] {
                let condition = Condition::Compare {
                    attribute: "missing".to_owned(),
                    operator,
                    value,
                    upper: Some(s("zzz")),
                };
                check_holds(item, &condition, operator == Operator::Ne);
            }
        }
        check_holds(item, &exists("missing"), false);
        check_holds(item, &not_exists("missing"), true);
    }
    // And on an existing item the same names are present.
    for name in ["s", "n", "b", "null", "ss"] {
        check_holds(Some(&fixture), &exists(name), true);
        check_holds(Some(&fixture), &not_exists(name), false);
    }
}

#[test]
fn type_mismatches_never_compare() {
    use Operator::*;
    let fixture = fixture();
    let mismatched = [
        ("s", n("1")),
        ("n", s("10")), // the string "10" is not the number 10
        ("b", s("\u{10}")),
        ("s", b(b"apple")),
        ("bool", n("1")),
        ("null", s("")),
    ];
    for (attribute, value) in &mismatched {
        for operator in ALL_OPERATORS {
            let condition = Condition::Compare {
                attribute: attribute.to_string(),
                operator,
                value: value.clone(),
                upper: Some(value.clone()),
            };
            // Values of different types are never equal, so NE holds (as in
            // DynamoDB); every other operator is false.
            check_holds(Some(&fixture), &condition, operator == Ne);
        }
    }
    let cases = [
        // A bound of the wrong type makes BETWEEN false.
        (between("n", n("1"), s("z")), false),
        (between("n", s("1"), n("100")), false),
        // Order comparisons are defined for S, N and B only.
        (cmp("ss", Lt, ss(&["b"])), false),
        (cmp("ns", Ge, ns(&["1"])), false),
        (cmp("bool", Le, AttributeValue::Bool(true)), false),
        (cmp("list", Ge, AttributeValue::L(vec![n("1")])), false),
        // Equality is defined for every type.
        (cmp("bool", Eq, AttributeValue::Bool(true)), true),
        (cmp("bool", Eq, AttributeValue::Bool(false)), false),
        (cmp("null", Eq, AttributeValue::Null), true),
        (cmp("ss", Eq, ss(&["b", "a"])), true),
        (cmp("ss", Eq, ss(&["a"])), false),
        (cmp("ns", Eq, ns(&["2.0", "1"])), true),
        (cmp("list", Eq, AttributeValue::L(vec![n("1.0")])), true),
        (cmp("list", Ne, AttributeValue::L(vec![n("2")])), true),
    ];
    for (condition, expected) in &cases {
        check_holds(Some(&fixture), condition, *expected);
    }
}

#[test]
fn between_needs_an_upper_bound_and_other_operators_refuse_one() {
    let fixture = fixture();
    let with_upper = |attribute: &str, operator, value, upper| Condition::Compare {
        attribute: attribute.to_owned(),
        operator,
        value,
        upper,
    };
    // Without value2 BETWEEN never holds (and is refused, below).
    for condition in [
        with_upper("n", Operator::Between, n("1"), None),
        with_upper("n", Operator::Between, n("10"), None),
        with_upper("s", Operator::Between, s("a"), None),
    ] {
        check_holds(Some(&fixture), &condition, false);
    }
    // Any other operator takes one value: value2 is refused, as DynamoDB
    // refuses a wrong number of arguments, even where the condition would
    // otherwise hold.
    let cases = [
        (with_upper("n", Operator::Eq, n("10"), Some(n("0"))), "EQ"),
        (with_upper("n", Operator::Ne, n("1"), Some(n("0"))), "NE"),
        (with_upper("n", Operator::Lt, n("11"), Some(n("0"))), "LT"),
        (with_upper("n", Operator::Le, n("11"), Some(n("0"))), "LE"),
        (with_upper("n", Operator::Gt, n("1"), Some(n("0"))), "GT"),
        (with_upper("n", Operator::Ge, n("1"), Some(n("0"))), "GE"),
        (
            with_upper("s", Operator::BeginsWith, s("a"), Some(s("x"))),
            "BEGINS_WITH",
        ),
    ];
    for (condition, name) in &cases {
        match condition.validate() {
            Err(TableError::Validation(message)) => assert!(
                message.contains(&format!(
                    "Invalid number of argument(s) for the {name} ComparisonOperator"
                )) && message.contains("value2"),
                "{condition:?}: {message}"
            ),
            other => panic!("{condition:?}: {other:?}"),
        }
    }
    assert!(
        with_upper("n", Operator::Between, n("1"), Some(n("10")))
            .validate()
            .is_ok()
    );
}

// --------------------------------------------------------- check_all

/// `expected` is Ok or the exact message of the ConditionalCheckFailed error.
fn check_conditions(conditions: &[Condition], item: Option<&Item>, expected: Result<(), &str>) {
    let result = check_all(conditions, item);
    match (result, expected) {
        (Ok(()), Ok(())) => {}
        (Err(e @ TableError::ConditionalCheckFailed(_)), Err(message)) => {
            assert_eq!(e.to_string(), message, "{conditions:?}");
            assert_eq!(e.reason(), "ConditionalCheckFailedException");
        }
        (result, expected) => panic!("{conditions:?}: got {result:?}, expected {expected:?}"),
    }
}

/// (conditions, item, expected outcome)
type ConditionsCase<'a> = (Vec<Condition>, Option<&'a Item>, Result<(), &'a str>);

#[test]
fn check_all_names_the_first_failing_condition() {
    let fixture = fixture();
    let cases: Vec<ConditionsCase> = vec![
        (vec![], Some(&fixture), Ok(())),
        (vec![], None, Ok(())),
        (
            vec![exists("s"), cmp("n", Operator::Gt, n("9"))],
            Some(&fixture),
            Ok(()),
        ),
        (
            vec![
                exists("s"),
                cmp("n", Operator::Gt, n("100")),
                not_exists("s"),
            ],
            Some(&fixture),
            Err("The conditional request failed: n Gt value is not satisfied"),
        ),
        (
            vec![not_exists("s"), cmp("n", Operator::Gt, n("100"))],
            Some(&fixture),
            Err("The conditional request failed: attribute_not_exists(s) is not satisfied"),
        ),
        (
            vec![not_exists("id"), exists("id")],
            None,
            Err("The conditional request failed: attribute_exists(id) is not satisfied"),
        ),
        (
            vec![
                cmp("s", Operator::BeginsWith, s("a")),
                between("n", n("11"), n("20")),
            ],
            Some(&fixture),
            Err("The conditional request failed: n Between value is not satisfied"),
        ),
    ];
    for (conditions, item, expected) in &cases {
        check_conditions(conditions, *item, *expected);
    }
}

// -------------------------------------------------------------- apply

fn schema() -> KeySchema {
    KeySchema::new(
        ("id".to_owned(), ScalarType::S),
        Some(("ts".to_owned(), ScalarType::N)),
    )
    .unwrap()
}

fn set(name: &str, value: AttributeValue) -> UpdateAction {
    UpdateAction::Set(name.to_owned(), value)
}

fn remove(name: &str) -> UpdateAction {
    UpdateAction::Remove(name.to_owned())
}

fn add(name: &str, value: AttributeValue) -> UpdateAction {
    UpdateAction::Add(name.to_owned(), value)
}

fn delete(name: &str, value: AttributeValue) -> UpdateAction {
    UpdateAction::Delete(name.to_owned(), value)
}

/// `expected` is the updated item, or a fragment of the validation message.
fn check_apply(
    schema: &KeySchema,
    start: &Item,
    actions: &[UpdateAction],
    expected: Result<&Item, &str>,
) {
    let mut updated = start.clone();
    let result = apply(schema, &mut updated, actions);
    match (result, expected) {
        (Ok(()), Ok(want)) => assert_eq!(&updated, want, "{actions:?} on {start:?}"),
        (Err(TableError::Validation(message)), Err(fragment)) => assert!(
            message.contains(fragment),
            "{actions:?} on {start:?}: message {message:?} lacks {fragment:?}"
        ),
        (result, expected) => panic!(
            "{actions:?} on {start:?}: got {result:?} with {updated:?}, expected {expected:?}"
        ),
    }
}

fn key_only() -> Item {
    item(&[("id", s("k")), ("ts", n("1"))])
}

/// The key plus `entries`.
fn with(entries: &[(&str, AttributeValue)]) -> Item {
    let mut out = key_only();
    out.extend(item(entries));
    out
}

#[test]
fn set_and_remove() {
    let schema = schema();
    let cases: Vec<(Item, Vec<UpdateAction>, Item)> = vec![
        (key_only(), vec![set("a", s("x"))], with(&[("a", s("x"))])),
        (
            with(&[("a", s("x"))]),
            vec![set("a", n("1"))],
            with(&[("a", n("1"))]),
        ),
        (
            Item::new(),
            vec![set("a", ss(&["x"]))],
            item(&[("a", ss(&["x"]))]),
        ),
        (
            with(&[("a", s("x")), ("b", s("y"))]),
            vec![remove("a")],
            with(&[("b", s("y"))]),
        ),
        (key_only(), vec![remove("absent")], key_only()),
        (
            key_only(),
            vec![set("a", n("1")), add("b", n("2"))],
            with(&[("a", n("1")), ("b", n("2"))]),
        ),
        (key_only(), vec![], key_only()),
    ];
    for (start, actions, expected) in &cases {
        check_apply(&schema, start, actions, Ok(expected));
    }
    // One attribute, two actions: refused as a whole, as in DynamoDB.
    for actions in [
        vec![set("a", s("x")), remove("a")],
        vec![set("a", n("1")), add("a", n("2"))],
        vec![add("a", n("1")), add("a", n("1"))],
        vec![remove("a"), set("b", s("y")), delete("a", ss(&["x"]))],
    ] {
        check_apply(
            &schema,
            &key_only(),
            &actions,
            Err("two update actions name attribute a"),
        );
    }
}

#[test]
fn conditions_no_item_could_satisfy_sensibly_are_invalid() {
    use Operator::*;
    let valid = [
        cmp("a", Eq, ss(&["x"])),
        cmp("a", Ne, AttributeValue::Null),
        cmp("a", Lt, s("x")),
        cmp("a", Ge, n("1")),
        cmp("a", Gt, b(b"\x01")),
        cmp("a", BeginsWith, s("x")),
        cmp("a", BeginsWith, b(b"x")),
        between("a", n("1"), n("1")),
        between("a", s("a"), s("b")),
        exists("a"),
        not_exists("a"),
    ];
    for condition in &valid {
        assert!(condition.validate().is_ok(), "{condition:?}");
    }
    let invalid = [
        (
            cmp("a", Lt, ss(&["x"])),
            "Lt takes an S, N or B value, not SS",
        ),
        (cmp("a", Ge, AttributeValue::Bool(true)), "not BOOL"),
        (
            cmp("a", BeginsWith, n("1")),
            "BeginsWith takes an S or B value, not N",
        ),
        (
            between("a", n("2"), n("1")),
            "lower bound is above the upper bound",
        ),
        (between("a", n("1"), s("2")), "one type; they are N and S"),
        (between("a", ss(&["x"]), ss(&["y"])), "S, N or B bounds"),
        (
            Condition::Compare {
                attribute: "a".into(),
                operator: Between,
                value: n("1"),
                upper: None,
            },
            "needs value2",
        ),
        (cmp("", Eq, s("x")), "empty attribute"),
        (exists(""), "empty attribute"),
    ];
    for (condition, fragment) in &invalid {
        match condition.validate() {
            Err(TableError::Validation(message)) => {
                assert!(message.contains(fragment), "{condition:?}: {message}")
            }
            other => panic!("{condition:?}: {other:?}"),
        }
    }
}

#[test]
fn add_to_numbers_is_exact() {
    let schema = schema();
    let cases = [
        ("0.1", "0.2", "0.3"),
        ("10", "-7", "3"),
        ("5", "-7", "-2"),
        ("0.1", "-0.1", "0"),
        ("-0", "0", "0"),
        ("1e20", "1e-10", "100000000000000000000.0000000001"),
        (
            "12345678901234567890123456789012345678",
            "1",
            "12345678901234567890123456789012345679",
        ),
        ("99999999999999999999999999999999999999", "1", "1e38"),
        ("9.98e125", "1e123", "9.99e125"),
    ];
    for (old, delta, sum) in cases {
        check_apply(
            &schema,
            &with(&[("c", n(old))]),
            &[add("c", n(delta))],
            Ok(&with(&[("c", n(sum))])),
        );
    }
    // The canonical text of the exact sum, not of a binary float.
    let mut counter = with(&[("c", n("0.1"))]);
    apply(&schema, &mut counter, &[add("c", n("0.2"))]).unwrap();
    match &counter["c"] {
        AttributeValue::N(sum) => assert_eq!(sum.to_string(), "0.3"),
        other => panic!("ADD made {other:?}"),
    }
    // Results beyond DynamoDB's limits are refused, naming the problem.
    let cases = [
        (
            "99999999999999999999999999999999999999",
            "0.1",
            "39 significant digits",
        ),
        ("9.9e125", "1e125", "out of range"),
    ];
    for (old, delta, fragment) in cases {
        check_apply(
            &schema,
            &with(&[("c", n(old))]),
            &[add("c", n(delta))],
            Err(fragment),
        );
    }
}

#[test]
fn add_to_a_missing_attribute_creates_it() {
    let schema = schema();
    let values = [
        n("1"),
        n("-0.5"),
        ss(&["a"]),
        ns(&["1", "2"]),
        bs(&[&hex!("00"), &hex!("ff")]),
    ];
    for value in values {
        check_apply(
            &schema,
            &key_only(),
            &[add("c", value.clone())],
            Ok(&with(&[("c", value)])),
        );
    }
    check_apply(
        &schema,
        &with(&[("c", n("1"))]),
        &[add("c", n("1"))],
        Ok(&with(&[("c", n("2"))])),
    );
}

#[test]
fn add_to_sets_is_union() {
    let schema = schema();
    let cases = [
        (ss(&["a", "b"]), ss(&["b", "c"]), ss(&["a", "b", "c"])),
        (ss(&["a"]), ss(&["a"]), ss(&["a"])),
        (ns(&["1", "2"]), ns(&["2.0", "3"]), ns(&["1", "2", "3"])), // numeric equality
        (ns(&["0.1"]), ns(&["0.10", "1e-1"]), ns(&["0.1"])),
        (
            bs(&[&hex!("00")]),
            bs(&[&hex!("0000"), &hex!("00")]),
            bs(&[&hex!("00"), &hex!("0000")]),
        ),
    ];
    for (old, added, union) in cases {
        check_apply(
            &schema,
            &with(&[("tags", old), ("other", s("kept"))]),
            &[add("tags", added)],
            Ok(&with(&[("tags", union), ("other", s("kept"))])),
        );
    }
}

#[test]
fn delete_from_sets_is_difference() {
    let schema = schema();
    let cases = [
        (ss(&["a", "b", "c"]), ss(&["b", "x"]), Some(ss(&["a", "c"]))),
        (ss(&["a", "b"]), ss(&["x"]), Some(ss(&["a", "b"]))),
        (ns(&["1", "2"]), ns(&["1.0"]), Some(ns(&["2"]))),
        (
            bs(&[&hex!("00"), &hex!("0000")]),
            bs(&[&hex!("0000")]),
            Some(bs(&[&hex!("00")])),
        ),
        // An emptied set removes the attribute: DynamoDB has no empty sets.
        (ss(&["a"]), ss(&["a"]), None),
        (ss(&["a", "b"]), ss(&["a", "b", "c"]), None),
        (ns(&["1"]), ns(&["1.00"]), None),
        (bs(&[&hex!("ff")]), bs(&[&hex!("ff")]), None),
    ];
    for (old, removed, remaining) in cases {
        let expected = match remaining {
            Some(r) => with(&[("tags", r)]),
            None => key_only(),
        };
        check_apply(
            &schema,
            &with(&[("tags", old)]),
            &[delete("tags", removed)],
            Ok(&expected),
        );
    }
    // Deleting members from a missing attribute changes nothing.
    for removed in [ss(&["a"]), ns(&["1"]), bs(&[b"x"])] {
        check_apply(
            &schema,
            &key_only(),
            &[delete("tags", removed)],
            Ok(&key_only()),
        );
    }
}

#[test]
fn type_errors_are_explained() {
    let schema = schema();
    let cases = [
        (
            key_only(),
            add("c", s("x")),
            "ADD to c: cannot add S; ADD works on numbers and sets",
        ),
        (
            key_only(),
            add("c", AttributeValue::Bool(true)),
            "cannot add BOOL; ADD works on numbers and sets",
        ),
        (
            key_only(),
            add("c", b(b"x")),
            "cannot add B; ADD works on numbers and sets",
        ),
        (
            with(&[("c", s("1"))]),
            add("c", n("1")),
            "ADD to c: cannot add N to S",
        ),
        (
            with(&[("c", n("1"))]),
            add("c", s("1")),
            "cannot add S; ADD works on numbers and sets",
        ),
        (
            with(&[("c", ns(&["1"]))]),
            add("c", ss(&["1"])),
            "cannot add SS to NS",
        ),
        (
            with(&[("c", ss(&["1"]))]),
            add("c", n("1")),
            "cannot add N to SS",
        ),
        (
            with(&[("c", n("1"))]),
            add("c", ns(&["1"])),
            "cannot add NS to N",
        ),
        (
            with(&[("c", AttributeValue::L(vec![n("1")]))]),
            add("c", AttributeValue::L(vec![n("2")])),
            "cannot add L; ADD works on numbers and sets",
        ),
        (
            with(&[("c", ss(&["a"]))]),
            delete("c", ns(&["1"])),
            "DELETE from c: cannot remove NS members from SS; DELETE works on sets of the same type",
        ),
        (
            with(&[("c", s("a"))]),
            delete("c", s("a")),
            "DELETE from c: the value must be a set (SS, NS or BS), not S",
        ),
        (
            with(&[("c", n("1"))]),
            delete("c", ns(&["1"])),
            "cannot remove NS members from N",
        ),
        (
            with(&[("c", bs(&[b"a"]))]),
            delete("c", ss(&["a"])),
            "cannot remove SS members from BS",
        ),
    ];
    for (start, action, fragment) in &cases {
        check_apply(&schema, start, std::slice::from_ref(action), Err(*fragment));
    }
}

#[test]
fn key_attributes_and_empty_names_are_refused() {
    let schema = schema();
    let actions = [
        set("id", s("other")),
        remove("id"),
        add("ts", n("1")),
        delete("id", ss(&["k"])),
        set("ts", n("2")),
        remove("ts"),
    ];
    for action in &actions {
        let name = action.attribute();
        check_apply(
            &schema,
            &key_only(),
            &[set("a", s("x")), action.clone()],
            Err(
                format!("Cannot update attribute {name}. This attribute is part of the key")
                    .as_str(),
            ),
        );
    }
    for action in [
        set("", s("x")),
        remove(""),
        add("", n("1")),
        delete("", ss(&["x"])),
    ] {
        check_apply(
            &schema,
            &key_only(),
            &[action],
            Err("an update action names an empty attribute"),
        );
    }
    // Without a sort key, "ts" is an ordinary attribute.
    let partition_only = KeySchema::new(("id".to_owned(), ScalarType::S), None).unwrap();
    check_apply(
        &partition_only,
        &item(&[("id", s("k"))]),
        &[set("ts", n("2"))],
        Ok(&item(&[("id", s("k")), ("ts", n("2"))])),
    );
}

#[test]
fn delete_needs_a_set_operand_even_when_the_attribute_is_missing() {
    let schema = schema();
    for value in [s("x"), n("1"), b(b"x")] {
        check_apply(
            &schema,
            &key_only(),
            &[delete("tags", value)],
            Err("DELETE from tags: the value must be a set"),
        );
    }
}

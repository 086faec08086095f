//! The `Condition` element: parsing of operators, condition keys and values,
//! and their evaluation against a request's [`ConditionContext`] with AWS
//! semantics, including the set operators' pitfalls (`ForAllValues` is true
//! for an absent or empty set, negated operators are true for an absent key).

use super::document::{Effect, Json, wrong_type};
use super::wildcard::wildcard_match;
use super::{Location, Origin, PolicyError, Request};

/// Lower-cased on purpose: keys are stored and compared in this form.
const ENCRYPTION_CONTEXT_PREFIX: &str = "kms:encryptioncontext:";
const CALLER_PRINCIPAL: &str = "kms:callerprincipal";

/// Every fixed condition key, lower-cased, with the kind of value it holds.
const KNOWN_KEYS: [(&str, KeyType); 9] = [
    ("kms:encryptioncontextkeys", KeyType::String),
    ("kms:viaservice", KeyType::String),
    ("kms:grantoperations", KeyType::String),
    (CALLER_PRINCIPAL, KeyType::String),
    ("kms:granteeprincipal", KeyType::String),
    ("kms:retiringprincipal", KeyType::String),
    ("kms:grantisforawsresource", KeyType::Bool),
    ("kms:keyspec", KeyType::String),
    ("kms:requestalias", KeyType::String),
];

/// Multi-valued keys: the only ones `ForAllValues` makes sense with.
const MULTI_VALUED_KEYS: [&str; 2] = ["kms:encryptioncontextkeys", "kms:grantoperations"];

/// The form a condition key is stored under: condition keys are
/// case-insensitive, the `<k>` of `kms:EncryptionContext:<k>` included
/// (AWS: "the condition key, including the context key, is not case
/// sensitive"; a policy that needs the context key's exact case adds a
/// `kms:EncryptionContextKeys` condition).
pub(super) fn canonical_key(key: &str) -> String {
    key.to_lowercase()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyType {
    String,
    Bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetQualifier {
    ForAnyValue,
    ForAllValues,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Comparison {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    Bool,
    Null,
}

impl Comparison {
    fn is_negated(self) -> bool {
        matches!(
            self,
            Comparison::StringNotEquals
                | Comparison::StringNotEqualsIgnoreCase
                | Comparison::StringNotLike
        )
    }

    /// The positive form of the comparison; negation is applied by the
    /// caller because its placement differs between set qualifiers.
    fn hits(self, actual: &str, listed: &str) -> bool {
        match self {
            Comparison::StringEquals | Comparison::StringNotEquals => actual == listed,
            Comparison::StringEqualsIgnoreCase | Comparison::StringNotEqualsIgnoreCase => {
                actual.eq_ignore_ascii_case(listed)
            }
            Comparison::StringLike | Comparison::StringNotLike => wildcard_match(listed, actual),
            Comparison::Bool => actual.eq_ignore_ascii_case(listed),
            // Null never compares values; `Operator::holds` handles it.
            Comparison::Null => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Operator {
    set: Option<SetQualifier>,
    comparison: Comparison,
    if_exists: bool,
}

impl Operator {
    fn parse(name: &str) -> Option<Operator> {
        let (set, rest) = if let Some(rest) = name.strip_prefix("ForAnyValue:") {
            (Some(SetQualifier::ForAnyValue), rest)
        } else if let Some(rest) = name.strip_prefix("ForAllValues:") {
            (Some(SetQualifier::ForAllValues), rest)
        } else {
            (None, name)
        };
        let (rest, if_exists) = match rest.strip_suffix("IfExists") {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let comparison = match rest {
            "StringEquals" => Comparison::StringEquals,
            "StringNotEquals" => Comparison::StringNotEquals,
            "StringEqualsIgnoreCase" => Comparison::StringEqualsIgnoreCase,
            "StringNotEqualsIgnoreCase" => Comparison::StringNotEqualsIgnoreCase,
            "StringLike" => Comparison::StringLike,
            "StringNotLike" => Comparison::StringNotLike,
            "Bool" => Comparison::Bool,
            // Null already is a test of existence, so qualifiers make no sense.
            "Null" if set.is_none() && !if_exists => Comparison::Null,
            _ => return None,
        };
        Some(Operator {
            set,
            comparison,
            if_exists,
        })
    }

    /// Whether the request's values for one key satisfy this operator with
    /// the listed policy values. An empty value list means "absent".
    fn holds(self, actual: &[&str], listed: &[String]) -> bool {
        if self.comparison == Comparison::Null {
            let absent = actual.is_empty();
            return listed.iter().any(|v| (v == "true") == absent);
        }
        if actual.is_empty() {
            return self.if_exists
                || match self.set {
                    // AWS: "every value of nothing" is vacuously true.
                    Some(SetQualifier::ForAllValues) => true,
                    Some(SetQualifier::ForAnyValue) => false,
                    // AWS: a negated test of a missing key succeeds.
                    None => self.comparison.is_negated(),
                };
        }
        let hit = |value: &&str| listed.iter().any(|l| self.comparison.hits(value, l));
        let negated = self.comparison.is_negated();
        match (self.set, negated) {
            (None, false) | (Some(SetQualifier::ForAnyValue), false) => actual.iter().any(hit),
            (None, true) | (Some(SetQualifier::ForAllValues), true) => !actual.iter().any(hit),
            (Some(SetQualifier::ForAnyValue), true) => actual.iter().any(|v| !hit(v)),
            (Some(SetQualifier::ForAllValues), false) => actual.iter().all(hit),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    canonical_key: String,
    values: Vec<String>,
}

/// One operator of a `Condition` with all of its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ConditionBlock {
    operator: Operator,
    entries: Vec<Entry>,
}

impl ConditionBlock {
    /// All keys of a block must hold (AND); within a key any listed value
    /// may match (OR), which `Operator::holds` takes care of.
    ///
    /// `kms:EncryptionContext:<k>` has one value per request, except for a
    /// ciphertext made before contexts with keys that differ only by case
    /// were refused: then each of those values is tested on its own, and
    /// the statement's effect decides, so it is never the laxer reading: a
    /// Deny applies if any of them triggers it, an Allow only if all of
    /// them satisfy it.
    pub(super) fn matches(&self, request: &Request<'_>, effect: Effect) -> bool {
        self.entries.iter().all(|entry| {
            let actual = request_values(request, &entry.canonical_key);
            // (For one value, ForAnyValue and ForAllValues read as the
            // plain test does, so set operators take this path too.)
            if actual.len() > 1 && entry.canonical_key.starts_with(ENCRYPTION_CONTEXT_PREFIX) {
                let one = |value: &&str| self.operator.holds(&[*value], &entry.values);
                return match effect {
                    Effect::Deny => actual.iter().any(one),
                    Effect::Allow => actual.iter().all(one),
                };
            }
            self.operator.holds(&actual, &entry.values)
        })
    }
}

fn request_values<'a>(request: &Request<'a>, canonical_key: &str) -> Vec<&'a str> {
    match request.context.values.get(canonical_key) {
        Some(values) => values.iter().map(String::as_str).collect(),
        None if canonical_key == CALLER_PRINCIPAL => vec![request.principal],
        None => Vec::new(),
    }
}

pub(super) fn parse_condition(
    at: &Location,
    value: Json,
    origin: Origin,
) -> Result<Vec<ConditionBlock>, PolicyError> {
    let Json::Object(operators) = value else {
        return Err(wrong_type(
            at,
            "Condition",
            "an object like {\"StringEquals\": {\"kms:ViaService\": \"service/table-service\"}}",
            &value,
        ));
    };
    let mut blocks = Vec::with_capacity(operators.len());
    for (name, keys) in operators {
        let operator =
            Operator::parse(&name).ok_or_else(|| PolicyError::UnknownConditionOperator {
                at: at.clone(),
                operator: name.clone(),
            })?;
        let field = format!("Condition.{name}");
        let keys = match keys {
            Json::Object(keys) if keys.is_empty() => {
                return Err(PolicyError::Empty {
                    at: at.clone(),
                    field,
                });
            }
            Json::Object(keys) => keys,
            other => {
                return Err(wrong_type(
                    at,
                    &field,
                    "an object mapping condition keys to values",
                    &other,
                ));
            }
        };
        let mut entries = Vec::with_capacity(keys.len());
        for (key, values) in keys {
            let canonical_key = check_key(at, &name, operator, &key, origin)?;
            let values = parse_values(at, &name, operator, &key, values, origin)?;
            entries.push(Entry {
                canonical_key,
                values,
            });
        }
        blocks.push(ConditionBlock { operator, entries });
    }
    Ok(blocks)
}

/// Validates a condition key against the operator and returns its canonical form.
fn check_key(
    at: &Location,
    operator_name: &str,
    operator: Operator,
    key: &str,
    origin: Origin,
) -> Result<String, PolicyError> {
    let canonical = canonical_key(key);
    let key_type = match canonical.strip_prefix(ENCRYPTION_CONTEXT_PREFIX) {
        Some(sub_key) if !sub_key.is_empty() => Some(KeyType::String),
        Some(_) => None,
        None => KNOWN_KEYS
            .iter()
            .find(|(known, _)| *known == canonical)
            .map(|(_, key_type)| *key_type),
    };
    let Some(key_type) = key_type else {
        return Err(PolicyError::UnknownConditionKey {
            at: at.clone(),
            operator: operator_name.into(),
            key: key.into(),
        });
    };
    // As AWS KMS refuses it for kms:EncryptionContext:<k>: on a key with one
    // value, ForAllValues is vacuously true when the key is absent.
    if origin == Origin::New
        && operator.set == Some(SetQualifier::ForAllValues)
        && !MULTI_VALUED_KEYS.contains(&canonical.as_str())
    {
        return Err(PolicyError::SetOperatorOnSingleValuedKey {
            at: at.clone(),
            operator: operator_name.into(),
            key: key.into(),
            plain: operator_name
                .strip_prefix("ForAllValues:")
                .unwrap_or(operator_name)
                .into(),
        });
    }
    // A string comparison on a boolean key (or the reverse) can only ever
    // be false or true by accident, so it is almost certainly a mistake.
    let mismatch = match (operator.comparison, key_type) {
        (Comparison::Null, _) => None,
        (Comparison::Bool, KeyType::String) => {
            Some(("strings", "a String operator such as StringEquals, or Null"))
        }
        (Comparison::Bool, KeyType::Bool) => None,
        (_, KeyType::Bool) => Some(("a boolean", "Bool, or Null")),
        (_, KeyType::String) => None,
    };
    if let Some((holds, use_instead)) = mismatch {
        return Err(PolicyError::OperatorKeyMismatch {
            at: at.clone(),
            operator: operator_name.into(),
            key: key.into(),
            holds,
            use_instead,
        });
    }
    Ok(canonical)
}

fn parse_values(
    at: &Location,
    operator_name: &str,
    operator: Operator,
    key: &str,
    value: Json,
    origin: Origin,
) -> Result<Vec<String>, PolicyError> {
    let invalid = |detail: String| PolicyError::InvalidConditionValue {
        at: at.clone(),
        operator: operator_name.into(),
        key: key.into(),
        detail,
    };
    let items = match value {
        Json::Array(items) => items,
        single => vec![single],
    };
    if items.is_empty() {
        return Err(invalid(
            "list at least one value; an empty list can never match".into(),
        ));
    }
    let booleans_only = matches!(operator.comparison, Comparison::Bool | Comparison::Null);
    items
        .into_iter()
        .map(|item| {
            let text = match item {
                Json::String(s) => s,
                Json::Bool(b) => b.to_string(),
                other => {
                    return Err(invalid(format!(
                        "values must be strings or booleans (or an array of them), found {}",
                        other.kind()
                    )));
                }
            };
            if origin == Origin::New && text.contains("${") {
                return Err(PolicyError::PolicyVariable {
                    at: at.clone(),
                    field: format!("Condition.{operator_name}.{key}"),
                    value: text,
                });
            }
            if booleans_only && text != "true" && text != "false" {
                return Err(invalid(format!(
                    "value \"{text}\" must be \"true\" or \"false\""
                )));
            }
            Ok(text)
        })
        .collect()
}

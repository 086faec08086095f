//! Turns policy JSON into validated, typed statements for the evaluator.
//!
//! Parsing walks a generic JSON tree by hand instead of using
//! `#[derive(Deserialize)]` so that every rejection can say which statement
//! and which field is wrong, and so that duplicate JSON keys (which serde
//! would silently resolve to the last one, letting `"Effect": "Deny"` be
//! overridden further down) are refused.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Origin;
use super::condition::{self, ConditionBlock};
use super::{
    Location, MAX_POLICY_BYTES, MAX_STATEMENTS, POLICY_VERSION, PolicyDocument, PolicyError,
    PolicyKind,
};

const TOP_LEVEL_FIELDS: &str = "Version, Id and Statement";
const STATEMENT_FIELDS: &str =
    "Sid, Effect, Principal, Action, NotAction, Resource, NotResource and Condition";
const SERVICE_PREFIXES: [&str; 3] = ["kms", "table", "iam"];
const RESOURCE_TYPES: [&str; 5] = ["key", "alias", "table", "user", "service"];
const PRINCIPAL_TYPES: [&str; 2] = ["user", "service"];
const MAX_PRINCIPAL_NAME: usize = 64;
const STRING_LIST: &str = "a string or an array of strings";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Principal {
    Any,
    /// Delegates to identity policies in an Allow; covers every caller in a Deny.
    Account,
    Named(String),
}

/// `Action`/`NotAction` or `Resource`/`NotResource`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PatternSet {
    pub(super) negated: bool,
    pub(super) patterns: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Statement {
    /// The Sid, or `Statement[<index>]` when there is none.
    pub(super) label: String,
    pub(super) effect: Effect,
    /// `None` in identity policies.
    pub(super) principals: Option<Vec<Principal>>,
    pub(super) actions: PatternSet,
    pub(super) resources: PatternSet,
    pub(super) conditions: Vec<ConditionBlock>,
}

pub(super) fn parse(
    json: &str,
    kind: PolicyKind,
    origin: Origin,
) -> Result<PolicyDocument, PolicyError> {
    // Checked before parsing so oversized input costs nothing to reject.
    if json.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            size: json.len(),
            max: MAX_POLICY_BYTES,
        });
    }
    let root: Json = serde_json::from_str(json).map_err(|e| PolicyError::InvalidJson {
        detail: e.to_string(),
    })?;
    let Json::Object(fields) = root else {
        return Err(PolicyError::NotAnObject { found: root.kind() });
    };

    let at = Location::Document;
    let (mut version, mut id, mut statement) = (None, None, None);
    for (name, value) in fields {
        match name.as_str() {
            "Version" => version = Some(value),
            "Id" => id = Some(value),
            "Statement" => statement = Some(value),
            _ => {
                return Err(PolicyError::UnknownField {
                    at,
                    field: name,
                    allowed: TOP_LEVEL_FIELDS,
                });
            }
        }
    }

    match version {
        None => {
            return Err(PolicyError::MissingField {
                at,
                field: "Version",
                hint: "add \"Version\": \"2012-10-17\"",
            });
        }
        Some(Json::String(v)) if v == POLICY_VERSION => {}
        Some(Json::String(v)) => return Err(PolicyError::UnsupportedVersion { found: v }),
        Some(other) => {
            return Err(wrong_type(
                &at,
                "Version",
                "the string \"2012-10-17\"",
                &other,
            ));
        }
    }

    let id = match id {
        None => None,
        Some(Json::String(s)) => Some(s),
        Some(other) => return Err(wrong_type(&at, "Id", "a string", &other)),
    };

    let raw_statements = match statement {
        None => {
            return Err(PolicyError::MissingField {
                at,
                field: "Statement",
                hint: "add \"Statement\": [...] with at least one statement",
            });
        }
        Some(Json::Array(items)) => items,
        Some(single @ Json::Object(_)) => vec![single],
        Some(other) => {
            return Err(wrong_type(
                &at,
                "Statement",
                "an object or an array of objects",
                &other,
            ));
        }
    };
    if raw_statements.is_empty() {
        return Err(PolicyError::NoStatements);
    }
    if raw_statements.len() > MAX_STATEMENTS {
        return Err(PolicyError::TooManyStatements {
            count: raw_statements.len(),
            max: MAX_STATEMENTS,
        });
    }

    let mut statements = Vec::with_capacity(raw_statements.len());
    let mut sids: Vec<(String, usize)> = Vec::new();
    for (index, raw) in raw_statements.into_iter().enumerate() {
        let (statement, sid) = parse_statement(index, raw, kind, origin)?;
        if let Some(sid) = sid {
            // Sids name statements in decisions and audit logs, so two
            // statements sharing one would make those records ambiguous.
            if let Some((_, first)) = sids.iter().find(|(s, _)| *s == sid) {
                return Err(PolicyError::DuplicateSid {
                    at: Location::Statement {
                        index,
                        sid: Some(sid.clone()),
                    },
                    sid,
                    first: *first,
                });
            }
            sids.push((sid, index));
        }
        statements.push(statement);
    }

    Ok(PolicyDocument {
        kind,
        id,
        statements,
    })
}

fn parse_statement(
    index: usize,
    raw: Json,
    kind: PolicyKind,
    origin: Origin,
) -> Result<(Statement, Option<String>), PolicyError> {
    let Json::Object(fields) = raw else {
        return Err(wrong_type(
            &Location::Document,
            &format!("Statement[{index}]"),
            "an object",
            &raw,
        ));
    };
    // The Sid goes into every later error message, so find it first.
    let sid = fields.iter().find_map(|(name, value)| match value {
        Json::String(s) if name == "Sid" && !s.is_empty() => Some(s.clone()),
        _ => None,
    });
    let at = Location::Statement {
        index,
        sid: sid.clone(),
    };

    let mut effect = None;
    let mut principal = None;
    let (mut action, mut not_action) = (None, None);
    let (mut resource, mut not_resource) = (None, None);
    let mut condition = None;
    for (name, value) in fields {
        match name.as_str() {
            "Sid" => match value {
                Json::String(s) if s.is_empty() => {
                    return Err(PolicyError::Empty {
                        at,
                        field: "Sid".into(),
                    });
                }
                Json::String(_) => {}
                other => return Err(wrong_type(&at, "Sid", "a string", &other)),
            },
            "Effect" => effect = Some(value),
            "Principal" => principal = Some(value),
            "NotPrincipal" => return Err(PolicyError::NotPrincipalUnsupported { at }),
            "Action" => action = Some(value),
            "NotAction" => not_action = Some(value),
            "Resource" => resource = Some(value),
            "NotResource" => not_resource = Some(value),
            "Condition" => condition = Some(value),
            _ => {
                return Err(PolicyError::UnknownField {
                    at,
                    field: name,
                    allowed: STATEMENT_FIELDS,
                });
            }
        }
    }

    let effect = match effect {
        None => {
            return Err(PolicyError::MissingField {
                at,
                field: "Effect",
                hint: "add \"Effect\": \"Allow\" or \"Effect\": \"Deny\"",
            });
        }
        Some(Json::String(s)) if s == "Allow" => Effect::Allow,
        Some(Json::String(s)) if s == "Deny" => Effect::Deny,
        Some(Json::String(s)) => return Err(PolicyError::InvalidEffect { at, found: s }),
        Some(other) => return Err(wrong_type(&at, "Effect", "\"Allow\" or \"Deny\"", &other)),
    };

    let principals = match (kind, principal) {
        (PolicyKind::Identity, None) => None,
        (PolicyKind::Identity, Some(_)) => {
            return Err(PolicyError::PrincipalInIdentityPolicy { at });
        }
        (PolicyKind::Key, None) => return Err(PolicyError::MissingPrincipal { at }),
        (PolicyKind::Key, Some(value)) => Some(parse_principal(&at, value)?),
    };

    let actions = match pick(&at, "Action", action, not_action)? {
        Some(set) => set,
        None => {
            return Err(PolicyError::MissingField {
                at,
                field: "Action",
                hint: "add \"Action\" (or \"NotAction\"), e.g. \"Action\": \"kms:Decrypt\"",
            });
        }
    };
    for action in &actions.patterns {
        check_action(&at, action)?;
    }

    let resources = match (pick(&at, "Resource", resource, not_resource)?, kind) {
        (Some(set), _) => set,
        // A key policy is attached to exactly one key, so leaving the
        // resource out can only mean that key.
        (None, PolicyKind::Key) => PatternSet {
            negated: false,
            patterns: vec!["*".into()],
        },
        (None, PolicyKind::Identity) => {
            return Err(PolicyError::MissingField {
                at,
                field: "Resource",
                hint: "identity policies must say which resources they cover, e.g. \"Resource\": \"*\" or \"Resource\": \"key/*\"",
            });
        }
    };
    for resource in &resources.patterns {
        check_resource(&at, resource, origin)?;
    }

    let conditions = match condition {
        None => Vec::new(),
        Some(value) => condition::parse_condition(&at, value, origin)?,
    };

    let label = sid.clone().unwrap_or_else(|| format!("Statement[{index}]"));
    let statement = Statement {
        label,
        effect,
        principals,
        actions,
        resources,
        conditions,
    };
    Ok((statement, sid))
}

/// Resolves an `X`/`NotX` pair, of which at most one may be present.
fn pick(
    at: &Location,
    field: &'static str,
    positive: Option<Json>,
    negative: Option<Json>,
) -> Result<Option<PatternSet>, PolicyError> {
    match (positive, negative) {
        (Some(_), Some(_)) => Err(PolicyError::ConflictingFields {
            at: at.clone(),
            field,
        }),
        (Some(value), None) => Ok(Some(PatternSet {
            negated: false,
            patterns: string_list(at, field, value)?,
        })),
        (None, Some(value)) => Ok(Some(PatternSet {
            negated: true,
            patterns: string_list(at, &format!("Not{field}"), value)?,
        })),
        (None, None) => Ok(None),
    }
}

fn string_list(at: &Location, field: &str, value: Json) -> Result<Vec<String>, PolicyError> {
    match value {
        Json::String(s) => Ok(vec![s]),
        Json::Array(items) if items.is_empty() => Err(PolicyError::Empty {
            at: at.clone(),
            field: field.into(),
        }),
        Json::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Json::String(s) => Ok(s),
                other => Err(wrong_type(at, field, STRING_LIST, &other)),
            })
            .collect(),
        other => Err(wrong_type(at, field, STRING_LIST, &other)),
    }
}

fn parse_principal(at: &Location, value: Json) -> Result<Vec<Principal>, PolicyError> {
    match value {
        Json::String(s) if s == "*" => Ok(vec![Principal::Any]),
        Json::String(s) => Err(PolicyError::BarePrincipal {
            at: at.clone(),
            found: s,
        }),
        Json::Object(fields) if fields.is_empty() => Err(PolicyError::Empty {
            at: at.clone(),
            field: "Principal".into(),
        }),
        Json::Object(fields) => {
            let mut principals = Vec::new();
            for (kind, names) in fields {
                if kind != "AWS" {
                    return Err(PolicyError::UnsupportedPrincipalType {
                        at: at.clone(),
                        found: kind,
                    });
                }
                for name in string_list(at, "Principal.AWS", names)? {
                    principals.push(principal_name(at, name)?);
                }
            }
            Ok(principals)
        }
        other => Err(wrong_type(
            at,
            "Principal",
            "\"*\" or an object like {\"AWS\": \"user/alice\"}",
            &other,
        )),
    }
}

fn principal_name(at: &Location, name: String) -> Result<Principal, PolicyError> {
    match name.as_str() {
        "*" => return Ok(Principal::Any),
        "account" => return Ok(Principal::Account),
        _ => {}
    }
    let valid = name.split_once('/').is_some_and(|(kind, rest)| {
        PRINCIPAL_TYPES.contains(&kind)
            && (1..=MAX_PRINCIPAL_NAME).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    });
    if valid {
        Ok(Principal::Named(name))
    } else {
        Err(PolicyError::InvalidPrincipal {
            at: at.clone(),
            principal: name,
        })
    }
}

fn check_action(at: &Location, action: &str) -> Result<(), PolicyError> {
    if action == "*" {
        return Ok(());
    }
    let invalid = || PolicyError::InvalidAction {
        at: at.clone(),
        action: action.into(),
    };
    let (prefix, name) = action.split_once(':').ok_or_else(invalid)?;
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '?');
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric()) || !name_ok {
        return Err(invalid());
    }
    // Action matching ignores case, so the prefix check does too.
    if !SERVICE_PREFIXES
        .iter()
        .any(|known| known.eq_ignore_ascii_case(prefix))
    {
        return Err(PolicyError::UnknownServicePrefix {
            at: at.clone(),
            action: action.into(),
            prefix: prefix.into(),
        });
    }
    Ok(())
}

fn check_resource(at: &Location, resource: &str, origin: Origin) -> Result<(), PolicyError> {
    if resource == "*" {
        return Ok(());
    }
    if origin == Origin::New && resource.contains("${") {
        return Err(PolicyError::PolicyVariable {
            at: at.clone(),
            field: "Resource".into(),
            value: resource.into(),
        });
    }
    // Resource matching is case-sensitive, so "Key/..." could never match
    // anything; rejecting it surfaces the typo instead of a silent no-op.
    let valid = resource.split_once('/').is_some_and(|(kind, rest)| {
        RESOURCE_TYPES.contains(&kind)
            && !rest.is_empty()
            && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if valid {
        Ok(())
    } else {
        Err(PolicyError::InvalidResource {
            at: at.clone(),
            resource: resource.into(),
        })
    }
}

pub(super) fn wrong_type(
    at: &Location,
    field: &str,
    expected: &'static str,
    found: &Json,
) -> PolicyError {
    PolicyError::WrongType {
        at: at.clone(),
        field: field.into(),
        expected,
        found: found.kind(),
    }
}

/// A JSON tree that keeps object fields in document order and refuses
/// duplicate keys.
#[derive(Debug)]
pub(super) enum Json {
    Null,
    Bool(bool),
    Number,
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The JSON type, phrased for error messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut seen = HashSet::new();
        let mut fields = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key \"{key}\" in a JSON object; each field may appear only once"
                )));
            }
            fields.push((key, map.next_value()?));
        }
        Ok(Json::Object(fields))
    }
}

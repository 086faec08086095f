//! Conversions between `table.v1` messages and the item model.

use std::collections::HashMap;

use lockbox_proto::table::v1 as pb;

use crate::error::TableError;
use crate::expression::{Condition, MAX_CONDITIONS, MAX_UPDATE_ACTIONS, Operator, UpdateAction};
use crate::model::{AttributeValue, Item, KeySchema, Number, ScalarType, Set};
use crate::service::{ReturnValues, SortCondition, TableView};

fn number(text: &str) -> Result<Number, TableError> {
    text.parse::<Number>().map_err(TableError::from)
}

/// Where a value sits in a request, for messages: `a`, `a.b`, `a.b[2]`.
/// Built as the conversion descends and written out only for an error.
#[derive(Clone, Copy)]
enum Path<'a> {
    Top(&'a str),
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    /// Long names are shortened (a name may have 64 KiB, and a document
    /// 32 levels).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::model::abbreviate;
        match self {
            Path::Top(name) => f.write_str(&abbreviate(name)),
            Path::Field(parent, name) => write!(f, "{parent}.{}", abbreviate(name)),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A bad value's error, naming where it is.
fn at(path: &Path<'_>, error: impl Into<TableError>) -> TableError {
    match error.into() {
        TableError::Validation(message) => {
            TableError::Validation(format!("attribute {path}: {message}"))
        }
        other => other,
    }
}

pub fn value(name: &str, v: pb::AttributeValue) -> Result<AttributeValue, TableError> {
    value_at(&Path::Top(name), v)
}

fn value_at(path: &Path<'_>, v: pb::AttributeValue) -> Result<AttributeValue, TableError> {
    use pb::attribute_value::Value as V;
    Ok(match v.value {
        Some(V::S(s)) => AttributeValue::S(s),
        Some(V::N(n)) => AttributeValue::N(number(&n).map_err(|e| at(path, e))?),
        Some(V::B(b)) => AttributeValue::B(b),
        Some(V::Bool(b)) => AttributeValue::Bool(b),
        Some(V::Null(true)) => AttributeValue::Null,
        Some(V::Null(false)) => {
            return Err(TableError::validation(format!(
                "attribute {path}: null must be true"
            )));
        }
        Some(V::M(m)) => AttributeValue::M(item_at(Some(path), m.fields)?),
        Some(V::L(l)) => AttributeValue::L(
            l.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| value_at(&Path::Index(path, i), v))
                .collect::<Result<_, _>>()?,
        ),
        Some(V::Ss(s)) => {
            AttributeValue::Ss(Set::try_from_members(s.values).map_err(|e| at(path, e))?)
        }
        Some(V::Ns(s)) => AttributeValue::Ns(
            Set::try_from_members(
                s.values
                    .iter()
                    .map(|n| number(n))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| at(path, e))?,
            )
            .map_err(|e| at(path, e))?,
        ),
        Some(V::Bs(s)) => {
            AttributeValue::Bs(Set::try_from_members(s.values).map_err(|e| at(path, e))?)
        }
        None => {
            return Err(TableError::validation(format!(
                "attribute {path} has no value: set one of s, n, b, bool, null, m, l, ss, ns, bs"
            )));
        }
    })
}

pub fn item(map: HashMap<String, pb::AttributeValue>) -> Result<Item, TableError> {
    item_at(None, map)
}

/// The attributes of an item, or of a map value at `parent`.
fn item_at(
    parent: Option<&Path<'_>>,
    map: HashMap<String, pb::AttributeValue>,
) -> Result<Item, TableError> {
    map.into_iter()
        .map(|(k, v)| {
            let path = match parent {
                Some(parent) => Path::Field(parent, &k),
                None => Path::Top(&k),
            };
            let v = value_at(&path, v)?;
            Ok((k, v))
        })
        .collect()
}

pub fn value_out(v: &AttributeValue) -> pb::AttributeValue {
    use pb::attribute_value::Value as V;
    let value = match v {
        AttributeValue::S(s) => V::S(s.clone()),
        AttributeValue::N(n) => V::N(n.to_string()),
        AttributeValue::B(b) => V::B(b.clone()),
        AttributeValue::Bool(b) => V::Bool(*b),
        AttributeValue::Null => V::Null(true),
        AttributeValue::M(m) => V::M(pb::MapValue {
            fields: item_out(m),
        }),
        AttributeValue::L(l) => V::L(pb::ListValue {
            values: l.iter().map(value_out).collect(),
        }),
        AttributeValue::Ss(s) => V::Ss(pb::StringSet {
            values: s.iter().cloned().collect(),
        }),
        AttributeValue::Ns(s) => V::Ns(pb::NumberSet {
            values: s.iter().map(|n| n.to_string()).collect(),
        }),
        AttributeValue::Bs(s) => V::Bs(pb::BinarySet {
            values: s.iter().cloned().collect(),
        }),
    };
    pb::AttributeValue { value: Some(value) }
}

pub fn item_out(item: &Item) -> HashMap<String, pb::AttributeValue> {
    item.iter()
        .map(|(k, v)| (k.clone(), value_out(v)))
        .collect()
}

fn scalar(t: i32, which: &str) -> Result<ScalarType, TableError> {
    match pb::ScalarType::try_from(t) {
        Ok(pb::ScalarType::S) => Ok(ScalarType::S),
        Ok(pb::ScalarType::N) => Ok(ScalarType::N),
        Ok(pb::ScalarType::B) => Ok(ScalarType::B),
        _ => Err(TableError::validation(format!(
            "{which} type must be SCALAR_TYPE_S, SCALAR_TYPE_N or SCALAR_TYPE_B"
        ))),
    }
}

fn scalar_out(t: ScalarType) -> i32 {
    match t {
        ScalarType::S => pb::ScalarType::S,
        ScalarType::N => pb::ScalarType::N,
        ScalarType::B => pb::ScalarType::B,
    }
    .into()
}

pub fn schema(s: Option<pb::KeySchema>) -> Result<KeySchema, TableError> {
    let s = s.ok_or_else(|| TableError::validation("key_schema is required"))?;
    let pk = s
        .partition_key
        .ok_or_else(|| TableError::validation("key_schema.partition_key is required"))?;
    let partition = (pk.name, scalar(pk.r#type, "partition_key")?);
    // An empty sort_key message is no sort key; one with a type but no
    // name is a mistake, refused below for its name, never dropped (the
    // table would then keep one item per partition key).
    let sort = match s.sort_key {
        Some(sk) if sk.name.is_empty() && sk.r#type == i32::from(pb::ScalarType::Unspecified) => {
            None
        }
        Some(sk) => Some((sk.name, scalar(sk.r#type, "sort_key")?)),
        None => None,
    };
    Ok(KeySchema::new(partition, sort)?)
}

pub fn table_description(view: &TableView) -> pb::TableDescription {
    let r = &view.record;
    pb::TableDescription {
        table_name: r.name.clone(),
        table_id: r.table_id.clone(),
        key_schema: Some(pb::KeySchema {
            partition_key: Some(pb::KeyElement {
                name: r.schema.partition.0.clone(),
                r#type: scalar_out(r.schema.partition.1),
            }),
            sort_key: r.schema.sort.as_ref().map(|(name, t)| pb::KeyElement {
                name: name.clone(),
                r#type: scalar_out(*t),
            }),
        }),
        table_status: if r.rewrap.is_some() {
            pb::TableStatus::Updating
        } else {
            pb::TableStatus::Active
        }
        .into(),
        sse_description: Some(pb::SseDescription {
            kms_key_id: r.kms_key_id.clone(),
            key_state: view.key_state.clone(),
            service_managed: r.service_managed,
        }),
        creation_date: Some(prost_types::Timestamp {
            seconds: r.created,
            nanos: 0,
        }),
        item_count: view.item_count,
        rewrap_progress: r.rewrap.as_ref().map(|w| pb::RewrapProgress {
            target_kms_key_id: w.target_key_id.clone(),
            items_done: w.items_done,
            items_total: view.item_count,
            last_error: view.rewrap_failure.clone().unwrap_or_default(),
        }),
    }
}

pub fn operator(op: i32) -> Result<Operator, TableError> {
    use pb::ComparisonOperator as C;
    Ok(match C::try_from(op) {
        Ok(C::Eq) => Operator::Eq,
        Ok(C::Ne) => Operator::Ne,
        Ok(C::Lt) => Operator::Lt,
        Ok(C::Le) => Operator::Le,
        Ok(C::Gt) => Operator::Gt,
        Ok(C::Ge) => Operator::Ge,
        Ok(C::BeginsWith) => Operator::BeginsWith,
        Ok(C::Between) => Operator::Between,
        _ => {
            return Err(TableError::validation(
                "operator is required: EQ, NE, LT, LE, GT, GE, BEGINS_WITH or BETWEEN",
            ));
        }
    })
}

fn required(name: &str, v: Option<pb::AttributeValue>) -> Result<AttributeValue, TableError> {
    operand(
        name,
        v.ok_or_else(|| TableError::validation(format!("{name}: value is required")))?,
    )
}

/// A value a condition or an update action names, held to the rules of an
/// item's values (no empty set, at any depth), as DynamoDB holds every
/// value in a request.
fn operand(name: &str, v: pb::AttributeValue) -> Result<AttributeValue, TableError> {
    // An empty name is refused by the condition or action itself, saying so.
    let shown = if name.is_empty() { "value" } else { name };
    let probe = Item::from([(shown.to_string(), value(name, v)?)]);
    crate::model::validate_item(&probe)?;
    Ok(probe
        .into_values()
        .next()
        .expect("the one value just put in"))
}

/// An attribute name a condition or a REMOVE gives without a value: held
/// to the length of an item's names (an empty one is refused by the
/// condition or action itself, saying so).
fn bare_name(name: String) -> Result<String, TableError> {
    if !name.is_empty() {
        crate::model::check_attribute_name(&name)?;
    }
    Ok(name)
}

pub fn conditions(list: Vec<pb::Condition>) -> Result<Vec<Condition>, TableError> {
    use pb::condition::Kind;
    if list.len() > MAX_CONDITIONS {
        return Err(TableError::validation(format!(
            "{} conditions given: a request may carry at most {MAX_CONDITIONS}",
            list.len()
        )));
    }
    list.into_iter()
        .map(|c| match c.kind {
            Some(Kind::AttributeExists(n)) => Ok(Condition::Exists(bare_name(n)?)),
            Some(Kind::AttributeNotExists(n)) => Ok(Condition::NotExists(bare_name(n)?)),
            Some(Kind::Comparison(cmp)) => {
                let operator = operator(cmp.operator)?;
                Ok(Condition::Compare {
                    value: required(&cmp.attribute, cmp.value)?,
                    upper: cmp.value2.map(|v| operand(&cmp.attribute, v)).transpose()?,
                    attribute: cmp.attribute,
                    operator,
                })
            }
            None => Err(TableError::validation(
                "a condition needs attribute_exists, attribute_not_exists or comparison",
            )),
        })
        .map(|c| c.and_then(|c| c.validate().map(|()| c)))
        .collect()
}

pub fn actions(list: Vec<pb::UpdateAction>) -> Result<Vec<UpdateAction>, TableError> {
    use pb::update_action::Action;
    if list.len() > MAX_UPDATE_ACTIONS {
        return Err(TableError::validation(format!(
            "{} update actions given: an UpdateItem may carry at most {MAX_UPDATE_ACTIONS}",
            list.len()
        )));
    }
    list.into_iter()
        .map(|a| match a.action {
            Some(Action::Set(s)) => Ok(UpdateAction::Set(
                s.attribute.clone(),
                required(&s.attribute, s.value)?,
            )),
            Some(Action::Remove(n)) => Ok(UpdateAction::Remove(bare_name(n)?)),
            Some(Action::Add(s)) => Ok(UpdateAction::Add(
                s.attribute.clone(),
                required(&s.attribute, s.value)?,
            )),
            Some(Action::Delete(s)) => Ok(UpdateAction::Delete(
                s.attribute.clone(),
                required(&s.attribute, s.value)?,
            )),
            None => Err(TableError::validation(
                "an update action needs set, remove, add or delete",
            )),
        })
        .collect()
}

pub fn return_values(v: i32) -> Result<ReturnValues, TableError> {
    match pb::ReturnValues::try_from(v) {
        Ok(pb::ReturnValues::Unspecified | pb::ReturnValues::None) => Ok(ReturnValues::None),
        Ok(pb::ReturnValues::AllOld) => Ok(ReturnValues::AllOld),
        Ok(pb::ReturnValues::AllNew) => Ok(ReturnValues::AllNew),
        Ok(pb::ReturnValues::UpdatedOld) => Ok(ReturnValues::UpdatedOld),
        Ok(pb::ReturnValues::UpdatedNew) => Ok(ReturnValues::UpdatedNew),
        Err(_) => Err(TableError::validation(format!(
            "return_values {v} is not known"
        ))),
    }
}

pub fn sort_condition(
    c: Option<pb::SortKeyCondition>,
) -> Result<Option<SortCondition>, TableError> {
    c.map(|c| {
        Ok(SortCondition {
            operator: operator(c.operator)?,
            value: required("sort_key_condition", c.value)?,
            upper: c
                .value2
                .map(|v| value("sort_key_condition", v))
                .transpose()?,
        })
    })
    .transpose()
}

pub fn optional_key(map: HashMap<String, pb::AttributeValue>) -> Result<Option<Item>, TableError> {
    if map.is_empty() {
        Ok(None)
    } else {
        item(map).map(Some)
    }
}

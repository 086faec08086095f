//! Typed conditions and update actions on items (the structured counterpart
//! of DynamoDB's condition and update expressions), evaluated on decrypted
//! items inside table-service.

use std::cmp::Ordering;

use crate::error::TableError;
use crate::model::{AttributeValue, Item, KeySchema, abbreviate};

/// The most update actions one UpdateItem may carry. DynamoDB bounds an
/// update expression at 4 KB, which fits a few hundred actions.
pub const MAX_UPDATE_ACTIONS: usize = 1000;

/// The most conditions one write may carry (DynamoDB: a condition
/// expression of at most 4 KB).
pub const MAX_CONDITIONS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    BeginsWith,
    Between,
}

impl Operator {
    /// DynamoDB's name of the operator (`EQ`, `BEGINS_WITH`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Operator::Eq => "EQ",
            Operator::Ne => "NE",
            Operator::Lt => "LT",
            Operator::Le => "LE",
            Operator::Gt => "GT",
            Operator::Ge => "GE",
            Operator::BeginsWith => "BEGINS_WITH",
            Operator::Between => "BETWEEN",
        }
    }

    /// Refuses a second value (`value2`) for any operator but BETWEEN, as
    /// DynamoDB refuses a wrong number of arguments; `subject` says where
    /// (e.g. "condition on n").
    pub fn check_value2<T>(self, subject: &str, upper: Option<&T>) -> Result<(), TableError> {
        if upper.is_some() && self != Operator::Between {
            return Err(TableError::validation(format!(
                "{subject}: Invalid number of argument(s) for the {} ComparisonOperator: it takes one value, and value2 is only for BETWEEN; leave value2 unset",
                self.name()
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Exists(String),
    NotExists(String),
    Compare {
        attribute: String,
        operator: Operator,
        value: AttributeValue,
        upper: Option<AttributeValue>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpdateAction {
    Set(String, AttributeValue),
    Remove(String),
    Add(String, AttributeValue),
    Delete(String, AttributeValue),
}

impl UpdateAction {
    /// The attribute the action acts on.
    pub fn attribute(&self) -> &str {
        let (UpdateAction::Set(name, _)
        | UpdateAction::Remove(name)
        | UpdateAction::Add(name, _)
        | UpdateAction::Delete(name, _)) = self;
        name
    }
}

/// Order of two scalar values of the same type (S, N, B); `None` otherwise.
pub fn compare(a: &AttributeValue, b: &AttributeValue) -> Option<Ordering> {
    match (a, b) {
        (AttributeValue::S(x), AttributeValue::S(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (AttributeValue::N(x), AttributeValue::N(y)) => Some(x.cmp(y)),
        (AttributeValue::B(x), AttributeValue::B(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn begins_with(a: &AttributeValue, prefix: &AttributeValue) -> bool {
    match (a, prefix) {
        (AttributeValue::S(x), AttributeValue::S(p)) => x.starts_with(p.as_str()),
        (AttributeValue::B(x), AttributeValue::B(p)) => x.starts_with(p),
        _ => false,
    }
}

impl Condition {
    /// Whether `item` (None when no item exists) satisfies the condition.
    pub fn holds(&self, item: Option<&Item>) -> bool {
        let get = |name: &str| item.and_then(|i| i.get(name));
        match self {
            Condition::Exists(name) => get(name).is_some(),
            Condition::NotExists(name) => get(name).is_none(),
            Condition::Compare {
                attribute,
                operator,
                value,
                upper,
            } => {
                let Some(actual) = get(attribute) else {
                    // As DynamoDB: a missing attribute is "not equal" to anything.
                    return *operator == Operator::Ne;
                };
                match operator {
                    Operator::Eq => actual == value,
                    Operator::Ne => actual != value,
                    Operator::BeginsWith => begins_with(actual, value),
                    Operator::Between => upper.as_ref().is_some_and(|hi| {
                        compare(actual, value).is_some_and(|o| o != Ordering::Less)
                            && compare(actual, hi).is_some_and(|o| o != Ordering::Greater)
                    }),
                    op => compare(actual, value).is_some_and(|o| match op {
                        Operator::Lt => o == Ordering::Less,
                        Operator::Le => o != Ordering::Greater,
                        Operator::Gt => o == Ordering::Greater,
                        Operator::Ge => o != Ordering::Less,
                        _ => false,
                    }),
                }
            }
        }
    }

    /// Refuses what no item could make meaningful, as DynamoDB does with a
    /// ValidationException rather than a failed condition: an empty
    /// attribute name, an order comparison or BETWEEN on a value that is
    /// not S, N or B, BETWEEN without an upper bound, with bounds of two
    /// types or a lower bound above the upper, an upper bound (`value2`)
    /// for any other operator, and BEGINS_WITH on a value that is not S or
    /// B. (A stored value of another type than the operand only makes the
    /// condition false.)
    pub fn validate(&self) -> Result<(), TableError> {
        let (attribute, operator, value, upper) = match self {
            Condition::Exists(name) | Condition::NotExists(name) => {
                return if name.is_empty() {
                    Err(TableError::validation(
                        "a condition names an empty attribute",
                    ))
                } else {
                    Ok(())
                };
            }
            Condition::Compare {
                attribute,
                operator,
                value,
                upper,
            } => (attribute, *operator, value, upper.as_ref()),
        };
        if attribute.is_empty() {
            return Err(TableError::validation(
                "a condition names an empty attribute",
            ));
        }
        // As it appears in messages: a long name is shortened.
        let attribute = abbreviate(attribute);
        operator.check_value2(&format!("condition on {attribute}"), upper)?;
        let scalar = |v: &AttributeValue| {
            matches!(
                v,
                AttributeValue::S(_) | AttributeValue::N(_) | AttributeValue::B(_)
            )
        };
        let wrong = |v: &AttributeValue, allowed: &str| {
            Err(TableError::validation(format!(
                "condition on {attribute}: {operator:?} takes {allowed}, not {}",
                v.type_name()
            )))
        };
        match operator {
            Operator::Eq | Operator::Ne => Ok(()),
            Operator::Lt | Operator::Le | Operator::Gt | Operator::Ge => {
                if scalar(value) {
                    Ok(())
                } else {
                    wrong(value, "an S, N or B value")
                }
            }
            Operator::BeginsWith => match value {
                AttributeValue::S(_) | AttributeValue::B(_) => Ok(()),
                other => wrong(other, "an S or B value"),
            },
            Operator::Between => {
                let Some(upper) = upper else {
                    return Err(TableError::validation(format!(
                        "condition on {attribute}: Between needs value2, the upper bound"
                    )));
                };
                if !scalar(value) {
                    return wrong(value, "S, N or B bounds");
                }
                match compare(value, upper) {
                    None => Err(TableError::validation(format!(
                        "condition on {attribute}: Between bounds must have one type; they are {} and {}",
                        value.type_name(),
                        upper.type_name()
                    ))),
                    Some(Ordering::Greater) => Err(TableError::validation(format!(
                        "condition on {attribute}: the Between lower bound is above the upper bound"
                    ))),
                    Some(_) => Ok(()),
                }
            }
        }
    }

    /// The attribute the condition is about.
    pub fn attribute(&self) -> &str {
        match self {
            Condition::Exists(name) | Condition::NotExists(name) => name,
            Condition::Compare { attribute, .. } => attribute,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Condition::Exists(n) => format!("attribute_exists({})", abbreviate(n)),
            Condition::NotExists(n) => format!("attribute_not_exists({})", abbreviate(n)),
            Condition::Compare {
                attribute,
                operator,
                ..
            } => format!("{} {operator:?} value", abbreviate(attribute)),
        }
    }
}

/// Fails with `ConditionalCheckFailedException` naming the first condition
/// that does not hold.
pub fn check_all(conditions: &[Condition], item: Option<&Item>) -> Result<(), TableError> {
    match conditions.iter().find(|c| !c.holds(item)) {
        Some(c) => Err(TableError::ConditionalCheckFailed(format!(
            "{} is not satisfied",
            c.describe()
        ))),
        None => Ok(()),
    }
}

/// What can be wrong with update actions whatever the item holds, checked
/// before the item is read (and its data key unwrapped), as DynamoDB checks
/// an update expression: an attribute named twice, an empty name, a key
/// attribute, an ADD operand that is not a number or a set, a DELETE
/// operand that is not a set.
pub fn validate_actions(schema: &KeySchema, actions: &[UpdateAction]) -> Result<(), TableError> {
    // As DynamoDB: one request may not act on one attribute twice.
    let mut named = std::collections::BTreeSet::new();
    for action in actions {
        let n = action.attribute();
        if !named.insert(n) {
            return Err(TableError::validation(format!(
                "two update actions name attribute {}; act on each attribute at most once per request",
                abbreviate(n)
            )));
        }
    }
    for action in actions {
        let name = action.attribute();
        if name.is_empty() {
            return Err(TableError::validation(
                "an update action names an empty attribute",
            ));
        }
        if schema.is_key_attribute(name) {
            return Err(TableError::validation(format!(
                "Cannot update attribute {}. This attribute is part of the key",
                abbreviate(name)
            )));
        }
        match action {
            UpdateAction::Add(n, v)
                if !matches!(
                    v,
                    AttributeValue::N(_)
                        | AttributeValue::Ss(_)
                        | AttributeValue::Ns(_)
                        | AttributeValue::Bs(_)
                ) =>
            {
                return Err(TableError::validation(format!(
                    "ADD to {}: cannot add {}; ADD works on numbers and sets",
                    abbreviate(n),
                    v.type_name()
                )));
            }
            UpdateAction::Delete(n, v)
                if !matches!(
                    v,
                    AttributeValue::Ss(_) | AttributeValue::Ns(_) | AttributeValue::Bs(_)
                ) =>
            {
                // As DynamoDB: the operand must be a set whatever is stored.
                return Err(TableError::validation(format!(
                    "DELETE from {}: the value must be a set (SS, NS or BS), not {}",
                    abbreviate(n),
                    v.type_name()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Applies update actions to an item (creating it when absent); key
/// attributes cannot be changed. They are checked with
/// [`validate_actions`] first, so only what depends on the stored values
/// can fail here.
pub fn apply(
    schema: &KeySchema,
    item: &mut Item,
    actions: &[UpdateAction],
) -> Result<(), TableError> {
    validate_actions(schema, actions)?;
    for action in actions {
        match action {
            UpdateAction::Set(n, v) => {
                item.insert(n.clone(), v.clone());
            }
            UpdateAction::Remove(n) => {
                item.remove(n);
            }
            UpdateAction::Add(n, v) => {
                let merged = match (item.remove(n), v) {
                    (
                        None,
                        v @ (AttributeValue::N(_)
                        | AttributeValue::Ss(_)
                        | AttributeValue::Ns(_)
                        | AttributeValue::Bs(_)),
                    ) => v.clone(),
                    (Some(AttributeValue::N(a)), AttributeValue::N(b)) => {
                        AttributeValue::N(a.checked_add(b)?)
                    }
                    (Some(AttributeValue::Ss(mut a)), AttributeValue::Ss(b)) => {
                        b.iter().for_each(|m| {
                            a.insert(m.clone());
                        });
                        AttributeValue::Ss(a)
                    }
                    (Some(AttributeValue::Ns(mut a)), AttributeValue::Ns(b)) => {
                        b.iter().for_each(|m| {
                            a.insert(m.clone());
                        });
                        AttributeValue::Ns(a)
                    }
                    (Some(AttributeValue::Bs(mut a)), AttributeValue::Bs(b)) => {
                        b.iter().for_each(|m| {
                            a.insert(m.clone());
                        });
                        AttributeValue::Bs(a)
                    }
                    (old, v) => {
                        return Err(TableError::validation(format!(
                            "ADD to {}: cannot add {} to {}; ADD works on numbers and sets of the same type",
                            abbreviate(n),
                            v.type_name(),
                            old.as_ref()
                                .map_or("a missing attribute", |o| o.type_name())
                        )));
                    }
                };
                item.insert(n.clone(), merged);
            }
            UpdateAction::Delete(n, v) => {
                let remaining = match (item.remove(n), v) {
                    (None, _) => None,
                    (Some(AttributeValue::Ss(mut a)), AttributeValue::Ss(b)) => {
                        b.iter().for_each(|m| {
                            a.remove(m);
                        });
                        (!a.is_empty()).then_some(AttributeValue::Ss(a))
                    }
                    (Some(AttributeValue::Ns(mut a)), AttributeValue::Ns(b)) => {
                        b.iter().for_each(|m| {
                            a.remove(m);
                        });
                        (!a.is_empty()).then_some(AttributeValue::Ns(a))
                    }
                    (Some(AttributeValue::Bs(mut a)), AttributeValue::Bs(b)) => {
                        b.iter().for_each(|m| {
                            a.remove(m);
                        });
                        (!a.is_empty()).then_some(AttributeValue::Bs(a))
                    }
                    (Some(old), v) => {
                        return Err(TableError::validation(format!(
                            "DELETE from {}: cannot remove {} members from {}; DELETE works on sets of the same type",
                            abbreviate(n),
                            v.type_name(),
                            old.type_name()
                        )));
                    }
                };
                if let Some(r) = remaining {
                    item.insert(n.clone(), r);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

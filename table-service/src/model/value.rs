//! Attribute values, the set types, item validation and DynamoDB's item size
//! accounting. Sets are `BTreeSet`s behind a newtype: the constructor that takes
//! client input rejects duplicates (as DynamoDB does) instead of silently merging
//! them, and iteration order is the canonical order the codec writes (UTF-8 byte
//! order for SS, numeric order for NS, byte order for BS). NS members dedup by
//! numeric value because `Number` is normalized, so "1" and "1.0" collide.

use std::collections::BTreeSet;

use super::{Item, ModelError, Number, abbreviate};

/// DynamoDB's maximum item size, attribute names included.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// Deepest allowed nesting of maps and lists (a top-level M or L is level 1).
pub const MAX_DEPTH: usize = 32;
/// Longest attribute name, top-level or a nested map key.
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 65535;

/// One DynamoDB attribute value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    S(String),
    N(Number),
    B(Vec<u8>),
    Bool(bool),
    Null,
    M(Item),
    L(Vec<AttributeValue>),
    Ss(StringSet),
    Ns(NumberSet),
    Bs(BinarySet),
}

impl AttributeValue {
    /// DynamoDB's type descriptor: "S", "N", "B", "BOOL", "NULL", "M", "L", "SS", "NS", "BS".
    pub fn type_name(&self) -> &'static str {
        match self {
            AttributeValue::S(_) => "S",
            AttributeValue::N(_) => "N",
            AttributeValue::B(_) => "B",
            AttributeValue::Bool(_) => "BOOL",
            AttributeValue::Null => "NULL",
            AttributeValue::M(_) => "M",
            AttributeValue::L(_) => "L",
            AttributeValue::Ss(_) => "SS",
            AttributeValue::Ns(_) => "NS",
            AttributeValue::Bs(_) => "BS",
        }
    }

    /// Size of this value by DynamoDB's rules (without its own attribute name).
    pub fn size(&self) -> usize {
        let mut stack = vec![self];
        let mut total = 0usize;
        while let Some(value) = stack.pop() {
            total = total.saturating_add(own_size(value, &mut stack));
        }
        total
    }
}

/// A member type of a DynamoDB set. Sealed: only `String`, `Number` and
/// `Vec<u8>` make sets.
pub trait SetMember: Ord + Clone + sealed::Sealed {
    /// The set's type descriptor ("SS", "NS" or "BS").
    const SET_TYPE: &'static str;
    /// How the member is shown in an error message.
    fn describe(&self) -> String;
    /// Contribution to the item size.
    fn size(&self) -> usize;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for String {}
    impl Sealed for super::Number {}
    impl Sealed for Vec<u8> {}
}

impl SetMember for String {
    const SET_TYPE: &'static str = "SS";
    fn describe(&self) -> String {
        format!("{:?}", abbreviate(self))
    }
    fn size(&self) -> usize {
        self.len()
    }
}

impl SetMember for Number {
    const SET_TYPE: &'static str = "NS";
    fn describe(&self) -> String {
        self.to_string()
    }
    fn size(&self) -> usize {
        self.stored_size()
    }
}

impl SetMember for Vec<u8> {
    const SET_TYPE: &'static str = "BS";
    fn describe(&self) -> String {
        let shown: String = self.iter().take(32).map(|b| format!("{b:02x}")).collect();
        if self.len() > 32 {
            format!("0x{shown}… ({} bytes)", self.len())
        } else {
            format!("0x{shown}")
        }
    }
    fn size(&self) -> usize {
        self.len()
    }
}

/// A DynamoDB set: distinct members in canonical order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Set<T>(BTreeSet<T>);

pub type StringSet = Set<String>;
pub type NumberSet = Set<Number>;
pub type BinarySet = Set<Vec<u8>>;

impl<T: SetMember> Set<T> {
    pub fn new() -> Self {
        Set(BTreeSet::new())
    }

    /// Builds a set from client input, rejecting a member given twice (for NS:
    /// numerically equal, such as "1" and "1.0"), as DynamoDB does.
    pub fn try_from_members(members: impl IntoIterator<Item = T>) -> Result<Self, ModelError> {
        let mut set = BTreeSet::new();
        for member in members {
            if let Some(duplicate) = set.replace(member) {
                return Err(ModelError::DuplicateSetMember {
                    member: duplicate.describe(),
                });
            }
        }
        Ok(Set(set))
    }

    /// Adds a member (UpdateItem ADD); false if it was already present.
    pub fn insert(&mut self, member: T) -> bool {
        self.0.insert(member)
    }

    /// Removes a member (UpdateItem DELETE); false if it was absent.
    pub fn remove(&mut self, member: &T) -> bool {
        self.0.remove(member)
    }

    pub fn contains(&self, member: &T) -> bool {
        self.0.contains(member)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Members in canonical order.
    pub fn iter(&self) -> std::collections::btree_set::Iter<'_, T> {
        self.0.iter()
    }

    pub fn as_btree_set(&self) -> &BTreeSet<T> {
        &self.0
    }

    pub fn into_inner(self) -> BTreeSet<T> {
        self.0
    }
}

impl<T: SetMember> Default for Set<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A `BTreeSet` already holds distinct members, so this cannot fail.
impl<T: SetMember> From<BTreeSet<T>> for Set<T> {
    fn from(set: BTreeSet<T>) -> Self {
        Set(set)
    }
}

impl<'a, T> IntoIterator for &'a Set<T> {
    type Item = &'a T;
    type IntoIter = std::collections::btree_set::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Size contribution of `value` itself; containers push their children onto
/// `stack` instead of recursing, so a pathologically deep value built in
/// memory cannot overflow the thread's stack.
fn own_size<'a>(value: &'a AttributeValue, stack: &mut Vec<&'a AttributeValue>) -> usize {
    fn members<T: SetMember>(set: &Set<T>) -> usize {
        set.iter()
            .map(SetMember::size)
            .fold(0, usize::saturating_add)
    }
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => n.stored_size(),
        AttributeValue::B(b) => b.len(),
        AttributeValue::Bool(_) | AttributeValue::Null => 1,
        // 3 bytes of container overhead plus 1 per element (DynamoDB's rule),
        // and for maps the element names.
        AttributeValue::M(map) => {
            stack.extend(map.values());
            map.keys()
                .map(|k| k.len() + 1)
                .fold(3, usize::saturating_add)
        }
        AttributeValue::L(list) => {
            stack.extend(list.iter());
            3usize.saturating_add(list.len())
        }
        AttributeValue::Ss(set) => members(set),
        AttributeValue::Ns(set) => members(set),
        AttributeValue::Bs(set) => members(set),
    }
}

/// DynamoDB's size of an item: for each attribute, its name's UTF-8 length plus
/// its value's size (see [`AttributeValue::size`]).
pub fn item_size(item: &Item) -> usize {
    let mut stack: Vec<&AttributeValue> = item.values().collect();
    let mut total = item.keys().map(String::len).fold(0, usize::saturating_add);
    while let Some(value) = stack.pop() {
        total = total.saturating_add(own_size(value, &mut stack));
    }
    total
}

/// One step of the path to a nested value, rendered only when an error needs it.
enum Step<'a> {
    Name(&'a str),
    Index(usize),
}

fn render(path: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Name(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&abbreviate(name));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Checks an item against DynamoDB's rules: attribute names (nested map keys
/// too) of 1 to 65535 bytes, no empty sets (empty strings and binaries are
/// members like any other), nesting at most 32 levels, and at most 400 KiB
/// in total.
pub fn validate_item(item: &Item) -> Result<(), ModelError> {
    let mut path = Vec::new();
    for (name, value) in item {
        check_name(name)?;
        path.push(Step::Name(name));
        validate_value(value, 0, &mut path)?;
        path.pop();
    }
    let size = item_size(item);
    if size > MAX_ITEM_BYTES {
        return Err(ModelError::ItemTooLarge { size });
    }
    Ok(())
}

/// Refuses an attribute name (or nested map key) that is empty or over
/// [`MAX_ATTRIBUTE_NAME_BYTES`].
pub fn check_name(name: &str) -> Result<(), ModelError> {
    if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_BYTES {
        return Err(ModelError::AttributeNameLength {
            name: abbreviate(name),
            len: name.len(),
        });
    }
    Ok(())
}

/// `depth` is the number of containers enclosing `value`. Recursion stops at
/// MAX_DEPTH + 1, so it is bounded whatever the caller built.
fn validate_value<'a>(
    value: &'a AttributeValue,
    depth: usize,
    path: &mut Vec<Step<'a>>,
) -> Result<(), ModelError> {
    match value {
        AttributeValue::M(map) => {
            if depth + 1 > MAX_DEPTH {
                return Err(ModelError::NestingTooDeep { path: render(path) });
            }
            for (name, inner) in map {
                check_name(name)?;
                path.push(Step::Name(name));
                validate_value(inner, depth + 1, path)?;
                path.pop();
            }
        }
        AttributeValue::L(list) => {
            if depth + 1 > MAX_DEPTH {
                return Err(ModelError::NestingTooDeep { path: render(path) });
            }
            for (i, inner) in list.iter().enumerate() {
                path.push(Step::Index(i));
                validate_value(inner, depth + 1, path)?;
                path.pop();
            }
        }
        AttributeValue::Ss(set) => check_set(set, path)?,
        AttributeValue::Ns(set) => check_set(set, path)?,
        AttributeValue::Bs(set) => check_set(set, path)?,
        AttributeValue::S(_)
        | AttributeValue::N(_)
        | AttributeValue::B(_)
        | AttributeValue::Bool(_)
        | AttributeValue::Null => {}
    }
    Ok(())
}

/// A set may not be empty; its members may (an empty string or binary is
/// a member like any other, as in DynamoDB).
fn check_set<T: SetMember>(set: &Set<T>, path: &[Step<'_>]) -> Result<(), ModelError> {
    if set.is_empty() {
        return Err(ModelError::EmptySet { path: render(path) });
    }
    Ok(())
}

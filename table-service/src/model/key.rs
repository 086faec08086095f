//! Key schema and storage keys. A table's key is a partition attribute and an
//! optional sort attribute, each of a scalar type. Their values are encoded so
//! that byte-wise (memcmp) order is DynamoDB's order: S as its UTF-8 bytes, B as
//! its raw bytes, N through [`Number::encode_key`]. The storage layer keeps
//! partition and sort bytes in separate columns, which is why neither needs to
//! be self-delimiting. `split_item`/`join_item` separate an item into its key
//! and the non-key attributes (the part that is encoded and encrypted) and back.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{AttributeValue, Item, ModelError, Number, abbreviate, validate_item};

/// DynamoDB's limit on a partition key value.
pub const MAX_PARTITION_KEY_BYTES: usize = 2048;
/// DynamoDB's limit on a sort key value.
pub const MAX_SORT_KEY_BYTES: usize = 1024;
/// DynamoDB's limit on a key attribute's name.
pub const MAX_KEY_NAME_BYTES: usize = 255;

/// The types a key attribute may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScalarType {
    S,
    N,
    B,
}

impl ScalarType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScalarType::S => "S",
            ScalarType::N => "N",
            ScalarType::B => "B",
        }
    }
}

impl fmt::Display for ScalarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table's primary key: partition (hash) attribute and optional sort (range)
/// attribute, each as (name, type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySchema {
    pub partition: (String, ScalarType),
    pub sort: Option<(String, ScalarType)>,
}

/// An item's encoded key. Ordering (partition, then sort) is storage order.
/// `sort` is empty when the table has no sort key; a present sort key never
/// encodes to empty bytes (S and B key values are non-empty, N never is).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemKey {
    pub partition: Vec<u8>,
    pub sort: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Role {
    Partition,
    Sort,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Partition => "partition",
            Role::Sort => "sort",
        }
    }

    fn limit(self) -> usize {
        match self {
            Role::Partition => MAX_PARTITION_KEY_BYTES,
            Role::Sort => MAX_SORT_KEY_BYTES,
        }
    }
}

impl KeySchema {
    /// A checked schema (see [`KeySchema::validate`]).
    pub fn new(
        partition: (String, ScalarType),
        sort: Option<(String, ScalarType)>,
    ) -> Result<Self, ModelError> {
        let schema = KeySchema { partition, sort };
        schema.validate()?;
        Ok(schema)
    }

    /// Key attribute names must be 1 to 255 bytes and distinct.
    pub fn validate(&self) -> Result<(), ModelError> {
        for name in self.key_names() {
            if name.is_empty() || name.len() > MAX_KEY_NAME_BYTES {
                return Err(ModelError::InvalidKeySchema {
                    reason: format!(
                        "key attribute name {:?} is {} bytes: key names must be 1 to 255 bytes",
                        abbreviate(name),
                        name.len()
                    ),
                });
            }
        }
        if let Some((sort, _)) = &self.sort
            && *sort == self.partition.0
        {
            return Err(ModelError::InvalidKeySchema {
                reason: format!(
                    "partition and sort key are both named {:?}: give them different names",
                    abbreviate(sort)
                ),
            });
        }
        Ok(())
    }

    /// The key attribute names, partition first.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.partition.0.as_str())
            .chain(self.sort.as_ref().map(|(n, _)| n.as_str()))
    }

    pub fn is_key_attribute(&self, name: &str) -> bool {
        self.key_names().any(|key| key == name)
    }

    /// Encodes the key attributes of `item` (which may hold other attributes).
    pub fn extract_key(&self, item: &Item) -> Result<ItemKey, ModelError> {
        let (name, ty) = &self.partition;
        let partition = encode_key_value(name, *ty, item.get(name), Role::Partition)?;
        let sort = match &self.sort {
            Some((name, ty)) => encode_key_value(name, *ty, item.get(name), Role::Sort)?,
            None => Vec::new(),
        };
        Ok(ItemKey { partition, sort })
    }

    /// Checks a GetItem/DeleteItem key map: exactly the key attributes, nothing
    /// more or less, with the right types; returns the encoded key.
    pub fn validate_key_map(&self, key: &Item) -> Result<ItemKey, ModelError> {
        let expected: Vec<&str> = self.key_names().collect();
        let matches = key.len() == expected.len() && expected.iter().all(|n| key.contains_key(*n));
        if !matches {
            // The first few names given, so a key map of thousands of
            // attributes does not make a message as long.
            const SHOWN: usize = 5;
            let mut given: Vec<String> = key.keys().take(SHOWN).map(|k| abbreviate(k)).collect();
            if key.len() > SHOWN {
                given.push(format!("and {} more", key.len() - SHOWN));
            }
            return Err(ModelError::KeySchemaMismatch {
                detail: format!(
                    "give exactly the key attributes [{}], got [{}]",
                    expected.join(", "),
                    given.join(", ")
                ),
            });
        }
        self.extract_key(key)
    }

    /// Encodes a partition key value on its own (a Query's), with the same
    /// checks as in a key: its type, not empty, at most 2048 bytes.
    pub fn encode_partition_value(&self, value: &AttributeValue) -> Result<Vec<u8>, ModelError> {
        let (name, ty) = &self.partition;
        encode_key_value(name, *ty, Some(value), Role::Partition)
    }

    /// Encodes a sort key value on its own (a Query sort-key condition's),
    /// with the same checks as in a key: its type, not empty, at most 1024
    /// bytes.
    pub fn encode_sort_value(&self, value: &AttributeValue) -> Result<Vec<u8>, ModelError> {
        let Some((name, ty)) = &self.sort else {
            return Err(ModelError::KeySchemaMismatch {
                detail: "the table has no sort key".to_owned(),
            });
        };
        encode_key_value(name, *ty, Some(value), Role::Sort)
    }

    /// `key` as messages name an item, e.g. `pk (S) "order-1", sk (N) 5`:
    /// strings quoted, binary values in base64, long values shortened.
    pub fn describe_key(&self, key: &ItemKey) -> String {
        use base64::Engine;
        let one = |(name, ty): &(String, ScalarType), bytes: &[u8]| {
            let value = match decode_key_value(name, *ty, bytes) {
                Ok(AttributeValue::S(s)) => format!("{:?}", abbreviate(&s)),
                Ok(AttributeValue::N(n)) => n.to_string(),
                Ok(AttributeValue::B(b)) => {
                    abbreviate(&base64::engine::general_purpose::STANDARD.encode(b))
                }
                _ => "(unreadable)".to_string(),
            };
            format!("{} ({ty}) {value}", abbreviate(name))
        };
        let mut out = one(&self.partition, &key.partition);
        if let Some(sort) = &self.sort {
            out.push_str(", ");
            out.push_str(&one(sort, &key.sort));
        }
        out
    }

    /// Turns stored key bytes back into the key attributes.
    pub fn key_attributes(&self, key: &ItemKey) -> Result<Item, ModelError> {
        let mut out = Item::new();
        let (name, ty) = &self.partition;
        out.insert(name.clone(), decode_key_value(name, *ty, &key.partition)?);
        match (&self.sort, key.sort.is_empty()) {
            (Some((name, ty)), false) => {
                out.insert(name.clone(), decode_key_value(name, *ty, &key.sort)?);
            }
            (None, true) => {}
            (Some((name, _)), true) => {
                return Err(ModelError::Corrupt {
                    reason: format!("stored key has no value for sort key {}", abbreviate(name)),
                });
            }
            (None, false) => {
                return Err(ModelError::Corrupt {
                    reason: "stored key has a sort value but the table has no sort key".to_owned(),
                });
            }
        }
        Ok(out)
    }
}

fn encode_key_value(
    name: &str,
    ty: ScalarType,
    value: Option<&AttributeValue>,
    role: Role,
) -> Result<Vec<u8>, ModelError> {
    let name_shown = || abbreviate(name);
    let bytes = match (ty, value) {
        (_, None) => return Err(ModelError::MissingKey { name: name_shown() }),
        (ScalarType::S, Some(AttributeValue::S(s))) => s.as_bytes().to_vec(),
        (ScalarType::B, Some(AttributeValue::B(b))) => b.clone(),
        // Numbers are at most 22 bytes encoded: never empty, never over a limit.
        (ScalarType::N, Some(AttributeValue::N(n))) => return Ok(n.encode_key()),
        (_, Some(other)) => {
            return Err(ModelError::KeyTypeMismatch {
                name: name_shown(),
                expected: ty,
                actual: other.type_name(),
            });
        }
    };
    if bytes.is_empty() {
        let kind = if ty == ScalarType::S {
            "string"
        } else {
            "binary"
        };
        return Err(ModelError::EmptyKeyValue {
            name: name_shown(),
            kind,
        });
    }
    if bytes.len() > role.limit() {
        return Err(ModelError::KeyTooLarge {
            role: role.name(),
            name: name_shown(),
            size: bytes.len(),
            limit: role.limit(),
        });
    }
    Ok(bytes)
}

fn decode_key_value(
    name: &str,
    ty: ScalarType,
    bytes: &[u8],
) -> Result<AttributeValue, ModelError> {
    let corrupt = |why: &str| ModelError::Corrupt {
        reason: format!("stored value of key {} {why}", abbreviate(name)),
    };
    match ty {
        ScalarType::N => Ok(AttributeValue::N(Number::decode_key(bytes)?)),
        _ if bytes.is_empty() => Err(corrupt("is empty")),
        ScalarType::B => Ok(AttributeValue::B(bytes.to_vec())),
        ScalarType::S => match String::from_utf8(bytes.to_vec()) {
            Ok(s) => Ok(AttributeValue::S(s)),
            Err(_) => Err(corrupt("is not valid UTF-8")),
        },
    }
}

/// Validates a whole item (see [`validate_item`]) and splits it into its
/// encoded key and the remaining non-key attributes. This is the PutItem path:
/// nothing that fails DynamoDB's rules reaches storage.
pub fn split_item(schema: &KeySchema, mut item: Item) -> Result<(ItemKey, Item), ModelError> {
    validate_item(&item)?;
    let key = schema.extract_key(&item)?;
    for name in schema.key_names() {
        item.remove(name);
    }
    Ok((key, item))
}

/// Rebuilds an item from stored key bytes and decoded non-key attributes.
/// Fails if the key bytes are corrupt or the stored attributes repeat a key
/// attribute (which `split_item` never produces).
pub fn join_item(schema: &KeySchema, key: &ItemKey, non_key: Item) -> Result<Item, ModelError> {
    let key_attributes = schema.key_attributes(key)?;
    let mut item = non_key;
    for (name, value) in key_attributes {
        if item.contains_key(&name) {
            return Err(ModelError::Corrupt {
                reason: format!(
                    "stored attributes repeat key attribute {}",
                    abbreviate(&name)
                ),
            });
        }
        item.insert(name, value);
    }
    Ok(item)
}

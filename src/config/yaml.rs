//! The YAML document as a tree of [`Node`]s, built from the same parse that
//! places every field (`source_map`), and read by serde through its own
//! [`Deserializer`].
//!
//! Why this and not another YAML crate: the config check needs four things
//! from one parse — a line:col for every field path (errors are placed by
//! path, validation errors too), every duplicate key, scalars resolved once,
//! and every unknown key reported with the fields that were expected.
//! - yaml-rust2's marked event parser (already what placed fields) gives a
//!   position with every event, and with it duplicates are found where both
//!   positions are known. Building the tree from those same events means the
//!   values and their positions cannot disagree.
//! - `marked-yaml` keeps spans on its nodes, but stops loading at a
//!   duplicate key (we report every one, each at both its places) and keeps
//!   scalars as text that its deserializer types by its own rules.
//! - `serde-saphyr` deserializes straight from the events into the target
//!   types: there is no tree to take a misspelled key out of and check the
//!   rest again, and positions come with its own errors (or `Spanned<T>`
//!   fields), not for every path that validation later names.
//! - Owning the deserializer gives the error type: an unknown field arrives as
//!   the field and the list of expected ones ([`DeError::UnknownField`]), so
//!   the "did you mean" hint never reads serde's message text.
//!
//! Scalars follow the YAML 1.2 core schema, as serde_yaml did before: plain
//! `~`/`null`/empty is null, `true`/`false` booleans, integers (decimal,
//! `0x`, `0o`, `0b`), floats (`1.5`, `1e3`, `.inf`, `.nan`); anything quoted,
//! or tagged `!!str`, is text. A decimal with a leading zero (`0123`) is
//! text, not an octal surprise. Aliases are copies of their anchor's node;
//! merge keys (`<<: *defaults`) are applied when their mapping ends
//! ([`merge_keys`]).

use std::fmt;

use serde::de::value::{MapAccessDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, Unexpected, Visitor};
use yaml_rust2::parser::Tag;
use yaml_rust2::scanner::TScalarStyle;

/// One YAML value, resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    /// A non-negative integer.
    Unsigned(u64),
    /// A negative integer.
    Signed(i64),
    Float(f64),
    Text(String),
    Sequence(Vec<Node>),
    /// Entries in file order; keys are usually text.
    Mapping(Vec<(Node, Node)>),
}

impl Node {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }

    /// Resolves a scalar as written: quoted or `!!str` is text, a plain one
    /// by the core schema.
    pub(crate) fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Node {
        let text_tag = tag.is_some_and(|tag| tag.suffix == "str" || tag.handle == "!");
        if style != TScalarStyle::Plain || text_tag {
            return Node::Text(text);
        }
        resolve_plain(text)
    }

    /// The value of the entry keyed `key`, if this is a mapping that has one.
    pub(crate) fn entry_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Mapping(entries) => entries
                .iter_mut()
                .find(|(k, _)| matches!(k, Node::Text(text) if text == key))
                .map(|(_, value)| value),
            _ => None,
        }
    }

    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Node::Null => Unexpected::Unit,
            Node::Bool(b) => Unexpected::Bool(*b),
            Node::Unsigned(n) => Unexpected::Unsigned(*n),
            Node::Signed(n) => Unexpected::Signed(*n),
            Node::Float(n) => Unexpected::Float(*n),
            Node::Text(text) => Unexpected::Str(text),
            Node::Sequence(_) => Unexpected::Seq,
            Node::Mapping(_) => Unexpected::Map,
        }
    }
}

/// Applies YAML merge keys (`<<: *defaults`, or `<<: [*a, *b]`): the
/// merged mappings' entries are added where the mapping does not set the
/// key itself; of several merged mappings, the earlier wins. A `<<` whose
/// value is not a mapping (or a list of them) is left in place, to be
/// reported as the unknown field it is.
pub(crate) fn merge_keys(entries: Vec<(Node, Node)>) -> Vec<(Node, Node)> {
    let is_merge = |key: &Node| matches!(key, Node::Text(text) if text == "<<");
    if !entries.iter().any(|(key, _)| is_merge(key)) {
        return entries;
    }
    let mut own = Vec::with_capacity(entries.len());
    let mut merged = Vec::new();
    for (key, value) in entries {
        if !is_merge(&key) {
            own.push((key, value));
            continue;
        }
        match value {
            Node::Mapping(entries) => merged.push(entries),
            Node::Sequence(items) if items.iter().all(|i| matches!(i, Node::Mapping(_))) => {
                merged.extend(items.into_iter().filter_map(|item| match item {
                    Node::Mapping(entries) => Some(entries),
                    _ => None,
                }));
            }
            other => own.push((key, other)),
        }
    }
    for (key, value) in merged.into_iter().flatten() {
        if !own.iter().any(|(existing, _)| *existing == key) {
            own.push((key, value));
        }
    }
    own
}

fn resolve_plain(text: String) -> Node {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Node::Null,
        "true" | "True" | "TRUE" => return Node::Bool(true),
        "false" | "False" | "FALSE" => return Node::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Node::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Node::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Node::Float(f64::NAN),
        _ => {}
    }
    if let Some(node) = resolve_int(&text) {
        return node;
    }
    let unsigned = text.trim_start_matches(['-', '+']);
    if unsigned.len() > 1
        && unsigned.starts_with('0')
        && unsigned.bytes().all(|b| b.is_ascii_digit())
    {
        return Node::Text(text);
    }
    if is_float(&text) {
        if let Ok(n) = text.parse::<f64>() {
            return Node::Float(n);
        }
    }
    Node::Text(text)
}

fn resolve_int(text: &str) -> Option<Node> {
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = unsigned.strip_prefix("0x") {
        (16, hex)
    } else if let Some(octal) = unsigned.strip_prefix("0o") {
        (8, octal)
    } else if let Some(binary) = unsigned.strip_prefix("0b") {
        (2, binary)
    } else {
        if unsigned.len() > 1 && unsigned.starts_with('0') {
            return None;
        }
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Too large for 64 bits: taken as a float, as YAML libraries do.
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if !negative {
        return Some(Node::Unsigned(magnitude));
    }
    0_i64.checked_sub_unsigned(magnitude).map(Node::Signed)
}

/// `[-+]? ( \.[0-9]+ | [0-9]+ ( \.[0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_float(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = usize::from(matches!(bytes.first(), Some(b'-' | b'+')));
    let digits = |i: &mut usize| {
        let start = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let whole = digits(&mut i);
    let mut fraction = 0;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        fraction = digits(&mut i);
    }
    if whole == 0 && fraction == 0 {
        return false;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == bytes.len()
}

/// A deserialization error: an unknown field kept as data (the field and
/// what was expected), everything else as serde's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeError {
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    Other(String),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::UnknownField { field, expected } => {
                write!(f, "unknown field `{field}`, ")?;
                match expected {
                    [] => f.write_str("there are no fields"),
                    [one] => write!(f, "expected `{one}`"),
                    [a, b] => write!(f, "expected `{a}` or `{b}`"),
                    [first, rest @ ..] => {
                        write!(f, "expected one of `{first}`")?;
                        for field in rest {
                            write!(f, ", `{field}`")?;
                        }
                        Ok(())
                    }
                }
            }
            DeError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        DeError::Other(message.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::UnknownField {
            field: field.to_string(),
            expected,
        }
    }

    /// As serde says it, in the file's terms: an empty YAML value is "empty",
    /// not serde's "unit value", and a key is "a field name".
    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        let expected = expected.to_string();
        let expected = match expected.as_str() {
            "field identifier" => "a field name",
            other => other,
        };
        match unexpected {
            Unexpected::Unit => {
                DeError::Other(format!("invalid type: empty value, expected {expected}"))
            }
            other => DeError::Other(format!("invalid type: {other}, expected {expected}")),
        }
    }
}

/// Reading a node in place: a part of the file is deserialized from the
/// tree without a copy, so it is still there to take a misspelled key out
/// of and read again.
impl<'de> IntoDeserializer<'de, DeError> for &'de Node {
    type Deserializer = &'de Node;

    fn into_deserializer(self) -> &'de Node {
        self
    }
}

impl<'de> Deserializer<'de> for &'de Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Node::Null => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(*b),
            Node::Unsigned(n) => visitor.visit_u64(*n),
            Node::Signed(n) => visitor.visit_i64(*n),
            Node::Float(n) => visitor.visit_f64(*n),
            Node::Text(text) => visitor.visit_borrowed_str(text),
            Node::Sequence(items) => {
                let mut access = SeqDeserializer::new(items.iter());
                let value = visitor.visit_seq(&mut access)?;
                access.end()?;
                Ok(value)
            }
            Node::Mapping(entries) => {
                let mut access = MapDeserializer::new(entries.iter().map(|(k, v)| (k, v)));
                let value = visitor.visit_map(&mut access)?;
                access.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Node::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            Node::Text(text) => visitor.visit_enum(text.as_str().into_deserializer()),
            Node::Mapping(entries) if entries.len() == 1 => {
                visitor.visit_enum(MapAccessDeserializer::new(MapDeserializer::new(
                    entries.iter().map(|(k, v)| (k, v)),
                )))
            }
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Node, E> {
                Ok(Node::Bool(b))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Node, E> {
                Ok(Node::Unsigned(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Node, E> {
                Ok(match u64::try_from(n) {
                    Ok(n) => Node::Unsigned(n),
                    Err(_) => Node::Signed(n),
                })
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Node, E> {
                Ok(Node::Float(n))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Node, E> {
                Ok(Node::Text(text.to_string()))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Node, E> {
                Ok(Node::Text(text))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Sequence(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Mapping(entries))
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(text: &str) -> Node {
        Node::scalar(text.to_string(), TScalarStyle::Plain, None)
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        assert_eq!(plain(""), Node::Null);
        assert_eq!(plain("~"), Node::Null);
        assert_eq!(plain("True"), Node::Bool(true));
        assert_eq!(plain("yes"), Node::Text("yes".into()));
        assert_eq!(plain("10"), Node::Unsigned(10));
        assert_eq!(plain("+10"), Node::Unsigned(10));
        assert_eq!(plain("-1"), Node::Signed(-1));
        assert_eq!(plain("0x1f"), Node::Unsigned(31));
        assert_eq!(plain("0o17"), Node::Unsigned(15));
        assert_eq!(plain("0123"), Node::Text("0123".into()));
        assert_eq!(plain("1.5"), Node::Float(1.5));
        assert_eq!(plain("1e3"), Node::Float(1000.0));
        assert_eq!(plain(".5"), Node::Float(0.5));
        assert_eq!(plain("-.inf"), Node::Float(f64::NEG_INFINITY));
        assert_eq!(
            plain("18446744073709551616"),
            Node::Float(1.8446744073709552e19)
        );
        assert_eq!(plain("1.2.0"), Node::Text("1.2.0".into()));
        assert_eq!(plain("inf"), Node::Text("inf".into()));
        assert_eq!(plain("5s"), Node::Text("5s".into()));
        assert_eq!(plain("127.0.0.1:80"), Node::Text("127.0.0.1:80".into()));
    }

    #[test]
    fn quoted_and_str_tagged_scalars_are_text() {
        let quoted = Node::scalar("10".into(), TScalarStyle::DoubleQuoted, None);
        assert_eq!(quoted, Node::Text("10".into()));
        let tag = Tag {
            handle: "tag:yaml.org,2002:".into(),
            suffix: "str".into(),
        };
        let tagged = Node::scalar("true".into(), TScalarStyle::Plain, Some(&tag));
        assert_eq!(tagged, Node::Text("true".into()));
    }

    #[test]
    fn unknown_fields_are_data_and_read_as_serde_writes_them() {
        let error: DeError = de::Error::unknown_field("wieght", &["name", "weight", "tls"]);
        assert_eq!(
            error,
            DeError::UnknownField {
                field: "wieght".into(),
                expected: &["name", "weight", "tls"]
            }
        );
        assert_eq!(
            error.to_string(),
            "unknown field `wieght`, expected one of `name`, `weight`, `tls`"
        );
        let two: DeError = de::Error::unknown_field("x", &["cert", "key"]);
        assert_eq!(
            two.to_string(),
            "unknown field `x`, expected `cert` or `key`"
        );
    }

    #[test]
    fn type_errors_speak_of_empty_values() {
        let error = u32::deserialize(&Node::Null).expect_err("null is no number");
        assert_eq!(error.to_string(), "invalid type: empty value, expected u32");
        let error = String::deserialize(&Node::Unsigned(5)).expect_err("a number is no string");
        assert_eq!(
            error.to_string(),
            "invalid type: integer `5`, expected a string"
        );
    }
}

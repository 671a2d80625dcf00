//! JSON in and out of a [`Node`], through serde, keeping keys in order (a
//! `serde_json::Value` would sort them) and each number as written.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::tree::{Map, Node, Scalar, Value, float_text};

/// `node` as indented JSON, ending with a newline.
pub fn write(node: &Node) -> String {
    let mut out = serde_json::to_string_pretty(node).expect("a Node always serializes: its keys are strings");
    out.push('\n');
    out
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Plain(b.to_string())))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Number(i.to_string())))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Number(u.to_string())))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Node, E> {
        let text = serde_json::Number::from_f64(f).map_or_else(|| float_text(f), |n| n.to_string());
        Ok(Node::Scalar(Scalar::Number(text)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::str(s)))
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Plain("null".into())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Node, A::Error> {
        let mut map = Map::default();
        let mut seen = HashSet::new();
        while let Some(key) = access.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key}")));
            }
            map.push(Scalar::Str(key), access.next_value()?);
        }
        Ok(Node::Map(map))
    }
}
impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Map(map) => {
                let mut m = serializer.serialize_map(None)?;
                for (key, value) in map.iter() {
                    m.serialize_entry(&json_key(key), value)?;
                }
                m.end()
            }
            Node::Seq(items) => {
                let mut s = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    s.serialize_element(item)?;
                }
                s.end()
            }
            Node::Scalar(s) => serialize_scalar(s, serializer),
        }
    }
}

/// JSON keys are strings: a key read as a number or boolean is written as
/// its text, as sigs.k8s.io/yaml converts it.
fn json_key(key: &Scalar) -> String {
    match key.value() {
        Value::Str(text) => text.to_owned(),
        _ => key.canonical().text().to_owned(),
    }
}

fn serialize_scalar<S: Serializer>(s: &Scalar, serializer: S) -> Result<S::Ok, S::Error> {
    if let Scalar::Number(text) = s {
        if let Ok(number) = text.parse::<serde_json::Number>() {
            return number.serialize(serializer);
        }
    }
    match s.value() {
        Value::Null => serializer.serialize_unit(),
        Value::Bool(b) => serializer.serialize_bool(b),
        Value::Int(i) => match (i64::try_from(i), u64::try_from(i)) {
            (Ok(i), _) => serializer.serialize_i64(i),
            (_, Ok(u)) => serializer.serialize_u64(u),
            _ => serializer.serialize_f64(i as f64),
        },
        Value::Float(f) if f.is_finite() => serializer.serialize_f64(f),
        Value::Float(f) => serializer.serialize_str(&float_text(f)),
        Value::Str(text) => serializer.serialize_str(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::yaml::documents;

    #[test]
    fn yaml_is_written_as_json_with_order_and_types() {
        let doc = documents("b: 0440\na: '0440'\nc: [yes, 1.5, ~, x]\n").unwrap().remove(0).0;
        assert_eq!(serde_json::to_string(&doc).unwrap(), r#"{"b":288,"a":"0440","c":[true,1.5,null,"x"]}"#);
    }

    #[test]
    fn json_round_trips_in_order() {
        let text = r#"{"z":1,"a":[true,null,1.25,-3,"s"],"m":{}}"#;
        let node: Node = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&node).unwrap(), text);
        let e = serde_json::from_str::<Node>("{\"a\": 1,\n \"a\": 2}").unwrap_err();
        assert!(e.to_string().starts_with("duplicate key a"), "{e}");
        assert_eq!(e.line(), 2);
    }
}

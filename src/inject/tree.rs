//! The tree `inject` edits: ordered maps, sequences and scalars that remember
//! how they were written.
//!
//! Why scalars keep their text: Kubernetes reads YAML 1.1 (sigs.k8s.io/yaml),
//! where a plain `0644` is the octal number 420 and a plain `yes` is `true`,
//! while YAML 1.2 readers see the string `0644` and the string `yes`. A scalar
//! written back exactly as it was read means the same to every reader, so
//! `inject` never re-spells a value it did not add. Where `inject` itself
//! needs a scalar's meaning (a `hostNetwork`, a `defaultMode` to compare), it
//! reads it as Kubernetes does: [`Scalar::value`].

/// A YAML or JSON node.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Map),
}

/// A scalar as it was written.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// Unquoted YAML (or a JSON `true`, `false`, `null`): its type is the
    /// reader's to resolve, see [`Scalar::value`].
    Plain(String),
    /// Quoted or block YAML, or a JSON string: always a string.
    Str(String),
    /// A JSON number, as written.
    Number(String),
}

/// What a scalar means to Kubernetes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
}

/// A mapping, in the order it was written. Keys are scalars: Kubernetes
/// manifests have no other kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map {
    entries: Vec<(Scalar, Node)>,
}

impl Scalar {
    /// A string scalar.
    pub fn str(text: impl Into<String>) -> Scalar {
        Scalar::Str(text.into())
    }

    /// The meaning, as sigs.k8s.io/yaml's YAML 1.1 reader (go-yaml v2) gives
    /// it for plain scalars: `~`/`null` and the empty scalar are null;
    /// `y`/`yes`/`on`/`true` and their opposites are booleans; integers may
    /// be signed, hexadecimal (`0x`), binary (`0b`), octal (`0o` or a leading
    /// `0`) and hold `_`. Timestamps stay strings here (no field `inject`
    /// reads is one).
    pub fn value(&self) -> Value<'_> {
        match self {
            Scalar::Str(text) => Value::Str(text),
            Scalar::Number(text) => number(text).unwrap_or(Value::Str(text)),
            Scalar::Plain(text) => resolve(text),
        }
    }

    /// The text as written.
    pub fn text(&self) -> &str {
        match self {
            Scalar::Plain(text) | Scalar::Str(text) | Scalar::Number(text) => text,
        }
    }

    /// The text when the scalar means a string.
    pub fn as_str(&self) -> Option<&str> {
        match self.value() {
            Value::Str(text) => Some(text),
            _ => None,
        }
    }

    /// Whether two scalars mean the same to Kubernetes (`0440` and `288`,
    /// `"a"` and `a`).
    pub fn same(&self, other: &Scalar) -> bool {
        match (self.value(), other.value()) {
            (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => a as f64 == b,
            (Value::Float(a), Value::Float(b)) => a == b || (a.is_nan() && b.is_nan()),
            (a, b) => a == b,
        }
    }

    /// A text two scalars share exactly when they are [`Scalar::same`]:
    /// how duplicate keys are found without comparing every pair.
    pub fn identity(&self) -> String {
        match self.value() {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("bool:{b}"),
            Value::Int(i) => format!("number:{i}"),
            Value::Float(f) if f.is_nan() => "nan".into(),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e18 => format!("number:{}", f as i128),
            Value::Float(f) => format!("float:{}", f.to_bits()),
            Value::Str(text) => format!("str:{text}"),
        }
    }

    /// The same meaning, spelled the one way every YAML and JSON reader
    /// agrees on: what `inject` writes for the values it adds.
    pub fn canonical(&self) -> Scalar {
        match self.value() {
            Value::Null => Scalar::Plain("null".into()),
            Value::Bool(b) => Scalar::Plain(b.to_string()),
            Value::Int(i) => Scalar::Plain(i.to_string()),
            Value::Float(_) | Value::Str(_) if matches!(self, Scalar::Number(_)) => self.clone(),
            Value::Float(f) => Scalar::Plain(float_text(f)),
            Value::Str(text) => Scalar::str(text),
        }
    }
}

/// A float as YAML writes it (`.inf`, `.nan`, or digits with a point).
pub fn float_text(f: f64) -> String {
    if f.is_nan() {
        ".nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { ".inf".into() } else { "-.inf".into() }
    } else if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

fn number(text: &str) -> Option<Value<'static>> {
    text.parse::<i128>().ok().map(Value::Int).or_else(|| text.parse::<f64>().ok().map(Value::Float))
}

/// go-yaml v2's resolution of a plain scalar (see [`Scalar::value`]).
fn resolve(text: &str) -> Value<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => return Value::Bool(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Value::Bool(false);
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if !text.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.')) {
        return Value::Str(text);
    }
    let plain = text.replace('_', "");
    if let Some(i) = integer(&plain) {
        return Value::Int(i);
    }
    if is_float(&plain) {
        if let Ok(f) = plain.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(text)
}

/// Go's `strconv.ParseInt(text, 0, 64)` (and `ParseUint`), as go-yaml v2 calls it.
fn integer(text: &str) -> Option<i128> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = digits.get(..2).map(str::to_ascii_lowercase);
    let (radix, body) = match lower.as_deref() {
        Some("0x") => (16, &digits[2..]),
        Some("0o") => (8, &digits[2..]),
        Some("0b") => (2, &digits[2..]),
        _ if digits.len() > 1 && digits.starts_with('0') => (8, &digits[1..]),
        _ => (10, digits),
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(body, radix).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&value).then_some(value)
}

/// go-yaml v2's `yamlStyleFloat`: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn is_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", fraction)) => digits(fraction),
        Some((whole, fraction)) => digits(whole) && (fraction.is_empty() || digits(fraction)),
        None => digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)))
}

impl Map {
    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = &(Scalar, Node)> {
        self.entries.iter()
    }

    /// The entries in order, values mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut (Scalar, Node)> {
        self.entries.iter_mut()
    }

    /// Whether a key meaning the same as `key` is present.
    pub fn contains(&self, key: &Scalar) -> bool {
        self.entries.iter().any(|(k, _)| k.same(key))
    }

    /// Appends an entry (the caller checks for duplicates).
    pub fn push(&mut self, key: Scalar, value: Node) {
        self.entries.push((key, value));
    }

    /// The value under the string key `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// The value under the string key `key`, mutable.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.entries.iter_mut().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// The scalar under `key`, when there is one.
    pub fn scalar(&self, key: &str) -> Option<&Scalar> {
        self.get(key).and_then(Node::as_scalar)
    }

    /// The string under `key`, when there is one.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.scalar(key).and_then(Scalar::as_str)
    }

    /// Sets `key` to `value`: in place when present, else appended (or
    /// inserted before `before`, when that key is present).
    pub fn set(&mut self, key: &str, value: Node, before: Option<&str>) {
        if let Some(slot) = self.get_mut(key) {
            *slot = value;
            return;
        }
        let at = before
            .and_then(|b| self.entries.iter().position(|(k, _)| k.as_str() == Some(b)))
            .unwrap_or(self.entries.len());
        self.entries.insert(at, (Scalar::str(key), value));
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let at = self.entries.iter().position(|(k, _)| k.as_str() == Some(key))?;
        Some(self.entries.remove(at).1)
    }

    /// The map under `key`, created (before `before`, if present) when the
    /// key is absent or null. `None` when the key holds something else.
    pub fn map_entry(&mut self, key: &str, before: Option<&str>) -> Option<&mut Map> {
        self.entry(key, before, || Node::Map(Map::default()))?.as_map_mut()
    }

    /// The sequence under `key`, created like [`Map::map_entry`].
    pub fn seq_entry(&mut self, key: &str, before: Option<&str>) -> Option<&mut Vec<Node>> {
        self.entry(key, before, || Node::Seq(Vec::new()))?.as_seq_mut()
    }

    fn entry(&mut self, key: &str, before: Option<&str>, empty: impl Fn() -> Node) -> Option<&mut Node> {
        if self.get(key).is_none_or(Node::is_null) {
            self.set(key, empty(), before);
        }
        self.get_mut(key)
    }
}

impl Node {
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Node::Map(map) => Some(map),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Map> {
        match self {
            Node::Map(map) => Some(map),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&Vec<Node>> {
        match self {
            Node::Seq(seq) => Some(seq),
            _ => None,
        }
    }

    pub fn as_seq_mut(&mut self) -> Option<&mut Vec<Node>> {
        match self {
            Node::Seq(seq) => Some(seq),
            _ => None,
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match self {
            Node::Scalar(scalar) => Some(scalar),
            _ => None,
        }
    }

    /// A null scalar (`key:` with nothing after it, `~`, `null`).
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Scalar(s) if s.value() == Value::Null)
    }

    /// The node at `path` (map keys), when every step is a map holding the key.
    pub fn at(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |node, key| node.as_map()?.get(key))
    }

    /// The node at `path`, mutable.
    pub fn at_mut(&mut self, path: &[&str]) -> Option<&mut Node> {
        path.iter().try_fold(self, |node, key| node.as_map_mut()?.get_mut(key))
    }

    /// `Ok` when `self` holds everything `wanted` holds, with the same
    /// meaning: every key of a wanted map (more keys are fine: the API server
    /// adds defaults such as `terminationMessagePath`), every item of a
    /// wanted sequence, in order and no more, and equal scalars. Else the
    /// path of the first difference, such as `.ports[0].containerPort`.
    pub fn covers(&self, wanted: &Node) -> Result<(), String> {
        match (self, wanted) {
            (Node::Map(have), Node::Map(want)) => {
                for (key, value) in want.iter() {
                    let name = key.as_str().unwrap_or("?");
                    let found = have.iter().find(|(k, _)| k.same(key)).ok_or_else(|| format!(".{name}"))?;
                    found.1.covers(value).map_err(|path| format!(".{name}{path}"))?;
                }
                Ok(())
            }
            (Node::Seq(have), Node::Seq(want)) if have.len() == want.len() => {
                for (i, (h, w)) in have.iter().zip(want).enumerate() {
                    h.covers(w).map_err(|path| format!("[{i}]{path}"))?;
                }
                Ok(())
            }
            (Node::Scalar(have), Node::Scalar(want)) if have.same(want) => Ok(()),
            _ => Err(String::new()),
        }
    }

    /// Whether two nodes mean the same (maps with the same keys, in any order).
    pub fn same(&self, other: &Node) -> bool {
        self.covers(other).is_ok() && other.covers(self).is_ok()
    }

    /// Every scalar spelled canonically (see [`Scalar::canonical`]).
    pub fn canonical(&self) -> Node {
        match self {
            Node::Scalar(s) => Node::Scalar(s.canonical()),
            Node::Seq(items) => Node::Seq(items.iter().map(Node::canonical).collect()),
            Node::Map(map) => {
                Node::Map(Map { entries: map.entries.iter().map(|(k, v)| (k.canonical(), v.canonical())).collect() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(text: &str) -> Value<'_> {
        resolve(text)
    }

    #[test]
    fn plain_scalars_mean_what_kubernetes_reads() {
        assert_eq!(plain("0440"), Value::Int(288));
        assert_eq!(plain("0o440"), Value::Int(288));
        assert_eq!(plain("0x1F"), Value::Int(31));
        assert_eq!(plain("0b101"), Value::Int(5));
        assert_eq!(plain("-12"), Value::Int(-12));
        assert_eq!(plain("1_000"), Value::Int(1000));
        assert_eq!(plain("0"), Value::Int(0));
        assert_eq!(plain("08"), Value::Float(8.0), "not octal: go-yaml falls back to a float");
        assert_eq!(plain("1.5"), Value::Float(1.5));
        assert_eq!(plain("1e3"), Value::Float(1000.0));
        assert_eq!(plain(".5"), Value::Float(0.5));
        assert_eq!(plain("yes"), Value::Bool(true));
        assert_eq!(plain("Off"), Value::Bool(false));
        assert_eq!(plain("y"), Value::Bool(true));
        assert_eq!(plain("~"), Value::Null);
        assert_eq!(plain(""), Value::Null);
        for text in ["10m", "128Mi", "1.2.3", "0x", "-", "+", ".", "1e", "e3", "v1", "2001-12-14", "1:20"] {
            assert_eq!(plain(text), Value::Str(text), "{text}");
        }
    }

    #[test]
    fn canonical_spellings_mean_the_same() {
        for text in ["0440", "yes", "~", "1.5", "1e3", ".inf", "-.inf", "12", "0x10", "abc"] {
            let s = Scalar::Plain(text.into());
            assert!(s.same(&s.canonical()), "{text} -> {:?}", s.canonical());
        }
        assert_eq!(Scalar::Plain("0440".into()).canonical(), Scalar::Plain("288".into()));
        assert_eq!(Scalar::Plain("abc".into()).canonical(), Scalar::str("abc"));
        assert_eq!(Scalar::Number("1e300".into()).canonical(), Scalar::Number("1e300".into()));
        let same = [("0440", "288"), ("yes", "true"), ("~", ""), ("1.0", "1"), (".nan", ".NaN")];
        for (a, b) in same {
            let (a, b) = (Scalar::Plain(a.into()), Scalar::Plain(b.into()));
            assert!(a.same(&b) && a.identity() == b.identity(), "{a:?} {b:?}");
        }
        assert_ne!(Scalar::Plain("1".into()).identity(), Scalar::str("1").identity());
    }

    #[test]
    fn covers_allows_added_keys_but_not_changed_values() {
        let map = |pairs: &[(&str, Node)]| {
            let mut m = Map::default();
            for (k, v) in pairs {
                m.push(Scalar::str(*k), v.clone());
            }
            Node::Map(m)
        };
        let want = map(&[("mode", Node::Scalar(Scalar::Plain("0440".into())))]);
        let have =
            map(&[("mode", Node::Scalar(Scalar::Number("288".into()))), ("extra", Node::Scalar(Scalar::str("x")))]);
        assert_eq!(have.covers(&want), Ok(()));
        let other = map(&[("mode", Node::Scalar(Scalar::Plain("0444".into())))]);
        assert_eq!(other.covers(&want), Err(".mode".into()));
        let list = Node::Seq(vec![want.clone(), want.clone()]);
        assert_eq!(Node::Seq(vec![have.clone()]).covers(&list), Err(String::new()));
        assert_eq!(Node::Seq(vec![have.clone(), other]).covers(&list), Err("[1].mode".into()));
    }
}

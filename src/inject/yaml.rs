//! Reading one YAML document into a [`Node`], with saphyr-parser's events.
//!
//! Aliases are expanded and merge keys (`<<`) applied, as Kubernetes' reader
//! does, so that `inject` sees the pod it edits as the API server will.
//! Every error carries its line and column.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use super::tree::{Map, Node, Scalar};

/// A document that cannot be read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} column {column}: {message}")]
pub struct SyntaxError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl SyntaxError {
    fn at(span: Span, message: impl Into<String>) -> SyntaxError {
        SyntaxError { line: span.start.line(), column: span.start.col() + 1, message: message.into() }
    }
}

/// The documents of `text` (none when it holds only comments), each with
/// the line of its first token.
pub fn documents(text: &str) -> Result<Vec<(Node, usize)>, SyntaxError> {
    let mut builder = Builder::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_owned(),
        })?;
        builder.event(event, span)?;
    }
    Ok(builder.documents)
}

/// A collection being read.
enum Open {
    Seq(Vec<Node>),
    /// The map, the key read whose value comes next, and the
    /// [`Scalar::identity`] of every key so far.
    Map(Map, Option<(Scalar, Span)>, HashSet<String>),
}

#[derive(Default)]
struct Builder {
    /// Open collections, innermost last, each with its anchor (0: none) and start.
    open: Vec<(Open, usize, Span)>,
    anchors: HashMap<usize, Node>,
    documents: Vec<(Node, usize)>,
    /// The line where the current document's first node starts.
    first_line: Option<usize>,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        match event {
            Event::DocumentStart(_) => self.anchors.clear(),
            Event::Scalar(text, style, anchor, tag) => {
                let scalar = scalar(text, style, tag.as_deref(), span)?;
                self.complete(Node::Scalar(scalar), anchor, span)?;
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| SyntaxError::at(span, "unknown alias"))?;
                self.complete(node, 0, span)?;
            }
            Event::SequenceStart(anchor, tag) => {
                collection_tag(tag.as_deref(), "seq", span)?;
                self.start(span);
                self.open.push((Open::Seq(Vec::new()), anchor, span));
            }
            Event::MappingStart(anchor, tag) => {
                collection_tag(tag.as_deref(), "map", span)?;
                self.start(span);
                self.open.push((Open::Map(Map::default(), None, HashSet::new()), anchor, span));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (open, anchor, start) = self.open.pop().expect("the parser balances starts and ends");
                let node = match open {
                    Open::Seq(items) => Node::Seq(items),
                    Open::Map(map, _, _) => Node::Map(merge(map, start)?),
                };
                self.complete(node, anchor, start)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn start(&mut self, span: Span) {
        if self.open.is_empty() && self.first_line.is_none() {
            self.first_line = Some(span.start.line());
        }
    }

    /// A finished node: the value of its parent, or the document.
    fn complete(&mut self, node: Node, anchor: usize, span: Span) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.start(span);
        match self.open.last_mut() {
            None => {
                let line = self.first_line.take().unwrap_or(span.start.line());
                // An explicit `---` with nothing after it is an empty document.
                if !node.is_null() {
                    self.documents.push((node, line));
                }
            }
            Some((Open::Seq(items), _, _)) => items.push(node),
            Some((Open::Map(_, key @ None, seen), _, _)) => {
                let Node::Scalar(k) = node else {
                    return Err(SyntaxError::at(span, "a mapping key must be a scalar in a Kubernetes manifest"));
                };
                if !seen.insert(k.identity()) {
                    return Err(SyntaxError::at(span, format!("duplicate key {}", k.text())));
                }
                *key = Some((k, span));
            }
            Some((Open::Map(map, key, _), _, _)) => {
                let (k, _) = key.take().expect("matched Some above");
                map.push(k, node);
            }
        }
        Ok(())
    }
}

/// A scalar event as a [`Scalar`]: plain ones keep their text for the reader
/// to resolve, the others are strings. Core-schema tags decide instead.
fn scalar(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&Tag>, span: Span) -> Result<Scalar, SyntaxError> {
    let text = text.into_owned();
    let Some(tag) = tag else {
        return Ok(if style == ScalarStyle::Plain { Scalar::Plain(text) } else { Scalar::Str(text) });
    };
    match (tag.is_yaml_core_schema(), tag.suffix.as_str()) {
        (true, "str") => Ok(Scalar::Str(text)),
        (true, "int" | "float" | "bool" | "null") => Ok(Scalar::Plain(text)),
        // The non-specific tag `!`: a string, as a quoted scalar.
        (false, "") if tag.handle == "!" => Ok(Scalar::Str(text)),
        _ => Err(SyntaxError::at(span, format!("unsupported tag {tag}"))),
    }
}

fn collection_tag(tag: Option<&Tag>, expected: &str, span: Span) -> Result<(), SyntaxError> {
    match tag {
        Some(tag) if !(tag.is_yaml_core_schema() && tag.suffix == expected) => {
            Err(SyntaxError::at(span, format!("unsupported tag {tag}")))
        }
        _ => Ok(()),
    }
}

/// Applies merge keys (`<<: *base` or `<<: [*a, *b]`): the merged maps'
/// keys take the place of the `<<` entry, except those the map sets itself.
fn merge(map: Map, span: Span) -> Result<Map, SyntaxError> {
    let is_merge = |k: &Scalar| matches!(k, Scalar::Plain(t) if t == "<<");
    if !map.iter().any(|(k, _)| is_merge(k)) {
        return Ok(map);
    }
    let own: Vec<Scalar> = map.iter().filter(|(k, _)| !is_merge(k)).map(|(k, _)| k.clone()).collect();
    let mut merged = Map::default();
    for (key, value) in map.iter() {
        if !is_merge(key) {
            merged.push(key.clone(), value.clone());
            continue;
        }
        let sources: Vec<&Node> = match value {
            Node::Seq(items) => items.iter().collect(),
            other => vec![other],
        };
        for source in sources {
            let source = source.as_map().ok_or_else(|| SyntaxError::at(span, "a merge key (<<) must name mappings"))?;
            for (k, v) in source.iter() {
                if !own.iter().any(|o| o.same(k)) && !merged.contains(k) {
                    merged.push(k.clone(), v.clone());
                }
            }
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::tree::Value;

    fn one(text: &str) -> Node {
        let mut docs = documents(text).unwrap();
        assert_eq!(docs.len(), 1, "{text}");
        docs.remove(0).0
    }

    #[test]
    fn scalars_keep_how_they_were_written() {
        let doc = one("a: 0440\nb: '0440'\nc: |\n  x\nd: yes\ne: !!str 12\nf: !!int '12'\ng:\n");
        let map = doc.as_map().unwrap();
        assert_eq!(map.scalar("a"), Some(&Scalar::Plain("0440".into())));
        assert_eq!(map.scalar("a").unwrap().value(), Value::Int(288));
        assert_eq!(map.scalar("b"), Some(&Scalar::str("0440")));
        assert_eq!(map.scalar("c"), Some(&Scalar::str("x\n")));
        assert_eq!(map.scalar("d").unwrap().value(), Value::Bool(true));
        assert_eq!(map.scalar("e"), Some(&Scalar::str("12")));
        assert_eq!(map.scalar("f").unwrap().value(), Value::Int(12));
        assert!(map.get("g").unwrap().is_null());
    }

    #[test]
    fn aliases_and_merge_keys_are_resolved() {
        // (Not `y` as a key: YAML 1.1 reads it as `true`.)
        let doc = one("base: &b {p: 1, q: 2}\nuse:\n  <<: *b\n  q: 3\nlist: [*b]\n");
        assert_eq!(doc.at(&["use", "p"]).and_then(Node::as_scalar), Some(&Scalar::Plain("1".into())));
        assert_eq!(doc.at(&["use", "q"]).and_then(Node::as_scalar), Some(&Scalar::Plain("3".into())));
        assert_eq!(doc.at(&["list"]).and_then(Node::as_seq).map(Vec::len), Some(1));
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = documents("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.line >= 2, "{e}");
        let e = documents("a: 1\n  b: 2\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 4), "{e}");
        let e = documents("a: 1\na: 2\n").unwrap_err();
        assert_eq!((e.line, e.column, e.message.as_str()), (2, 1, "duplicate key a"));
        let e = documents("a: !custom 1\n").unwrap_err();
        assert!(e.message.contains("unsupported tag"), "{e}");
    }

    #[test]
    fn comments_and_empty_documents_are_no_documents() {
        assert!(documents("# only a comment\n").unwrap().is_empty());
        assert!(documents("---\n").unwrap().is_empty());
        assert_eq!(documents("# c\n\na: 1\n").unwrap()[0].1, 3);
    }
}

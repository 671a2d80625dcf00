//! Writing a [`Node`] back as block YAML.
//!
//! Plain scalars are written as they were read (so `0644` stays octal to
//! Kubernetes); strings are written plain only when no YAML reader, 1.1 or
//! 1.2, could take them for anything else, else quoted, or as a literal
//! block when they span lines.

use super::tree::{Node, Scalar, Value, float_text};

/// `node` as a block YAML document (no `---`), ending with a newline.
pub fn yaml(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map(map) if map.iter().next().is_some() => block(node, 0, &mut out),
        Node::Seq(items) if !items.is_empty() => block(node, 0, &mut out),
        other => {
            inline(other, 0, &mut out);
        }
    }
    out
}

/// A non-empty map or sequence whose lines start at column `indent`.
fn block(node: &Node, indent: usize, out: &mut String) {
    match node {
        Node::Map(map) => {
            for (key, value) in map.iter() {
                out.push_str(&" ".repeat(indent));
                entry(key, value, indent, out);
            }
        }
        Node::Seq(items) => {
            for item in items {
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                inline(item, indent + 2, out);
            }
        }
        Node::Scalar(_) => unreachable!("block() is only called for collections"),
    }
}

/// `key: value`, the key already indented to `indent`.
fn entry(key: &Scalar, value: &Node, indent: usize, out: &mut String) {
    out.push_str(&key_text(key));
    out.push(':');
    match value {
        Node::Map(map) if map.iter().next().is_some() => {
            out.push('\n');
            block(value, indent + 2, out);
        }
        Node::Seq(items) if !items.is_empty() => {
            out.push('\n');
            block(value, indent + 2, out);
        }
        other => {
            out.push(' ');
            inline(other, indent + 2, out);
        }
    }
}

/// A node that starts where the cursor is (after `- ` or `key: `), whose
/// further lines start at column `indent`.
fn inline(node: &Node, indent: usize, out: &mut String) {
    match node {
        Node::Scalar(s) => {
            out.push_str(&scalar(s, indent));
            out.push('\n');
        }
        Node::Map(map) => {
            let mut entries = map.iter();
            let Some((key, value)) = entries.next() else {
                out.push_str("{}\n");
                return;
            };
            entry(key, value, indent, out);
            for (key, value) in entries {
                out.push_str(&" ".repeat(indent));
                entry(key, value, indent, out);
            }
        }
        Node::Seq(items) => {
            let Some((first, rest)) = items.split_first() else {
                out.push_str("[]\n");
                return;
            };
            out.push_str("- ");
            inline(first, indent + 2, out);
            for item in rest {
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                inline(item, indent + 2, out);
            }
        }
    }
}

/// A key: always on one line.
fn key_text(key: &Scalar) -> String {
    match key {
        Scalar::Plain(text) if plain_safe(text) => text.clone(),
        Scalar::Number(text) => text.clone(),
        other => match other.value() {
            Value::Str(text) if string_plain_safe(text) => text.to_owned(),
            Value::Str(text) => quoted(text),
            _ => scalar(&other.canonical(), 0),
        },
    }
}

/// A scalar value; block scalars' lines start at column `indent`.
fn scalar(s: &Scalar, indent: usize) -> String {
    match s {
        Scalar::Plain(text) if plain_safe(text) => text.clone(),
        Scalar::Number(text) => text.clone(),
        Scalar::Plain(_) => match s.value() {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => float_text(f),
            Value::Str(text) => string(text, indent),
        },
        Scalar::Str(text) => string(text, indent),
    }
}

fn string(text: &str, indent: usize) -> String {
    if string_plain_safe(text) {
        text.to_owned()
    } else if let Some(block) = literal(text, indent) {
        block
    } else {
        quoted(text)
    }
}

/// Characters a YAML scalar must escape: controls, and Unicode's line
/// breaks and byte-order mark, which readers may take as whitespace.
fn special(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// Whether text read as a plain scalar can be written back plain, on one
/// line, in block context, and be read as the same text.
fn plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let indicator = "-?:,[]{}#&*!|>'\"%@`".contains(first);
    let dash_like = matches!(first, '-' | '?' | ':') && text.chars().nth(1).is_some_and(|c| c != ' ');
    (!indicator || dash_like)
        && !text.starts_with("---")
        && !text.starts_with("...")
        && !text.starts_with(char::is_whitespace)
        && !text.ends_with(char::is_whitespace)
        && !text.ends_with(':')
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.contains(":\t")
        && !text.contains("\t#")
        && !text.chars().any(special)
}

/// Whether a string can be written plain and still be read as this string
/// by every reader: it starts with a letter, `/` or `_` (so it is no number,
/// date or special float in YAML 1.1 or 1.2) and is none of the words YAML
/// 1.1 reads as booleans or null.
fn string_plain_safe(text: &str) -> bool {
    const WORDS: [&str; 9] = ["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    text.starts_with(|c: char| c.is_alphabetic() || c == '/' || c == '_')
        && !WORDS.iter().any(|w| w.eq_ignore_ascii_case(text))
        && !text.contains('\t')
        && plain_safe(text)
}

/// A string of several lines as a literal block (`|`, `|-` or `|+`), when
/// its lines can be written as they are.
fn literal(text: &str, indent: usize) -> Option<String> {
    let body = text.trim_end_matches('\n');
    let trailing = text.len() - body.len();
    let writable = text.contains('\n')
        && !body.is_empty()
        && !body.starts_with([' ', '\t', '\n'])
        && !text.chars().any(|c| special(c) && c != '\n' && c != '\t')
        && body.split('\n').all(|line| line.is_empty() || !line.trim().is_empty());
    if !writable {
        return None;
    }
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let mut out = format!("|{chomp}");
    for line in text.split('\n').take(body.split('\n').count() + trailing.saturating_sub(1)) {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&" ".repeat(indent));
            out.push_str(line);
        }
    }
    Some(out)
}

/// A double-quoted string: escapes only what YAML needs.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if special(c) => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::yaml::documents;

    fn read(text: &str) -> Node {
        documents(text).unwrap().remove(0).0
    }

    #[test]
    fn strings_round_trip_whatever_they_hold() {
        let strings = [
            "plain",
            "0440",
            "yes",
            "Y",
            "null",
            "~",
            "",
            " lead",
            "trail ",
            "a: b",
            "a #b",
            "a:",
            "-x",
            "- x",
            "#c",
            "'q'",
            "\"d\"",
            "two\nlines",
            "two\nlines\n",
            "end\n\n",
            "\n lead",
            " x\ny",
            "tab\there",
            "a\r\nb",
            "bell\u{7}",
            "nel\u{85}x",
            "ls\u{2028}x",
            "1.5",
            "1e3",
            "2001-12-14",
            "1:20",
            ".inf",
            "<<",
            "@at",
            "é",
            "--- a",
            "... b",
            "x\n  indented\n\nblank",
            "ws line\n  \nx",
            "/readyz",
            "http://127.0.0.1:8080",
            "a,b",
            "{x}",
        ];
        for text in strings {
            let mut map = crate::inject::tree::Map::default();
            map.push(Scalar::str(text), Node::Seq(vec![Node::Scalar(Scalar::str(text))]));
            let doc = Node::Map(map.clone());
            let written = yaml(&doc);
            let back = read(&written);
            let (key, value) = back.as_map().unwrap().iter().next().unwrap().clone();
            assert_eq!(key.value(), Value::Str(text), "key {text:?} written as {written}");
            let item = value.as_seq().unwrap()[0].as_scalar().unwrap().clone();
            assert_eq!(item.value(), Value::Str(text), "{text:?} written as {written}");
        }
    }

    #[test]
    fn plain_scalars_are_written_as_read() {
        let text =
            "mode: 0440\non: yes\nlist:\n  - 1_000\n  - ~\nempty:\nnested:\n  - a: 1\n    b:\n      - x\n  - []\n";
        let doc = read(text);
        let written = yaml(&doc);
        assert!(written.contains("mode: 0440\n"), "{written}");
        assert!(written.contains("on: yes\n"), "{written}");
        assert!(read(&written).same(&doc), "{written}");
        assert_eq!(yaml(&read(&written)), written);
    }
}

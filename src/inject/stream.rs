//! Splitting an input into its documents, each kept with its text, so that
//! an object `inject` leaves alone is written back byte for byte (comments,
//! quoting and Helm's `# Source:` lines included).
//!
//! YAML documents are split at `---` and `...` lines: the YAML spec forbids
//! both at the start of a line inside any scalar, so they always separate
//! documents. JSON input is a stream of values (`kubectl get -o json` gives
//! one, a `List` when it lists several).

use std::fmt;

use super::tree::Node;
use super::yaml;

/// How an input was written, and so how it is written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// One document of an input.
#[derive(Debug)]
pub struct Document {
    pub node: Node,
    /// The document as read: YAML from its `---` line on (one is added when
    /// it had none), or one JSON value.
    pub text: String,
    /// The comment lines that open a YAML document (Helm's `# Source:`),
    /// kept when the document is rewritten.
    pub comments: String,
    /// Where the document starts in its input (1-based line).
    pub line: usize,
}

/// An input that cannot be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The file, or `<stdin>`.
    pub name: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: line {} column {}: {}", self.name, self.line, self.column, self.message)
    }
}

/// `bytes` as text, or where it stops being UTF-8. A byte-order mark is dropped.
pub fn decode(name: &str, bytes: Vec<u8>) -> Result<String, InputError> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text.strip_prefix('\u{feff}').map(str::to_owned).unwrap_or(text)),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let valid = std::str::from_utf8(valid).expect("valid_up_to() bytes are UTF-8");
            let (line, column) = position(valid);
            Err(InputError { name: name.into(), line, column, message: "not UTF-8 text".into() })
        }
    }
}

/// The 1-based line and column just after `before`.
fn position(before: &str) -> (usize, usize) {
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The documents of input `name`, and its format: JSON when it starts
/// with `{` or `[`, else YAML. Documents without content are left out.
pub fn read(name: &str, text: &str) -> Result<(Format, Vec<Document>), InputError> {
    if text.trim_start().starts_with(['{', '[']) {
        Ok((Format::Json, json_documents(name, text)?))
    } else {
        Ok((Format::Yaml, yaml_documents(name, text)?))
    }
}

fn json_documents(name: &str, text: &str) -> Result<Vec<Document>, InputError> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Node>();
    let mut documents = Vec::new();
    let mut start = 0;
    while let Some(node) = stream.next() {
        let node = node.map_err(|e| {
            let message = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
            // serde_json says column 0 at the start of a line (an early end).
            InputError { name: name.into(), line: e.line(), column: e.column().max(1), message }
        })?;
        let end = stream.byte_offset();
        let raw = &text[start..end];
        let offset = start + (raw.len() - raw.trim_start().len());
        documents.push(Document {
            node,
            text: format!("{}\n", raw.trim()),
            comments: String::new(),
            line: position(&text[..offset]).0,
        });
        start = end;
    }
    Ok(documents)
}

/// Whether `line` (without its line break) is the marker `marker` (`---`
/// or `...`), alone or followed by a space, a tab or more content.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// The pieces of a YAML stream between document markers, each with the
/// 1-based line it starts on. Directives (`%YAML`) before a `---` belong to
/// the document that `---` starts.
fn chunks(text: &str) -> Vec<(&str, usize)> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    // Where the directives just before the next `---` begin, if any.
    let mut directives: Option<(usize, usize)> = None;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_marker(bare, "---") {
            let (split, split_line) = directives.take().unwrap_or((offset, number + 1));
            if split > start {
                chunks.push((&text[start..split], start_line));
                (start, start_line) = (split, split_line);
            }
        } else if bare.starts_with('%') {
            directives.get_or_insert((offset, number + 1));
        } else if !bare.trim().is_empty() && !bare.trim_start().starts_with('#') {
            directives = None;
        }
        offset += line.len();
        if is_marker(bare, "...") {
            chunks.push((&text[start..offset], start_line));
            (start, start_line) = (offset, number + 2);
        }
    }
    if offset > start {
        chunks.push((&text[start..offset], start_line));
    }
    chunks
}

fn yaml_documents(name: &str, text: &str) -> Result<Vec<Document>, InputError> {
    let mut documents = Vec::new();
    for (chunk, first_line) in chunks(text) {
        let error = |line: usize, column: usize, message: String| InputError {
            name: name.into(),
            line: first_line + line - 1,
            column,
            message,
        };
        let mut parsed = yaml::documents(chunk).map_err(|e| error(e.line, e.column, e.message))?;
        if parsed.len() > 1 {
            // Only directives (`%YAML`) between documents can bring this about.
            return Err(error(parsed[1].1, 1, "a second document without a --- line before it".into()));
        }
        let Some((node, line)) = parsed.pop() else {
            continue;
        };
        // A chunk that opens with `---` (or directives and `---`) keeps it.
        let marked =
            chunk.lines().next().is_some_and(|l| is_marker(l.trim_end_matches('\r'), "---") || l.starts_with('%'));
        let mut text = if marked { chunk.to_owned() } else { format!("---\n{chunk}") };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        documents.push(Document { node, comments: opening_comments(chunk, marked), text, line: first_line + line - 1 });
    }
    Ok(documents)
}

/// The comment (and blank) lines at the top of a chunk, after its
/// directives and `---`.
fn opening_comments(chunk: &str, marked: bool) -> String {
    let mut lines = chunk.split_inclusive('\n').peekable();
    if marked {
        while lines.next_if(|l| l.starts_with('%') || l.trim().is_empty() || l.starts_with('#')).is_some() {}
        lines.next_if(|l| is_marker(l.trim_end_matches(['\n', '\r']), "---"));
    }
    lines
        .take_while(|line| line.trim().is_empty() || line.trim_start().starts_with('#'))
        .filter(|line| !line.trim().is_empty())
        .map(|line| if line.ends_with('\n') { line.to_owned() } else { format!("{line}\n") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_splits_at_markers_and_keeps_text() {
        let text = "# Source: a.yaml\nkind: A\n---\n# Source: b.yaml\nkind: B\n--- # c\nkind: C\n...\n---\n# empty\n";
        let (format, docs) = read("x", text).unwrap();
        assert_eq!(format, Format::Yaml);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].text, "---\n# Source: a.yaml\nkind: A\n");
        assert_eq!(docs[0].comments, "# Source: a.yaml\n");
        assert_eq!(docs[0].line, 2);
        assert_eq!(docs[1].text, "---\n# Source: b.yaml\nkind: B\n");
        assert_eq!(docs[1].comments, "# Source: b.yaml\n");
        assert_eq!(docs[2].text, "--- # c\nkind: C\n...\n");
        assert_eq!(docs[2].line, 7);
    }

    #[test]
    fn directives_go_with_the_document_they_open() {
        let text = "kind: A\n...\n%YAML 1.1\n---\n# c\nkind: B\n";
        let (_, docs) = read("x", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].text, "%YAML 1.1\n---\n# c\nkind: B\n");
        assert_eq!(docs[1].comments, "# c\n");
        assert_eq!(docs[1].line, 6);
    }

    #[test]
    fn errors_are_placed_in_the_whole_input() {
        let e = read("in.yaml", "kind: A\n---\nkind: B\n  bad: indent\n").unwrap_err();
        assert_eq!((e.line, e.column), (4, 6), "{e}");
        assert!(e.to_string().starts_with("in.yaml: line 4 column 6: "), "{e}");
        let e = read("-", "{\"kind\": \"A\"}\n{\"kind\": }").unwrap_err();
        assert_eq!((e.line, e.column), (2, 10), "{e}");
        assert_eq!(read("-", "{\"kind\": \"A\",\n").unwrap_err().column, 1);
        assert!(!e.message.contains("line"), "{e}");
    }

    #[test]
    fn json_is_a_stream_of_values() {
        let (format, docs) = read("x", " {\"kind\": \"A\"}\n\n{\"kind\": \"B\",\n \"b\": 1}").unwrap();
        assert_eq!(format, Format::Json);
        assert_eq!(
            docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
            ["{\"kind\": \"A\"}\n", "{\"kind\": \"B\",\n \"b\": 1}\n"]
        );
        assert_eq!(docs[1].line, 3);
    }

    #[test]
    fn invalid_utf8_is_placed() {
        let e = decode("f", b"a: 1\nb: \xff\n".to_vec()).unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
        assert_eq!(decode("f", "\u{feff}a: 1".as_bytes().to_vec()).unwrap(), "a: 1");
    }
}

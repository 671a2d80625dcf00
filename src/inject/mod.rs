//! `truedat-auth-proxy inject` (SPEC §1, §10): adds the proxy beside the
//! tool in every pod template of a stream of Kubernetes manifests, for a
//! pipe (`kubectl get … -o yaml | … inject | kubectl apply -f -`) or as a
//! Helm post-renderer (stdin to stdout).
//!
//! - [`stream`] splits each input into documents (YAML or JSON), keeping
//!   their text: an object left alone is written back byte for byte;
//! - [`yaml`] and the JSON half of [`json`] read a document into the
//!   [`tree`], whose scalars remember how they were written;
//! - [`object`] finds the pod template of each workload (and the items of a
//!   `List`), and [`pod`] adds what [`sidecar`] derives from the base
//!   manifest the binary embeds;
//! - [`emit`] and [`json`] write a changed document back.
//!
//! Nothing here runs in the proxy: the command reads its input, writes its
//! output and exits. The whole output is built before any of it is written,
//! so a refusal leaves stdout empty.

mod emit;
mod json;
pub mod names;
mod object;
mod pod;
mod sidecar;
mod stream;
pub mod tree;
mod yaml;

pub use pod::ANNOTATION;
pub use sidecar::{Choices, PROXY};
pub use stream::InputError;
pub use yaml::documents;

use std::io::Read;
use std::path::PathBuf;

use object::Problem;
use stream::Format;

/// The command line of `inject`, checked.
#[derive(Clone, Debug)]
pub struct Options {
    pub sidecar: Choices,
    /// `--tool-env` names.
    pub tool_env: Vec<String>,
    pub only_annotated: bool,
}

/// One input: a file's name (or `<stdin>`) and its text.
#[derive(Clone, Debug)]
pub struct Input {
    pub name: String,
    pub text: String,
}

/// What a successful run writes.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    /// One line per object (what was done or why not), and notes.
    pub stderr: Vec<String>,
}

/// Why a run writes nothing on stdout.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A FILE that cannot be read (exit 2).
    #[error("{0}")]
    Read(String),
    /// Input that does not parse, or a document that is no object (exit 2).
    #[error("{0}")]
    Input(InputError),
    /// An object inject will not change (exit 2); the line names it.
    #[error("{0}")]
    Refused(String),
    /// The manifests embedded in the binary lack a part (exit 1; a bug).
    #[error("the manifests built into this binary are incomplete: {0}")]
    Embedded(String),
}

/// The inputs `FILE...` name, read whole: standard input when there are
/// none, and for `-`. Text that is not UTF-8 is an [`InputError`].
pub fn read_inputs(files: &[PathBuf]) -> Result<Vec<Input>, Error> {
    let stdin = [PathBuf::from("-")];
    let files = if files.is_empty() { &stdin[..] } else { files };
    let mut inputs = Vec::new();
    for file in files {
        let (name, bytes) = if file.as_os_str() == "-" {
            let mut bytes = Vec::new();
            ("<stdin>".to_owned(), std::io::stdin().read_to_end(&mut bytes).map(|_| bytes))
        } else {
            (file.display().to_string(), std::fs::read(file))
        };
        let bytes = bytes.map_err(|e| Error::Read(format!("cannot read {name}: {e}")))?;
        let text = stream::decode(&name, bytes).map_err(Error::Input)?;
        inputs.push(Input { name, text });
    }
    Ok(inputs)
}

/// The URL `--tool-env` variables get: the proxy's default listen address.
pub fn tool_url() -> String {
    format!("http://{}", crate::config::Listen::default().address)
}

/// The port of the proxy's default listen address.
fn listen_port() -> u16 {
    crate::config::Listen::default().address.port()
}

/// Injects into every input, in order.
pub fn run(options: &Options, inputs: &[Input]) -> Result<Output, Error> {
    let sidecar = sidecar::build(&options.sidecar).map_err(Error::Embedded)?;
    let url = tool_url();
    let plan = pod::Plan {
        sidecar: &sidecar,
        tool_env: &options.tool_env,
        tool_url: &url,
        listen_port: listen_port(),
        only_annotated: options.only_annotated,
    };
    let mut sources = Vec::new();
    for input in inputs {
        let (format, documents) = stream::read(&input.name, &input.text).map_err(Error::Input)?;
        sources.push((input, format, documents));
    }
    let format = if sources.iter().all(|(_, format, _)| *format == Format::Json) { Format::Json } else { Format::Yaml };
    let mut output = Output { stdout: String::new(), stderr: Vec::new() };
    for (input, source_format, documents) in sources {
        for mut document in documents {
            let changed =
                object::visit(&mut document.node, &plan, &mut output.stderr).map_err(|problem| match problem {
                    Problem::Refused(line) => Error::Refused(line),
                    Problem::Invalid(message) => {
                        Error::Input(InputError { name: input.name.clone(), line: document.line, column: 1, message })
                    }
                })?;
            output.stdout.push_str(&write(&document, changed, source_format, format));
        }
    }
    Ok(output)
}

/// A document as it goes out: its own text when unchanged, else rewritten
/// in the output's format (a YAML document keeps its opening comments).
fn write(document: &stream::Document, changed: bool, source: Format, output: Format) -> String {
    match (changed, output) {
        (false, Format::Json) => document.text.clone(),
        (false, Format::Yaml) if source == Format::Json => format!("---\n{}", document.text),
        (false, Format::Yaml) => document.text.clone(),
        (true, Format::Json) => json::write(&document.node),
        (true, Format::Yaml) => format!("---\n{}{}", document.comments, emit::yaml(&document.node)),
    }
}

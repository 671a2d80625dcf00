//! A small parser for the Prometheus text exposition format (version 0.0.4),
//! enough to check what `/metrics` says without string matching: `# TYPE`
//! lines, samples with labels (escapes included) and values such as `+Inf`.

use std::collections::{BTreeMap, HashMap};

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The text as scraped, for failure messages.
    pub text: String,
    /// Family name → its `# TYPE` (`counter`, `gauge`, `histogram`, `summary`, `untyped`).
    pub types: HashMap<String, String>,
    /// Every sample, in the order they appeared.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses `text`; an error names the offending line.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut scrape = Scrape { text: text.to_owned(), ..Scrape::default() };
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let context = |problem: String| format!("line {}: {problem}: {line:?}", number + 1);
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    let name = words.next().ok_or_else(|| context("TYPE without a name".into()))?;
                    let kind = words.next().ok_or_else(|| context("TYPE without a type".into()))?;
                    if scrape.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(context(format!("a second TYPE line for {name}")));
                    }
                }
                continue;
            }
            scrape.samples.push(parse_sample(line).map_err(context)?);
        }
        Ok(scrape)
    }

    /// The `# TYPE` of family `name`.
    pub fn kind(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }

    /// Every sample named exactly `name`.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the sample named `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.samples(name).find(|s| s.labels == wanted).map(|s| s.value)
    }

    /// Like [`value`](Scrape::value), 0 when the series does not exist yet
    /// (counters nobody incremented may be absent).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// The sum of every sample named `name` whose labels include `labels`.
    pub fn total(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v)))
            .map(|s| s.value)
            .sum()
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ', '\t']).ok_or("a sample without a value")?;
    let name = &line[..name_end];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = parse_labels(inner, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("a sample without a value")?;
    let value = parse_value(value)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| format!("invalid timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing text after the value".into());
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// Reads `key="value",…}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut text: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str, String> {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let (key, after_key) = text.split_once('=').ok_or("a label without '='")?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid label name {key:?}"));
        }
        let mut chars = after_key.strip_prefix('"').ok_or("a label value without quotes")?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next().ok_or("an unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("an unterminated escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("invalid escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} repeated"));
        }
        text = &after_key[1 + end + 1..];
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix(',') {
            text = rest;
        }
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("invalid value {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_labels_escapes_and_special_values() {
        let text = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"\\\\\\n\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2 1700000000000\nh_sum 0.5\nh_count 2\nplain 1e3\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(scrape.kind("x_total"), Some("counter"));
        assert_eq!(scrape.kind("h"), Some("histogram"));
        assert_eq!(scrape.value("x_total", &[("a", "1"), ("b", "q\"\\\n")]), Some(3.0));
        assert_eq!(scrape.value("h_bucket", &[("le", "+Inf")]), Some(2.0));
        assert_eq!(scrape.value("plain", &[]), Some(1000.0));
        assert_eq!(scrape.total("x_total", &[("a", "1")]), 3.0);
        assert_eq!(scrape.count("missing", &[]), 0.0);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["x{a=1} 1", "x{a=\"1\" 1", "x", "x 1 2 3", "x{a=\"\\q\"} 1", "# TYPE x counter\n# TYPE x gauge"] {
            assert!(Scrape::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Tracing settings (SPEC §11): read from the standard `OTEL_*` environment
//! variables only, never from the TOML file, and validated here like every
//! other setting: one line per problem, naming the variable.
//!
//! The OpenTelemetry SDK reads some of these variables by itself, with its own
//! fallbacks (an unknown sampler quietly becomes the default). The proxy does
//! not rely on that: the exporter, sampler, resource and batch settings are
//! built explicitly from the values checked here, so SPEC is what happens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use crate::units::Dur;

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL, `/v1/traces` is appended.
pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the whole URL, used as it is.
pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
const SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
const MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
const MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";

/// Every variable the proxy reads; nothing else under `OTEL_` is looked at.
pub const VARIABLES: [&str; 17] = [
    SDK_DISABLED,
    TRACES_EXPORTER,
    ENDPOINT,
    TRACES_ENDPOINT,
    PROTOCOL,
    TRACES_PROTOCOL,
    HEADERS,
    TRACES_HEADERS,
    TIMEOUT,
    TRACES_TIMEOUT,
    SERVICE_NAME,
    RESOURCE_ATTRIBUTES,
    SAMPLER,
    SAMPLER_ARG,
    SCHEDULE_DELAY,
    MAX_QUEUE_SIZE,
    MAX_EXPORT_BATCH_SIZE,
];

/// The service name when neither `OTEL_SERVICE_NAME` nor a `service.name`
/// resource attribute gives one.
pub const DEFAULT_SERVICE_NAME: &str = "truedat-auth-proxy";

/// The only protocol this build speaks (gRPC would add a second HTTP/2 stack).
pub const HTTP_PROTOBUF: &str = "http/protobuf";

/// Bounds of the numeric variables: far beyond sensible values, and small
/// enough that nothing overflows or allocates without limit.
const MAX_MILLIS: u64 = 600_000;
/// Spans waiting for export are held in memory: about 1 KiB each.
const MAX_QUEUE: usize = 65_536;

/// The `OTEL_*` variables as found in the environment. An empty value counts
/// as unset, as the OpenTelemetry specification says.
#[derive(Debug, Clone, Default)]
pub struct OtelEnv {
    values: BTreeMap<&'static str, String>,
    /// Variables that are set but are not valid UTF-8.
    not_unicode: Vec<&'static str>,
}

impl OtelEnv {
    /// Reads [`VARIABLES`] from the process environment.
    pub fn from_process() -> OtelEnv {
        let mut env = OtelEnv::default();
        for name in VARIABLES {
            match std::env::var_os(name).map(|v| v.into_string()) {
                Some(Ok(value)) if !value.trim().is_empty() => {
                    env.values.insert(name, value);
                }
                Some(Err(_)) => env.not_unicode.push(name),
                _ => {}
            }
        }
        env
    }

    /// The given variables (names outside [`VARIABLES`] are ignored), for tests.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> OtelEnv {
        let mut env = OtelEnv::default();
        for (name, value) in pairs {
            if let Some(known) = VARIABLES.iter().find(|known| *known == name) {
                if !value.trim().is_empty() {
                    env.values.insert(known, (*value).to_owned());
                }
            }
        }
        env
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|v| v.trim())
    }

    /// The first of `names` that is set, with its name.
    fn first(&self, names: [&'static str; 2]) -> Option<(&'static str, &str)> {
        names.into_iter().find_map(|name| self.get(name).map(|value| (name, value)))
    }
}

/// Whether spans are exported, and how.
#[derive(Debug, Clone)]
pub enum Tracing {
    /// Nothing is created; the reason, for `--check-config`.
    Off(&'static str),
    On(Box<TracingSettings>),
}

impl Default for Tracing {
    fn default() -> Tracing {
        Tracing::Off(NO_ENDPOINT)
    }
}

const NO_ENDPOINT: &str = "neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set";

/// How spans are sampled and exported when tracing is on.
#[derive(Debug, Clone)]
pub struct TracingSettings {
    /// The OTLP/HTTP URL spans are posted to (`…/v1/traces`).
    pub endpoint: Uri,
    /// Sent with every export; the values are marked sensitive (their
    /// `Debug` is redacted) and never printed.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How long one export may take (a failed export is not retried).
    pub timeout: Duration,
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `service.name` excepted.
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: Sampler,
    /// How long a span may wait in the queue before its batch is sent.
    pub schedule_delay: Duration,
    /// Spans waiting for export; more are dropped and counted.
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
}

impl TracingSettings {
    /// The OpenTelemetry defaults, exporting to `endpoint`.
    pub fn new(endpoint: Uri) -> TracingSettings {
        TracingSettings {
            endpoint,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            resource_attributes: Vec::new(),
            sampler: Sampler { parent_based: true, root: Root::AlwaysOn },
            schedule_delay: Duration::from_secs(5),
            max_queue_size: 2048,
            max_export_batch_size: 512,
        }
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// `parentbased_*`: a request with a `traceparent` follows its caller's decision.
    pub parent_based: bool,
    /// The decision for a request that starts a trace.
    pub root: Root,
}

/// What a sampler decides for a trace that starts at the proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    /// `traceidratio`: this fraction of trace ids, 0 to 1.
    Ratio(f64),
}

impl Sampler {
    /// The name `OTEL_TRACES_SAMPLER` gives it.
    pub fn name(&self) -> &'static str {
        match (self.parent_based, self.root) {
            (false, Root::AlwaysOn) => "always_on",
            (false, Root::AlwaysOff) => "always_off",
            (false, Root::Ratio(_)) => "traceidratio",
            (true, Root::AlwaysOn) => "parentbased_always_on",
            (true, Root::AlwaysOff) => "parentbased_always_off",
            (true, Root::Ratio(_)) => "parentbased_traceidratio",
        }
    }

    fn parse(name: &str, arg: Option<&str>) -> Result<Sampler, String> {
        let (parent_based, root) = match name.strip_prefix("parentbased_") {
            Some(root) => (true, root),
            None => (false, name),
        };
        let root = match root {
            "always_on" => Root::AlwaysOn,
            "always_off" => Root::AlwaysOff,
            "traceidratio" => Root::Ratio(match arg {
                None => 1.0,
                Some(arg) => arg.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or_else(|| {
                    format!("{SAMPLER_ARG}: {arg:?} is not a number from 0 to 1 (the fraction of traces sampled)")
                })?,
            }),
            _ => {
                return Err(format!(
                    "{SAMPLER}: {name:?} is not a sampler this proxy knows (always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                ));
            }
        };
        Ok(Sampler { parent_based, root })
    }
}

impl Tracing {
    /// Reads the variables; every problem found is one line naming its variable.
    pub fn from_env(env: &OtelEnv) -> Result<Tracing, Vec<String>> {
        if let Some(name) = env.not_unicode.first() {
            return Err(vec![format!("{name}: not valid UTF-8")]);
        }
        let mut problems = Vec::new();
        let disabled = match env.get(SDK_DISABLED) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                problems.push(format!("{SDK_DISABLED}: {v:?} is neither true nor false"));
                false
            }
        };
        let exporter_none = match env.get(TRACES_EXPORTER) {
            None => false,
            Some("otlp") => false,
            Some("none") => true,
            Some(v) => {
                problems.push(format!("{TRACES_EXPORTER}: {v:?} is not supported (otlp or none)"));
                false
            }
        };
        let endpoint = match env.first([TRACES_ENDPOINT, ENDPOINT]) {
            None => None,
            Some((name, value)) => match endpoint(name, value, name == ENDPOINT) {
                Ok(uri) => Some(uri),
                Err(problem) => {
                    problems.push(problem);
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let endpoint = match endpoint {
            _ if disabled => return Ok(Tracing::Off("OTEL_SDK_DISABLED is true")),
            _ if exporter_none => return Ok(Tracing::Off("OTEL_TRACES_EXPORTER is none")),
            None => return Ok(Tracing::Off(NO_ENDPOINT)),
            Some(endpoint) => endpoint,
        };
        let settings = settings(env, endpoint, &mut problems);
        if problems.is_empty() { Ok(Tracing::On(Box::new(settings))) } else { Err(problems) }
    }

    /// Checks the ranges of settings built as values (tests do), naming the
    /// variable each comes from; [`Tracing::from_env`] already checked its own.
    pub fn validate(&self, problems: &mut Vec<String>) {
        let Tracing::On(settings) = self else {
            return;
        };
        let millis = |name: &str, value: Duration, problems: &mut Vec<String>| {
            if value.is_zero() || value > Duration::from_millis(MAX_MILLIS) {
                problems.push(format!("{name}: must be from 1 to {MAX_MILLIS} milliseconds"));
            }
        };
        millis(TIMEOUT, settings.timeout, problems);
        millis(SCHEDULE_DELAY, settings.schedule_delay, problems);
        if !(1..=MAX_QUEUE).contains(&settings.max_queue_size) {
            problems.push(format!("{MAX_QUEUE_SIZE}: must be from 1 to {MAX_QUEUE}"));
        } else if !(1..=settings.max_queue_size).contains(&settings.max_export_batch_size) {
            problems.push(format!(
                "{MAX_EXPORT_BATCH_SIZE}: must be from 1 to {MAX_QUEUE_SIZE} ({})",
                settings.max_queue_size
            ));
        }
        if let Root::Ratio(ratio) = settings.sampler.root {
            if !(0.0..=1.0).contains(&ratio) {
                problems.push(format!("{SAMPLER_ARG}: {ratio} is not a fraction from 0 to 1"));
            }
        }
        if settings.service_name.trim().is_empty() {
            problems.push(format!("{SERVICE_NAME}: must not be empty"));
        }
    }

    /// The effective tracing settings as TOML comments, for `--check-config`:
    /// they come from the environment and cannot be written in the file.
    /// Header values and credentials in the endpoint are never shown.
    pub fn to_comments(&self) -> String {
        let mut text = String::from("\n# Tracing (OpenTelemetry), from the OTEL_* environment variables only:\n");
        let settings = match self {
            Tracing::Off(why) => {
                let _ = writeln!(text, "# enabled = false  # {why}");
                return text;
            }
            Tracing::On(settings) => settings,
        };
        let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let table = |pairs: &mut dyn Iterator<Item = (String, String)>| {
            let entries: Vec<String> = pairs.map(|(k, v)| format!("{} = {}", quoted(&k), quoted(&v))).collect();
            format!("{{ {} }}", entries.join(", "))
        };
        let headers = table(&mut settings.headers.iter().map(|(k, _)| (k.to_string(), "<redacted>".to_owned())));
        let attributes = table(&mut settings.resource_attributes.iter().cloned());
        let arg = match settings.sampler.root {
            Root::Ratio(ratio) => format!("\n# sampler_arg = {ratio}"),
            _ => String::new(),
        };
        let _ = write!(
            text,
            "# enabled = true\n# endpoint = {}\n# protocol = {}\n# headers = {headers}\n# timeout = {}\n\
             # service_name = {}\n# resource_attributes = {attributes}\n# sampler = {}{arg}\n\
             # schedule_delay = {}\n# max_queue_size = {}\n# max_export_batch_size = {}\n",
            quoted(&redact_url(&settings.endpoint.to_string())),
            quoted(HTTP_PROTOBUF),
            quoted(&Dur(settings.timeout).to_string()),
            quoted(&settings.service_name),
            quoted(settings.sampler.name()),
            quoted(&Dur(settings.schedule_delay).to_string()),
            settings.max_queue_size,
            settings.max_export_batch_size,
        );
        text
    }
}

/// Everything but the endpoint and the switches, read once tracing is on.
fn settings(env: &OtelEnv, endpoint: Uri, problems: &mut Vec<String>) -> TracingSettings {
    let mut settings = TracingSettings::new(endpoint);
    let mut note = |result: Result<(), String>| {
        if let Err(problem) = result {
            problems.push(problem);
        }
    };
    if let Some((name, value)) = env.first([TRACES_PROTOCOL, PROTOCOL]) {
        if value != HTTP_PROTOBUF {
            note(Err(format!("{name}: {value:?} is not supported by this build (only {HTTP_PROTOBUF})")));
        }
    }
    if let Some((name, value)) = env.first([TRACES_HEADERS, HEADERS]) {
        note(headers(name, value).map(|headers| settings.headers = headers));
    }
    if let Some((name, value)) = env.first([TRACES_TIMEOUT, TIMEOUT]) {
        note(millis(name, value).map(|timeout| settings.timeout = timeout));
    }
    if let Some(value) = env.get(RESOURCE_ATTRIBUTES) {
        note(pairs(RESOURCE_ATTRIBUTES, value).map(|pairs| {
            for (key, value) in pairs {
                if key == "service.name" {
                    settings.service_name = value;
                } else {
                    settings.resource_attributes.push((key, value));
                }
            }
        }));
    }
    if let Some(name) = env.get(SERVICE_NAME) {
        settings.service_name = name.to_owned();
    }
    if let Some(name) = env.get(SAMPLER) {
        note(Sampler::parse(name, env.get(SAMPLER_ARG)).map(|sampler| settings.sampler = sampler));
    }
    if let Some(value) = env.get(SCHEDULE_DELAY) {
        note(millis(SCHEDULE_DELAY, value).map(|delay| settings.schedule_delay = delay));
    }
    if let Some(value) = env.get(MAX_QUEUE_SIZE) {
        note(count(MAX_QUEUE_SIZE, value).map(|size| settings.max_queue_size = size));
    }
    if let Some(value) = env.get(MAX_EXPORT_BATCH_SIZE) {
        note(count(MAX_EXPORT_BATCH_SIZE, value).map(|size| settings.max_export_batch_size = size));
    }
    if settings.max_export_batch_size > settings.max_queue_size {
        note(Err(format!(
            "{MAX_EXPORT_BATCH_SIZE}: {} is more than {MAX_QUEUE_SIZE} ({})",
            settings.max_export_batch_size, settings.max_queue_size
        )));
    }
    settings
}

/// The traces URL: `value` itself, or `value` with `/v1/traces` appended
/// when it is the base `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn endpoint(name: &str, value: &str, base: bool) -> Result<Uri, String> {
    let shown = redact_url(value);
    let uri: Uri = value.parse().map_err(|_| format!("{name}: {shown:?} is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!("{name}: {shown:?} must be an http:// or https:// URL"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "{name}: {shown:?}: credentials in the URL are not supported; use OTEL_EXPORTER_OTLP_HEADERS"
        ));
    }
    if !base {
        return Ok(uri);
    }
    if uri.query().is_some() {
        return Err(format!("{name}: {shown:?}: a base URL has no query (the path /v1/traces is appended to it)"));
    }
    let path = uri.path().trim_end_matches('/');
    let joined = format!(
        "{}://{}{path}/v1/traces",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str())
    );
    joined.parse().map_err(|_| format!("{name}: {shown:?} is not a URL"))
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value,…`, values percent-encoded.
/// Its values are credentials: no message ever shows one, nor the entry.
fn headers(name: &str, value: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut headers = Vec::new();
    for (position, entry) in entries(value) {
        let malformed = || format!("{name}: entry {position} is not key=value (values are never shown)");
        let (key, value) = entry.split_once('=').ok_or_else(malformed)?;
        let key = HeaderName::from_bytes(key.trim().as_bytes())
            .map_err(|_| format!("{name}: entry {position}: {:?} is not a header name", key.trim()))?;
        let value = percent_decode(value.trim())
            .filter(|v| !v.is_empty())
            .and_then(|v| HeaderValue::from_str(&v).ok())
            .ok_or_else(|| format!("{name}: entry {position} ({key}): the value is not a valid header value once percent-decoded (values are never shown)"))?;
        let mut value = value;
        value.set_sensitive(true);
        headers.push((key, value));
    }
    Ok(headers)
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,…`, values percent-encoded.
fn pairs(name: &str, value: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (position, entry) in entries(value) {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!("{name}: entry {position} ({entry:?}) is not key=value"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{name}: entry {position} has no key"));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("{name}: the value of {key:?} is not valid percent-encoded UTF-8"))?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// The non-empty comma-separated entries, numbered from 1.
fn entries(value: &str) -> impl Iterator<Item = (usize, &str)> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate().map(|(i, e)| (i + 1, e))
}

/// RFC 3986 percent-decoding; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Milliseconds, from 1 to [`MAX_MILLIS`].
fn millis(name: &str, value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(ms) if (1..=MAX_MILLIS).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(format!("{name}: {value:?} is not a whole number of milliseconds from 1 to {MAX_MILLIS}")),
    }
}

/// A number of spans, from 1 to [`MAX_QUEUE`].
fn count(name: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_QUEUE).contains(&n) => Ok(n),
        _ => Err(format!("{name}: {value:?} is not a whole number from 1 to {MAX_QUEUE}")),
    }
}

/// A URL with its user information and query replaced by `<redacted>`:
/// either may hold a collector's credentials.
pub fn redact_url(url: &str) -> String {
    let url = super::redact_userinfo(url);
    match url.split_once('?') {
        Some((before, _)) => format!("{before}?<redacted>"),
        None => url.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(pairs: &[(&str, &str)]) -> TracingSettings {
        let mut all = vec![(ENDPOINT, "http://collector:4318")];
        all.extend_from_slice(pairs);
        match Tracing::from_env(&OtelEnv::from_pairs(&all)) {
            Ok(Tracing::On(settings)) => *settings,
            other => panic!("{pairs:?}: {other:?}"),
        }
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        let mut all = vec![(ENDPOINT, "http://collector:4318")];
        all.extend_from_slice(pairs);
        let tracing = Tracing::from_env(&OtelEnv::from_pairs(&all));
        match tracing {
            Err(problems) => problems,
            Ok(tracing) => {
                let mut problems = Vec::new();
                tracing.validate(&mut problems);
                problems
            }
        }
    }

    #[test]
    fn off_unless_an_endpoint_is_set_and_nothing_switches_it_off() {
        let off =
            |pairs: &[(&str, &str)]| matches!(Tracing::from_env(&OtelEnv::from_pairs(pairs)), Ok(Tracing::Off(_)));
        assert!(off(&[]));
        assert!(off(&[(SAMPLER, "always_on"), (ENDPOINT, " ")]));
        assert!(off(&[(ENDPOINT, "http://c:4318"), (SDK_DISABLED, "TRUE")]));
        assert!(off(&[(TRACES_ENDPOINT, "http://c:4318/v1/traces"), (TRACES_EXPORTER, "none")]));
        assert!(!off(&[(TRACES_ENDPOINT, "http://c:4318/v1/traces"), (SDK_DISABLED, "false")]));
        // Off, the other variables are not read: a bad sampler is no error.
        assert!(off(&[(SAMPLER, "xray")]));
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_wins() {
        assert_eq!(on(&[]).endpoint, "http://collector:4318/v1/traces");
        for (base, full) in [
            ("https://otel.example.com/", "https://otel.example.com/v1/traces"),
            ("http://c:4318/otlp", "http://c:4318/otlp/v1/traces"),
            ("http://c:4318/otlp/", "http://c:4318/otlp/v1/traces"),
        ] {
            assert_eq!(on(&[(ENDPOINT, base)]).endpoint, full, "{base}");
        }
        let exact = on(&[(TRACES_ENDPOINT, "http://other:9999/custom")]);
        assert_eq!(exact.endpoint, "http://other:9999/custom");
    }

    #[test]
    fn the_defaults_are_the_specifications() {
        let settings = on(&[]);
        assert_eq!(settings.sampler, Sampler { parent_based: true, root: Root::AlwaysOn });
        assert_eq!(settings.service_name, DEFAULT_SERVICE_NAME);
        assert_eq!(settings.timeout, Duration::from_secs(10));
        assert_eq!((settings.max_queue_size, settings.max_export_batch_size), (2048, 512));
        assert_eq!(settings.schedule_delay, Duration::from_secs(5));
    }

    #[test]
    fn samplers_and_their_argument() {
        let ratio = on(&[(SAMPLER, "parentbased_traceidratio"), (SAMPLER_ARG, "0.25")]);
        assert_eq!(ratio.sampler, Sampler { parent_based: true, root: Root::Ratio(0.25) });
        assert_eq!(on(&[(SAMPLER, "traceidratio")]).sampler.root, Root::Ratio(1.0));
        assert_eq!(on(&[(SAMPLER, "always_off"), (SAMPLER_ARG, "junk")]).sampler.name(), "always_off");
        for (pairs, variable) in [
            (&[(SAMPLER, "xray")][..], SAMPLER),
            (&[(SAMPLER, "parentbased_jaeger_remote")][..], SAMPLER),
            (&[(SAMPLER, "traceidratio"), (SAMPLER_ARG, "half")][..], SAMPLER_ARG),
            (&[(SAMPLER, "traceidratio"), (SAMPLER_ARG, "1.5")][..], SAMPLER_ARG),
            (&[(SAMPLER, "parentbased_traceidratio"), (SAMPLER_ARG, "-0.1")][..], SAMPLER_ARG),
            (&[(SAMPLER, "traceidratio"), (SAMPLER_ARG, "NaN")][..], SAMPLER_ARG),
        ] {
            let problems = problems(pairs);
            assert_eq!(problems.len(), 1, "{pairs:?}: {problems:?}");
            assert!(problems[0].starts_with(&format!("{variable}: ")), "{pairs:?}: {problems:?}");
        }
    }

    #[test]
    fn every_bad_value_is_one_line_naming_its_variable() {
        for (pairs, variable) in [
            (&[(SDK_DISABLED, "yes")][..], SDK_DISABLED),
            (&[(TRACES_EXPORTER, "zipkin")][..], TRACES_EXPORTER),
            (&[(ENDPOINT, "collector:4318")][..], ENDPOINT),
            (&[(ENDPOINT, "ftp://collector")][..], ENDPOINT),
            (&[(ENDPOINT, "http://c:4318/?x=1")][..], ENDPOINT),
            (&[(TRACES_ENDPOINT, "not a url")][..], TRACES_ENDPOINT),
            (&[(PROTOCOL, "grpc")][..], PROTOCOL),
            (&[(TRACES_PROTOCOL, "http/json")][..], TRACES_PROTOCOL),
            (&[(HEADERS, "authorization")][..], HEADERS),
            (&[(HEADERS, "bad name=1")][..], HEADERS),
            (&[(TRACES_HEADERS, "a=%zz")][..], TRACES_HEADERS),
            (&[(TIMEOUT, "10s")][..], TIMEOUT),
            (&[(TRACES_TIMEOUT, "0")][..], TRACES_TIMEOUT),
            (&[(RESOURCE_ATTRIBUTES, "team")][..], RESOURCE_ATTRIBUTES),
            (&[(RESOURCE_ATTRIBUTES, "=x")][..], RESOURCE_ATTRIBUTES),
            (&[(SCHEDULE_DELAY, "-1")][..], SCHEDULE_DELAY),
            (&[(SCHEDULE_DELAY, "0")][..], SCHEDULE_DELAY),
            (&[(MAX_QUEUE_SIZE, "0")][..], MAX_QUEUE_SIZE),
            (&[(MAX_QUEUE_SIZE, "10000000")][..], MAX_QUEUE_SIZE),
            (&[(MAX_QUEUE_SIZE, "10"), (MAX_EXPORT_BATCH_SIZE, "11")][..], MAX_EXPORT_BATCH_SIZE),
        ] {
            let problems = problems(pairs);
            assert_eq!(problems.len(), 1, "{pairs:?}: {problems:?}");
            assert!(problems[0].starts_with(&format!("{variable}: ")), "{pairs:?}: {problems:?}");
        }
    }

    #[test]
    fn header_values_are_decoded_sensitive_and_never_shown() {
        let settings = on(&[(HEADERS, "Authorization=Basic%20c2VjcmV0LXZhbHVl, x-scope=team%2Da,")]);
        let names: Vec<&str> = settings.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["authorization", "x-scope"]);
        assert_eq!(settings.headers[0].1, "Basic c2VjcmV0LXZhbHVl");
        assert!(settings.headers.iter().all(|(_, v)| v.is_sensitive()));
        assert!(!format!("{settings:?}").contains("c2VjcmV0"), "{settings:?}");
        let shown = Tracing::On(Box::new(settings)).to_comments();
        assert!(shown.contains(r#"headers = { "authorization" = "<redacted>", "x-scope" = "<redacted>" }"#), "{shown}");
        assert!(!shown.contains("c2VjcmV0") && !shown.contains("team-a"), "{shown}");
        // The signal-specific variable wins; broken entries are reported without their text.
        let problems = problems(&[(HEADERS, "a=1"), (TRACES_HEADERS, "x=1,Bearer s3cr3t-tok")]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("OTEL_EXPORTER_OTLP_TRACES_HEADERS: entry 2 "), "{problems:?}");
        assert!(!problems[0].contains("s3cr3t"), "{problems:?}");
    }

    #[test]
    fn resource_attributes_and_the_service_name() {
        let settings = on(&[(RESOURCE_ATTRIBUTES, "service.name=from-attrs, k8s.pod.name=p%2D1,team=data")]);
        assert_eq!(settings.service_name, "from-attrs");
        assert_eq!(
            settings.resource_attributes,
            [("k8s.pod.name".into(), "p-1".into()), ("team".into(), "data".into())]
        );
        let named = on(&[(RESOURCE_ATTRIBUTES, "service.name=from-attrs"), (SERVICE_NAME, "from-name")]);
        assert_eq!(named.service_name, "from-name");
    }

    #[test]
    fn credentials_in_the_endpoint_are_never_shown() {
        let settings = on(&[(TRACES_ENDPOINT, "https://otel.example.com/v1/traces?api-key=k-93x")]);
        let shown = Tracing::On(Box::new(settings)).to_comments();
        assert!(shown.contains(r#"endpoint = "https://otel.example.com/v1/traces?<redacted>""#), "{shown}");
        for endpoint in
            ["https://user:pw-Zk4@otel.example.com/v1/traces", "ftp://user:pw-Zk4@otel.example.com/?api-key=k-93x"]
        {
            let problems = problems(&[(TRACES_ENDPOINT, endpoint)]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(!problems[0].contains("pw-Zk4") && !problems[0].contains("k-93x"), "{problems:?}");
        }
    }

    #[test]
    fn the_comments_are_valid_toml_and_say_why_tracing_is_off() {
        let off = Tracing::default().to_comments();
        assert!(off.contains("# enabled = false  # neither OTEL_EXPORTER_OTLP_ENDPOINT"), "{off}");
        let on = Tracing::On(Box::new(on(&[(SAMPLER, "traceidratio"), (SAMPLER_ARG, "0.5")]))).to_comments();
        let uncommented: String =
            on.lines().filter_map(|l| l.strip_prefix("# ")).map(|l| format!("{l}\n")).skip(1).collect();
        let table: toml::Table = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}:\n{uncommented}"));
        assert_eq!(table["sampler"].as_str(), Some("traceidratio"));
        assert_eq!(table["sampler_arg"].as_float(), Some(0.5));
        assert_eq!(table["endpoint"].as_str(), Some("http://collector:4318/v1/traces"));
        assert_eq!(table["schedule_delay"].as_str(), Some("5s"));
    }
}

//! The deployment artefacts against the real binary's `/metrics`: every
//! metric the Grafana dashboard (`deploy/grafana/`) queries, every metric the
//! example alerts (`PrometheusRule`) use and every metric README.md's table
//! documents is exported, under that name and with the table's type; and the
//! dashboard and the table cover every family the binary exports, so a new
//! metric cannot go undocumented or unplotted. The manifests themselves and
//! the dashboard's PromQL syntax are checked by `tests/deploy/validate.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::support::client::Client;
use crate::support::otlp::Receiver;
use crate::support::pki::Ca;
use crate::support::prometheus::Scrape;
use crate::support::proxy::{BinaryProxy, binary_toml, fake};
use crate::support::wait::wait_until;

/// Bound for the binary to start and log in.
const PATIENCE: Duration = Duration::from_secs(15);
/// Every metric of the proxy starts with this.
const PREFIX: &str = "truedat_proxy_";
/// The dashboard operators import, relative to the repository root.
const DASHBOARD: &str = "deploy/grafana/truedat-auth-proxy.json";
/// The example alerts, beside the PodMonitor.
const ALERTS: &str = "deploy/kubernetes/components/pod-monitor/prometheusrule.yaml";
/// Suffixes of the series a histogram family exports.
const HISTOGRAM_SERIES: [&str; 3] = ["_bucket", "_sum", "_count"];

#[tokio::test]
async fn the_dashboard_and_the_readme_name_exactly_the_exported_metrics() {
    let scrape = scrape_after_traffic().await;
    let families: BTreeMap<&str, &str> = scrape
        .types
        .iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .map(|(name, kind)| (name.as_str(), kind.as_str()))
        .collect();
    let series: BTreeSet<&str> = scrape.samples.iter().map(|s| s.name.as_str()).collect();
    assert!(families.len() >= 11, "SPEC §6 names 11 families; /metrics has:\n{}", scrape.text);

    // The dashboard: every name it mentions (queries, variables, descriptions)
    // is a family or a series the binary really exports.
    let dashboard = read(DASHBOARD);
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let mut named = BTreeSet::new();
    collect_names(&dashboard, &mut named);
    let unknown: Vec<&String> =
        named.iter().filter(|n| !families.contains_key(n.as_str()) && !series.contains(n.as_str())).collect();
    assert!(unknown.is_empty(), "{DASHBOARD} names metrics /metrics does not export: {unknown:?}\n{}", scrape.text);
    let alerting: Vec<String> = metric_names(&read(ALERTS))
        .into_iter()
        .filter(|n| !families.contains_key(n.as_str()) && !series.contains(n.as_str()))
        .collect();
    assert!(alerting.is_empty(), "{ALERTS} names metrics /metrics does not export: {alerting:?}");
    let plotted: BTreeSet<&str> = named.iter().map(|n| family_of(n, &families)).collect();
    let unplotted: Vec<&&str> = families.keys().filter(|f| !plotted.contains(**f)).collect();
    assert!(unplotted.is_empty(), "{DASHBOARD} has no panel for {unplotted:?}");

    // README.md's metrics table: the same families, with the same types.
    let documented = readme_metrics();
    assert!(!documented.is_empty(), "no metrics table found in README.md's \"### Metrics\" section");
    for (name, kind) in &documented {
        match families.get(name.as_str()) {
            None => panic!("README.md documents {name}, which /metrics does not export:\n{}", scrape.text),
            Some(exported) => assert_eq!(exported, kind, "README.md gives {name} the type {kind}, /metrics {exported}"),
        }
    }
    let undocumented: Vec<&&str> = families.keys().filter(|f| !documented.contains_key(**f)).collect();
    assert!(undocumented.is_empty(), "README.md's metrics table lacks {undocumented:?}");
}

/// Runs the binary in front of the fake, logs in, sends one request through
/// it (so that both histograms have series), and scrapes `/metrics`. A client
/// certificate is configured (unused over plain HTTP) and tracing is on, so
/// that the families exported only then are there too.
async fn scrape_after_traffic() -> Scrape {
    let fake = fake(|_| {}).await;
    let identity = Ca::new("client CA").client_cert("svc-proxy");
    let path = |key: &str, path: &Path| format!("{key} = {}", toml::Value::String(path.display().to_string()));
    let cert = path("upstream.client_cert_file", identity.cert_file());
    let key = path("upstream.client_key_file", identity.key_file());
    let collector = Receiver::start().await;
    let endpoint = collector.endpoint();
    let tracing = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let proxy = BinaryProxy::spawn(&binary_toml(&fake.url(), &[&cert, &key]), &tracing).await;
    let client = Client::new();
    let ready = wait_until(PATIENCE, || async {
        let request = http::Request::get(proxy.admin_url("/readyz")).body(Default::default()).expect("a valid request");
        client.try_send(request).await.is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    assert!(ready, "/readyz never answered 200; output:\n{}", proxy.output());
    let reply = client.get(&proxy.url("/api/data_structures?page=1")).await;
    assert_eq!(reply.status, StatusCode::OK, "a request through the proxy: {}", reply.text());
    let metrics = client.get(&proxy.admin_url("/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    Scrape::parse(&metrics.text())
        .unwrap_or_else(|e| panic!("/metrics is not the text format ({e}):\n{}", metrics.text()))
}

/// A file of the repository, by its path from the root.
fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `truedat_proxy_…` name in any string of `value`.
fn collect_names(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => names.extend(metric_names(text)),
        Value::Array(items) => items.iter().for_each(|item| collect_names(item, names)),
        Value::Object(fields) => fields.values().for_each(|field| collect_names(field, names)),
        _ => {}
    }
}

/// The metric names in `text`: `truedat_proxy_` and the name characters after it.
fn metric_names(text: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let preceded = rest[..at].chars().next_back().is_some_and(is_name);
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        if !preceded {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The family a series belongs to: `x_bucket` → `x` when `x` is a histogram.
fn family_of<'a>(name: &'a str, families: &BTreeMap<&str, &str>) -> &'a str {
    HISTOGRAM_SERIES
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| families.get(base) == Some(&"histogram"))
        .unwrap_or(name)
}

/// README.md's metrics table (the first table under `### Metrics`): name → type.
fn readme_metrics() -> BTreeMap<String, String> {
    let readme = read("README.md");
    let section = readme.split("\n### Metrics").nth(1).unwrap_or_default();
    let section = section.split("\n#").next().unwrap_or_default();
    let mut metrics = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`');
        // "gauge (1)" is a gauge whose value is always 1.
        let kind = cells[2].split_whitespace().next().unwrap_or_default();
        metrics.insert(name.to_owned(), kind.to_owned());
    }
    metrics
}

#[test]
fn metric_names_are_found_whole_in_text() {
    let text =
        "histogram_quantile(0.9, rate(truedat_proxy_x_bucket{a=\"b\"}[5m])) / my_truedat_proxy_y + truedat_proxy_z";
    assert_eq!(metric_names(text), ["truedat_proxy_x_bucket", "truedat_proxy_z"]);
    let families = BTreeMap::from([("truedat_proxy_h", "histogram"), ("truedat_proxy_c_count", "counter")]);
    assert_eq!(family_of("truedat_proxy_h_bucket", &families), "truedat_proxy_h");
    assert_eq!(family_of("truedat_proxy_c_count", &families), "truedat_proxy_c_count");
}

//! Sending spans to an OpenTelemetry collector over OTLP/HTTP (protobuf),
//! without ever holding a request up.
//!
//! The SDK's batch span processor keeps ended spans in a bounded queue and
//! exports them from a thread of its own, every `OTEL_BSP_SCHEDULE_DELAY` or
//! when a batch is full; a request only hands its span over. The SDK keeps
//! the count of spans a full queue drops to itself, so [`Bounded`] admits
//! spans in front of it against the same capacity and counts what it turns
//! away, and [`Counted`] counts the spans of exports that failed.
//!
//! [`Otlp`] writes each batch as an OTLP/HTTP protobuf request ([`otlp`])
//! and sends it through [`Sender`]: a client of the very type that talks to
//! Truedat ([`upstream::build`], hyper and rustls with ring), given the
//! collector's address, the system's roots and no egress proxy, so the
//! binary holds no second HTTP or TLS stack and no second copy of hyper's
//! client. Its exchanges run as tasks of the proxy's runtime, each bounded
//! by the export timeout; a collector that is down or hangs only ever
//! delays the export thread. A failed export is not retried: its spans are
//! counted as dropped, and the next batch tries again.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter,
    SpanProcessor,
};

use super::otlp;
use crate::config::{self, ProxyEnv, TracingSettings, Upstream};
use crate::origin::Origin;
use crate::replay::UpstreamBody;
use crate::telemetry::SpanDrop;
use crate::units::Dur;
use crate::{telemetry, tls, upstream};

/// Collectors answer an export with a tiny body; more is not a collector.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OpenTelemetry exporter: {0}")]
pub struct SetupError(String);

/// The running export: the SDK's provider, its batch thread and our counts.
pub struct Pipeline {
    provider: SdkTracerProvider,
    /// Spans handed to the batch processor and not yet given to an export.
    queued: Arc<AtomicUsize>,
    /// Set once the flush at shutdown is over: no export starts after it.
    closed: Arc<AtomicBool>,
}

impl Pipeline {
    /// Starts the batch processor and returns the tracer that feeds it.
    /// Runs inside the proxy's runtime (exports are tasks of it).
    pub fn start(settings: &TracingSettings) -> Result<(Pipeline, SdkTracer), SetupError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| SetupError(e.to_string()))?;
        let closed = Arc::new(AtomicBool::new(false));
        let sender = Sender::new(settings, runtime, closed.clone())?;
        let exporter = Otlp { sender, header: otlp::Header::default() };
        let queued = Arc::new(AtomicUsize::new(0));
        // Set explicitly: the builder's defaults read OTEL_BSP_* on their own.
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_size)
            .with_max_export_batch_size(settings.max_export_batch_size)
            .with_scheduled_delay(settings.schedule_delay)
            .build();
        let processor = BatchSpanProcessor::new(Counted { inner: exporter, queued: queued.clone() }, batch);
        let bounded = Bounded { inner: processor, queued: queued.clone(), capacity: settings.max_queue_size };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(bounded)
            .with_sampler(sampler(&settings.sampler))
            .with_resource(resource(settings))
            .build();
        let scope = InstrumentationScope::builder("truedat-auth-proxy").with_version(env!("CARGO_PKG_VERSION")).build();
        let tracer = provider.tracer_with_scope(scope);
        telemetry::record_spans_dropped_from_zero();
        tracing::info!(
            endpoint = %config::redact_url(&settings.endpoint.to_string()),
            sampler = settings.sampler.name(),
            "tracing on: exporting spans over OTLP/HTTP"
        );
        Ok((Pipeline { provider, queued, closed }, tracer))
    }

    /// Exports what is still queued, for at most `within`, then stops the
    /// batch thread. A collector that does not answer in time costs the
    /// spans still queued (a warning says how many), never more time.
    pub async fn shutdown(self, within: Duration) {
        let provider = self.provider.clone();
        let flush = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within));
        // The flush bounds itself; this bound only guards against a surprise.
        let flushed = tokio::time::timeout(within + Duration::from_millis(200), flush).await;
        self.closed.store(true, Ordering::Release);
        match flushed {
            Ok(Ok(Ok(()))) => tracing::debug!("trace spans flushed"),
            _ => tracing::warn!(
                queued = self.queued.load(Ordering::Acquire),
                within_ms = within.as_millis() as u64,
                "the collector did not take every trace span before exiting"
            ),
        }
    }
}

/// The sampler of `OTEL_TRACES_SAMPLER` (SPEC's default: parent-based, always on).
fn sampler(sampler: &config::Sampler) -> Sampler {
    let root = match sampler.root {
        config::Root::AlwaysOn => Sampler::AlwaysOn,
        config::Root::AlwaysOff => Sampler::AlwaysOff,
        config::Root::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
    };
    if sampler.parent_based { Sampler::ParentBased(Box::new(root)) } else { root }
}

/// `service.name`, `service.version` (unless given) and `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(settings: &TracingSettings) -> Resource {
    let mut attributes: Vec<KeyValue> =
        settings.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    if !settings.resource_attributes.iter().any(|(k, _)| k == "service.version") {
        attributes.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    Resource::builder_empty().with_service_name(settings.service_name.clone()).with_attributes(attributes).build()
}

/// Admits an ended span into the batch processor's queue only while it has
/// room, counting the ones it turns away. The queue's own count is private
/// to the SDK, so the room is counted here: a span is queued from its
/// admission until [`Counted`] sees it handed to an export, which is never
/// before the batch thread took it off the queue. So the SDK's queue is
/// never full when a span is admitted, and every drop is counted once.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            telemetry::record_spans_dropped(SpanDrop::QueueFull, 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, counting the spans that leave the queue and those whose
/// export failed.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.queued.fetch_sub(spans, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            telemetry::record_spans_dropped(SpanDrop::ExportFailed, spans as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Exports a batch as one OTLP/HTTP request (protobuf), to the endpoint
/// of `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or of the base endpoint's
/// `/v1/traces`, as the configuration resolved it.
#[derive(Debug)]
struct Otlp {
    sender: Sender,
    /// The resource, encoded once (the provider sets it before any export).
    header: otlp::Header,
}

impl SpanExporter for Otlp {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let body = Bytes::from(otlp::encode(&self.header, &batch));
        drop(batch);
        let outcome = self.sender.send(body).await;
        self.sender.observe(&outcome);
        outcome.map_err(OTelSdkError::InternalFailure)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.header = otlp::Header::new(resource);
    }
}

/// The HTTP client of the exporter: the proxy's own hyper and rustls (ring),
/// the exchange a task of the proxy's runtime (the batch thread only waits
/// for it), bounded by the export timeout, with the configured headers.
struct Sender {
    runtime: tokio::runtime::Handle,
    client: upstream::HttpClient,
    /// Where exports go: the whole traces URL.
    endpoint: Uri,
    /// `OTEL_EXPORTER_OTLP_HEADERS`, decoded once by the configuration.
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    closed: Arc<AtomicBool>,
    /// The last failure logged, so a collector that stays down is one line.
    failing: Mutex<Option<String>>,
}

impl fmt::Debug for Sender {
    /// Never the headers: they hold the collector's credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// OTLP/HTTP's media type for protobuf bodies.
const PROTOBUF: HeaderValue = HeaderValue::from_static("application/x-protobuf");

impl Sender {
    /// A client for the collector of `settings`: the upstream client's
    /// machinery with the collector's address, no egress proxy (the
    /// collector is a neighbour: a node agent or a service in the cluster),
    /// no client certificate, and the system's roots for `https://`.
    fn new(
        settings: &TracingSettings,
        runtime: tokio::runtime::Handle,
        closed: Arc<AtomicBool>,
    ) -> Result<Sender, SetupError> {
        let endpoint = &settings.endpoint;
        let base = format!(
            "{}://{}",
            endpoint.scheme_str().unwrap_or("http"),
            endpoint.authority().map_or("", |a| a.as_str())
        );
        let origin = Origin::parse(&base).map_err(SetupError)?;
        let collector = Upstream {
            url: Some(base),
            connect_timeout: Dur(settings.timeout),
            pool_idle_timeout: Dur::secs(30),
            ..Upstream::default()
        };
        let tls = tls::Material::load(&collector, origin.is_https()).map_err(|e| SetupError(e.to_string()))?;
        let clients = upstream::build(&collector, &ProxyEnv::default(), &origin, Arc::new(tls))
            .map_err(|e| SetupError(e.to_string()))?;
        Ok(Sender {
            runtime,
            client: clients.pool,
            endpoint: endpoint.clone(),
            headers: settings.headers.clone(),
            timeout: settings.timeout,
            closed,
            failing: Mutex::new(None),
        })
    }

    /// POSTs one export; any answer but a 2xx is a failure (OTLP/HTTP: the
    /// body of a 200 may report spans the collector rejected, which are
    /// not told apart here).
    async fn send(&self, body: Bytes) -> Result<(), String> {
        if self.closed.load(Ordering::Acquire) {
            return Err("the proxy is exiting".to_owned());
        }
        let mut request =
            Request::post(self.endpoint.clone()).body(UpstreamBody::full(body)).map_err(|e| e.to_string())?;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, PROTOBUF);
        headers.insert(USER_AGENT, HeaderValue::from_static(concat!("truedat-auth-proxy/", env!("CARGO_PKG_VERSION"))));
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request).await.map_err(|e| crate::upstream::root_cause(&e))?;
            let status = response.status();
            // Read to its end (bounded) so the connection can be reused.
            let read = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
            if !status.is_success() {
                return Err(answered(status));
            }
            read.map(drop).map_err(|e| format!("the collector's answer broke off: {e}"))
        };
        let timeout = self.timeout;
        // Built inside the task: a timer needs the runtime, and this thread is the SDK's.
        match self.runtime.spawn(async move { tokio::time::timeout(timeout, exchange).await }).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(format!("no answer within {timeout:?}")),
            Err(ended) => Err(format!("the export was cut short: {ended}")),
        }
    }

    /// Logs a failure once per change of cause, and the recovery once.
    fn observe(&self, outcome: &Result<(), String>) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(()) if failing.take().is_some() => tracing::info!("exporting spans works again"),
            Ok(()) => {}
            Err(failure) if failing.as_deref() != Some(failure.as_str()) => {
                tracing::warn!(error = %failure, "cannot export spans to the OpenTelemetry collector");
                *failing = Some(failure.clone());
            }
            Err(_) => {}
        }
    }
}

fn answered(status: StatusCode) -> String {
    format!("the collector answered {}", status.as_u16())
}

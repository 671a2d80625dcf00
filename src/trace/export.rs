//! Sending spans to an OpenTelemetry collector over OTLP/HTTP (protobuf),
//! without ever holding a request up.
//!
//! A span is written in protobuf's wire format as it ends, on the thread
//! that ended it, into that thread's own buffer ([`otlp::Spans`]). The
//! queue is those buffers, bounded to `OTEL_BSP_MAX_QUEUE_SIZE` spans in
//! all: a span that finds it full is dropped and counted. One task of the
//! proxy's runtime takes every buffer's spans and sends them in exports of
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans: all of them every
//! `OTEL_BSP_SCHEDULE_DELAY`, and the whole batches as soon as one is queued.
//!
//! Why not the SDK's batch span processor: it hands each span, a struct of
//! some 400 bytes, to a thread of its own, which converts and frees there
//! what the request's thread allocated. Measured in the benchmark, that
//! exchange between two threads cost more than encoding the span where it
//! ended (README, "Tracing"). Why a buffer per thread rather than a channel
//! of spans: an allocation per span, sent through the channel and freed on
//! the export task's thread, took `malloc`'s slow path on one thread and
//! the frees on another, about 400 instructions per span more under
//! callgrind. Each buffer has a lock, which its thread takes for every span
//! and the export task once per round: no request ever waits on another's,
//! and a thread waits only for the moment the export task takes its spans.
//! No thread is added.
//!
//! Exports go through [`Sender`]: a client of the very type that talks to
//! Truedat ([`upstream::build`], hyper and rustls with ring), given the
//! collector's address, the system's roots and no egress proxy, so the
//! binary holds no second HTTP or TLS stack and no second copy of hyper's
//! client. Each export is bounded by the export timeout, and a failed one is
//! not retried: its spans are counted as dropped, and the next batch tries
//! again. A collector that is down or hangs only ever delays the export
//! task, never a request.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanProcessor};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

/// The running export: the SDK's provider (spans, sampling), the queue and
/// the task that empties it.
pub struct Pipeline {
    provider: SdkTracerProvider,
    queue: Arc<Queue>,
    /// Ends the export task's loop; it then sends what is left.
    stop: CancellationToken,
    /// The only place exports start: once it has ended (or been aborted
    /// at the flush's deadline), none starts again.
    task: JoinHandle<()>,
}

impl Pipeline {
    /// Starts the export task and returns the tracer that feeds it. Runs
    /// inside the proxy's runtime (the task and the exports are its tasks).
    pub fn start(settings: &TracingSettings) -> Result<(Pipeline, SdkTracer), SetupError> {
        let sender = Sender::new(settings)?;
        let queue = Arc::new(Queue {
            threads: Mutex::default(),
            queued: AtomicUsize::new(0),
            capacity: settings.max_queue_size,
            batch: settings.max_export_batch_size,
            full: Notify::new(),
            header: ArcSwap::from_pointee(otlp::Header::default()),
        });
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Ending(queue.clone()))
            .with_sampler(sampler(&settings.sampler))
            .with_resource(resource(settings))
            .build();
        let stop = CancellationToken::new();
        let export = Export { queue: queue.clone(), kept: Vec::new(), sender, delay: settings.schedule_delay };
        let task = tokio::spawn(export.run(stop.clone()));
        let scope = InstrumentationScope::builder("truedat-auth-proxy").with_version(env!("CARGO_PKG_VERSION")).build();
        let tracer = provider.tracer_with_scope(scope);
        telemetry::record_spans_dropped_from_zero();
        tracing::info!(
            endpoint = %config::redact_url(&settings.endpoint.to_string()),
            sampler = settings.sampler.name(),
            "tracing on: exporting spans over OTLP/HTTP"
        );
        Ok((Pipeline { provider, queue, stop, task }, tracer))
    }

    /// Exports what is still queued, for at most `within`. A collector that
    /// does not answer in time costs the spans still queued (a warning says
    /// how many), never more time.
    pub async fn shutdown(self, within: Duration) {
        self.stop.cancel();
        let mut task = self.task;
        let flushed = tokio::time::timeout(within, &mut task).await;
        if flushed.is_err() {
            task.abort();
        }
        let _ = self.provider.shutdown();
        match flushed {
            Ok(Ok(())) => tracing::debug!("trace spans flushed"),
            _ => tracing::warn!(
                queued = self.queue.queued.load(Ordering::Acquire),
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

/// Ended spans, encoded, waiting for the export task: a buffer per thread.
struct Queue {
    /// Each thread's buffer, registered as the thread ends its first span.
    threads: Mutex<Vec<Arc<Buffer>>>,
    /// Spans queued and not yet taken by an export: the queue's bound, the
    /// log at exit, and the moment a batch is full.
    queued: AtomicUsize,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`.
    capacity: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
    batch: usize,
    /// Wakes the export task once a whole batch is queued, and only then:
    /// the task is not woken span by span.
    full: Notify,
    /// The resource, encoded once when the provider hands it over.
    header: ArcSwap<otlp::Header>,
}

/// One thread's spans, as runs of one scope each (nearly always a single
/// run: the proxy has one tracer), none longer than a batch.
type Buffer = Mutex<Vec<otlp::Spans>>;

thread_local! {
    /// This thread's buffer, and the queue it is registered with (a test
    /// process may run more than one).
    static OWN: RefCell<Option<(Weak<Queue>, Arc<Buffer>)>> = const { RefCell::new(None) };
}

impl Queue {
    /// Writes `span` into this thread's buffer.
    fn write(self: &Arc<Queue>, span: &SpanData) {
        let written = OWN.try_with(|own| {
            let mut own = own.borrow_mut();
            let buffer = match &*own {
                Some((queue, buffer)) if std::ptr::eq(queue.as_ptr(), Arc::as_ptr(self)) => buffer,
                _ => &own.insert((Arc::downgrade(self), self.register())).1,
            };
            self.write_into(buffer, span);
        });
        // The thread's locals are being destroyed: a buffer of its own,
        // which the next export takes and then forgets.
        if written.is_err() {
            self.write_into(&self.register(), span);
        }
    }

    fn write_into(&self, buffer: &Buffer, span: &SpanData) {
        let mut runs = buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let run = match runs.last_mut() {
            Some(run) if run.len() < self.batch && run.scope() == &span.instrumentation_scope => run,
            _ => {
                runs.push(otlp::Spans::new(span.instrumentation_scope.clone(), self.batch.min(64)));
                runs.last_mut().expect("just pushed")
            }
        };
        run.push(span);
    }

    fn register(&self) -> Arc<Buffer> {
        let buffer = Arc::new(Buffer::default());
        self.threads.lock().unwrap_or_else(PoisonError::into_inner).push(buffer.clone());
        buffer
    }

    /// Every span queued now, leaving the buffers empty (the spans stay
    /// counted until sent); the buffers of threads that have ended are
    /// forgotten.
    fn take(&self) -> Vec<otlp::Spans> {
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::new();
        for buffer in threads.iter() {
            taken.append(&mut buffer.lock().unwrap_or_else(PoisonError::into_inner));
        }
        // Only the registry holds the buffer of a thread that has ended.
        threads.retain(|buffer| Arc::strong_count(buffer) > 1);
        taken
    }
}

/// The span processor: encodes each ended span into its thread's buffer,
/// or drops and counts it when the queue is full.
#[derive(Debug)]
struct Ending(Arc<Queue>);

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("queued", &self.queued).finish_non_exhaustive()
    }
}

impl SpanProcessor for Ending {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let queue = &self.0;
        // Counted first, so the bound holds however many threads write.
        let queued = queue.queued.fetch_add(1, Ordering::AcqRel) + 1;
        if queued > queue.capacity {
            queue.queued.fetch_sub(1, Ordering::AcqRel);
            telemetry::record_spans_dropped(SpanDrop::QueueFull, 1);
            return;
        }
        queue.write(&span);
        if queued == queue.batch {
            queue.full.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.header.store(Arc::new(otlp::Header::new(resource)));
    }
}

/// The export task: sends the queue in batches, every schedule delay or when
/// a batch is full, and what is left when it is stopped.
struct Export {
    queue: Arc<Queue>,
    /// Spans taken and not sent: what an early round left over its whole
    /// batches, for the next round.
    kept: Vec<otlp::Spans>,
    sender: Sender,
    delay: Duration,
}

impl Export {
    async fn run(mut self, stop: CancellationToken) {
        let timer = tokio::time::sleep(self.delay);
        tokio::pin!(timer);
        loop {
            // A full batch goes at once; the rest waits for the schedule, so
            // spans go in batches as large as they can be (each export costs
            // an HTTP exchange) while none waits longer than the delay.
            let scheduled = tokio::select! {
                () = &mut timer => true,
                () = self.queue.full.notified() => false,
                () = stop.cancelled() => break,
            };
            self.send(scheduled).await;
            if scheduled {
                timer.as_mut().reset(tokio::time::Instant::now() + self.delay);
            }
        }
        self.send(true).await;
    }

    /// Sends the spans queued now, a batch per export: every one of them,
    /// or only whole batches (the rest waits for the next round). Spans that
    /// end meanwhile wait for the next full batch or the next schedule:
    /// chasing them would turn a busy proxy's export round into a run of
    /// small ones, as many as the exports' own round trips allow.
    async fn send(&mut self, everything: bool) {
        let mut runs = std::mem::take(&mut self.kept);
        runs.append(&mut self.queue.take());
        let queued = runs.iter().map(otlp::Spans::len).sum();
        let sending = to_send(queued, self.queue.batch, everything);
        self.kept = split_off(&mut runs, sending);
        self.queue.queued.fetch_sub(sending, Ordering::AcqRel);
        for batch in batches(&runs, self.queue.batch) {
            let body = Bytes::from(otlp::request(&self.queue.header.load(), &batch));
            let spans: usize = batch.iter().map(otlp::Part::len).sum();
            let outcome = self.sender.send(body).await;
            if outcome.is_err() {
                telemetry::record_spans_dropped(SpanDrop::ExportFailed, spans as u64);
            }
            self.sender.observe(&outcome);
        }
    }
}

/// How many of the `queued` spans an export round sends: all of them, or
/// the whole batches among them.
fn to_send(queued: usize, batch: usize, everything: bool) -> usize {
    if everything { queued } else { queued - queued % batch }
}

/// Leaves the first `at` spans in `runs` (cutting a run if need be) and
/// returns the others.
fn split_off(runs: &mut Vec<otlp::Spans>, mut at: usize) -> Vec<otlp::Spans> {
    let mut whole = 0;
    while whole < runs.len() && at >= runs[whole].len() {
        at -= runs[whole].len();
        whole += 1;
    }
    let mut rest = runs.split_off(whole);
    if at > 0 {
        let tail = rest[0].split_off(at);
        runs.push(std::mem::replace(&mut rest[0], tail));
    }
    rest
}

/// The spans of `runs` in exports of `batch` spans (the last one fewer), in
/// their order: a run is cut where an export is full.
fn batches(runs: &[otlp::Spans], batch: usize) -> Vec<Vec<otlp::Part<'_>>> {
    let mut batches: Vec<Vec<otlp::Part<'_>>> = Vec::new();
    let mut room = 0;
    for run in runs {
        let mut from = 0;
        while from < run.len() {
            if room == 0 {
                batches.push(Vec::new());
                room = batch;
            }
            let to = run.len().min(from + room);
            batches.last_mut().expect("just pushed").push(run.part(from..to));
            room -= to - from;
            from = to;
        }
    }
    batches
}

/// The HTTP client of the exporter: the proxy's own hyper and rustls (ring),
/// each exchange bounded by the export timeout, with the configured headers.
struct Sender {
    client: upstream::HttpClient,
    /// Where exports go: the whole traces URL.
    endpoint: Uri,
    /// `OTEL_EXPORTER_OTLP_HEADERS`, decoded once by the configuration.
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
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
    fn new(settings: &TracingSettings) -> Result<Sender, SetupError> {
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
            client: clients.pool,
            endpoint: endpoint.clone(),
            headers: settings.headers.clone(),
            timeout: settings.timeout,
            failing: Mutex::new(None),
        })
    }

    /// POSTs one export; any answer but a 2xx is a failure (OTLP/HTTP: the
    /// body of a 200 may report spans the collector rejected, which are
    /// not told apart here).
    async fn send(&self, body: Bytes) -> Result<(), String> {
        let mut request =
            Request::post(self.endpoint.clone()).body(UpstreamBody::full(body)).map_err(|e| e.to_string())?;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, PROTOBUF);
        headers.insert(USER_AGENT, HeaderValue::from_static(concat!("truedat-auth-proxy/", env!("CARGO_PKG_VERSION"))));
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| crate::upstream::root_cause(&e))?;
            let status = response.status();
            // Read to its end (bounded) so the connection can be reused.
            let read = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
            if !status.is_success() {
                return Err(answered(status));
            }
            read.map(drop).map_err(|e| format!("the collector's answer broke off: {e}"))
        };
        let timeout = self.timeout;
        tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
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

#[cfg(test)]
mod tests {
    use super::otlp::tests::span;
    use super::*;

    #[test]
    fn runs_go_in_their_order_in_exports_of_a_batch() {
        let scope = InstrumentationScope::builder("s").build();
        let run = |len: usize| {
            let mut run = otlp::Spans::new(scope.clone(), len);
            (0..len).for_each(|_| run.push(&span("GET", &scope)));
            run
        };
        let runs = [run(4), run(3), run(1), run(2), run(5)];
        let sizes: Vec<Vec<usize>> =
            batches(&runs, 4).iter().map(|b| b.iter().map(otlp::Part::len).collect()).collect();
        assert_eq!(sizes, [vec![4], vec![3, 1], vec![2, 2], vec![3]]);
        assert!(batches(&[], 4).is_empty());

        let lens = |runs: &[otlp::Spans]| runs.iter().map(otlp::Spans::len).collect::<Vec<_>>();
        for (at, kept, rest) in
            [(5, vec![4, 1], vec![2]), (4, vec![4], vec![3]), (7, vec![4, 3], vec![]), (0, vec![], vec![4, 3])]
        {
            let mut runs = vec![run(4), run(3)];
            let others = split_off(&mut runs, at);
            assert_eq!((lens(&runs), lens(&others)), (kept, rest), "split at {at}");
        }
    }

    #[test]
    fn a_scheduled_round_sends_what_is_queued_and_an_early_one_only_whole_batches() {
        assert_eq!(to_send(1_100, 512, true), 1_100);
        assert_eq!(to_send(1_100, 512, false), 1_024);
        assert_eq!(to_send(511, 512, false), 0);
        assert_eq!(to_send(0, 512, true), 0);
    }

    #[test]
    fn spans_ended_on_many_threads_are_all_taken_and_the_bound_holds() {
        let queue = Arc::new(Queue {
            threads: Mutex::default(),
            queued: AtomicUsize::new(0),
            capacity: 100,
            batch: 8,
            full: Notify::new(),
            header: ArcSwap::from_pointee(otlp::Header::default()),
        });
        let scope = InstrumentationScope::builder("s").build();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (queue, scope) = (queue.clone(), scope.clone());
                std::thread::spawn(move || (0..30).for_each(|_| Ending(queue.clone()).on_end(span("GET", &scope))))
            })
            .collect();
        // Joined, not scoped: a join waits for the thread's locals to go.
        threads.into_iter().for_each(|thread| thread.join().unwrap());
        // 120 ended, 100 queued at most: 20 dropped. The threads are gone,
        // their buffers with them once taken.
        let taken = queue.take();
        assert_eq!(taken.iter().map(otlp::Spans::len).sum::<usize>(), 100);
        assert!(taken.iter().all(|run| run.len() <= 8));
        assert!(queue.threads.lock().unwrap().is_empty());
        // Counted until sent: the queue is still full.
        Ending(queue.clone()).on_end(span("GET", &scope));
        assert!(queue.take().is_empty());
        // Sent: this thread's next span is taken by the next round.
        queue.queued.fetch_sub(100, Ordering::AcqRel);
        Ending(queue.clone()).on_end(span("GET", &scope));
        assert_eq!(queue.take().iter().map(otlp::Spans::len).sum::<usize>(), 1);
        assert_eq!(queue.threads.lock().unwrap().len(), 1, "this thread's buffer stays");
    }
}

//! What the tracer itself costs, without the network around it: a loop
//! that does for each request what the proxy does when tracing is on (the
//! request's span, one try's span with its `traceparent`, both ended),
//! exporting to the loopback collector, at a steady rate. The CPU counted is
//! the loop's thread (where the export task runs too) and, in builds that
//! export from a thread of their own (the SDK's batch processor, before
//! `src/trace/otlp.rs`), that thread; nothing else of this process (the
//! collector's threads decode what they receive).

use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode, Uri, Version};
use truedat_auth_proxy::config::{Root, Sampler, TracingSettings};
use truedat_auth_proxy::origin::Origin;
use truedat_auth_proxy::trace::export::Pipeline;
use truedat_auth_proxy::trace::{Attempt, Outcome, Tracer};

/// Requests per second the loop keeps to (about what one proxy thread serves).
const RATE: f64 = 20_000.0;
/// Requests per measurement.
const REQUESTS: u32 = 100_000;
/// The SDK's batch processor names its export thread so (older builds).
const EXPORT_THREAD: &str = "OpenTelemetry.Traces.BatchProcessor";

/// CPU µs per request of the tracer, for each sampler: every request
/// sampled, one in ten, none (the spans exist but are not recorded).
pub fn measure(endpoint: &str) -> Vec<(&'static str, f64)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let samplers = [("every request", Root::AlwaysOn), ("one in ten", Root::Ratio(0.1)), ("none", Root::AlwaysOff)];
    samplers
        .into_iter()
        .map(|(name, root)| (name, runtime.block_on(per_request(endpoint, Sampler { parent_based: true, root }))))
        .collect()
}

async fn per_request(endpoint: &str, sampler: Sampler) -> f64 {
    let mut settings = TracingSettings::new(format!("{endpoint}/v1/traces").parse().expect("a URL"));
    settings.sampler = sampler;
    let (pipeline, tracer) = Pipeline::start(&settings).expect("the export starts");
    let tracer = Tracer::new(tracer, &Origin::parse(endpoint).expect("a URL"));
    let (uri, headers) = (Uri::from_static("/api/data?page=1"), HeaderMap::new());
    let (cpu_before, started) = (cpu_ns(), Instant::now());
    for i in 0..REQUESTS {
        if let Some(request) = tracer.request(&Method::GET, &uri, &headers) {
            let attempt = request.attempt(&Method::GET, Attempt::default());
            let mut outgoing = HeaderMap::new();
            attempt.inject(&mut outgoing);
            attempt.answered(StatusCode::OK, Version::HTTP_11);
            std::hint::black_box(request.ids());
            request.finish(Outcome { status: StatusCode::OK, attempts: 1, replayed: false, error: None });
        }
        if i % 200 == 0 {
            tokio::time::sleep_until((started + Duration::from_secs_f64(f64::from(i) / RATE)).into()).await;
        }
    }
    // The last batch goes out within the schedule delay (5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let cpu = cpu_ns() - cpu_before;
    pipeline.shutdown(Duration::from_secs(2)).await;
    cpu as f64 / 1e3 / f64::from(REQUESTS)
}

/// Nanoseconds on CPU of this thread and of the SDK's export threads.
fn cpu_ns() -> u64 {
    let me =
        std::fs::read_to_string("/proc/thread-self/stat").ok().and_then(|s| s.split(' ').next().map(str::to_owned));
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            EXPORT_THREAD.starts_with(comm.trim()) || me.as_deref() == task.file_name().to_str()
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

//! What the proxies did, counted on their side: the fake cannot see a login
//! or a probe that met a closed port.
//!
//! - Login attempts: `truedat_proxy_logins_total`, summed. Every in-process
//!   proxy records into the one global metrics recorder, which is exactly the
//!   fleet's total.
//! - Probes: the probe module logs each probe at debug level and each comeback
//!   at info level; a tracing layer counts them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use truedat_auth_proxy::telemetry;

use crate::support::prometheus::Scrape;

/// The module whose events are counted.
const PROBE_TARGET: &str = "truedat_auth_proxy::auth::probe";

/// Probes and comebacks logged so far, by the whole fleet.
#[derive(Clone, Default)]
pub struct Probes {
    probes: Arc<AtomicUsize>,
    comebacks: Arc<AtomicUsize>,
}

impl Probes {
    /// Installs the counting layer as the process's subscriber; nothing else is
    /// logged (a hundred proxies' lines would only slow the run down).
    pub fn install() -> Probes {
        let probes = Probes::default();
        let filter = Targets::new().with_target(PROBE_TARGET, Level::DEBUG);
        tracing_subscriber::registry().with(probes.clone().with_filter(filter)).init();
        probes
    }

    /// Probes sent so far.
    pub fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }

    /// "Truedat reachable again" lines so far.
    pub fn comebacks(&self) -> usize {
        self.comebacks.load(Ordering::SeqCst)
    }
}

impl<S: Subscriber> Layer<S> for Probes {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let counter = if *event.metadata().level() == Level::DEBUG { &self.probes } else { &self.comebacks };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// Login attempts (any result) made by every proxy of this process so far.
pub fn login_attempts() -> f64 {
    let text = telemetry::metrics_handle().render();
    let scrape = Scrape::parse(&text).expect("the proxy renders valid Prometheus text");
    scrape.total(telemetry::LOGINS, &[])
}

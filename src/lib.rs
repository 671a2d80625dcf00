//! truedat-auth-proxy: an authenticating reverse-proxy sidecar for Truedat.
//!
//! Legacy tools talk plain HTTP to the proxy on loopback; the proxy logs in
//! to Truedat with the service credentials, keeps the token fresh, and
//! forwards every request with `Authorization: Bearer <token>` added.
//!
//! A request flows through:
//! - [`server`]: the accept loop (connection limit, head limits, graceful drain;
//!   [`slots`] for the admin listener, which evicts idle connections when full);
//! - [`proxy`]: policy checks ([`paths`], methods, framing, browsers), the
//!   bearer from [`auth`], header hygiene ([`headers`]), the join onto
//!   [`origin`]; then each try goes out on the client connection's own
//!   [`link`] to Truedat (or the shared [`upstream`] pool when Truedat speaks
//!   HTTP/2), transient failures are retried as [`retry`] decides, and a
//!   401 that killed the token is replayed once, with the body kept by
//!   [`replay`]; the client's body is read through [`client_body`], which
//!   drains what is left when Truedat answers early, and a link reads on
//!   after a failed write ([`reads_on`]) so such an answer arrives; the
//!   response streams back in [`body`]; failures become JSON errors
//!   ([`error`]);
//! - [`access`] and [`telemetry`]: an access-log line and metrics, also for
//!   requests their client abandoned; [`trace`]: OpenTelemetry spans of the
//!   request and each of its tries, when the `OTEL_*` environment asks for them.
//!
//! Around it: [`config`] (layered, validated before anything binds, with
//! [`units`] for durations and sizes), [`auth`] (the `ArcSwap` token cell and
//! the renewer task that owns every login), [`admin`] (probes, metrics,
//! `/quitquitquit`), [`tls`] (the CA and client certificate, read strictly by
//! [`pem`] and reloaded when their files change) and [`app`], which binds,
//! runs and shuts down in order ([`workers`]: with several threads, a
//! runtime and a listener each). [`wait`] is the `wait` subcommand: a
//! start-order hold for pods without native sidecars. [`inject`] is the
//! `inject` subcommand, which adds the proxy to other workloads' manifests;
//! nothing on the proxy's path uses it.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod client_body;
pub mod config;
pub mod error;
pub mod headers;
pub mod inject;
pub mod link;
pub mod origin;
pub mod paths;
pub mod pem;
pub mod proxy;
pub mod reads_on;
pub mod replay;
pub mod retry;
pub mod server;
pub mod slots;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod units;
pub mod upstream;
pub mod wait;
pub mod workers;

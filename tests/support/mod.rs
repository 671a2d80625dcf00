//! Helpers shared by the integration tests and the demo.
//!
//! - [`fake_truedat`]: an in-process Truedat (td-auth and a data service) to proxy to
//! - [`jwt`]: HS512 tokens shaped like td-auth's, minted and checked without a JWT crate
//! - [`tls`]: a test CA and `localhost` certificate for HTTPS tests
//! - [`proxy`]: the proxy under test, in-process or as the real binary
//! - [`client`]: a keep-alive HTTP/1.1 client that reads whole answers
//! - [`wait`]: polling for a condition with a deadline
//! - [`h1`]: one hand-driven HTTP/1.1 connection, for what a pooled client hides
//! - [`hops`]: the two paths to Truedat (HTTP/1.1 link, TLS with the HTTP/2 pool), for tests of both
//! - [`process`]: resident memory and open descriptors of a process, from `/proc`
//! - [`raw`]: raw HTTP/1.1 over TCP, for requests a client library would not send
//! - [`tap`]: a recording TCP relay between the proxy and the fake
//! - [`pki`]: certificates generated per test (CA, server, expired, client) and rustls servers
//! - [`relay`]: a switchable TCP relay and a TLS front that records what the proxy negotiated
//! - [`connect_proxy`]: a recording HTTP CONNECT egress proxy
//! - [`secret_dir`]: a directory updated like a mounted Kubernetes Secret (`..data` symlink swap)
//! - [`otlp`]: an OpenTelemetry collector (OTLP/HTTP receiver) that decodes and keeps the spans it gets

// Each test binary (and the demo) uses a different subset of these helpers.
#![allow(dead_code)]

pub mod client;
pub mod connect_proxy;
pub mod fake_truedat;
pub mod h1;
pub mod hops;
pub mod jwt;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod raw;
pub mod relay;
pub mod secret_dir;
pub mod tap;
pub mod tls;
pub mod wait;

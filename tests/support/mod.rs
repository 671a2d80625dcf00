//! Helpers shared by the integration tests and the demo.
//!
//! - [`fake_truedat`]: an in-process Truedat (td-auth and a data service) to proxy to
//! - [`jwt`]: HS512 tokens shaped like td-auth's, minted and checked without a JWT crate
//! - [`tls`]: a test CA and `localhost` certificate for HTTPS tests
//! - [`proxy`]: the proxy under test, in-process or as the real binary
//! - [`client`]: a keep-alive HTTP/1.1 client that reads whole answers
//! - [`wait`]: polling for a condition with a deadline

// Each test binary (and the demo) uses a different subset of these helpers.
#![allow(dead_code)]

pub mod client;
pub mod fake_truedat;
pub mod jwt;
pub mod proxy;
pub mod tls;
pub mod wait;

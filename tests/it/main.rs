//! The integration tests: one binary, so it links once. Each module covers
//! one concern; `support` holds the fake Truedat and the helpers.

#[path = "../support/mod.rs"]
mod support;

mod admin_port;
mod cli;
mod clients;
mod comeback;
mod deploy;
mod early_answers;
mod egress;
mod fake_truedat;
mod fake_truedat_fleet;
mod faults;
mod forwarding;
mod hardening;
mod inject;
mod lifecycle;
mod links;
mod operations;
mod policy;
mod properties;
mod refresh;
mod retries;
mod review;
mod secrets;
mod tls;
mod tls_rotation;
mod tracing;
mod wait;
mod workers;

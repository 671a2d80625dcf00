mod fake_truedat;
mod forwarding;
mod lifecycle;
#[path = "../support/mod.rs"]
mod support;

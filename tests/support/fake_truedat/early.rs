//! Answers given before the request body is read, as ingress-nginx gives
//! them: a 413 when the declared length is over `client_max_body_size`, or a
//! 401 from an external-auth check. What the server then does with the body
//! the client is still sending differs between servers, and a proxy must
//! cope with both: close the connection (hyper, when a handler drops an
//! unread body) or read and discard it and keep the connection (nginx's
//! lingering, for keep-alive).

use std::sync::Mutex;

use http::StatusCode;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{self, Reply};
use super::outage::ingress_page;
use super::{FakeTruedat, lock};

/// What happens to the unread body after the early answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterEarly {
    /// Drop it: the connection closes once the answer is written.
    Close,
    /// Read and discard it, keeping the connection for the next request.
    KeepReading,
}

/// Data requests declaring a body of more than `over` bytes are answered
/// `status` (413: ingress-nginx's page; 401: Guardian's `unauthorized`)
/// before their body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyAnswer {
    pub over: u64,
    pub status: u16,
    pub then: AfterEarly,
}

/// The switch, shared through `State`.
#[derive(Default)]
pub(super) struct EarlyAnswers(Mutex<Option<EarlyAnswer>>);

impl EarlyAnswers {
    /// The early answer for this request, if it gets one; the body is then
    /// dropped or drained as the switch says.
    pub(super) fn answer(&self, parts: &Parts, mut body: Incoming) -> Result<Reply, Incoming> {
        let Some(early) = *lock(&self.0) else {
            return Err(body);
        };
        let declared: Option<u64> =
            parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if declared.is_none_or(|len| len <= early.over) {
            return Err(body);
        }
        if early.then == AfterEarly::KeepReading {
            tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
        }
        Ok(match StatusCode::from_u16(early.status).expect("a valid status") {
            StatusCode::UNAUTHORIZED => body::auth_error("unauthorized"),
            status => ingress_page(status.as_u16(), None),
        })
    }
}

impl FakeTruedat {
    /// Answers data requests with large bodies before reading them (`None`,
    /// the default: every body is read first, as Truedat does).
    pub fn set_early_answer(&self, early: Option<EarlyAnswer>) {
        *lock(&self.state.early.0) = early;
    }
}

//! Answers the proxy gives itself (SPEC §5): JSON in Truedat's own shape,
//! `{"errors":{"detail":"…"}}`, so tools that already parse Truedat's errors
//! understand them. Details are fixed texts or come from errors that hold no
//! request headers: a token or password cannot end up in a body.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::body::ProxyBody;
use crate::upstream::FailureKind;

/// Seconds a client is asked to wait before retrying when no token is held.
const RETRY_AFTER_SECS: HeaderValue = HeaderValue::from_static("5");

/// nginx's "client closed the request" (SPEC §8): not an HTTP status a
/// client ever reads, only what the log and the metrics say.
pub const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is within 100..=999"),
};

/// Everything that makes the proxy answer instead of Truedat.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    #[error("request head larger than proxy.max_request_header_bytes")]
    HeadTooLarge,
    #[error("{0}")]
    NotImplemented(&'static str),
    /// The client went away before the answer: nobody reads this one, but
    /// its status is what the access log and the metrics record.
    #[error("the client closed the request")]
    ClientClosed,
    #[error("no valid Truedat token: {0}")]
    NoToken(&'static str),
    #[error("Truedat did not answer within upstream.request_timeout")]
    Timeout,
    /// Connecting failed (TCP, TLS handshake, egress proxy, connect
    /// timeout): nothing of the request reached Truedat.
    #[error("{}", unreachable_detail(*.0))]
    Unreachable(FailureKind),
    /// An established connection failed, or the answer was malformed:
    /// Truedat may have received the request, and acted on it.
    #[error("{}", broken_detail(*.0))]
    Broken(FailureKind),
    /// Truedat answered something the proxy cannot pass on; not retried.
    #[error("{0}")]
    Malformed(&'static str),
}

fn unreachable_detail(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Tls => "Truedat unreachable: the TLS handshake failed",
        FailureKind::Timeout => "Truedat unreachable: connecting timed out",
        FailureKind::Connect | FailureKind::Protocol => "Truedat unreachable: the connection failed",
    }
}

fn broken_detail(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Tls => "the connection to Truedat broke: a TLS error on an established connection",
        _ => "bad answer from Truedat: the connection broke or the response was malformed",
    }
}

impl ProxyError {
    /// The status SPEC §5 assigns.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ClientClosed => CLIENT_CLOSED,
            ProxyError::NoToken(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unreachable(_) | ProxyError::Broken(_) | ProxyError::Malformed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The JSON response for the client.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = json_error(self.status(), &self.to_string());
        if matches!(self, ProxyError::NoToken(_)) {
            response.headers_mut().insert(RETRY_AFTER, RETRY_AFTER_SECS);
        }
        response
    }
}

/// `{"errors":{"detail":detail}}` with `status`.
pub fn json_error(status: StatusCode, detail: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "errors": { "detail": detail } });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_truedat_shaped_json() {
        let response = ProxyError::NoToken("credentials rejected").into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errors"]["detail"], "no valid Truedat token: credentials rejected");
    }

    #[test]
    fn statuses_follow_the_spec() {
        assert_eq!(ProxyError::Unreachable(FailureKind::Tls).status(), 502);
        assert_eq!(ProxyError::Broken(FailureKind::Tls).status(), 502);
        assert_eq!(ProxyError::Timeout.status(), 504);
        assert_eq!(ProxyError::HeadTooLarge.status(), 431);
        assert_eq!(ProxyError::MethodNotAllowed("x").status(), 405);
    }
}

//! A short outage of the data routes as a client of Truedat sees it: the next
//! N data requests answered by ingress-nginx's own error page (a pod
//! restarting behind it, no ready endpoints), or their connections reset
//! once the request was read (a pod killed mid-request). Counted down per
//! request, so a test knows exactly how many tries fail.

use std::sync::Mutex;

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::body::Reply;
use super::conn::ConnHandle;
use super::{FakeTruedat, lock};

/// How each of the next requests fails.
#[derive(Debug, Clone, PartialEq)]
pub enum Outage {
    /// ingress-nginx's HTML page with this status (502, 503 or 504), and
    /// `Retry-After` when given.
    Status { status: u16, retry_after: Option<String> },
    /// The connection is reset after the request was read: nothing answered.
    Reset,
    /// ingress-nginx's page with this status, sent before the request body
    /// is read (an ingress refusing at once, whatever is still uploading).
    Early(u16),
}

/// The outage in force and how many requests it still hits.
#[derive(Default)]
pub(super) struct Outages(Mutex<Option<(usize, Outage)>>);

impl Outages {
    /// The outage for this request, if any is left.
    fn take(&self) -> Option<Outage> {
        let mut current = lock(&self.0);
        let (remaining, outage) = current.as_mut()?;
        *remaining -= 1;
        let outage = outage.clone();
        if *remaining == 0 {
            *current = None;
        }
        Some(outage)
    }

    /// The answer for a request whose body is still unread, if the outage
    /// answers before reading it.
    pub(super) fn early(&self) -> Option<Reply> {
        let mut current = lock(&self.0);
        match current.as_mut()? {
            (remaining, Outage::Early(status)) => {
                let status = *status;
                *remaining -= 1;
                if *remaining == 0 {
                    *current = None;
                }
                Some(ingress_page(status, None))
            }
            _ => None,
        }
    }

    /// Applies the outage to a data request that was read whole: `Some`
    /// answer to send instead, or never returns (the connection is reset).
    pub(super) async fn apply(&self, conn: Option<&ConnHandle>) -> Option<Reply> {
        match self.take()? {
            Outage::Status { status, retry_after } => Some(ingress_page(status, retry_after.as_deref())),
            Outage::Early(status) => Some(ingress_page(status, None)),
            Outage::Reset => {
                conn?.reset();
                // The accept loop drops this handler with the connection.
                std::future::pending().await
            }
        }
    }
}

/// The page ingress-nginx serves for `status`, as it writes it.
pub(super) fn ingress_page(status: u16, retry_after: Option<&str>) -> Reply {
    let status = StatusCode::from_u16(status).expect("a valid status");
    let reason = match status.as_u16() {
        502 => "502 Bad Gateway",
        503 => "503 Service Temporarily Unavailable",
        504 => "504 Gateway Time-out",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let page = format!(
        "<html>\r\n<head><title>{reason}</title></head>\r\n<body>\r\n<center><h1>{reason}</h1></center>\r\n\
         <hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut reply = Response::new(http_body_util::Full::new(bytes::Bytes::from(page)).map_err(|e| match e {}).boxed());
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    if let Some(value) = retry_after {
        reply.headers_mut().insert(RETRY_AFTER, HeaderValue::from_str(value).expect("a valid Retry-After"));
    }
    reply
}

impl FakeTruedat {
    /// The next `requests` data requests fail with `outage`.
    pub fn fail_next(&self, requests: usize, outage: Outage) {
        *lock(&self.state.outages.0) = (requests > 0).then_some((requests, outage));
    }
}

//! The calls to Truedat's session routes: login, refresh and logout, each
//! bounded by `token.login_timeout`, each failure with its own message; and
//! the session check and ping. Each call is a span when tracing is on.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use secrecy::{ExposeSecret, SecretString};

use crate::config::Credentials;
use crate::headers::REFRESH_COOKIE;
use crate::origin::Origin;
use crate::replay::UpstreamBody;
use crate::trace::{Call, CallSpan, Parent, Tracer};
use crate::upstream::{self, HttpClient};

/// Login answers are tiny; anything larger is not Truedat talking.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

const LOGIN_ROUTE: &str = "/api/sessions";
const REFRESH_ROUTE: &str = "/api/sessions/refresh";
/// Answered 200 `pong` by every Truedat service, without credentials.
const PING_ROUTE: &str = "/api/ping";

/// Where the password comes from at each login.
#[derive(Debug, Clone)]
pub enum Password {
    Inline(SecretString),
    /// Re-read at every login, so a rotated Kubernetes Secret takes effect
    /// without a restart.
    File(PathBuf),
}

/// A freshly issued access token and, when the server handed one out, its
/// refresh token.
pub struct Issued {
    pub access: SecretString,
    pub refresh: Option<SecretString>,
}

/// Why a login, refresh or logout failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("Truedat rejected the credentials of user {user:?} (401 Invalid credentials)")]
    Rejected { user: String },
    #[error(
        "Truedat answered 422 Unprocessable Entity: the login request was malformed (check credentials.user_name and credentials.access_method)"
    )]
    Unprocessable,
    #[error("Truedat did not accept the refresh (401): the session or the refresh token is no longer valid")]
    RefreshRejected,
    #[error("unexpected answer from {route}: HTTP {status}{content_type}")]
    Status { route: &'static str, status: StatusCode, content_type: String },
    #[error("malformed answer from {route}: {problem}")]
    Malformed { route: &'static str, problem: String },
    #[error("no complete answer from {route} within {timeout:?} (token.login_timeout)")]
    Timeout { route: &'static str, timeout: Duration },
    #[error("cannot reach Truedat for {route} ({kind}): {cause}")]
    Unreachable { route: &'static str, kind: &'static str, cause: String },
    #[error("cannot read credentials.password_file {path}: {cause}")]
    PasswordFile { path: String, cause: String },
}

impl SessionError {
    /// The `result` label of `truedat_proxy_logins_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            SessionError::Rejected { .. } | SessionError::RefreshRejected => "rejected",
            _ => "error",
        }
    }

    /// Short reason for `/readyz` and 503 bodies.
    pub fn readiness_reason(&self) -> &'static str {
        match self {
            SessionError::Rejected { .. } => "credentials rejected",
            SessionError::Unprocessable => "login request rejected as malformed",
            SessionError::Timeout { .. } => "login timed out",
            SessionError::Unreachable { .. } => "Truedat unreachable",
            SessionError::PasswordFile { .. } => "password file unreadable",
            _ => "login failing",
        }
    }
}

/// The session client.
pub struct Sessions {
    client: HttpClient,
    origin: Origin,
    user_name: String,
    password: Password,
    access_method: String,
    timeout: Duration,
    /// A span per call; nothing when tracing is off.
    tracer: Tracer,
}

impl Sessions {
    /// A client for `origin` logging in with `credentials`, tracing its calls with `tracer`.
    pub fn new(
        client: HttpClient,
        origin: Origin,
        credentials: &Credentials,
        timeout: Duration,
        tracer: Tracer,
    ) -> Sessions {
        let password = match (&credentials.password, &credentials.password_file) {
            (Some(p), _) => Password::Inline(p.clone()),
            (None, Some(path)) => Password::File(path.clone()),
            (None, None) => Password::Inline(SecretString::from("")),
        };
        Sessions {
            client,
            origin,
            user_name: credentials.user_name.clone().unwrap_or_default(),
            password,
            access_method: credentials.access_method.clone(),
            timeout,
            tracer,
        }
    }

    /// `POST /api/sessions` with the service credentials; `reason` (the
    /// `reason` label of `truedat_proxy_token_refreshes_total`) and `parent`
    /// (the request whose 401 asked for it) are for its span.
    pub async fn login(&self, reason: &'static str, parent: &Parent) -> Result<Issued, SessionError> {
        let span = self.tracer.call(Call::Login, &Method::POST, LOGIN_ROUTE, parent);
        if let Some(span) = &span {
            span.set("truedat_proxy.reason", reason);
        }
        let result = self.login_call(span.as_ref()).await;
        finish(span, &result);
        result
    }

    async fn login_call(&self, span: Option<&CallSpan>) -> Result<Issued, SessionError> {
        let body = self.login_body()?;
        let request = Request::post(self.origin.route(LOGIN_ROUTE))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(UpstreamBody::full(body))
            .expect("static method, valid URI and valid header values");
        let (status, headers, body) = self.exchange(LOGIN_ROUTE, request, span).await?;
        match status {
            StatusCode::CREATED => issued(LOGIN_ROUTE, &headers, &body),
            StatusCode::UNAUTHORIZED => Err(SessionError::Rejected { user: self.user_name.clone() }),
            StatusCode::UNPROCESSABLE_ENTITY => Err(SessionError::Unprocessable),
            status => Err(unexpected(LOGIN_ROUTE, status, &headers)),
        }
    }

    /// `POST /api/sessions/refresh` with the current bearer and refresh cookie.
    pub async fn refresh(&self, bearer: &HeaderValue, refresh: &SecretString) -> Result<Issued, SessionError> {
        let span = self.tracer.call(Call::Refresh, &Method::POST, REFRESH_ROUTE, &Parent::none());
        let result = self.refresh_call(bearer, refresh, span.as_ref()).await;
        finish(span, &result);
        result
    }

    async fn refresh_call(
        &self,
        bearer: &HeaderValue,
        refresh: &SecretString,
        span: Option<&CallSpan>,
    ) -> Result<Issued, SessionError> {
        let mut cookie =
            HeaderValue::try_from(format!("{REFRESH_COOKIE}={}", refresh.expose_secret())).map_err(|_| {
                SessionError::Malformed {
                    route: REFRESH_ROUTE,
                    problem: "the refresh token is not a valid cookie value".into(),
                }
            })?;
        cookie.set_sensitive(true);
        let request = Request::post(self.origin.route(REFRESH_ROUTE))
            .header(AUTHORIZATION, bearer.clone())
            .header(COOKIE, cookie)
            .header(ACCEPT, "application/json")
            .body(UpstreamBody::Empty)
            .expect("static method, valid URI and valid header values");
        let (status, headers, body) = self.exchange(REFRESH_ROUTE, request, span).await?;
        match status {
            StatusCode::CREATED => issued(REFRESH_ROUTE, &headers, &body),
            StatusCode::UNAUTHORIZED => Err(SessionError::RefreshRejected),
            status => Err(unexpected(REFRESH_ROUTE, status, &headers)),
        }
    }

    /// `DELETE /api/sessions`: ends the session so a copied token dies with the pod.
    pub async fn logout(&self, bearer: &HeaderValue) -> Result<(), SessionError> {
        let span = self.tracer.call(Call::Logout, &Method::DELETE, LOGIN_ROUTE, &Parent::none());
        let request = Request::builder()
            .method(Method::DELETE)
            .uri(self.origin.route(LOGIN_ROUTE))
            .header(AUTHORIZATION, bearer.clone())
            .body(UpstreamBody::Empty)
            .expect("static method, valid URI and valid header values");
        let result = match self.exchange(LOGIN_ROUTE, request, span.as_ref()).await {
            Ok((status, _, _)) if status.is_success() => Ok(()),
            Ok((status, headers, _)) => Err(unexpected(LOGIN_ROUTE, status, &headers)),
            Err(error) => Err(error),
        };
        finish(span, &result);
        result
    }

    /// `GET /api/sessions` with `bearer`: td-auth answers 200 while it holds
    /// the session and 401 once it is gone; anything else (an ingress's 5xx)
    /// says nothing about the session. Its span belongs to `parent`.
    pub async fn check(&self, bearer: &HeaderValue, parent: &Parent) -> Result<StatusCode, SessionError> {
        let span = self.tracer.call(Call::SessionCheck, &Method::GET, LOGIN_ROUTE, parent);
        let request = Request::get(self.origin.route(LOGIN_ROUTE))
            .header(AUTHORIZATION, bearer.clone())
            .body(UpstreamBody::Empty)
            .expect("static method, valid URI and valid header values");
        let result = self.exchange(LOGIN_ROUTE, request, span.as_ref()).await.map(|(status, _, _)| status);
        if let Some(span) = span {
            match &result {
                Ok(StatusCode::OK) => span.finish("alive", None),
                Ok(StatusCode::UNAUTHORIZED) => span.finish("dead", None),
                Ok(status) => span.finish("unknown", Some(format!("unexpected answer: HTTP {}", status.as_u16()))),
                Err(error) => span.finish("unknown", Some(error.to_string())),
            }
        }
        result
    }

    /// `GET /api/ping` without credentials: whether Truedat answered 200
    /// within `timeout`. Any other outcome, whatever it was, is just "not yet".
    pub async fn ping(&self, timeout: Duration) -> bool {
        let span = self.tracer.call(Call::Ping, &Method::GET, PING_ROUTE, &Parent::none());
        let mut request =
            Request::get(self.origin.route(PING_ROUTE)).body(UpstreamBody::Empty).expect("static method and valid URI");
        if let Some(span) = &span {
            span.inject(request.headers_mut());
        }
        let call = async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status();
            if let Some(span) = &span {
                span.answered(status);
            }
            // Read to its end (it is tiny) so the connection returns to the pool.
            Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await.ok()?;
            Some(status == StatusCode::OK)
        };
        let ok = tokio::time::timeout(timeout, call).await.ok().flatten().unwrap_or(false);
        if let Some(span) = span {
            span.finish(if ok { "ok" } else { "failed" }, None);
        }
        ok
    }

    fn login_body(&self) -> Result<Vec<u8>, SessionError> {
        let password = self.password()?;
        let body = serde_json::json!({
            "access_method": self.access_method,
            "user": { "user_name": self.user_name, "password": password.expose_secret() },
        });
        Ok(serde_json::to_vec(&body).expect("a JSON value always serializes"))
    }

    fn password(&self) -> Result<SecretString, SessionError> {
        match &self.password {
            Password::Inline(p) => Ok(p.clone()),
            Password::File(path) => read_password_file(path),
        }
    }

    /// Sends `request` and reads the whole (small) answer within the timeout;
    /// `span`, when traced, goes to Truedat as `traceparent` and records the status.
    async fn exchange(
        &self,
        route: &'static str,
        mut request: Request<UpstreamBody>,
        span: Option<&CallSpan>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), SessionError> {
        if let Some(span) = span {
            span.inject(request.headers_mut());
        }
        let call = async {
            let response = self.client.request(request).await.map_err(|e| SessionError::Unreachable {
                route,
                kind: upstream::classify(&e).label(),
                cause: upstream::root_cause(&e),
            })?;
            let (parts, body) = response.into_parts();
            if let Some(span) = span {
                span.answered(parts.status);
            }
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| SessionError::Malformed { route, problem: format!("reading the answer failed: {e}") })?;
            Ok((parts.status, parts.headers, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(SessionError::Timeout { route, timeout: self.timeout }))
    }
}

/// Ends the span of a login, refresh or logout with its result: `success`,
/// or the `result` label of `truedat_proxy_logins_total` and the message.
fn finish<T>(span: Option<CallSpan>, result: &Result<T, SessionError>) {
    if let Some(span) = span {
        match result {
            Ok(_) => span.finish("success", None),
            Err(error) => span.finish(error.result_label(), Some(error.to_string())),
        }
    }
}

/// Reads the password file; a trailing newline (as `echo` or an editor
/// leaves) is not part of the password.
fn read_password_file(path: &std::path::Path) -> Result<SecretString, SessionError> {
    let fail = |cause: String| SessionError::PasswordFile { path: path.display().to_string(), cause };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("not valid UTF-8".into()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    Ok(SecretString::from(password))
}

/// Reads a 201 answer: `{"token": …}` plus the refresh token from the
/// `_td_refresh` cookie (current servers) or the body (servers before 4.48).
fn issued(route: &'static str, headers: &HeaderMap, body: &[u8]) -> Result<Issued, SessionError> {
    let malformed = |problem: &str| SessionError::Malformed { route, problem: problem.to_owned() };
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| malformed("201 Created, but the body is not JSON"))?;
    let access = json
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("201 Created, but no string \"token\" in the body"))?;
    if HeaderValue::try_from(format!("Bearer {access}")).is_err() {
        return Err(malformed("the token holds characters that cannot go in a header"));
    }
    let refresh =
        refresh_cookie(headers).or_else(|| json.get("refresh_token").and_then(|t| t.as_str()).map(str::to_owned));
    Ok(Issued {
        access: SecretString::from(access),
        refresh: refresh.filter(|r| !r.is_empty()).map(SecretString::from),
    })
}

/// The value of `Set-Cookie: _td_refresh=…`, if the answer set one.
fn refresh_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(SET_COOKIE).iter().find_map(|value| {
        let pair = value.to_str().ok()?.split(';').next()?;
        let (name, value) = pair.split_once('=')?;
        (name.trim() == REFRESH_COOKIE && !value.trim().is_empty()).then(|| value.trim().to_owned())
    })
}

fn unexpected(route: &'static str, status: StatusCode, headers: &HeaderMap) -> SessionError {
    let content_type =
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|ct| format!(" ({ct})")).unwrap_or_default();
    SessionError::Status { route, status, content_type }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for c in cookies {
            map.append(SET_COOKIE, HeaderValue::from_str(c).unwrap());
        }
        map
    }

    #[test]
    fn reads_the_refresh_token_from_the_cookie_or_the_legacy_body() {
        let current =
            issued("r", &headers(&["other=1", "_td_refresh=rt1; path=/; secure; HttpOnly"]), br#"{"token":"at"}"#)
                .unwrap();
        assert_eq!(current.access.expose_secret(), "at");
        assert_eq!(current.refresh.unwrap().expose_secret(), "rt1");
        let legacy = issued("r", &headers(&[]), br#"{"token":"at","refresh_token":"rt2"}"#).unwrap();
        assert_eq!(legacy.refresh.unwrap().expose_secret(), "rt2");
        let cleared = issued("r", &headers(&["_td_refresh=; max-age=0"]), br#"{"token":"at"}"#).unwrap();
        assert!(cleared.refresh.is_none());
    }

    #[test]
    fn a_201_without_a_usable_token_is_malformed() {
        for body in [&b"<html>"[..], b"{}", br#"{"token":42}"#, br#"{"token":""}"#, b"{\"token\":\"a\\nb\"}"] {
            assert!(matches!(issued("r", &HeaderMap::new(), body), Err(SessionError::Malformed { .. })), "{body:?}");
        }
    }

    #[test]
    fn the_password_file_loses_its_trailing_newline_only() {
        let dir = std::env::temp_dir().join(format!("tdap-pw-{}", std::process::id()));
        std::fs::write(&dir, " pass word \r\n").unwrap();
        assert_eq!(read_password_file(&dir).unwrap().expose_secret(), " pass word ");
        std::fs::write(&dir, "\n").unwrap();
        assert!(read_password_file(&dir).is_err());
        std::fs::remove_file(&dir).unwrap();
        let missing = read_password_file(&dir).unwrap_err().to_string();
        assert!(missing.contains("credentials.password_file"), "{missing}");
    }
}

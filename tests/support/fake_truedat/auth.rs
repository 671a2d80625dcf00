//! td-auth's session routes: login, refresh, session check and logout, with the
//! statuses, bodies and cookies described in TRUEDAT.md.

use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::super::jwt::Claims;
use super::body::{self, Reply};
use super::sessions::{ACCESS_AUDIENCE, ISSUER, Issued, REFRESH_AUDIENCE};
use super::state::State;
use super::{LoginMode, RecordedRequest, now_secs};

/// Name of the refresh cookie.
const REFRESH_COOKIE: &str = "_td_refresh";

/// Attributes td-auth gives the refresh cookie.
const COOKIE_ATTRIBUTES: &str = "path=/; secure; HttpOnly; SameSite=Strict";

/// What td-auth sends with a failed login so that a browser forgets its refresh token.
const CLEAR_REFRESH_COOKIE: &str = "_td_refresh=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; \
     max-age=0; secure; HttpOnly; SameSite=Strict";

/// Shown by [`LoginMode::Html`]: what an ingress or captive portal might answer.
const HTML_PAGE: &str = "<html><body><h1>Sign in to continue</h1></body></html>";

/// `POST /api/sessions`. Every attempt is counted and recorded before the
/// [`LoginMode`] decides the answer.
pub(super) async fn login(state: &State, request: Request<Incoming>) -> Reply {
    state.count_login_attempt();
    let (parts, incoming) = request.into_parts();
    let Some(payload) = body::collect(incoming).await else {
        return body::error_detail(StatusCode::BAD_REQUEST, "Bad Request");
    };
    state.record_login(RecordedRequest::new(&parts, payload.clone()));
    match state.login_mode_unless_hang().await {
        LoginMode::Normal => {
            state.fleet.spend_on_login().await;
            normal_login(state, &parts.headers, &payload)
        }
        LoginMode::Status(code) => status_login(code),
        LoginMode::Html => body::full(StatusCode::OK, "text/html; charset=utf-8", HTML_PAGE),
        LoginMode::NoToken => body::json(StatusCode::CREATED, &serde_json::json!({})),
        LoginMode::NotJson => body::full(StatusCode::CREATED, body::JSON, "not json"),
        LoginMode::Hang => unreachable!("login_mode_unless_hang never returns Hang"),
    }
}

/// Why a login body yields no credentials.
enum BadLogin {
    /// JSON that does not parse: Phoenix answers 400.
    Malformed,
    /// No JSON content type, empty body, or no `user.user_name`/`user.password`: 422.
    Unprocessable,
}

fn normal_login(state: &State, headers: &HeaderMap, payload: &[u8]) -> Reply {
    let (user_name, password) = match credentials(headers, payload) {
        Ok(credentials) => credentials,
        Err(BadLogin::Malformed) => {
            return body::error_detail(StatusCode::BAD_REQUEST, "Internal server error");
        }
        Err(BadLogin::Unprocessable) => {
            return body::error_detail(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Entity");
        }
    };
    if !state.credentials_match(&user_name, &password) {
        return rejected_login();
    }
    let now = now_secs();
    let refresh_exp = now + state.refresh_ttl.as_secs();
    let issued = state.sessions.issue(&state.user_name, state.token_ttl_secs(), refresh_exp, now);
    state.count_login();
    session_created(state, &issued)
}

/// Plug.Parsers only reads JSON bodies; any other content type leaves no params.
fn credentials(headers: &HeaderMap, payload: &[u8]) -> Result<(String, String), BadLogin> {
    if !is_json(headers) || payload.is_empty() {
        return Err(BadLogin::Unprocessable);
    }
    let params: Value = serde_json::from_slice(payload).map_err(|_| BadLogin::Malformed)?;
    let user = &params["user"];
    match (user["user_name"].as_str(), user["password"].as_str()) {
        (Some(user_name), Some(password)) => Ok((user_name.to_owned(), password.to_owned())),
        _ => Err(BadLogin::Unprocessable),
    }
}

/// `application/json` or any `+json` type, parameters and case ignored.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A login forced to `code`, with the reason phrase as Phoenix's error detail.
fn status_login(code: u16) -> Reply {
    let status = StatusCode::from_u16(code).expect("set_login_mode only accepts valid statuses");
    body::error_detail(status, status.canonical_reason().unwrap_or("Error"))
}

/// 401 `Invalid credentials`: the answer to a bad refresh cookie.
fn invalid_credentials() -> Reply {
    body::error_detail(StatusCode::UNAUTHORIZED, "Invalid credentials")
}

/// A failed login: 401 `Invalid credentials`, and the browser's refresh cookie cleared.
fn rejected_login() -> Reply {
    let mut reply = invalid_credentials();
    reply.headers_mut().insert(SET_COOKIE, HeaderValue::from_static(CLEAR_REFRESH_COOKIE));
    reply
}

/// 201 with the new tokens: access token in the body, refresh token in a cookie, or
/// both in the body for servers older than 4.48.
fn session_created(state: &State, issued: &Issued) -> Reply {
    if state.legacy_refresh_in_body {
        let tokens = serde_json::json!({ "refresh_token": issued.refresh, "token": issued.access });
        return body::json(StatusCode::CREATED, &tokens);
    }
    let mut reply = body::json(StatusCode::CREATED, &serde_json::json!({ "token": issued.access }));
    let cookie = format!("{REFRESH_COOKIE}={}; {COOKIE_ATTRIBUTES}", issued.refresh);
    let cookie = HeaderValue::try_from(cookie).expect("a JWT is a valid header value");
    reply.headers_mut().insert(SET_COOKIE, cookie);
    reply
}

/// `POST /api/sessions/refresh`: trades a live bearer plus a refresh cookie for new
/// tokens; the old access session and the used refresh token die at once.
pub(super) fn refresh(state: &State, headers: &HeaderMap) -> Reply {
    let now = now_secs();
    let Some(access) = live_bearer(state, headers, now) else {
        return body::auth_error("unauthorized");
    };
    let Some(refresh) = refresh_cookie(state, headers, now) else {
        return invalid_credentials();
    };
    if !state.sessions.take_refresh(&refresh.jti, now) {
        return invalid_credentials();
    }
    state.sessions.revoke_access(&access.jti);
    let issued = state.sessions.issue(&state.user_name, state.token_ttl_secs(), refresh.exp, now);
    state.count_refresh();
    session_created(state, &issued)
}

/// `GET /api/sessions`: 200 with an empty body while the bearer's session lives.
pub(super) fn check(state: &State, headers: &HeaderMap) -> Reply {
    state.count_session_check();
    if let Some(status) = state.session_check_failure() {
        return super::outage::ingress_page(status, None);
    }
    match live_bearer(state, headers, now_secs()) {
        Some(_) => body::empty(StatusCode::OK),
        None => body::auth_error("unauthorized"),
    }
}

/// `DELETE /api/sessions`: 204 and the bearer's session is gone.
pub(super) fn logout(state: &State, headers: &HeaderMap) -> Reply {
    let now = now_secs();
    let Some(access) = live_bearer(state, headers, now) else {
        return body::auth_error("unauthorized");
    };
    state.sessions.revoke_access(&access.jti);
    state.count_logout();
    body::empty(StatusCode::NO_CONTENT)
}

/// The bearer's claims when it is a valid access token whose session is alive; td-auth
/// answers every other case with the same `unauthorized`.
fn live_bearer(state: &State, headers: &HeaderMap, now: u64) -> Option<Claims> {
    let token = bearer_token(headers)?;
    let claims = state.sessions.verify(token, now).ok()?;
    let alive = claims.aud == ACCESS_AUDIENCE && claims.iss == ISSUER && state.sessions.access_alive(&claims.jti, now);
    alive.then_some(claims)
}

/// The refresh token's claims, read from the first `Cookie` header only, as td-auth does.
fn refresh_cookie(state: &State, headers: &HeaderMap, now: u64) -> Option<Claims> {
    let cookies = headers.get(COOKIE)?.to_str().ok()?;
    let token = cookies.split("; ").find_map(|pair| pair.strip_prefix(REFRESH_COOKIE)?.strip_prefix('='))?;
    let claims = state.sessions.verify(token, now).ok()?;
    (claims.aud == REFRESH_AUDIENCE && claims.iss == ISSUER).then_some(claims)
}

/// The token of an `Authorization: Bearer …` header. The scheme is case-insensitive
/// (RFC 9110 §11.1), as in Guardian's header regex.
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

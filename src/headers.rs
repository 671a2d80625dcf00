//! Header hygiene in both directions, as pure functions.
//!
//! Towards Truedat the client's credentials are removed and the proxy's
//! bearer put in; towards the client the refresh-token cookie never leaves.
//! Hop-by-hop headers describe one connection, not the message, and are
//! dropped both ways.

use http::header::{self, AUTHORIZATION, CONNECTION, COOKIE, HOST, HeaderName, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

/// The name of Truedat's refresh-token cookie.
pub const REFRESH_COOKIE: &str = "_td_refresh";

/// `X-Request-Id`: passed on, or generated, and returned to the client.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How many fields [`HOP_BY_HOP`] lists.
const HOPS: usize = 8;

/// RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header
/// field before a message is forwarded and, for each connection-option in
/// this field, remove any header or trailer field(s) from the message with
/// the same name as the connection-option, and then remove the Connection
/// header field itself (or replace it with the intermediary's own control
/// options for the forwarded message)." The fixed list adds the fields that
/// RFC 9110 §7.6.1 and RFC 9112 name as connection-specific even when
/// `Connection` does not list them.
const HOP_BY_HOP: [HeaderName; HOPS] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The field names `Connection` lists (its connection options).
pub fn names_in_connection(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
}

/// Removes hop-by-hop fields, including every field `Connection` names.
/// It runs twice per request: one pass over the names the message has
/// finds which of the list are there, and only those are looked up again to
/// be removed (a lookup hashes the name).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOPS];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // The options of the fixed list (`keep-alive`) go with it below.
    let named: Vec<HeaderName> = names_in_connection(headers).filter(|name| !HOP_BY_HOP.contains(name)).collect();
    for name in &named {
        headers.remove(name);
    }
    for (hop, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, present)| *present) {
        headers.remove(hop);
    }
}

/// Prepares a client's headers for Truedat: hop-by-hop and `Host` out (the
/// client fills `Host` from the origin), the client's `Authorization` out and
/// the proxy's bearer in, `_td_refresh` out of every `Cookie`.
pub fn to_upstream(headers: &mut HeaderMap, bearer: HeaderValue) {
    strip_hop_by_hop(headers);
    headers.remove(HOST);
    headers.insert(AUTHORIZATION, bearer);
    strip_refresh_cookie(headers);
}

/// Prepares Truedat's response headers for the client.
pub fn to_client(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    let refresh = |v: &HeaderValue| cookie_name_is(v.as_bytes(), REFRESH_COOKIE);
    if !headers.get_all(SET_COOKIE).iter().any(refresh) {
        return;
    }
    let kept: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().filter(|v| !refresh(v)).cloned().collect();
    headers.remove(SET_COOKIE);
    for value in kept {
        headers.append(SET_COOKIE, value);
    }
}

/// Removes the `_td_refresh` pair from every `Cookie` header, keeping the
/// other cookies; a header left empty goes entirely.
fn strip_refresh_cookie(headers: &mut HeaderMap) {
    if !headers.get_all(COOKIE).iter().any(|v| carries_refresh(v.as_bytes())) {
        return;
    }
    let kept: Vec<HeaderValue> =
        headers.get_all(COOKIE).iter().filter_map(|value| without_refresh(value.as_bytes())).collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}

fn carries_refresh(cookie: &[u8]) -> bool {
    cookie.split(|b| *b == b';').any(|pair| cookie_name_is(pair, REFRESH_COOKIE))
}

/// The `Cookie` value without `_td_refresh` pairs, or `None` if nothing is left.
fn without_refresh(cookie: &[u8]) -> Option<HeaderValue> {
    let pairs: Vec<&[u8]> = cookie
        .split(|b| *b == b';')
        .map(|p| p.trim_ascii())
        .filter(|p| !p.is_empty() && !cookie_name_is(p, REFRESH_COOKIE))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&pairs.join(&b"; "[..])).ok()
}

/// Whether a cookie pair (or a `Set-Cookie` value) is named `name`. Cookie
/// names are case-sensitive (RFC 6265 §5.4 compares them as octets), but a
/// server lower-casing them is not unheard of: compare case-insensitively so
/// that no spelling slips through.
fn cookie_name_is(pair: &[u8], name: &str) -> bool {
    let pair = pair.trim_ascii_start();
    let end = pair.iter().position(|b| *b == b'=' || *b == b';').unwrap_or(pair.len());
    pair[..end].trim_ascii().eq_ignore_ascii_case(name.as_bytes())
}

/// SPEC §2 `proxy.allow_browsers`: a request carrying `Origin` or
/// `Sec-Fetch-Site` comes from a web browser. Every current browser sends
/// `Sec-Fetch-Site` on every request (Fetch Metadata) and `Origin` on
/// cross-site and non-GET ones; tools send neither. `Sec-Fetch-Mode` or
/// `Sec-Fetch-Dest` alone is not a browser: Node's built-in `fetch` (undici)
/// sends `sec-fetch-mode: cors` on every request.
pub fn is_from_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN) || headers.contains_key(&SEC_FETCH_SITE)
}

/// Fetch Metadata's `Sec-Fetch-Site` (W3C Fetch Metadata Request Headers §2.4).
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_are_dropped() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "close"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(values(&h, "x-end-to-end"), ["kept"]);
    }

    #[test]
    fn only_the_hop_by_hop_fields_a_message_has_are_looked_for_and_none_is_missed() {
        let mut h = map(&[("connection", "close, X-A"), ("x-a", "1"), ("upgrade", "h2c"), ("x-b", "kept")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-b"]);

        let mut h = map(&[("keep-alive", "timeout=5"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["accept"]);

        let mut h = map(&[("accept", "*/*"), ("x-end-to-end", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn the_client_authorization_and_host_are_replaced() {
        let mut h = map(&[
            ("authorization", "Bearer stolen"),
            ("authorization", "Basic x"),
            ("host", "evil.example"),
            ("accept", "*/*"),
        ]);
        to_upstream(&mut h, HeaderValue::from_static("Bearer mine"));
        assert_eq!(values(&h, "authorization"), ["Bearer mine"]);
        assert!(h.get("host").is_none());
        assert_eq!(values(&h, "accept"), ["*/*"]);
    }

    #[test]
    fn refresh_cookie_is_removed_and_other_cookies_kept() {
        let mut h = map(&[("cookie", "a=1; _td_refresh=rt; b=2"), ("cookie", "_TD_REFRESH=x"), ("cookie", "c=3")]);
        to_upstream(&mut h, HeaderValue::from_static("Bearer t"));
        assert_eq!(values(&h, "cookie"), ["a=1; b=2", "c=3"]);
        let mut h = map(&[("cookie", "_td_refresh_other=1; x=_td_refresh")]);
        to_upstream(&mut h, HeaderValue::from_static("Bearer t"));
        assert_eq!(values(&h, "cookie"), ["_td_refresh_other=1; x=_td_refresh"]);
    }

    #[test]
    fn refresh_set_cookie_never_reaches_the_client() {
        let mut h = map(&[
            ("set-cookie", "_td_refresh=leaked; path=/; HttpOnly"),
            ("set-cookie", "other=1; path=/"),
            ("set-cookie", " _td_refresh =x"),
            ("connection", "close"),
        ]);
        to_client(&mut h);
        assert_eq!(values(&h, "set-cookie"), ["other=1; path=/"]);
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn browsers_are_told_by_origin_or_sec_fetch_site_only() {
        assert!(is_from_browser(&map(&[("origin", "https://evil.example")])));
        assert!(is_from_browser(&map(&[("Origin", "null")])));
        assert!(is_from_browser(&map(&[("sec-fetch-site", "none"), ("sec-fetch-mode", "navigate")])));
        assert!(is_from_browser(&map(&[("Sec-Fetch-Site", "same-origin")])));
        // Node's fetch (undici) and other tools.
        let node = [("accept", "*/*"), ("accept-language", "*"), ("sec-fetch-mode", "cors"), ("user-agent", "node")];
        assert!(!is_from_browser(&map(&node)));
        assert!(!is_from_browser(&map(&[("sec-fetch-dest", "empty"), ("sec-fetch-user", "?1")])));
        assert!(!is_from_browser(&map(&[("user-agent", "curl/8.5.0"), ("referer", "https://x.example/")])));
    }
}

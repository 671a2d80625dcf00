//! Property tests of the pure parts, through the library's public API: header
//! hygiene, joining request targets onto the origin, JWT lifetime arithmetic,
//! backoff bounds, renewal schedules, duration and size notation, and path
//! policy as Truedat's router and its ingress read paths, and that every
//! configuration validation accepts builds and serves without a panic.
//!
//! Each property states what must hold for every input, including hostile
//! ones (a client controls headers and paths, Truedat controls tokens, an
//! operator controls the configuration). A panic anywhere is a bug.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, CONNECTION, COOKIE, HOST, HeaderName, SET_COOKIE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use tokio_util::sync::CancellationToken;
use truedat_auth_proxy::app::App;
use truedat_auth_proxy::auth::backoff::Backoff;
use truedat_auth_proxy::auth::jwt::{self, MAX_LIFETIME};
use truedat_auth_proxy::auth::renewer::schedule;
use truedat_auth_proxy::config::Config;
use truedat_auth_proxy::headers::{REFRESH_COOKIE, strip_hop_by_hop, to_client, to_upstream};
use truedat_auth_proxy::origin::Origin;
use truedat_auth_proxy::paths::{PathPolicy, Refusal};
use truedat_auth_proxy::retry::RetryPolicy;
use truedat_auth_proxy::units::{Dur, MAX_SIZE, Size};

use crate::support::raw::raw_exchange;

/// 512 cases a property, and no regression files written into the source
/// tree: a failure prints its minimal input, which belongs in a unit test.
fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// RFC 9110 §7.6.1 and RFC 9112: the fields that describe one connection.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

// ---------------------------------------------------------------------------
// Generators

/// Field names: the ones the rules are about, in any letter case, and others.
fn header_name() -> impl Strategy<Value = HeaderName> {
    let special = prop::sample::select(vec![
        "connection",
        "Keep-Alive",
        "proxy-authorization",
        "Proxy-Connection",
        "TE",
        "trailer",
        "Transfer-Encoding",
        "upgrade",
        "authorization",
        "Authorization",
        "cookie",
        "Cookie",
        "set-cookie",
        "host",
        "x-request-id",
        "x-custom-hop",
        "accept",
    ])
    .prop_map(str::to_owned);
    let any = "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}";
    prop_oneof![3 => special, 1 => any].prop_map(|n| HeaderName::from_bytes(n.as_bytes()).expect("a token"))
}

/// Field values: lists of names (for `Connection`), cookie lists with and
/// without `_td_refresh` in every spelling, and arbitrary legal bytes.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let names = prop::collection::vec(
        prop::sample::select(vec!["close", "keep-alive", "x-custom-hop", "Authorization", "cookie", "te", "", " x "]),
        0..4,
    )
    .prop_map(|names| names.join(","));
    let pair = prop_oneof![
        Just("_td_refresh=rt".to_owned()),
        Just(" _TD_REFRESH = rt".to_owned()),
        Just("_td_refresh".to_owned()),
        Just("_td_refresh_other=1".to_owned()),
        Just("x=_td_refresh".to_owned()),
        "[a-z]{1,5}=[a-z0-9]{0,5}",
        "[ -:<-~]{0,8}",
    ];
    let cookies = prop::collection::vec(pair, 0..5).prop_map(|pairs| pairs.join(";"));
    let bytes = prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..24);
    prop_oneof![names.prop_map(|v| v.into_bytes()), cookies.prop_map(|v| v.into_bytes()), bytes]
        .prop_map(|v| HeaderValue::from_bytes(&v).expect("legal field-value bytes"))
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((header_name(), header_value()), 0..16).prop_map(|fields| {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(name, value);
        }
        map
    })
}

/// Path segments chosen to attack prefix rules: dot segments, encoded dots
/// and slashes, double encodings, the sessions route in other spellings.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        prop::sample::select(vec![
            "api",
            "sessions",
            "SESSIONS",
            "%73essions",
            "x",
            "allowed",
            "..",
            ".",
            "",
            "%2e",
            "%2E%2e",
            "%2e%2e%2f",
            "%2f",
            "%2F",
            "%252e%252e",
            "%25",
            "%",
            "%zz",
            "a%2Fb",
            "é",
            "%c3",
            "%ff",
            ".well-known",
            "...",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9._~%-]{1,6}",
    ];
    (any::<bool>(), prop::collection::vec(segment, 0..8), any::<bool>()).prop_map(|(lead, segments, trail)| {
        let mut path = if lead { "/".to_owned() } else { String::new() };
        path.push_str(&segments.join("/"));
        if trail {
            path.push('/');
        }
        path
    })
}

/// The name of a cookie pair or `Set-Cookie` value as the proxy reads it:
/// up to the first `=` or `;`, surrounding whitespace ignored.
fn cookie_name(pair: &[u8]) -> Vec<u8> {
    let end = pair.iter().position(|b| *b == b'=' || *b == b';').unwrap_or(pair.len());
    pair[..end].trim_ascii().to_ascii_lowercase()
}

fn is_refresh(pair: &[u8]) -> bool {
    cookie_name(pair) == REFRESH_COOKIE.as_bytes()
}

/// The non-empty pairs of every `Cookie` header that are not `_td_refresh`.
fn other_cookie_pairs(headers: &HeaderMap) -> Vec<Vec<u8>> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';').map(|p| p.trim_ascii().to_vec()).collect::<Vec<_>>())
        .filter(|p| !p.is_empty() && !is_refresh(p))
        .collect()
}

/// Names listed in `Connection`, as the proxy reads them.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

fn jwt(claims: &serde_json::Value) -> String {
    format!("eyJhbGciOiJIUzUxMiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// Claims values as servers (and broken servers) write them.
fn claim() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<u32>().prop_map(|n| serde_json::json!(n)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(|f| serde_json::json!(f)),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!("1700000000")),
        Just(serde_json::json!([1])),
    ]
}

// ---------------------------------------------------------------------------
// Header hygiene

proptest! {
    #![proptest_config(config())]

    #[test]
    fn towards_truedat_only_the_proxys_bearer_and_no_hop_by_hop_or_refresh_cookie(mut headers in header_map()) {
        let before = headers.clone();
        let named = connection_named(&before);
        let bearer = HeaderValue::from_static("Bearer proxy-token");
        to_upstream(&mut headers, bearer.clone());

        let authorizations: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
        prop_assert_eq!(authorizations, vec![&bearer]);
        prop_assert!(headers.get(HOST).is_none());
        for name in HOP_BY_HOP.iter().map(|n| HeaderName::from_static(n)).chain(named.iter().cloned()) {
            if name != AUTHORIZATION {
                prop_assert!(!headers.contains_key(&name), "{} survived", name);
            }
        }
        for value in headers.get_all(COOKIE) {
            prop_assert!(!value.as_bytes().split(|b| *b == b';').any(is_refresh), "{:?}", value);
        }
        if named.contains(&COOKIE) {
            prop_assert!(!headers.contains_key(COOKIE), "Connection named Cookie: it is hop-by-hop here");
        } else {
            prop_assert_eq!(other_cookie_pairs(&headers), other_cookie_pairs(&before), "other cookies are kept");
        }
        // Every end-to-end field passes untouched, values in order.
        for name in before.keys() {
            let special = [AUTHORIZATION, HOST, COOKIE].contains(name)
                || HOP_BY_HOP.contains(&name.as_str())
                || named.contains(name);
            if !special {
                prop_assert!(before.get_all(name).iter().eq(headers.get_all(name).iter()), "{} changed", name);
            }
        }
    }

    #[test]
    fn towards_the_client_no_hop_by_hop_and_no_refresh_set_cookie(mut headers in header_map()) {
        let before = headers.clone();
        let named = connection_named(&before);
        to_client(&mut headers);
        for name in HOP_BY_HOP.iter().map(|n| HeaderName::from_static(n)).chain(named.iter().cloned()) {
            prop_assert!(!headers.contains_key(&name), "{} survived", name);
        }
        for value in headers.get_all(SET_COOKIE) {
            prop_assert!(!is_refresh(value.as_bytes()), "{:?} reached the client", value);
        }
        if !named.contains(&SET_COOKIE) {
            let kept: Vec<_> = before.get_all(SET_COOKIE).iter().filter(|v| !is_refresh(v.as_bytes())).collect();
            prop_assert!(kept.into_iter().eq(headers.get_all(SET_COOKIE).iter()), "other Set-Cookie values are kept");
        }
    }

    #[test]
    fn stripping_hop_by_hop_twice_changes_nothing_more(mut headers in header_map()) {
        strip_hop_by_hop(&mut headers);
        let once = headers.clone();
        strip_hop_by_hop(&mut headers);
        prop_assert_eq!(headers, once);
    }
}

// ---------------------------------------------------------------------------
// Joining request targets onto the origin

fn base_url() -> impl Strategy<Value = (String, String)> {
    let scheme = prop::sample::select(vec!["http", "https"]);
    let host = prop::sample::select(vec!["td.example.com", "127.0.0.1:4000", "[::1]:8443", "localhost"]);
    let prefix = prop::collection::vec("[a-z0-9._~%-]{1,6}", 0..3)
        .prop_map(|s| if s.is_empty() { String::new() } else { format!("/{}", s.join("/")) });
    (scheme, host, prefix, any::<bool>()).prop_map(|(scheme, host, prefix, slash)| {
        (format!("{scheme}://{host}{prefix}{}", if slash { "/" } else { "" }), prefix)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn joining_keeps_the_origin_and_the_target_bytes((base, prefix) in base_url(), target in "[!-~]{0,40}") {
        let origin = Origin::parse(&base).expect("a valid base URL");
        let Ok(target) = target.parse::<PathAndQuery>() else {
            return Ok(()); // not a request target hyper could hand over
        };
        match origin.join(&target) {
            Ok(uri) => {
                let expected = Origin::parse(&base).expect("valid").base();
                prop_assert_eq!(uri.scheme(), expected.scheme());
                prop_assert_eq!(uri.authority(), expected.authority(), "the bearer must only go to the origin");
                let sent = uri.path_and_query().map_or("", |p| p.as_str());
                prop_assert!(sent.ends_with(target.as_str()), "{} does not end with {}", sent, target);
                prop_assert!(sent.starts_with(&prefix), "{} is not under the base path {}", sent, prefix);
                // A target of the proxy's clients starts with '/': it stays
                // a whole path segment below the base path.
                if target.as_str().starts_with('/') {
                    prop_assert_eq!(sent, format!("{prefix}{target}"));
                }
            }
            // Refused targets become 400 in the proxy.
            Err(_) => prop_assert!(!target.as_str().starts_with('/'), "{} refused under {}", target, base),
        }
    }

    #[test]
    fn parsing_any_base_url_never_panics(url in "\\PC{0,40}") {
        let _ = Origin::parse(&url);
    }
}

// ---------------------------------------------------------------------------
// JWT lifetime, backoff, renewal schedule

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_token_gets_a_bounded_lifetime(token in "\\PC{0,200}", now_secs in 0u64..5_000_000_000, fallback_s in 1u64..366 * 86_400) {
        let fallback = Duration::from_secs(fallback_s);
        let (lifetime, _) = jwt::lifetime(&token, UNIX_EPOCH + Duration::from_secs(now_secs), fallback);
        prop_assert!(lifetime <= MAX_LIFETIME);
        if !token.contains('.') {
            prop_assert_eq!(lifetime, fallback, "garbage falls back");
        }
    }

    #[test]
    fn any_claims_get_a_bounded_lifetime(exp in claim(), iat in claim(), other in any::<bool>(), now_secs in 0u64..5_000_000_000) {
        let fallback = Duration::from_secs(900);
        let mut claims = serde_json::json!({ "exp": exp, "iat": iat });
        if other {
            claims["sub"] = serde_json::json!("{\"id\":42}");
        }
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        let (lifetime, _) = jwt::lifetime(&jwt(&claims), now, fallback);
        prop_assert!(lifetime <= MAX_LIFETIME);
        let exp = claims["exp"].as_f64().filter(|e| e.is_finite() && *e >= 0.0);
        let iat = claims["iat"].as_f64().filter(|i| i.is_finite() && *i >= 0.0);
        // Whole-second claims may hide up to a second before `iat`.
        let rounding = |iat: f64| if iat.fract() == 0.0 { 1.0 } else { 0.0 };
        match (exp, iat) {
            (Some(exp), Some(iat)) if exp - iat > rounding(iat) => {
                let want = Duration::try_from_secs_f64(exp - iat - rounding(iat)).map_or(MAX_LIFETIME, |d| d.min(MAX_LIFETIME));
                prop_assert_eq!(lifetime, want, "exp - iat, whatever the local clock");
            }
            (Some(exp), _) if exp <= now_secs as f64 => prop_assert_eq!(lifetime, fallback, "an exp in the past"),
            (None, _) => prop_assert_eq!(lifetime, fallback, "no usable exp"),
            _ => prop_assert!(lifetime > Duration::ZERO),
        }
    }

    #[test]
    fn backoff_delays_stay_in_the_upper_half_of_their_step_and_under_the_cap(
        initial_ns in 0u64..u64::MAX, max_ns in 0u64..u64::MAX, attempts in 1usize..80, reset_at in 0usize..80,
    ) {
        let (initial, max) = (Duration::from_nanos(initial_ns), Duration::from_nanos(max_ns));
        let cap = max.max(initial);
        let mut backoff = Backoff::new(initial, max);
        let mut attempt = 0u32;
        for n in 0..attempts {
            if n == reset_at {
                backoff.reset();
                attempt = 0;
            }
            let factor = 2u32.checked_pow(attempt.min(31)).unwrap_or(u32::MAX);
            let step = initial.checked_mul(factor).map_or(cap, |d| d.min(cap));
            let delay = backoff.next_delay();
            prop_assert!(delay >= step / 2 && delay <= step, "attempt {}: {:?} outside [{:?}, {:?}]", attempt, delay, step / 2, step);
            prop_assert!(delay <= cap);
            attempt += 1;
        }
    }

    /// Lifetimes from 1 µs: below that, half a lifetime rounds to 0 ns and the
    /// guard with it (1 ns tokens are not a thing; see the report).
    #[test]
    fn a_schedule_renews_before_the_token_stops_being_sent(
        lifetime_us in 1u64..(MAX_LIFETIME.as_micros() as u64), refresh_before_ms in 0u64..u64::MAX / 2, jitter in 0.0f64..=1.0,
    ) {
        let lifetime = Duration::from_micros(lifetime_us);
        let plan = schedule(lifetime, Duration::from_millis(refresh_before_ms), jitter);
        prop_assert!(plan.renew_after <= plan.usable_for);
        prop_assert!(plan.usable_for < lifetime);
        prop_assert!(lifetime - plan.usable_for <= Duration::from_secs(1), "at most the last second is held back");
        prop_assert!(plan.renew_after >= plan.usable_for / 2 - plan.usable_for / 20, "never earlier than about half-way");
    }

    /// The renewer passes `rand::random()`, always in [0, 1); the function
    /// clamps, so any fraction must do.
    #[test]
    fn a_schedule_accepts_any_jitter(
        lifetime_s in 0u64..1_000_000,
        jitter in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(-1.0)],
    ) {
        let plan = schedule(Duration::from_secs(lifetime_s), Duration::from_secs(300), jitter);
        prop_assert!(plan.renew_after <= plan.usable_for);
    }

    /// Whatever a valid configuration says, the life the renewer plans for a
    /// token without readable claims fits in `Instant` arithmetic.
    #[test]
    fn a_valid_configuration_never_plans_an_overflowing_token_life(secs in prop_oneof![0u64..u64::MAX, Just(u64::MAX)]) {
        let mut config = Config::default();
        config.upstream.url = Some("https://td.example.com".to_owned());
        config.credentials.user_name = Some("svc".to_owned());
        config.credentials.password = Some("pw".to_owned().into());
        config.token.fallback_lifetime = Dur(Duration::from_secs(secs));
        if config.validate().is_ok() {
            let (lifetime, _) = jwt::lifetime("opaque-token", SystemTime::now(), config.token.fallback_lifetime.0);
            let plan = schedule(lifetime, config.token.refresh_before.0, 0.5);
            prop_assert!(Instant::now().checked_add(plan.usable_for).is_some(), "token.fallback_lifetime = {}s", secs);
            prop_assert!(SystemTime::now().checked_add(lifetime).is_some(), "token.fallback_lifetime = {}s", secs);
        }
    }
}

// ---------------------------------------------------------------------------
// Duration and size notation

proptest! {
    #![proptest_config(config())]

    #[test]
    fn durations_print_in_a_notation_that_parses_back(secs in 0u64..366 * 86_400, nanos in 0u32..1_000_000_000) {
        let dur = Dur(Duration::new(secs, nanos));
        let text = dur.to_string();
        prop_assert_eq!(text.parse::<Dur>(), Ok(dur), "{}", text);
    }

    #[test]
    fn sizes_print_in_a_notation_that_parses_back(bytes in 0..=MAX_SIZE) {
        let size = Size(bytes);
        let text = size.to_string();
        prop_assert_eq!(text.parse::<Size>(), Ok(size), "{}", text);
    }

    #[test]
    fn parsing_any_text_as_a_duration_or_size_never_panics(text in "\\PC{0,30}") {
        let _ = text.parse::<Dur>();
        let _ = text.parse::<Size>();
    }

    #[test]
    fn parsed_sizes_are_what_they_say(n in 0u64..1 << 33, unit in prop::sample::select(vec![("B", 1u64), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("", 1)])) {
        let parsed = format!("{n}{}", unit.0).parse::<Size>();
        match n.checked_mul(unit.1).filter(|b| *b <= MAX_SIZE) {
            Some(bytes) => prop_assert_eq!(parsed, Ok(Size(bytes))),
            None => prop_assert!(parsed.is_err()),
        }
    }

    /// Any value of any duration or size key is either a configuration
    /// error naming that key, or small enough for the arithmetic done with
    /// it (deadlines added to the current time, buffers doubled).
    #[test]
    fn huge_durations_and_sizes_are_configuration_errors_not_panics(
        key in prop::sample::select(duration_and_size_keys()),
        n in prop_oneof![any::<u64>(), 0u64..1_000_000],
        unit in prop::sample::select(vec!["ns", "ms", "s", "m", "h", "days", "y", "B", "KiB", "MiB", "GiB"]),
    ) {
        let (section, name) = key.split_once('.').unwrap();
        let text = format!("[{section}]\n{name} = \"{n}{unit}\"\n");
        let figment = figment::Figment::from(figment::providers::Serialized::defaults(Config::default()))
            .merge(<figment::providers::Toml as figment::providers::Format>::string(&text));
        match figment.extract::<Config>() {
            Err(error) => prop_assert!(error.to_string().contains(name) || error.path.join(".") == key, "{}: {}", key, error),
            Ok(config) => {
                let table: toml::Table = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
                let value = table[section][name].as_str().unwrap().to_owned();
                if let Ok(d) = value.parse::<Dur>() {
                    prop_assert!(Instant::now().checked_add(d.0 * 4).is_some(), "{} = {}", key, value);
                } else {
                    let size = value.parse::<Size>().unwrap();
                    prop_assert!(size.0.checked_mul(4).is_some_and(|b| usize::try_from(b).is_ok()), "{} = {}", key, value);
                }
            }
        }
    }
}

/// Every key whose default is a duration or a size, found from the
/// defaults themselves so that a key added later is covered too.
fn duration_and_size_keys() -> Vec<String> {
    let table: toml::Table = toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
    let mut keys = Vec::new();
    for (section, values) in &table {
        for (name, value) in values.as_table().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            if text.parse::<Dur>().is_ok() || text.parse::<Size>().is_ok() {
                keys.push(format!("{section}.{name}"));
            }
        }
    }
    assert!(keys.len() >= 15, "{keys:?}");
    keys
}

// ---------------------------------------------------------------------------
// Whatever validation accepts runs (SPEC §1)

/// What kind of number a configuration key holds, told from its default.
#[derive(Clone, Copy, Debug)]
enum Numeric {
    Duration,
    Size,
    Count,
    Ratio,
    Statuses,
}

/// Every numeric key (durations, sizes, counts, ratios, status lists), found
/// from the defaults themselves so that a key added later is covered too.
fn numeric_keys() -> Vec<(String, Numeric)> {
    let table: toml::Table = toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
    let mut keys = Vec::new();
    for (section, values) in &table {
        for (name, value) in values.as_table().into_iter().flatten() {
            let kind = match value {
                toml::Value::String(text) if text.parse::<Dur>().is_ok() => Numeric::Duration,
                toml::Value::String(text) if text.parse::<Size>().is_ok() => Numeric::Size,
                toml::Value::Integer(_) => Numeric::Count,
                toml::Value::Float(_) => Numeric::Ratio,
                toml::Value::Array(items) if items.first().is_some_and(toml::Value::is_integer) => Numeric::Statuses,
                _ => continue,
            };
            keys.push((format!("{section}.{name}"), kind));
        }
    }
    assert!(keys.len() >= 20, "{keys:?}");
    keys
}

/// Numbers an operator (or a typo) could write: small ones, the whole range,
/// and the edges of the integer types.
fn any_number() -> impl Strategy<Value = u64> {
    let edges = vec![
        0,
        1,
        i32::MAX as u64 - 1,
        i32::MAX as u64,
        i32::MAX as u64 + 1,
        u32::MAX as u64,
        i64::MAX as u64,
        u64::MAX,
    ];
    prop_oneof![
        3 => 0u64..100_000,
        1 => any::<u32>().prop_map(u64::from),
        1 => any::<u64>(),
        3 => prop::sample::select(edges),
    ]
}

/// TOML values for a key of kind `kind`, valid or not.
fn value_of(kind: Numeric) -> BoxedStrategy<String> {
    match kind {
        Numeric::Duration => {
            let unit = prop::sample::select(vec!["ns", "ms", "s", "m", "h", "days", "y"]);
            (any_number(), unit).prop_map(|(n, unit)| format!("\"{n}{unit}\"")).boxed()
        }
        Numeric::Size => {
            let unit = prop::sample::select(vec!["B", "KiB", "MiB", "GiB", ""]);
            (any_number(), unit).prop_map(|(n, unit)| format!("\"{n}{unit}\"")).boxed()
        }
        Numeric::Count => prop_oneof![any_number().prop_map(|n| n.to_string()), Just("-1".to_owned())].boxed(),
        Numeric::Ratio => prop_oneof![
            0.0f64..2000.0,
            any::<f64>(),
            prop::sample::select(vec![0.0, -0.0, 1e-45, 1e-300, f64::MIN_POSITIVE, 999.999_999_9, 1000.0, f64::MAX]),
        ]
        .prop_map(|f| if f.is_nan() { "nan".to_owned() } else { format!("{f:?}") })
        .boxed(),
        Numeric::Statuses => prop::collection::vec(any::<u16>(), 0..4).prop_map(|s| format!("{s:?}")).boxed(),
    }
}

/// One or two numeric keys set to any value, as `key = value` lines.
fn numeric_settings() -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(numeric_keys(), 1..=2).prop_flat_map(|chosen| {
        chosen
            .into_iter()
            .map(|(key, kind)| value_of(kind).prop_map(move |value| format!("{key} = {value}")))
            .collect::<Vec<_>>()
    })
}

/// The configuration of a proxy on port 0 in front of a Truedat that is
/// never there, with `lines` on top, as the binary reads it; `None` when
/// it does not parse or does not validate.
fn accepted(lines: &[String]) -> Option<Config> {
    let mut text = String::from(
        "listen.address = \"127.0.0.1:0\"\nadmin.address = \"127.0.0.1:0\"\nupstream.url = \"http://127.0.0.1:1\"\n\
         credentials.user_name = \"svc\"\ncredentials.password = \"pw\"\n",
    );
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    let figment = figment::Figment::from(figment::providers::Serialized::defaults(Config::default()))
        .merge(<figment::providers::Toml as figment::providers::Format>::string(&text));
    let config = figment.extract::<Config>().ok()?;
    config.validate().is_ok().then_some(config)
}

thread_local! {
    /// Panics on this thread, counted by the hook `count_panics` installs:
    /// the proxy's tasks run on the current-thread runtime of the case, and
    /// tokio turns a task's panic into an error nobody may look at.
    static PANICS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Chains a panic hook that counts each panic in `PANICS`, once per process.
fn count_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|count| count.set(count.get() + 1));
            previous(info);
        }));
    });
}

/// The status lines `GET /healthz` on the admin listener and `TRACE /` on
/// the proxy listener were answered with (empty when a timeout of the
/// configuration closed the connection first).
type Answers = (String, String);

/// Builds every part of the proxy from `config` and serves one request on
/// each listener, as the binary would; `Err` says what failed. Truedat is
/// never reached, so nothing waits for long.
fn runs(config: Config) -> Result<Answers, String> {
    count_panics();
    let before = PANICS.with(std::cell::Cell::get);
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve_once(config)))
        .unwrap_or_else(|_| Err("a panic while building".to_owned()));
    let panics = PANICS.with(std::cell::Cell::get) - before;
    if panics > 0 {
        return Err(format!("{panics} panic(s) while building or serving"));
    }
    served
}

fn serve_once(config: Config) -> Result<Answers, String> {
    let _ = RetryPolicy::new(&config.retry);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let served = runtime.block_on(async {
        let app = App::build(config).await.map_err(|e| format!("a valid configuration did not build: {e}"))?;
        let bound = app.bound();
        let running = tokio::spawn(app.run(CancellationToken::new()));
        // Whatever the timeouts make of these exchanges, they run the
        // accept loops and hyper's connection builders.
        let status_line = |text: String| text.lines().next().unwrap_or_default().to_owned();
        let admin = raw_exchange(bound.admin, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        let proxy = raw_exchange(bound.proxy, b"TRACE / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        if running.is_finished() {
            return Err("the proxy stopped by itself".to_owned());
        }
        Ok((status_line(admin), status_line(proxy)))
    });
    drop(runtime);
    served
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..config() })]

    /// SPEC §1: whatever `--check-config` accepts, the proxy starts with.
    #[test]
    fn whatever_validation_accepts_builds_and_serves_without_a_panic(lines in numeric_settings()) {
        if let Some(config) = accepted(&lines) {
            let ran = runs(config);
            prop_assert!(ran.is_ok(), "{:?}: {:?}", lines, ran);
        }
    }
}

/// The harness above does serve: with the defaults, both listeners answer.
#[test]
fn the_default_configuration_answers_on_both_listeners() {
    let config = accepted(&[]).expect("the defaults are valid");
    let (admin, proxy) = runs(config).expect("the defaults run");
    assert_eq!((admin.as_str(), proxy.as_str()), ("HTTP/1.1 200 OK", "HTTP/1.1 405 Method Not Allowed"));
}

/// The edges of every numeric key, one key at a time: each is refused by
/// validation or runs (the property above samples combinations).
#[test]
fn every_numeric_key_at_its_edges_is_refused_or_runs() {
    let counts = ["0", "1", "2147483646", "2147483647", "4294967295", "9223372036854775807", "-1"];
    let durations =
        ["\"0s\"", "\"1ns\"", "\"2147483647s\"", "\"4294967295ms\"", "\"366days\"", "\"18446744073709551615ns\""];
    let sizes = ["\"0B\"", "\"1B\"", "\"2147483647B\"", "\"4294967295B\"", "\"1024GiB\""];
    let ratios = ["0.0", "1e-45", "1e-300", "1000.0", "1000.0001", "1.7976931348623157e308", "inf"];
    let statuses = ["[]", "[0]", "[65535]", "[400, 599]"];
    let mut failures = Vec::new();
    for (key, kind) in numeric_keys() {
        let values: &[&str] = match kind {
            Numeric::Duration => &durations,
            Numeric::Size => &sizes,
            Numeric::Count => &counts,
            Numeric::Ratio => &ratios,
            Numeric::Statuses => &statuses,
        };
        for value in values {
            let line = format!("{key} = {value}");
            if let Some(config) = accepted(std::slice::from_ref(&line)) {
                if let Err(error) = runs(config) {
                    failures.push(format!("{line}: {error}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Paths

/// How the two readers downstream of the proxy see a path: Plug (split on
/// literal `/`, empty segments dropped, each segment decoded, `..` kept as a
/// name) and ingress-nginx (decoded first, then dot segments resolved).
fn readings(raw: &str) -> [Vec<Vec<u8>>; 2] {
    [plug_segments(raw), nginx_segments(raw)]
}

fn plug_segments(raw: &str) -> Vec<Vec<u8>> {
    raw.split('/').filter(|s| !s.is_empty()).map(|s| decode(s.as_bytes())).collect()
}

fn nginx_segments(raw: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for segment in decode(raw.as_bytes()).split(|b| *b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s.to_vec()),
        }
    }
    out
}

/// Percent-decoding as both do it, once; invalid escapes stay as they are.
fn decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex.filter(|_| raw[i] == b'%').and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    out
}

/// `segments` lies under `prefix` as `proxy.allow_paths` means it.
fn under(segments: &[Vec<u8>], prefix: &str) -> bool {
    let want = plug_segments(prefix);
    let Some((last, init)) = want.split_last() else {
        return true;
    };
    segments.len() >= want.len()
        && segments[..init.len()] == *init
        && if prefix.ends_with('/') { segments[init.len()] == *last } else { segments[init.len()].starts_with(last) }
}

fn is_sessions(segments: &[Vec<u8>]) -> bool {
    segments.len() >= 2 && segments[0].eq_ignore_ascii_case(b"api") && segments[1].eq_ignore_ascii_case(b"sessions")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_allowed_path_is_inside_its_prefix_for_plug_and_for_nginx(
        prefixes in prop::collection::vec(path().prop_map(|p| format!("/{}", p.trim_start_matches('/'))), 1..3),
        raw in path(),
        allow_sessions in any::<bool>(),
    ) {
        let policy = PathPolicy::new(&prefixes, allow_sessions);
        if let Ok(()) = policy.check(&raw) {
            for reading in readings(&raw) {
                prop_assert!(prefixes.iter().any(|p| under(&reading, p)), "{:?} allowed by {:?}", raw, prefixes);
                prop_assert!(allow_sessions || !is_sessions(&reading), "{:?} reached the sessions route", raw);
            }
        }
    }

    #[test]
    fn a_path_either_reader_resolves_differently_is_ambiguous(raw in path()) {
        let [plug, nginx] = readings(&raw);
        if plug != nginx {
            prop_assert_eq!(PathPolicy::new(&[], true).check(&raw), Err(Refusal::Ambiguous), "{:?}", raw);
        }
    }

    #[test]
    fn the_sessions_route_is_refused_in_any_spelling(raw in path()) {
        let verdict = PathPolicy::new(&[], false).check(&raw);
        if verdict != Err(Refusal::Ambiguous) {
            let under = is_sessions(&plug_segments(&raw));
            prop_assert_eq!(verdict == Err(Refusal::Sessions), under, "{:?}", raw);
            prop_assert_eq!(PathPolicy::new(&[], true).check(&raw), Ok(()));
        }
    }
}

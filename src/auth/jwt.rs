//! How long a token lives, read from its JWT claims without verifying the
//! signature: the proxy is not the verifier, Truedat is.
//!
//! SPEC §3.2: `exp - iat` when both are present, counted from the moment the
//! token arrived, so a pod whose clock is off does not matter; else
//! `exp - now`; else the configured fallback. Whole-second claims lose up to
//! a second to truncation, which is taken off so that the estimate is never
//! later than the real expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// No token is trusted for longer than this, whatever its claims say: it
/// keeps `Instant` arithmetic far from overflow.
pub const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// Where a lifetime came from, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `exp - iat`.
    IssuedAt,
    /// `exp - now` (no usable `iat`).
    Expiry,
    /// Not a JWT, or no usable `exp`.
    Fallback,
}

/// Lifetime of `token` as seen at `now` (wall clock, only used without `iat`).
pub fn lifetime(token: &str, now: SystemTime, fallback: Duration) -> (Duration, Source) {
    let fallback = fallback.min(MAX_LIFETIME);
    let Some(claims) = claims(token) else {
        return (fallback, Source::Fallback);
    };
    let exp = claims.get("exp").and_then(seconds);
    let iat = claims.get("iat").and_then(seconds);
    match (exp, iat) {
        // Truedat writes whole seconds: a token issued at 12.9 s says iat = 12,
        // so up to one second of `exp - iat` was gone before it was issued.
        (Some(exp), Some(iat)) if exp - iat > rounding(iat) => (clamp(exp - iat - rounding(iat)), Source::IssuedAt),
        (Some(exp), _) => {
            let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            if exp > now { (clamp(exp - now), Source::Expiry) } else { (fallback, Source::Fallback) }
        }
        _ => (fallback, Source::Fallback),
    }
}

/// The claims object of a JWT (`header.claims.signature`), if it is one.
fn claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional; nothing else.
fn seconds(value: &serde_json::Value) -> Option<f64> {
    value.as_f64().filter(|s| s.is_finite() && *s >= 0.0)
}

/// What truncating the issue time to `iat` may have hidden.
fn rounding(iat: f64) -> f64 {
    if iat.fract() == 0.0 { 1.0 } else { 0.0 }
}

fn clamp(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).map_or(MAX_LIFETIME, |d| d.min(MAX_LIFETIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!("eyJhbGciOiJIUzUxMiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(claims))
    }

    const FALLBACK: Duration = Duration::from_secs(900);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn exp_minus_iat_ignores_the_local_clock() {
        let token = jwt(r#"{"iat":1000,"exp":1600,"nbf":1000}"#);
        for now in [at(0), at(1000), at(5_000_000)] {
            assert_eq!(lifetime(&token, now, FALLBACK), (Duration::from_secs(599), Source::IssuedAt));
        }
    }

    #[test]
    fn exp_alone_counts_from_now() {
        let token = jwt(r#"{"exp":1600}"#);
        assert_eq!(lifetime(&token, at(1000), FALLBACK), (Duration::from_secs(600), Source::Expiry));
        // Already past: the server's verdict will come as a 401; assume the fallback.
        assert_eq!(lifetime(&token, at(2000), FALLBACK), (FALLBACK, Source::Fallback));
    }

    #[test]
    fn garbage_falls_back() {
        for token in [
            "opaque-token".to_owned(),
            "a.b.c".to_owned(),
            "a.b.c.d".to_owned(),
            jwt("[1,2]"),
            jwt(r#"{"exp":"soon","iat":1}"#),
            jwt(r#"{"exp":-5}"#),
            jwt(r#"{"iat":1000}"#),
        ] {
            assert_eq!(lifetime(&token, at(1000), FALLBACK), (FALLBACK, Source::Fallback), "{token}");
        }
    }

    #[test]
    fn iat_after_exp_is_ignored() {
        let token = jwt(r#"{"iat":2000,"exp":1600}"#);
        assert_eq!(lifetime(&token, at(1000), FALLBACK), (Duration::from_secs(600), Source::Expiry));
    }

    #[test]
    fn huge_and_fractional_values_are_bounded() {
        let token = jwt(r#"{"iat":0,"exp":1e300}"#);
        assert_eq!(lifetime(&token, at(0), FALLBACK).0, MAX_LIFETIME);
        let token = jwt(r#"{"iat":10.5,"exp":12}"#);
        assert_eq!(lifetime(&token, at(0), FALLBACK).0, Duration::from_millis(1500));
        // One second of life, all of which truncation may have eaten: no usable lifetime.
        let token = jwt(r#"{"iat":10,"exp":11}"#);
        assert_eq!(lifetime(&token, at(0), FALLBACK).1, Source::Expiry);
    }
}

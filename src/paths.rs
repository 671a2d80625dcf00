//! Which request paths the proxy forwards.
//!
//! The path is forwarded byte for byte, but the decision is taken on the
//! path as Truedat's router will see it: percent-decoded (Plug decodes each
//! segment), empty and `.` segments dropped, `..` resolved (RFC 3986 §5.2.4).
//! So `/api/allowed/../secret`, `/api/allowed/%2e%2e/secret` and
//! `//api//sessions` cannot slip past a prefix rule.

use std::borrow::Cow;

/// The route under which Truedat manages sessions. Through the proxy a tool
/// could log the proxy's own session out, or trade its token for a refreshed
/// one and so obtain a credential.
const SESSIONS: &str = "/api/sessions";

/// The forwarding rules of `[proxy]` on paths.
#[derive(Clone, Debug, Default)]
pub struct PathPolicy {
    /// Normalised prefixes; empty means every path.
    allow: Vec<String>,
    allow_sessions: bool,
}

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Sessions,
    NotAllowed,
}

impl PathPolicy {
    /// The policy of `proxy.allow_paths` and `proxy.allow_session_paths`.
    pub fn new(allow_paths: &[String], allow_session_paths: bool) -> PathPolicy {
        let allow = allow_paths
            .iter()
            .map(|p| {
                let normal = normalize(p);
                // "/api/x/" means "under /api/x": keep the slash the operator wrote.
                if p.ends_with('/') && normal != "/" { format!("{normal}/") } else { normal }
            })
            .collect();
        PathPolicy { allow, allow_sessions: allow_session_paths }
    }

    /// Whether the raw request path may be forwarded.
    pub fn check(&self, raw_path: &str) -> Result<(), Refusal> {
        // Most paths are already normal: skip the allocation for them.
        let path = if is_normal(raw_path) { Cow::Borrowed(raw_path) } else { Cow::Owned(normalize(raw_path)) };
        if !self.allow_sessions && is_under_ignoring_case(&path, SESSIONS) {
            return Err(Refusal::Sessions);
        }
        if self.allow.is_empty() || self.allow.iter().any(|prefix| path_starts_with(&path, prefix)) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }
}

/// `path` is `route` or below it, in any letter case.
fn is_under_ignoring_case(path: &str, route: &str) -> bool {
    let (path, route) = (path.as_bytes(), route.as_bytes());
    path.len() >= route.len()
        && path[..route.len()].eq_ignore_ascii_case(route)
        && (path.len() == route.len() || path[route.len()] == b'/')
}

/// Whether `normalize` would return `raw` unchanged: nothing encoded, no
/// empty or dot segments, no trailing slash.
fn is_normal(raw: &str) -> bool {
    raw.starts_with('/')
        && !raw.contains('%')
        && !raw.contains("//")
        && !raw.contains("/.")
        && (raw.len() == 1 || !raw.ends_with('/'))
}

fn path_starts_with(path: &str, prefix: &str) -> bool {
    // A prefix ending in '/' also covers the directory itself: "/api/x/" allows "/api/x".
    path.starts_with(prefix) || prefix.strip_suffix('/').is_some_and(|p| p == path)
}

/// The path as a router sees it: decoded, without empty, `.` or `..` segments.
pub fn normalize(raw: &str) -> String {
    let decoded = percent_decode(raw);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

/// Decodes every `%XX` (invalid escapes stay as they are); bytes that are
/// not UTF-8 become U+FFFD, which no prefix contains.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_resolves_what_a_router_resolves() {
        for (raw, normal) in [
            ("/api/x", "/api/x"),
            ("/api/allowed/../secret", "/api/secret"),
            ("/api/allowed/%2e%2E/secret", "/api/secret"),
            ("/api/allowed/%2e%2e%2fsecret", "/api/secret"),
            ("//api//sessions/", "/api/sessions"),
            ("/./api/./x", "/api/x"),
            ("/../../etc", "/etc"),
            ("/api/%73essions", "/api/sessions"),
            ("/api/bad%zzescape%", "/api/bad%zzescape%"),
            ("", "/"),
        ] {
            assert_eq!(normalize(raw), normal, "{raw}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_normalize() {
        for raw in
            ["/", "/api/x", "/api/x/", "/api/./x", "/api/%2e", "//x", "/a/..", "/api/x.json", "/.well-known", "api"]
        {
            if is_normal(raw) {
                assert_eq!(normalize(raw), raw, "{raw}");
            }
        }
        assert!(is_normal("/api/x.json"));
        assert!(!is_normal("/api/x/"));
    }

    #[test]
    fn session_routes_are_refused_unless_allowed() {
        let policy = PathPolicy::new(&[], false);
        for path in [
            "/api/sessions",
            "/api/sessions/refresh",
            "//api/sessions",
            "/api/x/../sessions",
            "/API/Sessions",
            "/api/%73essions/",
        ] {
            assert_eq!(policy.check(path), Err(Refusal::Sessions), "{path}");
        }
        for path in ["/api/sessionsx", "/api/ping", "/api/v2"] {
            assert_eq!(policy.check(path), Ok(()), "{path}");
        }
        assert_eq!(PathPolicy::new(&[], true).check("/api/sessions"), Ok(()));
    }

    #[test]
    fn allow_paths_cannot_be_escaped() {
        let policy = PathPolicy::new(&["/api/data_structures/".into(), "/api/v2".into()], false);
        for ok in ["/api/data_structures/1", "/api/data_structures", "/api/v2", "/api/v2?q", "/api/v2x"] {
            assert_eq!(policy.check(ok.split('?').next().unwrap()), Ok(()), "{ok}");
        }
        for refused in [
            "/api/data_structures/../users",
            "/api/data_structures/%2e%2e/users",
            "/api/data_structures/%2E%2E%2Fusers",
            "/api/users",
            "/",
            "/api/data_structuresx",
        ] {
            assert_eq!(policy.check(refused), Err(Refusal::NotAllowed), "{refused}");
        }
    }
}

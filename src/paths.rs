//! Which request paths the proxy forwards.
//!
//! The path is forwarded byte for byte, so the decision must hold for every
//! reader downstream. Truedat's router (Plug/Phoenix) splits the raw path on
//! literal `/`, drops empty segments and percent-decodes each segment
//! afterwards; it never resolves `..`. ingress-nginx, in front of it, routes
//! on its own normalised URI (decoded, dot segments resolved) but passes the
//! original on. A path those two read differently is ambiguous: it is refused
//! before any other check (SPEC §4), and every other path is checked segment
//! by segment, as Plug reads it.

use std::borrow::Cow;

/// The route under which Truedat manages sessions. Through the proxy a tool
/// could log the proxy's own session out, or trade its token for a refreshed
/// one and so obtain a credential.
const SESSIONS: [&[u8]; 2] = [b"api", b"sessions"];

/// The forwarding rules of `[proxy]` on paths.
#[derive(Clone, Debug, Default)]
pub struct PathPolicy {
    /// `proxy.allow_paths` as segments; empty means every path.
    allow: Vec<Prefix>,
    allow_sessions: bool,
}

/// One `proxy.allow_paths` entry, decoded into segments.
#[derive(Clone, Debug)]
struct Prefix {
    segments: Vec<Vec<u8>>,
    /// Written with a trailing `/` ("/api/x/"): the last segment must match
    /// whole. Without it ("/api/v2") the last segment is a string prefix, as
    /// the operator wrote it ("/api/v2" also covers "/api/v2x").
    whole_last: bool,
}

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Routers and ingresses could read it two ways: 400.
    Ambiguous,
    /// Under `/api/sessions`: 403.
    Sessions,
    /// Outside `proxy.allow_paths`: 403.
    NotAllowed,
}

impl PathPolicy {
    /// The policy of `proxy.allow_paths` and `proxy.allow_session_paths`.
    pub fn new(allow_paths: &[String], allow_session_paths: bool) -> PathPolicy {
        let allow = allow_paths
            .iter()
            .map(|p| Prefix { segments: segments(p).map(Cow::into_owned).collect(), whole_last: p.ends_with('/') })
            .collect();
        PathPolicy { allow, allow_sessions: allow_session_paths }
    }

    /// Whether the raw request path may be forwarded.
    pub fn check(&self, raw_path: &str) -> Result<(), Refusal> {
        if is_ambiguous(raw_path) {
            return Err(Refusal::Ambiguous);
        }
        if !self.allow_sessions && is_sessions(raw_path) {
            return Err(Refusal::Sessions);
        }
        if self.allow.is_empty() || self.allow.iter().any(|prefix| prefix.covers(raw_path)) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }
}

impl Prefix {
    fn covers(&self, raw_path: &str) -> bool {
        let mut path = segments(raw_path);
        let Some((last, init)) = self.segments.split_last() else {
            return true; // "/" allows everything.
        };
        if !init.iter().all(|want| path.next().is_some_and(|got| *got == want[..])) {
            return false;
        }
        match path.next() {
            Some(got) if self.whole_last => *got == last[..],
            Some(got) => got.starts_with(last),
            None => false,
        }
    }
}

/// `/api/sessions` or below, in any letter case (Plug routes are
/// case-sensitive, but an ingress or another service might not be).
fn is_sessions(raw_path: &str) -> bool {
    let mut path = segments(raw_path);
    SESSIONS.iter().all(|want| path.next().is_some_and(|got| got.eq_ignore_ascii_case(want)))
}

/// SPEC §4: a `.` or `..` segment, literal or percent-encoded, or an encoded
/// `/` or `\` anywhere in the path. Plug would take `%2F` as part of a
/// segment where nginx (and RFC 3986 resolution) would see two, and `..`
/// climbs out of a prefix for nginx but not for Plug.
fn is_ambiguous(raw_path: &str) -> bool {
    if raw_path.contains('%') {
        let lower = raw_path.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return true;
        }
    } else if !raw_path.contains("/.") && !raw_path.starts_with('.') {
        return false; // The common case: nothing encoded and no dot segment.
    }
    raw_path.split('/').any(|segment| matches!(&*percent_decode(segment), b"." | b".."))
}

/// The path as Plug sees it: split on literal `/`, empty segments ignored,
/// each segment percent-decoded.
fn segments(raw_path: &str) -> impl Iterator<Item = Cow<'_, [u8]>> {
    raw_path.split('/').filter(|s| !s.is_empty()).map(percent_decode)
}

/// Decodes every `%XX` of one segment (invalid escapes stay as they are);
/// borrows when there is nothing to decode, which is most of the time.
fn percent_decode(segment: &str) -> Cow<'_, [u8]> {
    let bytes = segment.as_bytes();
    if !bytes.contains(&b'%') {
        return Cow::Borrowed(bytes);
    }
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
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spellings that ingress-nginx and Plug read differently.
    const AMBIGUOUS: &[&str] = &[
        "/api/v2/../data_structures/",
        "/api/test/bytes/..%2Fecho",
        "/api/allowed/../secret",
        "/api/allowed/%2e%2E/secret",
        "/api/allowed/%2e%2e%2fsecret",
        "/api/x/./y",
        "/./api/x",
        "/api/x/.",
        "/api/x/..",
        "/api/%2e/x",
        "/api/.%2e/x",
        "/api/%2E./x",
        "/api/a%2Fb",
        "/api/a%2fb",
        "/api/a%5Cb",
        "/api/a%5c..",
        "/..",
        "..",
        "/api/x/../sessions",
        "/api/sessions%2Frefresh",
    ];

    #[test]
    fn ambiguous_paths_are_refused_before_anything_else() {
        let open = PathPolicy::new(&[], true);
        for path in AMBIGUOUS {
            assert_eq!(open.check(path), Err(Refusal::Ambiguous), "{path}");
        }
    }

    #[test]
    fn unambiguous_dots_and_escapes_pass() {
        let open = PathPolicy::new(&[], false);
        for path in ["/api/x.json", "/.well-known/x", "/api/...", "/api/..x", "/api/a%20b", "/api/%252e%252e", "/"] {
            assert_eq!(open.check(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn session_routes_are_refused_unless_allowed() {
        let policy = PathPolicy::new(&[], false);
        for path in ["/api/sessions", "/api/sessions/refresh", "//api/sessions", "/API/Sessions", "/api/%73essions/"] {
            assert_eq!(policy.check(path), Err(Refusal::Sessions), "{path}");
        }
        for path in ["/api/sessionsx", "/api/ping", "/api/v2", "/sessions", "/x/api/sessions"] {
            assert_eq!(policy.check(path), Ok(()), "{path}");
        }
        assert_eq!(PathPolicy::new(&[], true).check("/api/sessions"), Ok(()));
    }

    #[test]
    fn allow_paths_match_decoded_segments() {
        let policy = PathPolicy::new(&["/api/data_structures/".into(), "/api/v2".into()], false);
        for ok in [
            "/api/data_structures/1",
            "/api/data_structures",
            "/api/data_structures/",
            "//api//data_structures/1",
            "/api/%64ata_structures/1",
            "/api/v2",
            "/api/v2x",
        ] {
            assert_eq!(policy.check(ok), Ok(()), "{ok}");
        }
        for refused in ["/api/users", "/", "/api/data_structuresx", "/API/data_structures/1", "/api", "/v2"] {
            assert_eq!(policy.check(refused), Err(Refusal::NotAllowed), "{refused}");
        }
        assert_eq!(policy.check("/api/v2/../data_structures/"), Err(Refusal::Ambiguous));
    }

    #[test]
    fn a_root_prefix_allows_everything_unambiguous() {
        let policy = PathPolicy::new(&["/".into()], false);
        assert_eq!(policy.check("/anything/at/all"), Ok(()));
        assert_eq!(policy.check("/api/sessions"), Err(Refusal::Sessions));
    }
}

//! The upstream origin (`upstream.url`) and how request targets are joined
//! onto it.
//!
//! Every request leaves for exactly this scheme and authority, whatever the
//! client's Host header or request-target said: that is what keeps the bearer
//! token from reaching any other host.

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

/// Scheme, authority and optional path prefix of Truedat.
#[derive(Clone, Debug)]
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix without trailing slash; empty when the URL had none.
    prefix: String,
}

impl Origin {
    /// Parses `upstream.url`: `http` or `https`, a host, an optional path
    /// prefix, and nothing else (no credentials, query or fragment).
    pub fn parse(url: &str) -> Result<Origin, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| format!("{url:?} needs a scheme: https://… or http://…"))?;
        if scheme != Scheme::HTTPS && scheme != Scheme::HTTP {
            return Err(format!("{url:?}: only https:// and http:// are supported"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not allowed; use credentials.*"));
        }
        if authority.host().is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(format!("{url:?}: a query string or fragment makes no sense in a base URL"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Origin { scheme, authority, prefix })
    }

    /// The URI to send upstream for a client's path and query, passed on byte
    /// for byte behind the prefix.
    pub fn join(&self, path_and_query: &PathAndQuery) -> Result<Uri, http::Error> {
        let target = if self.prefix.is_empty() {
            path_and_query.clone()
        } else {
            PathAndQuery::try_from(format!("{}{}", self.prefix, path_and_query.as_str()))?
        };
        Uri::builder().scheme(self.scheme.clone()).authority(self.authority.clone()).path_and_query(target).build()
    }

    /// The URI of one of Truedat's own routes, such as `/api/sessions`.
    pub fn route(&self, path: &'static str) -> Uri {
        self.join(&PathAndQuery::from_static(path))
            .expect("a static absolute path joined to a validated origin is a valid URI")
    }

    /// Whether requests travel over TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// `host:port` as written in `upstream.url`, for messages and Host.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The origin without the prefix, as a URI (for proxy matching).
    pub fn base(&self) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme and authority were parsed from a valid URI")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(base: &str, target: &str) -> String {
        Origin::parse(base).unwrap().join(&target.parse().unwrap()).unwrap().to_string()
    }

    #[test]
    fn keeps_path_and_query_byte_for_byte() {
        let target = "/api/data%2Fsets/a+b?q=a%20b&q=c+d&x=%2F&empty=";
        assert_eq!(join("https://td.example.com", target), format!("https://td.example.com{target}"));
    }

    #[test]
    fn keeps_the_base_path_prefix() {
        assert_eq!(join("https://td.example.com/truedat/", "/api/x?y=1"), "https://td.example.com/truedat/api/x?y=1");
        assert_eq!(join("http://127.0.0.1:4000/p", "/api"), "http://127.0.0.1:4000/p/api");
    }

    #[test]
    fn rejects_what_cannot_be_a_base_url() {
        for bad in [
            "td.example.com",
            "ftp://td.example.com",
            "https://u:p@td.example.com",
            "https://td/?a=1",
            "https://td/#x",
            "",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_are_joined_to_the_prefix() {
        let origin = Origin::parse("https://td.example.com/base").unwrap();
        assert_eq!(origin.route("/api/sessions").to_string(), "https://td.example.com/base/api/sessions");
        assert!(origin.is_https());
        assert_eq!(origin.base().to_string(), "https://td.example.com/");
    }
}

//! What is measured: the cases of the Performance issue's table, as data.
//!
//! A case is a group (the upstream's scheme and the CPU budget both proxies
//! get), a number of keep-alive connections and a request. Each case runs on
//! three paths: direct to the upstream, through nginx, through ours. To add a
//! case, add a line to [`all`]; a new kind of request needs a location in
//! `nginx-upstream.conf.in` too.

use std::fmt;

/// How the proxies reach the upstream nginx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// Plain HTTP/1.1.
    Plain,
    /// HTTPS, TLS 1.3, the upstream offering only HTTP/1.1 by ALPN.
    TlsHttp1,
    /// HTTPS, TLS 1.3, the upstream offering HTTP/2 and HTTP/1.1 by ALPN
    /// (ours picks HTTP/2; nginx proxies over HTTP/1.1 whatever is offered).
    TlsHttp2,
}

impl Upstream {
    /// Short name, used in case names.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Plain => "plain",
            Upstream::TlsHttp1 => "tls-h1",
            Upstream::TlsHttp2 => "tls-h2",
        }
    }

    /// As the report says it.
    pub fn describe(self) -> &'static str {
        match self {
            Upstream::Plain => "plain HTTP upstream",
            Upstream::TlsHttp1 => "HTTPS upstream (TLS 1.3, HTTP/1.1)",
            Upstream::TlsHttp2 => "HTTPS upstream offering HTTP/2",
        }
    }

    /// Whether the proxies speak TLS to it.
    pub fn is_tls(self) -> bool {
        self != Upstream::Plain
    }
}

/// The proxies' setup shared by several cases: one nginx reverse proxy and
/// one truedat-auth-proxy are started per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub upstream: Upstream,
    /// nginx's `worker_processes` and ours' `runtime.worker_threads`: the
    /// same CPU budget for both.
    pub workers: u32,
    /// Both proxies write an access-log line per request (nginx's default
    /// `combined` log, ours at its default `log.level = "info"`); otherwise
    /// neither does (nginx `access_log off`, ours at `"warn"`).
    pub access_log: bool,
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let each =
            if self.workers == 1 { "one nginx worker vs one thread" } else { "two nginx workers vs two threads" };
        let logs = if self.access_log { ", access logs on" } else { "" };
        write!(f, "{}, {each}{logs}", self.upstream.describe())
    }
}

/// One kind of request wrk sends (the upstream answers it at `path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Short name, used in case names.
    pub name: &'static str,
    /// As the report says it.
    pub describe: &'static str,
    pub path: &'static str,
    pub method: &'static str,
    /// Request body of this many `x` bytes (0: none).
    pub body_bytes: usize,
}

/// GET of a ~200-byte JSON answer: the case the targets are about.
pub const SMALL_JSON: Request =
    Request { name: "get", describe: "GET small JSON", path: "/api/data", method: "GET", body_bytes: 0 };
/// POST of 4 KiB (small enough for ours to keep for a replay).
pub const POST_4K: Request =
    Request { name: "post4k", describe: "POST 4 KiB", path: "/api/echo", method: "POST", body_bytes: 4096 };
/// GET of a 1 MiB answer.
pub const GET_1M: Request =
    Request { name: "get1m", describe: "GET 1 MiB", path: "/api/big", method: "GET", body_bytes: 0 };

/// One line of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub group: Group,
    /// Keep-alive connections wrk holds open.
    pub connections: u32,
    pub request: Request,
}

impl Case {
    /// Unique name, for `BENCH_CASES` and progress lines: `plain-w1-get-c16`.
    pub fn name(&self) -> String {
        let logs = if self.group.access_log { "-log" } else { "" };
        let (upstream, workers) = (self.group.upstream.name(), self.group.workers);
        format!("{upstream}-w{workers}{logs}-{}-c{}", self.request.name, self.connections)
    }

    /// As the report's first column says it.
    pub fn describe(&self) -> String {
        let connections =
            if self.connections == 1 { "1 connection".to_owned() } else { format!("{} connections", self.connections) };
        let workers =
            if self.group.workers == 1 { String::new() } else { format!(", {} workers/threads", self.group.workers) };
        let request = if self.request == SMALL_JSON { String::new() } else { format!(", {}", self.request.describe) };
        let logs = if self.group.access_log { ", access logs on" } else { "" };
        format!("{}{workers}{logs}{request}, {connections}", self.group.upstream.describe())
    }

    /// Whether this case's name is in `filter` (`None`: every case is).
    pub fn selected(&self, filter: Option<&[String]>) -> bool {
        let name = self.name();
        filter.is_none_or(|patterns| {
            patterns.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == *pattern,
            })
        })
    }
}

/// Every case, in report order: the table, plus a POST, a large
/// answer and access logs on, on the plain upstream.
pub fn all() -> Vec<Case> {
    let case = |upstream, workers, connections, request| Case {
        group: Group { upstream, workers, access_log: false },
        connections,
        request,
    };
    let mut cases = Vec::new();
    for connections in [1, 16, 256] {
        cases.push(case(Upstream::Plain, 1, connections, SMALL_JSON));
    }
    cases.push(case(Upstream::Plain, 1, 16, POST_4K));
    cases.push(case(Upstream::Plain, 1, 16, GET_1M));
    for connections in [1, 16, 256] {
        cases.push(case(Upstream::Plain, 2, connections, SMALL_JSON));
    }
    // What users run by default: one log line per request on both sides.
    let logged = Group { upstream: Upstream::Plain, workers: 1, access_log: true };
    cases.push(Case { group: logged, connections: 16, request: SMALL_JSON });
    for upstream in [Upstream::TlsHttp1, Upstream::TlsHttp2] {
        for connections in [1, 16, 256] {
            cases.push(case(upstream, 1, connections, SMALL_JSON));
        }
    }
    // Two threads with HTTP/2 upstream: one multiplexed connection per thread.
    cases.push(case(Upstream::TlsHttp2, 2, 16, SMALL_JSON));
    cases
}

/// The groups of `cases`, in order of first appearance.
pub fn groups(cases: &[Case]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for case in cases {
        if !groups.contains(&case.group) {
            groups.push(case.group);
        }
    }
    groups
}

/// The three paths each case runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// wrk to the upstream, sending the bearer itself: the limit.
    Direct,
    /// wrk to nginx as a reverse proxy with a static `Authorization` header.
    Nginx,
    /// wrk to truedat-auth-proxy.
    Ours,
    /// wrk to truedat-auth-proxy with tracing on (`BENCH_TRACING=1`).
    Traced,
    /// wrk to another build of truedat-auth-proxy (`BENCH_BASELINE`).
    Baseline,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Nginx => "nginx",
            Via::Ours => "ours",
            Via::Traced => "traced",
            Via::Baseline => "baseline",
        }
    }

    /// A truedat-auth-proxy, whichever: errors through it fail the run.
    pub fn is_ours(self) -> bool {
        matches!(self, Via::Ours | Via::Traced | Via::Baseline)
    }
}

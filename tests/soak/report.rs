//! Who caused each failure, and the table the soak prints.
//!
//! A failure is Truedat's when Truedat itself answered it, or broke the
//! exchange on purpose: the fake reset that very request's connection, the
//! fake was down (a restart) while it was in flight, the fake answered 401
//! while a revocation happened during the request (a body over the replay
//! limit cannot be replayed; a replay can meet a second revocation), or the
//! fake answered another non-2xx status. Everything else is the proxy's: a
//! 502 without a reset, a 503, a 504, a 401 with no revocation in flight (an
//! expired token was forwarded), a broken or stalled connection, a wrong body.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::TOKEN_TTL;
use crate::chaos::{RESET_SHARE, REVOKE_EVERY, Record};
use crate::load::{CLIENTS, ClientReport, Failure, Kind, What};
use crate::support::fake_truedat::LoginMode;
use crate::support::process::{Descriptors, mib};
use crate::support::prometheus::Scrape;

/// Clock slack when matching a failure with Truedat's events: the chaos
/// task notes the time just before acting, and the proxy learns of a
/// revocation from the first 401 that comes back after it.
const SLACK: Duration = Duration::from_millis(250);

/// Who a failure is blamed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    Truedat,
    Proxy,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    ResetByTruedat,
    TruedatDown,
    IngressToPost,
    WindowSpent,
    RevokedBigPost,
    RevokedAfterReplay,
    OtherTruedatAnswer,
    IdempotentNotRetried,
    UnauthorizedWithoutRevocation,
    ProxyBadGateway,
    ProxyNoToken,
    ProxyTimeout,
    ProxyOtherStatus,
    Transport,
    ClientTimeout,
    WrongAnswer,
}

impl Cause {
    const ALL: [Cause; 16] = [
        Cause::ResetByTruedat,
        Cause::TruedatDown,
        Cause::IngressToPost,
        Cause::WindowSpent,
        Cause::RevokedBigPost,
        Cause::RevokedAfterReplay,
        Cause::OtherTruedatAnswer,
        Cause::IdempotentNotRetried,
        Cause::UnauthorizedWithoutRevocation,
        Cause::ProxyBadGateway,
        Cause::ProxyNoToken,
        Cause::ProxyTimeout,
        Cause::ProxyOtherStatus,
        Cause::Transport,
        Cause::ClientTimeout,
        Cause::WrongAnswer,
    ];

    fn blame(self) -> Blame {
        if self <= Cause::OtherTruedatAnswer { Blame::Truedat } else { Blame::Proxy }
    }

    fn label(self) -> &'static str {
        match self {
            Cause::ResetByTruedat => "502: Truedat reset that POST's connection",
            Cause::TruedatDown => "Truedat down (restart) while a POST was in flight",
            Cause::IngressToPost => "ingress 502/503/504 to a POST (never sent twice)",
            Cause::WindowSpent => "a GET still failing when retry.window ran out",
            Cause::RevokedBigPost => "401 to a POST > replay limit, revoked in flight",
            Cause::RevokedAfterReplay => "401 after a replay, revoked in flight",
            Cause::OtherTruedatAnswer => "other non-2xx answered by Truedat",
            Cause::IdempotentNotRetried => "reset, restart or ingress 5xx reached a GET (not ridden through)",
            Cause::UnauthorizedWithoutRevocation => "401 with no revocation in flight",
            Cause::ProxyBadGateway => "502 without a reset by Truedat",
            Cause::ProxyNoToken => "503 (no token)",
            Cause::ProxyTimeout => "504 (upstream.request_timeout)",
            Cause::ProxyOtherStatus => "other status made by the proxy",
            Cause::Transport => "connection to the proxy failed or broke",
            Cause::ClientTimeout => "no whole answer within 40 s",
            Cause::WrongAnswer => "2xx with a wrong body or request id",
        }
    }

    /// The cause of `failure`. Resets, restarts and ingress errors are
    /// Truedat's doing only for POSTs, which may not be sent twice; the
    /// proxy rides through them for GETs (SPEC §4, Retries).
    fn of(failure: &Failure, record: &Record) -> Cause {
        match Cause::seen(failure, record) {
            Cause::ResetByTruedat | Cause::TruedatDown | Cause::IngressToPost if failure.kind.is_idempotent() => {
                // The proxy stops when the next try could not begin within
                // the window: at most `retry.backoff_max` before its end.
                let spent = failure.ended.duration_since(failure.started) >= RETRY_WINDOW - RETRY_BACKOFF_MAX;
                if spent { Cause::WindowSpent } else { Cause::IdempotentNotRetried }
            }
            cause => cause,
        }
    }

    fn seen(failure: &Failure, record: &Record) -> Cause {
        let (from, to) = (failure.started, failure.ended);
        match &failure.what {
            What::Status { status: 502, .. } if record.reset_ids.contains(&failure.id) => Cause::ResetByTruedat,
            What::Status { status: 401, from_truedat: true, .. } if record.revoked_during(from, to, SLACK) => {
                if failure.kind == Kind::BigPost { Cause::RevokedBigPost } else { Cause::RevokedAfterReplay }
            }
            What::Status { status: 401, from_truedat: true, .. } => Cause::UnauthorizedWithoutRevocation,
            What::Status { status: 502..=504, from_truedat: true, body } if body.contains("<center>nginx</center>") => {
                Cause::IngressToPost
            }
            What::Status { from_truedat: true, .. } => Cause::OtherTruedatAnswer,
            What::Status { status: 502..=504, .. } | What::Transport(_) if record.down_during(from, to, SLACK) => {
                Cause::TruedatDown
            }
            What::Status { status: 502, .. } => Cause::ProxyBadGateway,
            What::Status { status: 503, .. } => Cause::ProxyNoToken,
            What::Status { status: 504, .. } => Cause::ProxyTimeout,
            What::Status { .. } => Cause::ProxyOtherStatus,
            What::Transport(_) => Cause::Transport,
            What::Timeout => Cause::ClientTimeout,
            What::WrongAnswer(_) => Cause::WrongAnswer,
        }
    }
}

/// `retry.window` and `retry.backoff_max` as the soak's proxy runs them (the defaults).
const RETRY_WINDOW: Duration = Duration::from_secs(10);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The proxy's footprint at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    pub rss: u64,
    pub fds: Descriptors,
}

/// Everything the table shows.
pub struct Report {
    pub requests: u64,
    pub by_kind: [u64; 4],
    pub ok: u64,
    pub reconnects: u64,
    /// Each failure with its cause.
    failures: Vec<(Cause, Failure)>,
    pub logins: usize,
    pub login_attempts: usize,
    pub logins_per_window: f64,
    renew_every: Duration,
    revocations: usize,
    outages: (usize, usize),
    outage_time: Duration,
    restarts: Vec<(Instant, Instant)>,
    resets: usize,
    bursts: (usize, usize),
    pub replays_ok: f64,
    replays_failed: f64,
    proxy_logins: (f64, f64),
    upstream_errors: Vec<(String, f64)>,
    retries: Vec<(String, f64)>,
    start: Footprint,
    end: Footprint,
    peak: Footprint,
    elapsed: Duration,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clients: &[ClientReport],
        record: &Record,
        metrics: &Scrape,
        elapsed: Duration,
        renew_every: Duration,
        start: Footprint,
        end: Footprint,
        peak: Footprint,
    ) -> Report {
        let mut by_kind = [0u64; 4];
        for client in clients {
            for (total, sent) in by_kind.iter_mut().zip(client.sent) {
                *total += sent;
            }
        }
        let failures =
            clients.iter().flat_map(|c| c.failures.iter()).map(|f| (Cause::of(f, record), f.clone())).collect();
        let retries = metrics
            .samples("truedat_proxy_upstream_retries_total")
            .map(|s| (s.labels.get("reason").cloned().unwrap_or_default(), s.value))
            .collect();
        let upstream_errors = metrics
            .samples("truedat_proxy_upstream_errors_total")
            .map(|s| (s.labels.get("kind").cloned().unwrap_or_default(), s.value))
            .collect();
        let windows = elapsed.as_secs_f64() / renew_every.as_secs_f64();
        let hangs = record.outages.iter().filter(|o| o.mode == LoginMode::Hang).count();
        Report {
            requests: by_kind.iter().sum(),
            by_kind,
            ok: clients.iter().map(|c| c.ok).sum(),
            reconnects: clients.iter().map(|c| c.reconnects).sum(),
            failures,
            logins: record.logins,
            login_attempts: record.login_attempts,
            logins_per_window: record.logins as f64 / windows,
            renew_every,
            revocations: record.revocations.len(),
            outages: (record.outages.len() - hangs, hangs),
            outage_time: record.outages.iter().map(|o| o.to.duration_since(o.from)).sum(),
            restarts: record.restarts.clone(),
            resets: record.reset_ids.len(),
            bursts: (record.bursts.len(), record.bursts.iter().sum()),
            replays_ok: metrics.count("truedat_proxy_replays_total", &[("result", "success")]),
            replays_failed: metrics.count("truedat_proxy_replays_total", &[("result", "failure")]),
            proxy_logins: (
                metrics.count("truedat_proxy_logins_total", &[("result", "success")]),
                metrics.count("truedat_proxy_logins_total", &[("result", "error")]),
            ),
            upstream_errors,
            retries,
            start,
            end,
            peak,
            elapsed,
        }
    }

    /// The failures blamed on `blame`.
    pub fn failures(&self, blame: Blame) -> impl Iterator<Item = &(Cause, Failure)> {
        self.failures.iter().filter(move |(cause, _)| cause.blame() == blame)
    }

    fn count(&self, cause: Cause) -> usize {
        self.failures.iter().filter(|(c, _)| *c == cause).count()
    }

    /// Writes the table.
    pub fn print(&self, out: &mut impl Write, duration: Duration, restarts: u32, started: Instant) {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |label: &str, value: String| rows.push((label.to_owned(), value));
        let secs = self.elapsed.as_secs_f64();
        row("client requests", format!("{} ({:.0}/s)", self.requests, self.requests as f64 / secs));
        for (kind, sent) in Kind::ALL.iter().zip(self.by_kind) {
            row(&format!("  {}", kind.label()), sent.to_string());
        }
        row("2xx", self.ok.to_string());
        for blame in [Blame::Truedat, Blame::Proxy] {
            let total = self.failures(blame).count();
            let who = if blame == Blame::Truedat { "Truedat" } else { "the proxy (must be 0)" };
            row(&format!("failures caused by {who}"), total.to_string());
            for cause in Cause::ALL.iter().filter(|c| c.blame() == blame) {
                let n = self.count(*cause);
                if n > 0 || blame == Blame::Truedat {
                    row(&format!("  {}", cause.label()), n.to_string());
                }
            }
        }
        row("client reconnects", self.reconnects.to_string());
        row("revocations (5-6 s apart or more)", self.revocations.to_string());
        row(
            "login outages: 500 / hang (total time)",
            format!("{} / {} ({:.1} s)", self.outages.0, self.outages.1, self.outage_time.as_secs_f64()),
        );
        let at = |t: Instant| t.saturating_duration_since(started).as_secs_f64();
        let downs: Vec<_> =
            self.restarts.iter().map(|(down, up)| format!("{:.1}-{:.1} s", at(*down), at(*up))).collect();
        row("Truedat restarts (down)", format!("{} of {restarts} planned {downs:?}", self.restarts.len()));
        row(&format!("connections reset by Truedat ({:.1} %)", RESET_SHARE * 100.0), self.resets.to_string());
        row("ingress 502/503/504 bursts (requests hit)", format!("{} ({})", self.bursts.0, self.bursts.1));
        row("logins (Truedat: successful / attempts)", format!("{} / {}", self.logins, self.login_attempts));
        row(
            "logins (proxy /metrics: success / error)",
            format!("{:.0} / {:.0}", self.proxy_logins.0, self.proxy_logins.1),
        );
        row(
            &format!("logins per renewal window ({:.3} s)", self.renew_every.as_secs_f64()),
            format!("{:.2}", self.logins_per_window),
        );
        row(
            "replays (proxy /metrics: success / failure)",
            format!("{:.0} / {:.0}", self.replays_ok, self.replays_failed),
        );
        let upstream: Vec<_> = self.upstream_errors.iter().map(|(kind, n)| format!("{kind} {n:.0}")).collect();
        row("upstream errors (proxy /metrics)", upstream.join(", "));
        let retries: Vec<_> = self.retries.iter().map(|(reason, n)| format!("{reason} {n:.0}")).collect();
        row("retries (proxy /metrics)", retries.join(", "));
        row(
            "RSS start / end / peak (MiB)",
            format!("{:.1} / {:.1} / {:.1}", mib(self.start.rss), mib(self.end.rss), mib(self.peak.rss)),
        );
        let fds = |f: Footprint| format!("{} ({} + {} to Truedat)", f.fds.total, f.fds.others(), f.fds.to_port);
        row("open fds start / end", format!("{} / {}", fds(self.start), fds(self.end)));
        row("open fds peak (connections to Truedat)", format!("{} ({})", self.peak.fds.total, self.peak.fds.to_port));

        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "\n== soak: {:.0} s, {CLIENTS} clients, tokens of {} s, revocations {}-{} s apart or more ==",
            duration.as_secs_f64(),
            TOKEN_TTL.as_secs(),
            REVOKE_EVERY.as_secs(),
            REVOKE_EVERY.as_secs() + 1
        );
        for (label, value) in rows {
            let _ = writeln!(out, "{label:<width$}  {value}");
        }
        // Every kind of failure the proxy caused first, then a few of Truedat's.
        let examples = self.failures(Blame::Proxy).take(10).chain(self.failures(Blame::Truedat).take(3));
        for (cause, failure) in examples {
            let what = match &failure.what {
                What::Status { status, from_truedat, body } => {
                    format!("{status} from {}: {body}", if *from_truedat { "Truedat" } else { "the proxy" })
                }
                What::Transport(error) => format!("transport: {error}"),
                What::Timeout => "no answer".to_owned(),
                What::WrongAnswer(problem) => format!("wrong answer: {problem}"),
            };
            let took = failure.ended.duration_since(failure.started);
            let blame = cause.blame();
            let _ = writeln!(
                out,
                "  e.g. [{blame:?}] {} {} at {:.3} s: {what} (after {took:.2?})",
                failure.id,
                failure.kind.label(),
                at(failure.started)
            );
        }
        let _ = writeln!(out);
    }
}

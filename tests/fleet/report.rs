//! The table the simulation prints (Markdown, so it goes into the README as
//! it is), and the targets of issue 12 checked against it.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Settings;

/// What the fleet did while td-auth was unavailable.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// Login attempts per proxy per minute, counted by the proxies.
    pub logins_per_minute: f64,
    /// Probes per proxy per minute, counted by the proxies.
    pub probes_per_minute: f64,
    /// Pings that reached the fake (none while its port is closed).
    pub pings_seen: usize,
    /// Proxies still ready when td-auth came back: 0 when every token expired.
    pub ready_at_end: usize,
    /// "Truedat reachable again" lines logged around the return.
    pub comebacks: usize,
}

/// One scenario's line.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    /// From the start (cold start) or from td-auth's return until the last
    /// proxy was ready; `Err(n)` when only `n` were ready at the limit.
    pub ready_after: Option<Result<Duration, usize>>,
    pub outage: Option<Outage>,
    /// Most logins arriving at td-auth within one second, from the start or
    /// the return.
    pub peak_logins: usize,
    /// Logins the proxies gave up waiting for (`token.login_timeout`).
    pub timed_out: usize,
    /// Audit events per sidecar per day once the fleet renews on schedule.
    pub audit_per_day: f64,
}

impl Row {
    pub fn new(scenario: String) -> Row {
        Row { scenario, ready_after: None, outage: None, peak_logins: 0, timed_out: 0, audit_per_day: 0.0 }
    }

    fn ready_text(&self, n: usize) -> String {
        match self.ready_after {
            Some(Ok(after)) => format!("{:.1} s", after.as_secs_f64()),
            Some(Err(ready)) => format!("only {ready}/{n} in 60 s"),
            None => "—".to_owned(),
        }
    }
}

/// The table, with the settings it ran under.
pub fn table(rows: &[Row], settings: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | all ready after (start / return) | login attempts per proxy per min during | probes per proxy per min during | peak logins/s after | logins timed out | audit events per sidecar per day, steady ({} s tokens) |",
        settings.token_ttl.as_secs()
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for row in rows {
        let (logins, probes) = match row.outage {
            Some(o) => (format!("{:.1}", o.logins_per_minute), format!("{:.1}", o.probes_per_minute)),
            None => ("—".to_owned(), "—".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {logins} | {probes} | {} | {} | {:.0} |",
            row.scenario,
            row.ready_text(settings.n),
            row.peak_logins,
            row.timed_out,
            row.audit_per_day
        );
    }
    for row in rows {
        if let Some(o) = row.outage {
            let _ = writeln!(
                out,
                "\n{}: {} of {} proxies still ready at the end of the outage; {} pings reached td-auth during it; {} comebacks logged.",
                row.scenario, o.ready_at_end, settings.n, o.pings_seen, o.comebacks
            );
        }
    }
    out
}

/// Today's login attempts per proxy per minute with logins answering 500
/// (issue 12, measured on the release before probing).
pub const BASELINE_LOGINS_PER_MINUTE: f64 = 12.4;
/// All ready this soon after a cold start, and after td-auth's return.
pub const READY_TARGET: Duration = Duration::from_secs(5);

/// Issue 12's targets that the rows can judge; each line says met or missed.
pub fn targets(rows: &[Row]) -> Vec<(String, bool)> {
    let mut verdicts = Vec::new();
    for row in rows {
        let ready_in_time = matches!(row.ready_after, Some(Ok(after)) if after <= READY_TARGET);
        match row.outage {
            None => verdicts.push((format!("{}: all ready within {READY_TARGET:?}", row.scenario), ready_in_time)),
            Some(outage) => {
                if row.scenario.starts_with("td-auth down") {
                    verdicts.push((
                        format!(
                            "{}: all ready within {READY_TARGET:?} of the return, no login timed out",
                            row.scenario
                        ),
                        ready_in_time && row.timed_out == 0,
                    ));
                }
                verdicts.push((
                    format!(
                        "{}: at most {BASELINE_LOGINS_PER_MINUTE} login attempts per proxy per minute during the outage",
                        row.scenario
                    ),
                    outage.logins_per_minute <= BASELINE_LOGINS_PER_MINUTE,
                ));
            }
        }
    }
    verdicts
}

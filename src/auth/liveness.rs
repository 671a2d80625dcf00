//! Whether a token Truedat answered 401 to is really dead (SPEC §3.4).
//!
//! A 401 can be about something other than the token (a service that
//! answers 401 for its own reasons). Treating every one as a revocation would
//! cost a password login, a replay and a session left alive in Truedat's
//! Redis per request. So the token's generation is checked once with
//! `GET /api/sessions` (200 while td-auth holds the session); however many
//! requests saw the 401 at once, they share that one check, and an "alive"
//! answer is trusted for a second. Only a 401 to the check proves the token
//! dead; an ingress's 5xx or a timeout proves nothing, so such a token is
//! replaced but still logged out at shutdown (SPEC §3.4, §3.6).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::sync::watch;

use super::Credential;
use super::session::Sessions;
use crate::trace::Parent;

/// How long a "the session lives" answer is trusted for its generation.
const TRUST_ALIVE: Duration = Duration::from_secs(1);

/// Checks kept at once: one per generation recently answered 401, which in
/// practice means the current one and perhaps its predecessor.
const KEPT: usize = 4;

/// What `GET /api/sessions` said of one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// 200, at this instant.
    Alive(Instant),
    /// 401: td-auth no longer holds the session.
    Dead,
    /// Any other answer, or none.
    Unknown,
}

/// What a request that saw a 401 learns about its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Session {
    /// The session lives: the 401 was about something else.
    Alive,
    /// Truedat says the session is gone.
    Dead,
    /// The check failed: handle the token as dead, but it may still live.
    Unknown,
}

/// One check, running or done.
struct Check {
    generation: u64,
    /// `None` while the check runs.
    verdict: watch::Receiver<Option<Verdict>>,
}

/// The single-flight session checks.
pub struct Liveness {
    sessions: Arc<Sessions>,
    /// Touched only after a 401, never on the ordinary request path; held
    /// for a lookup, never across an await.
    checks: Mutex<Vec<Check>>,
}

impl Liveness {
    /// Checks through `sessions`.
    pub fn new(sessions: Arc<Sessions>) -> Liveness {
        Liveness { sessions, checks: Mutex::new(Vec::new()) }
    }

    /// Whether `credential`'s session still lives, asking Truedat at most
    /// once per generation at a time; the check's span belongs to `parent`,
    /// the request that started it.
    pub async fn check(&self, credential: &Credential, parent: &Parent) -> Session {
        let mut verdict = self.verdict(credential, parent);
        match verdict.wait_for(Option::is_some).await.as_deref() {
            Ok(Some(Verdict::Alive(_))) => Session::Alive,
            Ok(Some(Verdict::Dead)) => Session::Dead,
            // Unknown, or the check's task was cancelled (runtime shutting down).
            _ => Session::Unknown,
        }
    }

    /// The check to wait for: a finished one still valid, one running, or a new one.
    fn verdict(&self, credential: &Credential, parent: &Parent) -> watch::Receiver<Option<Verdict>> {
        let mut checks = self.checks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(check) = checks.iter().find(|c| c.generation == credential.generation) {
            let current = *check.verdict.borrow();
            match current {
                Some(Verdict::Alive(at)) if at.elapsed() >= TRUST_ALIVE => {}
                _ => return check.verdict.clone(),
            }
        }
        checks.retain(|c| c.generation != credential.generation);
        if checks.len() >= KEPT {
            checks.remove(0);
        }
        let receiver = self.start(credential, parent.clone());
        checks.push(Check { generation: credential.generation, verdict: receiver.clone() });
        receiver
    }

    /// Asks Truedat in a task of its own, so the answer arrives even if the
    /// request that asked is abandoned by its client.
    fn start(&self, credential: &Credential, parent: Parent) -> watch::Receiver<Option<Verdict>> {
        let (sender, receiver) = watch::channel(None);
        let sessions = self.sessions.clone();
        let (generation, bearer) = (credential.generation, credential.bearer.clone());
        tokio::spawn(async move {
            let verdict = match sessions.check(&bearer, &parent).await {
                Ok(StatusCode::OK) => {
                    tracing::info!(
                        generation,
                        "Truedat answered 401, but GET /api/sessions says the token lives: \
                         the 401 goes to the client as it is, without a login"
                    );
                    Verdict::Alive(Instant::now())
                }
                Ok(StatusCode::UNAUTHORIZED) => Verdict::Dead,
                Ok(status) => {
                    tracing::warn!(
                        generation,
                        status = status.as_u16(),
                        "GET /api/sessions answered neither 200 nor 401 after a 401; replacing the token, \
                         which may still live and is logged out at shutdown"
                    );
                    Verdict::Unknown
                }
                Err(error) => {
                    tracing::warn!(
                        generation,
                        error = %error,
                        "cannot check the session after a 401; replacing the token, which may still live \
                         and is logged out at shutdown"
                    );
                    Verdict::Unknown
                }
            };
            sender.send_replace(Some(verdict));
        });
        receiver
    }
}

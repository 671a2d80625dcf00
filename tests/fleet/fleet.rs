//! N proxies in this process, each a whole [`App`]: its own renewer, upstream
//! pool and listeners on free loopback ports, exactly what one sidecar runs.
//! Readiness is read the way Kubernetes reads it, from each admin port.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use truedat_auth_proxy::app::{App, Outcome};
use truedat_auth_proxy::config::Config;

use crate::support::client::Client;

/// How often the not-yet-ready proxies are asked: the resolution of every
/// "time until all ready" in the report.
pub const READINESS_POLL: Duration = Duration::from_millis(100);

/// The proxies, built and bound but not yet running until [`Fleet::run`].
pub struct Fleet {
    admins: Vec<SocketAddr>,
    apps: Vec<App>,
    running: Vec<(CancellationToken, JoinHandle<Outcome>)>,
    client: Client,
}

impl Fleet {
    /// Builds `n` proxies from `config` (its listeners must be on port 0).
    pub async fn build(n: usize, config: &Config) -> Fleet {
        config.validate().expect("the fleet's configuration is valid");
        let mut apps = Vec::with_capacity(n);
        for _ in 0..n {
            apps.push(App::build(config.clone()).await.expect("a proxy starts"));
        }
        let admins = apps.iter().map(|app| app.bound().admin).collect();
        Fleet { admins, apps, running: Vec::new(), client: Client::new() }
    }

    /// Starts every proxy at once, as a rollout of N pods at the same second
    /// would (the worst case for td-auth); returns the moment they started.
    pub fn run(&mut self) -> Instant {
        let started = Instant::now();
        for app in self.apps.drain(..) {
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(app.run(shutdown.clone()));
            self.running.push((shutdown, task));
        }
        started
    }

    /// How many proxies are ready now.
    pub async fn ready_count(&self) -> usize {
        let answers = join_all(self.admins.iter().map(|admin| self.is_ready(*admin))).await;
        answers.into_iter().filter(|ready| *ready).count()
    }

    /// Waits until every proxy is ready, at most `limit` after `since`; returns
    /// when the last one was first seen ready, counted from `since`, or `None`
    /// with how many were ready at the limit.
    pub async fn all_ready(&self, since: Instant, limit: Duration) -> Result<Duration, usize> {
        let mut waiting: Vec<SocketAddr> = self.admins.clone();
        let mut last = since;
        loop {
            let answers = join_all(waiting.iter().map(|admin| self.is_ready(*admin))).await;
            let now = Instant::now();
            let before = waiting.len();
            waiting = waiting.into_iter().zip(answers).filter(|(_, ready)| !ready).map(|(admin, _)| admin).collect();
            if waiting.len() < before {
                last = now;
            }
            if waiting.is_empty() {
                return Ok(last - since);
            }
            if now >= since + limit {
                return Err(self.admins.len() - waiting.len());
            }
            tokio::time::sleep(READINESS_POLL).await;
        }
    }

    async fn is_ready(&self, admin: SocketAddr) -> bool {
        let request = http::Request::get(format!("http://{admin}/readyz")).body(Default::default());
        let request = request.expect("a valid request");
        self.client.try_send(request).await.is_ok_and(|reply| reply.status == 200)
    }

    /// Shuts every proxy down (each logs its session out) and waits for them.
    pub async fn stop(self) {
        for (shutdown, _) in &self.running {
            shutdown.cancel();
        }
        for (_, task) in self.running {
            let _ = task.await;
        }
    }
}

//! Running one group: its nginx reverse proxy and its truedat-auth-proxy
//! are started, checked with one request each, measured idle, then every
//! case of the group runs on the three paths, round after round, so that a
//! neighbour's noise hits all three alike; perf runs come last.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::cases::{Case, Group, Upstream, Via};
use super::nginx::{self, ProxyNginx, UpstreamNginx};
use super::ours::{Flavour, Ours};
use super::report::{GroupMemory, Memory, Results, Sample, Why};
use super::sample::{self, RssPeak};
use super::settings::Settings;
use super::support::process::descriptors;
use super::{perf, process, stream, wrk};

/// What every group shares.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub nginx: &'a Path,
    /// The run's nginx directory (configs, `ca.pem`, logs).
    pub nginx_dir: &'a Path,
    /// Where truedat-auth-proxy's configs and logs and perf's output go.
    pub work_dir: &'a Path,
    pub upstream: &'a UpstreamNginx,
    pub token: &'a str,
    pub ticks_per_second: f64,
    /// Whether perf can count (see [`perf::available`]).
    pub perf: bool,
    /// The flavours of truedat-auth-proxy measured: this build, and the
    /// tracing comparison's when asked for.
    pub flavours: &'a [Flavour],
    /// With `BENCH_PIN=1`, the CPUs the proxies under test are pinned to.
    pub proxy_cpus: Option<&'a str>,
}

/// One path of a case: where wrk sends its load and whose CPU it costs.
struct Target {
    via: Via,
    base_url: String,
    /// The proxy's processes (on the direct path: none counted).
    pids: Vec<u32>,
    bearer: Option<String>,
}

/// Runs `cases` (all of `group`) and adds what they measured to `results`.
pub fn run(context: &Context<'_>, group: Group, cases: &[Case], results: &mut Results) {
    eprintln!("== {group}: starting nginx and truedat-auth-proxy");
    let upstream_url = context.upstream.url_for(group.upstream);
    let nginx = ProxyNginx::start(context.nginx, context.nginx_dir, group, context.upstream, context.token);
    let ca = context.nginx_dir.join("ca.pem");
    let mut proxies: Vec<Ours> =
        context.flavours.iter().map(|f| Ours::start(context.work_dir, group, &upstream_url, &ca, f)).collect();
    results.ready.push(proxies[0].ready_after);
    let mut targets = vec![
        Target {
            via: Via::Direct,
            base_url: upstream_url.clone(),
            pids: Vec::new(),
            bearer: Some(context.token.to_owned()),
        },
        Target {
            via: Via::Nginx,
            base_url: format!("http://127.0.0.1:{}", nginx.port),
            pids: nginx.process.family(),
            bearer: None,
        },
    ];
    for (proxy, flavour) in proxies.iter().zip(context.flavours) {
        targets.push(Target {
            via: flavour.via,
            base_url: format!("http://127.0.0.1:{}", proxy.port),
            pids: vec![proxy.process.pid()],
            bearer: None,
        });
    }
    if let Some(cpus) = context.proxy_cpus {
        for pid in targets[1..].iter().flat_map(|t| &t.pids) {
            process::pin(*pid, cpus);
        }
    }
    // Idle: ready, before any request.
    let mut memory: Vec<(Via, Memory)> = targets[1..]
        .iter()
        .map(|t| (t.via, Memory { idle_kib: sample::rss_kib(&t.pids), ..Memory::default() }))
        .collect();
    // Idle CPU and wake-ups, all the proxies at once, when they are compared.
    if context.flavours.len() > 1 && !context.settings.idle.is_zero() {
        let proxies: Vec<(Via, Vec<u32>)> = targets[2..].iter().map(|t| (t.via, t.pids.clone())).collect();
        eprintln!("== idle for {:?}", context.settings.idle);
        let idle = sample::idle(&proxies, context.settings.idle);
        for (via, idle) in idle {
            if let Some((_, memory)) = memory.iter_mut().find(|(v, _)| *v == via) {
                memory.idle = Some(idle);
            }
        }
    }
    for target in &targets {
        if let Err(problem) = check(target, context) {
            panic!("{group}, via {}: {problem}", target.via.name());
        }
    }
    forbidden_login(&targets[2], results);

    if group == (Group { upstream: Upstream::Plain, workers: 1, access_log: false })
        && context.settings.stream_bytes > 0
    {
        eprintln!("== streaming {} MiB up and down", context.settings.stream_bytes >> 20);
        match stream::check(
            &targets[2].base_url,
            &upstream_url,
            context.token,
            proxies[0].process.pid(),
            context.settings.stream_bytes,
        ) {
            Ok(streaming) => results.streaming = Some(streaming),
            Err(problem) => results.problems.push(format!("streaming: {problem}")),
        }
    }

    let settings = context.settings;
    for round in 1..=settings.rounds {
        for case in cases {
            for target in &targets {
                if round == 1 && !settings.warmup.is_zero() {
                    // Measured like any run only to catch errors early.
                    let warmup = measure(case, target, settings.warmup, context);
                    record_errors(case, target.via, "warm-up", warmup.as_ref(), results);
                }
                let peak =
                    (case.connections == 256 && target.via != Via::Direct).then(|| RssPeak::start(target.pids.clone()));
                let sample = measure(case, target, settings.run, context);
                if let Some(peak) = peak.map(RssPeak::finish) {
                    if let Some((_, memory)) = memory.iter_mut().find(|(via, _)| *via == target.via) {
                        memory.at_256_kib = Some(memory.at_256_kib.unwrap_or(0).max(peak));
                    }
                }
                record_errors(case, target.via, "run", sample.as_ref(), results);
                if let Ok(sample) = sample {
                    eprintln!(
                        "   round {round} {:<22} {:<6} {:>9.0} req/s  p99 {:>8.2} ms  {}",
                        case.name(),
                        target.via.name(),
                        sample.rps,
                        sample.p99_us / 1000.0,
                        sample.per_cpu_second().map_or(String::new(), |r| format!("{r:.0} req/CPU-s"))
                    );
                    results.add(case, target.via, sample);
                }
            }
        }
    }
    if context.perf {
        for case in cases {
            for target in &targets[1..] {
                measure_perf(case, target, context, results);
            }
        }
    }
    // Pooled connections outlive the load (upstream.pool_idle_timeout): with
    // HTTP/2 negotiated there is one, with HTTP/1.1 one per concurrent request.
    let upstream_port = context.upstream.port_for(group.upstream);
    let pooled = descriptors(proxies[0].process.pid(), upstream_port).to_port;
    let of = |via| memory.iter().find(|(v, _)| *v == via).map(|(_, m)| *m).unwrap_or_default();
    results.memory.push(GroupMemory {
        group,
        nginx: of(Via::Nginx),
        ours: of(Via::Ours),
        ours_upstream_connections: pooled,
        flavours: memory.iter().filter(|(via, _)| *via != Via::Nginx).copied().collect(),
    });

    for (proxy, flavour) in proxies.iter_mut().zip(context.flavours) {
        let name = flavour.via.name();
        match proxy.logins() {
            Ok(logins) if logins <= 1.0 => {}
            Ok(logins) => results.problems.push(format!(
                "{group}: truedat-auth-proxy ({name}) logged in {logins} times (expected 1: a re-login means 401s or errors)"
            )),
            Err(e) => results.problems.push(format!("{group}: reading truedat-auth-proxy's ({name}) metrics: {e}")),
        }
        if flavour.via == Via::Traced {
            match proxy.spans_dropped() {
                Ok(dropped) => results.spans_dropped += dropped,
                Err(e) => results.problems.push(format!("{group}: reading the traced proxy's metrics: {e}")),
            }
        }
        let exit = proxy.process.stop();
        if exit.code() != Some(0) {
            results.problems.push(format!("{group}: truedat-auth-proxy ({name}) exited with {exit} after SIGTERM"));
        }
    }
}

/// One wrk run of `case` on `target` for `duration`, with the proxy's CPU
/// and what else the run cost (see [`Why`]).
fn measure(case: &Case, target: &Target, duration: Duration, context: &Context<'_>) -> Result<Sample, String> {
    let load = wrk::Load {
        url: format!("{}{}", target.base_url, case.request.path),
        connections: case.connections,
        request: case.request,
        bearer: target.bearer.as_deref(),
        duration,
    };
    let counted = target.via != Via::Direct;
    let ticks = context.ticks_per_second;
    let upstream_pids = context.upstream.pids();
    let cpu_before = sample::cpu_seconds(&target.pids, ticks);
    let upstream_before = sample::cpu_seconds(&upstream_pids, ticks);
    let accepted_before = context.upstream.accepted();
    let machine_before = sample::machine_ticks();
    let started = std::time::Instant::now();
    let summary = wrk::run(&load)?;
    let wall = started.elapsed().as_secs_f64();
    let machine_after = sample::machine_ticks();
    let cpu = sample::cpu_seconds(&target.pids, ticks) - cpu_before;
    let upstream_cpu = sample::cpu_seconds(&upstream_pids, ticks) - upstream_before;
    let upstream_accepts = accepted_before.zip(context.upstream.accepted()).map(|(before, after)| after - before);
    let (busy, all) = (machine_after.0 - machine_before.0, machine_after.1 - machine_before.1);
    Ok(Sample {
        requests: summary.requests,
        rps: summary.rps,
        p99_us: summary.p99_us,
        cpu_seconds: counted.then_some(cpu),
        errors: summary.errors,
        why: Why {
            // The stub_status request itself is one more accepted connection.
            upstream_accepts: upstream_accepts.map(|a| a.saturating_sub(1)),
            upstream_busy: upstream_cpu.total() / wall.max(f64::EPSILON),
            machine_busy: busy as f64 / all.max(1) as f64,
            wrk_threads: wrk::threads(case.connections),
        },
    })
}

/// One more run of `case` on `target`, counted by perf.
fn measure_perf(case: &Case, target: &Target, context: &Context<'_>, results: &mut Results) {
    let out = context.work_dir.join(format!("perf-{}-{}.csv", case.name(), target.via.name()));
    let stat = perf::Stat::start(&target.pids, &out);
    let sample = measure(case, target, context.settings.run, context);
    let counts = stat.finish();
    record_errors(case, target.via, "perf run", sample.as_ref(), results);
    match (sample, counts) {
        (Ok(sample), Some(counts)) => {
            results.perf.insert((case.name(), target.via), (counts, sample.requests));
        }
        (_, None) => results.problems.push(format!("{} via {}: perf counted nothing", case.name(), target.via.name())),
        (Err(_), _) => {}
    }
}

/// Any error through truedat-auth-proxy fails the run; through the others it
/// is reported in the table. A failed wrk run fails the run on any path.
fn record_errors(case: &Case, via: Via, what: &str, sample: Result<&Sample, &String>, results: &mut Results) {
    match sample {
        Err(e) => results.problems.push(format!("{} via {} ({what}): {e}", case.name(), via.name())),
        Ok(sample) if via.is_ours() && sample.errors.any() => results.problems.push(format!(
            "{} via {} ({what}): {} non-2xx answers, {} socket errors",
            case.name(),
            via.name(),
            sample.errors.status,
            sample.errors.socket()
        )),
        Ok(_) => {}
    }
}

/// One request of each kind on `target` before any load: a benchmark of
/// error answers would be worthless.
fn check(target: &Target, context: &Context<'_>) -> Result<(), String> {
    let data = curl(target, context, &["/api/data"])?;
    if data != format!("200 {}", nginx::DATA_JSON) {
        return Err(format!("GET /api/data answered {data}"));
    }
    let echo = curl(target, context, &["-X", "POST", "--data-binary", "0123456789", "/api/echo"])?;
    if !echo.starts_with("200 ") {
        return Err(format!("POST /api/echo answered {echo}"));
    }
    let big = curl(target, context, &["-o", "/dev/null", "/api/big"])?;
    if big != "200 " {
        return Err(format!("GET /api/big answered {big}"));
    }
    Ok(())
}

/// truedat-auth-proxy must refuse a client's own login (it would replace
/// the proxy's session).
fn forbidden_login(ours: &Target, results: &mut Results) {
    let status = Command::new("curl")
        .args(["-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "{}"])
        .arg(format!("{}/api/sessions", ours.base_url))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if status.as_deref().ok() != Some("403") {
        results.problems.push(format!("POST /api/sessions through truedat-auth-proxy answered {status:?}, not 403"));
    }
}

/// `curl ARGS… base_url+PATH` (the path last); "STATUS BODY".
fn curl(target: &Target, context: &Context<'_>, args: &[&str]) -> Result<String, String> {
    let (path, args) = args.split_last().expect("a path");
    let mut command = Command::new("curl");
    command.args(["-sS", "--noproxy", "*", "--max-time", "10", "-w", " %{http_code}"]);
    command.arg("--cacert").arg(context.nginx_dir.join("ca.pem"));
    if let Some(token) = &target.bearer {
        command.arg("-H").arg(format!("Authorization: Bearer {token}"));
    }
    let output =
        command.args(args).arg(format!("{}{path}", target.base_url)).output().map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, status) = text.rsplit_once(' ').unwrap_or((&text, ""));
    if !output.status.success() {
        return Err(format!("curl failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(format!("{status} {body}"))
}

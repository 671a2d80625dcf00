//! Starting and stopping the processes of a run (nginx, the proxy, perf), and
//! the loopback plumbing they need: free ports, an unprivileged user, a tiny
//! HTTP/1.1 GET for readiness and metrics.
//!
//! Every process is a [`Process`]: dropping it stops it (SIGTERM, then
//! SIGKILL after a bound), so a panic anywhere leaves nothing running.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A child process that is stopped when dropped.
pub struct Process {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `command`; `name` is for messages.
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        Process { name: name.to_owned(), child, exit: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process and its children (nginx's master and workers).
    pub fn family(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(children(self.pid()));
        pids
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (`"TERM"`, `"INT"`) to the process.
    pub fn signal(&self, signal: &str) {
        // std has no kill(2); kill(1) is always there.
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status();
    }

    /// Stops it with `signal`, killing it after [`STOP_TIMEOUT`]; its exit
    /// status (a killed process has none with a code).
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        if let Some(exit) = self.exit {
            return exit;
        }
        if let Ok(Some(exit)) = self.child.try_wait() {
            self.exit = Some(exit);
            return exit;
        }
        self.signal(signal);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let exit = loop {
            match self.child.try_wait() {
                Ok(Some(exit)) => break exit,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    eprintln!("bench: {} did not exit after SIG{signal}: killed", self.name);
                    let _ = self.child.kill();
                    break self.child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
                }
            }
        };
        self.exit = Some(exit);
        exit
    }

    /// Stops it with SIGTERM; see [`Process::stop_with`].
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The direct children of `pid`, found by their parent pid in
/// `/proc/*/stat` (`/proc/PID/task/*/children` needs a kernel option).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{candidate}/stat")) else {
                return false; // gone meanwhile
            };
            // The command name may hold spaces: count fields after its ")".
            let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
            parent.and_then(|p| p.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// Ports handed out by this run, so two listeners never get the same one.
static PICKED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1 for a listener that nginx or the proxy will
/// bind. Chosen below the ephemeral range, because wrk's hundreds of client
/// sockets take their source ports from it and could collide with a
/// listener there.
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 11_000 { (10_000, ephemeral_low - 1) } else { (20_000, 65_000) };
    let mut picked = PICKED.lock().expect("no thread panics while holding the port list");
    let picked = picked.get_or_insert_with(HashSet::new);
    for _ in 0..500 {
        let port = rand::random_range(low..high);
        if !picked.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            picked.insert(port);
            return port;
        }
    }
    panic!("no free port between {low} and {high}");
}

/// The `nobody` user and group ids, when this runs as root: nginx gets no
/// reason to run as root, and a mistake in a generated config then cannot
/// touch the system. `None` when not root (then nginx runs as we do).
pub fn unprivileged() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|line| line.strip_prefix("Uid:"))?.split_whitespace().next()?;
    if uid != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let nobody = passwd.lines().find(|line| line.starts_with("nobody:"))?;
    let fields: Vec<&str> = nobody.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// Makes `command` run as `nobody` when we are root (std then also drops
/// the supplementary groups).
pub fn as_unprivileged(command: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = unprivileged() {
        command.uid(uid).gid(gid);
    }
    command
}

/// Status line code and body of `GET path` on `port` over a fresh
/// connection (`Connection: close`); an error when nothing answers within 2 s.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    Ok((status, body))
}

/// Waits until something accepts connections on `port`, or `timeout` passes.
pub fn wait_listening(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The output of a short command, trimmed, or `None` when it fails.
pub fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    let text = if output.stdout.is_empty() { output.stderr } else { output.stdout };
    output.status.success().then(|| String::from_utf8_lossy(&text).trim().to_owned())
}

/// How `BENCH_PIN=1` shares the CPUs: the last one for the proxies under
/// test, the others for the load and the upstream.
pub struct CpuSplit {
    /// `taskset`'s list, such as `1`.
    pub proxies: String,
    /// `taskset`'s list, such as `0` or `0-2`.
    pub load: String,
}

impl CpuSplit {
    /// `None` with fewer than two CPUs.
    pub fn new() -> Option<CpuSplit> {
        let last = std::thread::available_parallelism().ok()?.get().checked_sub(1).filter(|last| *last > 0)?;
        let load = if last == 1 { "0".to_owned() } else { format!("0-{}", last - 1) };
        Some(CpuSplit { proxies: last.to_string(), load })
    }
}

/// Pins every thread of `pid` to `cpus` (threads it starts later inherit it).
pub fn pin(pid: u32, cpus: &str) {
    let status = Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status();
    assert!(matches!(status, Ok(s) if s.success()), "taskset could not pin {pid} to CPU {cpus}: {status:?}");
}

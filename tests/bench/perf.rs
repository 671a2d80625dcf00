//! Syscalls, context switches and CPU time per request, from
//! `perf stat -e raw_syscalls:sys_enter,context-switches,task-clock -p PIDS`
//! attached to one proxy's processes for the length of a wrk run. Skipped
//! when `perf` is missing or not allowed (containers, `perf_event_paranoid`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::process::Process;

const EVENTS: &str = "raw_syscalls:sys_enter,context-switches,task-clock";

/// Whether `perf stat` can count [`EVENTS`] here; the reason when not.
pub fn available() -> Result<(), String> {
    let output = Command::new("perf")
        .args(["stat", "-x", ",", "-e", EVENTS, "--", "true"])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("perf: {e}"))?;
    let counts = parse(&String::from_utf8_lossy(&output.stderr));
    match counts {
        Some(_) if output.status.success() => Ok(()),
        _ => Err(format!("perf stat cannot count {EVENTS}: {}", String::from_utf8_lossy(&output.stderr).trim())),
    }
}

/// What perf counted over one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub syscalls: f64,
    pub context_switches: f64,
    /// CPU time in milliseconds.
    pub task_clock_ms: f64,
}

/// A running `perf stat`, counting until [`Stat::finish`].
pub struct Stat {
    process: Process,
    out: PathBuf,
}

impl Stat {
    /// Attaches to `pids` (all their threads); the counts go to `out`.
    pub fn start(pids: &[u32], out: &Path) -> Stat {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut command = Command::new("perf");
        command
            .args(["stat", "-x", ",", "-e", EVENTS, "-o"])
            .arg(out)
            .arg("-p")
            .arg(pids.join(","))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = Process::spawn("perf stat", &mut command);
        // perf prints nothing when it has attached; a moment is enough
        // (the counts are divided by the requests of the whole run, and a
        // few idle milliseconds add no syscalls).
        std::thread::sleep(std::time::Duration::from_millis(100));
        Stat { process, out: out.to_owned() }
    }

    /// Stops perf (SIGINT makes it print its counts) and reads them.
    pub fn finish(mut self) -> Option<Counts> {
        self.process.stop_with("INT");
        parse(&std::fs::read_to_string(&self.out).ok()?)
    }
}

/// Reads perf's CSV (`-x ,`): `value,unit,event,...`; `None` when an event
/// is missing or `<not counted>`.
fn parse(csv: &str) -> Option<Counts> {
    let value = |event: &str| {
        csv.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields.get(2) == Some(&event)).then(|| fields[0].parse::<f64>().ok()).flatten()
        })
    };
    Some(Counts {
        syscalls: value("raw_syscalls:sys_enter")?,
        context_switches: value("context-switches")?,
        task_clock_ms: value("task-clock")?,
    })
}

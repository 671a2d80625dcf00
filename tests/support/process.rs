//! What a process costs, read from Linux's `/proc`: resident memory and open
//! file descriptors, for the soak and the slow-client tests, which must show
//! that the proxy's footprint stays flat.

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
///
/// # Panics
/// If the process is gone or the file has no `VmRSS` line.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS line in /proc/{pid}/status"));
    kib * 1024
}

/// Number of open file descriptors of process `pid` (entries of `/proc/PID/fd`).
///
/// # Panics
/// If the process is gone.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap_or_else(|e| panic!("listing /proc/{pid}/fd: {e}")).count()
}

/// `bytes` in MiB, for reports.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

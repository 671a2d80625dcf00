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

/// CPU time process `pid` has used so far, user and system (`/proc/PID/stat`
/// fields 14 and 15, in clock ticks of 10 ms).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // The command name may hold spaces: count fields after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// `bytes` in MiB, for reports.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Open descriptors of a process, split by what they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptors {
    /// Every open descriptor.
    pub total: usize,
    /// TCP connections whose remote end is `port` (the proxy's pool towards Truedat).
    pub to_port: usize,
}

impl Descriptors {
    /// Everything but the connections to `port`: listeners, client
    /// connections, the runtime's own descriptors, files.
    pub fn others(&self) -> usize {
        self.total - self.to_port
    }
}

/// The open descriptors of process `pid`, counting apart its TCP connections
/// to remote port `port` (matched by socket inode in `/proc/PID/net/tcp{,6}`).
///
/// # Panics
/// If the process is gone.
pub fn descriptors(pid: u32, port: u16) -> Descriptors {
    let mut to_port_inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(inode)) = (fields.get(2), fields.get(9)) else {
                continue;
            };
            let remote_port = remote.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) {
                to_port_inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let entries: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("listing /proc/{pid}/fd: {e}"))
        .filter_map(Result::ok)
        .collect();
    let to_port = entries
        .iter()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| to_port_inodes.contains(target.to_string_lossy().as_ref()))
        .count();
    Descriptors { total: entries.len(), to_port }
}

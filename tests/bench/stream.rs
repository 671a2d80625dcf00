//! The streaming check: a large upload and download (1 GiB by default)
//! through truedat-auth-proxy while its RSS is sampled, to show that a
//! stream costs it no more memory than a request (the body is never
//! buffered). The upload is chunked from a pipe (unknown length), the harder
//! case for a proxy. Direct transfers give the throughput limit.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::sample::{RssPeak, rss_kib};

/// One transfer through the proxy: its speed and the proxy's memory.
pub struct Transfer {
    /// MB (10^6 bytes) per second through the proxy.
    pub mb_per_s: f64,
    /// MB per second direct to the upstream.
    pub direct_mb_per_s: f64,
    /// The proxy's RSS before, in KiB.
    pub idle_kib: u64,
    /// The proxy's peak RSS during the transfer, in KiB.
    pub peak_kib: u64,
}

/// The upload and the download.
pub struct Streaming {
    pub bytes: u64,
    pub upload: Transfer,
    pub download: Transfer,
}

/// Streams `bytes` up and down through the proxy at `proxy_url`, and direct
/// at `upstream_url` (with `token`); `pid` is the proxy's.
pub fn check(proxy_url: &str, upstream_url: &str, token: &str, pid: u32, bytes: u64) -> Result<Streaming, String> {
    let bearer = format!("Authorization: Bearer {token}");
    let upload = transfer(pid, bytes, |url, headers| upload(url, headers, bytes), proxy_url, upstream_url, &bearer)?;
    let download =
        transfer(pid, bytes, |url, headers| download(url, headers, bytes), proxy_url, upstream_url, &bearer)?;
    Ok(Streaming { bytes, upload, download })
}

fn transfer(
    pid: u32,
    bytes: u64,
    run: impl Fn(&str, &[&str]) -> Result<f64, String>,
    proxy_url: &str,
    upstream_url: &str,
    bearer: &str,
) -> Result<Transfer, String> {
    let direct_secs = run(upstream_url, &["-H", bearer]).map_err(|e| format!("direct: {e}"))?;
    let idle_kib = rss_kib(&[pid]);
    let sampler = RssPeak::start(vec![pid]);
    let secs = run(proxy_url, &[]);
    let peak_kib = sampler.finish();
    let secs = secs.map_err(|e| format!("through truedat-auth-proxy: {e}"))?;
    let mb = bytes as f64 / 1e6;
    Ok(Transfer { mb_per_s: mb / secs, direct_mb_per_s: mb / direct_secs, idle_kib, peak_kib })
}

/// `curl -T -` of `bytes` zeros to `base/api/upload`; seconds taken. The
/// upstream answers only once it has read the whole body, and says how much
/// it read: fewer bytes than sent is an error.
fn upload(base: &str, headers: &[&str], bytes: u64) -> Result<f64, String> {
    let started = Instant::now();
    let mut curl = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-T",
            "-",
            "-H",
            "Content-Type: application/octet-stream",
            "-w",
            "\n%{http_code}",
        ])
        .args(headers)
        .arg(format!("{base}/api/upload"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting curl: {e}"))?;
    let mut stdin = curl.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || {
        let chunk = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if stdin.write_all(&chunk[..n]).is_err() {
                break; // curl stopped early: its status says why
            }
            left -= n as u64;
        }
    });
    let output = curl.wait_with_output().map_err(|e| format!("waiting for curl: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    writer.join().expect("the writer thread does not panic");
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    if status != "200" {
        return Err(format!("upload: status {status}: {body} {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    let read: u64 = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json["request_length"].as_u64())
        .ok_or_else(|| format!("upload: the upstream's answer has no request_length: {body}"))?;
    if read < bytes {
        return Err(format!("upload: the upstream read only {read} of {bytes} bytes"));
    }
    Ok(secs)
}

/// `curl` of `base/api/download` (`bytes` long) to nowhere; seconds taken.
fn download(base: &str, headers: &[&str], bytes: u64) -> Result<f64, String> {
    let started = Instant::now();
    let output = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"])
        .args(headers)
        .arg(format!("{base}/api/download"))
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout);
    if text.trim() != format!("200 {bytes}") {
        return Err(format!("download: {text} (want 200 {bytes}) {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(secs)
}

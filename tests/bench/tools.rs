//! The programs a run needs besides the proxy: nginx (the upstream and the
//! reverse proxy to compare with), wrk (the load) and curl (sanity checks
//! and streaming). When one is missing and this runs as root on Debian or
//! Ubuntu, it is installed with apt-get.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs, and the Debian package that provides each.
const NEEDED: &[(&str, &str)] = &[("nginx", "nginx"), ("wrk", "wrk"), ("curl", "curl")];

/// Where apt-get's maintainer scripts look for permission to start services.
const POLICY_RC: &str = "/usr/sbin/policy-rc.d";

/// Installs what is missing; the path of the nginx binary.
///
/// # Panics
/// When something is missing and cannot be installed, naming it.
pub fn ensure() -> PathBuf {
    let missing: Vec<&str> =
        NEEDED.iter().filter(|(program, _)| find(program).is_none()).map(|(_, package)| *package).collect();
    if !missing.is_empty() {
        install(&missing);
    }
    find("nginx").expect("nginx was just installed")
}

/// `program` on `PATH`, or in `/usr/sbin` (nginx, when root's PATH lacks it).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn install(packages: &[&str]) {
    let root = super::process::unprivileged().is_some();
    if !root || find("apt-get").is_none() {
        panic!("missing: {}; install them (Debian: apt-get install {})", packages.join(", "), packages.join(" "));
    }
    eprintln!("== installing {} with apt-get", packages.join(" "));
    // nginx's postinst would start the system nginx on port 80: a
    // policy-rc.d answering 101 ("action forbidden") keeps it from starting.
    let policy = (!Path::new(POLICY_RC).exists()).then(|| {
        std::fs::write(POLICY_RC, "#!/bin/sh\nexit 101\n").expect("writing policy-rc.d as root");
        let _ = Command::new("chmod").args(["755", POLICY_RC]).status();
        PolicyRc
    });
    let ok = apt(&["update", "-qq"]) && apt(&[&["install", "-y", "-qq", "--no-install-recommends"], packages].concat());
    drop(policy);
    assert!(ok, "apt-get install {} failed (its output is above)", packages.join(" "));
}

fn apt(args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|status| status.success())
}

/// The policy-rc.d this run created; removed when dropped, even on a panic.
struct PolicyRc;

impl Drop for PolicyRc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(POLICY_RC);
    }
}

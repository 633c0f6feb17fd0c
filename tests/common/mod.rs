//! Helpers shared by the functional tests: run the real `repospanner` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_repospanner");

/// `len` incompressible bytes (xorshift from `seed`, which must not be 0).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `repospanner` with `args` and returns its output (never panics on failure).
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("spawn repospanner")
}

/// Runs and asserts success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "repospanner {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and asserts failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "repospanner {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A temporary directory with a `config.yml` whose `ca.path` is `<dir>/ca`.
pub struct CaDir {
    pub dir: tempfile::TempDir,
}

impl CaDir {
    pub fn new() -> CaDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        std::fs::write(
            dir.path().join("config.yml"),
            format!("ca:\n  path: {}\n", ca.display()),
        )
        .expect("write config");
        CaDir { dir }
    }
    pub fn config(&self) -> String {
        self.dir.path().join("config.yml").display().to_string()
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }
    pub fn file(&self, name: &str) -> String {
        self.ca().join(name).display().to_string()
    }
    /// `repospanner --config <config> args...`
    pub fn ok(&self, args: &[&str]) -> String {
        let cfg = self.config();
        let mut all = vec!["--config", cfg.as_str()];
        all.extend_from_slice(args);
        ok(&all)
    }
    pub fn fails(&self, args: &[&str]) -> String {
        let cfg = self.config();
        let mut all = vec!["--config", cfg.as_str()];
        all.extend_from_slice(args);
        fails(&all)
    }
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}
pub mod packs;
pub mod region;

/// Runs `git args` in `dir` with `input` on its stdin; it must succeed.
pub fn git_stdin(dir: &Path, args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("git");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    assert!(child.wait().expect("wait").success(), "git {args:?}");
}

/// The anonymous resident memory of process `pid` (RssAnon, /proc), in KiB.
pub fn rss_anon_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The highest RssAnon of `pid` while `f` runs (sampled every 10 ms), less what it
/// was before, in KiB.
pub fn rss_growth_kib(pid: u32, f: impl FnOnce()) -> u64 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let before = rss_anon_kib(pid);
    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_anon_kib(pid));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    f();
    done.store(true, Ordering::Relaxed);
    let peak = watch.join().expect("watcher");
    peak.saturating_sub(before)
}

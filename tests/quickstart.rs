//! The README's first command, run as an operator runs it: `repospanner quickstart`
//! brings up a 3-node region as child processes, `DIR/env` points git at it, a push to
//! one node is cloned from another, and Ctrl-C (SIGINT) stops every node cleanly.
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::region::free_ports;
use common::BIN;

/// The `export NAME=value` lines of `DIR/env`.
fn env_of(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("env"))
        .expect("env file")
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn git(env: &[(String, String)], home: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "q")
        .env("GIT_AUTHOR_EMAIL", "q@example.com")
        .env("GIT_COMMITTER_NAME", "q")
        .env("GIT_COMMITTER_EMAIL", "q@example.com")
        .output()
        .expect("spawn git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn quickstart_runs_a_three_node_region_that_git_uses_and_ctrl_c_stops_it() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("qs");
    let port = free_ports(3);
    let mut qs = Command::new(BIN)
        .args([
            "quickstart",
            "--dir",
            dir.to_str().expect("path"),
            "--port",
            &port.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn quickstart");
    // It says so once every node answers.
    let mut lines = BufReader::new(qs.stdout.take().expect("stdout")).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut said = String::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("quickstart ended before the region ran:\n{said}"))
            .expect("read stdout");
        said.push_str(&line);
        said.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
        assert!(Instant::now() < deadline, "no region after 120 s:\n{said}");
    }
    assert!(said.contains("3 node(s)"), "{said}");
    assert!(
        said.contains("git clone $REPOSPANNER_URL_1/repo/test.git"),
        "{said}"
    );
    // Keep reading its output so it never blocks on a full pipe.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let env = env_of(&dir);
    let url = |k: usize| {
        let name = format!("REPOSPANNER_URL_{k}");
        let base = &env.iter().find(|(n, _)| *n == name).expect("url in env").1;
        format!("{base}/repo/test.git")
    };
    for name in [
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_SSL_CERT",
        "GIT_SSL_KEY",
    ] {
        assert!(env.iter().any(|(n, _)| n == name), "{name} in env");
    }
    // git trusts the region's CA alone: its CA path holds that one certificate.
    let capath = &env
        .iter()
        .find(|(n, _)| n == "GIT_SSL_CAPATH")
        .expect("capath")
        .1;
    let held: Vec<_> = std::fs::read_dir(capath)
        .expect("CA path")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(held, ["ca.crt"], "{capath}");
    assert_eq!(
        std::fs::read(Path::new(capath).join("ca.crt")).expect("trusted CA"),
        std::fs::read(dir.join("ca/ca.crt")).expect("CA")
    );
    let home = t.path();
    // The command it prints, then a push through node 2 and a clone from node 3.
    git(&env, home, home, &["clone", "-q", &url(1), "a"]);
    let a = home.join("a");
    std::fs::write(a.join("README"), "quick start\n").expect("write");
    git(&env, home, &a, &["add", "README"]);
    git(&env, home, &a, &["commit", "-q", "-m", "first"]);
    git(
        &env,
        home,
        &a,
        &["push", "-q", &url(2), "HEAD:refs/heads/master"],
    );
    git(&env, home, home, &["clone", "-q", &url(3), "b"]);
    let b = home.join("b");
    assert_eq!(
        git(&env, home, &b, &["rev-parse", "HEAD"]),
        git(&env, home, &a, &["rev-parse", "HEAD"])
    );
    git(&env, home, &b, &["fsck", "--full", "--strict"]);

    // Ctrl-C: the nodes stop cleanly and the command exits 0.
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(qs.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = qs.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "quickstart did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let rest = rest.join().expect("reader");
    assert!(status.success(), "{status}: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("Stopped.")), "{rest:?}");
    for k in 0..3u16 {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port + 2 * k)).is_err(),
            "node {} still listens",
            k + 1
        );
    }
    for k in 1..=3 {
        let log =
            std::fs::read_to_string(dir.join(format!("node{k}/node.log"))).unwrap_or_default();
        assert!(!log.contains("panicked"), "node {k}:\n{log}");
    }
}

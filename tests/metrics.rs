//! `GET /metrics` on a real 3-node region (#25 item 2): who may read it, what it
//! counts after real pushes and clones, the plain listener for scrapers, and the
//! exposition checked by Prometheus's own `promtool check metrics`. The alert rules
//! in `deploy/prometheus/` are checked and unit-tested with `promtool` too.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use common::region::Region;

/// Whether `promtool` runs here; in CI its absence fails the test (`.ci/run` installs
/// it), elsewhere the checks that need it are skipped with a note.
fn promtool() -> bool {
    let there = Command::new("promtool").arg("--version").output().is_ok();
    assert!(
        there || std::env::var_os("CI").is_none(),
        "promtool is missing (the Debian package prometheus has it)"
    );
    if !there {
        eprintln!("SKIPPED: the promtool checks (promtool is not installed)");
    }
    there
}

fn promtool_ok(args: &[&str], input: Option<&str>) -> String {
    let mut cmd = Command::new("promtool");
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("promtool");
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {said}");
    said
}

/// The value of the series `series` (name and labels exactly as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One plain HTTP/1.1 request; the status and body.
fn plain(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn scrape(region: &Region, k: usize, user: Option<&str>) -> (u16, String) {
    let r = region.http_to(&region.url_of(k), user, "GET", "/metrics", &[], None);
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn push_and_clone(region: &Region, t: &Path) {
    let work = t.join("work");
    std::fs::create_dir_all(&work).expect("work");
    region.git_ok(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("a"), common::noise(1, 200_000)).expect("write");
    region.git_ok(&work, &["add", "a"]);
    region.git_ok(&work, &["commit", "-qm", "first"]);
    region.git_ok(
        &work,
        &["push", "-q", &region.repo_url_of(1, "test"), "main"],
    );
    let into = t.join("clone");
    region.git_ok(
        t,
        &[
            "clone",
            "-q",
            &region.repo_url_of(2, "test"),
            &into.to_string_lossy(),
        ],
    );
    // A push the reader may not make: refused (403) before its body is read.
    let out = region.git(
        Some("reader"),
        &work,
        &["push", "-q", &region.repo_url_of(1, "test"), "main:other"],
    );
    assert!(!out.status.success(), "a reader cannot push");
}

/// The plain listener: health and metrics without a certificate, nothing else. Its
/// metrics text.
fn plain_listener(port: u16) -> String {
    let (status, text) = plain(port, "GET", "/metrics");
    assert_eq!(status, 200, "{text}");
    let accepted = value(&text, "repospanner_pushes_total{outcome=\"accepted\"}");
    assert!(accepted >= Some(1.0), "{text}");
    assert_eq!(plain(port, "GET", "/livez").0, 200);
    assert_eq!(plain(port, "GET", "/readyz").0, 200);
    assert_eq!(plain(port, "GET", "/admin/nodestatus").0, 404);
    assert_eq!(plain(port, "GET", "/repo/test.git/info/refs").0, 404);
    assert_eq!(plain(port, "POST", "/metrics").0, 405);
    text
}

#[test]
fn metrics_count_real_traffic_for_monitors_and_pass_promtool() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let region = Region::start_edited(3, |k, c| {
        c.replacen(
            "listen:\n",
            &format!("listen:\n  metrics: 127.0.0.1:{}\n", ports[k - 1]),
            1,
        )
    });
    region.add_user("watcher", &["--monitor", "--region", "*", "--repo", "*"]);
    region.add_user("reader", &["--read", "--region", "*", "--repo", "*"]);
    let t = tempfile::tempdir().expect("tempdir");
    push_and_clone(&region, t.path());
    region.repospanner_ok(&["admin", "scrub"]);

    // Who may read them on the user listener.
    assert_eq!(scrape(&region, 1, None).0, 401, "anonymous");
    assert_eq!(
        scrape(&region, 1, Some("reader")).0,
        401,
        "read permission only"
    );
    let (status, one) = scrape(&region, 1, Some("watcher"));
    assert_eq!(status, 200, "{one}");
    let (status, two) = scrape(&region, 2, Some("admin"));
    assert_eq!(status, 200, "{two}");

    // What node 1 saw: one push accepted, one refused, with its latency and phases.
    let at_least = |text: &str, series: &str, min: f64| {
        let v = value(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(v >= min, "{series} = {v}, expected at least {min}");
    };
    at_least(&one, "repospanner_pushes_total{outcome=\"accepted\"}", 1.0);
    at_least(&one, "repospanner_pushes_total{outcome=\"refused\"}", 1.0);
    at_least(&one, "repospanner_push_received_bytes_total", 200_000.0);
    at_least(&one, "repospanner_push_duration_seconds_count", 1.0);
    for phase in ["receive", "store", "refs"] {
        let series = format!("repospanner_push_phase_duration_seconds_count{{phase=\"{phase}\"}}");
        at_least(&one, &series, 1.0);
    }
    // The scrub just run (shard 0 of node 1: every node has one).
    at_least(
        &one,
        "repospanner_scrub_last_finished_timestamp_seconds{shard=\"0\"}",
        1.0,
    );
    at_least(&one, "repospanner_scrub_read_bytes_total{shard=\"0\"}", 1.0);
    // Node 2 served the clone, and its pack.
    at_least(
        &two,
        "repospanner_fetches_total{kind=\"clone\",outcome=\"sent\"}",
        1.0,
    );
    at_least(&two, "repospanner_pack_sent_bytes_total", 200_000.0);
    // Every shard's raft and storage, on every node.
    for text in [&one, &two] {
        at_least(text, "repospanner_raft_has_leader{shard=\"0\"}", 1.0);
        at_least(text, "repospanner_raft_members{shard=\"0\"}", 3.0);
        at_least(text, "repospanner_raft_term{shard=\"0\"}", 1.0);
        at_least(
            text,
            "repospanner_storage_sync_duration_seconds_count{shard=\"0\"}",
            1.0,
        );
        at_least(
            text,
            "repospanner_storage_batch_appends_count{shard=\"0\"}",
            1.0,
        );
        at_least(text, "repospanner_memory_budget_bytes", 1.0);
        at_least(text, "process_resident_memory_bytes", 1.0);
        at_least(text, "repospanner_filesystem_free_bytes", 1.0);
        assert!(
            text.contains("repospanner_http_requests_in_flight 1"),
            "the scrape itself"
        );
    }
    // The leader of each shard reports its two followers' lag.
    let lags = [&one, &two]
        .iter()
        .map(|t| {
            t.matches("repospanner_raft_replication_lag_entries{")
                .count()
        })
        .sum::<usize>();
    let (_, three) = scrape(&region, 3, Some("watcher"));
    let lags = lags
        + three
            .matches("repospanner_raft_replication_lag_entries{")
            .count();
    assert!(
        lags >= 2,
        "no leader reports replication lag:\n{one}\n{two}\n{three}"
    );

    let plain_text = plain_listener(ports[0]);
    if promtool() {
        for text in [&one, &two, &plain_text] {
            promtool_ok(&["check", "metrics"], Some(text));
        }
    }
}

#[test]
fn the_alert_rules_load_and_fire_as_their_tests_say() {
    if !promtool() {
        return;
    }
    promtool_ok(&["check", "rules", "deploy/prometheus/alerts.yml"], None);
    promtool_ok(
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
        None,
    );
    promtool_ok(
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        None,
    );
}

//! The node under systemd (#25 item 1): the unit in `deploy/` verified and its
//! exposure scored by `systemd-analyze`, and the notify protocol checked by a listener
//! standing in for systemd: `READY=1` once the node serves, `STATUS=` lines,
//! `WATCHDOG=1` at the pace `WATCHDOG_USEC` asks, `STOPPING=1` on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::region::Region;

const BIN: &str = env!("CARGO_BIN_EXE_repospanner");

/// The unit with `ExecStart` pointing at the binary under test (verify checks that it
/// exists and is executable).
fn unit_for_test(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/repospanner.service"
    ))
    .expect("unit");
    let path = dir.join("repospanner.service");
    std::fs::write(&path, unit.replace("/usr/bin/repospanner", BIN)).expect("write unit");
    path
}

#[test]
fn the_unit_verifies_and_its_exposure_is_low() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_for_test(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (the systemd package) is needed");
    // Its complaints about the unit name the file; other lines (no system bus in a
    // container, and the like) are the machine's.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("repospanner.service"),
        "systemd-analyze verify: {err}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for").nth(1))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 5.0, "exposure {score}:\n{text}");
}

/// Datagrams to the stand-in for systemd within `wait`, until `until` matches one.
fn read_until(sock: &UnixDatagram, wait: Duration, until: &str, got: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == until);
            got.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_node_speaks_the_notify_protocol() {
    let region = Region::write(1, "");
    let out = region.repospanner(&["serve", "--spawn"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(region.config_of(1))
        .arg("serve")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "1500000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the node");
    let mut got = Vec::new();
    let ready = read_until(&sock, Duration::from_secs(30), "READY=1", &mut got);
    let log = || std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    assert!(ready, "no READY=1: {got:?}\n{}", log());
    let ready_msg = got.last().cloned().unwrap_or_default();
    assert!(ready_msg.contains("STATUS=serving"), "{ready_msg}");
    // Pings at a third of the watchdog's 1.5 s: several in 2 s.
    let mut after = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        read_until(&sock, Duration::from_millis(300), "WATCHDOG=1", &mut after);
    }
    let pings = after
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(pings >= 3, "{pings} pings in 2 s: {after:?}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut last = Vec::new();
    assert!(
        read_until(&sock, Duration::from_secs(10), "STOPPING=1", &mut last),
        "no STOPPING=1: {last:?}"
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}\n{}", log());
}

//! Regions of several real nodes on loopback, the real git client, real TLS: pushes
//! to any node are served by every node; a killed minority does not stop the region
//! and catches up; a lost majority makes pushes fail cleanly; nodes join a running
//! region, also several at once, and a wiped node is rebuilt from its peers.

mod common;

use std::path::{Path, PathBuf};

use common::region::Region;

/// Short timeouts so the tests of lost majorities finish quickly.
const FAST: &str = "limits:\n  replication_timeout_seconds: 6\n";

fn refs_at(region: &Region, k: usize, repo: &str) -> String {
    let out = region.git(
        Some("admin"),
        region.dir.path(),
        &["ls-remote", &region.repo_url_of(k, repo)],
    );
    assert!(
        out.status.success(),
        "ls-remote from node {k}: {}\n--- node {k} log tail:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&region.log_of(k))
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines.join("\n")
}

fn tail(log: &str) -> String {
    let v: Vec<&str> = log.lines().rev().take(25).collect();
    v.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn work_repo(region: &Region, name: &str) -> PathBuf {
    let t = region.dir.path();
    let w = t.join(name);
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    w
}

fn commit(region: &Region, w: &Path, n: usize) -> String {
    std::fs::write(w.join(format!("f{}", n % 7)), format!("content {n}\n")).expect("write");
    region.git_ok(w, &["add", "-A"]);
    region.git_ok(w, &["commit", "-qm", &format!("commit {n}")]);
    region.git_ok(w, &["rev-parse", "HEAD"]).trim().to_owned()
}

fn clone_and_fsck(region: &Region, k: usize, repo: &str, dest: &str) -> PathBuf {
    let d = region.dir.path().join(dest);
    region.git_ok(
        region.dir.path(),
        &[
            "clone",
            "-q",
            &region.repo_url_of(k, repo),
            d.to_str().expect("path"),
        ],
    );
    region.git_ok(&d, &["fsck", "--full", "--strict"]);
    d
}

/// A clone of `test` from node `k` (into `dest`) is sound and its master has every
/// commit of `acked`.
fn serves_all(region: &Region, k: usize, dest: &str, acked: &[String]) {
    let c = clone_and_fsck(region, k, "test", dest);
    let log = region.git_ok(&c, &["log", "--format=%H", "origin/master"]);
    for t in acked {
        assert!(
            log.contains(t.as_str()),
            "acknowledged push {t} missing on node {k}"
        );
    }
}

/// `GET /readyz` on node `k`, without a certificate: its status.
fn readyz(region: &Region, k: usize) -> u16 {
    region
        .http_to(&region.url_of(k), None, "GET", "/readyz", &[], None)
        .status
}

fn admin_at(region: &Region, k: usize, args: &[&str]) -> String {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    let out = region.repospanner_at(k, &all);
    assert!(
        out.status.success(),
        "admin {args:?} on node {k}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The members received the last push's objects while it arrived, not after it; and
/// every node keeps the headers of the history pushed (`w`'s master), warmed once each
/// push applied there, for fetches' commit walks (nodestatus shows them).
fn members_took_the_pushes(region: &Region, w: &Path) {
    let streamed = (1..=3)
        .filter(|k| {
            region
                .log_of(*k)
                .contains("adopted the objects a peer's push streamed here while it arrived")
        })
        .count();
    assert!(streamed >= 1, "no member adopted a streamed push");
    let commits: u64 = region
        .git_ok(w, &["rev-list", "--count", "master"])
        .trim()
        .parse()
        .expect("count");
    for k in 1..=3 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let status = admin_at(region, k, &["nodestatus", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&status).expect("json");
            let kept: u64 = v["Shards"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["CommitHeaders"]["Count"].as_u64())
                .sum();
            if kept >= commits {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {k} keeps {kept} of {commits} commit headers: {v}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

#[test]
fn three_nodes_push_to_any_clone_from_every() {
    let region = Region::start_n(3, "");
    let w = work_repo(&region, "w");
    for n in 0..3 {
        commit(&region, &w, n);
    }
    region.git_ok(&w, &["tag", "-a", "-m", "v1", "v1"]);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master", "v1"],
    );
    // Every node serves it at once (reads are linearizable).
    let expected = refs_at(&region, 1, "test");
    assert!(expected.contains("refs/tags/v1"), "{expected}");
    for k in 2..=3 {
        assert_eq!(refs_at(&region, k, "test"), expected, "node {k}");
        clone_and_fsck(&region, k, "test", &format!("clone{k}"));
    }
    // Push to each node in turn, each on top of the last; git shows the replication.
    for k in [2, 3, 1] {
        let tip = commit(&region, &w, 10 + k);
        let out = region.git(
            Some("admin"),
            &w,
            &[
                "push",
                "--progress",
                &region.repo_url_of(k, "test"),
                "master",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let progress = String::from_utf8_lossy(&out.stderr);
        assert!(
            progress.contains("replicating: 2/3 nodes")
                || progress.contains("replicating: 3/3 nodes"),
            "{progress}"
        );
        for j in 1..=3 {
            assert!(
                refs_at(&region, j, "test").contains(&format!("{tip}\trefs/heads/master")),
                "push to node {k} not seen on node {j}"
            );
        }
    }
    // A push larger than one object-sync body (several 3 MiB files and a 20 MiB one,
    // incompressible) reaches every node whole.
    for i in 0..4 {
        let data = common::noise(0x9e37_79b9_7f4a_7c15 + i, 3 << 20);
        std::fs::write(w.join(format!("big{i}.bin")), data).expect("write");
    }
    let huge = common::noise(0x2545_f491_4f6c_dd1d, 20 << 20);
    std::fs::write(w.join("huge.bin"), huge).expect("write");
    region.git_ok(&w, &["add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "large files"]);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(2, "test"), "master"],
    );
    let expected = refs_at(&region, 2, "test");
    for k in [1, 3] {
        assert_eq!(refs_at(&region, k, "test"), expected, "node {k}");
    }
    clone_and_fsck(&region, 3, "test", "large3");
    members_took_the_pushes(&region, &w);
    // Admin operations on any node are visible on all.
    admin_at(&region, 2, &["repo", "create", "made-on-two"]);
    for k in 1..=3 {
        assert!(
            admin_at(&region, k, &["repo", "list"]).contains("made-on-two"),
            "node {k}"
        );
    }
    admin_at(
        &region,
        3,
        &["repo", "edit", "made-on-two", "--public=true"],
    );
    let out = region.git(
        None,
        region.dir.path(),
        &["ls-remote", &region.repo_url_of(1, "made-on-two")],
    );
    assert!(out.status.success(), "public after an edit on node 3");
    // Every node knows the whole region.
    let status = admin_at(&region, 2, &["nodestatus", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(v["Peers"].as_object().map(|p| p.len()), Some(3), "{v}");
    assert_eq!(v["Status"], "ok", "{v}");
    let out = region.repospanner_at(3, &["admin", "nodestatus", "--nagios"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_killed_minority_does_not_stop_pushes_and_catches_up() {
    let mut region = Region::start_n(3, FAST);
    let w = work_repo(&region, "w");
    commit(&region, &w, 0);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master"],
    );
    region.stop_at(3, libc::SIGKILL);
    let mut tips = Vec::new();
    for n in 1..=4 {
        let tip = commit(&region, &w, n);
        // Through either live node.
        let k = 1 + n % 2;
        region.git_ok(
            &w,
            &["push", "-q", &region.repo_url_of(k, "test"), "master"],
        );
        tips.push(tip);
    }
    // A branch whose objects node 3 has never seen, larger than one object-sync body
    // (these regions do not stage: objects go after verification).
    let noise: Vec<u8> = (0..(12u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(w.join("side.bin"), noise).expect("write");
    region.git_ok(&w, &["checkout", "-q", "-b", "side"]);
    region.git_ok(&w, &["add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "side"]);
    region.git_ok(&w, &["push", "-q", &region.repo_url_of(2, "test"), "side"]);
    region.git_ok(&w, &["checkout", "-q", "master"]);
    // A repository pushed to and deleted while node 3 was down: the members no longer
    // hold its objects, and node 3, applying the push before the deletion, must not
    // wait for them.
    admin_at(&region, 1, &["repo", "create", "doomed"]);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "doomed"), "side"],
    );
    admin_at(&region, 2, &["repo", "delete", "doomed"]);
    region.start_node_at(3);
    let expected = refs_at(&region, 1, "test");
    assert!(expected.contains(tips.last().expect("tip")), "{expected}");
    assert_eq!(refs_at(&region, 3, "test"), expected);
    serves_all(&region, 3, "after", &tips);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while readyz(&region, 3) != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 did not catch up past the deleted repository\n{}",
            region.log_of(3)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let listed = admin_at(&region, 3, &["repo", "list"]);
    assert!(!listed.contains("doomed"), "{listed}");
}

#[test]
fn without_a_majority_pushes_fail_cleanly_and_resume_after() {
    let mut region = Region::start_n(3, FAST);
    let w = work_repo(&region, "w");
    let first = commit(&region, &w, 0);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master"],
    );
    // Every node is ready for load balancers (no certificate needed)...
    assert!((1..=3).all(|k| readyz(&region, k) == 200));
    region.stop_at(2, libc::SIGKILL);
    region.stop_at(3, libc::SIGKILL);
    // ...then they see node 1 leave service: /readyz answers 503 without a
    // certificate once its groups have no quorum; /livez still says it serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = region.http(None, "GET", "/readyz", &[], None);
        if r.status == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still {}",
            r.status
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(region.http(None, "GET", "/livez", &[], None).status, 200);
    // A node that cannot be asked is UNKNOWN (3), as in the Go original.
    let out = region.repospanner_at(2, &["admin", "nodestatus", "--nagios"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("UNKNOWN"));
    // Monitoring sees it: the lone node's groups have no quorum (CRITICAL).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = region.repospanner_at(1, &["admin", "nodestatus", "--nagios"]);
        if out.status.code() == Some(2) {
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("CRITICAL"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nagios still says: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    commit(&region, &w, 1);
    let out = region.git(
        Some("admin"),
        &w,
        &["push", &region.repo_url_of(1, "test"), "master"],
    );
    assert!(!out.status.success(), "a push without a majority must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("majority") || err.contains("current") || err.contains("503"),
        "the error says why: {err}"
    );
    // A read from the lone node either proves it is current or fails clearly.
    let out = region.git(
        Some("admin"),
        region.dir.path(),
        &["ls-remote", &region.repo_url_of(1, "test")],
    );
    if out.status.success() {
        assert!(String::from_utf8_lossy(&out.stdout).contains(&first));
    }
    region.start_node_at(2);
    region.start_node_at(3);
    // The failed push changed nothing.
    for k in 1..=3 {
        assert!(
            refs_at(&region, k, "test").contains(&format!("{first}\trefs/heads/master")),
            "node {k}"
        );
    }
    let tip = commit(&region, &w, 2);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(3, "test"), "master"],
    );
    for k in 1..=3 {
        assert!(refs_at(&region, k, "test").contains(&tip), "node {k}");
    }
}

#[test]
fn killing_the_leader_during_pushes_loses_no_acknowledged_push() {
    let mut region = Region::start_n(3, FAST);
    let w = work_repo(&region, "w");
    let mut acked: Vec<String> = Vec::new();
    // Node 1 spawned the region, so it leads every group until it dies.
    for n in 0..12 {
        if n == 4 {
            region.stop_at(1, libc::SIGKILL);
        }
        let tip = commit(&region, &w, n);
        let k = if region.running(1) { 1 } else { 2 + n % 2 };
        let out = region.git(
            Some("admin"),
            &w,
            &["push", &region.repo_url_of(k, "test"), "master"],
        );
        if out.status.success() {
            acked.push(tip);
        } else {
            // Not acknowledged: the next push builds on the server's state.
            region.git_ok(
                &w,
                &["fetch", "-q", &region.repo_url_of(2, "test"), "master"],
            );
            region.git_ok(&w, &["reset", "-q", "--hard", "FETCH_HEAD"]);
        }
    }
    assert!(acked.len() >= 6, "pushes kept succeeding: {acked:?}");
    region.start_node_at(1);
    for k in 1..=3 {
        serves_all(&region, k, &format!("c{k}"), &acked);
    }
}

#[test]
fn nodes_join_a_running_region_at_once_and_a_wiped_node_rejoins() {
    let mut region = Region::start_some(5, FAST, 2);
    region.join(3);
    region.start_node_at(3);
    let w = work_repo(&region, "w");
    let tip = commit(&region, &w, 0);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(2, "test"), "master"],
    );
    // Nodes 4 and 5 join at the same time, through different members.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| region.join_via(4, 1));
        let b = s.spawn(|| region.join_via(5, 3));
        (a.join().expect("join 4"), b.join().expect("join 5"))
    });
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    region.start_node_at(4);
    region.start_node_at(5);
    for k in 4..=5 {
        assert!(refs_at(&region, k, "test").contains(&tip), "node {k}");
        clone_and_fsck(&region, k, "test", &format!("n{k}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&admin_at(&region, 4, &["nodestatus", "--json"])).expect("json");
    assert_eq!(v["Peers"].as_object().map(|p| p.len()), Some(5), "{v}");
    // Node 3 loses its disk and rejoins with the same identity.
    region.stop_at(3, libc::SIGKILL);
    let tip2 = commit(&region, &w, 1);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(4, "test"), "master"],
    );
    let node3 = region.qs().join("node3");
    std::fs::remove_dir_all(node3.join("state")).expect("wipe state");
    std::fs::remove_dir_all(node3.join("git")).expect("wipe git");
    region.join(3);
    region.start_node_at(3);
    assert!(refs_at(&region, 3, "test").contains(&tip2));
    clone_and_fsck(&region, 3, "test", "rebuilt");
    // The leaders were told the log was gone before node 3 took entries again, and
    // started its replication over: without that, openraft resent what node 3 lost
    // hundreds of times a second and the join never ended (release builds), or its
    // debug assertion brought the leader's raft core down.
    let logs: Vec<String> = (1..=5).map(|k| region.log_of(k)).collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("rejoin: the node lost its log; replicating it from the start")),
        "no leader reset its replication to node 3"
    );
    for (k, l) in logs.iter().enumerate() {
        assert!(!l.contains("panicked"), "node {} panicked:\n{l}", k + 1);
    }
}

#[test]
fn a_join_killed_midway_can_be_retried() {
    let mut region = Region::start_some(3, FAST, 2);
    let w = work_repo(&region, "w");
    let tip = commit(&region, &w, 0);
    region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "master"]);
    // Node 3 starts joining and is SIGKILLed once it has written its state, before
    // the join is done (a finished join exits on its own).
    let mut joining = std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(region.config_of(3))
        .args([
            "serve",
            "--joinnode",
            &format!("https://{}", region.rpc_addr_of(1)),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("join");
    let state = region.qs().join("node3/state/node.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !state.exists() {
        assert!(std::time::Instant::now() < deadline, "no state after 30 s");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // While it joins it does not vote: a wiped node has forgotten its votes.
    let ca = std::fs::read(region.ca_dir().join("ca.crt")).expect("ca");
    let node_cert = std::fs::read(region.ca_dir().join("node1.local.crt")).expect("cert");
    let node_key = std::fs::read(region.ca_dir().join("node1.local.key")).expect("key");
    let vote = loop {
        match repospanner::admin::request_raw(
            &format!("https://{}", region.rpc_addr_of(3)),
            &ca,
            Some((&node_cert, &node_key)),
            "POST",
            "/rpc/shard/0/vote",
            &[],
            Some(b"{}"),
        ) {
            Ok(r) => break r,
            Err(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node 3 never listened"
                );
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    };
    let midway = joining.try_wait().expect("wait").is_none();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(joining.id() as i32, libc::SIGKILL) };
    let _ = joining.wait();
    assert!(midway, "the join finished before it could be interrupted");
    assert_eq!(vote.status, 503, "{}", String::from_utf8_lossy(&vote.body));
    assert!(String::from_utf8_lossy(&vote.body).contains("joining"));
    // `serve` refuses a node whose join did not finish.
    let out = region.repospanner_at(3, &["serve"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("join did not finish"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running the join again finishes it.
    region.join(3);
    region.start_node_at(3);
    assert!(refs_at(&region, 3, "test").contains(&tip));
    clone_and_fsck(&region, 3, "test", "after-retry");
    // And node 3 is a voter: with node 1 gone, nodes 2 and 3 still take pushes.
    region.stop_at(1, libc::SIGKILL);
    let tip2 = commit(&region, &w, 1);
    // Once nodes 2 and 3 have elected a leader (a 503 until then: the client retries,
    // as git's users do; on a loaded machine the election can outlast one push's
    // replication timeout).
    let url = region.repo_url_of(3, "test");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = region.git(Some("admin"), &w, &["push", "-q", &url, "master"]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nodes 2 and 3 took no push in 60 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(refs_at(&region, 2, "test").contains(&tip2));
}

#[test]
fn a_bad_join_url_is_refused_and_writes_nothing() {
    let region = Region::write(2, "");
    for url in [
        "http://127.0.0.1:1",
        "https://",
        "https://nohost",
        "127.0.0.1:8444",
    ] {
        let out = region.repospanner_at(2, &["serve", "--joinnode", url]);
        assert!(!out.status.success(), "{url} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("https://<node>:<rpcport>"), "{url}: {err}");
    }
    assert!(!region.qs().join("node2/state/node.json").exists());
}

#[test]
fn a_node_away_past_the_log_catches_up_from_a_snapshot() {
    // Snapshots every 20 entries, 5 kept: a short absence outlives the log.
    let mut region = Region::start_n(
        3,
        "raft:\n  snapshot_entries: 20\nlimits:\n  replication_timeout_seconds: 6\n",
    );
    let w = work_repo(&region, "w");
    commit(&region, &w, 0);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master"],
    );
    region.stop_at(3, libc::SIGKILL);
    // While node 3 is away: pushes, and enough entries on every shard to purge the log.
    let tip = commit(&region, &w, 1);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master"],
    );
    for i in 0..120 {
        let body = format!("{{\"Reponame\": \"away{i}\"}}");
        let r = region.http_to(
            &region.url_of(1 + i % 2),
            Some("admin"),
            "POST",
            "/admin/createrepo",
            &[],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(2, "away7"), "master"],
    );
    region.start_node_at(3);
    for repo in ["test", "away7"] {
        assert_eq!(
            refs_at(&region, 3, repo),
            refs_at(&region, 1, repo),
            "{repo}"
        );
    }
    assert!(refs_at(&region, 3, "test").contains(&tip));
    clone_and_fsck(&region, 3, "away7", "snap-away7");
    clone_and_fsck(&region, 3, "test", "snap-test");
    assert!(
        admin_at(&region, 3, &["repo", "list"]).contains("away119"),
        "node 3 knows every repository"
    );
    let log = region.log_of(3);
    assert!(
        log.contains("install complete snapshot") && log.contains("fetched missing objects"),
        "node 3 caught up without a snapshot?\n{}",
        tail(&log)
    );
}

/// A pkt-line.
fn pkt(s: &str) -> String {
    format!("{:04x}{s}", s.len() + 4)
}

/// Streams a push (with curl) that makes `name` point at `tip`, a stored commit, to node
/// 1; once node 1 has authorized it, stops nodes 2 and 3 (SIGSTOP) so no majority can
/// confirm the proposal in time, then resumes the nodes in `resume` only. Returns the
/// report.
fn push_with_majority_frozen(region: &Region, name: &str, tip: &str, resume: &[usize]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let ca = region.ca_dir();
    let mut curl = Command::new("curl")
        .args(["-sS", "--http1.1", "-X", "POST", "-T", "-"])
        .arg("--cacert")
        .arg(ca.join("ca.crt"))
        .arg("--cert")
        .arg(ca.join("admin.crt"))
        .arg("--key")
        .arg(ca.join("admin.key"))
        .args([
            "-H",
            "Content-Type: application/x-git-receive-pack-request",
            "-H",
            "Transfer-Encoding: chunked",
        ])
        .arg(format!("{}/repo/test.git/git-receive-pack", region.url()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl (apt-get install curl)");
    let mut stdin = curl.stdin.take().expect("stdin");
    let zero = "0".repeat(40);
    let command = pkt(&format!("{zero} {tip} {name}\0report-status\n"));
    stdin.write_all(command.as_bytes()).expect("write");
    stdin.flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let pid = |k: usize| region.pid_of(k).expect("running") as i32;
    for k in [2, 3] {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid(k), libc::SIGSTOP) };
    }
    // The rest: flush, then an empty pack (header and its SHA-1).
    let mut pack = b"PACK\0\0\0\x02\0\0\0\0".to_vec();
    let sum = <sha1::Sha1 as sha1::Digest>::digest(&pack);
    pack.extend_from_slice(&sum);
    stdin.write_all(b"0000").expect("write");
    stdin.write_all(&pack).expect("write");
    drop(stdin);
    let out = curl.wait_with_output().expect("curl");
    for &k in resume {
        // SAFETY: as above.
        unsafe { libc::kill(pid(k), libc::SIGCONT) };
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The push id in a report of a push whose outcome is unknown.
fn push_id(report: &str, name: &str) -> String {
    assert!(report.contains(&format!("ng {name}")), "{report}");
    assert!(report.contains("may still be applied"), "{report}");
    report
        .split("push ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .expect("push id in the report")
        .to_owned()
}

/// Whether node `k`'s log says push `id` moved its ref.
fn log_says_applied(region: &Region, k: usize, id: &str) -> bool {
    region
        .log_of(k)
        .lines()
        .any(|l| l.contains(&format!("push {id} to test")) && l.contains("applied, 1 refs moved"))
}

#[test]
fn a_push_not_confirmed_in_time_reports_its_id_and_every_log_tells_its_outcome() {
    let region = Region::start_n(3, FAST);
    let w = work_repo(&region, "w");
    let tip = commit(&region, &w, 0);
    region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "master"]);

    // Node 2 comes back alone: node 1 holds the longest log, so whoever leads next
    // keeps the entry, and the push the client was told is unknown is applied.
    let report = push_with_majority_frozen(&region, "refs/heads/late", &tip, &[2]);
    let late = push_id(&report, "refs/heads/late");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !log_says_applied(&region, 1, &late) {
        assert!(
            std::time::Instant::now() < deadline,
            "push {late} never applied:\n{}",
            tail(&region.log_of(1))
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(refs_at(&region, 1, "test").contains("refs/heads/late"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(region.pid_of(3).expect("running") as i32, libc::SIGCONT) };

    // Both come back: the outcome may go either way; every node says the same as the
    // refs once a later push has committed after it.
    let report = push_with_majority_frozen(&region, "refs/heads/either", &tip, &[2, 3]);
    let either = push_id(&report, "refs/heads/either");
    let tip2 = commit(&region, &w, 1);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(2, "test"), "master"],
    );
    let moved = refs_at(&region, 1, "test").contains("refs/heads/either");
    eprintln!("push {either}, whose outcome was unknown: applied = {moved}");
    for k in 1..=3 {
        let refs = refs_at(&region, k, "test");
        assert!(
            refs.contains(&tip2) && refs.contains("refs/heads/late"),
            "node {k}"
        );
        assert_eq!(refs.contains("refs/heads/either"), moved, "node {k}");
        assert!(log_says_applied(&region, k, &late), "node {k}");
        assert_eq!(
            log_says_applied(&region, k, &either),
            moved,
            "node {k}:\n{}",
            tail(&region.log_of(k))
        );
    }
}

/// Commits `blobs` files of 4 MiB of noise each on `w`: a push larger than one batch
/// of objects written aside (16 MiB), so that the members receive it while it arrives.
fn commit_large(region: &Region, w: &Path, seed: u64, blobs: u64) -> String {
    for i in 0..blobs {
        std::fs::write(
            w.join(format!("large{seed}-{i}.bin")),
            common::noise(seed * 100 + i, 4 << 20),
        )
        .expect("write");
        region.git_ok(w, &["add", "-A"]);
        region.git_ok(w, &["commit", "-qm", &format!("large {seed} {i}")]);
    }
    region.git_ok(w, &["rev-parse", "HEAD"]).trim().to_owned()
}

const STREAM_ADOPTED: &str = "adopted the objects a peer's push streamed here";

#[test]
fn a_large_push_reaches_the_members_while_it_arrives_and_outlives_its_receiver() {
    let mut region = Region::start_n(3, FAST);
    let w = work_repo(&region, "w");
    let first = commit_large(&region, &w, 1, 5);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master"],
    );
    // The push was acknowledged once a majority held it: the other member may still be
    // finishing in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for k in 2..=3 {
        while !region.log_of(k).contains(STREAM_ADOPTED) {
            assert!(
                std::time::Instant::now() < deadline,
                "node {k} did not adopt the streamed objects:\n{}\n--- node 1 on streaming:\n{}",
                tail(&region.log_of(k)),
                region
                    .log_of(1)
                    .lines()
                    .filter(|l| l.contains("stream") || l.contains("adopt"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    // A member down during the stream: the push goes on with the other, and the
    // member catches up after.
    region.stop_at(3, libc::SIGKILL);
    let second = commit_large(&region, &w, 2, 5);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master"],
    );
    // The receiver dies; the members hold everything it acknowledged.
    region.stop_at(1, libc::SIGKILL);
    region.start_node_at(3);
    // Reads wait for a leader among the two (an election after the kill).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !region
        .git(
            Some("admin"),
            region.dir.path(),
            &["ls-remote", &region.repo_url_of(2, "test")],
        )
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no leader after the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for k in 2..=3 {
        let expected = refs_at(&region, 2, "test");
        assert!(expected.contains(&second), "{expected}");
        assert_eq!(refs_at(&region, k, "test"), expected, "node {k}");
        serves_all(
            &region,
            k,
            &format!("after{k}"),
            &[first.clone(), second.clone()],
        );
    }
}

#[test]
fn a_large_push_that_fails_late_leaves_nothing_on_the_members() {
    let region = Region::start_n(3, FAST);
    let w = work_repo(&region, "w");
    let base = commit(&region, &w, 0);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master"],
    );
    let before: Vec<String> = (1..=3).map(|k| refs_at(&region, k, "test")).collect();
    // 20 MiB of valid objects, then a trailer that does not match: found only once
    // every object has been verified and streamed.
    let tip = commit_large(&region, &w, 3, 5);
    let out = std::process::Command::new("git")
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .current_dir(&w)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(format!("{tip}\n^{base}\n").as_bytes())?;
            c.wait_with_output()
        })
        .expect("pack-objects");
    assert!(out.status.success());
    let mut pack = out.stdout;
    let n = pack.len();
    pack[n - 1] ^= 1;
    let line = format!("{base} {tip} refs/heads/master\0report-status\n");
    let mut body = format!("{:04x}{line}0000", line.len() + 4).into_bytes();
    body.extend_from_slice(&pack);
    let r = region.http_to(
        &region.url_of(1),
        Some("admin"),
        "POST",
        "/repo/test.git/git-receive-pack",
        &[("Content-Type", "application/x-git-receive-pack-request")],
        Some(&body),
    );
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("unpack ") && !text.contains("unpack ok"),
        "{text}"
    );
    // The members were told to drop what the stream left there, and no node moved.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for k in 2..=3 {
        while !region
            .log_of(k)
            .contains("dropping objects a failed push of a peer wrote here aside")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "node {k} kept the failed push's objects:\n{}",
                tail(&region.log_of(k))
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!region.log_of(k).contains(STREAM_ADOPTED), "node {k}");
    }
    for k in 1..=3 {
        assert_eq!(refs_at(&region, k, "test"), before[k - 1], "node {k}");
    }
    // The same push, whole, then goes through.
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master"],
    );
    serves_all(&region, 3, "after", &[tip]);
}

#[test]
fn a_dead_node_is_removed_and_replaced_and_the_region_grows_and_shrinks() {
    let mut region = Region::start_some(5, FAST, 3);
    let w = work_repo(&region, "w");
    let mut acked = Vec::new();
    for n in 0..2 {
        acked.push(commit(&region, &w, n));
        region.git_ok(
            &w,
            &["push", "-q", &region.repo_url_of(1, "test"), "master"],
        );
    }
    admin_at(&region, 1, &["repo", "create", "other"]);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(2, "other"), "master"],
    );

    // Node 3 is lost for good: killed, its disk gone.
    region.stop_at(3, libc::SIGKILL);
    for d in ["state", "git"] {
        let _ = std::fs::remove_dir_all(region.qs().join(format!("node3/{d}")));
    }
    // Removing a live node now would leave node 1 and the dead node 3: refused (once
    // the leaders have missed node 3's answers, as they have by the time an operator
    // acts).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = region.repospanner_at(1, &["admin", "node", "remove", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a removal that leaves no majority was done"
    );
    assert!(err.contains("without a majority"), "{err}");
    // Removing the dead one, through any member.
    let out = admin_at(&region, 2, &["node", "remove", "3"]);
    assert!(out.contains("Node 3 removed"), "{out}");
    acked.push(commit(&region, &w, 2));
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(2, "test"), "master"],
    );

    // A new machine under a new name takes its place, and has everything.
    region.join(4);
    region.start_node_at(4);
    assert_eq!(refs_at(&region, 4, "test"), refs_at(&region, 1, "test"));
    assert_eq!(refs_at(&region, 4, "other"), refs_at(&region, 1, "other"));
    serves_all(&region, 4, "on-4", &acked);

    // A fifth joins; node 2 leaves: the region is nodes 1, 4 and 5.
    region.join(5);
    region.start_node_at(5);
    admin_at(&region, 4, &["node", "remove", "2"]);
    region.stop_at(2, libc::SIGTERM);
    acked.push(commit(&region, &w, 3));
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(5, "test"), "master"],
    );
    serves_all(&region, 5, "on-5", &acked);
    serves_all(&region, 1, "on-1", &acked);
    let status: serde_json::Value =
        serde_json::from_str(&admin_at(&region, 1, &["--json", "nodestatus"])).expect("json");
    for shard in status["Shards"].as_array().expect("shards") {
        let mut members: Vec<&String> = shard["Raft"]["Members"]
            .as_object()
            .expect("members")
            .keys()
            .collect();
        members.sort();
        assert_eq!(members, ["1", "4", "5"], "{shard}");
    }
}

//! Online compaction on a real node (#24 items 1 and 2): a deleted repository's space
//! comes back while the node serves, what stays is whole (cloned and checked by git,
//! before and after a SIGKILL), `nodestatus` reports it, and a repository created
//! again under the deleted one's name starts empty.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::noise;
use common::region::Region;

/// Bytes of the log segments of node 1 (every shard).
fn segment_bytes(region: &Region) -> u64 {
    let git = region.qs().join("node1/git");
    let mut total = 0;
    for shard in std::fs::read_dir(&git).expect("git dir").flatten() {
        if !shard.file_name().to_string_lossy().starts_with("shard-") {
            continue;
        }
        for f in std::fs::read_dir(shard.path())
            .expect("shard dir")
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("seg-") && name.ends_with(".log") {
                total += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

/// A working tree of `files` files of `bytes` random bytes each, in a few commits.
fn fill(region: &Region, dir: &Path, seed: u64, files: u64, bytes: usize) {
    region.git_ok(dir, &["init", "-q", "-b", "main"]);
    for f in 0..files {
        std::fs::write(dir.join(format!("f{f}.bin")), noise(seed + f, bytes)).expect("write");
        if f % 4 == 3 || f + 1 == files {
            region.git_ok(dir, &["add", "."]);
            region.git_ok(dir, &["commit", "-q", "-m", &format!("files to {f}")]);
        }
    }
}

fn clone_and_check(region: &Region, tmp: &Path, name: &str, want_head: &str) {
    let into = tmp.join(format!("clone-{}", rand_suffix()));
    region.git_ok(
        tmp,
        &[
            "clone",
            "-q",
            &region.repo_url("keep"),
            &into.to_string_lossy(),
        ],
    );
    region.git_ok(&into, &["fsck", "--full", "--strict"]);
    let head = region.git_ok(&into, &["rev-parse", "HEAD"]);
    assert_eq!(head.trim(), want_head, "{name}: the clone's head");
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[test]
fn a_deleted_repository_gives_its_space_back_and_what_stays_is_whole() {
    let mut region = Region::start_edited(1, |_, c| {
        c.replace(
            "storage:\n",
            "storage:\n  segment_mib: 1\n  compaction:\n    interval_seconds: 1\n    live_share_max: 0.9\n    mib_per_second: 64\n",
        )
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    for r in ["keep", "gone"] {
        region.repospanner_ok(&["admin", "repo", "create", r]);
    }
    let keep = t.join("keep");
    std::fs::create_dir(&keep).expect("mkdir");
    fill(&region, &keep, 1, 8, 200_000);
    region.git_ok(&keep, &["push", "-q", &region.repo_url("keep"), "main"]);
    let keep_head = region
        .git_ok(&keep, &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    let gone = t.join("gone");
    std::fs::create_dir(&gone).expect("mkdir");
    fill(&region, &gone, 100, 30, 200_000);
    region.git_ok(&gone, &["push", "-q", &region.repo_url("gone"), "main"]);
    let gone_bytes = 30 * 200_000u64;

    let before = segment_bytes(&region);
    assert!(before > gone_bytes, "{before} bytes on disk");
    region.repospanner_ok(&["admin", "repo", "delete", "gone"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut now = segment_bytes(&region);
    while now + gone_bytes * 7 / 10 > before {
        assert!(
            Instant::now() < deadline,
            "the space did not come back: {before} bytes before the deletion, {now} now\n{}",
            region.log()
        );
        std::thread::sleep(Duration::from_millis(300));
        now = segment_bytes(&region);
    }
    eprintln!("{before} bytes before the deletion, {now} after compaction");

    let status: serde_json::Value =
        serde_json::from_str(&region.repospanner_ok(&["admin", "--json", "nodestatus"]))
            .expect("nodestatus json");
    let freed: u64 = status["Shards"]
        .as_array()
        .expect("shards")
        .iter()
        .filter_map(|s| s["Compaction"]["FreedBytes"].as_u64())
        .sum();
    assert!(freed >= gone_bytes / 2, "nodestatus: {status}");
    let text = region.repospanner_ok(&["admin", "nodestatus"]);
    assert!(text.contains("compaction freed"), "{text}");

    clone_and_check(&region, t, "after compaction", &keep_head);

    // A new repository of the same name shares nothing with the deleted one.
    region.repospanner_ok(&["admin", "repo", "create", "gone"]);
    let refs = region.git_ok(t, &["ls-remote", &region.repo_url("gone")]);
    assert!(refs.trim().is_empty(), "{refs}");
    let fresh = t.join("fresh");
    std::fs::create_dir(&fresh).expect("mkdir");
    fill(&region, &fresh, 500, 1, 1000);
    region.git_ok(&fresh, &["push", "-q", &region.repo_url("gone"), "main"]);
    let again = t.join("again");
    region.git_ok(
        t,
        &[
            "clone",
            "-q",
            &region.repo_url("gone"),
            &again.to_string_lossy(),
        ],
    );
    let count = region.git_ok(&again, &["count-objects", "-v"]);
    let objects = region.git_ok(&again, &["rev-list", "--objects", "--all"]);
    assert_eq!(objects.lines().count(), 3, "{objects}\n{count}");
    // The old repository's objects are not served from the new one.
    let old_head = region
        .git_ok(&gone, &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    let out = region.git(Some("admin"), &again, &["fetch", "-q", "origin", &old_head]);
    assert!(
        !out.status.success(),
        "an object of the deleted repository was served"
    );

    // Killed and started again: the same content, from the checkpoint and the log.
    region.stop(libc::SIGKILL);
    region.start_node();
    clone_and_check(&region, t, "after SIGKILL", &keep_head);
}

//! A node's own memory does not grow with the size of a push or a clone: a push body
//! waits in a spool file and reaches the store as slices of it; a clone is written a
//! batch of entries at a time. Measured as the node's anonymous resident memory
//! (RssAnon, /proc) while real git pushes and clones a 160 MiB repository; before
//! these bounds, each took more than the pack's size.
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

mod common;

use common::region::Region;

/// [`common::rss_growth_kib`] in MiB.
fn growth_mib(pid: u32, f: impl FnOnce()) -> u64 {
    common::rss_growth_kib(pid, f) / 1024
}

#[test]
fn pushing_and_cloning_160_mib_costs_the_node_a_bounded_amount_of_memory() {
    let mut region = Region::start();
    let t = &region.dir.path().to_owned();
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    // 40 incompressible files of 4 MiB, stored without compression (fast to make).
    for i in 0..40 {
        let data = common::noise(0x9e37_79b9_7f4a_7c15 + i, 4 << 20);
        std::fs::write(w.join(format!("f{i}")), data).expect("write");
    }
    region.git_ok(&w, &["-c", "core.compression=0", "add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "160 MiB"]);
    let pid = region.pid().expect("node runs");
    let url = region.repo_url("test");
    let push = growth_mib(pid, || {
        region.git_ok(
            &w,
            &["-c", "pack.compression=0", "push", "-q", &url, "master"],
        );
    });
    // A fresh process, so the clone is not measured against memory the push left for
    // reuse.
    region.stop(libc::SIGTERM);
    region.start_node();
    let pid = region.pid().expect("node runs");
    let clone = growth_mib(pid, || {
        region.git_ok(t, &["clone", "-q", "--bare", &url, "c"]);
    });
    eprintln!("node memory growth: push {push} MiB, clone {clone} MiB (pack ~160 MiB)");
    // The store's write buffers (frames of under 8 MiB, from the shard's I/O memory) and its delta
    // cache (64 MiB at most) are the bounded parts; the pack is not held.
    assert!(push < 100, "a 160 MiB push grew the node by {push} MiB");
    assert!(clone < 100, "a 160 MiB clone grew the node by {clone} MiB");
    region.git_ok(&t.join("c"), &["fsck", "--full", "--strict"]);
}

/// A push's trees are inspected as they come out of the pack and not held: a history
/// of a wide directory whose trees inflate to over 200 MiB (the pack carries them as
/// deltas of a few MiB) raises the node's memory by a bounded amount, not by its trees.
#[test]
fn a_push_whose_trees_inflate_far_past_its_pack_costs_a_bounded_amount_of_memory() {
    const FILES: usize = 10_000;
    const COMMITS: usize = 640;
    let region = Region::start();
    let t = &region.dir.path().to_owned();
    let w = t.join("w");
    region.git_ok(t, &["init", "-q", "--bare", w.to_str().expect("path")]);
    // One directory of FILES entries (one blob for all), then one file changed per
    // commit: each commit's directory tree is another 340 KB.
    let mut script = String::from("blob\nmark :1\ndata 5\nsame\n\n");
    script.push_str(
        "commit refs/heads/master\nmark :2\ncommitter T <t@e> 1600000000 +0000\ndata 5\nwide\n",
    );
    for f in 0..FILES {
        script.push_str(&format!("M 100644 :1 d/f{f:05}\n"));
    }
    script.push('\n');
    for i in 1..COMMITS {
        script.push_str(&format!(
            "commit refs/heads/master\ncommitter T <t@e> {} +0000\ndata 3\nc{}\nM 100644 inline d/f{:05}\ndata 8\n{:08}\n\n",
            1_600_000_000 + i,
            i % 10,
            i * 7 % FILES,
            i
        ));
    }
    common::git_stdin(&w, &["fast-import", "--quiet"], &script);
    region.git_ok(&w, &["repack", "-adq"]);
    let sizes = region.git_ok(
        &w,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objecttype) %(objectsize)",
        ],
    );
    let trees_mib: u64 = sizes
        .lines()
        .filter_map(|l| l.strip_prefix("tree "))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum::<u64>()
        >> 20;
    assert!(trees_mib > 200, "the trees inflate to {trees_mib} MiB only");
    let pid = region.pid().expect("node runs");
    let url = region.repo_url("test");
    let push = growth_mib(pid, || {
        region.git_ok(&w, &["push", "-q", &url, "master"]);
    });
    eprintln!("node memory growth: push {push} MiB (trees inflate to {trees_mib} MiB)");
    // The pack reader's base cache (32 MiB), the trees kept for the node's cache
    // (16 MiB) and the store's buffers are the bounded parts.
    assert!(push < 100, "the push grew the node by {push} MiB");
    let c = t.join("c");
    region.git_ok(
        t,
        &["clone", "-q", "--bare", &url, c.to_str().expect("path")],
    );
    assert_eq!(
        region.git_ok(&c, &["rev-parse", "master"]),
        region.git_ok(&w, &["rev-parse", "master"])
    );
    region.git_ok(&c, &["fsck", "--full", "--strict"]);
}

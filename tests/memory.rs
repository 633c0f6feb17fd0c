//! A node's own memory does not grow with the size of a push or a clone: a push body
//! waits in a spool file and reaches the store as slices of it; a clone is written a
//! batch of entries at a time. Measured as the node's anonymous resident memory
//! (RssAnon, /proc) while real git pushes and clones a 160 MiB repository; before
//! these bounds, each took more than the pack's size.

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

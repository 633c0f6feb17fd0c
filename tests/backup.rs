//! Backups as `deploy/README.md` describes them (#25 item 5), restored and compared:
//! a repository backed up as a mirror through the normal read path and restored into
//! a fresh region with `admin repo import`; a whole node backed up as a cold copy of its
//! directories and started again from it.

mod common;

use std::path::Path;
use std::process::Command;

use common::noise;
use common::region::Region;

/// Every ref and every object reachable from them, as git lists them.
fn contents(region: &Region, repo: &Path) -> (String, String) {
    let refs = region.git_ok(repo, &["for-each-ref", "--format=%(objectname) %(refname)"]);
    let mut objects: Vec<String> = region
        .git_ok(repo, &["rev-list", "--objects", "--all"])
        .lines()
        .map(|l| l.split(' ').next().unwrap_or("").to_owned())
        .collect();
    objects.sort_unstable();
    (refs, objects.join("\n"))
}

/// A history pushed (every branch and tag) into the region's `test`; its work tree.
fn pushed(region: &Region) -> std::path::PathBuf {
    let w = region.dir.path().join("w");
    std::fs::create_dir(&w).expect("mkdir");
    history(region, &w);
    region.git_ok(&w, &["push", "-q", "--all", &region.repo_url("test")]);
    region.git_ok(&w, &["push", "-q", "--tags", &region.repo_url("test")]);
    w
}

/// `git clone --mirror` of `repo` into `into`, checked by fsck; its contents.
fn mirror(region: &Region, repo: &str, into: &Path) -> (String, String) {
    let t = region.dir.path();
    region.git_ok(
        t,
        &[
            "clone",
            "-q",
            "--mirror",
            &region.repo_url(repo),
            &into.to_string_lossy(),
        ],
    );
    region.git_ok(into, &["fsck", "--full", "--strict"]);
    contents(region, into)
}

fn history(region: &Region, w: &Path) {
    region.git_ok(w, &["init", "-q", "-b", "main"]);
    for i in 0..6u64 {
        std::fs::write(w.join(format!("f{}", i % 3)), noise(i, 20_000)).expect("write");
        region.git_ok(w, &["add", "-A"]);
        region.git_ok(w, &["commit", "-qm", &format!("c{i}")]);
        if i == 2 {
            region.git_ok(w, &["tag", "-a", "-m", "release", "v1"]);
            region.git_ok(w, &["branch", "maint"]);
        }
    }
}

#[test]
fn a_repository_mirror_restores_into_a_fresh_region() {
    let region = Region::start_n(1, "");
    pushed(&region);
    // The backup: a mirror through the normal read path (any node, any reader).
    let backup = region.dir.path().join("test.git");
    let before = mirror(&region, "test", &backup);

    // The restore: a fresh region, the mirror imported, mirrored back and compared.
    let fresh = Region::start_n(1, "");
    fresh.repospanner_ok(&[
        "admin",
        "repo",
        "import",
        "restored",
        &backup.to_string_lossy(),
    ]);
    let back = region.dir.path().join("back.git");
    assert_eq!(mirror(&fresh, "restored", &back), before);
}

#[test]
fn a_cold_copy_of_a_node_restores_it_whole() {
    let mut region = Region::start_n(1, "");
    let t = region.dir.path().to_owned();
    let w = pushed(&region);
    let before = mirror(&region, "test", &t.join("before.git"));

    // The backup: the node stopped (SIGTERM: a checkpoint is written), its state and
    // git directories copied as they are.
    region.stop(libc::SIGTERM);
    let node = region.qs().join("node1");
    let backup = t.join("backup");
    let cp = |from: &Path, to: &Path| {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .expect("cp");
        assert!(ok.success());
    };
    std::fs::create_dir(&backup).expect("mkdir");
    cp(&node.join("state"), &backup.join("state"));
    cp(&node.join("git"), &backup.join("git"));

    // The disaster: both gone. The restore: copied back, started.
    std::fs::remove_dir_all(node.join("state")).expect("wipe");
    std::fs::remove_dir_all(node.join("git")).expect("wipe");
    cp(&backup.join("state"), &node.join("state"));
    cp(&backup.join("git"), &node.join("git"));
    region.start_node();
    assert_eq!(mirror(&region, "test", &t.join("after.git")), before);
    // And it takes pushes again.
    std::fs::write(w.join("after"), b"after\n").expect("write");
    region.git_ok(&w, &["add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "after"]);
    region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "main"]);
}

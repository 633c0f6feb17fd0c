//! Soak: a generated history shaped like a mature project's (the benchmark's corpus,
//! `benches/support/corpus.rs`) pushed three times in a row, into three repositories,
//! each through another node of a 3-node region, and each cloned from every node.
//! With two or more shards per node, a push lands on a shard that does not own its
//! repository as often as not. Every clone must hold exactly the corpus's refs, no
//! node may die or restart, and no node's log may show a panic. A node's memory must
//! also come back after each push: what it holds five seconds later is at most half of
//! what the push raised it by (freed memory goes back to the kernel; nothing is kept
//! per pushed object but the index).
//!
//! CI runs a small corpus (about 20k objects). The full soak, on the benchmark's
//! default corpus of about half a million objects (generated once, then reused):
//!
//! ```text
//! SOAK_COMMITS=50000 SOAK_FILES=5000 SOAK_TAGS=1000 cargo test --release --test soak -- --nocapture
//! ```
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

mod common;

#[allow(dead_code)] // the benchmark uses the rest of it
#[path = "../benches/support/corpus.rs"]
mod corpus;

use std::path::Path;

use common::region::Region;
use common::{rss_anon_kib, rss_growth_kib};

fn var(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every ref of a repository with its target, sorted.
fn refs(region: &Region, repo: &Path) -> String {
    region.git_ok(repo, &["for-each-ref", "--format=%(objectname) %(refname)"])
}

#[test]
fn three_corpus_pushes_through_every_node_clone_whole_from_every_node() {
    let shape = corpus::Shape {
        commits: var("SOAK_COMMITS", 2_000),
        files: var("SOAK_FILES", 400),
        tags: var("SOAK_TAGS", 40),
    };
    // The benchmark's cache (target/bench-corpus): a shape is generated once for both.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../bench-corpus");
    let source = corpus::corpus(&cache, shape);
    let objects = corpus::objects(&source);
    let want = refs_of_bare(&source);
    eprintln!("soak: {objects} objects, {} refs", want.lines().count());

    let region = Region::start_n(3, "");
    let t = region.dir.path();
    let pids: Vec<Option<u32>> = (1..=3).map(|k| region.pid_of(k)).collect();
    for (i, name) in ["soak1", "soak2", "soak3"].into_iter().enumerate() {
        let via = i + 1;
        let out = region.repospanner_at(via, &["admin", "repo", "create", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = region.pid_of(via).expect("node runs");
        let before = rss_anon_kib(pid);
        let started = std::time::Instant::now();
        let raised = rss_growth_kib(pid, || {
            region.git_ok(
                &source,
                &["push", "-q", "--mirror", &region.repo_url_of(via, name)],
            );
        });
        let pushed = started.elapsed();
        std::thread::sleep(std::time::Duration::from_secs(6));
        let kept = rss_anon_kib(pid).saturating_sub(before);
        eprintln!(
            "soak: {name} pushed through node {via} in {pushed:?}; its RSS rose {} MiB, \
             {} MiB of it still held 6 s later",
            raised / 1024,
            kept / 1024
        );
        assert!(
            kept <= raised / 2 + 8 * 1024,
            "node {via} kept {kept} KiB of the {raised} KiB a push of {objects} objects raised"
        );
        for k in 1..=3 {
            let dir = t.join(format!("{name}-from-{k}"));
            region.git_ok(
                t,
                &[
                    "clone",
                    "-q",
                    "--mirror",
                    &region.repo_url_of(k, name),
                    dir.to_str().expect("path"),
                ],
            );
            assert_eq!(refs(&region, &dir), want, "{name} cloned from node {k}");
            std::fs::remove_dir_all(&dir).expect("remove the clone");
        }
    }
    for k in 1..=3 {
        assert!(region.alive(k), "node {k} died");
        assert_eq!(region.pid_of(k), pids[k - 1], "node {k} restarted");
        let log =
            std::fs::read_to_string(region.qs().join(format!("node{k}/node.log"))).expect("log");
        assert!(!log.contains("panicked"), "node {k} panicked:\n{log}");
    }
}

/// `refs` of a bare repository outside the region.
fn refs_of_bare(repo: &Path) -> String {
    let out = std::process::Command::new("git")
        .args(["for-each-ref", "--format=%(objectname) %(refname)"])
        .env("GIT_DIR", repo)
        .output()
        .expect("git");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

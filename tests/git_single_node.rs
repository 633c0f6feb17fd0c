//! One real node, the real git client, real TLS: push, clone, fetch (v0 and v2),
//! shallow clones, force-push policy, deletes, concurrent pushes, many refs.

mod common;

use std::path::Path;

use common::region::Region;

fn refs(region: &Region, repo: &Path) -> String {
    region.git_ok(
        repo,
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/heads",
            "refs/tags",
        ],
    )
}

/// Runs a local `git` command fed `input` on stdin; it must succeed.
/// A new work repository `name` with one commit, pushed to `url`'s master.
fn pushed_work_repo(region: &Region, name: &str, url: &str) -> std::path::PathBuf {
    let t = region.dir.path();
    let w = t.join(name);
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    commit(region, &w, "f", b"base", "base");
    region.git_ok(&w, &["push", "-q", url, "master"]);
    w
}

fn commit(region: &Region, repo: &Path, file: &str, content: &[u8], msg: &str) {
    std::fs::write(repo.join(file), content).expect("write");
    region.git_ok(repo, &["add", "-A"]);
    region.git_ok(repo, &["commit", "-qm", msg]);
}

/// A history with branches, annotated tags, a merge, an empty-tree commit, a
/// submodule gitlink and a large blob.
fn generate(region: &Region, w: &Path, big_blob: usize) {
    region.git_ok(
        w.parent().expect("parent"),
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    region.git_ok(w, &["commit", "-q", "--allow-empty", "-m", "empty tree"]);
    for i in 0..12 {
        let lines: String = (0..200 + i * 13)
            .map(|l| format!("line {l} of file {i}\n"))
            .collect();
        commit(
            region,
            w,
            &format!("f{}.txt", i % 4),
            lines.as_bytes(),
            &format!("c{i}"),
        );
        if i == 5 {
            region.git_ok(w, &["tag", "-a", "v1", "-m", "release v1"]);
            region.git_ok(w, &["branch", "side"]);
        }
    }
    region.git_ok(w, &["checkout", "-q", "side"]);
    commit(region, w, "side.txt", b"on the side\n", "side work");
    region.git_ok(w, &["checkout", "-q", "master"]);
    region.git_ok(w, &["merge", "-q", "--no-edit", "side"]);
    // A submodule gitlink (a commit id from another repository).
    region.git_ok(
        w,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            "160000,1111111111111111111111111111111111111111,vendored",
        ],
    );
    region.git_ok(w, &["commit", "-qm", "add a submodule gitlink"]);
    let mut big = vec![0u8; big_blob];
    let mut x = 0x1234_5678u32;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    commit(region, w, "big.bin", &big, "a large blob");
    region.git_ok(w, &["tag", "-a", "v2", "-m", "release v2"]);
    region.git_ok(w, &["tag", "light"]);
}

#[test]
fn push_clone_fetch_round_trip() {
    let mut region = Region::start();
    let t = region.dir.path().to_owned();
    let t = t.as_path();
    // An empty repository clones.
    region.git_ok(t, &["clone", "-q", &region.repo_url("test"), "empty"]);

    let w = t.join("work");
    generate(&region, &w, 50 << 20);
    region.git_ok(
        &w,
        &[
            "push",
            "-q",
            &region.repo_url("test"),
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ],
    );
    let want = refs(&region, &w);

    for (name, proto) in [("clone-v2", "2"), ("clone-v0", "0")] {
        region.git_ok(
            t,
            &[
                "-c",
                &format!("protocol.version={proto}"),
                "clone",
                "-q",
                "--mirror",
                &region.repo_url("test"),
                name,
            ],
        );
        let c = t.join(name);
        assert_eq!(
            refs(&region, &c),
            want,
            "refs cloned over protocol v{proto}"
        );
        region.git_ok(&c, &["fsck", "--full", "--strict"]);
    }
    // HEAD points at master.
    let head = region.git_ok(
        t,
        &["ls-remote", "--symref", &region.repo_url("test"), "HEAD"],
    );
    assert!(head.contains("ref: refs/heads/master\tHEAD"), "{head}");

    // Incremental fetch over v0 and v2 after more pushes.
    for (i, proto) in ["0", "2"].iter().enumerate() {
        commit(
            &region,
            &w,
            "more.txt",
            format!("more {i}\n").as_bytes(),
            &format!("more {i}"),
        );
        region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "master"]);
        let c = t.join("clone-v2");
        region.git_ok(
            &c,
            &[
                "-c",
                &format!("protocol.version={proto}"),
                "fetch",
                "-q",
                "origin",
                "+refs/heads/*:refs/heads/*",
            ],
        );
        assert_eq!(
            region.git_ok(&c, &["rev-parse", "refs/heads/master"]),
            region.git_ok(&w, &["rev-parse", "HEAD"]),
            "fetch over v{proto} brought the new commit"
        );
        region.git_ok(&c, &["fsck", "--full", "--strict"]);
    }

    // A shallow clone.
    region.git_ok(
        t,
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            &region.repo_url("test"),
            "shallow",
        ],
    );
    let count = region.git_ok(&t.join("shallow"), &["rev-list", "--count", "HEAD"]);
    assert_eq!(count.trim(), "1");
    region.git_ok(&t.join("shallow"), &["fsck"]);

    // A restart serves everything (from the checkpoint written at shutdown).
    region.stop(libc::SIGTERM);
    assert!(region.log().contains("Shutdown complete"));
    region.start_node();
    region.git_ok(
        t,
        &[
            "clone",
            "-q",
            "--mirror",
            &region.repo_url("test"),
            "after-restart",
        ],
    );
    let after = refs(&region, &t.join("after-restart"));
    assert_eq!(after, refs(&region, &t.join("clone-v2")));
}

#[test]
fn force_push_policy_branch_delete_and_many_refs() {
    let region = Region::start();
    let t = region.dir.path();
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    commit(&region, &w, "a", b"1", "one");
    commit(&region, &w, "a", b"2", "two");
    let url = region.repo_url("test");
    region.git_ok(&w, &["push", "-q", &url, "master"]);

    // Rewrite history: accepted by default (git's and the Go original's default).
    region.git_ok(&w, &["reset", "-q", "--hard", "HEAD~1"]);
    commit(&region, &w, "a", b"3", "three");
    region.git_ok(&w, &["push", "-q", "--force", &url, "master"]);
    // Refused once the repository refuses it.
    region.repospanner_ok(&[
        "admin",
        "repo",
        "edit",
        "test",
        "--allow-non-fast-forward=false",
    ]);
    region.git_ok(&w, &["reset", "-q", "--hard", "HEAD~1"]);
    commit(&region, &w, "a", b"4", "four");
    let out = region.git(
        Some("admin"),
        &w,
        &["push", "-q", "--force", &url, "master"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("non-fast-forward"), "{err}");
    // A bare flag allows it again, as the Go original's boolean flags do.
    region.repospanner_ok(&["admin", "repo", "edit", "test", "--allow-non-fast-forward"]);
    region.git_ok(&w, &["push", "-q", "--force", &url, "master"]);

    // Branch delete.
    region.git_ok(&w, &["push", "-q", &url, "master:refs/heads/doomed"]);
    region.git_ok(&w, &["push", "-q", &url, ":refs/heads/doomed"]);
    let remote = region.git_ok(&w, &["ls-remote", &url]);
    assert!(!remote.contains("doomed"), "{remote}");

    // Thousands of refs in one push.
    let head = region.git_ok(&w, &["rev-parse", "HEAD"]);
    let mut input = String::new();
    for i in 0..3000 {
        input.push_str(&format!("create refs/heads/many/b{i} {}", head));
    }
    common::git_stdin(&w, &["update-ref", "--stdin"], &input);
    region.git_ok(
        &w,
        &["push", "-q", &url, "refs/heads/many/*:refs/heads/many/*"],
    );
    let remote = region.git_ok(&w, &["ls-remote", &url, "refs/heads/many/*"]);
    assert_eq!(remote.lines().count(), 3000);
    region.git_ok(t, &["clone", "-q", "--mirror", &url, "mirror"]);
    assert_eq!(refs(&region, &t.join("mirror")).lines().count(), 3001);
}

#[test]
fn concurrent_pushes_to_the_same_ref_exactly_one_wins() {
    let region = Region::start();
    let t = region.dir.path();
    let url = region.repo_url("test");
    pushed_work_repo(&region, "base", &url);
    let mut dirs = Vec::new();
    for i in 0..4 {
        let d = t.join(format!("c{i}"));
        region.git_ok(t, &["clone", "-q", &url, d.to_str().expect("path")]);
        commit(
            &region,
            &d,
            "f",
            format!("writer {i}").as_bytes(),
            &format!("writer {i}"),
        );
        dirs.push(d);
    }
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .map(|d| {
                let region = &region;
                let url = url.clone();
                s.spawn(move || {
                    region
                        .git(Some("admin"), d, &["push", "-q", &url, "master"])
                        .status
                        .success()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        results.iter().filter(|ok| **ok).count(),
        1,
        "exactly one push wins: {results:?}"
    );
    let remote = region.git_ok(t, &["ls-remote", &url, "refs/heads/master"]);
    let winner = dirs
        .iter()
        .zip(&results)
        .find(|(_, ok)| **ok)
        .map(|(d, _)| d)
        .expect("winner");
    assert!(remote.starts_with(region.git_ok(winner, &["rev-parse", "HEAD"]).trim()));
}

#[test]
fn repositories_spread_over_shards_are_all_served_and_listed() {
    let region = Region::start();
    let t = region.dir.path();
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    commit(&region, &w, "f", b"shared history", "one");
    let names: Vec<String> = (0..8).map(|i| format!("group/repo{i}")).collect();
    for n in &names {
        let out = region.repospanner(&["admin", "repo", "create", n]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each connection lands on whichever shard accepted it; every repository works
    // from every connection.
    for n in &names {
        region.git_ok(&w, &["push", "-q", &region.repo_url(n), "master"]);
        let dir = t.join(n.replace('/', "-"));
        region.git_ok(
            t,
            &[
                "clone",
                "-q",
                &region.repo_url(n),
                dir.to_str().expect("path"),
            ],
        );
        region.git_ok(&dir, &["fsck", "--full", "--strict"]);
    }
    let list = region.repospanner(&["admin", "repo", "list"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    for n in &names {
        assert!(
            list.contains(&format!("{n}: 1 refs")),
            "{n} missing from:\n{list}"
        );
    }
    let status = region.repospanner(&["admin", "nodestatus", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(v["Shards"].as_array().map(Vec::len), Some(shards), "{v}");
    assert!(
        v["Shards"]
            .as_array()
            .is_some_and(|a| a.iter().all(|s| !s.is_null())),
        "{v}"
    );
    assert_eq!(
        v["Repositories"].as_u64(),
        Some(names.len() as u64 + 1),
        "{v}"
    );
}

#[test]
fn fetch_into_a_clone_with_much_unrelated_history() {
    let region = Region::start();
    let t = region.dir.path();
    let url = region.repo_url("test");
    let w = pushed_work_repo(&region, "w", &url);
    let c = t.join("c");
    region.git_ok(t, &["clone", "-q", &url, c.to_str().expect("path")]);
    // The clone grows 1500 commits of history the server has never seen.
    let mut script = String::new();
    for i in 0..1500 {
        script.push_str(&format!(
            "commit refs/heads/unrelated\nmark :{}\ncommitter T <t@e> {} +0000\ndata 3\nu{:02}\n",
            i + 1,
            1_600_000_000 + i,
            i % 100
        ));
        if i > 0 {
            script.push_str(&format!("from :{i}\n"));
        }
        script.push('\n');
    }
    common::git_stdin(&c, &["fast-import", "--quiet"], &script);
    // Meanwhile the server moves on; the clone fetches over v0 and v2.
    for (i, proto) in ["0", "2"].iter().enumerate() {
        commit(
            &region,
            &w,
            "f",
            format!("next {i}").as_bytes(),
            &format!("next {i}"),
        );
        region.git_ok(&w, &["push", "-q", &url, "master"]);
        region.git_ok(
            &c,
            &[
                "-c",
                &format!("protocol.version={proto}"),
                "fetch",
                "-q",
                "origin",
            ],
        );
        assert_eq!(
            region.git_ok(&c, &["rev-parse", "origin/master"]),
            region.git_ok(&w, &["rev-parse", "HEAD"])
        );
    }
    region.git_ok(&c, &["fsck", "--full"]);
}

#[test]
fn a_shallow_clone_pushes_on_top_of_the_history_the_repository_has() {
    let region = Region::start();
    let t = region.dir.path();
    let url = region.repo_url("test");
    let w = pushed_work_repo(&region, "w", &url);
    for i in 0..3 {
        commit(
            &region,
            &w,
            "f",
            format!("v{i}\n").as_bytes(),
            &format!("c{i}"),
        );
    }
    region.git_ok(&w, &["push", "-q", &url, "master"]);
    let s = t.join("shallow");
    region.git_ok(
        t,
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            &url,
            s.to_str().expect("path"),
        ],
    );
    assert_eq!(
        region.git_ok(&s, &["rev-list", "--count", "HEAD"]).trim(),
        "1",
        "a shallow clone"
    );
    commit(&region, &s, "g", b"from a shallow clone\n", "shallow work");
    region.git_ok(&s, &["push", "-q", &url, "master"]);
    let tip = region.git_ok(&s, &["rev-parse", "HEAD"]);
    let full = t.join("full");
    region.git_ok(t, &["clone", "-q", &url, full.to_str().expect("path")]);
    assert_eq!(region.git_ok(&full, &["rev-parse", "HEAD"]), tip);
    region.git_ok(&full, &["fsck", "--strict"]);
}

/// Objects a clone lacks, as `rev-list --missing=print` lists them (`?<id>`).
fn missing(region: &Region, repo: &Path) -> usize {
    region
        .git_ok(repo, &["rev-list", "--objects", "--all", "--missing=print"])
        .lines()
        .filter(|l| l.starts_with('?'))
        .count()
}

#[test]
fn partial_clones_leave_out_what_their_filter_names_and_fetch_it_when_needed() {
    let region = Region::start();
    let t = region.dir.path();
    let url = region.repo_url("test");
    let w = pushed_work_repo(&region, "w", &url);
    std::fs::create_dir_all(w.join("dir/sub")).expect("mkdir");
    for i in 0..4 {
        commit(
            &region,
            &w,
            "small.txt",
            format!("small {i}\n").as_bytes(),
            &format!("s{i}"),
        );
        std::fs::write(w.join("dir/sub/deep.txt"), format!("deep {i}\n")).expect("write");
        let big = common::noise(0x51de_0000 + i, 8 << 10);
        commit(&region, &w, "big.bin", &big, &format!("b{i}"));
    }
    region.git_ok(&w, &["push", "-q", &url, "master"]);
    let head = region.git_ok(&w, &["rev-parse", "HEAD"]);
    for (filter, lacks) in [
        ("blob:none", "old blobs"),
        ("blob:limit=1k", "old large blobs"),
        ("tree:0", "old trees"),
    ] {
        let c = t.join(format!("partial-{}", filter.replace([':', '='], "-")));
        region.git_ok(
            t,
            &[
                "clone",
                "-q",
                &format!("--filter={filter}"),
                &url,
                c.to_str().expect("path"),
            ],
        );
        // The checkout fetched what it needed; history still lacks what the filter named.
        assert_eq!(region.git_ok(&c, &["rev-parse", "HEAD"]), head, "{filter}");
        assert_eq!(
            std::fs::read(c.join("big.bin")).expect("checked out"),
            std::fs::read(w.join("big.bin")).expect("work"),
            "{filter}"
        );
        let before = missing(&region, &c);
        assert!(before > 0, "{filter}: the clone lacks {lacks}");
        // Reading old history fetches what it lacks, lazily, from the node.
        let log = region.git_ok(&c, &["log", "-p", "--format=%s"]);
        assert!(log.contains("+small 0"), "{filter}");
        assert!(
            missing(&region, &c) < before,
            "{filter}: lazy fetches happened"
        );
        region.git_ok(&c, &["fsck"]);
    }
    // An unknown filter is refused clearly.
    let out = region.git(
        Some("admin"),
        t,
        &["clone", "-q", "--filter=sparse:oid=HEAD:x", &url, "sparse"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsupported filter"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The objects a (partial) clone holds, as `rev-list --missing=print` lists them.
fn present(region: &Region, repo: &Path) -> std::collections::BTreeSet<String> {
    region
        .git_ok(repo, &["rev-list", "--objects", "--all", "--missing=print"])
        .lines()
        .filter(|l| !l.starts_with('?'))
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect()
}

/// Filtered clones and the fetches into them hold at least what git's own
/// upload-pack sends for the same filter (git is the oracle; ours may add a delta
/// base the filter named), and never an object the filter leaves out but for such
/// bases: over nested directories, a moved directory and a file that becomes one.
#[test]
fn partial_clones_and_fetches_hold_what_gits_own_hold() {
    let region = Region::start();
    let t = region.dir.path();
    let url = region.repo_url("test");
    let w = pushed_work_repo(&region, "w", &url);
    region.git_ok(&w, &["config", "uploadpack.allowFilter", "true"]);
    let write = |path: &str, content: String| {
        let p = w.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    };
    let commit_all = |msg: &str| {
        region.git_ok(&w, &["add", "-A"]);
        region.git_ok(&w, &["commit", "-qm", msg]);
    };
    for i in 0..6 {
        for d in 0..3 {
            write(
                &format!("a/b{d}/c/f{i}.txt"),
                format!("{i} {d}\n").repeat(40 + i),
            );
        }
        write("top.txt", format!("top {i}\n"));
        commit_all(&format!("c{i}"));
    }
    region.git_ok(&w, &["push", "-q", &url, "master"]);
    let filters = ["blob:none", "blob:limit=200", "tree:0", "tree:1", "tree:3"];
    let w_url = format!("file://{}", w.display());
    for f in filters {
        let name = f.replace([':', '='], "-");
        for (from, dir) in [
            (&url, format!("ours-{name}")),
            (&w_url, format!("git-{name}")),
        ] {
            region.git_ok(
                t,
                &[
                    "clone",
                    "-q",
                    "--bare",
                    &format!("--filter={f}"),
                    from,
                    &dir,
                ],
            );
        }
    }
    // New history: a deep edit, a moved directory, a file that becomes a directory.
    write("a/b0/c/f0.txt", "changed\n".repeat(50));
    region.git_ok(&w, &["mv", "a/b1", "moved"]);
    std::fs::remove_file(w.join("top.txt")).expect("rm");
    write("top.txt/inner.txt", "now a directory\n".repeat(30));
    commit_all("changes");
    region.git_ok(&w, &["push", "-q", &url, "master"]);
    for f in filters {
        let name = f.replace([':', '='], "-");
        for (from, dir) in [
            (&url, format!("ours-{name}")),
            (&w_url, format!("git-{name}")),
        ] {
            let d = t.join(&dir);
            region.git_ok(
                &d,
                &[
                    "fetch",
                    "-q",
                    &format!("--filter={f}"),
                    from,
                    "+master:master",
                ],
            );
        }
        let ours = present(&region, &t.join(format!("ours-{name}")));
        let git = present(&region, &t.join(format!("git-{name}")));
        let lacking: Vec<_> = git.difference(&ours).collect();
        assert!(lacking.is_empty(), "{f}: our clone lacks {lacking:?}");
        let all = present(&region, &w);
        assert!(ours.len() < all.len(), "{f}: the filter left something out");
        region.git_ok(
            &t.join(format!("ours-{name}")),
            &["fsck", "--connectivity-only"],
        );
    }
}

/// Clones `url` into `t/name` with progress on; returns whether the node sent every
/// stored object without walking the history (its progress line says so).
fn clone_sent_everything(region: &Region, t: &Path, url: &str, name: &str) -> bool {
    let out = region.git(
        Some("admin"),
        t,
        &["clone", "-q", "--progress", "--bare", url, name],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "clone {name}: {err}");
    region.git_ok(&t.join(name), &["fsck", "--no-dangling"]);
    err.contains("every object the repository stores")
}

fn has_object(region: &Region, repo: &Path, oid: &str) -> bool {
    region
        .git(Some("admin"), repo, &["cat-file", "-e", oid])
        .status
        .success()
}

/// A full clone of a repository whose stored objects are all reachable gets them all
/// without a walk of the history; once a ref is deleted or rewound it walks again, so
/// what no ref reaches any more (a secret force-pushed away) is not sent; likewise
/// after a push one of whose changes was refused (its objects are stored).
#[test]
fn full_clones_send_every_object_only_while_every_object_is_reachable() {
    let region = Region::start();
    let t = region.dir.path();
    let url = region.repo_url("test");
    let w = pushed_work_repo(&region, "w", &url);
    region.git_ok(&w, &["checkout", "-q", "-b", "side"]);
    commit(&region, &w, "s", b"a secret\n", "secret");
    region.git_ok(&w, &["push", "-q", &url, "side"]);
    let secret = region
        .git_ok(&w, &["rev-parse", "side:s"])
        .trim()
        .to_owned();
    region.git_ok(&w, &["checkout", "-q", "master"]);
    commit(&region, &w, "a", b"two\n", "two");
    region.git_ok(&w, &["push", "-q", &url, "master", "--tags"]);

    assert!(clone_sent_everything(&region, t, &url, "c1"));
    assert!(has_object(&region, &t.join("c1"), &secret));
    assert_eq!(refs(&region, &t.join("c1")), refs(&region, &w));
    // A clone that wants only some refs gets only what they reach.
    let out = region.git_ok(
        t,
        &[
            "clone",
            "-q",
            "--bare",
            "--single-branch",
            "-b",
            "master",
            &url,
            "c2",
        ],
    );
    assert!(out.is_empty());
    assert!(!has_object(&region, &t.join("c2"), &secret));

    region.git_ok(&w, &["push", "-q", &url, ":refs/heads/side"]);
    assert!(!clone_sent_everything(&region, t, &url, "c3"));
    assert!(!has_object(&region, &t.join("c3"), &secret));
    // The walk found less than the repository stores: it keeps walking.
    assert!(!clone_sent_everything(&region, t, &url, "c3b"));

    // A branch deleted once merged leaves nothing unreachable: the first full clone
    // walks and finds every stored object, and the next ones skip the walk again.
    let merged = region.repo_url("merged");
    let out = region.repospanner(&["admin", "repo", "create", "merged"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    region.git_ok(&w, &["checkout", "-q", "-b", "topic", "master"]);
    commit(&region, &w, "t", b"topic work\n", "topic");
    region.git_ok(&w, &["push", "-q", &merged, "master", "topic"]);
    region.git_ok(&w, &["checkout", "-q", "master"]);
    region.git_ok(&w, &["merge", "-q", "--no-ff", "--no-edit", "topic"]);
    region.git_ok(&w, &["push", "-q", &merged, "master", ":refs/heads/topic"]);
    assert!(!clone_sent_everything(&region, t, &merged, "m1"));
    // The mark is proposed once the first clone is sent: a moment later.
    let shortcut = (0..20).any(|i| {
        let name = format!("m2-{i}");
        let sent = clone_sent_everything(&region, t, &merged, &name);
        assert_eq!(refs(&region, &t.join(&name)), refs(&region, &t.join("m1")));
        std::thread::sleep(std::time::Duration::from_millis(100));
        sent
    });
    assert!(
        shortcut,
        "full clones walk on after a merged branch is deleted"
    );
    region.git_ok(&w, &["branch", "-q", "-D", "topic"]);

    // One push, not atomic: a non-fast-forward rewrite of master (refused) and a new
    // branch (accepted). The whole pack is stored, as git keeps it, so what only the
    // refused rewrite reaches lies unreachable: full clones walk, and send only what
    // the refs reach.
    let strict = region.repo_url("strict");
    region.repospanner_ok(&["admin", "repo", "create", "strict"]);
    region.repospanner_ok(&[
        "admin",
        "repo",
        "edit",
        "strict",
        "--allow-non-fast-forward=false",
    ]);
    region.git_ok(&w, &["push", "-q", &strict, "master"]);
    region.git_ok(&w, &["checkout", "-q", "--orphan", "rewrite"]);
    commit(&region, &w, "r", b"refused content\n", "rewrite");
    let refused = region
        .git_ok(&w, &["rev-parse", "rewrite:r"])
        .trim()
        .to_owned();
    region.git_ok(&w, &["checkout", "-q", "-b", "fresh", "master"]);
    commit(&region, &w, "f", b"accepted content\n", "fresh");
    let out = region.git(
        Some("admin"),
        &w,
        &["push", &strict, "+rewrite:master", "fresh"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("non-fast-forward"),
        "{err}"
    );
    assert!(!clone_sent_everything(&region, t, &strict, "c4"));
    assert!(has_object(
        &region,
        &t.join("c4"),
        region.git_ok(&w, &["rev-parse", "fresh:f"]).trim()
    ));
    assert!(!has_object(&region, &t.join("c4"), &refused));
}

/// Commits `file` = `content` in `repo` with author and committer date `epoch`.
fn commit_at(repo: &Path, file: &str, content: &str, epoch: i64) {
    std::fs::write(repo.join(file), content).expect("write");
    let date = format!("{epoch} +0000");
    for args in [&["add", "-A"][..], &["commit", "-qm", content][..]] {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(repo)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every commit a (mirror) clone holds and its shallow boundary, sorted.
fn shallow_state(region: &Region, dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut commits: Vec<String> = region
        .git_ok(dir, &["rev-list", "--all"])
        .lines()
        .map(str::to_owned)
        .collect();
    commits.sort();
    let mut shallow: Vec<String> = std::fs::read_to_string(dir.join("shallow"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    shallow.sort();
    (commits, shallow)
}

/// A name, the clone's arguments, then the fetches that follow it.
type ShallowCase<'a> = (&'a str, Vec<&'a str>, Vec<Vec<&'a str>>);

/// `--shallow-since`, `--shallow-exclude`, `fetch --deepen` and `--unshallow`, over
/// protocol v2 and v0, each answered as git's own upload-pack answers the same
/// requests on a copy of the repository (`file://`): the same commits, the same
/// shallow boundary.
#[test]
fn shallow_clones_by_time_by_ref_and_deepened_match_git() {
    let region = Region::start();
    let t = region.dir.path();
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    let day = 86_400;
    let start = 1_700_000_000;
    for i in 0..6 {
        commit_at(&w, "a", &format!("main {i}\n"), start + i * day);
    }
    region.git_ok(&w, &["branch", "old"]);
    region.git_ok(&w, &["tag", "-a", "-m", "v", "v1"]);
    region.git_ok(&w, &["checkout", "-q", "-b", "topic", "HEAD~2"]);
    commit_at(&w, "b", "topic 0\n", start + 6 * day);
    region.git_ok(&w, &["checkout", "-q", "master"]);
    for i in 6..10 {
        commit_at(&w, "a", &format!("main {i}\n"), start + (i + 1) * day);
    }
    region.git_ok(&w, &["merge", "-q", "--no-edit", "topic"]);
    let url = region.repo_url("test");
    region.git_ok(
        &w,
        &[
            "push",
            "-q",
            "--follow-tags",
            &url,
            "master",
            "old",
            "topic",
        ],
    );
    let oracle = format!("file://{}", w.display());
    let since = format!("--shallow-since={}", start + 4 * day);

    for proto in ["2", "0"] {
        let cases: Vec<ShallowCase> = vec![
            ("since", vec![since.as_str()], vec![]),
            ("exclude", vec!["--shallow-exclude=old"], vec![]),
            (
                "exclude-tag",
                vec!["--shallow-exclude=v1", "--single-branch"],
                vec![],
            ),
            (
                "deepen",
                vec!["--depth=2"],
                vec![vec!["fetch", "-q", "--deepen=3", "origin"]],
            ),
            (
                "unshallow",
                vec!["--depth=1"],
                vec![
                    vec!["fetch", "-q", "--deepen=1", "origin"],
                    vec!["fetch", "-q", "--unshallow", "origin"],
                ],
            ),
        ];
        for (name, clone_args, then) in cases {
            let mut got = Vec::new();
            for (side, from) in [("ours", url.as_str()), ("git", oracle.as_str())] {
                let dir = format!("{name}-{proto}-{side}");
                let mut args = vec!["-c", "protocol.version=", "clone", "-q", "--mirror"];
                let pv = format!("protocol.version={proto}");
                args[1] = &pv;
                args.extend(clone_args.iter().copied());
                args.extend([from, dir.as_str()]);
                region.git_ok(t, &args);
                for step in &then {
                    let mut a = vec!["-c", pv.as_str()];
                    a.extend(step.iter().copied());
                    region.git_ok(&t.join(&dir), &a);
                }
                region.git_ok(&t.join(&dir), &["fsck", "--no-dangling"]);
                got.push(shallow_state(&region, &t.join(&dir)));
            }
            assert_eq!(
                got[0], got[1],
                "{name} over protocol v{proto}: ours, then git's"
            );
            if name == "unshallow" {
                assert!(got[0].1.is_empty(), "unshallowed");
            } else {
                assert!(!got[0].1.is_empty(), "{name}: shallow");
            }
        }
    }
    // git's refusals: a name that is no ref, and a time before which nothing is left.
    for (arg, why) in [
        ("--shallow-exclude=nosuch", "deepen-not is not a ref"),
        ("--shallow-since=2000000000", "no commits selected"),
    ] {
        let out = region.git(
            Some("admin"),
            t,
            &["clone", "-q", "--mirror", arg, &url, "refused"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{arg}: {err}");
    }
}

/// A fast-forward is decided by ancestry alone: a commit dated before its parent
/// (skewed clocks, rewritten dates) still moves a branch forward, as git decides.
#[test]
fn a_commit_dated_before_its_parent_is_still_a_fast_forward() {
    let region = Region::start();
    let t = region.dir.path();
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    let url = region.repo_url("test");
    commit_at(&w, "a", "today\n", 1_760_000_000);
    region.git_ok(&w, &["push", "-q", &url, "master"]);
    commit_at(
        &w,
        "a",
        "from a machine whose clock is years behind\n",
        1_000_000_000,
    );
    region.git_ok(&w, &["push", "-q", &url, "master"]);
    assert_eq!(
        region
            .git_ok(&w, &["ls-remote", &url, "refs/heads/master"])
            .split('\t')
            .next(),
        Some(region.git_ok(&w, &["rev-parse", "HEAD"]).trim())
    );
}

#[test]
fn a_first_push_without_the_default_branch_points_head_at_it() {
    let region = Region::start();
    let t = region.dir.path();
    let w = t.join("w");
    region.git_ok(t, &["init", "-q", "-b", "main", w.to_str().expect("path")]);
    commit(&region, &w, "a", b"1", "one");
    let url = region.repo_url("test");
    // HEAD names refs/heads/master, which this push does not bring.
    region.git_ok(&w, &["push", "-q", &url, "main", "main:refs/heads/other"]);
    region.git_ok(t, &["clone", "-q", &url, "c"]);
    let head = region.git_ok(&t.join("c"), &["symbolic-ref", "HEAD"]);
    assert_eq!(head.trim(), "refs/heads/main");
    assert_eq!(std::fs::read(t.join("c/a")).expect("checked out"), b"1");
}

/// A change to the work repository `w`: files written (`Some`) or removed (`None`),
/// then committed.
fn change(region: &Region, w: &Path, files: &[(&str, Option<&str>)], msg: &str) {
    for (path, content) in files {
        let p = w.join(path);
        match content {
            Some(c) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).expect("dir");
                }
                std::fs::write(&p, c).expect("write");
            }
            None if p.is_dir() => std::fs::remove_dir_all(&p).expect("rm dir"),
            None => std::fs::remove_file(&p).expect("rm"),
        }
    }
    region.git_ok(w, &["add", "-A"]);
    region.git_ok(w, &["commit", "-qm", msg]);
}

/// Incremental fetches read only the paths a change touched (the sparse walk); git is
/// the oracle that nothing the clone needs was left out: after each fetch the clone
/// lacks no object and `git fsck --full` passes. Deep edits, a moved file, a file
/// that becomes a directory and back, a subtree restored from older history, and a
/// merge of two branches that changed different directories.
#[test]
fn incremental_fetches_of_tree_changes_are_complete() {
    let region = Region::start();
    let t = region.dir.path();
    let url = region.repo_url("test");
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    let start: Vec<(&str, Option<&str>)> = vec![
        ("a/b/c/one", Some("one")),
        ("a/b/d/two", Some("two")),
        ("a/b/d/three", Some("three")),
        ("x/y/z", Some("z")),
        ("top", Some("top")),
    ];
    change(&region, &w, &start, "start");
    region.git_ok(&w, &["push", "-q", &url, "master"]);
    let c = t.join("c");
    region.git_ok(t, &["clone", "-q", &url, c.to_str().expect("path")]);
    let steps: Vec<Vec<(&str, Option<&str>)>> = vec![
        vec![("a/b/c/one", Some("one, edited"))],
        vec![("a/b/d/two", None), ("x/two", Some("two"))],
        vec![("top", None), ("top/inner", Some("now a directory"))],
        vec![("x/y", None), ("x/y", Some("now a file"))],
        // a/b/c as it was at the start: a tree the clone holds, not in the parent.
        vec![("a/b/c/one", Some("one"))],
        vec![("top", None), ("top", Some("top"))],
    ];
    let fetch_and_check = |i: usize| {
        let proto = if i.is_multiple_of(2) { "2" } else { "0" };
        region.git_ok(
            &c,
            &[
                "-c",
                &format!("protocol.version={proto}"),
                "fetch",
                "-q",
                "origin",
            ],
        );
        assert_eq!(missing(&region, &c), 0, "step {i}: the clone lacks objects");
        region.git_ok(&c, &["fsck", "--full"]);
    };
    for (i, files) in steps.iter().enumerate() {
        change(&region, &w, files, &format!("step {i}"));
        region.git_ok(&w, &["push", "-q", &url, "master"]);
        fetch_and_check(i);
        assert_eq!(
            region.git_ok(&c, &["rev-parse", "origin/master"]),
            region.git_ok(&w, &["rev-parse", "HEAD"])
        );
    }
    // Two branches changing different directories, merged.
    region.git_ok(&w, &["checkout", "-q", "-b", "side"]);
    change(&region, &w, &[("a/b/d/four", Some("four"))], "side");
    region.git_ok(&w, &["checkout", "-q", "master"]);
    change(&region, &w, &[("x/five", Some("five"))], "main");
    region.git_ok(&w, &["merge", "-q", "--no-edit", "side"]);
    region.git_ok(&w, &["push", "-q", &url, "master", "side"]);
    fetch_and_check(steps.len());
    let tree = |r: &Path, rev: &str| region.git_ok(r, &["rev-parse", &format!("{rev}^{{tree}}")]);
    assert_eq!(tree(&c, "origin/master"), tree(&w, "master"));
}

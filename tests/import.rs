//! `admin repo import`: an existing repository with branches, tags and a HEAD that is
//! not the default branch comes in whole, is cloned from another node, and importing
//! again changes nothing but what moved in the source.

mod common;

use std::path::Path;

use common::region::Region;

fn refs_of(region: &Region, dir: &Path) -> String {
    region.git_ok(
        dir,
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/heads",
            "refs/tags",
        ],
    )
}

#[test]
fn an_imported_repository_is_whole_on_every_node_and_imports_again_safely() {
    let region = Region::start_n(2, "");
    let t = region.dir.path();
    let src = t.join("src");
    region.git_ok(
        t,
        &["init", "-q", "-b", "main", src.to_str().expect("path")],
    );
    for i in 0..3 {
        std::fs::write(src.join("f"), format!("{i}\n")).expect("write");
        region.git_ok(&src, &["add", "-A"]);
        region.git_ok(&src, &["commit", "-qm", &format!("c{i}")]);
    }
    region.git_ok(&src, &["tag", "-a", "-m", "release", "v1"]);
    region.git_ok(&src, &["tag", "light", "HEAD~1"]);
    region.git_ok(&src, &["branch", "dev", "HEAD~2"]);
    // A working clone's remote-tracking refs are not the repository's own.
    region.git_ok(&src, &["update-ref", "refs/remotes/origin/main", "HEAD"]);

    let import = |expect: &str| {
        let out = region.repospanner(&[
            "admin",
            "repo",
            "import",
            "imported",
            src.to_str().expect("path"),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(expect), "{err}");
    };
    import("Created repository imported");
    let clone = t.join("clone");
    region.git_ok(
        t,
        &[
            "clone",
            "-q",
            &region.repo_url_of(2, "imported"),
            clone.to_str().expect("path"),
        ],
    );
    assert_eq!(
        region.git_ok(&clone, &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/main"
    );
    let remote = region.git_ok(t, &["ls-remote", &region.repo_url_of(2, "imported")]);
    assert!(!remote.contains("refs/remotes/"), "{remote}");
    let mut listed: Vec<String> = remote
        .lines()
        .filter(|l| !l.ends_with("HEAD") && !l.ends_with("^{}"))
        .map(|l| l.replace('\t', " "))
        .collect();
    listed.sort();
    let mut source: Vec<String> = refs_of(&region, &src).lines().map(String::from).collect();
    source.sort();
    assert_eq!(listed, source);

    // Again, after the source moved on: what differs is pushed, a rewind included.
    region.git_ok(&src, &["branch", "-f", "dev", "main"]);
    region.git_ok(&src, &["tag", "-d", "light"]);
    import("pushing what differs");
    let remote = region.git_ok(
        t,
        &[
            "ls-remote",
            &region.repo_url_of(1, "imported"),
            "refs/heads/dev",
        ],
    );
    let main = region.git_ok(&src, &["rev-parse", "main"]);
    assert!(remote.starts_with(main.trim()), "{remote}");
}

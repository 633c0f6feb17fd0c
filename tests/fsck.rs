//! Objects checked on push as git's `receive.fsckObjects` checks them: each bad object,
//! made with the real git (`hash-object --literally`) and pushed with it, is refused with
//! git's message id on the client's screen and changes nothing; `checks.fsck` relaxes a
//! single check where git lets an operator.
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

mod common;

use std::path::Path;

use common::region::Region;

/// Writes an object of `kind` with `content` as it is into `w`'s repository.
fn literal(region: &Region, w: &Path, kind: &str, content: &[u8]) -> String {
    let f = w.join(".git/literal");
    std::fs::write(&f, content).expect("write");
    region
        .git_ok(
            w,
            &[
                "hash-object",
                "--literally",
                "-w",
                "-t",
                kind,
                f.to_str().expect("path"),
            ],
        )
        .trim()
        .to_owned()
}

fn blob(region: &Region, w: &Path, content: &[u8]) -> Vec<u8> {
    let id = literal(region, w, "blob", content);
    (0..20)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// A raw tree of `entries` (mode, name, id) in the order given.
fn tree(entries: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut t = Vec::new();
    for (mode, name, id) in entries {
        t.extend_from_slice(format!("{mode} {name}\0").as_bytes());
        t.extend_from_slice(id);
    }
    t
}

fn commit_of(tree: &str, author: &str) -> Vec<u8> {
    format!(
        "tree {tree}\nauthor {author}\ncommitter C O Mitter <c@example.com> 1700000000 +0000\n\nbad\n"
    )
    .into_bytes()
}

const AUTHOR: &str = "A U Thor <a@example.com> 1700000000 +0000";

/// Pushes `commit` as `branch` with the real git; returns whether it was accepted and
/// what git printed.
fn push(region: &Region, w: &Path, commit: &str, branch: &str) -> (bool, String) {
    let out = region.git(
        Some("admin"),
        w,
        &[
            "push",
            &region.repo_url("test"),
            &format!("{commit}:refs/heads/{branch}"),
        ],
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn work_tree(region: &Region) -> std::path::PathBuf {
    let t = region.dir.path();
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    std::fs::write(w.join("f"), "fine\n").expect("write");
    region.git_ok(&w, &["add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "fine"]);
    region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "master"]);
    w
}

#[test]
fn objects_git_would_refuse_are_refused_with_its_message_ids() {
    let region = Region::start();
    let t = region.dir.path();
    let w = work_tree(&region);
    let before = region.git_ok(t, &["ls-remote", &region.repo_url("test")]);
    let b = blob(&region, &w, b"content\n");
    let modules =
        |url: &str| format!("[submodule \"x\"]\n\tpath = x\n\turl = {url}\n").into_bytes();
    let evil_modules = blob(&region, &w, &modules("-u./payload"));
    let fine_modules = blob(&region, &w, &modules("https://example.com/x.git"));
    let sub = literal(&region, &w, "tree", &tree(&[("100644", "f", &b)]));
    let sub: Vec<u8> = (0..20)
        .map(|i| u8::from_str_radix(&sub[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();

    let trees: Vec<(&str, Vec<u8>)> = vec![
        ("hasDotgit", tree(&[("40000", ".git", &sub)])),
        ("hasDotgit", tree(&[("40000", ".GIT", &sub)])),
        ("hasDotgit", tree(&[("40000", "git~1", &sub)])),
        ("hasDotgit", tree(&[("40000", ".g\u{200c}it", &sub)])),
        ("hasDotdot", tree(&[("40000", "..", &sub)])),
        ("hasDot", tree(&[("40000", ".", &sub)])),
        (
            "duplicateEntries",
            tree(&[("100644", "a", &b), ("100644", "a", &b)]),
        ),
        (
            "treeNotSorted",
            tree(&[("100644", "b", &b), ("100644", "a", &b)]),
        ),
        ("zeroPaddedFilemode", tree(&[("0100644", "a", &b)])),
        (
            "gitmodulesUrl",
            tree(&[("100644", ".gitmodules", &evil_modules)]),
        ),
        (
            "gitmodulesUrl",
            tree(&[("100644", ".GITMODULES", &evil_modules)]),
        ),
        (
            "gitmodulesSymlink",
            tree(&[("120000", ".gitmodules", &fine_modules)]),
        ),
    ];
    for (i, (id, content)) in trees.iter().enumerate() {
        let tree = literal(&region, &w, "tree", content);
        let commit = literal(&region, &w, "commit", &commit_of(&tree, AUTHOR));
        let (ok, err) = push(&region, &w, &commit, &format!("bad-tree-{i}"));
        assert!(!ok, "{id} #{i} was accepted");
        assert!(
            err.contains(id),
            "{id} #{i}: not on the client's screen: {err}"
        );
    }

    // Commits with broken identities, and a tag without a tagger's email.
    let fine_tree = literal(&region, &w, "tree", &tree(&[("100644", "f", &b)]));
    for (id, author) in [
        ("badTimezone", "A U Thor <a@example.com> 1700000000 +00000"),
        ("missingEmail", "A U Thor 1700000000 +0000"),
        ("badEmail", "A U Thor <a@exa>mple.com> 1700000000 +0000"),
        (
            "zeroPaddedDate",
            "A U Thor <a@example.com> 01700000000 +0000",
        ),
        (
            "missingSpaceBeforeDate",
            "A U Thor <a@example.com>1700000000 +0000",
        ),
    ] {
        let commit = literal(&region, &w, "commit", &commit_of(&fine_tree, author));
        let (ok, err) = push(&region, &w, &commit, &format!("bad-{id}"));
        assert!(!ok && err.contains(id), "{id}: {err}");
    }
    let good = literal(&region, &w, "commit", &commit_of(&fine_tree, AUTHOR));
    let tag = format!(
        "object {good}\ntype commit\ntag v1\ntagger T A Gger 1700000000 +0000\n\nbad tag\n"
    );
    let tag = literal(&region, &w, "tag", tag.as_bytes());
    let out = region.git(
        Some("admin"),
        &w,
        &[
            "push",
            &region.repo_url("test"),
            &format!("{tag}:refs/tags/v1"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missingEmail"),
        "{err}"
    );

    // Nothing changed; the same objects, corrected, go through.
    assert_eq!(
        region.git_ok(t, &["ls-remote", &region.repo_url("test")]),
        before
    );
    let fine = literal(
        &region,
        &w,
        "tree",
        &tree(&[
            ("100644", ".gitmodules", &fine_modules),
            ("100644", "f", &b),
        ]),
    );
    let commit = literal(&region, &w, "commit", &commit_of(&fine, AUTHOR));
    let (ok, err) = push(&region, &w, &commit, "fine");
    assert!(ok, "{err}");
    // A later push whose tree names the stored .gitmodules is checked against it too.
    let again = literal(
        &region,
        &w,
        "tree",
        &tree(&[
            ("100644", ".gitmodules", &fine_modules),
            ("100644", "g", &b),
        ]),
    );
    let commit = literal(&region, &w, "commit", &commit_of(&again, AUTHOR));
    let (ok, err) = push(&region, &w, &commit, "fine-again");
    assert!(ok, "{err}");
}

#[test]
fn checks_fsck_relaxes_a_check_as_receive_fsck_does() {
    let mut region = Region::write(1, "");
    let config = region.config();
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace(
        "checks:\n  paranoid: true\n",
        "checks:\n  paranoid: true\n  fsck: zeroPaddedFilemode=ignore\n",
    );
    assert!(
        text.contains("zeroPaddedFilemode=ignore"),
        "the quick start's checks section"
    );
    std::fs::write(&config, text).expect("config");
    let out = region.repospanner(&["serve", "--spawn"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    region.start_node();
    let w = work_tree(&region);
    let b = blob(&region, &w, b"old history\n");
    let padded = literal(&region, &w, "tree", &tree(&[("0100644", "a", &b)]));
    let commit = literal(&region, &w, "commit", &commit_of(&padded, AUTHOR));
    let (ok, err) = push(&region, &w, &commit, "old");
    assert!(ok, "relaxed: {err}");
    // Only that one: .git is still refused.
    let dotgit = literal(&region, &w, "tree", &tree(&[("100644", ".git", &b)]));
    let commit = literal(&region, &w, "commit", &commit_of(&dotgit, AUTHOR));
    let (ok, err) = push(&region, &w, &commit, "dotgit");
    assert!(!ok && err.contains("hasDotgit"), "{err}");
}

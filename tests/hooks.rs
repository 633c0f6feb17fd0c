//! Server hooks with the real git client: pre-receive and update refuse pushes and see
//! the pushed objects before they are accepted, post-receive runs once the region
//! holds the push, hooks set on one node run on another, bubblewrap sandboxes them and
//! a hook that runs too long is killed.

mod common;

use std::path::{Path, PathBuf};

use common::region::Region;

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write hook");
    p
}

fn edit(region: &Region, k: usize, args: &[&str]) {
    let out = region.repospanner_at(k, &[&["admin", "repo", "edit", "test"][..], args].concat());
    assert!(
        out.status.success(),
        "edit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn commit(region: &Region, w: &Path, msg: &str) -> String {
    std::fs::write(w.join("f"), msg).expect("write");
    region.git_ok(w, &["add", "-A"]);
    region.git_ok(w, &["commit", "-qm", msg]);
    region.git_ok(w, &["rev-parse", "HEAD"]).trim().to_owned()
}

fn tip(region: &Region, k: usize, name: &str) -> String {
    let t = region.dir.path();
    let out = region.git_ok(t, &["ls-remote", &region.repo_url_of(k, "test"), name]);
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

fn push(region: &Region, k: usize, w: &Path, args: &[&str]) -> (bool, String) {
    let url = region.repo_url_of(k, "test");
    let out = region.git(
        Some("admin"),
        w,
        &[
            &[
                "-c",
                "http.extraHeader=X-Extra-Someone: the pusher",
                "push",
                &url,
            ][..],
            args,
        ]
        .concat(),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sets a policy pre-receive hook, an update hook that protects a branch and a
/// post-receive hook that logs to the file it returns.
fn policy_hooks(region: &Region) -> PathBuf {
    let t = region.dir.path();
    let log = t.join("post-receive.log");
    let pre = script(
        t,
        "pre",
        "#!/bin/sh\n\
         while read old new ref; do\n\
           echo \"pre-receive $ref: $(git log -1 --format=%s $new), new: $(git rev-list $new --not --all | wc -l)\"\n\
           if git log --format=%s $new | grep -q FORBIDDEN; then echo 'policy: FORBIDDEN found' >&2; exit 1; fi\n\
         done\n\
         echo \"option=$GIT_PUSH_OPTION_0 extra=$extra_someone quarantined=${GIT_QUARANTINE_PATH:+yes}\"\n",
    );
    let update = script(
        t,
        "update",
        "#!/bin/sh\n\
         if [ \"$1\" = refs/heads/protected ]; then echo \"$1 is read-only\" >&2; exit 1; fi\n",
    );
    let post = script(
        t,
        "post",
        &format!(
            "#!/bin/sh\ncat >> {}\necho \"post-receive saw $(git log -1 --format=%s master)\"\n",
            log.display()
        ),
    );
    let (pre, update, post) = (
        pre.to_str().expect("path"),
        update.to_str().expect("path"),
        post.to_str().expect("path"),
    );
    edit(
        region,
        1,
        &[
            "--hook-pre-receive",
            pre,
            "--hook-update",
            update,
            "--hook-post-receive",
            post,
        ],
    );
    log
}

#[test]
fn hooks_see_the_push_refuse_it_and_post_receive_runs_after_it() {
    let region = Region::start_n(3, "");
    let t = region.dir.path();
    let log = policy_hooks(&region);
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    commit(&region, &w, "one");
    commit(&region, &w, "two");
    let two = region.git_ok(&w, &["rev-parse", "HEAD"]).trim().to_owned();
    let (ok, err) = push(&region, 1, &w, &["-o", "ci.skip", "master"]);
    assert!(ok, "{err}");
    for want in [
        "remote: pre-receive refs/heads/master: two, new: 2",
        "option=ci.skip extra=the pusher quarantined=yes",
        "post-receive saw two",
    ] {
        assert!(err.contains(want), "{want:?} in:\n{err}");
    }
    let zero = "0".repeat(40);
    assert_eq!(
        std::fs::read_to_string(&log).expect("post-receive ran"),
        format!("{zero} {two} refs/heads/master\n")
    );

    // A policy refusal: nothing of it is accepted, post-receive does not run.
    commit(&region, &w, "FORBIDDEN change");
    let (ok, err) = push(&region, 1, &w, &["master"]);
    assert!(!ok);
    assert!(err.contains("policy: FORBIDDEN found"), "{err}");
    assert!(err.contains("pre-receive hook declined"), "{err}");
    assert_eq!(tip(&region, 3, "refs/heads/master"), two);
    assert_eq!(
        std::fs::read_to_string(&log).expect("log").lines().count(),
        1
    );
    region.git_ok(&w, &["reset", "-q", "--hard", &two]);

    // The update hook refuses one ref of a push and lets the other through.
    let (ok, err) = push(
        &region,
        1,
        &w,
        &["master:refs/heads/protected", "master:refs/heads/free"],
    );
    assert!(!ok);
    assert!(err.contains("refs/heads/protected is read-only"), "{err}");
    assert!(
        err.contains("[remote rejected] master -> protected (hook declined)"),
        "{err}"
    );
    assert_eq!(tip(&region, 2, "refs/heads/free"), two);
    assert!(tip(&region, 1, "refs/heads/protected").is_empty());

    // An orphan branch: its old side is zero and its history shares nothing.
    region.git_ok(&w, &["checkout", "-q", "--orphan", "orphan"]);
    let orphan = commit(&region, &w, "orphan root");
    let (ok, err) = push(&region, 1, &w, &["orphan"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("pre-receive refs/heads/orphan: orphan root, new: 1"),
        "{err}"
    );
    assert_eq!(tip(&region, 2, "refs/heads/orphan"), orphan);

    hooks_follow_edits_from_another_node(&region, &w);
}

/// A hook changed through node 2 runs on node 1 (the scripts travel with the
/// repository's settings); "" removes it.
fn hooks_follow_edits_from_another_node(region: &Region, w: &Path) {
    let t = region.dir.path();
    let zero = "0".repeat(40);
    let block = script(
        t,
        "block",
        "#!/bin/sh\necho 'pushes are closed' >&2\nexit 1\n",
    );
    edit(
        region,
        2,
        &["--hook-pre-receive", block.to_str().expect("path")],
    );
    region.git_ok(w, &["checkout", "-q", "master"]);
    commit(region, w, "three");
    let (ok, err) = push(region, 1, w, &["master"]);
    assert!(!ok && err.contains("pushes are closed"), "{err}");
    edit(
        region,
        2,
        &[
            "--hook-pre-receive",
            "",
            "--hook-update",
            "",
            "--hook-post-receive",
            "",
        ],
    );
    let (ok, err) = push(region, 1, w, &["master", "master:refs/heads/protected"]);
    assert!(ok, "{err}");
    assert!(!err.contains("pre-receive"), "{err}");
    let listed = region.repospanner_at(1, &["admin", "--json", "repo", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(
        v["Repos"]["test"]["Hooks"]["PreReceive"],
        zero.as_str(),
        "{v}"
    );
}

#[test]
fn sandboxed_hooks_see_only_their_run_and_a_slow_hook_is_killed() {
    // On a 3-node region: the hook is set through node 3 and runs on node 2.
    let region = Region::start_n(
        3,
        "hooks:\n  timeout_seconds: 3\n  bubblewrap:\n    enabled: true\n    unshare: [net, ipc, uts]\n    hostname: myhostname\n    mount_proc: true\n    ro_bind: [[/usr, /usr], [/etc, /etc]]\n    symlink: [[usr/bin, /bin], [usr/lib, /lib], [usr/lib64, /lib64], [usr/sbin, /sbin]]\n",
    );
    let t = region.dir.path();
    // The node's keys and state beside what a hook run is shown.
    let (ca, state) = (t.join("qs/ca"), t.join("qs/node2/state"));
    let pre = script(
        t,
        "pre",
        &format!(
            "#!/bin/sh\n\
             echo \"host=$(hostname) pid=$$\"\n\
             grep CapEff /proc/self/status\n\
             test -e {} && echo 'the keys are visible'\n\
             ls {} | grep -v hooks && echo 'the state is visible'\n\
             read old new ref\n\
             echo \"sandboxed log: $(git log -1 --format=%s $new)\"\n",
            ca.display(),
            state.display()
        ),
    );
    edit(
        &region,
        3,
        &["--hook-pre-receive", pre.to_str().expect("path")],
    );
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    commit(&region, &w, "inside");
    let (ok, err) = push(&region, 2, &w, &["master"]);
    assert!(ok, "{err}");
    assert!(err.contains("host=myhostname pid=2"), "{err}");
    // Whatever user the node runs as (root here), the hook holds no capability.
    assert!(err.contains("CapEff:\t0000000000000000"), "{err}");
    assert!(err.contains("sandboxed log: inside"), "{err}");
    assert!(!err.contains("visible"), "{err}");

    // Past hooks.timeout_seconds the hook and what it started are killed.
    let slow = script(t, "slow", "#!/bin/sh\necho waiting\nsleep 60 &\nsleep 60\n");
    edit(
        &region,
        3,
        &["--hook-pre-receive", slow.to_str().expect("path")],
    );
    commit(&region, &w, "slow");
    let started = std::time::Instant::now();
    let (ok, err) = push(&region, 2, &w, &["master"]);
    assert!(!ok);
    assert!(err.contains("pre-receive hook timed out"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn bad_hook_uploads_and_edits_are_refused_and_change_nothing() {
    let region = Region::start();
    let answer = |path: &str, headers: &[(&str, &str)], body: &[u8], user: Option<&str>| {
        let r = region.http(user, "POST", path, headers, Some(body));
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    let upload = "/admin/hook/test.git/upload";
    // Only admins upload; a size that is not the body's; a body past the limit.
    assert_eq!(answer(upload, &[], b"#!/bin/sh\n", None).0, 401);
    let (status, body) = answer(
        upload,
        &[("X-Object-Size", "99")],
        b"#!/bin/sh\n",
        Some("admin"),
    );
    assert!(status == 200 && body.contains("does not match"), "{body}");
    let big = vec![b'#'; (1 << 20) + 1];
    let (status, body) = answer(upload, &[], &big, Some("admin"));
    assert!(status == 413 || body.contains("at most"), "{status} {body}");
    // Edits naming what is no script id, or a script this node never got.
    for (id, why) in [
        ("not-hex", "40 hex digits"),
        ("1234567890123456789012345678901234567890", "no script"),
    ] {
        let edit = serde_json::json!({"Reponame": "test", "UpdateRequest": {"hook-update": id}});
        let (status, body) = answer(
            "/admin/editrepo",
            &[("Content-Type", "application/json")],
            edit.to_string().as_bytes(),
            Some("admin"),
        );
        assert!(status == 200 && body.contains(why), "{id}: {body}");
    }
    // An upload answers the script's git blob id, which an edit then names.
    let (_, body) = answer(upload, &[], b"#!/bin/sh\nexit 0\n", Some("admin"));
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    // `printf '#!/bin/sh\nexit 0\n' | git hash-object --stdin`
    assert_eq!(
        v["Info"], "039e4d0069c5c26909f86c505b9de66182e6d1f3",
        "{body}"
    );
    let listed = region.repospanner(&["admin", "--json", "repo", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(
        v["Repos"]["test"]["Hooks"]["Update"],
        "0".repeat(40).as_str()
    );
}

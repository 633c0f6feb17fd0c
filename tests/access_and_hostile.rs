//! Who may do what (certificates, globs, listeners), and hostile input: each refused
//! with a clear error and nothing changed.
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

mod common;

use common::noise;
use common::packs::{blob_id, deflate, pack, push_body, retrail};
use common::region::Region;
use repospanner_net::git::pack::OutEntry;
use repospanner_net::git::{hex, ObjectKind};

fn status(region: &Region, user: Option<&str>, path: &str) -> u16 {
    region.http(user, "GET", path, &[], None).status
}

#[test]
fn access_control() {
    let region = Region::start();
    let t = region.dir.path();
    let refs = "/repo/test.git/info/refs?service=git-upload-pack";
    region.add_user("reader", &["--read", "--region", "*", "--repo", "*"]);
    region.add_user(
        "rpmsonly",
        &["--read", "--write", "--region", "*", "--repo", "rpms/*"],
    );
    region.add_user(
        "elsewhere",
        &["--read", "--write", "--region", "other", "--repo", "*"],
    );

    // Private repository: no certificate → 404, as for a repository that does not exist.
    assert_eq!(status(&region, None, refs), 404);
    assert_eq!(
        status(
            &region,
            Some("admin"),
            "/repo/nonexistent.git/info/refs?service=git-upload-pack"
        ),
        404
    );
    assert_eq!(status(&region, Some("admin"), refs), 200);
    assert_eq!(status(&region, Some("reader"), refs), 200);
    // Glob and region mismatches look like a missing repository.
    assert_eq!(status(&region, Some("rpmsonly"), refs), 404);
    assert_eq!(status(&region, Some("elsewhere"), refs), 404);
    let out = region.git(None, t, &["ls-remote", &region.repo_url("test")]);
    assert!(!out.status.success());

    // A reader cannot push.
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    region.git_ok(&w, &["commit", "-q", "--allow-empty", "-m", "x"]);
    let out = region.git(
        Some("reader"),
        &w,
        &["push", "-q", &region.repo_url("test"), "master"],
    );
    assert!(!out.status.success(), "a read-only certificate pushed");
    assert_eq!(
        status(
            &region,
            Some("reader"),
            "/repo/test.git/info/refs?service=git-receive-pack"
        ),
        403
    );
    region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "master"]);

    // A public repository is readable without a certificate, not writable.
    let out = region.repospanner(&["admin", "repo", "create", "open", "--public"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    region.git_ok(&w, &["push", "-q", &region.repo_url("open"), "master"]);
    let anon = region.git(None, t, &["clone", "-q", &region.repo_url("open"), "anon"]);
    assert!(
        anon.status.success(),
        "{}",
        String::from_utf8_lossy(&anon.stderr)
    );
    let out = region.git(
        None,
        &w,
        &[
            "push",
            "-q",
            &region.repo_url("open"),
            "master:refs/heads/x",
        ],
    );
    assert!(!out.status.success(), "anonymous push accepted");

    // Listeners: a user certificate on the node endpoint, a node certificate on the
    // user endpoint.
    let rpc = region.rpc_url();
    assert_eq!(
        region
            .http_to(&rpc, Some("admin"), "GET", "/rpc/ping", &[], None)
            .status,
        403
    );
    assert_eq!(
        region
            .http_to(&rpc, Some("node1.local"), "GET", "/rpc/ping", &[], None)
            .status,
        200
    );
    assert_eq!(status(&region, Some("node1.local"), refs), 403);
    assert_eq!(
        status(&region, Some("node1.local"), "/admin/listrepos"),
        403
    );
    // The admin API needs admin.
    assert_eq!(status(&region, Some("reader"), "/admin/listrepos"), 401);
    assert_eq!(status(&region, Some("admin"), "/admin/listrepos"), 200);
    // JSON endpoints need POST.
    assert_eq!(status(&region, Some("admin"), "/admin/createrepo"), 405);

    // A certificate from another CA fails the TLS handshake.
    let other = tempfile::tempdir().expect("tempdir");
    let cfg = other.path().join("c.yml");
    std::fs::write(
        &cfg,
        format!("ca:\n  path: {}\n", other.path().join("ca").display()),
    )
    .expect("config");
    let c = cfg.to_str().expect("path");
    common::ok(&[
        "--config",
        c,
        "ca",
        "init",
        "repospanner.local",
        "--no-name-constraint",
    ]);
    common::ok(&[
        "--config", c, "ca", "leaf", "admin", "--admin", "--read", "--write", "--region", "*",
        "--repo", "*",
    ]);
    let ca = std::fs::read(region.ca_dir().join("ca.crt")).expect("ca");
    let crt = std::fs::read(other.path().join("ca/admin.crt")).expect("crt");
    let key = std::fs::read(other.path().join("ca/admin.key")).expect("key");
    let r = repospanner::admin::request_raw(
        &region.url(),
        &ca,
        Some((&crt, &key)),
        "GET",
        refs,
        &[],
        None,
    );
    assert!(
        r.is_err() || r.is_ok_and(|r| r.status != 200),
        "a foreign certificate was accepted"
    );
    let foreign = region.git(
        None,
        t,
        &[
            "-c",
            &format!(
                "http.sslCert={}",
                other.path().join("ca/admin.crt").display()
            ),
            "-c",
            &format!(
                "http.sslKey={}",
                other.path().join("ca/admin.key").display()
            ),
            "ls-remote",
            &region.repo_url("test"),
        ],
    );
    assert!(!foreign.status.success());
}

/// A work tree with one small commit pushed to `test`; returns it and `ls-remote`.
fn pushed_once(region: &Region) -> (std::path::PathBuf, String) {
    let t = region.dir.path();
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    commit_file(region, &w, "small", b"small");
    region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "master"]);
    let before = region.git_ok(t, &["ls-remote", &region.repo_url("test")]);
    (w, before)
}

/// Writes `name` in work tree `w` and commits it.
fn commit_file(region: &Region, w: &std::path::Path, name: &str, data: &[u8]) {
    std::fs::write(w.join(name), data).expect("write");
    region.git_ok(w, &["add", "-A"]);
    region.git_ok(w, &["commit", "-qm", name]);
}

#[test]
fn hostile_input_is_refused_and_changes_nothing() {
    let region = Region::start();
    let t = region.dir.path();
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    region.git_ok(&w, &["commit", "-q", "--allow-empty", "-m", "x"]);
    region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "master"]);
    let before = region.git_ok(t, &["ls-remote", &region.repo_url("test")]);
    let zero = "0".repeat(40);
    let rp = "/repo/test.git/git-receive-pack";
    let post = |body: &[u8]| {
        let r = region.http(
            Some("admin"),
            "POST",
            rp,
            &[("Content-Type", "application/x-git-receive-pack-request")],
            Some(body),
        );
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };

    // Malformed pkt-lines: bad hex, lengths 1 to 3, truncated, oversized. Each is
    // answered with git's ERR packet naming the problem, and the node lives on.
    for (body, why) in [
        (&b"zzzz"[..], "not four hex digits"),
        (b"0003", "reserved"),
        (b"0001abc", "unexpected special packet"),
        (b"0032want 1111", "middle of a pkt-line"),
        (b"fff1", "longer than the limit"),
        (b"00", "middle of a pkt-line"),
    ] {
        let (code, text) = post(body);
        let what = String::from_utf8_lossy(body);
        assert_eq!(code, 200, "{what:?}: {text}");
        assert!(
            text.get(4..)
                .is_some_and(|t| t.starts_with("ERR invalid push request")),
            "{what:?}: {text}"
        );
        assert!(text.contains(why), "{what:?}: {why:?} not in {text}");
        assert!(region.alive(1), "{what:?} stopped the node");
    }

    let content = b"hostile test blob\n";
    let id = hex(&blob_id(content));
    let d = deflate(content);
    let good = pack(&[OutEntry::Full {
        kind: ObjectKind::Blob,
        size: content.len() as u64,
        deflated: &d,
    }]);
    let mut bad_trailer = good.clone();
    let n = bad_trailer.len();
    bad_trailer[n - 1] ^= 1;
    let mut wrong_count = good.clone();
    wrong_count[11] = 2;
    let wrong_count = retrail(wrong_count);
    // OFS_DELTA whose base lies before the start of the pack.
    let mut ofs = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
    ofs.extend_from_slice(&[0x61, 0x7f]);
    ofs.extend_from_slice(&deflate(&[1, 1, 0x90, 1, 0]));
    ofs.extend_from_slice(&[0; 20]);
    let ofs = retrail(ofs);
    // Two REF_DELTAs that are each other's base.
    let dd = deflate(&[1, 1, 0x90, 1, 0]);
    let x = blob_id(b"x");
    let y = blob_id(b"y");
    let cycle = pack(&[
        OutEntry::RefDelta {
            base: y,
            size: 5,
            deflated: &dd,
        },
        OutEntry::RefDelta {
            base: x,
            size: 5,
            deflated: &dd,
        },
    ]);
    // An object that declares 4 GiB.
    let mut huge = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
    huge.extend_from_slice(&[0xb0, 0x80, 0x80, 0x80, 0x80, 0x01]);
    huge.extend_from_slice(&d);
    huge.extend_from_slice(&[0; 20]);
    let huge = retrail(huge);

    // Packs large enough to be spooled and read on a thread of their own: a corrupt
    // trailer, and a pack cut short in the middle of an object.
    let noise = noise(0x9e37_79b9_7f4a_7c15, 6 << 20);
    let dn = deflate(&noise);
    let big = pack(&[OutEntry::Full {
        kind: ObjectKind::Blob,
        size: noise.len() as u64,
        deflated: &dn,
    }]);
    let mut big_bad_trailer = big.clone();
    let n = big_bad_trailer.len();
    big_bad_trailer[n - 3] ^= 0x40;
    let big_cut = big[..big.len() / 2].to_vec();

    for (what, p) in [
        ("large pack, bad trailer", &big_bad_trailer),
        ("large pack, cut short", &big_cut),
        ("bad trailer", &bad_trailer),
        ("wrong count", &wrong_count),
        ("ofs before start", &ofs),
        ("delta cycle", &cycle),
        ("4 GiB object", &huge),
    ] {
        let (code, text) = post(&push_body(&zero, &id, b"refs/heads/evil", p));
        assert_eq!(code, 200, "{what}");
        assert!(
            text.contains("unpack ") && !text.contains("unpack ok"),
            "{what}: {text}"
        );
        assert!(text.contains("ng refs/heads/evil"), "{what}: {text}");
    }

    // A ref update to an object that is neither pushed nor stored.
    let empty = pack(&[]);
    let (_, text) = post(&push_body(
        &zero,
        &"ab".repeat(20),
        b"refs/heads/missing",
        &empty,
    ));
    assert!(
        text.contains("ng refs/heads/missing") && text.contains("missing"),
        "{text}"
    );

    // Ref names git would refuse.
    for name in [
        &b"refs/heads/a..b"[..],
        b"refs/heads/-x",
        b"refs/heads/ctl\x01",
        b"HEAD",
        b"refs/heads/x.lock",
    ] {
        let (_, text) = post(&push_body(&zero, &id, name, &good));
        assert!(
            text.contains("ng ") && text.contains("funny refname"),
            "{:?}: {text}",
            String::from_utf8_lossy(name)
        );
    }

    // Repository names that try to escape.
    for path in [
        "/repo/../x.git/info/refs?service=git-upload-pack",
        "/repo/%2e%2e/x.git/info/refs?service=git-upload-pack",
        "/repo/a%00b.git/info/refs?service=git-upload-pack",
        "/repo/.git/info/refs?service=git-upload-pack",
    ] {
        assert_eq!(status(&region, Some("admin"), path), 404, "{path}");
    }
    let out = region.repospanner(&["admin", "repo", "create", "../x"]);
    assert!(!out.status.success());

    // Nothing changed.
    assert_eq!(
        region.git_ok(t, &["ls-remote", &region.repo_url("test")]),
        before
    );
    // And the node still serves.
    region.git_ok(t, &["clone", "-q", &region.repo_url("test"), "still-fine"]);
}

#[test]
fn a_push_that_would_eat_the_disk_reserve_is_refused_and_changes_nothing() {
    // A reserve larger than any disk: every push is refused (507), small or spooled,
    // and reads go on.
    let region = Region::start_with("limits:\n  disk_reserve_bytes: 1125899906842624\n");
    let t = region.dir.path();
    let before = region.git_ok(t, &["ls-remote", &region.repo_url("test")]);
    let w = t.join("w");
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    for (name, data) in [
        ("small", b"small".to_vec()),
        ("big", noise(0x1234_5678_9abc_def1, 6 << 20)),
    ] {
        commit_file(&region, &w, name, &data);
        let out = region.git(
            Some("admin"),
            &w,
            &["push", "-q", &region.repo_url("test"), "master"],
        );
        assert!(
            !out.status.success(),
            "a push past the disk reserve was accepted"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("507"), "{err}");
    }
    assert!(
        region.log().contains("disk is nearly full"),
        "{}",
        region.log()
    );
    assert_eq!(
        region.git_ok(t, &["ls-remote", &region.repo_url("test")]),
        before
    );
}

#[test]
fn a_push_over_the_size_limit_is_refused_and_changes_nothing() {
    let region =
        Region::start_with("limits:\n  pack_bytes_max: 1048576\n  buffered_bytes_max: 4194304\n");
    let t = region.dir.path();
    let (w, before) = pushed_once(&region);
    // 3 MiB of incompressible data: the pack is over the 1 MiB limit.
    commit_file(&region, &w, "big", &noise(0x2545_f491_4f6c_dd1d, 3 << 20));
    let out = region.git(
        Some("admin"),
        &w,
        &["push", "-q", &region.repo_url("test"), "master"],
    );
    assert!(!out.status.success(), "an oversized push was accepted");
    // The refusal reaches the client, which is still sending when it comes: the node
    // reads the rest of the body instead of resetting the connection under it.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("413"), "{err}");
    assert_eq!(
        region.git_ok(t, &["ls-remote", &region.repo_url("test")]),
        before
    );
    // The node still takes pushes within the limit.
    std::fs::write(w.join("big"), b"smaller now").expect("write");
    region.git_ok(&w, &["add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "fits"]);
    let out = region.git(
        Some("admin"),
        &w,
        &["push", "-q", &region.repo_url("test"), "master"],
    );
    // The previous commit still carries the big blob; push a history without it.
    if !out.status.success() {
        region.git_ok(&w, &["reset", "-q", "--hard", "HEAD~2"]);
        std::fs::write(w.join("other"), b"fits").expect("write");
        region.git_ok(&w, &["add", "-A"]);
        region.git_ok(&w, &["commit", "-qm", "fits"]);
        region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "master"]);
    }
}

/// The node endpoint: a node of another region is refused; malformed node-to-node
/// requests get a clear error and change nothing; the node keeps serving.
#[test]
fn the_node_endpoint_refuses_strangers_and_garbage() {
    let region = Region::start();
    let rpc = region.rpc_url();
    let out = region.repospanner(&["ca", "node", "elsewhere", "stranger"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = region.http_to(
        &rpc,
        Some("stranger.elsewhere"),
        "GET",
        "/rpc/ping",
        &[],
        None,
    );
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let node = Some("node1.local");
    let post = |path: &str, body: &[u8]| region.http_to(&rpc, node, "POST", path, &[], Some(body));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("/rpc/shard/999/append", b"{}".to_vec(), 404),
        ("/rpc/shard/0/nonsense", Vec::new(), 404),
        // Operations this version no longer has (raw-body staging).
        ("/rpc/shard/0/stage", vec![0; 24], 404),
        ("/rpc/shard/0/commit", vec![0; 24], 404),
        ("/rpc/shard/0/append", b"not json".to_vec(), 400),
        ("/rpc/shard/0/vote", b"{\"vote\": 1}".to_vec(), 400),
        ("/rpc/shard/0/propose", b"{\"Bogus\":{}}".to_vec(), 400),
        ("/rpc/shard/0/objects", vec![1, 2, 3], 400),
        (
            "/rpc/shard/0/objects",
            {
                // A namespace, then an object whose length runs past the end.
                let mut b = 7u64.to_le_bytes().to_vec();
                b.extend_from_slice(&[0x11; 20]);
                b.push(3);
                b.extend_from_slice(&[0; 17]);
                b.extend_from_slice(&u32::MAX.to_le_bytes());
                b
            },
            400,
        ),
        ("/rpc/shard/0/fetch", vec![0; 9], 400),
        // The stream of a large push to the other members (src/aside.rs): a short key,
        // ids that are not whole, objects that run past the end, and an adoption of
        // objects this node never held aside (refused, nothing adopted).
        ("/rpc/shard/0/aside", vec![0; 23], 400),
        ("/rpc/shard/0/adopt", vec![0; 24 + 19], 400),
        (
            "/rpc/shard/0/aside",
            {
                let mut b = vec![7; 24];
                b.extend_from_slice(&[0x11; 20]);
                b.push(3);
                b.extend_from_slice(&[0; 17]);
                b.extend_from_slice(&u32::MAX.to_le_bytes());
                b
            },
            400,
        ),
        (
            "/rpc/shard/0/adopt",
            [vec![9; 24], vec![0x22; 20]].concat(),
            409,
        ),
        ("/rpc/shard/0/drop-aside", vec![1; 10], 400),
        ("/rpc/shard/0/snapshot", vec![255, 255, 255, 255, b'{'], 400),
        ("/rpc/shard/0/join", b"[]".to_vec(), 400),
    ];
    for (path, body, want) in cases {
        let r = post(path, &body);
        assert_eq!(
            r.status,
            want,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Still serving, nothing changed.
    let r = region.http(
        Some("admin"),
        "GET",
        "/repo/test.git/info/refs?service=git-upload-pack",
        &[],
        None,
    );
    assert_eq!(r.status, 200);
    // `--json` is the admin command's flag, before or after the subcommand.
    for args in [
        &["admin", "--json", "repo", "list"][..],
        &["admin", "repo", "list", "--json"],
    ] {
        let out = region.repospanner(args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(v["Repos"]["test"].is_object(), "{v}");
    }
    let out = region.repospanner(&["admin", "nodestatus", "--nagios"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A large push's objects are written aside while it arrives; when the push is then
/// refused (here: its commit's tree is missing), none of them becomes visible.
#[test]
fn a_refused_large_push_leaves_none_of_its_objects_behind() {
    let region = Region::start();
    let zero = "0".repeat(40);
    let post = |body: &[u8]| {
        let r = region.http(
            Some("admin"),
            "POST",
            "/repo/test.git/git-receive-pack",
            &[("Content-Type", "application/x-git-receive-pack-request")],
            Some(body),
        );
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    // 40 blobs of 1 MiB (the body is spooled, and objects go aside in batches while it
    // arrives), then a commit whose tree is in neither the pack nor the repository.
    let blobs: Vec<Vec<u8>> = (0..40u64).map(|i| noise(i + 77, 1 << 20)).collect();
    let deflated: Vec<Vec<u8>> = blobs.iter().map(|b| deflate(b)).collect();
    let commit = format!(
        "tree {}\nauthor a <a@b> 1 +0000\ncommitter a <a@b> 1 +0000\n\nbroken\n",
        "ab".repeat(20)
    );
    let dc = deflate(commit.as_bytes());
    let mut entries: Vec<OutEntry<'_>> = blobs
        .iter()
        .zip(&deflated)
        .map(|(b, d)| OutEntry::Full {
            kind: ObjectKind::Blob,
            size: b.len() as u64,
            deflated: d,
        })
        .collect();
    entries.push(OutEntry::Full {
        kind: ObjectKind::Commit,
        size: commit.len() as u64,
        deflated: &dc,
    });
    let commit_id = {
        use sha1::Digest;
        let mut h = sha1::Sha1::new();
        h.update(format!("commit {}\0", commit.len()).as_bytes());
        h.update(commit.as_bytes());
        hex(&<[u8; 20]>::from(h.finalize()))
    };
    let (code, text) = post(&push_body(
        &zero,
        &commit_id,
        b"refs/heads/broken",
        &pack(&entries),
    ));
    assert_eq!(code, 200);
    assert!(text.contains("ng refs/heads/broken"), "{text}");
    // None of the blobs is there: a ref to one is a ref to a missing object.
    let empty = pack(&[]);
    for b in [&blobs[0], &blobs[39]] {
        let (_, text) = post(&push_body(
            &zero,
            &hex(&blob_id(b)),
            b"refs/heads/x",
            &empty,
        ));
        assert!(
            text.contains("ng refs/heads/x") && text.contains("missing"),
            "{text}"
        );
    }
    let refs = region.git_ok(region.dir.path(), &["ls-remote", &region.repo_url("test")]);
    assert!(refs.trim().is_empty(), "{refs}");
}

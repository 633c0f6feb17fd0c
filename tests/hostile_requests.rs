//! What an attacker sends next: each request gets a clear error (never a dropped
//! connection from a dead node), the node goes on serving pushes and clones, and
//! nothing visible changed.
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

mod common;

use common::packs::{deflate, pack, pkt, push_body, push_request, retrail, OneFileCommit};
use common::region::Region;
use repospanner_net::git::pktline;

const UPLOAD: &str = "application/x-git-upload-pack-request";
const RECEIVE: &str = "application/x-git-receive-pack-request";

/// POSTs `body` to `/repo/<repo>.git/<service>` as `user`, with protocol v2 when `v2`.
fn post(
    region: &Region,
    user: Option<&str>,
    repo: &str,
    service: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let ctype = if service == "git-upload-pack" {
        UPLOAD
    } else {
        RECEIVE
    };
    let mut headers = vec![("Content-Type", ctype)];
    headers.extend_from_slice(extra);
    let path = format!("/repo/{repo}.git/{service}");
    let r = region.http(user, "POST", &path, &headers, Some(body));
    (r.status, r.body)
}

const V2: (&str, &str) = ("Git-Protocol", "version=2");

/// The reply is one short `ERR` packet containing `needle`, and the node lives.
fn assert_err(region: &Region, what: &str, (status, body): (u16, Vec<u8>), needle: &str) {
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{what}: {text}");
    assert!(
        body.get(4..8) == Some(b"ERR "),
        "{what}: not an ERR packet: {text}"
    );
    assert!(text.contains(needle), "{what}: {needle:?} not in {text}");
    assert!(body.len() < 1024, "{what}: {} bytes of error", body.len());
    assert!(region.alive(1), "{what}: the node died");
}

/// A work tree with one commit pushed to `repo`; returns the tree and the commit id.
fn pushed(region: &Region, repo: &str) -> (std::path::PathBuf, String) {
    let t = region.dir.path();
    let w = t.join(format!("w-{repo}"));
    region.git_ok(
        t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    std::fs::write(w.join("f"), "content\n").expect("write");
    region.git_ok(&w, &["add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "first"]);
    region.git_ok(&w, &["push", "-q", &region.repo_url(repo), "master"]);
    let id = region.git_ok(&w, &["rev-parse", "HEAD"]).trim().to_owned();
    (w, id)
}

/// A clone of `repo` (with the real git) into `<region dir>/<name>`.
fn clone(region: &Region, repo: &str, name: &str) -> std::path::PathBuf {
    let to = region.dir.path().join(name);
    let target = to.to_str().expect("path");
    region.git_ok(
        region.dir.path(),
        &["clone", "-q", &region.repo_url(repo), target],
    );
    to
}

/// `repo`'s refs are still `before`, and the region still takes a push to and serves
/// a clone of it.
fn unchanged_and_serving(
    region: &Region,
    w: &std::path::Path,
    repo: &str,
    before: &str,
    tag: &str,
) {
    let listed = region.git_ok(region.dir.path(), &["ls-remote", &region.repo_url(repo)]);
    assert_eq!(listed, before, "nothing visible changed");
    std::fs::write(w.join("f"), format!("after {tag}\n")).expect("write");
    region.git_ok(w, &["commit", "-qam", tag]);
    region.git_ok(w, &["push", "-q", &region.repo_url(repo), "master"]);
    let to = clone(region, repo, &format!("clone-{tag}"));
    region.git_ok(&to, &["fsck", "--strict"]);
    assert!(region.alive(1));
}

/// A gzip body of `mib` MiB of zeros (about a thousandth of that on the wire).
fn gzip_bomb(mib: usize) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..mib {
        z.write_all(&zeros).expect("gzip");
    }
    z.finish().expect("gzip")
}

#[test]
fn no_single_request_stops_a_node() {
    let region = Region::start();
    let t = region.dir.path();
    let out = region.repospanner(&["admin", "repo", "create", "pub", "--public"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (w, id) = pushed(&region, "pub");
    let before = region.git_ok(t, &["ls-remote", &region.repo_url("pub")]);
    let ones = vec![1u8; 13_500];

    // The reported request: anonymous, v2, `command=` and 13,500 bytes of 0x01.
    let mut body = b"command=".to_vec();
    body.extend_from_slice(&ones);
    let mut req = Vec::new();
    pkt(&mut req, &body);
    assert_err(
        &region,
        "command= without a flush",
        post(&region, None, "pub", "git-upload-pack", &[V2], &req),
        "request ends before its flush",
    );
    pktline::flush(&mut req);
    // The other places that echoed a request line.
    let mut v0 = Vec::new();
    pkt(&mut v0, format!("want {id} side-band-64k\n").as_bytes());
    pkt(&mut v0, &ones);
    pktline::flush(&mut v0);
    let mut fetch = Vec::new();
    pkt(&mut fetch, b"command=fetch\n");
    pktline::delim(&mut fetch);
    pkt(&mut fetch, &ones);
    pktline::flush(&mut fetch);
    for (what, proto, body, needle) in [
        (
            "unknown command",
            &[V2][..],
            &req,
            "unknown command \"\\x01\\x01",
        ),
        ("unsupported request line", &[], &v0, "(13500 bytes)"),
        (
            "unsupported fetch argument",
            &[V2],
            &fetch,
            "unsupported fetch argument",
        ),
    ] {
        let answer = post(&region, None, "pub", "git-upload-pack", proto, body);
        assert_err(&region, what, answer, needle);
    }
    let mut malformed = Vec::new();
    pkt(&mut malformed, &ones);
    pktline::flush(&mut malformed);
    assert_err(
        &region,
        "malformed command",
        post(
            &region,
            Some("admin"),
            "pub",
            "git-receive-pack",
            &[],
            &malformed,
        ),
        "malformed command",
    );

    // A ref name of about 65 KB: refused whole, before anything is stored.
    let empty = pack(&[]);
    let mut long = b"refs/heads/".to_vec();
    long.resize(65_000, b'a');
    let zero = "0".repeat(40);
    assert_err(
        &region,
        "65 KB ref name",
        post(
            &region,
            Some("admin"),
            "pub",
            "git-receive-pack",
            &[],
            &push_body(&zero, &id, &long, &empty),
        ),
        "limits.ref_name_bytes_max",
    );

    // Gzip bombs: 512 MiB of zeros in about half a MiB. Refused on sight for
    // receive-pack, before inflating for a reader who may not read, and at
    // limits.negotiation_bytes_max (64 MiB) for one who may.
    let hwm_before = region.status_kib(1, "VmHWM");
    let bomb = gzip_bomb(512);
    let gz = ("Content-Encoding", "gzip");
    let (status, _) = post(&region, None, "test", "git-receive-pack", &[gz], &bomb);
    assert_eq!(status, 415, "gzip push body");
    let (status, _) = post(
        &region,
        Some("admin"),
        "test",
        "git-receive-pack",
        &[gz],
        &bomb,
    );
    assert_eq!(status, 415, "gzip push body, with a certificate");
    let (status, _) = post(&region, None, "test", "git-upload-pack", &[gz], &bomb);
    assert_eq!(status, 404, "anonymous, private repository");
    for user in [None, Some("admin")] {
        let (status, text) = post(&region, user, "pub", "git-upload-pack", &[gz], &bomb);
        assert_eq!(status, 413, "{}", String::from_utf8_lossy(&text));
    }
    let (status, _) = post(
        &region,
        None,
        "pub",
        "git-upload-pack",
        &[("Content-Encoding", "br")],
        &v0,
    );
    assert_eq!(status, 415, "unknown encoding");
    let grown_mib = region.status_kib(1, "VmHWM").saturating_sub(hwm_before) / 1024;
    assert!(
        grown_mib < 256,
        "the node's peak RSS grew by {grown_mib} MiB for 512 MiB bombs"
    );
    assert!(region.alive(1));

    unchanged_and_serving(&region, &w, "pub", &before, "after-bombs");
}

#[test]
fn the_hostile_input_catalogue_gets_clear_errors_and_changes_nothing() {
    let region = Region::start();
    let t = region.dir.path();
    let (w, id) = pushed(&region, "test");
    let before = region.git_ok(t, &["ls-remote", &region.repo_url("test")]);
    let zero = "0".repeat(40);
    let empty = pack(&[]);
    let admin = Some("admin");
    let upload = |extra: &[(&str, &str)], body: &[u8]| {
        post(&region, admin, "test", "git-upload-pack", extra, body)
    };
    let receive = |body: &[u8]| post(&region, admin, "test", "git-receive-pack", &[], body);

    // 0001 and 0002 where they do not belong.
    let mut v0 = Vec::new();
    pkt(&mut v0, format!("want {id} side-band-64k\n").as_bytes());
    pktline::delim(&mut v0);
    pkt(&mut v0, b"done\n");
    assert_err(&region, "0001 in v0", upload(&[], &v0), "0001 or 0002");
    let mut v2 = Vec::new();
    pkt(&mut v2, b"command=ls-refs\n");
    v2.extend_from_slice(b"0002");
    pktline::flush(&mut v2);
    assert_err(&region, "0002 in v2", upload(&[V2], &v2), "0002");
    let mut v2 = Vec::new();
    pkt(&mut v2, b"command=ls-refs\n");
    pktline::delim(&mut v2);
    pktline::delim(&mut v2);
    pktline::flush(&mut v2);
    assert_err(&region, "two delims", upload(&[V2], &v2), "second delim");
    let mut push = Vec::new();
    pkt(
        &mut push,
        format!("{zero} {id} refs/heads/x\0report-status\n").as_bytes(),
    );
    pktline::delim(&mut push);
    assert_err(&region, "0001 in a push", receive(&push), "0001 or 0002");

    // Duplicate capabilities are refused; conflicting ones resolve as git's do
    // (side-band-64k over side-band).
    let mut dup = Vec::new();
    pkt(
        &mut dup,
        format!("want {id} side-band-64k side-band-64k\n").as_bytes(),
    );
    pktline::flush(&mut dup);
    pkt(&mut dup, b"done\n");
    assert_err(
        &region,
        "duplicate capability",
        upload(&[], &dup),
        "given twice",
    );
    let dup_push = push_request(
        &[(&zero, &id, b"refs/heads/x")],
        "report-status report-status",
        &empty,
    );
    assert_err(
        &region,
        "duplicate push capability",
        receive(&dup_push),
        "given twice",
    );
    let mut both = Vec::new();
    pkt(
        &mut both,
        format!("want {id} side-band side-band-64k ofs-delta no-progress\n").as_bytes(),
    );
    pktline::flush(&mut both);
    pkt(&mut both, b"done\n");
    let (status, body) = upload(&[], &both);
    assert_eq!(status, 200);
    // NAK, then the pack on band 1.
    assert!(
        body.starts_with(b"0008NAK\n"),
        "{:?}",
        &body[..body.len().min(64)]
    );
    assert_eq!(
        body.get(12..17),
        Some(&b"\x01PACK"[..]),
        "the pack on band 1"
    );

    // A repeated deepen that disagrees, deepen 0 and one past u32: refused; the largest
    // git sends (--unshallow) is served.
    for (lines, needle) in [
        (&["deepen 1", "deepen 2"][..], "conflicting deepen"),
        (&["deepen 0"][..], "invalid deepen"),
        (&["deepen 4294967296"][..], "invalid deepen"),
    ] {
        let mut req = Vec::new();
        pkt(&mut req, b"command=fetch\n");
        pktline::delim(&mut req);
        pkt(&mut req, format!("want {id}\n").as_bytes());
        for l in lines {
            pkt(&mut req, format!("{l}\n").as_bytes());
        }
        pkt(&mut req, b"done\n");
        pktline::flush(&mut req);
        assert_err(&region, needle, upload(&[V2], &req), needle);
    }
    let mut deep = Vec::new();
    pkt(&mut deep, b"command=fetch\n");
    pktline::delim(&mut deep);
    pkt(&mut deep, format!("want {id}\n").as_bytes());
    pkt(&mut deep, b"deepen 2147483647\n");
    pkt(&mut deep, b"done\n");
    pktline::flush(&mut deep);
    let (status, body) = upload(&[V2], &deep);
    assert_eq!(status, 200);
    assert!(
        body.windows(4).any(|w| w == b"PACK"),
        "deepen 2147483647 served"
    );

    // Huge want and have lists: past limits.negotiation_ids_max (a million), refused.
    for key in ["want", "have"] {
        let mut big = Vec::with_capacity(51 << 20);
        pkt(&mut big, b"command=fetch\n");
        pktline::delim(&mut big);
        pkt(&mut big, format!("want {id}\n").as_bytes());
        let line = format!("{key} {id}\n");
        for _ in 0..1_000_000 {
            pkt(&mut big, line.as_bytes());
        }
        pkt(&mut big, b"done\n");
        pktline::flush(&mut big);
        assert_err(
            &region,
            key,
            upload(&[V2], &big),
            "limits.negotiation_ids_max",
        );
    }

    // An OFS_DELTA whose base offset points into the middle of the entry before it.
    let content = b"hostile test blob\n";
    let d = deflate(content);
    let mut ofs = b"PACK\0\0\0\x02\0\0\0\x02".to_vec();
    ofs.push(0x80 | 0x30 | (content.len() as u8 & 15));
    ofs.push((content.len() >> 4) as u8);
    ofs.extend_from_slice(&d);
    let at = ofs.len();
    let delta = [content.len() as u8, 3, 3, b'x', b'y', b'z'];
    ofs.push(0x60 | delta.len() as u8);
    ofs.push((at - 13) as u8); // the second byte of the first entry
    ofs.extend_from_slice(&deflate(&delta));
    ofs.extend_from_slice(&[0; 20]);
    let ofs = retrail(ofs);
    let (status, text) = receive(&push_body(&zero, &id, b"refs/heads/ofs", &ofs));
    let text = String::from_utf8_lossy(&text);
    assert_eq!(status, 200);
    assert!(
        text.contains("unpack ")
            && !text.contains("unpack ok")
            && text.contains("ng refs/heads/ofs"),
        "OFS_DELTA into an entry: {text}"
    );

    // A pack declaring more objects than the node's budget for pushes in flight can
    // verify (each object's state is charged to it): refused from its header.
    let mut many = b"PACK\0\0\0\x02".to_vec();
    many.extend_from_slice(&5_000_000u32.to_be_bytes());
    many.extend_from_slice(&[0; 20]);
    let (status, text) = receive(&push_body(&zero, &id, b"refs/heads/many", &many));
    let text = String::from_utf8_lossy(&text);
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("5000000 objects") && text.contains("limits.buffered_bytes_max"),
        "{text}"
    );

    // Ambiguous ref names, and names that differ only in case (atomic: none moves).
    for name in [
        "refs/heads/HEAD",
        "refs/tags/HEAD",
        "refs/heads/refs/heads/x",
    ] {
        let (_, text) = receive(&push_body(&zero, &id, name.as_bytes(), &empty));
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains(&format!("ng {name} ambiguous")),
            "{name}: {text}"
        );
    }
    let case = push_request(
        &[
            (&zero, &id, b"refs/heads/Topic"),
            (&zero, &id, b"refs/heads/topic"),
        ],
        "report-status atomic",
        &empty,
    );
    let (_, text) = receive(&case);
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("ng refs/heads/topic differs from refs/heads/Topic only in case"),
        "{text}"
    );
    assert!(!text.contains("ok refs/heads/"), "atomic: {text}");
    let (_, text) = receive(&push_body(&zero, &id, b"refs/heads/MASTER", &empty));
    assert!(
        String::from_utf8_lossy(&text).contains("only in case"),
        "against an existing ref"
    );

    // Ref names at and past limits.ref_name_bytes_max (4096).
    let mut at_limit = b"refs/heads/".to_vec();
    at_limit.resize(4096, b'n');
    let mut past = at_limit.clone();
    past.push(b'n');
    assert_err(
        &region,
        "4097-byte ref name",
        receive(&push_body(&zero, &id, &past, &empty)),
        "limits.ref_name_bytes_max",
    );
    let (_, text) = receive(&push_body(&zero, &id, &at_limit, &empty));
    let name = String::from_utf8(at_limit).expect("ascii");
    assert!(
        String::from_utf8_lossy(&text).contains(&format!("ok {name}")),
        "a 4096-byte name is allowed"
    );
    // Listed by v0 and v2 alike, then deleted.
    for proto in ["0", "2"] {
        let listed = region.git_ok(
            t,
            &[
                "-c",
                &format!("protocol.version={proto}"),
                "ls-remote",
                &region.repo_url("test"),
            ],
        );
        assert!(listed.contains(&name), "protocol {proto}");
    }
    let (_, text) = receive(&push_body(&id, &zero, name.as_bytes(), &[]));
    assert!(String::from_utf8_lossy(&text).contains(&format!("ok {name}")));

    // Repository paths that are not quite one.
    for path in [
        "/repo/test.git/",
        "/repo/test.git//info/refs?service=git-upload-pack",
        "/repo/test.git/info/refs/?service=git-upload-pack",
        "/repo/test.git.git/info/refs?service=git-upload-pack",
        "/repo/test/.git/info/refs?service=git-upload-pack",
    ] {
        let r = region.http(admin, "GET", path, &[], None);
        assert_eq!(r.status, 404, "{path}");
    }

    // A certificate glob that a backtracking matcher would take forever on, against
    // the longest repository name there is.
    region.add_user(
        "globby",
        &[
            "--read",
            "--region",
            "*",
            "--repo",
            &format!("{}b", "*a".repeat(30)),
        ],
    );
    let long_repo = "a".repeat(500);
    let r = region.http(
        Some("globby"),
        "GET",
        &format!("/repo/{long_repo}.git/info/refs?service=git-upload-pack"),
        &[],
        None,
    );
    assert_eq!(r.status, 404);

    unchanged_and_serving(&region, &w, "test", &before, "after-catalogue");
}

#[test]
fn the_same_object_twice_in_one_pack_is_stored_once() {
    let region = Region::start();
    let zero = "0".repeat(40);
    let one = OneFileCommit::new("f", b"twice\n", "twice");
    let commit_id = one.id.clone();
    let p = pack(&[one.entry(0), one.entry(1), one.entry(0), one.entry(2)]);
    let (status, text) = post(
        &region,
        Some("admin"),
        "test",
        "git-receive-pack",
        &[],
        &push_body(&zero, &commit_id, b"refs/heads/master", &p),
    );
    let text = String::from_utf8_lossy(&text);
    assert_eq!(status, 200);
    assert!(
        text.contains("unpack ok") && text.contains("ok refs/heads/master"),
        "{text}"
    );
    // Served once: git's clone verifies the pack it gets (a duplicate fails it).
    let to = clone(&region, "test", "clone");
    region.git_ok(&to, &["fsck", "--strict"]);
    assert_eq!(region.git_ok(&to, &["rev-parse", "HEAD"]).trim(), commit_id);
    let count = region.git_ok(&to, &["count-objects", "-v"]);
    assert!(count.contains("in-pack: 3"), "{count}");
}

#[test]
fn an_atomic_push_with_one_ref_refused_moves_none() {
    let region = Region::start();
    let t = region.dir.path();
    let url = region.repo_url("test");
    let (w, _) = pushed(&region, "test");
    region.git_ok(&w, &["push", "-q", &url, "master:side"]);
    let out = region.repospanner(&[
        "admin",
        "repo",
        "edit",
        "test",
        "--allow-non-fast-forward=false",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // master moves forward; side is rewritten (not a fast-forward: this repository
    // now refuses those), both in one atomic push.
    std::fs::write(w.join("f"), "second\n").expect("write");
    region.git_ok(&w, &["commit", "-qam", "second"]);
    region.git_ok(&w, &["checkout", "-q", "-b", "side", "HEAD~1"]);
    region.git_ok(&w, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let before = region.git_ok(t, &["ls-remote", &url]);
    let out = region.git(
        Some("admin"),
        &w,
        &["push", "--atomic", &url, "master", "+side"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("side") && err.contains("master"), "{err}");
    assert!(err.contains("atomic"), "{err}");
    assert_eq!(
        region.git_ok(t, &["ls-remote", &url]),
        before,
        "nothing moved"
    );
    // Without the refused ref, the same push goes through.
    region.git_ok(&w, &["push", "-q", "--atomic", &url, "master"]);
}

#[test]
fn the_shattered_pair_as_blobs_is_two_objects_as_git_sees_them() {
    // A git object cannot carry SHAttered's blocks at the state they attack (its
    // header comes first), so git gives the pair two ids; the collision itself is
    // detected by the hasher every pushed object goes through (unit test in
    // net/src/git/pack.rs). Pushed with the real git, both are stored and served.
    let region = Region::start();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("net/src/git/testdata/shattered.hex"),
    )
    .expect("fixture");
    let pair: Vec<Vec<u8>> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect();
    let (w, _) = pushed(&region, "test");
    std::fs::write(w.join("shattered-1"), &pair[0]).expect("write");
    std::fs::write(w.join("shattered-2"), &pair[1]).expect("write");
    region.git_ok(&w, &["add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "shattered"]);
    region.git_ok(&w, &["push", "-q", &region.repo_url("test"), "master"]);
    let to = clone(&region, "test", "clone");
    for (i, bytes) in pair.iter().enumerate() {
        let name = format!("shattered-{}", i + 1);
        assert_eq!(
            &std::fs::read(to.join(&name)).expect("read"),
            bytes,
            "{name}"
        );
    }
    let ids = region.git_ok(&to, &["rev-parse", "HEAD:shattered-1", "HEAD:shattered-2"]);
    assert_eq!(
        ids,
        "6e98aef8bba6ff517f5b164d7418c5e2a6cf90c9\nef380704685cc8e54de9bc13556d1ff7026ec0cc\n"
    );
}

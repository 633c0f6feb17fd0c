//! Scrub and repair on a real region (#24 items 3 and 4): bytes of a segment file of
//! one node of three are damaged on disk; that node never serves them, `admin scrub`
//! finds the damaged objects and fetches them again from the other members, and the
//! node's clones are then the same as the others'.

mod common;

use std::path::{Path, PathBuf};

use common::noise;
use common::region::Region;

/// The largest segment file of node `k`.
fn largest_segment(region: &Region, k: usize) -> PathBuf {
    let git = region.qs().join(format!("node{k}/git"));
    let mut best: Option<(u64, PathBuf)> = None;
    for shard in std::fs::read_dir(&git).expect("git dir").flatten() {
        if !shard.file_name().to_string_lossy().starts_with("shard-") {
            continue;
        }
        for f in std::fs::read_dir(shard.path()).expect("shard").flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if name.starts_with("seg-") && best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, f.path()));
            }
        }
    }
    best.expect("a segment").1
}

fn scrub(region: &Region, k: usize, repo: Option<&str>) -> (i32, serde_json::Value) {
    let mut args = vec!["admin", "--json", "scrub"];
    if let Some(r) = repo {
        args.extend(["--repo", r]);
    }
    let out = region.repospanner_at(k, &args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "admin scrub: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn clone_head(region: &Region, k: usize, t: &Path, into: &str) -> Result<String, String> {
    let dir = t.join(into);
    let out = region.git(
        Some("admin"),
        t,
        &[
            "clone",
            "-q",
            &region.repo_url_of(k, "test"),
            &dir.to_string_lossy(),
        ],
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    region.git_ok(&dir, &["fsck", "--full", "--strict"]);
    Ok(region
        .git_ok(&dir, &["rev-parse", "HEAD"])
        .trim()
        .to_owned())
}

/// Flips 64 bytes at `fifths`/5 of node `k`'s largest segment, the node stopped.
fn damage(region: &mut Region, k: usize, fifths: usize) {
    region.stop_at(k, libc::SIGTERM);
    let seg = largest_segment(region, k);
    let mut bytes = std::fs::read(&seg).expect("segment");
    let at = bytes.len() * fifths / 5;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&seg, bytes).expect("damage");
    region.start_node_at(k);
}

/// Hostile bodies for the admin operations this node adds get 400 and do nothing; no
/// certificate, no removal.
fn hostile_admin_bodies(region: &Region) {
    for (path, body) in [
        ("/admin/scrub", &b"{not json"[..]),
        ("/admin/scrub", br#"{"Repo": 5}"#),
        ("/admin/scrub", &[0xff; 70_000][..]),
        ("/admin/removenode", b"{}"),
        ("/admin/removenode", br#"{"NodeID": -1}"#),
        ("/admin/removenode", br#"{"NodeID": "1"}"#),
    ] {
        let r = region.http(Some("admin"), "POST", path, &[], Some(body));
        assert_eq!(r.status, 400, "{path} {}", String::from_utf8_lossy(&r.body));
    }
    let r = region.http(
        None,
        "POST",
        "/admin/removenode",
        &[],
        Some(br#"{"NodeID": 2}"#),
    );
    assert_ne!(r.status, 200, "a node removed without a certificate");
}

#[test]
fn a_damaged_segment_is_never_served_and_scrub_repairs_it_from_the_members() {
    let mut region = Region::start_n(3, "");
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let w = t.join("w");
    std::fs::create_dir(&w).expect("mkdir");
    region.git_ok(&w, &["init", "-q", "-b", "master"]);
    for f in 0..10u64 {
        std::fs::write(w.join(format!("f{f}.bin")), noise(f, 200_000)).expect("write");
    }
    region.git_ok(&w, &["add", "."]);
    region.git_ok(&w, &["commit", "-q", "-m", "blobs"]);
    region.git_ok(
        &w,
        &["push", "-q", &region.repo_url_of(1, "test"), "master"],
    );
    let head = region.git_ok(&w, &["rev-parse", "HEAD"]).trim().to_owned();
    assert_eq!(
        clone_head(&region, 2, t, "before").as_deref(),
        Ok(head.as_str())
    );
    let (code, clean) = scrub(&region, 2, None);
    assert_eq!((code, clean["Damaged"].as_u64()), (0, Some(0)), "{clean}");
    // Every ref's closure is walked, and a whole one names nothing missing.
    assert_eq!(clean["Missing"].as_u64(), Some(0), "{clean}");
    assert!(clean["Objects"].as_u64() > Some(10), "{clean}");

    // Bit rot on node 2, in its largest segment (the pushed blobs).
    damage(&mut region, 2, 2);

    // Never served: a clone from node 2 fails rather than carry damaged objects, and
    // the read that found the damage has it repaired from the members.
    let err = clone_head(&region, 2, t, "damaged").expect_err("a damaged object was served");
    assert!(!err.is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        match clone_head(&region, 2, t, &format!("retry{n}")) {
            Ok(h) => {
                assert_eq!(h, head);
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "not repaired after the read: {e}\n{}",
                region.log_of(2)
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(
        region.log_of(2).contains("repaired a damaged object"),
        "{}",
        region.log_of(2)
    );

    // Damage elsewhere, found by a scrub before any read.
    damage(&mut region, 2, 3);

    // One repository's scrub finds it too; the whole node's repairs it.
    let (code, v) = scrub(&region, 2, Some("test"));
    assert!(v["Damaged"].as_u64() > Some(0), "{v}");
    assert_eq!(v["Unrepaired"].as_u64(), Some(0), "{v}");
    assert_eq!(code, 0, "{v}");
    let (code, v) = scrub(&region, 2, None);
    assert_eq!(code, 0, "{v}");
    assert!(v["DamagedRegions"].as_u64() > Some(0), "{v}");
    assert_eq!(
        v["Damaged"].as_u64(),
        Some(0),
        "repaired by the repository's scrub: {v}"
    );

    assert_eq!(
        clone_head(&region, 2, t, "repaired").as_deref(),
        Ok(head.as_str())
    );
    let status = region.repospanner_at(2, &["admin", "nodestatus"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("last scrub"), "{status}");
    hostile_admin_bodies(&region);
    let missing = region.repospanner_at(2, &["admin", "scrub", "--repo", "nothere"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no such repository"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    // After a restart the copies are what the index serves.
    region.stop_at(2, libc::SIGKILL);
    region.start_node_at(2);
    assert_eq!(
        clone_head(&region, 2, t, "restarted").as_deref(),
        Ok(head.as_str())
    );
}

//! Every `repospanner ca` command end to end through the binary, checked with
//! `openssl` as an independent verifier.

mod common;

use common::{mode, CaDir};
use std::process::Command;

fn openssl_verify(ca: &str, cert: &str, purpose: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["verify", "-purpose", purpose, "-CAfile", ca, cert])
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn init_node_leaf_info_and_openssl_verify() {
    let t = CaDir::new();
    t.ok(&["ca", "init", "repospanner.local"]);
    assert_eq!(mode(&t.ca()), 0o700, "CA directory mode");
    assert_eq!(mode(&t.ca().join("ca.key")), 0o600, "CA key mode");
    assert_eq!(
        std::fs::read_to_string(t.ca().join("serial"))
            .expect("serial")
            .trim(),
        "1"
    );

    t.ok(&["ca", "node", "regiona", "nodea", "--san", "127.0.0.1"]);
    t.ok(&[
        "ca", "node", "regiona", "nodeb", "--nodeid", "77", "--years", "2",
    ]);
    t.ok(&[
        "ca", "leaf", "admin", "--admin", "--read", "--write", "--region", "*", "--repo", "*",
    ]);
    t.ok(&[
        "ca",
        "leaf",
        "packager",
        "--read",
        "--region",
        "regiona,regionb",
        "--repo",
        "rpms/*",
        "--repo",
        "modules/*",
    ]);
    for key in [
        "nodea.regiona.key",
        "nodeb.regiona.key",
        "admin.key",
        "packager.key",
    ] {
        assert_eq!(mode(&t.ca().join(key)), 0o600, "{key} mode");
    }
    assert_eq!(
        std::fs::read_to_string(t.ca().join("serial"))
            .expect("serial")
            .trim(),
        "5"
    );

    let ca = t.file("ca.crt");
    for (cert, purpose) in [
        ("nodea.regiona.crt", "sslserver"),
        ("nodea.regiona.crt", "sslclient"),
        ("admin.crt", "sslclient"),
        ("packager.crt", "sslclient"),
    ] {
        let (ok, text) = openssl_verify(&ca, &t.file(cert), purpose);
        assert!(ok, "openssl verify {cert} for {purpose}: {text}");
    }
    let (ok, _) = openssl_verify(&ca, &t.file("admin.crt"), "sslserver");
    assert!(!ok, "a user certificate must not be usable as a server");

    let info = common::ok(&["ca", "info", &t.file("nodea.regiona.crt"), "--cacert", &ca]);
    for want in [
        "Kind:        node",
        "Region:      regiona",
        "Node name:   nodea",
        "Node ID:     2",
        "Verified:    yes",
    ] {
        assert!(info.contains(want), "{want:?} in\n{info}");
    }
    let info = common::ok(&["ca", "info", &t.file("nodeb.regiona.crt")]);
    assert!(info.contains("Node ID:     77"), "{info}");
    let info = common::ok(&["ca", "info", &t.file("packager.crt"), "--cacert", &ca]);
    for want in [
        "Kind:        user",
        "Subject CN:  packager",
        "Permissions: read",
        "Regions:     regiona, regionb",
        "Repos:       rpms/*, modules/*",
    ] {
        assert!(info.contains(want), "{want:?} in\n{info}");
    }
    let info = common::ok(&["ca", "info", &ca, "--cacert", &ca]);
    assert!(
        info.contains("Kind:        CA") && info.contains("Cluster:     repospanner.local"),
        "{info}"
    );
}

#[test]
fn info_against_another_ca_fails() {
    let a = CaDir::new();
    let b = CaDir::new();
    a.ok(&["ca", "init", "one.local"]);
    b.ok(&["ca", "init", "one.local"]);
    a.ok(&["ca", "leaf", "u", "--read", "--region", "*", "--repo", "*"]);
    let err = common::fails(&[
        "ca",
        "info",
        &a.file("u.crt"),
        "--cacert",
        &b.file("ca.crt"),
    ]);
    assert!(err.contains("does not verify"), "{err}");
    let (ok, _) = openssl_verify(&b.file("ca.crt"), &a.file("u.crt"), "sslclient");
    assert!(!ok);
}

#[test]
fn refuses_to_overwrite() {
    let t = CaDir::new();
    t.ok(&["ca", "init", "c.local"]);
    let before = std::fs::read(t.ca().join("ca.key")).expect("key");
    let err = t.fails(&["ca", "init", "c.local"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        before,
        std::fs::read(t.ca().join("ca.key")).expect("key"),
        "CA key unchanged"
    );

    t.ok(&["ca", "node", "r", "n"]);
    let cert = std::fs::read(t.ca().join("n.r.crt")).expect("cert");
    let err = t.fails(&["ca", "node", "r", "n"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(cert, std::fs::read(t.ca().join("n.r.crt")).expect("cert"));

    t.ok(&["ca", "leaf", "u", "--read", "--region", "*", "--repo", "*"]);
    let err = t.fails(&["ca", "leaf", "u", "--write", "--region", "*", "--repo", "*"]);
    assert!(err.contains("already exists"), "{err}");
    // A refusal spends no serial.
    assert_eq!(
        std::fs::read_to_string(t.ca().join("serial"))
            .expect("serial")
            .trim(),
        "3"
    );
}

#[test]
fn bad_requests_are_refused_and_write_nothing() {
    let t = CaDir::new();
    let err = t.fails(&["ca", "node", "r", "n"]);
    assert!(err.contains("no CA"), "{err}");
    let err = t.fails(&["ca", "init", "Bad_Cluster"]);
    assert!(err.contains("cluster name"), "{err}");
    assert!(!t.ca().join("ca.key").exists());

    t.ok(&["ca", "init", "c.local"]);
    let listing = || {
        let mut v: Vec<_> = std::fs::read_dir(t.ca())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    for (args, want) in [
        (
            vec!["ca", "node", "r", "n", "--san", "localhost"],
            "name constraint",
        ),
        (vec!["ca", "node", "R", "n"], "region name"),
        (vec!["ca", "node", "r", "../n"], "node name"),
        (
            vec!["ca", "leaf", "u", "--region", "*", "--repo", "*"],
            "at least one of",
        ),
        (
            vec![
                "ca", "leaf", "../x", "--read", "--region", "*", "--repo", "*",
            ],
            "user name",
        ),
        (
            vec!["ca", "leaf", "u", "--read", "--region", "[", "--repo", "*"],
            "glob",
        ),
        (vec!["ca", "leaf", "u", "--read", "--repo", "*"], "--region"),
    ] {
        let err = t.fails(&args);
        assert!(err.contains(want), "{args:?}: {want:?} in {err}");
    }
    assert_eq!(before, listing(), "failed commands wrote nothing");
    assert_eq!(
        std::fs::read_to_string(t.ca().join("serial"))
            .expect("serial")
            .trim(),
        "1"
    );
}

#[test]
fn no_name_constraint_allows_local_names() {
    let t = CaDir::new();
    t.ok(&["ca", "init", "c.local", "--no-name-constraint"]);
    t.ok(&[
        "ca",
        "node",
        "r",
        "n",
        "--san",
        "localhost",
        "--san",
        "127.0.0.1",
    ]);
    let (ok, text) = openssl_verify(&t.file("ca.crt"), &t.file("n.r.crt"), "sslserver");
    assert!(ok, "{text}");
}

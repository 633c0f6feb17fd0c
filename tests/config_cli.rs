//! The configuration file as the binary reads it: the Go original's layout works,
//! each kind of bad configuration fails with an error naming the key or path, exits
//! non-zero, and writes nothing.

mod common;

use common::CaDir;
use std::path::Path;

/// The Go original's example config, with its paths moved under `root`.
fn go_config(root: &Path) -> String {
    let text = include_str!("fixtures/go-config.yml");
    text.replace(
        "/etc/pki/repospanner",
        &root.join("ca").display().to_string(),
    )
    .replace(
        "/var/lib/repospanner",
        &root.join("var").display().to_string(),
    )
    .replace("0.0.0.0:443", "127.0.0.1:1443")
    .replace("public.crt", "nodea.regiona.crt")
    .replace("public.key", "nodea.regiona.key")
}

fn setup() -> (CaDir, String) {
    let t = CaDir::new();
    let cfg = go_config(t.dir.path());
    std::fs::write(t.config(), &cfg).expect("write config");
    t.ok(&["ca", "init", "repospanner.local"]);
    t.ok(&["ca", "node", "regiona", "nodea"]);
    t.ok(&[
        "ca", "leaf", "admin", "--admin", "--read", "--write", "--region", "*", "--repo", "*",
    ]);
    (t, cfg)
}

#[test]
fn go_original_layout_parses_and_validates() {
    let (t, _) = setup();
    let cfg = repospanner::config::Config::load(Path::new(&t.config())).expect("loads");
    assert!(!cfg.checks.paranoid);
    assert_eq!(cfg.certificates.server.len(), 2);
    let serve = cfg.serve().expect("validates for serve");
    assert_eq!(serve.node.name, "nodea");
    assert_eq!(serve.node.region, "regiona");
    assert_eq!(serve.node.cluster, "repospanner.local");
    cfg.admin().expect("validates for admin");
}

#[test]
fn each_bad_config_names_its_key_and_writes_nothing() {
    let (t, good) = setup();
    let state = t.dir.path().join("var");
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("  paranoid: false", "  paranoid: false\n  bogus: 1"),
            "bogus",
        ),
        (
            good.replace("http: 127.0.0.1:1443", "http: [1, 2]"),
            "listen.http",
        ),
        (
            good.replace("http: 127.0.0.1:1443", "http: somewhere"),
            "listen.http",
        ),
        (
            good.replace(
                "http: 127.0.0.1:1443",
                "http: 127.0.0.1:1443\n  metrics: x:y",
            ),
            "listen.metrics",
        ),
        (
            good.replace(
                "http: 127.0.0.1:1443",
                "http: 127.0.0.1:1443\n  metrics: 10.0.0.1:1443",
            ),
            "listen.metrics",
        ),
        (
            good.replace("type: tree", "type: sqlite"),
            "storage.git.type",
        ),
        (good.replace("  user: 0", "  user: root"), "hooks.user"),
        (
            good.replace("ca: ", "ca: /nonexistent")
                .replacen("ca: /nonexistent", "ca: ", 1),
            "/nonexistent",
        ),
        (good.replace("key:  ", "key:  /nonexistent"), "/nonexistent"),
        (good.replace("  state: ", "  #state: "), "storage.state"),
        (
            good.replace("    default:\n", "    other:\n"),
            "certificates.server.default",
        ),
        ("".to_string(), "empty"),
        ("- just\n- a list\n".to_string(), "config file"),
    ];
    for (yaml, want) in cases {
        std::fs::write(t.config(), &yaml).expect("write config");
        let err = t.fails(&["serve"]);
        assert!(
            err.contains(want),
            "expected {want:?} in the error for:\n{yaml}\n---\n{err}"
        );
        assert!(!state.exists(), "a failed start wrote {}", state.display());
    }
}

#[test]
fn a_user_certificate_is_not_a_node_certificate() {
    let (t, good) = setup();
    let yaml = good.replace("    cert: ".to_string().as_str(), "    cert: ");
    // certificates.client pointing at a user certificate
    let admin_crt = t.file("admin.crt");
    let admin_key = t.file("admin.key");
    let node_crt = t.file("nodea.regiona.crt");
    let node_key = t.file("nodea.regiona.key");
    let yaml = yaml.replacen(
        &format!("  client:\n    cert: {node_crt}\n    key:  {node_key}"),
        &format!("  client:\n    cert: {admin_crt}\n    key:  {admin_key}"),
        1,
    );
    assert!(
        yaml.contains(&format!("cert: {admin_crt}")),
        "replacement applied"
    );
    std::fs::write(t.config(), &yaml).expect("write config");
    let err = t.fails(&["serve"]);
    assert!(
        err.contains("certificates.client.cert")
            && err.contains("not a repoSpanner node certificate"),
        "{err}"
    );
}

#[test]
fn node_certificate_from_another_ca_is_refused() {
    let (t, good) = setup();
    let other = CaDir::new();
    other.ok(&["ca", "init", "repospanner.local"]);
    other.ok(&["ca", "node", "regiona", "nodea"]);
    let yaml = good.replacen(
        &format!("  client:\n    cert: {}", t.file("nodea.regiona.crt")),
        &format!("  client:\n    cert: {}", other.file("nodea.regiona.crt")),
        1,
    );
    std::fs::write(t.config(), &yaml).expect("write config");
    let err = t.fails(&["serve"]);
    assert!(err.contains("not valid for certificates.ca"), "{err}");
}

#[test]
fn missing_config_file_is_named() {
    let err = common::fails(&["--config", "/nonexistent/config.yml", "serve"]);
    assert!(err.contains("/nonexistent/config.yml"), "{err}");
}

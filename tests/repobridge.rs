//! `repobridge` with a real `sshd` on loopback (a forced command in `authorized_keys`,
//! one key per node of a 3-node region) and with git's `ext::` transport: clone,
//! fetch, shallow clone, push and delete through ssh, errors shown by git as remote
//! errors.
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use common::region::Region;

const BRIDGE: &str = env!("CARGO_BIN_EXE_repobridge");

struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge configuration (the Go original's format) for node `k`.
fn bridge_config(region: &Region, k: usize, path: &Path) {
    let ca = region.ca_dir();
    let cfg = serde_json::json!({
        "baseurl": region.url_of(k),
        "ca": ca.join("ca.crt"),
        "certs": {"_default_": {"cert": ca.join("admin.crt"), "key": ca.join("admin.key")}},
        "extras": {"via": "ssh"},
    });
    std::fs::write(path, cfg.to_string()).expect("bridge config");
}

/// sshd on a free loopback port; key `userK` runs repobridge towards node K.
fn sshd(region: &Region, nodes: usize) -> Sshd {
    let dir = region.dir.path().join("ssh");
    std::fs::create_dir_all(&dir).expect("dir");
    keygen(&dir.join("hostkey"));
    let mut authorized = String::new();
    for k in 1..=nodes {
        keygen(&dir.join(format!("user{k}")));
        let cfg = dir.join(format!("bridge{k}.json"));
        bridge_config(region, k, &cfg);
        let key = std::fs::read_to_string(dir.join(format!("user{k}.pub"))).expect("pub");
        authorized.push_str(&format!(
            "command=\"REPOBRIDGE_CONFIG={} {BRIDGE}\",no-pty,no-port-forwarding {}",
            cfg.display(),
            key
        ));
    }
    std::fs::write(dir.join("authorized_keys"), authorized).expect("authorized_keys");
    let port = common::region::free_ports(1);
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
         PidFile {pid}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n",
        hk = dir.join("hostkey").display(),
        ak = dir.join("authorized_keys").display(),
        pid = dir.join("sshd.pid").display(),
    );
    std::fs::write(dir.join("sshd_config"), config).expect("sshd_config");
    // sshd's privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(std::fs::File::create(dir.join("sshd.log")).expect("log"))
        .spawn()
        .expect("sshd (openssh-server)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Sshd { child, port, dir }
}

fn user() -> String {
    String::from_utf8_lossy(&Command::new("id").arg("-un").output().expect("id").stdout)
        .trim()
        .to_owned()
}

/// `git args` over ssh with the key of node `k`.
fn git_ssh(region: &Region, s: &Sshd, k: usize, cwd: &Path, args: &[&str]) -> Output {
    let ssh = format!(
        "ssh -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
        s.dir.join(format!("user{k}")).display(),
        s.port
    );
    Command::new("git")
        .current_dir(cwd)
        .env("HOME", region.dir.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_SSH_COMMAND", ssh)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(args)
        .output()
        .expect("git")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn git_over_ssh_through_repobridge_clones_fetches_and_pushes_on_any_node() {
    let region = Region::start_n(3, "");
    let s = sshd(&region, 3);
    let t = region.dir.path();
    let url = format!("ssh://{}@127.0.0.1:{}/test.git", user(), s.port);

    // An empty repository clones; a commit pushed through node 1 lands.
    ok(
        git_ssh(&region, &s, 1, t, &["clone", "-q", &url, "w"]),
        "empty clone",
    );
    let w = t.join("w");
    for i in 0..3 {
        std::fs::write(w.join("f"), format!("{i}\n")).expect("write");
        ok(git_ssh(&region, &s, 1, &w, &["add", "-A"]), "add");
        ok(
            git_ssh(&region, &s, 1, &w, &["commit", "-qm", &format!("c{i}")]),
            "commit",
        );
    }
    ok(
        git_ssh(
            &region,
            &s,
            1,
            &w,
            &[
                "push",
                "-q",
                "origin",
                "HEAD:refs/heads/master",
                "HEAD~1:refs/heads/old",
            ],
        ),
        "push",
    );
    let tip = ok(
        git_ssh(&region, &s, 1, &w, &["rev-parse", "HEAD"]),
        "rev-parse",
    );
    let https = region.git_ok(
        t,
        &[
            "ls-remote",
            &region.repo_url_of(2, "test"),
            "refs/heads/master",
        ],
    );
    assert!(https.starts_with(tip.trim()), "{https}");

    // A clone through node 2, a shallow one, then a fetch that negotiates.
    ok(
        git_ssh(&region, &s, 2, t, &["clone", "-q", &url, "c2"]),
        "clone via node 2",
    );
    let c2 = t.join("c2");
    assert_eq!(
        ok(git_ssh(&region, &s, 2, &c2, &["rev-parse", "HEAD"]), "head"),
        tip
    );
    ok(git_ssh(&region, &s, 2, &c2, &["fsck", "--strict"]), "fsck");
    ok(
        git_ssh(
            &region,
            &s,
            3,
            t,
            &["clone", "-q", "--depth", "1", &url, "shallow"],
        ),
        "shallow clone via node 3",
    );
    let count = ok(
        git_ssh(
            &region,
            &s,
            2,
            &t.join("shallow"),
            &["rev-list", "--count", "HEAD"],
        ),
        "count",
    );
    assert_eq!(count.trim(), "1");
    std::fs::write(w.join("f"), "new\n").expect("write");
    ok(
        git_ssh(&region, &s, 1, &w, &["commit", "-qam", "new"]),
        "commit",
    );
    ok(
        git_ssh(
            &region,
            &s,
            1,
            &w,
            &["push", "-q", "origin", "HEAD:refs/heads/master"],
        ),
        "push again",
    );
    ok(
        git_ssh(&region, &s, 2, &c2, &["pull", "-q", "--ff-only"]),
        "fetch via node 2",
    );
    assert_eq!(
        ok(git_ssh(&region, &s, 2, &c2, &["rev-parse", "HEAD"]), "head"),
        ok(git_ssh(&region, &s, 1, &w, &["rev-parse", "HEAD"]), "head")
    );

    // A delete sends no pack.
    ok(
        git_ssh(
            &region,
            &s,
            1,
            &w,
            &["push", "-q", "origin", ":refs/heads/old"],
        ),
        "delete",
    );
    let listed = region.git_ok(t, &["ls-remote", &region.repo_url_of(1, "test")]);
    assert!(!listed.contains("refs/heads/old"), "{listed}");

    // Errors reach git as the remote's.
    let missing = format!("ssh://{}@127.0.0.1:{}/nothere.git", user(), s.port);
    let out = git_ssh(&region, &s, 1, t, &["clone", "-q", &missing, "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("remote error") && err.contains("not found"),
        "{err}"
    );

    // git's ext:: transport, as the Go original's tests used it.
    let ext = Command::new("git")
        .current_dir(t)
        .env("HOME", t)
        .env("REPOBRIDGE_CONFIG", s.dir.join("bridge1.json"))
        .env("USER", "anyone")
        .args(["-c", "protocol.ext.allow=always", "clone", "-q"])
        .arg(format!("ext::{BRIDGE} test"))
        .arg("viaext")
        .output()
        .expect("git");
    ok(ext, "ext:: clone");
    assert_eq!(
        ok(
            git_ssh(&region, &s, 1, &t.join("viaext"), &["rev-parse", "HEAD"]),
            "head"
        ),
        ok(git_ssh(&region, &s, 1, &w, &["rev-parse", "HEAD"]), "head")
    );
}

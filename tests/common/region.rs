//! A running region of real `repospanner` processes on loopback, made the way operators
//! make one (`quickstart --no-start`, `serve --spawn`, `serve`), and the real `git`
//! client pointed at it with the region's CA and a user certificate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

/// Two free consecutive loopback ports (user, node).
fn free_ports() -> u16 {
    for _ in 0..200 {
        let p: u16 = 20000 + (rand_u32() % 40000) as u16;
        let a = std::net::TcpListener::bind(("127.0.0.1", p));
        let b = std::net::TcpListener::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no free ports");
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    t ^ (std::process::id() << 12) ^ (&t as *const u32 as usize as u32)
}

/// A one-node region.
pub struct Region {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Region {
    pub fn qs(&self) -> PathBuf {
        self.dir.path().join("qs")
    }
    pub fn config(&self) -> PathBuf {
        self.qs().join("node1/config.yml")
    }
    pub fn ca_dir(&self) -> PathBuf {
        self.qs().join("ca")
    }
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
    pub fn repo_url(&self, repo: &str) -> String {
        format!("{}/repo/{repo}.git", self.url())
    }
    pub fn rpc_url(&self) -> String {
        format!("https://localhost:{}", self.port + 1)
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.qs().join("node1/node.log")).unwrap_or_default()
    }

    /// Writes the region, spawns and starts its node, waits until it answers.
    pub fn start() -> Region {
        Region::start_with("")
    }

    /// Like [`Region::start`], with `extra` YAML appended to the node's config.
    pub fn start_with(extra: &str) -> Region {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_ports();
        let qs = dir.path().join("qs");
        let out = Command::new(BIN)
            .args([
                "quickstart",
                "--no-start",
                "--port",
                &port.to_string(),
                "--dir",
            ])
            .arg(&qs)
            .output()
            .expect("quickstart");
        assert!(
            out.status.success(),
            "quickstart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !extra.is_empty() {
            let config = qs.join("node1/config.yml");
            let mut text = std::fs::read_to_string(&config).expect("config");
            text.push_str(extra);
            std::fs::write(&config, text).expect("config");
        }
        let mut r = Region {
            dir,
            port,
            child: None,
        };
        let out = r.repospanner(&["serve", "--spawn"]);
        assert!(
            out.status.success(),
            "spawn: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        r.start_node();
        r
    }

    pub fn start_node(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.qs().join("node1/node.log"))
            .expect("log");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(self.config())
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start node");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let ca = std::fs::read(self.ca_dir().join("ca.crt")).expect("ca");
        while Instant::now() < deadline {
            if repospanner::admin::request(&self.url(), &ca, None, "GET", "/", None)
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node did not start:\n{}", self.log());
    }

    /// The node's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the node with `signal` and waits for it.
    pub fn stop(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, signal) };
            let _ = c.wait();
        }
    }

    /// `repospanner --config <node1 config> args...`
    pub fn repospanner(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("repospanner")
    }

    /// Issues a user certificate `name` with extra `ca leaf` flags.
    pub fn add_user(&self, name: &str, flags: &[&str]) {
        let mut args = vec!["ca", "leaf", name];
        args.extend_from_slice(flags);
        let out = self.repospanner(&args);
        assert!(
            out.status.success(),
            "ca leaf: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A `git` command as `user` (None: no client certificate), in `cwd`.
    pub fn git(&self, user: Option<&str>, cwd: &Path, args: &[&str]) -> Output {
        let mut c = Command::new("git");
        c.args(args)
            .current_dir(cwd)
            .env_remove("GIT_SSL_CERT")
            .env_remove("GIT_SSL_KEY")
            .env("GIT_SSL_CAINFO", self.ca_dir().join("ca.crt"))
            .env("HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "Tester")
            .env("GIT_AUTHOR_EMAIL", "tester@example.com")
            .env("GIT_COMMITTER_NAME", "Tester")
            .env("GIT_COMMITTER_EMAIL", "tester@example.com");
        if let Some(u) = user {
            c.env("GIT_SSL_CERT", self.ca_dir().join(format!("{u}.crt")))
                .env("GIT_SSL_KEY", self.ca_dir().join(format!("{u}.key")));
        }
        c.output().expect("git")
    }

    /// Like [`Region::git`] as admin, asserting success; returns stdout.
    pub fn git_ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = self.git(Some("admin"), cwd, args);
        assert!(
            out.status.success(),
            "git {args:?} failed:\n{}\n--- node log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A raw HTTPS request as `user` (None: anonymous) to the user endpoint.
    pub fn http(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> repospanner::admin::Reply {
        self.http_to(&self.url(), user, method, path, headers, body)
    }

    pub fn http_to(
        &self,
        url: &str,
        user: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> repospanner::admin::Reply {
        let ca = std::fs::read(self.ca_dir().join("ca.crt")).expect("ca");
        let ident = user.map(|u| {
            (
                std::fs::read(self.ca_dir().join(format!("{u}.crt"))).expect("cert"),
                std::fs::read(self.ca_dir().join(format!("{u}.key"))).expect("key"),
            )
        });
        repospanner::admin::request_raw(
            url,
            &ca,
            ident.as_ref().map(|(c, k)| (&c[..], &k[..])),
            method,
            path,
            headers,
            body,
        )
        .expect("request")
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM);
    }
}

//! A running region of real `repospanner` processes on loopback, made the way operators
//! make one (`quickstart --no-start`, `serve --spawn`, `serve`), and the real `git`
//! client pointed at it with the region's CA and a user certificate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

/// `2 * nodes` free consecutive loopback ports (user, node of each node).
pub fn free_ports(nodes: u16) -> u16 {
    for _ in 0..200 {
        // Below the ephemeral range (32768-60999): no outgoing connection takes them.
        let p: u16 = 20000 + (rand_u32() % 12000) as u16;
        let held: Vec<_> = (0..2 * nodes)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)))
            .collect();
        if held.iter().all(Result::is_ok) {
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

/// A region of `nodes` nodes (node K is 1-based; the methods without `_of`/`_at`
/// address node 1).
pub struct Region {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub nodes: usize,
    children: Vec<Option<Child>>,
}

impl Region {
    pub fn qs(&self) -> PathBuf {
        self.dir.path().join("qs")
    }
    pub fn config(&self) -> PathBuf {
        self.config_of(1)
    }
    pub fn config_of(&self, k: usize) -> PathBuf {
        self.qs().join(format!("node{k}/config.yml"))
    }
    /// User endpoint of node `k`.
    pub fn url_of(&self, k: usize) -> String {
        format!("https://localhost:{}", self.port + 2 * (k as u16 - 1))
    }
    /// Node endpoint of node `k`.
    pub fn rpc_addr_of(&self, k: usize) -> String {
        format!("127.0.0.1:{}", self.port + 2 * (k as u16 - 1) + 1)
    }
    pub fn repo_url_of(&self, k: usize, repo: &str) -> String {
        format!("{}/repo/{repo}.git", self.url_of(k))
    }
    pub fn log_of(&self, k: usize) -> String {
        std::fs::read_to_string(self.qs().join(format!("node{k}/node.log"))).unwrap_or_default()
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
        self.log_of(1)
    }
    /// Node 1's log file.
    pub fn log_path(&self) -> PathBuf {
        self.qs().join("node1/node.log")
    }

    /// Writes the region, spawns and starts its node, waits until it answers.
    pub fn start() -> Region {
        Region::start_with("")
    }

    /// Like [`Region::start`], with `extra` YAML appended to the node's config.
    pub fn start_with(extra: &str) -> Region {
        Region::start_n(1, extra)
    }

    /// Writes a region of `nodes` nodes; spawns node 1, joins the others to it (each
    /// with `serve --joinnode`, as an operator would) and starts them all.
    pub fn start_n(nodes: usize, extra: &str) -> Region {
        Region::start_some(nodes, extra, nodes)
    }

    /// Writes a region of `nodes` nodes and brings up the first `running` of them as
    /// [`Region::start_n`] does; the others are left to the test.
    pub fn start_some(nodes: usize, extra: &str, running: usize) -> Region {
        Region::write(nodes, extra).launch(running)
    }

    /// Like [`Region::start_n`], node `k`'s config first passed through `edit(k, ..)`
    /// (for a section the quick start already writes, which appending cannot change).
    pub fn start_edited(nodes: usize, edit: impl Fn(usize, &str) -> String) -> Region {
        let r = Region::write(nodes, "");
        for k in 1..=nodes {
            let text = std::fs::read_to_string(r.config_of(k)).expect("config");
            std::fs::write(r.config_of(k), edit(k, &text)).expect("config");
        }
        r.launch(nodes)
    }

    /// Spawns node 1 and joins and starts nodes 2 to `running`.
    fn launch(mut self, running: usize) -> Region {
        let r = &mut self;
        let out = r.repospanner(&["serve", "--spawn"]);
        assert!(
            out.status.success(),
            "spawn: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        r.start_node();
        for k in 2..=running {
            r.join(k);
            r.start_node_at(k);
        }
        self
    }

    /// Writes the files of a region of `nodes` nodes (nothing runs).
    pub fn write(nodes: usize, extra: &str) -> Region {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_ports(nodes as u16);
        let qs = dir.path().join("qs");
        let out = Command::new(BIN)
            .args([
                "quickstart",
                "--no-start",
                "--nodes",
                &nodes.to_string(),
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
            for k in 1..=nodes {
                let config = qs.join(format!("node{k}/config.yml"));
                let mut text = std::fs::read_to_string(&config).expect("config");
                text.push_str(extra);
                std::fs::write(&config, text).expect("config");
            }
        }
        Region {
            dir,
            port,
            nodes,
            children: (0..nodes).map(|_| None).collect(),
        }
    }

    /// `serve --joinnode` for node `k` (through node 1), waiting until it is done.
    pub fn join(&self, k: usize) {
        let out = self.join_via(k, 1);
        assert!(
            out.status.success(),
            "join of node {k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `serve --joinnode https://<node via>` for node `k`; returns its output.
    pub fn join_via(&self, k: usize, via: usize) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.config_of(k))
            .args([
                "serve",
                "--joinnode",
                &format!("https://{}", self.rpc_addr_of(via)),
            ])
            .env("RUST_LOG", "info")
            .output()
            .expect("join")
    }

    pub fn start_node(&mut self) {
        self.start_node_at(1);
    }

    /// Starts node `k` (its state exists) and waits until it answers.
    pub fn start_node_at(&mut self, k: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.qs().join(format!("node{k}/node.log")))
            .expect("log");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(self.config_of(k))
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start node");
        self.children[k - 1] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let ca = std::fs::read(self.ca_dir().join("ca.crt")).expect("ca");
        while Instant::now() < deadline {
            if repospanner::admin::request(&self.url_of(k), &ca, None, "GET", "/", None)
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {k} did not start:\n{}", self.log_of(k));
    }

    /// Node 1's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid_of(1)
    }

    /// Node `k`'s process id.
    pub fn pid_of(&self, k: usize) -> Option<u32> {
        self.children[k - 1].as_ref().map(Child::id)
    }

    /// Stops node 1 with `signal` and waits for it.
    pub fn stop(&mut self, signal: i32) {
        self.stop_at(1, signal);
    }

    /// Stops node `k` with `signal` and waits for it.
    pub fn stop_at(&mut self, k: usize, signal: i32) {
        if let Some(mut c) = self.children[k - 1].take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, signal) };
            let _ = c.wait();
        }
    }

    /// Whether node `k` runs.
    pub fn running(&self, k: usize) -> bool {
        self.children[k - 1].is_some()
    }

    /// Whether node `k`'s process is alive (not exited, not a zombie).
    pub fn alive(&self, k: usize) -> bool {
        self.pid_of(k).is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_owned()))
                .is_some_and(|state| !state.starts_with('Z'))
        })
    }

    /// A field of node `k`'s `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, k: usize, field: &str) -> u64 {
        let pid = self.pid_of(k).expect("node running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("field")
    }

    /// `repospanner --config <node1 config> args...`
    pub fn repospanner(&self, args: &[&str]) -> Output {
        self.repospanner_at(1, args)
    }

    /// [`Region::repospanner`], asserting success; returns stdout.
    pub fn repospanner_ok(&self, args: &[&str]) -> String {
        let out = self.repospanner(args);
        assert!(
            out.status.success(),
            "repospanner {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `repospanner --config <node k config> args...`
    pub fn repospanner_at(&self, k: usize, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.config_of(k))
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
        self.git_client(user).run(cwd, args)
    }

    /// What runs `git` against this region as `user`, usable from other threads.
    pub fn git_client(&self, user: Option<&str>) -> GitClient {
        GitClient {
            home: self.dir.path().to_owned(),
            ca: self.ca_dir().join("ca.crt"),
            trust: repospanner::quickstart::trust_dir(&self.ca_dir()).expect("trust dir"),
            identity: user.map(|u| {
                (
                    self.ca_dir().join(format!("{u}.crt")),
                    self.ca_dir().join(format!("{u}.key")),
                )
            }),
        }
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
        self.try_http_to(url, user, method, path, headers, body)
            .expect("request")
    }

    /// [`Region::http_to`] that returns a failed or incomplete reply as an error.
    pub fn try_http_to(
        &self,
        url: &str,
        user: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> anyhow::Result<repospanner::admin::Reply> {
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
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        for k in 1..=self.nodes {
            self.stop_at(k, libc::SIGTERM);
        }
    }
}

/// Runs the real `git` against a region (CA, HOME and a client certificate set).
#[derive(Debug, Clone)]
pub struct GitClient {
    home: PathBuf,
    ca: PathBuf,
    /// Holds only the region's CA, as the quick start's env gives git (`GIT_SSL_CAPATH`).
    trust: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
}

impl GitClient {
    pub fn run(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut c = Command::new("git");
        c.args(args)
            .current_dir(cwd)
            .env_remove("GIT_SSL_CERT")
            .env_remove("GIT_SSL_KEY")
            .env("GIT_SSL_CAINFO", &self.ca)
            .env("GIT_SSL_CAPATH", &self.trust)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "Tester")
            .env("GIT_AUTHOR_EMAIL", "tester@example.com")
            .env("GIT_COMMITTER_NAME", "Tester")
            .env("GIT_COMMITTER_EMAIL", "tester@example.com");
        if let Some((cert, key)) = &self.identity {
            c.env("GIT_SSL_CERT", cert).env("GIT_SSL_KEY", key);
        }
        c.output().expect("git")
    }

    /// Like [`GitClient::run`], asserting success; returns stdout.
    pub fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = self.run(cwd, args);
        assert!(
            out.status.success(),
            "git {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

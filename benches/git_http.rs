//! `cargo bench --bench git_http`: a repoSpanner node and a 3-node region against
//! `git http-backend` behind nginx (fcgiwrap, client certificates), side by side in the
//! same run, with the real git client: small-push latency, push and clone of a generated
//! ~100 MiB repository (the region's clone from a node other than the one pushed to),
//! server CPU per clone; and pushes per second of 32 concurrent pushers to distinct
//! repositories, from a load generator that speaks the push protocol itself (so git's
//! start-up does not hide the server). Needs `nginx` and `fcgiwrap` (Debian packages);
//! without them it measures repoSpanner alone and says so.
//!
//! git runs as the quick start's env sets it up: it trusts the region's CA only
//! (`GIT_SSL_CAPATH`). Small pushes are also measured, alternating, from a git left to
//! load the whole system CA store as well, which Debian's git (libcurl with GnuTLS)
//! parses on every command: about 30 ms, the same for both servers.
//!
//! The big push and its clone are measured `BENCH_REPS` times (default 3, each into a
//! repository of its own), the servers taking turns (A B C A B C), and the median is
//! reported: single runs of them move by a third here. Server CPU per clone is counted
//! two ways. By process: the CPU time of the server's own processes (the nodes; nginx,
//! fcgiwrap, and the CGI processes `git http-backend`, `upload-pack` and `pack-objects`,
//! which a wrapper script records as it reaps them, because fcgiwrap's children are
//! reaped without accounting). And as machine busy time during the clone minus the git
//! client's own, which also counts what no process is charged for (the kernel's
//! loopback and softirq work, idle servers): a share both servers pay alike, which
//! pulls that ratio towards 1.
//!
//! `BENCH_MB=N` sets the size of the big repository (default 100), `BENCH_PUSHES=N` the
//! number of small pushes (default 20), `BENCH_PUSHERS=N` and `BENCH_SECONDS=N` the
//! concurrent-push load (default 32 pushers for 10 s). `BENCH_LOG=info` sets the nodes'
//! log level, `BENCH_KEEP=1` keeps the directory with their logs.
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

#[path = "support/corpus.rs"]
mod corpus;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_repospanner");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[derive(Clone)]
struct Env {
    dir: PathBuf,
    ca: PathBuf,
    /// git's CA path (`GIT_SSL_CAPATH`): the quick start's directory holding only the
    /// region's CA; None leaves libcurl's default, the whole system store.
    trust: Option<PathBuf>,
    cert: PathBuf,
    key: PathBuf,
}

impl Env {
    fn git(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("git");
        c.args(args)
            .current_dir(cwd)
            .env("HOME", &self.dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_SSL_CAINFO", &self.ca)
            .env_remove("GIT_SSL_CAPATH")
            .env("GIT_SSL_CERT", &self.cert)
            .env("GIT_SSL_KEY", &self.key)
            .env("GIT_AUTHOR_NAME", "b")
            .env("GIT_AUTHOR_EMAIL", "b@example.com")
            .env("GIT_COMMITTER_NAME", "b")
            .env("GIT_COMMITTER_EMAIL", "b@example.com")
            .env("GIT_AUTHOR_DATE", "1700000000 +0000")
            .env("GIT_COMMITTER_DATE", "1700000000 +0000");
        if let Some(t) = &self.trust {
            c.env("GIT_SSL_CAPATH", t);
        }
        c
    }
    fn git_ok(&self, cwd: &Path, args: &[&str]) -> Output {
        run(&mut self.git(cwd, args))
    }
}

/// CPU seconds the whole machine spent busy so far (user, nice, system, irq and softirq
/// time of every CPU, from /proc/stat).
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|i| f.get(*i).copied().unwrap_or(0))
        .sum::<u64>();
    busy as f64 / 100.0
}

/// CPU seconds of this process's reaped children (the git client and its helpers).
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills a rusage we own.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut r) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(r.ru_utime) + t(r.ru_stime)
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A deterministic repository: a tree of text files edited over many commits, plus
/// binary blobs, about `mb` MiB packed.
fn generate(env: &Env, w: &Path, mb: usize) {
    env.git_ok(
        w.parent().expect("parent"),
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    for d in 0..20 {
        std::fs::create_dir_all(w.join(format!("src/mod{d}"))).expect("mkdir");
    }
    std::fs::create_dir_all(w.join("assets")).expect("mkdir");
    let commits = 200;
    let per_commit = mb * (1 << 20) / commits;
    for c in 0..commits {
        for f in 0..10 {
            let path = w.join(format!("src/mod{}/file{}.txt", (c + f) % 20, f));
            let text: String = (0..300)
                .map(|l| format!("fn line_{l}() {{ /* commit {c} file {f} */ }}\n"))
                .collect();
            std::fs::write(path, text).expect("write");
        }
        std::fs::write(
            w.join(format!("assets/blob{}.bin", c % 50)),
            noise(c as u64, per_commit),
        )
        .expect("write");
        env.git_ok(w, &["add", "-A"]);
        env.git_ok(w, &["commit", "-qm", &format!("commit {c}")]);
        if c % 40 == 0 {
            env.git_ok(w, &["tag", "-a", &format!("v{c}"), "-m", "release"]);
        }
    }
    env.git_ok(w, &["gc", "-q"]);
}

struct Server {
    name: &'static str,
    url: String,
    /// Where clones are measured from (another node of a region; the baseline's
    /// recording CGI wrapper).
    clone_url: String,
    /// Where the corpus is pushed: the baseline's recording wrapper, so that its
    /// receive-pack's CPU is counted too; node 1 of ours.
    push_url: String,
    children: Vec<Child>,
    /// The baseline's CGI wrapper writes the CPU time of each request's processes here.
    cgi_cpu_log: Option<PathBuf>,
}

/// CPU seconds (user and system) of process `pid` so far, with its threads.
fn pid_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<u64>() as f64 / hz
}

/// Child processes of `pid` (nginx's workers).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1));
            ppid == Some(pid.to_string().as_str())
        })
        .collect()
}

impl Server {
    /// CPU seconds of the server's processes so far: its own, their children that
    /// live on (nginx's workers), and the reaped CGI processes its wrapper recorded.
    fn cpu(&self) -> f64 {
        let live: f64 = self
            .children
            .iter()
            .map(|c| pid_cpu(c.id()) + children_of(c.id()).into_iter().map(pid_cpu).sum::<f64>())
            .sum();
        let reaped: f64 = self.cgi_cpu_log.as_ref().map_or(0.0, |log| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        });
        live + reaped
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Server {
    /// The largest `field` over the server's own processes (the nodes), in MiB; `None`
    /// for the baseline, whose git processes live only for a request.
    fn rss_mib(&self, field: &str) -> Option<f64> {
        (self.cgi_cpu_log.is_none()).then(|| {
            self.children
                .iter()
                .map(|c| status_kib(c.id(), field))
                .max()
                .unwrap_or(0) as f64
                / 1024.0
        })
    }
}

/// What the many-object corpus costs one server: its push, a full clone, and an
/// incremental fetch after a small push.
#[derive(Default)]
struct CorpusFigures {
    push: Vec<f64>,
    push_cpu: Vec<f64>,
    clone: Vec<f64>,
    clone_cpu: Vec<f64>,
    /// From the start of the clone to the first pack byte (git's "Receiving objects").
    first_byte: Vec<f64>,
    fetch: Vec<f64>,
    fetch_cpu: Vec<f64>,
    /// The largest node's RSS before the push, its peak during it and after it (MiB).
    rss_before: Vec<f64>,
    rss_peak: Vec<f64>,
    rss_after: Vec<f64>,
}

/// Pushes the corpus into `corpus{rep}` on `s`, clones it (from another node of a
/// region), then pushes one small commit and fetches it into the clone.
fn measure_corpus(
    env: &Env,
    s: &Server,
    work: &Path,
    src: &Path,
    rep: usize,
    f: &mut CorpusFigures,
) {
    let url = format!("{}/repo/corpus{rep}.git", s.push_url);
    if let Some(r) = s.rss_mib("RssAnon") {
        f.rss_before.push(r);
    }
    let cpu0 = s.cpu();
    let t = Instant::now();
    env.git_ok(
        src,
        &[
            "push",
            "-q",
            &url,
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ],
    );
    f.push.push(t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(100));
    f.push_cpu.push(s.cpu() - cpu0);
    if let Some(peak) = s.rss_mib("VmHWM") {
        f.rss_peak.push(peak);
        // What a node keeps once it has given freed memory back (serve trims every
        // 5 s): the index and its bounded caches.
        std::thread::sleep(Duration::from_secs(6));
        f.rss_after.push(s.rss_mib("RssAnon").unwrap_or(f64::NAN));
    }
    // The full clone, with the time to its first pack byte.
    let target = work.join(format!("corpus-clone-{}-{rep}", s.name.replace(' ', "-")));
    let clone_url = format!("{}/repo/corpus{rep}.git", s.clone_url);
    let cpu0 = s.cpu();
    let t = Instant::now();
    let mut child = env
        .git(
            work,
            &[
                "clone",
                "--bare",
                "--progress",
                &clone_url,
                target.to_str().expect("path"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("clone");
    let mut err = child.stderr.take().expect("stderr");
    let watcher = std::thread::spawn(move || {
        let (mut seen, mut first, mut buf) = (Vec::new(), None, [0u8; 4096]);
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if first.is_none() && seen.windows(9).any(|w| w == b"Receiving") {
                first = Some(t.elapsed().as_secs_f64());
            }
        }
        (first, String::from_utf8_lossy(&seen).into_owned())
    });
    let status = child.wait().expect("clone");
    let (first, text) = watcher.join().expect("watcher");
    assert!(status.success(), "clone from {}: {text}", s.name);
    f.clone.push(t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(100));
    f.clone_cpu.push(s.cpu() - cpu0);
    f.first_byte.push(first.unwrap_or(f64::NAN));
    // One small commit pushed from objects the clone does not get (an object directory
    // of their own, the clone's as alternate), then fetched into the clone.
    let extra = work.join(format!("corpus-extra-{}-{rep}", s.name.replace(' ', "-")));
    std::fs::create_dir_all(&extra).expect("extra");
    let aside = |args: &[&str], input: Option<&str>| -> String {
        let mut c = env.git(&target, args);
        c.env("GIT_OBJECT_DIRECTORY", &extra)
            .env("GIT_ALTERNATE_OBJECT_DIRECTORIES", target.join("objects"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut p = c.spawn().expect("git");
        if let Some(i) = input {
            p.stdin
                .take()
                .expect("stdin")
                .write_all(i.as_bytes())
                .expect("stdin");
        }
        let out = p.wait_with_output().expect("git");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let blob = aside(&["hash-object", "-w", "--stdin"], Some("a small change\n"));
    let mut listing = aside(&["ls-tree", "master"], None);
    listing.push_str(&format!("\n100644 blob {blob}\tsmall-change-{rep}.txt\n"));
    let tree = aside(&["mktree"], Some(&listing));
    let commit = aside(
        &["commit-tree", &tree, "-p", "master", "-m", "a small change"],
        None,
    );
    aside(
        &["push", "-q", &url, &format!("{commit}:refs/heads/master")],
        None,
    );
    let cpu0 = s.cpu();
    let t = Instant::now();
    env.git_ok(&target, &["fetch", "-q", &clone_url, "master"]);
    f.fetch.push(t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(100));
    f.fetch_cpu.push(s.cpu() - cpu0);
    let _ = std::fs::remove_dir_all(&target);
    let _ = std::fs::remove_dir_all(&extra);
}

/// Repositories the concurrent pushers write to.
const PUSH_REPOS: usize = 32;

/// How many times the big push and its clone are measured (`BENCH_REPS`).
fn reps() -> usize {
    std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// How many times the corpus is pushed and cloned (`BENCH_CORPUS_REPS`, default 1).
fn corpus_reps() -> usize {
    std::env::var("BENCH_CORPUS_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Whether section `name` runs (`BENCH_ONLY=corpus,health,compaction,bytes,rate`; all by
/// default).
fn section(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |v| v.split(',').any(|s| s.trim() == name))
}

/// Every repository a server needs: `small`, `hooked` (`small` with a trivial
/// pre-receive hook), `big0..`, `corpus0..` and the pushers' `p0..`.
fn repo_names() -> impl Iterator<Item = String> {
    ["small".to_string(), "hooked".to_string()]
        .into_iter()
        .chain((0..reps()).map(|i| format!("big{i}")))
        .chain((0..corpus_reps()).map(|i| format!("corpus{i}")))
        .chain((0..PUSH_REPOS).map(|i| format!("p{i}")))
}

/// A region of `nodes` nodes made as operators do (spawn, join, serve); the server's
/// CPU counts every node.
fn start_region(dir: &Path, port: u16, nodes: usize) -> (Server, Env) {
    start_region_with(dir, port, nodes, str::to_owned)
}

/// [`start_region`], each node's config passed through `edit` before the region is
/// spawned.
fn start_region_with(
    dir: &Path,
    port: u16,
    nodes: usize,
    edit: impl Fn(&str) -> String,
) -> (Server, Env) {
    let qs = dir.join("qs");
    run(Command::new(BIN)
        .args([
            "quickstart",
            "--no-start",
            "--nodes",
            &nodes.to_string(),
            "--port",
            &port.to_string(),
            "--dir",
        ])
        .arg(&qs));
    let config = |k: usize| qs.join(format!("node{k}/config.yml"));
    for k in 1..=nodes {
        let text = std::fs::read_to_string(config(k)).expect("config");
        std::fs::write(config(k), edit(&text)).expect("config");
    }
    run(Command::new(BIN)
        .arg("--config")
        .arg(config(1))
        .args(["serve", "--spawn"]));
    let env = Env {
        dir: dir.to_owned(),
        ca: qs.join("ca/ca.crt"),
        trust: Some(qs.join("ca/trust")),
        cert: qs.join("ca/admin.crt"),
        key: qs.join("ca/admin.key"),
    };
    // Killed on drop, also if starting a later node fails.
    let mut server = Server {
        name: if nodes > 1 {
            "3-node region"
        } else {
            "repospanner"
        },
        url: format!("https://localhost:{port}"),
        clone_url: format!(
            "https://localhost:{}",
            if nodes > 1 { port + 2 } else { port }
        ),
        push_url: format!("https://localhost:{port}"),
        children: Vec::new(),
        cgi_cpu_log: None,
    };
    for k in 1..=nodes {
        if k > 1 {
            run(Command::new(BIN)
                .arg("--config")
                .arg(config(k))
                .args([
                    "serve",
                    "--joinnode",
                    &format!("https://127.0.0.1:{}", port + 1),
                ])
                .env("RUST_LOG", "warn"));
        }
        let log = std::fs::File::create(qs.join(format!("node{k}/node.log"))).expect("log");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config(k))
            .arg("serve")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("node");
        server.children.push(child);
        let url = format!("https://localhost:{}", port + 2 * (k as u16 - 1));
        let deadline = Instant::now() + Duration::from_secs(30);
        while env
            .git(dir, &["ls-remote", &format!("{url}/repo/test.git")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "node {k} did not start:\n{}",
                std::fs::read_to_string(qs.join(format!("node{k}/node.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for r in repo_names() {
        run(Command::new(BIN)
            .arg("--config")
            .arg(config(1))
            .args(["admin", "repo", "create", &r])
            .env("RUST_LOG", "warn"));
    }
    let hook = dir.join("trivial-hook");
    std::fs::write(&hook, TRIVIAL_HOOK).expect("hook");
    run(Command::new(BIN)
        .arg("--config")
        .arg(config(1))
        .args(["admin", "repo", "edit", "hooked", "--hook-pre-receive"])
        .arg(&hook)
        .env("RUST_LOG", "warn"));
    (server, env)
}

fn start_nginx(dir: &Path, env: &Env, port: u16) -> Option<Server> {
    if Command::new("nginx").arg("-v").output().is_err()
        || Command::new("fcgiwrap").arg("-h").output().is_err()
    {
        return None;
    }
    let root = dir.join("nginx");
    let repos = root.join("repos");
    std::fs::create_dir_all(root.join("logs")).ok()?;
    for r in repo_names() {
        let p = repos.join(format!("{r}.git"));
        env.git_ok(dir, &["init", "-q", "--bare", p.to_str()?]);
        env.git_ok(&p, &["config", "http.receivepack", "true"]);
        if r == "hooked" {
            let hook = p.join("hooks/pre-receive");
            std::fs::write(&hook, TRIVIAL_HOOK).ok()?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).ok()?;
        }
    }
    let exec_path =
        String::from_utf8_lossy(&Command::new("git").arg("--exec-path").output().ok()?.stdout)
            .trim()
            .to_owned();
    // For clones only (their own location below, so pushes pay no extra process): runs
    // git http-backend as its child and records the CPU time of it and its children
    // (upload-pack, pack-objects), in seconds. fcgiwrap leaves SIGCHLD ignored, which
    // makes every level below reap without accounting; the wrapper restores it first.
    let cgi_cpu_log = root.join("cgi-cpu.log");
    let wrapper = root.join("measured-http-backend");
    std::fs::write(
        &wrapper,
        format!(
            "#!/usr/bin/perl\n$SIG{{CHLD}} = 'DEFAULT';\n\
             my $rc = system('{exec_path}/git-http-backend');\nmy @t = times;\n\
             open(my $f, '>>', '{log}') or die;\nprint $f \"$t[2] $t[3]\\n\";\nclose $f;\n\
             exit($rc >> 8);\n",
            log = cgi_cpu_log.display()
        ),
    )
    .ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).ok()?;
    }
    let sock = root.join("fcgi.sock");
    let fcgi = Command::new("fcgiwrap")
        .arg("-s")
        .arg(format!("unix:{}", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let qs = dir.join("qs/ca");
    let conf = format!(
        r#"daemon off;
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/logs/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_max_body_size 0;
  client_body_temp_path {root}/body;
  fastcgi_temp_path {root}/fastcgi;
  proxy_temp_path {root}/proxy;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name localhost;
    ssl_certificate {qs}/node1.local.crt;
    ssl_certificate_key {qs}/node1.local.key;
    ssl_client_certificate {qs}/ca.crt;
    ssl_verify_client on;
    location ~ ^/repo(/.*)$ {{
      fastcgi_pass unix:{sock};
      fastcgi_buffering off;
      fastcgi_request_buffering off;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {exec_path}/git-http-backend;
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param GIT_PROJECT_ROOT {repos};
      fastcgi_param PATH_INFO $1;
      fastcgi_param REMOTE_USER $ssl_client_s_dn;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
    }}
    location ~ ^/measured/repo(/.*)$ {{
      fastcgi_pass unix:{sock};
      fastcgi_buffering off;
      fastcgi_request_buffering off;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {wrapper};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param GIT_PROJECT_ROOT {repos};
      fastcgi_param PATH_INFO $1;
      fastcgi_param REMOTE_USER $ssl_client_s_dn;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
    }}
  }}
}}
"#,
        root = root.display(),
        qs = qs.display(),
        sock = sock.display(),
        repos = repos.display(),
        wrapper = wrapper.display(),
    );
    let conf_path = root.join("nginx.conf");
    std::fs::write(&conf_path, conf).ok()?;
    let nginx_err = std::fs::File::create(root.join("logs/stderr.log")).ok()?;
    let nginx = Command::new("nginx")
        .arg("-e")
        .arg(root.join("logs/error.log"))
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::from(nginx_err))
        .spawn()
        .ok()?;
    let url = format!("https://localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while env
        .git(dir, &["ls-remote", &format!("{url}/repo/small.git")])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            eprintln!(
                "nginx baseline did not start:\n{}\n{}",
                std::fs::read_to_string(root.join("logs/stderr.log")).unwrap_or_default(),
                std::fs::read_to_string(root.join("logs/error.log")).unwrap_or_default()
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Server {
        name: "git http-backend",
        clone_url: format!("{url}/measured"),
        push_url: format!("{url}/measured"),
        url,
        children: vec![nginx, fcgi],
        cgi_cpu_log: Some(cgi_cpu_log),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() - 1) as f64 * 0.99) as usize]
}

/// What a push's hook costs, at least: a pre-receive hook that reads its input.
const TRIVIAL_HOOK: &str = "#!/bin/sh\ncat >/dev/null\n";

struct Figures {
    small_p50: f64,
    /// Small pushes to a repository with [`TRIVIAL_HOOK`].
    hooked_p50: f64,
    small_p99: f64,
    /// The same pushes from a git that also loads the system CA store.
    small_sys_p50: f64,
    big_push: Vec<f64>,
    clone: Vec<f64>,
    /// Server CPU per clone by process accounting.
    clone_cpu: Vec<f64>,
    /// Machine busy time per clone minus the client's.
    clone_busy: Vec<f64>,
}

/// Small-push latency: git as the quick start's env sets it up (trusting only the
/// region's CA), alternating with git left to load the system CA store too.
fn measure(env: &Env, s: &Server, work: &Path, pushes: usize) -> Figures {
    let sys = Env {
        trust: None,
        ..env.clone()
    };
    let small = work.join(format!("small-{}", s.name.replace(' ', "-")));
    env.git_ok(
        work,
        &["init", "-q", "-b", "master", small.to_str().expect("path")],
    );
    let url_small = format!("{}/repo/small.git", s.url);
    let (mut lat, mut lat_sys) = (Vec::new(), Vec::new());
    for i in 0..2 * pushes {
        std::fs::write(small.join("f.txt"), format!("change {i}\n")).expect("write");
        env.git_ok(&small, &["add", "-A"]);
        env.git_ok(&small, &["commit", "-qm", &format!("small {i}")]);
        let (who, into) = if i % 2 == 0 {
            (env, &mut lat)
        } else {
            (&sys, &mut lat_sys)
        };
        let t = Instant::now();
        who.git_ok(&small, &["push", "-q", &url_small, "master"]);
        into.push(t.elapsed().as_secs_f64());
    }
    let hooked = work.join(format!("hooked-{}", s.name.replace(' ', "-")));
    env.git_ok(
        work,
        &["init", "-q", "-b", "master", hooked.to_str().expect("path")],
    );
    let url_hooked = format!("{}/repo/hooked.git", s.url);
    let mut lat_hooked = Vec::new();
    for i in 0..pushes {
        std::fs::write(hooked.join("f.txt"), format!("change {i}\n")).expect("write");
        env.git_ok(&hooked, &["add", "-A"]);
        env.git_ok(&hooked, &["commit", "-qm", &format!("hooked {i}")]);
        let t = Instant::now();
        env.git_ok(&hooked, &["push", "-q", &url_hooked, "master"]);
        lat_hooked.push(t.elapsed().as_secs_f64());
    }
    Figures {
        hooked_p50: median(lat_hooked),
        small_p50: median(lat.clone()),
        small_p99: p99(lat),
        small_sys_p50: median(lat_sys),
        big_push: Vec::new(),
        clone: Vec::new(),
        clone_cpu: Vec::new(),
        clone_busy: Vec::new(),
    }
}

/// Push of the big repository into `big{rep}` and its clone (from another node of a
/// region), with the server's CPU for the clone.
fn measure_big(env: &Env, s: &Server, work: &Path, big: &Path, rep: usize, f: &mut Figures) {
    let url_big = format!("{}/repo/big{rep}.git", s.url);
    let t = Instant::now();
    env.git_ok(
        big,
        &[
            "push",
            "-q",
            &url_big,
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ],
    );
    f.big_push.push(t.elapsed().as_secs_f64());
    let target = work.join(format!("clone-{}-{rep}", s.name.replace(' ', "-")));
    let url_big = format!("{}/repo/big{rep}.git", s.clone_url);
    // The server's CPU, by its processes and by the machine's busy time minus the
    // client's (see the module's doc).
    let (server0, machine0, client0) = (s.cpu(), machine_cpu(), children_cpu());
    let t = Instant::now();
    env.git_ok(
        work,
        &[
            "clone",
            "-q",
            "--bare",
            &url_big,
            target.to_str().expect("path"),
        ],
    );
    f.clone.push(t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(100)); // the server's last work after the client
    f.clone_cpu.push(s.cpu() - server0);
    f.clone_busy
        .push((machine_cpu() - machine0) - (children_cpu() - client0));
    let _ = std::fs::remove_dir_all(&target);
}

/// One commit (blob, tree, commit) as a pack, built by hand: what a pusher sends.
fn one_commit_pack(content: &[u8], parent: Option<&str>, seq: usize) -> (Vec<u8>, String) {
    use sha1::Digest;
    use std::io::Write;
    fn id(kind: &str, body: &[u8]) -> [u8; 20] {
        let mut h = sha1::Sha1::new();
        h.update(format!("{kind} {}\0", body.len()).as_bytes());
        h.update(body);
        h.finalize().into()
    }
    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
    let blob = content.to_vec();
    let blob_id = id("blob", &blob);
    let mut tree = b"100644 f.txt\0".to_vec();
    tree.extend_from_slice(&blob_id);
    let tree_id = id("tree", &tree);
    let mut commit = format!("tree {}\n", hex(&tree_id));
    if let Some(p) = parent {
        commit.push_str(&format!("parent {p}\n"));
    }
    commit.push_str(&format!(
        "author b <b@example.com> {} +0000\ncommitter b <b@example.com> {} +0000\n\npush {seq}\n",
        1_700_000_000 + seq,
        1_700_000_000 + seq
    ));
    let commit = commit.into_bytes();
    let commit_id = id("commit", &commit);
    let mut pack = b"PACK".to_vec();
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&3u32.to_be_bytes());
    for (kind, body) in [(3u8, &blob), (2, &tree), (1, &commit)] {
        let mut size = body.len();
        let mut byte = (kind << 4) | (size & 15) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(byte);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(body).expect("deflate");
        pack.extend_from_slice(&z.finish().expect("deflate"));
    }
    let trailer: [u8; 20] = sha1::Sha1::digest(&pack).into();
    pack.extend_from_slice(&trailer);
    (pack, hex(&commit_id))
}

/// A receive-pack request body updating refs/heads/master from `old` to `new`.
fn push_body(old: &str, new: &str, pack: &[u8]) -> Vec<u8> {
    let line = format!("{old} {new} refs/heads/master\0report-status\n");
    let mut b = format!("{:04x}{line}0000", line.len() + 4).into_bytes();
    b.extend_from_slice(pack);
    b
}

/// Pushes per second of `pushers` threads, each pushing one commit at a time to its own
/// repository for `secs` seconds, speaking the push protocol directly.
fn push_rate(env: &Env, s: &Server, pushers: usize, secs: u64) -> (f64, usize) {
    let ca = std::fs::read(&env.ca).expect("ca");
    let cert = std::fs::read(&env.cert).expect("cert");
    let key = std::fs::read(&env.key).expect("key");
    let end = Instant::now() + Duration::from_secs(secs);
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let done: usize = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..pushers)
            .map(|i| {
                let (ca, cert, key, failures) = (&ca, &cert, &key, &failures);
                let url = s.url.clone();
                sc.spawn(move || {
                    let mut old = "0".repeat(40);
                    let mut n = 0;
                    let mut seq = 0;
                    while Instant::now() < end {
                        seq += 1;
                        let content = format!("{} pusher {i} push {seq}\n", s.name);
                        let parent = (old != "0".repeat(40)).then_some(old.as_str());
                        let (pack, new) = one_commit_pack(content.as_bytes(), parent, seq);
                        let body = push_body(&old, &new, &pack);
                        let r = repospanner::admin::request_raw(
                            &url,
                            ca,
                            Some((cert, key)),
                            "POST",
                            &format!("/repo/p{}.git/git-receive-pack", i % PUSH_REPOS),
                            &[("content-type", "application/x-git-receive-pack-request")],
                            Some(&body),
                        );
                        match r {
                            Ok(r)
                                if r.status == 200
                                    && String::from_utf8_lossy(&r.body)
                                        .contains("ok refs/heads/master") =>
                            {
                                old = new;
                                n += 1;
                            }
                            _ => {
                                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    (
        done as f64 / secs as f64,
        failures.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Prints one figure for both of ours and the baseline, with ratios.
type Row = dyn Fn(&str, f64, f64, Option<f64>, &str);

/// The many-object corpus: generated (see `support/corpus.rs`) or `BENCH_CORPUS`, a
/// bare repository; pushed to each server, cloned, fetched into; costs per object.
fn corpus_section(
    env: &Env,
    env3: &Env,
    node: &Server,
    region: &Server,
    nginx: Option<&Server>,
    work: &Path,
    row: &Row,
) {
    let var = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let t = Instant::now();
    let (src, what) = match std::env::var_os("BENCH_CORPUS") {
        Some(p) => (PathBuf::from(&p), format!("{}", Path::new(&p).display())),
        None => {
            let shape = corpus::Shape {
                commits: var("BENCH_COMMITS", 50_000),
                files: var("BENCH_FILES", 5_000),
                tags: var("BENCH_TAGS", 1_000),
            };
            let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-corpus");
            (
                corpus::corpus(&cache, shape),
                format!(
                    "generated: {} commits over {} files, {} tags",
                    shape.commits, shape.files, shape.tags
                ),
            )
        }
    };
    let objects = corpus::objects(&src);
    let refs = String::from_utf8_lossy(
        &env.git_ok(
            &src,
            &["for-each-ref", "--format=x", "refs/heads", "refs/tags"],
        )
        .stdout,
    )
    .lines()
    .count();
    println!(
        "### many objects: {what}; {objects} objects in {refs} heads and tags (ready in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let mut theirs = nginx.map(|_| CorpusFigures::default());
    let (mut one, mut three) = (CorpusFigures::default(), CorpusFigures::default());
    for rep in 0..corpus_reps() {
        if let (Some(n), Some(f)) = (nginx, theirs.as_mut()) {
            measure_corpus(env, n, work, &src, rep, f);
        }
        measure_corpus(env, node, work, &src, rep, &mut one);
        measure_corpus(env3, region, work, &src, rep, &mut three);
    }
    let m = |v: &Vec<f64>| median(v.clone());
    let base = |f: fn(&CorpusFigures) -> &Vec<f64>| theirs.as_ref().map(|t| median(f(t).clone()));
    row(
        "corpus push",
        m(&one.push),
        m(&three.push),
        base(|t| &t.push),
        "s",
    );
    row(
        "server CPU per push",
        m(&one.push_cpu),
        m(&three.push_cpu),
        base(|t| &t.push_cpu),
        "s",
    );
    row(
        "corpus clone (3 nodes: node 2)",
        m(&one.clone),
        m(&three.clone),
        base(|t| &t.clone),
        "s",
    );
    row(
        "server CPU per clone",
        m(&one.clone_cpu),
        m(&three.clone_cpu),
        base(|t| &t.clone_cpu),
        "s",
    );
    row(
        "time to first pack byte",
        m(&one.first_byte),
        m(&three.first_byte),
        base(|t| &t.first_byte),
        "s",
    );
    row(
        "fetch after a small push",
        m(&one.fetch),
        m(&three.fetch),
        base(|t| &t.fetch),
        "s",
    );
    row(
        "server CPU per such fetch",
        m(&one.fetch_cpu),
        m(&three.fetch_cpu),
        base(|t| &t.fetch_cpu),
        "s",
    );
    let per = |v: &Vec<f64>| m(v) / objects.max(1) as f64 * 1e6;
    row(
        "push per object",
        per(&one.push),
        per(&three.push),
        theirs.as_ref().map(|t| per(&t.push)),
        "us",
    );
    row(
        "clone CPU per object",
        per(&one.clone_cpu),
        per(&three.clone_cpu),
        theirs.as_ref().map(|t| per(&t.clone_cpu)),
        "us",
    );
    for (what, f) in [("one node", &one), ("3 nodes (largest node)", &three)] {
        println!(
            "node RSS, {what}: {:.0} MiB before the push (RssAnon), peak {:.0} MiB (VmHWM: with the spool file's pages), {:.0} MiB 6 s after (RssAnon)",
            m(&f.rss_before),
            m(&f.rss_peak),
            m(&f.rss_after)
        );
    }
}

/// Small pushes and a clone of one node, with its compaction idle and then busy (a
/// repository deleted whose objects share segments with the one cloned), at the
/// default rate: what compaction costs the work beside it.
/// One GET over a kept-alive plain HTTP connection: the status, once the whole body
/// (its Content-Length) is read.
fn keepalive_get(conn: &mut std::io::BufReader<std::net::TcpStream>, path: &str) -> u16 {
    use std::io::{BufRead, Read, Write};
    write!(conn.get_mut(), "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").expect("send");
    let mut line = String::new();
    conn.read_line(&mut line).expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).expect("body");
    status
}

/// `/livez`, `/readyz` and `/metrics` latency on the plain listener of a one-node
/// region (two shards: `/readyz` and `/metrics` gather from both), over one kept-alive
/// connection: what a load balancer's or a scraper's poll costs the node.
fn health_section(dir: &Path, port: u16) {
    let metrics_port = port + 5;
    let (_node, _env) = start_region_with(dir, port, 1, |c| {
        c.replacen(
            "listen:\n",
            &format!("listen:\n  metrics: 127.0.0.1:{metrics_port}\n"),
            1,
        )
    });
    let stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut conn = std::io::BufReader::new(stream);
    for path in ["/livez", "/readyz", "/metrics"] {
        let mut times = Vec::new();
        for i in 0..2100 {
            let t = Instant::now();
            let status = keepalive_get(&mut conn, path);
            assert_eq!(status, 200, "{path}");
            // The first hundred warm the connection and the caches.
            if i >= 100 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        println!(
            "{path:<34} p50 {:.3} ms | p99 {:.3} ms (2000 requests on one kept-alive connection, plain listener, client included)",
            median(times.clone()),
            p99(times)
        );
    }
}

fn compaction_section(dir: &Path, port: u16, pushes: usize) {
    let (node, env) = start_region_with(dir, port, 1, |c| {
        c.replace(
            "storage:\n",
            // One shard: both repositories in the same segments.
            "storage:\n  shards: 1\n  segment_mib: 8\n  compaction:\n    interval_seconds: 1\n    live_share_max: 0.9\n",
        )
    });
    let config = dir.join("qs/node1/config.yml");
    let admin = |args: &[&str]| {
        run(Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("admin")
            .args(args)
            .env("RUST_LOG", "warn"))
    };
    for r in ["keep", "junk"] {
        admin(&["repo", "create", r]);
    }
    // Two repositories written in turn, so that every segment holds both.
    let mut trees = Vec::new();
    for r in ["keep", "junk"] {
        let w = dir.join(format!("w-{r}"));
        env.git_ok(
            dir,
            &["init", "-q", "-b", "master", w.to_str().expect("path")],
        );
        trees.push((r, w));
    }
    for i in 0..40u64 {
        for (r, w) in &trees {
            std::fs::write(
                w.join(format!("b{i}")),
                noise(i * 2 + u64::from(*r == "junk"), 2 << 20),
            )
            .expect("write");
            env.git_ok(w, &["add", "-A"]);
            env.git_ok(w, &["commit", "-qm", &format!("{i}")]);
            env.git_ok(
                w,
                &[
                    "push",
                    "-q",
                    &format!("{}/repo/{r}.git", node.url),
                    "master",
                ],
            );
        }
    }
    // (live bytes copied, bytes of files deleted) by compaction so far.
    let compacted = || -> (u64, u64) {
        let out = admin(&["--json", "nodestatus"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let sum = |k: &str| -> u64 {
            v["Shards"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s["Compaction"][k].as_u64()).sum())
                .unwrap_or(0)
        };
        (sum("MovedBytes"), sum("FreedBytes"))
    };
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("work");
    let clone_wall = |n: usize| {
        let into = work.join(format!("clone-{n}"));
        let t = Instant::now();
        env.git_ok(
            &work,
            &[
                "clone",
                "-q",
                &format!("{}/repo/keep.git", node.url),
                into.to_str().expect("path"),
            ],
        );
        let secs = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(into);
        secs
    };
    let idle = measure(&env, &node, &work, pushes);
    let idle_clone = clone_wall(0);
    let before = compacted();
    admin(&["repo", "delete", "junk"]);
    std::thread::sleep(Duration::from_millis(1500));
    let busy_clone = clone_wall(1);
    let busy = measure(&env, &node, &work, pushes);
    let after = compacted();
    let (moved, freed) = (after.0 - before.0, after.1 - before.1);
    println!("## compaction beside work (one node, 8 MiB segments, the default 32 MiB/s): 2 x 80 MiB written in turn, one repository deleted");
    println!(
        "small push p99 {:>8.3} s with compaction busy, {:>8.3} s idle ({:.2}x); p50 {:.3} s / {:.3} s",
        busy.small_p99,
        idle.small_p99,
        busy.small_p99 / idle.small_p99,
        busy.small_p50,
        idle.small_p50
    );
    println!(
        "clone of the 80 MiB left {:>8.3} s with compaction busy, {:>8.3} s idle ({:.2}x); compaction moved {} MiB and freed {} MiB meanwhile",
        busy_clone,
        idle_clone,
        busy_clone / idle_clone,
        moved >> 20,
        freed >> 20
    );
    drop(node);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let var = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mb = var("BENCH_MB", 100);
    let pushes = var("BENCH_PUSHES", 20);
    let pushers = var("BENCH_PUSHERS", 32);
    let secs = var("BENCH_SECONDS", 10) as u64;
    let dir = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!(
            "keeping {} (node logs in */qs/nodeK/node.log)",
            dir.path().display()
        );
    }
    // Below the ephemeral range (32768-60999), so no outgoing connection holds a port.
    let base_port = 20000 + (std::process::id() % 12000) as u16;
    let one_dir = dir.path().join("one");
    let three_dir = dir.path().join("three");
    std::fs::create_dir_all(&one_dir).expect("dir");
    std::fs::create_dir_all(&three_dir).expect("dir");
    let (node, env) = start_region(&one_dir, base_port, 1);
    let (region, env3) = start_region(&three_dir, base_port + 20, 3);
    let nginx = start_nginx(&one_dir, &env, base_port + 10);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    let row = |what: &str, a: f64, b: f64, base: Option<f64>, unit: &str| {
        match base {
        Some(c) => println!(
            "{what:<34} one node {a:>8.3} {unit} ({:.2}x) | 3 nodes {b:>8.3} {unit} ({:.2}x) | http-backend {c:>8.3} {unit}",
            a / c,
            b / c
        ),
        None => println!(
            "{what:<34} one node {a:>8.3} {unit} | 3 nodes {b:>8.3} {unit} | (no baseline: install nginx and fcgiwrap)"
        ),
    }
    };
    let m = |v: &Vec<f64>| median(v.clone());
    println!("## git over HTTPS with client certificates: repoSpanner-rs (one node; a 3-node region) vs git http-backend behind nginx (same machine, same run)");
    if section("corpus") {
        corpus_section(&env, &env3, &node, &region, nginx.as_ref(), &work, &row);
    }
    if section("health") {
        let d = dir.path().join("health");
        std::fs::create_dir_all(&d).expect("dir");
        health_section(&d, base_port + 60);
    }
    if section("compaction") {
        let d = dir.path().join("compaction");
        std::fs::create_dir_all(&d).expect("dir");
        compaction_section(&d, base_port + 40, pushes);
    }
    if !section("bytes") && !section("rate") {
        if std::env::var_os("BENCH_KEEP").is_some() {
            drop((node, region, nginx));
            let _ = dir.keep();
        }
        return;
    }
    let big = work.join("big-src");
    let t = Instant::now();
    generate(&env, &big, mb);
    let pack_mb: u64 = std::fs::read_dir(big.join(".git/objects/pack"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
                >> 20
        })
        .unwrap_or(0);
    println!(
        "generated a repository of 200 commits, {pack_mb} MiB packed, in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut theirs = nginx.as_ref().map(|n| measure(&env, n, &work, pushes));
    let mut one = measure(&env, &node, &work, pushes);
    let mut three = measure(&env3, &region, &work, pushes);
    for rep in 0..reps() {
        if let (Some(n), Some(f)) = (nginx.as_ref(), theirs.as_mut()) {
            measure_big(&env, n, &work, &big, rep, f);
        }
        measure_big(&env, &node, &work, &big, rep, &mut one);
        measure_big(&env3, &region, &work, &big, rep, &mut three);
    }
    let rate_theirs = nginx.as_ref().map(|n| push_rate(&env, n, pushers, secs));
    let rate_one = push_rate(&env, &node, pushers, secs);
    let rate_three = push_rate(&env3, &region, pushers, secs);
    let base = |f: fn(&Figures) -> f64| theirs.as_ref().map(f);
    row(
        "small push p50",
        one.small_p50,
        three.small_p50,
        base(|t| t.small_p50),
        "s",
    );
    row(
        "small push p50, trivial pre-receive hook",
        one.hooked_p50,
        three.hooked_p50,
        base(|t| t.hooked_p50),
        "s",
    );
    row(
        "small push p99",
        one.small_p99,
        three.small_p99,
        base(|t| t.small_p99),
        "s",
    );
    row(
        "small push p50, system CAs",
        one.small_sys_p50,
        three.small_sys_p50,
        base(|t| t.small_sys_p50),
        "s",
    );
    row(
        &format!("push of {pack_mb} MiB repository"),
        m(&one.big_push),
        m(&three.big_push),
        base(|t| median(t.big_push.clone())),
        "s",
    );
    row(
        "clone of it (3 nodes: node 2)",
        m(&one.clone),
        m(&three.clone),
        base(|t| median(t.clone.clone())),
        "s",
    );
    row(
        "server CPU per clone",
        m(&one.clone_cpu),
        m(&three.clone_cpu),
        base(|t| median(t.clone_cpu.clone())),
        "s",
    );
    row(
        "machine busy per clone",
        m(&one.clone_busy),
        m(&three.clone_busy),
        base(|t| median(t.clone_busy.clone())),
        "s",
    );
    let all = |v: &Vec<f64>| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "(big push and clone: median of {} runs, servers taking turns; push runs: one node {} | 3 nodes {} | http-backend {})",
        reps(),
        all(&one.big_push),
        all(&three.big_push),
        theirs.as_ref().map_or("-".into(), |t| all(&t.big_push))
    );
    row(
        &format!("pushes/s, {pushers} pushers"),
        rate_one.0,
        rate_three.0,
        rate_theirs.map(|r| r.0),
        "/s",
    );
    println!(
        "(failed pushes during the load: one node {}, 3 nodes {}, http-backend {})",
        rate_one.1,
        rate_three.1,
        rate_theirs.map_or("-".to_string(), |r| r.1.to_string())
    );
    println!("(ratio = repospanner / baseline: below 1 is better for times, above 1 for pushes/s; 3-node CPU counts all three nodes; server CPU is of the server's processes, machine busy is all CPU but the client's)");
    if std::env::var_os("BENCH_KEEP").is_some() {
        drop((node, region, nginx));
        let _ = dir.keep();
    }
}

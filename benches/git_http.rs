//! `cargo bench --bench git_http`: a repoSpanner node against `git http-backend` behind
//! nginx (fcgiwrap, client certificates), side by side in the same run, with the real
//! git client: small-push latency, push and clone of a generated ~100 MiB repository,
//! and server CPU per clone. Needs `nginx` and `fcgiwrap` (Debian packages); without
//! them it measures the node alone and says so.
//!
//! `BENCH_MB=N` sets the size of the big repository (default 100), `BENCH_PUSHES=N` the
//! number of small pushes (default 20).

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

struct Env {
    dir: PathBuf,
    ca: PathBuf,
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
            .env("GIT_SSL_CERT", &self.cert)
            .env("GIT_SSL_KEY", &self.key)
            .env("GIT_AUTHOR_NAME", "b")
            .env("GIT_AUTHOR_EMAIL", "b@example.com")
            .env("GIT_COMMITTER_NAME", "b")
            .env("GIT_COMMITTER_EMAIL", "b@example.com")
            .env("GIT_AUTHOR_DATE", "1700000000 +0000")
            .env("GIT_COMMITTER_DATE", "1700000000 +0000");
        c
    }
    fn git_ok(&self, cwd: &Path, args: &[&str]) -> Output {
        run(&mut self.git(cwd, args))
    }
}

/// CPU seconds used by `pid` and its reaped children.
fn cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // Fields after the command name, from `state`: utime, stime, cutime, cstime are
    // the 12th to 15th (proc(5)), in clock ticks (USER_HZ, 100 on Linux).
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12) + tick(13) + tick(14)) as f64 / 100.0
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
    /// Processes whose CPU is the server's.
    pids: Vec<u32>,
    children: Vec<Child>,
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

fn start_node(dir: &Path, port: u16) -> (Server, Env) {
    let qs = dir.join("qs");
    run(Command::new(BIN)
        .args([
            "quickstart",
            "--no-start",
            "--port",
            &port.to_string(),
            "--dir",
        ])
        .arg(&qs));
    let config = qs.join("node1/config.yml");
    run(Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--spawn"]));
    let log = std::fs::File::create(qs.join("node1/node.log")).expect("log");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("node");
    let env = Env {
        dir: dir.to_owned(),
        ca: qs.join("ca/ca.crt"),
        cert: qs.join("ca/admin.crt"),
        key: qs.join("ca/admin.key"),
    };
    let url = format!("https://localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while env
        .git(dir, &["ls-remote", &format!("{url}/repo/test.git")])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "node did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    for r in ["small", "big"] {
        run(Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(["admin", "repo", "create", r])
            .env("RUST_LOG", "warn"));
    }
    let pid = child.id();
    (
        Server {
            name: "repospanner",
            url,
            pids: vec![pid],
            children: vec![child],
        },
        env,
    )
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
    for r in ["small", "big"] {
        let p = repos.join(format!("{r}.git"));
        env.git_ok(dir, &["init", "-q", "--bare", p.to_str()?]);
        env.git_ok(&p, &["config", "http.receivepack", "true"]);
    }
    let sock = root.join("fcgi.sock");
    let fcgi = Command::new("fcgiwrap")
        .arg("-s")
        .arg(format!("unix:{}", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let exec_path =
        String::from_utf8_lossy(&Command::new("git").arg("--exec-path").output().ok()?.stdout)
            .trim()
            .to_owned();
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
  }}
}}
"#,
        root = root.display(),
        qs = qs.display(),
        sock = sock.display(),
        repos = repos.display(),
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
    let mut pids = vec![nginx.id(), fcgi.id()];
    // nginx's worker is a child of the master: count it through /proc.
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(nginx.id()) {
                    pids.push(pid);
                }
            }
        }
    }
    Some(Server {
        name: "git http-backend",
        url,
        pids,
        children: vec![nginx, fcgi],
    })
}

fn server_cpu(s: &Server) -> f64 {
    s.pids.iter().map(|p| cpu(*p)).sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() - 1) as f64 * 0.99) as usize]
}

struct Figures {
    small_p50: f64,
    small_p99: f64,
    big_push: f64,
    clone: f64,
    clone_cpu: f64,
}

fn measure(env: &Env, s: &Server, work: &Path, big: &Path, pushes: usize) -> Figures {
    let small = work.join(format!("small-{}", s.name.replace(' ', "-")));
    env.git_ok(
        work,
        &["init", "-q", "-b", "master", small.to_str().expect("path")],
    );
    let url_small = format!("{}/repo/small.git", s.url);
    let mut lat = Vec::new();
    for i in 0..pushes {
        std::fs::write(small.join("f.txt"), format!("change {i}\n")).expect("write");
        env.git_ok(&small, &["add", "-A"]);
        env.git_ok(&small, &["commit", "-qm", &format!("small {i}")]);
        let t = Instant::now();
        env.git_ok(&small, &["push", "-q", &url_small, "master"]);
        lat.push(t.elapsed().as_secs_f64());
    }
    let url_big = format!("{}/repo/big.git", s.url);
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
    let big_push = t.elapsed().as_secs_f64();
    let target = work.join(format!("clone-{}", s.name.replace(' ', "-")));
    let cpu0 = server_cpu(s);
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
    let clone = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300)); // let fcgiwrap reap its child
    let clone_cpu = server_cpu(s) - cpu0;
    Figures {
        small_p50: median(lat.clone()),
        small_p99: p99(lat),
        big_push,
        clone,
        clone_cpu,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mb: usize = std::env::var("BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let pushes: usize = std::env::var("BENCH_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let base_port = 30000 + (std::process::id() % 20000) as u16;
    let (node, env) = start_node(dir.path(), base_port);
    let nginx = start_nginx(dir.path(), &env, base_port + 10);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
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
    println!("## git over HTTPS with client certificates: repoSpanner-rs node vs git http-backend behind nginx (same machine, same run)");
    println!(
        "generated a repository of 200 commits, {pack_mb} MiB packed, in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let ours = measure(&env, &node, &work, &big, pushes);
    let theirs = nginx
        .as_ref()
        .map(|n| measure(&env, n, &work, &big, pushes));
    let row = |what: &str, a: f64, b: Option<f64>, unit: &str| match b {
        Some(b) => println!(
            "{what:<28} repospanner {a:>8.3} {unit} | http-backend {b:>8.3} {unit} | ratio {:.2}",
            a / b
        ),
        None => println!(
            "{what:<28} repospanner {a:>8.3} {unit} | (no baseline: install nginx and fcgiwrap)"
        ),
    };
    row(
        "small push p50",
        ours.small_p50,
        theirs.as_ref().map(|t| t.small_p50),
        "s",
    );
    row(
        "small push p99",
        ours.small_p99,
        theirs.as_ref().map(|t| t.small_p99),
        "s",
    );
    row(
        &format!("push of {pack_mb} MiB repository"),
        ours.big_push,
        theirs.as_ref().map(|t| t.big_push),
        "s",
    );
    row(
        "clone of it",
        ours.clone,
        theirs.as_ref().map(|t| t.clone),
        "s",
    );
    row(
        "server CPU per clone",
        ours.clone_cpu,
        theirs.as_ref().map(|t| t.clone_cpu),
        "s",
    );
    println!("(ratio = repospanner / baseline; below 1 is better)");
}

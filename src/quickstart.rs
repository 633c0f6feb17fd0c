//! `repospanner quickstart`: a local region with everything made for it — a CA, node
//! certificates (valid for `localhost` and `127.0.0.1`), an admin/read/write user
//! certificate, one config per node, the `test` repository, and `DIR/env` for git — and,
//! unless `--no-start`, the nodes running as child processes until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use repospanner_ca::{Authority, InitRequest, LeafRequest, NodeRequest, Permission, Validity};

pub const CLUSTER: &str = "repospanner.local";
pub const REGION: &str = "local";

/// Options of the command.
#[derive(Debug, Clone)]
pub struct Quickstart {
    pub dir: PathBuf,
    pub nodes: u32,
    pub port: u16,
    pub no_start: bool,
}

fn ports(port: u16, k: u32) -> (u16, u16) {
    let base = port + 2 * (k as u16 - 1);
    (base, base + 1)
}

fn abs(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn node_config(dir: &Path, k: u32, port: u16) -> String {
    let ca = dir.join("ca");
    let (http, rpc) = ports(port, k);
    let node = dir.join(format!("node{k}"));
    let d = |p: &Path| p.display().to_string();
    format!(
        "# Node {k} of the quick-start region (made by `repospanner quickstart`).\n\
ca:\n  path: {ca}\n\
admin:\n  url: https://localhost:{http}/\n  ca: {ca}/ca.crt\n  cert: {ca}/admin.crt\n  key: {ca}/admin.key\n\
storage:\n  state: {state}\n  git:\n    directory: {git}\n\
listen:\n  rpc: 127.0.0.1:{rpc}\n  http: 127.0.0.1:{http}\n\
certificates:\n  ca: {ca}/ca.crt\n  client:\n    cert: {ca}/node{k}.{REGION}.crt\n    key: {ca}/node{k}.{REGION}.key\n  server:\n    default:\n      cert: {ca}/node{k}.{REGION}.crt\n      key: {ca}/node{k}.{REGION}.key\n\
checks:\n  paranoid: true\n\
silly:\n  defaulthead: master\n\
spawn:\n  repos:\n    - name: test\n      public: false\n",
        ca = d(&ca),
        state = d(&node.join("state")),
        git = d(&node.join("git")),
    )
}

/// `CA_DIR/trust`: a directory holding the region's CA certificate and nothing else, for
/// git's `http.sslCAPath` (`GIT_SSL_CAPATH`). Setting only `GIT_SSL_CAINFO` leaves
/// libcurl's default CA path (`/etc/ssl/certs`) in force, so git would also trust every
/// public CA and, linked against GnuTLS as on Debian, parse all of them on every
/// command: about 30 ms of a 45 ms push here. OpenSSL builds of libcurl look CA paths
/// up by hashed name only, so for them the directory is simply empty of matches and
/// `GIT_SSL_CAINFO` does the work.
pub fn trust_dir(ca_dir: &Path) -> Result<PathBuf> {
    let trust = ca_dir.join("trust");
    let ca = std::fs::read(ca_dir.join("ca.crt"))
        .with_context(|| format!("reading {}/ca.crt", ca_dir.display()))?;
    let held = trust.join("ca.crt");
    if std::fs::read(&held).ok().as_deref() == Some(&ca[..]) {
        return Ok(trust);
    }
    std::fs::create_dir_all(&trust).with_context(|| format!("creating {}", trust.display()))?;
    // Written aside and renamed, so a git reading the directory meanwhile never sees
    // half a certificate.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let part = ca_dir.join(format!(".trust-ca.{}.{seq}", std::process::id()));
    std::fs::write(&part, &ca)
        .and_then(|()| std::fs::rename(&part, &held))
        .with_context(|| format!("writing {}", held.display()))?;
    Ok(trust)
}

/// Writes the CA, certificates, configs and env file (unless they exist already).
pub fn write_files(q: &Quickstart) -> Result<()> {
    let dir = abs(&q.dir)?;
    let env_path = dir.join("env");
    if env_path.exists() {
        println!("Reusing the quick-start files in {}", dir.display());
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_dir = dir.join("ca");
    // Local names (localhost, 127.0.0.1) are outside any cluster domain: this CA is
    // for a local region only, so it is not name-constrained.
    repospanner_ca::init(
        &ca_dir,
        &InitRequest {
            cluster: CLUSTER.into(),
            validity: Validity::years(10),
            name_constraint: false,
        },
    )
    .context("creating the quick-start CA")?;
    let ca = Authority::open(&ca_dir)?;
    for k in 1..=q.nodes {
        ca.issue_node(&NodeRequest {
            region: REGION.into(),
            name: format!("node{k}"),
            id: Some(u64::from(k)),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            validity: Validity::years(1),
        })?;
    }
    ca.issue_leaf(&LeafRequest {
        username: "admin".into(),
        permissions: vec![
            Permission::Admin,
            Permission::Monitor,
            Permission::Read,
            Permission::Write,
        ],
        region_globs: vec!["*".into()],
        repo_globs: vec!["*".into()],
        validity: Validity::years(1),
    })?;
    let trust = trust_dir(&ca_dir)?;
    let mut env = String::from("# Source this file: `. ./env` — git then trusts the region's CA and uses the admin certificate.\n");
    env.push_str(&format!(
        "export GIT_SSL_CAINFO={}\n",
        ca_dir.join("ca.crt").display()
    ));
    env.push_str(
        "# Only the region's CA: without a CA path of its own, git's libcurl also trusts, and\n\
         # parses on every command (about 30 ms with GnuTLS), the whole system store.\n",
    );
    env.push_str(&format!("export GIT_SSL_CAPATH={}\n", trust.display()));
    env.push_str(&format!(
        "export GIT_SSL_CERT={}\n",
        ca_dir.join("admin.crt").display()
    ));
    env.push_str(&format!(
        "export GIT_SSL_KEY={}\n",
        ca_dir.join("admin.key").display()
    ));
    for k in 1..=q.nodes {
        let node = dir.join(format!("node{k}"));
        std::fs::create_dir_all(&node)?;
        std::fs::write(node.join("config.yml"), node_config(&dir, k, q.port))?;
        env.push_str(&format!(
            "export REPOSPANNER_URL_{k}=https://localhost:{}\n",
            ports(q.port, k).0
        ));
    }
    std::fs::write(&env_path, env)?;
    Ok(())
}

fn stop_all(children: &mut [Child]) {
    for c in children.iter() {
        // SAFETY: signalling our own child processes.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

/// The whole command.
#[allow(clippy::too_many_lines)] // the quick start's steps in order, as an operator reads them
pub fn run(q: &Quickstart) -> Result<()> {
    if q.nodes == 0 || q.nodes > 99 {
        bail!("--nodes {}: a region has 1 to 99 nodes", q.nodes);
    }
    if q.port == 0 || u32::from(q.port) + 2 * q.nodes > 65535 {
        bail!("--port {} leaves no room for {} nodes", q.port, q.nodes);
    }
    write_files(q)?;
    let dir = abs(&q.dir)?;
    if q.no_start {
        println!(
            "Wrote the quick-start region to {}; start node K with:",
            dir.display()
        );
        println!(
            "  repospanner --config {}/node1/config.yml serve --spawn   (once, first node)",
            dir.display()
        );
        println!(
            "  repospanner --config {}/nodeK/config.yml serve --joinnode https://127.0.0.1:{}   (once, other nodes, node 1 running)",
            dir.display(),
            ports(q.port, 1).1
        );
        println!(
            "  repospanner --config {}/nodeK/config.yml serve",
            dir.display()
        );
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the repospanner binary")?;
    crate::stop::install_signal_handlers();
    let mut children = Vec::new();
    let ca_pem = std::fs::read(dir.join("ca").join("ca.crt"))?;
    for k in 1..=q.nodes {
        let node = dir.join(format!("node{k}"));
        let config = node.join("config.yml");
        let log = node.join("node.log");
        if !node.join("state").join("node.json").exists() {
            // The first node starts the region; the others join it (node 1 runs).
            let mut c = Command::new(&exe);
            c.arg("--config").arg(&config);
            if k == 1 {
                c.args(["serve", "--spawn"]);
            } else {
                println!("Node {k} is joining the region...");
                c.args([
                    "serve",
                    "--joinnode",
                    &format!("https://127.0.0.1:{}", ports(q.port, 1).1),
                ]);
            }
            let out = c.output().context("initialising a node")?;
            if !out.status.success() {
                stop_all(&mut children);
                bail!(
                    "initialising node {k} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(&exe)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::from(logf.try_clone()?))
            .stderr(Stdio::from(logf))
            .spawn()
            .context("starting a node")?;
        children.push(child);
        // Wait until it answers.
        let url = format!("https://localhost:{}", ports(q.port, k).0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if crate::admin::request(&url, &ca_pem, None, "GET", "/", None)
                .is_ok_and(|r| r.status == 200)
            {
                break;
            }
            if Instant::now() > deadline || crate::stop::stop_requested() {
                stop_all(&mut children);
                bail!(
                    "node {k} did not start; see {}",
                    dir.join(format!("node{k}/node.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "The region is running ({} node(s)); logs in {}/nodeK/node.log.",
        q.nodes,
        dir.display()
    );
    println!("In another shell:");
    println!("  . {}/env", dir.display());
    println!("  git clone $REPOSPANNER_URL_1/repo/test.git");
    println!("Press Ctrl-C to stop the nodes.");
    while !crate::stop::stop_requested() {
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                eprintln!("a node exited ({status}); stopping the region");
                crate::stop::request_stop();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_all(&mut children);
    println!("Stopped.");
    Ok(())
}

//! Server hooks (git's pre-receive, update and post-receive), run by the node that
//! received a push: the git directory a hook sees (`repo.rs`: the repository as a bare
//! git repository this node keeps for its hooks, the push's objects in a quarantine
//! beside it, as git's receive-pack does), the sandbox (`sandbox.rs`: bubblewrap), and
//! running one here: a clean environment, a time limit, output bounded and passed on as
//! it is written.
//!
//! A hook runs in a process of its own, watched by a thread of its own; the shard only
//! waits for its messages.

mod repo;
mod sandbox;

pub use repo::{prepare, HookDirs, Quarantine};
pub use sandbox::Sandbox;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};

/// The hooks of a repository, as git names them.
pub const KINDS: [&str; 3] = ["pre-receive", "update", "post-receive"];

/// How the node runs hooks (`hooks.*` in config.yml).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's hook files: scripts, uploads, the repositories kept for hooks, one
    /// directory per run (`<state>/hooks`).
    pub dir: PathBuf,
    /// `None`: hooks run unsandboxed, with the node's privileges (as the Go original's
    /// did without bubblewrap).
    pub sandbox: Option<Sandbox>,
    /// A hook still running after this is killed, with its process group, and its push
    /// refused.
    pub timeout: Duration,
    /// A push's update hooks (one per ref) together: refs left when it has passed are
    /// refused.
    pub push_timeout: Duration,
    /// Output passed to the client at most; the rest is dropped (and said so).
    pub output_bytes_max: usize,
    /// The uid (and gid) a hook runs as, when not the node's own (`hooks.user`).
    pub user: Option<u32>,
    /// `GIT_TRACE` for hooks (`hooks.debug`).
    pub debug: bool,
}

/// The largest hook script the admin API takes (a request body's limit).
pub const SCRIPT_BYTES_MAX: usize = 1 << 20;

impl Settings {
    pub fn dirs(&self) -> HookDirs {
        HookDirs {
            root: self.dir.clone(),
        }
    }
}

/// What became of a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it.
    Signalled(i32),
    /// It outlived [`Settings::timeout`] and was killed.
    TimedOut,
    /// It could not be run.
    Failed(String),
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        *self == Outcome::Exited(0)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(c) => write!(f, "exited with status {c}"),
            Outcome::Signalled(s) => write!(f, "killed by signal {s}"),
            Outcome::TimedOut => write!(f, "timed out"),
            Outcome::Failed(why) => write!(f, "could not run: {why}"),
        }
    }
}

/// One hook to run.
#[derive(Debug, Clone)]
pub struct Run {
    /// git's name of the hook.
    pub kind: &'static str,
    /// The executable (a path on this host).
    pub script: PathBuf,
    pub args: Vec<String>,
    pub stdin: Vec<u8>,
    /// The variables it gets (the environment is otherwise empty but for `PATH`,
    /// `HOME` and `LANG`), with host paths where they name files.
    pub env: Vec<(String, String)>,
    /// Directories it may read (host paths), and the one that is its working directory.
    pub read: Vec<PathBuf>,
    pub cwd: PathBuf,
}

/// What a hook's watcher thread tells the shard.
enum Msg {
    Output(Vec<u8>),
    Done(Outcome),
}

/// Runs a hook to its end, passing its output (stdout and stderr, in the order it
/// writes them) to `output` as it comes, at most [`Settings::output_bytes_max`].
pub async fn run(settings: &Settings, hook: Run, mut output: impl AsyncFnMut(Vec<u8>)) -> Outcome {
    let (tx, mut rx) = futures_channel::mpsc::channel::<Msg>(16);
    let s = settings.clone();
    let started = std::thread::Builder::new()
        .name(format!("hook-{}", hook.kind))
        .spawn(move || watch(&s, hook, tx));
    if let Err(e) = started {
        return Outcome::Failed(format!("no thread for the hook: {e}"));
    }
    let mut passed = 0usize;
    let mut dropped = 0usize;
    while let Some(msg) = rx.next().await {
        match msg {
            Msg::Output(b) => {
                let room = settings.output_bytes_max.saturating_sub(passed);
                let take = b.len().min(room);
                dropped += b.len() - take;
                if take > 0 {
                    passed += take;
                    let mut b = b;
                    b.truncate(take);
                    output(b).await;
                }
            }
            Msg::Done(outcome) => {
                if dropped > 0 {
                    output(
                        format!(
                            "\n[{dropped} more bytes of hook output dropped (limit {} bytes)]\n",
                            settings.output_bytes_max
                        )
                        .into_bytes(),
                    )
                    .await;
                }
                return outcome;
            }
        }
    }
    Outcome::Failed("the hook's watcher stopped".into())
}

/// The hook's thread: starts it, feeds its stdin, reads its output until it closes,
/// kills its process group when its time is up.
fn watch(settings: &Settings, hook: Run, mut tx: futures_channel::mpsc::Sender<Msg>) {
    crate::service::unpin_this_thread();
    let deadline = Instant::now() + settings.timeout;
    // Output waits for the shard only until the hook's time is up: a client that stops
    // reading does not stop the clock.
    let mut send = |mut m: Msg| loop {
        match tx.try_send(m) {
            Ok(()) => return true,
            Err(e) if e.is_disconnected() => return false,
            Err(e) => {
                if Instant::now() >= deadline {
                    return false;
                }
                m = e.into_inner();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let outcome = match start(settings, &hook) {
        Ok((child, out)) => follow(deadline, child, out, &hook.stdin, &mut send),
        Err(e) => Outcome::Failed(e),
    };
    // The shard takes what is queued promptly (its own sends are bounded in time).
    let _ = futures_lite::future::block_on(tx.send(Msg::Done(outcome)));
}

fn start(
    settings: &Settings,
    hook: &Run,
) -> Result<(std::process::Child, std::io::PipeReader), String> {
    let (reader, writer) = std::io::pipe().map_err(|e| format!("a pipe: {e}"))?;
    let err_writer = writer.try_clone().map_err(|e| format!("a pipe: {e}"))?;
    let mut cmd = match &settings.sandbox {
        Some(sb) => {
            let mut c = Command::new(&sb.bwrap);
            c.args(sb.args(&hook.read, &hook.cwd));
            c.arg(&hook.script);
            c
        }
        None => {
            let mut c = Command::new(&hook.script);
            c.current_dir(&hook.cwd);
            c
        }
    };
    cmd.args(&hook.args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &hook.cwd)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(writer)
        .stderr(err_writer)
        // Its own process group, so a timeout kills what it started too.
        .process_group(0);
    // bubblewrap passes its environment on; the sandbox shows every path at its
    // place on the host, so the variables mean the same inside.
    cmd.envs(hook.env.iter().map(|(k, v)| (k, v)));
    if settings.debug {
        cmd.env("GIT_TRACE", "2");
    }
    if let Some(uid) = settings.user {
        cmd.uid(uid).gid(uid);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", program_of(settings, &hook.script).display()))?;
    // `cmd` (which holds the pipe's writing ends) is dropped here: the output closes
    // when the hook and what it started are gone.
    Ok((child, reader))
}

fn program_of<'a>(settings: &'a Settings, script: &'a Path) -> &'a Path {
    settings
        .sandbox
        .as_ref()
        .map_or(script, |s| s.bwrap.as_path())
}

fn follow(
    deadline: Instant,
    mut child: std::process::Child,
    mut out: std::io::PipeReader,
    stdin: &[u8],
    send: &mut impl FnMut(Msg) -> bool,
) -> Outcome {
    // stdin from a thread of its own: a hook need not read it (git ignores EPIPE).
    if let Some(mut w) = child.stdin.take() {
        let input = stdin.to_vec();
        let _ = std::thread::Builder::new()
            .name("hook-stdin".into())
            .spawn(move || {
                let _ = w.write_all(&input);
            });
    }
    let pgid = child.id() as libc::pid_t;
    let mut timed_out = false;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        if !readable(&out, left) {
            continue;
        }
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !send(Msg::Output(buf[..n].to_vec())) {
                    // The push went away: stop the hook.
                    timed_out = true;
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if timed_out {
        // SAFETY: kill(2) on the hook's own process group (process_group(0) made the
        // child its leader); no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    // The output closed (or the group was killed): the hook is ending; wait for it,
    // still within the deadline.
    loop {
        let ended = exited(pgid);
        if !ended && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        timed_out |= !ended;
        break;
    }
    // Nothing it started outlives it (a background child that let go of the output),
    // killed while the group's leader is not yet reaped, so its id names no other group.
    // SAFETY: kill(2) on the hook's own process group; no memory involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("waiting for it: {e}")),
    };
    if timed_out {
        return Outcome::TimedOut;
    }
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Outcome::Exited(c),
        (None, Some(s)) => Outcome::Signalled(s),
        (None, None) => Outcome::Failed("no exit status".into()),
    }
}

/// Whether process `pid` (a child of this process) has ended, leaving it to be reaped.
fn exited(pid: libc::pid_t) -> bool {
    // SAFETY: waitid(2) with WNOWAIT only reads the child's state into `info`, which we
    // own; the child stays to be reaped by `Child::wait`.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() != 0
    }
}

/// Waits until `fd` has something to read (or closed), at most `left`.
fn readable(fd: &impl AsRawFd, left: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = left.as_millis().min(1000) as libc::c_int;
    // SAFETY: one pollfd we own, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms.max(1)) };
    n > 0
}

/// The git blob id of `content`: a hook script's id (`None`: a SHA-1 collision).
pub fn script_id(content: &[u8]) -> Option<String> {
    crate::git::pack::object_id(crate::git::ObjectKind::Blob, content)
        .ok()
        .map(|o| crate::git::hex(&o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> Settings {
        Settings {
            dir: dir.to_owned(),
            sandbox: None,
            timeout: Duration::from_secs(5),
            push_timeout: Duration::from_secs(60),
            output_bytes_max: 64,
            user: None,
            debug: false,
        }
    }

    fn script(dir: &Path, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("hook");
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    fn go(s: &Settings, text: &str, stdin: &[u8]) -> (Outcome, Vec<u8>) {
        let hook = Run {
            kind: "pre-receive",
            script: script(&s.dir, text),
            args: vec!["one".into()],
            stdin: stdin.to_vec(),
            env: vec![("extra_who".into(), "me".into())],
            read: Vec::new(),
            cwd: s.dir.clone(),
        };
        let mut out = Vec::new();
        let o = futures_lite::future::block_on(run(s, hook, async |b: Vec<u8>| {
            out.extend_from_slice(&b);
        }));
        (o, out)
    }

    #[test]
    fn a_hook_gets_its_arguments_stdin_and_a_clean_environment() {
        let d = tempfile::tempdir().expect("tmp");
        let s = settings(d.path());
        let (o, out) = go(
            &s,
            "#!/bin/sh\necho \"$1 $extra_who $(cat) ${SECRET:-clean}\" >&2\nexit 3\n",
            b"in",
        );
        assert_eq!(o, Outcome::Exited(3));
        assert_eq!(out, b"one me in clean\n");
        assert_eq!(
            script_id(b"x\n").as_deref(),
            Some("587be6b4c3f93f93c489c0111bba5596147a26cb")
        );
    }

    #[test]
    fn output_is_bounded_and_a_slow_hook_is_killed_with_what_it_started() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = settings(d.path());
        let (o, out) = go(&s, "#!/bin/sh\nyes | head -c 100000\n", b"");
        assert!(o.succeeded(), "{o}");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("y\ny\n") && text.contains("99936 more bytes"),
            "{text}"
        );
        s.timeout = Duration::from_millis(300);
        let started = Instant::now();
        // A child that keeps the output open after the hook's shell is gone.
        let (o, _) = go(&s, "#!/bin/sh\nsleep 30 &\nsleep 30\n", b"");
        assert_eq!(o, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
        let (o, _) = go(
            &s,
            "#!/bin/sh\nexec sleep 30 </dev/null >/dev/null 2>&1\n",
            b"",
        );
        assert_eq!(o, Outcome::TimedOut);
    }

    #[test]
    fn a_hook_that_cannot_start_says_why() {
        let d = tempfile::tempdir().expect("tmp");
        let s = settings(d.path());
        let (o, _) = go(&s, "not a script", b"");
        assert!(matches!(o, Outcome::Failed(_)), "{o}");
    }
}

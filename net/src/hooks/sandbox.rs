//! The bubblewrap sandbox a hook runs in: the operator's `hooks.bubblewrap.*` (the Go
//! original's keys), plus what it lacked: the hook dies with the node, its processes
//! share one pid namespace that ends with it, it holds no capability (a user namespace,
//! every capability dropped, whatever user the node runs as), and it sees of the
//! node's files only those of its run (at their host paths), never the node's keys or
//! state.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `hooks.bubblewrap.*`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// The bubblewrap program.
    pub bwrap: PathBuf,
    /// Namespaces to unshare: `user`, `ipc`, `pid`, `net`, `uts`, `cgroup`, `all`.
    pub unshare: Vec<String>,
    /// Keep the network with `unshare: [all]`.
    pub share_net: bool,
    pub mount_proc: bool,
    /// Accepted; a minimal `/dev` is always mounted (git needs `/dev/null`).
    pub mount_dev: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub hostname: Option<String>,
    /// `[host, sandbox]` pairs.
    pub bind: Vec<[String; 2]>,
    pub ro_bind: Vec<[String; 2]>,
    /// `[target, link]` pairs.
    pub symlink: Vec<[String; 2]>,
}

/// The namespaces `unshare` may name.
pub const NAMESPACES: [&str; 7] = ["user", "ipc", "pid", "net", "uts", "cgroup", "all"];

impl Sandbox {
    /// Checks what the configuration names: an error says which value is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let Some(n) = self
            .unshare
            .iter()
            .find(|n| !NAMESPACES.contains(&n.as_str()))
        {
            return Err(format!(
                "unshare: unknown namespace {n:?} (known: {})",
                NAMESPACES.join(", ")
            ));
        }
        for [a, b] in self.bind.iter().chain(&self.ro_bind).chain(&self.symlink) {
            if a.is_empty() || !b.starts_with('/') {
                return Err(format!(
                    "[{a:?}, {b:?}]: a pair needs a source and an absolute path in the sandbox"
                ));
            }
        }
        if self.hostname.as_deref().is_some_and(str::is_empty) {
            return Err("hostname: empty".into());
        }
        Ok(())
    }

    /// bubblewrap's arguments, up to the program: the configured sandbox, then `read`
    /// (read-only) and `cwd` (writable, the working directory) at their host paths.
    pub fn args(&self, read: &[PathBuf], cwd: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| a.extend(parts.iter().map(OsString::from));
        let mut unshare: Vec<&str> = self.unshare.iter().map(String::as_str).collect();
        // Everything the hook starts ends with it (a timeout kills bwrap); and no
        // capability of the node's survives (bubblewrap run by root keeps them all in
        // the host's namespace otherwise).
        unshare.push("pid");
        unshare.push("user");
        if self.hostname.is_some() {
            unshare.push("uts");
        }
        unshare.sort_unstable();
        unshare.dedup();
        for n in unshare {
            push(&[&format!("--unshare-{n}")]);
        }
        if self.share_net {
            push(&["--share-net"]);
        }
        push(&["--die-with-parent", "--new-session", "--cap-drop", "ALL"]);
        if let Some(u) = self.uid {
            push(&["--uid", &u.to_string()]);
        }
        if let Some(g) = self.gid {
            push(&["--gid", &g.to_string()]);
        }
        if let Some(h) = &self.hostname {
            push(&["--hostname", h]);
        }
        for [src, dst] in &self.ro_bind {
            push(&["--ro-bind", src, dst]);
        }
        for [src, dst] in &self.bind {
            push(&["--bind", src, dst]);
        }
        for [target, link] in &self.symlink {
            push(&["--symlink", target, link]);
        }
        if self.mount_proc {
            push(&["--proc", "/proc"]);
        }
        // git needs /dev/null: a minimal /dev (null, zero, random, tty) always, whatever
        // `mount_dev` says.
        push(&["--dev", "/dev", "--tmpfs", "/tmp"]);
        for r in read {
            a.extend(["--ro-bind".into(), r.into(), r.into()]);
        }
        a.extend(["--bind".into(), cwd.into(), cwd.into()]);
        a.extend(["--chdir".into(), cwd.into()]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_sandbox_comes_first_and_the_run_last() {
        let sb = Sandbox {
            bwrap: "bwrap".into(),
            unshare: vec!["net".into(), "pid".into()],
            hostname: Some("myhostname".into()),
            ro_bind: vec![["/usr".into(), "/usr".into()]],
            symlink: vec![["usr/bin".into(), "/bin".into()]],
            mount_proc: true,
            ..Sandbox::default()
        };
        assert_eq!(sb.check(), Ok(()));
        let args: Vec<String> = sb
            .args(&[PathBuf::from("/h/repo.git")], Path::new("/h/run/1"))
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        assert_eq!(
            args.join(" "),
            "--unshare-net --unshare-pid --unshare-user --unshare-uts --die-with-parent \
             --new-session --cap-drop ALL --hostname myhostname --ro-bind /usr /usr --symlink usr/bin /bin --proc /proc \
             --dev /dev --tmpfs /tmp --ro-bind /h/repo.git /h/repo.git --bind /h/run/1 /h/run/1 \
             --chdir /h/run/1"
        );
    }

    #[test]
    fn unknown_namespaces_and_relative_targets_are_refused() {
        let bad = Sandbox {
            unshare: vec!["network".into()],
            ..Sandbox::default()
        };
        assert!(bad.check().unwrap_err().contains("network"));
        let bad = Sandbox {
            bind: vec![["/a".into(), "b".into()]],
            ..Sandbox::default()
        };
        assert!(bad.check().is_err());
    }
}

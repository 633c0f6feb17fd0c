//! `repobridge`: git over ssh (a forced command in `authorized_keys`) or git's `ext::`
//! transport, bridged to a node's smart HTTP with a client certificate, compatible
//! with the Go original's configuration: `bridge_config.json` (`REPOBRIDGE_CONFIG`,
//! default `/etc/repospanner/bridge_config.json`) with `baseurl`, `ca`, `certs` (by
//! user, else `_default_`), `extras` and `gitbinary`; `REPOBRIDGE_CONFIG=:environment:`
//! (`REPOBRIDGE_BASEURL`, `_CA`, `_CERT`, `_KEY`); `--extra K V` (as `X-Extra-K`).
//! Errors reach the git client as git errors (`ERR` lines).

mod http;
mod relay;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// The Go original's default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/repospanner/bridge_config.json";

#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    #[serde(default)]
    gitbinary: Option<PathBuf>,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    baseurl: Option<String>,
    #[serde(default)]
    certs: BTreeMap<String, CertPaths>,
    #[serde(default)]
    extras: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct CertPaths {
    cert: PathBuf,
    key: PathBuf,
}

/// The bridge's configuration for one user.
#[derive(Debug)]
pub struct Config {
    pub baseurl: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub extras: BTreeMap<String, String>,
    pub gitbinary: Option<PathBuf>,
}

/// Reads the configuration `REPOBRIDGE_CONFIG` names, for `user`.
pub fn config(env: &dyn Fn(&str) -> Option<String>, user: &str) -> Result<Config> {
    let source = env("REPOBRIDGE_CONFIG").unwrap_or_else(|| DEFAULT_CONFIG.to_owned());
    let var = |k: &str| env(k).ok_or_else(|| anyhow!("{k} is not set"));
    if source == ":environment:" {
        return Ok(Config {
            baseurl: var("REPOBRIDGE_BASEURL")?,
            ca: var("REPOBRIDGE_CA")?.into(),
            cert: var("REPOBRIDGE_CERT")?.into(),
            key: var("REPOBRIDGE_KEY")?.into(),
            extras: BTreeMap::new(),
            gitbinary: None,
        });
    }
    let text = std::fs::read_to_string(&source).with_context(|| format!("reading {source}"))?;
    let f: FileConfig =
        serde_json::from_str(&text).with_context(|| format!("{source} is not valid"))?;
    let from_env = |v: Option<String>, key: &str, name: &str| -> Result<String> {
        match v {
            Some(v) if v == ":FROMENV:" => var(name),
            Some(v) => Ok(v),
            None => bail!("{source} has no {key}"),
        }
    };
    let baseurl = from_env(f.baseurl, "baseurl", "REPOBRIDGE_BASEURL")?;
    let ca = from_env(f.ca, "ca", "REPOBRIDGE_CA")?;
    let certs = f
        .certs
        .get(user)
        .or_else(|| f.certs.get("_default_"))
        .cloned()
        .ok_or_else(|| anyhow!("{source} has no certificate for user {user:?} and no _default_"))?;
    Ok(Config {
        baseurl,
        ca: ca.into(),
        cert: certs.cert,
        key: certs.key,
        extras: f.extras,
        gitbinary: f.gitbinary,
    })
}

/// What the bridge was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    /// `git-upload-pack` or `git-receive-pack`.
    pub service: &'static str,
    /// The repository, without quotes, leading `/` or `.git`.
    pub repo: String,
    pub extras: Vec<(String, String)>,
}

/// Parses `[--extra K V]... <service> '<repo>'`, or `<repo>` alone with the service in
/// `GIT_EXT_SERVICE_NOPREFIX` (git's `ext::`), or, with no arguments, the client's
/// command in `SSH_ORIGINAL_COMMAND` (a forced command). `None`: no command at all.
pub fn invocation(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Invocation>> {
    let mut extras = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--extra" {
            let (Some(k), Some(v)) = (it.next(), it.next()) else {
                bail!("--extra takes a key and a value");
            };
            extras.push((k.clone(), v.clone()));
        } else {
            rest.push(a.clone());
        }
    }
    if rest.is_empty() {
        if let Some(cmd) = env("SSH_ORIGINAL_COMMAND") {
            rest = cmd.split_whitespace().map(str::to_owned).collect();
        }
    }
    let (service, repo) = match rest.as_slice() {
        [] => return Ok(None),
        [repo] => {
            let s = env("GIT_EXT_SERVICE_NOPREFIX").ok_or_else(|| {
                anyhow!("only a repository given, and GIT_EXT_SERVICE_NOPREFIX is not set")
            })?;
            (s, repo.clone())
        }
        [service, repo] => (service.clone(), repo.clone()),
        _ => bail!(
            "usage: repobridge [--extra KEY VALUE]... <git-upload-pack|git-receive-pack> '<repo>'"
        ),
    };
    let service = match service.trim_start_matches("git-") {
        "upload-pack" => "git-upload-pack",
        "receive-pack" => "git-receive-pack",
        other => bail!("{other}: only git-upload-pack and git-receive-pack are served"),
    };
    let repo = repo
        .trim_matches(|c| c == '\'' || c == '"')
        .trim_start_matches('/')
        .trim_end_matches('/');
    let repo = repo.strip_suffix(".git").unwrap_or(repo).to_owned();
    if !repospanner_net::git::refs::valid_repo_name(&repo) {
        bail!("{repo:?} is not a repository name");
    }
    Ok(Some(Invocation {
        service,
        repo,
        extras,
    }))
}

/// Refuses a certificate that is a CA's or not meant for clients (as the original).
fn check_client_cert(pem: &[u8], path: &Path) -> Result<()> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
    let cert = p
        .parse_x509()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if cert.is_ca() {
        bail!("{} is a CA certificate, not a user's", path.display());
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if !eku.value.client_auth && !eku.value.any {
            bail!("{} is not a client certificate", path.display());
        }
    }
    Ok(())
}

/// Runs the bridge for `inv` between stdin and stdout.
pub fn serve(inv: &Invocation, cfg: &Config) -> Result<()> {
    if let Some(git) = cfg
        .gitbinary
        .as_ref()
        .filter(|_| Path::new(&inv.repo).exists())
    {
        // A repository on this machine: plain git serves it (the original's
        // `gitbinary`).
        let err = std::os::unix::process::CommandExt::exec(
            std::process::Command::new(git)
                .arg(inv.service.trim_start_matches("git-"))
                .arg(&inv.repo),
        );
        return Err(err).context("running gitbinary");
    }
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (ca, cert, key) = (read(&cfg.ca)?, read(&cfg.cert)?, read(&cfg.key)?);
    check_client_cert(&cert, &cfg.cert)?;
    let tls = repospanner_net::tls::client_config(&ca, Some((&cert, &key)))?;
    let target = http::Target::new(&cfg.baseurl, tls)?;
    let mut headers = vec![("X-RepoBridge-Version".to_owned(), crate::VERSION.to_owned())];
    for (k, v) in cfg
        .extras
        .iter()
        .chain(inv.extras.iter().map(|(k, v)| (k, v)))
    {
        headers.push((format!("X-Extra-{k}"), v.clone()));
    }
    let node = relay::Node {
        target: &target,
        repo: &inv.repo,
        headers,
    };
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    match inv.service {
        "git-receive-pack" => relay::receive_pack(&node, &mut input, &mut out),
        _ => relay::upload_pack(&node, &mut input, &mut out),
    }
}

/// `repobridge` itself: the exit status; errors go to the client as git errors and to
/// stderr.
pub fn main(args: &[String]) -> i32 {
    let env = |k: &str| std::env::var(k).ok();
    let inv = match invocation(args, &env) {
        Ok(Some(inv)) => inv,
        Ok(None) => {
            println!("repobridge {} (repoSpanner-rs)", crate::VERSION);
            return 0;
        }
        Err(e) => return fail(&e),
    };
    let user = env("USER").unwrap_or_default();
    let result = config(&env, &user).and_then(|cfg| serve(&inv, &cfg));
    match result {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> i32 {
    let msg = format!("{e:#}");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&relay::err_pkt(&msg));
    let _ = out.flush();
    eprintln!("repobridge: {msg}");
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn invocations_as_ssh_ext_and_the_command_line_make_them() {
        let none = env(&[]);
        let inv = invocation(
            &args(&[
                "--extra",
                "user",
                "alice",
                "git-upload-pack",
                "'/team/app.git'",
            ]),
            &none,
        )
        .expect("parses")
        .expect("some");
        assert_eq!(
            inv,
            Invocation {
                service: "git-upload-pack",
                repo: "team/app".into(),
                extras: vec![("user".into(), "alice".into())],
            }
        );
        let ssh = env(&[("SSH_ORIGINAL_COMMAND", "git-receive-pack 'test.git'")]);
        let inv = invocation(&[], &ssh).expect("parses").expect("some");
        assert_eq!(
            (inv.service, inv.repo.as_str()),
            ("git-receive-pack", "test")
        );
        let ext = env(&[("GIT_EXT_SERVICE_NOPREFIX", "upload-pack")]);
        let inv = invocation(&args(&["test"]), &ext)
            .expect("parses")
            .expect("some");
        assert_eq!(inv.service, "git-upload-pack");
        assert_eq!(invocation(&[], &none).expect("parses"), None);
        for bad in [
            &["git-upload-archive", "x"][..],
            &["git-upload-pack", "'../etc'"],
            &["--extra", "k"],
            &["test"],
            &["a", "b", "c"],
        ] {
            assert!(invocation(&args(bad), &none).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configuration_from_a_file_or_the_environment() {
        let d = tempfile::tempdir().expect("tmp");
        let file = d.path().join("bridge_config.json");
        std::fs::write(
            &file,
            r#"{"baseurl": ":FROMENV:", "ca": "/ca.crt", "extras": {"site": "x"},
                "certs": {"alice": {"cert": "/a.crt", "key": "/a.key"},
                          "_default_": {"cert": "/d.crt", "key": "/d.key"}}}"#,
        )
        .expect("write");
        let path = file.to_str().expect("path");
        let vars = [
            ("REPOBRIDGE_CONFIG", path),
            ("REPOBRIDGE_BASEURL", "https://n:1/"),
        ];
        let c = config(&env(&vars), "alice").expect("config");
        assert_eq!(
            (c.baseurl.as_str(), c.cert.as_path()),
            ("https://n:1/", Path::new("/a.crt"))
        );
        assert_eq!(c.extras["site"], "x");
        let c = config(&env(&vars), "bob").expect("config");
        assert_eq!(c.cert, Path::new("/d.crt"));
        let vars = [
            ("REPOBRIDGE_CONFIG", ":environment:"),
            ("REPOBRIDGE_BASEURL", "https://n:1"),
            ("REPOBRIDGE_CA", "/ca"),
            ("REPOBRIDGE_CERT", "/c"),
            ("REPOBRIDGE_KEY", "/k"),
        ];
        assert_eq!(
            config(&env(&vars), "x").expect("config").key,
            Path::new("/k")
        );
        assert!(config(&env(&vars[..2]), "x").is_err());
    }
}

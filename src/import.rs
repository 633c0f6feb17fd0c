//! `admin repo import NAME PATH_OR_URL`: an existing repository brought into the region
//! through the normal push path (its objects verified and replicated like any push):
//! every ref (branches, tags, notes, others) and HEAD. Refs go in batches, each its
//! own push, so a large repository never makes one push past the node's limits, and a
//! repeated import (after an interruption, or to catch up with a source still in use)
//! pushes only what differs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::admin::{admin_call, outcome};
use crate::config::AdminConfig;

/// Refs per push.
pub const REFS_PER_PUSH: usize = 1000;

/// Refs of the source that are not the repository's own: remote-tracking branches of a
/// working clone, and the source's HEAD (set apart, as a symbolic ref).
fn imported(name: &str) -> bool {
    name.starts_with("refs/") && !name.starts_with("refs/remotes/") && name != "refs/stash"
}

/// Imports `source` (a local repository, bare or not, or anything `git clone` takes)
/// into repository `name`, created if it does not exist.
pub fn import(cfg: &AdminConfig, name: &str, source: &str) -> Result<()> {
    let scratch = tempdir()?;
    let local = Path::new(source);
    let repo: PathBuf = if local.is_dir() {
        local.to_owned()
    } else {
        eprintln!("Copying {source} ...");
        let dest = scratch.join("source.git");
        let st = Command::new("git")
            .args(["clone", "--mirror", "--quiet", source])
            .arg(&dest)
            .status()
            .context("running git")?;
        if !st.success() {
            bail!("git clone --mirror {source} failed");
        }
        dest
    };
    let refs = git_out(&repo, &["for-each-ref", "--format=%(refname)"])?;
    let refs: Vec<&str> = refs.lines().filter(|r| imported(r)).collect();
    let head = git_out(&repo, &["symbolic-ref", "-q", "HEAD"]).ok();

    let created = admin_call(
        cfg,
        "POST",
        "/admin/createrepo",
        Some(&serde_json::json!({"Reponame": name, "Public": false})),
    )?;
    match outcome(&created) {
        Ok(()) => eprintln!("Created repository {name}"),
        Err(e) if e.to_string().contains("already exists") => {
            eprintln!("Repository {name} exists: pushing what differs");
        }
        Err(e) => return Err(e),
    }
    let url = format!("{}/repo/{name}.git", cfg.url);
    let batches: Vec<&[&str]> = refs.chunks(REFS_PER_PUSH).collect();
    for (i, batch) in batches.iter().enumerate() {
        eprintln!(
            "Pushing refs {}-{} of {} ({} pushes)",
            i * REFS_PER_PUSH + 1,
            i * REFS_PER_PUSH + batch.len(),
            refs.len(),
            batches.len()
        );
        let specs: Vec<String> = batch.iter().map(|r| format!("+{r}:{r}")).collect();
        let st = Command::new("git")
            .current_dir(&repo)
            .env("GIT_SSL_CAINFO", &cfg.ca_path)
            .env("GIT_SSL_CERT", &cfg.cert_path)
            .env("GIT_SSL_KEY", &cfg.key_path)
            .args(["push", "--quiet", "--progress", &url])
            .args(&specs)
            .status()
            .context("running git push")?;
        if !st.success() {
            bail!(
                "pushing refs {}-{} failed (see git's message above); run the import again to go on",
                i * REFS_PER_PUSH + 1,
                i * REFS_PER_PUSH + batch.len()
            );
        }
    }
    if let Some(head) = head
        .map(|h| h.trim().to_owned())
        .filter(|h| refs.contains(&h.as_str()))
    {
        let v = admin_call(
            cfg,
            "POST",
            "/admin/editrepo",
            Some(&serde_json::json!({
                "Reponame": name,
                "UpdateRequest": {"update-symref": format!("HEAD={head}")},
            })),
        )?;
        outcome(&v).context("pointing HEAD")?;
        eprintln!("HEAD -> {head}");
    }
    println!("Repo {name} imported: {} refs", refs.len());
    Ok(())
}

fn git_out(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {} in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A directory removed when the import ends.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<Scratch> {
    let p = std::env::temp_dir().join(format!("repospanner-import-{}", std::process::id()));
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok(Scratch(p))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_working_clones_remote_branches_are_not_imported() {
        assert!(super::imported("refs/heads/main"));
        assert!(super::imported("refs/tags/v1"));
        assert!(super::imported("refs/notes/commits"));
        assert!(!super::imported("refs/remotes/origin/main"));
        assert!(!super::imported("refs/stash"));
        assert!(!super::imported("HEAD"));
    }
}

//! What each `repospanner` subcommand does, given its parsed arguments.
//!
//! Errors carry context for the operator (anyhow at this edge); the crates below
//! return typed errors.

use std::path::Path;

use anyhow::{bail, Context, Result};
use repospanner_ca::{
    Authority, CertInfo, InitRequest, LeafRequest, NodeRequest, Permission, Validity,
};

use crate::config::Config;

/// Reads the configuration; `explicit` is whether `--config` was given.
pub fn load_config(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

/// `repospanner ca init <cluster>`.
pub fn ca_init(config: &Config, cluster: &str, years: u32, name_constraint: bool) -> Result<()> {
    let dir = config.ca_dir()?;
    repospanner_ca::init(
        dir,
        &InitRequest {
            cluster: cluster.to_owned(),
            validity: Validity::years(years),
            name_constraint,
        },
    )
    .with_context(|| format!("creating the CA in {}", dir.display()))?;
    println!("CA for cluster {cluster} created in {}", dir.display());
    Ok(())
}

fn open_ca(config: &Config) -> Result<Authority> {
    let dir = config.ca_dir()?;
    Ok(Authority::open(dir)?)
}

/// `repospanner ca node <region> <nodename>`.
pub fn ca_node(
    config: &Config,
    region: &str,
    name: &str,
    years: u32,
    id: Option<u64>,
    sans: Vec<String>,
) -> Result<()> {
    let ca = open_ca(config)?;
    let issued = ca
        .issue_node(&NodeRequest {
            region: region.to_owned(),
            name: name.to_owned(),
            id,
            sans,
            validity: Validity::years(years),
        })
        .with_context(|| format!("issuing the certificate of node {name}.{region}"))?;
    println!(
        "Node certificate {name}.{region}.{} written: {} (key {})",
        ca.cluster(),
        issued
            .cert_path
            .as_deref()
            .unwrap_or(Path::new("?"))
            .display(),
        issued
            .key_path
            .as_deref()
            .unwrap_or(Path::new("?"))
            .display()
    );
    Ok(())
}

/// Which permissions a `ca leaf` grants.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeafFlags {
    pub admin: bool,
    pub monitor: bool,
    pub read: bool,
    pub write: bool,
}

/// `repospanner ca leaf <username>`.
pub fn ca_leaf(
    config: &Config,
    username: &str,
    flags: LeafFlags,
    regions: Vec<String>,
    repos: Vec<String>,
    years: u32,
) -> Result<()> {
    let ca = open_ca(config)?;
    let permissions: Vec<Permission> = [
        (flags.admin, Permission::Admin),
        (flags.monitor, Permission::Monitor),
        (flags.read, Permission::Read),
        (flags.write, Permission::Write),
    ]
    .into_iter()
    .filter_map(|(on, p)| on.then_some(p))
    .collect();
    let issued = ca
        .issue_leaf(&LeafRequest {
            username: username.to_owned(),
            permissions,
            region_globs: regions,
            repo_globs: repos,
            validity: Validity::years(years),
        })
        .with_context(|| format!("issuing the certificate of user {username}"))?;
    println!(
        "User certificate {username} written: {} (key {})",
        issued
            .cert_path
            .as_deref()
            .unwrap_or(Path::new("?"))
            .display(),
        issued
            .key_path
            .as_deref()
            .unwrap_or(Path::new("?"))
            .display()
    );
    Ok(())
}

/// `repospanner ca info <cert> [--cacert CA]`. Fails (non-zero exit) when a CA is
/// given and the certificate does not verify against it.
pub fn ca_info(cert: &Path, cacert: Option<&Path>) -> Result<()> {
    let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let ca_pem = match cacert {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let info = CertInfo::inspect(&pem, ca_pem.as_deref())
        .with_context(|| format!("reading {}", cert.display()))?;
    print!("{info}");
    if let Some(Err(e)) = &info.verified {
        bail!("{} does not verify against the CA: {e}", cert.display());
    }
    Ok(())
}

//! Who a peer is (`Principal`) and what it may do (`allows`).
//!
//! A `Principal` is read from a certificate that TLS has **already verified** against
//! the cluster CA; this module only reads the repoSpanner extensions and never decides
//! trust. Authorization is a pure function over the principal and the request.

use crate::ext::{self, CertKind, Ext, NodeExt};
use crate::Error;
use x509_parser::prelude::*;

/// One permission a user certificate can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// `/admin/*`: create, edit, delete repositories; node status.
    Admin,
    /// `/monitor`: read-only health endpoints.
    Monitor,
    /// clone and fetch (upload-pack).
    Read,
    /// push (receive-pack; also needs `Read`).
    Write,
}

impl Permission {
    pub const ALL: [Permission; 4] = [
        Permission::Admin,
        Permission::Monitor,
        Permission::Read,
        Permission::Write,
    ];

    pub(crate) fn code(self) -> i64 {
        match self {
            Permission::Admin => 0,
            Permission::Monitor => 1,
            Permission::Read => 2,
            Permission::Write => 3,
        }
    }

    pub(crate) fn from_code(code: i64) -> Option<Self> {
        Permission::ALL.into_iter().find(|p| p.code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Admin => "admin",
            Permission::Monitor => "monitor",
            Permission::Read => "read",
            Permission::Write => "write",
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated identity behind a verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A node of the cluster: may speak the node-to-node protocol, is never a user.
    Node {
        cluster: String,
        region: String,
        name: String,
        id: u64,
    },
    /// A person or service: may do what its permissions and globs allow.
    User {
        cluster: String,
        name: String,
        permissions: Vec<Permission>,
        region_globs: Vec<String>,
        repo_globs: Vec<String>,
    },
}

/// Everything the repoSpanner extensions of one certificate say, before deciding
/// whether it is a usable principal (`ca info` prints this, including for CAs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFacts {
    pub kind: Option<CertKind>,
    pub cluster: Option<String>,
    pub node: Option<NodeExt>,
    pub permissions: Option<Vec<Permission>>,
    pub regions: Option<Vec<String>>,
    pub repos: Option<Vec<String>>,
    /// The subject's common name.
    pub common_name: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertFacts {
    /// Reads the repoSpanner extensions of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertFacts, Error> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| Error::BadCertificate(e.to_string()))?;
        let mut facts = CertFacts {
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            ..CertFacts::default()
        };
        for extension in cert.extensions() {
            let Some(which) = Ext::from_dotted(&extension.oid.to_id_string()) else {
                continue;
            };
            let v = extension.value;
            let duplicate = match which {
                Ext::Kind => facts.kind.replace(ext::decode_kind(v)?).is_some(),
                Ext::Cluster => facts
                    .cluster
                    .replace(ext::decode_string(which, v)?)
                    .is_some(),
                Ext::Node => facts.node.replace(ext::decode_node(v)?).is_some(),
                Ext::Permissions => facts
                    .permissions
                    .replace(ext::decode_permissions(v)?)
                    .is_some(),
                Ext::Regions => facts
                    .regions
                    .replace(ext::decode_strings(which, v)?)
                    .is_some(),
                Ext::Repos => facts
                    .repos
                    .replace(ext::decode_strings(which, v)?)
                    .is_some(),
            };
            if duplicate {
                return Err(Error::BadExtension {
                    ext: which.name(),
                    reason: "present twice".into(),
                });
            }
        }
        Ok(facts)
    }
}

fn missing(ext: Ext) -> Error {
    Error::BadExtension {
        ext: ext.name(),
        reason: "missing".into(),
    }
}

impl Principal {
    /// The principal behind a DER certificate that TLS has already verified against
    /// the CA of `cluster`. A CA certificate, a certificate of another cluster, or one
    /// whose extensions are missing or malformed is no principal.
    pub fn from_verified_der(der: &[u8], cluster: &str) -> Result<Principal, Error> {
        let facts = CertFacts::from_der(der)?;
        let kind = facts.kind.ok_or_else(|| missing(Ext::Kind))?;
        let cert_cluster = facts.cluster.ok_or_else(|| missing(Ext::Cluster))?;
        if cert_cluster != cluster {
            return Err(Error::WrongCluster {
                expected: cluster.to_owned(),
                found: cert_cluster,
            });
        }
        match kind {
            CertKind::Ca => Err(Error::NotAPrincipal("a CA certificate")),
            CertKind::Node => {
                let node = facts.node.ok_or_else(|| missing(Ext::Node))?;
                Ok(Principal::Node {
                    cluster: cert_cluster,
                    region: node.region,
                    name: node.name,
                    id: node.id,
                })
            }
            CertKind::User => {
                let name = facts.common_name.ok_or(Error::NotAPrincipal(
                    "a user certificate without a common name",
                ))?;
                let region_globs = facts.regions.ok_or_else(|| missing(Ext::Regions))?;
                let repo_globs = facts.repos.ok_or_else(|| missing(Ext::Repos))?;
                for g in region_globs.iter().chain(&repo_globs) {
                    check_glob(g)?;
                }
                Ok(Principal::User {
                    cluster: cert_cluster,
                    name,
                    permissions: facts.permissions.ok_or_else(|| missing(Ext::Permissions))?,
                    region_globs,
                    repo_globs,
                })
            }
        }
    }

    /// A short name for logs: `user alice` or `node nodea.regiona`.
    pub fn describe(&self) -> String {
        match self {
            Principal::Node { region, name, .. } => format!("node {name}.{region}"),
            Principal::User { name, .. } => format!("user {name}"),
        }
    }
}

/// Checks that `glob` is a valid shell glob (as used in `--region` and `--repo`).
pub fn check_glob(glob: &str) -> Result<(), Error> {
    glob::Pattern::new(glob)
        .map(|_| ())
        .map_err(|e| Error::BadGlob {
            glob: glob.to_owned(),
            reason: e.msg.to_owned(),
        })
}

/// Shell-glob match where `*` also matches names containing `/` (`rpms/*` matches
/// `rpms/a/b`), `?` matches one character and `[...]` a class. A glob that does not
/// parse matches nothing.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    glob::Pattern::new(glob).is_ok_and(|p| p.matches(name))
}

/// Whether `principal` may use `permission` on repository `repo` of region `region`.
///
/// A node certificate is not a user: it is never allowed anything here. A user needs
/// the permission itself, one region glob matching `region` and one repository glob
/// matching `repo`. For `/admin/*` the caller passes the admin permission and the
/// repository the operation is about (or `""` for region-wide operations, which any
/// repository glob `*` matches).
pub fn allows(principal: &Principal, region: &str, repo: &str, permission: Permission) -> bool {
    match principal {
        Principal::Node { .. } => false,
        Principal::User {
            permissions,
            region_globs,
            repo_globs,
            ..
        } => {
            permissions.contains(&permission)
                && region_globs.iter().any(|g| glob_matches(g, region))
                && repo_globs.iter().any(|g| glob_matches(g, repo))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(perms: &[Permission], regions: &[&str], repos: &[&str]) -> Principal {
        Principal::User {
            cluster: "c".into(),
            name: "u".into(),
            permissions: perms.to_vec(),
            region_globs: regions.iter().map(|s| s.to_string()).collect(),
            repo_globs: repos.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn check(p: &Principal, region: &str, repo: &str, perm: Permission, expected: bool) {
        assert_eq!(
            allows(p, region, repo, perm),
            expected,
            "{p:?} on {region}/{repo} for {perm}"
        );
    }

    use Permission::*;

    #[test]
    fn authorization_table() {
        let rw_all = user(&[Read, Write], &["*"], &["*"]);
        let r_rpms = user(&[Read], &["region*"], &["rpms/*"]);
        let admin_one = user(&[Admin], &["regiona"], &["*"]);
        let node = Principal::Node {
            cluster: "c".into(),
            region: "regiona".into(),
            name: "nodea".into(),
            id: 1,
        };
        let table: &[(&Principal, &str, &str, Permission, bool)] = &[
            (&rw_all, "regiona", "test", Read, true),
            (&rw_all, "regiona", "test", Write, true),
            (&rw_all, "regiona", "deep/name/x", Write, true),
            (&rw_all, "regiona", "test", Admin, false),
            (&rw_all, "regiona", "test", Monitor, false),
            (&r_rpms, "regiona", "rpms/bash", Read, true),
            (&r_rpms, "regionb", "rpms/a/b", Read, true),
            (&r_rpms, "regiona", "rpms/bash", Write, false),
            (&r_rpms, "regiona", "modules/bash", Read, false),
            (&r_rpms, "regiona", "rpms", Read, false),
            (&r_rpms, "other", "rpms/bash", Read, false),
            (&admin_one, "regiona", "anything", Admin, true),
            (&admin_one, "regiona", "", Admin, true),
            (&admin_one, "regionb", "anything", Admin, false),
            (&admin_one, "regiona", "anything", Read, false),
            (&node, "regiona", "test", Read, false),
            (&node, "regiona", "test", Admin, false),
        ];
        for &(p, region, repo, perm, expected) in table {
            check(p, region, repo, perm, expected);
        }
    }

    #[test]
    fn globs() {
        let cases = [
            ("*", "a/b/c", true),
            ("rpms/*", "rpms/a", true),
            ("rpms/*", "rpmsx", false),
            ("te?t", "test", true),
            ("te?t", "tet", false),
            ("[ab]x", "bx", true),
            ("[ab]x", "cx", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("[", "[", false), // invalid glob matches nothing
        ];
        for (g, name, expected) in cases {
            assert_eq!(glob_matches(g, name), expected, "{g} vs {name}");
        }
        assert!(check_glob("[").is_err());
        assert!(check_glob("rpms/*").is_ok());
    }

    #[test]
    fn empty_globs_allow_nothing() {
        let p = user(&[Read], &[], &["*"]);
        check(&p, "r", "x", Read, false);
        let p = user(&[Read], &["*"], &[]);
        check(&p, "r", "x", Read, false);
    }

    #[test]
    fn globs_that_would_make_a_backtracking_matcher_explode_answer_at_once() {
        // 30 stars against the longest repository name: a naive backtracking matcher
        // takes about n^30 steps; the glob crate gives up on the first star that
        // runs out of text. (A hang here is the failure.)
        let name = "a".repeat(512);
        for glob in [
            format!("{}b", "*a".repeat(30)),
            format!("{}*b", "a*".repeat(30)),
            "*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?b".to_owned(),
            format!("{}[b]", "*[a]".repeat(30)),
        ] {
            assert!(!glob_matches(&glob, &name), "{glob}");
        }
        assert!(glob_matches(&format!("{}*", "*a".repeat(30)), &name));
    }
}

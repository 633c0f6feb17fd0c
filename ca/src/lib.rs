//! The repoSpanner certificate authority.
//!
//! This crate owns everything about certificates and identity, and nothing about
//! sockets: creating the cluster CA and issuing node and user certificates
//! ([`authority`]), the repoSpanner extensions and their encoding ([`ext`]), and
//! reading a verified peer certificate into a typed [`Principal`] plus the pure
//! authorization check [`allows`] ([`identity`]). TLS itself (rustls) lives in `net`,
//! which hands this crate the DER of a certificate the TLS handshake already verified.
//!
//! Keys are ECDSA P-256; the CA is name-constrained to the cluster domain unless
//! asked otherwise; every repoSpanner fact is one non-critical extension (see [`ext`]).

pub mod authority;
pub mod ext;
pub mod identity;

use std::path::PathBuf;

pub use authority::{
    init, verify_cert, Authority, CertInfo, InitRequest, Issued, LeafRequest, NodeRequest, Validity,
};
pub use ext::CertKind;
pub use identity::{allows, check_glob, glob_matches, CertFacts, Permission, Principal};

/// Everything that can go wrong in the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("no CA at {0} (run `repospanner ca init <cluster>` first)")]
    NoCa(PathBuf),
    #[error("invalid {what} {value:?}: {reason}")]
    BadName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid glob {glob:?}: {reason}")]
    BadGlob { glob: String, reason: String },
    #[error("repoSpanner extension `{ext}`: {reason}")]
    BadExtension { ext: &'static str, reason: String },
    #[error("not a valid certificate: {0}")]
    BadCertificate(String),
    #[error("not a valid private key: {0}")]
    BadKey(String),
    #[error("certificate belongs to cluster {found:?}, expected {expected:?}")]
    WrongCluster { expected: String, found: String },
    #[error("{0} is not a user or node identity")]
    NotAPrincipal(&'static str),
    #[error("name {san:?} is outside the CA's name constraint ({cluster:?} and its subdomains); create the CA with --no-name-constraint to issue it")]
    OutsideNameConstraint { san: String, cluster: String },
    #[error("a user certificate needs at least one of --admin, --monitor, --read, --write")]
    NoPermissions,
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate does not verify against the CA: {0}")]
    NotVerified(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

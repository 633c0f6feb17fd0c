//! The cluster CA on disk and the certificates it issues.
//!
//! Layout of the CA directory (`ca.path`, mode 0700):
//!
//! | file       | content                                   | mode |
//! |------------|-------------------------------------------|------|
//! | `ca.key`   | PKCS#8 PEM ECDSA P-256 key                | 0600 |
//! | `ca.crt`   | PEM certificate                           | 0644 |
//! | `serial`   | last serial issued, hex, one line         | 0644 |
//! | `<node>.<region>.crt/.key` | node certificates (`ca node`) | 0644/0600 |
//! | `<user>.crt/.key`          | user certificates (`ca leaf`) | 0644/0600 |
//!
//! Nothing is ever overwritten: every file is created with `O_EXCL`, written, and
//! `fsync`ed together with its directory. Serials come from the `serial` file under an
//! exclusive `flock`, so two `ca` commands running at once never share a serial (node
//! ids default to the serial).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::{Duration, OffsetDateTime};

use crate::ext::{self, CertKind, Ext, NodeExt};
use crate::identity::{check_glob, CertFacts, Permission};
use crate::{Error, Result};

pub const CA_KEY: &str = "ca.key";
pub const CA_CERT: &str = "ca.crt";
pub const SERIAL: &str = "serial";

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From five minutes ago (tolerates clock skew between nodes) for `years` years.
    pub fn years(years: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(365 * i64::from(years)),
        }
    }
}

/// `repospanner ca init`.
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub cluster: String,
    pub validity: Validity,
    /// Limit the DNS names the CA can vouch for to the cluster domain.
    pub name_constraint: bool,
}

/// `repospanner ca node`.
#[derive(Debug, Clone)]
pub struct NodeRequest {
    pub region: String,
    pub name: String,
    /// Defaults to the certificate's serial number.
    pub id: Option<u64>,
    /// Extra subject alternative names: DNS names or IP addresses.
    pub sans: Vec<String>,
    pub validity: Validity,
}

/// `repospanner ca leaf`.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    pub username: String,
    pub permissions: Vec<Permission>,
    pub region_globs: Vec<String>,
    pub repo_globs: Vec<String>,
    pub validity: Validity,
}

/// A certificate and key issued (in PEM), and where they were written if they were.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: u64,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `path` with `mode`, refusing to replace anything, and makes it durable.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Exists(path.to_owned()),
            _ => Error::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn refuse_existing(paths: &[&Path]) -> Result<()> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(Error::Exists(p.to_path_buf())),
        None => Ok(()),
    }
}

/// Checks one DNS label (region and node names): lowercase letters, digits, `-`.
fn check_label(what: &'static str, value: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::BadName {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() || value.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("may only contain a-z, 0-9 and -");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return bad("may not start or end with -");
    }
    Ok(())
}

/// Checks a cluster domain: one or more DNS labels separated by dots.
fn check_domain(what: &'static str, value: &str) -> Result<()> {
    if value.len() > 253 {
        return Err(Error::BadName {
            what,
            value: value.to_owned(),
            reason: "longer than 253 characters",
        });
    }
    value.split('.').try_for_each(|l| check_label(what, l))
}

/// Checks a user name: it becomes a file name in the CA directory and an e-mail local
/// part, so only `A-Za-z0-9._+-`, not starting with `.` or `-`.
fn check_username(value: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::BadName {
            what: "user name",
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() || value.len() > 64 {
        return bad("must be 1 to 64 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
    {
        return bad("may only contain A-Z, a-z, 0-9, '.', '_', '+' and '-'");
    }
    if value.starts_with('.') || value.starts_with('-') {
        return bad("may not start with '.' or '-'");
    }
    Ok(())
}

fn ext(which: Ext, der: Vec<u8>) -> CustomExtension {
    // Non-critical (the default): webpki rejects unknown critical extensions.
    CustomExtension::from_oid_content(&which.oid(), der)
}

fn new_key() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

fn san(name: &str) -> Result<SanType> {
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => {
            check_domain("subject alternative name", name)?;
            SanType::DnsName(name.try_into()?)
        }
    })
}

fn in_domain(name: &str, domain: &str) -> bool {
    name == domain || name.ends_with(&format!(".{domain}"))
}

/// `repospanner ca init`: creates the CA directory, key, certificate and serial file.
pub fn init(dir: &Path, req: &InitRequest) -> Result<Issued> {
    check_domain("cluster name", &req.cluster)?;
    let key_path = dir.join(CA_KEY);
    let cert_path = dir.join(CA_CERT);
    let serial_path = dir.join(SERIAL);
    refuse_existing(&[&key_path, &cert_path, &serial_path])?;
    if dir.exists() {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    } else {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }

    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("repoSpanner {} cluster CA", req.cluster),
    );
    params.serial_number = Some(SerialNumber::from(1u64));
    params.not_before = req.validity.not_before;
    params.not_after = req.validity.not_after;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if req.name_constraint {
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(req.cluster.clone())],
            excluded_subtrees: vec![],
        });
    }
    params.custom_extensions = vec![
        ext(Ext::Kind, ext::encode_kind(CertKind::Ca)),
        ext(Ext::Cluster, ext::encode_string(&req.cluster)),
    ];
    let cert = params.self_signed(&key)?;
    let issued = Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: 1,
        cert_path: Some(cert_path.clone()),
        key_path: Some(key_path.clone()),
    };
    write_new(&key_path, issued.key_pem.as_bytes(), 0o600)?;
    write_new(&cert_path, issued.cert_pem.as_bytes(), 0o644)?;
    write_new(&serial_path, b"1\n", 0o644)?;
    sync_dir(dir)?;
    Ok(issued)
}

/// An opened CA: can issue node and user certificates.
#[derive(Debug)]
pub struct Authority {
    dir: PathBuf,
    cluster: String,
    cert_pem: String,
    key: KeyPair,
    /// DNS subtrees the CA's name constraint permits (empty: unconstrained).
    permitted_dns: Vec<String>,
}

impl Authority {
    /// Opens the CA in `dir` (its key, certificate and serial file).
    pub fn open(dir: &Path) -> Result<Authority> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if !cert_path.exists() || !key_path.exists() {
            return Err(Error::NoCa(dir.to_owned()));
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::BadKey(format!("{}: {e}", key_path.display())))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| Error::BadCertificate(format!("{}: {e}", cert_path.display())))?;
        let facts = CertFacts::from_der(&der)?;
        if facts.kind != Some(CertKind::Ca) {
            return Err(Error::BadCertificate(format!(
                "{} is not a repoSpanner CA certificate",
                cert_path.display()
            )));
        }
        let cluster = facts.cluster.ok_or(Error::BadExtension {
            ext: Ext::Cluster.name(),
            reason: "missing".into(),
        })?;
        Ok(Authority {
            dir: dir.to_owned(),
            cluster,
            cert_pem,
            key,
            permitted_dns: permitted_dns(&der)?,
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_constraint(&self, name: &str) -> Result<()> {
        if self.permitted_dns.is_empty() || name.parse::<std::net::IpAddr>().is_ok() {
            return Ok(());
        }
        if self.permitted_dns.iter().any(|d| in_domain(name, d)) {
            Ok(())
        } else {
            Err(Error::OutsideNameConstraint {
                san: name.to_owned(),
                cluster: self.cluster.clone(),
            })
        }
    }

    /// Takes the next serial under an exclusive lock on the serial file.
    fn next_serial(&self) -> Result<u64> {
        let path = self.dir.join(SERIAL);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        lock_exclusive(&f).map_err(io_err(&path))?;
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let last = u64::from_str_radix(text.trim(), 16).map_err(|_| Error::BadName {
            what: "serial file content",
            value: text.trim().to_owned(),
            reason: "not a hexadecimal number",
        })?;
        let next = last.checked_add(1).ok_or(Error::BadName {
            what: "serial file content",
            value: text.trim().to_owned(),
            reason: "serials exhausted",
        })?;
        use std::io::{Seek, SeekFrom};
        f.set_len(0).map_err(io_err(&path))?;
        f.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
        f.write_all(format!("{next:x}\n").as_bytes())
            .map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
        Ok(next) // the lock goes with `f`
    }

    fn sign(&self, mut params: CertificateParams, key: &KeyPair) -> Result<String> {
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        Ok(params.signed_by(key, &issuer)?.pem())
    }

    /// Makes a node certificate without writing it anywhere.
    pub fn make_node(&self, req: &NodeRequest, serial: u64) -> Result<Issued> {
        check_label("region name", &req.region)?;
        check_label("node name", &req.name)?;
        let fqdn = format!("{}.{}.{}", req.name, req.region, self.cluster);
        let mut sans = vec![san(&fqdn)?];
        for extra in &req.sans {
            self.check_constraint(extra)?;
            sans.push(san(extra)?);
        }
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, fqdn);
        params.subject_alt_names = sans;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = req.validity.not_before;
        params.not_after = req.validity.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let node = NodeExt {
            region: req.region.clone(),
            name: req.name.clone(),
            id: req.id.unwrap_or(serial),
        };
        params.custom_extensions = vec![
            ext(Ext::Kind, ext::encode_kind(CertKind::Node)),
            ext(Ext::Cluster, ext::encode_string(&self.cluster)),
            ext(Ext::Node, ext::encode_node(&node)),
        ];
        Ok(Issued {
            cert_pem: self.sign(params, &key)?,
            key_pem: key.serialize_pem(),
            serial,
            cert_path: None,
            key_path: None,
        })
    }

    /// Makes a user certificate without writing it anywhere.
    pub fn make_leaf(&self, req: &LeafRequest, serial: u64) -> Result<Issued> {
        check_username(&req.username)?;
        if req.permissions.is_empty() {
            return Err(Error::NoPermissions);
        }
        for (what, globs) in [("--region", &req.region_globs), ("--repo", &req.repo_globs)] {
            if globs.is_empty() {
                return Err(Error::BadName {
                    what,
                    value: String::new(),
                    reason: "at least one glob is required",
                });
            }
            globs.iter().try_for_each(|g| check_glob(g))?;
        }
        let mut permissions = req.permissions.clone();
        permissions.sort();
        permissions.dedup();
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, req.username.clone());
        params.subject_alt_names = vec![SanType::Rfc822Name(
            format!("{}@{}", req.username, self.cluster).try_into()?,
        )];
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = req.validity.not_before;
        params.not_after = req.validity.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.custom_extensions = vec![
            ext(Ext::Kind, ext::encode_kind(CertKind::User)),
            ext(Ext::Cluster, ext::encode_string(&self.cluster)),
            ext(Ext::Permissions, ext::encode_permissions(&permissions)),
            ext(Ext::Regions, ext::encode_strings(&req.region_globs)),
            ext(Ext::Repos, ext::encode_strings(&req.repo_globs)),
        ];
        Ok(Issued {
            cert_pem: self.sign(params, &key)?,
            key_pem: key.serialize_pem(),
            serial,
            cert_path: None,
            key_path: None,
        })
    }

    fn write_pair(&self, stem: &str, mut issued: Issued) -> Result<Issued> {
        let cert_path = self.dir.join(format!("{stem}.crt"));
        let key_path = self.dir.join(format!("{stem}.key"));
        write_new(&key_path, issued.key_pem.as_bytes(), 0o600)?;
        if let Err(e) = write_new(&cert_path, issued.cert_pem.as_bytes(), 0o644) {
            let _ = fs::remove_file(&key_path);
            return Err(e);
        }
        sync_dir(&self.dir)?;
        issued.cert_path = Some(cert_path);
        issued.key_path = Some(key_path);
        Ok(issued)
    }

    /// `repospanner ca node`: issues and writes `<node>.<region>.crt/.key`.
    pub fn issue_node(&self, req: &NodeRequest) -> Result<Issued> {
        check_label("region name", &req.region)?;
        check_label("node name", &req.name)?;
        let stem = format!("{}.{}", req.name, req.region);
        refuse_existing(&[
            &self.dir.join(format!("{stem}.crt")),
            &self.dir.join(format!("{stem}.key")),
        ])?;
        // Validate everything before a serial is spent.
        self.make_node(req, 0)?;
        let issued = self.make_node(req, self.next_serial()?)?;
        self.write_pair(&stem, issued)
    }

    /// `repospanner ca leaf`: issues and writes `<user>.crt/.key`.
    pub fn issue_leaf(&self, req: &LeafRequest) -> Result<Issued> {
        check_username(&req.username)?;
        let stem = req.username.clone();
        refuse_existing(&[
            &self.dir.join(format!("{stem}.crt")),
            &self.dir.join(format!("{stem}.key")),
        ])?;
        self.make_leaf(req, 0)?;
        let issued = self.make_leaf(req, self.next_serial()?)?;
        self.write_pair(&stem, issued)
    }
}

fn lock_exclusive(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn permitted_dns(ca_der: &[u8]) -> Result<Vec<String>> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(ca_der).map_err(|e| Error::BadCertificate(e.to_string()))?;
    let constraints = cert
        .name_constraints()
        .map_err(|e| Error::BadCertificate(e.to_string()))?;
    let mut out = Vec::new();
    if let Some(nc) = constraints {
        for sub in nc.value.permitted_subtrees.iter().flatten() {
            if let GeneralName::DNSName(d) = sub.base {
                out.push(d.to_owned());
            }
        }
    }
    Ok(out)
}

/// What `repospanner ca info` reports about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub facts: CertFacts,
    /// `None` when no CA was given; `Some(Ok)` when the certificate verifies for its
    /// kind's usage (node: server and client auth; user: client auth).
    pub verified: Option<Result<(), String>>,
}

/// Verifies `cert` against the CA `ca` as rustls would for `usage`, at `now`.
pub fn verify_cert(
    cert: &CertificateDer<'_>,
    ca: &CertificateDer<'_>,
    usage: webpki::KeyUsage,
    now: UnixTime,
) -> Result<()> {
    let anchor = webpki::anchor_from_trusted_cert(ca)
        .map_err(|e| Error::NotVerified(format!("CA: {e:?}")))?;
    let ee =
        webpki::EndEntityCert::try_from(cert).map_err(|e| Error::NotVerified(format!("{e:?}")))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        now,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| Error::NotVerified(format!("{e}")))
}

impl CertInfo {
    /// Reads `cert_pem` and, when `ca_pem` is given, checks it against that CA.
    pub fn inspect(cert_pem: &[u8], ca_pem: Option<&[u8]>) -> Result<CertInfo> {
        let der = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| Error::BadCertificate(e.to_string()))?;
        let facts = CertFacts::from_der(&der)?;
        let verified = match ca_pem {
            None => None,
            Some(ca_pem) => {
                let ca = CertificateDer::from_pem_slice(ca_pem)
                    .map_err(|e| Error::BadCertificate(format!("CA: {e}")))?;
                let now = UnixTime::now();
                let result = match facts.kind {
                    Some(CertKind::Ca) if ca.as_ref() == der.as_ref() => Ok(()),
                    Some(CertKind::Ca) => Err(Error::NotVerified("a different CA".into())),
                    Some(CertKind::Node) => {
                        verify_cert(&der, &ca, webpki::KeyUsage::server_auth(), now).and_then(
                            |()| verify_cert(&der, &ca, webpki::KeyUsage::client_auth(), now),
                        )
                    }
                    _ => verify_cert(&der, &ca, webpki::KeyUsage::client_auth(), now),
                };
                Some(result.map_err(|e| e.to_string()))
            }
        };
        Ok(CertInfo { facts, verified })
    }
}

impl std::fmt::Display for CertInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let facts = &self.facts;
        let when = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|d| {
                    d.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| t.to_string())
        };
        match facts.kind {
            Some(k) => writeln!(f, "Kind:        {k}")?,
            None => writeln!(f, "Kind:        not a repoSpanner certificate")?,
        }
        if let Some(cn) = &facts.common_name {
            writeln!(f, "Subject CN:  {cn}")?;
        }
        if let Some(c) = &facts.cluster {
            writeln!(f, "Cluster:     {c}")?;
        }
        if let Some(n) = &facts.node {
            writeln!(f, "Region:      {}", n.region)?;
            writeln!(f, "Node name:   {}", n.name)?;
            writeln!(f, "Node ID:     {}", n.id)?;
        }
        if let Some(p) = &facts.permissions {
            let names: Vec<_> = p.iter().map(|p| p.as_str()).collect();
            writeln!(f, "Permissions: {}", names.join(", "))?;
        }
        if let Some(r) = &facts.regions {
            writeln!(f, "Regions:     {}", r.join(", "))?;
        }
        if let Some(r) = &facts.repos {
            writeln!(f, "Repos:       {}", r.join(", "))?;
        }
        writeln!(f, "Not before:  {}", when(facts.not_before))?;
        writeln!(f, "Not after:   {}", when(facts.not_after))?;
        match &self.verified {
            None => Ok(()),
            Some(Ok(())) => writeln!(f, "Verified:    yes, against the given CA"),
            Some(Err(e)) => writeln!(f, "Verified:    NO: {e}"),
        }
    }
}

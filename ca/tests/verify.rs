//! Certificates issued by the CA as the TLS stack sees them: rustls's verifiers accept
//! node and user certificates of our CA and reject other CAs, expired certificates and
//! names outside the CA's name constraint; the extensions round-trip.

use std::sync::Arc;

use repospanner_ca::{
    init, Authority, InitRequest, Issued, LeafRequest, NodeRequest, Permission, Principal, Validity,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

const CLUSTER: &str = "repospanner.test";

fn new_ca(dir: &std::path::Path, name_constraint: bool) -> Authority {
    init(
        dir,
        &InitRequest {
            cluster: CLUSTER.into(),
            validity: Validity::years(10),
            name_constraint,
        },
    )
    .expect("ca init");
    Authority::open(dir).expect("open CA")
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

fn roots(ca: &Authority) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(der(ca.cert_pem())).expect("add root");
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_verdict(ca: &Authority, cert: &Issued) -> Result<(), rustls::Error> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .expect("client verifier");
    verifier
        .verify_client_cert(&der(&cert.cert_pem), &[], UnixTime::now())
        .map(|_| ())
}

fn server_verdict(ca: &Authority, cert: &Issued, name: &str) -> Result<(), rustls::Error> {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .expect("server verifier");
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    verifier
        .verify_server_cert(&der(&cert.cert_pem), &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

fn node(ca: &Authority, name: &str, sans: &[&str], validity: Validity) -> Issued {
    ca.make_node(
        &NodeRequest {
            region: "regiona".into(),
            name: name.into(),
            id: Some(7),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            validity,
        },
        42,
    )
    .expect("node certificate")
}

fn leaf(ca: &Authority, perms: &[Permission], validity: Validity) -> Issued {
    ca.make_leaf(
        &LeafRequest {
            username: "alice".into(),
            permissions: perms.to_vec(),
            region_globs: vec!["region*".into()],
            repo_globs: vec!["rpms/*".into(), "test".into()],
            validity,
        },
        43,
    )
    .expect("leaf certificate")
}

fn expired() -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now - Duration::days(30),
        not_after: now - Duration::days(1),
    }
}

#[test]
fn rustls_accepts_our_node_and_user_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path(), true);
    let n = node(&ca, "nodea", &["127.0.0.1"], Validity::years(1));
    client_verdict(&ca, &n).expect("node cert as client");
    server_verdict(&ca, &n, "nodea.regiona.repospanner.test").expect("node cert as server");
    server_verdict(&ca, &n, "127.0.0.1").expect("node cert for its IP SAN");
    let u = leaf(&ca, &[Permission::Read], Validity::years(1));
    client_verdict(&ca, &u).expect("user cert as client");
    // A user certificate is client-auth only: it can never serve as a node.
    assert!(server_verdict(&ca, &u, "nodea.regiona.repospanner.test").is_err());
}

#[test]
fn rustls_rejects_another_ca_and_expired_certificates() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(a.path(), true);
    let other = new_ca(b.path(), true);
    let foreign_node = node(&other, "nodea", &[], Validity::years(1));
    let foreign_user = leaf(&other, &[Permission::Admin], Validity::years(1));
    assert!(client_verdict(&ca, &foreign_node).is_err());
    assert!(client_verdict(&ca, &foreign_user).is_err());
    assert!(server_verdict(&ca, &foreign_node, "nodea.regiona.repospanner.test").is_err());

    let old_node = node(&ca, "nodeb", &[], expired());
    let old_user = leaf(&ca, &[Permission::Read], expired());
    let e = client_verdict(&ca, &old_user).expect_err("expired user");
    assert!(format!("{e:?}").contains("Expired"), "{e:?}");
    assert!(client_verdict(&ca, &old_node).is_err());
}

#[test]
fn name_constraint_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path(), true);
    // The CA refuses to issue a name outside the cluster domain...
    let refused = ca.make_node(
        &NodeRequest {
            region: "regiona".into(),
            name: "nodea".into(),
            id: None,
            sans: vec!["evil.example.com".into()],
            validity: Validity::years(1),
        },
        5,
    );
    assert!(matches!(
        refused,
        Err(repospanner_ca::Error::OutsideNameConstraint { .. })
    ));
    // ...and a certificate with such a name, signed with the CA key by other means,
    // is rejected by the TLS stack because of the constraint in the CA certificate.
    let key_pem = std::fs::read_to_string(dir.path().join("ca.key")).expect("ca key");
    let ca_key = rcgen::KeyPair::from_pem(&key_pem).expect("parse key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), &ca_key).expect("issuer");
    let mut params =
        rcgen::CertificateParams::new(vec!["evil.example.com".to_string()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let rogue = Issued {
        cert_pem: params.signed_by(&key, &issuer).expect("sign").pem(),
        key_pem: String::new(),
        serial: 0,
        cert_path: None,
        key_path: None,
    };
    let e = server_verdict(&ca, &rogue, "evil.example.com").expect_err("outside the constraint");
    assert!(format!("{e:?}").contains("NameConstraint"), "{e:?}");

    // Without the constraint, the same CA code may issue any name.
    let free_dir = tempfile::tempdir().expect("tempdir");
    let free = new_ca(free_dir.path(), false);
    let n = node(
        &free,
        "nodea",
        &["localhost", "127.0.0.1"],
        Validity::years(1),
    );
    server_verdict(&free, &n, "localhost").expect("unconstrained CA");
}

#[test]
fn extensions_round_trip_for_every_permission_combination() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path(), true);
    for mask in 0u8..16 {
        let perms: Vec<Permission> = Permission::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, p)| p)
            .collect();
        if perms.is_empty() {
            assert!(matches!(
                ca.make_leaf(
                    &LeafRequest {
                        username: "x".into(),
                        permissions: vec![],
                        region_globs: vec!["*".into()],
                        repo_globs: vec!["*".into()],
                        validity: Validity::years(1),
                    },
                    1
                ),
                Err(repospanner_ca::Error::NoPermissions)
            ));
            continue;
        }
        let u = leaf(&ca, &perms, Validity::years(1));
        let p = Principal::from_verified_der(&der(&u.cert_pem), CLUSTER).expect("principal");
        assert_eq!(
            p,
            Principal::User {
                cluster: CLUSTER.into(),
                name: "alice".into(),
                permissions: perms.clone(),
                region_globs: vec!["region*".into()],
                repo_globs: vec!["rpms/*".into(), "test".into()],
            },
            "mask {mask:04b}"
        );
    }
    let n = node(&ca, "nodea", &[], Validity::years(1));
    assert_eq!(
        Principal::from_verified_der(&der(&n.cert_pem), CLUSTER).expect("node principal"),
        Principal::Node {
            cluster: CLUSTER.into(),
            region: "regiona".into(),
            name: "nodea".into(),
            id: 7,
        }
    );
    // The CA is nobody, and a certificate is only a principal in its own cluster.
    assert!(Principal::from_verified_der(&der(ca.cert_pem()), CLUSTER).is_err());
    assert!(matches!(
        Principal::from_verified_der(&der(&n.cert_pem), "other.cluster"),
        Err(repospanner_ca::Error::WrongCluster { .. })
    ));
}

#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path(), true);
    for (region, name) in [
        ("", "a"),
        ("Region", "a"),
        ("r", "-a"),
        ("r", "a.b"),
        ("r", "a/b"),
    ] {
        let r = ca.make_node(
            &NodeRequest {
                region: region.into(),
                name: name.into(),
                id: None,
                sans: vec![],
                validity: Validity::years(1),
            },
            1,
        );
        assert!(r.is_err(), "{region:?} {name:?}");
    }
    for user in ["", "../x", "a/b", ".hidden", "-x", "sp ace", "nul\0"] {
        let r = ca.make_leaf(
            &LeafRequest {
                username: user.into(),
                permissions: vec![Permission::Read],
                region_globs: vec!["*".into()],
                repo_globs: vec!["*".into()],
                validity: Validity::years(1),
            },
            1,
        );
        assert!(r.is_err(), "{user:?}");
    }
}

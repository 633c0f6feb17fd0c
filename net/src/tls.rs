//! TLS configuration (rustls with the ring provider): the user listener (client
//! certificate optional, so public repositories are readable without one), the node
//! listener (node certificate required), server certificates chosen by SNI with a
//! `default`, and the client side used for node-to-node and admin connections.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.into(),
            reason: e.to_string(),
        })?;
    if v.is_empty() {
        return Err(TlsError::Pem {
            what: what.into(),
            reason: "no certificate".into(),
        });
    }
    Ok(v)
}

fn key(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: what.into(),
        reason: e.to_string(),
    })
}

/// The cluster CA as a root store.
pub fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs("CA certificate", ca_pem)? {
        roots.add(c)?;
    }
    Ok(Arc::new(roots))
}

fn certified(
    provider: &CryptoProvider,
    what: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs(what, cert_pem)?;
    let signing = provider
        .key_provider
        .load_private_key(key(what, key_pem)?)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Picks the server certificate by SNI name, else `default`.
#[derive(Debug)]
struct BySni {
    by_name: BTreeMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            hello
                .server_name()
                .and_then(|n| self.by_name.get(n))
                .unwrap_or(&self.default)
                .clone(),
        )
    }
}

/// All TLS configurations of a node.
#[derive(Debug, Clone)]
pub struct Tls {
    pub user: Arc<ServerConfig>,
    pub node: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

/// Builds the node's TLS configurations. `server` maps SNI names to (cert, key) PEM
/// and must have `default`.
pub fn build(
    ca_pem: &[u8],
    node_cert_pem: &[u8],
    node_key_pem: &[u8],
    server: &BTreeMap<String, (Vec<u8>, Vec<u8>)>,
) -> Result<Tls, TlsError> {
    let p = provider();
    let roots = roots(ca_pem)?;
    let mut by_name = BTreeMap::new();
    let mut default = None;
    for (name, (c, k)) in server {
        let ck = certified(&p, &format!("certificates.server.{name}"), c, k)?;
        if name == "default" {
            default = Some(ck);
        } else {
            by_name.insert(name.clone(), ck);
        }
    }
    let default = default.ok_or_else(|| TlsError::Pem {
        what: "certificates.server".into(),
        reason: "no `default` certificate".into(),
    })?;
    let optional = WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut user = ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(optional)
        .with_cert_resolver(Arc::new(BySni { by_name, default }));
    user.alpn_protocols = vec![b"http/1.1".to_vec()];
    // git opens a new connection per command and never resumes sessions; tickets would
    // only add a write after the handshake.
    user.send_tls13_tickets = 0;

    let required = WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let node_key = certified(&p, "certificates.client", node_cert_pem, node_key_pem)?;
    let mut node = ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(required)
        .with_cert_resolver(Arc::new(BySni {
            by_name: BTreeMap::new(),
            default: node_key,
        }));
    node.alpn_protocols = vec![b"http/1.1".to_vec()];
    node.send_tls13_tickets = 0;

    let client = client_config(ca_pem, Some((node_cert_pem, node_key_pem)))?;
    Ok(Tls {
        user: Arc::new(user),
        node: Arc::new(node),
        client,
    })
}

/// A client configuration trusting the cluster CA, presenting `identity` if given.
pub fn client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let cfg = match identity {
        Some((c, k)) => {
            b.with_client_auth_cert(certs("client certificate", c)?, key("client key", k)?)?
        }
        None => b.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

//! The HTTPS client of node-to-node traffic (raft RPCs, object sync, proposals, join):
//! HTTP/1.1 over rustls over glommio TCP, presenting the node certificate, with a small
//! pool of kept-alive connections per peer address.
//!
//! A peer is authenticated by what it is, not by the name it was dialled with: its
//! certificate must chain to the cluster CA and be a node certificate of the same
//! cluster and region ([`NodeVerifier`]). Peers are addressed by `host:port`, which may
//! be an IP address that no certificate names.
//!
//! The node reaches its peers through [`Transport`]: [`NodeClient`] is the HTTPS one; a
//! simulation puts a region on an in-memory network behind the same trait.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{FutureExt, LocalBoxFuture};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use repospanner_ca::Principal;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::http::Io;
use crate::piece::SharedChain;
use crate::tls::{provider, TlsError};

/// Why a node-to-node request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (refused, unreachable, TLS handshake failed).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} did not answer within {secs:.1} s")]
    Timeout { addr: String, secs: f64 },
    /// The connection failed during the exchange.
    #[error("request to {addr} failed: {reason}")]
    Failed { addr: String, reason: String },
    /// The peer answered with an error status.
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
}

impl ClientError {
    /// Whether the request surely never reached the peer's handler.
    pub fn unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// How a node reaches the others' node listeners: `POST` and `GET` of a path on a
/// peer's `host:port`, the body of a 200 answer, or why not ([`ClientError`]; another
/// status is [`ClientError::Status`]). `timeout` bounds the whole exchange.
pub trait Transport: std::fmt::Debug {
    fn post<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
        body: SharedChain,
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Result<Bytes, ClientError>>;

    fn get<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Result<Bytes, ClientError>>;
}

/// Verifies a node's server certificate: chains to the CA, is a node certificate of
/// `cluster` and `region`. The dialled name is not checked (see the module docs).
#[derive(Debug)]
pub struct NodeVerifier {
    ca: CertificateDer<'static>,
    cluster: String,
    region: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        repospanner_ca::authority::verify_cert(
            end_entity,
            &self.ca,
            webpki::KeyUsage::server_auth(),
            now,
        )
        .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        match Principal::from_verified_der(end_entity, &self.cluster) {
            Ok(Principal::Node { region, .. }) if region == self.region => {
                Ok(ServerCertVerified::assertion())
            }
            Ok(Principal::Node { region, .. }) => Err(rustls::Error::General(format!(
                "peer is a node of region {region}, not {}",
                self.region
            ))),
            Ok(_) => Err(rustls::Error::General(
                "peer did not present a node certificate".into(),
            )),
            Err(e) => Err(rustls::Error::General(format!("peer certificate: {e}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client configuration of node-to-node connections.
pub fn node_client_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    cluster: &str,
    region: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let pem = |what: &str, e: rustls_pki_types::pem::Error| TlsError::Pem {
        what: what.into(),
        reason: e.to_string(),
    };
    let ca = CertificateDer::from_pem_slice(ca_pem).map_err(|e| pem("CA certificate", e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem("node certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem("node key", e))?;
    let p = provider();
    let verifier = Arc::new(NodeVerifier {
        ca,
        cluster: cluster.to_owned(),
        region: region.to_owned(),
        provider: p.clone(),
    });
    let mut cfg = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Idle connections kept per peer.
const POOL_PER_PEER: usize = 8;

/// A pooled HTTPS client for one executor (not shared between threads).
pub struct NodeClient {
    tls: Arc<ClientConfig>,
    pool: RefCell<HashMap<String, Vec<SendRequest<Full<SharedChain>>>>>,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient").finish()
    }
}

async fn with_timeout<T>(
    d: Duration,
    addr: &str,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    futures_lite::future::or(fut, async {
        glommio::timer::sleep(d).await;
        Err(ClientError::Timeout {
            addr: addr.to_owned(),
            secs: d.as_secs_f64(),
        })
    })
    .await
}

impl NodeClient {
    pub fn new(tls: Arc<ClientConfig>) -> NodeClient {
        NodeClient {
            tls,
            pool: RefCell::new(HashMap::new()),
        }
    }

    async fn connect(&self, addr: &str) -> Result<SendRequest<Full<SharedChain>>, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let tcp = glommio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| unreachable(format!("bad host name: {e}")))?;
        let mut tls = futures_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, crate::http::buffered(tcp))
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        tls.get_mut()
            .1
            .set_buffer_limit(Some(crate::http::TLS_SEND_BYTES));
        let (sender, conn) = hyper::client::conn::http1::handshake(Io(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        glommio::spawn_local(async move {
            let _ = conn.await;
        })
        .detach();
        Ok(sender)
    }

    fn pooled(&self, addr: &str) -> Option<SendRequest<Full<SharedChain>>> {
        let mut pool = self.pool.borrow_mut();
        let v = pool.get_mut(addr)?;
        while let Some(s) = v.pop() {
            if !s.is_closed() && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    async fn exchange(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: SharedChain,
    ) -> Result<Bytes, ClientError> {
        let failed = |reason: String| ClientError::Failed {
            addr: addr.to_owned(),
            reason,
        };
        let (mut sender, fresh) = match self.pooled(addr) {
            Some(s) => (s, false),
            None => (self.connect(addr).await?, true),
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, addr)
            .body(Full::new(body.clone()))
            .map_err(|e| failed(e.to_string()))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            // A kept-alive connection the peer closed meanwhile: the request never
            // reached it, so one retry on a fresh connection is safe.
            Err(e) if !fresh && (e.is_canceled() || e.is_closed()) => {
                sender = self.connect(addr).await?;
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(hyper::header::HOST, addr)
                    .body(Full::new(body))
                    .map_err(|e| failed(e.to_string()))?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| failed(e.to_string()))?
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?
            .to_bytes();
        {
            let mut pool = self.pool.borrow_mut();
            let v = pool.entry(addr.to_owned()).or_default();
            if v.len() < POOL_PER_PEER {
                v.push(sender);
            }
        }
        if status != StatusCode::OK {
            return Err(ClientError::Status {
                addr: addr.to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(1000)])
                    .trim()
                    .to_owned(),
            });
        }
        Ok(bytes)
    }
}

/// `https://addr{path}`. A [`SharedChain`] body is written as it is, its parts not
/// copied into one buffer first.
impl Transport for NodeClient {
    fn post<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
        body: SharedChain,
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Result<Bytes, ClientError>> {
        with_timeout(timeout, addr, self.exchange(Method::POST, addr, path, body)).boxed_local()
    }

    fn get<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Result<Bytes, ClientError>> {
        with_timeout(
            timeout,
            addr,
            self.exchange(Method::GET, addr, path, SharedChain::new()),
        )
        .boxed_local()
    }
}

impl<T: Transport + ?Sized> Transport for std::rc::Rc<T> {
    fn post<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
        body: SharedChain,
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Result<Bytes, ClientError>> {
        (**self).post(addr, path, body, timeout)
    }

    fn get<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Result<Bytes, ClientError>> {
        (**self).get(addr, path, timeout)
    }
}

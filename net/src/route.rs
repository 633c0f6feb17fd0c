//! Routing between shards. Every shard (one glommio executor, one core) accepts
//! connections on the same ports (SO_REUSEPORT); a repository belongs to exactly one
//! shard, `shard_of(name)`. A request that lands on another shard is passed to the
//! owner by message passing over glommio's shared channels (no locks between shards),
//! and the owner's response is streamed back the same way, chunk by chunk. A push body
//! is received by the shard that accepted it and passed on whole ([`BodyChunk::Received`],
//! after the objects it verified meanwhile, [`BodyChunk::Aside`]).

use std::net::SocketAddr;
use std::rc::Rc;

use crate::gate::gated;
use bytes::Bytes;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use http_body_util::BodyExt;
use hyper::{HeaderMap, Method, Response, StatusCode, Uri};
use rustls_pki_types::CertificateDer;
use tracing::warn;

use crate::http::{self, Body, Peer};

/// The shard that owns repository `name` among `shards`: FNV-1a of the name, stable
/// across versions and nodes (shard k of every node forms the same raft group).
pub fn shard_of(name: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// A request whose body has been read (every endpoint reads its bounded body first).
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A request passed to its owning shard.
#[derive(Debug)]
pub struct Forward {
    pub req: Req,
    pub cert: Option<CertificateDer<'static>>,
    pub addr: SocketAddr,
    /// Handle it on this shard only (a part of a gathered request such as listrepos).
    pub local_only: bool,
    pub reply: SharedSender<Reply>,
    /// A push body the accepting shard receives itself, in parts; `None`: in `req`.
    pub body: Option<SharedReceiver<BodyChunk>>,
}

/// A part of a push body the accepting shard receives itself, passed to the owner.
#[derive(Debug)]
pub enum BodyChunk {
    /// The whole push (spooled, its pack read while it arrived): the last message.
    Received(Box<Received>),
    /// The accepting shard refused the body while receiving it: the last message.
    Refused(Refusal),
    /// Objects the accepting shard verified while the body arrives, for the owner to
    /// write aside (before `Received`).
    Aside(Vec<crate::backend::StoredObject>),
}

/// A push body read to its end: the whole request, and the entries of its pack, read
/// while it arrived (`None`: the body holds no pack).
#[derive(Debug)]
pub struct Received {
    pub body: Bytes,
    pub pre_read: Option<crate::git::receive::PackRead>,
    /// When the push's first byte arrived (its latency is counted from there).
    pub started: std::time::Instant,
}

/// Why a request body was refused while it arrived: the answer to give.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// Answer as git protocol (an `ERR` packet in a 200), not as an HTTP status.
    pub git: bool,
}

/// A push body from the shard that accepted it, in parts.
#[derive(Debug)]
pub struct ShardBody {
    rx: ConnectedReceiver<BodyChunk>,
}

impl ShardBody {
    pub fn new(rx: ConnectedReceiver<BodyChunk>) -> ShardBody {
        ShardBody { rx }
    }

    /// The next part; `None` if the accepting shard went away before the last.
    pub async fn next(&mut self) -> Option<BodyChunk> {
        gated(self.rx.recv()).await
    }
}

/// The response, streamed back.
#[derive(Debug)]
pub enum Reply {
    Head(StatusCode, HeaderMap),
    Data(Bytes),
    /// The body is complete (without it, the forwarded response is abandoned).
    End,
}

/// Where a push body comes from: the client, or the shard that accepted it.
#[derive(Debug)]
pub enum Source {
    Client(hyper::body::Incoming),
    Shard(ShardBody),
}

/// A client's push body, read as it arrives.
#[derive(Debug)]
pub enum ClientBody {
    Reading(hyper::body::Incoming),
    /// Given up: the body was refused (see [`ClientBody::linger`]).
    Refused,
}

impl ClientBody {
    /// The next piece of the body; `None` at its end. A client that sends nothing for
    /// [`http::BODY_IDLE`] fails.
    pub async fn next(&mut self) -> Result<Option<Bytes>, http::BodyError> {
        match self {
            ClientBody::Reading(body) => http::next_chunk(body).await,
            ClientBody::Refused => Err(http::BodyError::Read("the body was refused".into())),
        }
    }

    /// Gives up the body after its request was refused: it is read to its end (and
    /// dropped) in the background for a bounded time, so that the client reads the
    /// refusal instead of a reset connection ([`http::linger`]).
    pub fn linger(&mut self) {
        if let ClientBody::Reading(body) = std::mem::replace(self, ClientBody::Refused) {
            glommio::spawn_local(http::linger(body)).detach();
        }
    }
}

/// How many forwarded requests may queue between two shards.
const QUEUE: usize = 256;
/// How many response chunks may be in flight back to the forwarding shard.
const REPLY_QUEUE: usize = 8;

/// The channels of a node's shards, before each end is connected on its executor:
/// `senders[i][j]` sends from shard i to shard j; `receivers[j]` are shard j's inboxes.
#[allow(clippy::type_complexity)]
pub fn mesh(
    shards: usize,
) -> (
    Vec<Vec<Option<SharedSender<Forward>>>>,
    Vec<Vec<SharedReceiver<Forward>>>,
) {
    let mut senders: Vec<Vec<Option<SharedSender<Forward>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    let mut receivers: Vec<Vec<SharedReceiver<Forward>>> =
        (0..shards).map(|_| Vec::new()).collect();
    for (i, row) in senders.iter_mut().enumerate() {
        for (j, slot) in row.iter_mut().enumerate() {
            if i != j {
                let (tx, rx) = shared_channel::new_bounded(QUEUE);
                *slot = Some(tx);
                receivers[j].push(rx);
            }
        }
    }
    (senders, receivers)
}

/// A shard's connected ends: one sender per other shard.
#[derive(Debug, Default)]
pub struct Peers {
    pub to: Vec<Option<ConnectedSender<Forward>>>,
}

impl Peers {
    pub async fn connect(senders: Vec<Option<SharedSender<Forward>>>) -> Peers {
        let mut to = Vec::with_capacity(senders.len());
        for s in senders {
            to.push(match s {
                Some(s) => Some(gated(s.connect()).await),
                None => None,
            });
        }
        Peers { to }
    }
}

fn unavailable(msg: &str) -> Response<Body> {
    let mut r = Response::new(http::full(format!("{msg}\n")));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r
}

/// Sends `req` to shard `target` and returns its streamed response.
pub async fn forward(
    peers: &Peers,
    target: usize,
    req: Req,
    cert: Option<CertificateDer<'static>>,
    addr: SocketAddr,
    local_only: bool,
) -> Response<Body> {
    forward_with(peers, target, req, cert, addr, local_only, None).await
}

pub async fn forward_with(
    peers: &Peers,
    target: usize,
    req: Req,
    cert: Option<CertificateDer<'static>>,
    addr: SocketAddr,
    local_only: bool,
    body: Option<SharedReceiver<BodyChunk>>,
) -> Response<Body> {
    let Some(Some(tx)) = peers.to.get(target) else {
        return unavailable("no route to the shard that owns this repository");
    };
    let (reply_tx, reply_rx) = shared_channel::new_bounded(REPLY_QUEUE);
    let forwarded = gated(tx.send(Forward {
        req,
        cert,
        addr,
        local_only,
        reply: reply_tx,
        body,
    }));
    if forwarded.await.is_err() {
        return unavailable("the shard that owns this repository is not running");
    }
    // Awaited by the client's connection task, which its request body's reader wakes
    // at every piece: gated (see crate::gate).
    let rx = gated(reply_rx.connect()).await;
    let Some(Reply::Head(status, headers)) = gated(rx.recv()).await else {
        return unavailable("the shard that owns this repository gave no answer");
    };
    let (mut out, body) = http::channel();
    glommio::spawn_local(async move {
        while let Some(reply) = gated(rx.recv()).await {
            match reply {
                Reply::Data(b) => {
                    if out.send(b).await.is_err() {
                        return;
                    }
                }
                Reply::End => {
                    out.finish();
                    return;
                }
                Reply::Head(..) => return,
            }
        }
    })
    .detach();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Serves the requests other shards pass to this one:
/// `handle(req, peer, local_only, streamed body)`.
pub async fn serve_inbound<H, F>(rx: SharedReceiver<Forward>, handle: H)
where
    H: Fn(Req, Rc<Peer>, bool, Option<SharedReceiver<BodyChunk>>) -> F + Clone + 'static,
    F: std::future::Future<Output = Response<Body>> + 'static,
{
    let rx: ConnectedReceiver<Forward> = gated(rx.connect()).await;
    while let Some(fwd) = gated(rx.recv()).await {
        let handle = handle.clone();
        glommio::spawn_local(async move {
            let peer = Rc::new(Peer {
                addr: fwd.addr,
                cert: fwd.cert,
            });
            // Connected before handling: a glommio task waiting for the other end of
            // a channel to connect is woken on every turn of its executor, so the
            // forwarding shard spun at full speed for as long as this handling took
            // (a whole push: 0.1-0.3 s of one core).
            let tx = gated(fwd.reply.connect()).await;
            let resp = handle(fwd.req, peer, fwd.local_only, fwd.body).await;
            let (parts, mut body) = resp.into_parts();
            if gated(tx.send(Reply::Head(parts.status, parts.headers)))
                .await
                .is_err()
            {
                return;
            }
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(data) = f.into_data() {
                            // Leaves the shard: a copy of what points into its buffers.
                            if gated(tx.send(Reply::Data(data.into_shared())))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "response body failed while forwarding");
                        return;
                    }
                }
            }
            let _ = gated(tx.send(Reply::End)).await;
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable_and_spreads() {
        assert_eq!(shard_of("test", 1), 0);
        assert_eq!(shard_of("test", 4), shard_of("test", 4));
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(
            shard_of("a", 1 << 20),
            (0xaf63_dc4c_8601_ec8c_u64 % (1 << 20)) as usize
        );
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            counts[shard_of(&format!("rpms/pkg{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|c| *c > 150), "{counts:?}");
    }
}

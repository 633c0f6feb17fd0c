//! HTTP/1.1 over TLS on glommio: the accept loop, the adapter from futures-io to
//! hyper's I/O traits, a glommio timer for hyper (header read timeout), and body
//! helpers (bounded collection, gzip request bodies, streamed responses).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tracing::{debug, info, warn};

pub use crate::piece::Piece;

/// Response bodies: a whole buffer or a stream fed by a task, in [`Piece`]s (which
/// may point into the shard's read buffers).
/// Not `Send` (pieces are not), which hyper's HTTP/1 connections, each served on the
/// shard that accepted it, do not need.
pub type Body = Pin<Box<dyn hyper::body::Body<Data = Piece, Error = io::Error>>>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Box::pin(http_body_util::Full::new(Piece::from(b.into())).map_err(|never| match never {}))
}

/// A response body fed through a bounded channel: the producer waits while the client
/// is slow, so a large pack is never held whole in memory.
///
/// The body is complete only once the producer says so ([`BodySender::finish`]): if
/// it stops before (an error half way through a pack, a task dropped), the body ends
/// in an error, and hyper aborts the response instead of ending it as if whole: a
/// chunked response loses its last chunk and the connection is closed, so the
/// client sees a broken transfer, never a clean 200 with half a pack.
pub fn channel() -> (BodySender, Body) {
    use futures_util::StreamExt;
    let (tx, rx) = futures_channel::mpsc::channel::<Piece>(8);
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = finished.clone();
    let end = futures_util::stream::once(async move {
        if done.load(std::sync::atomic::Ordering::Acquire) {
            None
        } else {
            Some(Err(io::Error::other(
                "the response was abandoned before it was complete",
            )))
        }
    })
    .filter_map(std::future::ready);
    let body = rx.map(|b| Ok::<_, io::Error>(Frame::data(b))).chain(end);
    let body = http_body_util::StreamBody::new(body);
    (BodySender { tx, finished }, Box::pin(body))
}

/// The producing end of a [`channel`] body.
#[derive(Debug, Clone)]
pub struct BodySender {
    tx: futures_channel::mpsc::Sender<Piece>,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

/// The client went away: nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client is gone")]
pub struct Gone;

impl BodySender {
    /// Sends `b`, waiting while the channel is full.
    pub async fn send(&mut self, b: impl Into<Piece>) -> Result<(), Gone> {
        use futures_util::SinkExt;
        self.tx.send(b.into()).await.map_err(|_| Gone)
    }

    /// Sends `b` if there is room now (progress messages: dropped for a slow client).
    pub fn try_send(&mut self, b: impl Into<Piece>) -> Result<(), Gone> {
        self.tx.try_send(b.into()).map_err(|_| Gone)
    }

    /// The body is complete: it ends cleanly once what was sent is taken.
    pub fn finish(self) {
        self.finished
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Most bytes one read through [`Io`] offers to the stream below it.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Bytes a socket is read with at once. rustls asks for 4 KiB at a time; reading the
/// socket that way cost a push of 100 MiB 7,500 `recv`s and 18,000 `io_uring_enter`s
/// (each short read arms a poll), a third of the accepting shard's CPU.
pub const SOCKET_READ_BYTES: usize = 256 << 10;

/// Most TLS bytes rustls holds for a connection before the socket takes them
/// (rustls's default is 64 KiB): what one vectored write of [`Tcp`] can hand over,
/// 16 records of 16 KiB.
pub const TLS_SEND_BYTES: usize = 256 << 10;

/// A TCP stream as TLS runs over it: read through a buffer of [`SOCKET_READ_BYTES`],
/// and written with one `sendmsg` per vectored write.
///
/// glommio's stream writes only the first slice of a vectored write, and rustls
/// offers its records as one slice each: a clone of 100 MiB made 7,000 `send`s of
/// one 16 KiB record, and each pushed a segment of that size through loopback.
pub struct Tcp(glommio::net::TcpStream<glommio::net::Preallocated>);

impl std::fmt::Debug for Tcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tcp")
    }
}

/// `stream` with its reads buffered (see [`SOCKET_READ_BYTES`]).
pub fn buffered(stream: glommio::net::TcpStream) -> Tcp {
    Tcp(stream.buffered_with(glommio::net::Preallocated::new(SOCKET_READ_BYTES)))
}

/// `sendmsg` of `bufs` without waiting: the bytes the socket took.
fn send_vectored(fd: std::os::fd::RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (std documents it);
    // the slices outlive the call, which only reads them; the header is zeroed
    // but for the iovec array and its length.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len().min(1024) as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use std::os::fd::AsRawFd;
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            match send_vectored(self.0.as_raw_fd(), bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A full socket: glommio's write of the first slice arms the wait for
                // room (or takes it, if room came meanwhile).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Pin::new(&mut self.0).poll_write(cx, first)
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// futures-io stream → hyper I/O.
#[derive(Debug)]
pub struct Io<T>(pub T);

impl<T: AsyncRead + Unpin> hyper::rt::Read for Io<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the unfilled part is zeroed before it is viewed as `[u8]`, and we
        // advance by exactly the number of bytes the reader wrote into it.
        unsafe {
            let unfilled: &mut [MaybeUninit<u8>] = buf.as_mut();
            // hyper offers its whole read buffer (up to hundreds of KiB); TLS hands
            // over a record or so per read, so only READ_CHUNK_BYTES of it are zeroed
            // and offered (zeroing all of it was 4% of a large push's CPU).
            let len = unfilled.len().min(READ_CHUNK_BYTES);
            let unfilled = &mut unfilled[..len];
            for b in unfilled.iter_mut() {
                b.write(0);
            }
            let slice = &mut *(unfilled as *mut [MaybeUninit<u8>] as *mut [u8]);
            match Pin::new(&mut self.0).poll_read(cx, slice) {
                Poll::Ready(Ok(n)) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for Io<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    // Without these hyper "flattens": it copies every body chunk into its own write
    // buffer before writing it (3% of a 3-node leader's CPU for a 102 MiB push, by
    // perf). With them it queues the chunks and hands them over as they are; TLS
    // (rustls) takes several slices into one record.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// hyper's timer on glommio.
#[derive(Debug, Clone, Copy)]
pub struct Timer;

struct Sleep(glommio::timer::Timer);

// SAFETY: hyper requires `Send + Sync` sleeps, but every connection future (and so
// every sleep it creates) lives and is polled on the single executor thread that
// spawned it with `spawn_local`; it is never moved to or touched from another thread.
unsafe impl Send for Sleep {}
unsafe impl Sync for Sleep {}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for Timer {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep(glommio::timer::Timer::new(d)))
    }
    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(at.saturating_duration_since(Instant::now()))
    }
}

/// Why a request body was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("reading the request body: {0}")]
    Read(String),
    #[error("request body is not valid gzip")]
    Gzip,
    #[error("{0}")]
    Encoding(String),
    #[error("the node holds too many request bodies right now (limits.buffered_bytes_max); retry")]
    Busy,
    #[error("the client sent nothing for {0} seconds")]
    Stalled(u64),
}

/// How many bytes of request bodies a shard may hold at once: a named limit, taken
/// as data arrives and given back when the request is done. When it is exhausted a
/// request fails at once (503) instead of waiting, so two half-read pushes can never
/// wait for each other.
#[derive(Debug, Clone)]
pub struct Budget {
    kib: Rc<glommio::sync::Semaphore>,
    total_kib: u64,
}

/// Part of a [`Budget`], given back on drop.
#[derive(Debug, Default)]
pub struct Held(Vec<glommio::sync::StaticPermit>);

impl Held {
    pub fn merge(&mut self, other: Held) {
        self.0.extend(other.0);
    }
}

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        Budget {
            kib: Rc::new(glommio::sync::Semaphore::new(bytes.div_ceil(1024))),
            total_kib: bytes.div_ceil(1024),
        }
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> u64 {
        self.total_kib * 1024
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> u64 {
        self.total_kib.saturating_sub(self.kib.available()) * 1024
    }

    /// Takes `bytes` if that much is free.
    pub fn try_take(&self, bytes: usize) -> Option<Held> {
        let units = (bytes as u64).div_ceil(1024);
        if units == 0 {
            return Some(Held::default());
        }
        self.kib
            .try_acquire_static_permit(units)
            .ok()
            .map(|p| Held(vec![p]))
    }
}

/// The longest pause allowed between two pieces of a request body.
pub const BODY_IDLE: Duration = Duration::from_secs(120);

/// The next piece of a client's request body; `None` at its end. A client that sends
/// nothing for [`BODY_IDLE`] fails.
pub async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>, BodyError> {
    loop {
        let next = glommio::timer::timeout(BODY_IDLE, async { Ok(body.frame().await) })
            .await
            .map_err(|_| BodyError::Stalled(BODY_IDLE.as_secs()))?;
        match next {
            None => return Ok(None),
            Some(Err(e)) => return Err(BodyError::Read(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// How long a refused request's body is still read (and dropped) after the refusal,
/// and the longest pause in it: see [`linger`].
pub const LINGER_TOTAL: Duration = Duration::from_secs(10);
pub const LINGER_IDLE: Duration = Duration::from_secs(2);

/// Reads and drops the rest of a request body whose request was refused before it
/// ended, for at most [`LINGER_TOTAL`] (as nginx's lingering close). Closing the
/// connection on unread bytes makes the kernel reset it, and a reset that reaches the
/// client while it is still sending can destroy the refusal before the client reads it
/// (git then reports "broken pipe" instead of, say, 507 Insufficient Storage). While
/// this drains, the client reads the refusal and stops sending (curl does on an error
/// status mid-upload). The bytes are neither kept nor counted against a budget.
pub async fn linger(mut body: Incoming) {
    let until = std::time::Instant::now() + LINGER_TOTAL;
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        let pause = left.min(LINGER_IDLE);
        match glommio::timer::timeout(pause, async { Ok(body.frame().await) }).await {
            Ok(Some(Ok(_))) => {}
            // The end of the body, a broken connection, or a pause too long.
            Ok(None | Some(Err(_))) | Err(_) => return,
        }
    }
}

/// A request body being gathered: at most `max` bytes, each taken from a shard's
/// budget as it arrives.
#[derive(Debug)]
pub struct Gathered<'b> {
    pub bytes: Vec<u8>,
    pub held: Held,
    max: u64,
    budget: &'b Budget,
}

impl<'b> Gathered<'b> {
    pub fn new(max: u64, budget: &'b Budget) -> Self {
        Gathered {
            bytes: Vec::new(),
            held: Held::default(),
            max,
            budget,
        }
    }

    /// Appends `data`, or fails if it goes over the size limit or the budget.
    pub fn push(&mut self, data: &[u8]) -> Result<(), BodyError> {
        if self.bytes.len() as u64 + data.len() as u64 > self.max {
            return Err(BodyError::TooLarge(self.max));
        }
        self.held
            .merge(self.budget.try_take(data.len()).ok_or(BodyError::Busy)?);
        self.bytes.extend_from_slice(data);
        Ok(())
    }
}

/// Largest buffer [`collect`] makes before the body's bytes arrive.
const PRESIZE_MAX_BYTES: u64 = 64 << 20;

/// How a request body is encoded (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// The request's `Content-Encoding`: none, `identity` or `gzip` (git compresses large
/// negotiation bodies); anything else is refused.
pub fn encoding(headers: &hyper::HeaderMap) -> Result<Encoding, BodyError> {
    let mut all = headers.get_all(hyper::header::CONTENT_ENCODING).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return match headers.contains_key(hyper::header::CONTENT_ENCODING) {
            true => Err(BodyError::Encoding("more than one Content-Encoding".into())),
            false => Ok(Encoding::Identity),
        };
    };
    let v = v.as_bytes().trim_ascii();
    if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") {
        Ok(Encoding::Gzip)
    } else if v.eq_ignore_ascii_case(b"identity") {
        Ok(Encoding::Identity)
    } else {
        Err(BodyError::Encoding(format!(
            "Content-Encoding {} is not supported (gzip is)",
            crate::git::excerpt(v)
        )))
    }
}

/// Collects a request body up to `max` bytes as it was sent (compressed or not),
/// taking them from `budget` as they arrive.
pub async fn collect(
    req: Request<Incoming>,
    max: u64,
    budget: &Budget,
) -> Result<(Vec<u8>, Held), BodyError> {
    // Sized from Content-Length up front (to a bound, as the header is the peer's
    // word): growing by doubling copied a 8 MiB object-sync body about twice over.
    let expect = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0)
        .min(max)
        .min(PRESIZE_MAX_BYTES) as usize;
    let mut body = req.into_body();
    let mut got = Gathered::new(max, budget);
    got.bytes.reserve_exact(expect);
    while let Some(data) = next_chunk(&mut body).await? {
        if let Err(e) = got.push(&data) {
            // Refused mid-body: the rest is drained so the client reads the refusal.
            glommio::spawn_local(linger(body)).detach();
            return Err(e);
        }
    }
    Ok((got.bytes, got.held))
}

/// How much a gzip body is inflated at a time: the most memory one step takes beyond
/// what the budget already holds.
const INFLATE_STEP_BYTES: usize = 64 << 10;

/// Inflates a gzip request body (once the request is authorized), a step at a time,
/// each step taken from `budget` and held to `max` inflated bytes: a small body that
/// inflates to gigabytes fails at `max` having held at most `max`.
pub fn gunzip(compressed: &[u8], max: u64, budget: &Budget) -> Result<(Vec<u8>, Held), BodyError> {
    use std::io::Read;
    let mut z = flate2::read::GzDecoder::new(compressed);
    let mut out = Gathered::new(max, budget);
    let mut step = vec![0u8; INFLATE_STEP_BYTES];
    loop {
        let n = match z.read(&mut step) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(BodyError::Gzip),
        };
        out.push(&step[..n])?;
    }
    Ok((out.bytes, out.held))
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified client certificate, if one was presented.
    pub cert: Option<CertificateDer<'static>>,
}

/// Binds `addr` and runs `connection` for every connection accepted there, at most
/// `connections_max` at once, forever.
async fn accept<C, Fut>(
    addr: SocketAddr,
    connections_max: u32,
    what: &str,
    connection: C,
) -> io::Result<()>
where
    C: Fn(glommio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let listener = glommio::net::TcpListener::bind(addr)?;
    info!(%addr, "listening ({what})");
    let slots = Rc::new(glommio::sync::Semaphore::new(u64::from(connections_max)));
    loop {
        let permit = slots
            .clone()
            .acquire_static_permit(1)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                continue;
            }
        };
        let peer_addr = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        // Without TCP_NODELAY a streamed reply's second small write waits for the
        // client's delayed ACK of the first: measured 42 ms added to every push.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(peer = %peer_addr, error = %e, "TCP_NODELAY");
        }
        let served = connection(stream, peer_addr);
        glommio::spawn_local(async move {
            let _permit = permit;
            served.await;
        })
        .detach();
    }
}

/// Accepts TLS connections on `addr` forever and serves HTTP/1.1 with `handle`.
/// At most `connections_max` connections are served at once.
pub async fn serve<H, F>(
    addr: SocketAddr,
    tls: Arc<ServerConfig>,
    connections_max: u32,
    handle: H,
) -> io::Result<()>
where
    H: Fn(Request<Incoming>, Rc<Peer>) -> F + Clone + 'static,
    F: Future<Output = Response<Body>> + 'static,
{
    let acceptor = futures_rustls::TlsAcceptor::from(tls);
    accept(addr, connections_max, "TLS", move |stream, peer_addr| {
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        async move {
            let mut tls = match glommio::timer::timeout(Duration::from_secs(30), async {
                acceptor
                    .accept(buffered(stream))
                    .await
                    .map_err(glommio::GlommioError::IoError)
            })
            .await
            {
                Ok(t) => t,
                Err(e) => {
                    debug!(peer = %peer_addr, error = %e, "TLS handshake failed");
                    return;
                }
            };
            tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BYTES));
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            let peer = Rc::new(Peer {
                addr: peer_addr,
                cert,
            });
            serve_connection(Io(tls), peer, handle).await;
        }
    })
    .await
}

/// Serves HTTP/1.1 on one accepted connection with `handle` until it ends.
async fn serve_connection<T, H, F>(io: Io<T>, peer: Rc<Peer>, handle: H)
where
    Io<T>: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    H: Fn(Request<Incoming>, Rc<Peer>) -> F + 'static,
    F: Future<Output = Response<Body>> + 'static,
{
    let addr = peer.addr;
    let svc = hyper::service::service_fn(move |req| {
        let fut = handle(req, peer.clone());
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(Timer)
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, svc);
    if let Err(e) = conn.await {
        debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}

/// The longest a connection to the plain listener lives.
pub const PLAIN_CONNECTION_MAX: Duration = Duration::from_secs(60);

/// Accepts plain TCP connections on `addr` forever and serves HTTP/1.1 with `handle`,
/// at most `connections_max` at once: the listener for scrapers on a private address
/// (`listen.metrics`), which answers health and metrics only.
pub async fn serve_plain<H, F>(addr: SocketAddr, connections_max: u32, handle: H) -> io::Result<()>
where
    H: Fn(Request<Incoming>, Rc<Peer>) -> F + Clone + 'static,
    F: Future<Output = Response<Body>> + 'static,
{
    accept(
        addr,
        connections_max,
        "plain HTTP: health and metrics",
        move |stream, addr| {
            let handle = handle.clone();
            async move {
                let peer = Rc::new(Peer { addr, cert: None });
                // A client that never reads its answers cannot keep a slot: the
                // connection ends after PLAIN_CONNECTION_MAX whatever it does (scrapers and
                // load balancers connect again).
                futures_lite::future::or(
                    serve_connection(Io(buffered(stream)), peer, handle),
                    glommio::timer::sleep(PLAIN_CONNECTION_MAX),
                )
                .await;
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_instead_of_waiting_and_refills_on_drop() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let b = Budget::new(10 * 1024);
                let first = b.try_take(8 * 1024).expect("fits");
                assert!(b.try_take(4 * 1024).is_none(), "over budget");
                let small = b.try_take(1000).expect("a small one still fits");
                drop(first);
                assert!(b.try_take(8 * 1024).is_some(), "given back on drop");
                drop(small);
                assert!(b.try_take(0).is_some());
            })
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn a_gzip_bomb_stops_at_its_limit_within_the_budget() {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            z.write_all(&zeros).expect("deflate");
        }
        let bomb = z.finish().expect("deflate"); // 256 MiB in about 250 KiB
        assert!(bomb.len() < 1 << 20);
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let budget = Budget::new(64 << 20);
                match gunzip(&bomb, 1 << 20, &budget) {
                    Err(BodyError::TooLarge(max)) => assert_eq!(max, 1 << 20),
                    other => panic!("{other:?}"),
                }
                // Over the budget before the limit: refused as busy.
                let small = Budget::new(512 << 10);
                assert!(matches!(
                    gunzip(&bomb, 8 << 20, &small),
                    Err(BodyError::Busy)
                ));
                // Everything given back: the whole budget is free again.
                assert!(budget.try_take(64 << 20).is_some());
                // A body that is not gzip, and one cut short.
                assert!(matches!(
                    gunzip(b"plain", 1 << 20, &budget),
                    Err(BodyError::Gzip)
                ));
                assert!(matches!(
                    gunzip(&bomb[..bomb.len() / 2], 1 << 30, &Budget::new(1 << 30)),
                    Err(BodyError::Gzip)
                ));
                let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(b"0009done\n").expect("deflate");
                let (plain, _held) =
                    gunzip(&z.finish().expect("gzip"), 100, &budget).expect("valid");
                assert_eq!(plain, b"0009done\n");
            })
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn content_encodings() {
        let h = |v: &[&str]| {
            let mut m = hyper::HeaderMap::new();
            for v in v {
                m.append(
                    hyper::header::CONTENT_ENCODING,
                    hyper::header::HeaderValue::from_str(v).expect("value"),
                );
            }
            encoding(&m)
        };
        assert_eq!(h(&[]).ok(), Some(Encoding::Identity));
        assert_eq!(h(&["gzip"]).ok(), Some(Encoding::Gzip));
        assert_eq!(h(&[" GZIP "]).ok(), Some(Encoding::Gzip));
        assert_eq!(h(&["identity"]).ok(), Some(Encoding::Identity));
        assert!(h(&["br"]).is_err());
        assert!(h(&["gzip", "gzip"]).is_err());
        assert!(h(&["gzip, deflate"]).is_err());
    }

    #[test]
    fn vectored_writes_past_a_full_socket_arrive_whole_and_in_order() {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("addr");
                // 32 MiB in 64 slices of odd sizes: far more than a socket buffer holds,
                // so writes come back short and wait for room.
                let slices: Vec<Vec<u8>> = (0..64u32)
                    .map(|i| {
                        (0..(512 << 10) + i as usize * 17)
                            .map(|j| (j as u32).wrapping_mul(31).wrapping_add(i) as u8)
                            .collect()
                    })
                    .collect();
                let want: Vec<u8> = slices.concat();
                let reader = glommio::spawn_local(async move {
                    let mut s = buffered(listener.accept().await.expect("accept"));
                    // Let the writer fill the socket first.
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.expect("read");
                    got
                });
                let mut w = buffered(
                    glommio::net::TcpStream::connect(addr)
                        .await
                        .expect("connect"),
                );
                let mut sent = 0;
                let (mut i, mut off) = (0, 0);
                while i < slices.len() {
                    let mut bufs = vec![io::IoSlice::new(&slices[i][off..])];
                    bufs.extend(slices[i + 1..].iter().map(|s| io::IoSlice::new(s)));
                    let mut n = w.write_vectored(&bufs).await.expect("write");
                    assert!(n > 0, "progress");
                    sent += n;
                    while i < slices.len() && n >= slices[i].len() - off {
                        n -= slices[i].len() - off;
                        (i, off) = (i + 1, 0);
                    }
                    off += n;
                }
                w.close().await.expect("close");
                assert_eq!(sent, want.len());
                let got = reader.await;
                assert!(got == want, "the bytes as written, in order");
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}

//! The bridge's HTTPS client: one request per connection, request bodies sent as they
//! are read (chunked) and response bodies read as they arrive, so a push or a clone
//! of any size passes through without being held. A response that ends early (no last
//! chunk, fewer bytes than announced, no TLS close) is an error, never a shorter body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::ServerName;

/// Where requests go: `baseurl` split, and the TLS configuration.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    /// `host:port` as written (the Host header).
    hostport: String,
    /// The URL's path, without its trailing slash (prefixed to every request path).
    prefix: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Target {
    pub fn new(baseurl: &str, tls: Arc<rustls::ClientConfig>) -> Result<Target> {
        let rest = baseurl
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("baseurl {baseurl:?}: only https:// is supported"))?;
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .with_context(|| format!("port in {baseurl}"))?,
            ),
            _ => (hostport, 443),
        };
        if host.is_empty() {
            bail!("baseurl {baseurl:?} has no host");
        }
        let path = path.trim_end_matches('/');
        Ok(Target {
            host: host.to_owned(),
            port,
            hostport: hostport.to_owned(),
            prefix: if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            },
            tls,
        })
    }
}

/// A request's body.
pub enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    /// `first`, then everything `rest` reads, sent as it is read.
    Stream {
        first: &'a [u8],
        rest: &'a mut dyn Read,
    },
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A response whose body is read as it arrives.
pub struct Response {
    pub status: u16,
    pub body: BodyReader,
}

/// Sends one request; returns once the response's head has arrived.
pub fn request(
    t: &Target,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Body<'_>,
) -> Result<Response> {
    let name =
        ServerName::try_from(t.host.clone()).with_context(|| format!("server name {}", t.host))?;
    let conn = rustls::ClientConnection::new(t.tls.clone(), name)?;
    let tcp = connect(t).with_context(|| format!("connecting to {}", t.hostport))?;
    // A node that stops reading or answering does not hold the client for ever.
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = tcp.set_nodelay(true);
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: repobridge/{}\r\n",
        t.prefix,
        t.hostport,
        crate::VERSION
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match &body {
        Body::None => head.push_str("\r\n"),
        Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n\r\n", b.len())),
        Body::Stream { .. } => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
    }
    let sending = format!("sending to {}", t.hostport);
    tls.write_all(head.as_bytes()).context(sending.clone())?;
    match body {
        Body::None => {}
        Body::Bytes(b) => tls.write_all(b).context(sending.clone())?,
        Body::Stream { first, rest } => {
            chunk(&mut tls, first).context(sending.clone())?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match rest.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("reading what the client sends"),
                };
                chunk(&mut tls, &buf[..n]).context(sending.clone())?;
            }
            tls.write_all(b"0\r\n\r\n").context(sending.clone())?;
        }
    }
    tls.flush().context(sending)?;
    let mut r = BufReader::with_capacity(64 << 10, tls);
    let status_line = line(&mut r)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line {status_line:?}"))?;
    let mut mode = Mode::Close;
    loop {
        let l = line(&mut r)?;
        if l.is_empty() {
            break;
        }
        let l = l.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            mode = Mode::Chunked {
                left: 0,
                done: false,
            };
        } else if let Some(v) = l.strip_prefix("content-length:") {
            let n = v
                .trim()
                .parse::<u64>()
                .map_err(|_| anyhow!("bad Content-Length"))?;
            if !matches!(mode, Mode::Chunked { .. }) {
                mode = Mode::Length(n);
            }
        }
    }
    Ok(Response {
        status,
        body: BodyReader { r, mode },
    })
}

/// How long a read or write of the node's connection may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(600);

/// Each address of the node's host in turn, 30 s each.
fn connect(t: &Target) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address");
    for a in (t.host.as_str(), t.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(30)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn chunk(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    if b.is_empty() {
        return Ok(());
    }
    w.write_all(format!("{:x}\r\n", b.len()).as_bytes())?;
    w.write_all(b)?;
    w.write_all(b"\r\n")
}

/// Reads a line of the head (at most 64 KiB), without its CRLF.
fn line(r: &mut impl BufRead) -> Result<String> {
    let mut l = Vec::new();
    r.take(64 << 10).read_until(b'\n', &mut l)?;
    if !l.ends_with(b"\n") {
        bail!("the response ended in its head");
    }
    while l.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        l.pop();
    }
    Ok(String::from_utf8_lossy(&l).into_owned())
}

enum Mode {
    /// Bytes left in the current chunk; whether the last chunk came.
    Chunked {
        left: u64,
        done: bool,
    },
    Length(u64),
    /// Until the connection closes (cleanly, with TLS's close_notify).
    Close,
}

/// A response body, read as it arrives.
pub struct BodyReader {
    r: BufReader<Tls>,
    mode: Mode,
}

fn cut_short() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the response ended before it was complete (the server abandoned it)",
    )
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.mode {
            Mode::Length(0) | Mode::Chunked { done: true, .. } => Ok(0),
            Mode::Length(left) => {
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(cut_short());
                }
                *left -= n as u64;
                Ok(n)
            }
            Mode::Close => self.r.read(buf),
            Mode::Chunked { left, done } => {
                if *left == 0 {
                    let l = line(&mut self.r).map_err(|_| cut_short())?;
                    let size = u64::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
                        })?;
                    if size == 0 {
                        // Trailers, then the blank line.
                        while !line(&mut self.r).map_err(|_| cut_short())?.is_empty() {}
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(cut_short());
                }
                *left -= n as u64;
                if *left == 0 {
                    let mut crlf = [0u8; 2];
                    self.r.read_exact(&mut crlf).map_err(|_| cut_short())?;
                }
                Ok(n)
            }
        }
    }
}

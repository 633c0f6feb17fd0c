//! Pushes whose body arrives in tens of thousands of pieces, through whichever shard
//! accepts the connection: half of them land on a shard that does not own the
//! repository, whose connection task waits on the owner's answer while the body's
//! reader wakes it at every piece. glommio 0.9 kept a clone of the task's waker per
//! such wake and overflowed its count (net/src/gate.rs): the node died.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::noise;
use common::packs::{push_body, OneFileCommit};
use common::region::Region;

/// POSTs `body` to `path` as admin with `Transfer-Encoding: chunked`, `piece` bytes a
/// chunk; returns the status line and the raw reply.
fn post_in_pieces(region: &Region, path: &str, body: &[u8], piece: usize) -> String {
    let ca = std::fs::read(region.ca_dir().join("ca.crt")).expect("ca");
    let cert = std::fs::read(region.ca_dir().join("admin.crt")).expect("cert");
    let key = std::fs::read(region.ca_dir().join("admin.key")).expect("key");
    let config = repospanner_net::tls::client_config(&ca, Some((&cert, &key))).expect("tls");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client");
    let tcp = TcpStream::connect(("localhost", region.port)).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let mut out = head.into_bytes();
    for c in body.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
        // Written a few KiB at a time, so the node reads it as it comes.
        if out.len() > 8192 {
            tls.write_all(&out).expect("send");
            out.clear();
        }
    }
    out.extend_from_slice(b"0\r\n\r\n");
    tls.write_all(&out).expect("send");
    let mut reply = Vec::new();
    match tls.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => {}
        Err(e) => panic!("reading the reply: {e} (the node died?)"),
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn a_push_in_forty_thousand_pieces_through_any_shard_is_taken() {
    let region = Region::start();
    let t = region.dir.path();
    let zero = "0".repeat(40);
    let one = OneFileCommit::new("big", &noise(0x5eed_cafe, 1 << 20), "pieces");
    let (p, commit_id) = (one.pack(), one.id.clone());
    // Eight pushes on eight connections: with two shards, all eight land on the
    // owner with a chance of 1 in 256.
    for i in 0..8 {
        let name = format!("refs/heads/pieces-{i}");
        let body = push_body(&zero, &commit_id, name.as_bytes(), &p);
        let pieces = body.len() / 26;
        assert!(pieces > 40_000, "{pieces} pieces");
        let reply = post_in_pieces(&region, "/repo/test.git/git-receive-pack", &body, 26);
        assert!(reply.starts_with("HTTP/1.1 200"), "push {i}: {reply}");
        assert!(reply.contains(&format!("ok {name}")), "push {i}: {reply}");
        assert!(region.alive(1), "push {i} stopped the node");
    }
    let refs = region.git_ok(t, &["ls-remote", "--heads", &region.repo_url("test")]);
    assert_eq!(refs.matches(&commit_id).count(), 8, "{refs}");
}

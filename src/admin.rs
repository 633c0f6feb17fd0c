//! `repospanner admin ...`: a small blocking HTTPS client for a node's admin API, with
//! the admin certificate from `admin.*`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls_pki_types::ServerName;
use serde_json::Value;

use crate::config::AdminConfig;

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request to the node at `url` and reads the whole reply.
pub fn request(
    url: &str,
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Reply> {
    let payload = body.map(|b| b.to_string().into_bytes());
    let headers: &[(&str, &str)] = if body.is_some() {
        &[("Content-Type", "application/json")]
    } else {
        &[]
    };
    request_raw(
        url,
        ca_pem,
        identity,
        method,
        path,
        headers,
        payload.as_deref(),
    )
}

/// Sends one request with a raw body and extra headers (tests use it to speak git's
/// protocol byte by byte).
pub fn request_raw(
    url: &str,
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Reply> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("{url}: only https:// is supported"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>().with_context(|| format!("port in {url}"))?,
        ),
        _ => (hostport, 443),
    };
    let config: Arc<rustls::ClientConfig> = repospanner_net::tls::client_config(ca_pem, identity)?;
    let name =
        ServerName::try_from(host.to_owned()).with_context(|| format!("server name {host}"))?;
    let conn = rustls::ClientConnection::new(config, name)?;
    let tcp =
        TcpStream::connect((host, port)).with_context(|| format!("connecting to {host}:{port}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nUser-Agent: repospanner-admin\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body.unwrap_or_default());
    tls.write_all(&req)
        .with_context(|| format!("sending to {url}"))?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // The server may close without close_notify after a complete reply.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e).with_context(|| format!("reading the reply from {url}")),
    }
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Result<Reply> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP reply"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let l = l.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        } else if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let truncated = || anyhow!("the reply ended before it was complete (the server abandoned it)");
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        // Complete only with its last, empty chunk: a server that stops half way
        // (an error in the middle of a stream) closes the connection without it.
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let nl = body[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(truncated)?;
            let line = String::from_utf8_lossy(&body[at..at + nl]);
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| anyhow!("malformed chunk size {line:?}"))?;
            at += nl + 2;
            if size == 0 {
                break;
            }
            if at + size + 2 > body.len() {
                return Err(truncated());
            }
            out.extend_from_slice(&body[at..at + size]);
            at += size + 2;
        }
        body = out;
    } else if let Some(n) = length {
        if body.len() < n {
            return Err(truncated());
        }
        body.truncate(n);
    }
    Ok(Reply { status, body })
}

pub(crate) fn admin_call(
    cfg: &AdminConfig,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let r = request(
        &cfg.url,
        &cfg.ca_pem,
        Some((&cfg.cert_pem, &cfg.key_pem)),
        method,
        path,
        body,
    )?;
    json_reply(cfg, &r)
}

/// The JSON of a 200 reply; any other status is an error that quotes the reply.
fn json_reply(cfg: &AdminConfig, r: &Reply) -> Result<Value> {
    if r.status != 200 {
        bail!(
            "{} answered {}: {}",
            cfg.url,
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        );
    }
    serde_json::from_slice(&r.body).with_context(|| format!("{} sent an invalid reply", cfg.url))
}

pub(crate) fn outcome(v: &Value) -> Result<()> {
    if v["Success"].as_bool() == Some(true) {
        Ok(())
    } else {
        bail!(
            "{}",
            v["Error"]
                .as_str()
                .unwrap_or("the node refused the request")
        )
    }
}

pub fn repo_create(cfg: &AdminConfig, name: &str, public: bool) -> Result<()> {
    let v = admin_call(
        cfg,
        "POST",
        "/admin/createrepo",
        Some(&serde_json::json!({"Reponame": name, "Public": public})),
    )?;
    outcome(&v)?;
    println!("Repo {name} created");
    Ok(())
}

pub fn repo_delete(cfg: &AdminConfig, name: &str) -> Result<()> {
    let v = admin_call(
        cfg,
        "POST",
        "/admin/deleterepo",
        Some(&serde_json::json!({"Reponame": name})),
    )?;
    outcome(&v)?;
    println!("Repo {name} deleted");
    Ok(())
}

/// Uploads a hook script to the node (the Go original's endpoint); its id.
fn upload_hook(cfg: &AdminConfig, repo: &str, path: &std::path::Path) -> Result<String> {
    let content =
        std::fs::read(path).with_context(|| format!("reading the hook {}", path.display()))?;
    let size = content.len().to_string();
    let r = request_raw(
        &cfg.url,
        &cfg.ca_pem,
        Some((&cfg.cert_pem, &cfg.key_pem)),
        "POST",
        &format!("/admin/hook/{repo}.git/upload"),
        &[("X-Object-Size", &size)],
        Some(&content),
    )?;
    let v = json_reply(cfg, &r)?;
    outcome(&v).with_context(|| format!("uploading the hook {}", path.display()))?;
    Ok(v["Info"].as_str().unwrap_or_default().to_owned())
}

/// The hooks `admin repo edit` sets: a file for each, or `""` to remove it.
#[derive(Debug, Default)]
pub struct HookFiles {
    pub pre_receive: Option<String>,
    pub update: Option<String>,
    pub post_receive: Option<String>,
}

pub fn repo_edit(
    cfg: &AdminConfig,
    name: &str,
    public: Option<bool>,
    allow_force: Option<bool>,
    symrefs: &[String],
    hooks: &HookFiles,
) -> Result<()> {
    let mut update = serde_json::Map::new();
    for (key, file) in [
        ("hook-prereceive", &hooks.pre_receive),
        ("hook-update", &hooks.update),
        ("hook-postreceive", &hooks.post_receive),
    ] {
        let Some(file) = file else { continue };
        let id = if file.is_empty() {
            String::new()
        } else {
            upload_hook(cfg, name, std::path::Path::new(file))?
        };
        update.insert(key.into(), Value::String(id));
    }
    if let Some(p) = public {
        update.insert("public".into(), Value::String(p.to_string()));
    }
    if let Some(f) = allow_force {
        update.insert(
            "allow-non-fast-forward".into(),
            Value::String(f.to_string()),
        );
    }
    if !symrefs.is_empty() {
        for s in symrefs {
            if !s.contains('=') {
                bail!("symbolic ref updates are SYM=TARGET (or SYM= to delete), got {s:?}");
            }
        }
        update.insert("update-symref".into(), Value::String(symrefs.join(" ")));
    }
    let v = admin_call(
        cfg,
        "POST",
        "/admin/editrepo",
        Some(&serde_json::json!({"Reponame": name, "UpdateRequest": update})),
    )?;
    outcome(&v)?;
    println!("Repo {name} edited");
    Ok(())
}

pub fn repo_list(cfg: &AdminConfig, json: bool) -> Result<()> {
    let v = admin_call(cfg, "GET", "/admin/listrepos", None)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    if let Some(repos) = v["Repos"].as_object() {
        for (name, r) in repos {
            let public = if r["Public"].as_bool() == Some(true) {
                " (public)"
            } else {
                ""
            };
            let refs = r["Refs"].as_object().map_or(0, |m| m.len());
            println!("{name}{public}: {refs} refs");
        }
    }
    Ok(())
}

/// `admin nodestatus`; with `nagios`, the exit code says OK (0), WARNING (1),
/// CRITICAL (2) or UNKNOWN (3: the node could not be asked), as the Go original's.
/// `admin node remove ID`.
pub fn node_remove(cfg: &AdminConfig, id: u64) -> Result<()> {
    let v = admin_call(
        cfg,
        "POST",
        "/admin/removenode",
        Some(&serde_json::json!({ "NodeID": id })),
    )?;
    outcome(&v)?;
    println!(
        "Node {id} removed from the region ({} shard groups)",
        v["Shards"]
    );
    Ok(())
}

/// `admin scrub`: the node's findings; 2 if damage is left unrepaired, else 0.
pub fn scrub(cfg: &AdminConfig, json: bool, repo: Option<&str>) -> Result<i32> {
    let body = serde_json::json!({ "Repo": repo });
    let v = admin_call(cfg, "POST", "/admin/scrub", Some(&body))?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let left =
        n("Unrepaired") + n("DamagedValues") + n("Missing").saturating_sub(n("MissingFetched"));
    if json {
        println!("{v}");
    } else {
        println!(
            "Scrubbed {}: {} records, {} objects",
            repo.unwrap_or("every record"),
            v["Records"],
            v["Objects"]
        );
        println!(
            "Damaged: {} regions, {} objects ({} repaired from the members, {} not), {} raft values",
            v["DamagedRegions"], v["Damaged"], v["Repaired"], v["Unrepaired"], v["DamagedValues"]
        );
        println!(
            "Missing from a ref's closure: {} objects ({} fetched from the members)",
            v["Missing"], v["MissingFetched"]
        );
        for s in v["Shards"].as_array().into_iter().flatten() {
            for id in s["Unrepaired"].as_array().into_iter().flatten() {
                println!(
                    "  shard {}: {} not repaired",
                    s["Shard"],
                    id.as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(if left > 0 { 2 } else { 0 })
}

pub fn nodestatus(cfg: &AdminConfig, json: bool, nagios: bool) -> Result<i32> {
    let v = match admin_call(cfg, "GET", "/admin/nodestatus", None) {
        Ok(v) => v,
        Err(e) if nagios => {
            println!("UNKNOWN: {e:#}");
            return Ok(3);
        }
        Err(e) => return Err(e),
    };
    let (code, summary) = health(&v);
    if json {
        println!("{v}");
    } else if nagios {
        let label = ["OK", "WARNING", "CRITICAL", "UNKNOWN"][code.clamp(0, 3) as usize];
        println!(
            "{label}: node {} of region {}: {summary}",
            v["NodeName"].as_str().unwrap_or("?"),
            v["RegionName"].as_str().unwrap_or("?")
        );
        return Ok(code);
    } else {
        println!(
            "Node:         {} (id {})",
            v["NodeName"].as_str().unwrap_or("?"),
            v["NodeID"]
        );
        println!("Region:       {}", v["RegionName"].as_str().unwrap_or("?"));
        println!("Cluster:      {}", v["ClusterName"].as_str().unwrap_or("?"));
        println!("Version:      {}", v["Version"].as_str().unwrap_or("?"));
        println!(
            "Status:       {} ({summary})",
            v["Status"].as_str().unwrap_or("?")
        );
        println!("Uptime:       {} s", v["UptimeSeconds"]);
        println!("Repositories: {}", v["Repositories"]);
        println!("Objects:      {}", v["Objects"]);
        if let Some(peers) = v["Peers"].as_object() {
            let list: Vec<String> = peers
                .iter()
                .map(|(id, a)| format!("{id}={}", a.as_str().unwrap_or("?")))
                .collect();
            println!("Members:      {}", list.join(", "));
        }
        if let Some(shards) = v["Shards"].as_array() {
            println!("Shards:       {}", shards.len());
            for (k, st) in shards.iter().enumerate() {
                let r = &st["Raft"];
                println!(
                    "  shard {k}: {} leader {} term {} committed {} applied {}",
                    r["State"].as_str().unwrap_or("?"),
                    r["Leader"],
                    r["Term"],
                    r["Committed"],
                    r["Applied"]
                );
                if let Some(members) = r["Members"].as_object() {
                    for (id, m) in members {
                        let lag = match &m["Lag"] {
                            serde_json::Value::Null => String::new(),
                            l => format!(", {l} entries behind"),
                        };
                        println!(
                            "    node {id} at {}{}{lag}",
                            m["Address"].as_str().unwrap_or("?"),
                            if m["Voter"].as_bool() == Some(true) {
                                ""
                            } else {
                                " (learner)"
                            }
                        );
                    }
                }
                println!(
                    "    storage: {} bytes written in {} batches, {} checkpoints, {} damaged regions",
                    st["BytesWritten"], st["Batches"], st["Checkpoints"], st["Corruptions"]
                );
                if let (Some(n), Some(b), Some(l)) = (
                    st["Segments"].as_u64(),
                    st["Bytes"].as_u64(),
                    st["LiveBytes"].as_u64(),
                ) {
                    let c = &st["Compaction"];
                    println!(
                        "    space: {b} bytes in {n} segments, {l} live; compaction freed {} bytes from {} segments",
                        c["FreedBytes"], c["Segments"]
                    );
                }
                let sc = &st["Scrub"];
                if sc.is_object() {
                    println!(
                        "    last scrub: {} objects, {} damaged, {} repaired, {} not",
                        sc["Objects"], sc["Damaged"], sc["Repaired"], sc["UnrepairedCount"]
                    );
                }
            }
        }
    }
    Ok(code)
}

/// Entries a member may trail the leader before `--nagios` warns.
const LAG_WARNING: u64 = 1000;

/// Monitoring verdict of a `nodestatus` answer: 0 OK, 1 WARNING, 2 CRITICAL, 3
/// UNKNOWN (the Nagios exit codes), with a one-line reason.
pub fn health(v: &serde_json::Value) -> (i32, String) {
    let Some(status) = v["Status"].as_str() else {
        return (3, "the node's answer names no status".into());
    };
    if status != "ok" {
        return (2, status.to_string());
    }
    let mut behind = Vec::new();
    let mut corrupt = 0;
    for (k, st) in v["Shards"].as_array().into_iter().flatten().enumerate() {
        corrupt += st["Corruptions"].as_u64().unwrap_or(0);
        for (id, m) in st["Raft"]["Members"].as_object().into_iter().flatten() {
            if m["Lag"].as_u64().is_some_and(|l| l > LAG_WARNING) {
                behind.push(format!(
                    "node {id} trails shard {k} by {} entries",
                    m["Lag"]
                ));
            }
        }
    }
    if corrupt > 0 {
        return (
            1,
            format!("{corrupt} damaged storage regions (see the log)"),
        );
    }
    if !behind.is_empty() {
        return (1, behind.join("; "));
    }
    (0, "every shard has a leader".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_complete_or_errors() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n";
        let r = parse_reply(chunked).expect("complete");
        assert_eq!((r.status, &r.body[..]), (200, &b"hello!"[..]));
        // Cut anywhere before the last chunk: an error, never a shorter body.
        let last = chunked.len() - b"0\r\n\r\n".len();
        for cut in 40..last {
            assert!(parse_reply(&chunked[..cut]).is_err(), "cut at {cut}");
        }
        let sized = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope";
        assert_eq!(parse_reply(sized).expect("complete").body, b"nope");
        assert!(parse_reply(&sized[..sized.len() - 1]).is_err());
        assert!(
            parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn nagios_levels() {
        let status = |status: &str, corruptions: u64, lag: u64| {
            serde_json::json!({
                "Status": status,
                "Shards": [
                    {"Corruptions": 0, "Raft": {"Members": {"1": {"Lag": 0}}}},
                    {"Corruptions": corruptions, "Raft": {"Members": {"1": {"Lag": 0}, "2": {"Lag": lag}}}},
                ]
            })
        };
        assert_eq!(health(&status("ok", 0, 0)).0, 0);
        assert_eq!(health(&status("ok", 0, LAG_WARNING)).0, 0);
        let (code, msg) = health(&status("ok", 0, LAG_WARNING + 1));
        assert_eq!(code, 1);
        assert!(msg.contains("node 2 trails shard 1"), "{msg}");
        let (code, msg) = health(&status("ok", 3, 0));
        assert_eq!(code, 1);
        assert!(msg.contains("3 damaged storage regions"), "{msg}");
        let (code, msg) = health(&status("no leader", 3, LAG_WARNING + 1));
        assert_eq!(code, 2, "no leader outranks the warnings");
        assert_eq!(msg, "no leader");
        assert_eq!(
            health(&serde_json::json!({})).0,
            3,
            "no status is UNKNOWN, as in the Go original"
        );
    }

    #[test]
    fn parses_replies() {
        let r = parse_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").expect("reply");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_reply(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .expect("reply");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abc"[..]));
        assert!(parse_reply(b"garbage").is_err());
    }
}

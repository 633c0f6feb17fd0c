//! The HTTP endpoints: git smart HTTP under `/repo/<name>.git/`, the admin API under
//! `/admin/`, and the node endpoint. Authorization comes from the verified client
//! certificate on every request; a repository the principal may not see, or that does
//! not exist, is a 404 either way, so names do not leak.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use repospanner_ca::{allows, Permission, Principal};
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::backend::{Backend, RepoState};
use crate::git::pack::Limits as PackLimits;
use crate::git::pktline;
use crate::git::receive;
use crate::git::refs::valid_repo_name;
use crate::git::upload::{self, FetchRequest};
use crate::http::{self, Body, Budget, Held, Peer};
use crate::route::{self, Peers, Received, Refusal, Req};
use crate::spool;
use glommio::channels::shared_channel::SharedReceiver;

/// Limits on what a request may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub pack_bytes_max: u64,
    pub object_bytes_max: u64,
    /// Limits on the variable-length parts of a request (ref names, capabilities,
    /// ids, ref updates, push options).
    pub request: crate::git::RequestLimits,
    /// Largest negotiation (upload-pack request) body.
    pub negotiation_bytes_max: u64,
    /// Free space a spooled push must leave on its file system.
    pub disk_reserve_bytes: u64,
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct Ctx<B> {
    pub backend: B,
    pub cluster: String,
    pub region: String,
    pub node_name: String,
    pub limits: Limits,
    /// This shard and how many the node has.
    pub shard: usize,
    pub shards: usize,
    /// Channels to the other shards.
    pub peers: Peers,
    /// Bytes of request bodies this shard may hold at once.
    pub budget: Budget,
    /// Where large push bodies are spooled while they are verified (`None`: memory).
    pub spool_dir: Option<std::path::PathBuf>,
    /// The object checks a push passes (git's `receive.fsck.<msg-id>` overrides).
    pub fsck: std::sync::Arc<crate::git::fsck::Options>,
}

fn respond(status: StatusCode, ctype: &str, body: impl Into<Bytes>, node: &str) -> Response<Body> {
    let mut r = Response::new(http::full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let set = |h: &mut hyper::HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(h, "content-type", ctype);
    set(h, "cache-control", "no-cache");
    set(h, "strict-transport-security", "max-age=31536000");
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "content-security-policy", "default-src 'none'");
    set(h, "x-repospanner-nodename", node);
    r
}

fn text(status: StatusCode, msg: &str, node: &str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        format!("{msg}\n"),
        node,
    )
}

/// The principal behind the connection's certificate, if any.
fn principal(peer: &Peer, cluster: &str) -> Result<Option<Principal>, String> {
    match &peer.cert {
        None => Ok(None),
        Some(der) => Principal::from_verified_der(der, cluster)
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

/// Splits `/repo/<name>.git/<rest>` into (name, rest).
pub fn split_repo_path(path: &str) -> Option<(&str, &str)> {
    let p = path.strip_prefix("/repo/")?;
    let mut at = 0;
    for seg in p.split('/') {
        at += seg.len();
        if let Some(name) = seg.strip_suffix(".git") {
            let _ = name;
            let full = &p[..at - 4];
            let rest = p[at..].strip_prefix('/').unwrap_or(&p[at..]);
            return Some((full, rest));
        }
        at += 1;
    }
    None
}

/// Handles one request on the user listener: reads its bounded body, then serves it
/// on this shard or passes it to the shard that owns its repository.
pub async fn handle_user<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    req: Request<Incoming>,
    peer: Rc<Peer>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let limit = if path.ends_with("/git-receive-pack") {
        ctx.limits.pack_bytes_max
    } else if path.ends_with("/git-upload-pack") {
        ctx.limits.negotiation_bytes_max
    } else {
        1 << 20
    };
    // Only a negotiation body may come compressed (git compresses nothing else); it is
    // inflated once the request is authorized (see `dispatch`).
    match http::encoding(req.headers()) {
        Ok(http::Encoding::Identity) => {}
        Ok(http::Encoding::Gzip) if path.ends_with("/git-upload-pack") => {}
        Ok(http::Encoding::Gzip) => {
            let e = http::BodyError::Encoding(
                "Content-Encoding gzip is accepted on git-upload-pack only".into(),
            );
            glommio::spawn_local(http::linger(req.into_body())).detach();
            return body_error(&e, &ctx.node_name);
        }
        Err(e) => {
            glommio::spawn_local(http::linger(req.into_body())).detach();
            return body_error(&e, &ctx.node_name);
        }
    }
    // A push is read while it arrives: here if this shard owns the repository, else
    // streamed to the owner chunk by chunk.
    if req.method() == Method::POST {
        if let Some((repo, "git-receive-pack")) = split_repo_path(&path) {
            let owner = route::shard_of(repo, ctx.shards);
            let repo = repo.to_owned();
            if owner == ctx.shard {
                let source = route::Source::Client(req.into_body());
                return receive_streaming(ctx, source, peer, repo).await;
            }
            let (parts, body) = req.into_parts();
            let head = Req {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body: Vec::new(),
            };
            return receive_and_forward(ctx, owner, head, body, peer, repo).await;
        }
    }
    let (method, uri, headers) = (
        req.method().clone(),
        req.uri().clone(),
        req.headers().clone(),
    );
    let (body, held) = match http::collect(req, limit, &ctx.budget).await {
        Ok(b) => b,
        Err(e) => return body_error(&e, &ctx.node_name),
    };
    let req = Req {
        method,
        uri,
        headers,
        body,
    };
    let owner = owner_of(&req, ctx.shards);
    match owner {
        // The body moves to the owner, which accounts for it there.
        Some(o) if o != ctx.shard => {
            route::forward(&ctx.peers, o, req, peer.cert.clone(), peer.addr, false).await
        }
        _ => dispatch(ctx, req, peer, false, held).await,
    }
}

fn body_refusal(e: &http::BodyError) -> Refusal {
    let status = match e {
        http::BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        http::BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        http::BodyError::Stalled(_) => StatusCode::REQUEST_TIMEOUT,
        http::BodyError::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    Refusal {
        status,
        message: e.to_string(),
        git: false,
    }
}

/// What verifying a push holds per object of its pack, at most (its entry, its id in
/// the sets connectivity and the store use, its place in the ref transaction): a
/// push's memory grows with its objects, never with their bytes, and this much per
/// object is taken from the shard's [`Ctx::budget`] for as long as the push runs.
pub const PUSH_BYTES_PER_OBJECT: usize = 1024;

/// Takes what a push of `count` objects holds from the shard's budget, or refuses it
/// (503) at once.
fn charge_objects(ctx: &Ctx<impl Backend>, count: u32) -> Result<http::Held, Refusal> {
    let bytes = count as usize * PUSH_BYTES_PER_OBJECT;
    ctx.budget.try_take(bytes).ok_or_else(|| Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!(
            "a push of {count} objects needs {} MiB of this node's budget for pushes \
             in flight (limits.buffered_bytes_max), which other pushes hold or which is \
             smaller; try again later, or raise it",
            bytes >> 20
        ),
        git: false,
    })
}

fn body_error(e: &http::BodyError, node: &str) -> Response<Body> {
    refused(&body_refusal(e), node)
}

fn refused(r: &Refusal, node: &str) -> Response<Body> {
    if r.git {
        git_error(&r.message, node, "application/x-git-receive-pack-result")
    } else {
        text(r.status, &r.message, node)
    }
}

/// Serves a request another shard passed here: its body is accounted in this shard's
/// budget for as long as it is held.
pub async fn dispatch_forwarded<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    req: Req,
    peer: Rc<Peer>,
    local_only: bool,
    body: Option<SharedReceiver<route::BodyChunk>>,
) -> Response<Body> {
    if let Some(rx) = body {
        // Connect first, whatever the answer: the accepting shard waits for it.
        let rx = crate::gate::gated(rx.connect()).await;
        let source = route::Source::Shard(route::ShardBody::new(rx));
        return match split_repo_path(req.uri.path()) {
            Some((repo, "git-receive-pack")) => {
                let repo = repo.to_owned();
                receive_streaming(ctx, source, peer, repo).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found", &ctx.node_name),
        };
    }
    if let Some((_, op)) = shard_rpc(req.uri.path()) {
        // Authenticated as a node of this region by the shard that accepted it.
        let op = op.to_owned();
        return node_rpc(&ctx, &op, req.body).await;
    }
    let Some(held) = ctx.budget.try_take(req.body.len()) else {
        return body_error(&http::BodyError::Busy, &ctx.node_name);
    };
    dispatch(ctx, req, peer, local_only, held).await
}

/// Splits `/rpc/shard/<k>/<op>` into (k, op).
pub fn shard_rpc(path: &str) -> Option<(usize, &str)> {
    let rest = path.strip_prefix("/rpc/shard/")?;
    let (k, op) = rest.split_once('/')?;
    let k: usize = k.parse().ok()?;
    (!op.is_empty()).then_some((k, op))
}

async fn node_rpc<B: Backend>(ctx: &Ctx<B>, op: &str, body: Vec<u8>) -> Response<Body> {
    match ctx.backend.node_rpc(op, body).await {
        Ok(b) => respond(
            StatusCode::OK,
            "application/octet-stream",
            b,
            &ctx.node_name,
        ),
        Err((status, msg)) => text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &msg,
            &ctx.node_name,
        ),
    }
}

/// The shard that must serve `req`, if one must (repository requests and repository
/// administration); `None`: any shard.
fn owner_of(req: &Req, shards: usize) -> Option<usize> {
    let path = req.uri.path();
    if let Some((repo, _)) = split_repo_path(path) {
        return Some(route::shard_of(repo, shards));
    }
    if matches!(
        path,
        "/admin/createrepo" | "/admin/deleterepo" | "/admin/editrepo"
    ) {
        let r: RepoRequest = serde_json::from_slice(&req.body).ok()?;
        return Some(route::shard_of(&r.reponame, shards));
    }
    None
}

/// The user behind the connection (`None`: no certificate); node certificates and
/// certificates that are no principal are refused here.
fn user_of<B>(ctx: &Ctx<B>, peer: &Peer) -> Result<Option<Principal>, Box<Response<Body>>> {
    let node = &ctx.node_name;
    let who = principal(peer, &ctx.cluster).map_err(|e| {
        Box::new(text(
            StatusCode::FORBIDDEN,
            &format!("certificate not accepted: {e}"),
            node,
        ))
    })?;
    if matches!(who, Some(Principal::Node { .. })) {
        return Err(Box::new(text(
            StatusCode::FORBIDDEN,
            "node certificates are not accepted on the user endpoint",
            node,
        )));
    }
    Ok(who)
}

/// The state of `repo` if `who` may read it, and whether `who` may push to it. A
/// repository `who` may not read answers 404, exactly like one that does not exist.
async fn authorize<B: Backend>(
    ctx: &Ctx<B>,
    who: Option<&Principal>,
    repo: &str,
) -> Result<(RepoState, bool), Box<Response<Body>>> {
    let node = &ctx.node_name;
    if !valid_repo_name(repo) {
        return Err(Box::new(text(
            StatusCode::NOT_FOUND,
            "repository not found",
            node,
        )));
    }
    // Before anything is read: this node has applied every write acknowledged before
    // this request (a clone from any node sees every acknowledged push).
    ctx.backend
        .linearize()
        .await
        .map_err(|e| Box::new(text(StatusCode::SERVICE_UNAVAILABLE, &e.0, node)))?;
    let state = ctx
        .backend
        .repo(repo)
        .await
        .map_err(|e| Box::new(text(StatusCode::INTERNAL_SERVER_ERROR, &e.0, node)))?;
    let can = |perm| who.is_some_and(|p| allows(p, &ctx.region, repo, perm));
    let readable = state.as_ref().is_some_and(|s| s.public) || can(Permission::Read);
    match state.filter(|_| readable) {
        Some(s) => Ok((s, can(Permission::Read) && can(Permission::Write))),
        None => Err(Box::new(text(
            StatusCode::NOT_FOUND,
            "repository not found",
            node,
        ))),
    }
}

/// Serves a request on this shard. `local_only`: a part of a request gathered from
/// every shard (do not gather again). `held`: the body's share of the budget.
pub async fn dispatch<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    req: Req,
    peer: Rc<Peer>,
    local_only: bool,
    held: Held,
) -> Response<Body> {
    let node = ctx.node_name.clone();
    let who = match user_of(&ctx, &peer) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let path = req.uri.path().to_owned();
    if path == "/" {
        let name = match &who {
            Some(Principal::User { name, .. }) => name.clone(),
            _ => "anonymous".into(),
        };
        return text(
            StatusCode::OK,
            &format!(
                "Hello {name}, welcome to repoSpanner-rs {}",
                env!("CARGO_PKG_VERSION")
            ),
            &node,
        );
    }
    if let Some(op) = path.strip_prefix("/admin/") {
        return admin(&ctx, who.as_ref(), op, req, peer.as_ref(), local_only).await;
    }
    let Some((repo, rest)) = split_repo_path(&path) else {
        return text(StatusCode::NOT_FOUND, "not found", &node);
    };
    let repo = repo.to_owned();
    let (state, may_push) = match authorize(&ctx, who.as_ref(), &repo).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let service = if rest == "info/refs" {
        let q = req.uri.query().unwrap_or("");
        q.split('&')
            .find_map(|kv| kv.strip_prefix("service="))
            .unwrap_or("")
            .to_owned()
    } else {
        rest.to_owned()
    };
    let writing = service == "git-receive-pack";
    if writing && !may_push {
        // Readers learn nothing more than that they may not push.
        return text(
            StatusCode::FORBIDDEN,
            "you may not push to this repository",
            &node,
        );
    }
    let v2 = req
        .headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(':').any(|p| p == "version=2"));
    match (&req.method, rest, service.as_str()) {
        (&Method::GET, "info/refs", "git-upload-pack" | "git-receive-pack") => {
            let advertise = info_refs(&ctx, &repo, &state, &service, v2 && !writing);
            crate::contain::contained(advertise)
                .await
                .unwrap_or_else(|p| bug(&repo, &p, &node))
        }
        (&Method::GET, "info/refs", _) => text(
            StatusCode::FORBIDDEN,
            "only the smart HTTP protocol is served",
            &node,
        ),
        (&Method::POST, "git-upload-pack", _) => {
            let (mut req, mut held) = (req, held);
            // Inflated only now that the request is authorized, within the budget.
            if let Ok(http::Encoding::Gzip) = http::encoding(&req.headers) {
                let max = ctx.limits.negotiation_bytes_max;
                match http::gunzip(&req.body, max, &ctx.budget) {
                    Ok((plain, inflated)) => (req.body, held) = (plain, inflated),
                    Err(e) => return body_error(&e, &node),
                }
            }
            // Contained: the request fails on a bug of ours, the shard goes on.
            let response =
                crate::contain::contained(upload_pack(ctx.clone(), repo.clone(), state, req, v2))
                    .await
                    .unwrap_or_else(|p| bug(&repo, &p, &node));
            drop(held);
            response
        }
        (&Method::POST, "git-receive-pack", _) => {
            receive_pack(ctx.clone(), repo, state, req, held).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found", &node),
    }
}

/// The answer to a request that failed on a contained bug (see [`crate::contain`]).
fn bug(repo: &str, p: &crate::contain::Panicked, node: &str) -> Response<Body> {
    tracing::error!(repo = %repo, error = %p, "a request failed on a bug; the node goes on");
    text(StatusCode::INTERNAL_SERVER_ERROR, &p.to_string(), node)
}

async fn info_refs<B: Backend>(
    ctx: &Ctx<B>,
    repo: &str,
    state: &RepoState,
    service: &str,
    v2: bool,
) -> Response<Body> {
    let node = &ctx.node_name;
    let mut out = Vec::new();
    pktline::fixed(&mut out, &format!("# service={service}"));
    pktline::flush(&mut out);
    if v2 {
        out.extend(upload::advertise_v2());
    } else {
        let refs = match upload::refs_of(&ctx.backend, repo, state).await {
            Ok(r) => r,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), node),
        };
        let caps = if service == "git-receive-pack" {
            let mut c = receive::receive_caps();
            if let Some(t) = state.symrefs.get("HEAD") {
                c.push_str(&format!(" symref=HEAD:{t}"));
            }
            c
        } else {
            upload::upload_caps(state)
        };
        // receive-pack advertises no peeled lines and no HEAD.
        if service == "git-receive-pack" {
            let plain: Vec<_> = refs
                .into_iter()
                .map(|r| upload::AdRef { peeled: None, ..r })
                .collect();
            let mut s = state.clone();
            s.symrefs.remove("HEAD");
            out.extend(upload::advertise_v0(&plain, &s, &caps));
        } else {
            out.extend(upload::advertise_v0(&refs, state, &caps));
        }
    }
    respond(
        StatusCode::OK,
        &format!("application/x-{service}-advertisement"),
        out,
        node,
    )
}

/// Wraps `payload` for the client: on side-band 1 if it asked for side-band.
fn band(sideband: Option<usize>, out: &mut Vec<u8>, payload: &[u8]) {
    match sideband {
        Some(max) => pktline::sideband(out, 1, payload, max),
        None => out.extend_from_slice(payload),
    }
}

fn sideband_of(req: &FetchRequest) -> Option<usize> {
    if req.has("side-band-64k") {
        Some(pktline::MAX_PKT)
    } else if req.has("side-band") {
        Some(1000)
    } else {
        None
    }
}

async fn upload_pack<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    repo: String,
    state: RepoState,
    req: Req,
    v2: bool,
) -> Response<Body> {
    let node = ctx.node_name.clone();
    let ctype = "application/x-git-upload-pack-result";
    let body = req.body;
    let refs = match upload::refs_of(&ctx.backend, &repo, &state).await {
        Ok(r) => r,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), &node),
    };
    let (fetch, v2_fetch) = if v2 {
        let r = match upload::parse_v2(&body, &ctx.limits.request) {
            Ok(r) => r,
            Err(e) => return git_error(&e.to_string(), &node, ctype),
        };
        match r.command.as_str() {
            "ls-refs" => {
                return respond(
                    StatusCode::OK,
                    ctype,
                    upload::ls_refs(&r.args, &refs, &state),
                    &node,
                )
            }
            "fetch" => match upload::parse_v2_fetch(&r.args, &ctx.limits.request) {
                Ok(f) => (f, true),
                Err(e) => return git_error(&e.to_string(), &node, ctype),
            },
            other => {
                let other = crate::git::excerpt(other.as_bytes());
                return git_error(&format!("unknown command {other}"), &node, ctype);
            }
        }
    } else {
        match upload::parse_v0(&body, &ctx.limits.request) {
            Ok(f) => (f, false),
            Err(e) => return git_error(&e.to_string(), &node, ctype),
        }
    };
    if fetch.wants.is_empty() {
        return respond(StatusCode::OK, ctype, Vec::new(), &node);
    }
    let common = upload::common(&ctx.backend, &repo, &fetch.haves);
    let mut v2_acks = Vec::new();
    if !fetch.done {
        // Another negotiation round, unless the server has seen enough.
        let ready = upload::ready(&ctx.backend, &repo, &fetch.wants, &common).await;
        if v2_fetch {
            let acks = upload::acknowledgments_v2(&common, ready);
            if !ready || common.is_empty() {
                return respond(StatusCode::OK, ctype, acks, &node);
            }
            v2_acks = acks; // the packfile follows
        } else {
            let (out, pack_follows) = upload::negotiation_v0(&fetch, &common, ready);
            if !pack_follows {
                if !fetch.deepens() {
                    return respond(StatusCode::OK, ctype, out, &node);
                }
                // Every round of a deepening fetch starts with the boundary.
                let (shallow, unshallow) =
                    match upload::boundary(&ctx.backend, &repo, &refs, &fetch).await {
                        Ok(b) => b,
                        Err(e) => return git_error(&e.to_string(), &node, ctype),
                    };
                let mut answer = Vec::new();
                for s in &shallow {
                    pktline::fixed(&mut answer, &format!("shallow {}", crate::git::hex(s)));
                }
                for s in &unshallow {
                    pktline::fixed(&mut answer, &format!("unshallow {}", crate::git::hex(s)));
                }
                pktline::flush(&mut answer);
                // The first round of a deepening fetch carries no haves and asks for
                // the boundary alone.
                if !fetch.haves.is_empty() {
                    answer.extend(out);
                }
                return respond(StatusCode::OK, ctype, answer, &node);
            }
        }
    }
    let (mut tx, body) = http::channel();
    // Contained as its request is: on a bug the response is abandoned (the client sees
    // a broken transfer) and the shard goes on.
    let failed_repo = repo.clone();
    let sending = crate::contain::contained(async move {
        let sideband = sideband_of(&fetch);
        let progress = !fetch.has("no-progress") && sideband.is_some();
        let band_max = sideband.unwrap_or(1000);
        let started = std::time::Instant::now();
        // Without shallow information to send first, the response can start before
        // planning, so the client sees progress while the server counts objects.
        let early = !fetch.deepens() && fetch.shallows.is_empty();
        let boundary = |head: &mut Vec<u8>, plan: &upload::Plan| {
            for s in &plan.shallow {
                pktline::fixed(head, &format!("shallow {}", crate::git::hex(s)));
            }
            for s in &plan.unshallow {
                pktline::fixed(head, &format!("unshallow {}", crate::git::hex(s)));
            }
        };
        let head = |plan: Option<&upload::Plan>| {
            let mut head = v2_acks.clone();
            if v2_fetch {
                if let Some(plan) = plan.filter(|_| !early) {
                    pktline::fixed(&mut head, "shallow-info");
                    boundary(&mut head, plan);
                    pktline::delim(&mut head);
                }
                pktline::fixed(&mut head, "packfile");
            } else {
                // git's v0 answer starts with a shallow section (maybe empty) when
                // the request deepens.
                if let Some(plan) = plan.filter(|_| fetch.deepens()) {
                    boundary(&mut head, plan);
                    pktline::flush(&mut head);
                }
                head.extend(upload::negotiation_v0(&fetch, &common, true).0);
            }
            head
        };
        if early && tx.send(Bytes::from(head(None))).await.is_err() {
            return;
        }
        let progress_tx = tx.clone();
        let mut report = move |msg: String| {
            if progress {
                let mut o = Vec::new();
                pktline::sideband(&mut o, 2, format!("{msg}\r").as_bytes(), band_max);
                // Best effort: dropped when the client is slow.
                let _ = progress_tx.clone().try_send(Bytes::from(o));
            }
        };
        let plan = match upload::plan(
            &ctx.backend,
            &repo,
            &state,
            &refs,
            &fetch,
            &common,
            &mut report,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                warn!(repo = %repo, error = %e, "fetch failed");
                let mut o = Vec::new();
                match (early, sideband) {
                    // The response has started: report on the error channel.
                    (true, Some(max)) => {
                        pktline::sideband(&mut o, 3, format!("{e}\n").as_bytes(), max)
                    }
                    // Nothing sent yet: git reads an ERR line in place of the answer.
                    (false, _) => pktline::error(&mut o, &e.to_string()),
                    // A raw pack has been promised and there is no channel to say why
                    // it will not come: the response is abandoned (see http::channel).
                    (true, None) => return,
                }
                if tx.send(Bytes::from(o)).await.is_ok() {
                    tx.finish();
                }
                return;
            }
        };
        let mut first = if early { Vec::new() } else { head(Some(&plan)) };
        if progress {
            let msg = format!(
                "repoSpanner-rs: sending {} objects ({} as thin deltas)\n",
                plan.objects.len(),
                plan.thin
            );
            pktline::sideband(&mut first, 2, msg.as_bytes(), band_max);
        }
        if tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let planned = started.elapsed();
        // Entries are read a batch at a time and framed straight into the response,
        // the next batch read while the last is sent; the channel's bound makes a slow
        // client slow the reading down.
        let mut out = pktline::BandWriter::new(1, sideband);
        let mut pack = upload::PackOut::new(&plan, &mut |b| out.write(b));
        let mut end = upload::batch_end(&plan, 0);
        let mut read = upload::read_batch(&ctx.backend, &repo, &plan.objects[..end]).await;
        loop {
            let batch = match read {
                Ok(b) => b,
                Err(e) => {
                    // The pack has started: the client is told why it stops.
                    warn!(repo = %repo, error = %e, "fetch failed while sending the pack");
                    // Without side-band there is no way to say why: the response is
                    // abandoned, so the client sees a broken transfer (http::channel).
                    let Some(max) = sideband else { return };
                    let mut o = out.take();
                    pktline::sideband(&mut o, 3, format!("{e}\n").as_bytes(), max);
                    if tx.send(Bytes::from(o)).await.is_ok() {
                        tx.finish();
                    }
                    return;
                }
            };
            // Framed by reference: the entries stay in the read buffers until TLS
            // copies them into its records (see crate::piece).
            let mut pieces = Vec::new();
            pack.write(
                batch,
                &mut Cut {
                    out: &mut out,
                    pieces: &mut pieces,
                },
            );
            let start = end;
            if start == plan.objects.len() {
                if !send_all(&mut tx, pieces).await {
                    return;
                }
                break;
            }
            end = upload::batch_end(&plan, start);
            let next = upload::read_batch(&ctx.backend, &repo, &plan.objects[start..end]);
            let (sent, next) = futures_util::future::join(send_all(&mut tx, pieces), next).await;
            if !sent {
                return;
            }
            read = next;
        }
        pack.finish(&mut |b| out.write(b));
        let mut last = out.take_piece();
        if sideband.is_some() {
            let mut end = Vec::new();
            pktline::flush(&mut end);
            last.push_shared(Bytes::from(end));
        }
        if tx.send(last).await.is_ok() {
            tx.finish();
        }
        if plan.proves_reachable {
            match ctx.backend.mark_reachable(&repo, &state.refs).await {
                Ok(()) => {
                    info!(repo = %repo, "every stored object is reachable: full clones skip the walk again")
                }
                Err(e) => debug!(repo = %repo, error = %e, "not marked reachable"),
            }
        }
        info!(
            repo = %repo,
            objects = plan.objects.len(),
            plan_ms = planned.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "served a pack"
        );
    });
    glommio::spawn_local(async move {
        if let Err(p) = sending.await {
            tracing::error!(repo = %failed_repo, error = %p, "sending a pack failed on a bug; the node goes on");
        }
    })
    .detach();
    let mut r = Response::new(body);
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert("content-type", v);
    }
    r
}

/// The most bytes of a response handed to the connection at a time: the response
/// channel holds a few of them, so a batch of the pack is not queued whole.
const SEND_PIECE: usize = 256 << 10;

/// Sends `pieces` in order; false if the client went away.
async fn send_all(tx: &mut http::BodySender, pieces: Vec<http::Piece>) -> bool {
    for p in pieces {
        if tx.send(p).await.is_err() {
            return false;
        }
    }
    true
}

/// A pack's side-band framing, cut into pieces of about [`SEND_PIECE`] as it is
/// written.
struct Cut<'a> {
    out: &'a mut pktline::BandWriter,
    pieces: &'a mut Vec<http::Piece>,
}

impl Cut<'_> {
    fn cut(&mut self) {
        if self.out.len() >= SEND_PIECE {
            self.pieces.push(self.out.take_piece());
        }
    }
}

impl<C: AsRef<[u8]> + 'static> upload::PackSink<C> for Cut<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out.write(b);
        self.cut();
    }
    fn stored(&mut self, deflated: C) {
        let len = deflated.as_ref().len();
        if len <= SEND_PIECE {
            self.out.write_owned(deflated);
            self.cut();
            return;
        }
        // A large entry in several pieces: each piece pins its whole read buffer, so
        // pieces of one entry, not one piece per entry, fill the response channel.
        let all = crate::piece::LocalBytes::new(deflated);
        let mut at = 0;
        while at < len {
            let n = SEND_PIECE.min(len - at);
            self.out.write_local(all.slice(at..at + n));
            self.cut();
            at += n;
        }
    }
}

fn git_error(msg: &str, node: &str, ctype: &str) -> Response<Body> {
    let mut o = Vec::new();
    pktline::error(&mut o, msg);
    respond(StatusCode::OK, ctype, o, node)
}

async fn receive_pack<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    repo: String,
    state: RepoState,
    req: Req,
    held: Held,
) -> Response<Body> {
    let arrived = Arrived {
        received: Received {
            body: Bytes::from(req.body),
            pre_read: None,
        },
        held,
        aside: None,
    };
    receive_pack_body(ctx, repo, state, arrived).await
}

/// Reads a push's pack while it arrives: on the executor while the body is small; once
/// it is spooled, on a thread of its own (at most [`READERS_MAX`] in a process; past
/// that, on the executor), so inflating and hashing overlap the transfer instead of
/// holding up the executor's reading of the socket.
enum PackReading {
    Here {
        stream: Option<Box<(crate::git::pack::PackStream, Inspected)>>,
        /// A bad pack is reported once the whole request has arrived.
        error: Option<crate::git::pack::PackError>,
    },
    Away {
        /// How much of the body is written (the reader reads up to it).
        tx: std::sync::mpsc::Sender<usize>,
        /// The length last sent on `tx` (see [`NOTIFY_BYTES`]).
        told: usize,
        /// Set when the push failed: the reader stops at once.
        cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
        /// Objects whose ids the reader knows, as it learns them.
        ready: std::sync::mpsc::Receiver<Vec<crate::git::pack::Resolved>>,
        result: std::pin::Pin<Box<dyn std::future::Future<Output = PackRead>>>,
    },
}

/// The CPUs pack reader threads may run on: all the process may use. Threads inherit
/// the pinning of the shard that starts them, so a reader would share its shard's core
/// with that shard's executor (receiving, raft, every other request of the shard) while
/// another core may be idle. (On the 2-core test machine, where the git client takes the
/// other core, pinned and unpinned measured the same.)
static READER_CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// Sets the CPUs pack readers run on (once, before the shards are pinned).
pub fn set_reader_cpus(cpus: Vec<usize>) {
    let _ = READER_CPUS.set(cpus);
}

fn unpin_this_thread() {
    let Some(cpus) = READER_CPUS.get().filter(|c| !c.is_empty()) else {
        return;
    };
    // SAFETY: a cpu_set_t we own, filled with CPU_SET and passed by pointer with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|c| **c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!("pack reader keeps its shard's CPU");
        }
    }
}

/// How far a pack reader reads before it reports what it verified.
const READ_STEP_BYTES: usize = 8 << 20;

/// How much more of a body must have arrived before its reader is told. A body comes
/// in pieces of 16-64 KiB; telling the reader of each woke it for each (a futex wake
/// and two context switches: 10% of a 3-node leader's CPU for a 102 MiB push, by perf),
/// though it had caught up and could only read that piece. The rest is told at the end.
const NOTIFY_BYTES: usize = 1 << 20;

/// Pack reader threads running in this process, and their most.
static READERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const READERS_MAX: usize = 16;

/// A pack reader's place in [`READERS`], given back on drop.
struct ReaderSlot;

impl ReaderSlot {
    fn take() -> Option<ReaderSlot> {
        use std::sync::atomic::Ordering;
        if READERS.fetch_add(1, Ordering::AcqRel) < READERS_MAX {
            Some(ReaderSlot)
        } else {
            READERS.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        READERS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

use crate::git::receive::{Inspected, PackRead};

impl PackReading {
    /// Reads what arrived of the pack that starts at `at` in `body`.
    fn advance(&mut self, body: &spool::Body, at: usize) {
        match self {
            PackReading::Here {
                stream,
                error: None,
            } => {
                if let spool::Body::File(f) = body {
                    if stream.is_some() {
                        if let Some(slot) = ReaderSlot::take() {
                            if let Some(st) = stream.take() {
                                *self = PackReading::away(*st, f.view(), at, slot);
                                return;
                            }
                        }
                    }
                }
                let pack = body.as_slice().get(at..).unwrap_or_default();
                let r = match stream.as_mut() {
                    Some(st) => {
                        let (st, inspected) = &mut **st;
                        crate::contain::run(|| st.advance(pack, inspected))
                            .unwrap_or_else(|p| Err(p.into()))
                    }
                    None => Ok(()),
                };
                if let Err(e) = r {
                    *self = PackReading::Here {
                        stream: None,
                        error: Some(e),
                    };
                }
            }
            PackReading::Here { .. } => {}
            PackReading::Away { tx, told, .. } => {
                if body.len() - *told >= NOTIFY_BYTES {
                    // The reader is gone only if it panicked; finish() reports that.
                    let _ = tx.send(body.len());
                    *told = body.len();
                }
            }
        }
    }

    /// Moves reading to a thread of its own. Not the shard's blocking pool: a push that
    /// arrives slowly would hold it for as long, and other pushes verify there.
    fn away(
        (mut stream, mut inspected): (crate::git::pack::PackStream, Inspected),
        view: spool::SpoolView,
        at: usize,
        slot: ReaderSlot,
    ) -> PackReading {
        use crate::git::pack::PackError;
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let told = view.len();
        let _ = tx.send(told);
        let (ready_tx, ready) = std::sync::mpsc::channel();
        // What the executor's reading found already is ready too.
        let mut reported = 0;
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = cancel.clone();
        let (done_tx, done_rx) = futures_channel::oneshot::channel::<PackRead>();
        let started = std::thread::Builder::new()
            .name("pack-reader".into())
            .spawn(move || {
                // A bug here costs this push only: dropping `done_tx` fails it.
                let _contained = crate::contain::run(move || {
                    let _slot = slot;
                    unpin_this_thread();
                    let mut last = at;
                    let mut error = None;
                    while let Ok(mut len) = rx.recv() {
                        // Whatever arrived meanwhile, at once.
                        while let Ok(l) = rx.try_recv() {
                            len = l;
                        }
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        // In steps, so what it verifies is reported as it goes (written
                        // aside meanwhile) also when it has fallen behind the arrival.
                        let mut upto = last;
                        last = len;
                        while error.is_none() && upto < len {
                            let from = upto;
                            upto = (upto + READ_STEP_BYTES).min(len);
                            view.populate(from..upto);
                            let r = match view.get(at..upto) {
                                Some(b) => stream.advance(b, &mut inspected),
                                None => Err(PackError::Truncated),
                            };
                            error = r.err();
                            let found = stream.resolved_since(reported);
                            reported = stream.entries();
                            if !found.is_empty() {
                                let _ = ready_tx.send(found);
                            }
                            if stop.load(Ordering::Acquire) {
                                return;
                            }
                        }
                    }
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let r = match (error, view.get(at..last)) {
                        (Some(e), _) => Err(e),
                        (None, Some(b)) => stream.finish(b, &mut inspected).map(|e| (e, inspected)),
                        (None, None) => Err(PackError::Truncated),
                    };
                    let _ = done_tx.send(r);
                });
            });
        match started {
            Ok(_) => PackReading::Away {
                tx,
                told,
                cancel,
                ready,
                result: Box::pin(async move {
                    done_rx.await.unwrap_or(Err(PackError::Header(
                        "the pack reader failed (a bug, logged by the node)",
                    )))
                }),
            },
            Err(e) => {
                warn!(error = %e, "no thread for reading a pack: the push fails");
                PackReading::Here {
                    stream: None,
                    error: Some(PackError::Header("no thread to read the pack")),
                }
            }
        }
    }

    /// The pack's entries, once `body` (the whole request) has arrived.
    async fn finish(self, body: &[u8], at: usize) -> PackRead {
        match self {
            PackReading::Here { error: Some(e), .. } => Err(e),
            PackReading::Here {
                stream: Some(st), ..
            } => {
                let (st, mut inspected) = *st;
                crate::contain::run(move || {
                    st.finish(body.get(at..).unwrap_or_default(), &mut inspected)
                        .map(|e| (e, inspected))
                })
                .unwrap_or_else(|p| Err(p.into()))
            }
            PackReading::Here { .. } => Err(crate::git::pack::PackError::Truncated),
            PackReading::Away { tx, result, .. } => {
                let _ = tx.send(body.len());
                drop(tx);
                result.await
            }
        }
    }

    /// Objects whose ids the reader learnt since the last call (only a reader away
    /// reports them: the pack is spooled).
    fn take_ready(&mut self) -> Vec<crate::git::pack::Resolved> {
        let mut all = Vec::new();
        if let PackReading::Away { ready, .. } = self {
            while let Ok(v) = ready.try_recv() {
                all.extend(v);
            }
        }
        all
    }

    /// Like [`PackReading::finish`], writing aside what a reader away verifies while
    /// it catches up.
    async fn finish_writing<B: Backend + 'static>(
        self,
        body: &[u8],
        at: usize,
        aside: &mut AsideWriter<'_, B>,
        view: Option<&spool::SpoolView>,
    ) -> Result<PackRead, Refusal> {
        match (self, view) {
            (
                PackReading::Away {
                    tx,
                    mut result,
                    ready,
                    ..
                },
                Some(view),
            ) => {
                let _ = tx.send(body.len());
                drop(tx);
                loop {
                    let poll = std::time::Duration::from_millis(5);
                    if let Ok(r) =
                        glommio::timer::timeout(poll, async { Ok((&mut result).await) }).await
                    {
                        return Ok(r);
                    }
                    let mut found = Vec::new();
                    while let Ok(v) = ready.try_recv() {
                        found.extend(v);
                    }
                    aside.add(view, at, found).await?;
                }
            }
            (reading, _) => Ok(reading.finish(body, at).await),
        }
    }

    /// Stops reading: a reader away stops before its next piece.
    fn abandon(self) {
        if let PackReading::Away { cancel, .. } = self {
            cancel.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// A push read while it arrives: authorised before its body is read, its pack parsed,
/// inflated and hashed piece by piece as the body comes in (overlapping the transfer),
/// then verified and applied as any push. A body another shard accepted arrives whole
/// (see [`receive_and_forward`]).
async fn receive_streaming<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    source: route::Source,
    peer: Rc<Peer>,
    repo: String,
) -> Response<Body> {
    let node = ctx.node_name.clone();
    let who = match user_of(&ctx, &peer) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let (state, may_push) = match authorize(&ctx, who.as_ref(), &repo).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if !may_push {
        return text(
            StatusCode::FORBIDDEN,
            "you may not push to this repository",
            &node,
        );
    }
    // A body the accepting shard receives itself comes whole, after the objects it
    // verified meanwhile (written aside here as they come).
    let mut aside: Option<AsideGuard<B>> = None;
    let mut body = match source {
        route::Source::Client(body) => route::ClientBody::Reading(body),
        route::Source::Shard(mut sb) => loop {
            match sb.next().await {
                Some(route::BodyChunk::Aside(objects)) => {
                    let id = AsideGuard::id_in(&mut aside, &ctx);
                    if let Err(e) = ctx.backend.store_aside(&repo, id, objects).await {
                        return text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &format!("storing objects failed: {e}"),
                            &node,
                        );
                    }
                }
                // Received by the accepting shard: its bytes are accounted here from
                // now on.
                Some(route::BodyChunk::Received(r)) => {
                    let Some(held) = ctx.budget.try_take(r.body.len()) else {
                        return body_error(&http::BodyError::Busy, &node);
                    };
                    let arrived = Arrived {
                        received: *r,
                        held,
                        aside,
                    };
                    return receive_pack_body(ctx, repo, state, arrived).await;
                }
                Some(route::BodyChunk::Refused(f)) => return refused(&f, &node),
                None => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the shard that accepted the push went away",
                        &node,
                    )
                }
            }
        },
    };
    match receive_body(&ctx, &mut body, &repo, AsideTo::Here, &|| false).await {
        Ok(arrived) => receive_pack_body(ctx, repo, state, arrived).await,
        Err(refusal) => refused(&refusal, &node),
    }
}

/// A push that landed on a shard other than its repository's owner: this shard receives
/// the body (spools it, reads its pack while it arrives) and passes it to the owner
/// whole, which authorises the push first and verifies and applies it after: a handful
/// of messages between the two cores per push (the verified objects in 16 MiB batches,
/// then the body) instead of one per 256 KiB piece, and the shard that decrypts the body
/// also reads it. If the owner answers first (a refusal), receiving stops.
async fn receive_and_forward<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    owner: usize,
    head: Req,
    body: Incoming,
    peer: Rc<Peer>,
    repo: String,
) -> Response<Body> {
    let (tx, rx) = glommio::channels::shared_channel::new_bounded(ASIDE_IN_FLIGHT);
    let answered = Rc::new(std::cell::Cell::new(false));
    let stop = answered.clone();
    let c = ctx.clone();
    glommio::spawn_local(async move {
        let tx = crate::gate::gated(tx.connect()).await;
        let mut body = route::ClientBody::Reading(body);
        let stopped = || stop.get();
        let to = AsideTo::Owner(&tx);
        let (msg, held) = match receive_body(&c, &mut body, &repo, to, &stopped).await {
            Ok(a) => (
                route::BodyChunk::Received(Box::new(a.received)),
                Some(a.held),
            ),
            Err(refusal) => (route::BodyChunk::Refused(refusal), None),
        };
        // The owner takes the body into its own budget when it gets it.
        let _ = crate::gate::gated(tx.send(msg)).await;
        drop(held);
    })
    .detach();
    let response = route::forward_with(
        &ctx.peers,
        owner,
        head,
        peer.cert.clone(),
        peer.addr,
        false,
        Some(rx),
    )
    .await;
    answered.set(true);
    response
}

/// Reads a push body from `source` to its end: spooled past 4 MiB, within this shard's
/// budget and `limits.pack_bytes_max`, its pack read while it arrives, what it verifies
/// written aside as it goes. Stops with a refusal when `stopped()` (the push was
/// answered meanwhile).
async fn receive_body<B: Backend + 'static>(
    ctx: &Rc<Ctx<B>>,
    source: &mut route::ClientBody,
    repo: &str,
    aside: AsideTo<'_>,
    stopped: &dyn Fn() -> bool,
) -> Result<Arrived<B>, Refusal> {
    let limits = PackLimits {
        object_bytes_max: ctx.limits.object_bytes_max,
        ..PackLimits::default()
    };
    let max = ctx.limits.pack_bytes_max;
    let mut got = spool::Body::new();
    let mut held = http::Held::default();
    let mut pack_at = None;
    // Hashed here as the pieces arrive (cheap: plain SHA-1), not by the pack reader;
    // `hashed_to` is how much of the body the trailer was given.
    let mut trailer = crate::git::pack::Trailer::new();
    let mut hashed_to = 0;
    let mut reading = PackReading::Here {
        stream: Some(Box::new((
            crate::git::pack::PackStream::without_trailer(limits),
            Inspected::new(ctx.fsck.clone()),
        ))),
        error: None,
    };
    let mut aside = AsideWriter::new(ctx, repo, aside);
    let mut objects_charged = false;
    let arriving = std::time::Instant::now();
    let received: Result<(), Refusal> = async {
        loop {
            if stopped() {
                return Err(Refusal {
                    status: StatusCode::CONFLICT,
                    message: "the push was answered before its body arrived".into(),
                    git: false,
                });
            }
            let data = match source.next().await {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(()),
                Err(e) => return Err(body_refusal(&e)),
            };
            if got.len() as u64 + data.len() as u64 > max {
                return Err(body_refusal(&http::BodyError::TooLarge(max)));
            }
            match ctx.budget.try_take(data.len()) {
                Some(h) => held.merge(h),
                None => return Err(body_refusal(&http::BodyError::Busy)),
            }
            let spool = ctx
                .spool_dir
                .as_deref()
                .map(|dir| (dir, ctx.limits.disk_reserve_bytes));
            if let Err(e) = got.push(&data, spool, max as usize) {
                warn!(repo = %repo, error = %e, "spooling a push failed");
                let status = if e.kind() == std::io::ErrorKind::StorageFull {
                    StatusCode::INSUFFICIENT_STORAGE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                return Err(Refusal {
                    status,
                    message: format!("spooling the push failed: {e}"),
                    git: false,
                });
            }
            if pack_at.is_none() {
                let end = crate::contain::run(|| receive::commands_end(got.as_slice()))
                    .unwrap_or_else(|p| Err(receive::ProtocolError(p.to_string())));
                match end {
                    Ok(at) => pack_at = at,
                    Err(e) => {
                        return Err(Refusal {
                            status: StatusCode::OK,
                            message: e.to_string(),
                            git: true,
                        })
                    }
                }
            }
            if let Some(at) = pack_at {
                if !objects_charged {
                    if let Some(count) = got.as_slice().get(at + 8..at + 12) {
                        objects_charged = true;
                        let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]);
                        // More than the limit: the reader refuses the pack by name.
                        held.merge(charge_objects(ctx, count.min(limits.objects_max))?);
                    }
                }
                reading.advance(&got, at);
                // From the piece itself where it holds all that is new (every piece
                // after the one the pack starts in).
                let (from, end) = (hashed_to.max(at), got.len());
                let piece_at = end - data.len();
                match from.checked_sub(piece_at) {
                    Some(skip) => trailer.push(data.get(skip..).unwrap_or_default()),
                    None => trailer.push(got.as_slice().get(from..end).unwrap_or_default()),
                }
                hashed_to = end;
                if let spool::Body::File(f) = &got {
                    aside.add(&f.view(), at, reading.take_ready()).await?;
                }
            }
            glommio::yield_if_needed().await;
        }
    }
    .await;
    if let Err(refusal) = received {
        reading.abandon();
        source.linger();
        return Err(refusal);
    }
    let view = match &got {
        spool::Body::File(f) => Some(f.view()),
        spool::Body::Mem(_) => None,
    };
    let buf = got.into_bytes();
    let arrived_ms = arriving.elapsed().as_millis() as u64;
    let pre_read = match pack_at {
        Some(at) if buf.len() > at => {
            let pack = buf.get(at..).unwrap_or_default();
            let read = reading
                .finish_writing(&buf, at, &mut aside, view.as_ref())
                .await?;
            Some(read.and_then(|entries| trailer.check(pack).map(|()| entries)))
        }
        _ => {
            reading.abandon();
            None
        }
    };
    aside.finish().await?;
    info!(
        repo = %repo,
        bytes = buf.len(),
        arrived_ms,
        read_ms = arriving.elapsed().as_millis() as u64,
        "push body received and read"
    );
    Ok(Arrived {
        received: Received {
            body: buf,
            pre_read,
        },
        held,
        aside: aside.into_guard(),
    })
}

/// A push body received here ([`receive_body`]).
struct Arrived<B: Backend> {
    received: Received,
    held: Held,
    aside: Option<AsideGuard<B>>,
}

/// Where a push's verified objects are written while it arrives (see
/// [`Backend::store_aside`]).
enum AsideTo<'a> {
    /// This shard owns the repository.
    Here,
    /// The owning shard, in the body's channel ([`route::BodyChunk::Aside`]).
    Owner(&'a glommio::channels::shared_channel::ConnectedSender<route::BodyChunk>),
}

/// Bytes of objects written aside at a time, and how many such writes a push keeps in
/// flight.
const ASIDE_BATCH_BYTES: usize = 16 << 20;
const ASIDE_IN_FLIGHT: usize = 2;

/// Ids for writing aside, unique in the process (leftovers are dropped at start).
static NEXT_ASIDE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_aside() -> u64 {
    NEXT_ASIDE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Objects a push wrote aside; dropped unless the push stores them (then dropping is a
/// no-op).
struct AsideGuard<B: Backend> {
    ctx: Rc<Ctx<B>>,
    id: u64,
}

impl<B: Backend> AsideGuard<B> {
    /// The aside id of `slot`'s guard, made (with a new id) on first use.
    fn id_in(slot: &mut Option<AsideGuard<B>>, ctx: &Rc<Ctx<B>>) -> u64 {
        slot.get_or_insert_with(|| AsideGuard {
            ctx: ctx.clone(),
            id: next_aside(),
        })
        .id
    }
}

impl<B: Backend> Drop for AsideGuard<B> {
    fn drop(&mut self) {
        self.ctx.backend.drop_aside(self.id);
    }
}

/// Gathers the objects a pack reader has verified into batches and writes them aside.
struct AsideWriter<'a, B: Backend + 'static> {
    ctx: &'a Rc<Ctx<B>>,
    repo: String,
    to: AsideTo<'a>,
    batch: Vec<crate::backend::RawObject>,
    batch_bytes: usize,
    guard: Option<AsideGuard<B>>,
    writes: std::collections::VecDeque<glommio::task::JoinHandle<Result<(), String>>>,
}

impl<'a, B: Backend + 'static> AsideWriter<'a, B> {
    fn new(ctx: &'a Rc<Ctx<B>>, repo: &str, to: AsideTo<'a>) -> Self {
        AsideWriter {
            ctx,
            repo: repo.to_owned(),
            to,
            batch: Vec::new(),
            batch_bytes: 0,
            guard: None,
            writes: Default::default(),
        }
    }

    /// Adds objects the reader verified (their data at `at + range` of `view`).
    async fn add(
        &mut self,
        view: &spool::SpoolView,
        at: usize,
        ready: Vec<crate::git::pack::Resolved>,
    ) -> Result<(), Refusal> {
        for r in ready {
            let Some(deflated) = view.bytes(at + r.data.start..at + r.data.end) else {
                continue;
            };
            self.batch_bytes += deflated.len();
            self.batch.push(crate::backend::RawObject {
                oid: r.oid,
                kind: r.kind,
                object_size: r.object_size,
                entry_size: r.entry_size,
                base: r.base,
                deflated,
            });
        }
        if self.batch_bytes >= ASIDE_BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Refusal> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let failed = |e: String| Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("storing objects failed: {e}"),
            git: false,
        };
        match self.to {
            AsideTo::Owner(tx) => crate::gate::gated(tx.send(route::BodyChunk::Aside(batch)))
                .await
                .map_err(|_| failed("the owning shard went away".into())),
            AsideTo::Here => {
                let id = AsideGuard::id_in(&mut self.guard, self.ctx);
                if self.writes.len() >= ASIDE_IN_FLIGHT {
                    if let Some(w) = self.writes.pop_front() {
                        w.await
                            .unwrap_or_else(|| Err("cancelled".into()))
                            .map_err(failed)?;
                    }
                }
                let (ctx, repo) = (self.ctx.clone(), self.repo.clone());
                self.writes.push_back(
                    glommio::spawn_local(async move {
                        ctx.backend
                            .store_aside(&repo, id, batch)
                            .await
                            .map_err(|e| e.0)
                    })
                    .detach(),
                );
                Ok(())
            }
        }
    }

    /// Writes what is left of the last batch and waits for every write.
    async fn finish(&mut self) -> Result<(), Refusal> {
        self.flush().await?;
        while let Some(w) = self.writes.pop_front() {
            w.await
                .unwrap_or_else(|| Err("cancelled".into()))
                .map_err(|e| Refusal {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("storing objects failed: {e}"),
                    git: false,
                })?;
        }
        Ok(())
    }

    fn into_guard(self) -> Option<AsideGuard<B>> {
        self.guard
    }
}

/// The push in `body` (commands, options, pack), with its entries if they were read
/// while it arrived.
async fn receive_pack_body<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    repo: String,
    state: RepoState,
    arrived: Arrived<B>,
) -> Response<Body> {
    let Arrived {
        received: Received { body, pre_read },
        held,
        aside,
    } = arrived;
    let node = ctx.node_name.clone();
    let ctype = "application/x-git-receive-pack-result";
    if body.as_ref() == b"0000" {
        // git's probe before a large chunked POST.
        return respond(StatusCode::OK, ctype, Vec::new(), &node);
    }
    let parsed = crate::contain::run(|| receive::parse_push(&body, &ctx.limits.request));
    let push = match parsed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return git_error(&e.to_string(), &node, ctype),
        Err(p) => return bug(&repo, &p, &node),
    };
    if push.commands.is_empty() {
        return respond(StatusCode::OK, ctype, Vec::new(), &node);
    }
    let (mut tx, out) = http::channel();
    glommio::spawn_local(async move {
        // The body's share of the budget is held until the push is done; what it
        // wrote aside is dropped when it is, unless the push stored it.
        let _held = held;
        let aside_id = aside.as_ref().map(|g| g.id);
        let _aside = aside;
        let sideband = push
            .caps
            .contains("side-band-64k")
            .then_some(pktline::MAX_PKT);
        let quiet = push.caps.contains("quiet");
        let limits = PackLimits {
            object_bytes_max: ctx.limits.object_bytes_max,
            ..PackLimits::default()
        };
        let progress_tx = tx.clone();
        let progress = move |msg: String| {
            if let (Some(max), false) = (sideband, quiet) {
                let mut o = Vec::new();
                pktline::sideband(&mut o, 2, format!("{msg}\n").as_bytes(), max);
                // Progress is best effort: dropped if the client is slow.
                let _ = progress_tx.clone().try_send(Bytes::from(o));
            }
        };
        let pack = body.slice(push.pack_at..);
        let report = receive::receive(
            &ctx.backend,
            &repo,
            &state,
            &push,
            pack,
            aside_id,
            &limits,
            &ctx.fsck,
            pre_read,
            progress,
        )
        .await;
        for (name, r) in &report.refs {
            match r {
                Ok(()) => info!(repo = %repo, r#ref = %name, "ref updated"),
                Err(e) => warn!(repo = %repo, r#ref = %name, reason = %e, "ref update refused"),
            }
        }
        let mut o = Vec::new();
        band(sideband, &mut o, &report.encode());
        if sideband.is_some() {
            pktline::flush(&mut o);
        }
        if tx.send(Bytes::from(o)).await.is_ok() {
            tx.finish();
        }
    })
    .detach();
    let mut r = Response::new(out);
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert("content-type", v);
    }
    r
}

#[derive(Debug, Deserialize)]
struct RepoRequest {
    #[serde(rename = "Reponame")]
    reponame: String,
    #[serde(rename = "Public", default)]
    public: bool,
    #[serde(rename = "UpdateRequest", default)]
    update: BTreeMap<String, String>,
}

fn json(status: StatusCode, v: &serde_json::Value, node: &str) -> Response<Body> {
    respond(status, "application/json", v.to_string(), node)
}

fn outcome(r: Result<String, String>, node: &str) -> Response<Body> {
    match r {
        Ok(info) => json(
            StatusCode::OK,
            &serde_json::json!({"Success": true, "Error": "", "Info": info}),
            node,
        ),
        Err(e) => json(
            StatusCode::OK,
            &serde_json::json!({"Success": false, "Error": e, "Info": ""}),
            node,
        ),
    }
}

async fn admin<B: Backend + 'static>(
    ctx: &Ctx<B>,
    who: Option<&Principal>,
    op: &str,
    req: Req,
    peer: &Peer,
    local_only: bool,
) -> Response<Body> {
    let node = &ctx.node_name;
    let is_admin = who.is_some_and(|p| {
        allows(p, &ctx.region, "*", Permission::Admin)
            || allows(p, &ctx.region, "", Permission::Admin)
    });
    if !is_admin {
        return text(StatusCode::UNAUTHORIZED, "admin permission required", node);
    }
    let method = req.method.clone();
    match (op, method) {
        ("nodestatus", Method::GET) => {
            let mut status = ctx.backend.node_status();
            if !local_only {
                // Shard k's storage and raft status at index k; repository and object
                // counts summed; the node is "ok" only if every shard is.
                let mut shards = vec![serde_json::Value::Null; ctx.shards];
                let count = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
                let mut repos = 0;
                let mut objects = 0;
                let mut worst = "ok".to_string();
                let mut all = vec![status.clone()];
                all.extend(gather(ctx, &req, peer).await);
                for v in &all {
                    repos += count(v, "Repositories");
                    objects += count(v, "Objects");
                    let st = v["Status"].as_str().unwrap_or("unknown");
                    if st != "ok" {
                        worst = format!("shard {}: {st}", v["Shard"]);
                    }
                    let k = v["Shard"].as_u64().unwrap_or(0) as usize;
                    if let Some(slot) = shards.get_mut(k) {
                        let mut e = v["Storage"].clone();
                        e["Raft"] = v["Raft"].clone();
                        *slot = e;
                    }
                }
                if all.len() < ctx.shards {
                    worst = "some shards did not answer".into();
                }
                status["Status"] = worst.into();
                status["Repositories"] = repos.into();
                status["Objects"] = objects.into();
                // The region's members as this node knows them (shard 0's group).
                let mut peers = serde_json::Map::new();
                if let Some(members) = shards
                    .first()
                    .and_then(|s| s["Raft"]["Members"].as_object())
                {
                    for (id, m) in members {
                        peers.insert(id.clone(), m["Address"].clone());
                    }
                }
                status["Peers"] = serde_json::Value::Object(peers);
                status["Shards"] = serde_json::Value::Array(shards);
            }
            json(StatusCode::OK, &status, node)
        }
        ("listrepos", Method::GET) => match async {
            ctx.backend.linearize().await?;
            ctx.backend.list_repos().await
        }
        .await
        {
            Ok(repos) => {
                let mut v: serde_json::Map<String, serde_json::Value> = repos
                    .into_iter()
                    .map(|(n, s)| {
                        (n, serde_json::json!({"Public": s.public, "Refs": s.refs, "Symrefs": s.symrefs, "AllowNonFastForward": s.allow_non_fast_forward}))
                    })
                    .collect();
                if !local_only {
                    for other in gather(ctx, &req, peer).await {
                        if let Some(m) = other["Repos"].as_object() {
                            v.extend(m.clone());
                        }
                    }
                }
                json(StatusCode::OK, &serde_json::json!({"Repos": v}), node)
            }
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"Error": e.0}),
                node,
            ),
        },
        ("createrepo" | "deleterepo" | "editrepo", Method::POST) => {
            let r: RepoRequest = match serde_json::from_slice(&req.body) {
                Ok(r) => r,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!("invalid request: {e}"),
                        node,
                    )
                }
            };
            if !valid_repo_name(&r.reponame) {
                return outcome(
                    Err(format!("invalid repository name {:?}", r.reponame)),
                    node,
                );
            }
            let result = match op {
                "createrepo" => ctx
                    .backend
                    .create_repo(&r.reponame, r.public)
                    .await
                    .map(|()| String::new()),
                "deleterepo" => ctx
                    .backend
                    .delete_repo(&r.reponame)
                    .await
                    .map(|()| String::new()),
                _ => edit(ctx, &r).await,
            };
            outcome(result.map_err(|e| e.0), node)
        }
        ("createrepo" | "deleterepo" | "editrepo", _) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "POST required", node)
        }
        _ => text(StatusCode::NOT_FOUND, "not found", node),
    }
}

/// Asks every other shard for its part of `req` and returns their JSON answers.
async fn gather<B: Backend>(ctx: &Ctx<B>, req: &Req, peer: &Peer) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for shard in (0..ctx.shards).filter(|s| *s != ctx.shard) {
        let r = route::forward(
            &ctx.peers,
            shard,
            req.clone(),
            peer.cert.clone(),
            peer.addr,
            true,
        )
        .await;
        if let Ok(body) = http_body_util::BodyExt::collect(r.into_body()).await {
            if let Ok(v) = serde_json::from_slice(&body.to_bytes()) {
                out.push(v);
            }
        }
    }
    out
}

async fn edit<B: Backend>(
    ctx: &Ctx<B>,
    r: &RepoRequest,
) -> Result<String, crate::backend::BackendError> {
    let bad = |m: String| crate::backend::BackendError(m);
    let parse_bool = |k: &str| -> Result<Option<bool>, crate::backend::BackendError> {
        match r.update.get(k).map(String::as_str) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(bad(format!("{k}: expected true or false, got {v:?}"))),
        }
    };
    let public = parse_bool("public")?;
    let force = parse_bool("allow-non-fast-forward")?;
    let mut symrefs = Vec::new();
    if let Some(s) = r.update.get("update-symref") {
        for pair in s.split_whitespace() {
            let (name, target) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("invalid symref update {pair:?}")))?;
            let ok_name = name == "HEAD" || crate::git::refs::valid_ref_name(name.as_bytes());
            if !ok_name
                || (!target.is_empty() && !crate::git::refs::valid_ref_name(target.as_bytes()))
            {
                return Err(bad(format!("invalid symref update {pair:?}")));
            }
            symrefs.push((
                name.to_owned(),
                (!target.is_empty()).then(|| target.to_owned()),
            ));
        }
    }
    for k in r.update.keys() {
        if !matches!(
            k.as_str(),
            "public" | "allow-non-fast-forward" | "update-symref"
        ) {
            return Err(bad(format!("unknown setting {k:?}")));
        }
    }
    ctx.backend
        .edit_repo(&r.reponame, public, force, &symrefs)
        .await
        .map(|()| String::new())
}

/// Handles one request on the node listener: node certificates of this cluster and
/// region only.
pub async fn handle_node<B: Backend>(
    ctx: Rc<Ctx<B>>,
    req: Request<Incoming>,
    peer: Rc<Peer>,
) -> Response<Body> {
    let node = ctx.node_name.clone();
    match principal(&peer, &ctx.cluster) {
        Ok(Some(Principal::Node { region, .. })) if region == ctx.region => {}
        Ok(Some(Principal::Node { .. })) => {
            return text(StatusCode::FORBIDDEN, "node of another region", &node)
        }
        Ok(_) => {
            return text(
                StatusCode::FORBIDDEN,
                "a node certificate is required on this endpoint",
                &node,
            )
        }
        Err(e) => {
            return text(
                StatusCode::FORBIDDEN,
                &format!("certificate not accepted: {e}"),
                &node,
            )
        }
    }
    let path = req.uri().path().to_owned();
    if let Some((k, _)) = shard_rpc(&path) {
        if k >= ctx.shards {
            return text(
                StatusCode::NOT_FOUND,
                &format!("this node has {} shards; there is no shard {k}", ctx.shards),
                &node,
            );
        }
        let (method, uri, headers) = (
            req.method().clone(),
            req.uri().clone(),
            req.headers().clone(),
        );
        let (body, held) = match http::collect(req, ctx.limits.pack_bytes_max, &ctx.budget).await {
            Ok(b) => b,
            Err(e) => return body_error(&e, &node),
        };
        if k == ctx.shard {
            let (_, op) = shard_rpc(&path).unwrap_or((k, ""));
            let r = node_rpc(&ctx, op, body).await;
            drop(held);
            return r;
        }
        drop(held);
        let fwd = Req {
            method,
            uri,
            headers,
            body,
        };
        return route::forward(&ctx.peers, k, fwd, peer.cert.clone(), peer.addr, false).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/rpc/ping") => text(StatusCode::OK, "pong", &node),
        (&Method::GET, "/rpc/nodestatus") => {
            json(StatusCode::OK, &ctx.backend.node_status(), &node)
        }
        (&Method::GET, "/rpc/info") => json(
            StatusCode::OK,
            &serde_json::json!({
                "cluster": ctx.cluster,
                "region": ctx.region,
                "node": ctx.node_name,
                "shards": ctx.shards,
            }),
            &node,
        ),
        _ => text(StatusCode::NOT_FOUND, "not found", &node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths() {
        assert_eq!(
            split_repo_path("/repo/test.git/info/refs"),
            Some(("test", "info/refs"))
        );
        assert_eq!(
            split_repo_path("/repo/rpms/bash.git/git-upload-pack"),
            Some(("rpms/bash", "git-upload-pack"))
        );
        assert_eq!(split_repo_path("/repo/x.git"), Some(("x", "")));
        assert_eq!(split_repo_path("/repo/nogit/info/refs"), None);
        assert_eq!(split_repo_path("/other/x.git/info/refs"), None);
        let (name, _) = split_repo_path("/repo/../x.git/info/refs").expect("splits");
        assert!(!valid_repo_name(name));
        let (name, _) = split_repo_path("/repo/%2e%2e/x.git/info/refs").expect("splits");
        assert!(!valid_repo_name(name));
    }
}

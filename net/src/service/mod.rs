//! The HTTP endpoints: git smart HTTP under `/repo/<name>.git/`, the admin API under
//! `/admin/`, and the node endpoint. Authorization comes from the verified client
//! certificate on every request; a repository the principal may not see, or that does
//! not exist, is a 404 either way, so names do not leak.
//!
//! Split by concern: `auth` (who asks, may they), `fetch` (upload-pack), `push`
//! (receive-pack, with `reading` its pack and `aside` what it verified as it arrives),
//! `admin`, `monitor` (health and metrics), `node` (the node listener) and `reply`
//! (responses).

mod admin;
mod aside;
mod auth;
mod fetch;
mod hook_run;
mod monitor;
mod node;
mod push;
mod reading;
mod reply;

use admin::*;
use aside::*;
use auth::*;
use fetch::*;
use monitor::*;
use node::*;
use push::*;
use reading::*;
use reply::*;

pub use auth::split_repo_path;
pub use monitor::{handle_plain, shard_ready};
pub use node::handle_node;
pub use push::PUSH_BYTES_PER_OBJECT;
pub use reading::set_reader_cpus;
pub(crate) use reading::unpin_this_thread;

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
use crate::git::receive::{self, Inspected, PackRead};
use crate::git::refs::valid_repo_name;
use crate::git::upload::{self, FetchRequest};
use crate::http::{self, Body, Budget, Held, Peer};
use crate::route::{self, Peers, Received, Refusal, Req};
use crate::rpc;
use crate::spool;
use glommio::channels::shared_channel::SharedReceiver;

/// Limits on what a request may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub pack_bytes_max: u64,
    pub object_bytes_max: u64,
    /// Most bytes verifying one push may inflate and produce
    /// ([`crate::git::pack::Limits::inflated_bytes_max`]).
    pub push_inflated_bytes_max: u64,
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
    /// How this node runs hooks.
    pub hooks: std::sync::Arc<crate::hooks::Settings>,
    /// What this shard counts for `GET /metrics`.
    pub metrics: crate::metrics::Metrics,
}

/// Handles one request on the user listener: reads its bounded body, then serves it
/// on this shard or passes it to the shard that owns its repository. It counts in
/// flight until its response is sent.
pub async fn handle_user<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    req: Request<Incoming>,
    peer: Rc<Peer>,
) -> Response<Body> {
    let in_flight = ctx.metrics.in_flight();
    let response = handle_user_here(ctx, req, peer).await;
    crate::metrics::counted_response(response, in_flight)
}

async fn handle_user_here<B: Backend + 'static>(
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
    // A push is read while it arrives, on this shard: verified objects and then the
    // body go to the shard that owns the repository if that is another.
    if req.method() == Method::POST {
        if let Some((repo, "git-receive-pack")) = split_repo_path(&path) {
            let owner = route::shard_of(repo, ctx.shards);
            let repo = repo.to_owned();
            if owner == ctx.shard {
                let extra = hook_run::extras(req.headers());
                let source = route::Source::Client(req.into_body());
                return receive_streaming(ctx, source, peer, repo, extra).await;
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
                let extra = hook_run::extras(&req.headers);
                receive_streaming(ctx, source, peer, repo, extra).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found", &ctx.node_name),
        };
    }
    if let Some((_, name)) = rpc::split_path(req.uri.path()) {
        // Authenticated as a node of this region by the shard that accepted it, which
        // checked the operation's name too.
        return match rpc::Op::parse(name) {
            Some(op) => node_rpc(&ctx, op, req.body).await,
            None => unknown_op(name, &ctx.node_name),
        };
    }
    let Some(held) = ctx.budget.try_take(req.body.len()) else {
        return body_error(&http::BodyError::Busy, &ctx.node_name);
    };
    dispatch(ctx, req, peer, local_only, held).await
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
    let path = req.uri.path().to_owned();
    // For load balancers and orchestration: no certificate needed, nothing revealed
    // but whether the node serves. Metrics need the monitor permission.
    match path.as_str() {
        "/livez" => return text(StatusCode::OK, "ok", &node),
        "/readyz" => return readyz(&ctx, &req, &peer, local_only).await,
        "/metrics" => return metrics_request(&ctx, &req, &peer, local_only).await,
        _ => {}
    }
    let who = match user_of(&ctx, &peer) {
        Ok(w) => w,
        Err(r) => return *r,
    };
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
        // Readers learn nothing more than that they may not push. Counted once, at
        // the advertisement that starts a push.
        if rest == "info/refs" {
            ctx.metrics.push_done(crate::metrics::PushOutcome::Refused);
        }
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

//! Health and metrics: `/livez`, `/readyz` and `/metrics`, on the user listener and on
//! the optional plain listener for scrapers (`listen.metrics`).

use super::*;
use crate::metrics::{self, Sample};

/// Whether this shard serves: its raft group has a leader (with a quorum, if it is
/// the leader) and it has applied everything it knows committed.
pub fn shard_ready(status: &serde_json::Value) -> Result<(), String> {
    let st = status["Status"].as_str().unwrap_or("unknown");
    if st != "ok" {
        return Err(st.to_owned());
    }
    let raft = &status["Raft"];
    match (raft["Applied"].as_u64(), raft["Committed"].as_u64()) {
        (Some(a), Some(c)) if a < c => Err(format!("applied {a} of {c} committed entries")),
        _ => Ok(()),
    }
}

/// `GET /readyz`: 200 when every shard is ready ([`shard_ready`]), else 503 with the
/// reasons. `local_only`: this shard's part, as JSON, for the shard that gathers.
pub(super) async fn readyz<B: Backend>(
    ctx: &Ctx<B>,
    req: &Req,
    peer: &Peer,
    local_only: bool,
) -> Response<Body> {
    let node = &ctx.node_name;
    let mine = shard_ready(&ctx.backend.node_status());
    if local_only {
        let v = serde_json::json!({"Shard": ctx.shard, "Ready": mine.is_ok(), "Why": mine.err()});
        return json(StatusCode::OK, &v, node);
    }
    let mut why: Vec<String> = mine
        .err()
        .map(|w| format!("shard {}: {w}", ctx.shard))
        .into_iter()
        .collect();
    let others = gather(ctx, req, peer).await;
    if others.len() + 1 < ctx.shards {
        why.push("some shards did not answer".into());
    }
    for v in &others {
        if v["Ready"].as_bool() != Some(true) {
            let w = v["Why"].as_str().unwrap_or("not ready");
            why.push(format!("shard {}: {w}", v["Shard"]));
        }
    }
    if why.is_empty() {
        text(StatusCode::OK, "ready", node)
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, &why.join("; "), node)
    }
}

/// Whether `who` may read the node's metrics: the monitor or the admin permission,
/// region-wide.
pub(super) fn may_monitor<B>(ctx: &Ctx<B>, who: Option<&Principal>) -> bool {
    who.is_some_and(|p| {
        [Permission::Monitor, Permission::Admin]
            .into_iter()
            .any(|perm| allows(p, &ctx.region, "", perm))
    })
}

/// `GET /metrics` on the user listener: for a principal with the monitor permission;
/// a part asked by the shard that gathers (`local_only`) was authorized there.
pub(super) async fn metrics_request<B: Backend>(
    ctx: &Ctx<B>,
    req: &Req,
    peer: &Peer,
    local_only: bool,
) -> Response<Body> {
    if !local_only {
        let who = match user_of(ctx, peer) {
            Ok(w) => w,
            Err(r) => return *r,
        };
        if !may_monitor(ctx, who.as_ref()) {
            let node = &ctx.node_name;
            return text(
                StatusCode::UNAUTHORIZED,
                "monitor permission required",
                node,
            );
        }
    }
    metrics_endpoint(ctx, req, peer, local_only).await
}

/// This shard's samples: its network layer's, its backend's and its memory budget's.
pub(super) fn shard_samples<B: Backend>(ctx: &Ctx<B>) -> Vec<Sample> {
    let mut out = ctx.metrics.samples();
    out.extend(ctx.backend.metrics());
    out.push(Sample::gauge(
        "repospanner_memory_budget_used_bytes",
        &[],
        ctx.budget.used_bytes() as f64,
    ));
    out.push(Sample::gauge(
        "repospanner_memory_budget_bytes",
        &[],
        ctx.budget.bytes() as f64,
    ));
    out
}

/// `GET /metrics`, already authorized: every shard's samples summed, and the node's
/// own (memory, disk), in Prometheus's text format. `local_only`: this shard's
/// samples, as JSON, for the shard that gathers.
pub(super) async fn metrics_endpoint<B: Backend>(
    ctx: &Ctx<B>,
    req: &Req,
    peer: &Peer,
    local_only: bool,
) -> Response<Body> {
    let node = &ctx.node_name;
    if local_only {
        return match serde_json::to_value(shard_samples(ctx)) {
            Ok(v) => json(StatusCode::OK, &v, node),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), node),
        };
    }
    let mut all = shard_samples(ctx);
    let parts = gather(ctx, req, peer).await;
    if parts.len() + 1 < ctx.shards {
        // Counters left out of a sum would look like a reset to Prometheus.
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "some shards did not answer; scrape again",
            node,
        );
    }
    for v in parts {
        match serde_json::from_value::<Vec<Sample>>(v) {
            Ok(s) => all.extend(s),
            Err(e) => warn!(error = %e, "a shard's metrics did not parse"),
        }
    }
    if let Some(rss) = metrics::resident_bytes() {
        all.push(Sample::gauge(
            "process_resident_memory_bytes",
            &[],
            rss as f64,
        ));
    }
    if let Some(dir) = ctx.spool_dir.as_deref() {
        if let Ok(free) = spool::free_bytes_in(dir) {
            all.push(Sample::gauge(
                "repospanner_filesystem_free_bytes",
                &[],
                free as f64,
            ));
        }
    }
    all.push(Sample::gauge(
        "repospanner_disk_reserve_bytes",
        &[],
        ctx.limits.disk_reserve_bytes as f64,
    ));
    respond(
        StatusCode::OK,
        prometheus::TEXT_FORMAT,
        metrics::encode(all),
        node,
    )
}

/// Serves a request on the plain listener for scrapers (`listen.metrics`): `GET` of
/// `/metrics`, `/livez` and `/readyz`, without a certificate; nothing else.
pub async fn handle_plain<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    req: Request<Incoming>,
    peer: Rc<Peer>,
) -> Response<Body> {
    let node = &ctx.node_name;
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only", node);
    }
    let (parts, _body) = req.into_parts();
    let req = Req {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body: Vec::new(),
    };
    match req.uri.path() {
        "/livez" => text(StatusCode::OK, "ok", node),
        "/readyz" => readyz(&ctx, &req, &peer, false).await,
        "/metrics" => metrics_endpoint(&ctx, &req, &peer, false).await,
        _ => text(StatusCode::NOT_FOUND, "not found", node),
    }
}

//! The node listener: node certificates of this region only; node-to-node operations (`crate::rpc`), routed to their shard.

use super::*;

pub(super) async fn node_rpc<B: Backend>(
    ctx: &Ctx<B>,
    op: rpc::Op,
    body: Vec<u8>,
) -> Response<Body> {
    match ctx.backend.node_rpc(op, body).await {
        Ok(b) => respond(
            StatusCode::OK,
            "application/octet-stream",
            b,
            &ctx.node_name,
        ),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            text(status, &e.to_string(), &ctx.node_name)
        }
    }
}

pub(super) fn unknown_op(name: &str, node: &str) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        &format!(
            "unknown node operation {}",
            crate::git::excerpt(name.as_bytes())
        ),
        node,
    )
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
    if let Some((k, name)) = rpc::split_path(&path) {
        let Some(op) = rpc::Op::parse(name) else {
            return unknown_op(name, &node);
        };
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

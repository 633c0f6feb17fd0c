//! Responses: plain text, JSON and git errors, and the refusals of request bodies.

use super::*;

pub(super) fn respond(
    status: StatusCode,
    ctype: &str,
    body: impl Into<Bytes>,
    node: &str,
) -> Response<Body> {
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

pub(super) fn text(status: StatusCode, msg: &str, node: &str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        format!("{msg}\n"),
        node,
    )
}

pub(super) fn body_refusal(e: &http::BodyError) -> Refusal {
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

pub(super) fn body_error(e: &http::BodyError, node: &str) -> Response<Body> {
    refused(&body_refusal(e), node)
}

pub(super) fn refused(r: &Refusal, node: &str) -> Response<Body> {
    if r.git {
        git_error(&r.message, node, "application/x-git-receive-pack-result")
    } else {
        text(r.status, &r.message, node)
    }
}

/// The answer to a request that failed on a contained bug (see [`crate::contain`]).
pub(super) fn bug(repo: &str, p: &crate::contain::Panicked, node: &str) -> Response<Body> {
    tracing::error!(repo = %repo, error = %p, "a request failed on a bug; the node goes on");
    text(StatusCode::INTERNAL_SERVER_ERROR, &p.to_string(), node)
}

pub(super) fn git_error(msg: &str, node: &str, ctype: &str) -> Response<Body> {
    let mut o = Vec::new();
    pktline::error(&mut o, msg);
    respond(StatusCode::OK, ctype, o, node)
}

pub(super) fn json(status: StatusCode, v: &serde_json::Value, node: &str) -> Response<Body> {
    respond(status, "application/json", v.to_string(), node)
}

pub(super) fn outcome(r: Result<String, String>, node: &str) -> Response<Body> {
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

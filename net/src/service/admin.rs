//! The admin API under `/admin/`: repositories, their settings, node status.

use super::*;
use crate::backend::HookScript;

/// The Go original's settings of a repository's hooks, and git's names of them.
const HOOK_KEYS: [(&str, &str); 3] = [
    ("hook-prereceive", "pre-receive"),
    ("hook-update", "update"),
    ("hook-postreceive", "post-receive"),
];

/// `POST /admin/hook/<any>.git/upload`: a hook script (the raw body) kept on this node
/// until an edit names it by the id answered (the Go original's endpoint; its path's
/// repository is not used).
pub(super) fn upload_hook<B>(ctx: &Ctx<B>, req: &Req) -> Result<String, String> {
    let max = crate::hooks::SCRIPT_BYTES_MAX;
    if req.body.len() > max {
        return Err(format!(
            "a hook script may have at most {max} bytes, this one has {}",
            req.body.len()
        ));
    }
    if let Some(size) = req.headers.get("x-object-size") {
        let size = size.to_str().ok().and_then(|s| s.parse::<usize>().ok());
        if size != Some(req.body.len()) {
            return Err("X-Object-Size does not match the body".into());
        }
    }
    let id = crate::hooks::script_id(&req.body).ok_or("the script is a SHA-1 collision")?;
    let path = ctx.hooks.dirs().upload(&id);
    let write = || -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{id}.{}", ctx.shard));
        std::fs::write(&tmp, &req.body)?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| format!("keeping the script: {e}"))?;
    Ok(id)
}

#[derive(Debug, Deserialize)]
pub(super) struct RepoRequest {
    #[serde(rename = "Reponame")]
    pub(super) reponame: String,
    #[serde(rename = "Public", default)]
    pub(super) public: bool,
    #[serde(rename = "UpdateRequest", default)]
    pub(super) update: BTreeMap<String, String>,
}

#[allow(clippy::too_many_lines)] // one match over the admin endpoints, each a few lines
pub(super) async fn admin<B: Backend + 'static>(
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
                        e["CommitHeaders"] = v["CommitHeaders"].clone();
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
        ("scrub", Method::POST) => scrub(ctx, req, peer, local_only).await,
        ("removenode", Method::POST) => remove_node(ctx, req, peer, local_only).await,
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
                        let hook = |k: &str| s.hooks.get(k).cloned().unwrap_or_else(|| "0".repeat(40));
                        let hooks = serde_json::json!({
                            "PreReceive": hook("pre-receive"),
                            "Update": hook("update"),
                            "PostReceive": hook("post-receive"),
                        });
                        (n, serde_json::json!({"Public": s.public, "Refs": s.refs, "Symrefs": s.symrefs, "Hooks": hooks, "AllowNonFastForward": s.allow_non_fast_forward}))
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
            let r: RepoRequest = match request_of(&req.body, node) {
                Ok(r) => r,
                Err(resp) => return *resp,
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
        (op, Method::POST) if op.starts_with("hook/") && op.ends_with(".git/upload") => {
            outcome(upload_hook(ctx, &req), node)
        }
        ("createrepo" | "deleterepo" | "editrepo", _) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "POST required", node)
        }
        _ => text(StatusCode::NOT_FOUND, "not found", node),
    }
}

/// Asks every other shard for its part of `req` and returns their JSON answers.
/// An admin request's JSON body, or the 400 that names what is wrong with it.
fn request_of<T: serde::de::DeserializeOwned>(
    body: &[u8],
    node: &str,
) -> Result<T, Box<Response<Body>>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(text(
            StatusCode::BAD_REQUEST,
            &format!("invalid request: {e}"),
            node,
        ))
    })
}

/// The body of `POST /admin/removenode`.
#[derive(Debug, Deserialize)]
struct RemoveNodeRequest {
    #[serde(rename = "NodeID")]
    id: u64,
}

/// `POST /admin/removenode`: node `NodeID` leaves every shard's group (each through
/// its leader, each refused if it would leave the group without a majority that
/// answers). 200 once every shard has removed it, else 409 with each shard's reason.
async fn remove_node<B: Backend>(
    ctx: &Ctx<B>,
    req: Req,
    peer: &Peer,
    local_only: bool,
) -> Response<Body> {
    let node = &ctx.node_name;
    let r: RemoveNodeRequest = match request_of(&req.body, node) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let mine = ctx.backend.remove_node(r.id).await;
    let v = serde_json::json!({"Shard": ctx.shard, "Error": mine.err().map(|e| e.0)});
    let all = match every_shard(ctx, v, &req, peer, local_only).await {
        Ok(all) => all,
        Err(r) => return *r,
    };
    let errors: Vec<String> = all
        .iter()
        .filter_map(|s| s["Error"].as_str().map(str::to_owned))
        .collect();
    if errors.is_empty() {
        let v = serde_json::json!({"Success": true, "NodeID": r.id, "Shards": all.len()});
        json(StatusCode::OK, &v, node)
    } else {
        text(StatusCode::CONFLICT, &errors.join("; "), node)
    }
}

/// The body of `POST /admin/scrub`: a repository, or none for every record.
#[derive(Debug, Default, Deserialize)]
struct ScrubRequest {
    #[serde(rename = "Repo", default)]
    repo: Option<String>,
}

/// `POST /admin/scrub`: every shard scrubs (and repairs) at once; the answer sums
/// their findings, with each shard's under `Shards`. 404 if a named repository is
/// nowhere.
async fn scrub<B: Backend>(
    ctx: &Ctx<B>,
    req: Req,
    peer: &Peer,
    local_only: bool,
) -> Response<Body> {
    let node = &ctx.node_name;
    let r: ScrubRequest = if req.body.is_empty() {
        ScrubRequest::default()
    } else {
        match request_of(&req.body, node) {
            Ok(r) => r,
            Err(resp) => return *resp,
        }
    };
    let mine = match ctx.backend.scrub(r.repo.as_deref()).await {
        Ok(v) => v,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), node),
    };
    let mut shards = match every_shard(ctx, mine, &req, peer, local_only).await {
        Ok(all) => all,
        Err(r) => return *r,
    };
    if !shards.iter().any(|s| s["Found"].as_bool() == Some(true)) {
        return text(StatusCode::NOT_FOUND, "no such repository", node);
    }
    shards.sort_by_key(|s| s["Shard"].as_u64());
    let sum = |k: &str| -> u64 { shards.iter().filter_map(|s| s[k].as_u64()).sum() };
    let v = serde_json::json!({
        "Records": sum("Records"),
        "Objects": sum("Objects"),
        "DamagedRegions": sum("DamagedRegions"),
        "Damaged": sum("Damaged"),
        "Repaired": sum("Repaired"),
        "Unrepaired": sum("UnrepairedCount"),
        "DamagedValues": sum("DamagedValues"),
        "Missing": sum("Missing"),
        "MissingFetched": sum("MissingFetched"),
        "Shards": shards,
    });
    json(StatusCode::OK, &v, node)
}

/// For an operation every shard does: this shard's answer `mine` and every other
/// shard's (`gather`). As `Err`, the response to give instead: `mine` alone when this
/// shard was asked for its part only, or 503 if some shard did not answer (run it
/// again: every operation that uses this may be repeated).
async fn every_shard<B: Backend>(
    ctx: &Ctx<B>,
    mine: serde_json::Value,
    req: &Req,
    peer: &Peer,
    local_only: bool,
) -> Result<Vec<serde_json::Value>, Box<Response<Body>>> {
    let node = &ctx.node_name;
    if local_only {
        return Err(Box::new(json(StatusCode::OK, &mine, node)));
    }
    let mut all = vec![mine];
    all.extend(gather(ctx, req, peer).await);
    if all.len() < ctx.shards {
        return Err(Box::new(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "some shards did not answer; run it again",
            node,
        )));
    }
    Ok(all)
}

pub(super) async fn gather<B: Backend>(
    ctx: &Ctx<B>,
    req: &Req,
    peer: &Peer,
) -> Vec<serde_json::Value> {
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

pub(super) async fn edit<B: Backend>(
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
    let mut hooks = Vec::new();
    for (key, kind) in HOOK_KEYS {
        let Some(id) = r.update.get(key) else {
            continue;
        };
        let id = id.trim().to_ascii_lowercase();
        let id = id.as_str();
        if id.is_empty() || id.bytes().all(|b| b == b'0') {
            hooks.push((kind.to_owned(), None));
            continue;
        }
        if crate::git::parse_hex(id.as_bytes()).is_none() {
            return Err(bad(format!(
                "{key}: expected a script id (40 hex digits), got {id:?}"
            )));
        }
        let content = match std::fs::read(ctx.hooks.dirs().upload(id)) {
            Ok(c) => c,
            Err(_) => ctx.backend.hook_script(id).ok_or_else(|| {
                bad(format!(
                    "{key}: no script {id} was uploaded to this node (POST /admin/hook/<repo>.git/upload, \
                     as `admin repo edit --hook-...` does)"
                ))
            })?,
        };
        // What was kept on disk is checked against its name before it is replicated.
        if crate::hooks::script_id(&content).as_deref() != Some(id) {
            return Err(bad(format!(
                "{key}: the script kept as {id} is damaged; upload it again"
            )));
        }
        let script = HookScript {
            id: id.to_owned(),
            content,
        };
        hooks.push((kind.to_owned(), Some(script)));
    }
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
        ) && !HOOK_KEYS.iter().any(|(h, _)| h == k)
        {
            return Err(bad(format!("unknown setting {k:?}")));
        }
    }
    ctx.backend
        .edit_repo(&r.reponame, public, force, &symrefs, &hooks)
        .await
        .map(|()| String::new())
}

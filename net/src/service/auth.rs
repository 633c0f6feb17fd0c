//! Who asks and what they may do: the principal of a client certificate, repository paths, and authorization (a repository the principal may not see is a 404).

use super::*;

/// The principal behind the connection's certificate, if any.
pub(super) fn principal(peer: &Peer, cluster: &str) -> Result<Option<Principal>, String> {
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

/// The shard that must serve `req`, if one must (repository requests and repository
/// administration); `None`: any shard.
pub(super) fn owner_of(req: &Req, shards: usize) -> Option<usize> {
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
pub(super) fn user_of<B>(
    ctx: &Ctx<B>,
    peer: &Peer,
) -> Result<Option<Principal>, Box<Response<Body>>> {
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
pub(super) async fn authorize<B: Backend>(
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

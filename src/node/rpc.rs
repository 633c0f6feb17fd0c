//! Node-to-node operations (`repospanner_net::rpc::Op`) served by this shard: the
//! request bodies' parsing and the failures' kinds.

use super::*;

pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RpcError> {
    serde_json::from_slice(body).map_err(malformed)
}

/// A node-to-node request body that is not what its operation takes.
pub(super) fn malformed(e: impl std::fmt::Display) -> RpcError {
    RpcError::Malformed(e.to_string())
}

/// This node failed to serve a node-to-node operation.
pub(super) fn failed(e: impl std::fmt::Display) -> RpcError {
    RpcError::Failed(e.to_string())
}

impl<D: Dir> NodeBackend<D> {
    /// Serves node-to-node operation `op` of this shard ([`Backend::node_rpc`]).
    pub(super) async fn serve(&self, op: Op, body: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        let raft = self.raft();
        match op {
            Op::Append if !self.inner.appends.get() => Err(RpcError::Unavailable(
                "this node lost its log and waits for the leader to replicate it from the start"
                    .into(),
            )),
            Op::Append => rpc_reply(raft.append_entries(parse(&body)?).await),
            Op::Vote if !self.inner.votes.get() => Err(RpcError::Unavailable(
                "this node is joining the region and does not vote until the join is done".into(),
            )),
            Op::Vote => rpc_reply(raft.vote(parse(&body)?).await),
            Op::Snapshot => {
                let (h, data) = decode_snapshot_body(&body).map_err(malformed)?;
                let snap = openraft::Snapshot {
                    meta: h.meta,
                    snapshot: data,
                };
                rpc_reply(raft.install_full_snapshot(h.vote, snap).await)
            }
            Op::Objects => {
                let (ns, _) = decode_ids(body.get(..8).unwrap_or(&[])).map_err(malformed)?;
                // decode_ids checked that the body holds at least 8 bytes.
                let objs = decode_objects(&Bytes::from(body).slice(8..)).map_err(malformed)?;
                self.inner.activity.touch(ns);
                store_objects(&self.inner.store, ns, objs)
                    .await
                    .map_err(failed)?;
                self.inner.activity.touch(ns);
                Ok(b"ok".to_vec())
            }
            Op::Aside => {
                let (key, _) = StreamKey::decode(&body).map_err(malformed)?;
                // StreamKey::decode checked that the body holds at least its 24 bytes.
                let objs = decode_objects(&Bytes::from(body).slice(24..)).map_err(malformed)?;
                self.write_peer_aside(key, objs).await?;
                Ok(b"ok".to_vec())
            }
            Op::Adopt => {
                let (key, oids) = decode_adopt(&body).map_err(malformed)?;
                let n = oids.len();
                self.adopt_peer_aside(key, oids).await?;
                info!(
                    shard = self.inner.shard,
                    from = key.from,
                    objects = n,
                    "adopted the objects a peer's push streamed here while it arrived"
                );
                Ok(b"ok".to_vec())
            }
            Op::DropAside => {
                let (key, _) = StreamKey::decode(&body).map_err(malformed)?;
                self.drop_peer_aside(key).await?;
                Ok(b"ok".to_vec())
            }
            Op::Fetch => self.serve_fetch(&body).await,
            Op::Inventory => {
                let (ns, _) = decode_ids(&body).map_err(malformed)?;
                Ok(encode_ids(ns, &self.inner.store.oids_in(Namespace(ns))))
            }
            Op::Propose => {
                let cmd: Command = parse(&body)?;
                let r = raft.client_write(cmd).await;
                leader_reply(match r {
                    Ok(resp) => Ok(resp.data),
                    Err(e) if e.forward_to_leader().is_some() => Err(LeaderError::NotLeader),
                    Err(e) => Err(LeaderError::Failed(e.to_string())),
                })
            }
            Op::ReadIndex => leader_reply(self.read_index().await),
            Op::Join => {
                let req: JoinRequest = parse(&body)?;
                rpc_reply(self.join(req).await)
            }
            Op::Rejoin => {
                let req: JoinRequest = parse(&body)?;
                rpc_reply(self.rejoin(req).await)
            }
            Op::Remove => {
                let req: RemoveRequest = parse(&body)?;
                rpc_reply(self.remove_member(req).await)
            }
        }
    }
}

impl<D: Dir> NodeBackend<D> {
    /// [`Op::Fetch`]: the stored objects of those asked for, up to
    /// [`FETCH_REPLY_BYTES`]; `Gone` if the repository was deleted here.
    async fn serve_fetch(&self, body: &[u8]) -> Result<Vec<u8>, RpcError> {
        let (ns, oids) = decode_ids(body).map_err(malformed)?;
        if crate::cluster::repo_deleted(&self.inner.store, ns) {
            return Err(RpcError::Gone(format!(
                "the repository of namespace {ns:x} was deleted"
            )));
        }
        let mut found = Vec::new();
        let mut bytes = 0;
        for o in oids {
            if bytes >= FETCH_REPLY_BYTES {
                break;
            }
            if let Some(obj) = self
                .inner
                .store
                .read_raw(Namespace(ns), &o)
                .await
                .map_err(failed)?
            {
                bytes += obj.deflated.len() + 64;
                found.push(obj);
            }
        }
        Ok(encode_objects(&[], &found))
    }
}

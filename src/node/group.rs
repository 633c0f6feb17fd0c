//! The shard's raft group: proposals (forwarded to the leader), read index, joins.

use super::*;

/// How a proposal failed.
#[derive(Debug)]
pub(super) enum ProposeError {
    /// Surely not applied (refused before it could be proposed).
    Failed(String),
    /// Proposed, but no answer in time: it may still commit.
    Unknown(String),
}

/// The JSON of a `join` request.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: u64,
    pub addr: String,
}

/// An operator removes node `id` from the region (`admin node remove`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: u64,
}

/// A voter counts as answering if the leader heard from it this recently: three
/// heartbeats (`cluster::raft_config`).
const ANSWERED_WITHIN: Duration = Duration::from_millis(1500);
/// How long a removal waits for its membership change to commit.
const REMOVE_WAIT: Duration = Duration::from_secs(30);

/// Why the leader-only operations (propose, read index) could not answer.
#[derive(Debug)]
pub(super) enum LeaderError {
    NotLeader,
    Failed(String),
}

impl std::fmt::Display for LeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaderError::NotLeader => f.write_str("not the leader"),
            LeaderError::Failed(e) => f.write_str(e),
        }
    }
}

/// Encodes a leader-only operation's outcome (`NotLeader` stays typed on the wire).
pub(super) fn leader_reply<T: Serialize>(r: Result<T, LeaderError>) -> Result<Vec<u8>, RpcError> {
    match r {
        Err(LeaderError::NotLeader) => {
            serde_json::to_vec(&RpcReply::<T>::NotLeader).map_err(failed)
        }
        r => rpc_reply(r),
    }
}

pub(super) fn rpc_reply<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Vec<u8>, RpcError> {
    let reply = match r {
        Ok(v) => RpcReply::Ok(v),
        Err(e) => RpcReply::Err(e.to_string()),
    };
    serde_json::to_vec(&reply).map_err(failed)
}

impl<D: Dir> NodeBackend<D> {
    /// Proposes `cmd` to the group (through the leader) and waits for its answer.
    pub(super) async fn propose(&self, cmd: Command) -> Result<Response, ProposeError> {
        let deadline = Instant::now() + self.inner.timeout;
        let mut sent = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let secs = self.inner.timeout.as_secs();
                return Err(if sent {
                    ProposeError::Unknown(format!(
                        "no majority confirmed it within {secs} s; it may still be applied"
                    ))
                } else {
                    ProposeError::Failed(format!(
                        "no leader reachable within {secs} s (a majority of the region's nodes is down or unreachable); nothing was changed"
                    ))
                });
            }
            match self.leader() {
                Some((l, _)) if l == self.inner.identity.id => {
                    sent = true;
                    let r = within(left, self.raft().client_write(cmd.clone())).await;
                    match r {
                        Some(Ok(resp)) => return Ok(resp.data),
                        Some(Err(e)) if e.forward_to_leader().is_some() => {}
                        Some(Err(e)) => {
                            return Err(ProposeError::Unknown(format!("raft: {e}")));
                        }
                        None => continue,
                    }
                }
                Some((_, Some(addr))) => {
                    let body = match serde_json::to_vec(&cmd) {
                        Ok(b) => Bytes::from(b),
                        Err(e) => return Err(ProposeError::Failed(e.to_string())),
                    };
                    let r = self
                        .inner
                        .client
                        .post(
                            &addr,
                            &Op::Propose.path(self.inner.shard),
                            body.into(),
                            left,
                        )
                        .await;
                    match r {
                        Ok(b) => match serde_json::from_slice::<RpcReply<Response>>(&b) {
                            Ok(RpcReply::Ok(resp)) => return Ok(resp),
                            // The leader moved before it proposed: try again.
                            Ok(RpcReply::NotLeader) => {}
                            Ok(RpcReply::Err(e)) => {
                                return Err(ProposeError::Unknown(format!("leader: {e}")))
                            }
                            Err(e) => {
                                return Err(ProposeError::Unknown(format!(
                                    "unreadable answer from the leader: {e}"
                                )))
                            }
                        },
                        // Surely not proposed: try again.
                        Err(e) if e.unreachable() => {}
                        Err(ClientError::Status { status: 503, .. }) => {}
                        // It may have been proposed; proposing it again could apply
                        // it twice, so the outcome is reported as unknown.
                        Err(e) => return Err(ProposeError::Unknown(format!("leader: {e}"))),
                    }
                }
                _ => {}
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) async fn admin_propose(&self, cmd: Command) -> Result<(), BackendError> {
        match self.propose(cmd).await {
            Ok(Response::Done) => Ok(()),
            Ok(Response::Refused(e)) => Err(err(e)),
            Ok(Response::Refs(_)) => Err(err("unexpected answer")),
            Err(ProposeError::Failed(e)) => Err(err(e)),
            Err(ProposeError::Unknown(e)) => Err(err(format!("outcome unknown: {e}"))),
        }
    }

    /// The read index of the group, confirmed by a quorum (leader only).
    pub(super) async fn read_index(&self) -> Result<u64, LeaderError> {
        let r = within(
            self.inner.timeout,
            self.raft().ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await;
        match r {
            Some(Ok(id)) => Ok(id.log_id().index),
            Some(Err(e)) if e.forward_to_leader().is_some() => Err(LeaderError::NotLeader),
            Some(Err(e)) => Err(LeaderError::Failed(e.to_string())),
            None => Err(LeaderError::Failed(
                "no quorum confirmed the leadership in time".into(),
            )),
        }
    }

    /// Sends a join operation (`join`, `rejoin`) to the group's leader: any member may
    /// be asked, the leader does it.
    pub(super) async fn join_at_leader(&self, op: Op, req: &JoinRequest) -> Result<(), String> {
        let Some((_, Some(addr))) = self.leader() else {
            return Err("the group has no leader right now".into());
        };
        let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        crate::cluster::post_join(
            self.inner.client.as_ref(),
            &addr,
            self.inner.shard,
            op,
            Bytes::from(body),
        )
        .await
    }

    /// A member whose log is empty asks to rejoin (its disk was wiped, or it never had
    /// one): if the group knows it, the leader lets replication to it start over once
    /// it finds the log gone (openraft's `allow_next_revert`), where it would otherwise
    /// keep sending what the node no longer has. Entries the node had acknowledged stay
    /// committed: they are on the leader, as every committed entry is.
    pub(super) async fn rejoin(&self, req: JoinRequest) -> Result<(), String> {
        let raft = self.raft();
        let m = raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.inner.identity.id) {
            return self.join_at_leader(Op::Rejoin, &req).await;
        }
        if m.membership_config.get_node(&req.id).is_none() || req.id == self.inner.identity.id {
            return Ok(());
        }
        // Only where this leader counts entries as on the node is there anything to
        // reset (a retried first join has none), and nothing is left armed that could
        // later pass a real reversion over.
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&req.id))
            .cloned()
            .flatten();
        if matched.is_none() {
            return Ok(());
        }
        match raft.trigger().allow_next_revert(&req.id, true).await {
            Ok(Ok(())) => {
                info!(
                    shard = self.inner.shard,
                    node = req.id,
                    "rejoin: the node lost its log; replicating it from the start"
                );
                Ok(())
            }
            // Not replicated to by this leader yet: a new stream starts from nothing.
            Ok(Err(e)) => {
                info!(shard = self.inner.shard, node = req.id, error = %e, "rejoin: nothing to reset");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Removes node `id` from this shard's group (through its leader), unless the
    /// voters left would not have a majority that answers: then the removal could not
    /// commit, or would leave the group unable to.
    pub(super) async fn remove_member(&self, req: RemoveRequest) -> Result<(), String> {
        let raft = self.raft();
        let m = raft.metrics().borrow_watched().clone();
        let me = self.inner.identity.id;
        if m.current_leader != Some(me) {
            let Some((_, Some(addr))) = self.leader() else {
                return Err("the group has no leader right now".into());
            };
            let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
            return crate::cluster::post_join(
                &self.inner.client,
                &addr,
                self.inner.shard,
                Op::Remove,
                Bytes::from(body),
            )
            .await;
        }
        if m.membership_config.get_node(&req.id).is_none() {
            info!(
                shard = self.inner.shard,
                node = req.id,
                "remove: not a member"
            );
            return Ok(());
        }
        let remaining: Vec<u64> = m
            .membership_config
            .voter_ids()
            .filter(|v| *v != req.id)
            .collect();
        if remaining.is_empty() {
            return Err(format!("node {} is the group's last voter", req.id));
        }
        let answered = |v: &u64| {
            *v == me
                || m.heartbeat
                    .as_ref()
                    .and_then(|h| h.get(v).cloned().flatten())
                    .is_some_and(|t| t.elapsed() <= ANSWERED_WITHIN)
        };
        let live = remaining.iter().filter(|v| answered(v)).count();
        if live * 2 <= remaining.len() {
            return Err(format!(
                "removing node {} would leave the group without a majority: {live} of its {} other voters answer",
                req.id,
                remaining.len()
            ));
        }
        let ids = BTreeSet::from([req.id]);
        let change = if m.membership_config.voter_ids().any(|v| v == req.id) {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids) // a learner (a join that never finished)
        };
        let changed = futures_lite::future::or(
            async { Some(raft.change_membership(change, false).await) },
            async {
                glommio::timer::sleep(REMOVE_WAIT).await;
                None
            },
        )
        .await;
        match changed {
            Some(r) => r.map_err(|e| e.to_string())?,
            None => {
                return Err(format!(
                    "the removal of node {} did not commit within {} s (a member stopped answering); it takes effect once a majority answers",
                    req.id,
                    REMOVE_WAIT.as_secs()
                ))
            }
        };
        info!(
            shard = self.inner.shard,
            node = req.id,
            "remove: node removed from the group"
        );
        Ok(())
    }

    pub(super) async fn join(&self, req: JoinRequest) -> Result<(), String> {
        let raft = self.raft();
        let m = raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.inner.identity.id) {
            return self.join_at_leader(Op::Join, &req).await;
        }
        let known = m.membership_config.get_node(&req.id).is_some();
        if m.membership_config.voter_ids().any(|v| v == req.id) {
            info!(
                shard = self.inner.shard,
                node = req.id,
                "join: already a voter"
            );
            return Ok(());
        }
        if !known {
            info!(shard = self.inner.shard, node = req.id, addr = %req.addr, "join: adding a learner");
        }
        raft.add_learner(req.id, BasicNode::new(req.addr.clone()), true)
            .await
            .map_err(|e| e.to_string())?;
        info!(
            shard = self.inner.shard,
            node = req.id,
            "join: learner caught up; making it a voter"
        );
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])), false)
            .await
            .map_err(|e| e.to_string())?;
        info!(shard = self.inner.shard, node = req.id, "join: voter");
        Ok(())
    }
}

impl<D: Dir> NodeBackend<D> {
    /// Waits until this node has applied everything committed before the call
    /// ([`Backend::linearize`]).
    pub(super) async fn read_barrier(&self) -> Result<(), BackendError> {
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let unavailable = |why: &str| {
                err(format!(
                    "this node cannot prove it is current ({why}); a majority of the region's nodes may be down"
                ))
            };
            if left.is_zero() {
                return Err(unavailable("timed out"));
            }
            let index = match self.leader() {
                Some((l, _)) if l == self.inner.identity.id => match self.read_index().await {
                    Ok(_) => return Ok(()),
                    Err(LeaderError::NotLeader) => None,
                    Err(LeaderError::Failed(e)) => return Err(unavailable(&e)),
                },
                Some((_, Some(addr))) => {
                    let r = self
                        .inner
                        .client
                        .post(
                            &addr,
                            &Op::ReadIndex.path(self.inner.shard),
                            SharedChain::new(),
                            left,
                        )
                        .await;
                    match r.map(|b| serde_json::from_slice::<RpcReply<u64>>(&b)) {
                        Ok(Ok(RpcReply::Ok(i))) => Some(i),
                        Ok(Ok(RpcReply::NotLeader)) => None,
                        Ok(Ok(RpcReply::Err(e))) => return Err(unavailable(&e)),
                        Ok(Err(e)) => return Err(unavailable(&e.to_string())),
                        Err(e) if e.unreachable() => None,
                        Err(e) => return Err(unavailable(&e.to_string())),
                    }
                }
                _ => None,
            };
            if let Some(i) = index {
                let left = deadline.saturating_duration_since(Instant::now());
                return self
                    .raft()
                    .wait(Some(left))
                    .applied_index_at_least(Some(i), "read index")
                    .await
                    .map(|_| ())
                    .map_err(|e| unavailable(&e.to_string()));
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }
}

//! What `nodestatus` reports of the shard's raft group.

use super::*;

impl<D: Dir> NodeBackend<D> {
    /// Per-shard raft status for `nodestatus`.
    pub(super) fn raft_status(&self) -> serde_json::Value {
        let m = self.raft().metrics().borrow_watched().clone();
        let last = m.last_log_index.unwrap_or(0);
        let members: BTreeMap<String, serde_json::Value> = m
            .membership_config
            .nodes()
            .map(|(id, n)| {
                let voter = m.membership_config.voter_ids().any(|v| v == *id);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.as_ref().map_or(0, |l| l.index));
                (
                    id.to_string(),
                    serde_json::json!({
                        "Address": n.addr,
                        "Voter": voter,
                        "Matched": matched,
                        "Lag": matched.map(|x| last.saturating_sub(x)),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "State": format!("{:?}", m.state),
            "Leader": m.current_leader,
            "Term": m.current_term,
            "LastLogIndex": m.last_log_index,
            "Committed": m.cluster_committed.map(|l| l.index),
            "Applied": m.last_applied.map(|l| l.index),
            "Snapshot": m.snapshot.map(|l| l.index),
            "Members": members,
        })
    }
}

impl<D: Dir> NodeBackend<D> {
    /// This shard's part of `nodestatus` ([`Backend::node_status`]).
    pub(super) fn status(&self) -> serde_json::Value {
        let id = &self.inner.identity;
        let s = self.inner.store.stats();
        let space = self.inner.store.last_space();
        let m = self.raft().metrics().borrow_watched().clone();
        let voters = m.membership_config.voter_ids().count();
        let quorum_age = m.last_quorum_acked.as_ref().map(|i| i.elapsed());
        let status = if m.running_state.is_err() {
            "failed"
        } else if m.current_leader.is_none() {
            "no leader"
        } else if m.state == ServerState::Leader
            && voters > 1
            && quorum_age.is_none_or(|a| a > Duration::from_secs(3))
        {
            "leader without a quorum"
        } else {
            "ok"
        };
        serde_json::json!({
            "NodeID": id.id,
            "NodeName": id.name,
            "RegionName": id.region,
            "ClusterName": id.cluster,
            "Version": env!("CARGO_PKG_VERSION"),
            "Status": status,
            "UptimeSeconds": self.inner.started.elapsed().as_secs(),
            "Shard": self.inner.shard,
            "Leader": m.state == ServerState::Leader,
            "Raft": self.raft_status(),
            "Repositories": self.inner.sm.with_state(|s| s.repos.len()),
            "Objects": self.inner.store.object_count(),
            // The commit headers kept for fetches' walks, and the memory they cost.
            "CommitHeaders": {
                "Count": self.inner.commits.len_and_bytes().0,
                "Bytes": self.inner.commits.len_and_bytes().1,
            },
            "Storage": {
                "NextLsn": self.inner.store.next_lsn(),
                "Appends": s.appends,
                "Batches": s.batches,
                "BytesWritten": s.bytes_written,
                "Checkpoints": s.checkpoints,
                "Corruptions": self.inner.store.corruptions().len(),
                // As last measured by compaction (null until it first looks).
                "Segments": space.map(|s| s.0),
                "Bytes": space.map(|s| s.1),
                "LiveBytes": space.map(|s| s.2),
                "Compaction": {
                    "Segments": s.segments_compacted,
                    "FreedBytes": s.compaction_freed_bytes,
                    "MovedBytes": s.compaction_moved_bytes,
                },
                // The last scrub since the node started (null before).
                "Scrub": *self.inner.last_scrub.borrow(),
            },
        })
    }
}

//! What a shard exports for `GET /metrics` of its raft group, its store and its last
//! scrub ([`Backend::metrics`]); the catalogue and the encoding are
//! `repospanner_net::metrics`'s.

use repospanner_net::metrics::{Sample, Value};
use repospanner_storage::{Doubling, SYNC_FIRST_MICROS};

use super::*;

/// Counts the changes of the leader this node knows of in `raft`'s group into
/// `changes`, until the raft core stops. openraft reports no leader while a vote is
/// not committed, so a change is a leader other than the last one known, however many
/// "none" lay between.
pub(super) async fn count_leader_changes<D: Dir>(raft: ShardRaft<D>, changes: Rc<Cell<u64>>) {
    let mut rx = raft.metrics();
    drop(raft);
    let mut last = rx.borrow_watched().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow_watched().current_leader;
        if let Some(l) = now {
            if last.is_some_and(|x| x != l) {
                changes.set(changes.get() + 1);
            }
            last = Some(l);
        }
    }
}

/// A storage histogram as a metrics value, its bounds scaled by `unit`.
fn doubling(h: &Doubling, first: u64, unit: f64) -> Value {
    Value::Histogram {
        bounds: Doubling::bounds(first).map(|b| b as f64 * unit).collect(),
        counts: h.counts.to_vec(),
        sum: h.sum as f64 * unit,
    }
}

impl<D: Dir> NodeBackend<D> {
    pub(super) fn samples(&self) -> Vec<Sample> {
        let shard = self.inner.shard.to_string();
        let l = [("shard", shard.as_str())];
        let mut out = self.raft_samples(&l);
        let s = self.inner.store.stats();
        let counters = [
            ("repospanner_storage_appends_total", s.appends),
            ("repospanner_storage_batches_total", s.batches),
            ("repospanner_storage_written_bytes_total", s.bytes_written),
            ("repospanner_storage_checkpoints_total", s.checkpoints),
            (
                "repospanner_compaction_segments_total",
                s.segments_compacted,
            ),
            (
                "repospanner_compaction_freed_bytes_total",
                s.compaction_freed_bytes,
            ),
            (
                "repospanner_compaction_moved_bytes_total",
                s.compaction_moved_bytes,
            ),
            ("repospanner_scrub_read_bytes_total", s.verified_bytes),
        ];
        out.extend(counters.iter().map(|(n, v)| Sample::counter(n, &l, *v)));
        out.push(Sample::new(
            "repospanner_storage_sync_duration_seconds",
            &l,
            doubling(&s.sync_micros, SYNC_FIRST_MICROS, 1e-6),
        ));
        out.push(Sample::new(
            "repospanner_storage_batch_appends",
            &l,
            doubling(&s.batch_appends, 1, 1.0),
        ));
        let corruptions = self.inner.store.corruptions().len();
        out.push(Sample::gauge(
            "repospanner_storage_corruptions",
            &l,
            corruptions as f64,
        ));
        if let Some((segments, bytes, live)) = self.inner.store.last_space() {
            out.push(Sample::gauge(
                "repospanner_storage_segments",
                &l,
                segments as f64,
            ));
            out.push(Sample::gauge(
                "repospanner_storage_segment_bytes",
                &l,
                bytes as f64,
            ));
            out.push(Sample::gauge(
                "repospanner_storage_dead_bytes",
                &l,
                bytes.saturating_sub(live) as f64,
            ));
        }
        let repos = self.inner.sm.with_state(|s| s.repos.len());
        out.push(Sample::gauge("repospanner_repositories", &l, repos as f64));
        let objects = self.inner.store.object_count();
        out.push(Sample::gauge("repospanner_objects", &l, objects as f64));
        if let Some(scrub) = self.inner.last_scrub.borrow().as_ref() {
            let gauges = [
                (
                    "repospanner_scrub_last_finished_timestamp_seconds",
                    scrub.finished as f64,
                ),
                ("repospanner_scrub_last_records", scrub.records as f64),
                (
                    "repospanner_scrub_last_damaged_objects",
                    scrub.damaged as f64,
                ),
                (
                    "repospanner_scrub_last_unrepaired_objects",
                    scrub.unrepaired_count as f64,
                ),
                (
                    "repospanner_scrub_last_missing_objects",
                    scrub.missing as f64,
                ),
            ];
            out.extend(gauges.iter().map(|(n, v)| Sample::gauge(n, &l, *v)));
        }
        out
    }

    fn raft_samples(&self, l: &[(&str, &str)]) -> Vec<Sample> {
        let m = self.raft().metrics().borrow_watched().clone();
        let index = |x: Option<u64>| x.unwrap_or(0) as f64;
        let leads = m.state == ServerState::Leader;
        let mut out = vec![
            Sample::gauge("repospanner_raft_term", l, m.current_term as f64),
            Sample::gauge(
                "repospanner_raft_last_log_index",
                l,
                index(m.last_log_index),
            ),
            Sample::gauge(
                "repospanner_raft_committed_index",
                l,
                index(m.cluster_committed.map(|c| c.index)),
            ),
            Sample::gauge(
                "repospanner_raft_applied_index",
                l,
                index(m.last_applied.map(|a| a.index)),
            ),
            Sample::gauge("repospanner_raft_leader", l, f64::from(u8::from(leads))),
            Sample::gauge(
                "repospanner_raft_has_leader",
                l,
                f64::from(u8::from(m.current_leader.is_some())),
            ),
            Sample::counter(
                "repospanner_raft_leader_changes_total",
                l,
                self.inner.leader_changes.get(),
            ),
            Sample::gauge(
                "repospanner_raft_members",
                l,
                m.membership_config.voter_ids().count() as f64,
            ),
        ];
        let last = m.last_log_index.unwrap_or(0);
        for (id, matched) in m.replication.iter().flatten() {
            if *id == self.inner.identity.id {
                continue;
            }
            let lag = last.saturating_sub(matched.as_ref().map_or(0, |m| m.index));
            let member = id.to_string();
            let mut labels = l.to_vec();
            labels.push(("member", member.as_str()));
            out.push(Sample::gauge(
                "repospanner_raft_replication_lag_entries",
                &labels,
                lag as f64,
            ));
        }
        out
    }
}

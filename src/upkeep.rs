//! Each shard's background upkeep of its store:
//!
//! * compaction ([`run`]): every `storage.compaction.interval_seconds`, the store's
//!   space is measured and the sealed segments worth it are compacted, one at a time,
//!   at most `mib_per_second` copied. The store keeps the figures `nodestatus` shows.
//! * scrub ([`scrub`]): every `storage.scrub.interval_seconds` (counted from the last
//!   scrub, which the store records, so restarts do not postpone it), every record is
//!   read again and checked at most `mib_per_second`, and damaged objects are repaired
//!   from the members (`NodeBackend::scrub`).
//!
//! What a pass found and did is logged.

use std::time::Duration;

use repospanner_storage::io::Dir;
use repospanner_storage::Store;
use tracing::{info, warn};

use crate::config::{CompactionSection, ScrubSection};
use crate::node::NodeBackend;
use crate::stop::stop_requested;

/// How one shard compacts.
#[derive(Debug, Clone)]
pub struct Settings {
    pub live_share_max: f64,
    /// Dead bytes a segment needs before it is worth copying: an eighth of a segment.
    pub dead_bytes_min: u64,
    pub bytes_per_second: u64,
    pub interval: Duration,
}

impl Settings {
    pub fn new(c: &CompactionSection, segment_bytes_max: u64) -> Settings {
        Settings {
            live_share_max: c.live_share_max,
            dead_bytes_min: (segment_bytes_max / 8).max(1),
            bytes_per_second: c.mib_per_second << 20,
            interval: Duration::from_secs(c.interval_seconds),
        }
    }
}

/// Runs until the node stops.
pub async fn run<D: Dir>(shard: usize, store: Store<D>, s: Settings) {
    // Segments compaction refused (damage in them) are left to scrub and repair.
    let mut refused = std::collections::HashSet::new();
    let mut first = true;
    loop {
        // The first look is at once, so `nodestatus` has the store's space.
        let due = std::time::Instant::now() + if first { Duration::ZERO } else { s.interval };
        first = false;
        while std::time::Instant::now() < due {
            if stop_requested() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(500).min(s.interval)).await;
        }
        let candidates = match store
            .compaction_candidates(s.live_share_max, s.dead_bytes_min)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(shard, error = %e, "measuring the store's space failed");
                continue;
            }
        };
        let worked = !candidates.is_empty();
        for c in candidates {
            if refused.contains(&c.segment) {
                continue;
            }
            if stop_requested() {
                return;
            }
            info!(
                shard,
                segment = c.segment,
                bytes = c.bytes,
                live = c.live,
                "compacting a segment"
            );
            match store.compact_segment(c.segment, s.bytes_per_second).await {
                Ok(_) => {}
                Err(e @ repospanner_storage::Error::Compaction { .. }) => {
                    warn!(shard, segment = c.segment, error = %e, "segment left as it is");
                    refused.insert(c.segment);
                }
                Err(e) => {
                    warn!(shard, segment = c.segment, error = %e, "compaction stopped");
                    break;
                }
            }
        }
        if worked {
            // What `nodestatus` shows, measured again after the work.
            if let Err(e) = store.space().await {
                warn!(shard, error = %e, "measuring the store's space failed");
            }
        }
    }
}

/// The store's opaque stream of upkeep records: key 0, when the last scrub ended
/// (seconds since the Unix epoch, 8 bytes).
pub const UPKEEP_STREAM: u8 = 20;
const LAST_SCRUB: u64 = 0;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Records now as the end of the last scrub (the next is due an interval later).
async fn record_scrub_time<D: Dir>(store: &Store<D>, shard: usize) {
    let w = repospanner_storage::Write::Opaque {
        stream: UPKEEP_STREAM,
        key: LAST_SCRUB,
        data: now_secs().to_le_bytes().to_vec(),
    };
    if let Err(e) = store.append(vec![w]).await {
        warn!(shard, error = %e, "recording when the scrub ended failed");
    }
}

/// Runs the background scrub of one shard until the node stops.
pub async fn scrub<D: Dir>(shard: usize, backend: NodeBackend<D>, s: ScrubSection) {
    let store = backend.store().clone();
    let interval = s.interval_seconds;
    loop {
        let last = match store.get_opaque(UPKEEP_STREAM, LAST_SCRUB).await {
            Ok(Some(b)) if b.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b);
                Some(u64::from_le_bytes(a))
            }
            _ => None,
        };
        // Never scrubbed: one interval from now (a new node's data is fresh).
        let due = match last {
            Some(t) => t.saturating_add(interval),
            None => {
                record_scrub_time(&store, shard).await;
                now_secs().saturating_add(interval)
            }
        };
        while now_secs() < due {
            if stop_requested() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(500)).await;
        }
        match backend.scrub(None, s.mib_per_second << 20).await {
            Ok(_) => record_scrub_time(&store, shard).await,
            Err(e) => {
                warn!(shard, error = %e, "scrub stopped; trying again in a minute");
                glommio::timer::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

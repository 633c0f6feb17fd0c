//! Each shard's background compaction: every `storage.compaction.interval_seconds`,
//! the store's space is measured and the sealed segments worth it are compacted, one at
//! a time, at most `mib_per_second` copied. What a pass found and did is logged; the
//! store keeps the figures `nodestatus` shows.

use std::time::Duration;

use repospanner_storage::io::Dir;
use repospanner_storage::Store;
use tracing::{info, warn};

use crate::config::CompactionSection;
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

//! The raft log and vote, kept in the shard's storage engine as opaque records:
//! stream [`LOG_STREAM`] keyed by log index, stream [`META_STREAM`] for the vote, the
//! committed id and the last purged id. An append is reported flushed to openraft only
//! once the store has made it durable (the store resolves appends after their batch's
//! durable write), so raft's own batches ride the store's group commit.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, Range, RangeBounds};

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use repospanner_storage::io::Dir;
use repospanner_storage::{Store, Write};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::TypeConfig as C;

/// Opaque stream of raft log entries, keyed by index.
pub const LOG_STREAM: u8 = 16;
/// Opaque stream of raft metadata (keys below).
pub const META_STREAM: u8 = 17;
const VOTE: u64 = 1;
const COMMITTED: u64 = 2;
const PURGED: u64 = 3;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A shard's raft log on its store.
pub struct LogStore<D: Dir> {
    store: Store<D>,
}

impl<D: Dir> Clone for LogStore<D> {
    fn clone(&self) -> Self {
        LogStore {
            store: self.store.clone(),
        }
    }
}

impl<D: Dir> std::fmt::Debug for LogStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish()
    }
}

impl<D: Dir> LogStore<D> {
    pub fn new(store: Store<D>) -> Self {
        LogStore { store }
    }

    async fn get<T: DeserializeOwned>(&self, stream: u8, key: u64) -> Result<Option<T>, io::Error> {
        match self.store.get_opaque(stream, key).await.map_err(io_err)? {
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(io_err),
            None => Ok(None),
        }
    }

    async fn put<T: Serialize>(&self, stream: u8, key: u64, value: &T) -> Result<(), io::Error> {
        let data = serde_json::to_vec(value).map_err(io_err)?;
        self.durable(vec![Write::Opaque { stream, key, data }])
            .await
    }

    /// Appends `writes` and waits until they are durable. A full file system is
    /// waited out rather than reported: openraft stops a group whose storage fails,
    /// and these writes are small and each idempotent (a value per key, a deletion),
    /// so the group stalls until there is room and then goes on.
    async fn durable(&self, writes: Vec<Write>) -> Result<(), io::Error> {
        let mut tries = 0u32;
        loop {
            match self.store.append(writes.clone()).await {
                Ok(_) => return Ok(()),
                Err(repospanner_storage::Error::NoSpace(why)) => {
                    if tries.is_multiple_of(60) {
                        tracing::warn!(error = %why, "the raft log waits for room on the disk");
                    }
                    tries += 1;
                    glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

fn to_range<RB: RangeBounds<u64>>(r: &RB) -> Range<u64> {
    let start = match r.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match r.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    start..end
}

impl<D: Dir> RaftLogReader<C> for LogStore<D> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        let mut out = Vec::new();
        for k in self.store.opaque_keys(LOG_STREAM, to_range(&range)) {
            if let Some(e) = self.get(LOG_STREAM, k).await? {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.get(META_STREAM, VOTE).await
    }
}

impl<D: Dir> RaftLogStorage<C> for LogStore<D> {
    type LogReader = LogStore<D>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let purged: Option<LogIdOf<C>> = self.get(META_STREAM, PURGED).await?;
        let last_key = self
            .store
            .opaque_keys(LOG_STREAM, 0..u64::MAX)
            .last()
            .copied();
        let last = match last_key {
            Some(k) => self
                .get::<EntryOf<C>>(LOG_STREAM, k)
                .await?
                .map(|e| e.log_id()),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.put(META_STREAM, VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.put(META_STREAM, COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self
            .get::<Option<LogIdOf<C>>>(META_STREAM, COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut writes = Vec::new();
        for e in entries {
            let data = serde_json::to_vec(&e).map_err(io_err)?;
            writes.push(Write::Opaque {
                stream: LOG_STREAM,
                key: e.index(),
                data,
            });
        }
        // Resolves once the entries are durable: only then is openraft told.
        self.durable(writes).await?;
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last.map_or(0, |l| l.index() + 1);
        self.durable(vec![Write::DeleteRange {
            stream: LOG_STREAM,
            keys: from..u64::MAX,
        }])
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let data = serde_json::to_vec(&log_id).map_err(io_err)?;
        self.durable(vec![
            Write::Opaque {
                stream: META_STREAM,
                key: PURGED,
                data,
            },
            Write::DeleteRange {
                stream: LOG_STREAM,
                keys: 0..log_id.index() + 1,
            },
        ])
        .await?;
        Ok(())
    }
}

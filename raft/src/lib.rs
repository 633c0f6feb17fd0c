//! Replication for repoSpanner: the openraft type configuration, the glommio runtime
//! adapter, and the raft log, vote and state machine kept in a shard's storage.
//!
//! Status: not implemented yet (issue "Replication"). Only depends on `storage`.

//! Replication for repoSpanner: the openraft type configuration of a shard's raft
//! group ([`types`]), openraft's runtime on glommio ([`runtime`]), the raft log and vote
//! on the shard's storage engine ([`log_store`]) and the state machine
//! ([`state_machine`]).
//!
//! One group per shard: shard k of every node of the region. The network between
//! members and the side effects around applying (object presence) are provided by the
//! node (the root package's `cluster` module). Depends only on `storage`.

pub mod log_store;
pub mod runtime;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use openraft;
pub use runtime::GlommioRuntime;
pub use state_machine::{Hooks, NoHooks, State, StateMachine};
pub use types::{Command, ObjectIds, RefChange, Repo, Response, TypeConfig};

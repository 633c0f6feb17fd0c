//! Replication for repoSpanner: the openraft type configuration of a shard's raft
//! group ([`types`]), openraft's runtime on glommio ([`runtime`]), the raft log and vote
//! on the shard's storage engine ([`log_store`]) and the state machine
//! ([`state_machine`]).
//!
//! Status: the building blocks pass openraft's runtime conformance suite and its storage
//! suite, and a single-member group elects itself, commits and survives a restart on
//! real files. The network between nodes, membership changes driven by `serve
//! --joinnode`, and the push path through raft are the replication issue's remaining
//! work. Depends only on `storage`.

pub mod log_store;
pub mod runtime;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use openraft;
pub use runtime::GlommioRuntime;
pub use state_machine::{Hooks, NoHooks, State, StateMachine};
pub use types::{Command, RefChange, Repo, Response, TypeConfig};

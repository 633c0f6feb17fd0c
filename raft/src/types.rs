//! The openraft type configuration of a shard's raft group.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::runtime::GlommioRuntime;

/// A replicated command. Repository state transitions (ref transactions, repository
/// create/edit/delete) will be added here by the replication work; today the group
/// replicates opaque keyed values, which is what the state machine and tests use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value } => write!(f, "put {key} ({} bytes)", value.len()),
            Command::Delete { key } => write!(f, "delete {key}"),
        }
    }
}

/// What applying a command answers: the previous value of its key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Response {
    pub previous: Option<Vec<u8>>,
}

openraft::declare_raft_types!(
    /// The type configuration of a shard's raft group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = GlommioRuntime,
);

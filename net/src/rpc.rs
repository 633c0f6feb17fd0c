//! Node-to-node operations of a shard: their names on the wire
//! (`POST /rpc/shard/<k>/<name>`, mutual TLS with node certificates), parsed once at
//! the HTTP edge into [`Op`] and matched once by the backend, and the ways one fails
//! ([`RpcError`]), which the edge alone turns into HTTP statuses. Their bodies are
//! each operation's own (raft messages as JSON, objects and ids in the binary formats
//! of the root package's `cluster` module).

/// An operation of shard k's group, served by shard k of the node addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// raft: append entries (and heartbeats).
    Append,
    /// raft: a vote request.
    Vote,
    /// raft: a whole snapshot.
    Snapshot,
    /// Objects a push stored, to store durably here before it is acknowledged.
    Objects,
    /// Objects of a push still arriving, to write aside here.
    Aside,
    /// Publishes what a push wrote aside here, once it is verified.
    Adopt,
    /// Forgets what a failed push wrote aside here.
    DropAside,
    /// Objects by id, for a member catching up.
    Fetch,
    /// Every object id of a repository, for a member catching up.
    Inventory,
    /// A command proposed to the leader by a member.
    Propose,
    /// The leader's commit index, for a linearizable read on a member.
    ReadIndex,
    /// A new node asks the leader to add it.
    Join,
    /// A node whose disk was wiped asks to take its place again.
    Rejoin,
    /// An operator removes a node from the group (`admin node remove`).
    Remove,
}

impl Op {
    pub const ALL: [Op; 14] = [
        Op::Append,
        Op::Vote,
        Op::Snapshot,
        Op::Objects,
        Op::Aside,
        Op::Adopt,
        Op::DropAside,
        Op::Fetch,
        Op::Inventory,
        Op::Propose,
        Op::ReadIndex,
        Op::Join,
        Op::Rejoin,
        Op::Remove,
    ];

    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Op::Append => "append",
            Op::Vote => "vote",
            Op::Snapshot => "snapshot",
            Op::Objects => "objects",
            Op::Aside => "aside",
            Op::Adopt => "adopt",
            Op::DropAside => "drop-aside",
            Op::Fetch => "fetch",
            Op::Inventory => "inventory",
            Op::Propose => "propose",
            Op::ReadIndex => "readindex",
            Op::Join => "join",
            Op::Rejoin => "rejoin",
            Op::Remove => "remove",
        }
    }

    pub fn parse(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The path that asks shard `shard` of a node for it.
    pub fn path(self, shard: usize) -> String {
        format!("/rpc/shard/{shard}/{}", self.name())
    }
}

/// `/rpc/shard/<k>/<name>` split into (k, the operation's name); `None`: not such a
/// path.
pub fn split_path(path: &str) -> Option<(usize, &str)> {
    let (k, name) = path.strip_prefix("/rpc/shard/")?.split_once('/')?;
    Some((k.parse().ok()?, name))
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The body is not what the operation takes.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// This node cannot serve it now (it is joining, or lost its log); ask again later.
    #[error("{0}")]
    Unavailable(String),
    /// It no longer applies (what it refers to is gone); the caller falls back.
    #[error("{0}")]
    Gone(String),
    /// This node failed (storage).
    #[error("{0}")]
    Failed(String),
}

impl RpcError {
    /// The HTTP status it is answered with on the node listener (and seen by the
    /// caller as [`crate::client::ClientError::Status`]).
    pub fn status(&self) -> u16 {
        match self {
            RpcError::Malformed(_) => 400,
            RpcError::Unavailable(_) => 503,
            RpcError::Gone(_) => 409,
            RpcError::Failed(_) => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_parse_back() {
        let names: std::collections::HashSet<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), Op::ALL.len());
        for op in Op::ALL {
            assert_eq!(Op::parse(op.name()), Some(op));
            assert_eq!(split_path(&op.path(3)), Some((3, op.name())));
        }
        assert_eq!(Op::parse("stage"), None);
        assert_eq!(split_path("/rpc/shard/x/append"), None);
        assert_eq!(split_path("/rpc/shard/1"), None);
        assert_eq!(split_path("/rpc/info"), None);
    }
}

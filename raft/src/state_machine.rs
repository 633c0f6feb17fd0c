//! The state machine: applied entries, membership, and the replicated values, with
//! snapshots of the whole as JSON. Applying is a pure function of (state, entry)
//! ([`State::apply`]). Kept in memory for now; the replication work persists it with
//! the repository states it will hold.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use futures_util::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::types::{Command, Response, TypeConfig as C};

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub values: BTreeMap<String, Vec<u8>>,
}

impl State {
    /// Applies one command; pure.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::Put { key, value } => Response {
                previous: self.values.insert(key.clone(), value.clone()),
            },
            Command::Delete { key } => Response {
                previous: self.values.remove(key),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    state: State,
    snapshot: Option<(SnapshotMetaOf<C>, Vec<u8>)>,
}

/// The state machine of a shard's group.
#[derive(Debug, Clone, Default)]
pub struct StateMachine(Rc<RefCell<Inner>>);

impl StateMachine {
    /// A copy of the current replicated state.
    pub fn state(&self) -> State {
        self.0.borrow().state.clone()
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl RaftSnapshotBuilder<C> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Vec<u8>>, io::Error> {
        let mut i = self.0.borrow_mut();
        let data = serde_json::to_vec(&i.state).map_err(io_err)?;
        let meta = SnapshotMetaOf::<C> {
            last_log_id: i.applied,
            last_membership: i.membership.clone(),
        };
        i.snapshot = Some((meta.clone(), data.clone()));
        Ok(openraft::Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<C> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let i = self.0.borrow();
        Ok((i.applied, i.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut i = self.0.borrow_mut();
                i.applied = Some(entry.log_id());
                match &entry.payload {
                    EntryPayload::Normal(cmd) => i.state.apply(cmd),
                    EntryPayload::Membership(m) => {
                        i.membership =
                            StoredMembershipOf::<C>::new(Some(entry.log_id()), m.clone());
                        Response::default()
                    }
                    EntryPayload::Blank => Response::default(),
                }
            };
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state: State = serde_json::from_slice(&snapshot).map_err(io_err)?;
        let mut i = self.0.borrow_mut();
        i.applied = meta.last_log_id;
        i.membership = meta.last_membership.clone();
        i.state = state;
        i.snapshot = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Vec<u8>>>, io::Error> {
        Ok(self
            .0
            .borrow()
            .snapshot
            .clone()
            .map(|(meta, snapshot)| openraft::Snapshot { meta, snapshot }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_is_a_pure_function_of_state_and_command() {
        let mut s = State::default();
        let put = |k: &str, v: &[u8]| Command::Put {
            key: k.into(),
            value: v.to_vec(),
        };
        assert_eq!(s.apply(&put("a", b"1")).previous, None);
        assert_eq!(s.apply(&put("a", b"2")).previous, Some(b"1".to_vec()));
        assert_eq!(
            s.apply(&Command::Delete { key: "a".into() }).previous,
            Some(b"2".to_vec())
        );
        assert!(s.values.is_empty());
    }
}

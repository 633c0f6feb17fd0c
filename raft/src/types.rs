//! The openraft type configuration of a shard's raft group and what it replicates:
//! repository commands and their answers. Object ids travel as lowercase hex.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::runtime::GlommioRuntime;

/// One ref change of a push: a compare-and-swap from `old` to `new` (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefChange {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates repository `name` with object namespace `id` (chosen by the proposer,
    /// random, so a recreated repository never sees its predecessor's objects).
    CreateRepo {
        name: String,
        id: u64,
        public: bool,
        head: String,
        /// Non-fast-forward pushes accepted (git's and the Go original's default;
        /// absent in entries written before it existed: then refused, as they were).
        #[serde(default)]
        allow_non_fast_forward: bool,
    },
    /// Deletes repository `name` if it is still instance `id`.
    DeleteRepo { name: String, id: u64 },
    EditRepo {
        name: String,
        public: Option<bool>,
        allow_non_fast_forward: Option<bool>,
        /// symref → target (`None`: remove).
        symrefs: Vec<(String, Option<String>)>,
        /// Hooks set (`Some`) or cleared (`None`).
        #[serde(default)]
        hooks: Vec<(HookKind, Option<Script>)>,
    },
    /// The ref transaction of a push to instance `id` of `repo`. `objects`: what the
    /// push stored (every node holds them before applying the entry). `forward`: the
    /// proposer found that every change creates a ref or moves it to a descendant and
    /// that the push stored nothing the new tips do not reach (absent in entries
    /// written before it existed: then not known, so false).
    UpdateRefs {
        push: String,
        repo: String,
        id: u64,
        changes: Vec<RefChange>,
        atomic: bool,
        objects: ObjectIds,
        #[serde(default)]
        forward: bool,
    },
    /// Every object stored for instance `id` of `repo` is reachable from its refs as
    /// they were when their digest `refs` ([`refs_digest`]) was taken: a full clone's
    /// walk found as many objects as the repository stores. Sets
    /// [`Repo::only_reachable`] again, unless the refs changed since.
    MarkReachable { repo: String, id: u64, refs: u64 },
}

/// The ids of the objects a push stored: 20 bytes each in memory, written as the list
/// of hex strings entries always had (nodes of either kind read each other's entries).
/// As `Vec<String>` they cost a 419k-object push 30 MiB of strings on every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectIds(pub Vec<repospanner_storage::Oid>);

impl Serialize for ObjectIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        let mut buf = [0u8; 40];
        for id in &self.0 {
            seq.serialize_element(repospanner_storage::object::hex_in(id, &mut buf))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for ObjectIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Ids;
        impl<'de> serde::de::Visitor<'de> for Ids {
            type Value = ObjectIds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of object ids in hex")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ObjectIds, A::Error> {
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(HexId(id)) = seq.next_element()? {
                    ids.push(id);
                }
                Ok(ObjectIds(ids))
            }
        }
        d.deserialize_seq(Ids)
    }
}

/// One id of [`ObjectIds`], parsed from the string the reader holds (no copy of it).
struct HexId(repospanner_storage::Oid);

impl<'de> Deserialize<'de> for HexId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = HexId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object id in hex")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HexId, E> {
                repospanner_storage::object::parse_hex(v.as_bytes())
                    .map(HexId)
                    .ok_or_else(|| E::custom("an object id that is not 40 hex digits"))
            }
        }
        d.deserialize_str(Hex)
    }
}

/// A digest of a repository's refs (FNV-1a over each name and target, in order):
/// what [`Command::MarkReachable`] checks they still are.
pub fn refs_digest(refs: &BTreeMap<String, String>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, target) in refs {
        for b in name.bytes().chain([0]).chain(target.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::CreateRepo { name, .. } => write!(f, "create {name}"),
            Command::DeleteRepo { name, .. } => write!(f, "delete {name}"),
            Command::EditRepo { name, .. } => write!(f, "edit {name}"),
            Command::MarkReachable { repo, .. } => write!(f, "mark {repo} only reachable"),
            Command::UpdateRefs {
                push,
                repo,
                changes,
                objects,
                ..
            } => write!(
                f,
                "push {push} to {repo}: {} refs, {} objects",
                changes.len(),
                objects.0.len()
            ),
        }
    }
}

/// What applying a command answers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Done,
    /// The command changed nothing, for this reason.
    Refused(String),
    /// One result per ref change of an [`Command::UpdateRefs`].
    Refs(Vec<Result<(), String>>),
}

/// The server hooks a repository may have, named as git names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HookKind {
    #[serde(rename = "pre-receive")]
    PreReceive,
    #[serde(rename = "update")]
    Update,
    #[serde(rename = "post-receive")]
    PostReceive,
}

impl HookKind {
    pub const ALL: [HookKind; 3] = [
        HookKind::PreReceive,
        HookKind::Update,
        HookKind::PostReceive,
    ];

    /// git's name of the hook (the name of its file in `hooks/`).
    pub fn name(self) -> &'static str {
        match self {
            HookKind::PreReceive => "pre-receive",
            HookKind::Update => "update",
            HookKind::PostReceive => "post-receive",
        }
    }
}

/// A hook's program: usually a script, any executable the sandbox can run. Its id is
/// the git blob id of its content (as the Go original named hooks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    pub id: String,
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// A repository as the group holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    /// Object namespace of this instance of the repository.
    pub id: u64,
    pub public: bool,
    pub allow_non_fast_forward: bool,
    /// ref name → object id (hex).
    pub refs: BTreeMap<String, String>,
    /// symbolic ref → target ref.
    pub symrefs: BTreeMap<String, String>,
    /// Every object stored for this instance is reachable from its refs: since it was
    /// created, every push's changes all applied and only created refs or moved them
    /// forward. A full clone then sends every stored object without walking the
    /// history. A hint for speed, not for correctness (every stored object's closure
    /// is stored, so sending them all is never short); false where not known.
    #[serde(default)]
    pub only_reachable: bool,
    /// Its hooks: the id of each one's script in [`crate::state_machine::State::scripts`].
    #[serde(default)]
    pub hooks: BTreeMap<HookKind, String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn push(objects: ObjectIds) -> Command {
        Command::UpdateRefs {
            push: "1-a".into(),
            repo: "r".into(),
            id: 7,
            changes: Vec::new(),
            atomic: true,
            objects,
            forward: true,
        }
    }

    #[test]
    fn a_push_s_object_ids_are_written_and_read_as_a_list_of_hex_strings() {
        let ids = ObjectIds(vec![[0xab; 20], [0x01; 20], [0xff; 20]]);
        let json = serde_json::to_string(&push(ids.clone())).expect("json");
        let list = format!(
            "[\"{}\",\"{}\",\"{}\"]",
            "ab".repeat(20),
            "01".repeat(20),
            "ff".repeat(20)
        );
        assert!(json.contains(&format!("\"objects\":{list}")), "{json}");
        let back: Command = serde_json::from_str(&json).expect("reads");
        assert_eq!(back, push(ids.clone()));
        // Upper case, as git accepts it.
        let upper = json.replace(&"ab".repeat(20), &"AB".repeat(20));
        assert_eq!(
            serde_json::from_str::<Command>(&upper).expect("reads"),
            push(ids)
        );
        let empty = serde_json::to_string(&push(ObjectIds::default())).expect("json");
        assert!(empty.contains("\"objects\":[]"), "{empty}");
        assert_eq!(
            serde_json::from_str::<Command>(&empty).expect("reads"),
            push(ObjectIds::default())
        );
        // What no node wrote is an error, not a guess.
        for bad in [
            format!("[\"{}\"]", "ab".repeat(19)),
            format!("[\"{}zz\"]", "ab".repeat(19)),
            format!("[\"{}\"]", "ab".repeat(21)),
            format!("\"{}\"", "ab".repeat(20)),
            "[1]".to_owned(),
            "7".to_owned(),
        ] {
            let j = json.replace(&list, &bad);
            assert!(serde_json::from_str::<Command>(&j).is_err(), "{bad}");
        }
    }
}

//! The Raft type configuration and the commands a group's log carries.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use shardmap::{GroupId, NodeId};

openraft::declare_raft_types!(
    /// Type configuration shared by every group on a node.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// One write operation inside a [`Request::Write`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    // serde_bytes: bincode then copies the bytes in one piece instead of element by element.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expected_version: Option<u64>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expected_version: Option<u64>,
    },
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    /// The bytes of key and value, what [`shardmap::Limits::max_write_bytes`] counts.
    pub fn bytes(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
        }
    }

    /// Whether the op carries an expected version.
    pub fn is_conditional(&self) -> bool {
        match self {
            Op::Put {
                expected_version, ..
            }
            | Op::Delete {
                expected_version, ..
            } => expected_version.is_some(),
        }
    }
}

/// A command in a group's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Data operations, applied in order as one atomic batch.
    Write { ops: Vec<Op>, dedup: Option<Dedup> },
    /// Meta group only: store this cluster map (JSON) if its epoch is newer than the stored one.
    SetClusterMap {
        epoch: u64,
        #[serde(with = "serde_bytes")]
        map_json: Vec<u8>,
    },
    /// Meta group only: apply a `shardmap::MapChange` (JSON) to the stored map, if the map's
    /// epoch is still `expected_epoch` (0: any).
    ChangeMap {
        #[serde(with = "serde_bytes")]
        change_json: Vec<u8>,
        expected_epoch: u64,
    },
    /// Data operations proposed by an eventual write: applied exactly as [`Request::Write`].
    /// `(origin, seq)` names the proposal, so that the proposing leader's log store can tell
    /// the waiting request once the entry is durable in its own log (see
    /// [`crate::storage::DurableAcks`]). A new variant rather than a field on `Write`, so that
    /// entries already stored decode unchanged.
    TrackedWrite {
        origin: NodeId,
        seq: u64,
        ops: Vec<Op>,
        dedup: Option<Dedup>,
    },
    /// Several strong writes that reached the leader together, applied in order in one entry:
    /// one Raft round, one log append and one apply transaction for all of them. Each keeps its
    /// own request id and results.
    Writes { writes: Vec<SubWrite> },
    /// Raises or lifts fences on key ranges of this group (see [`Fence`]): how an admin change
    /// that moves keys away from a group decides, in the group's own log, which writes it
    /// accounts for.
    Fence(FenceChange),
}

/// A key range of a group that refuses writes from the log position of the entry that raised
/// it: every write is either applied before the fence (and then seen by the emptiness check
/// the fence answers) or refused after it with `STALE_EPOCH`, and retried by the router under
/// the map that moved the range. Raised by an admin change proposed against map `epoch`; `tag`
/// names that change, so that the change, refused, lifts its own fences and no one else's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    /// Exclusive; empty: no bound.
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
    pub epoch: u64,
    pub tag: u64,
}

impl Fence {
    pub fn covers(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    /// Whether the fence lies within `[start, end)` (`end` empty: no bound).
    fn within(&self, start: &[u8], end: &[u8]) -> bool {
        self.start.as_slice() >= start
            && (end.is_empty() || (!self.end.is_empty() && self.end.as_slice() <= end))
    }
}

/// What a [`Request::Fence`] entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FenceChange {
    /// Refuse writes to the fence's range from this entry on, and tell whether the range
    /// holds keys at this position.
    Raise(Fence),
    /// Remove the fences within `[start, end)` raised against a map older than `older_than`
    /// (their changes have committed or never will), and those tagged `tag` (non-zero).
    Lift {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
        older_than: u64,
        tag: u64,
    },
}

/// Most fences a group keeps: each is an admin change in progress or a range moved away, so
/// reaching this means changes are left unfinished.
pub const MAX_FENCES: usize = 1024;

impl FenceChange {
    /// The fences after this change is applied to `fences`, or `None` when a raise would pass
    /// [`MAX_FENCES`].
    pub fn apply(&self, fences: &[Fence]) -> Option<Vec<Fence>> {
        match self {
            FenceChange::Raise(f) => {
                if fences.contains(f) {
                    return Some(fences.to_vec());
                }
                if fences.len() >= MAX_FENCES {
                    return None;
                }
                let mut next = fences.to_vec();
                next.push(f.clone());
                Some(next)
            }
            FenceChange::Lift {
                start,
                end,
                older_than,
                tag,
            } => Some(
                fences
                    .iter()
                    .filter(|f| {
                        let lifted = f.within(start, end)
                            && (f.epoch < *older_than || (*tag != 0 && f.tag == *tag));
                        !lifted
                    })
                    .cloned()
                    .collect(),
            ),
        }
    }
}

impl Request {
    /// The bytes of keys, values and maps the entry carries: what bounds AppendEntries
    /// messages ([`crate::network::fit_entries`]).
    pub fn bytes(&self) -> usize {
        let ops = |ops: &[Op]| ops.iter().map(Op::bytes).sum::<usize>();
        match self {
            Request::Write { ops: o, .. } | Request::TrackedWrite { ops: o, .. } => ops(o),
            Request::SetClusterMap { map_json, .. } => map_json.len(),
            Request::ChangeMap { change_json, .. } => change_json.len(),
            Request::Writes { writes } => writes.iter().map(|w| ops(&w.ops)).sum(),
            Request::Fence(FenceChange::Raise(f)) => f.start.len() + f.end.len(),
            Request::Fence(FenceChange::Lift { start, end, .. }) => start.len() + end.len(),
        }
    }
}

/// One client write inside a [`Request::Writes`] batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubWrite {
    pub ops: Vec<Op>,
    pub dedup: Option<Dedup>,
}

/// Names a write so that its group applies it at most once: a retry after an unknown outcome
/// (a timeout, a leader change) carries the same id and is answered with the first result
/// instead of being applied again after later writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    /// The proposing leader's wall clock, in ms since the epoch. Ids are remembered for
    /// [`DEDUP_WINDOW_MS`] of this clock as the log carries it, each leader's counted only
    /// from the start of its term (the state machine's `AgingClock`), so every replica
    /// forgets the same ids and no leader's skewed clock makes them forget early.
    pub at_ms: u64,
}

/// How long a group remembers request ids. Client and router retries end within their
/// deadlines (seconds); a retry later than this may apply again. Every replica keeps the ids of
/// this window in memory (about 100 bytes each: 2 minutes of 10,000 writes/s is ~120 MB).
pub const DEDUP_WINDOW_MS: u64 = 2 * 60 * 1000;

/// Longest request id a node accepts (a router's id is the client's up to 64 bytes plus 20).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Write { ops, .. } => write!(f, "write({} ops)", ops.len()),
            Request::TrackedWrite { ops, .. } => write!(f, "tracked_write({} ops)", ops.len()),
            Request::Writes { writes } => write!(f, "writes({} writes)", writes.len()),
            Request::SetClusterMap { epoch, .. } => write!(f, "set_cluster_map(epoch {epoch})"),
            Request::ChangeMap { expected_epoch, .. } => {
                write!(f, "change_map(expected epoch {expected_epoch})")
            }
            Request::Fence(FenceChange::Raise(fence)) => {
                write!(f, "fence(raise, epoch {})", fence.epoch)
            }
            Request::Fence(FenceChange::Lift { older_than, .. }) => {
                write!(f, "fence(lift, older than {older_than})")
            }
        }
    }
}

/// The outcome of one [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// The key's new version (the entry's log index); 0 when the condition failed.
    pub version: u64,
    /// Whether the key existed before. Not known (false) for unconditional puts.
    pub existed: bool,
    pub condition_failed: bool,
    /// The key's version before the operation, 0 when absent. Not known (0) for unconditional
    /// puts; a failed condition always reports it.
    pub previous_version: u64,
}

/// What applying an entry returns to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Response {
    #[default]
    None,
    Write(Vec<OpResult>),
    /// Whether the proposed map was stored (false: an equal or newer epoch was already there).
    ClusterMap {
        stored: bool,
    },
    /// The results of a [`Request::Writes`], one list per write, in order.
    Writes(Vec<Vec<OpResult>>),
    /// The outcome of a [`Request::ChangeMap`]: the new epoch, or why nothing changed.
    MapChanged(Result<u64, MapChangeRefused>),
    /// The outcome of a [`Request::Fence`].
    Fenced(FenceOutcome),
}

/// What a [`Request::Fence`] entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceOutcome {
    /// The group's fences after the entry (unchanged when `full`).
    pub fences: Vec<Fence>,
    /// A raise: whether the fenced range held a key at the entry's position.
    pub holds_keys: bool,
    /// A raise refused: the group already has [`MAX_FENCES`].
    pub full: bool,
}

/// The results of a write refused by a fence: none. Every write carries at least one op (the
/// node refuses empty writes), so no applied write has an empty result list.
pub fn fenced_results() -> Vec<OpResult> {
    Vec::new()
}

/// Whether `results` of a write of `ops` mean a fence refused it ([`fenced_results`]).
pub fn is_fenced(ops: usize, results: &[OpResult]) -> bool {
    ops > 0 && results.is_empty()
}

/// Why the meta group refused a map change. Decided in the state machine, so every replica
/// agrees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapChangeRefused {
    /// The map moved on since the proposer looked at it.
    StaleEpoch {
        current: u64,
    },
    /// The change is invalid for the current map (shardmap's message).
    Invalid(String),
    UnknownKeyspace(String),
    KeyspaceExists(String),
    /// No map is stored yet, or the stored one is unreadable.
    NoMap,
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::None => f.write_str("none"),
            Response::Write(r) => write!(f, "write({} results)", r.len()),
            Response::Writes(r) => write!(f, "writes({} writes)", r.len()),
            Response::ClusterMap { stored } => write!(f, "cluster_map(stored: {stored})"),
            Response::MapChanged(r) => write!(f, "map_changed({r:?})"),
            Response::Fenced(o) => write!(
                f,
                "fenced({} fences, holds keys: {}, full: {})",
                o.fences.len(),
                o.holds_keys,
                o.full
            ),
        }
    }
}

/// Golden-vector helpers for the persisted formats' tests (here and in `storage`).
#[cfg(test)]
pub(crate) mod golden {
    use std::fmt::Debug;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// What every golden assertion says when it fails.
    pub(crate) const CHANGED: &str =
        "you changed a persisted format; existing data dirs would be misread";

    pub(crate) fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Bytes from a hex literal; whitespace is ignored, so vectors can be written grouped by
    /// field and checked by eye.
    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(
            digits.len().is_multiple_of(2),
            "odd number of hex digits in {s:?}"
        );
        digits
            .chunks(2)
            .map(|pair| {
                let text = std::str::from_utf8(pair).expect("hex digits are ASCII");
                u8::from_str_radix(text, 16).expect("a hex digit pair")
            })
            .collect()
    }

    /// `value` encodes (bincode, as the node stores it) to exactly `expected`, and `expected`
    /// decodes back to `value`.
    pub(crate) fn assert_bincode<T>(value: &T, expected: &str)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let bytes = bincode::serialize(value).expect("encodes");
        assert_eq!(
            hex(&bytes),
            hex(&unhex(expected)),
            "encoding {value:?}: {CHANGED}"
        );
        let back: T = bincode::deserialize(&unhex(expected))
            .unwrap_or_else(|e| panic!("decoding the golden bytes of {value:?}: {e}: {CHANGED}"));
        assert_eq!(&back, value, "decoding: {CHANGED}");
    }
}

#[cfg(test)]
mod tests {
    //! One golden vector per variant of what the Raft log and the apply journal store. If one
    //! of these fails you changed a persisted format: existing data dirs would be misread.
    //! Add a variant at the end (bincode numbers variants by position) instead of changing one.

    use super::golden::assert_bincode;
    use super::*;

    fn put(key: &str, value: &str, expected_version: Option<u64>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            expected_version,
        }
    }

    fn dedup() -> Option<Dedup> {
        Some(Dedup {
            id: b"r1".to_vec(),
            at_ms: 1000,
        })
    }

    #[test]
    fn golden_op() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &put("k", "v", Some(3)),
            "00000000 0100000000000000 6b 0100000000000000 76 01 0300000000000000",
        );
        assert_bincode(
            &Op::Delete {
                key: b"d".to_vec(),
                expected_version: None,
            },
            "01000000 0100000000000000 64 00",
        );
    }

    #[test]
    fn golden_request_write() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &Request::Write {
                ops: vec![put("k", "v", None)],
                dedup: dedup(),
            },
            "00000000 0100000000000000
             00000000 0100000000000000 6b 0100000000000000 76 00
             01 0200000000000000 7231 e803000000000000",
        );
    }

    #[test]
    fn golden_request_set_cluster_map() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &Request::SetClusterMap {
                epoch: 2,
                map_json: b"{}".to_vec(),
            },
            "01000000 0200000000000000 0200000000000000 7b7d",
        );
    }

    #[test]
    fn golden_request_change_map() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &Request::ChangeMap {
                change_json: b"{}".to_vec(),
                expected_epoch: 5,
            },
            "02000000 0200000000000000 7b7d 0500000000000000",
        );
    }

    #[test]
    fn golden_request_tracked_write() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &Request::TrackedWrite {
                origin: 2,
                seq: 9,
                ops: vec![put("k", "v", None)],
                dedup: None,
            },
            "03000000 0200000000000000 0900000000000000 0100000000000000
             00000000 0100000000000000 6b 0100000000000000 76 00
             00",
        );
    }

    #[test]
    fn golden_request_writes() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &Request::Writes {
                writes: vec![
                    SubWrite {
                        ops: vec![put("k", "v", None)],
                        dedup: dedup(),
                    },
                    SubWrite {
                        ops: Vec::new(),
                        dedup: None,
                    },
                ],
            },
            "04000000 0200000000000000
             0100000000000000 00000000 0100000000000000 6b 0100000000000000 76 00
             01 0200000000000000 7231 e803000000000000
             0000000000000000 00",
        );
    }

    fn fence() -> Fence {
        Fence {
            start: b"a".to_vec(),
            end: b"b".to_vec(),
            epoch: 2,
            tag: 3,
        }
    }

    /// `fence()` encoded: start and end (bytes), epoch, tag.
    const FENCE: &str = "0100000000000000 61 0100000000000000 62 0200000000000000 0300000000000000";

    #[test]
    fn golden_request_fence() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &Request::Fence(FenceChange::Raise(fence())),
            &format!("05000000 00000000 {FENCE}"),
        );
        assert_bincode(
            &Request::Fence(FenceChange::Lift {
                start: b"a".to_vec(),
                end: Vec::new(),
                older_than: 4,
                tag: 0,
            }),
            "05000000 01000000 0100000000000000 61 0000000000000000
             0400000000000000 0000000000000000",
        );
    }

    #[test]
    fn fences_cover_their_range_and_lift_by_epoch_or_tag() {
        let f = |start: &str, end: &str, epoch, tag| Fence {
            start: start.into(),
            end: end.into(),
            epoch,
            tag,
        };
        let all = f("", "", 1, 1);
        assert!(all.covers(b"") && all.covers(b"zzz"));
        let d = f("d/", "d0", 3, 7);
        assert!(d.covers(b"d/") && d.covers(b"d/x") && !d.covers(b"d0") && !d.covers(b"c"));

        let fences = vec![all.clone(), d.clone()];
        // Raising is idempotent.
        let raised = FenceChange::Raise(d.clone()).apply(&fences).unwrap();
        assert_eq!(raised, fences);
        let lift = |start: &str, end: &str, older_than, tag| FenceChange::Lift {
            start: start.into(),
            end: end.into(),
            older_than,
            tag,
        };
        // Only fences within the range, and only older ones or the tagged one.
        assert_eq!(lift("d/", "d0", 3, 0).apply(&fences).unwrap(), fences);
        assert_eq!(
            lift("d/", "d0", 4, 0).apply(&fences).unwrap(),
            vec![all.clone()]
        );
        assert_eq!(
            lift("d/", "d0", 0, 7).apply(&fences).unwrap(),
            vec![all.clone()]
        );
        assert_eq!(lift("", "", 2, 0).apply(&fences).unwrap(), vec![d.clone()]);
        assert_eq!(
            lift("a", "", 9, 0).apply(&fences).unwrap(),
            vec![all.clone()]
        );
        // A group holds at most MAX_FENCES.
        let full: Vec<Fence> = (0..MAX_FENCES as u64).map(|i| f("x", "y", i, i)).collect();
        assert_eq!(FenceChange::Raise(f("x", "y", 0, 9999)).apply(&full), None);
    }

    fn result() -> OpResult {
        OpResult {
            version: 7,
            existed: true,
            condition_failed: false,
            previous_version: 6,
        }
    }

    #[test]
    fn golden_op_result() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(&result(), "0700000000000000 01 00 0600000000000000");
    }

    #[test]
    fn golden_response() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        let r = "0700000000000000 01 00 0600000000000000";
        assert_bincode(&Response::None, "00000000");
        assert_bincode(
            &Response::Write(vec![result()]),
            &format!("01000000 0100000000000000 {r}"),
        );
        assert_bincode(&Response::ClusterMap { stored: true }, "02000000 01");
        assert_bincode(
            &Response::Writes(vec![vec![result()], Vec::new()]),
            &format!("03000000 0200000000000000 0100000000000000 {r} 0000000000000000"),
        );
        // Result<u64, _>: Ok is variant 0, Err variant 1.
        assert_bincode(
            &Response::MapChanged(Ok(4)),
            "04000000 00000000 0400000000000000",
        );
        assert_bincode(
            &Response::MapChanged(Err(MapChangeRefused::NoMap)),
            "04000000 01000000 04000000",
        );
        // fences, holds_keys, full.
        assert_bincode(
            &Response::Fenced(FenceOutcome {
                fences: vec![fence()],
                holds_keys: true,
                full: false,
            }),
            &format!("05000000 0100000000000000 {FENCE} 01 00"),
        );
    }

    #[test]
    fn golden_map_change_refused() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &MapChangeRefused::StaleEpoch { current: 3 },
            "00000000 0300000000000000",
        );
        assert_bincode(
            &MapChangeRefused::Invalid("x".into()),
            "01000000 0100000000000000 78",
        );
        assert_bincode(
            &MapChangeRefused::UnknownKeyspace("ks".into()),
            "02000000 0200000000000000 6b73",
        );
        assert_bincode(
            &MapChangeRefused::KeyspaceExists("ks".into()),
            "03000000 0200000000000000 6b73",
        );
        assert_bincode(&MapChangeRefused::NoMap, "04000000");
    }
}

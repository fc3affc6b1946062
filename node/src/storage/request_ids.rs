//! The request-id table: the writes a group applied within the window, by the id their client
//! gave them, with what each returned, so that a retry is answered rather than applied twice.
//!
//! It lives in memory only, compactly: an applied write of unconditional puts (nearly every
//! write) is remembered as its log index and op count, since its results follow from those.
//! It is made durable without a sled write per entry: a checkpoint goes with every snapshot
//! ([`Checkpoint`]), the log holds every entry after it, and the few writes whose results the
//! log cannot tell (conditional ops, deletes, writes refused by a fence) get a record each in
//! the dedup tree. Opening a group rebuilds the table from the three ([`super::StateMachine`]).

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};

use crate::types::{Op, OpResult, DEDUP_WINDOW_MS};

/// A request id, held inline when it has the 16 bytes clients give it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Id {
    Short([u8; 16]),
    Long(Box<[u8]>),
}

impl Id {
    fn new(id: &[u8]) -> Id {
        match <[u8; 16]>::try_from(id) {
            Ok(short) => Id::Short(short),
            Err(_) => Id::Long(id.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Id::Short(b) => b,
            Id::Long(b) => b,
        }
    }
}

/// What a remembered write returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `n` unconditional puts applied at log index `index`: each answered version `index`,
    /// and nothing about what it replaced.
    Puts { index: u64, n: u32 },
    /// Anything else, as it was answered.
    Results(Vec<OpResult>),
}

impl Outcome {
    /// The outcome of a write of `ops` applied at `index` with `results`.
    pub fn of(ops: &[Op], index: u64, results: &[OpResult]) -> Outcome {
        match u32::try_from(ops.len()) {
            Ok(n) if Outcome::follows_from_the_log(ops, index, results) => {
                Outcome::Puts { index, n }
            }
            _ => Outcome::Results(results.to_vec()),
        }
    }

    /// Whether these are the results that `ops` applied at `index` always get, so that the
    /// log entry alone tells them (and rebuilding the table needs no record of them).
    pub fn follows_from_the_log(ops: &[Op], index: u64, results: &[OpResult]) -> bool {
        ops.len() == results.len()
            && ops.iter().all(|op| {
                matches!(
                    op,
                    Op::Put {
                        expected_version: None,
                        ..
                    }
                )
            })
            && results.iter().all(|r| *r == Outcome::put_result(index))
    }

    fn put_result(index: u64) -> OpResult {
        OpResult {
            version: index,
            existed: false,
            condition_failed: false,
            previous_version: 0,
        }
    }

    pub fn results(&self) -> Vec<OpResult> {
        match self {
            Outcome::Puts { index, n } => vec![Outcome::put_result(*index); *n as usize],
            Outcome::Results(r) => r.clone(),
        }
    }
}

/// One remembered id as checkpoints and snapshots hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    /// The aging clock of the entry that applied it.
    pub at: u64,
    pub outcome: Outcome,
}

/// The clock request ids age by ([`DEDUP_WINDOW_MS`]). Each term's entries carry their leader's
/// wall clock, but only its progress within the term counts: at a new term the clock goes on
/// from where the last one left it. A new leader whose clock runs minutes ahead would otherwise
/// make every replica forget every id at once (and a retry apply twice), and one behind would
/// make them keep ids too long. Derived from the log alone, so every replica ages alike; stored
/// in checkpoints and snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgingClock {
    /// The term of the last entry that carried request ids.
    pub term: u64,
    /// The proposer's clock at that term's first such entry.
    pub term_start_ms: u64,
    /// The aging clock when that term began.
    pub clock_at_term_start: u64,
    /// The aging clock after the last entry; it never goes back.
    pub now: u64,
}

impl AgingClock {
    /// The aging clock at an entry of `term` proposed at `at_ms` by its leader's clock.
    pub fn observe(&mut self, term: u64, at_ms: u64) -> u64 {
        if term != self.term {
            // The first term ever seen starts from its leader's clock, so records read as
            // times; later ones go on from the last.
            let base = if self.term == 0 && self.now == 0 {
                at_ms
            } else {
                self.now
            };
            *self = AgingClock {
                term,
                term_start_ms: at_ms,
                clock_at_term_start: base,
                now: self.now,
            };
        }
        let at = self
            .clock_at_term_start
            .saturating_add(at_ms.saturating_sub(self.term_start_ms));
        self.now = self.now.max(at);
        self.now
    }
}

/// The table as of an applied log index, stored beside each snapshot (and inside it, for the
/// replicas that install it). Opening a group reads it, then the log after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last log index the table covers.
    pub applied: u64,
    pub aging: AgingClock,
    /// Every remembered id, oldest first.
    pub ids: Vec<Remembered>,
}

#[derive(Debug, Clone)]
struct Slot {
    at: u64,
    outcome: Outcome,
}

/// The table. Lookups honour the window by the aging clock of the entry asking, so whether a
/// retry is answered depends on the log alone, never on when memory was freed.
#[derive(Debug, Default)]
pub struct RequestIds {
    by_id: HashMap<Id, Slot>,
    /// Ids in the order they were remembered, which is aging-clock order (the clock never goes
    /// back), so that forgetting takes from the front.
    by_age: VecDeque<(u64, Id)>,
}

impl RequestIds {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// What `id` returned, if it was applied within the window of an entry at aging clock `now`.
    pub fn lookup(&self, id: &[u8], now: u64) -> Option<Vec<OpResult>> {
        let slot = self.by_id.get(&Id::new(id))?;
        (now.saturating_sub(slot.at) <= DEDUP_WINDOW_MS).then(|| slot.outcome.results())
    }

    /// Remembers `id` as applied at aging clock `at`. Callers look it up first, so an id is
    /// only remembered again once it has left the window. A record older than the id's slot
    /// is ignored: the clock never goes back, so only a damaged checkpoint or snapshot holds
    /// one, and taking it would leave two places of the id in `by_age` at the slot's clock,
    /// which a checkpoint would then list twice under a count of one.
    pub fn remember(&mut self, id: &[u8], at: u64, outcome: Outcome) {
        let id = Id::new(id);
        if let Some(slot) = self.by_id.get_mut(&id).filter(|s| s.at >= at) {
            if slot.at == at {
                // Already in `by_age` at this clock: one place per slot keeps the count exact.
                slot.outcome = outcome;
            }
            return;
        }
        self.by_age.push_back((at, id.clone()));
        self.by_id.insert(id, Slot { at, outcome });
    }

    /// Frees at most `most` ids that left the window before aging clock `now`. Bounded, so
    /// that the first write after a long idle spell does not pay for freeing everything.
    pub fn forget_expired(&mut self, now: u64, most: usize) {
        let cutoff = now.saturating_sub(DEDUP_WINDOW_MS);
        for _ in 0..most {
            match self.by_age.front() {
                Some((at, _)) if *at < cutoff => {}
                _ => return,
            }
            let Some((at, id)) = self.by_age.pop_front() else {
                return;
            };
            // An id remembered again later keeps its newer slot.
            if self.by_id.get(&id).is_some_and(|s| s.at == at) {
                self.by_id.remove(&id);
            }
        }
    }

    /// Every id, oldest first.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<Remembered> {
        self.by_age
            .iter()
            .filter_map(|(at, id)| {
                let slot = self.by_id.get(id).filter(|s| s.at == *at)?;
                Some(Remembered {
                    id: id.as_bytes().to_vec(),
                    at: *at,
                    outcome: slot.outcome.clone(),
                })
            })
            .collect()
    }

    /// The table as a [`Checkpoint`] at `applied`, encoded (bincode), without copying the
    /// table first: a snapshot of a busy group holds millions of ids.
    pub fn checkpoint_bytes(&self, applied: u64, aging: AgingClock) -> bincode::Result<Vec<u8>> {
        bincode::serialize(&CheckpointView {
            applied,
            aging,
            ids: IdsView(self),
        })
    }

    pub fn from_vec(ids: Vec<Remembered>) -> RequestIds {
        let mut table = RequestIds {
            by_id: HashMap::with_capacity(ids.len()),
            by_age: VecDeque::with_capacity(ids.len()),
        };
        for r in ids {
            table.remember(&r.id, r.at, r.outcome);
        }
        table
    }
}

/// [`Checkpoint`]'s encoding, borrowed from the table.
#[derive(Serialize)]
struct CheckpointView<'a> {
    applied: u64,
    aging: AgingClock,
    ids: IdsView<'a>,
}

struct IdsView<'a>(&'a RequestIds);

/// [`Remembered`]'s encoding, borrowed.
#[derive(Serialize)]
struct RememberedView<'a> {
    id: &'a serde_bytes::Bytes,
    at: u64,
    outcome: &'a Outcome,
}

impl Serialize for IdsView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let table = self.0;
        // Every id has exactly one slot whose clock matches its newest place in `by_age`.
        let mut seq = serializer.serialize_seq(Some(table.by_id.len()))?;
        for (at, id) in &table.by_age {
            if let Some(slot) = table.by_id.get(id).filter(|s| s.at == *at) {
                seq.serialize_element(&RememberedView {
                    id: serde_bytes::Bytes::new(id.as_bytes()),
                    at: *at,
                    outcome: &slot.outcome,
                })?;
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn put(expected_version: Option<u64>) -> Op {
        Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            expected_version,
        }
    }

    #[test]
    fn unconditional_puts_are_held_as_their_index() {
        let results = vec![Outcome::put_result(7); 2];
        let outcome = Outcome::of(&[put(None), put(None)], 7, &results);
        assert_eq!(outcome, Outcome::Puts { index: 7, n: 2 });
        assert_eq!(outcome.results(), results);
        // A conditional put's results carry what it replaced: kept as they are.
        let cas = [OpResult {
            version: 7,
            existed: true,
            condition_failed: false,
            previous_version: 3,
        }];
        assert_eq!(
            Outcome::of(&[put(Some(3))], 7, &cas),
            Outcome::Results(cas.to_vec())
        );
    }

    /// Found while writing the fuzz target `state_machine_record` (tests/fuzz), whose round
    /// trip fails on it: a checkpoint listing an id at clocks 3, 5, 3 gave a table whose
    /// checkpoint declared one id and listed two.
    #[test]
    fn a_record_older_than_its_ids_slot_is_ignored() {
        let r = |at| Remembered {
            id: b"r1".to_vec(),
            at,
            outcome: Outcome::Puts { index: 1, n: 1 },
        };
        let table = RequestIds::from_vec(vec![r(3), r(5), r(3)]);
        assert_eq!(table.to_vec(), vec![r(5)]);
        let bytes = table.checkpoint_bytes(2, AgingClock::default()).unwrap();
        let back: Checkpoint = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back.ids, vec![r(5)]);
        assert_eq!(bincode::serialize(&back).unwrap(), bytes);
    }

    #[test]
    fn an_id_is_answered_within_the_window_only() {
        let mut t = RequestIds::default();
        t.remember(b"a", 1_000, Outcome::Puts { index: 3, n: 1 });
        assert!(t.lookup(b"a", 1_000 + DEDUP_WINDOW_MS).is_some());
        assert!(t.lookup(b"a", 1_001 + DEDUP_WINDOW_MS).is_none());
        assert!(t.lookup(b"b", 1_000).is_none());
    }

    #[test]
    fn forgetting_is_bounded_and_keeps_ids_remembered_again() {
        let mut t = RequestIds::default();
        for i in 0..10u64 {
            t.remember(&i.to_be_bytes(), i, Outcome::Puts { index: i, n: 1 });
        }
        let late = 9 + DEDUP_WINDOW_MS + 1;
        t.remember(&0u64.to_be_bytes(), late, Outcome::Puts { index: 99, n: 1 });
        t.forget_expired(late, 4);
        assert_eq!(t.len(), 7, "at most 4 freed (id 0's old slot among them)");
        t.forget_expired(late, 100);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.lookup(&0u64.to_be_bytes(), late),
            Some(vec![Outcome::put_result(99)])
        );
    }

    proptest! {
        /// A table rebuilt from its own list answers every lookup as the original does.
        #[test]
        fn a_listed_table_rebuilds_the_same(
            ids in proptest::collection::vec((any::<[u8; 2]>(), 0u64..400_000, 1u32..4), 0..60),
            now in 0u64..600_000,
        ) {
            let mut t = RequestIds::default();
            let mut clock = 0;
            for (id, step, n) in &ids {
                clock += step / 10;
                if t.lookup(id, clock).is_none() {
                    t.remember(id, clock, Outcome::Puts { index: clock, n: *n });
                }
            }
            t.forget_expired(now, 7);
            let rebuilt = RequestIds::from_vec(t.to_vec());
            let raw = t.checkpoint_bytes(3, AgingClock::default()).unwrap();
            let decoded: Checkpoint = bincode::deserialize(&raw).unwrap();
            prop_assert_eq!(&decoded.ids, &t.to_vec());
            for (id, _, _) in &ids {
                prop_assert_eq!(t.lookup(id, now), rebuilt.lookup(id, now));
            }
        }
    }
}

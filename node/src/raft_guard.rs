//! Which Raft messages a replica takes at all, before openraft sees them.
//!
//! openraft trusts its transport: a vote from any node id is counted, and a term is adopted and
//! persisted however large. One message from outside could then stop a group for good (a term
//! of 2^64−1 is saved, and the next election overflows it and panics, on every restart) or
//! unseat its leader (a "leader" that is not a replica). So a message is refused unless its
//! sender is a replica of the group (in the cluster map or the group's Raft membership, which
//! leads the map during a move) and its terms and indexes are near the group's own. This is no
//! substitute for authenticating peers (TLS): a forger who knows a member's id passes the first
//! check, but not the second.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Vote;

use crate::types::{GroupId, LogId, NodeId, TypeConfig};

/// How far past the group's current term a message's term may be. A replica cut off from the
/// others starts an election every election timeout, each a term higher, so a legitimate term
/// runs ahead only by the number of timeouts it spent alone: about 12 days of them at one a
/// second.
pub const MAX_TERM_STEP: u64 = 1 << 20;

/// The largest term or log index a message may carry at all, far below where openraft's own
/// arithmetic (`term + 1`, `index + 1`) would overflow.
pub const MAX_TERM_OR_INDEX: u64 = 1 << 62;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("node {sender} is not a replica of shard group {group}: raft message refused")]
    NotAReplica { group: GroupId, sender: NodeId },
    #[error("raft message for shard group {group} carries term {term}, more than {MAX_TERM_STEP} past the group's term {current}: refused")]
    TermTooFar {
        group: GroupId,
        term: u64,
        current: u64,
    },
    #[error("raft message for shard group {group} carries {what} {value}, over the limit of {MAX_TERM_OR_INDEX}: refused")]
    OutOfRange {
        group: GroupId,
        what: &'static str,
        value: u64,
    },
}

/// What a message is checked against: the group as this replica sees it.
pub struct Group<'a> {
    pub id: GroupId,
    pub current_term: u64,
    /// Whether a node id is a replica of the group.
    pub is_replica: &'a dyn Fn(NodeId) -> bool,
}

impl Group<'_> {
    fn check_vote(&self, vote: &Vote<NodeId>) -> Result<(), Refusal> {
        let sender = vote.leader_id().node_id;
        if !(self.is_replica)(sender) {
            return Err(Refusal::NotAReplica {
                group: self.id,
                sender,
            });
        }
        let term = vote.leader_id().get_term();
        self.check_range("term", term)?;
        if term > self.current_term.saturating_add(MAX_TERM_STEP) {
            return Err(Refusal::TermTooFar {
                group: self.id,
                term,
                current: self.current_term,
            });
        }
        Ok(())
    }

    fn check_range(&self, what: &'static str, value: u64) -> Result<(), Refusal> {
        if value > MAX_TERM_OR_INDEX {
            return Err(Refusal::OutOfRange {
                group: self.id,
                what,
                value,
            });
        }
        Ok(())
    }

    fn check_log_id(&self, log_id: Option<&LogId>) -> Result<(), Refusal> {
        if let Some(l) = log_id {
            self.check_range("log term", l.leader_id.term)?;
            self.check_range("log index", l.index)?;
        }
        Ok(())
    }

    pub fn check_vote_request(&self, rpc: &VoteRequest<NodeId>) -> Result<(), Refusal> {
        self.check_vote(&rpc.vote)?;
        self.check_log_id(rpc.last_log_id.as_ref())
    }

    pub fn check_append(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> Result<(), Refusal> {
        self.check_vote(&rpc.vote)?;
        self.check_log_id(rpc.prev_log_id.as_ref())?;
        for e in &rpc.entries {
            self.check_log_id(Some(&e.log_id))?;
        }
        Ok(())
    }

    pub fn check_snapshot(&self, rpc: &InstallSnapshotRequest<TypeConfig>) -> Result<(), Refusal> {
        self.check_vote(&rpc.vote)?;
        self.check_log_id(rpc.meta.last_log_id.as_ref())
    }
}

/// Refused messages by reason, for `/metrics`.
#[derive(Debug, Default)]
pub struct Refused {
    not_a_replica: std::sync::atomic::AtomicU64,
    term_too_far: std::sync::atomic::AtomicU64,
    out_of_range: std::sync::atomic::AtomicU64,
}

impl Refused {
    pub fn count(&self, refusal: &Refusal) {
        let counter = match refusal {
            Refusal::NotAReplica { .. } => &self.not_a_replica,
            Refusal::TermTooFar { .. } => &self.term_too_far,
            Refusal::OutOfRange { .. } => &self.out_of_range,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Each reason's label with its count.
    pub fn by_reason(&self) -> [(&'static str, u64); 3] {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        [
            ("not_a_replica", get(&self.not_a_replica)),
            ("term_too_far", get(&self.term_too_far)),
            ("out_of_range", get(&self.out_of_range)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use proptest::prelude::*;

    use super::*;

    fn group(current_term: u64, members: &[NodeId]) -> (u64, Vec<NodeId>) {
        (current_term, members.to_vec())
    }

    fn vote_request(term: u64, sender: NodeId, last: Option<(u64, u64)>) -> VoteRequest<NodeId> {
        VoteRequest::new(
            Vote::new(term, sender),
            last.map(|(t, i)| LogId::new(CommittedLeaderId::new(t, sender), i)),
        )
    }

    fn check(g: &(u64, Vec<NodeId>), rpc: &VoteRequest<NodeId>) -> Result<(), Refusal> {
        let is_replica = |id| g.1.contains(&id);
        Group {
            id: 2,
            current_term: g.0,
            is_replica: &is_replica,
        }
        .check_vote_request(rpc)
    }

    #[test]
    fn the_attacks_of_issue_12_are_refused() {
        let g = group(7, &[1, 2, 3]);
        // A vote with the largest term there is, from a replica's id.
        assert!(matches!(
            check(&g, &vote_request(u64::MAX, 1, None)),
            Err(Refusal::OutOfRange { .. })
        ));
        // A term of 2^63 from a node that is no replica.
        assert_eq!(
            check(&g, &vote_request(1 << 63, 99, None)),
            Err(Refusal::NotAReplica {
                group: 2,
                sender: 99
            })
        );
        // A replica's id, a term far ahead.
        assert!(matches!(
            check(&g, &vote_request(7 + MAX_TERM_STEP + 1, 2, None)),
            Err(Refusal::TermTooFar { .. })
        ));
        // A last log id no real log reaches.
        assert!(matches!(
            check(&g, &vote_request(8, 2, Some((8, u64::MAX)))),
            Err(Refusal::OutOfRange { .. })
        ));
    }

    #[test]
    fn a_replica_that_sat_out_many_elections_is_heard() {
        let g = group(7, &[1, 2, 3]);
        assert_eq!(check(&g, &vote_request(8, 3, Some((7, 100)))), Ok(()));
        assert_eq!(
            check(&g, &vote_request(7 + MAX_TERM_STEP, 3, Some((7, 100)))),
            Ok(())
        );
        // Behind the group: openraft answers it with the higher vote, as it should.
        assert_eq!(check(&g, &vote_request(2, 1, None)), Ok(()));
    }

    proptest! {
        /// Whatever the message, a refused one names a reason, and an accepted one comes from a
        /// replica with a term openraft can count past.
        #[test]
        fn accepted_messages_are_from_replicas_with_sane_terms(
            current in 0u64..1 << 40,
            term in any::<u64>(),
            sender in 0u64..8,
            index in any::<u64>(),
        ) {
            let g = group(current, &[1, 2, 3]);
            let rpc = vote_request(term, sender, Some((term.min(1 << 62), index)));
            if check(&g, &rpc).is_ok() {
                prop_assert!((1..=3).contains(&sender));
                prop_assert!(term <= current + MAX_TERM_STEP);
                prop_assert!(index <= MAX_TERM_OR_INDEX);
            }
        }
    }
}

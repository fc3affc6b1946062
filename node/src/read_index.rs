//! Strong reads: one read-index round, and the extra floor a leader restored from its saved
//! vote must reach before it answers any (see `docs/consistency.md`, "Restarts").
//!
//! openraft 0.9 restores a replica whose saved vote is committed and names itself straight to
//! leader, without an election, and reuses the first entry of its old term as the entry its
//! leadership is confirmed by. The commit index is not persisted, so after a restart the read
//! index openraft computes, `max(that entry, committed)`, can lie below entries committed and
//! acknowledged before the crash, and a read would be answered by a state machine that has not
//! re-applied them yet. Such a leader's own log holds every committed entry (it led the term
//! they were committed in, and a leader never truncates its log), so its last index at startup
//! is a read index that covers them all; it commits by replicating, like any leader.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};

use crate::error::NodeError;
use crate::types::{GroupId, NodeId, Raft, Vote};

/// The read floor of a leadership restored at startup: reads in `term` wait until the state
/// machine has applied `index`. Lifted for good once reached, or once the term moves on
/// (later leaderships are won by election and commit an entry of their own first).
#[derive(Debug, Default)]
pub struct RestoredLeadership {
    term: AtomicU64,
    /// 0: no floor.
    index: AtomicU64,
}

impl RestoredLeadership {
    /// The floor for a replica that starts with `vote` saved and `last_log_index` as its last
    /// log entry: there is one when the vote is committed and names this replica, the case in
    /// which openraft resumes leadership without an election.
    pub fn at_startup(me: NodeId, vote: Option<&Vote>, last_log_index: Option<u64>) -> Self {
        let floor = match (vote, last_log_index) {
            (Some(v), Some(last)) if v.committed && v.leader_id.voted_for() == Some(me) => {
                Some((v.leader_id.term, last))
            }
            _ => None,
        };
        let (term, index) = floor.unwrap_or((0, 0));
        RestoredLeadership {
            term: AtomicU64::new(term),
            index: AtomicU64::new(index),
        }
    }

    /// The floor a read in the current term (asked of `term` only while a floor stands) must
    /// reach, if any; lifts it once the term has moved on.
    fn floor(&self, term: impl FnOnce() -> u64) -> Option<u64> {
        let index = self.index.load(Ordering::Acquire);
        if index == 0 {
            return None;
        }
        if term() != self.term.load(Ordering::Acquire) {
            self.index.store(0, Ordering::Release);
            return None;
        }
        Some(index)
    }

    fn reached(&self) {
        self.index.store(0, Ordering::Release);
    }
}

/// One read-index round: leadership confirmed by a quorum and applied up to the read index,
/// and, for a leadership restored at startup, up to the last entry it had then.
pub async fn read_index_round(
    raft: &Raft,
    group: GroupId,
    restored: &RestoredLeadership,
    timeout: Duration,
) -> Result<(), NodeError> {
    let no_quorum = |reason: String| NodeError::NoQuorum { group, reason };
    let res = tokio::time::timeout(timeout, raft.ensure_linearizable())
        .await
        .map_err(|_| no_quorum(format!("leadership not confirmed within {timeout:?}")))?;
    match res {
        Ok(_) => {}
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            return Err(NodeError::NotLeader {
                group,
                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            })
        }
        Err(RaftError::APIError(e)) => return Err(no_quorum(e.to_string())),
        Err(RaftError::Fatal(e)) => return Err(NodeError::Fatal(e.to_string())),
    }
    let Some(floor) = restored.floor(|| raft.metrics().borrow().current_term) else {
        return Ok(());
    };
    raft.wait(Some(timeout))
        .applied_index_at_least(Some(floor), "restored leader's read floor")
        .await
        .map_err(|e| {
            no_quorum(format!(
                "restored leadership has not applied its log up to {floor} yet: {e}"
            ))
        })?;
    restored.reached();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(term: u64, node: NodeId, committed: bool) -> Vote {
        if committed {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        }
    }

    #[test]
    fn only_a_committed_vote_for_itself_restores_leadership_with_a_floor() {
        let mine = vote(3, 1, true);
        let r = RestoredLeadership::at_startup(1, Some(&mine), Some(40));
        assert_eq!(r.floor(|| 3), Some(40));
        // Someone else's leadership, or a candidacy that never won: an election follows.
        for v in [vote(3, 2, true), vote(3, 1, false)] {
            assert_eq!(
                RestoredLeadership::at_startup(1, Some(&v), Some(40)).floor(|| 3),
                None
            );
        }
        assert_eq!(
            RestoredLeadership::at_startup(1, None, Some(40)).floor(|| 3),
            None
        );
        assert_eq!(
            RestoredLeadership::at_startup(1, Some(&mine), None).floor(|| 3),
            None
        );
    }

    #[test]
    fn the_floor_lifts_once_reached_or_once_the_term_moves_on() {
        let mine = vote(3, 1, true);
        let r = RestoredLeadership::at_startup(1, Some(&mine), Some(40));
        r.reached();
        assert_eq!(r.floor(|| 3), None);
        let r = RestoredLeadership::at_startup(1, Some(&mine), Some(40));
        assert_eq!(r.floor(|| 4), None);
        // Lifted for good: coming back to the old term number cannot happen, and must not
        // bring the floor back either.
        assert_eq!(r.floor(|| 3), None);
    }
}

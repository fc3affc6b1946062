//! The leader cache: which replica the router believes leads each shard group.
//!
//! Filled from successful answers and from the leader hints in `NOT_LEADER` errors; a group
//! never seen starts at its first replica. Plain `std::sync::Mutex`: every access is a short
//! map lookup or insert, never held across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;

use shardmap::{GroupId, NodeId};

/// Group id to the node id believed to lead it, and whether a node confirmed it (an answer or
/// a hint) rather than the router guessing it after a failure.
#[derive(Debug, Default)]
pub struct LeaderCache {
    leaders: Mutex<HashMap<GroupId, (NodeId, bool)>>,
}

impl LeaderCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, (NodeId, bool)>> {
        self.leaders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The replica to try first: the cached leader if it is still a replica, else the first one.
    pub fn pick(&self, group: GroupId, replicas: &[NodeId]) -> Option<NodeId> {
        match self.lock().get(&group) {
            Some((leader, _)) if replicas.contains(leader) => Some(*leader),
            _ => replicas.first().copied(),
        }
    }

    /// The group's leader as last confirmed by a node (an answer or a hint), if any.
    pub fn known(&self, group: GroupId) -> Option<NodeId> {
        match self.lock().get(&group) {
            Some((leader, true)) => Some(*leader),
            _ => None,
        }
    }

    /// Records `leader` as the group's leader.
    pub fn set(&self, group: GroupId, leader: NodeId) {
        self.lock().insert(group, (leader, true));
    }

    /// After `failed` did not answer, moves the cache to `next`, unless another request has
    /// already learned of a different leader meanwhile.
    pub fn advance(&self, group: GroupId, failed: NodeId, next: NodeId) {
        let mut leaders = self.lock();
        match leaders.get(&group) {
            Some((current, _)) if *current != failed => {}
            _ => {
                leaders.insert(group, (next, false));
            }
        }
    }
}

/// The replica after `current` in `replicas`, wrapping around; the first one when `current`
/// is not a replica.
pub fn next_replica(replicas: &[NodeId], current: NodeId) -> Option<NodeId> {
    let pos = replicas.iter().position(|r| *r == current);
    match pos {
        Some(i) => replicas.get((i + 1) % replicas.len()).copied(),
        None => replicas.first().copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_first_replica_and_follows_hints() {
        let cache = LeaderCache::default();
        assert_eq!(cache.pick(1, &[3, 1, 2]), Some(3));
        cache.set(1, 2);
        assert_eq!(cache.pick(1, &[3, 1, 2]), Some(2));
        // A cached leader that is no longer a replica is ignored.
        assert_eq!(cache.pick(1, &[3, 1]), Some(3));
        assert_eq!(cache.pick(9, &[]), None);
    }

    #[test]
    fn advance_only_replaces_the_failed_leader() {
        let cache = LeaderCache::default();
        cache.set(1, 2);
        cache.advance(1, 3, 1);
        assert_eq!(cache.pick(1, &[1, 2, 3]), Some(2));
        assert_eq!(cache.known(1), Some(2));
        cache.advance(1, 2, 3);
        assert_eq!(cache.pick(1, &[1, 2, 3]), Some(3));
        // A guess after a failure is not a known leader.
        assert_eq!(cache.known(1), None);
        assert_eq!(cache.known(2), None);
    }

    #[test]
    fn next_replica_wraps() {
        assert_eq!(next_replica(&[1, 2, 3], 1), Some(2));
        assert_eq!(next_replica(&[1, 2, 3], 3), Some(1));
        assert_eq!(next_replica(&[1, 2, 3], 7), Some(1));
        assert_eq!(next_replica(&[], 7), None);
    }
}

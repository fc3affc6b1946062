//! Session tokens and replica choice for eventual reads. Pure functions, tested without a
//! cluster.
//!
//! A session token maps a shard group to the highest version (Raft log index) a client has
//! seen in it. An eventual read sends the token's entry for its group as `min_applied_index`,
//! so that the serving replica has applied at least what the client saw (read-your-writes,
//! monotonic reads of a key). Every response returns the request's token merged with the
//! versions the request read or wrote.

use kv_proto::kv::SessionToken;
use shardmap::{GroupId, NodeId};

/// The token's version for `group` (0: none).
pub fn min_applied(token: Option<&SessionToken>, group: GroupId) -> u64 {
    token
        .and_then(|t| t.versions.get(&group).copied())
        .unwrap_or(0)
}

/// Raises the token's entry for `group` to `version` (a version of 0 is nothing seen).
pub fn observe(token: &mut SessionToken, group: GroupId, version: u64) {
    if version == 0 {
        return;
    }
    let entry = token.versions.entry(group).or_insert(0);
    *entry = (*entry).max(version);
}

/// The request's token (or an empty one) to which a response adds what it saw.
pub fn start(request: Option<&SessionToken>) -> SessionToken {
    request.cloned().unwrap_or_default()
}

/// The order in which an eventual read tries a group's replicas: the followers first, in
/// rotation from `start` (so that concurrent reads spread over them), then the leader when
/// it is known. With no known leader every replica is rotated alike.
pub fn replica_order(replicas: &[NodeId], leader: Option<NodeId>, start: usize) -> Vec<NodeId> {
    let leader = leader.filter(|l| replicas.contains(l));
    let followers: Vec<NodeId> = replicas
        .iter()
        .copied()
        .filter(|r| Some(*r) != leader)
        .collect();
    let mut order = Vec::with_capacity(replicas.len());
    if !followers.is_empty() {
        let first = start % followers.len();
        order.extend_from_slice(&followers[first..]);
        order.extend_from_slice(&followers[..first]);
    }
    order.extend(leader);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(pairs: &[(u64, u64)]) -> SessionToken {
        SessionToken {
            versions: pairs.iter().copied().collect(),
        }
    }

    #[test]
    fn merging_keeps_the_highest_version_per_group() {
        let mut t = token(&[(1, 10), (2, 5)]);
        for (g, v) in [(1, 7), (2, 9), (3, 1)] {
            observe(&mut t, g, v);
        }
        assert_eq!(t, token(&[(1, 10), (2, 9), (3, 1)]));
        observe(&mut t, 4, 0);
        assert_eq!(t, token(&[(1, 10), (2, 9), (3, 1)]));
        observe(&mut t, 1, 11);
        assert_eq!(min_applied(Some(&t), 1), 11);
        assert_eq!(min_applied(Some(&t), 9), 0);
        assert_eq!(min_applied(None, 1), 0);
        assert_eq!(start(None), SessionToken::default());
        assert_eq!(start(Some(&t)), t);
    }

    #[test]
    fn followers_first_in_rotation_then_the_leader() {
        assert_eq!(replica_order(&[1, 2, 3], Some(2), 0), vec![1, 3, 2]);
        assert_eq!(replica_order(&[1, 2, 3], Some(2), 1), vec![3, 1, 2]);
        assert_eq!(replica_order(&[1, 2, 3], Some(2), 2), vec![1, 3, 2]);
        // No known leader (or one that is not a replica): all rotate.
        assert_eq!(replica_order(&[1, 2, 3], None, 1), vec![2, 3, 1]);
        assert_eq!(replica_order(&[1, 2, 3], Some(9), 2), vec![3, 1, 2]);
        // A single replica is tried whatever its role.
        assert_eq!(replica_order(&[4], Some(4), 7), vec![4]);
        assert_eq!(replica_order(&[], None, 3), Vec::<NodeId>::new());
    }
}

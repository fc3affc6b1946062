//! The consistent-hash ring: `hashring` with virtual nodes and hashing that is stable across
//! processes, machines and Rust versions.
//!
//! `hashring` hashes with SipHash-2-4 (keys 0, 0) from the pinned `siphasher` crate, through
//! std's `Hash` trait. std's `Hash` impls for slices, strings and tuples add length prefixes or
//! terminators whose form is not promised across Rust releases, so neither keys nor tokens go
//! through them: both implement `Hash` by hand as exactly one `write` of a canonical byte
//! encoding. The golden vectors in the tests pin the resulting mapping; if they change, keys
//! would move between groups, so they must never be edited to make a build pass.

use std::hash::{Hash, Hasher};

use hashring::HashRing;

use crate::GroupId;

/// A virtual node: one of a group's positions on the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    group: GroupId,
    vnode: u32,
}

impl Hash for Token {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut buf = [0u8; 12];
        buf[..8].copy_from_slice(&self.group.to_be_bytes());
        buf[8..].copy_from_slice(&self.vnode.to_be_bytes());
        state.write(&buf);
    }
}

/// A key as the ring hashes it: its bytes and nothing else.
struct RingKey<'a>(&'a [u8]);

impl Hash for RingKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// Hash placement for one keyspace: `vnodes` tokens per group on one ring.
#[derive(Clone)]
pub struct HashPlacement {
    ring: HashRing<Token>,
    groups: Vec<GroupId>,
}

impl std::fmt::Debug for HashPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPlacement")
            .field("groups", &self.groups)
            .field("tokens", &self.ring.len())
            .finish()
    }
}

impl HashPlacement {
    /// Builds the ring. `vnodes` below 1 is treated as 1.
    pub fn new(groups: &[GroupId], vnodes: u32) -> HashPlacement {
        let mut ring = HashRing::new();
        let tokens = groups
            .iter()
            .flat_map(|&group| (0..vnodes.max(1)).map(move |vnode| Token { group, vnode }))
            .collect();
        ring.batch_add(tokens);
        HashPlacement {
            ring,
            groups: groups.to_vec(),
        }
    }

    /// The group that owns `key`.
    pub fn locate(&self, key: &[u8]) -> GroupId {
        match self.ring.get(&RingKey(key)) {
            Some(t) => t.group,
            // The ring is never empty: Placement::new refuses a keyspace without groups.
            None => self.groups[0],
        }
    }

    /// The keyspace's groups in map order.
    pub fn groups(&self) -> &[GroupId] {
        &self.groups
    }

    /// Each group's share of the hash space, in percent, in map order. A token owns the arc
    /// from the previous token (exclusive) up to itself, as `HashRing::get` assigns keys.
    pub fn shares(&self) -> Vec<(GroupId, f64)> {
        let vnodes = self.ring.len() / self.groups.len().max(1);
        let mut points: Vec<(u64, GroupId)> = self
            .groups
            .iter()
            .flat_map(|&group| {
                (0..vnodes as u32).map(move |vnode| (position(&Token { group, vnode }), group))
            })
            .collect();
        points.sort_unstable();
        let mut owned: std::collections::BTreeMap<GroupId, f64> =
            self.groups.iter().map(|g| (*g, 0.0)).collect();
        for (i, (pos, group)) in points.iter().enumerate() {
            let arc = if i == 0 {
                // The first token also owns the wrap-around arc after the last one.
                pos.wrapping_sub(points[points.len() - 1].0)
            } else {
                pos - points[i - 1].0
            };
            *owned.entry(*group).or_default() += arc as f64;
        }
        let total = 2f64.powi(64);
        self.groups
            .iter()
            .map(|g| (*g, owned.get(g).copied().unwrap_or(0.0) / total * 100.0))
            .collect()
    }
}

/// A token's position on the ring, computed as `hashring` does (SipHash-2-4, keys 0, 0).
fn position(t: &Token) -> u64 {
    let mut h = siphasher::sip::SipHasher::new();
    t.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Fixed keys to fixed groups. A failure here means a dependency or code change moved keys
    /// between groups: data written before would be routed away from where it lives.
    #[test]
    fn golden_vectors() {
        let p = HashPlacement::new(&[1, 2, 3, 4], 256);
        let got: Vec<(String, GroupId)> =
            ["a", "b", "user/1", "user/2", "key-000042", "\u{ff}", "z"]
                .iter()
                .map(|k| (k.to_string(), p.locate(k.as_bytes())))
                .collect();
        let want: Vec<(String, GroupId)> =
            GOLDEN.iter().map(|(k, g)| (k.to_string(), *g)).collect();
        assert_eq!(got, want);
    }

    const GOLDEN: &[(&str, GroupId)] = &[
        ("a", 3),
        ("b", 3),
        ("user/1", 1),
        ("user/2", 4),
        ("key-000042", 1),
        ("\u{ff}", 1),
        ("z", 1),
    ];

    #[test]
    fn balance_with_256_vnodes() {
        let groups: Vec<GroupId> = (1..=8).collect();
        let p = HashPlacement::new(&groups, 256);
        let n = 100_000;
        let mut counts: HashMap<GroupId, usize> = HashMap::new();
        for i in 0..n {
            *counts
                .entry(p.locate(format!("key-{i:08}").as_bytes()))
                .or_default() += 1;
        }
        let fair = n / groups.len();
        for g in groups {
            let c = counts.get(&g).copied().unwrap_or(0);
            assert!(
                c > fair * 8 / 10 && c < fair * 12 / 10,
                "group {g}: {c} vs fair {fair}"
            );
        }
    }

    #[test]
    fn shares_sum_to_100_and_match_sampling() {
        let p = HashPlacement::new(&[1, 2, 3, 4], 256);
        let shares = p.shares();
        let sum: f64 = shares.iter().map(|(_, s)| s).sum();
        assert!((sum - 100.0).abs() < 1e-6, "sum {sum}");
        let n = 40_000;
        let mut counts: HashMap<GroupId, usize> = HashMap::new();
        for i in 0..n {
            *counts
                .entry(p.locate(format!("s{i}").as_bytes()))
                .or_default() += 1;
        }
        for (g, share) in shares {
            let sampled = counts[&g] as f64 / n as f64 * 100.0;
            assert!(
                (sampled - share).abs() < 1.5,
                "group {g}: share {share} sampled {sampled}"
            );
        }
    }

    #[test]
    fn adding_a_group_moves_only_its_share() {
        let before = HashPlacement::new(&[1, 2, 3, 4], 256);
        let after = HashPlacement::new(&[1, 2, 3, 4, 5], 256);
        let n = 20_000;
        let moved = (0..n)
            .filter(|i| {
                let k = format!("k{i}");
                let (a, b) = (before.locate(k.as_bytes()), after.locate(k.as_bytes()));
                assert!(a == b || b == 5, "a key moved between old groups");
                a != b
            })
            .count();
        // About a fifth of the keys go to the new group, and none move between old groups.
        assert!(moved > n / 10 && moved < n * 3 / 10, "moved {moved}");
    }
}

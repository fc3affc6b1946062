//! Range placement: sorted split keys; group `i` holds `[split[i-1], split[i])`.

use crate::GroupId;

/// Range placement for one keyspace.
#[derive(Debug, Clone)]
pub struct RangePlacement {
    /// Strictly increasing, non-empty keys; `groups.len() == splits.len() + 1`.
    splits: Vec<Vec<u8>>,
    groups: Vec<GroupId>,
}

impl RangePlacement {
    /// The caller (map validation) guarantees sorted, distinct splits and one more group than
    /// splits.
    pub fn new(splits: &[Vec<u8>], groups: &[GroupId]) -> RangePlacement {
        RangePlacement {
            splits: splits.to_vec(),
            groups: groups.to_vec(),
        }
    }

    fn index_of(&self, key: &[u8]) -> usize {
        // The number of splits <= key is the index of the range holding it.
        self.splits.partition_point(|s| s.as_slice() <= key)
    }

    pub fn locate(&self, key: &[u8]) -> GroupId {
        self.groups[self.index_of(key).min(self.groups.len() - 1)]
    }

    /// The groups whose ranges meet `[start, end)` (empty `end`: unbounded), in key order.
    pub fn groups_for_scan(&self, start: &[u8], end: &[u8]) -> Vec<GroupId> {
        let first = self.index_of(start);
        let last = if end.is_empty() {
            self.groups.len() - 1
        } else {
            // The range holding the last key before `end`: splits < end.
            self.splits.partition_point(|s| s.as_slice() < end)
        };
        self.groups[first.min(self.groups.len() - 1)..=last.min(self.groups.len() - 1)].to_vec()
    }

    /// Each group with its range `[start, end)`; empty bounds are open.
    pub fn ranges(&self) -> Vec<(GroupId, Vec<u8>, Vec<u8>)> {
        self.groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let start = if i == 0 {
                    Vec::new()
                } else {
                    self.splits[i - 1].clone()
                };
                let end = self.splits.get(i).cloned().unwrap_or_default();
                (*g, start, end)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> RangePlacement {
        RangePlacement::new(&[b"g".to_vec(), b"p".to_vec()], &[10, 11, 12])
    }

    #[test]
    fn locate_by_range() {
        let p = p();
        assert_eq!(p.locate(b"a"), 10);
        assert_eq!(p.locate(b"f\xff"), 10);
        assert_eq!(p.locate(b"g"), 11);
        assert_eq!(p.locate(b"o"), 11);
        assert_eq!(p.locate(b"p"), 12);
        assert_eq!(p.locate(b"zzz"), 12);
    }

    #[test]
    fn scan_visits_only_overlapping_ranges_in_order() {
        let p = p();
        assert_eq!(p.groups_for_scan(b"", b""), vec![10, 11, 12]);
        assert_eq!(p.groups_for_scan(b"a", b"c"), vec![10]);
        assert_eq!(p.groups_for_scan(b"a", b"g"), vec![10]);
        assert_eq!(p.groups_for_scan(b"a", b"g\x00"), vec![10, 11]);
        assert_eq!(p.groups_for_scan(b"h", b""), vec![11, 12]);
        assert_eq!(p.groups_for_scan(b"q", b"r"), vec![12]);
    }

    #[test]
    fn ranges_cover_everything() {
        let r = p().ranges();
        assert_eq!(r[0], (10, vec![], b"g".to_vec()));
        assert_eq!(r[2], (12, b"p".to_vec(), vec![]));
    }
}

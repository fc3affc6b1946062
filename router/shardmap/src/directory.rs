//! Directory placement: an explicit table from a directory key (the key's prefix up to the
//! first separator, such as a tenant id) to a group, with a fallback for keys whose directory is
//! not in the table.

use std::collections::HashMap;

use crate::{GroupId, Placement};

/// Directory placement for one keyspace.
#[derive(Debug, Clone)]
pub struct DirectoryPlacement {
    separator: Vec<u8>,
    entries: HashMap<Vec<u8>, GroupId>,
    fallback: Box<Placement>,
    groups: Vec<GroupId>,
}

/// The directory of a key: its bytes before the first `separator`, or `None` when it has none.
pub fn directory_of<'k>(key: &'k [u8], separator: &[u8]) -> Option<&'k [u8]> {
    if separator.is_empty() || key.len() < separator.len() {
        return None;
    }
    key.windows(separator.len())
        .position(|w| w == separator)
        .map(|i| &key[..i])
}

impl DirectoryPlacement {
    pub fn new(
        separator: &[u8],
        entries: impl IntoIterator<Item = (Vec<u8>, GroupId)>,
        fallback: Placement,
        groups: &[GroupId],
    ) -> DirectoryPlacement {
        DirectoryPlacement {
            separator: separator.to_vec(),
            entries: entries.into_iter().collect(),
            fallback: Box::new(fallback),
            groups: groups.to_vec(),
        }
    }

    pub fn locate(&self, key: &[u8]) -> GroupId {
        directory_of(key, &self.separator)
            .and_then(|d| self.entries.get(d).copied())
            .unwrap_or_else(|| self.fallback.locate(key))
    }

    /// The group a directory's keys go to, and whether the table (not the fallback) decides it.
    /// With a hash fallback an unlisted directory has no single group: `None`.
    pub fn group_of_directory(&self, dir: &[u8]) -> Option<(GroupId, bool)> {
        if let Some(g) = self.entries.get(dir) {
            return Some((*g, true));
        }
        match &*self.fallback {
            Placement::Range(r) => {
                // Every key of the directory starts with dir + separator: one range unless a
                // split point falls inside that prefix.
                let mut start = dir.to_vec();
                start.extend_from_slice(&self.separator);
                let groups = r.groups_for_scan(&start, &prefix_end(&start));
                (groups.len() == 1).then(|| (groups[0], false))
            }
            _ => None,
        }
    }

    pub fn groups_for_scan(&self, start: &[u8], end: &[u8]) -> Vec<GroupId> {
        // A scan can cross directories mapped anywhere: visit every group, in map order.
        let _ = (start, end);
        self.groups.clone()
    }

    pub fn separator(&self) -> &[u8] {
        &self.separator
    }

    pub fn fallback(&self) -> &Placement {
        &self.fallback
    }
}

/// The smallest key greater than every key starting with `prefix` (empty: no bound).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HashPlacement, RangePlacement};

    #[test]
    fn directory_of_splits_at_the_first_separator() {
        assert_eq!(directory_of(b"tenant-a/x/y", b"/"), Some(&b"tenant-a"[..]));
        assert_eq!(directory_of(b"/x", b"/"), Some(&b""[..]));
        assert_eq!(directory_of(b"plain", b"/"), None);
        assert_eq!(directory_of(b"a::b", b"::"), Some(&b"a"[..]));
    }

    #[test]
    fn entries_win_and_others_fall_back() {
        let fallback = Placement::Hash(HashPlacement::new(&[1, 2, 3], 64));
        let d = DirectoryPlacement::new(
            b"/",
            [(b"tenant-a".to_vec(), 2)],
            fallback.clone(),
            &[1, 2, 3],
        );
        for i in 0..100 {
            assert_eq!(d.locate(format!("tenant-a/{i}").as_bytes()), 2);
            let k = format!("tenant-b/{i}");
            assert_eq!(d.locate(k.as_bytes()), fallback.locate(k.as_bytes()));
        }
        assert_eq!(d.group_of_directory(b"tenant-a"), Some((2, true)));
        assert_eq!(d.group_of_directory(b"tenant-b"), None);
    }

    #[test]
    fn range_fallback_gives_a_directory_one_group() {
        let fallback = Placement::Range(RangePlacement::new(&[b"m".to_vec()], &[1, 2]));
        let d = DirectoryPlacement::new(b"/", [], fallback, &[1, 2]);
        assert_eq!(d.group_of_directory(b"apple"), Some((1, false)));
        assert_eq!(d.group_of_directory(b"zebra"), Some((2, false)));
    }

    #[test]
    fn prefix_end_bounds() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
    }
}

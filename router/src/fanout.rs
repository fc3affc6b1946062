//! The pure half of fan-out: splitting a batch by shard group, putting per-group answers back
//! in request order, merging per-group scans into one key-ordered page, and walking the groups
//! of a range keyspace in key order until a scan's limit is reached.

use std::collections::BTreeMap;
use std::future::Future;

use kv_proto::kv::KeyValue;
use shardmap::GroupId;

/// The scan limit used when a request asks for 0.
pub const DEFAULT_SCAN_LIMIT: u32 = 1000;
/// The largest scan limit; larger requests are clamped to it.
pub const MAX_SCAN_LIMIT: u32 = 10_000;

/// The limit a scan actually runs with.
pub fn scan_limit(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_SCAN_LIMIT,
        n => n.min(MAX_SCAN_LIMIT),
    }
}

/// One group's scan answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupScan {
    pub kvs: Vec<KeyValue>,
    /// The group had more keys than the limit.
    pub more: bool,
}

/// Merges per-group scans (each ran with the same `limit`) into the first keys in key order,
/// at most `limit` of them and about `max_bytes` (see [`cap_bytes`]), and whether more keys
/// remain.
///
/// A group cut short (by the limit or by its node's byte budget) sent its keys up to its last
/// one only, so the page ends at the smallest such last key: past it, keys of that group not
/// sent could come before the other groups' keys.
pub fn merge_scans(parts: Vec<GroupScan>, limit: usize, max_bytes: usize) -> (Vec<KeyValue>, bool) {
    let mut more = parts.iter().any(|p| p.more);
    let cutoff = parts
        .iter()
        .filter(|p| p.more)
        .filter_map(|p| p.kvs.last().map(|kv| kv.key.clone()))
        .min();
    let mut all: Vec<KeyValue> = parts.into_iter().flat_map(|p| p.kvs).collect();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    if let Some(cutoff) = cutoff {
        all.retain(|kv| kv.key <= cutoff);
    }
    if all.len() > limit {
        all.truncate(limit);
        more = true;
    }
    more |= cap_bytes(&mut all, max_bytes);
    (all, more)
}

/// Ends `kvs` after the entry that brings its keys and values to `max_bytes` or past, keeping
/// at least one; whether it cut anything.
pub fn cap_bytes(kvs: &mut Vec<KeyValue>, max_bytes: usize) -> bool {
    let mut bytes = 0;
    for (i, kv) in kvs.iter().enumerate() {
        bytes += kv.key.len() + kv.value.len();
        if bytes >= max_bytes && i + 1 < kvs.len() {
            kvs.truncate(i + 1);
            return true;
        }
    }
    false
}

/// Scans groups that hold disjoint, increasing key ranges (a range keyspace's groups from
/// `groups_for_scan`), one after another, each asked for what is left of `limit`, and stops
/// as soon as the limit is reached: later groups are not touched. Returns the page and whether
/// more keys may remain.
///
/// When the page fills up before the last group, `more` is true even if the later groups turn
/// out to be empty: finding out would mean asking them. A group cut short by its own limit
/// (a node capping it lower) ends the page there, since keys of later groups come after its
/// unread ones.
pub async fn ordered_scan<E, F, Fut>(
    groups: &[GroupId],
    limit: usize,
    max_bytes: usize,
    mut scan: F,
) -> Result<(Vec<KeyValue>, bool), E>
where
    F: FnMut(GroupId, u32) -> Fut,
    Fut: Future<Output = Result<GroupScan, E>>,
{
    let mut kvs: Vec<KeyValue> = Vec::new();
    for (i, &group) in groups.iter().enumerate() {
        let left = limit.saturating_sub(kvs.len());
        if left == 0 {
            return Ok((kvs, true));
        }
        let part = scan(group, u32::try_from(left).unwrap_or(u32::MAX)).await?;
        let cut = part.more;
        kvs.extend(part.kvs);
        if cap_bytes(&mut kvs, max_bytes) {
            return Ok((kvs, true));
        }
        if kvs.len() >= limit {
            let more = cut || kvs.len() > limit || i + 1 < groups.len();
            kvs.truncate(limit);
            return Ok((kvs, more));
        }
        if cut {
            return Ok((kvs, true));
        }
        let bytes: usize = kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
        if bytes >= max_bytes && i + 1 < groups.len() {
            return Ok((kvs, true));
        }
    }
    Ok((kvs, false))
}

/// The positions of a batch's items, grouped by the shard group that holds each item's key.
/// Within a group, positions keep request order.
pub fn split_by_group<T, E>(
    items: &[T],
    mut locate: impl FnMut(&T) -> Result<GroupId, E>,
) -> Result<BTreeMap<GroupId, Vec<usize>>, E> {
    let mut groups: BTreeMap<GroupId, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        groups.entry(locate(item)?).or_default().push(i);
    }
    Ok(groups)
}

/// Puts per-group answers back in request order. Each part is the positions sent to one group
/// and that group's answers, one per position. Errors when a group answered with the wrong
/// number of results or a position is missing.
pub fn reassemble<T>(len: usize, parts: Vec<(Vec<usize>, Vec<T>)>) -> Result<Vec<T>, String> {
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(len).collect();
    for (positions, results) in parts {
        if positions.len() != results.len() {
            return Err(format!(
                "{} results for {} keys",
                results.len(),
                positions.len()
            ));
        }
        for (pos, result) in positions.into_iter().zip(results) {
            match slots.get_mut(pos) {
                Some(slot) => *slot = Some(result),
                None => return Err(format!("position {pos} out of range")),
            }
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.ok_or_else(|| format!("no result for item {i}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::new(),
            version: 1,
        }
    }

    fn keys(kvs: &[KeyValue]) -> Vec<&[u8]> {
        kvs.iter().map(|kv| kv.key.as_ref()).collect()
    }

    fn part(ks: &[&str], more: bool) -> GroupScan {
        GroupScan {
            kvs: ks.iter().map(|k| kv(k)).collect(),
            more,
        }
    }

    #[test]
    fn limits_default_and_clamp() {
        assert_eq!(scan_limit(0), 1000);
        assert_eq!(scan_limit(1), 1);
        assert_eq!(scan_limit(10_000), 10_000);
        assert_eq!(scan_limit(10_001), 10_000);
        assert_eq!(scan_limit(u32::MAX), 10_000);
    }

    #[test]
    fn merge_orders_keys_across_groups() {
        let (kvs, more) = merge_scans(
            vec![
                part(&["b", "e"], false),
                part(&["a", "d"], false),
                part(&["c"], false),
            ],
            10,
            usize::MAX,
        );
        assert_eq!(keys(&kvs), vec![b"a" as &[u8], b"b", b"c", b"d", b"e"]);
        assert!(!more);
    }

    #[test]
    fn merge_cuts_at_the_limit_and_reports_more() {
        let (kvs, more) = merge_scans(
            vec![part(&["a", "c"], false), part(&["b", "d"], false)],
            3,
            usize::MAX,
        );
        assert_eq!(keys(&kvs), vec![b"a" as &[u8], b"b", b"c"]);
        assert!(more);
    }

    #[test]
    fn merge_exactly_at_the_limit_is_not_more() {
        let (kvs, more) = merge_scans(
            vec![part(&["a"], false), part(&["b"], false)],
            2,
            usize::MAX,
        );
        assert_eq!(kvs.len(), 2);
        assert!(!more);
    }

    #[test]
    fn merge_reports_more_when_a_group_was_cut_short() {
        let (kvs, more) = merge_scans(
            vec![part(&["a", "b"], true), part(&[], false)],
            2,
            usize::MAX,
        );
        assert_eq!(keys(&kvs), vec![b"a" as &[u8], b"b"]);
        assert!(more);
    }

    #[test]
    fn merge_never_skips_keys_of_a_group_cut_short() {
        // Group 1 stopped at its limit ("c"); the page must not reach past "c".
        let (kvs, more) = merge_scans(
            vec![part(&["a", "c"], true), part(&["b", "x"], false)],
            2,
            usize::MAX,
        );
        assert_eq!(keys(&kvs), vec![b"a" as &[u8], b"b"]);
        assert!(more);
    }

    #[test]
    fn merge_ends_at_the_first_key_a_group_cut_short_did_not_pass() {
        // Group 1's node stopped at "b" on its byte budget, well under the limit: its keys
        // after "b" may come before "c", so the page ends at "b".
        let (kvs, more) = merge_scans(
            vec![part(&["a", "b"], true), part(&["c", "d"], false)],
            10,
            usize::MAX,
        );
        assert_eq!(keys(&kvs), vec![b"a" as &[u8], b"b"]);
        assert!(more);
    }

    #[test]
    fn pages_end_at_the_byte_budget_but_hold_at_least_one_key() {
        let big = |k: &str| KeyValue {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from(vec![0u8; 99]),
            version: 1,
        };
        let parts = vec![
            GroupScan {
                kvs: vec![big("a"), big("c")],
                more: false,
            },
            GroupScan {
                kvs: vec![big("b")],
                more: false,
            },
        ];
        // 100 bytes a key: the one that reaches 250 is the last.
        let (kvs, more) = merge_scans(parts.clone(), 10, 250);
        assert_eq!(keys(&kvs), vec![b"a" as &[u8], b"b", b"c"]);
        assert!(!more);
        let (kvs, more) = merge_scans(parts.clone(), 10, 200);
        assert_eq!(keys(&kvs), vec![b"a" as &[u8], b"b"]);
        assert!(more);
        let (kvs, more) = merge_scans(parts, 10, 1);
        assert_eq!(keys(&kvs), vec![b"a" as &[u8]]);
        assert!(more);

        let ids = [1, 2, 3];
        let (kvs, more) =
            futures::executor::block_on(ordered_scan::<(), _, _>(&ids, 10, 150, |g, _| {
                let p = GroupScan {
                    kvs: vec![big(&g.to_string())],
                    more: false,
                };
                async move { Ok(p) }
            }))
            .unwrap();
        assert_eq!(keys(&kvs), vec![b"1" as &[u8], b"2"]);
        assert!(more, "group 3 was not asked");
    }

    #[test]
    fn merge_of_nothing_is_empty() {
        let (kvs, more) = merge_scans(vec![], 10, usize::MAX);
        assert!(kvs.is_empty());
        assert!(!more);
    }

    /// Runs `ordered_scan` over fake groups (group id -> its sorted keys); returns the page,
    /// `more`, and the (group, limit) calls made, in order.
    fn run_ordered(
        groups: &[(GroupId, &[&str])],
        limit: usize,
    ) -> (Vec<String>, bool, Vec<(GroupId, u32)>) {
        let calls = std::sync::Mutex::new(Vec::new());
        let ids: Vec<GroupId> = groups.iter().map(|(g, _)| *g).collect();
        let result = futures::executor::block_on(ordered_scan::<(), _, _>(
            &ids,
            limit,
            usize::MAX,
            |g, l| {
                calls.lock().unwrap().push((g, l));
                let keys = groups.iter().find(|(id, _)| *id == g).unwrap().1;
                let more = keys.len() > l as usize;
                let part = part(&keys[..keys.len().min(l as usize)], more);
                async move { Ok(part) }
            },
        ))
        .unwrap();
        let page = result
            .0
            .iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
            .collect();
        (page, result.1, calls.into_inner().unwrap())
    }

    #[test]
    fn ordered_scan_stops_at_the_limit_without_touching_later_groups() {
        let groups: [(GroupId, &[&str]); 3] =
            [(10, &["a", "b"]), (11, &["h", "i", "j"]), (12, &["q"])];
        let (page, more, calls) = run_ordered(&groups, 4);
        assert_eq!(page, vec!["a", "b", "h", "i"]);
        assert!(more);
        assert_eq!(calls, vec![(10, 4), (11, 2)]);

        // The page fills exactly at the end of a group: the next one is not asked.
        let (page, more, calls) = run_ordered(&groups, 2);
        assert_eq!(page, vec!["a", "b"]);
        assert!(more);
        assert_eq!(calls, vec![(10, 2)]);
    }

    #[test]
    fn ordered_scan_visits_every_group_in_order_when_the_limit_allows() {
        let groups: [(GroupId, &[&str]); 3] = [(10, &["a"]), (11, &[]), (12, &["q", "r"])];
        let (page, more, calls) = run_ordered(&groups, 10);
        assert_eq!(page, vec!["a", "q", "r"]);
        assert!(!more);
        assert_eq!(calls, vec![(10, 10), (11, 9), (12, 9)]);
        // Exactly at the limit on the last group: nothing more.
        let (page, more, _) = run_ordered(&groups, 3);
        assert_eq!(page.len(), 3);
        assert!(!more);
    }

    #[test]
    fn ordered_scan_ends_the_page_where_a_group_was_cut_short() {
        let ids = [1, 2];
        let (kvs, more) =
            futures::executor::block_on(ordered_scan::<(), _, _>(&ids, 10, usize::MAX, |g, _| {
                // Group 1 caps itself at one key and says so.
                let p = if g == 1 {
                    part(&["a"], true)
                } else {
                    part(&["z"], false)
                };
                async move { Ok(p) }
            }))
            .unwrap();
        assert_eq!(keys(&kvs), vec![b"a" as &[u8]]);
        assert!(more);
    }

    #[test]
    fn ordered_scan_passes_errors_on() {
        let r =
            futures::executor::block_on(ordered_scan(&[1, 2], 10, usize::MAX, |g, _| async move {
                if g == 2 {
                    Err("down")
                } else {
                    Ok(part(&["a"], false))
                }
            }));
        assert_eq!(r.unwrap_err(), "down");
    }

    #[test]
    fn split_keeps_request_order_within_groups() {
        let items = ["a1", "b1", "a2", "c1", "b2"];
        let groups = split_by_group(&items, |k| {
            Ok::<_, ()>(match &k[..1] {
                "a" => 1,
                "b" => 2,
                _ => 3,
            })
        })
        .unwrap();
        assert_eq!(groups[&1], vec![0, 2]);
        assert_eq!(groups[&2], vec![1, 4]);
        assert_eq!(groups[&3], vec![3]);
    }

    #[test]
    fn split_stops_at_the_first_error() {
        let items = [1, 2, 3];
        let r = split_by_group(&items, |i| if *i == 2 { Err("bad") } else { Ok(1) });
        assert_eq!(r, Err("bad"));
    }

    #[test]
    fn reassemble_restores_request_order() {
        let parts = vec![
            (vec![1, 4], vec!["b1", "b2"]),
            (vec![0, 2], vec!["a1", "a2"]),
            (vec![3], vec!["c1"]),
        ];
        assert_eq!(
            reassemble(5, parts).unwrap(),
            vec!["a1", "b1", "a2", "c1", "b2"]
        );
    }

    #[test]
    fn reassemble_rejects_short_or_missing_answers() {
        assert!(reassemble(2, vec![(vec![0, 1], vec!["a"])]).is_err());
        assert!(reassemble(2, vec![(vec![0], vec!["a"])]).is_err());
        assert!(reassemble(1, vec![(vec![5], vec!["a"])]).is_err());
        assert_eq!(reassemble::<u8>(0, vec![]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn split_then_reassemble_round_trips() {
        let items: Vec<u32> = (0..100).map(|i| (i * 7919) % 101).collect();
        let groups = split_by_group(&items, |v| Ok::<_, ()>(u64::from(v % 5))).unwrap();
        let parts = groups
            .into_values()
            .map(|pos| {
                let answers = pos.iter().map(|&p| items[p] * 2).collect();
                (pos, answers)
            })
            .collect();
        let back = reassemble(items.len(), parts).unwrap();
        assert_eq!(back, items.iter().map(|v| v * 2).collect::<Vec<_>>());
    }
}

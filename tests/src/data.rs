//! Test data: predictable keys and values, and bulk load and check helpers.
//!
//! Values are derived from keys, so a check needs no copy of what was written, and they carry
//! the key's number so that a value returned for the wrong key is caught.

use std::collections::BTreeSet;

use anyhow::Context;
use futures::stream::{self, StreamExt, TryStreamExt};
use kvclient::{Client, ReadOptions, WriteOptions};

/// The `i`th key of a test: `{prefix}-{i:06}`, so key order is number order.
pub fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:06}")
}

/// The value stored under `key(prefix, i)`.
pub fn value(prefix: &str, i: usize) -> String {
    format!("value-of-{prefix}-{i:06}-{}", "x".repeat(i % 17))
}

/// Writes keys `range` of `prefix` with `batch_put`, `chunk` keys per call, `concurrency` calls
/// in flight.
pub async fn load(
    client: &Client,
    prefix: &str,
    range: std::ops::Range<usize>,
    chunk: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let chunks: Vec<std::ops::Range<usize>> = range
        .clone()
        .step_by(chunk)
        .map(|start| start..(start + chunk).min(range.end))
        .collect();
    stream::iter(chunks)
        .map(|r| async move {
            let kvs: Vec<(String, String)> = r
                .clone()
                .map(|i| (key(prefix, i), value(prefix, i)))
                .collect();
            let versions = client
                .batch_put(kvs, &WriteOptions::default())
                .await
                .with_context(|| format!("batch_put of {prefix} {r:?}"))?;
            anyhow::ensure!(
                versions.len() == r.len() && versions.iter().all(|&v| v > 0),
                "batch_put of {r:?} returned versions {versions:?}"
            );
            Ok(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

/// Writes keys `range` of `prefix` one `put` each, `concurrency` in flight: one Raft entry per
/// key, to grow logs.
pub async fn load_single(
    client: &Client,
    prefix: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> anyhow::Result<()> {
    stream::iter(range)
        .map(|i| async move {
            let version = client
                .put(key(prefix, i), value(prefix, i))
                .await
                .with_context(|| format!("put of {}", key(prefix, i)))?;
            anyhow::ensure!(version > 0, "put of {} returned version 0", key(prefix, i));
            Ok(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

/// Reads `keys` with strong `batch_get`, `chunk` per call, and checks each is present with
/// `expected(key)`. Returns the group ids the keys were found in.
pub async fn verify(
    client: &Client,
    keys: &[(String, String)],
    chunk: usize,
) -> anyhow::Result<BTreeSet<u64>> {
    let mut groups = BTreeSet::new();
    for part in keys.chunks(chunk) {
        let results = client
            .batch_get(part.iter().map(|(k, _)| k.clone()), &ReadOptions::default())
            .await
            .with_context(|| format!("batch_get from {}", part[0].0))?;
        anyhow::ensure!(
            results.len() == part.len(),
            "batch_get of {} keys returned {} results",
            part.len(),
            results.len()
        );
        for ((k, v), got) in part.iter().zip(results) {
            let got = got.with_context(|| format!("key {k} is missing"))?;
            anyhow::ensure!(
                got.key.as_ref() == k.as_bytes(),
                "batch_get answered key {:?} for {k}",
                String::from_utf8_lossy(&got.key)
            );
            anyhow::ensure!(
                got.value.as_ref() == v.as_bytes(),
                "key {k}: value {:?}, expected {v:?}",
                String::from_utf8_lossy(&got.value)
            );
            anyhow::ensure!(got.version > 0, "key {k}: version 0");
            groups.insert(got.group_id);
        }
    }
    Ok(groups)
}

/// `(key, value)` pairs of `range` of `prefix`.
pub fn pairs(prefix: &str, range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range.map(|i| (key(prefix, i), value(prefix, i))).collect()
}

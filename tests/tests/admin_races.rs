//! Admin operations that check for data and then change the cluster map, raced against writers
//! (issue #11, part 3: no check-then-act in admin operations).
//!
//! `directory set` and `directory remove` refuse (`DIRECTORY_NOT_EMPTY`) when keys of the
//! directory are in a group the change would take them away from, and a `keyspace drop`
//! without `--force` refuses (`KEYSPACE_NOT_EMPTY`) when any of the keyspace's groups holds a
//! key. A write acknowledged between that check and the map change must not be lost: it has to
//! be seen by the check (and the change refused) or be refused by its group (`STALE_EPOCH`) and
//! retried by the router under the new map.
//!
//! Each test repeats a round many times on one cluster: writers start putting fresh keys of a
//! fresh directory (or keyspace) through the router while the admin operation is issued a few
//! milliseconds before or after them, so that the first writes race the emptiness check. The
//! operation may be applied or refused; either way, once the writers have stopped, every write
//! the router acknowledged must be readable with a strong read through the router, with the
//! value it was acknowledged with (for a drop: a keyspace that was dropped without `--force`
//! must have had no acknowledged write at all). Only `Ok` answers count as acknowledged: errors
//! (timeouts, an unknown keyspace after a drop, refusals) are outcomes a client cannot rely on.
//!
//! The writers use every write path a client has: puts carried over the coalescing stream,
//! unary puts, batch puts and create-if-absent puts (`if_version: 0`).
//!
//! Rounds are cut short when a test has run for [`ROUND_BUDGET`] (the machines running this are
//! small and shared); the offsets between the writers and the operation come from a seed that
//! is printed and can be replayed with `KV_ADMIN_RACE_SEED`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::{Cluster, ClusterOptions};
use kvclient::{
    codes, Client, ClientOptions, Error, KeyspaceSpec, ReadOptions, Strategy, WriteOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Concurrent writers per round (one of each kind of write).
const WRITERS: usize = 4;
/// Rounds of the directory tests (fewer when [`ROUND_BUDGET`] runs out first).
const DIRECTORY_ROUNDS: usize = 40;
/// Rounds of the drop test: each creates a keyspace, so they take longer.
const DROP_ROUNDS: usize = 20;
/// No round starts after a test has spent this long in rounds.
const ROUND_BUDGET: Duration = Duration::from_secs(50);
/// Groups of the directory keyspace (its hash fallback).
const DIRECTORY_SHARDS: u32 = 4;
/// Groups of each keyspace the drop test creates.
const DROP_SHARDS: u32 = 2;
/// How far the admin operation starts after the writers (negative: before them), in ms. The
/// first acknowledgements come some 20 to 50 ms after the writers start in a debug build; an
/// operation that starts well after that is refused every time.
const OFFSET_MS: std::ops::RangeInclusive<i64> = -10..=12;

/// The seed of the offsets: `KV_ADMIN_RACE_SEED`, else random; printed either way.
fn seed() -> u64 {
    let seed = std::env::var("KV_ADMIN_RACE_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("offset seed: {seed} (replay with KV_ADMIN_RACE_SEED={seed})");
    seed
}

/// The clients of a test. Generous budgets: a slow write is not what is tested.
struct Clients {
    /// Coalescing (the default): puts travel over one `MultiStream`.
    stream: Client,
    /// One unary RPC per call.
    unary: Client,
    /// Admin calls and the final reads.
    admin: Client,
}

impl Clients {
    fn new(cluster: &Cluster) -> Self {
        let options = ClientOptions {
            timeout: Duration::from_secs(15),
            max_retries: 20,
            ..Default::default()
        };
        Clients {
            stream: cluster.client_with(options.clone()),
            unary: cluster.client_with(ClientOptions {
                coalesce: false,
                ..options
            }),
            admin: cluster.client(),
        }
    }
}

fn write_opts(keyspace: &str) -> WriteOptions {
    WriteOptions {
        keyspace: keyspace.into(),
        ..Default::default()
    }
}

fn read_opts(keyspace: &str) -> ReadOptions {
    ReadOptions {
        keyspace: keyspace.into(),
        ..Default::default()
    }
}

/// How a writer writes.
#[derive(Debug, Clone, Copy)]
enum WriteKind {
    /// `put` on the coalescing client.
    Stream,
    /// `put` on a client without coalescing.
    Unary,
    /// `batch_put` of three keys.
    Batch,
    /// `put` with `if_version: Some(0)` (create if absent).
    IfAbsent,
}

impl WriteKind {
    fn of_writer(w: usize) -> Self {
        match w % 4 {
            0 => WriteKind::Stream,
            1 => WriteKind::Unary,
            2 => WriteKind::Batch,
            _ => WriteKind::IfAbsent,
        }
    }
}

/// One acknowledged write of one key.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
    /// When the acknowledgement came, since the round started.
    at: Duration,
    kind: WriteKind,
}

/// What the writers of a round did.
#[derive(Debug, Default)]
struct Written {
    acked: Vec<Acked>,
    /// Failed calls by error code.
    errors: BTreeMap<String, usize>,
    calls: u64,
}

impl Written {
    fn first_ack(&self) -> Option<Duration> {
        self.acked.iter().map(|a| a.at).min()
    }

    fn summary(&self) -> String {
        let first = match self.first_ack() {
            Some(at) => format!("first at {}", ms(at)),
            None => "none".into(),
        };
        format!(
            "{} calls, {} keys acknowledged ({first}), failures {:?}",
            self.calls,
            self.acked.len(),
            self.errors
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// Writers running in tasks until told to stop.
struct Writers {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Written>>,
}

impl Writers {
    /// Starts [`WRITERS`] writers of keys `{prefix}w{w}-{i}` in `keyspace`, each after `delay`.
    /// Every key is written once, with a value naming the round (`tag`), writer and number.
    fn start(
        clients: &Clients,
        keyspace: &str,
        prefix: &str,
        tag: &str,
        t0: Instant,
        delay: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let tasks = (0..WRITERS)
            .map(|w| {
                let kind = WriteKind::of_writer(w);
                let client = match kind {
                    WriteKind::Unary => clients.unary.clone(),
                    _ => clients.stream.clone(),
                };
                let opts = write_opts(keyspace);
                let (prefix, tag) = (prefix.to_string(), tag.to_string());
                let (stop, calls) = (stop.clone(), calls.clone());
                tokio::spawn(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut out = Written::default();
                    let mut i = 0usize;
                    let mut next = || {
                        let kv = (format!("{prefix}w{w}-{i:05}"), format!("{tag}:w{w}:{i}"));
                        i += 1;
                        kv
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let result: Result<Vec<(String, String)>, Error> = match kind {
                            WriteKind::Stream | WriteKind::Unary => {
                                let (k, v) = next();
                                client
                                    .put_with(k.clone(), v.clone(), &opts)
                                    .await
                                    .map(|_| vec![(k, v)])
                            }
                            WriteKind::IfAbsent => {
                                let (k, v) = next();
                                let create = WriteOptions {
                                    if_version: Some(0),
                                    ..opts.clone()
                                };
                                client
                                    .put_with(k.clone(), v.clone(), &create)
                                    .await
                                    .map(|_| vec![(k, v)])
                            }
                            WriteKind::Batch => {
                                let kvs: Vec<(String, String)> = (0..3).map(|_| next()).collect();
                                client
                                    .batch_put(kvs.clone(), &opts)
                                    .await
                                    .and_then(|versions| {
                                        if versions.len() == kvs.len() {
                                            Ok(kvs)
                                        } else {
                                            Err(Error::Server {
                                                status: tonic::Code::Internal,
                                                code: None,
                                                message: format!(
                                                    "{} versions for {} keys",
                                                    versions.len(),
                                                    kvs.len()
                                                ),
                                            })
                                        }
                                    })
                            }
                        };
                        let at = t0.elapsed();
                        out.calls += 1;
                        calls.fetch_add(1, Ordering::Relaxed);
                        match result {
                            Ok(kvs) => {
                                out.acked.extend(kvs.into_iter().map(|(key, value)| Acked {
                                    key,
                                    value,
                                    at,
                                    kind,
                                }))
                            }
                            Err(e) => {
                                *out.errors.entry(e.code().to_string()).or_default() += 1;
                                // Refusals can come back at once; let the others run.
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        Writers { stop, calls, tasks }
    }

    /// Lets the writers make `more` further calls between them (so that some run under the
    /// map the operation left), then stops them and gathers what they wrote.
    async fn finish(self, more: u64) -> Written {
        let target = self.calls.load(Ordering::Relaxed) + more;
        let give_up = Instant::now() + Duration::from_secs(30);
        while self.calls.load(Ordering::Relaxed) < target && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Written::default();
        for task in self.tasks {
            let w = task.await.expect("a writer task panicked");
            all.acked.extend(w.acked);
            for (code, n) in w.errors {
                *all.errors.entry(code).or_default() += n;
            }
            all.calls += w.calls;
        }
        all.acked.sort_by_key(|a| a.at);
        all
    }
}

/// When the admin operation ran, relative to the round's start, and how it ended.
struct AdminRun {
    what: String,
    started: Duration,
    ended: Duration,
    result: Result<u64, Error>,
}

impl AdminRun {
    fn applied(&self) -> bool {
        self.result.is_ok()
    }

    fn refused_with(&self, code: &str) -> bool {
        matches!(&self.result, Err(e) if e.code() == code)
    }
}

impl fmt::Display for AdminRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match &self.result {
            Ok(epoch) => format!("applied at epoch {epoch}"),
            Err(e) => format!("failed with {} ({e})", e.code()),
        };
        write!(
            f,
            "{} ran {}..{}: {outcome}",
            self.what,
            ms(self.started),
            ms(self.ended)
        )
    }
}

/// Starts writers and the admin operation `op` at `offset_ms` of each other (positive: the
/// operation after the writers), waits for the operation, lets the writers go on a little, and
/// returns both.
async fn race<F>(
    clients: &Clients,
    keyspace: &str,
    prefix: &str,
    tag: &str,
    offset_ms: i64,
    what: String,
    op: F,
) -> (AdminRun, Written)
where
    F: std::future::Future<Output = Result<u64, Error>>,
{
    let writers_after = Duration::from_millis((-offset_ms).max(0) as u64);
    let op_after = Duration::from_millis(offset_ms.max(0) as u64);
    let t0 = Instant::now();
    let writers = Writers::start(clients, keyspace, prefix, tag, t0, writers_after);
    if !op_after.is_zero() {
        tokio::time::sleep(op_after).await;
    }
    let started = t0.elapsed();
    let result = op.await;
    let ended = t0.elapsed();
    let written = writers.finish(2 * WRITERS as u64).await;
    (
        AdminRun {
            what,
            started,
            ended,
            result,
        },
        written,
    )
}

/// An acknowledged write a strong read does not return.
struct Lost {
    acked: Acked,
    /// What the read returned instead (`None`: no such key).
    read: Option<String>,
}

/// The acknowledged writes that a strong read through the router does not return as
/// acknowledged. Reads in batches, and reads each miss again alone before calling it lost.
async fn lost_writes(client: &Client, keyspace: &str, acked: &[Acked], diag: &str) -> Vec<Lost> {
    let opts = read_opts(keyspace);
    let mut suspects = Vec::new();
    for part in acked.chunks(200) {
        let results = client
            .batch_get(part.iter().map(|a| a.key.clone()), &opts)
            .await
            .unwrap_or_else(|e| {
                panic!("reading back {} keys of {keyspace}: {e} {diag}", part.len())
            });
        assert_eq!(results.len(), part.len(), "batch_get answer {diag}");
        for (a, got) in part.iter().zip(results) {
            if got.as_ref().map(|v| v.value.as_ref()) != Some(a.value.as_bytes()) {
                suspects.push(a.clone());
            }
        }
    }
    let mut lost = Vec::new();
    for a in suspects {
        let got = client
            .get_with(a.key.clone(), &opts)
            .await
            .unwrap_or_else(|e| panic!("reading back {} of {keyspace}: {e} {diag}", a.key));
        let read = got.map(|v| String::from_utf8_lossy(&v.value).into_owned());
        if read.as_deref() != Some(a.value.as_str()) {
            lost.push(Lost { acked: a, read });
        }
    }
    lost
}

/// Where lost keys are, for the failure message: the group the router maps each to now, and the
/// groups that hold it (each group of `keyspace` read straight from its leader).
async fn whereabouts(
    cluster: &Cluster,
    client: &Client,
    keyspace: &str,
    groups: &[u64],
    lost: &[Lost],
) -> String {
    let mut holders: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    let wanted: BTreeSet<&str> = lost.iter().map(|l| l.acked.key.as_str()).collect();
    for &g in groups {
        match cluster.scan_group(g).await {
            Ok(kvs) => {
                for kv in kvs {
                    let key = String::from_utf8_lossy(&kv.key).into_owned();
                    if wanted.contains(key.as_str()) {
                        let value = String::from_utf8_lossy(&kv.value).into_owned();
                        holders.entry(key).or_default().push((g, value));
                    }
                }
            }
            Err(e) => eprintln!("(could not read group {g} for the report: {e:#})"),
        }
    }
    let shown: Vec<&Lost> = lost.iter().take(12).collect();
    let located = client
        .locate(keyspace, shown.iter().map(|l| l.acked.key.clone()))
        .await
        .ok();
    let mut out = String::new();
    for (i, l) in shown.iter().enumerate() {
        let routed = located
            .as_ref()
            .map(|g| format!("group {}", g[i]))
            .unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "\n  {} = {:?} ({:?}, acknowledged at {}): read {:?}; the router maps it to {routed}; \
             held by {:?}",
            l.acked.key,
            l.acked.value,
            l.acked.kind,
            ms(l.acked.at),
            l.read,
            holders.get(&l.acked.key).cloned().unwrap_or_default()
        ));
    }
    if lost.len() > shown.len() {
        out.push_str(&format!("\n  ... and {} more", lost.len() - shown.len()));
    }
    out
}

/// Tallies of a test's rounds, printed at the end.
#[derive(Default)]
struct Tally {
    rounds: usize,
    applied: usize,
    refused: usize,
    failed: usize,
    acked: usize,
    /// Rounds where the operation was applied and writes were acknowledged before it returned:
    /// the rounds that really raced.
    contested: usize,
}

impl Tally {
    fn add(&mut self, run: &AdminRun, refusal: &str, written: &Written) {
        self.rounds += 1;
        self.acked += written.acked.len();
        if run.applied() {
            self.applied += 1;
            if written.first_ack().is_some_and(|at| at <= run.ended) {
                self.contested += 1;
            }
        } else if run.refused_with(refusal) {
            self.refused += 1;
        } else {
            self.failed += 1;
        }
    }

    fn print(&self, test: &str, started: Instant) {
        eprintln!(
            "{test}: {} rounds in {:?}: {} applied ({} with writes acknowledged before the \
             operation returned), {} refused, {} failed otherwise; {} writes acknowledged",
            self.rounds,
            started.elapsed(),
            self.applied,
            self.contested,
            self.refused,
            self.failed,
            self.acked
        );
    }
}

/// A cluster with a directory keyspace `tenants` (hash fallback over [`DIRECTORY_SHARDS`]
/// groups) whose groups all have leaders and have taken writes through the router.
async fn directory_cluster() -> (Cluster, Clients, Vec<u64>) {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let clients = Clients::new(&cluster);
    let info = clients
        .admin
        .create_keyspace(
            &KeyspaceSpec::directory("tenants", Strategy::Hash).with_shards(DIRECTORY_SHARDS),
        )
        .await
        .unwrap_or_else(|e| panic!("create the directory keyspace: {e} {diag}"));
    let groups: Vec<u64> = info.groups.iter().map(|g| g.id).collect();
    assert_eq!(groups.len(), DIRECTORY_SHARDS as usize, "{info:?} {diag}");
    warm_up(&cluster, &clients, "tenants", &groups, "warm/").await;
    (cluster, clients, groups)
}

/// Waits for a leader of every group of `keyspace`, and writes (then deletes) one key of each
/// group through both data clients, so that the router knows the leaders and the clients have
/// their connections before a round starts.
async fn warm_up(
    cluster: &Cluster,
    clients: &Clients,
    keyspace: &str,
    groups: &[u64],
    prefix: &str,
) {
    let diag = cluster.diag();
    for &g in groups {
        cluster
            .wait_leader(g, None, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let candidates: Vec<String> = (0..64).map(|i| format!("{prefix}probe-{i}")).collect();
    let located = clients
        .admin
        .locate(keyspace, candidates.iter().cloned())
        .await
        .unwrap_or_else(|e| panic!("locate probes in {keyspace}: {e} {diag}"));
    let mut per_group: BTreeMap<u64, String> = BTreeMap::new();
    for (k, g) in candidates.iter().zip(located) {
        per_group.entry(g).or_insert_with(|| k.clone());
    }
    for key in per_group.values() {
        for client in [&clients.stream, &clients.unary] {
            client
                .put_with(key.clone(), "probe", &write_opts(keyspace))
                .await
                .unwrap_or_else(|e| panic!("probe put {key} in {keyspace}: {e} {diag}"));
            client
                .delete_with(key.clone(), &write_opts(keyspace))
                .await
                .unwrap_or_else(|e| panic!("probe delete {key} in {keyspace}: {e} {diag}"));
        }
    }
}

/// Moves fresh, empty directories to another group while writers fill them. Even rounds set an
/// entry for a directory that has none (its keys spread over every group by the hash fallback);
/// odd rounds first pin the directory to one group and then move it to another. Each move may
/// be applied or refused with `DIRECTORY_NOT_EMPTY`; every acknowledged write must then be
/// readable where the map now puts the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_an_empty_directory_under_racing_writers_loses_no_write() {
    let (cluster, clients, groups) = directory_cluster().await;
    let diag = cluster.diag();
    let mut rng = StdRng::seed_from_u64(seed());
    let started = Instant::now();
    let mut tally = Tally::default();
    for round in 0..DIRECTORY_ROUNDS {
        if started.elapsed() > ROUND_BUDGET {
            eprintln!("round budget spent after {round} rounds");
            break;
        }
        let dir = format!("s{round}");
        let target = groups[round % groups.len()];
        let pinned = if round % 2 == 1 {
            let home = groups[(round + 1) % groups.len()];
            clients
                .admin
                .set_directory("tenants", dir.clone(), home)
                .await
                .unwrap_or_else(|e| {
                    panic!("pin the empty directory {dir} to group {home}: {e} {diag}")
                });
            Some(home)
        } else {
            None
        };
        let offset = rng.gen_range(OFFSET_MS);
        let what = match pinned {
            Some(home) => format!("set {dir}: group {home} -> {target}"),
            None => format!("set {dir} (no entry) -> group {target}"),
        };
        let (run, written) = race(
            &clients,
            "tenants",
            &format!("{dir}/"),
            &format!("set{round}"),
            offset,
            what,
            clients.admin.set_directory("tenants", dir.clone(), target),
        )
        .await;
        tally.add(&run, codes::DIRECTORY_NOT_EMPTY, &written);
        eprintln!(
            "round {round} (operation at {offset:+}ms): {run}; {}",
            written.summary()
        );
        let lost = lost_writes(&clients.admin, "tenants", &written.acked, &diag).await;
        if !lost.is_empty() {
            let now = clients.admin.get_directory("tenants", dir.clone()).await;
            let places = whereabouts(&cluster, &clients.admin, "tenants", &groups, &lost).await;
            panic!(
                "round {round}: {} of {} acknowledged writes to directory {dir} are lost after \
                 `{run}` (directory now {now:?}); writers: {}; lost:{places}\n{diag}",
                lost.len(),
                written.acked.len(),
                written.summary()
            );
        }
    }
    tally.print("set directory", started);
}

/// Removes the entries of fresh, empty directories while writers fill them: each directory is
/// pinned to one group, and removing its entry hands its keys to the hash fallback, which
/// spreads them over every group, so the removal needs the emptiness check. It may be applied
/// or refused with `DIRECTORY_NOT_EMPTY`; every acknowledged write must then be readable where
/// the map now puts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_empty_directory_under_racing_writers_loses_no_write() {
    let (cluster, clients, groups) = directory_cluster().await;
    let diag = cluster.diag();
    let mut rng = StdRng::seed_from_u64(seed());
    let started = Instant::now();
    let mut tally = Tally::default();
    for round in 0..DIRECTORY_ROUNDS {
        if started.elapsed() > ROUND_BUDGET {
            eprintln!("round budget spent after {round} rounds");
            break;
        }
        let dir = format!("r{round}");
        let home = groups[round % groups.len()];
        clients
            .admin
            .set_directory("tenants", dir.clone(), home)
            .await
            .unwrap_or_else(|e| {
                panic!("pin the empty directory {dir} to group {home}: {e} {diag}")
            });
        let offset = rng.gen_range(OFFSET_MS);
        let (run, written) = race(
            &clients,
            "tenants",
            &format!("{dir}/"),
            &format!("remove{round}"),
            offset,
            format!("remove {dir} (entry: group {home})"),
            clients.admin.remove_directory("tenants", dir.clone()),
        )
        .await;
        tally.add(&run, codes::DIRECTORY_NOT_EMPTY, &written);
        eprintln!(
            "round {round} (operation at {offset:+}ms): {run}; {}",
            written.summary()
        );
        let lost = lost_writes(&clients.admin, "tenants", &written.acked, &diag).await;
        if !lost.is_empty() {
            let now = clients.admin.get_directory("tenants", dir.clone()).await;
            let places = whereabouts(&cluster, &clients.admin, "tenants", &groups, &lost).await;
            panic!(
                "round {round}: {} of {} acknowledged writes to directory {dir} are lost after \
                 `{run}` (directory now {now:?}); writers: {}; lost:{places}\n{diag}",
                lost.len(),
                written.acked.len(),
                written.summary()
            );
        }
    }
    tally.print("remove directory", started);
}

/// Drops fresh, empty keyspaces without `--force` while writers fill them. A drop without
/// force promises never to delete data: whatever was acknowledged before it took effect must
/// have made it refuse (`KEYSPACE_NOT_EMPTY`), and nothing can be acknowledged after it (the
/// keyspace is gone). So if the keyspace is gone at the end of a round, no write to it may
/// have been acknowledged at all; if it is still there, every acknowledged write must be
/// readable. (Whether the keyspace is gone is asked of the map, not taken from the drop's
/// answer: a drop retried after a lost answer may report an error although it went through.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_keyspace_under_racing_writers_loses_no_acknowledged_write() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let clients = Clients::new(&cluster);
    let mut rng = StdRng::seed_from_u64(seed());
    let started = Instant::now();
    let mut tally = Tally::default();
    for round in 0..DROP_ROUNDS {
        if started.elapsed() > ROUND_BUDGET {
            eprintln!("round budget spent after {round} rounds");
            break;
        }
        let name = format!("race-{round}");
        let info = clients
            .admin
            .create_keyspace(&KeyspaceSpec::hash(name.clone(), DROP_SHARDS))
            .await
            .unwrap_or_else(|e| panic!("create keyspace {name}: {e} {diag}"));
        let groups: Vec<u64> = info.groups.iter().map(|g| g.id).collect();
        warm_up(&cluster, &clients, &name, &groups, "").await;

        let offset = rng.gen_range(OFFSET_MS);
        let (run, written) = race(
            &clients,
            &name,
            "",
            &format!("drop{round}"),
            offset,
            format!("drop {name} (groups {groups:?}, no force)"),
            clients.admin.drop_keyspace(&name, false),
        )
        .await;
        tally.add(&run, codes::KEYSPACE_NOT_EMPTY, &written);
        let exists = match clients.admin.describe_keyspace(&name).await {
            Ok(_) => true,
            Err(e) if e.code() == codes::UNKNOWN_KEYSPACE => false,
            Err(e) => panic!("describe {name} after the drop: {e} {diag}"),
        };
        eprintln!(
            "round {round} (operation at {offset:+}ms): {run}; keyspace {}; {}",
            if exists { "still there" } else { "gone" },
            written.summary()
        );
        if run.applied() {
            assert!(
                !exists,
                "round {round}: `{run}` but the router still describes {name} {diag}"
            );
        }
        if !exists {
            let shown: Vec<String> = written
                .acked
                .iter()
                .take(12)
                .map(|a| format!("{} ({:?}, at {})", a.key, a.kind, ms(a.at)))
                .collect();
            assert!(
                written.acked.is_empty(),
                "round {round}: keyspace {name} was dropped without force (`{run}`) although \
                 {} writes to it were acknowledged, and are now lost: {shown:?}; writers: {} {diag}",
                written.acked.len(),
                written.summary()
            );
        } else {
            let lost = lost_writes(&clients.admin, &name, &written.acked, &diag).await;
            if !lost.is_empty() {
                let places = whereabouts(&cluster, &clients.admin, &name, &groups, &lost).await;
                panic!(
                    "round {round}: {} of {} acknowledged writes to keyspace {name} are lost \
                     after `{run}`; writers: {}; lost:{places}\n{diag}",
                    lost.len(),
                    written.acked.len(),
                    written.summary()
                );
            }
            // Free its groups for the next rounds.
            clients
                .admin
                .drop_keyspace(&name, true)
                .await
                .unwrap_or_else(|e| panic!("force-drop {name}: {e} {diag}"));
        }
    }
    tally.print("drop keyspace", started);
}

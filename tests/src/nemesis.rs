//! Randomized fault schedules against strong operations, each history checked for
//! linearizability (the `nemesis` binary and the linearizability tests both run these).
//!
//! A schedule is one fresh cluster, a few workers making strong puts, gets and
//! compare-and-swaps on a handful of keys, and a sequence of faults drawn from a seed, one at
//! a time, each followed by recovery and some progress. At the end every key is read once
//! more (so a write lost at the very end shows), and the history is checked key by key.
//!
//! The seed fixes the faults, their targets and delays and the workers' choices; process
//! timing is the machine's, so a replay runs the same schedule, not the same interleaving.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kvclient::ClientOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::linearizability::{self, History, Operation, Outcome, RecordingClient, Report};
use crate::{Cluster, ClusterOptions};

/// One fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of a random node; restarted after the survivors have made progress.
    KillNode,
    /// `kill -9` of a group's leader; restarted after a new leader has made progress.
    KillLeader,
    /// `kill -9` of a group's leader and a restart inside the election timeout, so that it
    /// comes back before anyone else has stood for election.
    QuickRestartLeader,
    /// `kill -9` of every node with requests in flight, and a restart of all of them.
    KillAll,
    /// SIGSTOP of a random node for a while, then SIGCONT.
    Pause,
    /// A group's leader cut off from the other nodes (network namespaces only).
    PartitionLeader,
    /// A node cut off from nodes and routers (network namespaces only).
    IsolateNode,
    /// `kill -9` of a router, restarted shortly after.
    KillRouter,
}

impl Fault {
    /// Every fault; the ones that need network namespaces are dropped where there are none.
    pub const ALL: [Fault; 8] = [
        Fault::KillNode,
        Fault::KillLeader,
        Fault::QuickRestartLeader,
        Fault::KillAll,
        Fault::Pause,
        Fault::PartitionLeader,
        Fault::IsolateNode,
        Fault::KillRouter,
    ];

    fn needs_netns(self) -> bool {
        matches!(self, Fault::PartitionLeader | Fault::IsolateNode)
    }
}

/// What a schedule runs.
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    pub seed: u64,
    /// The faults to draw from (uniformly).
    pub faults: Vec<Fault>,
    /// How long the workload runs; faults keep coming until then.
    pub duration: Duration,
    /// Worker tasks, each with its own client, spread over the routers.
    pub workers: usize,
    /// Keys the workers share.
    pub keys: usize,
    /// Run every process in a network namespace (needed for partitions).
    pub netns: bool,
    /// TLS on every hop ([`ClusterOptions::tls`]).
    pub tls: bool,
    pub routers: usize,
    /// Data groups of the default keyspace.
    pub shards: u32,
}

impl ScheduleOptions {
    /// Every fault this machine can inject, with the given seed.
    pub fn all_faults(seed: u64, netns: bool) -> ScheduleOptions {
        ScheduleOptions {
            seed,
            faults: Fault::ALL
                .into_iter()
                .filter(|f| netns || !f.needs_netns())
                .collect(),
            duration: Duration::from_secs(20),
            workers: 6,
            keys: 4,
            netns,
            tls: false,
            routers: 2,
            shards: 2,
        }
    }
}

/// What a schedule did and found.
pub struct ScheduleResult {
    pub seed: u64,
    /// The faults as injected, in order.
    pub faults: Vec<String>,
    pub operations: Vec<Operation>,
    pub report: Report,
    /// Where the history was written (inside the cluster dir, kept when the check failed).
    pub history_path: std::path::PathBuf,
}

impl ScheduleResult {
    pub fn acknowledged_writes(&self) -> usize {
        self.operations
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Written { .. }))
            .count()
    }

    pub fn reads(&self) -> usize {
        self.operations
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Read(_)))
            .count()
    }
}

impl fmt::Display for ScheduleResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} operations ({} acknowledged writes, {} reads, {} unknown), faults {:?}",
            self.seed,
            self.operations.len(),
            self.acknowledged_writes(),
            self.reads(),
            self.report.unknown,
            self.faults
        )
    }
}

/// One worker: random strong operations on the keys until `stop`. A compare-and-swap expects
/// the version this worker saw last for the key.
async fn worker(
    id: usize,
    keys: Arc<Vec<String>>,
    client: RecordingClient,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut known = vec![0u64; keys.len()];
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.gen_range(0..keys.len());
        let key = &keys[k];
        seq += 1;
        let value = format!("w{id}-{seq}");
        let roll = rng.gen_range(0..10);
        let outcome = if roll < 4 {
            client.get(key).await
        } else if roll < 6 {
            client.put(key, &value).await
        } else {
            client.cas(key, known[k], &value).await
        };
        match outcome {
            Outcome::Written { version } => known[k] = version,
            Outcome::Read(Some((_, version))) => known[k] = version,
            Outcome::Read(None) => known[k] = 0,
            Outcome::CasFailed {
                current: Some(version),
            } => known[k] = version,
            Outcome::CasFailed { current: None } | Outcome::Failed => {}
            // The cluster is busy recovering: do not spin.
            Outcome::Unknown => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Completed (not unknown) operations recorded so far.
fn completed(history: &History) -> usize {
    history
        .operations()
        .iter()
        .filter(|o| !matches!(o.outcome, Outcome::Unknown))
        .count()
}

/// Waits until the workers complete `n` more operations, or `timeout`.
async fn progress(history: &History, n: usize, timeout: Duration) {
    let target = completed(history) + n;
    let _ = crate::wait_for(timeout, "the workers make progress", || {
        let done = completed(history) >= target;
        async move { done }
    })
    .await;
}

async fn wait_all_leaders(cluster: &Cluster, groups: &[u64]) -> anyhow::Result<()> {
    for &g in groups {
        cluster
            .wait_leader(g, None, Duration::from_secs(60))
            .await
            .with_context(|| format!("group {g} does not recover"))?;
    }
    Ok(())
}

/// Injects one fault and waits until the cluster has recovered from it. Returns what it did.
async fn inject(
    cluster: &mut Cluster,
    fault: Fault,
    groups: &[u64],
    history: &History,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let ready = Duration::from_secs(60);
    let group = groups[rng.gen_range(0..groups.len())];
    let nodes = cluster.node_ids();
    let leader = cluster
        .wait_leader(group, None, Duration::from_secs(60))
        .await?;
    let others: Vec<u64> = nodes.iter().copied().filter(|&n| n != leader).collect();
    let text = match fault {
        Fault::KillNode | Fault::KillLeader => {
            let victim = if fault == Fault::KillLeader {
                leader
            } else {
                nodes[rng.gen_range(0..nodes.len())]
            };
            cluster.node_mut(victim).kill()?;
            if victim == leader {
                let _ = cluster
                    .wait_leader(group, Some(leader), Duration::from_secs(30))
                    .await;
            }
            progress(history, 10, Duration::from_secs(5)).await;
            cluster.node_mut(victim).start()?;
            cluster.node_mut(victim).wait_ready(ready).await?;
            format!("kill -9 node{victim} (leader of group {group} was node{leader})")
        }
        Fault::QuickRestartLeader => {
            let down = Duration::from_millis(rng.gen_range(0..300));
            cluster.node_mut(leader).kill()?;
            tokio::time::sleep(down).await;
            cluster.node_mut(leader).start()?;
            cluster.node_mut(leader).wait_ready(ready).await?;
            format!(
                "kill -9 node{leader} (leader of group {group}), restarted after {} ms",
                down.as_millis()
            )
        }
        Fault::KillAll => {
            // Let requests get in flight first, so that some are answered after the restart.
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..100))).await;
            let down = Duration::from_millis(rng.gen_range(0..1_500));
            cluster.kill_nodes()?;
            tokio::time::sleep(down).await;
            for node in cluster.nodes_mut() {
                node.start()?;
            }
            cluster.wait_nodes_ready(ready).await?;
            format!("kill -9 all nodes, restarted after {} ms", down.as_millis())
        }
        Fault::Pause => {
            let victim = if rng.gen_bool(0.5) {
                leader
            } else {
                nodes[rng.gen_range(0..nodes.len())]
            };
            let paused = Duration::from_millis(rng.gen_range(300..3_000));
            cluster.node_mut(victim).pause()?;
            tokio::time::sleep(paused).await;
            cluster.node_mut(victim).resume()?;
            format!(
                "SIGSTOP node{victim} for {} ms (leader of group {group} was node{leader})",
                paused.as_millis()
            )
        }
        Fault::PartitionLeader => {
            cluster.partition(&[leader], &others)?;
            let _ = cluster
                .wait_leader(group, Some(leader), Duration::from_secs(30))
                .await;
            progress(history, 10, Duration::from_secs(5)).await;
            cluster.heal()?;
            format!("partition node{leader} (leader of group {group}) | {others:?}")
        }
        Fault::IsolateNode => {
            let victim = nodes[rng.gen_range(0..nodes.len())];
            cluster.isolate_node(victim)?;
            progress(history, 10, Duration::from_secs(5)).await;
            cluster.heal()?;
            format!("isolate node{victim} from nodes and routers")
        }
        Fault::KillRouter => {
            let i = rng.gen_range(0..cluster.routers().len());
            let down = Duration::from_millis(rng.gen_range(0..1_000));
            cluster.routers_mut()[i].kill()?;
            tokio::time::sleep(down).await;
            cluster.routers_mut()[i].start()?;
            cluster.routers_mut()[i].wait_ready(ready).await?;
            format!(
                "kill -9 router {i}, restarted after {} ms",
                down.as_millis()
            )
        }
    };
    wait_all_leaders(cluster, groups).await?;
    progress(history, 10, Duration::from_secs(10)).await;
    Ok(text)
}

/// Runs one schedule on a fresh cluster and checks its history. An error means the schedule
/// could not run (the cluster did not start or recover), not that the check failed: look at
/// [`ScheduleResult::report`] for that.
pub async fn run_schedule(options: &ScheduleOptions) -> anyhow::Result<ScheduleResult> {
    anyhow::ensure!(!options.faults.is_empty(), "no faults to draw from");
    let mut cluster = Cluster::start(ClusterOptions {
        shards: options.shards,
        routers: options.routers.max(1),
        netns: options.netns,
        tls: options.tls,
        ..Default::default()
    })
    .await?;
    let result = schedule_on(&mut cluster, options).await;
    match &result {
        Ok(r) if r.report.is_linearizable() => {}
        _ => cluster.keep_dir(),
    }
    result
}

async fn schedule_on(
    cluster: &mut Cluster,
    options: &ScheduleOptions,
) -> anyhow::Result<ScheduleResult> {
    let groups: Vec<u64> = cluster
        .group_ids()
        .await
        .into_iter()
        .filter(|&g| g != 0)
        .collect();
    anyhow::ensure!(!groups.is_empty(), "no data groups");
    let keys: Arc<Vec<String>> = Arc::new(
        (0..options.keys.max(1))
            .map(|i| format!("nem-{i}"))
            .collect(),
    );

    // One attempt per call: what the router answers is what is recorded (a client-side retry
    // of a write with unknown outcome would hide that outcome).
    let client_options = ClientOptions {
        timeout: Duration::from_secs(10),
        max_retries: 0,
        ..Default::default()
    };
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let routers = cluster.routers().len();
    let workers: Vec<_> = (0..options.workers.max(1))
        .map(|id| {
            let client = RecordingClient::new(
                id,
                cluster.client_of(id % routers, client_options.clone()),
                history.clone(),
            );
            tokio::spawn(worker(
                id,
                keys.clone(),
                client,
                stop.clone(),
                options.seed.wrapping_add(1 + id as u64),
            ))
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(options.seed);
    let started = Instant::now();
    let mut faults = Vec::new();
    progress(&history, 20, Duration::from_secs(30)).await;
    let mut failure = None;
    while started.elapsed() < options.duration {
        let fault = options.faults[rng.gen_range(0..options.faults.len())];
        match inject(cluster, fault, &groups, &history, &mut rng).await {
            Ok(text) => faults.push(text),
            Err(e) => {
                failure = Some(e.context(format!("injecting {fault:?} after {faults:?}")));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.context("a worker panicked")?;
    }
    if options.netns {
        cluster.heal()?;
    }
    if let Some(e) = failure {
        return Err(e);
    }

    // A last read of every key, retried until it answers: an acknowledged write lost at the
    // very end would otherwise go unseen.
    let last = RecordingClient::new(999, cluster.client(), history.clone());
    for key in keys.iter() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(last.get(key).await, Outcome::Unknown) {
            anyhow::ensure!(Instant::now() < deadline, "key {key} unreadable at the end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let operations = history.operations();
    let history_path = cluster.dir().join("history.txt");
    let text: String = operations.iter().map(|o| format!("{o}\n")).collect();
    std::fs::write(&history_path, text).context("writing the history")?;
    let report = linearizability::check(&operations);
    Ok(ScheduleResult {
        seed: options.seed,
        faults,
        operations,
        report,
        history_path,
    })
}

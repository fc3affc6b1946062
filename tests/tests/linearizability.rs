//! Strong reads, writes and compare-and-swaps from several tasks while a nemesis injects
//! faults ([`cluster_tests::nemesis`]); the recorded history must be linearizable, key by key.
//!
//! Writes that time out or find the cluster unavailable are recorded with an unknown outcome:
//! the checker lets them take effect at any point after they started, or never. Each test
//! prints its seed; `NEMESIS_SEED=S` replays a schedule, and the `nemesis` binary runs many.

use std::time::Duration;

use cluster_tests::linearizability;
use cluster_tests::linearizability::Outcome;
use cluster_tests::nemesis::{self, Fault, ScheduleOptions};
use cluster_tests::netns::require_netns;
use rand::Rng;

fn seed() -> u64 {
    std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

async fn run_and_check(options: ScheduleOptions) {
    eprintln!(
        "nemesis seed {} (replay: NEMESIS_SEED={} or `cargo run --release -p tests --bin \
         nemesis -- --schedules 1 --seed {}`)",
        options.seed, options.seed, options.seed
    );
    let result = nemesis::run_schedule(&options)
        .await
        .unwrap_or_else(|e| panic!("schedule with seed {} did not run: {e:#}", options.seed));
    eprintln!("{result}\nhistory in {}", result.history_path.display());
    assert!(
        result.report.is_linearizable(),
        "history is not linearizable (seed {}, full history in {}):\n{}",
        result.seed,
        result.history_path.display(),
        result.report.problems()
    );
    let (writes, reads) = (result.acknowledged_writes(), result.reads());
    assert!(
        writes >= 50 && reads >= 20,
        "too little work to mean anything: {writes} writes, {reads} reads"
    );
    assert!(
        result.faults.len() >= 2,
        "too few faults injected: {:?}",
        result.faults
    );
    canary(&result.operations);
}

/// Every fault the machine can inject, drawn at random for about 20 s, on a cluster with TLS on
/// every hop (as production runs): restarts, partitions and whole-cluster kills must not break
/// mutual TLS's reconnections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_operations_stay_linearizable_under_random_faults() {
    if !require_netns() {
        return;
    }
    let mut options = ScheduleOptions::all_faults(seed(), true);
    options.tls = true;
    run_and_check(options).await;
}

/// The faults that once made strong reads go back in time: a leader killed and back before
/// an election could start, and every node killed with requests in flight. A leader that
/// comes back restores its leadership from its saved vote and must not answer reads from a
/// state machine behind entries committed before the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_stay_fresh_through_quick_restarts_and_whole_cluster_kills() {
    let mut options = ScheduleOptions::all_faults(seed(), false);
    options.faults = vec![Fault::QuickRestartLeader, Fault::KillAll];
    options.routers = 1;
    options.duration = Duration::from_secs(20);
    run_and_check(options).await;
}

/// Guards against a checker that accepts everything: a stale read appended to the real
/// history (after two acknowledged writes of one key that did not overlap, a read of the
/// first one's value) must be reported.
fn canary(ops: &[linearizability::Operation]) {
    let writes: Vec<&linearizability::Operation> = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Written { .. }))
        .collect();
    let pair = writes.iter().find_map(|w1| {
        let w2 = writes
            .iter()
            .find(|w2| w2.key == w1.key && w2.invoke > w1.complete)?;
        Some((*w1, *w2))
    });
    let Some((w1, w2)) = pair else {
        panic!("no two sequential acknowledged writes of one key in the history");
    };
    let (linearizability::OpKind::Put { value } | linearizability::OpKind::Cas { value, .. }) =
        &w1.kind
    else {
        unreachable!("writes are puts or cas");
    };
    let Outcome::Written { version } = w1.outcome else {
        unreachable!()
    };
    let latest = ops.iter().map(|o| o.complete).max().unwrap_or_default();
    let mut tampered = ops.to_vec();
    tampered.push(linearizability::Operation {
        client: 99,
        key: w1.key.clone(),
        kind: linearizability::OpKind::Get,
        invoke: latest.max(w2.complete) + Duration::from_millis(1),
        complete: latest.max(w2.complete) + Duration::from_millis(2),
        outcome: Outcome::Read(Some((value.clone(), version))),
        error: None,
    });
    let report = linearizability::check(&tampered);
    assert!(
        !report.is_linearizable(),
        "the checker accepted a stale read of {value:?} appended after {w2}"
    );
}

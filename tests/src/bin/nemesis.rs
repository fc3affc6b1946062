//! `nemesis`: runs many randomized fault schedules against fresh clusters and checks each
//! history for linearizability.
//!
//! ```sh
//! cargo run --release -p tests --bin nemesis -- --schedules 100 --seed 42
//! ```
//!
//! Schedule `i` uses seed `S + i`; a failing schedule prints its seed, and
//! `--schedules 1 --seed THAT` replays it (same faults, targets and delays). The cluster dir of
//! a failing schedule is kept, with its history and logs.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cluster_tests::nemesis::{self, Fault, ScheduleOptions};

#[derive(Parser, Debug)]
#[command(about = "Randomized fault schedules against strong operations, histories checked")]
struct Args {
    /// Schedules to run, each on a fresh cluster.
    #[arg(long, default_value_t = 10)]
    schedules: u64,
    /// Seed of the first schedule (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// How long each schedule's workload runs.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    duration: Duration,
    /// Worker tasks per schedule.
    #[arg(long, default_value_t = 6)]
    workers: usize,
    /// Keys per schedule.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Do not use network namespaces (no partitions); otherwise they are used when available.
    #[arg(long)]
    no_netns: bool,
    /// Run every cluster with TLS on every hop (mutual between cluster processes).
    #[arg(long)]
    tls: bool,
    /// Keep going after a failing schedule.
    #[arg(long)]
    keep_going: bool,
    /// Check a saved history (a run's `history.txt`) instead of running schedules.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// States the checker may explore per key before it calls a key inconclusive.
    #[arg(long, default_value_t = cluster_tests::linearizability::DEFAULT_BUDGET)]
    budget: usize,
}

/// The verdict on the history saved at `path` with a state budget of `budget` per key.
fn check_history_file(
    path: &std::path::Path,
    budget: usize,
) -> anyhow::Result<cluster_tests::linearizability::Report> {
    use cluster_tests::linearizability::{check_with_budget, parse_history};
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ops = parse_history(&text).map_err(anyhow::Error::msg)?;
    Ok(check_with_budget(&ops, budget))
}

/// Whether the saved history at `path` is linearizable with ten times the budget: a history
/// with many writes of unknown outcome can exhaust the first search without being wrong.
fn deeper_check_passes(path: &std::path::Path, budget: usize) -> bool {
    check_history_file(path, budget.saturating_mul(10)).is_ok_and(|r| r.is_linearizable())
}

/// `--check FILE`: the verdict on a saved history.
fn check_saved(path: &std::path::Path, budget: usize) -> anyhow::Result<()> {
    let report = check_history_file(path, budget)?;
    println!(
        "{}: {} operations checked ({} unknown), budget {budget} states per key",
        path.display(),
        report.operations,
        report.unknown
    );
    for (key, verdict) in &report.keys {
        println!("key {key}: {verdict:?}");
    }
    anyhow::ensure!(
        report.is_linearizable(),
        "not shown linearizable:\n{}",
        report.problems()
    );
    println!("linearizable");
    Ok(())
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let digits = s.strip_suffix('s').unwrap_or(s);
    digits
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a whole number of seconds such as 10s"))
}

/// Points the harness at binaries of the same profile as this one, built now unless
/// `KV_BIN_DIR` says where they are.
fn prepare_binaries() -> anyhow::Result<()> {
    if std::env::var_os("KV_BIN_DIR").is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir: PathBuf = exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "kvnode", "-p", "kvrouter", "--bins"]);
    if release {
        build.arg("--release");
    }
    build.current_dir(cluster_tests::bins::workspace_root());
    let status = build
        .status()
        .context("running cargo build for kvnode and kvrouter")?;
    anyhow::ensure!(status.success(), "building kvnode and kvrouter failed");
    std::env::set_var("KV_BIN_DIR", &dir);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.check {
        return check_saved(path, args.budget);
    }
    prepare_binaries()?;
    let netns = !args.no_netns && cluster_tests::netns::netns_support().is_ok();
    let first = args.seed.unwrap_or_else(rand::random);
    let faults: Vec<Fault> = ScheduleOptions::all_faults(0, netns).faults;
    println!(
        "nemesis: {} schedules from seed {first}, {}s each, faults {faults:?}",
        args.schedules,
        args.duration.as_secs()
    );
    let started = Instant::now();
    let (mut passed, mut failed, mut broken) = (0u64, Vec::new(), Vec::new());
    for i in 0..args.schedules {
        let seed = first.wrapping_add(i);
        let mut options = ScheduleOptions::all_faults(seed, netns);
        options.duration = args.duration;
        options.workers = args.workers;
        options.keys = args.keys;
        options.tls = args.tls;
        match nemesis::run_schedule(&options).await {
            Ok(result) if result.report.is_linearizable() => {
                passed += 1;
                println!("schedule {i} ok: {result}");
            }
            Ok(result)
                if !result.report.has_violation()
                    && deeper_check_passes(&result.history_path, args.budget) =>
            {
                passed += 1;
                println!("schedule {i} ok (after a deeper check of an inconclusive key): {result}");
            }
            Ok(result) => {
                // A key whose search ran out of budget is no proof of a violation, nor a pass:
                // said apart, with the command that checks the saved history harder.
                let verdict = if result.report.has_violation() {
                    "NOT LINEARIZABLE"
                } else {
                    "INCONCLUSIVE (checker budget)"
                };
                println!(
                    "schedule {i} {verdict}: {result}\nhistory in {path}\n{}\nreplay: \
                     cargo run --release -p tests --bin nemesis -- --schedules 1 --seed {seed}\n\
                     check again: cargo run --release -p tests --bin nemesis -- --check {path} --budget 50000000",
                    result.report.problems(),
                    path = result.history_path.display(),
                );
                failed.push(seed);
            }
            Err(e) => {
                println!("schedule {i} (seed {seed}) did not run to the end: {e:#}");
                broken.push(seed);
            }
        }
        if (!failed.is_empty() || !broken.is_empty()) && !args.keep_going {
            break;
        }
    }
    println!(
        "nemesis: {passed} linearizable, {} not ({failed:?}), {} did not finish ({broken:?}) \
         in {:.0}s; first seed {first}",
        failed.len(),
        broken.len(),
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        failed.is_empty() && broken.is_empty(),
        "failing seeds: {failed:?} {broken:?}"
    );
    Ok(())
}

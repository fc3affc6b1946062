//! `kvctl bench`: a closed-loop load generator over the client library.
//!
//! `--concurrency` tasks each issue one request at a time for `--duration`; every latency goes
//! into an HDR histogram (microseconds, 3 significant digits), merged at the end. Requests are
//! spread over `--connections` clients, because one HTTP/2 connection serializes its frames on
//! one socket and would become the bottleneck before the cluster does.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use kvclient::{Bytes, Client, ClientOptions, Consistency, ReadOptions, WriteOptions};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::args::{parse_duration, Global};
use crate::output::{self, OutputFormat};
use crate::Outcome;

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Strong puts of random keys.
    Put,
    /// Strong (linearizable) gets of random preloaded keys.
    GetStrong,
    /// Eventual gets of random preloaded keys.
    GetEventual,
    /// Half strong puts, half strong gets.
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::GetStrong => "get-strong",
            Workload::GetEventual => "get-eventual",
            Workload::Mixed => "mixed",
        }
    }

    fn reads(self) -> bool {
        self != Workload::Put
    }
}

/// Generate load and report throughput and latency percentiles.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The request mix.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,
    /// Requests in flight at once (one per task).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to run (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Distinct keys (`bench-00000000` ...), chosen uniformly at random.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// Send one RPC per call instead of gathering concurrent calls into shared `Multi` RPCs
    /// (for comparing the two).
    #[arg(long)]
    pub no_coalesce: bool,
    /// Client connections to spread the tasks over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Keyspace to load (the default keyspace when not given).
    #[arg(long, default_value = "")]
    pub keyspace: String,
    /// Skip writing every key before a read workload (they must exist already).
    #[arg(long)]
    pub no_preload: bool,
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("bench-{i:08}"))
}

pub async fn run(args: BenchArgs, global: &Global) -> anyhow::Result<Outcome> {
    if args.concurrency == 0 || args.keys == 0 || args.connections == 0 {
        anyhow::bail!("--concurrency, --keys and --connections must be at least 1");
    }
    let endpoints: Vec<String> = global
        .router
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let options = ClientOptions {
        coalesce: !args.no_coalesce,
        ..global.client_options()?
    };
    let clients = (0..args.connections)
        .map(|_| Client::with_options(endpoints.clone(), options.clone()))
        .collect::<Result<Vec<_>, _>>()
        .context("--router")?;
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let write = WriteOptions {
        keyspace: args.keyspace.clone(),
        consistency: Consistency::Strong,
        ..WriteOptions::default()
    };
    if args.workload.reads() && !args.no_preload {
        preload(&clients[0], &args, &value, &write).await?;
    }

    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut tasks = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency {
        let client = clients[i % clients.len()].clone();
        let (done, errors, value, write) =
            (done.clone(), errors.clone(), value.clone(), write.clone());
        let (workload, keys) = (args.workload, args.keys);
        let read = ReadOptions {
            keyspace: args.keyspace.clone(),
            consistency: if workload == Workload::GetEventual {
                Consistency::Eventual
            } else {
                Consistency::Strong
            },
            max_staleness: None,
        };
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("static histogram bounds are valid");
            let mut rng = rand::rngs::StdRng::from_entropy();
            while Instant::now() < deadline {
                let k = key(rng.gen_range(0..keys));
                let put = match workload {
                    Workload::Put => true,
                    Workload::Mixed => rng.gen_bool(0.5),
                    _ => false,
                };
                let began = Instant::now();
                let ok = if put {
                    client.put_with(k, value.clone(), &write).await.is_ok()
                } else {
                    client.get_with(k, &read).await.is_ok()
                };
                if ok {
                    let _ = hist.record((began.elapsed().as_micros() as u64).max(1));
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let progress = progress_bar(args.duration);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(bar) = &progress {
            bar.set_position(start.elapsed().as_millis().min(args.duration.as_millis()) as u64);
            bar.set_message(format!(
                "{} ops, {} errors",
                done.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed)
            ));
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await.context("a load task failed")?)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let ops = hist.len();
    let report = json!({
        "workload": args.workload.name(),
        "concurrency": args.concurrency,
        "connections": args.connections,
        "keys": args.keys,
        "value_size": args.value_size,
        "duration_s": elapsed,
        "ops": ops,
        "ops_per_s": ops as f64 / elapsed,
        "errors": errors.load(Ordering::Relaxed),
        "mean_us": hist.mean(),
        "p50_us": hist.value_at_quantile(0.50),
        "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999),
        "max_us": hist.max(),
    });
    let mut out = std::io::stdout().lock();
    match global.output {
        OutputFormat::Json => output::write_json(&mut out, &report)?,
        OutputFormat::Text => writeln!(
            out,
            "{} x{} for {:.1}s: {} ops, {:.0} ops/s, {} errors\nlatency (us): p50 {}  p99 {}  p999 {}  max {}",
            args.workload.name(),
            args.concurrency,
            elapsed,
            ops,
            ops as f64 / elapsed,
            errors.load(Ordering::Relaxed),
            hist.value_at_quantile(0.50),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max(),
        )?,
    }
    out.flush()?;
    Ok(Outcome::Success)
}

/// Writes every key once, in batches, so that reads find values.
async fn preload(
    client: &Client,
    args: &BenchArgs,
    value: &Bytes,
    write: &WriteOptions,
) -> anyhow::Result<()> {
    const BATCH: u64 = 500;
    let mut next = 0;
    while next < args.keys {
        let end = (next + BATCH).min(args.keys);
        let batch: Vec<(Bytes, Bytes)> = (next..end).map(|i| (key(i), value.clone())).collect();
        client
            .batch_put(batch, write)
            .await
            .with_context(|| format!("preloading keys {next}..{end}"))?;
        next = end;
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal.
fn progress_bar(duration: Duration) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
    {
        bar.set_style(style);
    }
    Some(bar)
}

//! `kvctl scan START END`.

use std::io::Write;

use std::time::Duration;

use clap::Args;
use kvclient::ScanOptions;

use crate::args::{parse_duration, ConsistencyArg, Global, Target};
use crate::output::{self, OutputFormat};
use crate::Outcome;

/// List keys in [START, END).
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// First key (inclusive); "" for the first key there is.
    pub start: String,
    /// End key (exclusive); "" for no upper bound.
    pub end: String,
    /// Print at most N keys (all of them when not given).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Print keys without their values.
    #[arg(long)]
    pub keys_only: bool,
    /// With --consistency eventual: only read from replicas that heard from their leader
    /// within this long (e.g. 500ms); fails with code STALE_REPLICA when none did in time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_staleness: Option<Duration>,
    #[command(flatten)]
    pub target: Target,
}

/// Prints `KEY<TAB>VALUE` lines (keys alone with `--keys-only`) in key order, or a JSON array
/// of `{key, value, version}` with `-o json`.
pub async fn run(args: ScanArgs, global: &Global) -> anyhow::Result<Outcome> {
    if args.max_staleness.is_some() && args.target.consistency != ConsistencyArg::Eventual {
        anyhow::bail!("--max-staleness applies to eventual reads: add --consistency eventual");
    }
    let client = global.client()?;
    let options = ScanOptions {
        limit: args.limit.unwrap_or(0),
        keys_only: args.keys_only,
        keyspace: args.target.keyspace,
        consistency: args.target.consistency.into(),
        max_staleness: args.max_staleness,
    };
    // All pages are read before printing, so an error halfway prints nothing rather than a
    // truncated listing that looks complete.
    let kvs = client.scan_all(args.start, args.end, &options).await?;
    let mut out = std::io::stdout().lock();
    match global.output {
        OutputFormat::Text => output::write_scan_text(&mut out, &kvs, args.keys_only)?,
        OutputFormat::Json => {
            output::write_json(&mut out, &output::scan_json(&kvs, args.keys_only))?
        }
    }
    out.flush()?;
    Ok(Outcome::Success)
}

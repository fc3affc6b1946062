//! `kvctl scan START END`.

use std::io::Write;

use std::time::Duration;

use clap::Args;
use futures::StreamExt;
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
    // Printed page by page, so memory stays at one page however long the listing. An error
    // halfway leaves a listing cut short, told apart from a complete one by the exit code and
    // the message on stderr (and, with `-o json`, by the array never being closed).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut kvs = std::pin::pin!(client.scan_stream(args.start, args.end, &options));
    let mut printed = 0u64;
    if global.output == OutputFormat::Json {
        out.write_all(b"[")?;
    }
    while let Some(kv) = kvs.next().await {
        let kv = match kv {
            Ok(kv) => kv,
            Err(e) => {
                out.flush()?;
                return Err(
                    anyhow::Error::new(e).context(format!("scan stopped after {printed} keys"))
                );
            }
        };
        match global.output {
            OutputFormat::Text => output::write_scan_text(&mut out, &[kv], args.keys_only)?,
            OutputFormat::Json => {
                if printed > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut out, &output::scan_json_item(&kv, args.keys_only))
                    .map_err(std::io::Error::from)?;
            }
        }
        printed += 1;
    }
    if global.output == OutputFormat::Json {
        out.write_all(b"]\n")?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}
